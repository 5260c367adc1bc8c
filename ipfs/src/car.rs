//! CARv1 reading: one streaming pass that verifies every block against its
//! CID, plus [`BlockFile`], an offset index over a CAR on disk so that a
//! 1 GiB download costs a few bytes of memory per block, not the blocks.
//!
//! Format: `varint(len) header` then sections `varint(len) CID block`, where
//! the header is the DAG-CBOR map `{roots: [CID…], version: 1}`.
//! <https://ipld.io/specs/transport/car/carv1/>

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;

use crate::cid::{Cid, VerifyError};
use crate::{BlockSource, decode_varint};

/// Largest block accepted. IPFS peers refuse blocks over 2 MiB (the bitswap
/// limit), so no honest gateway sends one; a bigger section is garbage.
pub const MAX_BLOCK_SIZE: usize = 2 << 20;
/// A section is the CID (< 200 bytes, see `cid::MAX_DIGEST_LEN`) plus the block.
const MAX_SECTION: u64 = MAX_BLOCK_SIZE as u64 + 256;
/// The header is a handful of root CIDs; anything larger is not a CARv1 header.
const MAX_HEADER: u64 = 64 << 10;

/// The decoded CARv1 header; only the roots matter (the version must be 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarHeader {
    /// May be empty: a CAR streamed to stdout by `ipfs-car` has no roots.
    pub roots: Vec<Cid>,
}

/// Why a CAR could not be read. The variants separate whose fault it is: the
/// gateway's (`Integrity`, `Malformed`), the format's (`Unsupported`) or ours (`Io`).
#[derive(Debug, thiserror::Error)]
pub enum CarError {
    /// A block's bytes do not hash to its CID: the gateway sent corrupted or
    /// forged data. Becomes the job error kind `integrity`.
    #[error(
        "integrity check failed: block {cid} does not match its CID (corrupted or forged by the gateway)"
    )]
    Integrity {
        /// The CID the bad block claimed, in its text form.
        cid: String,
    },
    /// Truncated or garbage CAR from the gateway.
    #[error("malformed CAR from the gateway: {0}")]
    Malformed(String),
    /// A valid CAR we can't use (CARv2, a hash function we can't verify).
    #[error("unsupported CAR: {0}")]
    Unsupported(String),
    /// More blocks than the index may hold: the index costs memory per
    /// block (about 100 bytes), so a DAG of millions of tiny blocks would
    /// cost the worker far more memory than the CAR's size on disk.
    #[error("the content has more than {limit} blocks")]
    TooManyBlocks {
        /// The most blocks allowed.
        limit: u64,
    },
    /// Reading the local file (or the sink writing somewhere) failed.
    #[error("I/O error while reading the CAR: {0}")]
    Io(#[from] io::Error),
}

/// Reads a CARv1 from `reader` in one pass, verifying each block before
/// handing it to `sink`. Holds one block in memory at a time.
pub fn index_car<R: Read>(
    reader: R,
    mut sink: impl FnMut(&Cid, &[u8]) -> io::Result<()>,
) -> Result<CarHeader, CarError> {
    read_car(reader, |cid, block, _offset| sink(cid, block))
}

/// [`index_car`], also telling the sink at which byte offset the block starts.
fn read_car<R: Read>(
    reader: R,
    mut sink: impl FnMut(&Cid, &[u8], u64) -> io::Result<()>,
) -> Result<CarHeader, CarError> {
    let mut r = BufReader::with_capacity(64 << 10, reader);
    let mut pos = 0u64;
    let len = match read_varint(&mut r, &mut pos)? {
        Some(len) if (1..=MAX_HEADER).contains(&len) => len,
        Some(len) => {
            return Err(malformed(format!(
                "header length {len} is out of range (not a CARv1?)"
            )));
        }
        None => return Err(malformed("empty body, expected a CAR header")),
    };
    let mut buf = vec![0; len as usize];
    read_exact(&mut r, &mut buf, &mut pos, "header")?;
    let header = parse_header(&buf)?;

    loop {
        let start = pos;
        let len = match read_varint(&mut r, &mut pos)? {
            None => return Ok(header),
            Some(len) if (1..=MAX_SECTION).contains(&len) => len as usize,
            Some(len) => {
                return Err(malformed(format!(
                    "section at offset {start} claims {len} bytes (blocks are capped at {MAX_BLOCK_SIZE})"
                )));
            }
        };
        buf.resize(len, 0); // the same allocation is reused for every block
        read_exact(&mut r, &mut buf, &mut pos, "block")?;
        let (cid, n) = Cid::from_bytes(&buf)
            .map_err(|e| malformed(format!("section at offset {start}: {e}")))?;
        let block = &buf[n..];
        if block.len() > MAX_BLOCK_SIZE {
            return Err(malformed(format!(
                "block {cid} is {} bytes (cap {MAX_BLOCK_SIZE})",
                block.len()
            )));
        }
        cid.verify(block).map_err(|e| match e {
            VerifyError::Mismatch { cid } => CarError::Integrity { cid },
            e @ VerifyError::Unsupported { .. } => CarError::Unsupported(e.to_string()),
        })?;
        sink(&cid, block, pos - block.len() as u64)?;
    }
}

