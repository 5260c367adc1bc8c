//! Operating jobs: cancel, describe, list and follow, for `submit` and for
//! services (`Client::cancel`). No server of its own: what is settled comes
//! from the store (results, the job index, cancel records), what is
//! happening now from the workers themselves, asked over the control
//! exchange (`inspect`), each answering for the jobs it holds.
use crate::ResultMessage;
use futures::StreamExt as _;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use object_store::ObjectStore;
use shoal_schemas::topology::{
    LOG_END_HEADER, LOG_OFFSET_HEADER, LOG_STREAM_HEADER, Topology, log_routing_key,
    result_routing_key,
};
use shoal_schemas::{Action, Activity, ControlMessage, InspectReply, JobState, Status};
use shoal_worker::config::Brokers;
use shoal_worker::error::InfraError;
use shoal_worker::store::index::{self, Listed, Query};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Why an operation could not be done.
#[derive(Debug, thiserror::Error)]
pub enum OperateError {
    /// The broker could not be reached or refused.
    #[error("broker: {0}")]
    Broker(String),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] InfraError),
    /// Not a job id: ids are what the job schema allows (letters, digits,
    /// `.`, `_`, `-`, up to 128), so that no id reaches another key.
    #[error("{0:?} is not a job id (letters, digits, '.', '_' and '-', at most 128)")]
    InvalidId(String),
    /// Nothing knows of this job: no result, no index entry, no worker
    /// holding it.
    #[error(
        "no job {0} is known: no result in the store, no record of its submission, and no worker holds it (a mistyped id, another fleet's store, or a job submitted by a client that records nothing: `submit cancel --force` records the cancel anyway)"
    )]
    Unknown(String),
}

/// Refuses what is not a job id ([`OperateError::InvalidId`]) before it
/// names a key in the store.
pub fn check_id(job_id: &str) -> Result<(), OperateError> {
    match shoal_worker::store::keys::valid_job_id(job_id) {
        true => Ok(()),
        false => Err(OperateError::InvalidId(job_id.to_owned())),
    }
}

fn broker(e: impl std::fmt::Display) -> OperateError {
    OperateError::Broker(e.to_string())
}

/// A connection to the fleet for operating it, with a private reply queue
/// for the workers' answers.
pub struct Operator {
    connection: Connection,
    channel: Channel,
    replies: lapin::Consumer,
    reply_queue: String,
    topology: Topology,
    store: Arc<dyn ObjectStore>,
    brokers: Brokers,
}

/// How long `follow` waits for a job nothing knows of to appear.
const UNKNOWN_WAIT: Duration = Duration::from_secs(10);

/// How long workers get to answer an `inspect`.
const ANSWER_WITHIN: Duration = Duration::from_millis(1500);

