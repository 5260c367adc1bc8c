//! Execute (step 3 of a job): run one WASI preview1 module with exactly what the job gives it.
//!
//! This is the only module that imports wasmtime; no wasmtime type leaves it.
//! It takes module bytes, host directories to mount and limits, and returns a
//! [`Report`] whose [`Outcome`] says how the guest ended. What the guest did
//! (exit codes, traps, running out of fuel, memory or time) is an outcome,
//! never an `Err`: it is the job's result, not our failure.
//!
//! It deliberately does not fetch anything, look at the job message or decide
//! what a result means for the queue. [`artifacts`] (no wasmtime in it)
//! shares the engine's compiled native code through the store.
//!
//! Threads: compilation and guest execution run on tokio's blocking pool, so
//! they never stall the async runtime. Each blocking thread keeps a small
//! current-thread runtime of its own, on which the guest runs through
//! wasmtime's async API; that lets the wall-clock limit cut a guest that is
//! blocked in a host call (a long `poll_oneoff` sleep), which epoch
//! interruption alone cannot reach.
pub mod artifacts;
mod capture;
mod live;

pub use live::Live;

use bytes::Bytes;
use capture::CappedPipe;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolConcurrencyLimitError, PoolingAllocationConfig, ResourceLimiter, Store, Trap,
    UpdateDeadline, WasmBacktrace,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// Engine-wide settings (config section `executor`).
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Meter fuel. Off only to measure its cost: without it a job's fuel limit is not enforced.
    pub fuel_metering: bool,
    /// Compiled modules kept in memory, by sha256.
    pub module_cache_entries: usize,
    /// Period of the one epoch ticker; the wall-clock limit is enforced to this precision.
    pub epoch_tick: Duration,
    /// Native stack a guest may use before it traps with a stack overflow.
    pub max_wasm_stack_bytes: usize,
    /// Largest table a guest may grow to, in elements.
    pub max_table_elements: usize,
    /// Guests' stores (jobs) the pooling allocator has room for at once;
    /// 0 allocates each guest's memories, tables and stack on demand.
    pub pool_stores: usize,
    /// How long a job waits for a store of the pool before it ends as
    /// [`Outcome::Internal`] (the pool is full), so a worker whose pool is
    /// held by guests stuck past their deadlines hands its jobs back to
    /// the queue instead of holding them.
    pub slot_wait: Duration,
    /// Guests run at once (`worker.concurrency`); a job waits for one of
    /// these slots only to run its guest, not while it stages or publishes.
    /// 0: no bound (embedded runs, benchmarks).
    pub guests: usize,
}

impl ExecutorConfig {
    /// The executor's settings from `[executor]` (and `worker.concurrency`,
    /// which sizes the pool).
    pub(crate) fn from_config(config: &crate::config::Config) -> ExecutorConfig {
        let executor = &config.executor;
        ExecutorConfig {
            fuel_metering: executor.fuel_metering,
            module_cache_entries: executor.module_cache_entries,
            epoch_tick: Duration::from_millis(executor.epoch_tick_ms),
            max_wasm_stack_bytes: executor.max_wasm_stack_bytes,
            max_table_elements: executor.max_table_elements,
            // Twice: when a worker loses the broker, the guests of the
            // jobs it gives up run on to their deadlines, keeping their
            // stores, while the next session's jobs start (they wait for
            // a slot beyond this; see Executor::run_then).
            pool_stores: match (executor.pooling, executor.pool_stores) {
                (false, _) => 0,
                (true, 0) => 2 * config.concurrency(),
                (true, n) => n,
            },
            slot_wait: Duration::from_millis(executor.slot_wait_ms),
            guests: config.concurrency(),
        }
    }
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            fuel_metering: true,
            module_cache_entries: 64,
            epoch_tick: Duration::from_millis(10),
            max_wasm_stack_bytes: 1 << 20,
            max_table_elements: 100_000,
            pool_stores: 0,
            slot_wait: Duration::from_secs(60),
            guests: 0,
        }
    }
}

/// A host directory preopened in the guest.
#[derive(Debug, Clone)]
pub struct Mount {
    /// Host directory.
    pub host: PathBuf,
    /// Absolute guest path.
    pub guest: String,
    /// Whether the guest may write (outputs) or only read (inputs).
    pub writable: bool,
}

/// Limits of one run, already resolved against the worker's defaults and ceilings.
#[derive(Debug, Clone)]
pub struct RunLimits {
    /// Fuel units; ignored when metering is off.
    pub fuel: u64,
    /// Ceiling of each linear memory, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock limit of instantiation plus the call.
    pub timeout: Duration,
    /// Bytes of stdout kept.
    pub max_stdout_bytes: u64,
    /// Bytes of stderr kept.
    pub max_stderr_bytes: u64,
    /// Most bytes the writable mounts may hold at any moment of the run.
    pub max_disk_bytes: u64,
    /// Most files and folders the writable mounts may hold during the run.
    pub max_disk_files: u64,
}

