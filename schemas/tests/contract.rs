//! The serde types and the JSON Schema files describe the same messages:
//! examples validate (or are refused, naming the field), what serde emits
//! validates, and what validates deserializes.
use serde_json::Value;
use shoal_schemas::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn examples(kind: &str) -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(kind);
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p: &PathBuf| {
            p.extension().is_some_and(|x| x == "json") && !p.ends_with("expected.json")
        })
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (name, value)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn check(name: &str, value: &Value) -> Result<(), Vec<SchemaError>> {
    if name.starts_with("job-") {
        validate_job_value(value)
    } else if name.starts_with("state-") {
        validate_state_value(value)
    } else {
        validate_result_value(value)
    }
}

#[test]
fn schema_files_are_2020_12() {
    for text in [JOB_SCHEMA_JSON, RESULT_SCHEMA_JSON, STATE_SCHEMA_JSON] {
        let schema: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
    }
}

#[test]
fn valid_examples_validate_and_deserialize_round_trip() {
    let all = examples("valid");
    assert!(
        all.len() >= 6,
        "expected the valid examples, found {}",
        all.len()
    );
    for (name, value) in all {
        check(&name, &value).unwrap_or_else(|e| panic!("{name} should be valid: {e:?}"));
        // What validates deserializes, and serializing again gives a message
        // that still validates and means the same.
        if name.starts_with("job-") {
            let job: JobMessage =
                serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let again = serde_json::to_value(&job).unwrap();
            validate_job_value(&again).unwrap_or_else(|e| panic!("{name} re-encoded: {e:?}"));
            assert_eq!(serde_json::from_value::<JobMessage>(again).unwrap(), job);
        } else if name.starts_with("state-") {
            let state: StateMessage =
                serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let again = serde_json::to_value(&state).unwrap();
            validate_state_value(&again).unwrap_or_else(|e| panic!("{name} re-encoded: {e:?}"));
        } else {
            let result: ResultMessage =
                serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let again = serde_json::to_value(&result).unwrap();
            validate_result_value(&again).unwrap_or_else(|e| panic!("{name} re-encoded: {e:?}"));
            assert_eq!(
                serde_json::from_value::<ResultMessage>(again).unwrap(),
                result,
                "{name}"
            );
        }
    }
}

#[test]
fn invalid_examples_are_refused_naming_the_field() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/invalid");
    let expected: BTreeMap<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let all = examples("invalid");
    assert_eq!(
        all.len(),
        expected.len() - 1,
        "every invalid example has an expectation"
    );
    for (name, value) in all {
        let want = expected[&name].as_str().unwrap();
        let errors = check(&name, &value).expect_err(&format!("{name} should be refused"));
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter().any(|t| t.contains(want)),
            "{name}: no error names {want:?}: {text:?}"
        );
    }
}

