//! Content identifiers: parsing, formatting and checking a block against one.
//!
//! Only what a UnixFS fetch needs: CIDv0 (`Qm…`, base58btc, always dag-pb +
//! sha2-256) and CIDv1 in multibase base32-lower (`b…`, what gateways and
//! modern tools print) or base58btc (`z…`); hashes sha2-256 and identity.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::{decode_varint, encode_varint};

/// Multicodec code of dag-pb, the protobuf codec of UnixFS files and folders.
pub const DAG_PB: u64 = 0x70;
/// Multicodec code of raw blocks: bytes as-is (UnixFS file leaves).
pub const RAW: u64 = 0x55;
/// Multihash code of sha2-256, the hash of nearly every IPFS CID.
pub const SHA2_256: u64 = 0x12;
/// Multihash code of the identity "hash": the digest *is* the block.
pub const IDENTITY: u64 = 0x00;
/// Identity "hashes" inline the whole block in the CID; anything bigger than
/// this is not a sane CID and would let a tiny CAR section balloon in memory.
pub const MAX_DIGEST_LEN: usize = 128;
/// A CID string longer than this is refused before any decoding (base58
/// decoding is quadratic; real CIDs are < 100 characters).
const MAX_CID_STR: usize = 512;

/// A content identifier: CID version, codec of the block and multihash.
///
/// Equality and hashing cover all four parts, so a CIDv0 and the CIDv1 of
/// the same bytes differ; compare [`Cid::multihash`] to match content.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cid {
    version: u8,
    codec: u64,
    hash_code: u64,
    digest: Vec<u8>,
}

/// A CID that could not be used. Whose fault depends on where it came from:
/// the job spec (the submitter's) or a CAR/dag-pb link (the content's), so the
/// callers wrap it with that context.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidError {
    /// Not a CID at all: bad characters, truncated, wrong lengths.
    #[error("invalid CID: {0}")]
    Invalid(String),
    /// A well-formed CID this runner does not handle (other multibase, CID version).
    #[error("unsupported CID: {0}")]
    Unsupported(String),
}

/// Why a block was not accepted for a CID.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The bytes are not the ones the CID names: corrupted or forged data.
    #[error("block does not match its CID {cid}")]
    Mismatch {
        /// The CID the block was checked against, in its text form.
        cid: String,
    },
    /// We cannot check this CID's hash function, so we cannot trust the block.
    #[error("cannot verify block {cid}: {reason}")]
    Unsupported {
        /// The CID that cannot be checked, in its text form.
        cid: String,
        /// What about its multihash we cannot verify.
        reason: String,
    },
}

impl Cid {
    /// A CIDv1 over sha2-256 of `block` (handy for tests and for building indexes).
    pub fn v1_sha256(codec: u64, block: &[u8]) -> Cid {
        Cid {
            version: 1,
            codec,
            hash_code: SHA2_256,
            digest: Sha256::digest(block).to_vec(),
        }
    }

