//! dag-pb + UnixFS decoding, and unpacking a UnixFS DAG onto the filesystem.
//!
//! A UnixFS DAG is made of dag-pb blocks (protobuf `PBNode { Links, Data }`
//! whose `Data` is a UnixFS protobuf saying File/Directory/…) and raw blocks
//! (codec 0x55, file bytes as-is). A file's content is its node's own Data
//! followed by its children's content, depth-first in link order.
//! <https://github.com/ipfs/specs/blob/main/UNIXFS.md>
//!
//! Everything here is untrusted content: names are checked before they touch
//! the filesystem, and caps bound bytes, entries, depth and read work.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Component, Path};

use crate::BlockSource;
use crate::cid::{Cid, CidError, DAG_PB, IDENTITY, RAW};

/// Deeper than any real UnixFS DAG (a balanced 174-wide tree of depth 6 is
/// already > 1 TiB); bounds recursion on hostile input.
pub const MAX_DEPTH: usize = 64;

/// A dag-pb link (`PBLink`): a child block, named when the parent is a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbLink {
    /// The child's CID.
    pub hash: Cid,
    /// Entry name in a directory; absent or empty for a file's chunks.
    pub name: Option<String>,
    /// Cumulative size of the child's DAG as claimed by the encoder; untrusted
    /// and unused for unpacking.
    pub tsize: Option<u64>,
}

/// A decoded dag-pb block (`PBNode`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PbNode {
    /// Children in link order (which is content order for a file).
    pub links: Vec<PbLink>,
    /// The opaque `Data` field; for UnixFS, a [`UnixfsData`] protobuf.
    pub data: Option<Vec<u8>>,
}

/// The UnixFS node type (`Data.Type`); declaration order matches the wire values 0–5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// File bytes in `Data` (legacy leaf form; treated like `File`).
    Raw,
    /// A plain directory: named links to its entries.
    Directory,
    /// A file: own `Data` followed by its linked chunks.
    File,
    /// Metadata wrapper from early UnixFS; never unpacked.
    Metadata,
    /// A symlink whose target is in `Data`; skipped, never created on disk.
    Symlink,
    /// A HAMT-sharded directory for very large folders; not supported yet.
    HamtShard,
}

/// The UnixFS protobuf carried in a dag-pb node's `Data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixfsData {
    /// What the node is.
    pub kind: DataType,
    /// Inline content (a file's leading bytes, a symlink's target).
    pub data: Vec<u8>,
    /// Declared total file size; checked against the bytes actually written.
    pub filesize: Option<u64>,
    /// Declared size of each child's content, in link order (informational).
    pub blocksizes: Vec<u64>,
}

/// Caps on what [`unpack`] may write, so hostile content cannot fill the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes written to disk.
    pub max_bytes: u64,
    /// Files *and* folders created (so a DAG of empty folders is bounded too).
    pub max_files: u64,
}

/// What the unpacked target turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A single file, written as `dest` itself.
    File,
    /// A folder, whose entries were written inside `dest`.
    Directory,
}

/// What [`unpack`] wrote: a summary for the job log and result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// Whether the target was a file or a directory.
    pub kind: Kind,
    /// Total content bytes written.
    pub bytes: u64,
    /// Regular files written (1 for a single-file target).
    pub files: u64,
    /// Folders created below `dest`.
    pub dirs: u64,
    /// Paths (relative to `dest`) of symlinks that were not created.
    pub skipped: Vec<String>,
}

