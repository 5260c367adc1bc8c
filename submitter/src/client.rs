//! The fleet client: publish jobs to RabbitMQ and wait for their results.
//!
//! Publishing goes through two pools: one keeps a few connections (to the
//! first broker URL that answers: a cluster's nodes may all be listed, and
//! a lost node is skipped), and on top of them a pool of channels already
//! in confirm mode, so a busy service publishing from many tasks neither opens a
//! channel per job nor serialises every job on one channel. Every job is
//! persistent and confirmed by the broker before `submit` returns; a pooled
//! channel or connection that broke is replaced on its next use.
//!
//! Results come back on one reply queue that every job names as its
//! `reply_to`, on a connection of its own, so results reach this client
//! whatever worker ran the job. Workers also send best-effort state
//! messages (staging, running, publishing) there, which
//! [`Client::wait_result_with`] hands to the caller, for a spinner.
//!
//! A service lives longer than any one broker connection, so the reply
//! queue is named by the client, durable, and neither exclusive nor
//! deleted with its connection: when the connection drops, results keep
//! arriving in the queue, the client reconnects with backoff and consumes
//! it again, and a waiting caller sees nothing but a later result. Results
//! are acked (in batches, when the queue runs dry), so one that was on the
//! wire when the connection broke is delivered again. Workers send these
//! copies transient (the results store is the record), so a broker restart
//! drops them; a marker message beside the queue tells the client so. The
//! queue expires ([`ClientOptions::reply_keep`]) once no client has used it
//! for that long, and [`Client::close`] deletes it. When the queue or what
//! it held is gone (a broker restart, the client away longer than
//! `reply_keep`, someone deleted it), waiters for jobs submitted before get
//! [`ClientError::RepliesLost`] and the results store still has them
//! (`submit get`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), shoal_submitter::ClientError> {
//! use shoal_submitter::{Client, JobMessage, Location, Source, Topology};
//! use std::time::Duration;
//!
//! let client = Client::connect("amqp://guest:guest@127.0.0.1:5672/%2f", Topology::default()).await?;
//! // A module already in the fleet's cache, named by its sha256.
//! let module = Source::new(Location::Sha256("a3f5…".into()));
//! let mut job = JobMessage::new(module);
//! job.args = vec!["hello".into()];
//! let handle = client.submit(job).await?;
//! let result = client.wait_result(&handle.id, Duration::from_secs(60)).await?;
//! println!("{} ended {:?}", result.job_id, result.status);
//! # Ok(()) }
//! ```
//!
//! `submitter/examples/batch.rs` is a complete service (1,000 jobs in, every
//! result out) that runs against a real broker and worker.
use crate::{JobMessage, ResultMessage, StateMessage};
use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use futures::{FutureExt, StreamExt};
use lapin::PublisherConfirm;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use shoal_schemas::topology::{PUBLISHED_MS_HEADER, PUBLISHED_US_HEADER, Topology};
use shoal_worker::config::Brokers;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

/// What went wrong talking to the fleet.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker could not be reached or refused an operation.
    #[error("broker at {broker}: {message}")]
    Broker {
        /// The broker URL, password redacted.
        broker: String,
        /// What failed.
        message: String,
    },
    /// The job is not valid; nothing was published.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// No result arrived in time; the job may still finish later.
    #[error("no result for job {0} within the timeout")]
    Timeout(String),
    /// The reply queue, or the results in it, were gone when the client
    /// reconnected (the broker restarted, the client was away longer than
    /// [`ClientOptions::reply_keep`], someone deleted the queue, or the
    /// cluster node holding it is down: then the client moves its replies
    /// to a queue of a new name on a node that answers), so this
    /// job's result may have been
    /// dropped on its way here. Workers also write every result to the
    /// results store: fetch it with `submit get`. Jobs submitted after the
    /// reconnection are not affected.
    #[error(
        "lost the reply queue ({0}) after this job was submitted; its result is in the results store: fetch it with `submit get`"
    )]
    RepliesLost(String),
    /// The job was not submitted through this client, or its result was
    /// already taken by an earlier wait (fetch it with `submit get`).
    #[error(
        "job {0} is not awaited by this client (not submitted here, or its result was already taken)"
    )]
    UnknownJob(String),
}