fn malformed(msg: impl Into<String>) -> CarError {
    CarError::Malformed(msg.into())
}

/// Reads one varint; `None` on a clean end of input before its first byte.
fn read_varint(r: &mut impl Read, pos: &mut u64) -> Result<Option<u64>, CarError> {
    let mut buf = [0u8; 9];
    for i in 0..buf.len() {
        match r.read_exact(&mut buf[i..=i]) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && i == 0 => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(malformed(format!("truncated varint at offset {pos}")));
            }
            Err(e) => return Err(e.into()),
            Ok(()) if buf[i] & 0x80 != 0 => continue,
            Ok(()) => {
                let (value, _) = decode_varint(&buf[..=i])
                    .map_err(|e| malformed(format!("{e} at offset {pos}")))?;
                *pos += i as u64 + 1;
                return Ok(Some(value));
            }
        }
    }
    Err(malformed(format!(
        "varint longer than 9 bytes at offset {pos}"
    )))
}

fn read_exact(
    r: &mut impl Read,
    buf: &mut [u8],
    pos: &mut u64,
    what: &str,
) -> Result<(), CarError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => malformed(format!(
            "CAR ends in the middle of a {what} (offset {pos}, {} bytes expected)",
            buf.len()
        )),
        _ => e.into(),
    })?;
    *pos += buf.len() as u64;
    Ok(())
}

