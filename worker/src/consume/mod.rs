//! Consume (step 1 and 5 of a job): the RabbitMQ side of the worker, and
//! the only code that acknowledges, dead-letters or requeues a message.
//!
//! Every delivery is settled in exactly one way, which [`settle`] decides
//! from the types the pipeline returns (its table is the retry policy):
//! publish the result then ack; dead-letter a message that is not a job;
//! back off and requeue after our own failure; or, at `amqp.max_attempts`,
//! publish an `error` result and dead-letter. Acking only after the
//! result's confirm is what makes delivery at-least-once; results are keyed
//! by job id, so a redelivery republishes the same result. The attempt
//! number is the quorum queue's `x-delivery-count` + 1; the queue's own
//! delivery limit is a backstop for messages that crash the worker before
//! it can settle them.
//!
//! The prefetch (`amqp.prefetch`) is above the concurrency: every job the
//! broker hands over is admitted and staged at once, waits for a guest slot
//! only to run (the executor holds `worker.concurrency` slots), and is
//! stored and confirmed after it, so a worker's cores go to guests while
//! other jobs stage and publish, and the next job is already here when a
//! guest ends. How deep is the jobs' business: by default (`Pace`) the
//! worker holds enough per slot to cover 10 ms of guest time, so trivial
//! jobs get sixteen per slot and long ones two, and no long job waits on a
//! busy worker while another idles (docs/CONFIG.md).
pub mod acks;
mod control;
mod settle;

use crate::config::{AmqpSection, Brokers, Connected};
use crate::error::{Cause, InfraError};
use crate::job::{Job, Refusal, valid_id};
use crate::metrics::METRICS;
use crate::pipeline::{Delivered, OnState, Pipeline};
use acks::Acks;
use control::{Held, Holding};
use futures::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, message::Delivery};
use settle::{Disposition, Processed, RetryPolicy};
use shoal_schemas::topology::{
    PUBLISHED_MS_HEADER, PUBLISHED_US_HEADER, result_routing_key, state_routing_key,
};
use shoal_schemas::{ErrorKind, JobState, ResultMessage, StateMessage, Status};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Consumes jobs until `shutdown` turns true, reconnecting whenever the
/// broker goes away. Returns after draining in-flight jobs.
///
/// With several broker URLs (the nodes of a cluster), a lost connection
/// moves on to the next node first, and a node that refuses is skipped at
/// once; only when every node refused does the worker back off (with
/// jitter, so a fleet does not come back in step).
pub async fn run(
    pipeline: Pipeline,
    amqp: AmqpSection,
    concurrency: usize,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), InfraError> {
    let brokers = amqp
        .brokers()
        .map_err(|e| InfraError::Broker(Cause::new("reading amqp.url/amqp.urls", e)))?;
    let amqp = Arc::new(amqp);
    METRICS
        .concurrency
        .set(i64::try_from(concurrency).unwrap_or(i64::MAX));
    let mut failures: u32 = 0;
    let mut next = 0;
    // Outlive a session: a cancel learnt before a reconnection still holds,
    // and so does the jobs' pace.
    let held = Held::default();
    let pace = Arc::new(Pace::default());
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let mut reached = Reached::default();
        match session(
            &pipeline,
            &amqp,
            &brokers,
            next,
            &mut reached,
            concurrency,
            &held,
            &pace,
            &mut shutdown,
        )
        .await
        {
            Ok(()) => return Ok(()),
            Err(e) => {
                METRICS.broker_connected.set(0);
                METRICS.reconnects.inc();
                // A session that got as far as consuming starts the backoff
                // afresh: a worker that lost its node once a day must not
                // wait the cap on every later loss.
                failures = if reached.consumed {
                    1
                } else {
                    failures.saturating_add(1)
                };
                // After a loss, the node that was lost is tried last; so is
                // one that took the connection and then failed (booting,
                // on the minority side of a partition, no queue leader).
                next = reached.connected.map_or(next, |i| i + 1) % brokers.len();
                let delay = settle::backoff(failures, 200, amqp.reconnect_max_ms, true);
                tracing::warn!(
                    error = %brokers.scrub(&crate::error::chain(&e)),
                    brokers = %brokers.redacted_all(),
                    retry_in_ms = delay.as_millis() as u64,
                    "broker connection lost; reconnecting"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
    }
}

/// Starts consuming the job queue under a fresh consumer tag (named after
/// the worker, as the broker's tools show it), with the channel's current
/// `basic.qos`; returns the tag and the consumer.
async fn consume_jobs(
    channel: &Channel,
    queue: &str,
    worker: &str,
) -> lapin::Result<(String, lapin::Consumer)> {
    let tag = format!("{worker}-{}", uuid::Uuid::new_v4());
    let consumer = channel
        .basic_consume(
            ShortString::from(queue),
            ShortString::from(tag.as_str()),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((tag, consumer))
}

/// Handles a delivery in a task of its own, counted while in flight.
/// A panic there is a bug of ours: the message is dead-lettered (the
/// queue's dead-letter exchange, `x-death` says why), counted under reason
/// `panic`, and the worker serves the others on.
fn take(in_flight: &mut JoinSet<()>, session: &Arc<Session>, delivery: Delivery) {
    let tag = delivery.delivery_tag;
    session.acks.delivered(tag);
    let session = session.clone();
    in_flight.spawn(async move {
        METRICS.in_flight.inc();
        let handled = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
            session.handle(delivery),
        ))
        .await;
        if let Err(panic) = handled {
            tracing::error!(
                panic = crate::error::panic_text(&*panic),
                "a job task panicked; dead-lettering its message"
            );
            METRICS.dead_letters.with_label_values(&["panic"]).inc();
            session.acks.nack(tag, false);
        }
        METRICS.in_flight.dec();
    });
}

/// How long recent guests ran, as a moving average, for the automatic
/// prefetch (`amqp.prefetch` 0). Shared by a worker's sessions.
#[derive(Default)]
struct Pace {
    /// Microseconds, or 0 before the first job.
    micros: std::sync::atomic::AtomicU64,
}

impl Pace {
    fn record(&self, run_secs: f64) {
        use std::sync::atomic::Ordering;
        let sample = ((run_secs * 1e6) as u64).max(1);
        let _ = self
            .micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    (old * 7 + sample) / 8
                })
            });
    }

    fn micros(&self) -> u64 {
        self.micros.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The prefetch for `concurrency` guest slots at this pace, once a job
    /// has run: enough jobs per slot to cover [`PACE_WINDOW`] of guest time,
    /// at least 2 (one staged while one runs) and at most 16.
    fn prefetch(&self, concurrency: usize) -> Option<u16> {
        let micros = self.micros();
        (micros > 0).then(|| auto_prefetch(concurrency, Duration::from_micros(micros)))
    }
}

