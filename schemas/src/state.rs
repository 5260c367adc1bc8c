//! The state message: where a job is on its worker, for spinners and
//! dashboards. Best-effort by design; only the result settles a job.
use serde::{Deserialize, Serialize};

/// A job's progress on a worker (`shoal.state/v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMessage {
    /// Always [`crate::STATE_SCHEMA`].
    pub schema: String,
    /// The job's id.
    pub job_id: String,
    /// What the worker is doing with it.
    pub state: JobState,
    /// Which worker.
    pub worker: String,
    /// Delivery attempt, from 1.
    pub attempt: u32,
}

impl StateMessage {
    /// A state message for `job_id`.
    pub fn new(job_id: &str, state: JobState, worker: &str, attempt: u32) -> Self {
        StateMessage {
            schema: crate::STATE_SCHEMA.to_owned(),
            job_id: job_id.to_owned(),
            state,
            worker: worker.to_owned(),
            attempt,
        }
    }
}

/// The stages a worker reports. A job waiting in the queue has no state
/// message: "queued" is what a submitter knows until the first one arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Fetching the module and inputs.
    Staging,
    /// The guest runs.
    Running,
    /// Outputs and streams go to the results store.
    Publishing,
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobState::Staging => "staging",
            JobState::Running => "running",
            JobState::Publishing => "publishing",
        })
    }
}
