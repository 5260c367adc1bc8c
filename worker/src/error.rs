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

    /// The result status this error gets: `rejected` for a message that is
    /// not a valid job, `failed` for a valid job that cannot run.
    pub fn status(&self) -> Status {
        match self.kind {
            ErrorKind::InvalidJob => Status::Rejected,
            _ => Status::Failed,
        }
    }
}

/// Our side failed; the same job may well succeed on a later attempt.
#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    /// The object store (cache or results) failed.
    #[error("object store: {0}")]
    Store(String),
    /// The broker failed (connection, channel, publish, confirm).
    #[error("broker: {0}")]
    Broker(String),
    /// A source's origin could not be reached or answered 5xx/429; it may
    /// well answer on a later attempt.
    #[error("fetching: {0}")]
    Fetch(String),
    /// Local disk work for the job failed (scratch space, copying outputs).
    #[error("local disk: {0}")]
    Disk(String),
}

impl InfraError {
    /// The error kind of the `error` result this failure ends in once
    /// nothing retries it (after `amqp.max_attempts` in a fleet, at once in
    /// a local run): `input_unavailable` for a source that could not be
    /// reached, so the result says which side of the job failed, and
    /// `internal` for our own store, broker and disk.
    pub fn kind(&self) -> ErrorKind {
        match self {
            InfraError::Fetch(_) => ErrorKind::InputUnavailable,
            InfraError::Store(_) | InfraError::Broker(_) | InfraError::Disk(_) => {
                ErrorKind::Internal
            }
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
        ];
        for (error, kind) in table {
            assert_eq!(error.kind(), kind, "{error}");
        }
    }
}
