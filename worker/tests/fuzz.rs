//! Property-based fuzzing (proptest; cargo-fuzz needs a nightly toolchain
//! this machine does not have) of the two decoders that read what others
//! send us: the guest path resolver and the CAR/UnixFS reader. The default
//! run is short enough for CI; a longer one:
//! `PROPTEST_CASES=100000 cargo test --release -p shoal-worker --test fuzz`.
//! A failing case is printed minimized; add it to `regressions` below.
use proptest::prelude::*;
use shoal_ipfs::{Cid, Limits, index_car, unixfs, unpack};
use shoal_worker::paths::{GuestPath, input_path, output_path};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/ipfs")
        .join(name)
}

/// Guest paths built from pieces that matter: separators, dots, NUL, backslashes.
fn guest_path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("/".to_owned()),
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just("inputs".to_owned()),
            Just("outputs".to_owned()),
            Just("\0".to_owned()),
            Just("\\".to_owned()),
            "[a-zé ☕]{1,6}",
        ],
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn a_parsed_guest_path_is_clean_and_stable(path in guest_path()) {
        if let Ok(parsed) = GuestPath::parse(&path) {
            for c in parsed.components() {
                prop_assert!(!c.is_empty() && c != "." && c != "..", "{path:?} -> {c:?}");
                prop_assert!(!c.contains(['/', '\0', '\\']), "{path:?} -> {c:?}");
            }
            prop_assert_eq!(GuestPath::parse(&parsed.to_string()).unwrap(), parsed);
        }
        if let Ok(p) = input_path(&path) {
            prop_assert!(p.starts_with(&GuestPath::inputs_root()), "{path:?}");
        }
        if let Ok(p) = output_path(&path) {
            prop_assert!(!p.overlaps(&GuestPath::inputs_root()) && !p.is_root(), "{path:?}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = index_car(&bytes[..], |_, _| Ok(()));
        let _ = unixfs::decode_pbnode(&bytes);
        let _ = unixfs::decode_unixfs(&bytes);
        let _ = Cid::from_bytes(&bytes);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = Cid::parse(text);
        }
    }

    /// Whatever damage a CAR takes, reading it never panics, and if the
    /// tree still unpacks, it is byte for byte the original: every block is
    /// checked against its CID, so no edit can change the content.
    #[test]
    fn a_damaged_car_unpacks_to_the_original_or_not_at_all(
        which in 0usize..3,
        flips in prop::collection::vec((any::<usize>(), 1u8..=255), 1..4),
        cut in prop::option::of(any::<usize>()),
    ) {
        let (name, original) = [
            ("hello.car", "inputs/hello.txt"),
            ("tree.car", "inputs/tree"),
            ("small-chunks-v0.car", "inputs/small-chunks.bin"),
        ][which];
        let mut bytes = std::fs::read(fixture(name)).unwrap();
        let root = {
            let mut roots = Vec::new();
            let header = index_car(&bytes[..], |_, _| Ok(())).unwrap();
            roots.extend(header.roots);
            roots[0].clone()
        };
        for (i, x) in flips {
            let i = i % bytes.len();
            bytes[i] ^= x;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        let mut blocks: HashMap<Cid, Vec<u8>> = HashMap::new();
        let read = index_car(&bytes[..], |cid, block| {
            blocks.insert(cid.clone(), block.to_vec());
            Ok(())
        });
        if read.is_err() {
            return Ok(());
        }
        let dest = tempfile::tempdir().unwrap();
        let out = dest.path().join("out");
        let limits = Limits { max_bytes: 64 << 20, max_files: 1000 };
        if unpack(&blocks, &root, &[], &out, &limits).is_ok() {
            prop_assert!(same_tree(&fixture(original), &out), "{name}: unpacked content differs");
        }
    }
}

fn same_tree(want: &Path, got: &Path) -> bool {
    if want.is_file() {
        return std::fs::read(want).ok() == std::fs::read(got).ok();
    }
    let names = |p: &Path| -> Vec<std::ffi::OsString> {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let (a, b) = (names(want), names(got));
    a == b && a.iter().all(|n| same_tree(&want.join(n), &got.join(n)))
}

/// Cases a fuzzer found, kept as regression tests.
#[test]
fn regressions() {
    for path in ["/", "//inputs//x", "/inputs/..", "inputs", "/a\\b", "/\0"] {
        let _ = GuestPath::parse(path);
    }
    assert!(input_path("/inputs/../etc").is_err());
    assert!(output_path("/inputs").is_err());
}
