//! The AMQP topology, declared idempotently by workers and submitters
//! alike (feature `amqp`). Both sides must declare the job queue with the
//! same arguments, or RabbitMQ refuses the second declaration; keeping the
//! one definition here makes that impossible to get wrong.
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

/// Names and retry bound of the queues and exchanges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Durable quorum queue of job messages.
    pub job_queue: String,
    /// Topic exchange of result messages (routing key `job.<id>`) and
    /// best-effort state messages (`state.<id>`).
    pub results_exchange: String,
    /// Fanout exchange and durable queue of messages that could not be processed.
    pub dead_letter: String,
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

/// The routing key of a job's state messages on the results exchange.
pub fn state_routing_key(job_id: &str) -> String {
    format!("state.{job_id}")
}

/// Declares a submitter's reply queue and consumes it: server-named,
/// exclusive to this connection and deleted with it, consumed without acks
/// (nobody else could take a message back from it, so acks would only cost
/// round trips). Returns its name, for the jobs' `reply_to`, and the consumer.
pub async fn reply_queue(channel: &Channel) -> lapin::Result<(String, lapin::Consumer)> {
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
                ExchangeKind::Fanout,
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
                FieldTable::default(),
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
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(self.dead_letter.as_str().into()),
        );
        args.insert(
            ShortString::from("x-delivery-limit"),
            AMQPValue::LongInt(self.delivery_limit as i32),
        );
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
        for exchange in [&self.results_exchange, &self.dead_letter] {
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