/// Module bytes with their hash, which keys the compiled-module cache.
#[derive(Debug, Clone)]
pub struct ModuleBytes {
    /// SHA-256 of `bytes`.
    pub sha256: [u8; 32],
    /// A binary module or `.wat` text.
    pub bytes: Bytes,
}

/// A module compiled and linked in this executor's memory, taken from its
/// cache by [`Executor::compiled`]. A job holds it from staging to running,
/// so the cache evicting the module meanwhile cannot leave the job without
/// it, and the job need not fetch the module's bytes at all.
#[derive(Clone)]
pub struct Compiled(InstancePre<GuestState>);

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compiled")
    }
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The module. Its `bytes` may be empty when `compiled` is given.
    pub module: ModuleBytes,
    /// The module already compiled here ([`Executor::compiled`]); used
    /// instead of `module.bytes` and any artifact.
    pub compiled: Option<Compiled>,
    /// argv\[0\].
    pub argv0: String,
    /// Exported function to call.
    pub entrypoint: String,
    /// argv\[1..\].
    pub args: Vec<String>,
    /// The guest's whole environment.
    pub env: Vec<(String, String)>,
    /// Preopened directories; nothing else is visible.
    pub mounts: Vec<Mount>,
    /// Limits.
    pub limits: RunLimits,
    /// This module compiled by another worker (`Module::serialize`), from
    /// the fleet's cache. The caller vouches for it: it must come from a
    /// worker of this fleet, which `stage::compiled` checks with its tag.
    pub artifact: Option<Bytes>,
    /// Serialize the module when this run has to compile it, so the caller
    /// can share it with the fleet ([`Report::new_artifact`]).
    pub want_artifact: bool,
    /// Import modules, instantiated in this order in the job's store and
    /// registered under their names before the entry module.
    pub imports: Vec<(String, ModuleBytes)>,
    /// Cancels the run, and shows its output so far to followers.
    pub live: Live,
}

/// How the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `proc_exit(code)`, or 0 when the entrypoint returned.
    Exited(i32),
    /// A trap other than the limits below; the message carries a backtrace summary.
    Trapped(String),
    /// Fuel ran out.
    OutOfFuel,
    /// Memory or a table would have grown past its limit.
    MemoryLimit(String),
    /// The wall-clock limit passed.
    TimedOut,
    /// The guest filled its writable mounts past the run's disk limit.
    DiskLimit(String),
    /// Not a module, or it imports something nothing provides.
    InvalidModule(String),
    /// The entrypoint is not an exported `() -> ()` function.
    MissingExport(String),
    /// An operator cancelled the job ([`Live::cancel`]) before or while
    /// the guest ran.
    Cancelled,
    /// Our side failed, not the job: the instance pool was full, a mount
    /// could not be opened, the guest's thread panicked or its runtime did
    /// not start, fuel could not be set. The pipeline retries the job
    /// (another attempt, maybe another worker) instead of publishing this.
    Internal(String),
}

/// What one run produced.
#[derive(Debug, Clone)]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// Captured stdout, at most the cap.
    pub stdout: Bytes,
    /// The guest wrote more stdout than the cap.
    pub stdout_truncated: bool,
    /// Captured stderr, at most the cap.
    pub stderr: Bytes,
    /// The guest wrote more stderr than the cap.
    pub stderr_truncated: bool,
    /// Fuel consumed, when metered.
    pub fuel_consumed: Option<u64>,
    /// Largest linear memory reached.
    pub peak_memory_bytes: u64,
    /// Time to compile or fetch the compiled module.
    pub compile: Duration,
    /// Time to instantiate and run.
    pub run: Duration,
    /// The compiled module came from the in-memory cache or from an artifact.
    pub cache_hit: bool,
    /// The compiled module came from [`RunSpec::artifact`].
    pub from_artifact: bool,
    /// The module this run compiled, serialized, when [`RunSpec::want_artifact`].
    pub new_artifact: Option<Bytes>,
}

impl Report {
    /// The report of a run that ended before the guest ran.
    pub fn early(outcome: Outcome, compile: Duration, cache_hit: bool) -> Report {
        Report {
            outcome,
            stdout: Bytes::new(),
            stdout_truncated: false,
            stderr: Bytes::new(),
            stderr_truncated: false,
            fuel_consumed: None,
            peak_memory_bytes: 0,
            compile,
            run: Duration::ZERO,
            cache_hit,
            from_artifact: false,
            new_artifact: None,
        }
    }
}

/// What a run instantiates.
enum Prepared {
    /// The entry module, linked against WASI once and cached.
    Pre(InstancePre<GuestState>),
    /// Import modules first, then the entry module, linked per job (the
    /// imports are instances in the job's own store).
    Linked {
        main: Module,
        imports: Vec<(String, Module)>,
    },
}

/// How `instance_pre` found the module.
struct Found {
    pre: Prepared,
    cache_hit: bool,
    from_artifact: bool,
    new_artifact: Option<Bytes>,
}

