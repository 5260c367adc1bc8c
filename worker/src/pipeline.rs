//! The job pipeline, top to bottom: validate → stage → execute → publish.
//! Read this first.
//!
//! [`Pipeline`] is one path for every job, wherever it came from and
//! wherever its results go: `submit run --local` runs it with a download
//! folder as the [`Destination`], a fleet worker (`consume`) with the
//! store. What happens to the message afterwards (ack, retry,
//! dead-letter) is `consume`'s business; the pipeline says only whose
//! failure it was, by its types:
//!
//! - `Ok(result)`: the job ended, by its own doing (succeeded, failed,
//!   rejected), and its result is stored;
//! - `Err(InfraError)`: our side failed (a store, an origin, the disk, the
//!   executor): the same job may well succeed on another attempt.
use crate::config::{Config, LimitValues, LimitsSection};
use crate::error::{Error, InfraError, JobError};
use crate::execute::artifacts::Artifacts;
use crate::execute::{Executor, ExecutorConfig, Live, Mount, Outcome, Report, RunLimits, RunSpec};
use crate::job::{Job, Refusal};
use crate::metrics::METRICS;
use crate::paths::GuestPath;
use crate::publish::{self, Collected, Destination, result_of};
use crate::stage::Stager;
use crate::stage::scratch::{Scratch, ScratchPool};
use futures::future::BoxFuture;
use shoal_schemas::{ErrorKind, JobMessage, JobState, Location, ResultMessage, Status};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::Instrument;

/// Where a job's progress goes: the fleet publishes it as state messages,
/// the CLI shows it on its spinner. Awaited in order, so a sink that
/// publishes keeps the states in the order they happened; it must not fail
/// the job, so it returns nothing.
pub type OnState = Arc<dyn Fn(JobState) -> BoxFuture<'static, ()> + Send + Sync>;

/// A sink that drops every state.
pub(crate) fn ignore_states() -> OnState {
    Arc::new(|_| Box::pin(async {}))
}

/// Options of an embedded run that the wire job does not carry.
#[derive(Clone, Default)]
pub struct LocalOptions {
    /// Extra preopens (`submit run --local --mount`), for debugging.
    pub extra_mounts: Vec<Mount>,
    /// Where results go; `shoal-results/<job id>` when absent.
    pub download: Option<PathBuf>,
    /// Progress of the job, for a spinner.
    pub on_state: Option<OnState>,
}

/// How a job reached a fleet worker: facts of the delivery, not the job.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivered {
    /// Delivery attempt, from 1.
    pub attempt: u32,
    /// Seconds from publishing to this worker taking the job, when the
    /// message said when it was published.
    pub queue_secs: Option<f64>,
    /// When it was published, by the submitter's clock, when the message
    /// said; for a local run, when the run began.
    pub submitted: Option<SystemTime>,
    /// When this worker took this attempt.
    pub started: SystemTime,
}