/// Guest time a worker keeps at hand per slot with the automatic prefetch:
/// for millisecond jobs, several staged jobs each; for jobs of 10 ms and
/// more, one staged while one runs, so a long job never waits behind
/// another on a busy worker while a free one idles.
const PACE_WINDOW: Duration = Duration::from_millis(10);

/// The automatic prefetch for `concurrency` slots whose guests run `run` each.
fn auto_prefetch(concurrency: usize, run: Duration) -> u16 {
    let per_slot = PACE_WINDOW
        .as_nanos()
        .div_ceil(run.as_nanos().max(1))
        .clamp(2, 16);
    u16::try_from(concurrency.max(1) as u128 * per_slot).unwrap_or(u16::MAX)
}

/// How often a connected worker reads the store's cancel records again.
const CANCEL_RELOAD: Duration = Duration::from_secs(5);

/// How far a session got: which broker URL it connected to, and whether it
/// got as far as consuming.
#[derive(Default)]
struct Reached {
    connected: Option<usize>,
    consumed: bool,
}

/// A queue or exchange that exists on the broker with other arguments than
/// ours, as RabbitMQ reports it ("PRECONDITION_FAILED - inequivalent arg
/// 'x-queue-type' for queue 'shoal.jobs' in vhost '/': received … but
/// current is …"). A client that declared `shoal.jobs` the usual way
/// (durable, no arguments) before any worker did causes this, and no worker
/// can consume until the queue is deleted: the operator must learn which
/// argument, not only that the worker is not ready.
#[derive(Debug, PartialEq, Eq)]
struct Mismatch {
    /// `queue 'shoal.jobs'` or `exchange 'shoal.results'`.
    object: String,
    /// The argument or flag: `x-queue-type`, `durable`, `type`, ….
    argument: String,
    /// The broker's own words on the two values.
    values: String,
}

impl Mismatch {
    fn parse(said: &str) -> Option<Mismatch> {
        let after = |marker: &str| said.split_once(marker).map(|(_, rest)| rest);
        let quoted = |rest: &str| rest.split_once('\'').map(|(q, _)| q.to_owned());
        let rest = after("inequivalent arg '")?;
        let argument = quoted(rest)?;
        let object = ["queue", "exchange"].into_iter().find_map(|kind| {
            let name = quoted(after(&format!("for {kind} '"))?)?;
            Some(format!("{kind} '{name}'"))
        })?;
        let values = after("': ")
            .map(|v| v.trim_end_matches(['"', ')', ' ', '}']).to_owned())
            .unwrap_or_default();
        Some(Mismatch {
            object,
            argument,
            values,
        })
    }

    /// What the operator must do. The dead-letter queue of earlier
    /// versions is a classic queue, which workers now declare as a quorum
    /// queue: it has a migration of its own, which keeps its messages.
    fn explain(&self, dead_letter: &str) -> String {
        if self.object == format!("queue '{dead_letter}'") && self.argument == "x-queue-type" {
            return format!(
                "the {} is a classic queue, as versions before the quorum dead-letter queue declared it ({}); no worker can consume until it is migrated: run `submit admin migrate-dead-letters` (docs/RELIABILITY.md), which keeps every dead letter",
                self.object, self.values
            );
        }
        format!(
            "the {} exists on the broker with another {} than the workers declare ({}); no worker can consume until it is declared as docs/PROTOCOL.md says: delete it while it is empty, and have clients declare it passively",
            self.object, self.argument, self.values
        )
    }
}