/// Counters of the compiled-module cache, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Runs that found their module compiled already.
    pub hits: u64,
    /// Runs that compiled their module.
    pub misses: u64,
}

struct GuestState {
    wasi: WasiP1Ctx,
    limiter: JobLimiter,
}

/// Enforces the memory and table limits and remembers why it refused, so
/// that the resulting trap is reported as `memory_limit`, not a plain trap.
struct JobLimiter {
    memory_bytes: u64,
    table_elements: usize,
    peak_memory: u64,
    total_memory: u64,
    exceeded: Option<String>,
}

impl ResourceLimiter for JobLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The limit is the job's, across every memory of every instance
        // (multi-memory, import modules), not per memory.
        let total = self
            .total_memory
            .saturating_add((desired as u64).saturating_sub(current as u64));
        if total > self.memory_bytes {
            let msg = format!(
                "linear memory would grow to {total} bytes in all, past the job's limit of {} bytes",
                self.memory_bytes
            );
            self.exceeded = Some(msg.clone());
            wasmtime::bail!(msg);
        }
        self.total_memory = total;
        self.peak_memory = self.peak_memory.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            let msg = format!(
                "a table would grow to {desired} elements, past the limit of {}",
                self.table_elements
            );
            self.exceeded = Some(msg.clone());
            wasmtime::bail!(msg);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        // The entry module plus import modules; nothing a job does creates more.
        STORE_INSTANCES
    }

    fn tables(&self) -> usize {
        STORE_TABLES
    }

    fn memories(&self) -> usize {
        STORE_MEMORIES
    }
}

/// What one job's store may hold, over its entry module and import modules.
const STORE_INSTANCES: usize = 64;
const STORE_TABLES: usize = 64;
const STORE_MEMORIES: usize = 16;

/// The pooling allocator, with room for `pool_stores` stores each holding
/// as much as [`JobLimiter`] lets one job have, so a job the limiter
/// accepts never finds the pool short while at most that many run (and
/// `run_then` never lets more run). The per-module limits are checked when
/// a module is compiled: a table declared larger than
/// `max_table_elements`, or an instance over 8 MiB of VM state, is then
/// `invalid_module` rather than `memory_limit`.
///
/// Why pool: a job's memories, tables and fiber stack are then slots
/// reused from job to job instead of fresh mappings. On demand, every job
/// ends in `munmap`s, whose TLB shootdowns interrupt the other cores (a VM
/// exit each on a virtual machine): the fleet benchmark measured a fifth
/// of a trivial job's CPU there. A slot is zeroed before its next job
/// (wasmtime's guarantee: no job sees another's memory); the first MiB by
/// `memset`, the rest returned to the kernel. The pool reserves address
/// space, not memory: 4 GiB per memory slot.
fn pool(config: &ExecutorConfig) -> PoolingAllocationConfig {
    let stores = u32::try_from(config.pool_stores).unwrap_or(u32::MAX);
    let per_store = |n: usize| stores.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(per_store(STORE_INSTANCES))
        // A store's GC heap (wasm GC, exceptions) takes a memory slot too,
        // unseen by the limiter's memory count.
        .total_memories(per_store(STORE_MEMORIES + 1))
        .total_gc_heaps(stores)
        .total_tables(per_store(STORE_TABLES))
        .total_stacks(stores)
        .max_tables_per_module(STORE_TABLES as u32)
        .max_memories_per_module(STORE_MEMORIES as u32)
        .max_core_instance_size(8 << 20)
        .table_elements(config.max_table_elements)
        // A 32-bit memory's largest size; the job's limit is the limiter's.
        .max_memory_size(1 << 32)
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(64 << 10)
        .async_stack_keep_resident(64 << 10);
    pool
}