/// Why [`unpack`] failed. Like [`crate::CarError`], the variants tell whose
/// fault it is: the gateway's, the submitter's, the content's, or ours.
#[derive(Debug, thiserror::Error)]
pub enum UnixfsError {
    /// The DAG needs a block the CAR lacks: the gateway sent an incomplete CAR.
    #[error("block {cid} is needed but missing from the CAR (the gateway sent an incomplete DAG)")]
    Missing {
        /// The missing block's CID, in its text form.
        cid: String,
    },
    /// The requested `cid/path` does not exist in the content (the submitter's path).
    #[error("path {path} does not exist in the content")]
    NotFound {
        /// `root/…/entry` up to the first missing entry (plus the reason when a
        /// non-directory was in the way).
        path: String,
    },
    /// The content names an entry in a way that is not a single safe file name.
    #[error("the content has an entry {name:?} that is not a safe file name")]
    BadName {
        /// The offending entry's path relative to the target.
        name: String,
    },
    /// Over [`Limits`] (bytes or entries) or the read-work budget.
    #[error("content exceeds the job's limits: {0}")]
    TooLarge(String),
    /// Invalid dag-pb/UnixFS, inconsistent sizes, absurd depth: the content's fault.
    #[error("malformed UnixFS content: {0}")]
    Malformed(String),
    /// Valid content this runner does not unpack (HAMT shards, symlink targets, other codecs).
    #[error("unsupported content: {0}")]
    Unsupported(String),
    /// Local disk trouble writing `dest` or reading the CAR scratch file.
    #[error("I/O error while unpacking: {0}")]
    Io(#[from] io::Error),
}

/// Why a dag-pb block or its UnixFS Data did not decode: the content's
/// fault (callers report it as [`UnixfsError::Malformed`]).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end inside a varint.
    #[error("truncated protobuf varint")]
    TruncatedVarint,
    /// A varint's tenth byte carries more than the 64th bit.
    #[error("protobuf varint overflows 64 bits")]
    VarintOverflow,
    /// A varint that does not end within 10 bytes.
    #[error("protobuf varint longer than 10 bytes")]
    VarintTooLong,
    /// A wire type protobuf does not define (or the deprecated groups).
    #[error("unsupported protobuf wire type {0}")]
    WireType(u64),
    /// A field longer than the bytes left.
    #[error("truncated protobuf field")]
    TruncatedField,
    /// A known field with the wrong wire type.
    #[error("{message} field {field} has the wrong wire type")]
    WrongType {
        /// `PBNode`, `PBLink` or `UnixFS Data`.
        message: &'static str,
        /// The field number.
        field: u64,
    },
    /// A link's Hash holds more than one CID.
    #[error("trailing bytes after a link's CID")]
    TrailingLinkBytes,
    /// A link's Hash is not a CID.
    #[error("link hash: {0}")]
    LinkHash(#[source] CidError),
    /// A link's Name is not UTF-8.
    #[error("link name is not UTF-8")]
    LinkName(#[source] std::string::FromUtf8Error),
    /// A link without a Hash.
    #[error("link without a Hash")]
    LinkWithoutHash,
    /// A UnixFS Type this runner does not know.
    #[error("unknown UnixFS type {0}")]
    UnknownType(u64),
    /// UnixFS Data without a Type.
    #[error("UnixFS Data without a Type")]
    NoType,
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Just enough protobuf: varints, length-delimited fields, skipped fixed32/64.
struct Pb<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Pb<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Pb { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or(DecodeError::TruncatedVarint)?;
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(DecodeError::VarintOverflow);
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintTooLong)
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, DecodeError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let len = match key & 7 {
            0 => return Ok(Some((key >> 3, Field::Varint(self.varint()?)))),
            2 => usize::try_from(self.varint()?).unwrap_or(usize::MAX),
            1 => 8,
            5 => 4,
            wire => return Err(DecodeError::WireType(wire)),
        };
        if self.buf.len() - self.pos < len {
            return Err(DecodeError::TruncatedField);
        }
        let bytes = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        let field = if key & 7 == 2 {
            Field::Bytes(bytes)
        } else {
            Field::Fixed
        };
        Ok(Some((key >> 3, field)))
    }
}

fn wrong_type(message: &'static str, field: u64) -> DecodeError {
    DecodeError::WrongType { message, field }
}

/// Decodes a dag-pb block. Canonical encoding puts Links before Data, but
/// any order is accepted; unknown fields are ignored.
pub fn decode_pbnode(block: &[u8]) -> Result<PbNode, DecodeError> {
    let (mut pb, mut node) = (Pb::new(block), PbNode::default());
    while let Some((num, field)) = pb.next()? {
        match (num, field) {
            (1, Field::Bytes(b)) => node.data = Some(b.to_vec()),
            (2, Field::Bytes(b)) => node.links.push(decode_link(b)?),
            (1 | 2, _) => return Err(wrong_type("PBNode", num)),
            _ => {}
        }
    }
    Ok(node)
}

fn decode_link(bytes: &[u8]) -> Result<PbLink, DecodeError> {
    let (mut pb, mut hash, mut name, mut tsize) = (Pb::new(bytes), None, None, None);
    while let Some((num, field)) = pb.next()? {
        match (num, field) {
            (1, Field::Bytes(b)) => match Cid::from_bytes(b) {
                Ok((cid, n)) if n == b.len() => hash = Some(cid),
                Ok(_) => return Err(DecodeError::TrailingLinkBytes),
                Err(e) => return Err(DecodeError::LinkHash(e)),
            },
            (2, Field::Bytes(b)) => {
                name = Some(String::from_utf8(b.to_vec()).map_err(DecodeError::LinkName)?)
            }
            (3, Field::Varint(v)) => tsize = Some(v),
            (1..=3, _) => return Err(wrong_type("PBLink", num)),
            _ => {}
        }
    }
    Ok(PbLink {
        hash: hash.ok_or(DecodeError::LinkWithoutHash)?,
        name,
        tsize,
    })
}

/// Decodes the UnixFS protobuf in a dag-pb node's Data.
pub fn decode_unixfs(bytes: &[u8]) -> Result<UnixfsData, DecodeError> {
    let mut pb = Pb::new(bytes);
    let mut out = UnixfsData {
        kind: DataType::Raw,
        data: Vec::new(),
        filesize: None,
        blocksizes: Vec::new(),
    };
    let mut kind = None;
    while let Some((num, field)) = pb.next()? {
        match (num, field) {
            (1, Field::Varint(t)) => {
                use DataType::*;
                let kinds = [Raw, Directory, File, Metadata, Symlink, HamtShard];
                kind = Some(*kinds.get(t as usize).ok_or(DecodeError::UnknownType(t))?);
            }
            (2, Field::Bytes(b)) => out.data = b.to_vec(),
            (3, Field::Varint(v)) => out.filesize = Some(v),
            (4, Field::Varint(v)) => out.blocksizes.push(v),
            (4, Field::Bytes(packed)) => {
                let mut p = Pb::new(packed);
                while p.pos < packed.len() {
                    out.blocksizes.push(p.varint()?);
                }
            }
            (1..=4, _) => return Err(wrong_type("UnixFS Data", num)),
            _ => {} // hashType, fanout, mode, mtime: not needed to unpack
        }
    }
    out.kind = kind.ok_or(DecodeError::NoType)?;
    Ok(out)
}

/// A loaded block: raw bytes, or a decoded dag-pb node with its UnixFS data.
enum Node {
    Raw(Vec<u8>),
    Pb(Vec<PbLink>, UnixfsData),
}

impl Node {
    fn kind(&self) -> DataType {
        match self {
            Node::Raw(_) => DataType::Raw,
            Node::Pb(_, fs) => fs.kind,
        }
    }
}

struct Walker<'a, S: BlockSource + ?Sized> {
    src: &'a S,
    limits: Limits,
    out: Unpacked,
    /// Read-work budget; see `unpack`.
    budget: u64,
}

