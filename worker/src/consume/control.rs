//! Operating jobs from outside: the control exchange's cancel, inspect and
//! follow requests, and what the worker holds to answer them.
//!
//! Every worker binds a queue of its own (exclusive, gone with its
//! connection) to the fanout control exchange, so one request reaches the
//! whole fleet at once. A cancel is also recorded in the store
//! (`cancel/<id>.json`) by whoever asks: a worker loads every record when
//! it connects, after binding its queue, and every few seconds after, so a
//! job taken from the queue after the cancel, or redelivered after its
//! worker died, is skipped as `cancelled`, and a cancel that reached only
//! the store still holds.
use crate::execute::Live;
use crate::store::index::rfc3339;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use shoal_schemas::topology::{
    LOG_END_HEADER, LOG_OFFSET_HEADER, LOG_STREAM_HEADER, log_routing_key,
};
use shoal_schemas::{Action, Activity, ControlMessage, InspectReply, JobState};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The jobs this worker holds and the cancels it knows of.
#[derive(Clone, Default)]
pub(super) struct Held(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    /// Every delivery of an id held here: usually one, but a job
    /// republished under its id (a submitter that lost a confirm) may be
    /// here twice, and a cancel must reach both.
    jobs: HashMap<String, Vec<Entry>>,
    cancelled: HashSet<String>,
}

impl State {
    fn entry_mut(&mut self, id: &str, live: &Live) -> Option<&mut Entry> {
        self.jobs
            .get_mut(id)?
            .iter_mut()
            .find(|e| e.live.same(live))
    }
}

struct Entry {
    live: Live,
    state: JobState,
    attempt: u32,
    since: SystemTime,
    started: SystemTime,
    following: bool,
}

/// A job held from its admission until its delivery is settled; dropping
/// it lets the job go (and ends its followers' streams).
pub(super) struct Holding {
    held: Held,
    id: String,
    live: Live,
}

impl Holding {
    pub(super) fn live(&self) -> &Live {
        &self.live
    }

    /// Records where the job is, for `inspect`.
    pub(super) fn state_setter(&self) -> impl Fn(JobState) + Send + Sync + 'static {
        let (held, id, live) = (self.held.clone(), self.id.clone(), self.live.clone());
        move |state| {
            if let Some(entry) = held.lock().entry_mut(&id, &live) {
                entry.state = state;
                entry.since = SystemTime::now();
            }
        }
    }
}

impl Drop for Holding {
    /// Also stops the guest, if any still runs: a job dropped before it
    /// was settled (its session lost the broker) goes back to the queue, and
    /// its orphaned guest would otherwise run on to its deadline, holding a
    /// store of the instance pool.
    fn drop(&mut self) {
        self.live.cancel();
        let mut held = self.held.lock();
        if let Some(entries) = held.jobs.get_mut(&self.id) {
            entries.retain(|entry| !entry.live.same(&self.live));
            if entries.is_empty() {
                held.jobs.remove(&self.id);
            }
        }
    }
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes job `id` in hand; `None` when it was cancelled already, so it
    /// must not run.
    pub(super) fn take(&self, id: &str, attempt: u32, started: SystemTime) -> Option<Holding> {
        let mut held = self.lock();
        if held.cancelled.contains(id) {
            return None;
        }
        let live = Live::default();
        held.jobs.entry(id.to_owned()).or_default().push(Entry {
            live: live.clone(),
            state: JobState::Staging,
            attempt,
            since: started,
            started,
            following: false,
        });
        Some(Holding {
            held: self.clone(),
            id: id.to_owned(),
            live,
        })
    }

    /// Cancel requests from the store, at (re)connection.
    pub(super) fn load_cancels(&self, ids: HashSet<String>) {
        let mut held = self.lock();
        for id in &ids {
            for entry in held.jobs.get(id).into_iter().flatten() {
                entry.live.cancel();
            }
        }
        held.cancelled.extend(ids);
    }

    fn cancel(&self, ids: &[String]) -> usize {
        let mut held = self.lock();
        let mut stopped = 0;
        for id in ids {
            for entry in held.jobs.get(id).into_iter().flatten() {
                entry.live.cancel();
                stopped += 1;
            }
            held.cancelled.insert(id.clone());
        }
        stopped
    }

    fn activity(&self, ids: &[String]) -> Vec<Activity> {
        let held = self.lock();
        let mut jobs: Vec<Activity> = held
            .jobs
            .iter()
            .filter(|(id, _)| ids.is_empty() || ids.contains(id))
            .flat_map(|(id, entries)| {
                entries.iter().map(move |entry| Activity {
                    job_id: id.clone(),
                    state: entry.state,
                    attempt: entry.attempt,
                    since: rfc3339(entry.since),
                    started_at: rfc3339(entry.started),
                    cancelling: entry.live.is_cancelled(),
                })
            })
            .collect();
        jobs.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        jobs
    }

    /// The live handle of the job's newest delivery here, when nobody
    /// follows it yet.
    fn follow(&self, id: &str) -> Option<Live> {
        let mut held = self.lock();
        let entry = held.jobs.get_mut(id)?.last_mut()?;
        if entry.following {
            return None;
        }
        entry.following = true;
        Some(entry.live.clone())
    }

