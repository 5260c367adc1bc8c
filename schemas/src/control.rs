//! Operating jobs: requests to every worker at once (`shoal.control/v1`
//! on the control exchange), the workers' answers, and the job index the
//! store keeps for `submit list`. None of these settles a job; only its
//! result does.
use crate::{JobState, Status};
use serde::{Deserialize, Serialize};

/// A request to every worker (`shoal.control/v1`), published to the fanout
/// control exchange (`shoal.control`); every worker binds a queue of its
/// own to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlMessage {
    /// Always [`crate::CONTROL_SCHEMA`].
    pub schema: String,
    /// What to do.
    pub action: Action,
    /// The jobs it is about (for `inspect`: empty means every job).
    #[serde(default)]
    pub job_ids: Vec<String>,
}

impl ControlMessage {
    /// A request to do `action` to `job_ids`.
    pub fn new(action: Action, job_ids: Vec<String>) -> Self {
        ControlMessage {
            schema: crate::CONTROL_SCHEMA.to_owned(),
            action,
            job_ids,
        }
    }
}

/// What a control message asks of the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Stop these jobs wherever they are (staging, waiting for a guest
    /// slot, running); each ends with a `cancelled` result. The durable
    /// record (`cancel/<id>` in the store) is the requester's to write
    /// first: it is what stops a job no worker holds yet.
    Cancel,
    /// Answer to the message's `reply_to` with an [`InspectReply`]: the
    /// jobs this worker holds.
    Inspect,
    /// Stream these jobs' stdout and stderr, from the first byte, to the
    /// results exchange (routing key `log.<id>`) while they run.
    Follow,
}

/// A worker's answer to `inspect` (`shoal.inspect/v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectReply {
    /// Always [`crate::INSPECT_SCHEMA`].
    pub schema: String,
    /// The worker answering.
    pub worker: String,
    /// The jobs it holds (of those asked about), staged, waiting or running.
    pub jobs: Vec<Activity>,
}

/// One job a worker holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// The job's id.
    pub job_id: String,
    /// Where it is.
    pub state: JobState,
    /// Delivery attempt, from 1.
    pub attempt: u32,
    /// Since when it is in this state (RFC 3339, UTC, the worker's clock).
    pub since: String,
    /// When the worker took it (RFC 3339, UTC).
    pub started_at: String,
    /// A cancel reached it and it is being stopped.
    #[serde(default)]
    pub cancelling: bool,
}

/// A job in the store's index (`shoal.index/v1`): what `submit list` shows
/// without reading each result. Written by a client when it submits (no
/// `status`) and by the worker that finished it (with `status`), under
/// keys that sort newest first (docs/PROTOCOL.md, "The job index").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Always [`crate::INDEX_SCHEMA`].
    pub schema: String,
    /// The job's id.
    pub job_id: String,
    /// How it ended; absent in a submitter's entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The worker that finished it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Delivery attempt of the result, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// When it was published (RFC 3339, UTC, microseconds): the key's time.
    pub submitted_at: String,
    /// When its last attempt started (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it finished (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The guest's exit status, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The error kind's wire name, when it did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
}