#[test]
fn decode_job_reports_syntax_and_schema_errors() {
    let err = decode_job(b"{not json").unwrap_err();
    assert!(err[0].message.starts_with("not JSON"), "{err:?}");
    let err = decode_job(br#"{"schema":"shoal.job/v2","module":{"sha256":"x"}}"#).unwrap_err();
    assert!(
        err[0].to_string().contains("unknown schema version"),
        "{err:?}"
    );
    let err = decode_job(br#"[1,2]"#).unwrap_err();
    assert!(!err.is_empty());
}

fn sha() -> String {
    "0123456789abcdef".repeat(4)
}

#[test]
fn what_serde_emits_validates() {
    for state in [JobState::Staging, JobState::Running, JobState::Publishing] {
        let message = StateMessage::new("job-1", state, "w", 1);
        let value = serde_json::to_value(&message).unwrap();
        validate_state_value(&value).unwrap();
        assert_eq!(value["state"], state.to_string());
    }
    let mut job = JobMessage::new(Source::new(Location::Sha256(sha())));
    validate_job_value(&serde_json::to_value(&job).unwrap()).unwrap();
    job.id = Some("job-1".into());
    job.args = vec!["a".into(), "".into()];
    job.env.insert("K".into(), "v=w".into());
    job.inputs = vec![
        Input {
            source: Source {
                location: Location::Url("https://example.com/x".into()),
                name: Some("x".into()),
                unpack: None,
            },
            path: None,
        },
        Input {
            source: Source {
                location: Location::Inline("aGk=".into()),
                name: None,
                unpack: Some(Unpack::File),
            },
            path: Some("/inputs/hi".into()),
        },
        Input {
            source: Source::new(Location::S3("s3://bucket/key".into())),
            path: None,
        },
        Input {
            source: Source::new(Location::Cid(
                "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi".into(),
            )),
            path: None,
        },
    ];
    job.outputs = Some(vec![OutputMount {
        name: "results".into(),
        path: "/results".into(),
    }]);
    job.limits = Limits {
        fuel: Some(u64::MAX),
        memory_bytes: Some(1 << 20),
        timeout_ms: Some(5),
        ..Limits::default()
    };
    let value = serde_json::to_value(&job).unwrap();
    validate_job_value(&value).unwrap();
    assert_eq!(serde_json::from_value::<JobMessage>(value).unwrap(), job);

    for status in [
        Status::Succeeded,
        Status::Failed,
        Status::Error,
        Status::Rejected,
    ] {
        for kind in ErrorKind::ALL {
            let mut result = ResultMessage::new("j", status, "w");
            if status == Status::Succeeded {
                result.exit_code = Some(0);
            } else {
                result.error = Some(ErrorInfo {
                    kind,
                    message: "m".into(),
                });
            }
            result.stdout = Some(Stream {
                size: 2,
                truncated: true,
                sha256: Some(sha()),
                text: Some("hi".into()),
                base64: None,
                location: None,
            });
            result.outputs = vec![OutputResult {
                name: "outputs".into(),
                path: "/outputs".into(),
                location: Some("results/j/outputs/".into()),
                files: vec![FileEntry {
                    path: "a/b.txt".into(),
                    size: 3,
                    sha256: sha(),
                }],
                bytes: 3,
                partial: true,
                skipped: vec![Skipped {
                    path: "link".into(),
                    reason: SkipReason::Symlink,
                }],
            }];
            result.usage.fuel_consumed = Some(7);
            result.usage.durations.run_secs = Some(0.5);
            let value = serde_json::to_value(&result).unwrap();
            validate_result_value(&value).unwrap_or_else(|e| panic!("{status:?}/{kind:?}: {e:?}"));
            assert_eq!(
                serde_json::from_value::<ResultMessage>(value).unwrap(),
                result
            );
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}

#[test]
fn error_kinds_in_schema_match_the_enum() {
    let schema: Value = serde_json::from_str(RESULT_SCHEMA_JSON).unwrap();
    let listed: Vec<&str> = schema["properties"]["error"]["properties"]["kind"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let ours: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(listed, ours);
}

/// `topology.json`, what clients in other languages declare, is exactly
/// what `topology.rs` declares: names, exchange types, queue flags and every
/// argument with its AMQP type.
#[test]
fn topology_json_is_what_the_rust_side_declares() {
    use shoal_schemas::topology::{
        CONTROL_EXCHANGE_TYPE, DEAD_LETTER_EXCHANGE_TYPE, RESULTS_EXCHANGE_TYPE, Topology,
    };
    let spec: Value = serde_json::from_str(TOPOLOGY_JSON).unwrap();
    let ours = Topology::default();
    assert_eq!(spec["protocol"], 1);
    let by_role = |list: &str, role: &str| -> Value {
        spec[list]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["role"] == role)
            .unwrap_or_else(|| panic!("no {role} in {list}"))
            .clone()
    };
    let dead = by_role("exchanges", "dead_letter");
    assert_eq!(dead["name"], ours.dead_letter.as_str());
    assert_eq!(dead["type"], DEAD_LETTER_EXCHANGE_TYPE);
    let results = by_role("exchanges", "results");
    assert_eq!(results["name"], ours.results_exchange.as_str());
    assert_eq!(results["type"], RESULTS_EXCHANGE_TYPE);
    let control = by_role("exchanges", "control");
    assert_eq!(control["name"], ours.control_exchange.as_str());
    assert_eq!(control["type"], CONTROL_EXCHANGE_TYPE);
    for exchange in [&dead, &results, &control] {
        assert_eq!(exchange["durable"], true);
        assert_eq!(exchange["auto_delete"], false);
        assert_eq!(exchange["arguments"], serde_json::json!({}));
    }
    let dead_queue = by_role("queues", "dead_letter");
    assert_eq!(dead_queue["name"], ours.dead_letter.as_str());
    let mut want_dead = serde_json::Map::new();
    for (name, value) in ours.dead_letter_queue_arguments() {
        want_dead.insert(name.to_owned(), argument_json(&value));
    }
    assert_eq!(dead_queue["arguments"], Value::Object(want_dead));
    assert_eq!(
        dead_queue["bindings"],
        serde_json::json!([{ "exchange": ours.dead_letter, "routing_key": "" }])
    );
    let jobs = by_role("queues", "jobs");
    assert_eq!(jobs["name"], ours.job_queue.as_str());
    let mut want = serde_json::Map::new();
    for (name, value) in ours.job_queue_arguments() {
        want.insert(name.to_owned(), argument_json(&value));
    }
    assert_eq!(jobs["arguments"], Value::Object(want));
    for queue in [&dead_queue, &jobs] {
        assert_eq!(queue["durable"], true, "{queue}");
        assert_eq!(queue["exclusive"], false, "{queue}");
        assert_eq!(queue["auto_delete"], false, "{queue}");
    }
}

/// A queue argument as `topology.json` writes it: its AMQP type and value.
fn argument_json(value: &shoal_schemas::topology::ArgumentValue) -> Value {
    use shoal_schemas::topology::ArgumentValue;
    match value {
        ArgumentValue::LongString(s) => serde_json::json!({ "type": "longstr", "value": s }),
        ArgumentValue::Int(n) => serde_json::json!({ "type": "signed-32", "value": n }),
    }
}