    fn holds(&self, id: &str, live: &Live) -> bool {
        self.lock().entry_mut(id, live).is_some()
    }
}

/// Declares this worker's control queue (a private queue, gone with the
/// connection), bound to the control exchange, consumed without acks: a
/// request lost with a connection is one its sender's store record or next
/// request covers.
pub(super) async fn subscribe(channel: &Channel, exchange: &str) -> lapin::Result<lapin::Consumer> {
    let (_, consumer) = shoal_schemas::topology::private_queue(channel, &[(exchange, "")]).await?;
    Ok(consumer)
}

/// Where the control side publishes: inspect replies and followed output,
/// all transient and unconfirmed (none of it settles anything).
#[derive(Clone)]
pub(super) struct Replies {
    pub(super) channel: Channel,
    pub(super) results_exchange: String,
    pub(super) worker: String,
}

/// Most bytes of one stream sent per tick; a guest writing faster is
/// followed with gaps (the offsets show them), never slowed down.
const CHUNK: usize = 64 * 1024;
/// How often a followed job's new output is sent.
const TICK: Duration = Duration::from_millis(100);

/// Acts on one control message.
pub(super) async fn handle(held: &Held, replies: &Replies, body: &[u8], props: &BasicProperties) {
    let message: ControlMessage = match serde_json::from_slice(body) {
        Ok(message) => message,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a control message that is not shoal.control/v1");
            return;
        }
    };
    match message.action {
        Action::Cancel => {
            let stopped = held.cancel(&message.job_ids);
            tracing::info!(job_ids = ?message.job_ids, stopping_here = stopped, "cancel requested");
        }
        Action::Inspect => {
            let Some(reply_to) = props.reply_to() else {
                return;
            };
            let reply = InspectReply {
                schema: shoal_schemas::INSPECT_SCHEMA.to_owned(),
                worker: replies.worker.clone(),
                jobs: held.activity(&message.job_ids),
            };
            let mut reply_props = BasicProperties::default()
                .with_content_type(ShortString::from("application/json"))
                .with_type(ShortString::from(shoal_schemas::INSPECT_SCHEMA));
            if let Some(corr) = props.correlation_id() {
                reply_props = reply_props.with_correlation_id(corr.clone());
            }
            let body = serde_json::to_vec(&reply).unwrap_or_default();
            if let Err(e) = replies
                .channel
                .basic_publish(
                    ShortString::from(""),
                    reply_to.clone(),
                    BasicPublishOptions::default(),
                    &body,
                    reply_props,
                )
                .await
            {
                tracing::debug!(error = %e, "could not answer an inspect request");
            }
        }
        Action::Follow => {
            for id in &message.job_ids {
                if let Some(live) = held.follow(id) {
                    tracing::info!(job_id = %id, "streaming a followed job's output");
                    tokio::spawn(stream(held.clone(), replies.clone(), id.clone(), live));
                }
            }
        }
    }
}

/// Sends a followed job's output from its first byte, a tick at a time,
/// until the job is let go; then what is left, and an end marker.
async fn stream(held: Held, replies: Replies, id: String, live: Live) {
    let key = log_routing_key(&id);
    let mut sent = [0usize; 2];
    loop {
        let over = !held.holds(&id, &live);
        for (i, name) in ["stdout", "stderr"].into_iter().enumerate() {
            let Some(new) = live.output_from(i == 1, sent[i]) else {
                continue;
            };
            // Past a tick's worth, the newest bytes: a follower wants what
            // the guest says now.
            let skip = new.len().saturating_sub(CHUNK);
            let chunk = new.slice(skip..);
            if chunk.is_empty() {
                continue;
            }
            let offset = sent[i] + skip;
            sent[i] = offset + chunk.len();
            publish_log(&replies, &key, &id, name, offset, &chunk, false).await;
        }
        if over {
            publish_log(&replies, &key, &id, "stdout", sent[0], &[], true).await;
            return;
        }
        tokio::time::sleep(TICK).await;
    }
}

async fn publish_log(
    replies: &Replies,
    key: &str,
    id: &str,
    stream: &str,
    offset: usize,
    body: &[u8],
    end: bool,
) {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from(LOG_STREAM_HEADER),
        AMQPValue::LongString(stream.into()),
    );
    headers.insert(
        ShortString::from(LOG_OFFSET_HEADER),
        AMQPValue::LongLongInt(i64::try_from(offset).unwrap_or(i64::MAX)),
    );
    if end {
        headers.insert(ShortString::from(LOG_END_HEADER), AMQPValue::Boolean(true));
    }
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("application/octet-stream"))
        .with_message_id(ShortString::from(id))
        .with_type(ShortString::from(shoal_schemas::LOG_SCHEMA))
        .with_headers(headers);
    if let Err(e) = replies
        .channel
        .basic_publish(
            ShortString::from(replies.results_exchange.as_str()),
            ShortString::from(key),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
    {
        tracing::debug!(error = %e, "could not send a followed job's output");
    }
}
