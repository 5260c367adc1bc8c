//! The `Client` library against a real RabbitMQ (127.0.0.1:5672), with the
//! test playing the worker: it takes each job off the queue itself and
//! publishes the result to the job's `reply_to` when the test says so, so
//! the result can be made to arrive exactly while the client is cut off.
use futures::StreamExt;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use shoal_schemas::topology::Topology;
use shoal_schemas::{JobMessage, Location, ResultMessage, Source, Status};
use shoal_submitter::{Client, ClientError, ClientOptions};
use std::process::Command;
use std::time::Duration;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A topology no other test uses.
fn topology() -> Topology {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    Topology {
        job_queue: format!("test.jobs.{suffix}"),
        results_exchange: format!("test.results.{suffix}"),
        dead_letter: format!("test.dead.{suffix}"),
        control_exchange: format!("test.control.{suffix}"),
        ..Topology::default()
    }
}

/// A client whose connections carry a name of their own, so the test can
/// close exactly them, on a topology no other test uses.
async fn connect() -> (Client, String, Topology) {
    connect_as(AMQP_URL, ClientOptions::default()).await
}

async fn connect_as(url: &str, options: ClientOptions) -> (Client, String, Topology) {
    let topology = topology();
    let name = format!("test-client-{}", uuid::Uuid::new_v4().simple());
    let options = ClientOptions {
        connection_name: name.clone(),
        ..options
    };
    let client = Client::connect_with(url, topology.clone(), options)
        .await
        .unwrap();
    (client, name, topology)
}

/// The test's side of the broker: takes jobs and answers them.
struct FakeWorker {
    channel: Channel,
    _connection: Connection,
    topology: Topology,
}

impl FakeWorker {
    async fn new(topology: &Topology) -> FakeWorker {
        let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        FakeWorker {
            channel,
            _connection: connection,
            topology: topology.clone(),
        }
    }

