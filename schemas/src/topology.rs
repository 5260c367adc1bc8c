//! The AMQP topology, declared idempotently by workers and submitters
//! alike (the declaring itself needs feature `amqp`). Both sides must
//! declare the job queue with the same arguments, or RabbitMQ refuses the
//! second declaration; keeping the one definition here makes that
//! impossible to get wrong. `schemas/topology.json` states the same for
//! clients in other languages (a test checks the two agree).
#[cfg(feature = "amqp")]
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
#[cfg(feature = "amqp")]
use lapin::types::{AMQPValue, FieldTable, ShortString};
#[cfg(feature = "amqp")]
use lapin::{Channel, ExchangeKind};

/// The value of a queue argument, with its AMQP field type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgumentValue {
    /// A long string (`longstr`, AMQP field type `S`).
    LongString(String),
    /// A signed 32-bit integer (`signed-32`, AMQP field type `I`).
    Int(i32),
}

/// Names and retry bound of the queues and exchanges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Durable quorum queue of job messages.
    pub job_queue: String,
    /// Topic exchange of result messages (routing key `job.<id>`) and
    /// best-effort state messages (`state.<id>`).
    pub results_exchange: String,
    /// Fanout exchange and durable quorum queue of messages that could not
    /// be processed.
    pub dead_letter: String,
    /// Fanout exchange of control messages (cancel, inspect, follow): every
    /// worker binds a queue of its own to it, so one message reaches the
    /// whole fleet at once.
    pub control_exchange: String,
    /// Deliveries after which the broker itself dead-letters a message that
    /// no worker could settle (a worker that crashes on it each time).
    pub delivery_limit: u32,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            job_queue: "shoal.jobs".into(),
            results_exchange: "shoal.results".into(),
            dead_letter: "shoal.dead".into(),
            control_exchange: "shoal.control".into(),
            delivery_limit: 10,
        }
    }
}

/// A broker URL with its password replaced, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = url[scheme + 3..at].split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The routing key of a job's result.
pub fn result_routing_key(job_id: &str) -> String {
    format!("job.{job_id}")
}

/// Job message header with the publish time in milliseconds since the
/// epoch, which workers turn into the result's `queue_secs` (the AMQP
/// `timestamp` property, which submitters also set, only has seconds).
pub const PUBLISHED_MS_HEADER: &str = "x-shoal-published-ms";

/// Job message header with the publish time in microseconds since the
/// epoch, a signed 64-bit integer (AMQP field type `l`). Workers prefer it
/// to [`PUBLISHED_MS_HEADER`], whose millisecond resolution makes the
/// `queue_secs` of a fast fleet (well under a millisecond in the queue)
/// mostly rounding; clients set both, for workers of earlier versions.
pub const PUBLISHED_US_HEADER: &str = "x-shoal-published-us";

/// The routing key of a followed job's output on the results exchange.
pub fn log_routing_key(job_id: &str) -> String {
    format!("log.{job_id}")
}

/// Headers of a followed job's output message: which stream (`stdout` or
/// `stderr`), the offset of the body's first byte in that stream, and, on
/// the last message of a follow (empty body), `x-shoal-end` = true.
pub const LOG_STREAM_HEADER: &str = "x-shoal-stream";
/// See [`LOG_STREAM_HEADER`].
pub const LOG_OFFSET_HEADER: &str = "x-shoal-offset";
/// See [`LOG_STREAM_HEADER`].
pub const LOG_END_HEADER: &str = "x-shoal-end";

/// The routing key of a job's state messages on the results exchange.
pub fn state_routing_key(job_id: &str) -> String {
    format!("state.{job_id}")
}

/// Type of the dead-letter exchange: every dead letter goes to its queue.
pub const DEAD_LETTER_EXCHANGE_TYPE: &str = "fanout";
/// Type of the results exchange: routing keys `job.<id>`, `state.<id>`
/// and `log.<id>`.
pub const RESULTS_EXCHANGE_TYPE: &str = "topic";
/// Type of the control exchange: every worker's queue gets every message.
pub const CONTROL_EXCHANGE_TYPE: &str = "fanout";

#[cfg(feature = "amqp")]
fn exchange_kind(kind: &str) -> ExchangeKind {
    match kind {
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        other => ExchangeKind::Custom(other.to_owned()),
    }
}

