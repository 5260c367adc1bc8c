//! Job queue benchmark (not a timed test), against the real RabbitMQ on
//! 127.0.0.1:5672 (or `SHOAL_AMQP_URL`):
//!
//! ```text
//! cargo bench -p shoal-submitter --bench fleet
//! TMPDIR=/some/folder cargo bench -p shoal-submitter --bench fleet   # store and scratch there
//! SHOAL_CACHE_S3_BUCKET=shoal-test SHOAL_CACHE_S3_ENDPOINT=http://127.0.0.1:8333 \
//!     cargo bench -p shoal-submitter --bench fleet                   # store on S3
//! SHOAL_EXECUTOR_POOLING=false cargo bench -p shoal-submitter --bench fleet  # on-demand allocator
//! SHOAL_BENCH_WORKERS=2 cargo bench -p shoal-submitter --bench fleet   # two workers, one store
//! cargo build --release -p shoal-worker && \
//!     SHOAL_BENCH_WORKER_BIN=target/release/shoal-worker cargo bench -p shoal-submitter --bench fleet
//!                                        # workers as processes: their CPU apart from the submitter's
//! SHOAL_BENCH_ONLY=shoal perf record -F 499 -g -o perf.data -- target/release/deps/fleet-… --bench
//!                                                                    # Shoal alone, for a profile
//! scripts/cluster up && SHOAL_AMQP_URL=amqp://guest:guest@127.0.0.1:5681/%2f \
//!     cargo bench -p shoal-submitter --bench fleet                   # on a 3-node cluster (node 1)
//! ```
//!
//! With persistent messages, publisher confirms and manual acks, in one run:
//!
//! 1. the floor: the same broker doing publish → consume → publish reply →
//!    ack, with no WebAssembly and no results store, over three connections
//!    (a worker's, a submitter's and its reply connection, the shape Shoal
//!    has): once at its best (prefetch 64, every confirm awaited
//!    concurrently), once at the worker's own prefetch;
//! 2. Shoal: `Client` → quorum job queue → an in-process worker running
//!    `examples/hello/hello.wasm` (warm module cache) → result to the store,
//!    the results exchange and the reply queue → ack.
//!
//! Each side reports the throughput of pipelined bursts (the median of
//! three), the CPU time per job of this process and of the broker during
//! that burst, and the p50/p99 submit→result latency of sequential jobs.
//! Results go to docs/BENCHMARKS.md by hand.
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use shoal_submitter::{Client, JobMessage, Status, Topology};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const BURST: usize = 2000;
/// Bursts per side; the median is reported (one burst swings ±15% on this VM).
const BURSTS: usize = 3;
const SEQUENTIAL: usize = 500;
const CONCURRENCY: usize = 2;
/// The floor's prefetch: deep enough that the broker never waits for its
/// consumer (more changed nothing on this VM).
const FLOOR_PREFETCH: u16 = 64;

/// The worker's prefetch in this run: `SHOAL_AMQP_PREFETCH`, else what the
/// automatic prefetch reaches for trivial jobs on `CONCURRENCY` guest slots
/// (16 per slot).
fn shoal_prefetch() -> u16 {
    #[allow(clippy::disallowed_methods)]
    let set = std::env::var("SHOAL_AMQP_PREFETCH")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p > 0);
    set.unwrap_or((CONCURRENCY * 16) as u16)
}

fn url() -> String {
    // A benchmark, not the product: reading the environment directly is fine.
    #[allow(clippy::disallowed_methods)]
    std::env::var("SHOAL_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The store, scratch and executor settings this run was given
/// (`SHOAL_CACHE_*`, `SHOAL_WORKER_SCRATCH_DIR`, `SHOAL_EXECUTOR_*`), to
/// measure the worker against S3, with scratch elsewhere or without the
/// pooling allocator; by default a local-folder store in the temporary folder.
fn store_settings() -> Vec<(String, String)> {
    #[allow(clippy::disallowed_methods)]
    std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("SHOAL_CACHE_")
                || k.starts_with("SHOAL_EXECUTOR_")
                || k == "SHOAL_WORKER_SCRATCH_DIR"
                || k == "SHOAL_AMQP_PREFETCH"
        })
        .collect()
}

