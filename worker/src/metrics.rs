//! Prometheus metrics and the worker's HTTP endpoint: `/metrics`,
//! `/healthz` (the process is up) and `/readyz` (connected to the broker
//! and the store answers).
//!
//! One process-wide registry: a worker is one process, and every stage
//! records into it without threading a handle through every call. Names
//! follow Prometheus conventions (`shoal_` prefix, base units, `_total` for
//! counters); dashboards/ and the alert rules query exactly these (a test
//! checks that every name they use exists here).
use object_store::{ObjectStore, ObjectStoreExt};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use shoal_schemas::ResultMessage;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every metric the worker exports.
pub struct Metrics {
    registry: Registry,
    /// Jobs finished, by `status` and `error_kind` ("" when none).
    pub jobs: IntCounterVec,
    /// Time per stage of a job: queue, stage, compile, run, publish.
    pub stage_seconds: HistogramVec,
    /// Fuel consumed by guests.
    pub fuel: IntCounter,
    /// Peak linear memory of each job.
    pub peak_memory: Histogram,
    /// Bytes staged, by source kind (sha256, url, cid, s3, inline).
    pub staged_bytes: IntCounterVec,
    /// Bytes of outputs, stdout and stderr published.
    pub published_bytes: IntCounter,
    /// Cache lookups by `kind` (module, compiled, url, cid) and `result` (hit, miss).
    pub cache: IntCounterVec,
    /// Jobs this worker holds now: staging, waiting for a guest slot,
    /// running, publishing (up to its prefetch).
    pub in_flight: IntGauge,
    /// Guests running now (at most the concurrency).
    pub guests_running: IntGauge,
    /// Jobs this worker runs at once.
    pub concurrency: IntGauge,
    /// Jobs the broker hands this worker at once (its `basic.qos`), which
    /// with `amqp.prefetch` 0 follows the jobs' pace.
    pub prefetch: IntGauge,
    /// Ack frames sent for jobs' deliveries: fewer than the jobs, by the
    /// batching of `multiple` acks under load.
    pub ack_frames: IntCounter,
    /// Infrastructure failures sent back to the queue for another attempt.
    pub retries: IntCounter,
    /// Messages dead-lettered, by `reason`.
    pub dead_letters: IntCounterVec,
    /// Broker connections lost and re-established.
    pub reconnects: IntCounter,
    /// 1 while consuming from the broker.
    pub broker_connected: IntGauge,
    /// 1, labelled with the `argument` (`x-queue-type`, `durable`, …), while
    /// a queue or exchange exists on the broker with other arguments than
    /// the workers declare, so no worker can consume.
    pub topology_mismatch: IntGaugeVec,
    /// What `/readyz` says of such a mismatch, while it lasts.
    mismatch: std::sync::Mutex<Option<String>>,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Seconds: from a millisecond job to an hour-long one.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 900.0, 3600.0,
];

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        // Names and labels are constants, so building them cannot fail;
        // a failure here is a programming error caught by the first test.
        fn reg<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: T) -> T {
            registry
                .register(Box::new(m.clone()))
                .expect("metric registers");
            m
        }
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let counter = |name: &str, help: &str| {
            reg(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            reg(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let jobs = counter_vec(
            "shoal_jobs_total",
            "Jobs finished, by result status and error kind.",
            &["status", "error_kind"],
        );
        let stage_seconds = reg(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "shoal_job_stage_duration_seconds",
                    "Time per stage of a job: queue (publish to pickup), stage, compile, run, publish.",
                )
                .buckets(SECONDS.to_vec()),
                &["stage"],
            )
            .expect("valid metric"),
        );
        let fuel = counter(
            "shoal_fuel_consumed_total",
            "Fuel units consumed by guests.",
        );
        let peak_memory = reg(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "shoal_job_peak_memory_bytes",
                    "Largest linear memory each job reached.",
                )
                .buckets(prometheus::exponential_buckets(65536.0, 4.0, 10).expect("buckets")),
            )
            .expect("valid metric"),
        );
        let staged_bytes = counter_vec(
            "shoal_staged_bytes_total",
            "Bytes of modules and inputs staged, by source kind.",
            &["source"],
        );
        let published_bytes = counter(
            "shoal_published_bytes_total",
            "Bytes of outputs, stdout and stderr published.",
        );
        let cache = counter_vec(
            "shoal_cache_requests_total",
            "Cache lookups: module (compiled, in memory), compiled (artifact in the store), url, cid; hit or miss.",
            &["kind", "result"],
        );
        let in_flight = gauge(
            "shoal_jobs_in_flight",
            "Jobs this worker holds now: staging, waiting for a guest slot, running, publishing (at most its prefetch).",
        );
        let guests_running = gauge(
            "shoal_guests_running",
            "Guests running now (at most shoal_worker_concurrency).",
        );
        let prefetch = gauge(
            "shoal_prefetch",
            "Jobs the broker hands this worker at once (amqp.prefetch; with 0, set by the jobs' pace).",
        );
        let concurrency = gauge(
            "shoal_worker_concurrency",
            "Guests this worker runs at once (worker.concurrency).",
        );
        let ack_frames = counter(
            "shoal_ack_frames_total",
            "Ack frames sent to the broker for deliveries; one with `multiple` settles several jobs, so under load fewer than the jobs.",
        );
        let retries = counter(
            "shoal_job_retries_total",
            "Infrastructure failures sent back to the queue for another attempt.",
        );
        let dead_letters = counter_vec(
            "shoal_dead_letters_total",
            "Messages dead-lettered, by reason.",
            &["reason"],
        );
        let reconnects = counter(
            "shoal_broker_reconnects_total",
            "Broker connections lost and re-established.",
        );
        let broker_connected = gauge(
            "shoal_broker_connected",
            "1 while the worker is connected to the broker and consuming.",
        );
        let topology_mismatch = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "shoal_topology_mismatch",
                    "1 while a queue or exchange exists with another value of this argument than the workers declare (no worker can consume; see docs/PROTOCOL.md).",
                ),
                &["argument"],
            )
            .expect("valid metric"),
        );
        Metrics {
            topology_mismatch,
            mismatch: std::sync::Mutex::new(None),
            registry,
            jobs,
            stage_seconds,
            fuel,
            peak_memory,
            staged_bytes,
            published_bytes,
            cache,
            in_flight,
            guests_running,
            concurrency,
            prefetch,
            ack_frames,
            retries,
            dead_letters,
            reconnects,
            broker_connected,
        }
    }

    /// Records a finished job from its result: status, stages, fuel, memory, bytes.
    pub(crate) fn job_finished(&self, result: &ResultMessage) {
        let kind = result.error.as_ref().map(|e| e.kind.as_str()).unwrap_or("");
        self.jobs
            .with_label_values(&[result.status.as_str(), kind])
            .inc();
        let d = &result.usage.durations;
        for (stage, secs) in [
            ("queue", d.queue_secs),
            ("stage", d.stage_secs),
            ("compile", d.compile_secs),
            ("run", d.run_secs),
            ("publish", d.publish_secs),
        ] {
            if let Some(secs) = secs {
                self.stage_seconds
                    .with_label_values(&[stage])
                    .observe(secs.max(0.0));
            }
        }
        if let Some(fuel) = result.usage.fuel_consumed {
            self.fuel.inc_by(fuel);
        }
        if let Some(peak) = result.usage.peak_memory_bytes {
            self.peak_memory.observe(peak as f64);
        }
        let streams: u64 = [&result.stdout, &result.stderr]
            .into_iter()
            .flatten()
            .map(|s| s.size)
            .sum();
        let outputs: u64 = result.outputs.iter().map(|o| o.bytes).sum();
        self.published_bytes.inc_by(streams + outputs);
    }

    /// A cache lookup of `kind`.
    pub(crate) fn cache_lookup(&self, kind: &str, hit: bool) {
        self.cache
            .with_label_values(&[kind, if hit { "hit" } else { "miss" }])
            .inc();
    }

    /// Records that declaring the topology failed on `argument`; `why`
    /// is what `/readyz` answers until a declaration succeeds.
    pub(crate) fn topology_mismatch(&self, argument: &str, why: String) {
        self.topology_mismatch.reset();
        self.topology_mismatch.with_label_values(&[argument]).set(1);
        *self.mismatch.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// The topology was declared: no mismatch (any more).
    pub(crate) fn topology_declared(&self) {
        self.topology_mismatch.reset();
        *self.mismatch.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn mismatch(&self) -> Option<String> {
        self.mismatch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every metric family's name, whether or not it has samples yet
    /// (histograms are exported as `<name>_bucket`, `_sum` and `_count`).
    pub fn names(&self) -> Vec<String> {
        let collectors: [&dyn prometheus::core::Collector; 17] = [
            &self.jobs,
            &self.stage_seconds,
            &self.fuel,
            &self.peak_memory,
            &self.staged_bytes,
            &self.published_bytes,
            &self.cache,
            &self.in_flight,
            &self.guests_running,
            &self.concurrency,
            &self.prefetch,
            &self.ack_frames,
            &self.retries,
            &self.dead_letters,
            &self.reconnects,
            &self.broker_connected,
            &self.topology_mismatch,
        ];
        collectors
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| d.fq_name.clone())
            .collect()
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the process
/// ends. Returns the bound address (`addr` may ask for port 0).
pub async fn serve(
    addr: SocketAddr,
    store: Arc<dyn ObjectStore>,
) -> Result<SocketAddr, std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "metrics and health endpoint listening");
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                // Out of file descriptors, say: do not spin on the error.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let store = store.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(socket, store.as_ref()).await {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            });
        }
    });
    Ok(bound)
}