struct Inner {
    engine: Engine,
    fingerprint: String,
    linker: Linker<GuestState>,
    modules: Mutex<LruCache<[u8; 32], InstancePre<GuestState>>>,
    /// Compiled modules of jobs with import modules (linked per job).
    raw: Mutex<LruCache<[u8; 32], Module>>,
    config: ExecutorConfig,
    hits: AtomicU64,
    misses: AtomicU64,
    stop_ticker: Arc<AtomicBool>,
    /// Permits for the pool's stores (`pool_stores`), when pooling.
    stores: Option<Arc<tokio::sync::Semaphore>>,
    /// Guest slots (`guests`), when bounded.
    guests: Option<Arc<tokio::sync::Semaphore>>,
    /// Guests running on the async runtime's threads now ([`Inline`]).
    inline: AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// Runs jobs' modules. Cheap to clone; clones share the engine and module cache.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

/// The engine could not be built: the worker's configuration or host is at
/// fault, never a job. wasmtime's own errors are kept as boxed sources
/// (`wasmtime::Error` does not implement `std::error::Error`, and no
/// wasmtime type leaves this module).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the `[executor]` settings.
    #[error("creating the wasmtime engine: {0}")]
    Engine(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// WASI preview1 could not be added to the linker.
    #[error("adding WASI to the linker: {0}")]
    Wasi(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The epoch ticker's thread could not be started.
    #[error("starting the epoch ticker: {0}")]
    Ticker(#[source] std::io::Error),
}

impl Executor {
    /// Builds the engine, the WASI linker and the epoch ticker.
    pub fn new(config: ExecutorConfig) -> Result<Executor, EngineError> {
        let mut wasm = Config::new();
        wasm.consume_fuel(config.fuel_metering)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack_bytes);
        if config.pool_stores > 0 {
            // Stacks are reused too; a host call's leftovers on them are
            // out of a guest's reach, but zeroing them is cheap insurance.
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(&config)))
                .async_stack_zeroing(true);
        }
        let engine = Engine::new(&wasm).map_err(|e| EngineError::Engine(e.into()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut GuestState| &mut s.wasi)
            .map_err(|e| EngineError::Wasi(e.into()))?;

        // One ticker for the whole engine, not a thread per job: each job's
        // store counts ticks to its own deadline.
        let stop_ticker = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop_ticker.clone();
            let tick = config.epoch_tick;
            std::thread::Builder::new()
                .name("shoal-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(EngineError::Ticker)?;
        }
        let fingerprint = fingerprint(&engine);
        let entries =
            NonZeroUsize::new(config.module_cache_entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        let stores = (config.pool_stores > 0)
            .then(|| Arc::new(tokio::sync::Semaphore::new(config.pool_stores)));
        let guests =
            (config.guests > 0).then(|| Arc::new(tokio::sync::Semaphore::new(config.guests)));
        Ok(Executor {
            inner: Arc::new(Inner {
                engine,
                fingerprint,
                linker,
                modules: Mutex::new(LruCache::new(entries)),
                raw: Mutex::new(LruCache::new(entries)),
                config,
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                stop_ticker,
                stores,
                guests,
                inline: AtomicUsize::new(0),
            }),
        })
    }

    /// Compiled-module cache counters.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
        }
    }

    /// Identifies what compiled code this engine can load: the wasmtime
    /// version and every setting that changes generated code. Artifacts are
    /// keyed by it, so workers with a different build or configuration never
    /// see each other's artifacts (wasmtime would refuse them anyway).
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// Whether `sha256`'s module is compiled in memory (without touching the LRU order).
    pub(crate) fn is_compiled(&self, sha256: &[u8; 32]) -> bool {
        self.inner
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(sha256)
    }

    /// `sha256`'s module if it is compiled in memory (a use: it becomes the
    /// most recently used entry). Only for modules run without import
    /// modules, which are linked per job.
    pub fn compiled(&self, sha256: &[u8; 32]) -> Option<Compiled> {
        self.inner
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sha256)
            .cloned()
            .map(Compiled)
    }

    /// Runs one job's module on the blocking pool.
    pub async fn run(&self, spec: RunSpec) -> Report {
        self.run_then(spec, |_| ()).await.0
    }

    /// Runs one job's module on the blocking pool, then `then` on the same
    /// thread: blocking work that follows the run (collecting outputs) costs
    /// no second hop between threads, which for a short job is a real share
    /// of its time. `None` when the thread failed before `then` ran.
    pub(crate) async fn run_then<T, F>(&self, spec: RunSpec, then: F) -> (Report, Option<T>)
    where
        F: FnOnce(&Report) -> T + Send + 'static,
        T: Send + 'static,
    {
        let inner = self.inner.clone();
        // A guest slot first, waited for as long as the guests before it
        // run: a prefetched job queues here, staged and ready. Held here, on
        // the async side, not by the guest's thread: a job given up (its
        // worker lost the broker) frees its slot at once for the next
        // session's jobs, while its guest runs on to its deadline in the
        // pool's spare stores (`pool_stores` is twice the slots for that).
        // A job cancelled while it waits for its slot never starts.
        let live = spec.live.clone();
        let guest = match &self.inner.guests {
            Some(guests) => tokio::select! {
                permit = guests.clone().acquire_owned() => permit.ok(),
                () = live.cancelled() => {
                    return (Report::early(Outcome::Cancelled, Duration::ZERO, false), None);
                }
            },
            None => None,
        };
        // A store for every job the pool has room for: a guest whose job
        // was cancelled (its worker lost the broker) runs on to its own
        // deadline and keeps its store, and the jobs after it wait for it
        // here rather than find the pool full.
        let slot = match &self.inner.stores {
            // A free store is taken at once, without arming a timer.
            Some(stores) if stores.available_permits() > 0 => {
                stores.clone().try_acquire_owned().ok()
            }
            Some(stores) => {
                let wait = self.inner.config.slot_wait;
                match tokio::time::timeout(wait, stores.clone().acquire_owned()).await {
                    Ok(permit) => permit.ok(),
                    Err(_) => {
                        let full = format!(
                            "the worker's instance pool is full: no store of {} free within {} ms (executor.slot_wait_ms)",
                            self.inner.config.pool_stores,
                            wait.as_millis()
                        );
                        return (
                            Report::early(Outcome::Internal(full), Duration::ZERO, false),
                            None,
                        );
                    }
                }
            }
            None => None,
        };
        // A module compiled in memory already runs here, on this task's
        // thread, while the runtime has a thread to spare (`Inline`): the
        // hop to the blocking pool and back was most of a trivial job's
        // time in the executor (measured: 130 µs of 175, for a guest that
        // ran 40). The guest yields at every epoch tick, so one that spins
        // gives the thread back every `executor.epoch_tick_ms`. `then` runs
        // here too, and must be light (the pipeline's collects only empty
        // output folders here). Otherwise, and for a module to compile or
        // load (which can take seconds), the guest runs on the blocking
        // pool with `then` after it on the same thread. A job dropped
        // while its guest runs here (its session lost the broker) drops
        // the guest with it; on the blocking pool the guest runs on to its
        // own deadline in a spare store.
        if let Some(inline) = Inline::reserve(&inner.inline)
            && let Some(found) = inner.cached(&spec)
        {
            let running = GuestRunning::start();
            let run = std::panic::AssertUnwindSafe(inner.run_found(found, spec, Duration::ZERO));
            let ran = futures::FutureExt::catch_unwind(run).await;
            drop(inline);
            drop(running);
            drop(slot);
            drop(guest);
            let ran = ran.and_then(|report| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| then(&report)))
                    .map(|after| (report, after))
            });
            return match ran {
                Ok((report, after)) => (report, Some(after)),
                // As when a guest's thread dies: our failure, retried.
                Err(panic) => (
                    Report::early(
                        Outcome::Internal(format!(
                            "the guest's run panicked: {}",
                            crate::error::panic_text(&*panic)
                        )),
                        Duration::ZERO,
                        false,
                    ),
                    None,
                ),
            };
        }
        let ran = tokio::task::spawn_blocking(move || {
            let running = GuestRunning::start();
            let report = inner.run_blocking(spec);
            drop(running);
            drop(slot);
            let after = then(&report);
            (report, after)
        })
        .await;
        drop(guest);
        match ran {
            Ok((report, after)) => (report, Some(after)),
            Err(e) => (
                Report::early(
                    Outcome::Internal(format!("executor thread failed: {e}")),
                    Duration::ZERO,
                    false,
                ),
                None,
            ),
        }
    }

    /// Runs one job's module on the calling thread, which must not be an
    /// async runtime's worker thread (benchmarks and blocking callers).
    pub fn run_blocking(&self, spec: RunSpec) -> Report {
        self.inner.run_blocking(spec)
    }
}