/// A submitted job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobHandle {
    /// The job's id (given, or generated by `submit`).
    pub id: String,
}

/// Pool sizes. The defaults suit a service publishing from a few dozen
/// tasks; a channel carries many unconfirmed publishes at once, so more
/// channels help only when many tasks publish at the same instant.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Most AMQP connections used for publishing.
    pub max_connections: usize,
    /// Most confirm-mode channels, over all those connections.
    pub max_channels: usize,
    /// How long `submit` waits for a free channel before it fails.
    pub wait_for_channel: Duration,
    /// How long the reply queue outlives a lost connection (its
    /// `x-expires`): results that arrive while the client reconnects wait
    /// there this long.
    pub reply_keep: Duration,
    /// The connection name the broker shows (management UI,
    /// `rabbitmqctl list_connections`), to tell services apart.
    pub connection_name: String,
    /// The fleet's store (`shoal_submitter::local::open_store`), to record
    /// each job in its index once the broker confirmed it: `submit list`
    /// then shows it while it is queued, and `submit cancel` knows it.
    /// Without it a job appears in the index once it ends.
    pub index: Option<Arc<dyn object_store::ObjectStore>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            max_connections: 2,
            max_channels: 16,
            wait_for_channel: Duration::from_secs(30),
            reply_keep: Duration::from_secs(15 * 60),
            connection_name: "shoal-submitter".into(),
            index: None,
        }
    }
}

#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
    arrived: Notify,
}

#[derive(Default)]
struct InboxState {
    results: HashMap<String, ResultMessage>,
    states: HashMap<String, StateMessage>,
    /// The reply queue's incarnation each waiting job was submitted in.
    submitted: HashMap<String, u64>,
    /// Bumped each time the reply queue had to be declared anew after a
    /// loss; why it was lost. Jobs of an earlier incarnation without a
    /// result may have lost it.
    incarnation: u64,
    lost: Option<String>,
}

/// Makes connections to the first broker URL that answers, starting from
/// the one that answered last: with a cluster's nodes listed, a lost node
/// is skipped and the pool refills from the others.
pub(crate) struct Connections {
    pub(crate) brokers: Brokers,
    pub(crate) next: AtomicUsize,
    pub(crate) name: String,
}

/// No broker URL answered; the words of each, passwords replaced.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConnectError(String);

impl Connections {
    pub(crate) async fn connect(&self) -> Result<lapin::Connection, ConnectError> {
        let first = self.next.load(Ordering::Relaxed);
        match self.brokers.connect_first(first, None, &self.name).await {
            Ok(connected) => {
                self.next.store(connected.index, Ordering::Relaxed);
                Ok(connected.connection)
            }
            Err(none) => {
                // The next try starts past the first that refused.
                self.next
                    .store((first + 1) % self.brokers.len(), Ordering::Relaxed);
                Err(ConnectError(none.reason()))
            }
        }
    }

    /// A connection was lost: the next one starts at the following URL, so
    /// the lost node (whose address may now time out rather than refuse)
    /// is tried last.
    fn lost(&self) {
        let count = self.brokers.len();
        let _ = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |i| {
                Some((i + 1) % count)
            });
    }
}

impl managed::Manager for Connections {
    type Type = lapin::Connection;
    type Error = ConnectError;

    async fn create(&self) -> Result<lapin::Connection, ConnectError> {
        self.connect().await
    }

    async fn recycle(
        &self,
        connection: &mut lapin::Connection,
        _: &Metrics,
    ) -> RecycleResult<ConnectError> {
        if connection.status().connected() {
            Ok(())
        } else {
            self.lost();
            Err(RecycleError::message("connection closed"))
        }
    }
}

/// Makes confirm-mode channels on pooled connections.
struct ConfirmChannels {
    connections: managed::Pool<Connections>,
}