struct Session {
    pipeline: Pipeline,
    amqp: Arc<AmqpSection>,
    brokers: Brokers,
    publish: Channel,
    /// Acks on the consume channel, batched.
    acks: Acks,
    held: Held,
    /// How long the guests of recent jobs ran, for the automatic prefetch.
    pace: Arc<Pace>,
}

/// One connection's life: connect (from URL `first` on), declare, consume
/// until the connection is lost (`Err`) or `shutdown` (drained, `Ok`).
/// `reached` records the URL connected to, and whether consuming started.
/// `held` (the jobs and cancels the control exchange acts on) and `pace`
/// (how long recent guests ran) outlive it.
#[allow(clippy::too_many_arguments)]
async fn session(
    pipeline: &Pipeline,
    amqp: &Arc<AmqpSection>,
    brokers: &Brokers,
    first: usize,
    reached: &mut Reached,
    concurrency: usize,
    held: &Held,
    pace: &Arc<Pace>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), InfraError> {
    // The broker's words may quote a vhost or a URL: never with a password.
    let broker = |e: lapin::Error| {
        InfraError::Broker(Cause::from(format!(
            "talking to the broker: {}",
            brokers.scrub(&e.to_string())
        )))
    };
    let Connected {
        connection: conn,
        index: at,
        skipped,
    } = brokers
        .connect_first(first, Some(amqp.heartbeat_secs), pipeline.worker_name())
        .await
        .map_err(|e| InfraError::Broker(Cause::from(e.to_string())))?;
    if !skipped.is_empty() {
        tracing::info!(broker = %brokers.redacted(at), skipped = %skipped.join("; "), "connected to another broker node");
    }
    reached.connected = Some(at);
    let consume = conn.create_channel().await.map_err(broker)?;
    if let Err(e) = amqp.topology().declare(&consume).await {
        let said = brokers.scrub(&e.to_string());
        if let Some(mismatch) = Mismatch::parse(&said) {
            let why = mismatch.explain(&amqp.dead_letter);
            tracing::error!(
                object = %mismatch.object,
                argument = %mismatch.argument,
                broker_said = %said,
                "{why}"
            );
            METRICS.topology_mismatch(&mismatch.argument, why);
        }
        return Err(broker(e));
    }
    METRICS.topology_declared();
    // The control queue is bound before the store's cancel requests are
    // read: a cancel recorded after the reading arrives on the queue.
    let control_channel = conn.create_channel().await.map_err(broker)?;
    let mut control = control::subscribe(&control_channel, &amqp.control_exchange)
        .await
        .map_err(broker)?;
    let cancels = crate::store::index::cancel_requests(pipeline.stager().store().as_ref()).await?;
    held.load_cancels(cancels);
    let mut prefetch = amqp.prefetch_for(concurrency);
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(broker)?;
    let publish = conn.create_channel().await.map_err(broker)?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(broker)?;
    let (mut tag, mut consumer) = consume_jobs(&consume, &amqp.job_queue, pipeline.worker_name())
        .await
        .map_err(broker)?;
    tracing::info!(queue = %amqp.job_queue, concurrency, prefetch, broker = %brokers.redacted(at), "consuming jobs");
    METRICS.prefetch.set(i64::from(prefetch));
    METRICS.broker_connected.set(1);
    reached.consumed = true;
    tokio::spawn({
        let pipeline = pipeline.clone();
        async move { pipeline.check_store().await }
    });
    let acks = Acks::start(consume.clone());
    let session = Arc::new(Session {
        pipeline: pipeline.clone(),
        amqp: amqp.clone(),
        brokers: brokers.clone(),
        publish: publish.clone(),
        acks,
        held: held.clone(),
        pace: pace.clone(),
    });
    let replies = control::Replies {
        channel: publish,
        results_exchange: amqp.results_exchange.clone(),
        worker: pipeline.worker_name().to_owned(),
    };
    let mut in_flight = JoinSet::new();
    // The store's cancel records again now and then: a cancel that reached
    // only the store (asked where the broker could not be reached, or its
    // message lost) holds within this period, not only at a reconnection.
    let mut reload = tokio::time::interval(CANCEL_RELOAD);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reload.tick().await;
    let mut reloading: Option<tokio::task::JoinHandle<()>> = None;
    // With `amqp.prefetch` 0, the prefetch follows the jobs' pace: looked at
    // every second, and changed by starting a consumer with the new one and
    // cancelling the old (RabbitMQ applies `basic.qos` only to consumers
    // started after it), whose deliveries already sent are still served.
    let mut pace_check = tokio::time::interval(Duration::from_secs(1));
    pace_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retiring: Option<lapin::Consumer> = None;
    let ended = loop {
        tokio::select! {
            _ = pace_check.tick(), if amqp.prefetch == 0 && retiring.is_none() => {
                let Some(target) = pace.prefetch(concurrency) else { continue };
                if target == prefetch || (target < prefetch * 2 && target * 2 > prefetch) {
                    continue;
                }
                let switched = async {
                    consume.basic_qos(target, BasicQosOptions::default()).await?;
                    let new = consume_jobs(&consume, &amqp.job_queue, pipeline.worker_name()).await?;
                    consume
                        .basic_cancel(ShortString::from(tag.as_str()), BasicCancelOptions::default())
                        .await?;
                    Ok::<_, lapin::Error>(new)
                };
                match switched.await {
                    Ok((new_tag, new)) => {
                        tracing::info!(from = prefetch, to = target, guest_run_us = pace.micros(), "prefetch follows the jobs' pace");
                        retiring = Some(std::mem::replace(&mut consumer, new));
                        tag = new_tag;
                        prefetch = target;
                        pipeline.hold(usize::from(prefetch));
                        METRICS.prefetch.set(i64::from(prefetch));
                    }
                    Err(e) => break Err(broker(e)),
                }
            }
            next = async { retiring.as_mut()?.next().await }, if retiring.is_some() => match next {
                Some(Ok(delivery)) => take(&mut in_flight, &session, delivery),
                Some(Err(e)) => break Err(broker(e)),
                // Cancelled, as asked: everything it was sent has come.
                None => retiring = None,
            },
            _ = reload.tick() => {
                if reloading.as_ref().is_none_or(|task| task.is_finished()) {
                    let (store, held) = (pipeline.stager().store().clone(), held.clone());
                    reloading = Some(tokio::spawn(async move {
                        match crate::store::index::cancel_requests(store.as_ref()).await {
                            Ok(ids) => held.load_cancels(ids),
                            Err(e) => tracing::warn!(error = %crate::error::chain(&e), "could not read the store's cancel records; trying again"),
                        }
                    }));
                }
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => take(&mut in_flight, &session, delivery),
                Some(Err(e)) => break Err(broker(e)),
                None => break Err(InfraError::Broker("the broker cancelled the consumer".into())),
            },
            next = control.next() => match next {
                Some(Ok(message)) => {
                    control::handle(held, &replies, &message.data, &message.properties).await;
                }
                Some(Err(e)) => break Err(broker(e)),
                None => break Err(InfraError::Broker("the broker cancelled the control consumer".into())),
            },
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a job task ended abnormally; its message will be redelivered");
                }
            }
            _ = shutdown.changed() => break Ok(()),
        }
    };
    if ended.is_ok() {
        // Stop taking jobs, let the running ones finish within the grace
        // period; whatever is still unacked when the channel closes goes
        // back to the queue.
        let _ = consume
            .basic_cancel(
                ShortString::from(tag.as_str()),
                BasicCancelOptions::default(),
            )
            .await;
        drop(retiring);
        let grace = Duration::from_secs(amqp.drain_grace_secs);
        tracing::info!(
            in_flight = in_flight.len(),
            grace_secs = grace.as_secs(),
            "draining"
        );
        // Still listening to the control queue: a job may be cancelled,
        // inspected or followed while it drains.
        let drained = tokio::time::timeout(grace, async {
            loop {
                tokio::select! {
                    done = in_flight.join_next() => if done.is_none() { break },
                    Some(Ok(message)) = control.next() => {
                        control::handle(held, &replies, &message.data, &message.properties).await;
                    }
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = in_flight.len(),
                "grace period over; unfinished jobs return to the queue"
            );
            in_flight.abort_all();
        }
        // The acks of the jobs that ended go out before the connection closes.
        session.acks.flush().await;
        let _ = conn
            .close(200, ShortString::from("worker shutting down"))
            .await;
    }
    ended
}

impl Session {
    async fn handle(&self, delivery: Delivery) {
        if let Err(e) = self.settle(&delivery).await {
            // Could not publish its result or dead letter (the broker
            // refused it, or the channel is gone): back to the queue after
            // a pause, as for any failure of ours; on a channel that is
            // gone the broker requeues it anyway. Left unsettled, it would
            // hold its prefetch credit until the connection closed.
            tracing::warn!(error = %self.brokers.scrub(&e.to_string()), "could not settle a delivery; requeueing it");
            tokio::time::sleep(Duration::from_millis(self.amqp.retry_base_ms)).await;
            self.acks.nack(delivery.delivery_tag, true);
        }
    }

    async fn settle(&self, delivery: &Delivery) -> Result<(), InfraError> {
        let started = SystemTime::now();
        let props = &delivery.properties;
        let message_id = props.message_id().as_ref().map(|s| s.as_str().to_owned());
        let attempt = delivery_count(props).saturating_add(1);
        // Held until the delivery is settled, for cancel, inspect, follow.
        let mut holding = None;
        let processed = match self.pipeline.admit(&delivery.data, message_id.as_deref()) {
            Err(refusal) => Processed::Refused(refusal),
            Ok(job) => match self.held.take(&job.id, attempt, started) {
                None => self.skip_cancelled(&job.id, attempt, props, started).await,
                Some(held) => {
                    let processed = self.process(job, attempt, props, started, &held).await;
                    holding = Some(held);
                    processed
                }
            },
        };
        // Our failure after a cancel: the job is over all the same.
        let processed = match processed {
            Processed::Failed { job_id, error }
                if holding.as_ref().is_some_and(|h| h.live().is_cancelled()) =>
            {
                tracing::info!(job_id = %job_id, error = %error, "cancelled job failed on our side; ending it cancelled");
                self.skip_cancelled(&job_id, attempt, props, started).await
            }
            other => other,
        };
        match settle::disposition(processed, attempt, self.retry_policy()) {
            Disposition::Publish(result) => {
                if let Some(run) = result.usage.durations.run_secs {
                    self.pace.record(run);
                }
                self.publish_result(&result, props).await?;
                self.acks.ack(delivery.delivery_tag);
                Ok(())
            }
            Disposition::DeadLetter(refusal) => self.poison(delivery, refusal, started).await,
            Disposition::Retry {
                job_id: id,
                delay,
                error,
            } => {
                tracing::warn!(job_id = %id, attempt, error = %error, retry_in_ms = delay.as_millis() as u64, "infrastructure failure; will retry");
                METRICS.retries.inc();
                tokio::time::sleep(delay).await;
                // Through the acks: written before any ack that passes its tag.
                self.acks.nack(delivery.delivery_tag, true);
                Ok(())
            }
            Disposition::GiveUp { job_id: id, error } => {
                tracing::error!(job_id = %id, attempt, error = %error, "giving up on a job after repeated infrastructure failures");
                let mut result = ResultMessage::failure(
                    &id,
                    Status::Error,
                    error.kind(),
                    format!("gave up after {attempt} attempts: {error}"),
                    self.pipeline.worker_name(),
                );
                result.attempt = attempt;
                crate::publish::stamp(&mut result, submitted(props), started);
                // The store may be what failed: then the published result
                // is all there is, and the message is not held back for it.
                if let Err(stored) = crate::publish::store::put_result_if_absent(
                    self.pipeline.stager().store().as_ref(),
                    &result,
                    self.pipeline.config().cache.index_jobs,
                )
                .await
                {
                    tracing::warn!(job_id = %id, error = %stored, "storing the error result; it is published only");
                }
                self.publish_result(&result, props).await?;
                self.dead_letter(delivery, "retries_exhausted", &error.to_string(), attempt)
                    .await?;
                self.acks.ack(delivery.delivery_tag);
                Ok(())
            }
        }
    }

    /// The result of a job cancelled before it ran (or whose attempt failed
    /// on our side after its cancel), stored like any other, never run. A
    /// result stored already (an earlier attempt's) is the one published;
    /// a store that fails is our failure, retried like any.
    async fn skip_cancelled(
        &self,
        job_id: &str,
        attempt: u32,
        props: &BasicProperties,
        started: SystemTime,
    ) -> Processed {
        match self.cancelled_result(job_id, attempt, props, started).await {
            Ok(result) => Processed::Done(Box::new(result)),
            Err(error) => Processed::Failed {
                job_id: job_id.to_owned(),
                error,
            },
        }
    }

    async fn cancelled_result(
        &self,
        job_id: &str,
        attempt: u32,
        props: &BasicProperties,
        started: SystemTime,
    ) -> Result<ResultMessage, InfraError> {
        tracing::info!(job_id, attempt, "skipping a cancelled job");
        let e = crate::error::JobError::cancelled("before it ran");
        let mut result = ResultMessage::failure(
            job_id,
            e.status(),
            e.kind,
            e.message,
            self.pipeline.worker_name(),
        );
        result.attempt = attempt;
        result.usage.durations.queue_secs = queue_secs(props);
        crate::publish::stamp(&mut result, submitted(props), started);
        let store = self.pipeline.stager().store();
        let written = crate::publish::store::put_result_if_absent(
            store.as_ref(),
            &result,
            self.pipeline.config().cache.index_jobs,
        )
        .await?;
        if !written && let Some(stored) = crate::publish::get_result(store.as_ref(), job_id).await?
        {
            return Ok(stored);
        }
        Ok(result)
    }

    /// Stage, execute and publish a valid job, with its progress published
    /// as state messages meanwhile.
    async fn process(
        &self,
        job: Job,
        attempt: u32,
        props: &BasicProperties,
        started: SystemTime,
        holding: &Holding,
    ) -> Processed {
        let id = job.id.clone();
        let delivered = Delivered {
            attempt,
            queue_secs: queue_secs(props),
            submitted: submitted(props),
            started,
        };
        let (to_broker, states) = self.state_sink(&id, attempt, props);
        let set_state = holding.state_setter();
        let on_state: OnState = Arc::new(move |state: JobState| {
            set_state(state);
            to_broker(state)
        });
        let destination = self.pipeline.store_destination(&id);
        let processed = self
            .pipeline
            .process(job, delivered, destination, &[], &on_state, holding.live())
            .await;
        drop(on_state);
        let _ = states.await;
        match processed {
            Ok(result) => Processed::Done(Box::new(result)),
            Err(error) => Processed::Failed { job_id: id, error },
        }
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.amqp.max_attempts,
            base_ms: self.amqp.retry_base_ms,
            max_ms: self.amqp.retry_max_ms,
        }
    }

    /// Publishes the job's progress to its reply queue and to the results
    /// exchange (`state.<id>`): not persistent, not confirmed, and a failure
    /// is only logged, since the result alone settles the job.
    ///
    /// Nothing is sent until the job has been here `amqp.state_delay_ms`:
    /// a spinner has nothing to show for a job that ends sooner, and each
    /// state costs the broker two messages, which on a busy fleet is a real
    /// share of its work. After the delay the current state goes out, then
    /// every change. The returned task ends when the sink is dropped; await
    /// it before publishing the result, so no state trails the result.
    fn state_sink(
        &self,
        id: &str,
        attempt: u32,
        props: &BasicProperties,
    ) -> (OnState, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = watch::channel::<Option<JobState>>(None);
        // Dropped with the sink: tells the task the job is over without
        // waking it for each state before the delay.
        let (over_tx, over) = tokio::sync::oneshot::channel::<()>();
        let on_state: OnState = Arc::new(move |state: JobState| {
            let _keep = &over_tx;
            tx.send_replace(Some(state));
            Box::pin(async {})
        });
        let publish = self.publish.clone();
        let exchange = self.amqp.results_exchange.clone();
        let reply_to = props.reply_to().as_ref().map(|r| r.as_str().to_owned());
        let correlation = props.correlation_id().clone();
        let mut props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(id))
            .with_type(ShortString::from(shoal_schemas::STATE_SCHEMA));
        if let Some(corr) = correlation {
            props = props.with_correlation_id(corr);
        }
        let id = id.to_owned();
        let worker = self.pipeline.worker_name().to_owned();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.amqp.state_delay_ms);
        let task = tokio::spawn(async move {
            // Wait out the delay, or end quietly if the job ends first.
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = over => return,
            }
            let key = state_routing_key(&id);
            loop {
                let current = *rx.borrow_and_update();
                if let Some(state) = current {
                    let body = serde_json::to_vec(&StateMessage::new(&id, state, &worker, attempt))
                        .unwrap_or_default();
                    let routes = std::iter::once((exchange.as_str(), key.as_str()))
                        .chain(reply_to.as_deref().map(|r| ("", r)));
                    for (exchange, key) in routes {
                        // Dropping the confirm: state messages are best-effort.
                        if let Err(e) = publish
                            .basic_publish(
                                ShortString::from(exchange),
                                ShortString::from(key),
                                BasicPublishOptions::default(),
                                &body,
                                props.clone(),
                            )
                            .await
                        {
                            tracing::debug!(error = %e, "could not publish a state message");
                        }
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        (on_state, task)
    }

    /// Not a job: a `rejected` result if it names an id, a copy to the
    /// dead-letter exchange with the reason, then ack.
    async fn poison(
        &self,
        delivery: &Delivery,
        refusal: Refusal,
        started: SystemTime,
    ) -> Result<(), InfraError> {
        let Refusal { id, reason, error } = refusal;
        let why = error.message.as_str();
        tracing::warn!(
            job_id = id.as_deref().unwrap_or("-"),
            reason,
            error = why,
            "dead-lettering a message that is not a valid job"
        );
        if !id.as_deref().is_some_and(valid_id) {
            // No result to count it by: count it here.
            METRICS
                .jobs
                .with_label_values(&[Status::Rejected.as_str(), ErrorKind::InvalidJob.as_str()])
                .inc();
        }
        if let Some(id) = id.filter(|id| valid_id(id)) {
            let mut result = ResultMessage::failure(
                &id,
                Status::Rejected,
                ErrorKind::InvalidJob,
                why,
                self.pipeline.worker_name(),
            );
            crate::publish::stamp(&mut result, submitted(&delivery.properties), started);
            crate::publish::store::put_result_if_absent(
                self.pipeline.stager().store().as_ref(),
                &result,
                self.pipeline.config().cache.index_jobs,
            )
            .await?;
            self.publish_result(&result, &delivery.properties).await?;
        }
        self.dead_letter(
            delivery,
            reason,
            why,
            delivery_count(&delivery.properties) + 1,
        )
        .await?;
        self.acks.ack(delivery.delivery_tag);
        Ok(())
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        reason: &str,
        error: &str,
        attempts: u32,
    ) -> Result<(), InfraError> {
        METRICS.dead_letters.with_label_values(&[reason]).inc();
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from("x-shoal-reason"),
            AMQPValue::LongString(reason.into()),
        );
        let error: String = error.chars().take(4000).collect();
        headers.insert(
            ShortString::from("x-shoal-error"),
            AMQPValue::LongString(error.as_str().into()),
        );
        headers.insert(
            ShortString::from("x-shoal-attempts"),
            AMQPValue::LongUInt(attempts),
        );
        let mut props = delivery
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        if props.content_type().is_none() {
            props = props.with_content_type(ShortString::from("application/octet-stream"));
        }
        self.publish_confirmed(&self.amqp.dead_letter, "", &delivery.data, props)
            .await
    }

    async fn publish_result(
        &self,
        result: &ResultMessage,
        job_props: &BasicProperties,
    ) -> Result<(), InfraError> {
        let body = serde_json::to_vec(result)
            .map_err(|e| InfraError::Broker(Cause::new("encoding result", e)))?;
        let mut props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(result.job_id.as_str()))
            .with_type(ShortString::from(shoal_schemas::RESULT_SCHEMA));
        if let Some(corr) = job_props.correlation_id() {
            props = props.with_correlation_id(corr.clone());
        }
        // Both copies go out before either confirm is awaited: one round
        // trip to the broker instead of two.
        let key = result_routing_key(&result.job_id);
        let to_exchange =
            self.publish_confirmed(&self.amqp.results_exchange, &key, &body, props.clone());
        match job_props.reply_to() {
            Some(reply_to) => {
                // Transient: the copy for a waiting submitter is a
                // notification, not the record (that is the store, and the
                // persistent copy above), so the broker does not write it
                // to disk; the submitter library notices a broker restart.
                let to_reply = self.publish_confirmed(
                    "",
                    reply_to.as_str(),
                    &body,
                    props.with_delivery_mode(1),
                );
                let (a, b) = futures::join!(to_exchange, to_reply);
                a.and(b)
            }
            None => to_exchange.await,
        }?;
        // Counted once published: a result whose publish failed is not
        // one, and the job's retry counts its own.
        METRICS.job_finished(result);
        Ok(())
    }

    async fn publish_confirmed(
        &self,
        exchange: &str,
        key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), InfraError> {
        let confirm = self
            .publish
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(key),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .map_err(|e| InfraError::Broker(Cause::new(format!("publishing to {exchange:?}"), e)))?
            .await
            .map_err(|e| InfraError::Broker(Cause::new(format!("confirm from {exchange:?}"), e)))?;
        if confirm.is_nack() {
            return Err(InfraError::Broker(
                format!("the broker refused a message to {exchange:?}").into(),
            ));
        }
        Ok(())
    }
}

