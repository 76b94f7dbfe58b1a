//! The disk tier's files: their names, the body file's trailer and the meta file. Pure: bytes
//! in, bytes out, no I/O.
//!
//! An object of key `K` (32 hex digits) and object id `I` (16 hex digits) is two files:
//!
//! ```text
//! K.I.obj   [body][crc32 of each 64 KiB block of the body][footer]
//!           footer (32 bytes, little endian): magic "AGWBODY2", id u64, body_len u64,
//!                                             block size u32, crc32 of the 28 bytes before
//! K.meta    magic "AGWMETA2", id u64, body_len u64, internal_len u32, header_len u32,
//!           asset_len u32, [CacheMeta internal part][header part][asset tag], crc32 of it all
//! ```
//!
//! The body file never changes once it has its name; the meta file is replaced whole
//! (written under a temporary name, then renamed), so a reader sees the old meta or the new,
//! never a torn one. The meta names the body by its id: a meta and a body of different
//! objects never pair up. Temporary files are `<anything>.<pid>.<n>.tmp`, the pid of the
//! process writing them first (two processes share a directory during an upgrade).

use pingora::cache::key::HashBinary;

/// The unit of checksumming: every read from a disk object is of whole blocks, each checked
/// before a byte of it is sent.
pub(crate) const BLOCK: usize = 64 * 1024;
const BODY_MAGIC: &[u8; 8] = b"AGWBODY2";
const META_MAGIC: &[u8; 8] = b"AGWMETA2";
pub(crate) const FOOTER: usize = 32;
const META_HEAD: usize = 8 + 8 + 8 + 4 + 4 + 4;
/// No meta file is larger (a response header of a few KiB is typical).
pub(crate) const MAX_META: usize = 1 << 20;

pub(crate) fn crc(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

pub(crate) fn blocks(body_len: u64) -> u64 {
    body_len.div_ceil(BLOCK as u64)
}

/// Where the checksum table starts, and the whole body file's length.
pub(crate) fn table_offset(body_len: u64) -> u64 {
    body_len
}

pub(crate) fn body_file_len(body_len: u64) -> u64 {
    body_len + 4 * blocks(body_len) + FOOTER as u64
}

/// The bytes after the body: the checksum table and the footer.
pub(crate) fn body_trailer(id: u64, body_len: u64, crcs: &[u32]) -> Vec<u8> {
    let mut t = Vec::with_capacity(4 * crcs.len() + FOOTER);
    for c in crcs {
        t.extend_from_slice(&c.to_le_bytes());
    }
    let start = t.len();
    t.extend_from_slice(BODY_MAGIC);
    t.extend_from_slice(&id.to_le_bytes());
    t.extend_from_slice(&body_len.to_le_bytes());
    t.extend_from_slice(&(BLOCK as u32).to_le_bytes());
    let c = crc(&t[start..]);
    t.extend_from_slice(&c.to_le_bytes());
    t
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

/// Checks a body file's footer against its length and the id its meta names; returns the
/// body length.
pub(crate) fn check_footer(footer: &[u8], file_len: u64, id: u64) -> Result<u64, &'static str> {
    if footer.len() != FOOTER || &footer[..8] != BODY_MAGIC {
        return Err("no body footer");
    }
    if crc(&footer[..28]) != u32_at(footer, 28) {
        return Err("body footer checksum");
    }
    if u64_at(footer, 8) != id {
        return Err("body of another object");
    }
    let body_len = u64_at(footer, 16);
    if u32_at(footer, 24) as usize != BLOCK || body_file_len(body_len) != file_len {
        return Err("body length");
    }
    Ok(body_len)
}

/// What a meta file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetaFile {
    pub id: u64,
    pub body_len: u64,
    /// Pingora's serialized `CacheMeta` (internal part, header part).
    pub meta: (Vec<u8>, Vec<u8>),
    pub asset: String,
}

pub(crate) fn encode_meta(m: &MetaFile) -> Vec<u8> {
    let (internal, header) = &m.meta;
    let mut b = Vec::with_capacity(META_HEAD + internal.len() + header.len() + m.asset.len() + 4);
    b.extend_from_slice(META_MAGIC);
    b.extend_from_slice(&m.id.to_le_bytes());
    b.extend_from_slice(&m.body_len.to_le_bytes());
    for n in [internal.len(), header.len(), m.asset.len()] {
        b.extend_from_slice(&(n as u32).to_le_bytes());
    }
    b.extend_from_slice(internal);
    b.extend_from_slice(header);
    b.extend_from_slice(m.asset.as_bytes());
    let c = crc(&b);
    b.extend_from_slice(&c.to_le_bytes());
    b
}