/// The burst with the median throughput: (jobs/s, CPU µs per job).
fn median_burst(mut bursts: Vec<(f64, PerJob)>) -> (f64, PerJob) {
    bursts.sort_by(|a, b| a.0.total_cmp(&b.0));
    bursts[bursts.len() / 2]
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50).as_secs_f64() * 1e3, at(0.99).as_secs_f64() * 1e3)
}

/// CPU time (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command's closing parenthesis start at field 3
    // (state); utime and stime are fields 14 and 15, in clock ticks (100/s).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    (tick(11).unwrap_or(0.0) + tick(12).unwrap_or(0.0)) / 100.0
}

/// The brokers' Erlang VMs (one, or every node of a cluster on this box,
/// `scripts/cluster`), to count their CPU time too (they share our cores).
fn broker_pids() -> Vec<String> {
    pids_named("beam.smp")
}

/// SeaweedFS (`weed server`), when the store is on it: it shares our
/// cores too.
fn store_pids() -> Vec<String> {
    pids_named("weed")
}

fn pids_named(name: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| {
                    let pid = entry.file_name().to_string_lossy().into_owned();
                    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                    (comm.trim() == name).then_some(pid)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// CPU time per job of this process, of the worker processes and of the
/// brokers over a stretch.
struct Cpu {
    ours: f64,
    /// Each worker process (`SHOAL_BENCH_WORKER_BIN`) with its CPU seconds
    /// at the start; none when the workers run in this process.
    workers: Vec<(String, f64)>,
    /// Each broker VM with its CPU seconds at the start.
    brokers: Vec<(String, f64)>,
    /// SeaweedFS, when running.
    stores: Vec<(String, f64)>,
}

/// Microseconds of CPU per job.
#[derive(Clone, Copy, Default)]
struct PerJob {
    /// This process: the submitter and reply consumer, and the worker (or
    /// the floor's echo) when it runs in here.
    ours: f64,
    /// The worker processes, when they run apart.
    workers: f64,
    broker: f64,
    /// SeaweedFS, whether or not the store is on it (idle, it costs ~0).
    store: f64,
}

impl Cpu {
    fn start(workers: &[String]) -> Cpu {
        let at = |pids: Vec<String>| {
            pids.into_iter()
                .map(|pid| {
                    let at = cpu_secs(&pid);
                    (pid, at)
                })
                .collect()
        };
        Cpu {
            ours: cpu_secs("self"),
            workers: at(workers.to_vec()),
            brokers: at(broker_pids()),
            stores: at(store_pids()),
        }
    }

    /// A process that went away meanwhile (a node stopped) counts for
    /// nothing rather than for minus its whole life.
    fn per_job(&self, jobs: usize) -> PerJob {
        let since = |pids: &[(String, f64)]| -> f64 {
            // A fold from +0: an empty sum of f64 is -0.
            pids.iter()
                .map(|(pid, at)| (cpu_secs(pid) - at).max(0.0))
                .fold(0.0, |sum, cpu| sum + cpu)
        };
        let us = |secs: f64| secs / jobs as f64 * 1e6;
        PerJob {
            ours: us(cpu_secs("self") - self.ours),
            workers: us(since(&self.workers)),
            broker: us(since(&self.brokers)),
            store: us(since(&self.stores)),
        }
    }
}

/// The worker binary to run Shoal's workers as processes of their own, as
/// in production (`SHOAL_BENCH_WORKER_BIN`, built with `cargo build
/// --release -p shoal-worker`): their CPU time is then counted apart from
/// the submitter's. Without it they run in this process. Not found by
/// itself: a binary left from an older build would be measured silently.
fn worker_bin() -> Option<std::path::PathBuf> {
    #[allow(clippy::disallowed_methods)]
    let bin = std::env::var_os("SHOAL_BENCH_WORKER_BIN")?;
    let mut bin = std::path::PathBuf::from(bin);
    // `cargo bench` runs this in submitter/: a relative path is the
    // workspace's (target/release/shoal-worker).
    if bin.is_relative() && !bin.is_file() {
        bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(bin);
    }
    assert!(
        bin.is_file(),
        "SHOAL_BENCH_WORKER_BIN={} is not a file",
        bin.display()
    );
    Some(bin)
}

struct Measured {
    jobs_per_sec: f64,
    /// CPU µs per job of the burst.
    cpu_us: PerJob,
    p50_ms: f64,
    p99_ms: f64,
    /// p50 of the publish-and-confirm part of the round trip.
    publish_p50_ms: f64,
}

fn persistent(id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(id))
        .with_correlation_id(ShortString::from(id))
}

/// Worker processes, stopped with SIGTERM and waited for when dropped, so
/// that a benchmark that fails leaves none consuming behind it.
struct Processes(Vec<std::process::Child>);

impl Processes {
    /// Stops each (drained, as an operator stops one); whether all exited 0.
    fn stop(&mut self) -> bool {
        let mut clean = true;
        for mut process in self.0.drain(..) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &process.id().to_string()])
                .status();
            clean &= process.wait().is_ok_and(|status| status.success());
        }
        clean
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How the floor's consumer acks.
#[derive(Clone, Copy, PartialEq)]
enum Acking {
    /// One ack frame per delivery.
    Each,
    /// As the worker does (`shoal_worker::consume::acks`): one `multiple`
    /// ack for every delivery from the lowest tag whose reply is confirmed.
    Batched,
}

