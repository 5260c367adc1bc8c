//! Property-based fuzzing of the job decoder and validator (proptest: the
//! machine's stable toolchain cannot run cargo-fuzz). The default run is
//! short enough for CI; a longer one:
//! `PROPTEST_CASES=200000 cargo test --release -p shoal-schemas --test fuzz`.
//! A failing case is printed minimized; add it to `regressions` below.
use proptest::prelude::*;
use shoal_schemas::{decode_job, validate_job_value};

fn examples() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut out = Vec::new();
    for sub in ["valid", "invalid"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("job-") {
                out.push(std::fs::read(&path).unwrap());
            }
        }
    }
    assert!(out.len() >= 5, "examples missing");
    out
}

/// One edit of a byte string: flip, insert or delete at a position.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        if bytes.is_empty() {
            break;
        }
        match *edit {
            Edit::Flip(i, x) => {
                let i = i % bytes.len();
                bytes[i] ^= x.max(1);
            }
            Edit::Insert(i, b) => {
                let i = i % (bytes.len() + 1);
                bytes.insert(i, b);
            }
            Edit::Delete(i) => {
                let i = i % bytes.len();
                bytes.remove(i);
            }
        }
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Edit::Flip(i, x)),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
            any::<usize>().prop_map(Edit::Delete),
        ],
        1..8,
    )
}

/// Whatever decodes is a job that re-encodes to a valid message and decodes
/// to itself: the validator and the types agree.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(job) = decode_job(bytes) {
        let value = serde_json::to_value(&job).unwrap();
        prop_assert!(
            validate_job_value(&value).is_ok(),
            "decoded but does not re-validate: {value}"
        );
        let again = decode_job(&serde_json::to_vec(&value).unwrap());
        prop_assert_eq!(again.ok(), Some(job));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes)?;
    }

    #[test]
    fn edited_examples_are_decoded_consistently(which in any::<usize>(), edits in edits()) {
        let examples = examples();
        let bytes = apply(examples[which % examples.len()].clone(), &edits);
        check(&bytes)?;
    }

    #[test]
    fn arbitrary_json_values_never_panic_the_validator(value in json()) {
        let _ = validate_job_value(&value);
        check(&serde_json::to_vec(&value).unwrap())?;
    }
}

/// JSON values shaped a little like jobs: the job's own keys are likely.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let key = prop_oneof![
        Just("schema".to_owned()),
        Just("id".to_owned()),
        Just("module".to_owned()),
        Just("sha256".to_owned()),
        Just("url".to_owned()),
        Just("cid".to_owned()),
        Just("inline".to_owned()),
        Just("args".to_owned()),
        Just("env".to_owned()),
        Just("inputs".to_owned()),
        Just("limits".to_owned()),
        "[a-z]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        Just(Value::from("shoal.job/v1")),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Cases a fuzzer found, kept as regression tests.
#[test]
fn regressions() {
    for bytes in [&b""[..], b"{", b"null", b"{\"schema\":\"shoal.job/v1\"}"] {
        check(bytes).unwrap();
    }
}