    /// Takes the next job off the queue: its id and `reply_to`.
    async fn take(&self) -> (String, String) {
        for _ in 0..100 {
            let got = self
                .channel
                .basic_get(
                    self.topology.job_queue.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap();
            if let Some(message) = got {
                let props = &message.delivery.properties;
                return (
                    props.message_id().as_ref().unwrap().to_string(),
                    props.reply_to().as_ref().unwrap().to_string(),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no job arrived on {}", self.topology.job_queue);
    }

    /// Publishes a `succeeded` result to `reply_to`, confirmed and
    /// transient, as workers do.
    async fn answer(&self, id: &str, reply_to: &str) {
        let body = serde_json::to_vec(&ResultMessage::new(id, Status::Succeeded, "fake")).unwrap();
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(""),
                reply_to.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_delivery_mode(1)
                    .with_correlation_id(id.into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    /// Whether the broker has a queue of this name (a passive declare on a
    /// channel of its own, since a failed one closes its channel).
    async fn queue_exists(&self, name: &str) -> bool {
        let channel = self._connection.create_channel().await.unwrap();
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(name.into(), options, FieldTable::default())
            .await
            .is_ok()
    }
}

/// Submits a job through `client` and takes it off the queue as the
/// worker: its id and `reply_to`.
async fn submitted(client: &Client, worker: &FakeWorker) -> (String, String) {
    let handle = client.submit(job()).await.unwrap();
    let (id, reply_to) = worker.take().await;
    assert_eq!(id, handle.id);
    (id, reply_to)
}

/// A job submitted, answered and waited for: the client publishes and
/// hears results. Its id.
async fn round_trip(client: &Client, worker: &FakeWorker) -> String {
    let (id, reply_to) = submitted(client, worker).await;
    worker.answer(&id, &reply_to).await;
    let result = client
        .wait_result(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(result.job_id, id);
    assert_eq!(result.status, Status::Succeeded);
    id
}

fn job() -> JobMessage {
    JobMessage::new(Source::new(Location::Sha256("ab".repeat(32))))
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl").args(args).output().unwrap();
    assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
}

/// Closes every broker connection named `name`; how many it closed.
fn close_connections(name: &str) -> usize {
    let listing = Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|line| line.contains(name))
        .map(|line| {
            let pid = line.split('\t').next().unwrap();
            let out = Command::new("rabbitmqctl")
                .args(["close_connection", pid, "closed by the client test"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        })
        .count()
}

#[tokio::test]
async fn a_result_published_while_the_client_is_cut_off_still_reaches_its_waiter() {
    let (client, name, topology) = connect().await;
    let worker = FakeWorker::new(&topology).await;
    let (id, reply_to) = submitted(&client, &worker).await;
    assert_eq!(reply_to, client.reply_queue());

    // Both the publishing connection and the reply connection go.
    assert!(close_connections(&name) >= 2);
    worker.answer(&id, &reply_to).await;
    let result = client
        .wait_result(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(result.job_id, id);
    assert_eq!(result.status, Status::Succeeded);

    // And the client publishes and hears results as before.
    let id = round_trip(&client, &worker).await;
    // Taken once; a second wait says so instead of waiting out its timeout.
    assert!(matches!(
        client.wait_result(&id, Duration::from_secs(30)).await,
        Err(ClientError::UnknownJob(_))
    ));
    client.close().await;
}

#[tokio::test]
async fn a_reply_queue_lost_on_the_broker_fails_only_the_jobs_submitted_before_it() {
    let (client, _, topology) = connect().await;
    let worker = FakeWorker::new(&topology).await;
    let (id, _) = submitted(&client, &worker).await;

    // What an operator deleting it, or its expiry, does.
    worker
        .channel
        .queue_delete(client.reply_queue().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    match client.wait_result(&id, Duration::from_secs(30)).await {
        Err(ClientError::RepliesLost(why)) => assert!(why.contains("cancel"), "{why}"),
        other => panic!("expected RepliesLost, got {other:?}"),
    }

    // The client declared the queue anew: later jobs are answered.
    round_trip(&client, &worker).await;
    client.close().await;
}

#[tokio::test]
async fn a_broker_restart_that_dropped_transient_results_fails_the_jobs_submitted_before_it() {
    let (client, name, topology) = connect().await;
    let worker = FakeWorker::new(&topology).await;
    let (id, _) = submitted(&client, &worker).await;

    // What a restart does: the connections go, and with them every
    // transient message, the marker beside the reply queue included.
    let marker = format!("{}.marker", client.reply_queue());
    assert!(worker.queue_exists(&marker).await);
    worker
        .channel
        .queue_purge(marker.as_str().into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert!(close_connections(&name) >= 2);
    match client.wait_result(&id, Duration::from_secs(30)).await {
        Err(ClientError::RepliesLost(_)) => {}
        other => panic!("expected RepliesLost, got {other:?}"),
    }

    // The marker is back, and later jobs are answered.
    round_trip(&client, &worker).await;
    client.close().await;
}

#[tokio::test]
async fn a_client_connected_longer_than_its_keep_still_finds_its_results_after_a_cut() {
    // The marker queue has no consumer, so only the client's renewals keep
    // it from expiring while the client is connected.
    // Held more than twice the keep, the marker's own expiry; the keep
    // leaves the reconnection (under a loaded CI) time to find the reply
    // queue before it expires too.
    let options = ClientOptions {
        reply_keep: Duration::from_secs(3),
        ..ClientOptions::default()
    };
    let (client, name, topology) = connect_as(AMQP_URL, options).await;
    let worker = FakeWorker::new(&topology).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let marker = format!("{}.marker", client.reply_queue());
    assert!(worker.queue_exists(&marker).await, "{marker} expired");

    let (id, reply_to) = submitted(&client, &worker).await;
    assert!(close_connections(&name) >= 2);
    worker.answer(&id, &reply_to).await;
    let result = client
        .wait_result(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(result.job_id, id);
    client.close().await;
}

#[tokio::test]
async fn more_results_than_the_unacked_window_all_arrive() {
    // Without acks the broker stops at 256 unacked results.
    let (client, _, topology) = connect().await;
    let worker = FakeWorker::new(&topology).await;
    let handles = client
        .submit_batch((0..600).map(|_| job()).collect())
        .await
        .unwrap();
    for _ in 0..600 {
        let (id, reply_to) = worker.take().await;
        worker.answer(&id, &reply_to).await;
    }
    for handle in &handles {
        let result = client
            .wait_result(&handle.id, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(result.job_id, handle.id);
    }
    client.close().await;
}

#[tokio::test]
async fn a_client_cut_off_longer_than_its_queue_is_kept_fails_its_waiters_then_recovers() {
    // A broker user of its own: deleting it cuts the client off and
    // refuses its reconnections, as an unreachable broker would.
    let user = format!("shoal-test-{}", uuid::Uuid::new_v4().simple());
    let add_user = || {
        rabbitmqctl(&["add_user", &user, "secret"]);
        rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);
    };
    add_user();
    let url = format!("amqp://{user}:secret@127.0.0.1:5672/%2f");
    let options = ClientOptions {
        reply_keep: Duration::from_secs(1),
        ..ClientOptions::default()
    };
    let (client, name, topology) = connect_as(&url, options).await;
    let worker = FakeWorker::new(&topology).await;
    let before = client.submit(job()).await.unwrap();

    rabbitmqctl(&["delete_user", &user]);
    close_connections(&name);
    match client
        .wait_result(&before.id, Duration::from_secs(30))
        .await
    {
        Err(ClientError::RepliesLost(why)) => {
            assert!(why.contains("longer than the reply queue is kept"), "{why}")
        }
        other => panic!("expected RepliesLost, got {other:?}"),
    }

    add_user();
    let after = client.submit(job()).await.unwrap();
    let (mut id, mut reply_to) = worker.take().await;
    if id == before.id {
        (id, reply_to) = worker.take().await;
    }
    assert_eq!(id, after.id);
    // The client declares its queue anew once the broker lets it back in.
    while !worker.queue_exists(&reply_to).await {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.answer(&id, &reply_to).await;
    let result = client
        .wait_result(&after.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(result.job_id, after.id);
    client.close().await;
    rabbitmqctl(&["delete_user", &user]);
}

#[tokio::test]
async fn a_closed_or_dropped_client_deletes_its_reply_queue() {
    let (client, _, topology) = connect().await;
    let worker = FakeWorker::new(&topology).await;
    let queue = client.reply_queue().to_owned();
    assert!(worker.queue_exists(&queue).await);
    client.close().await;
    assert!(!worker.queue_exists(&queue).await, "{queue} outlived close");
    let marker = format!("{queue}.marker");
    assert!(
        !worker.queue_exists(&marker).await,
        "{marker} outlived close"
    );

    // Dropped, the client deletes it in the background.
    let (client, _, _) = connect().await;
    let queue = client.reply_queue().to_owned();
    assert!(worker.queue_exists(&queue).await);
    drop(client);
    let gone = futures::stream::iter(0..100)
        .then(|_| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            !worker.queue_exists(&queue).await
        })
        .any(|gone| async move { gone })
        .await;
    assert!(gone, "reply queue {queue} outlived its dropped client");
}

/// A job whose queue was deleted after the client declared it comes back
/// (published `mandatory`) and `submit` says so, instead of the broker
/// confirming it and dropping it.
#[tokio::test]
async fn a_job_the_broker_cannot_route_is_an_error_not_a_silent_loss() {
    let (client, _, topology) = connect().await;
    let worker = FakeWorker::new(&topology).await;
    worker
        .channel
        .queue_delete(
            ShortString::from(topology.job_queue.as_str()),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let job = JobMessage::new(Source::new(Location::Sha256("ab".repeat(32))));
    let err = client.submit(job).await.unwrap_err();
    assert!(err.to_string().contains("returned unrouted"), "{err}");
    client.close().await;
}

/// Given several broker URLs, the client connects to the first that
/// answers (an unreachable node first in the list is skipped) and jobs and
/// results go through as with one.
#[tokio::test]
async fn a_list_of_brokers_whose_first_is_down_still_connects_and_round_trips() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let urls = format!("amqp://guest:guest@127.0.0.1:{closed}/%2f, {AMQP_URL}");
    let (client, _, topology) = connect_as(&urls, ClientOptions::default()).await;
    let worker = FakeWorker::new(&topology).await;
    round_trip(&client, &worker).await;
    client.close().await;
}