/// The floor's consumer: each delivery answered with a persistent,
/// confirmed reply before it is acked (the worker's protocol with nothing
/// in between), confirms awaited concurrently, up to `prefetch` at once.
async fn echo(conn: &Connection, queue: &str, prefetch: u16, acking: Acking) {
    let consume = conn.create_channel().await.unwrap();
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let publish = conn.create_channel().await.unwrap();
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut consumer = consume
        .basic_consume(
            ShortString::from(queue),
            ShortString::from("floor-echo"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let acks = (acking == Acking::Batched)
        .then(|| shoal_worker::consume::acks::Acks::start(consume.clone()));
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let publish = publish.clone();
            let acks = acks.clone();
            if let Some(acks) = &acks {
                acks.delivered(delivery.delivery_tag);
            }
            tokio::spawn(async move {
                let reply_to = delivery.properties.reply_to().clone().unwrap();
                let id = delivery.properties.message_id().clone().unwrap();
                publish
                    .basic_publish(
                        ShortString::from(""),
                        reply_to,
                        BasicPublishOptions::default(),
                        &delivery.data,
                        persistent(id.as_str()),
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                match acks {
                    Some(acks) => acks.ack(delivery.delivery_tag),
                    None => {
                        delivery
                            .acker
                            .ack(BasicAckOptions::default())
                            .await
                            .unwrap();
                    }
                }
            });
        }
    });
}

/// The floor's submitter: a confirm channel and an exclusive reply queue.
struct FloorClient {
    publish: Channel,
    queue: String,
    reply_to: String,
    arrived: Arc<(Mutex<HashMap<String, Instant>>, Notify)>,
}

impl FloorClient {
    async fn new(conn: &Connection, replies_conn: &Connection, queue: &str) -> FloorClient {
        let publish = conn.create_channel().await.unwrap();
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let replies = replies_conn.create_channel().await.unwrap();
        let (reply_to, mut consumer) = shoal_schemas::topology::reply_queue(&replies)
            .await
            .unwrap();
        let arrived = Arc::new((Mutex::new(HashMap::new()), Notify::new()));
        let sink = arrived.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let id = delivery.properties.correlation_id().clone().unwrap();
                sink.0
                    .lock()
                    .unwrap()
                    .insert(id.as_str().to_owned(), Instant::now());
                sink.1.notify_waiters();
            }
        });
        FloorClient {
            publish,
            queue: queue.to_owned(),
            reply_to,
            arrived,
        }
    }

    async fn submit_all(&self, ids: &[String], body: &[u8]) {
        let mut confirms = Vec::new();
        for id in ids {
            confirms.push(
                self.publish
                    .basic_publish(
                        ShortString::from(""),
                        ShortString::from(self.queue.as_str()),
                        BasicPublishOptions::default(),
                        body,
                        persistent(id).with_reply_to(ShortString::from(self.reply_to.as_str())),
                    )
                    .await
                    .unwrap(),
            );
        }
        for confirm in confirms {
            assert!(confirm.await.unwrap().is_ack());
        }
    }

    async fn wait(&self, id: &str) {
        loop {
            let notified = self.arrived.1.notified();
            if self.arrived.0.lock().unwrap().remove(id).is_some() {
                return;
            }
            notified.await;
        }
    }
}

async fn quorum_queue(conn: &Connection, name: &str) {
    let channel = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            ShortString::from(name),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();
}

