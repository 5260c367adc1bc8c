//! The wire result of a run: what the guest's end means for the job, and
//! its streams inline or by location.
use crate::execute::{Outcome, Report};
use base64::Engine as _;
use shoal_schemas::{
    Durations, ErrorInfo, ErrorKind, OutputResult, ResultMessage, Status, Stream, Usage,
};
use std::time::SystemTime;

/// How the guest's end maps onto the wire: status, exit code and error.
pub(crate) fn status_of(outcome: &Outcome) -> (Status, Option<i32>, Option<ErrorInfo>) {
    let fail = |kind, message: String| (Status::Failed, None, Some(ErrorInfo { kind, message }));
    match outcome {
        Outcome::Exited(0) => (Status::Succeeded, Some(0), None),
        Outcome::Exited(code) => (
            Status::Failed,
            Some(*code),
            Some(ErrorInfo {
                kind: ErrorKind::NonzeroExit,
                message: format!("exited with status {code}"),
            }),
        ),
        Outcome::Trapped(msg) => fail(ErrorKind::Trap, format!("trapped: {msg}")),
        Outcome::OutOfFuel => fail(
            ErrorKind::OutOfFuel,
            "ran out of fuel (raise limits.fuel, or check for an endless loop)".into(),
        ),
        Outcome::MemoryLimit(msg) => fail(ErrorKind::MemoryLimit, msg.clone()),
        Outcome::TimedOut => fail(
            ErrorKind::Timeout,
            "ran past its wall-clock limit (limits.timeout_ms)".into(),
        ),
        Outcome::InvalidModule(msg) => fail(ErrorKind::InvalidModule, msg.clone()),
        Outcome::MissingExport(msg) => fail(ErrorKind::MissingExport, msg.clone()),
        Outcome::DiskLimit(msg) => fail(ErrorKind::OutputLimit, msg.clone()),
        Outcome::Cancelled => {
            let e = crate::error::JobError::cancelled("while it ran");
            (
                e.status(),
                None,
                Some(ErrorInfo {
                    kind: e.kind,
                    message: e.message,
                }),
            )
        }
        // Not the job's: the pipeline retries these before a result is
        // made (`pipeline::executor_fault`); only a caller of the executor
        // that has no retry (a benchmark, a test) ever reports one.
        Outcome::Internal(msg) => (
            Status::Error,
            None,
            Some(ErrorInfo {
                kind: ErrorKind::Internal,
                message: msg.clone(),
            }),
        ),
    }
}

/// Builds a stream entry: inline when small (text if UTF-8, else base64).
pub(crate) fn stream_of(
    bytes: &[u8],
    truncated: bool,
    inline_cap: u64,
    location: Option<String>,
) -> Stream {
    let mut stream = Stream {
        size: bytes.len() as u64,
        truncated,
        sha256: Some(crate::store::sha256_hex(bytes)),
        text: None,
        base64: None,
        location,
    };
    if bytes.len() as u64 <= inline_cap {
        match std::str::from_utf8(bytes) {
            Ok(text) => stream.text = Some(text.to_owned()),
            Err(_) => stream.base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }
    }
    stream
}

/// The wire result of a run: status from the outcome, then `output_limit`
/// if a job that otherwise succeeded lost output files to its limits.
pub(crate) fn result_of(
    job_id: &str,
    worker: &str,
    report: &Report,
    outputs: Vec<OutputResult>,
    over_limit: bool,
) -> ResultMessage {
    let (mut status, exit_code, mut error) = status_of(&report.outcome);
    if over_limit && status == Status::Succeeded {
        status = Status::Failed;
        error = Some(ErrorInfo {
            kind: ErrorKind::OutputLimit,
            message: "outputs exceeded limits.max_output_bytes or limits.max_output_files; what was kept is marked partial".into(),
        });
    }
    let mut result = ResultMessage::new(job_id, status, worker);
    result.exit_code = exit_code;
    result.error = error;
    result.outputs = outputs;
    result.usage = Usage {
        fuel_consumed: report.fuel_consumed,
        peak_memory_bytes: Some(report.peak_memory_bytes),
        durations: Durations {
            compile_secs: Some(report.compile.as_secs_f64()),
            run_secs: Some(report.run.as_secs_f64()),
            ..Durations::default()
        },
        module_cache_hit: Some(report.cache_hit),
    };
    result
}

/// Writes when the job was submitted, when this attempt started and (now)
/// when it finished into `result`: operators ask "since when" and "how
/// long" of a result without the broker or the worker's logs. Each time
/// comes from one clock: `submitted` the submitter's, the others the
/// worker's, so compare `started_at` with `submitted_at` knowing that.
pub(crate) fn stamp(
    result: &mut ResultMessage,
    submitted: Option<SystemTime>,
    started: SystemTime,
) {
    result.submitted_at = submitted.map(rfc3339);
    result.started_at = Some(rfc3339(started));
    result.finished_at = Some(rfc3339(SystemTime::now()));
}

pub(crate) use crate::store::index::rfc3339;