/// Why a confirm-mode channel could not be made: the broker's side (or the
/// way to it) failed. Shown as the underlying error's own words.
#[derive(Debug, thiserror::Error)]
enum ChannelError {
    /// No pooled connection to open it on.
    #[error(transparent)]
    Connection(managed::PoolError<ConnectError>),
    /// Opening the channel, or switching it to confirm mode, failed.
    #[error(transparent)]
    Channel(lapin::Error),
}

impl managed::Manager for ConfirmChannels {
    type Type = Channel;
    type Error = ChannelError;

    async fn create(&self) -> Result<Channel, ChannelError> {
        let conn = self
            .connections
            .get()
            .await
            .map_err(ChannelError::Connection)?;
        let channel = conn.create_channel().await.map_err(ChannelError::Channel)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(ChannelError::Channel)?;
        Ok(channel)
    }

    async fn recycle(&self, channel: &mut Channel, _: &Metrics) -> RecycleResult<ChannelError> {
        if channel.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("channel closed"))
        }
    }
}

/// A connection to a Shoal fleet. Cheap to share: wrap it in an `Arc` and
/// submit from as many tasks as you like.
pub struct Client {
    channels: managed::Pool<ConfirmChannels>,
    index: Option<Arc<dyn object_store::ObjectStore>>,
    topology: Topology,
    /// The reply queue's name, shared with the listener, which names a new
    /// one when the node holding it is lost.
    reply_queue: ReplyName,
    inbox: Arc<Inbox>,
    brokers: Brokers,
    /// Sent or dropped with the client: the reply listener then deletes
    /// the queue and closes its connection.
    stop: Option<oneshot::Sender<()>>,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl Client {
    /// Connects with default pool sizes, declares the topology and starts
    /// listening for results. `url` may list several brokers (the nodes of
    /// a cluster), comma-separated: they are tried in turn, here and
    /// whenever a connection is lost.
    pub async fn connect(url: &str, topology: Topology) -> Result<Client, ClientError> {
        Client::connect_with(url, topology, ClientOptions::default()).await
    }

    /// Connects with the given options.
    pub async fn connect_with(
        url: &str,
        topology: Topology,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let brokers = Brokers::parse([url]).map_err(|e| ClientError::Broker {
            broker: "(amqp URL)".into(),
            message: e.to_string(),
        })?;
        Client::connect_to(brokers, topology, options).await
    }

    /// Connects to parsed broker URLs (`AmqpSection::brokers` of a loaded
    /// configuration) with the given options.
    pub async fn connect_to(
        brokers: Brokers,
        topology: Topology,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let err = |message: String| ClientError::Broker {
            broker: brokers.redacted_all(),
            message: brokers.scrub(&message),
        };
        let connections = managed::Pool::builder(Connections {
            brokers: brokers.clone(),
            next: AtomicUsize::new(0),
            name: options.connection_name.clone(),
        })
        .max_size(options.max_connections)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| err(e.to_string()))?;
        let channels: managed::Pool<ConfirmChannels> = managed::Pool::builder(ConfirmChannels {
            connections: connections.clone(),
        })
        .max_size(options.max_channels)
        .wait_timeout(Some(options.wait_for_channel))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| err(e.to_string()))?;

        // The first connection proves the broker is there and declares the
        // topology; it then stays in the pool for publishing.
        {
            let channel = channels.get().await.map_err(|e| err(e.to_string()))?;
            topology
                .declare(&channel)
                .await
                .map_err(|e| err(e.to_string()))?;
        }

