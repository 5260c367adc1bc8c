//! Shoal's wire contract: the job and result messages.
//!
//! These serde types and the JSON Schema files beside this crate
//! (`job.schema.json`, `result.schema.json`) describe the same messages; the
//! tests in `tests/` check that each accepts what the other produces. The
//! schema files are the contract for services in other languages, so they are
//! written by hand (they carry patterns, `oneOf` and descriptions that derive
//! macros cannot express) and kept honest by those tests.
//!
//! This crate depends on no other workspace crate: workers and submitters
//! convert their own types to and from these at the edge.
#![warn(missing_docs)]

mod control;
mod job;
mod result;
mod state;
pub mod topology;
mod validate;

pub use control::{Action, Activity, ControlMessage, IndexEntry, InspectReply};
pub use job::{ImportModule, Input, JobMessage, Limits, Location, OutputMount, Source, Unpack};
pub use result::{
    Durations, ErrorInfo, ErrorKind, FileEntry, OutputResult, ResultMessage, SkipReason, Skipped,
    Status, Stream, Usage,
};
pub use state::{JobState, StateMessage};
pub use validate::{
    SchemaError, decode_job, validate_job_value, validate_result_value, validate_state_value,
};

/// Version tag of job messages this crate speaks.
pub const JOB_SCHEMA: &str = "shoal.job/v1";
/// Version tag of result messages this crate speaks.
pub const RESULT_SCHEMA: &str = "shoal.result/v1";
/// Version tag of state messages this crate speaks.
pub const STATE_SCHEMA: &str = "shoal.state/v1";
/// Version tag of control messages (cancel, inspect, follow).
pub const CONTROL_SCHEMA: &str = "shoal.control/v1";
/// Version tag of a worker's answer to `inspect`.
pub const INSPECT_SCHEMA: &str = "shoal.inspect/v1";
/// Version tag of the store's job index entries.
pub const INDEX_SCHEMA: &str = "shoal.index/v1";
/// Type of the messages that carry a followed job's output (`log.<id>`).
pub const LOG_SCHEMA: &str = "shoal.log/v1";
/// The job message JSON Schema (2020-12), as shipped in `schemas/job.schema.json`.
pub const JOB_SCHEMA_JSON: &str = include_str!("../job.schema.json");
/// The AMQP topology (exchanges, queues, their exact arguments) for
/// clients in other languages, as shipped in `schemas/topology.json`.
pub const TOPOLOGY_JSON: &str = include_str!("../topology.json");
/// The result message JSON Schema (2020-12), as shipped in `schemas/result.schema.json`.
pub const RESULT_SCHEMA_JSON: &str = include_str!("../result.schema.json");
/// The state message JSON Schema (2020-12), as shipped in `schemas/state.schema.json`.
pub const STATE_SCHEMA_JSON: &str = include_str!("../state.schema.json");