/// The floor over `conns`: the echo (the worker's side) on the first, the
/// client publishing on the second and reading replies on the third. Given
/// three connections it has Shoal's shape (a worker, a submitter's pool,
/// its reply connection), each with its own lapin I/O thread; given one
/// shared connection, every frame goes through one thread.
async fn floor(conns: [&Connection; 3], body: &[u8], prefetch: u16, acking: Acking) -> Measured {
    let [worker, submitter, replies] = conns;
    let conn = worker;
    let queue = format!("bench.floor.{}", uuid::Uuid::new_v4().simple());
    quorum_queue(conn, &queue).await;
    echo(worker, &queue, prefetch, acking).await;
    let client = FloorClient::new(submitter, replies, &queue).await;
    let ids =
        |n: usize, tag: &str| -> Vec<String> { (0..n).map(|i| format!("{tag}-{i}")).collect() };

    client.submit_all(&ids(100, "warm"), body).await;
    for id in ids(100, "warm") {
        client.wait(&id).await;
    }
    let mut bursts = Vec::with_capacity(BURSTS);
    for round in 0..BURSTS {
        let burst = ids(BURST, &format!("burst{round}"));
        let cpu = Cpu::start(&[]);
        let started = Instant::now();
        client.submit_all(&burst, body).await;
        for id in &burst {
            client.wait(id).await;
        }
        bursts.push((
            BURST as f64 / started.elapsed().as_secs_f64(),
            cpu.per_job(BURST),
        ));
    }
    let (jobs_per_sec, cpu_us) = median_burst(bursts);
    let mut latencies = Vec::with_capacity(SEQUENTIAL);
    let mut publishes = Vec::with_capacity(SEQUENTIAL);
    for id in ids(SEQUENTIAL, "seq") {
        let started = Instant::now();
        client.submit_all(std::slice::from_ref(&id), body).await;
        publishes.push(started.elapsed());
        client.wait(&id).await;
        latencies.push(started.elapsed());
    }
    let channel = worker.create_channel().await.unwrap();
    channel
        .queue_delete(ShortString::from(queue.as_str()), Default::default())
        .await
        .unwrap();
    let (p50_ms, p99_ms) = percentiles(latencies);
    Measured {
        jobs_per_sec,
        cpu_us,
        p50_ms,
        p99_ms,
        publish_p50_ms: percentiles(publishes).0,
    }
}