/// Previous deliveries of this message, from the quorum queue's header.
fn delivery_count(props: &BasicProperties) -> u32 {
    let Some(headers) = props.headers() else {
        return 0;
    };
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::ShortInt(n)) => u32::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// When the message says it was published, in microseconds since the
/// epoch: `x-shoal-published-us`, else `x-shoal-published-ms`, else the
/// `timestamp` property (seconds).
fn published_us(props: &BasicProperties) -> Option<f64> {
    let header = |name: &'static str, scale: f64| {
        props
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(name))
            .and_then(|value| {
                let read = published_at(value, scale);
                // Once per process at warn: a client that encodes it wrongly
                // does so on every job, and a warning per job would bury the log.
                static WARNED: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                if read.is_none() {
                    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::debug!(header = name, value = ?value, "publish-time header unreadable");
                    } else {
                        tracing::warn!(header = name, value = ?value, "publish-time header is not a number as an integer, float or decimal string (docs/PROTOCOL.md); queue_secs falls back to the next one (said once; later ones at debug)");
                    }
                }
                // In microseconds from here on.
                read.map(|n| n * (1_000_000.0 / scale))
            })
    };
    header(PUBLISHED_US_HEADER, 1_000_000.0)
        .or_else(|| header(PUBLISHED_MS_HEADER, 1000.0))
        .or_else(|| props.timestamp().map(|s| s as f64 * 1e6))
}

