//! Verifying IPFS content against its CID, trusting nothing but the CID.
//!
//! Whoever hands us the bytes (an HTTP gateway, a file on disk) is *not*
//! trusted: a CARv1 (a flat list of `CID + block` sections) is indexed by
//! [`car`], which hashes every block and compares it with its CID, and each
//! block is checked again when it is read back, so what comes out is exactly
//! what the CID names. [`unixfs`] then walks the dag-pb/UnixFS DAG from a
//! root and writes files and folders to disk, within byte/file caps; [`cid`]
//! parses and prints CIDv0/v1 and checks a block against one.
//!
//! The formats are small and we only need a sliver of each (two codecs, two
//! hash functions, a few protobuf fields, one CBOR map), so they are decoded by
//! hand here instead of pulling in the multiformats/prost/CBOR crate families.
//! The crate does no networking: it reads the CAR file and writes under the
//! folder it is given, and fetching the CAR (the worker's gateway source) is
//! the caller's business.
//!
//! Standalone use: parse a CID, check a block against it, and unpack a DAG
//! from any [`BlockSource`] (a [`BlockFile`] over a CAR on disk, or a
//! `HashMap<Cid, Vec<u8>>`) with [`unpack`].
//!
//! ```
//! use shoal_ipfs::{Cid, cid::RAW};
//!
//! let cid = Cid::parse("bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy").unwrap();
//! assert_eq!(cid.to_string(), "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy");
//!
//! let block = b"hello";
//! let own = Cid::v1_sha256(RAW, block);
//! assert!(own.verify(block).is_ok());
//! assert!(cid.verify(block).is_err()); // not the bytes this CID names
//! ```
#![warn(missing_docs)]

pub mod car;
pub mod cid;
pub mod unixfs;

use std::collections::HashMap;
use std::io;

pub use car::{BlockFile, CarError, CarHeader, index_car};
pub use cid::{Cid, CidError, VerifyError};
pub use unixfs::{Kind, Limits, UnixfsError, Unpacked, unpack};

/// Where [`unpack`] gets blocks from: the on-disk [`BlockFile`] in production,
/// a `HashMap` in unit tests. `Ok(None)` means "not in this CAR" (the caller
/// turns it into [`UnixfsError::Missing`]); `Err` is a local I/O problem.
pub trait BlockSource {
    /// The bytes of the block named by `cid`, or `None` if this source lacks it.
    fn get(&self, cid: &Cid) -> io::Result<Option<Vec<u8>>>;
}

impl BlockSource for HashMap<Cid, Vec<u8>> {
    fn get(&self, cid: &Cid) -> io::Result<Option<Vec<u8>>> {
        Ok(HashMap::get(self, cid).cloned())
    }
}

/// Decodes a multiformats unsigned varint (LEB128, at most 9 bytes, minimal
/// encoding) from the start of `buf`; returns the value and bytes used.
/// Non-minimal encodings are refused because they would give one CID two
/// byte forms, and CID bytes are our index keys.
pub(crate) fn decode_varint(buf: &[u8]) -> Result<(u64, usize), &'static str> {
    let mut value = 0u64;
    for (i, &b) in buf.iter().enumerate().take(9) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err("varint is not minimally encoded");
            }
            return Ok((value, i + 1));
        }
    }
    Err(if buf.len() < 9 {
        "truncated varint"
    } else {
        "varint longer than 9 bytes"
    })
}

/// Appends `value` as a multiformats unsigned varint.
pub(crate) fn encode_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_and_rejects_bad_forms() {
        for v in [
            0,
            1,
            0x7f,
            0x80,
            0x3fff,
            0x4000,
            0x70,
            0x55,
            0x1220,
            (1 << 63) - 1,
        ] {
            let mut buf = Vec::new();
            encode_varint(v, &mut buf);
            assert_eq!(decode_varint(&buf), Ok((v, buf.len())), "value {v}");
        }
        assert_eq!(decode_varint(&[0x80, 0x01, 0xff]), Ok((128, 2)));
        assert_eq!(decode_varint(&[0xac, 0x02]), Ok((300, 2)));
        assert_eq!(
            decode_varint(&[0x80, 0x00]),
            Err("varint is not minimally encoded")
        );
        assert_eq!(decode_varint(&[0x80]), Err("truncated varint"));
        assert_eq!(decode_varint(&[]), Err("truncated varint"));
        assert_eq!(
            decode_varint(&[0xff; 10]),
            Err("varint longer than 9 bytes")
        );
    }
}
