//! The `shoal-worker` binary as an operator runs it, against the real
//! RabbitMQ on 127.0.0.1:5672: killed mid-job, cut off by the broker,
//! stopped with SIGTERM. These live in the worker package because only its
//! own tests can find its binary (`CARGO_BIN_EXE_shoal-worker`).
//!
//! Each test gets its own queue, exchanges and cache folder, and removes
//! the queues and exchanges when it ends.
mod common;

use common::{Reaper, repo, unique};
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use shoal_schemas::topology::Topology;
use shoal_schemas::{JobMessage, JobState, Location, ResultMessage, Source, StateMessage, Status};
use std::collections::HashMap;
use std::path::PathBuf;
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
        let topology = common::topology("test");
        let cache = tempfile::tempdir().unwrap();
        let module = common::seed_probe(cache.path());

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
            .env(
                "SHOAL_AMQP_CONTROL_EXCHANGE",
                &self.topology.control_exchange,
            )
            .env("SHOAL_AMQP_RECONNECT_MAX_MS", "1000")
            .env("SHOAL_WORKER_NAME", name)
            .env("SHOAL_WORKER_CONCURRENCY", "1")
            .env("SHOAL_LOG_FILTER", "info")
            // Several workers run at once: each its own free port.
            .env("SHOAL_METRICS_LISTEN", "127.0.0.1:0")
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
            .with_reply_to(ShortString::from(self.reply_queue.as_str()))
            // A plain AMQP timestamp, as a client in any language sets it.
            .with_timestamp(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
            );
        self.publish_raw(&serde_json::to_vec(&job).unwrap(), props)
            .await;
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
        let started = Instant::now();
        loop {
            let ready = self.queued(&self.topology.job_queue).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_nothing_the_next_worker_finishes_it() {
    let mut bench = Bench::new().await;
    let scratch = tempfile::tempdir().unwrap();
    let scratch_env = [("SHOAL_WORKER_SCRATCH_DIR", scratch.path().to_str().unwrap())];
    let homes = || -> Vec<PathBuf> {
        std::fs::read_dir(scratch.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("shoal-worker-"))
            .map(|e| e.path())
            .collect()
    };
    let mut first = bench.worker("doomed", &scratch_env);
    let id = unique("killed");
    bench.submit(&id, &["sleep", "3"]).await;
    let state = bench.running(&id).await;
    assert_eq!((state.worker.as_str(), state.attempt), ("doomed", 1));

    first.kill().unwrap(); // SIGKILL: no drain, no nack, no goodbye
    first.wait().unwrap();
    let abandoned = homes();
    assert_eq!(abandoned.len(), 1, "the killed worker's scratch is left");
    let second = bench.worker("survivor", &scratch_env);
    let reaper = Reaper(vec![second]);
    let result = bench.result(&id).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert_eq!(result.worker, "survivor");
    let now = homes();
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(
        !abandoned[0].exists(),
        "the next worker removed the dead one's scratch"
    );
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

/// With `amqp.prefetch` 0 the prefetch follows the jobs' pace: a stream of
/// trivial jobs raises it from four per slot to sixteen (a consumer started
/// with the new prefetch, the old one cancelled with deliveries still on
/// their way), and the switch loses no job and runs none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefetch_rises_for_trivial_jobs_and_the_switch_loses_nothing() {
    let mut bench = Bench::new().await;
    let name = unique("pace");
    let worker = bench.worker(&name, &[]);
    let reaper = Reaper(vec![worker]);
    let ids: Vec<String> = (0..400).map(|i| unique(&format!("pace-{i}"))).collect();
    // In waves over about two seconds, so that the worker's pace checks
    // (every second) fall while jobs are on their way.
    for (i, id) in ids.iter().enumerate() {
        bench.submit(id, &["exit", "0"]).await;
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
    }
    for id in &ids {
        assert_eq!(bench.result(id).await.status, Status::Succeeded, "{id}");
    }
    // No second result for any of them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(reply) = bench.replies.try_recv() {
        bench.backlog.push(reply);
    }
    let again: Vec<_> = bench
        .backlog
        .iter()
        .filter_map(|r| match r {
            Reply::Result(r) => Some(r.job_id.clone()),
            _ => None,
        })
        .collect();
    assert!(again.is_empty(), "results twice: {again:?}");
    bench.expect_queued(0, "every job was taken").await;
    // The log's colours out, for its fields' plain `name=value`.
    let mut log = String::new();
    let mut escape = false;
    for c in bench.log(&name).chars() {
        match (escape, c) {
            (false, '\u{1b}') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, c) => log.push(c),
        }
    }
    assert!(
        log.contains("prefetch follows the jobs' pace from=4 to=16"),
        "the worker says it raised its prefetch:\n{log}"
    );
    drop(reaper);
    bench.remove().await;
}