/// `shoal_guests_running` up while a guest runs, down when it ends, also
/// when its thread panics.
struct GuestRunning;

impl GuestRunning {
    fn start() -> GuestRunning {
        crate::metrics::METRICS.guests_running.inc();
        GuestRunning
    }
}

impl Drop for GuestRunning {
    fn drop(&mut self) {
        crate::metrics::METRICS.guests_running.dec();
    }
}

thread_local! {
    static GUEST_RUNTIME: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .ok();
}

/// A guest running on an async runtime's thread, counted while it runs.
/// At most one fewer than the runtime's threads run so: a guest yields its
/// thread only every epoch tick, and a runtime whose every thread ran one
/// would poll its timers and sockets only every few dozen ticks (tokio
/// looks at them between tasks, or when a thread parks), so the store's
/// requests, the metrics endpoint and other jobs' timers would stall. A
/// guest over the count runs on the blocking pool as before; on a
/// one-thread runtime every guest does.
struct Inline<'a>(&'a AtomicUsize);

impl<'a> Inline<'a> {
    fn reserve(running: &'a AtomicUsize) -> Option<Inline<'a>> {
        let threads = tokio::runtime::Handle::try_current()
            .map(|runtime| runtime.metrics().num_workers())
            .unwrap_or(1);
        running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now + 1 < threads).then_some(now + 1)
            })
            .ok()
            .map(|_| Inline(running))
    }
}

impl Drop for Inline<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inner {
    fn run_blocking(&self, spec: RunSpec) -> Report {
        let started = Instant::now();
        let found = if spec.imports.is_empty() {
            self.instance_pre(&spec)
        } else {
            self.linked(&spec)
        };
        let found = match found {
            Ok(found) => found,
            Err(outcome) => return Report::early(outcome, started.elapsed(), false),
        };
        let compile = started.elapsed();
        GUEST_RUNTIME.with(|rt| match rt {
            Some(rt) => rt.block_on(self.run_found(found, spec, compile)),
            None => Report::early(
                Outcome::Internal("could not start the guest runtime".into()),
                compile,
                false,
            ),
        })
    }

    /// Runs a module found or compiled (`compile`: how long that took).
    async fn run_found(&self, found: Found, spec: RunSpec, compile: Duration) -> Report {
        let mut report = self.run_async(found.pre, spec).await;
        report.compile = compile;
        report.cache_hit = found.cache_hit;
        report.from_artifact = found.from_artifact;
        report.new_artifact = found.new_artifact;
        report
    }

