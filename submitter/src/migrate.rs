//! Moving a fleet's dead-letter queue from a classic queue to a quorum
//! queue (`submit admin migrate-dead-letters`).
//!
//! Fleets before protocol revision 2026-12 declared `shoal.dead` as a
//! classic queue, which lives on one broker node: dead letters routed to it
//! while that node is down are dropped. It is a quorum queue now, like the
//! job queue. RabbitMQ cannot change a queue's type in place, and workers
//! that declare it as a quorum queue are refused while the classic one
//! exists (they say so in `/readyz` and `shoal_topology_mismatch`), so the
//! queue is rebuilt under the same name through a temporary quorum queue,
//! with every message moved by confirmed publish before its original is
//! acked. No dead letter is lost at any step: new ones are routed to the
//! temporary queue from before the old queue is unbound until the new one
//! is bound. One arriving in the instant between two bindings may be kept
//! twice (a duplicate in the dead-letter queue, never a loss).
use crate::client::DURABLE;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use shoal_schemas::topology::{Topology, field_table};
use shoal_worker::config::{Brokers, NoBrokerAnswered};

/// What the migration found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migration {
    /// The dead-letter queue is already a quorum queue (or did not exist and
    /// was declared as one): nothing was moved.
    AlreadyQuorum,
    /// The classic queue was replaced; this many messages were moved.
    Migrated {
        /// Dead letters carried over, in their order.
        moved: u64,
    },
}

/// Why the migration stopped. Every step before it completed; running the
/// command again continues from where it stopped (the temporary queue is
/// reused and emptied into the new one).
#[derive(Debug, thiserror::Error)]
#[error("migrating the dead-letter queue {queue}: {doing}: {said}")]
pub struct MigrateError {
    queue: String,
    doing: &'static str,
    said: String,
}

/// The temporary queue's name.
fn staging_name(topology: &Topology) -> String {
    format!("{}.migrating", topology.dead_letter)
}

fn quorum(topology: &Topology) -> FieldTable {
    field_table(topology.dead_letter_queue_arguments())
}

/// A step that failed: the broker's error, or a moved message it refused.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Connect(#[from] NoBrokerAnswered),
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error(
        "the broker refused (nacked or returned) a moved message; it is still in the queue it came from"
    )]
    Refused,
}