    /// CID version: 0 (`Qm…`) or 1.
    pub fn version(&self) -> u8 {
        self.version
    }
    /// Multicodec of the block's content, e.g. [`DAG_PB`] or [`RAW`].
    pub fn codec(&self) -> u64 {
        self.codec
    }
    /// Multihash function code, e.g. [`SHA2_256`] or [`IDENTITY`].
    pub fn hash_code(&self) -> u64 {
        self.hash_code
    }
    /// The hash digest (for [`IDENTITY`], the block itself).
    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    /// The multihash (hash code, length, digest): what names the *bytes*,
    /// independent of CID version and codec, so it is the block-store key.
    pub fn multihash(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.digest.len() + 4);
        encode_varint(self.hash_code, &mut out);
        encode_varint(self.digest.len() as u64, &mut out);
        out.extend_from_slice(&self.digest);
        out
    }

    /// Parses the text form a person writes in a job spec.
    pub fn parse(s: &str) -> Result<Cid, CidError> {
        if s.len() > MAX_CID_STR {
            return Err(CidError::Invalid(format!(
                "longer than {MAX_CID_STR} characters"
            )));
        }
        if s.starts_with("Qm") {
            let bytes = base58_decode(s)?;
            return match Cid::from_bytes(&bytes) {
                Ok((cid, n)) if cid.version == 0 && n == bytes.len() => Ok(cid),
                _ => Err(CidError::Invalid(format!(
                    "{s:?} starts with Qm but is not a CIDv0"
                ))),
            };
        }
        let bytes = match s.chars().next() {
            Some('b') => base32_decode(&s[1..])?,
            Some('z') => base58_decode(&s[1..])?,
            Some(c) => {
                return Err(CidError::Unsupported(format!(
                    "multibase prefix {c:?}; use a CIDv0 (Qm…) or a base32 CIDv1 (b…)"
                )));
            }
            None => return Err(CidError::Invalid("empty string".into())),
        };
        let (cid, n) = Cid::from_bytes(&bytes)?;
        if n != bytes.len() {
            return Err(CidError::Invalid(format!(
                "{} trailing bytes after the CID",
                bytes.len() - n
            )));
        }
        if cid.version == 0 {
            return Err(CidError::Invalid(
                "a CIDv0 is written in plain base58btc (Qm…), without multibase prefix".into(),
            ));
        }
        Ok(cid)
    }

    /// Decodes a binary CID at the start of `bytes` (as found in CAR sections
    /// and dag-pb links); returns it and the number of bytes it took.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Cid, usize), CidError> {
        let invalid = |what: &str| CidError::Invalid(what.to_string());
        if bytes.starts_with(&[0x12, 0x20]) {
            // CIDv0 is a bare sha2-256 multihash; a v1 can't start like this
            // because version 0x12 does not exist.
            let digest = bytes
                .get(2..34)
                .ok_or_else(|| invalid("truncated CIDv0 multihash"))?;
            let cid = Cid {
                version: 0,
                codec: DAG_PB,
                hash_code: SHA2_256,
                digest: digest.to_vec(),
            };
            return Ok((cid, 34));
        }
        let mut pos = 0;
        let mut varint = |what: &str| -> Result<u64, CidError> {
            let (v, n) = decode_varint(&bytes[pos..])
                .map_err(|e| CidError::Invalid(format!("{what}: {e}")))?;
            pos += n;
            Ok(v)
        };
        match varint("version")? {
            1 => {}
            0 => return Err(invalid("CIDv0 must be a bare sha2-256 multihash")),
            v => return Err(CidError::Unsupported(format!("CID version {v}"))),
        }
        let codec = varint("codec")?;
        let hash_code = varint("hash function")?;
        let len = varint("digest length")?;
        if len > MAX_DIGEST_LEN as u64 {
            return Err(CidError::Unsupported(format!(
                "{len}-byte digest (more than {MAX_DIGEST_LEN})"
            )));
        }
        let end = pos + len as usize;
        let digest = bytes
            .get(pos..end)
            .ok_or_else(|| invalid("truncated digest"))?;
        Ok((
            Cid {
                version: 1,
                codec,
                hash_code,
                digest: digest.to_vec(),
            },
            end,
        ))
    }

    /// The binary form, as found in CAR sections and dag-pb links (inverse of
    /// [`Cid::from_bytes`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.version == 0 {
            return [&[0x12, 0x20][..], &self.digest].concat();
        }
        let mut out = Vec::with_capacity(self.digest.len() + 8);
        encode_varint(1, &mut out);
        encode_varint(self.codec, &mut out);
        out.extend_from_slice(&self.multihash());
        out
    }

    /// Checks that `block` is exactly the content this CID names.
    pub fn verify(&self, block: &[u8]) -> Result<(), VerifyError> {
        let matches = match (self.hash_code, self.digest.len()) {
            (SHA2_256, 32) => Sha256::digest(block).as_slice() == self.digest,
            (IDENTITY, _) => block == self.digest,
            (code, len) => {
                let reason = if code == SHA2_256 {
                    format!("truncated {len}-byte sha2-256 digest")
                } else {
                    format!("hash function 0x{code:x} (only sha2-256 and identity are supported)")
                };
                return Err(VerifyError::Unsupported {
                    cid: self.to_string(),
                    reason,
                });
            }
        };
        if matches {
            Ok(())
        } else {
            Err(VerifyError::Mismatch {
                cid: self.to_string(),
            })
        }
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.version == 0 {
            f.write_str(&base58_encode(&self.to_bytes()))
        } else {
            write!(f, "b{}", base32_encode(&self.to_bytes()))
        }
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({self})")
    }
}