    /// The module of a job without import modules, when it is compiled in
    /// memory (given with the job, or in the cache): nothing to compile.
    fn cached(&self, spec: &RunSpec) -> Option<Found> {
        if !spec.imports.is_empty() {
            return None;
        }
        let held = spec.compiled.as_ref().map(|c| c.0.clone());
        let pre = held.or_else(|| {
            self.modules
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&spec.module.sha256)
                .cloned()
        })?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(Found {
            pre: Prepared::Pre(pre),
            cache_hit: true,
            from_artifact: false,
            new_artifact: None,
        })
    }

    /// The entry and import modules compiled (kept in memory by sha256;
    /// not shared through the store's artifacts, which cover the common
    /// case of a module without imports).
    fn linked(&self, spec: &RunSpec) -> Result<Found, Outcome> {
        let mut all_hit = true;
        let mut compile = |m: &ModuleBytes, what: &str| -> Result<Module, Outcome> {
            if let Some(module) = self
                .raw
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&m.sha256)
            {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(module.clone());
            }
            all_hit = false;
            self.misses.fetch_add(1, Ordering::Relaxed);
            let module = Module::new(&self.engine, &m.bytes).map_err(|e| {
                Outcome::InvalidModule(format!(
                    "{what} is not a valid WebAssembly module: {}",
                    root_cause(&e)
                ))
            })?;
            self.raw
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .put(m.sha256, module.clone());
            Ok(module)
        };
        let mut imports = Vec::with_capacity(spec.imports.len());
        for (name, bytes) in &spec.imports {
            imports.push((
                name.clone(),
                compile(bytes, &format!("import module {name}"))?,
            ));
        }
        let main = compile(&spec.module, "the module")?;
        Ok(Found {
            pre: Prepared::Linked { main, imports },
            cache_hit: all_hit,
            from_artifact: false,
            new_artifact: None,
        })
    }

    /// The module compiled and linked against WASI: from memory, else from
    /// the fleet's artifact, else compiled here.
    fn instance_pre(&self, spec: &RunSpec) -> Result<Found, Outcome> {
        let module = &spec.module;
        if let Some(found) = self.cached(spec) {
            return Ok(found);
        }
        // Loaded or compiled outside the lock: other jobs keep running meanwhile.
        let loaded = spec.artifact.as_ref().and_then(|bytes| {
            self.deserialize(bytes)
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "compiled artifact refused by wasmtime; compiling instead");
                })
                .ok()
        });
        let from_artifact = loaded.is_some();
        let mut new_artifact = None;
        let compiled = match loaded {
            Some(module) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                module
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                let compiled = Module::new(&self.engine, &module.bytes).map_err(|e| {
                    Outcome::InvalidModule(format!(
                        "not a valid WebAssembly module: {}",
                        root_cause(&e)
                    ))
                })?;
                if spec.want_artifact {
                    match compiled.serialize() {
                        Ok(bytes) => new_artifact = Some(Bytes::from(bytes)),
                        Err(e) => tracing::warn!(error = %e, "serializing a compiled module"),
                    }
                }
                compiled
            }
        };
        let pre = self
            .linker
            .instantiate_pre(&compiled)
            .map_err(|e| Outcome::InvalidModule(root_cause(&e)))?;
        self.modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(module.sha256, pre.clone());
        Ok(Found {
            pre: Prepared::Pre(pre),
            cache_hit: from_artifact,
            from_artifact,
            new_artifact,
        })
    }

    /// Loads native code another worker compiled.
    ///
    /// This is the workspace's one `unsafe` block. wasmtime cannot check
    /// native code, so loading it is as trusting as running a binary: the
    /// bytes must be exactly what `Module::serialize` wrote. The caller
    /// guarantees that with the artifact's tag (`stage::compiled`: SHA-256
    /// against torn or corrupted objects, HMAC with `cache.compiled_key`
    /// against anyone else who can write to the bucket). wasmtime itself
    /// still refuses artifacts from another version or configuration.
    #[allow(unsafe_code)]
    fn deserialize(&self, bytes: &[u8]) -> wasmtime::Result<Module> {
        // SAFETY: `bytes` come from `Module::serialize` of an engine with
        // this fingerprint, authenticated by the caller (see above).
        unsafe { Module::deserialize(&self.engine, bytes) }
    }

    async fn run_async(&self, pre: Prepared, spec: RunSpec) -> Report {
        let limits = &spec.limits;
        let stdout =
            CappedPipe::new(usize::try_from(limits.max_stdout_bytes).unwrap_or(usize::MAX));
        let stderr =
            CappedPipe::new(usize::try_from(limits.max_stderr_bytes).unwrap_or(usize::MAX));
        let mut builder = WasiCtxBuilder::new();
        let mut argv = Vec::with_capacity(spec.args.len() + 1);
        argv.push(spec.argv0.as_str());
        argv.extend(spec.args.iter().map(String::as_str));
        spec.live.attach(&stdout, &stderr);
        builder
            .args(&argv)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            // Off: with it on, a guest's sleep becomes std::thread::sleep,
            // which the wall-clock limit cannot cut short.
            .allow_blocking_current_thread(false)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (key, value) in &spec.env {
            builder.env(key, value);
        }
        for mount in &spec.mounts {
            let perms = if mount.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            if let Err(e) = builder.preopened_dir(&mount.host, &mount.guest, perms) {
                return Report::early(
                    Outcome::Internal(format!(
                        "mounting {} at {}: {e}",
                        mount.host.display(),
                        mount.guest
                    )),
                    Duration::ZERO,
                    false,
                );
            }
        }
        let state = GuestState {
            wasi: builder.build_p1(),
            limiter: JobLimiter {
                memory_bytes: limits.memory_bytes,
                table_elements: self.config.max_table_elements,
                peak_memory: 0,
                total_memory: 0,
                exceeded: None,
            },
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        if self.config.fuel_metering
            && let Err(e) = store.set_fuel(limits.fuel)
        {
            return Report::early(
                Outcome::Internal(format!("setting fuel: {e}")),
                Duration::ZERO,
                false,
            );
        }
        // Every tick, the epoch callback looks for a cancel, so a guest
        // spinning in its own code stops within a tick of one; past the
        // wall-clock limit it traps as before (`Trap::Interrupt`).
        // The limit is a moment, not a count of ticks: ticks spent in a
        // host call (a sleep) call back once, not once each.
        let live = spec.live.clone();
        let wall = Instant::now().checked_add(limits.timeout);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if live.is_cancelled() {
                return Err(wasmtime::Error::new(CancelledTrap));
            }
            if wall.is_some_and(|wall| Instant::now() >= wall) {
                return Err(Trap::Interrupt.into());
            }
            // Yield: a guest run on a runtime's thread gives it back to
            // the other tasks every tick.
            Ok(UpdateDeadline::Yield(1))
        });

        let started = Instant::now();
        let writable: Vec<PathBuf> = spec
            .mounts
            .iter()
            .filter(|m| m.writable)
            .map(|m| m.host.clone())
            .collect();
        let ended = tokio::select! {
            ended = tokio::time::timeout(limits.timeout, call(&pre, &self.linker, &mut store, &spec.entrypoint)) => ended,
            why = disk_watch(writable, limits.max_disk_bytes, limits.max_disk_files) => Ok(Err(CallError::Disk(why))),
            // A guest waiting in a host call (a sleep) is cut here.
            () = spec.live.cancelled() => Ok(Err(CallError::Cancelled)),
        };
        let run = started.elapsed();
        let outcome = match ended {
            Err(_elapsed) => Outcome::TimedOut,
            Ok(Ok(())) => Outcome::Exited(0),
            Ok(Err(CallError::MissingExport(msg))) => Outcome::MissingExport(msg),
            Ok(Err(CallError::Disk(why))) => Outcome::DiskLimit(why),
            Ok(Err(CallError::Cancelled)) => Outcome::Cancelled,
            // Linking failed: an import nothing provides, unless the cause
            // is a limit or a trap in a start function.
            Ok(Err(CallError::Link(e)))
                if store.data().limiter.exceeded.is_none()
                    && e.downcast_ref::<CancelledTrap>().is_none()
                    && e.downcast_ref::<Trap>().is_none()
                    && e.downcast_ref::<I32Exit>().is_none()
                    && e.downcast_ref::<PoolConcurrencyLimitError>().is_none() =>
            {
                Outcome::InvalidModule(root_cause(&e))
            }
            Ok(Err(CallError::Link(e))) => classify(e, &store.data().limiter),
            Ok(Err(CallError::Wasm(e))) => classify(e, &store.data().limiter),
        };
        let fuel_consumed = if self.config.fuel_metering {
            store
                .get_fuel()
                .ok()
                .map(|left| limits.fuel.saturating_sub(left))
        } else {
            None
        };
        let peak_memory_bytes = store.data().limiter.peak_memory;
        drop(store);
        let (stdout, stdout_truncated) = stdout.take();
        let (stderr, stderr_truncated) = stderr.take();
        Report {
            outcome,
            stdout,
            stdout_truncated,
            stderr,
            stderr_truncated,
            fuel_consumed,
            peak_memory_bytes,
            compile: Duration::ZERO,
            run,
            cache_hit: false,
            from_artifact: false,
            new_artifact: None,
        }
    }
}