/// Seconds the message spent queued, from the submitter's clock to ours
/// (so clock skew shows up here; it is clamped at 0).
fn queue_secs(props: &BasicProperties) -> Option<f64> {
    let now_us = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_micros() as f64;
    Some(((now_us - published_us(props)?) / 1e6).max(0.0))
}

/// The publish time as a time, for the result's `submitted_at`.
fn submitted(props: &BasicProperties) -> Option<SystemTime> {
    let us = published_us(props)?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_micros(us as u64))
}

/// The publish time in a header counting `per_sec` units a second since the
/// epoch (`x-shoal-published-us`: 10^6, `x-shoal-published-ms`: 1000), in
/// those units, whatever field type a client's library chose for it: any
/// integer width, a float or double, or a string of digits. A field of type
/// timestamp (`T`) is seconds, as AMQP defines it; a value in it above
/// 10^11 (the year 5138 in seconds) is taken as already in the header's
/// unit, which some clients put there.
fn published_at(value: &AMQPValue, per_sec: f64) -> Option<f64> {
    let ms = match value {
        AMQPValue::ShortShortInt(n) => f64::from(*n),
        AMQPValue::ShortShortUInt(n) => f64::from(*n),
        AMQPValue::ShortInt(n) => f64::from(*n),
        AMQPValue::ShortUInt(n) => f64::from(*n),
        AMQPValue::LongInt(n) => f64::from(*n),
        AMQPValue::LongUInt(n) => f64::from(*n),
        AMQPValue::LongLongInt(n) => *n as f64,
        AMQPValue::Float(n) => f64::from(*n),
        AMQPValue::Double(n) => *n,
        // Above 10^11 seconds (the year 5138) it is in the header's unit.
        AMQPValue::Timestamp(t) if (*t as f64) > 1e11 * per_sec / 1000.0 => *t as f64,
        AMQPValue::Timestamp(t) => *t as f64 * per_sec,
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).trim().parse().ok()?,
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok()?,
        _ => return None,
    };
    (ms.is_finite() && ms > 0.0).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_time_header_is_read_in_every_field_type_a_client_may_send() {
        let ms: i64 = 1_764_600_000_123;
        let cases = [
            (AMQPValue::LongLongInt(ms), Some(ms as f64)),
            (AMQPValue::Double(ms as f64), Some(ms as f64)),
            // An f32 holds milliseconds to within a minute or so.
            (AMQPValue::Float(1.5e12), Some(f64::from(1.5e12f32))),
            (
                AMQPValue::LongString(ms.to_string().into()),
                Some(ms as f64),
            ),
            (
                AMQPValue::ShortString(ms.to_string().into()),
                Some(ms as f64),
            ),
            // An AMQP timestamp is seconds; milliseconds put there are seen as such.
            (
                AMQPValue::Timestamp(1_764_600_000),
                Some(1_764_600_000_000.0),
            ),
            (AMQPValue::Timestamp(ms as u64), Some(ms as f64)),
            (AMQPValue::LongInt(7), Some(7.0)),
            (AMQPValue::LongString("soon".into()), None),
            (AMQPValue::Boolean(true), None),
            (AMQPValue::LongLongInt(-5), None),
        ];
        for (value, want) in cases {
            assert_eq!(published_at(&value, 1000.0), want, "{value:?}");
        }
    }

    #[test]
    fn queue_time_has_microseconds_when_the_client_sends_them() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let with = |headers: &[(&str, AMQPValue)]| {
            let mut table = FieldTable::default();
            for (name, value) in headers {
                table.insert((*name).into(), value.clone());
            }
            BasicProperties::default()
                .with_headers(table)
                .with_timestamp(now.as_secs() - 60)
        };
        // Published 1.5 ms ago: the microsecond header says so, though the
        // millisecond one (here deliberately off) and the timestamp differ.
        let us = i64::try_from(now.as_micros()).unwrap() - 1500;
        let ms = i64::try_from(now.as_millis()).unwrap() - 30_000;
        let props = with(&[
            (PUBLISHED_US_HEADER, AMQPValue::LongLongInt(us)),
            (PUBLISHED_MS_HEADER, AMQPValue::LongLongInt(ms)),
        ]);
        let secs = queue_secs(&props).unwrap();
        assert!((0.0015..0.5).contains(&secs), "{secs}");
        // Without it: the millisecond header, then the timestamp.
        let secs = queue_secs(&with(&[(PUBLISHED_MS_HEADER, AMQPValue::LongLongInt(ms))])).unwrap();
        assert!((30.0..31.0).contains(&secs), "{secs}");
        let secs = queue_secs(&with(&[])).unwrap();
        assert!((59.0..62.0).contains(&secs), "{secs}");
    }

    #[test]
    fn a_precondition_failure_names_the_argument_and_the_object() {
        let said = "ProtocolError(AMQPError { kind: Soft(PRECONDITIONFAILED), message: \"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'shoal.jobs' in vhost '/': received the value 'quorum' of type 'longstr' but current is none\" })";
        let m = Mismatch::parse(said).unwrap();
        assert_eq!(m.argument, "x-queue-type");
        assert_eq!(m.object, "queue 'shoal.jobs'");
        assert_eq!(
            m.values,
            "received the value 'quorum' of type 'longstr' but current is none"
        );
        let why = m.explain("shoal.dead");
        assert!(
            why.contains("queue 'shoal.jobs'") && why.contains("x-queue-type"),
            "{why}"
        );
        // A classic dead-letter queue of an earlier version: migrate it.
        let dead = said.replace("shoal.jobs", "shoal.dead");
        let why = Mismatch::parse(&dead).unwrap().explain("shoal.dead");
        assert!(why.contains("submit admin migrate-dead-letters"), "{why}");
        let exchange = "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'shoal.results' in vhost '/': received 'topic' but current is 'direct'";
        assert_eq!(
            Mismatch::parse(exchange).unwrap().object,
            "exchange 'shoal.results'"
        );
        assert_eq!(Mismatch::parse("NOT_FOUND - no queue 'x'"), None);
    }

    #[test]
    fn the_automatic_prefetch_follows_the_guests_pace() {
        let ms = |n: f64| Duration::from_secs_f64(n / 1000.0);
        // Trivial jobs: the most per slot.
        assert_eq!(auto_prefetch(2, ms(0.07)), 32);
        assert_eq!(auto_prefetch(2, ms(1.0)), 20);
        // Jobs of 10 ms and more: one staged while one runs.
        assert_eq!(auto_prefetch(2, ms(10.0)), 4);
        assert_eq!(auto_prefetch(4, ms(60_000.0)), 8);
        let pace = Pace::default();
        assert_eq!(pace.prefetch(2), None, "nothing before a job ran");
        pace.record(0.000_07);
        assert_eq!(pace.prefetch(2), Some(32));
        for _ in 0..40 {
            pace.record(5.0);
        }
        assert_eq!(pace.prefetch(2), Some(4));
    }

    #[test]
    fn only_safe_ids_get_results() {
        assert!(valid_id("job-1.a_b"));
        assert!(!valid_id("../x"));
        assert!(!valid_id(""));
        assert!(!valid_id("a b"));
    }
}