/// Unpacks `root/path…` from `blocks` to `dest`: a file target becomes the
/// file `dest` (parents created), a directory target becomes the folder
/// `dest` with every entry inside (entries must not already exist there).
/// On error `dest` may be left half-written: unpack into scratch space.
///
/// Repeated links can make a small DAG expand enormously. Bytes and entries
/// are capped by `limits`; because a node may also link the same *empty*
/// block thousands of times per level, every block load is also charged
/// max(its size, 1 KiB) against `2 × max_bytes + 1 KiB × max_files + 64 MiB`,
/// which an honest DAG (reads ≈ writes, small interior nodes) never reaches.
pub fn unpack<S: BlockSource + ?Sized>(
    blocks: &S,
    root: &Cid,
    path: &[&str],
    dest: &Path,
    limits: &Limits,
) -> Result<Unpacked, UnixfsError> {
    let budget = limits
        .max_bytes
        .saturating_mul(2)
        .saturating_add(limits.max_files.saturating_mul(1024))
        .saturating_add(64 << 20);
    let out = Unpacked {
        kind: Kind::File,
        bytes: 0,
        files: 0,
        dirs: 0,
        skipped: Vec::new(),
    };
    let mut w = Walker {
        src: blocks,
        limits: *limits,
        out,
        budget,
    };
    let mut here = root.to_string();
    let mut node = w.load(root)?;
    for &name in path.iter().filter(|c| !c.is_empty()) {
        let links = match &node {
            Node::Pb(links, fs) if fs.kind == DataType::Directory => links,
            Node::Pb(_, fs) if fs.kind == DataType::HamtShard => {
                return Err(UnixfsError::Unsupported(format!(
                    "{here} is a HAMT-sharded directory, which cannot be browsed yet"
                )));
            }
            _ => {
                return Err(UnixfsError::NotFound {
                    path: format!("{here}/{name} ({here} is not a directory)"),
                });
            }
        };
        here = format!("{here}/{name}");
        let link = links.iter().find(|l| l.name.as_deref() == Some(name));
        let cid = link
            .ok_or_else(|| UnixfsError::NotFound { path: here.clone() })?
            .hash
            .clone();
        node = w.load(&cid)?;
    }
    match node.kind() {
        DataType::Directory => {
            w.out.kind = Kind::Directory;
            fs::create_dir_all(dest)?;
            let Node::Pb(links, _) = node else {
                unreachable!("raw blocks are files")
            };
            w.dir(links, dest, "", 0)?;
        }
        DataType::File | DataType::Raw => {
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)?;
            }
            w.count(false)?;
            w.file(node, File::create(dest)?)?;
        }
        kind => return Err(unsupported(&here, kind)),
    }
    Ok(w.out)
}