pub(crate) fn decode_meta(b: &[u8]) -> Result<MetaFile, &'static str> {
    if b.len() < META_HEAD + 4 || &b[..8] != META_MAGIC {
        return Err("not a meta file");
    }
    let (data, sum) = b.split_at(b.len() - 4);
    if crc(data) != u32_at(sum, 0) {
        return Err("meta checksum");
    }
    let (li, lh, la) = (
        u32_at(b, 24) as usize,
        u32_at(b, 28) as usize,
        u32_at(b, 32) as usize,
    );
    if META_HEAD + li + lh + la != data.len() {
        return Err("meta lengths");
    }
    let rest = &data[META_HEAD..];
    let asset = String::from_utf8(rest[li + lh..].to_vec()).map_err(|_| "asset tag")?;
    Ok(MetaFile {
        id: u64_at(b, 8),
        body_len: u64_at(b, 16),
        meta: (rest[..li].to_vec(), rest[li..li + lh].to_vec()),
        asset,
    })
}

pub(crate) fn hex(key: &HashBinary) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<HashBinary> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub(crate) fn meta_name(key: &HashBinary) -> String {
    format!("{}.meta", hex(key))
}

pub(crate) fn body_name(key: &HashBinary, id: u64) -> String {
    format!("{}.{id:016x}.obj", hex(key))
}

/// A temporary file of this process: `<key>.<id>.<pid>.<n>.tmp`.
pub(crate) fn tmp_name(key: &HashBinary, id: u64, n: u64) -> String {
    format!("{}.{id:016x}.{}.{n}.tmp", hex(key), std::process::id())
}

/// What a directory entry is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Name {
    Meta(HashBinary),
    Body(HashBinary, u64),
    /// Written by process `pid`, which may still be running.
    Tmp {
        pid: u32,
    },
    /// `<key>.obj`: an object of the previous format (one file, no checksums).
    Legacy,
    Other,
}

pub(crate) fn parse_name(name: &str) -> Name {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        [k, "meta"] => unhex(k).map_or(Name::Other, Name::Meta),
        [k, id, "obj"] if id.len() == 16 => match (unhex(k), u64::from_str_radix(id, 16)) {
            (Some(k), Ok(id)) => Name::Body(k, id),
            _ => Name::Other,
        },
        [k, "obj"] if unhex(k).is_some() => Name::Legacy,
        // Also the previous format's `<key>.<pid>.<fill>.tmp`.
        [.., pid, _, "tmp"] => pid.parse().map_or(Name::Other, |pid| Name::Tmp { pid }),
        _ => Name::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_files_round_trip_and_refuse_damage() {
        let m = MetaFile {
            id: 0x1234_5678_9abc_def0,
            body_len: 300_000,
            meta: (vec![1, 2, 3], b"header".to_vec()),
            asset: "/a/{id}\0x".to_string(),
        };
        let b = encode_meta(&m);
        assert_eq!(decode_meta(&b), Ok(m));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x40;
            assert!(decode_meta(&bad).is_err(), "a flipped byte at {i} went unnoticed");
        }
        assert!(decode_meta(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn footers_name_their_object_and_length() {
        let body_len = 3 * BLOCK as u64 + 10;
        let t = body_trailer(7, body_len, &[1, 2, 3, 4]);
        assert_eq!(body_len + t.len() as u64, body_file_len(body_len));
        let footer = &t[t.len() - FOOTER..];
        let file_len = body_file_len(body_len);
        assert_eq!(check_footer(footer, file_len, 7), Ok(body_len));
        assert!(
            check_footer(footer, file_len, 8).is_err(),
            "another object's body"
        );
        assert!(check_footer(footer, file_len - 1, 7).is_err(), "a truncated file");
        let mut bad = footer.to_vec();
        bad[17] ^= 1;
        assert!(check_footer(&bad, file_len, 7).is_err());
    }

    #[test]
    fn names() {
        let k = [0xab; 16];
        assert_eq!(parse_name(&meta_name(&k)), Name::Meta(k));
        assert_eq!(parse_name(&body_name(&k, 42)), Name::Body(k, 42));
        let pid = std::process::id();
        assert_eq!(parse_name(&tmp_name(&k, 42, 3)), Name::Tmp { pid });
        assert_eq!(parse_name(&format!("{}.obj", hex(&k))), Name::Legacy);
        assert_eq!(
            parse_name(&format!("{}.12.3.tmp", hex(&k))),
            Name::Tmp { pid: 12 }
        );
        assert_eq!(parse_name(".asset-gateway-probe-1"), Name::Other);
        assert_eq!(parse_name("lost+found"), Name::Other);
    }
}