        let replies = Replies {
            connections: Connections {
                brokers: brokers.clone(),
                next: AtomicUsize::new(0),
                name: options.connection_name.clone(),
            },
            queue: ReplyName::fresh(),
            keep: options.reply_keep,
        };
        let (connection, consumer, _) = replies.open(true).await.map_err(|e| err(e.to_string()))?;
        let inbox = Arc::new(Inbox::default());
        let (stop, stopped) = oneshot::channel();
        let reply_queue = replies.queue.clone();
        let listener = tokio::spawn(replies.listen(connection, consumer, inbox.clone(), stopped));
        Ok(Client {
            channels,
            index: options.index,
            topology,
            reply_queue,
            inbox,
            brokers,
            stop: Some(stop),
            listener: Some(listener),
        })
    }

    /// Deletes the reply queue and closes the connections. Dropping the
    /// client starts the same in the background, but a program about to
    /// exit should await this: otherwise the queue lingers on the broker
    /// for [`ClientOptions::reply_keep`], collecting the results of the
    /// jobs it submitted.
    pub async fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(listener) = self.listener.take() {
            let _ = listener.await;
        }
        self.channels.close();
    }

    /// The queue this client's results arrive on (the jobs' `reply_to`).
    pub fn reply_queue(&self) -> String {
        self.reply_queue.get()
    }

    /// Publishes one job (persistent, confirmed) and returns its handle.
    pub async fn submit(&self, job: JobMessage) -> Result<JobHandle, ClientError> {
        let mut handles = self.submit_batch(vec![job]).await?;
        Ok(handles.remove(0))
    }

    /// Publishes many jobs on one channel without waiting for each confirm
    /// in turn, then waits for all of them: much faster than calling
    /// [`Client::submit`] in a loop. Every job is validated first, so an
    /// invalid one fails the batch before anything is published. On a
    /// broker error some jobs may have been published; their handles are
    /// lost with the error, so give jobs your own ids when a retry must not
    /// run them twice.
    pub async fn submit_batch(&self, jobs: Vec<JobMessage>) -> Result<Vec<JobHandle>, ClientError> {
        let mut bodies = Vec::with_capacity(jobs.len());
        for mut job in jobs {
            let id = job
                .id
                .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
                .clone();
            let body =
                serde_json::to_vec(&job).map_err(|e| ClientError::InvalidJob(e.to_string()))?;
            crate::validate(&body).map_err(|errors| {
                ClientError::InvalidJob(format!(
                    "job {id}: {}",
                    errors
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ))
            })?;
            bodies.push((id, body));
        }
        let ids: Vec<String> = bodies.iter().map(|(id, _)| id.clone()).collect();
        {
            let mut inbox = self.inbox.state.lock().unwrap_or_else(|e| e.into_inner());
            let incarnation = inbox.incarnation;
            for id in &ids {
                inbox.submitted.insert(id.clone(), incarnation);
            }
        }
        let published = self.publish(bodies).await;
        if published.is_err() {
            // Nobody will wait for these: a retry registers them again.
            let mut inbox = self.inbox.state.lock().unwrap_or_else(|e| e.into_inner());
            for id in &ids {
                inbox.submitted.remove(id);
            }
        }
        published
    }

    /// Publishes on one channel, then awaits every confirm.
    async fn publish(&self, bodies: Vec<(String, Vec<u8>)>) -> Result<Vec<JobHandle>, ClientError> {
        let err = |message: String| ClientError::Broker {
            broker: self.brokers.redacted_all(),
            message: self.brokers.scrub(&message),
        };
        let channel = self.channels.get().await.map_err(|e| err(e.to_string()))?;
        let mut confirms: Vec<(String, u64, PublisherConfirm)> = Vec::with_capacity(bodies.len());
        for (id, body) in bodies {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let confirm = channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(self.topology.job_queue.as_str()),
                    // A job the broker cannot route (its queue deleted after
                    // we declared it) comes back instead of being dropped.
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    self.properties(&id, now),
                )
                .await
                .map_err(|e| err(format!("publishing job {id}: {e}")))?;
            let now_us = u64::try_from(now.as_micros()).unwrap_or(u64::MAX);
            confirms.push((id, now_us, confirm));
        }
        let mut handles = Vec::with_capacity(confirms.len());
        let mut submitted = Vec::with_capacity(confirms.len());
        for (id, now_us, confirm) in confirms {
            let confirm = confirm
                .await
                .map_err(|e| err(format!("confirming job {id}: {e}")))?;
            if confirm.is_nack() {
                return Err(err(format!("the broker refused job {id}")));
            }
            if confirm.take_message().is_some() {
                return Err(err(format!(
                    "job {id} was returned unrouted: the broker has no queue {:?} (was it deleted? check amqp.job_queue)",
                    self.topology.job_queue
                )));
            }
            submitted.push((id.clone(), now_us));
            handles.push(JobHandle { id });
        }
        if let Some(store) = &self.index {
            // Under the publish-time header's microseconds, so the worker's
            // entry for the job's end lands beside this one. Best effort:
            // the jobs are queued whatever the store says.
            let written = futures::stream::iter(submitted.iter().map(|(id, us)| {
                shoal_worker::store::index::put_submitted(store.as_ref(), id, *us)
            }))
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
            if let Some(Err(e)) = written.into_iter().find(Result::is_err) {
                tracing::warn!(error = %e, "could not record submitted jobs in the store's index; they appear there once they end");
            }
        }
        Ok(handles)
    }

    /// Cancels `job_id` across the fleet (`submit cancel`): recorded in
    /// `store`, the fleet's store, so a worker that takes it later skips
    /// it, and sent to every worker, so one running it stops it within a
    /// second. It ends with a `cancelled` result, which a waiting client
    /// receives as usual. A finished job is left as it is; a job nothing
    /// knows of is an error unless `force`.
    pub async fn cancel(
        &self,
        store: Arc<dyn object_store::ObjectStore>,
        job_id: &str,
        force: bool,
    ) -> Result<crate::operate::Cancelled, crate::operate::OperateError> {
        let mut operator =
            crate::operate::Operator::connect(&self.brokers, self.topology.clone(), store).await?;
        let cancelled = operator.cancel(job_id, force).await;
        operator.close().await;
        cancelled
    }

    fn properties(&self, id: &str, now: Duration) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(PUBLISHED_MS_HEADER),
            AMQPValue::LongLongInt(i64::try_from(now.as_millis()).unwrap_or(i64::MAX)),
        );
        headers.insert(
            ShortString::from(PUBLISHED_US_HEADER),
            AMQPValue::LongLongInt(i64::try_from(now.as_micros()).unwrap_or(i64::MAX)),
        );
        BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(id))
            .with_correlation_id(ShortString::from(id))
            .with_reply_to(ShortString::from(self.reply_queue.get()))
            .with_type(ShortString::from(shoal_schemas::JOB_SCHEMA))
            .with_timestamp(now.as_secs())
            .with_headers(headers)
    }

    /// Waits for the result of a job this client submitted. Results are
    /// kept until waited for, so wait for every job you submit (or drop the
    /// client) to keep memory bounded.
    pub async fn wait_result(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<ResultMessage, ClientError> {
        self.wait_result_with(id, timeout, |_| {}).await
    }

    /// Waits for the result of a job this client submitted, calling
    /// `on_state` whenever a worker reports progress. States are
    /// best-effort: some may be skipped, and a redelivered job starts
    /// again from `staging` with a higher attempt.
    pub async fn wait_result_with(
        &self,
        id: &str,
        timeout: Duration,
        mut on_state: impl FnMut(&StateMessage),
    ) -> Result<ResultMessage, ClientError> {
        let wait = async {
            let mut seen: Option<StateMessage> = None;
            loop {
                let notified = self.inbox.arrived.notified();
                let (result, state, lost) = {
                    let mut inbox = self.inbox.state.lock().unwrap_or_else(|e| e.into_inner());
                    let result = inbox.results.remove(id);
                    let lost = match inbox.submitted.get(id) {
                        Some(&submitted) if result.is_none() && submitted < inbox.incarnation => {
                            inbox.lost.clone()
                        }
                        None if result.is_none() => {
                            return Err(ClientError::UnknownJob(id.to_owned()));
                        }
                        _ => None,
                    };
                    let state = if result.is_some() || lost.is_some() {
                        inbox.submitted.remove(id);
                        inbox.states.remove(id)
                    } else {
                        inbox.states.get(id).cloned()
                    };
                    (result, state, lost)
                };
                if let Some(result) = result {
                    return Ok(result);
                }
                if let Some(state) = state.filter(|s| seen.as_ref() != Some(s)) {
                    on_state(&state);
                    seen = Some(state);
                }
                if let Some(why) = lost {
                    return Err(ClientError::RepliesLost(why));
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout(id.to_owned()))?
    }
}

/// The client's reply queue and how to reach it again.
struct Replies {
    connections: Connections,
    queue: ReplyName,
    keep: Duration,
}

/// The reply queue's current name. A classic queue lives on one node: when
/// that node is lost, the listener declares a queue under a new name on a
/// node that answers, and jobs submitted from then on name it.
#[derive(Clone)]
struct ReplyName(Arc<Mutex<String>>);

impl ReplyName {
    fn fresh() -> ReplyName {
        ReplyName(Arc::new(Mutex::new(ReplyName::new_name())))
    }

    fn new_name() -> String {
        format!("shoal.reply.{}", uuid::Uuid::new_v4())
    }

    fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A new name; returns it.
    fn renew(&self) -> String {
        let name = ReplyName::new_name();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = name.clone();
        name
    }
}

/// Why the reply connection could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    /// No broker URL answered.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A broker answered, then refused something.
    #[error(transparent)]
    Broker(#[from] lapin::Error),
}

/// Unacked results the broker may hand the listener before it acks them
/// all at once.
const REPLY_PREFETCH: u16 = 256;

/// How long the listener's housekeeping (renewing the marker; deleting
/// the queues and closing the connection when the client closes) may take:
/// a half-open connection would otherwise hold it until the heartbeat
/// gives up, and filing results waits meanwhile.
const HOUSEKEEPING_WITHIN: Duration = Duration::from_secs(3);

/// Reply and marker queues: durable (RabbitMQ 4.3 refuses transient
/// queues that are not exclusive), removed by `x-expires` when unused.
pub(crate) const DURABLE: QueueDeclareOptions = QueueDeclareOptions {
    passive: false,
    durable: true,
    exclusive: false,
    auto_delete: false,
    nowait: false,
};

/// `x-expires`: the queue goes once unused this long.
fn expires(span: Duration) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-expires"),
        AMQPValue::LongUInt(u32::try_from(span.as_millis()).unwrap_or(u32::MAX).max(1)),
    );
    arguments
}