fn unsupported(what: &str, kind: DataType) -> UnixfsError {
    UnixfsError::Unsupported(match kind {
        DataType::HamtShard => {
            format!("{what} is a HAMT-sharded directory, which cannot be unpacked yet")
        }
        DataType::Symlink => format!("{what} is a symlink; symlinks are never unpacked"),
        kind => {
            format!("{what} is a UnixFS {kind:?} node, which is neither a file nor a directory")
        }
    })
}

/// A directory entry name must be one normal path component, so it can't
/// escape `dest` or clobber anything (`..`, `a/b`, empty, NUL…).
fn safe_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    !name.is_empty()
        && !name.contains(['/', '\0'])
        && matches!((parts.next(), parts.next()), (Some(Component::Normal(p)), None) if p == name)
}

impl<S: BlockSource + ?Sized> Walker<'_, S> {
    fn load(&mut self, cid: &Cid) -> Result<Node, UnixfsError> {
        let block = if cid.hash_code() == IDENTITY {
            cid.digest().to_vec() // the content is inlined in the CID; never in a CAR
        } else {
            self.src.get(cid)?.ok_or_else(|| UnixfsError::Missing {
                cid: cid.to_string(),
            })?
        };
        self.budget = self
            .budget
            .checked_sub((block.len() as u64).max(1024))
            .ok_or_else(|| {
                UnixfsError::TooLarge(
                    "the DAG links the same blocks over and over (read amplification)".into(),
                )
            })?;
        let bad = |e: &dyn std::fmt::Display| {
            UnixfsError::Malformed(format!(
                "block {cid} is not a valid UnixFS dag-pb node: {e}"
            ))
        };
        match cid.codec() {
            RAW => Ok(Node::Raw(block)),
            DAG_PB => {
                let node = decode_pbnode(&block).map_err(|e| bad(&e))?;
                let data = node.data.ok_or_else(|| bad(&"it has no Data"))?;
                Ok(Node::Pb(
                    node.links,
                    decode_unixfs(&data).map_err(|e| bad(&e))?,
                ))
            }
            codec => Err(UnixfsError::Unsupported(format!(
                "block {cid} has codec 0x{codec:x}; only dag-pb (0x70) and raw (0x55) UnixFS DAGs can be unpacked"
            ))),
        }
    }

    fn count(&mut self, dir: bool) -> Result<(), UnixfsError> {
        if self.out.files + self.out.dirs >= self.limits.max_files {
            return Err(UnixfsError::TooLarge(format!(
                "more than {} files and folders",
                self.limits.max_files
            )));
        }
        *(if dir {
            &mut self.out.dirs
        } else {
            &mut self.out.files
        }) += 1;
        Ok(())
    }

    fn dir(
        &mut self,
        links: Vec<PbLink>,
        dest: &Path,
        rel: &str,
        depth: usize,
    ) -> Result<(), UnixfsError> {
        if depth > MAX_DEPTH {
            return Err(UnixfsError::Malformed(format!(
                "directories nested deeper than {MAX_DEPTH} levels"
            )));
        }
        let mut seen = HashSet::new();
        for link in links {
            let name = link.name.unwrap_or_default();
            let rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if !safe_name(&name) || !seen.insert(name.clone()) {
                return Err(UnixfsError::BadName { name: rel });
            }
            let child = self.load(&link.hash)?;
            let target = dest.join(&name);
            match child.kind() {
                DataType::Directory => {
                    self.count(true)?;
                    fs::create_dir(&target)?;
                    let Node::Pb(links, _) = child else {
                        unreachable!("raw blocks are files")
                    };
                    self.dir(links, &target, &rel, depth + 1)?;
                }
                DataType::File | DataType::Raw => {
                    self.count(false)?;
                    self.file(
                        child,
                        OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&target)?,
                    )?;
                }
                DataType::Symlink => self.out.skipped.push(rel),
                kind => return Err(unsupported(&rel, kind)),
            }
        }
        Ok(())
    }

    fn file(&mut self, node: Node, file: File) -> Result<(), UnixfsError> {
        let mut out = BufWriter::with_capacity(256 << 10, file);
        self.file_node(node, &mut out, 0)?;
        Ok(out.flush()?)
    }

    /// Writes one file node's content; returns how many bytes that was.
    fn file_node(
        &mut self,
        node: Node,
        out: &mut impl Write,
        depth: usize,
    ) -> Result<u64, UnixfsError> {
        if depth > MAX_DEPTH {
            return Err(UnixfsError::Malformed(format!(
                "file DAG deeper than {MAX_DEPTH} levels"
            )));
        }
        let (links, fs) = match node {
            Node::Raw(bytes) => return self.write(out, &bytes),
            Node::Pb(links, fs) if matches!(fs.kind, DataType::File | DataType::Raw) => (links, fs),
            Node::Pb(_, fs) => {
                return Err(UnixfsError::Malformed(format!(
                    "a file's DAG contains a {:?} node",
                    fs.kind
                )));
            }
        };
        let UnixfsData { data, filesize, .. } = fs;
        let mut written = self.write(out, &data)?;
        drop(data); // only the links are needed while descending
        for link in &links {
            let child = self.load(&link.hash)?;
            written += self.file_node(child, out, depth + 1)?;
        }
        match filesize {
            Some(size) if size != written => Err(UnixfsError::Malformed(format!(
                "a file node declares {size} bytes but its DAG holds {written}"
            ))),
            _ => Ok(written),
        }
    }

    fn write(&mut self, out: &mut impl Write, data: &[u8]) -> Result<u64, UnixfsError> {
        let total = self.out.bytes + data.len() as u64;
        if total > self.limits.max_bytes {
            return Err(UnixfsError::TooLarge(format!(
                "more than {} bytes",
                self.limits.max_bytes
            )));
        }
        out.write_all(data)?;
        self.out.bytes = total;
        Ok(data.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    type Blocks = HashMap<Cid, Vec<u8>>;
    const BIG: Limits = Limits {
        max_bytes: 1 << 20,
        max_files: 100,
    };

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn bytes_field(num: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(num << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
    fn unixfs_data(kind: u64, data: &[u8], filesize: Option<u64>) -> Vec<u8> {
        let mut out = vec![0x08, kind as u8];
        if !data.is_empty() {
            bytes_field(2, data, &mut out);
        }
        if let Some(size) = filesize {
            out.push(0x18);
            varint(size, &mut out);
        }
        out
    }
    /// Canonical dag-pb: links first, then data.
    fn pbnode(links: &[(&Cid, &str)], data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (cid, name) in links {
            let mut link = Vec::new();
            bytes_field(1, &cid.to_bytes(), &mut link);
            bytes_field(2, name.as_bytes(), &mut link);
            bytes_field(2, &link, &mut out);
        }
        bytes_field(1, data, &mut out);
        out
    }
    fn raw(blocks: &mut Blocks, data: &[u8]) -> Cid {
        let cid = Cid::v1_sha256(RAW, data);
        blocks.insert(cid.clone(), data.to_vec());
        cid
    }
    fn pb(
        blocks: &mut Blocks,
        links: &[(&Cid, &str)],
        kind: u64,
        data: &[u8],
        size: Option<u64>,
    ) -> Cid {
        let block = pbnode(links, &unixfs_data(kind, data, size));
        let cid = Cid::v1_sha256(DAG_PB, &block);
        blocks.insert(cid.clone(), block);
        cid
    }

    #[test]
    fn decodes_any_field_order_and_both_blocksize_encodings() {
        let target = Cid::v1_sha256(RAW, b"x");
        let canonical = pbnode(&[(&target, "a b")], b"\x08\x02");
        let mut data_first = Vec::new();
        bytes_field(1, b"\x08\x02", &mut data_first);
        data_first.extend_from_slice(&canonical[..canonical.len() - 4]);
        for block in [canonical, data_first] {
            let node = decode_pbnode(&block).unwrap();
            assert_eq!(node.data.as_deref(), Some(&b"\x08\x02"[..]));
            assert_eq!(
                node.links,
                vec![PbLink {
                    hash: target.clone(),
                    name: Some("a b".into()),
                    tsize: None
                }]
            );
        }
        let packed =
            decode_unixfs(&[0x08, 0x02, 0x18, 0xb4, 0x02, 0x22, 0x03, 0x0a, 0xaa, 0x02]).unwrap();
        let repeated =
            decode_unixfs(&[0x08, 0x02, 0x18, 0xb4, 0x02, 0x20, 0x0a, 0x20, 0xaa, 0x02]).unwrap();
        assert_eq!(packed, repeated);
        assert_eq!(
            (packed.kind, packed.filesize, packed.blocksizes),
            (DataType::File, Some(308), vec![10, 298])
        );
        assert!(
            decode_unixfs(&[0x08, 0x09])
                .unwrap_err()
                .to_string()
                .contains("unknown UnixFS type 9")
        );
        assert!(decode_unixfs(&[0x10, 0x01]).is_err()); // Data as a varint: wrong wire type
        assert!(decode_unixfs(&[0x12, 0x05, 0x01]).is_err()); // truncated
        assert!(
            decode_pbnode(&[0x12, 0x02, 0x0a, 0x00])
                .unwrap_err()
                .to_string()
                .contains("link hash")
        );
    }

    #[test]
    fn file_content_is_own_data_then_children_depth_first() {
        let mut blocks = Blocks::new();
        let (cd, gh) = (raw(&mut blocks, b"cd"), raw(&mut blocks, b"gh"));
        let mid = pb(&mut blocks, &[(&gh, "")], 2, b"ef", Some(4));
        let root = pb(&mut blocks, &[(&cd, ""), (&mid, "")], 2, b"ab", Some(8));
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a/b/out.bin");
        let got = unpack(&blocks, &root, &[], &dest, &BIG).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"abcdefgh");
        assert_eq!(
            got,
            Unpacked {
                kind: Kind::File,
                bytes: 8,
                files: 1,
                dirs: 0,
                skipped: vec![]
            }
        );

        let lying = pb(&mut blocks, &[(&cd, "")], 2, b"ab", Some(5));
        let err = unpack(&blocks, &lying, &[], &dest, &BIG).unwrap_err();
        assert!(
            matches!(err, UnixfsError::Malformed(m) if m.contains("declares 5 bytes but its DAG holds 4"))
        );
        blocks.remove(&gh);
        let err = unpack(&blocks, &root, &[], &dest, &BIG).unwrap_err();
        assert!(matches!(err, UnixfsError::Missing { cid } if cid == gh.to_string()));
        let small = Limits {
            max_bytes: 7,
            ..BIG
        };
        blocks.insert(gh.clone(), b"gh".to_vec());
        assert!(matches!(
            unpack(&blocks, &root, &[], &dest, &small),
            Err(UnixfsError::TooLarge(_))
        ));
    }

    #[test]
    fn directories_unpack_and_skip_symlinks() {
        let mut blocks = Blocks::new();
        let hi = Cid::parse("bafkqaatine").unwrap(); // identity CID: "hi", not in any block store
        let empty = raw(&mut blocks, b"");
        let link = pb(&mut blocks, &[], 4, b"/etc/passwd", None);
        let sub = pb(
            &mut blocks,
            &[(&hi, "hi.txt"), (&link, "evil")],
            1,
            b"",
            None,
        );
        let root = pb(
            &mut blocks,
            &[(&empty, "empty"), (&sub, "sub dir")],
            1,
            b"",
            None,
        );
        let dir = tempfile::tempdir().unwrap();
        let got = unpack(&blocks, &root, &[], dir.path(), &BIG).unwrap();
        let want = Unpacked {
            kind: Kind::Directory,
            bytes: 2,
            files: 2,
            dirs: 1,
            skipped: vec!["sub dir/evil".into()],
        };
        assert_eq!(got, want);
        assert_eq!(fs::read(dir.path().join("sub dir/hi.txt")).unwrap(), b"hi");
        assert_eq!(fs::read(dir.path().join("empty")).unwrap(), b"");
        assert!(!dir.path().join("sub dir/evil").exists());

        let out = dir.path().join("by-path");
        assert_eq!(
            unpack(&blocks, &root, &["sub dir", "hi.txt"], &out, &BIG)
                .unwrap()
                .bytes,
            2
        );
        assert_eq!(fs::read(&out).unwrap(), b"hi");
        let err = unpack(&blocks, &root, &["empty", "x"], &out, &BIG).unwrap_err();
        let want = format!("{root}/empty/x ({root}/empty is not a directory)");
        assert!(matches!(err, UnixfsError::NotFound { path } if path == want));
        let err = unpack(&blocks, &root, &["sub dir", "evil"], &out, &BIG).unwrap_err();
        assert!(matches!(err, UnixfsError::Unsupported(m) if m.contains("symlink")));
        let few = Limits {
            max_files: 2,
            ..BIG
        };
        let err = unpack(&blocks, &root, &[], &dir.path().join("again"), &few).unwrap_err();
        assert!(
            matches!(err, UnixfsError::TooLarge(m) if m.contains("more than 2 files and folders"))
        );
    }

    #[test]
    fn unsafe_or_duplicate_names_are_refused() {
        let mut blocks = Blocks::new();
        let file = raw(&mut blocks, b"x");
        for bad in ["..", ".", "", "a/b", "/abs", "nul\0byte"] {
            let root = pb(&mut blocks, &[(&file, bad)], 1, b"", None);
            let dir = tempfile::tempdir().unwrap();
            let err = unpack(&blocks, &root, &[], &dir.path().join("out"), &BIG).unwrap_err();
            assert!(
                matches!(err, UnixfsError::BadName { ref name } if name == bad),
                "{bad:?}: {err}"
            );
        }
        let root = pb(
            &mut blocks,
            &[(&file, "same"), (&file, "same")],
            1,
            b"",
            None,
        );
        let dir = tempfile::tempdir().unwrap();
        let err = unpack(&blocks, &root, &[], dir.path(), &BIG).unwrap_err();
        assert!(matches!(err, UnixfsError::BadName { name } if name == "same"));
        assert!(safe_name("naïve café ☕.txt") && safe_name("...") && safe_name(".hidden"));
    }

    #[test]
    fn hamt_deep_and_amplifying_dags_are_refused() {
        let mut blocks = Blocks::new();
        let hamt = pb(&mut blocks, &[], 5, b"", None);
        let dir = tempfile::tempdir().unwrap();
        let err = unpack(&blocks, &hamt, &["x"], dir.path(), &BIG).unwrap_err();
        assert!(matches!(err, UnixfsError::Unsupported(m) if m.contains("HAMT")));
        let root = pb(&mut blocks, &[(&hamt, "shard")], 1, b"", None);
        let err = unpack(&blocks, &root, &[], &dir.path().join("h"), &BIG).unwrap_err();
        assert!(matches!(err, UnixfsError::Unsupported(m) if m.contains("shard is a HAMT")));

        let mut deep = raw(&mut blocks, b"bottom");
        for _ in 0..=MAX_DEPTH {
            deep = pb(&mut blocks, &[(&deep, "")], 2, b"", None);
        }
        let err = unpack(&blocks, &deep, &[], &dir.path().join("deep"), &BIG).unwrap_err();
        assert!(matches!(err, UnixfsError::Malformed(m) if m.contains("deeper than 64")));

        // 1000 × 1000 links to one empty leaf: a million loads, zero bytes written.
        let empty = raw(&mut blocks, b"");
        let wide = vec![(&empty, ""); 1000];
        let level1 = pb(&mut blocks, &wide, 2, b"", None);
        let wide = vec![(&level1, ""); 1000];
        let level2 = pb(&mut blocks, &wide, 2, b"", None);
        let err = unpack(&blocks, &level2, &[], &dir.path().join("amp"), &BIG).unwrap_err();
        assert!(matches!(err, UnixfsError::TooLarge(m) if m.contains("amplification")));
    }
}
