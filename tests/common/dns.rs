//! A tiny authoritative DNS server on 127.0.0.1 (UDP, real wire format) for the discovery
//! tests: it answers every `A` query with the current address list and every other query
//! (`AAAA`) with no records, or fails on purpose (SERVFAIL, or silence).
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

#[derive(Clone, Debug)]
pub enum Answer {
    /// `A` records (an empty list: NOERROR with no records).
    A(Vec<Ipv4Addr>),
    /// Response code 2 (server failure) to every query.
    ServFail,
    /// No reply at all (the resolver times out).
    Silent,
}

pub struct TestDns {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestDns {
    pub async fn start(answer: Answer) -> TestDns {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let queries = Arc::new(AtomicUsize::new(0));
        let (a, q) = (answer.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let current = a.lock().unwrap().clone();
                if let Some(reply) = respond(&buf[..n], &current) {
                    let _ = sock.send_to(&reply, from).await;
                }
            }
        });
        TestDns {
            addr,
            answer,
            queries,
            task,
        }
    }

    pub fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    pub fn set_a(&self, ips: &[&str]) {
        self.set(Answer::A(ips.iter().map(|ip| ip.parse().unwrap()).collect()));
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reply to one query datagram; `None`: not a query we can parse, or `Silent`.
fn respond(query: &[u8], answer: &Answer) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut i = 12;
    loop {
        let len = *query.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len & 0xC0 != 0 {
            return None;
        }
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question_end = i + 4;
    if query.len() < question_end {
        return None;
    }
    let (rcode, ips): (u8, &[Ipv4Addr]) = match answer {
        Answer::Silent => return None,
        Answer::ServFail => (2, &[]),
        Answer::A(ips) if qtype == 1 => (0, ips),
        Answer::A(_) => (0, &[]),
    };
    let mut r = Vec::with_capacity(question_end + ips.len() * 16);
    r.extend_from_slice(&query[..2]); // id
                                      // QR, the query's opcode, AA, the query's RD; RA; the response code.
    r.push(0x80 | (query[2] & 0x78) | 0x04 | (query[2] & 0x01));
    r.push(0x80 | rcode);
    r.extend_from_slice(&1u16.to_be_bytes()); // one question
    r.extend_from_slice(&(ips.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional records
    r.extend_from_slice(&query[12..question_end]);
    for ip in ips {
        r.extend_from_slice(&[0xC0, 12]); // the name: a pointer to the question's
        r.extend_from_slice(&1u16.to_be_bytes()); // A
        r.extend_from_slice(&1u16.to_be_bytes()); // IN
        r.extend_from_slice(&0u32.to_be_bytes()); // TTL 0: nothing cached between polls
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}
