//! What happens to a delivery, decided in one place from what the pipeline
//! returned: the whole of Shoal's retry policy is [`disposition`].
//!
//! | the pipeline returned                  | disposition                                  |
//! |----------------------------------------|----------------------------------------------|
//! | a result (succeeded, failed, rejected) | publish it, then ack: never retried          |
//! | a refusal (not a job, too large)       | `rejected` result if it names an id, dead-letter, ack |
//! | our failure, attempts left             | back off, then nack with requeue             |
//! | our failure, `amqp.max_attempts` used  | `error` result, dead-letter, ack             |
//!
//! A job's own failure (any error kind of a `failed` or `rejected` result)
//! is final: the same job would fail the same way. Our failures (a store,
//! the broker, an origin, the disk, the executor) are retried, because the
//! next attempt, maybe on another worker, may well succeed.
use crate::error::InfraError;
use crate::job::Refusal;
use rand::Rng;
use shoal_schemas::ResultMessage;
use std::time::Duration;

/// What the pipeline made of one delivery.
#[derive(Debug)]
pub(super) enum Processed {
    /// The job ended by its own doing; its result is stored.
    Done(Box<ResultMessage>),
    /// The message is not a job.
    Refused(Refusal),
    /// Our side failed at job `job_id`.
    Failed {
        /// The job's id.
        job_id: String,
        /// What failed.
        error: InfraError,
    },
}

/// What to do with the delivery, with what it needs for that.
#[derive(Debug)]
pub(super) enum Disposition {
    /// Publish the result with confirms, then ack.
    Publish(Box<ResultMessage>),
    /// Not a job: a `rejected` result when it names an id, a copy to the
    /// dead-letter exchange with the refusal's reason, then ack.
    DeadLetter(Refusal),
    /// Wait `delay`, then nack with requeue, for another attempt.
    Retry {
        /// The job's id.
        job_id: String,
        /// The backoff before the nack.
        delay: Duration,
        /// What failed.
        error: InfraError,
    },
    /// Out of attempts: an `error` result (kind from the failure), a copy
    /// to the dead-letter exchange (`retries_exhausted`), then ack.
    GiveUp {
        /// The job's id.
        job_id: String,
        /// What failed, last.
        error: InfraError,
    },
}

/// Retry settings, from `[amqp]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct RetryPolicy {
    /// Attempts before giving up (`amqp.max_attempts`).
    pub max_attempts: u32,
    /// First backoff (`amqp.retry_base_ms`), doubled per attempt.
    pub base_ms: u64,
    /// Longest backoff (`amqp.retry_max_ms`).
    pub max_ms: u64,
}

/// The disposition of attempt `attempt` (from 1) that ended as `processed`.
pub(super) fn disposition(processed: Processed, attempt: u32, policy: RetryPolicy) -> Disposition {
    match processed {
        Processed::Done(result) => Disposition::Publish(result),
        Processed::Refused(refusal) => Disposition::DeadLetter(refusal),
        Processed::Failed { job_id, error } if attempt >= policy.max_attempts => {
            Disposition::GiveUp { job_id, error }
        }
        Processed::Failed { job_id, error } => Disposition::Retry {
            job_id,
            delay: backoff(attempt, policy.base_ms, policy.max_ms, false),
            error,
        },
    }
}

