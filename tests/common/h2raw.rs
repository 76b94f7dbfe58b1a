//! HTTP/2 frames written and read by hand, for what no well-behaved client does: opening more
//! streams than the server allows, resetting streams in a burst, never reading the socket,
//! and seeing exactly which frames (RST_STREAM, GOAWAY and their codes) the server sends.
//! Request headers are HPACK literals without indexing (no table, no Huffman), which every
//! decoder must accept; response header blocks are not decoded.
#![allow(dead_code)]

use super::End;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const CANCEL: u32 = 0x8;
pub const REFUSED_STREAM: u32 = 0x7;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "(type {} flags {:#x} stream {} {} bytes",
            self.kind,
            self.flags,
            self.stream,
            self.payload.len()
        )?;
        match self.error_code() {
            Some(code) => write!(f, " code {code:#x})"),
            None => write!(f, ")"),
        }
    }
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The parameters of a SETTINGS frame.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }

    pub fn is(&self, kind: u8, stream: u32) -> bool {
        self.kind == kind && self.stream == stream
    }
}

/// One frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = params
        .iter()
        .flat_map(|(id, v)| [id.to_be_bytes().to_vec(), v.to_be_bytes().to_vec()].concat())
        .collect();
    frame(SETTINGS, 0, 0, &payload)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn ping(data: [u8; 8]) -> Vec<u8> {
    frame(PING, 0, 0, &data)
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// An HPACK integer with an `n`-bit prefix, the prefix's other bits being `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing, new names, no Huffman coding.
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// A GET of `path` on `stream`, with END_STREAM, plus `extra` header fields (one HEADERS
/// frame: keep it under the 16 KiB default frame size).
pub fn get(stream: u32, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "gw.test"),
        (":path", path),
    ];
    fields.extend_from_slice(extra);
    let block = header_block(&fields);
    assert!(block.len() <= 16384, "one HEADERS frame holds at most 16 KiB");
    frame(HEADERS, END_STREAM | END_HEADERS, stream, &block)
}

/// A cleartext HTTP/2 (prior knowledge) connection driven frame by frame.
pub struct H2Raw {
    pub s: TcpStream,
    buf: Vec<u8>,
    /// Acknowledge the server's PINGs as they are read (the default). Off, a PING is only
    /// returned: the server's graceful shutdown (GOAWAY, then a PING whose ACK lets it send
    /// the final GOAWAY and close) then waits until the test sends the ACK itself.
    pub ack_pings: bool,
}

impl H2Raw {
    /// Connects, sends the preface and a SETTINGS frame with `params`, and acknowledges the
    /// server's SETTINGS once it arrives (returned, with the frames read before it).
    pub async fn connect(addr: SocketAddr, params: &[(u16, u32)]) -> (H2Raw, Frame) {
        Self::handshake(TcpStream::connect(addr).await.unwrap(), params).await
    }

    pub async fn handshake(s: TcpStream, params: &[(u16, u32)]) -> (H2Raw, Frame) {
        let mut c = H2Raw {
            s,
            buf: Vec::new(),
            ack_pings: true,
        };
        c.send(&[PREFACE.to_vec(), settings(params)].concat()).await;
        let server_settings = loop {
            let f = c.frame().await.expect("the server's SETTINGS");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                break f;
            }
        };
        c.send(&frame(SETTINGS, ACK, 0, &[])).await;
        (c, server_settings)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// The next frame; `Err` when the server closed the connection or sent nothing for
    /// `EVENTUALLY`. A PING from the server is acknowledged if `ack_pings` (and returned).
    pub async fn frame(&mut self) -> Result<Frame, End> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let f = Frame {
                        kind: f[3],
                        flags: f[4],
                        stream: u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff,
                        payload: f[9..].to_vec(),
                    };
                    if self.ack_pings && f.kind == PING && f.flags & ACK == 0 {
                        // The server may be closed to writes already; what it sent still counts.
                        let _ = self.s.write_all(&frame(PING, ACK, 0, &f.payload)).await;
                    }
                    return Ok(f);
                }
            }
            let mut chunk = [0u8; 65536];
            match tokio::time::timeout(super::EVENTUALLY, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(End::Closed),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return Err(End::TimedOut),
            }
        }
    }

    /// Reads frames until one satisfies `pred`; returns it and the frames before it. Panics
    /// if the connection ends or goes silent first.
    pub async fn until(&mut self, what: &str, pred: impl Fn(&Frame) -> bool) -> (Frame, Vec<Frame>) {
        let mut before = Vec::new();
        loop {
            match self.frame().await {
                Ok(f) if pred(&f) => return (f, before),
                Ok(f) => before.push(f),
                Err(end) => panic!("{what}: the connection {end:?} first; frames: {before:?}"),
            }
        }
    }
}