/// Acks go out in batches (one `multiple` ack for several jobs) under load,
/// and a long job delivered first holds back none of the acks of the short
/// jobs after it: killed once they are done, the worker leaves only the long
/// job to go back to the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_batched_and_a_long_job_holds_back_none_of_those_after_it() {
    let mut bench = Bench::new().await;
    let listen = format!("127.0.0.1:{}", free_port());
    // Trivial jobs already queued when the worker starts: a burst.
    let burst: Vec<String> = (0..200).map(|i| unique(&format!("acks-{i}"))).collect();
    for id in &burst {
        bench.submit(id, &["exit", "0"]).await;
    }
    let settings = [
        ("SHOAL_WORKER_CONCURRENCY", "2"),
        ("SHOAL_AMQP_PREFETCH", "32"),
        ("SHOAL_METRICS_LISTEN", listen.as_str()),
    ];
    let mut worker = bench.worker("acker", &settings);
    for id in &burst {
        assert_eq!(bench.result(id).await.status, Status::Succeeded, "{id}");
    }
    // Its acks follow its results' confirms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frames = ack_frames(&listen).await;
    assert!(
        frames > 0 && frames < burst.len() as u64,
        "{frames} ack frames for {} jobs",
        burst.len()
    );

    let long = unique("acks-long");
    bench.submit(&long, &["sleep", "30"]).await;
    bench.running(&long).await;
    let after: Vec<String> = (0..20)
        .map(|i| unique(&format!("acks-after-{i}")))
        .collect();
    for id in &after {
        bench.submit(id, &["exit", "0"]).await;
    }
    for id in &after {
        assert_eq!(bench.result(id).await.status, Status::Succeeded, "{id}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.kill().unwrap(); // SIGKILL: whatever is unacked goes back
    worker.wait().unwrap();
    bench
        .expect_queued(1, "only the long job, still running, was unacked")
        .await;
    bench.remove().await;
}

/// `shoal_ack_frames_total` of the worker whose metrics are at `listen`.
async fn ack_frames(listen: &str) -> u64 {
    let (_, body) = http_get(&format!("http://{listen}/metrics")).await.unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix("shoal_ack_frames_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no shoal_ack_frames_total in:\n{body}"))
}

