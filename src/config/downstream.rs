//! `gateway.downstream`: the client side's timeouts, request head limits and HTTP/2 server
//! settings.

use super::file::DownstreamFile;
use super::runtime::{Downstream, H2};
use crate::downstream::Limits;

/// The longest request target the `http` crate (and so Pingora) can parse.
const MAX_PARSABLE_URI: usize = u16::MAX as usize - 1;

pub(super) fn downstream(d: &DownstreamFile, p: &mut Vec<String>) -> Downstream {
    if d.max_headers == 0 {
        p.push("gateway.downstream.max_headers: must be at least 1".to_string());
    }
    if d.max_uri_bytes.0 < 64 {
        p.push("gateway.downstream.max_uri_bytes: must be at least 64 bytes".to_string());
    }
    if d.max_uri_bytes.0 > MAX_PARSABLE_URI as u64 {
        p.push(format!(
            "gateway.downstream.max_uri_bytes: must be at most {MAX_PARSABLE_URI} bytes (a longer request target cannot be parsed at all: Pingora answers it with a plain 400)"
        ));
    }
    if d.max_header_bytes.0 < 512 {
        p.push("gateway.downstream.max_header_bytes: must be at least 512 bytes".to_string());
    }
    let h2 = &d.h2;
    if h2.max_concurrent_streams == 0 {
        p.push("gateway.downstream.h2.max_concurrent_streams: must be at least 1".to_string());
    }
    for (key, size) in [
        ("max_header_list_size", h2.max_header_list_size.0),
        ("max_send_buffer", h2.max_send_buffer.0),
    ] {
        if !(1024..=16 * 1024 * 1024).contains(&size) {
            p.push(format!(
                "gateway.downstream.h2.{key}: {size} bytes is outside 1KiB..=16MiB"
            ));
        }
    }
    Downstream {
        keepalive_timeout: d.keepalive_timeout.0,
        header_timeout: d.header_timeout.0,
        write_timeout: d.write_timeout.0,
        limits: Limits {
            max_uri_bytes: d.max_uri_bytes.0 as usize,
            max_header_bytes: d.max_header_bytes.0 as usize,
            max_headers: d.max_headers,
        },
        h2: H2 {
            max_concurrent_streams: h2.max_concurrent_streams,
            max_header_list_size: h2.max_header_list_size.0.min(u32::MAX as u64) as u32,
            max_send_buffer: h2.max_send_buffer.0 as usize,
            idle_timeout: h2.idle_timeout.0,
            max_pending_reset_streams: h2.max_pending_reset_streams,
        },
    }
}
