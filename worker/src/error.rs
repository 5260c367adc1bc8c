//! Errors say whose fault it was, because that decides what happens next.
//!
//! - [`JobError`]: this job can never succeed as submitted (invalid message,
//!   missing input, bad module). It becomes a `rejected` or `failed` result.
//! - [`InfraError`]: we could not do our part (store or broker unreachable).
//!   Nothing is published; the message is retried, then dead-lettered.
//!
//! What the guest itself did (exit codes, traps, limits) is neither: it is an
//! `execute::Outcome`, published as the job's result.
use shoal_schemas::{ErrorKind, Status};

/// The job's own fault: retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    /// The result's error kind.
    pub kind: ErrorKind,
    /// What was wrong, naming the field or source.
    pub message: String,
}

impl JobError {
    /// A job error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        JobError {
            kind,
            message: message.into(),
        }
    }

    /// An invalid job: the message itself is wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        JobError::new(ErrorKind::InvalidJob, message)
    }

    /// An operator cancelled the job `when` ("before it ran", "while it
    /// ran", …): status `cancelled`, never retried.
    pub fn cancelled(when: &str) -> Self {
        JobError::new(
            ErrorKind::Cancelled,
            format!("cancelled by an operator {when} (submit cancel)"),
        )
    }

    /// The result status this error gets: `rejected` for a message that is
    /// not a valid job, `failed` for a valid job that cannot run.
    pub fn status(&self) -> Status {
        match self.kind {
            ErrorKind::InvalidJob => Status::Rejected,
            ErrorKind::Cancelled => Status::Cancelled,
            _ => Status::Failed,
        }
    }
}

/// Our side failed; the same job may well succeed on a later attempt.
/// Each variant names the part of ours that failed; its [`Cause`] says what
/// we were doing and keeps the error that caused it as the `source`.
#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    /// The object store (cache or results) failed.
    #[error("object store: {0}")]
    Store(#[source] Cause),
    /// The broker failed (connection, channel, publish, confirm).
    #[error("broker: {0}")]
    Broker(#[source] Cause),
    /// A source's origin could not be reached or answered 5xx/429; it may
    /// well answer on a later attempt.
    #[error("fetching: {0}")]
    Fetch(#[source] Cause),
    /// Local disk work for the job failed (scratch space, copying outputs).
    #[error("local disk: {0}")]
    Disk(#[source] Cause),
    /// The executor failed, not the guest: its instance pool was full, the
    /// guest's thread panicked, its runtime or a mount could not be set up.
    #[error("executor: {0}")]
    Executor(#[source] Cause),
}

/// What we were doing when our side failed, and the error that caused it.
/// Shown as `doing: cause`, so a log line or a result's message carries
/// the whole story; [`std::error::Error::source`] gives the cause itself.
#[derive(Debug)]
pub struct Cause {
    doing: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Cause {
    /// `doing` failed because of `source`.
    pub fn new(
        doing: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Cause {
        Cause {
            doing: doing.into(),
            source: Some(source.into()),
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.doing),
            None => f.write_str(&self.doing),
        }
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A failure whose own words are the whole story (no underlying error).
impl From<String> for Cause {
    fn from(doing: String) -> Cause {
        Cause {
            doing,
            source: None,
        }
    }
}

impl From<&str> for Cause {
    fn from(doing: &str) -> Cause {
        Cause::from(doing.to_owned())
    }
}

impl InfraError {
    /// The error kind of the `error` result this failure ends in once
    /// nothing retries it (after `amqp.max_attempts` in a fleet, at once in
    /// a local run): `input_unavailable` for a source that could not be
    /// reached, so the result says which side of the job failed, and
    /// `internal` for our own store, broker, disk and executor.
    pub fn kind(&self) -> ErrorKind {
        match self {
            InfraError::Fetch(_) => ErrorKind::InputUnavailable,
            InfraError::Store(_)
            | InfraError::Broker(_)
            | InfraError::Disk(_)
            | InfraError::Executor(_) => ErrorKind::Internal,
        }
    }
}

/// Either kind of failure before or after the guest ran.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job's fault.
    #[error(transparent)]
    Job(#[from] JobError),
    /// Our fault.
    #[error(transparent)]
    Infra(#[from] InfraError),
}

/// What a caught panic said (its `&str` or `String` payload), for the
/// log or the report of what it ended.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// An error and its causes on one line, `a: b: c`, each cause shown once:
/// ours already carry their cause's words in their own (a result's message
/// must tell the whole story), so a cause whose words end the line so far
/// is not repeated, as printing the chain with anyhow's `{:#}` would.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let words = c.to_string();
        if !line.ends_with(&words) {
            line.push_str(": ");
            line.push_str(&words);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_source_ends_as_input_unavailable_the_rest_as_internal() {
        let table = [
            (
                InfraError::Fetch("origin".into()),
                ErrorKind::InputUnavailable,
            ),
            (InfraError::Store("bucket".into()), ErrorKind::Internal),
            (InfraError::Broker("channel".into()), ErrorKind::Internal),
            (InfraError::Disk("scratch".into()), ErrorKind::Internal),
            (InfraError::Executor("pool".into()), ErrorKind::Internal),
        ];
        for (error, kind) in table {
            assert_eq!(error.kind(), kind, "{error}");
        }
    }

    #[test]
    fn a_chain_shows_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = InfraError::Disk(Cause::new("reading x", io));
        assert_eq!(chain(&error), "local disk: reading x: no such file");
        let wrapped = anyhow::Error::from(error).context("running the job");
        assert_eq!(
            chain(&*wrapped),
            "running the job: local disk: reading x: no such file"
        );
    }

    #[test]
    fn a_cause_is_shown_and_kept_as_the_source() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = InfraError::Disk(Cause::new("reading x", io));
        assert_eq!(error.to_string(), "local disk: reading x: no such file");
        let cause = error.source().expect("the cause");
        assert_eq!(cause.to_string(), "reading x: no such file");
        assert_eq!(
            cause.source().expect("the io error").to_string(),
            "no such file"
        );
    }
}