impl Operator {
    /// Connects to the first broker that answers.
    pub async fn connect(
        brokers: &Brokers,
        topology: Topology,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Operator, OperateError> {
        let scrubbed = |e: lapin::Error| broker(brokers.scrub(&e.to_string()));
        let connection = brokers
            .connect_first(0, None, "shoal-operate")
            .await
            .map_err(broker)?
            .connection;
        let channel = connection.create_channel().await.map_err(scrubbed)?;
        topology.declare(&channel).await.map_err(scrubbed)?;
        let (reply_queue, replies) = shoal_schemas::topology::reply_queue(&channel)
            .await
            .map_err(scrubbed)?;
        Ok(Operator {
            connection,
            channel,
            replies,
            reply_queue,
            topology,
            store,
            brokers: brokers.clone(),
        })
    }

    fn broker(&self, e: lapin::Error) -> OperateError {
        OperateError::Broker(self.brokers.scrub(&e.to_string()))
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.connection.close(200, ShortString::from("done")).await;
    }

    async fn control(
        &self,
        message: &ControlMessage,
        reply: Option<&str>,
    ) -> Result<(), OperateError> {
        let mut props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_type(ShortString::from(shoal_schemas::CONTROL_SCHEMA));
        if let Some(reply) = reply {
            props = props
                .with_reply_to(ShortString::from(self.reply_queue.as_str()))
                .with_correlation_id(ShortString::from(reply));
        }
        let body = serde_json::to_vec(message).map_err(broker)?;
        self.channel
            .basic_publish(
                ShortString::from(self.topology.control_exchange.as_str()),
                ShortString::from(""),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .map_err(|e| self.broker(e))?;
        Ok(())
    }

    /// How many workers consume the job queue: how many answers to wait for.
    async fn workers(&self) -> Result<u32, OperateError> {
        let queue = self
            .channel
            .queue_declare(
                ShortString::from(self.topology.job_queue.as_str()),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.broker(e))?;
        Ok(queue.consumer_count())
    }

    /// What every worker holds of `job_ids` (all its jobs when empty): one
    /// answer per worker, as many as consume the job queue, or what came
    /// within [`ANSWER_WITHIN`].
    pub async fn inspect(&mut self, job_ids: &[String]) -> Result<Vec<InspectReply>, OperateError> {
        let workers = self.workers().await?;
        if workers == 0 {
            return Ok(Vec::new());
        }
        let asked = uuid::Uuid::new_v4().to_string();
        self.control(
            &ControlMessage::new(Action::Inspect, job_ids.to_vec()),
            Some(&asked),
        )
        .await?;
        let mut answers: Vec<InspectReply> = Vec::new();
        let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
        while answers.len() < workers as usize {
            let next = tokio::time::timeout_at(deadline, self.replies.next()).await;
            let Ok(Some(Ok(delivery))) = next else {
                break;
            };
            let ours = delivery
                .properties
                .correlation_id()
                .as_ref()
                .is_some_and(|c| c.as_str() == asked);
            if !ours {
                continue;
            }
            if let Ok(reply) = serde_json::from_slice::<InspectReply>(&delivery.data)
                && !answers.iter().any(|a| a.worker == reply.worker)
            {
                answers.push(reply);
            }
        }
        Ok(answers)
    }

    /// The workers' answers to [`Operator::inspect`] by job id: which
    /// worker holds it, and where it is there.
    async fn holders(
        &mut self,
        job_ids: &[String],
    ) -> Result<HashMap<String, (String, Activity)>, OperateError> {
        Ok(self
            .inspect(job_ids)
            .await?
            .into_iter()
            .flat_map(|answer| {
                let worker = answer.worker;
                answer
                    .jobs
                    .into_iter()
                    .map(move |a| (a.job_id.clone(), (worker.clone(), a)))
            })
            .collect())
    }

    /// Where `job_id` is held now, if a worker holds it.
    async fn held(&mut self, job_id: &str) -> Result<Option<(String, Activity)>, OperateError> {
        Ok(self.holders(&[job_id.to_owned()]).await?.remove(job_id))
    }

    /// Cancels `job_id`: records it in the store (which stops it on any
    /// worker that takes it later), then tells every worker (which stops it
    /// where it runs). A finished job is left alone; a job nothing knows of
    /// is [`OperateError::Unknown`] unless `force`.
    pub async fn cancel(&mut self, job_id: &str, force: bool) -> Result<Cancelled, OperateError> {
        let store = self.store.clone();
        cancel(store.as_ref(), Some(self), job_id, force).await
    }

    /// Where `job_id` is now.
    pub async fn describe(&mut self, job_id: &str) -> Result<Description, OperateError> {
        let store = self.store.clone();
        describe(store.as_ref(), Some(self), job_id).await
    }

    /// The newest jobs, newest first, as `submit list` shows them: the
    /// store's index, and what the workers hold now.
    pub async fn list(&mut self, filter: &ListFilter) -> Result<Vec<Row>, OperateError> {
        let held = if filter.wants_unfinished() {
            self.holders(&[]).await?
        } else {
            HashMap::new()
        };
        let store = self.store.clone();
        list_jobs(store.as_ref(), filter, &held).await
    }
}

/// [`Operator::cancel`], or with the store alone when the fleet cannot be
/// reached (`fleet` is `None`): then the record is all that is done, which
/// is enough in the end, since every worker reads the records again every
/// few seconds and when it reconnects, and stops a job it holds that has
/// one ([`Cancelled::Recorded`]).
pub async fn cancel(
    store: &dyn ObjectStore,
    mut fleet: Option<&mut Operator>,
    job_id: &str,
    force: bool,
) -> Result<Cancelled, OperateError> {
    check_id(job_id)?;
    if let Some(result) = crate::local::stored_result(store, job_id).await? {
        return Ok(match result.status {
            Status::Cancelled => Cancelled::Already,
            status => Cancelled::Finished(status),
        });
    }
    let running = match fleet.as_deref_mut() {
        Some(fleet) => fleet.held(job_id).await?,
        None => None,
    };
    let known = running.is_some()
        || force
        || index::submitted(store, job_id).await?.is_some()
        || index::cancel_requested(store, job_id).await?.is_some();
    if !known {
        return Err(OperateError::Unknown(job_id.to_owned()));
    }
    let new = index::request_cancel(store, job_id).await?;
    let Some(fleet) = fleet else {
        return Ok(if new {
            Cancelled::Recorded
        } else {
            Cancelled::Already
        });
    };
    // Sent again on a repeated cancel: harmless, and it reaches a worker
    // that took the job since.
    fleet
        .control(
            &ControlMessage::new(Action::Cancel, vec![job_id.to_owned()]),
            None,
        )
        .await?;
    Ok(match running {
        Some((worker, _)) => Cancelled::Stopping { worker },
        None if new => Cancelled::WillNotRun,
        None => Cancelled::Already,
    })
}

/// [`Operator::describe`], or from the store alone when the fleet cannot
/// be reached (`fleet` is `None`): a job that has not finished is then
/// `queued` as far as the store knows, and [`Description::workers_asked`]
/// is false.
pub async fn describe(
    store: &dyn ObjectStore,
    fleet: Option<&mut Operator>,
    job_id: &str,
) -> Result<Description, OperateError> {
    check_id(job_id)?;
    let finished = |result: ResultMessage| Description {
        id: result.job_id.clone(),
        state: "finished",
        status: Some(result.status),
        worker: Some(result.worker.clone()),
        attempt: Some(result.attempt),
        since: result.finished_at.clone(),
        cancel_requested: false,
        workers_asked: true,
        result: Some(Box::new(result)),
    };
    if let Some(result) = crate::local::stored_result(store, job_id).await? {
        return Ok(finished(result));
    }
    let cancel_requested = index::cancel_requested(store, job_id).await?.is_some();
    let workers_asked = fleet.is_some();
    if let Some(fleet) = fleet {
        if let Some((worker, activity)) = fleet.held(job_id).await? {
            return Ok(Description {
                id: job_id.to_owned(),
                state: state_name(activity.state),
                status: None,
                worker: Some(worker),
                attempt: Some(activity.attempt),
                since: Some(activity.since),
                cancel_requested: cancel_requested || activity.cancelling,
                workers_asked,
                result: None,
            });
        }
        // It may have ended while the workers were asked.
        if let Some(result) = crate::local::stored_result(store, job_id).await? {
            return Ok(finished(result));
        }
    }
    let queued = |since| Description {
        id: job_id.to_owned(),
        state: "queued",
        status: None,
        worker: None,
        attempt: None,
        since,
        cancel_requested,
        workers_asked,
        result: None,
    };
    match index::submitted(store, job_id).await? {
        Some(entry) => Ok(queued(Some(entry.submitted_at))),
        None if cancel_requested => Ok(queued(None)),
        None => Err(OperateError::Unknown(job_id.to_owned())),
    }
}

impl ListFilter {
    fn wants_unfinished(&self) -> bool {
        self.statuses.is_empty() || self.statuses.iter().any(|s| s.ended().is_none())
    }
}

/// The newest jobs in the store's index, newest first, with `held` (what
/// the workers hold, by job id: the worker and where the job is) telling
/// running jobs from queued ones; without it every unfinished job is
/// `queued`, which is all the store alone can say.
pub async fn list_jobs(
    store: &dyn ObjectStore,
    filter: &ListFilter,
    held: &HashMap<String, (String, Activity)>,
) -> Result<Vec<Row>, OperateError> {
    let statuses: Vec<Status> = filter.statuses.iter().filter_map(|s| s.ended()).collect();
    // `queued` or `running` asked for by name. They are told apart only
    // after asking the workers: read further so that the filter still
    // fills the limit.
    let unfinished = filter.statuses.iter().any(|s| s.ended().is_none());
    let query = Query {
        since_us: filter.since.map(index::micros),
        statuses,
        unfinished,
        limit: match unfinished {
            true => filter.limit.saturating_mul(10).max(1000),
            false => filter.limit,
        },
    };
    let listed = index::newest(store, &query).await?;
    let mut rows = rows_of(store, listed, held).await?;
    // Jobs a worker holds that the index does not name (their client
    // recorded nothing): shown all the same.
    let named: HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    for (id, (worker, activity)) in held {
        if !named.contains(id) {
            let started = humantime::parse_rfc3339(&activity.started_at).ok();
            if filter
                .since
                .is_some_and(|since| started.is_some_and(|s| s < since))
            {
                continue;
            }
            rows.push(Row {
                id: id.clone(),
                status: "running".into(),
                state: Some(state_name(activity.state)),
                worker: Some(worker.clone()),
                submitted_at: None,
                finished_at: None,
                duration_secs: None,
                sort_us: started.map(index::micros).unwrap_or(0),
            });
        }
    }
    rows.retain(|row| {
        filter.statuses.is_empty() || filter.statuses.iter().any(|s| s.as_str() == row.status)
    });
    rows.sort_by_key(|row| std::cmp::Reverse(row.sort_us));
    rows.truncate(filter.limit);
    Ok(rows)
}

impl Operator {
    /// Follows `job_id`'s output: `on_output` gets each new piece of
    /// stdout (or `stderr`) in order, as the guest writes it while it runs
    /// (as far as its worker streams it: transient, a tick at a time), and
    /// the rest from the stored result once it ends. Returns the result.
    pub async fn follow(
        &mut self,
        job_id: &str,
        stderr: bool,
        mut on_output: impl FnMut(Piece<'_>),
    ) -> Result<ResultMessage, OperateError> {
        let store = self.store.clone();
        // A mistyped id would be waited for forever: one nothing knows of
        // gets a while to appear (followed just before it was submitted),
        // then is an error.
        let mut unknown_until = match describe(store.as_ref(), Some(&mut *self), job_id).await {
            Err(OperateError::Unknown(_)) => Some(Instant::now() + UNKNOWN_WAIT),
            Err(e) => return Err(e),
            Ok(_) => None,
        };
        // Bound before anything is asked, so nothing sent after is missed.
        let (log_key, result_key) = (log_routing_key(job_id), result_routing_key(job_id));
        let exchange = self.topology.results_exchange.clone();
        let (_, mut messages) = shoal_schemas::topology::private_queue(
            &self.channel,
            &[(&exchange, &log_key), (&exchange, &result_key)],
        )
        .await
        .map_err(|e| self.broker(e))?;
        let want = if stderr { "stderr" } else { "stdout" };
        let mut shown = 0usize;
        // When output last arrived: a stream silent for a while is asked
        // for again (its worker may have died, and another taken the job).
        let mut streamed_at: Option<Instant> = None;
        let mut ended_at: Option<Instant> = None;
        // The result as published, for a result the store does not hold (a
        // worker that gave up because the store failed publishes only).
        let mut published: Option<ResultMessage> = None;
        let mut next_ask = Instant::now();
        let mut next_look = Instant::now();
        loop {
            if Instant::now() >= next_look || ended_at.is_some() {
                next_look = Instant::now() + Duration::from_millis(500);
                let stored = crate::local::stored_result(store.as_ref(), job_id).await?;
                let late = ended_at.is_some_and(|at| at.elapsed() > Duration::from_secs(2));
                let result = match (stored, published.take()) {
                    (Some(result), _) => Some(result),
                    (None, Some(result)) if late => Some(result),
                    (None, kept) => {
                        published = kept;
                        None
                    }
                };
                if let Some(result) = result {
                    let rest = stored_stream(store.as_ref(), &result, stderr).await?;
                    if rest.len() > shown {
                        on_output(Piece::Bytes(&rest[shown..]));
                    }
                    return Ok(result);
                }
            }
            if let Some(until) = unknown_until
                && Instant::now() >= until
            {
                let known = streamed_at.is_some()
                    || published.is_some()
                    || index::submitted(store.as_ref(), job_id).await?.is_some()
                    || self.held(job_id).await?.is_some();
                if !known {
                    return Err(OperateError::Unknown(job_id.to_owned()));
                }
                unknown_until = None;
            }
            // Asked again until a worker streams it: it may still be queued,
            // or the worker that had it died.
            let streaming = streamed_at.is_some_and(|at| at.elapsed() < Duration::from_secs(3));
            if !streaming && Instant::now() >= next_ask && ended_at.is_none() {
                self.control(
                    &ControlMessage::new(Action::Follow, vec![job_id.to_owned()]),
                    None,
                )
                .await?;
                next_ask = Instant::now() + Duration::from_millis(250);
            }
            let wait = Duration::from_millis(100);
            let Ok(next) = tokio::time::timeout(wait, messages.next()).await else {
                if ended_at.is_some_and(|at| at.elapsed() > Duration::from_secs(5)) {
                    // The stream ended but no result came: a worker that
                    // died after its end marker; ask again.
                    ended_at = None;
                    streamed_at = None;
                }
                continue;
            };
            let Some(Ok(delivery)) = next else {
                return Err(OperateError::Broker(
                    "the follow queue's consumer was cancelled".into(),
                ));
            };
            let header = |name: &str| {
                delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(name).cloned())
            };
            if delivery.properties.kind().as_ref().map(|k| k.as_str())
                == Some(shoal_schemas::RESULT_SCHEMA)
            {
                // The result: the stored copy is read at the top.
                published = serde_json::from_slice(&delivery.data).ok();
                ended_at = Some(Instant::now());
                continue;
            }
            if matches!(header(LOG_END_HEADER), Some(AMQPValue::Boolean(true))) {
                ended_at = Some(Instant::now());
                continue;
            }
            streamed_at = Some(Instant::now());
            let Some(AMQPValue::LongString(stream)) = header(LOG_STREAM_HEADER) else {
                continue;
            };
            if stream.as_bytes() != want.as_bytes() {
                continue;
            }
            let offset = match header(LOG_OFFSET_HEADER) {
                Some(AMQPValue::LongLongInt(n)) => usize::try_from(n).unwrap_or(0),
                _ => continue,
            };
            let body = &delivery.data;
            if offset > shown {
                on_output(Piece::Skipped(offset - shown));
                shown = offset;
            }
            let end = offset + body.len();
            if end > shown {
                on_output(Piece::Bytes(&body[shown - offset..]));
                shown = end;
            }
        }
    }
}

/// A piece of a followed stream.
#[derive(Debug)]
pub enum Piece<'a> {
    /// The next bytes.
    Bytes(&'a [u8]),
    /// This many bytes were not streamed (the guest wrote faster than a
    /// follower is sent); the stored stream has them.
    Skipped(usize),
}

/// What `cancel` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// It was running (or staging) on this worker, which is stopping it;
    /// it ends `cancelled` within a second.
    Stopping {
        /// The worker holding it.
        worker: String,
    },
    /// Queued: it will end `cancelled` without running.
    WillNotRun,
    /// Recorded in the store only, the fleet not answering: a queued job
    /// will not run, and a running one stops when its worker reconnects.
    Recorded,
    /// A cancel was requested before, or it ended cancelled already.
    Already,
    /// It had finished; nothing changed.
    Finished(Status),
}

/// Where a job is, for `submit describe`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Description {
    /// The job's id.
    pub id: String,
    /// queued, staging, running, publishing or finished.
    pub state: &'static str,
    /// How it ended, once finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The worker holding it, or that finished it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Its delivery attempt on that worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Since when it is in this state (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// A cancel was requested and has not ended it yet.
    pub cancel_requested: bool,
    /// The workers were asked (false: the fleet did not answer, and a
    /// `queued` job may be running).
    pub workers_asked: bool,
    /// The result, once finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<ResultMessage>>,
}

fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Staging => "staging",
        JobState::Running => "running",
        JobState::Publishing => "publishing",
    }
}

/// A status `submit list` filters by: an end, or where an unfinished job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStatus {
    /// Not taken by a worker yet.
    Queued,
    /// Held by a worker (staging, running or publishing).
    Running,
    /// Ended so.
    Ended(Status),
}

impl ListStatus {
    /// Parses a status name.
    pub fn parse(name: &str) -> Option<ListStatus> {
        match name {
            "queued" => Some(ListStatus::Queued),
            "running" => Some(ListStatus::Running),
            other => serde_json::from_value(serde_json::Value::String(other.to_owned()))
                .ok()
                .map(ListStatus::Ended),
        }
    }

    fn ended(self) -> Option<Status> {
        match self {
            ListStatus::Ended(status) => Some(status),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ListStatus::Queued => "queued",
            ListStatus::Running => "running",
            ListStatus::Ended(status) => status.as_str(),
        }
    }
}

/// Which jobs `list` shows.
#[derive(Debug, Clone)]
pub struct ListFilter {
    /// Only these statuses (any, when empty).
    pub statuses: Vec<ListStatus>,
    /// Only jobs submitted since.
    pub since: Option<SystemTime>,
    /// At most this many.
    pub limit: usize,
}