enum CallError {
    MissingExport(String),
    Disk(String),
    Cancelled,
    Link(wasmtime::Error),
    Wasm(wasmtime::Error),
}

/// Resolves when the writable mounts hold more than the run allows.
///
/// Output caps alone apply when outputs are collected, after the run; this
/// bounds the disk a guest can fill while it runs. It looks every 50 ms, so
/// a guest can overshoot by what it writes in that time. A guest writes
/// through WASI host calls, which are where the run's future yields, so
/// dropping the call (as `select!` does) stops it there; a file operation
/// already running on a blocking thread still finishes, which is why the
/// pipeline never reuses the scratch folder of a run stopped this way.
async fn disk_watch(dirs: Vec<PathBuf>, max_bytes: u64, max_files: u64) -> String {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let dirs = dirs.clone();
        let usage = tokio::task::spawn_blocking(move || {
            let (mut bytes, mut files) = (0u64, 0u64);
            for dir in &dirs {
                for entry in walkdir::WalkDir::new(dir)
                    .min_depth(1)
                    .into_iter()
                    .flatten()
                {
                    files += 1;
                    if let Ok(meta) = entry.metadata() {
                        bytes += meta.len();
                    }
                }
            }
            (bytes, files)
        })
        .await;
        if let Ok((bytes, files)) = usage
            && (bytes > max_bytes || files > max_files)
        {
            return format!(
                "the guest filled its output mounts with {bytes} bytes in {files} entries while running, past the run's disk limit ({max_bytes} bytes, {max_files} entries: twice the job's output limits); stopped"
            );
        }
    }
}

