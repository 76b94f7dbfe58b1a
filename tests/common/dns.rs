//! A tiny authoritative DNS server on 127.0.0.1 (UDP, real wire format) for the discovery
//! tests: it answers `A` and `AAAA` queries from an address list per family, or fails a
//! family on purpose (SERVFAIL, or silence). Records carry a TTL of 300 s, as a real zone's
//! would, so a resolver that cached them between polls would miss every change.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

/// The TTL of every record.
pub const TTL: u32 = 300;

/// What one family's queries get.
#[derive(Clone, Debug)]
pub enum Family {
    /// These records (an empty list: NOERROR with no records).
    Records(Vec<IpAddr>),
    /// Response code 2 (server failure).
    ServFail,
    /// No reply at all (the resolver times out).
    Silent,
}

/// Both families at once.
#[derive(Clone, Debug)]
pub enum Answer {
    /// `A` records, no `AAAA` record (an empty list: NOERROR with no records for either).
    A(Vec<Ipv4Addr>),
    /// Server failure for every query.
    ServFail,
    /// No reply to any query.
    Silent,
}

#[derive(Clone, Debug)]
struct Zone {
    a: Family,
    aaaa: Family,
}

pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestDns {
    pub async fn start(answer: Answer) -> TestDns {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone {
            a: Family::Records(Vec::new()),
            aaaa: Family::Records(Vec::new()),
        }));
        let queries = Arc::new(AtomicUsize::new(0));
        let (z, q) = (zone.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let current = z.lock().unwrap().clone();
                if let Some(reply) = respond(&buf[..n], &current) {
                    let _ = sock.send_to(&reply, from).await;
                }
            }
        });
        let dns = TestDns {
            addr,
            zone,
            queries,
            task,
        };
        dns.set(answer);
        dns
    }

    pub fn set(&self, answer: Answer) {
        let (a, aaaa) = match answer {
            Answer::A(ips) => (
                Family::Records(ips.into_iter().map(IpAddr::V4).collect()),
                Family::Records(Vec::new()),
            ),
            Answer::ServFail => (Family::ServFail, Family::ServFail),
            Answer::Silent => (Family::Silent, Family::Silent),
        };
        *self.zone.lock().unwrap() = Zone { a, aaaa };
    }

    /// `A` records only (no `AAAA` record).
    pub fn set_a(&self, ips: &[&str]) {
        self.set(Answer::A(ips.iter().map(|ip| ip.parse().unwrap()).collect()));
    }

    /// What `A` queries get; `AAAA` stays as it is.
    pub fn set_v4(&self, family: Family) {
        self.zone.lock().unwrap().a = family;
    }

    /// What `AAAA` queries get; `A` stays as it is.
    pub fn set_v6(&self, family: Family) {
        self.zone.lock().unwrap().aaaa = family;
    }

    /// Queries received so far (every type).
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// `Family::Records` from address strings.
pub fn records(ips: &[&str]) -> Family {
    Family::Records(ips.iter().map(|ip| ip.parse().unwrap()).collect())
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reply to one query datagram; `None`: not a query we can parse, or `Silent`.
fn respond(query: &[u8], zone: &Zone) -> Option<Vec<u8>> {
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
    let no_records = Family::Records(Vec::new());
    let family = match qtype {
        1 => &zone.a,
        28 => &zone.aaaa,
        _ => &no_records,
    };
    let (rcode, ips): (u8, Vec<IpAddr>) = match family {
        Family::Silent => return None,
        Family::ServFail => (2, Vec::new()),
        // Only the records of the type asked for.
        Family::Records(ips) => (
            0,
            ips.iter()
                .filter(|ip| ip.is_ipv4() == (qtype == 1))
                .copied()
                .collect(),
        ),
    };
    let mut r = Vec::with_capacity(question_end + ips.len() * 28);
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
        r.extend_from_slice(&qtype.to_be_bytes()); // A or AAAA
        r.extend_from_slice(&1u16.to_be_bytes()); // IN
        r.extend_from_slice(&TTL.to_be_bytes());
        match ip {
            IpAddr::V4(v4) => {
                r.extend_from_slice(&4u16.to_be_bytes());
                r.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                r.extend_from_slice(&16u16.to_be_bytes());
                r.extend_from_slice(&v6.octets());
            }
        }
    }
    Some(r)
}
