//! Validation of raw JSON against the shipped schemas, with errors that name
//! the offending field (a JSON pointer such as `/limits/fuel`).
use crate::{JOB_SCHEMA, JOB_SCHEMA_JSON, JobMessage, RESULT_SCHEMA_JSON, STATE_SCHEMA_JSON};
use serde_json::Value;
use std::fmt;
use std::sync::LazyLock;

static JOB_VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| compile(JOB_SCHEMA_JSON));
static RESULT_VALIDATOR: LazyLock<jsonschema::Validator> =
    LazyLock::new(|| compile(RESULT_SCHEMA_JSON));
static STATE_VALIDATOR: LazyLock<jsonschema::Validator> =
    LazyLock::new(|| compile(STATE_SCHEMA_JSON));

fn compile(text: &str) -> jsonschema::Validator {
    // The schemas are compiled into the binary and checked by this crate's
    // tests, so failing here is a build defect, not a runtime condition.
    let schema: Value = serde_json::from_str(text).expect("shipped schema is JSON");
    jsonschema::draft202012::new(&schema).expect("shipped schema compiles")
}

/// One reason a message does not match its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// JSON pointer to the offending value; empty for the whole message.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "(message): {}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every reason `value` fails `validator`, or `Ok`.
fn judge(validator: &jsonschema::Validator, value: &Value) -> Result<(), Vec<SchemaError>> {
    let errors: Vec<SchemaError> = validator
        .iter_errors(value)
        .map(|e| SchemaError {
            path: e.instance_path().to_string(),
            message: e.to_string(),
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Checks a job message against `job.schema.json`. An unknown `schema`
/// version is reported alone, since the rest of the message cannot be judged
/// against a contract it does not claim.
pub fn validate_job_value(value: &Value) -> Result<(), Vec<SchemaError>> {
    match value.get("schema") {
        Some(Value::String(v)) if v == JOB_SCHEMA => {}
        Some(other) => {
            return Err(vec![SchemaError {
                path: "/schema".into(),
                message: format!(
                    "unknown schema version {other} (this worker speaks \"{JOB_SCHEMA}\")"
                ),
            }]);
        }
        None if value.is_object() => {
            return Err(vec![SchemaError {
                path: "/schema".into(),
                message: format!("missing; set \"schema\": \"{JOB_SCHEMA}\""),
            }]);
        }
        None => {}
    }
    judge(&JOB_VALIDATOR, value)
}

/// Checks a result message against `result.schema.json`.
pub fn validate_result_value(value: &Value) -> Result<(), Vec<SchemaError>> {
    judge(&RESULT_VALIDATOR, value)
}

/// Checks a state message against `state.schema.json`.
pub fn validate_state_value(value: &Value) -> Result<(), Vec<SchemaError>> {
    judge(&STATE_VALIDATOR, value)
}

/// Parses and validates a job message body: JSON syntax, then the schema,
/// then the serde types. Every error names the field it is about.
pub fn decode_job(body: &[u8]) -> Result<JobMessage, Vec<SchemaError>> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        vec![SchemaError {
            path: String::new(),
            message: format!("not JSON: {e}"),
        }]
    })?;
    validate_job_value(&value)?;
    serde_json::from_value(value).map_err(|e| {
        vec![SchemaError {
            path: String::new(),
            message: format!("does not match the job type: {e}"),
        }]
    })
}
