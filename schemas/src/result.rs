//! The result message: how a job ended and where its outputs went.
use serde::{Deserialize, Serialize};

/// The final outcome of one job (`shoal.result/v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMessage {
    /// Always [`crate::RESULT_SCHEMA`].
    pub schema: String,
    /// The job's id.
    pub job_id: String,
    /// How it ended.
    pub status: Status,
    /// The guest's exit status, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Captured stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<Stream>,
    /// Captured stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<Stream>,
    /// One entry per output mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputResult>,
    /// Resources used.
    #[serde(default)]
    pub usage: Usage,
    /// Which worker produced the result.
    pub worker: String,
    /// Delivery attempt, from 1.
    pub attempt: u32,
    /// When the job was published (RFC 3339, UTC, microseconds), from the
    /// message's publish-time header (`x-shoal-published-us`, else `-ms`,
    /// else its `timestamp`): the submitter's clock. For a local run, when
    /// the run began. Absent when the message said nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<String>,
    /// When the worker took this attempt (RFC 3339, UTC): the worker's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the worker finished the result (RFC 3339, UTC), just before
    /// storing and publishing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

impl ResultMessage {
    /// A result with only the fields every status has.
    pub fn new(job_id: impl Into<String>, status: Status, worker: impl Into<String>) -> Self {
        ResultMessage {
            schema: crate::RESULT_SCHEMA.to_owned(),
            job_id: job_id.into(),
            status,
            exit_code: None,
            error: None,
            stdout: None,
            stderr: None,
            outputs: Vec::new(),
            usage: Usage::default(),
            worker: worker.into(),
            attempt: 1,
            submitted_at: None,
            started_at: None,
            finished_at: None,
        }
    }

    /// A result for a job that never ran because of `kind`.
    pub fn failure(
        job_id: impl Into<String>,
        status: Status,
        kind: ErrorKind,
        message: impl Into<String>,
        worker: impl Into<String>,
    ) -> Self {
        let mut result = ResultMessage::new(job_id, status, worker);
        result.error = Some(ErrorInfo {
            kind,
            message: message.into(),
        });
        result
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The module exited with status 0.
    Succeeded,
    /// The job's own fault; retrying cannot help.
    Failed,
    /// Infrastructure gave up after its retries.
    Error,
    /// The message was not a valid job.
    Rejected,
    /// An operator cancelled it (`submit cancel`), before or while it ran;
    /// never retried.
    Cancelled,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Error => "error",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Why a job did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Machine-readable kind.
    pub kind: ErrorKind,
    /// Human-readable detail.
    pub message: String,
}

/// The closed set of error kinds (documented in `docs/ERRORS.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The module exited with a non-zero status.
    NonzeroExit,
    /// The module trapped (unreachable, out-of-bounds access, stack overflow, …).
    Trap,
    /// The module used all its fuel.
    OutOfFuel,
    /// The module tried to grow memory or tables past its limit.
    MemoryLimit,
    /// The module ran past its wall-clock limit.
    Timeout,
    /// The bytes are not a valid module, or it imports what nothing provides.
    InvalidModule,
    /// The entrypoint is not an exported function.
    MissingExport,
    /// The message is not a valid job.
    InvalidJob,
    /// An input or the module could not be obtained.
    InputUnavailable,
    /// An input or the module is larger than allowed.
    InputTooLarge,
    /// Fetching an input or the module was refused: a URL pointing at a
    /// loopback, private or link-local address, or a scheme not allowed.
    InputRefused,
    /// Content did not match its hash or CID.
    Integrity,
    /// Outputs exceeded their byte or file limits; what was kept is marked partial.
    OutputLimit,
    /// A bug or an infrastructure failure on our side.
    Internal,
    /// An operator cancelled the job (status `cancelled`).
    Cancelled,
}

impl ErrorKind {
    /// Every kind, for tables and tests.
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::NonzeroExit,
        ErrorKind::Trap,
        ErrorKind::OutOfFuel,
        ErrorKind::MemoryLimit,
        ErrorKind::Timeout,
        ErrorKind::InvalidModule,
        ErrorKind::MissingExport,
        ErrorKind::InvalidJob,
        ErrorKind::InputUnavailable,
        ErrorKind::InputTooLarge,
        ErrorKind::InputRefused,
        ErrorKind::Integrity,
        ErrorKind::OutputLimit,
        ErrorKind::Internal,
        ErrorKind::Cancelled,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NonzeroExit => "nonzero_exit",
            ErrorKind::Trap => "trap",
            ErrorKind::OutOfFuel => "out_of_fuel",
            ErrorKind::MemoryLimit => "memory_limit",
            ErrorKind::Timeout => "timeout",
            ErrorKind::InvalidModule => "invalid_module",
            ErrorKind::MissingExport => "missing_export",
            ErrorKind::InvalidJob => "invalid_job",
            ErrorKind::InputUnavailable => "input_unavailable",
            ErrorKind::InputTooLarge => "input_too_large",
            ErrorKind::InputRefused => "input_refused",
            ErrorKind::Integrity => "integrity",
            ErrorKind::OutputLimit => "output_limit",
            ErrorKind::Internal => "internal",
            ErrorKind::Cancelled => "cancelled",
        }
    }
}

/// Captured stdout or stderr.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    /// Bytes kept.
    pub size: u64,
    /// The guest wrote more than the cap.
    pub truncated: bool,
    /// SHA-256 of the kept bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The kept bytes, inline, when small and valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The kept bytes, inline, when small and not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// Where the kept bytes are stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// The files one output mount left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputResult {
    /// Mount name.
    pub name: String,
    /// Guest path of the mount.
    pub path: String,
    /// Where the files were stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Stored files, sorted by path.
    pub files: Vec<FileEntry>,
    /// Total bytes stored.
    pub bytes: u64,
    /// Some files were left out.
    pub partial: bool,
    /// What was left out, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
}

/// One stored output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the mount, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
}

/// A file of an output mount that was not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Path relative to the mount (lossy when the name is not UTF-8).
    pub path: String,
    /// Why it was left out.
    pub reason: SkipReason,
}

/// Why an output file was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Symlinks are never followed or stored.
    Symlink,
    /// Sockets, fifos and devices are never stored.
    SpecialFile,
    /// Past the byte or file limit.
    OutputLimit,
    /// The name is not valid UTF-8, so it cannot be named in the manifest.
    UnreadableName,
}

/// Resources a job used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Fuel consumed by the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_consumed: Option<u64>,
    /// Largest linear memory reached, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// Seconds per stage.
    #[serde(default)]
    pub durations: Durations,
    /// The compiled module came from a cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_cache_hit: Option<bool>,
}

/// Seconds spent in each stage of one attempt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Durations {
    /// From the message's timestamp to the worker picking it up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_secs: Option<f64>,
    /// Fetching the module and inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_secs: Option<f64>,
    /// Compiling (or loading) the module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile_secs: Option<f64>,
    /// Running the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_secs: Option<f64>,
    /// Storing outputs and the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_secs: Option<f64>,
}