/// The little of DAG-CBOR a CAR header uses.
#[derive(Debug)]
enum Cbor<'a> {
    Uint(u64),
    Bytes(&'a [u8]),
    Text(&'a str),
    Array(Vec<Cbor<'a>>),
    Map(Vec<(Cbor<'a>, Cbor<'a>)>),
    Tag(u64, Box<Cbor<'a>>),
    Other,
}

/// Why a CAR header is not the DAG-CBOR we read (reported as
/// [`CarError::Malformed`]: the gateway's fault).
#[derive(Debug, thiserror::Error)]
enum CborError {
    #[error("truncated CBOR")]
    Truncated,
    #[error("indefinite-length or reserved CBOR item (not DAG-CBOR)")]
    Indefinite,
    #[error("CBOR nesting or length out of range")]
    OutOfRange,
    #[error("CBOR text is not UTF-8")]
    NotUtf8(#[source] std::str::Utf8Error),
}

fn take<'a>(b: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], CborError> {
    let s = b
        .get(*pos..)
        .and_then(|rest| rest.get(..n))
        .ok_or(CborError::Truncated)?;
    *pos += n;
    Ok(s)
}

fn cbor<'a>(b: &'a [u8], pos: &mut usize, depth: u32) -> Result<Cbor<'a>, CborError> {
    let first = take(b, pos, 1)?[0];
    let (major, info) = (first >> 5, first & 31);
    let arg = match info {
        0..=23 => u64::from(info),
        24..=27 => take(b, pos, 1 << (info - 24))?
            .iter()
            .fold(0, |acc, &x| acc << 8 | u64::from(x)),
        _ => return Err(CborError::Indefinite),
    };
    let remaining = (b.len() - *pos) as u64;
    if depth > 16 || ((2..=5).contains(&major) && arg > remaining) {
        return Err(CborError::OutOfRange);
    }
    let n = arg as usize;
    Ok(match major {
        0 => Cbor::Uint(arg),
        2 => Cbor::Bytes(take(b, pos, n)?),
        3 => Cbor::Text(std::str::from_utf8(take(b, pos, n)?).map_err(CborError::NotUtf8)?),
        4 => Cbor::Array(
            (0..n)
                .map(|_| cbor(b, pos, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        5 => Cbor::Map(
            (0..n)
                .map(|_| Ok((cbor(b, pos, depth + 1)?, cbor(b, pos, depth + 1)?)))
                .collect::<Result<_, CborError>>()?,
        ),
        6 => Cbor::Tag(arg, Box::new(cbor(b, pos, depth + 1)?)),
        _ => Cbor::Other, // negative ints, simple values, floats: payload already skipped
    })
}

fn parse_header(buf: &[u8]) -> Result<CarHeader, CarError> {
    let bad = |e: String| malformed(format!("bad CAR header: {e}"));
    let mut pos = 0;
    let Cbor::Map(entries) = cbor(buf, &mut pos, 0).map_err(|e| bad(e.to_string()))? else {
        return Err(bad("not a CBOR map".into()));
    };
    if pos != buf.len() {
        return Err(bad("trailing bytes".into()));
    }
    let field = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| matches!(k, Cbor::Text(t) if *t == name))
            .map(|(_, v)| v)
    };
    match field("version") {
        Some(Cbor::Uint(1)) => {}
        // The CARv2 pragma is a valid header-length + `{version: 2}` map.
        Some(Cbor::Uint(2)) => {
            return Err(CarError::Unsupported(
                "CARv2 is not supported, ask the gateway for CARv1 (Accept: application/vnd.ipld.car; version=1)".into(),
            ));
        }
        other => return Err(bad(format!("version is {other:?}, expected 1"))),
    }
    let Some(Cbor::Array(roots)) = field("roots") else {
        return Err(bad("no roots array".into()));
    };
    let roots = roots.iter().map(|root| match root {
        // DAG-CBOR links: tag 42 around the binary CID with a 0x00 prefix.
        Cbor::Tag(42, inner) => match inner.as_ref() {
            Cbor::Bytes([0, bytes @ ..]) => match Cid::from_bytes(bytes) {
                Ok((cid, n)) if n == bytes.len() => Ok(cid),
                Ok(_) => Err(bad("trailing bytes after a root CID".into())),
                Err(e) => Err(bad(format!("root: {e}"))),
            },
            _ => Err(bad("root is not a CID link".into())),
        },
        _ => Err(bad("root is not a CID link".into())),
    });
    Ok(CarHeader {
        roots: roots.collect::<Result<_, _>>()?,
    })
}

/// A CAR file on disk, indexed by block multihash → (offset, length).
///
/// The gateway body is first written to a scratch file; opening it here
/// verifies every block once and remembers where it is, and [`BlockSource::get`]
/// seeks and reads it back, verifying again (the file is ours, but
/// verify-on-read is the policy and sha2-256 is cheap next to the disk).
/// Keys are multihashes, not CID bytes, so a DAG that links a block as CIDv1
/// still finds it when the CAR labels it CIDv0 (same bytes, same hash).
pub struct BlockFile {
    file: Mutex<File>,
    header: CarHeader,
    index: HashMap<Vec<u8>, (u64, u32)>,
}

impl BlockFile {
    /// Indexes the CAR at `path`, verifying every block on the way; fails on
    /// the first bad block, so a `BlockFile` only ever holds a clean CAR,
    /// and on the block after `max_blocks`.
    pub fn open(path: &Path, max_blocks: u64) -> Result<BlockFile, CarError> {
        let file = File::open(path)?;
        let mut index = HashMap::new();
        let mut too_many = false;
        let header = read_car(&file, |cid, block, offset| {
            index
                .entry(cid.multihash())
                .or_insert((offset, block.len() as u32));
            too_many = index.len() as u64 > max_blocks;
            if too_many {
                return Err(io::Error::other("too many blocks"));
            }
            Ok(())
        });
        if too_many {
            return Err(CarError::TooManyBlocks { limit: max_blocks });
        }
        let header = header?;
        Ok(BlockFile {
            file: Mutex::new(file),
            header,
            index,
        })
    }

    /// The CAR's header.
    pub fn header(&self) -> &CarHeader {
        &self.header
    }

    /// The root CIDs the header declares (possibly none).
    pub fn roots(&self) -> &[Cid] {
        &self.header.roots
    }

    /// Number of distinct blocks in the CAR.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the CAR holds no blocks at all.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether a block with `cid`'s multihash is in the CAR (any CID version
    /// or codec that names the same bytes counts).
    pub fn contains(&self, cid: &Cid) -> bool {
        self.index.contains_key(&cid.multihash())
    }
}

impl BlockSource for BlockFile {
    fn get(&self, cid: &Cid) -> io::Result<Option<Vec<u8>>> {
        let Some(&(offset, len)) = self.index.get(&cid.multihash()) else {
            return Ok(None);
        };
        let mut block = vec![0; len as usize];
        {
            let mut file = self
                .file
                .lock()
                .map_err(|_| io::Error::other("CAR file lock poisoned"))?;
            file.seek(SeekFrom::Start(offset))?;
            file.read_exact(&mut block)?;
        }
        cid.verify(&block).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("CAR scratch file changed on disk after indexing: {e}"),
            )
        })?;
        Ok(Some(block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_varint;

    const HELLO: &[u8] = b"hello";

    /// `{roots: [cid], version: 1}` then one section per block.
    fn car(roots: &[&Cid], blocks: &[(&Cid, &[u8])]) -> Vec<u8> {
        let mut header = vec![0xa2, 0x65];
        header.extend(b"roots");
        header.push(0x80 | roots.len() as u8);
        for root in roots {
            let bytes = root.to_bytes();
            header.extend([0xd8, 42, 0x58, bytes.len() as u8 + 1, 0]);
            header.extend(bytes);
        }
        header.extend([0x67].iter().chain(b"version").chain(&[1]));
        let mut out = Vec::new();
        encode_varint(header.len() as u64, &mut out);
        out.extend(header);
        for (cid, block) in blocks {
            let bytes = cid.to_bytes();
            encode_varint((bytes.len() + block.len()) as u64, &mut out);
            out.extend(bytes.iter().chain(block.iter()));
        }
        out
    }

    type Blocks = Vec<(Cid, Vec<u8>)>;

    fn read_all(bytes: &[u8]) -> Result<(CarHeader, Blocks), CarError> {
        let mut blocks = Vec::new();
        let header = index_car(bytes, |cid, block| {
            blocks.push((cid.clone(), block.to_vec()));
            Ok(())
        })?;
        Ok((header, blocks))
    }

    #[test]
    fn reads_header_and_blocks() {
        let cid = Cid::v1_sha256(0x55, HELLO);
        let (header, blocks) = read_all(&car(&[&cid], &[(&cid, HELLO), (&cid, HELLO)])).unwrap();
        assert_eq!(header.roots, vec![cid.clone()]);
        assert_eq!(
            blocks,
            vec![(cid.clone(), HELLO.to_vec()), (cid, HELLO.to_vec())]
        );
        assert_eq!(read_all(&car(&[], &[])).unwrap().0.roots, vec![]);
    }

    #[test]
    fn bad_input_gets_the_right_error() {
        let cid = Cid::v1_sha256(0x55, HELLO);
        let good = car(&[&cid], &[(&cid, HELLO)]);
        assert!(
            matches!(read_all(&car(&[&cid], &[(&cid, b"hellO")])), Err(CarError::Integrity { cid: c }) if c == cid.to_string())
        );
        for cut in [0, 1, 10, good.len() - 1, good.len() - 5] {
            assert!(
                matches!(read_all(&good[..cut]), Err(CarError::Malformed(_))),
                "cut at {cut}"
            );
        }
        let mut garbage = good.clone();
        garbage.extend([0xff; 4]); // section length without a section
        assert!(matches!(read_all(&garbage), Err(CarError::Malformed(_))));
        let mut huge = good.clone();
        encode_varint(MAX_SECTION + 1, &mut huge);
        assert!(matches!(read_all(&huge), Err(CarError::Malformed(m)) if m.contains("capped")));
        // The CARv2 pragma, byte for byte from the CARv2 spec.
        let v2 = hex_bytes("0aa16776657273696f6e02");
        assert!(
            matches!(read_all(&v2), Err(CarError::Unsupported(m)) if m.contains("CARv2 is not supported"))
        );
        let v3 = hex_bytes("0aa16776657273696f6e03");
        assert!(matches!(read_all(&v3), Err(CarError::Malformed(_))));
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }
}