async fn call(
    pre: &Prepared,
    linker: &Linker<GuestState>,
    store: &mut Store<GuestState>,
    entrypoint: &str,
) -> Result<(), CallError> {
    let instance = match pre {
        Prepared::Pre(pre) => pre
            .instantiate_async(&mut *store)
            .await
            .map_err(CallError::Wasm)?,
        Prepared::Linked { main, imports } => {
            let mut linker = linker.clone();
            for (name, module) in imports {
                let instance = linker
                    .instantiate_async(&mut *store, module)
                    .await
                    .map_err(CallError::Link)?;
                linker
                    .instance(&mut *store, name, instance)
                    .map_err(CallError::Link)?;
            }
            linker
                .instantiate_async(&mut *store, main)
                .await
                .map_err(CallError::Link)?
        }
    };
    let func = match instance.get_func(&mut *store, entrypoint) {
        Some(func) => func,
        None => {
            return Err(CallError::MissingExport(format!(
                "the module exports no function named `{entrypoint}`"
            )));
        }
    };
    let func = func.typed::<(), ()>(&*store).map_err(|e| {
        CallError::MissingExport(format!(
            "`{entrypoint}` is not a function taking and returning nothing: {e}"
        ))
    })?;
    func.call_async(&mut *store, ())
        .await
        .map_err(CallError::Wasm)
}

/// What the epoch callback stops a cancelled guest with.
#[derive(Debug)]
struct CancelledTrap;

impl std::fmt::Display for CancelledTrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled by an operator")
    }
}

impl std::error::Error for CancelledTrap {}

/// Classifies a failed instantiation or call once, by what caused it.
fn classify(error: wasmtime::Error, limiter: &JobLimiter) -> Outcome {
    if error.downcast_ref::<CancelledTrap>().is_some() {
        return Outcome::Cancelled;
    }
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return Outcome::Exited(exit.0);
    }
    if let Some(why) = &limiter.exceeded {
        return Outcome::MemoryLimit(why.clone());
    }
    if let Some(full) = error.downcast_ref::<PoolConcurrencyLimitError>() {
        // Ours, not the job's: more stores alive than the pool was sized
        // for (guests stuck past their deadline in a host call).
        return Outcome::Internal(format!("the worker's instance pool is full: {full}"));
    }
    let backtrace = error
        .downcast_ref::<WasmBacktrace>()
        .map(summarize)
        .unwrap_or_default();
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Outcome::OutOfFuel,
        Some(Trap::Interrupt) => Outcome::TimedOut,
        Some(trap) => Outcome::Trapped(format!("{trap}{backtrace}")),
        // A host function failed (e.g. proc_exit with a status WASI refuses):
        // its own message, without wasmtime's multi-line backtrace dump.
        None => Outcome::Trapped(format!("{}{backtrace}", error.root_cause())),
    }
}

/// "; in func[12] <- func[7] <- _start": the innermost few frames, enough to
/// find the spot without shipping a whole backtrace in every result.
fn summarize(backtrace: &WasmBacktrace) -> String {
    let frames: Vec<String> = backtrace
        .frames()
        .iter()
        .take(6)
        .map(|f| match f.func_name() {
            Some(name) => name.to_owned(),
            None => format!("func[{}]", f.func_index()),
        })
        .collect();
    if frames.is_empty() {
        String::new()
    } else {
        let more = if backtrace.frames().len() > frames.len() {
            " <- …"
        } else {
            ""
        };
        format!("; in {}{more}", frames.join(" <- "))
    }
}

/// Hex of the engine's compatibility hash, fed through SHA-256 so it is
/// stable across processes (`DefaultHasher` promises no such thing).
fn fingerprint(engine: &Engine) -> String {
    use sha2::Digest as _;
    use std::hash::{Hash, Hasher};
    struct Sha(sha2::Sha256);
    impl Hasher for Sha {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut h = Sha(sha2::Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(&h.0.finalize()[..16])
}

fn root_cause(error: &wasmtime::Error) -> String {
    // The chain reads "outer: inner: root"; the whole chain is the most precise message.
    format!("{error:#}")
}