async fn shoal(url: &str) -> (Measured, Vec<f64>) {
    let cache = tempfile::tempdir().unwrap();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let settings: Vec<(String, String)> = vec![
        ("SHOAL_CACHE_DIR".into(), cache.path().display().to_string()),
        ("SHOAL_AMQP_URL".into(), url.to_owned()),
        (
            "SHOAL_AMQP_JOB_QUEUE".into(),
            format!("bench.jobs.{suffix}"),
        ),
        (
            "SHOAL_AMQP_RESULTS_EXCHANGE".into(),
            format!("bench.results.{suffix}"),
        ),
        (
            "SHOAL_AMQP_DEAD_LETTER".into(),
            format!("bench.dead.{suffix}"),
        ),
        ("SHOAL_LOG_FILTER".into(), "warn".into()),
        ("SHOAL_WORKER_CONCURRENCY".into(), CONCURRENCY.to_string()),
        // Several worker processes: each its own free port.
        ("SHOAL_METRICS_LISTEN".into(), "127.0.0.1:0".into()),
    ]
    .into_iter()
    .chain(store_settings())
    .collect();
    let config = shoal_worker::Config::load_from(None, settings.clone()).unwrap();
    let hello =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello/hello.wasm");
    let (stop, rx) = tokio::sync::watch::channel(false);
    // SHOAL_BENCH_WORKERS=N: N workers, each with its own pipeline (engine,
    // scratch folder, instance pool) and broker connection, sharing the
    // store: do two workers on one box get in each other's way?
    #[allow(clippy::disallowed_methods)]
    let count: usize = std::env::var("SHOAL_BENCH_WORKERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut workers = Vec::with_capacity(count);
    let mut processes = Processes(Vec::new());
    let bin = worker_bin();
    #[allow(clippy::disallowed_methods)]
    let tmpdir = std::env::var_os("TMPDIR");
    let mut module = None;
    for i in 0..count {
        let pipeline =
            shoal_worker::pipeline::Pipeline::new(config.clone(), config.limits.ceiling).unwrap();
        if module.is_none() {
            module = Some(
                shoal_submitter::local::upload_path(pipeline.stager(), &hello)
                    .await
                    .unwrap(),
            );
        }
        match &bin {
            Some(bin) => processes.0.push(
                std::process::Command::new(bin)
                    .arg("serve")
                    .env_clear()
                    .envs(settings.iter().cloned())
                    .env("SHOAL_WORKER_NAME", format!("bench-{i}"))
                    // Its scratch where this run's is (TMPDIR=/dev/shm, say).
                    .envs(tmpdir.iter().map(|t| ("TMPDIR", t)))
                    .stdin(std::process::Stdio::null())
                    // Its log (warnings) on stderr; nothing into the table.
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("starting SHOAL_BENCH_WORKER_BIN"),
            ),
            None => workers.push(tokio::spawn(shoal_worker::consume::run(
                pipeline,
                config.amqp.clone(),
                CONCURRENCY,
                rx.clone(),
            ))),
        }
    }
    let pids: Vec<String> = processes.0.iter().map(|p| p.id().to_string()).collect();
    let module = module.expect("at least one worker");
    let topology: Topology = config.amqp.topology();
    let client = Client::connect(url, topology.clone()).await.unwrap();
    let job = |i: usize| {
        let mut job = JobMessage::new(module.clone());
        job.args = vec![i.to_string()];
        job
    };

    // Warm for over a second: the module compiled, every worker up, and
    // the automatic prefetch past its first look at the jobs' pace (every
    // second), so the bursts run at the prefetch it settles on.
    let warming = Instant::now();
    while warming.elapsed() < Duration::from_millis(1500) {
        let warm = client
            .submit_batch((0..100).map(job).collect())
            .await
            .unwrap();
        for h in &warm {
            client
                .wait_result(&h.id, Duration::from_secs(60))
                .await
                .unwrap();
        }
    }
    let mut bursts = Vec::with_capacity(BURSTS);
    for _ in 0..BURSTS {
        let cpu = Cpu::start(&pids);
        let started = Instant::now();
        let handles = client
            .submit_batch((0..BURST).map(job).collect())
            .await
            .unwrap();
        for h in &handles {
            let result = client
                .wait_result(&h.id, Duration::from_secs(600))
                .await
                .unwrap();
            assert_eq!(result.status, Status::Succeeded);
        }
        bursts.push((
            BURST as f64 / started.elapsed().as_secs_f64(),
            cpu.per_job(BURST),
        ));
    }
    let (jobs_per_sec, cpu_us) = median_burst(bursts);
    let mut latencies = Vec::with_capacity(SEQUENTIAL);
    let mut publishes = Vec::with_capacity(SEQUENTIAL);
    let mut parts: Vec<[f64; 7]> = Vec::with_capacity(SEQUENTIAL);
    // The result's timestamps (microseconds, one clock: the same machine).
    let at = |stamp: &Option<String>| {
        let stamp = stamp.as_deref().expect("a result stamped by the worker");
        humantime::parse_rfc3339(stamp).expect("an RFC 3339 stamp")
    };
    let between = |a: std::time::SystemTime, b: std::time::SystemTime| {
        b.duration_since(a).unwrap_or_default().as_secs_f64()
    };
    for i in 0..SEQUENTIAL {
        let sent = std::time::SystemTime::now();
        let started = Instant::now();
        let handle = client.submit(job(i)).await.unwrap();
        publishes.push(started.elapsed());
        let result = client
            .wait_result(&handle.id, Duration::from_secs(60))
            .await
            .unwrap();
        latencies.push(started.elapsed());
        let arrived = std::time::SystemTime::now();
        let d = &result.usage.durations;
        let (taken, finished) = (at(&result.started_at), at(&result.finished_at));
        parts.push([
            d.queue_secs.unwrap_or(0.0),
            d.stage_secs.unwrap_or(0.0),
            d.run_secs.unwrap_or(0.0),
            d.publish_secs.unwrap_or(0.0),
            // Submit to the worker taking the job (publish, confirm, delivery).
            between(sent, taken),
            // Taken to the result stamped, before it is stored.
            between(taken, finished),
            // Stamped to here: stored, published, routed, read.
            between(finished, arrived),
        ]);
    }
    client.close().await;
    stop.send(true).unwrap();
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
    assert!(processes.stop(), "a worker process failed");
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    topology
        .delete(&conn.create_channel().await.unwrap())
        .await
        .unwrap();
    let mean = |k: usize| parts.iter().map(|p| p[k]).sum::<f64>() / parts.len() as f64 * 1e3;
    let (p50_ms, p99_ms) = percentiles(latencies);
    (
        Measured {
            jobs_per_sec,
            cpu_us,
            p50_ms,
            p99_ms,
            publish_p50_ms: percentiles(publishes).0,
        },
        (0..7).map(mean).collect(),
    )
}

/// Where a sequential job's round trip goes, by the result's own stamps.
fn print_legs(parts: &[f64]) {
    println!(
        "Shoal sequential jobs, mean legs: submit → taken {:.3} ms, taken → result stamped {:.3} ms, stamped → result read by the submitter {:.3} ms",
        parts[4], parts[5], parts[6]
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = url();
    let connect = || async {
        Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("a RabbitMQ broker (scripts/services starts one)")
    };
    let (one, two, three) = (connect().await, connect().await, connect().await);
    // A body the size of a typical job message.
    let body = br#"{"schema":"shoal.job/v1","module":{"sha256":"0000000000000000000000000000000000000000000000000000000000000000"},"args":["1"]}"#;
    // The broker at its best: a deep prefetch, confirms awaited
    // concurrently, Shoal's three connections. Not the broker at Shoal's
    // own settings, which would share Shoal's limits and hide them; that
    // one is the second row, to show what the prefetch alone costs.
    // SHOAL_BENCH_ONLY=shoal runs Shoal's side alone: for a profiler
    // (`perf record`), whose samples would otherwise mix in the floor's.
    #[allow(clippy::disallowed_methods)]
    if std::env::var("SHOAL_BENCH_ONLY").is_ok_and(|only| only == "shoal") {
        let (shoal, parts) = shoal(&url).await;
        print_legs(&parts);
        let cpu = shoal.cpu_us;
        println!(
            "Shoal alone: {:.0} jobs/s, CPU per job {:.0} µs here, {:.0} µs in worker processes, {:.0} µs broker, {:.0} µs SeaweedFS; p50 {:.2} ms",
            shoal.jobs_per_sec, cpu.ours, cpu.workers, cpu.broker, cpu.store, shoal.p50_ms
        );
        return;
    }
    let conns = [&one, &two, &three];
    let best = floor(conns, body, FLOOR_PREFETCH, Acking::Batched).await;
    let each = floor(conns, body, FLOOR_PREFETCH, Acking::Each).await;
    let ours_prefetch = shoal_prefetch();
    let at_ours = floor(conns, body, ours_prefetch, Acking::Batched).await;
    let (shoal, parts) = shoal(&url).await;
    println!(
        "| path | throughput (jobs/s) | CPU per job of the burst: this process / worker processes / broker / SeaweedFS | p50 latency | p99 latency | p50 of it publishing + confirm |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, m) in [
        (
            format!(
                "floor at its best: publish → consume (prefetch {FLOOR_PREFETCH}) → reply → ack (batched)"
            ),
            &best,
        ),
        (
            format!("floor, prefetch {FLOOR_PREFETCH}, one ack frame per message"),
            &each,
        ),
        (
            format!("floor at Shoal's prefetch ({ours_prefetch})"),
            &at_ours,
        ),
        (
            format!(
                "Shoal: hello.wasm through {}",
                if worker_bin().is_some() {
                    "worker processes"
                } else {
                    "a worker in this process"
                }
            ),
            &shoal,
        ),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} / {:.0} / {:.0} / {:.0} µs | {:.2} ms | {:.2} ms | {:.2} ms |",
            m.jobs_per_sec,
            m.cpu_us.ours,
            m.cpu_us.workers,
            m.cpu_us.broker,
            m.cpu_us.store,
            m.p50_ms,
            m.p99_ms,
            m.publish_p50_ms
        );
    }
    println!(
        "\nagainst the floor at its best: throughput {:.0}% (goal ≥ 50%), p50 {:.2}× (goal ≤ 1.5×)",
        shoal.jobs_per_sec / best.jobs_per_sec * 100.0,
        shoal.p50_ms / best.p50_ms
    );
    println!(
        "Shoal sequential jobs, mean per stage as the worker measured it: queue {:.2} ms (from the submitter's clock), stage {:.3} ms, run {:.3} ms, publish {:.3} ms",
        parts[0], parts[1], parts[2], parts[3]
    );
    print_legs(&parts);
}
