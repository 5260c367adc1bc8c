//! Submit WebAssembly jobs to Shoal.
//!
//! This crate is both the library that backend services use to build and
//! send job messages and the `submit` command line tool. The wire types are
//! re-exported from [`shoal_schemas`], so a service needs only this crate:
//!
//! ```
//! use shoal_submitter::{JobMessage, Location, Source};
//!
//! let mut job = JobMessage::new(Source::new(Location::Sha256("ab".repeat(32))));
//! job.args = vec!["hello".into()];
//! job.env.insert("HELLO".into(), "world".into());
//! let body = serde_json::to_vec(&job).unwrap();
//! assert!(shoal_submitter::validate(&body).is_ok());
//! ```
//!
//! With the `local` feature (on by default) [`local`] runs jobs in-process
//! with the worker's own pipeline, which is how `submit run --local` works.
#![warn(missing_docs)]

pub mod args;
pub mod client;
#[cfg(feature = "local")]
pub mod local;
pub mod migrate;
#[cfg(feature = "local")]
pub mod operate;

pub use client::{Client, ClientError, ClientOptions, JobHandle};
pub use shoal_schemas::topology::Topology;
pub use shoal_schemas::{
    ErrorKind, ImportModule, Input, JobMessage, JobState, Limits, Location, OutputMount,
    ResultMessage, SchemaError, Source, StateMessage, Status, Unpack,
};

/// Checks a job message body the way a worker will: JSON, then the schema.
pub fn validate(body: &[u8]) -> Result<JobMessage, Vec<SchemaError>> {
    shoal_schemas::decode_job(body)
}

/// The exit code `submit` uses for a result (documented in the README):
/// the guest's own status when it exited; 124 for a timeout; 125 for any
/// other failure without an exit status (a trap, a limit, a bad module, a
/// missing input, outputs over their limit); 126 when the job was rejected
/// as invalid; 127 when the infrastructure gave up; 130 when it was
/// cancelled (as a shell reports a command stopped by Ctrl-C).
pub fn exit_code_of(result: &ResultMessage) -> i32 {
    let kind = result.error.as_ref().map(|e| e.kind);
    match (result.status, result.exit_code, kind) {
        (Status::Rejected, _, _) => 126,
        (Status::Error, _, _) => 127,
        (Status::Cancelled, _, _) => 130,
        (_, _, Some(ErrorKind::Timeout)) => 124,
        (_, Some(code), None | Some(ErrorKind::NonzeroExit)) => {
            // Shells see only the low 8 bits; never let a failure look like success.
            match code & 0xff {
                0 if code != 0 => 1,
                low => low,
            }
        }
        _ => 125,
    }
}