/// Why a pipeline could not be built: the worker does not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store named by `[cache]` could not be opened.
    #[error("opening the store: {0}")]
    Store(#[source] crate::store::OpenError),
    /// The wasmtime engine could not be built from `[executor]`.
    #[error("building the executor: {0}")]
    Executor(#[source] crate::execute::EngineError),
    /// `[staging]` is not usable (a gateway or allow-list that does not parse).
    #[error("setting up staging: {0}")]
    Staging(#[source] crate::stage::SetupError),
    /// The scratch folder could not be made.
    #[error("setting up scratch space: {0}")]
    Scratch(#[source] InfraError),
}

/// The pipeline: validate → stage → execute → publish, for every job.
#[derive(Clone)]
pub struct Pipeline {
    config: Config,
    ceiling: LimitValues,
    executor: Executor,
    stager: Stager,
    scratch: ScratchPool,
    artifacts: Option<Artifacts>,
    worker: String,
    /// Whether the store's create-only writes can be trusted to find an
    /// earlier result (`Pipeline::check_store`): the local folder's can;
    /// an S3 server's once it proved it.
    create_only: Arc<std::sync::atomic::AtomicBool>,
}

impl Pipeline {
    /// Opens the store and builds the executor. `ceiling` is the most a
    /// job may ask for (`LimitValues::UNLIMITED` for local runs).
    pub fn new(config: Config, ceiling: LimitValues) -> Result<Pipeline, StartError> {
        let store = crate::store::open(&config.cache).map_err(StartError::Store)?;
        let executor =
            Executor::new(ExecutorConfig::from_config(&config)).map_err(StartError::Executor)?;
        // On a shared S3 store, native code is loaded only when an HMAC key
        // authenticates it: anyone who can write to the bucket (a submitter
        // uploading inputs, say) could otherwise plant code. A local folder
        // is the user's own.
        let shared = !config.cache.s3_bucket.is_empty();
        let keyed = !config.cache.compiled_key.is_empty();
        if config.cache.compiled_modules && shared && !keyed {
            tracing::warn!(
                "compiled modules are not shared through the store: set cache.compiled_key (the same on every worker) to enable it"
            );
        }
        let artifacts = (config.cache.compiled_modules && (keyed || !shared))
            .then(|| Artifacts::new(store.clone(), &config.cache.compiled_key));
        let stager = Stager::new(store, &config).map_err(StartError::Staging)?;
        let worker = config.worker_name();
        // One folder for every job a worker may hold (its prefetch), and
        // one to spare.
        let held = usize::from(config.amqp.prefetch_for(config.concurrency())).max(1);
        let scratch =
            ScratchPool::new(&config.scratch_parent(), held + 1).map_err(StartError::Scratch)?;
        let create_only = Arc::new(std::sync::atomic::AtomicBool::new(!shared));
        Ok(Pipeline {
            config,
            ceiling,
            executor,
            stager,
            scratch,
            artifacts,
            worker,
            create_only,
        })
    }

    /// Sizes the scratch pool for `jobs` held at once (a worker's prefetch,
    /// which the automatic prefetch changes), and one to spare.
    pub(crate) fn hold(&self, jobs: usize) {
        self.scratch.keep(jobs.max(1) + 1);
    }

    /// The stager (and through it the store), for uploading local files.
    pub fn stager(&self) -> &Stager {
        &self.stager
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The executor, for its cache counters.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// Message and size caps.
    pub fn limits(&self) -> &LimitsSection {
        &self.config.limits
    }

    /// The worker's name in results.
    pub(crate) fn worker_name(&self) -> &str {
        &self.worker
    }

    /// Finds out whether an S3 store honours create-only writes
    /// ([`crate::store::honours_create_only`]): if it does, a job's result
    /// is written create-only and a refusal tells of an earlier result,
    /// which saves a lookup (one request) per job; until then, and if not,
    /// each job looks first. A worker asks at each connection to the
    /// broker until the answer is yes, beside its jobs, for at most 10 s.
    pub async fn check_store(&self) {
        if self.config.cache.s3_bucket.is_empty()
            || self.create_only.load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let probe = crate::store::honours_create_only(self.stager.store().as_ref());
        let Ok(honoured) = tokio::time::timeout(Duration::from_secs(10), probe).await else {
            tracing::info!(
                "the store did not answer whether it honours create-only writes within 10 s; results are looked for first, and it is asked again at the next connection"
            );
            return;
        };
        self.create_only
            .store(honoured, std::sync::atomic::Ordering::Relaxed);
        if honoured {
            tracing::info!("the store honours create-only writes: results need no lookup first");
        } else {
            tracing::info!(
                "the store does not honour create-only writes: each result is looked for first (one request more per job)"
            );
        }
    }

    /// The store as the destination of job `job_id`: the fleet's.
    pub(crate) fn store_destination(&self, job_id: &str) -> Destination {
        Destination::store(
            self.stager.store().clone(),
            job_id,
            self.create_only.load(std::sync::atomic::Ordering::Relaxed),
            self.config.cache.index_jobs,
        )
    }

    /// Validate: a message's bytes as a job, or why they are not one.
    /// The one place a message is judged, for the fleet and local runs alike.
    pub(crate) fn admit(&self, body: &[u8], message_id: Option<&str>) -> Result<Job, Refusal> {
        Job::admit(body, message_id, &self.config.limits, &self.ceiling)
    }

    /// Runs one job to its end in a download folder: `submit run --local`.
    ///
    /// Every end of an accepted job is a result, ours included: a local run
    /// has no queue to retry from, so an input that could not be fetched or
    /// a disk that failed ends as status `error` (kind `input_unavailable`
    /// for a source that could not be reached, `internal` for the rest),
    /// written to `result.json` like any other. An `Err` means not even the
    /// result could be written.
    pub async fn run(
        &self,
        mut msg: JobMessage,
        options: LocalOptions,
    ) -> Result<(ResultMessage, PathBuf), InfraError> {
        let id = msg
            .id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        let dir = download_dir(&id, &options);
        match self.attempt(msg, options).await {
            Ok(done) => Ok(done),
            Err(e) => {
                let result = ResultMessage::failure(
                    &id,
                    Status::Error,
                    e.kind(),
                    e.to_string(),
                    &self.worker,
                );
                Destination::Folder(dir.clone()).failure(&result).await?;
                Ok((result, dir))
            }
        }
    }

    /// One attempt at a job, results written to the download folder. An
    /// `Err` is our side's failure (an origin that did not answer, the
    /// store), which a caller with a queue would retry; everything the job
    /// itself did is in the result.
    pub async fn attempt(
        &self,
        msg: JobMessage,
        options: LocalOptions,
    ) -> Result<(ResultMessage, PathBuf), InfraError> {
        let given_id = msg.id.clone();
        let job = match Job::resolve(msg, &self.config.limits, &self.ceiling)
            .and_then(|job| check_extra_mounts(&job, &options.extra_mounts).map(|()| job))
        {
            Ok(job) => job,
            Err(e) => {
                let id = given_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let mut result =
                    ResultMessage::failure(&id, e.status(), e.kind, e.message, &self.worker);
                let now = SystemTime::now();
                publish::stamp(&mut result, Some(now), now);
                let dir = download_dir(&id, &options);
                Destination::Folder(dir.clone()).failure(&result).await?;
                return Ok((result, dir));
            }
        };
        let dir = download_dir(&job.id, &options);
        let on_state = options.on_state.clone().unwrap_or_else(ignore_states);
        let now = SystemTime::now();
        let delivered = Delivered {
            attempt: 1,
            queue_secs: None,
            submitted: Some(now),
            started: now,
        };
        let destination = Destination::Folder(dir.clone());
        let result = self
            .process(
                job,
                delivered,
                destination,
                &options.extra_mounts,
                &on_state,
                &Live::default(),
            )
            .await?;
        Ok((result, dir))
    }

    /// Stage → execute → publish: one job to its result at `destination`.
    /// `extra_mounts` are `--mount` preopens of a local run (none in a fleet).
    /// `live` cancels the job wherever it is (it ends `cancelled`).
    pub(crate) async fn process(
        &self,
        job: Job,
        delivered: Delivered,
        destination: Destination,
        extra_mounts: &[Mount],
        on_state: &OnState,
        live: &Live,
    ) -> Result<ResultMessage, InfraError> {
        let span = tracing::info_span!("job", job_id = %job.id, attempt = delivered.attempt);
        self.process_job(job, delivered, destination, extra_mounts, on_state, live)
            .instrument(span)
            .await
    }

    async fn process_job(
        &self,
        job: Job,
        delivered: Delivered,
        destination: Destination,
        extra_mounts: &[Mount],
        on_state: &OnState,
        live: &Live,
    ) -> Result<ResultMessage, InfraError> {
        let executed = match self.execute(&job, extra_mounts, on_state, live).await {
            Ok(executed) => executed,
            Err(Error::Job(e)) => {
                let mut result =
                    ResultMessage::failure(&job.id, e.status(), e.kind, e.message, &self.worker);
                result.attempt = delivered.attempt;
                result.usage.durations.queue_secs = delivered.queue_secs;
                publish::stamp(&mut result, delivered.submitted, delivered.started);
                destination.failure(&result).await?;
                return Ok(result);
            }
            Err(Error::Infra(e)) => return Err(e),
        };
        let publish_started = Instant::now();
        let report = executed.report;
        let (collected, locations) = destination.outputs(&job.id, executed.collected).await?;
        let over_limit = collected.iter().any(|c| c.over_limit);
        let outputs = publish::output_results(collected, &locations);
        let mut result = result_of(&job.id, &self.worker, &report, outputs, over_limit);
        let inline = self.config.limits.inline_stream_bytes;
        let stdout = (&report.stdout, report.stdout_truncated);
        let stderr = (&report.stderr, report.stderr_truncated);
        for (name, (bytes, truncated), slot) in [
            ("stdout", stdout, &mut result.stdout),
            ("stderr", stderr, &mut result.stderr),
        ] {
            *slot = Some(
                destination
                    .stream(&job.id, name, bytes, truncated, inline)
                    .await?,
            );
        }
        let durations = &mut result.usage.durations;
        durations.stage_secs = Some(executed.stage_secs);
        durations.publish_secs = Some(publish_started.elapsed().as_secs_f64());
        durations.queue_secs = delivered.queue_secs;
        result.attempt = delivered.attempt;
        publish::stamp(&mut result, delivered.submitted, delivered.started);
        destination.result(&result).await?;
        Ok(result)
    }

    /// Stage, execute and collect: the part every destination shares.
    async fn execute(
        &self,
        job: &Job,
        extra_mounts: &[Mount],
        on_state: &OnState,
        live: &Live,
    ) -> Result<Executed, Error> {
        if live.is_cancelled() {
            return Err(JobError::cancelled("before it started").into());
        }
        on_state(JobState::Staging).await;
        let mut scratch = self.scratch.take().await?;
        let stage_started = Instant::now();
        // A module named by its hash and compiled here already is not
        // fetched again: its bytes could only be the ones compiled.
        let held = match &job.module.location {
            Location::Sha256(hex) if job.imports.is_empty() => {
                sha256_bytes(hex).and_then(|sha| self.executor.compiled(&sha).map(|c| (sha, c)))
            }
            _ => None,
        };
        let deadline = Duration::from_secs(self.config.staging.timeout_secs);
        let staging = self
            .stager
            .stage(job, scratch.path(), held.as_ref().map(|(sha, _)| *sha));
        let staged = tokio::select! {
            staged = tokio::time::timeout(deadline, staging) => staged,
            // Like a timeout, the scratch folder is not reused.
            () = live.cancelled() => return Err(JobError::cancelled("while staging").into()),
        };
        let staged = match staged {
            Ok(staged) => staged?,
            // The scratch folder is not reused: an unpacking thread of the
            // abandoned staging may still write into it.
            Err(_) => {
                return Err(JobError::new(
                    ErrorKind::InputUnavailable,
                    format!(
                        "staging the module and inputs did not finish within {} s (staging.timeout_secs): a source is too slow",
                        deadline.as_secs()
                    ),
                )
                .into());
            }
        };
        let stage_secs = stage_started.elapsed().as_secs_f64();
        // `--mount` preopens come first, in the order given, so the first
        // is fd 3, as with `wasmtime run --dir`; wasi-libc resolves each
        // path by its longest matching preopen, so order never changes
        // which mount a path reaches.
        let mut mounts = extra_mounts.to_vec();
        mounts.extend(staged.mounts);
        let module = staged.module;
        let compiled = held.map(|(_, compiled)| compiled);
        let sha256 = module.sha256;
        let fingerprint = self.executor.fingerprint().to_owned();
        let in_memory = compiled.is_some() || self.executor.is_compiled(&sha256);
        METRICS.cache_lookup("module", in_memory);
        let artifact = match &self.artifacts {
            Some(artifacts) if !in_memory => {
                let found = artifacts.get(&fingerprint, &sha256).await;
                METRICS.cache_lookup("compiled", found.is_some());
                found
            }
            _ => None,
        };
        let spec = RunSpec {
            want_artifact: self.artifacts.is_some() && artifact.is_none(),
            artifact,
            compiled,
            imports: staged.imports,
            module,
            argv0: job.argv0.clone(),
            entrypoint: job.entrypoint.clone(),
            args: job.args.clone(),
            env: job.env.clone(),
            mounts,
            limits: run_limits(&job.limits),
            live: live.clone(),
        };
        on_state(JobState::Running).await;
        let outputs = staged.outputs;
        let limits = job.limits;
        // A job without inputs whose output folders are left empty (a
        // trivial job) needs its scratch folder no longer: it is collected
        // and given back right after the guest, wherever the guest ran (on
        // this task's thread, for a module compiled already), which takes
        // a few system calls. Any other job's outputs are collected on the
        // blocking pool, and its folder lives until they are published.
        let no_inputs = job.inputs.is_empty();
        let (mut report, ran) = self
            .executor
            .run_then(spec, move |report| {
                // Staging finished (every unpacking thread with it); the
                // guest is done unless it was stopped inside a host call.
                if quiet(&report.outcome) {
                    scratch.reusable();
                }
                if no_inputs && outputs.iter().all(|(_, host)| empty_dir(host)) {
                    let collected = publish::collect(&outputs, &limits);
                    // A file written after the look (by a host call of a
                    // guest stopped in it) keeps the folder for publishing.
                    let nothing = collected
                        .as_ref()
                        .is_ok_and(|c| c.iter().all(|m| m.files.is_empty()));
                    if !nothing {
                        return Ok((collected, Some(scratch)));
                    }
                    scratch.give_back_here();
                    Ok((collected, None))
                } else {
                    Err((scratch, outputs))
                }
            })
            .await;
        let (collected, scratch) = match ran {
            Some(Ok((collected, scratch))) => (Some(collected), scratch),
            Some(Err((scratch, outputs))) => {
                let collected =
                    tokio::task::spawn_blocking(move || publish::collect(&outputs, &limits))
                        .await
                        .unwrap_or_else(|e| {
                            Err(InfraError::Disk(crate::error::Cause::new(
                                "collecting the outputs",
                                e,
                            )))
                        });
                (Some(collected), Some(scratch))
            }
            None => (None, None),
        };
        staged.uploads.finish().await;
        on_state(JobState::Publishing).await;
        if let (Some(artifacts), Some(native)) = (&self.artifacts, report.new_artifact.take()) {
            artifacts.put(&fingerprint, &sha256, &native).await;
        }
        tracing::info!(outcome = ?report.outcome, run_secs = report.run.as_secs_f64(), "guest finished");
        if let Some(ours) = executor_fault(&report.outcome) {
            return Err(ours.into());
        }
        // No outputs when the executor's thread died (the report says so).
        let collected = collected.transpose()?.unwrap_or_default();
        Ok(Executed {
            report,
            collected,
            stage_secs,
            _scratch: scratch,
        })
    }
}

/// Whether a folder has nothing in it (a folder that cannot be read is
/// not: the collection that follows says why).
fn empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

fn download_dir(id: &str, options: &LocalOptions) -> PathBuf {
    options
        .download
        .clone()
        .unwrap_or_else(|| Path::new("shoal-results").join(id))
}

/// The executor's own failure, when the run ended in one: ours, not the
/// job's, so it is retried like any failure of our side rather than
/// published as the job's result.
pub(crate) fn executor_fault(outcome: &Outcome) -> Option<InfraError> {
    match outcome {
        Outcome::Internal(why) => Some(InfraError::Executor(why.clone().into())),
        _ => None,
    }
}

/// Whether a run that ended this way left nothing writing into its
/// folders. A timeout or the disk watcher stops the guest wherever it is,
/// and a file operation it started on a blocking thread finishes after it;
/// an internal failure may have stopped anything.
fn quiet(outcome: &Outcome) -> bool {
    !matches!(
        outcome,
        Outcome::TimedOut | Outcome::DiskLimit(_) | Outcome::Internal(_) | Outcome::Cancelled
    )
}

/// Resolved limits in the executor's terms.
pub(crate) fn run_limits(limits: &LimitValues) -> RunLimits {
    RunLimits {
        fuel: limits.fuel,
        memory_bytes: limits.memory_bytes,
        timeout: Duration::from_millis(limits.timeout_ms),
        max_stdout_bytes: limits.max_stdout_bytes,
        max_stderr_bytes: limits.max_stderr_bytes,
        // Twice the output caps, so a guest may rewrite or stage its files,
        // with a floor for jobs whose outputs are tiny.
        max_disk_bytes: limits.max_output_bytes.saturating_mul(2).max(1 << 20),
        max_disk_files: limits.max_output_files.saturating_mul(2).max(1000),
    }
}

/// What a job left behind, before it is published.
struct Executed {
    report: Report,
    collected: Vec<Collected>,
    stage_secs: f64,
    /// The scratch folder lives until the outputs are published (`None`:
    /// given back already, nothing in it was needed).
    _scratch: Option<Scratch>,
}

/// A sha256 in hex (as the schema checks it) as bytes.
fn sha256_bytes(hex: &str) -> Option<[u8; 32]> {
    let mut sha = [0u8; 32];
    hex::decode_to_slice(hex, &mut sha).ok()?;
    Some(sha)
}

/// `--mount` preopens may nest with the job's own mounts and with each
/// other, as `wasmtime run --dir` allows (a writable host folder at `/`
/// beside `/inputs` and `/outputs` is what WASI test suites expect): the
/// guest reaches each path through its longest matching preopen, and
/// wasmtime keeps it inside that preopen's folder whatever `..` or symlinks
/// it tries. Two mounts at the same path are refused, since one would
/// silently hide the other. The mount at `/inputs` itself is made only when
/// the job has inputs; a `--mount` there would shadow them.
fn check_extra_mounts(job: &Job, extra: &[Mount]) -> Result<(), JobError> {
    let mut taken: Vec<(GuestPath, String)> = job
        .outputs
        .iter()
        .map(|o| (o.path.clone(), format!("output {:?}", o.name)))
        .collect();
    if !job.inputs.is_empty() {
        taken.push((GuestPath::inputs_root(), "the job's inputs".to_owned()));
    }
    for mount in extra {
        let path = GuestPath::parse(&mount.guest)
            .map_err(|e| JobError::invalid(format!("--mount: {e}")))?;
        if let Some((_, other)) = taken.iter().find(|(t, _)| *t == path) {
            return Err(JobError::invalid(format!(
                "--mount: {path} is already the mount of {other}"
            )));
        }
        if !job.inputs.is_empty() && path.starts_with(&GuestPath::inputs_root()) {
            return Err(JobError::invalid(format!(
                "--mount: {path} is inside /inputs, where the job's inputs are mounted read-only"
            )));
        }
        taken.push((path, format!("--mount {}", mount.host.display())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_that_cannot_be_built_stops_the_start_and_keeps_the_cause() {
        use std::error::Error as _;
        let cache = tempfile::tempdir().unwrap();
        let mut config = Config::load_from(None, std::iter::empty()).unwrap();
        config.cache.dir = cache.path().to_owned();
        config.executor.max_wasm_stack_bytes = 0;
        let Err(e) = Pipeline::new(config, LimitValues::UNLIMITED) else {
            panic!("an engine without a stack was built")
        };
        assert!(matches!(e, StartError::Executor(_)), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with("building the executor: creating the wasmtime engine: "),
            "{text}"
        );
        let engine = e.source().expect("the engine error is the source");
        let wasmtime = engine.source().expect("wasmtime's error is kept");
        assert!(text.ends_with(&wasmtime.to_string()), "{text}");
    }
}