const BASE58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base58_encode(bytes: &[u8]) -> String {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    let mut digits: Vec<u8> = Vec::new(); // base-58 digits, least significant first
    for &b in &bytes[zeros..] {
        let mut carry = u32::from(b);
        for d in digits.iter_mut() {
            carry += u32::from(*d) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let ones = std::iter::repeat_n('1', zeros);
    ones.chain(digits.iter().rev().map(|&d| BASE58[d as usize] as char))
        .collect()
}

fn base58_decode(s: &str) -> Result<Vec<u8>, CidError> {
    let zeros = s.bytes().take_while(|&c| c == b'1').count();
    let mut bytes: Vec<u8> = Vec::new(); // base-256, least significant first
    for c in s.chars().skip(zeros) {
        let digit = BASE58.iter().position(|&x| c.is_ascii() && x == c as u8);
        let mut carry = digit
            .ok_or_else(|| CidError::Invalid(format!("{c:?} is not a base58btc character")))?
            as u32;
        for b in bytes.iter_mut() {
            carry += u32::from(*b) * 58;
            *b = carry as u8;
            carry >>= 8;
        }
        while carry > 0 {
            bytes.push(carry as u8);
            carry >>= 8;
        }
    }
    Ok(std::iter::repeat_n(0, zeros)
        .chain(bytes.into_iter().rev())
        .collect())
}

/// RFC 4648 base32, lowercase alphabet, no padding (multibase `b`).
fn base32_encode(bytes: &[u8]) -> String {
    let (mut acc, mut bits, mut out) = (0u32, 0u32, String::new());
    for &b in bytes {
        acc = ((acc << 8) | u32::from(b)) & 0xfff; // never more than 12 live bits
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn base32_decode(s: &str) -> Result<Vec<u8>, CidError> {
    let (mut acc, mut bits, mut out) = (0u32, 0u32, Vec::with_capacity(s.len() * 5 / 8));
    for c in s.chars() {
        let digit = BASE32.iter().position(|&x| c.is_ascii() && x == c as u8);
        let digit = digit.ok_or_else(|| {
            CidError::Invalid(format!("{c:?} is not a lowercase base32 character"))
        })?;
        acc = ((acc << 5) | digit as u32) & 0xfff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // Leftover bits are padding: fewer than one character's worth, all zero.
    if bits >= 5 || acc & ((1 << bits) - 1) != 0 {
        return Err(CidError::Invalid(
            "base32 text has a bad length or non-zero padding bits".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // From fixtures/cids.txt (made by ipfs-car / ipfs-unixfs-importer).
    const HELLO: &str = "bafkreihgis2any7vkmiyoe74sieojlf4bzcld5fmo5bl6rwtib5eie62ji";
    const RANDOM: &str = "bafybeif2jip3ec76duccolnsd5cptti2iduqwgwvfxn7n6p2q3n6ejniay";
    const TREE: &str = "bafybeidys6qzbin5c5oo7f5h3kowfha6wjkvwcszjqqiaixbg7ff7bpnre";
    const V0: &str = "QmeabxchCsF2BGqjqvmwr5Gw6o1YxCZNG8onkNy4sS7zGw";
    const HELLO_TXT: &[u8] = b"Hello from Shoal!\nThis file is packed as a single raw block.\n";

    #[test]
    fn text_forms_round_trip() {
        for s in [HELLO, RANDOM, TREE, V0] {
            let cid = Cid::parse(s).unwrap();
            assert_eq!(cid.to_string(), s);
            assert_eq!(
                Cid::from_bytes(&cid.to_bytes()).unwrap(),
                (cid.clone(), cid.to_bytes().len())
            );
        }
        assert_eq!(Cid::parse(RANDOM).unwrap().codec(), DAG_PB);
    }

    #[test]
    fn binary_forms_match_multiformats() {
        // Byte forms and alternative spellings printed by the JS `multiformats` library.
        let hello = Cid::parse(HELLO).unwrap();
        let want = "01551220e644b406e3f553118713fc9208e4acbc0e44b1f4ac7742bf46d3407a4413da4a";
        assert_eq!(hex::encode(hello.to_bytes()), want);
        assert_eq!(
            (hello.version(), hello.codec(), hello.hash_code()),
            (1, RAW, SHA2_256)
        );
        assert_eq!(
            Cid::parse("zb2rhn99j1tywLSm9zxJpbmpK4ezXgX2sVHBUQ6PGXQVzAXyj").unwrap(),
            hello
        );

        let v0 = Cid::parse(V0).unwrap();
        let want = "1220f14e034d71b6d386193f9ddbc07065382196bdafd6e5752d4db9766ee594b320";
        assert_eq!(hex::encode(v0.to_bytes()), want);
        assert_eq!(
            (v0.version(), v0.codec(), v0.hash_code()),
            (0, DAG_PB, SHA2_256)
        );
        let v1 = Cid::parse("bafybeihrjybu24nw2odbsp453pahazjyegll3l6w4v2s2tnzozxolfftea").unwrap();
        assert_eq!(
            (v1.version(), v1.codec(), v1.digest()),
            (1, DAG_PB, v0.digest())
        );
        assert_eq!(v1.multihash(), v0.multihash());
        assert_ne!(v1, v0);
        // A v1 followed by more bytes: `from_bytes` reports how much it used.
        let mut bytes = hello.to_bytes();
        bytes.extend_from_slice(b"block");
        assert_eq!(Cid::from_bytes(&bytes).unwrap().1, 36);
    }

    #[test]
    fn base_codecs_round_trip_odd_lengths() {
        for len in 0..12 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 1) as u8).collect();
            assert_eq!(base32_decode(&base32_encode(&data)).unwrap(), data);
            let zeros = [&[0, 0][..], &data].concat();
            assert_eq!(base58_decode(&base58_encode(&zeros)).unwrap(), zeros);
        }
        assert_eq!(base32_encode(b"foobar"), "mzxw6ytboi"); // RFC 4648 test vector, lowercased
    }

    #[test]
    fn bad_text_is_refused() {
        let invalid = |s: &str| matches!(Cid::parse(s), Err(CidError::Invalid(_)));
        assert!(invalid(""));
        assert!(invalid(&HELLO.to_uppercase().replacen('B', "b", 1))); // uppercase body
        assert!(invalid(&HELLO[..HELLO.len() - 1])); // truncated digest
        assert!(invalid(&format!("{HELLO}a"))); // dangling character
        assert!(invalid("Qm0OIl")); // not base58
        assert!(invalid(&V0[..40]));
        assert!(invalid(&"b".repeat(600)));
        assert!(matches!(
            Cid::parse(&format!("f{}", "01")),
            Err(CidError::Unsupported(_))
        ));
        let mut v2 = Cid::parse(HELLO).unwrap().to_bytes();
        v2[0] = 2;
        let v2 = format!("b{}", base32_encode(&v2));
        assert_eq!(
            Cid::parse(&v2),
            Err(CidError::Unsupported("CID version 2".into()))
        );
    }

    #[test]
    fn verify_checks_sha256_and_identity() {
        let hello = Cid::parse(HELLO).unwrap();
        assert_eq!(hello.verify(HELLO_TXT), Ok(()));
        assert_eq!(
            hello.verify(b"Hello from Shoal?"),
            Err(VerifyError::Mismatch { cid: HELLO.into() })
        );
        let id = Cid::parse("bafkqaatine").unwrap(); // identity multihash of "hi"
        assert_eq!((id.hash_code(), id.digest()), (IDENTITY, &b"hi"[..]));
        assert_eq!(id.verify(b"hi"), Ok(()));
        assert!(matches!(
            id.verify(b"ho"),
            Err(VerifyError::Mismatch { .. })
        ));
        // blake2b-256 (0xb220): well-formed, but we cannot check it.
        let mut bytes = vec![0x01, 0x55];
        encode_varint(0xb220, &mut bytes);
        bytes.extend([0x20].iter().chain(&[7u8; 32]));
        let (blake, _) = Cid::from_bytes(&bytes).unwrap();
        assert!(matches!(
            blake.verify(b"x"),
            Err(VerifyError::Unsupported { .. })
        ));
        let mut huge = vec![0x01, 0x55, 0x00];
        encode_varint(200, &mut huge);
        huge.extend([0u8; 200]);
        assert!(matches!(
            Cid::from_bytes(&huge),
            Err(CidError::Unsupported(_))
        ));
    }
}