/// Exponential backoff, capped, optionally with full jitter.
pub(super) fn backoff(attempt: u32, base_ms: u64, max_ms: u64, jitter: bool) -> Duration {
    let exp = base_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
        .min(max_ms);
    let ms = if jitter {
        rand::rng().random_range(exp / 2..=exp.max(1))
    } else {
        exp
    };
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::JobError;
    use crate::execute::{Outcome, Report};
    use crate::pipeline::executor_fault;
    use crate::publish::result_of;
    use shoal_schemas::{ErrorKind, Status};

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base_ms: 100,
        max_ms: 1000,
    };

    /// The disposition in words, to compare.
    fn action(d: &Disposition) -> String {
        match d {
            Disposition::Publish(_) => "publish".into(),
            Disposition::DeadLetter(refusal) => format!("dead-letter {}", refusal.reason),
            Disposition::Retry { delay, .. } => format!("retry in {} ms", delay.as_millis()),
            Disposition::GiveUp { .. } => "give up".into(),
        }
    }

    fn failed(error: InfraError) -> Processed {
        Processed::Failed {
            job_id: "j".into(),
            error,
        }
    }

    /// What the pipeline returns for a guest that ended this way.
    fn ran(outcome: Outcome) -> Processed {
        let report = Report::early(outcome, Duration::ZERO, false);
        match executor_fault(&report.outcome) {
            Some(error) => Processed::Failed {
                job_id: "j".into(),
                error,
            },
            None => Processed::Done(Box::new(result_of("j", "w", &report, vec![], false))),
        }
    }

    #[test]
    fn every_failure_of_the_job_is_final_and_every_failure_of_ours_is_retried() {
        let publish = || "publish".to_owned();
        let retry = |attempt| {
            let delay = backoff(attempt, POLICY.base_ms, POLICY.max_ms, false);
            format!("retry in {} ms", delay.as_millis())
        };
        // Every error kind a job can end with on its own: staged or
        // validated, published at once, never retried.
        let mut table: Vec<(String, Processed, String)> = ErrorKind::ALL
            .iter()
            .filter(|kind| **kind != ErrorKind::Internal)
            .map(|kind| {
                let e = JobError::new(*kind, "x");
                let result = ResultMessage::failure("j", e.status(), e.kind, e.message, "w");
                (
                    format!("job error {kind:?}"),
                    Processed::Done(Box::new(result)),
                    publish(),
                )
            })
            .collect();
        // Every way a guest ends: its own result, except the executor's
        // failures, which are ours.
        let outcomes = [
            (Outcome::Exited(0), publish()),
            (Outcome::Exited(3), publish()),
            (Outcome::Trapped("unreachable".into()), publish()),
            (Outcome::OutOfFuel, publish()),
            (Outcome::MemoryLimit("grew".into()), publish()),
            (Outcome::TimedOut, publish()),
            (Outcome::DiskLimit("full".into()), publish()),
            (Outcome::InvalidModule("bad".into()), publish()),
            (Outcome::MissingExport("_start".into()), publish()),
            (Outcome::Cancelled, publish()),
            (
                Outcome::Internal("the instance pool is full".into()),
                retry(1),
            ),
        ];
        for (outcome, want) in outcomes {
            table.push((format!("outcome {outcome:?}"), ran(outcome), want));
        }
        // Messages that are not jobs.
        for reason in ["too_large", "invalid_job"] {
            let refusal = Refusal {
                id: None,
                reason,
                error: JobError::invalid("x"),
            };
            table.push((
                format!("refusal {reason}"),
                Processed::Refused(refusal),
                format!("dead-letter {reason}"),
            ));
        }
        // Every failure of ours.
        let ours = || {
            [
                InfraError::Store("bucket".into()),
                InfraError::Broker("channel".into()),
                InfraError::Fetch("origin".into()),
                InfraError::Disk("scratch".into()),
                InfraError::Executor("pool".into()),
            ]
        };
        for e in ours() {
            table.push((format!("{e} (first attempt)"), failed(e), retry(1)));
        }
        for e in ours() {
            table.push((format!("{e} (second attempt)"), failed(e), retry(2)));
        }
        for e in ours() {
            table.push((format!("{e} (last attempt)"), failed(e), "give up".into()));
        }
        assert_eq!(table.len(), 14 + 11 + 2 + 15, "every case is in the table");
        for (name, processed, want) in table {
            let attempt = if name.contains("last") {
                3
            } else if name.contains("second") {
                2
            } else {
                1
            };
            assert_eq!(
                action(&disposition(processed, attempt, POLICY)),
                want,
                "{name}"
            );
        }
        // A job's own failure stays final however many attempts it took.
        match disposition(ran(Outcome::Exited(1)), 3, POLICY) {
            Disposition::Publish(result) => assert_eq!(result.status, Status::Failed),
            other => panic!("a failed job was not published: {other:?}"),
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1, 500, 30_000, false), Duration::from_millis(500));
        assert_eq!(backoff(2, 500, 30_000, false), Duration::from_millis(1000));
        assert_eq!(
            backoff(10, 500, 30_000, false),
            Duration::from_millis(30_000)
        );
        let jittered = backoff(3, 500, 30_000, true);
        assert!(jittered >= Duration::from_millis(1000) && jittered <= Duration::from_millis(2000));
    }
}
