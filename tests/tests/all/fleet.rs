//! Jobs through a real RabbitMQ (127.0.0.1:5672; `scripts/test` starts one
//! where it is missing). Each test declares its own randomly named queue,
//! exchanges and cache, so tests run in parallel without meeting.
use crate::support::fixture;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use shoal_schemas::{JobMessage, JobState, Status};
use shoal_submitter::Client;
use shoal_worker::Config;
use shoal_worker::pipeline::Pipeline;
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::watch;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Fleet {
    pub config: Config,
    pub cache: tempfile::TempDir,
    stop: watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    fn config(extra: &[(&str, &str)]) -> (Config, tempfile::TempDir) {
        let cache = tempfile::tempdir().unwrap();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let mut vars: Vec<(String, String)> = vec![
            ("SHOAL_CACHE_DIR".into(), cache.path().display().to_string()),
            ("SHOAL_AMQP_URL".into(), AMQP_URL.into()),
            ("SHOAL_AMQP_JOB_QUEUE".into(), format!("test.jobs.{suffix}")),
            (
                "SHOAL_AMQP_RESULTS_EXCHANGE".into(),
                format!("test.results.{suffix}"),
            ),
            (
                "SHOAL_AMQP_DEAD_LETTER".into(),
                format!("test.dead.{suffix}"),
            ),
            ("SHOAL_AMQP_DRAIN_GRACE_SECS".into(), "5".into()),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        (Config::load_from(None, vars).unwrap(), cache)
    }

    /// `n` in-process workers sharing one cache folder.
    pub fn start(n: usize, extra: &[(&str, &str)]) -> Fleet {
        let (config, cache) = Fleet::config(extra);
        let (stop, rx) = watch::channel(false);
        let workers = (0..n)
            .map(|i| {
                let mut config = config.clone();
                config.worker.name = format!("test-worker-{i}");
                let pipeline = Pipeline::new(config.clone(), config.limits.ceiling).unwrap();
                let rx = rx.clone();
                tokio::spawn(async move {
                    shoal_worker::consume::run(pipeline, config.amqp.clone(), 2, rx)
                        .await
                        .unwrap();
                })
            })
            .collect();
        Fleet {
            config,
            cache,
            stop,
            workers,
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(AMQP_URL, self.config.amqp.topology())
            .await
            .unwrap()
    }

    /// A job running probe, with the module uploaded to the shared cache.
    pub async fn probe(&self, args: &[&str]) -> JobMessage {
        let embedded = Pipeline::new(self.config.clone(), self.config.limits.ceiling).unwrap();
        let source = shoal_submitter::local::upload_path(embedded.stager(), &fixture("probe.wasm"))
            .await
            .unwrap();
        let mut job = JobMessage::new(source);
        job.args = args.iter().map(|a| a.to_string()).collect();
        job
    }

    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        for w in self.workers {
            tokio::time::timeout(WAIT, w).await.unwrap().unwrap();
        }
        // Durable quorum queues outlive the test; remove this test's topology
        // so repeated runs do not pile up queues on the shared broker.
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        self.config.amqp.topology().delete(&channel).await.unwrap();
        drop(self.cache);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_round_trips_through_a_worker() {
    // States from the first millisecond, so this quick job sends them all.
    let fleet = Fleet::start(1, &[("SHOAL_AMQP_STATE_DELAY_MS", "0")]);
    let client = fleet.client().await;
    let mut job = fleet.probe(&["args", "over", "amqp"]).await;
    job.id = Some(format!("rt-{}", uuid::Uuid::new_v4().simple()));
    let handle = client.submit(job).await.unwrap();
    let mut states = Vec::new();
    let result = client
        .wait_result_with(&handle.id, WAIT, |state| states.push(state.clone()))
        .await
        .unwrap();
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert_eq!(
        result.stdout.unwrap().text.as_deref(),
        Some("probe.wasm\nargs\nover\namqp\n")
    );
    assert_eq!(result.attempt, 1);
    assert_eq!(result.worker, "test-worker-0");
    let queued = result.usage.durations.queue_secs.expect("queue time");
    assert!((0.0..30.0).contains(&queued), "{queued}");
    // When it was submitted, started and finished: RFC 3339 in UTC with
    // microseconds, in that order (one machine: one clock), and the queue
    // time is the gap between the first two.
    let at = |t: &Option<String>| {
        let t = t.clone().expect("a timestamp");
        assert!(t.len() == 27 && t.ends_with('Z'), "{t}");
        humantime::parse_rfc3339(&t).unwrap_or_else(|e| panic!("{t}: {e}"))
    };
    let (submitted, started, finished) = (
        at(&result.submitted_at),
        at(&result.started_at),
        at(&result.finished_at),
    );
    assert!(
        submitted <= started && started <= finished,
        "{:?} {:?} {:?}",
        result.submitted_at,
        result.started_at,
        result.finished_at
    );
    let gap = started.duration_since(submitted).unwrap().as_secs_f64();
    assert!((gap - queued).abs() < 0.01, "queue {queued} s, gap {gap} s");
    // Progress arrived in order from the worker that ran it (best-effort:
    // some may be coalesced, but never reordered or from another job).
    assert!(!states.is_empty(), "no state message arrived");
    let order: Vec<JobState> = states.iter().map(|s| s.state).collect();
    let mut sorted = order.clone();
    sorted.sort_by_key(|s| *s as u8);
    assert_eq!(order, sorted, "states out of order: {order:?}");
    assert!(
        states
            .iter()
            .all(|s| s.job_id == handle.id && s.worker == "test-worker-0" && s.attempt == 1)
    );
    // The same result is in the results store, for `submit get`.
    let stored = std::fs::read(
        fleet
            .cache
            .path()
            .join(format!("results/{}/result.json", handle.id)),
    )
    .unwrap();
    let stored: shoal_schemas::ResultMessage = serde_json::from_slice(&stored).unwrap();
    assert_eq!(stored.job_id, handle.id);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_and_the_next_job_succeeds() {
    let fleet = Fleet::start(1, &[]);
    let client = fleet.client().await;
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let poison_id = format!("poison-{}", uuid::Uuid::new_v4().simple());
    // Not JSON, but it carries an id and a reply route: it gets a rejected result.
    let props = BasicProperties::default()
        .with_message_id(ShortString::from(poison_id.as_str()))
        .with_correlation_id(ShortString::from(poison_id.as_str()));
    channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from(fleet.config.amqp.job_queue.as_str()),
            BasicPublishOptions::default(),
            b"{this is not json",
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let handle = client
        .submit(fleet.probe(&["exit", "0"]).await)
        .await
        .unwrap();
    let result = client.wait_result(&handle.id, WAIT).await.unwrap();
    assert_eq!(
        result.status,
        Status::Succeeded,
        "the job after the poison is served: {result:?}"
    );

    // The poison message sits in the dead-letter queue with its reason.
    let dead = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(msg) = channel
                .basic_get(
                    ShortString::from(fleet.config.amqp.dead_letter.as_str()),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap()
            {
                return msg;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(dead.delivery.data, b"{this is not json");
    let headers = dead.delivery.properties.headers().clone().unwrap();
    assert_eq!(
        headers.inner().get("x-shoal-reason"),
        Some(&AMQPValue::LongString("invalid_job".into()))
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_jobs_through_two_workers_are_each_answered_once() {
    let fleet = Fleet::start(2, &[]);
    let client = fleet.client().await;
    let template = fleet.probe(&["exit", "0"]).await;
    let n = 500;
    let jobs = (0..n)
        .map(|i| {
            let mut job = template.clone();
            job.args = vec!["exit".into(), (i % 3).to_string()];
            job
        })
        .collect();
    let ids: Vec<String> = client
        .submit_batch(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), n);
    let mut workers = HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        let result = client.wait_result(id, WAIT).await.unwrap();
        assert_eq!(result.exit_code, Some((i % 3) as i32), "{result:?}");
        workers.insert(result.worker.clone());
    }
    assert_eq!(workers.len(), 2, "both workers took jobs");
    // Nothing else arrives: every id was answered exactly once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &ids {
        let again = client.wait_result(id, Duration::ZERO).await;
        assert!(again.is_err(), "a second result for {id}: {again:?}");
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infrastructure_failure_is_retried_then_ends_as_error_in_the_dead_letter_queue() {
    let fleet = Fleet::start(
        1,
        &[
            ("SHOAL_AMQP_MAX_ATTEMPTS", "3"),
            ("SHOAL_AMQP_RETRY_BASE_MS", "20"),
        ],
    );
    let client = fleet.client().await;
    let job = fleet.probe(&["exit", "0"]).await;
    // The results store cannot be written: `results` is a file, not a folder.
    std::fs::write(fleet.cache.path().join("results"), "in the way").unwrap();
    let handle = client.submit(job).await.unwrap();
    let result = client.wait_result(&handle.id, WAIT).await.unwrap();
    assert_eq!(
        (result.status, result.attempt),
        (Status::Error, 3),
        "{result:?}"
    );
    assert!(
        result
            .error
            .unwrap()
            .message
            .contains("gave up after 3 attempts")
    );
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let dead = channel
        .basic_get(
            ShortString::from(fleet.config.amqp.dead_letter.as_str()),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the job is dead-lettered");
    let headers = dead.delivery.properties.headers().clone().unwrap();
    assert_eq!(
        headers.inner().get("x-shoal-reason"),
        Some(&AMQPValue::LongString("retries_exhausted".into()))
    );
    fleet.stop().await;
}

/// The same job id submitted twice with different content: each submission
/// runs (ids are the client's idempotency key, not a lock), each gets its
/// own result, and the store ends up holding exactly the second run's
/// outputs: files of the first that the second did not write are removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_twice_runs_twice_and_the_store_keeps_only_the_last_run() {
    same_id_twice(&[]).await;
}

/// The test above on a store given by `env` (a local folder finds an
/// earlier result with a create-only write, S3 with a lookup).
pub async fn same_id_twice(env: &[(&str, &str)]) {
    use object_store::{ObjectStoreExt as _, path::Path as StorePath};
    let fleet = Fleet::start(1, env);
    let client = fleet.client().await;
    let id = format!("twice-{}", uuid::Uuid::new_v4().simple());
    let mut first = fleet.probe(&["files", "/outputs", "3"]).await;
    first.id = Some(id.clone());
    let handle = client.submit(first).await.unwrap();
    let result = client.wait_result(&handle.id, WAIT).await.unwrap();
    assert_eq!(result.outputs[0].files.len(), 3, "{result:?}");

    let mut second = fleet.probe(&["files", "/outputs", "1"]).await;
    second.id = Some(id.clone());
    let handle = client.submit(second).await.unwrap();
    let result = client.wait_result(&handle.id, WAIT).await.unwrap();
    assert_eq!(result.outputs[0].files.len(), 1, "{result:?}");

    let store = shoal_worker::store::open(&fleet.config.cache).unwrap();
    let stored = shoal_worker::publish::get_result(store.as_ref(), &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, result);
    let present = |name: &str| {
        let key = StorePath::from(format!("results/{id}/outputs/{name}"));
        let store = store.clone();
        async move { store.head(&key).await.is_ok() }
    };
    assert!(present("f0000.txt").await);
    assert!(
        !present("f0001.txt").await,
        "a stale output of the first run"
    );
    assert!(
        !present("f0002.txt").await,
        "a stale output of the first run"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_cap_is_rejected_unread_and_the_next_job_succeeds() {
    let fleet = Fleet::start(1, &[("SHOAL_LIMITS_MAX_MESSAGE_BYTES", "4096")]);
    let client = fleet.client().await;
    // A well-formed job, but too big: its id rides in the AMQP message id.
    let mut big = fleet.probe(&["args"]).await;
    big.args.push("x".repeat(8000));
    let id = format!("big-{}", uuid::Uuid::new_v4().simple());
    big.id = Some(id.clone());
    let handle = client.submit(big).await.unwrap();
    let result = client.wait_result(&handle.id, WAIT).await.unwrap();
    assert_eq!(result.status, Status::Rejected, "{result:?}");
    let message = result.error.unwrap().message;
    assert!(message.contains("max_message_bytes"), "{message}");
    // The store is the record of this job too, for a client that lost the reply.
    let store = shoal_submitter::local::open_store(&fleet.config.cache).unwrap();
    let stored = shoal_submitter::local::stored_result(store.as_ref(), &id)
        .await
        .unwrap()
        .expect("the rejected result is in the store");
    assert_eq!(stored.status, Status::Rejected);

    let handle = client
        .submit(fleet.probe(&["exit", "0"]).await)
        .await
        .unwrap();
    let result = client.wait_result(&handle.id, WAIT).await.unwrap();
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    fleet.stop().await;
}

/// Hostile jobs, one after another through one worker: each ends with its
/// precise status and kind, and after each the worker serves a normal job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_jobs_each_get_their_precise_kind_and_the_worker_serves_on() {
    use shoal_schemas::{Input, Location, Source};
    let fleet = Fleet::start(1, &[]);
    let client = fleet.client().await;
    let embedded = Pipeline::new(fleet.config.clone(), fleet.config.limits.ceiling).unwrap();
    let upload = |name: &'static str| {
        let embedded = embedded.clone();
        async move {
            shoal_submitter::local::upload_path(embedded.stager(), &fixture(name))
                .await
                .unwrap()
        }
    };
    let inline = |bytes: &[u8]| {
        use base64::Engine as _;
        Source::new(Location::Inline(
            base64::engine::general_purpose::STANDARD.encode(bytes),
        ))
    };

    let mut cases: Vec<(&str, JobMessage, Status, Option<&str>)> = Vec::new();
    let mut add = |name, job, status, kind| cases.push((name, job, status, kind));
    add(
        "trap",
        fleet.probe(&["trap"]).await,
        Status::Failed,
        Some("trap"),
    );
    let mut job = fleet.probe(&["spin"]).await;
    job.limits.fuel = Some(50_000_000);
    add("endless loop", job, Status::Failed, Some("out_of_fuel"));
    let mut job = fleet.probe(&["spin"]).await;
    job.limits.fuel = Some(1_000_000_000_000); // the ceiling: time runs out first
    job.limits.timeout_ms = Some(300);
    add(
        "endless loop, wall clock",
        job,
        Status::Failed,
        Some("timeout"),
    );
    let mut job = fleet.probe(&["grow"]).await;
    job.limits.memory_bytes = Some(16 << 20);
    add("memory bomb", job, Status::Failed, Some("memory_limit"));
    add(
        "deep recursion",
        fleet.probe(&["recurse"]).await,
        Status::Failed,
        Some("trap"),
    );
    let mut job = fleet.probe(&["files", "/outputs", "50"]).await;
    job.limits.max_output_files = Some(5);
    add(
        "too many outputs",
        job,
        Status::Failed,
        Some("output_limit"),
    );
    let mut job = fleet.probe(&["fill", "/outputs/huge", "1073741824"]).await;
    job.limits.max_output_bytes = Some(1000);
    add("disk filler", job, Status::Failed, Some("output_limit"));
    add(
        "escaping write",
        fleet.probe(&["write", "/outputs/../../etc/x", "y"]).await,
        Status::Failed,
        Some("nonzero_exit"),
    );
    add(
        "imports beyond WASI",
        JobMessage::new(upload("beyond_wasi.wat").await),
        Status::Failed,
        Some("invalid_module"),
    );
    add(
        "garbage module",
        JobMessage::new(inline(b"\0asm\x01\0\0\0garbage")),
        Status::Failed,
        Some("invalid_module"),
    );
    let mut job = fleet.probe(&["args"]).await;
    job.entrypoint = "no_such_export".into();
    add(
        "missing entrypoint",
        job,
        Status::Failed,
        Some("missing_export"),
    );
    let mut job = fleet.probe(&["args"]).await;
    job.inputs = vec![Input {
        source: Source::new(Location::Url("http://127.0.0.1:9/secret".into())),
        path: Some("/inputs/x".into()),
    }];
    add("loopback URL", job, Status::Failed, Some("input_refused"));
    let mut job = fleet.probe(&["args"]).await;
    job.inputs = vec![Input {
        source: Source::new(Location::Sha256("0".repeat(64))),
        path: Some("/inputs/x".into()),
    }];
    add(
        "missing content",
        job,
        Status::Failed,
        Some("input_unavailable"),
    );
    let mut job = fleet.probe(&["args"]).await;
    job.limits.fuel = Some(u64::MAX);
    add(
        "limits above the ceiling",
        job,
        Status::Rejected,
        Some("invalid_job"),
    );

    let tried = cases.len();
    for (name, job, status, kind) in cases {
        let handle = client.submit(job).await.unwrap();
        let result = client.wait_result(&handle.id, WAIT).await.unwrap();
        assert_eq!(
            (
                result.status,
                result.error.as_ref().map(|e| e.kind.as_str())
            ),
            (status, kind),
            "{name}: {result:?}"
        );
        let handle = client
            .submit(fleet.probe(&["exit", "0"]).await)
            .await
            .unwrap();
        let result = client.wait_result(&handle.id, WAIT).await.unwrap();
        assert_eq!(result.status, Status::Succeeded, "after {name}: {result:?}");
    }
    assert_eq!(tried, 14);
    fleet.stop().await;
}