impl Topology {
    /// The dead-letter queue's arguments: a quorum queue, replicated like
    /// the job queue. A classic queue lives on one node, and dead letters
    /// routed to it while that node is down are dropped: the one place an
    /// operator looks for what failed must survive a node's loss.
    pub fn dead_letter_queue_arguments(&self) -> Vec<(&'static str, ArgumentValue)> {
        vec![(
            "x-queue-type",
            ArgumentValue::LongString("quorum".to_owned()),
        )]
    }

    /// The job queue's arguments, in the order they are declared: a quorum
    /// queue (replicated, with a delivery count) whose dead letters go to
    /// the dead-letter exchange, and the broker's own bound on deliveries.
    pub fn job_queue_arguments(&self) -> Vec<(&'static str, ArgumentValue)> {
        vec![
            (
                "x-queue-type",
                ArgumentValue::LongString("quorum".to_owned()),
            ),
            (
                "x-dead-letter-exchange",
                ArgumentValue::LongString(self.dead_letter.clone()),
            ),
            (
                "x-delivery-limit",
                ArgumentValue::Int(i32::try_from(self.delivery_limit).unwrap_or(i32::MAX)),
            ),
        ]
    }
}

/// Declares a submitter's reply queue and consumes it: a [`private_queue`]
/// bound to nothing. Returns its name, for the jobs' `reply_to`, and the
/// consumer.
#[cfg(feature = "amqp")]
pub async fn reply_queue(channel: &Channel) -> lapin::Result<(String, lapin::Consumer)> {
    private_queue(channel, &[]).await
}

/// Declares a queue of one's own and consumes it: server-named, exclusive
/// to this connection and deleted with it, bound to each `(exchange,
/// routing key)` of `bindings`, consumed without acks (nobody else could
/// take a message back from it, so acks would only cost round trips). A
/// submitter's replies, a worker's control messages, a follower's output.
#[cfg(feature = "amqp")]
pub async fn private_queue(
    channel: &Channel,
    bindings: &[(&str, &str)],
) -> lapin::Result<(String, lapin::Consumer)> {
    let queue = channel
        .queue_declare(
            ShortString::from(""),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let name = queue.name().as_str().to_owned();
    for (exchange, key) in bindings {
        channel
            .queue_bind(
                ShortString::from(name.as_str()),
                ShortString::from(*exchange),
                ShortString::from(*key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let consumer = channel
        .basic_consume(
            ShortString::from(name.as_str()),
            ShortString::from(""),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((name, consumer))
}

/// Queue arguments as AMQP field values, as [`Topology::declare`] sends them.
#[cfg(feature = "amqp")]
pub fn field_table(arguments: Vec<(&'static str, ArgumentValue)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in arguments {
        let value = match value {
            ArgumentValue::LongString(s) => AMQPValue::LongString(s.as_str().into()),
            ArgumentValue::Int(n) => AMQPValue::LongInt(n),
        };
        table.insert(ShortString::from(name), value);
    }
    table
}

#[cfg(feature = "amqp")]
impl Topology {
    /// Declares everything; safe to call any number of times, from any side.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                ShortString::from(self.dead_letter.as_str()),
                exchange_kind(DEAD_LETTER_EXCHANGE_TYPE),
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                ShortString::from(self.dead_letter.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                field_table(self.dead_letter_queue_arguments()),
            )
            .await?;
        channel
            .queue_bind(
                ShortString::from(self.dead_letter.as_str()),
                ShortString::from(self.dead_letter.as_str()),
                ShortString::from(""),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                ShortString::from(self.results_exchange.as_str()),
                exchange_kind(RESULTS_EXCHANGE_TYPE),
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                ShortString::from(self.control_exchange.as_str()),
                exchange_kind(CONTROL_EXCHANGE_TYPE),
                durable,
                FieldTable::default(),
            )
            .await?;
        let args = field_table(self.job_queue_arguments());
        channel
            .queue_declare(
                ShortString::from(self.job_queue.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await?;
        Ok(())
    }

    /// Deletes the queues and exchanges, messages and all: for tearing
    /// down a test's or a staging fleet's topology, never a live one.
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for queue in [&self.job_queue, &self.dead_letter] {
            channel
                .queue_delete(
                    ShortString::from(queue.as_str()),
                    QueueDeleteOptions::default(),
                )
                .await?;
        }
        for exchange in [
            &self.results_exchange,
            &self.dead_letter,
            &self.control_exchange,
        ] {
            channel
                .exchange_delete(
                    ShortString::from(exchange.as_str()),
                    ExchangeDeleteOptions::default(),
                )
                .await?;
        }
        Ok(())
    }
}
