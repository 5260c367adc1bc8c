//! Unpacks the CARs in tests/fixtures/ipfs/ (made by ipfs-car and
//! ipfs-unixfs-importer, see make.sh there) and compares them byte for byte with the inputs.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use shoal_ipfs::unixfs::decode_pbnode;
use shoal_ipfs::{
    BlockFile, BlockSource, CarError, Cid, Kind, Limits, UnixfsError, Unpacked, index_car, unpack,
};

const LIMITS: Limits = Limits {
    max_bytes: 64 << 20,
    max_files: 1000,
};

fn fixture(name: &str) -> PathBuf {
    crate::support::fixture("ipfs").join(name)
}

/// cids.txt: name → (root CID, description).
fn cids() -> HashMap<String, (Cid, String)> {
    let text = fs::read_to_string(fixture("cids.txt")).unwrap();
    let rows = text.lines().filter(|l| !l.starts_with('#')).map(|l| {
        let cols: Vec<&str> = l.splitn(3, '\t').collect();
        (
            cols[0].to_string(),
            (Cid::parse(cols[1]).unwrap(), cols[2].to_string()),
        )
    });
    rows.collect()
}

/// Opens `name`.car and checks its header names the root from cids.txt.
fn open(name: &str) -> (BlockFile, Cid) {
    let car = BlockFile::open(&fixture(name), u64::MAX).unwrap();
    let root = cids()[name].0.clone();
    assert_eq!(car.roots(), std::slice::from_ref(&root));
    (car, root)
}

/// The CID at the end of a cids.txt description ("… block <cid> …").
fn block_named_in(name: &str) -> String {
    let what = &cids()[name].1;
    what.split_whitespace()
        .find(|w| w.starts_with("bafk"))
        .unwrap()
        .to_string()
}

fn assert_same_tree(want: &Path, got: &Path) {
    let names = |p: &Path| {
        let mut v: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(want), names(got), "entries of {}", got.display());
    for name in names(want) {
        let (w, g) = (want.join(&name), got.join(&name));
        assert_eq!(w.is_dir(), g.is_dir(), "{}", g.display());
        if w.is_dir() {
            assert_same_tree(&w, &g);
        } else {
            assert!(
                fs::read(&w).unwrap() == fs::read(&g).unwrap(),
                "content of {}",
                g.display()
            );
        }
    }
}

fn file(bytes: u64) -> Unpacked {
    Unpacked {
        kind: Kind::File,
        bytes,
        files: 1,
        dirs: 0,
        skipped: vec![],
    }
}

#[test]
fn single_raw_block_file() {
    let (car, root) = open("hello.car");
    assert_eq!((root.version(), root.codec(), car.len()), (1, 0x55, 1));
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out/hello.txt");
    let want = fs::read(fixture("inputs/hello.txt")).unwrap();
    assert_eq!(
        unpack(&car, &root, &[], &dest, &LIMITS).unwrap(),
        file(want.len() as u64)
    );
    assert_eq!(fs::read(&dest).unwrap(), want);
}

#[test]
fn multi_block_file_with_raw_leaves() {
    let (car, root) = open("random.car");
    assert_eq!((root.codec(), car.len()), (0x70, 4)); // root + three 1 MiB-or-less raw leaves
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("random.bin");
    let exact = Limits {
        max_bytes: 2_400_000,
        ..LIMITS
    };
    assert_eq!(
        unpack(&car, &root, &[], &dest, &exact).unwrap(),
        file(2_400_000)
    );
    assert!(fs::read(&dest).unwrap() == fs::read(fixture("inputs/random.bin")).unwrap());

    let one_short = Limits {
        max_bytes: 2_399_999,
        ..LIMITS
    };
    let err = unpack(&car, &root, &[], &dest, &one_short).unwrap_err();
    assert!(matches!(err, UnixfsError::TooLarge(m) if m == "more than 2399999 bytes"));
}

#[test]
fn cidv0_file_with_unixfs_leaves_and_deep_tree() {
    let (car, root) = open("small-chunks-v0.car");
    assert_eq!(root.version(), 0);
    // Depth of the DAG, walking first links: root → 2 interior levels → leaves.
    let (mut depth, mut cid) = (0, root.clone());
    loop {
        assert_eq!(
            cid.version(),
            0,
            "every block is CIDv0 dag-pb, leaves included"
        );
        let node = decode_pbnode(&car.get(&cid).unwrap().unwrap()).unwrap();
        let Some(first) = node.links.first() else {
            break;
        };
        (depth, cid) = (depth + 1, first.hash.clone());
    }
    assert_eq!(depth, 3);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("small.bin");
    assert_eq!(
        unpack(&car, &root, &[], &dest, &LIMITS).unwrap(),
        file(300_000)
    );
    assert!(fs::read(&dest).unwrap() == fs::read(fixture("inputs/small-chunks.bin")).unwrap());
}

#[test]
fn a_car_with_more_blocks_than_allowed_is_refused_while_indexing() {
    let (car, _) = open("small-chunks-v0.car");
    let blocks = car.len() as u64;
    assert!(blocks > 20, "{blocks} blocks");
    let path = fixture("small-chunks-v0.car");
    assert_eq!(BlockFile::open(&path, blocks).unwrap().len() as u64, blocks);
    match BlockFile::open(&path, blocks - 1) {
        Err(CarError::TooManyBlocks { limit }) => assert_eq!(limit, blocks - 1),
        Err(other) => panic!("expected TooManyBlocks, got {other}"),
        Ok(_) => panic!("expected TooManyBlocks, got a BlockFile"),
    }
}

