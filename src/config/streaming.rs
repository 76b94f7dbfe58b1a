//! `gateway.streaming`: how an upstream body is read (`read_size`) and how many reads may wait
//! for a slow client (`queue_depth`), within the bounds measured to make sense. (The defaults
//! are the file's: `file::StreamingFile`.)

use super::file::StreamingFile;
use super::runtime::Streaming;

const READ_SIZES: std::ops::RangeInclusive<u64> = 16 * 1024..=1024 * 1024;
const QUEUE_DEPTHS: std::ops::RangeInclusive<usize> = 1..=64;

pub(super) fn streaming(st: &StreamingFile, p: &mut Vec<String>) -> Streaming {
    if !READ_SIZES.contains(&st.read_size.0) {
        p.push(format!(
            "gateway.streaming.read_size: {} bytes is outside 16KiB..=1MiB",
            st.read_size.0
        ));
    }
    if !QUEUE_DEPTHS.contains(&st.queue_depth) {
        p.push(format!(
            "gateway.streaming.queue_depth: {} is outside 1..=64",
            st.queue_depth
        ));
    }
    Streaming {
        read_size: st.read_size.0 as usize,
        queue_depth: st.queue_depth,
    }
}