/// A job that finds the worker's instance pool full meets our failure, not
/// its own: it goes back to the queue and completes once there is room,
/// instead of ending as `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_meets_a_full_instance_pool_is_retried_and_completes_once_there_is_room() {
    let mut bench = Bench::new().await;
    // Two jobs at once, room in the pool for one, little patience for it.
    let worker = bench.worker(
        "crowded",
        &[
            ("SHOAL_WORKER_CONCURRENCY", "2"),
            ("SHOAL_EXECUTOR_POOL_STORES", "1"),
            ("SHOAL_EXECUTOR_SLOT_WAIT_MS", "300"),
            ("SHOAL_AMQP_RETRY_BASE_MS", "200"),
            ("SHOAL_AMQP_RETRY_MAX_MS", "800"),
            // The bench's queue has a delivery limit of 10: twice this.
            ("SHOAL_AMQP_MAX_ATTEMPTS", "5"),
        ],
    );
    let reaper = Reaper(vec![worker]);
    let (long, short) = (unique("pool-long"), unique("pool-short"));
    bench.submit(&long, &["sleep", "2"]).await;
    bench.running(&long).await;
    bench.submit(&short, &["args", "made", "it"]).await;

    let result = bench.result(&short).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert!(
        result.attempt >= 2,
        "the job met the full pool first: {result:?}"
    );
    assert_eq!(
        result.stdout.unwrap().text.as_deref(),
        Some("probe.wasm\nargs\nmade\nit\n")
    );
    let first = bench.result(&long).await;
    assert_eq!(
        (first.status, first.attempt),
        (Status::Succeeded, 1),
        "{first:?}"
    );
    let log = bench.log("crowded");
    assert!(
        log.contains("instance pool is full") && log.contains("will retry"),
        "the worker says why it handed the job back:\n{log}"
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real Prometheus server (Debian's `prometheus`) scraping one target
/// every second, with its data in a temporary folder; killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: shoal-worker\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian package `prometheus`; scripts/services installs it)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// The value of a PromQL query that returns one sample, or `None`.
    async fn value(&self, query: &str) -> Option<f64> {
        let url = url::Url::parse_with_params(
            &format!("http://127.0.0.1:{}/api/v1/query", self.port),
            &[("query", query)],
        )
        .ok()?;
        let text = reqwest::get(url).await.ok()?.text().await.ok()?;
        let body: serde_json::Value = serde_json::from_str(&text).ok()?;
        let result = body["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `query` evaluates to `want`.
    async fn expect(&self, query: &str, want: f64) {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.value(query).await;
            if last == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("{query}: wanted {want}, Prometheus says {last:?}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http_get(url: &str) -> Option<(u16, String)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_workers_metrics_and_they_move_by_what_the_jobs_did() {
    let mut bench = Bench::new().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut worker = bench.worker("metered", &[("SHOAL_METRICS_LISTEN", listen.as_str())]);
    let base = format!("http://{listen}");

    // Up at once; ready once it consumes.
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some((200, body)) = http_get(&format!("{base}/readyz")).await {
            assert_eq!(body, "ready\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never ready: {}",
            bench.log("metered")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        http_get(&format!("{base}/healthz")).await,
        Some((200, "ok\n".into()))
    );

    let prometheus = Prometheus::start(&listen);
    prometheus.expect(r#"up{job="shoal-worker"}"#, 1.0).await;

    let ids: Vec<String> = (0..3).map(|i| unique(&format!("metered-{i}"))).collect();
    for id in &ids {
        bench.submit(id, &["args", "x"]).await;
        assert_eq!(bench.result(id).await.status, Status::Succeeded);
    }
    let failing = unique("metered-fail");
    bench.submit(&failing, &["exit", "3"]).await;
    assert_eq!(bench.result(&failing).await.status, Status::Failed);

    let q = |s: &str| s.to_owned();
    for (query, want) in [
        (
            q(r#"shoal_jobs_total{status="succeeded",error_kind=""}"#),
            3.0,
        ),
        (
            q(r#"shoal_jobs_total{status="failed",error_kind="nonzero_exit"}"#),
            1.0,
        ),
        (
            q(r#"shoal_job_stage_duration_seconds_count{stage="run"}"#),
            4.0,
        ),
        (
            q(r#"shoal_job_stage_duration_seconds_count{stage="queue"}"#),
            4.0,
        ),
        // The first job compiled the module; the other three found it in memory.
        (
            q(r#"shoal_cache_requests_total{kind="module",result="miss"}"#),
            1.0,
        ),
        (
            q(r#"shoal_cache_requests_total{kind="module",result="hit"}"#),
            3.0,
        ),
        (q(r#"shoal_staged_bytes_total{source="sha256"} > 0"#), 0.0),
        (q("shoal_jobs_in_flight"), 0.0),
        (q("shoal_worker_concurrency"), 1.0),
        (q("shoal_broker_connected"), 1.0),
        (q("shoal_job_peak_memory_bytes_count"), 4.0),
    ] {
        if query.ends_with("> 0") {
            // A comparison returns the sample only when it holds.
            let deadline = Instant::now() + WAIT;
            while prometheus.value(&query).await.is_none() {
                assert!(Instant::now() < deadline, "{query} never held");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            continue;
        }
        prometheus.expect(&query, want).await;
    }
    let fuel = prometheus.value("shoal_fuel_consumed_total").await.unwrap();
    assert!(fuel > 0.0, "fuel {fuel}");

    // The exposition passes Prometheus's own linter.
    let (_, body) = http_get(&format!("{base}/metrics")).await.unwrap();
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`)");
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    signal(&worker, "TERM");
    assert!(exited(&mut worker, WAIT).await.success());
    bench.remove().await;
}

impl Bench {
    /// Messages in a queue of this bench (ready ones).
    async fn queued(&self, queue: &str) -> u32 {
        let channel = self.conn.create_channel().await.unwrap();
        channel
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// Publishes bytes to the job queue and waits for the broker's confirm.
    async fn publish_raw(&self, body: &[u8], props: BasicProperties) {
        let confirm = self
            .publish
            .basic_publish(
                ShortString::from(""),
                ShortString::from(self.topology.job_queue.as_str()),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }
}

/// Closes every broker connection whose client properties name one of `names`.
fn close_connections(names: &[&str]) -> usize {
    let listing = Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let mut closed = 0;
    for line in listing.lines() {
        if names.iter().any(|n| line.contains(n)) {
            let pid = line.split('\t').next().unwrap();
            let out = Command::new("rabbitmqctl")
                .args(["close_connection", pid, "closed by the chaos test"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            closed += 1;
        }
    }
    closed
}

/// A TCP forwarder to SeaweedFS (127.0.0.1:8333) that can be switched off
/// (new connections refused, open ones cut) and on: the S3 store "stopped"
/// for this test only, without stopping the one other tests share.
struct Switch {
    port: u16,
    up: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Switch {
    async fn start() -> Switch {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, rx) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*rx.borrow() {
                    continue; // dropped: refused, as far as the client can tell
                }
                let mut down = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:8333").await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Switch {
            port,
            up: std::sync::Arc::new(up),
        }
    }

    /// Off now, back on after `outage`.
    fn outage(&self, outage: Duration) {
        self.up.send_replace(false);
        let up = self.up.clone();
        tokio::spawn(async move {
            tokio::time::sleep(outage).await;
            up.send_replace(true);
        });
    }
}

/// 1,000 jobs through 2 worker processes while one is SIGKILLed and
/// restarted three times, the broker cuts both workers' connections twice,
/// and the S3 store (the module and the results live there) is unreachable
/// for 3 seconds; three poison messages go in on purpose. Every job gets a
/// result and succeeds (the outage is retried, never the job's failure); a
/// job that was redelivered (killed after publishing, before its ack) may
/// get two, and then they agree; nothing is lost; the dead-letter queue
/// holds exactly the three poison messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_thousand_jobs_survive_kills_and_broker_cuts() {
    const JOBS: usize = 1000;
    let mut bench = Bench::new().await;
    let (a_name, b_name) = (unique("chaos-a"), unique("chaos-b"));
    let switch = Switch::start().await;
    let endpoint = format!("http://127.0.0.1:{}", switch.port);
    let env = [
        ("SHOAL_WORKER_CONCURRENCY", "4"),
        ("SHOAL_CACHE_S3_BUCKET", "shoal-test"),
        ("SHOAL_CACHE_S3_ENDPOINT", endpoint.as_str()),
        ("SHOAL_CACHE_S3_RETRY_TIMEOUT_SECS", "1"),
        // 5: the bench queue's delivery limit is 10, twice this.
        ("SHOAL_AMQP_MAX_ATTEMPTS", "5"),
        ("SHOAL_AMQP_RETRY_BASE_MS", "300"),
        ("SHOAL_AMQP_RETRY_MAX_MS", "1000"),
    ];
    // The module, in the bucket the workers use.
    {
        use object_store::ObjectStoreExt as _;
        let bucket = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("shoal-test")
            .with_region("us-east-1")
            .with_endpoint("http://127.0.0.1:8333")
            .with_allow_http(true)
            .with_skip_signature(true)
            .build()
            .unwrap();
        let probe = std::fs::read(repo().join("tests/fixtures/probe.wasm")).unwrap();
        bucket
            .put(
                &shoal_worker::store::keys::sha256(&bench.module),
                probe.into(),
            )
            .await
            .expect("SeaweedFS on 127.0.0.1:8333 (scripts/services)");
    }
    let mut reaper = Reaper(vec![
        bench.worker(&a_name, &env),
        bench.worker(&b_name, &env),
    ]);
    for poison in [
        &b"not json"[..],
        b"{\"schema\":\"shoal.job/v1\"}",
        b"\xff\xfe",
    ] {
        bench
            .publish_raw(poison, BasicProperties::default().with_delivery_mode(2))
            .await;
    }
    let ids: Vec<String> = (0..JOBS).map(|i| unique(&format!("chaos-{i}"))).collect();
    for (i, id) in ids.iter().enumerate() {
        bench.submit(id, &["args", &i.to_string()]).await;
    }

    let mut results: HashMap<String, Vec<ResultMessage>> = HashMap::new();
    let (mut kills, mut cuts, mut outage) = (0, 0, false);
    let deadline = Instant::now() + Duration::from_secs(300);
    while results.len() < JOBS {
        let reply = tokio::time::timeout_at(deadline.into(), bench.replies.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {JOBS} jobs answered", results.len()))
            .expect("reply consumer ended");
        let Reply::Result(result) = reply else {
            continue;
        };
        results
            .entry(result.job_id.clone())
            .or_default()
            .push(*result);
        let done = results.len();
        if kills < 3 && done >= 150 + 250 * kills {
            // SIGKILL mid-stream: its unacked jobs go back to the queue.
            reaper.0[0].kill().unwrap();
            reaper.0[0].wait().unwrap();
            reaper.0[0] = bench.worker(&a_name, &env);
            kills += 1;
        }
        if cuts < 2 && done >= 250 + 400 * cuts {
            assert!(close_connections(&[&a_name, &b_name]) >= 1);
            cuts += 1;
        }
        if !outage && done >= 500 {
            switch.outage(Duration::from_secs(3));
            outage = true;
        }
    }
    // Late duplicates of redelivered jobs, if any, arrive now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Ok(reply) = bench.replies.try_recv() {
        if let Reply::Result(result) = reply {
            results
                .entry(result.job_id.clone())
                .or_default()
                .push(*result);
        }
    }
    assert_eq!((kills, cuts, outage), (3, 2, true));
    let mut redelivered = 0;
    for (i, id) in ids.iter().enumerate() {
        let got = results.get(id).unwrap_or_else(|| panic!("job {id} lost"));
        for result in got {
            assert_eq!(result.status, Status::Succeeded, "{result:?}");
            assert_eq!(
                result.stdout.as_ref().and_then(|s| s.text.as_deref()),
                Some(format!("probe.wasm\nargs\n{i}\n").as_str())
            );
        }
        if got.len() > 1 || got[0].attempt > 1 {
            redelivered += 1;
        }
    }
    assert_eq!(results.len(), JOBS, "results for ids nobody submitted");
    assert_eq!(bench.queued(&bench.topology.job_queue).await, 0);
    assert_eq!(
        bench.queued(&bench.topology.dead_letter).await,
        3,
        "the dead-letter queue holds more than the poison messages"
    );
    let retried = results.values().flatten().filter(|r| r.attempt > 1).count();
    eprintln!(
        "chaos: {JOBS} jobs, {kills} kills, {cuts} broker cuts, a 3 s store outage; {redelivered} jobs redelivered or retried ({retried} results after attempt 1), 0 lost, 0 failed"
    );
    drop(reaper);
    bench.remove().await;
}

/// A job queue declared the usual pika way (durable, no arguments) before
/// any worker: the worker cannot consume, and says which argument differs
/// in its log, its `/readyz` body and a metric; once the queue is deleted it
/// declares it its own way and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_queue_declared_with_other_arguments_is_named_not_just_unready() {
    let bench = Bench::new().await;
    let queue = format!("{}.plain", bench.topology.job_queue);
    let channel = bench.conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            ShortString::from(queue.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut worker = bench.worker(
        "mismatched",
        &[
            ("SHOAL_AMQP_JOB_QUEUE", queue.as_str()),
            ("SHOAL_METRICS_LISTEN", listen.as_str()),
        ],
    );
    let (readyz, metrics) = (
        format!("http://{listen}/readyz"),
        format!("http://{listen}/metrics"),
    );
    let ours = ["x-queue-type", "x-dead-letter-exchange", "x-delivery-limit"];
    let deadline = Instant::now() + WAIT;
    let (body, argument) = loop {
        if let Some((503, body)) = http_get(&readyz).await
            && let Some(argument) = ours.iter().find(|a| body.contains(*a))
        {
            break (body, *argument);
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never named the argument: {:?}",
            http_get(&readyz).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body.contains(&format!("queue '{queue}'")), "{body}");
    let (_, exported) = http_get(&metrics).await.unwrap();
    assert!(
        exported.contains(&format!(
            "shoal_topology_mismatch{{argument=\"{argument}\"}} 1"
        )),
        "{exported}"
    );
    let log = bench.log("mismatched");
    assert!(log.contains(argument) && log.contains("ERROR"), "{log}");

    let delete_queue = || async {
        channel
            .queue_delete(
                ShortString::from(queue.as_str()),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await
            .unwrap();
    };
    // Deleted while empty, the queue is declared the workers' way and served.
    delete_queue().await;
    let deadline = Instant::now() + WAIT;
    while http_get(&readyz).await.map(|(status, _)| status) != Some(200) {
        assert!(Instant::now() < deadline, "the worker never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, exported) = http_get(&metrics).await.unwrap();
    assert!(!exported.contains("shoal_topology_mismatch{"), "{exported}");
    worker.kill().unwrap();
    let _ = worker.wait();
    delete_queue().await;
    bench.remove().await;
}

/// Broker passwords reach no output: not the log, `/readyz` or `/metrics`
/// of a worker whose brokers refuse it (one node unreachable, one that
/// rejects the password), nor the error of a worker given a malformed URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_broker_password_reaches_a_log_a_metric_or_readyz() {
    let secret = |tag: &str| format!("pw-{tag}-{}", uuid::Uuid::new_v4().simple());
    let (unreachable, refused) = (secret("unreachable"), secret("refused"));
    let closed = free_port();
    let urls = format!(
        "amqp://guest:{unreachable}@127.0.0.1:{closed}/%2f, amqp://guest:{refused}@127.0.0.1:5672/%2f"
    );
    let logs = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let port = free_port();
    let log_path = logs.path().join("worker.log");
    let worker = Command::new(env!("CARGO_BIN_EXE_shoal-worker"))
        .arg("serve")
        .env_clear()
        .env("SHOAL_CACHE_DIR", cache.path())
        .env("SHOAL_AMQP_URL", &urls)
        .env("SHOAL_AMQP_RECONNECT_MAX_MS", "300")
        .env("SHOAL_LOG_FILTER", "debug")
        .env("SHOAL_METRICS_LISTEN", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut reaper = Reaper(vec![worker]);
    // Several rounds of both refusals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let base = format!("http://127.0.0.1:{port}");
    let (status, readyz) = http_get(&format!("{base}/readyz")).await.unwrap();
    assert_eq!(status, 503, "{readyz}");
    let (_, metrics) = http_get(&format!("{base}/metrics")).await.unwrap();
    signal(&reaper.0[0], "TERM");
    exited(&mut reaper.0[0], WAIT).await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    // The refusals are there, each URL named, with its password replaced.
    assert!(log.contains("no broker answered"), "{log}");
    assert!(
        log.contains(&format!("guest:***@127.0.0.1:{closed}")),
        "{log}"
    );
    assert!(log.contains("guest:***@127.0.0.1:5672"), "{log}");
    for (what, text) in [("log", &log), ("/readyz", &readyz), ("/metrics", &metrics)] {
        for password in [&unreachable, &refused] {
            assert!(
                !text.contains(password.as_str()),
                "{what} shows a password: {text}"
            );
        }
    }

    // A malformed URL: the worker refuses to start, naming which URL,
    // without its password.
    let malformed = secret("malformed");
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-worker"))
        .arg("serve")
        .env_clear()
        .env("SHOAL_CACHE_DIR", cache.path())
        .env(
            "SHOAL_AMQP_URL",
            format!(
                "amqp://guest:guest@127.0.0.1:5672/%2f,amqp://guest:{malformed}@127.0.0.1:port/%2f"
            ),
        )
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("broker URL 2"), "{said}");
    assert!(!said.contains(&malformed), "{said}");
}