/// Rebuilds `topology.dead_letter` as a quorum queue, moving every message.
/// Safe to run any number of times, with workers running: a worker that
/// dead-letters meanwhile reaches one of the two queues.
pub async fn migrate_dead_letter_queue(
    brokers: &Brokers,
    topology: &Topology,
) -> Result<Migration, MigrateError> {
    let queue = topology.dead_letter.clone();
    let step = Steps {
        queue: &topology.dead_letter,
        brokers,
    };
    let connection = brokers
        .connect_first(0, None, "shoal-migrate")
        .await
        .map_err(step.fail("connecting"))?
        .connection;
    // A declare that fails closes its channel: each probe gets its own.
    let probe = connection
        .create_channel()
        .await
        .map_err(step.fail("opening a channel"))?;
    let classic = match probe
        .queue_declare(queue.as_str().into(), DURABLE, quorum(topology))
        .await
    {
        Ok(_) => false,
        // Only the queue type differing makes it the classic queue of old;
        // a quorum queue declared with other arguments is not ours to move.
        Err(e) if inequivalent(&e) && e.to_string().contains("x-queue-type") => true,
        Err(e) => return Err(step.fail("declaring the quorum queue")(e)),
    };
    let staging = staging_name(topology);
    let channel = connection
        .create_channel()
        .await
        .map_err(step.fail("opening a channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(step.fail("enabling confirms"))?;
    let staging_left = channel
        .queue_declare(
            staging.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..DURABLE
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    let channel = if staging_left {
        channel
    } else {
        // The passive declare of a missing queue closed that channel.
        let channel = connection
            .create_channel()
            .await
            .map_err(step.fail("opening a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(step.fail("enabling confirms"))?;
        channel
    };
    if !classic && !staging_left {
        // The probe may have made the queue just now: bound, with the rest
        // of the topology, as a worker would.
        topology
            .declare(&channel)
            .await
            .map_err(step.fail("declaring the topology"))?;
        let _ = connection.close(200, "nothing to migrate".into()).await;
        return Ok(Migration::AlreadyQuorum);
    }
    if classic {
        // 1. New dead letters also reach the temporary quorum queue …
        channel
            .queue_declare(staging.as_str().into(), DURABLE, quorum(topology))
            .await
            .map_err(step.fail("declaring the temporary queue"))?;
        bind(&channel, &staging, &topology.dead_letter)
            .await
            .map_err(step.fail("binding the temporary queue"))?;
        // 2. … and then only it; the classic queue empties into it.
        channel
            .queue_unbind(
                queue.as_str().into(),
                topology.dead_letter.as_str().into(),
                "".into(),
                FieldTable::default(),
            )
            .await
            .map_err(step.fail("unbinding the classic queue"))?;
        drain(&channel, &queue, &staging)
            .await
            .map_err(step.fail("moving the classic queue's messages"))?;
        channel
            .queue_delete(
                queue.as_str().into(),
                // Not while someone consumes it: messages they hold unacked
                // are not counted as in the queue, and would go with it.
                QueueDeleteOptions {
                    if_empty: true,
                    if_unused: true,
                    ..QueueDeleteOptions::default()
                },
            )
            .await
            .map_err(step.fail("deleting the emptied classic queue"))?;
    }
    // 3. The quorum queue under the old name, bound; the temporary queue
    // unbound and emptied into it, then deleted. On a fresh channel: one
    // that published to the classic queue remembers it under that name,
    // and RabbitMQ 3.10 fails the channel (INTERNAL_ERROR) when it then
    // publishes to the quorum queue of the same name.
    let _ = channel.close(200, "classic queue gone".into()).await;
    let channel = connection
        .create_channel()
        .await
        .map_err(step.fail("opening a channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(step.fail("enabling confirms"))?;
    channel
        .queue_declare(queue.as_str().into(), DURABLE, quorum(topology))
        .await
        .map_err(step.fail("declaring the quorum queue"))?;
    bind(&channel, &queue, &topology.dead_letter)
        .await
        .map_err(step.fail("binding the quorum queue"))?;
    channel
        .queue_unbind(
            staging.as_str().into(),
            topology.dead_letter.as_str().into(),
            "".into(),
            FieldTable::default(),
        )
        .await
        .map_err(step.fail("unbinding the temporary queue"))?;
    // Every dead letter ends here: the old queue's, and any that reached
    // the temporary one meanwhile (or in an earlier, interrupted run).
    let moved = drain(&channel, &staging, &queue)
        .await
        .map_err(step.fail("moving the temporary queue's messages"))?;
    // Quorum queues refuse `if-empty` deletes: it is checked here instead.
    // Nothing routes to it any more, so it stays empty once drained.
    let left = channel
        .queue_declare(
            staging.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..DURABLE
            },
            FieldTable::default(),
        )
        .await
        .map_err(step.fail("checking the temporary queue is empty"))?
        .message_count();
    if left > 0 {
        return Err(MigrateError {
            queue: queue.clone(),
            doing: "deleting the emptied temporary queue",
            said: format!("{staging} still holds {left} messages; run the migration again"),
        });
    }
    channel
        .queue_delete(staging.as_str().into(), QueueDeleteOptions::default())
        .await
        .map_err(step.fail("deleting the emptied temporary queue"))?;
    let _ = connection.close(200, "migrated".into()).await;
    Ok(Migration::Migrated { moved })
}

/// The migration's queue, for naming a failed step with it.
struct Steps<'a> {
    queue: &'a str,
    brokers: &'a Brokers,
}

impl Steps<'_> {
    /// Maps a failed step to the error naming the queue and the step, the
    /// broker's words with passwords replaced.
    fn fail<E: Into<StepError>>(&self, doing: &'static str) -> impl FnOnce(E) -> MigrateError + '_ {
        move |e| MigrateError {
            queue: self.queue.to_owned(),
            doing,
            said: self.brokers.scrub(&e.into().to_string()),
        }
    }
}

async fn bind(channel: &Channel, queue: &str, exchange: &str) -> lapin::Result<()> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Moves every message of `from` to `to`, in order: each is published
/// (persistent, with its properties) and confirmed before its original is
/// acked, so a failure at any point loses nothing (at worst a message is in
/// both queues). Returns how many moved.
async fn drain(channel: &Channel, from: &str, to: &str) -> Result<u64, StepError> {
    let mut moved = 0;
    while let Some(message) = channel
        .basic_get(from.into(), BasicGetOptions { no_ack: false })
        .await?
    {
        let delivery = message.delivery;
        let mut properties: BasicProperties = delivery.properties.clone().with_delivery_mode(2);
        // A quorum queue adds its own delivery count to what it hands out;
        // it is that queue's state, not the message's, and RabbitMQ 3.10's
        // channel crashes (INTERNAL_ERROR) when it comes back in a publish.
        if let Some(headers) = delivery.properties.headers() {
            let mut kept = FieldTable::default();
            for (name, value) in headers.inner() {
                if name.as_str() != "x-delivery-count" {
                    kept.insert(name.clone(), value.clone());
                }
            }
            properties = properties.with_headers(kept);
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                to.into(),
                // A target queue gone meanwhile returns the message rather
                // than dropping it, and it is not acked.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                properties,
            )
            .await?
            .await?;
        if !confirm.is_ack() || confirm.take_message().is_some() {
            return Err(StepError::Refused);
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
        moved += 1;
    }
    Ok(moved)
}

/// The broker's "inequivalent arg" refusal: the queue exists with other
/// arguments (here: as a classic queue).
fn inequivalent(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
}