/// A channel-level "no such queue" from a passive declare.
fn not_found(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

impl Replies {
    /// Connects and consumes the reply queue: declares it on the first
    /// call; later, first asks the broker whether it outlived the
    /// disconnection with what it held ([`Replies::survived`]). The flag
    /// says whether it did, or had to be declared anew.
    ///
    /// The queue is durable and expires (`x-expires`) once unused for
    /// `keep`: RabbitMQ is retiring transient queues that are not exclusive,
    /// and an exclusive one would die with the connection it is meant to
    /// outlive. Workers send their copies of results here *transient*: a
    /// notification to a waiting client, not the record (that is the
    /// results store), so the broker does not write every result to disk.
    /// A broker restart drops them; the marker queue beside it tells.
    async fn open(
        &self,
        first: bool,
    ) -> Result<(lapin::Connection, lapin::Consumer, bool), OpenError> {
        let connection = self.connections.connect().await?;
        let kept = !first && self.survived(&connection).await?;
        if !kept {
            let channel = connection.create_channel().await?;
            channel
                .queue_declare(
                    self.queue.get().as_str().into(),
                    DURABLE,
                    expires(self.keep),
                )
                .await?;
            self.declare_marker(&channel).await?;
            // Exactly one transient message in the marker queue.
            let marker = self.marker();
            channel
                .queue_purge(marker.as_str().into(), QueuePurgeOptions::default())
                .await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channel
                .basic_publish(
                    ShortString::from(""),
                    marker.as_str().into(),
                    BasicPublishOptions::default(),
                    b"",
                    BasicProperties::default().with_delivery_mode(1),
                )
                .await?
                .await?;
        }
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(REPLY_PREFETCH, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                self.queue.get().as_str().into(),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((connection, consumer, kept))
    }

    /// The queue beside the reply queue holding one transient message,
    /// never consumed: only a broker restart (or expiry) removes it, and
    /// with it any transient results in the reply queue.
    fn marker(&self) -> String {
        format!("{}.marker", self.queue.get())
    }

    /// Declares the marker queue, which also renews its lease: with no
    /// consumer it counts as unused, so the listener declares it again
    /// every half `keep` while connected. It expires after twice `keep`,
    /// so after a disconnection it outlives the reply queue, and a client
    /// finding the reply queue never finds the marker expired first.
    async fn declare_marker(&self, channel: &lapin::Channel) -> lapin::Result<()> {
        channel
            .queue_declare(
                self.marker().as_str().into(),
                DURABLE,
                expires(self.keep.saturating_mul(2)),
            )
            .await
            .map(|_| ())
    }

    /// Whether the reply queue and the results in it outlived the
    /// disconnection: it is still there, and so is the marker message.
    async fn survived(&self, connection: &lapin::Connection) -> lapin::Result<bool> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        // A passive declare of a missing queue fails with 404 and closes
        // its channel: the first missing queue ends the check.
        let channel = connection.create_channel().await?;
        let messages = |queue: String| {
            let channel = channel.clone();
            async move {
                match channel
                    .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                    .await
                {
                    Ok(declared) => Ok(Some(declared.message_count())),
                    Err(e) if not_found(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        };
        if messages(self.queue.get()).await?.is_none() {
            return Ok(false);
        }
        Ok(messages(self.marker()).await? == Some(1))
    }

    /// Files results and states by job id; when the connection drops,
    /// reconnects with backoff and consumes the same queue again. Ends when
    /// the client is closed or dropped, deleting the queue.
    async fn listen(
        self,
        mut connection: lapin::Connection,
        mut consumer: lapin::Consumer,
        inbox: Arc<Inbox>,
        mut stopped: oneshot::Receiver<()>,
    ) {
        loop {
            let why = {
                let filing = file_replies(&mut consumer, &inbox);
                tokio::pin!(filing);
                let renew_every = (self.keep / 2).max(Duration::from_millis(100));
                let mut renew = tokio::time::interval_at(
                    tokio::time::Instant::now() + renew_every,
                    renew_every,
                );
                loop {
                    tokio::select! {
                        why = &mut filing => break why,
                        _ = renew.tick() => {
                            // A failure here shows up on the consumer too.
                            let _ = tokio::time::timeout(HOUSEKEEPING_WITHIN, async {
                                if let Ok(channel) = connection.create_channel().await {
                                    let _ = self.declare_marker(&channel).await;
                                    let _ = channel.close(200, "marker renewed".into()).await;
                                }
                            })
                            .await;
                        }
                        _ = &mut stopped => {
                            let _ = tokio::time::timeout(HOUSEKEEPING_WITHIN, async {
                                if let Ok(channel) = connection.create_channel().await {
                                    for queue in [&self.queue.get(), &self.marker()] {
                                        let _ = channel
                                            .queue_delete(
                                                queue.as_str().into(),
                                                QueueDeleteOptions::default(),
                                            )
                                            .await;
                                    }
                                }
                                let _ = connection.close(200, "client closed".into()).await;
                            })
                            .await;
                            return;
                        }
                    }
                }
            };
            let since = tokio::time::Instant::now();
            let why = self.connections.brokers.scrub(&why);
            tracing::warn!(queue = %self.queue.get(), error = %why, "reply connection lost; reconnecting");
            self.connections.lost();
            // The old connection may still be open (a consumer the broker
            // cancelled): close it, without waiting long on a dead one,
            // and not at all on one known dead, whose queue's `x-expires`
            // is already counting.
            if connection.status().connected() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    connection.close(200, "reconnecting".into()),
                )
                .await;
            }
            let mut delay = Duration::from_millis(100);
            let mut expired = false;
            let mut renamed = false;
            let kept = loop {
                let opened = tokio::select! {
                    opened = self.open(false) => opened,
                    _ = &mut stopped => return,
                };
                match opened {
                    Ok((c, q, kept)) => {
                        (connection, consumer) = (c, q);
                        break kept;
                    }
                    Err(e) => {
                        let said = self.connections.brokers.scrub(&e.to_string());
                        tracing::warn!(queue = %self.queue.get(), error = %said, retry_in = ?delay, "reply connection refused");
                        // Another node answered, but the queue lives on a
                        // node that is down (a classic queue has one home):
                        // what it held is out of reach until that node is
                        // back, if ever. Waiters learn it now (the results
                        // store has their results), and the client moves to
                        // a queue of a new name on a node that answers, so
                        // jobs submitted from now on get their results here.
                        let home_down = matches!(&e, OpenError::Broker(e) if not_found(e));
                        if home_down {
                            let old = self.queue.get();
                            let new = self.queue.renew();
                            tracing::warn!(lost = %old, queue = %new, "the reply queue's broker node is down; replies go to a new queue");
                            if !expired {
                                expired = true;
                                inbox.lose(format!(
                                    "{why}; the reply queue's broker node is down ({said})"
                                ));
                            }
                            // Jobs submitted from now until the new queue is
                            // declared name a queue not there yet, and their
                            // results may be dropped: they are told once it is.
                            renamed = true;
                            // Declared at once, not after a backoff.
                            continue;
                        }
                        // Away longer than the queue's expiry: it is gone
                        // whatever happens next, so waiters need not wait
                        // for the broker to say so.
                        if !expired && since.elapsed() > self.keep {
                            expired = true;
                            inbox.lose(format!(
                                "{why}; unreachable for longer than the reply queue is kept"
                            ));
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = &mut stopped => return,
                        }
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            };
            if kept {
                tracing::info!(queue = %self.queue.get(), "reply connection back; no result lost");
            } else {
                tracing::warn!(queue = %self.queue.get(), "reply queue or the results in it were gone (broker restart or expiry); declared anew; results of earlier jobs are in the results store");
                if renamed {
                    inbox.lose(format!(
                        "{why}; the reply queue's broker node is down, and a job submitted while its replacement was being declared may have lost its result"
                    ));
                } else if !expired {
                    inbox.lose(why);
                }
            }
        }
    }
}

impl Inbox {
    /// The reply queue is gone: jobs submitted so far without a result
    /// may never get one here.
    fn lose(&self, why: String) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.incarnation += 1;
        state.lost = Some(why);
        drop(state);
        self.arrived.notify_waiters();
    }
}

/// Files results and states of jobs this client waits for, until the
/// consumer ends, acking what it filed whenever no more deliveries are
/// waiting (one ack for a burst of results). Returns why it ended.
async fn file_replies(consumer: &mut lapin::Consumer, inbox: &Inbox) -> String {
    let mut unacked: Option<lapin::Acker> = None;
    loop {
        let next = match consumer.next().now_or_never() {
            Some(next) => next,
            None => {
                if let Some(acker) = unacked.take()
                    && let Err(e) = acker.ack(BasicAckOptions { multiple: true }).await
                {
                    return e.to_string();
                }
                consumer.next().await
            }
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => return e.to_string(),
            None => return "the broker cancelled the reply consumer".to_owned(),
        };
        let is_state = delivery
            .properties
            .kind()
            .as_ref()
            .is_some_and(|k| k.as_str() == shoal_schemas::STATE_SCHEMA);
        {
            // Only jobs someone may still wait for: a result delivered
            // again after its waiter took it (it was on the wire when the
            // connection broke) must not stay here for good.
            let mut state = inbox.state.lock().unwrap_or_else(|e| e.into_inner());
            if is_state {
                if let Ok(message) = serde_json::from_slice::<StateMessage>(&delivery.data)
                    && state.submitted.contains_key(&message.job_id)
                {
                    state.states.insert(message.job_id.clone(), message);
                }
            } else if let Ok(result) = serde_json::from_slice::<ResultMessage>(&delivery.data) {
                if state.submitted.contains_key(&result.job_id) {
                    state.results.insert(result.job_id.clone(), result);
                }
            } else {
                tracing::warn!("ignoring a reply that is neither a result nor a state");
            }
        }
        inbox.arrived.notify_waiters();
        unacked = Some(delivery.acker);
    }
}