/// One line of `submit list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// The job's id.
    pub id: String,
    /// queued, running, or how it ended.
    pub status: String,
    /// Where a running job is (staging, running, publishing).
    #[serde(skip)]
    pub state: Option<&'static str>,
    /// The worker holding it or that finished it.
    pub worker: Option<String>,
    /// When it was submitted (RFC 3339, UTC).
    pub submitted_at: Option<String>,
    /// When it ended (RFC 3339, UTC).
    pub finished_at: Option<String>,
    /// From start to end of its last attempt, seconds.
    #[serde(skip)]
    pub duration_secs: Option<f64>,
    #[serde(skip)]
    sort_us: u64,
}

async fn rows_of(
    store: &dyn ObjectStore,
    listed: Vec<Listed>,
    held: &HashMap<String, (String, Activity)>,
) -> Result<Vec<Row>, OperateError> {
    let rfc3339 = |us: u64| index::rfc3339(index::at_micros(us));
    let entries = futures::stream::iter(listed.into_iter().map(|listed| async move {
        let entry = match &listed.ended {
            Some((_, key)) => index::ended_entry(store, key).await?,
            None => None,
        };
        Ok::<_, InfraError>((listed, entry))
    }))
    .buffered(16)
    .collect::<Vec<_>>()
    .await;
    let mut rows = Vec::with_capacity(entries.len());
    for found in entries {
        let (listed, entry) = found?;
        let submitted_at = Some(rfc3339(listed.submitted_us));
        let row = match (&listed.ended, entry, held.get(&listed.job_id)) {
            (Some((status, _)), entry, _) => {
                let parse = |t: &Option<String>| {
                    t.as_deref().and_then(|t| humantime::parse_rfc3339(t).ok())
                };
                let duration_secs = entry.as_ref().and_then(|e| {
                    let (start, end) = (parse(&e.started_at)?, parse(&e.finished_at)?);
                    Some(end.duration_since(start).ok()?.as_secs_f64())
                });
                Row {
                    id: listed.job_id.clone(),
                    status: status.as_str().to_owned(),
                    state: None,
                    worker: entry.as_ref().and_then(|e| e.worker.clone()),
                    submitted_at,
                    finished_at: entry.and_then(|e| e.finished_at),
                    duration_secs,
                    sort_us: listed.submitted_us,
                }
            }
            (None, _, Some((worker, activity))) => Row {
                id: listed.job_id.clone(),
                status: "running".into(),
                state: Some(state_name(activity.state)),
                worker: Some(worker.clone()),
                submitted_at,
                finished_at: None,
                duration_secs: None,
                sort_us: listed.submitted_us,
            },
            (None, _, None) => Row {
                id: listed.job_id.clone(),
                status: "queued".into(),
                state: None,
                worker: None,
                submitted_at,
                finished_at: None,
                duration_secs: None,
                sort_us: listed.submitted_us,
            },
        };
        rows.push(row);
    }
    Ok(rows)
}

/// A stored result's stdout (or stderr), inline or from its object.
pub async fn stored_stream(
    store: &dyn ObjectStore,
    result: &ResultMessage,
    stderr: bool,
) -> Result<Vec<u8>, OperateError> {
    use base64::Engine as _;
    use object_store::ObjectStoreExt as _;
    let Some(stream) = (if stderr {
        &result.stderr
    } else {
        &result.stdout
    }) else {
        return Ok(Vec::new());
    };
    if let Some(text) = &stream.text {
        return Ok(text.clone().into_bytes());
    }
    if let Some(b64) = &stream.base64 {
        return Ok(base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default());
    }
    let Some(location) = &stream.location else {
        return Ok(Vec::new());
    };
    let key = object_store::path::Path::from(location.as_str());
    let got = store.get(&key).await.map_err(|e| {
        InfraError::Store(shoal_worker::error::Cause::new(format!("reading {key}"), e))
    })?;
    let bytes = got.bytes().await.map_err(|e| {
        InfraError::Store(shoal_worker::error::Cause::new(format!("reading {key}"), e))
    })?;
    Ok(bytes.to_vec())
}
