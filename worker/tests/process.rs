//! The `shoal-worker` binary as an operator runs it, against the real
//! RabbitMQ on 127.0.0.1:5672: killed mid-job, cut off by the broker,
//! stopped with SIGTERM. These live in the worker package because only its
//! own tests can find its binary (`CARGO_BIN_EXE_shoal-worker`).
//!
//! Each test gets its own queue, exchanges and cache folder, and removes
//! the queues and exchanges when it ends.
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use shoal_schemas::topology::Topology;
use shoal_schemas::{JobMessage, JobState, Location, ResultMessage, Source, StateMessage, Status};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const WAIT: Duration = Duration::from_secs(60);

/// What comes back on the test's reply queue.
#[derive(Debug)]
enum Reply {
    State(StateMessage),
    Result(Box<ResultMessage>),
}

/// One test's topology, cache and reply queue.
struct Bench {
    topology: Topology,
    cache: tempfile::TempDir,
    logs: tempfile::TempDir,
    conn: Connection,
    publish: Channel,
    reply_queue: String,
    replies: mpsc::UnboundedReceiver<Reply>,
    /// Replies received while waiting for another one.
    backlog: Vec<Reply>,
    module: String,
}

impl Bench {
    async fn new() -> Bench {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let topology = Topology {
            job_queue: format!("test.jobs.{suffix}"),
            results_exchange: format!("test.results.{suffix}"),
            dead_letter: format!("test.dead.{suffix}"),
            delivery_limit: 10,
        };
        let cache = tempfile::tempdir().unwrap();
        let probe = std::fs::read(repo().join("tests/fixtures/probe.wasm")).unwrap();
        let module = shoal_worker::stage::sha256_hex(&probe);
        let entry = cache.path().join("cache/sha256").join(&module);
        std::fs::create_dir_all(entry.parent().unwrap()).unwrap();
        std::fs::write(entry, probe).unwrap();

        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .unwrap();
        let publish = conn.create_channel().await.unwrap();
        topology.declare(&publish).await.unwrap();
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let listen = conn.create_channel().await.unwrap();
        let (reply_queue, mut consumer) =
            shoal_schemas::topology::reply_queue(&listen).await.unwrap();
        let (tx, replies) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let is_state = delivery
                    .properties
                    .kind()
                    .as_ref()
                    .is_some_and(|k| k.as_str() == shoal_schemas::STATE_SCHEMA);
                let reply = if is_state {
                    Reply::State(serde_json::from_slice(&delivery.data).unwrap())
                } else {
                    Reply::Result(Box::new(serde_json::from_slice(&delivery.data).unwrap()))
                };
                if tx.send(reply).is_err() {
                    break;
                }
            }
        });
        Bench {
            topology,
            cache,
            logs: tempfile::tempdir().unwrap(),
            conn,
            publish,
            reply_queue,
            replies,
            backlog: Vec::new(),
            module,
        }
    }

    /// Starts `shoal-worker serve` with only the environment given here:
    /// nothing of the test's own leaks in.
    fn worker(&self, name: &str, extra: &[(&str, &str)]) -> Child {
        let log = std::fs::File::create(self.log_path(name)).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal-worker"));
        cmd.arg("serve")
            .env_clear()
            .env("SHOAL_CACHE_DIR", self.cache.path())
            .env("SHOAL_AMQP_URL", AMQP_URL)
            .env("SHOAL_AMQP_JOB_QUEUE", &self.topology.job_queue)
            .env(
                "SHOAL_AMQP_RESULTS_EXCHANGE",
                &self.topology.results_exchange,
            )
            .env("SHOAL_AMQP_DEAD_LETTER", &self.topology.dead_letter)
            .env("SHOAL_AMQP_RECONNECT_MAX_MS", "1000")
            .env("SHOAL_WORKER_NAME", name)
            .env("SHOAL_WORKER_CONCURRENCY", "1")
            .env("SHOAL_LOG_FILTER", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.logs.path().join(format!("{name}.log"))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Publishes a probe job (persistent, confirmed) that replies to us.
    async fn submit(&self, id: &str, args: &[&str]) {
        let mut job = JobMessage::new(Source {
            name: Some("probe.wasm".into()),
            ..Source::new(Location::Sha256(self.module.clone()))
        });
        job.id = Some(id.to_owned());
        job.args = args.iter().map(|a| a.to_string()).collect();
        let props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(id))
            .with_correlation_id(ShortString::from(id))
            .with_reply_to(ShortString::from(self.reply_queue.as_str()));
        let confirm = self
            .publish
            .basic_publish(
                ShortString::from(""),
                ShortString::from(self.topology.job_queue.as_str()),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&job).unwrap(),
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    /// Waits for a reply that `pick` accepts; others are kept for later.
    async fn next<T>(&mut self, what: &str, mut pick: impl FnMut(&Reply) -> Option<T>) -> T {
        if let Some(i) = self.backlog.iter().position(|r| pick(r).is_some()) {
            return pick(&self.backlog.remove(i)).unwrap();
        }
        let deadline = tokio::time::sleep(WAIT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                reply = self.replies.recv() => {
                    let reply = reply.expect("reply consumer ended");
                    match pick(&reply) {
                        Some(found) => return found,
                        None => self.backlog.push(reply),
                    }
                }
                _ = &mut deadline => panic!("no {what} within {WAIT:?}; other replies: {:?}", self.backlog),
            }
        }
    }

    async fn running(&mut self, id: &str) -> StateMessage {
        self.next(&format!("running state of {id}"), |r| match r {
            Reply::State(s) if s.job_id == id && s.state == JobState::Running => Some(s.clone()),
            _ => None,
        })
        .await
    }

    async fn result(&mut self, id: &str) -> ResultMessage {
        self.next(&format!("result of {id}"), |r| match r {
            Reply::Result(r) if r.job_id == id => Some((**r).clone()),
            _ => None,
        })
        .await
    }

    /// Waits until the job queue holds `n` ready messages (the broker
    /// requeues a closed connection's unacked messages soon, not at once).
    async fn expect_queued(&self, n: u32, why: &str) {
        let channel = self.conn.create_channel().await.unwrap();
        let started = Instant::now();
        loop {
            let ready = channel
                .queue_declare(
                    ShortString::from(self.topology.job_queue.as_str()),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap()
                .message_count();
            if ready == n {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{why}: {ready} messages ready, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn remove(self) {
        let channel = self.conn.create_channel().await.unwrap();
        self.topology.delete(&channel).await.unwrap();
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Waits for the process to exit, polling so the runtime keeps running.
async fn exited(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < within,
            "the worker did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// Kills the child when a test fails halfway, so no worker outlives it.
struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_nothing_the_next_worker_finishes_it() {
    let mut bench = Bench::new().await;
    let mut first = bench.worker("doomed", &[]);
    let id = unique("killed");
    bench.submit(&id, &["sleep", "3"]).await;
    let state = bench.running(&id).await;
    assert_eq!((state.worker.as_str(), state.attempt), ("doomed", 1));

    first.kill().unwrap(); // SIGKILL: no drain, no nack, no goodbye
    first.wait().unwrap();
    let second = bench.worker("survivor", &[]);
    let reaper = Reaper(vec![second]);
    let result = bench.result(&id).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert_eq!(result.worker, "survivor");
    assert_eq!(
        result.attempt, 2,
        "the broker counted the first delivery: {result:?}"
    );
    // Exactly one result: the killed worker never published one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(reply) = bench.replies.try_recv() {
        bench.backlog.push(reply);
    }
    assert!(
        !bench.backlog.iter().any(|r| matches!(r, Reply::Result(_))),
        "a second result arrived: {:?}",
        bench.backlog
    );
    drop(reaper);
    bench.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_connection_the_broker_closes_reconnects_and_serves_on() {
    let mut bench = Bench::new().await;
    let name = unique("cut-off");
    let worker = bench.worker(&name, &[]);
    let reaper = Reaper(vec![worker]);
    let before = unique("before");
    bench.submit(&before, &["exit", "0"]).await;
    assert_eq!(bench.result(&before).await.status, Status::Succeeded);

    // Find the worker's connection by its name and close it from the broker.
    let listing = Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let pid = listing
        .lines()
        .find(|line| line.contains(&name))
        .and_then(|line| line.split('\t').next())
        .unwrap_or_else(|| panic!("no connection named {name} in:\n{listing}"))
        .to_owned();
    let closed = Command::new("rabbitmqctl")
        .args(["close_connection", &pid, "closed by the reconnect test"])
        .output()
        .unwrap();
    assert!(closed.status.success(), "{closed:?}");

    let after = unique("after");
    bench.submit(&after, &["args", "still", "here"]).await;
    let result = bench.result(&after).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert_eq!(
        result.stdout.unwrap().text.as_deref(),
        Some("probe.wasm\nargs\nstill\nhere\n")
    );
    let log = bench.log(&name);
    assert!(
        log.contains("broker connection lost; reconnecting"),
        "the worker says what happened:\n{log}"
    );
    drop(reaper);
    bench.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_jobs_finish_then_exits_zero() {
    let mut bench = Bench::new().await;
    // Three slots, two jobs: the free slot would take a third job if the
    // worker kept consuming after the signal.
    let mut worker = bench.worker("draining", &[("SHOAL_WORKER_CONCURRENCY", "3")]);
    let (a, b) = (unique("drain-a"), unique("drain-b"));
    bench.submit(&a, &["sleep", "2"]).await;
    bench.submit(&b, &["sleep", "2"]).await;
    bench.running(&a).await;
    bench.running(&b).await;
    // A third job arrives after the signal: it must stay in the queue.
    signal(&worker, "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = unique("drain-c");
    bench.submit(&c, &["exit", "0"]).await;

    let status = exited(&mut worker, WAIT).await;
    assert!(status.success(), "exit status {status:?}");
    for id in [&a, &b] {
        let result = bench.result(id).await;
        assert_eq!(
            (result.status, result.attempt),
            (Status::Succeeded, 1),
            "{result:?}"
        );
    }
    bench
        .expect_queued(1, "the job sent after SIGTERM waits")
        .await;
    let log = bench.log("draining");
    assert!(log.contains("draining"), "{log}");
    bench.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_still_running_after_the_grace_period_goes_back_to_the_queue() {
    let mut bench = Bench::new().await;
    let mut worker = bench.worker("impatient", &[("SHOAL_AMQP_DRAIN_GRACE_SECS", "1")]);
    let id = unique("too-slow");
    bench.submit(&id, &["sleep", "30"]).await;
    bench.running(&id).await;
    signal(&worker, "TERM");
    let status = exited(&mut worker, Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status:?}");
    bench.expect_queued(1, "the unfinished job is back").await;
    let log = bench.log("impatient");
    assert!(log.contains("grace period over"), "{log}");
    bench.remove().await;
}