#[test]
fn nested_directory_whole_and_by_path() {
    let (car, root) = open("tree.car");
    let tmp = tempfile::tempdir().unwrap();
    let exact = Limits {
        max_files: 9,
        ..LIMITS
    }; // 6 files + nested, sub, deeper
    let got = unpack(&car, &root, &[], &tmp.path().join("all"), &exact).unwrap();
    let want = Unpacked {
        kind: Kind::Directory,
        bytes: 158,
        files: 6,
        dirs: 3,
        skipped: vec![],
    };
    assert_eq!(got, want);
    assert_same_tree(&fixture("inputs/tree"), &tmp.path().join("all"));
    let err = unpack(
        &car,
        &root,
        &[],
        &tmp.path().join("capped"),
        &Limits {
            max_files: 8,
            ..LIMITS
        },
    )
    .unwrap_err();
    assert!(matches!(err, UnixfsError::TooLarge(m) if m == "more than 8 files and folders"));

    let got = unpack(
        &car,
        &root,
        &["nested"],
        &tmp.path().join("nested"),
        &LIMITS,
    )
    .unwrap();
    assert_eq!((got.kind, got.files, got.dirs), (Kind::Directory, 5, 2));
    assert_same_tree(&fixture("inputs/tree/nested"), &tmp.path().join("nested"));

    for path in [
        &["nested", "sub", "deeper", "file.txt"][..],
        &["nested", "naïve café ☕.txt"],
        &["nested", "empty.txt"],
    ] {
        let dest = tmp.path().join("one").join(path.last().unwrap());
        let want = fs::read(fixture("inputs/tree").join(path.join("/"))).unwrap();
        assert_eq!(
            unpack(&car, &root, path, &dest, &LIMITS).unwrap(),
            file(want.len() as u64)
        );
        assert_eq!(fs::read(&dest).unwrap(), want, "{path:?}");
    }

    let err = unpack(
        &car,
        &root,
        &["nested", "sub", "nope.txt"],
        &tmp.path().join("x"),
        &LIMITS,
    )
    .unwrap_err();
    assert!(
        matches!(err, UnixfsError::NotFound { path } if path == format!("{root}/nested/sub/nope.txt"))
    );
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn tampered_block_is_an_integrity_error() {
    let err = BlockFile::open(&fixture("random-tampered.car"), u64::MAX)
        .err()
        .unwrap();
    assert!(
        matches!(err, CarError::Integrity { cid } if cid == block_named_in("random-tampered.car"))
    );
}

#[test]
fn truncated_car_is_malformed() {
    let bytes = fs::read(fixture("random.car")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cut = tmp.path().join("cut.car");
    fs::write(&cut, &bytes[..1_000_000]).unwrap(); // inside the first 1 MiB block
    let err = BlockFile::open(&cut, u64::MAX).err().unwrap();
    assert!(matches!(err, CarError::Malformed(m) if m.contains("ends in the middle of a block")));
    let err = index_car(&bytes[..bytes.len() - 1], |_, _| Ok(())).unwrap_err();
    assert!(matches!(err, CarError::Malformed(_)));
}

#[test]
fn missing_block_is_reported_by_cid() {
    let (car, root) = open("tree-missing.car");
    let tmp = tempfile::tempdir().unwrap();
    let err = unpack(&car, &root, &[], &tmp.path().join("all"), &LIMITS).unwrap_err();
    assert!(
        matches!(err, UnixfsError::Missing { cid } if cid == block_named_in("tree-missing.car"))
    );
    // The rest of the DAG is intact.
    let dest = tmp.path().join("notes.md");
    unpack(&car, &root, &["nested", "sub", "notes.md"], &dest, &LIMITS).unwrap();
    assert_eq!(
        fs::read(&dest).unwrap(),
        fs::read(fixture("inputs/tree/nested/sub/notes.md")).unwrap()
    );
}

#[test]
fn streaming_reader_and_verify_on_read() {
    let hello = fs::read(fixture("inputs/hello.txt")).unwrap();
    let mut seen = Vec::new();
    let header = index_car(
        fs::File::open(fixture("hello.car")).unwrap(),
        |cid, block| {
            seen.push((cid.to_string(), block.to_vec()));
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(header.roots[0].to_string(), seen[0].0);
    assert_eq!(
        seen,
        vec![(cids()["hello.car"].0.to_string(), hello.clone())]
    );
    let err = index_car(fs::File::open(fixture("hello.car")).unwrap(), |_, _| {
        Err(io::Error::other("disk full"))
    });
    assert!(matches!(err, Err(CarError::Io(e)) if e.to_string() == "disk full"));

    // The scratch file is changed after indexing: reading the block back fails.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("hello.car");
    fs::copy(fixture("hello.car"), &copy).unwrap();
    let car = BlockFile::open(&copy, u64::MAX).unwrap();
    let root = car.roots()[0].clone();
    assert_eq!(car.get(&root).unwrap().unwrap(), hello);
    let mut bytes = fs::read(&copy).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    fs::File::create(&copy).unwrap().write_all(&bytes).unwrap();
    assert_eq!(
        car.get(&root).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
    let err = unpack(&car, &root, &[], &tmp.path().join("out"), &LIMITS).unwrap_err();
    assert!(matches!(err, UnixfsError::Io(e) if e.kind() == io::ErrorKind::InvalidData));
}