/// One HTTP/1.1 request, then close: Prometheus and health checkers need no more.
async fn answer(
    mut socket: tokio::net::TcpStream,
    store: &dyn ObjectStore,
) -> Result<(), std::io::Error> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("request timed out"))??;
        if n == 0 || head.len() > 16 << 10 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            METRICS.render(),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", "/readyz") => match readiness(store).await {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_owned()),
            Err(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}

/// Why `/readyz` says not ready.
#[derive(Debug, thiserror::Error)]
enum NotReady {
    /// Declaring the topology failed; the words recorded by
    /// [`Metrics::topology_mismatch`].
    #[error("{0}")]
    Mismatch(String),
    #[error("not connected to the broker")]
    Broker,
    #[error("the store does not answer: {0}")]
    Store(#[source] object_store::Error),
    #[error("the store did not answer within 5 s")]
    StoreTimeout,
}

/// Ready: consuming from the broker, and the store answers a read.
async fn readiness(store: &dyn ObjectStore) -> Result<(), NotReady> {
    if METRICS.broker_connected.get() != 1 {
        return Err(match METRICS.mismatch() {
            Some(why) => NotReady::Mismatch(why),
            None => NotReady::Broker,
        });
    }
    let probe = crate::store::keys::health();
    match tokio::time::timeout(std::time::Duration::from_secs(5), store.head(&probe)).await {
        Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. })) => Ok(()),
        Ok(Err(e)) => Err(NotReady::Store(e)),
        Err(_) => Err(NotReady::StoreTimeout),
    }
}
