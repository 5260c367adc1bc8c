//! The one configuration struct, loaded once in `main`.
//!
//! Layers, later wins: `config/default.toml` (embedded, so the defaults are
//! documentation), an optional file given with `--config`, then `SHOAL_*`
//! environment variables. Environment names are derived from the key paths
//! of the defaults (`limits.default.fuel` is `SHOAL_LIMITS_DEFAULT_FUEL`), so
//! an unknown `SHOAL_*` variable is an error that names it rather than a
//! setting silently ignored. This is the only module that reads the
//! process environment.
mod brokers;
mod cidr;

pub use brokers::{
    BrokerUrlError, Brokers, CONNECT_WITHIN, Connected, DEFAULT_BROKER, NoBrokerAnswered,
};
pub use cidr::CidrError;
pub(crate) use cidr::{Cidr, parse_allow_list};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The embedded defaults.
pub(crate) const DEFAULT_TOML: &str = include_str!("../../config/default.toml");
/// Keys whose value is a list; their environment variable holds the items
/// comma-separated.
const LIST_KEYS: &[&str] = &["amqp.urls"];

/// Prefix of configuration environment variables.
pub(crate) const ENV_PREFIX: &str = "SHOAL_";

/// Worker configuration (see docs/CONFIG.md for every key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity and concurrency.
    pub worker: WorkerSection,
    /// Broker and topology.
    pub amqp: AmqpSection,
    /// Content cache.
    pub cache: CacheSection,
    /// Fetching sources.
    pub staging: StagingSection,
    /// Job limits: defaults, ceilings and message caps.
    pub limits: LimitsSection,
    /// Wasmtime engine settings.
    pub executor: ExecutorSection,
    /// Logging.
    pub log: LogSection,
    /// Prometheus metrics and health endpoint.
    pub metrics: MetricsSection,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address of `/metrics`, `/healthz` and `/readyz`; empty: off.
    pub listen: String,
}

/// `[worker]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    /// Name in results and logs; empty means `<hostname>-<pid>`.
    pub name: String,
    /// Guests run at once; 0 means the number of cores.
    pub concurrency: usize,
    /// Where jobs' scratch folders (inputs, outputs) go; empty means the
    /// system's temporary folder.
    pub scratch_dir: PathBuf,
}

/// `[amqp]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSection {
    /// Broker URL, with credentials; may hold several, comma-separated.
    /// Empty (and `urls` empty): [`DEFAULT_BROKER`].
    pub url: String,
    /// Broker URLs, tried in order (the nodes of a cluster); set this or
    /// `url`, not both.
    pub urls: Vec<String>,
    /// Job queue.
    pub job_queue: String,
    /// Results exchange.
    pub results_exchange: String,
    /// Dead-letter exchange and queue.
    pub dead_letter: String,
    /// Control exchange (cancel, inspect, follow), a fanout every worker binds to.
    pub control_exchange: String,
    /// Attempts before an infrastructure failure is final.
    pub max_attempts: u32,
    /// Retry backoff base, milliseconds.
    pub retry_base_ms: u64,
    /// Retry backoff cap, milliseconds.
    pub retry_max_ms: u64,
    /// Reconnect backoff cap, milliseconds.
    pub reconnect_max_ms: u64,
    /// Drain grace period, seconds.
    pub drain_grace_secs: u64,
    /// Heartbeat, seconds.
    pub heartbeat_secs: u16,
    /// Unacknowledged jobs the broker hands this worker at once; 0 means
    /// four per job slot ([`AmqpSection::prefetch_for`]).
    pub prefetch: u16,
    /// How long a job runs before its state messages start, milliseconds.
    pub state_delay_ms: u64,
}

impl AmqpSection {
    /// The broker URLs: `urls`, or `url` (which may hold a comma-separated
    /// list), or the local default. Both set is an error, not a silent
    /// choice: a `SHOAL_AMQP_URL` meant to override a file's `urls` would
    /// otherwise be ignored, or the other way round.
    pub fn brokers(&self) -> Result<Brokers, BrokerUrlError> {
        let has_url = !self.url.trim().is_empty();
        let has_urls = self.urls.iter().any(|u| !u.trim().is_empty());
        match (has_url, has_urls) {
            (true, true) => {
                let both = Brokers::parse(std::iter::once(&self.url).chain(&self.urls));
                Err(BrokerUrlError::Both(
                    both.map(|b| b.redacted_all()).unwrap_or_default(),
                ))
            }
            (false, true) => Brokers::parse(&self.urls),
            (true, false) => Brokers::parse([&self.url]),
            (false, false) => Brokers::parse([DEFAULT_BROKER]),
        }
    }

    /// The prefetch a worker running `concurrency` guests at once starts
    /// with: `amqp.prefetch`, or four per guest slot, from which the
    /// automatic prefetch (`amqp.prefetch` 0) follows the jobs' pace. More
    /// than the slots keeps the next jobs already on the worker, staged
    /// while earlier guests run and stored while later ones do, instead of
    /// a broker round trip away: what short jobs need. A prefetched job
    /// waits behind the running ones, which long jobs must not.
    pub fn prefetch_for(&self, concurrency: usize) -> u16 {
        match self.prefetch {
            0 => u16::try_from(concurrency.saturating_mul(4)).unwrap_or(u16::MAX),
            n => n,
        }
    }

    /// The URLs with their passwords replaced, for logs and `config`.
    fn redacted_urls(&self) -> String {
        match self.brokers() {
            Ok(brokers) => brokers.redacted_all(),
            Err(e) => format!("<{e}>"),
        }
    }

    /// The shared topology.
    pub fn topology(&self) -> shoal_schemas::topology::Topology {
        shoal_schemas::topology::Topology {
            job_queue: self.job_queue.clone(),
            results_exchange: self.results_exchange.clone(),
            dead_letter: self.dead_letter.clone(),
            control_exchange: self.control_exchange.clone(),
            // The broker's own limit is a backstop above ours, for messages
            // that crash the worker before it can settle them.
            delivery_limit: self.max_attempts.saturating_mul(2).max(2),
        }
    }
}

impl std::fmt::Debug for AmqpSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSection")
            .field("urls", &self.redacted_urls())
            .field("job_queue", &self.job_queue)
            .field("results_exchange", &self.results_exchange)
            .field("dead_letter", &self.dead_letter)
            .field("control_exchange", &self.control_exchange)
            .field("max_attempts", &self.max_attempts)
            .field("retry_base_ms", &self.retry_base_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .field("reconnect_max_ms", &self.reconnect_max_ms)
            .field("drain_grace_secs", &self.drain_grace_secs)
            .field("heartbeat_secs", &self.heartbeat_secs)
            .field("prefetch", &self.prefetch)
            .field("state_delay_ms", &self.state_delay_ms)
            .finish()
    }
}

/// `[cache]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Local directory of the embedded store (when `s3_bucket` is empty).
    pub dir: PathBuf,
    /// S3 bucket of the shared store; empty means the local directory.
    pub s3_bucket: String,
    /// S3 endpoint URL (SeaweedFS, MinIO, …); empty means AWS.
    pub s3_endpoint: String,
    /// S3 region.
    pub s3_region: String,
    /// Access key id; empty means unsigned requests.
    pub s3_access_key_id: String,
    /// Secret access key (never printed).
    pub s3_secret_access_key: String,
    /// Virtual-hosted-style addressing instead of path-style.
    pub s3_virtual_hosted: bool,
    /// How long one store operation may keep retrying, seconds.
    pub s3_retry_timeout_secs: u64,
    /// Share compiled modules through the store (`cache/compiled/…`).
    pub compiled_modules: bool,
    /// Write each ended job's entry in the job index (`submit list`).
    pub index_jobs: bool,
    /// Key of the compiled artifacts' HMAC tag (never printed); empty: SHA-256 only.
    pub compiled_key: String,
}

impl std::fmt::Debug for CacheSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = if self.s3_secret_access_key.is_empty() {
            ""
        } else {
            "***"
        };
        f.debug_struct("CacheSection")
            .field("dir", &self.dir)
            .field("s3_bucket", &self.s3_bucket)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_access_key_id", &self.s3_access_key_id)
            .field("s3_secret_access_key", &secret)
            .field("s3_virtual_hosted", &self.s3_virtual_hosted)
            .field("s3_retry_timeout_secs", &self.s3_retry_timeout_secs)
            .field("compiled_modules", &self.compiled_modules)
            .field("index_jobs", &self.index_jobs)
            .field(
                "compiled_key",
                &if self.compiled_key.is_empty() {
                    ""
                } else {
                    "***"
                },
            )
            .finish()
    }
}

/// `[staging]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagingSection {
    /// Non-public address blocks URL sources may reach, comma-separated.
    pub url_allow: String,
    /// Redirects followed per URL.
    pub url_max_redirects: usize,
    /// Connect timeout, seconds.
    pub url_connect_timeout_secs: u64,
    /// Read timeout, seconds.
    pub url_read_timeout_secs: u64,
    /// Age below which a cached URL is used without a request, seconds;
    /// 0 (the default) revalidates on every job.
    pub url_revalidate_secs: u64,
    /// Longest a job's staging (module, imports and inputs together) may
    /// take, seconds.
    pub timeout_secs: u64,
    /// Trustless IPFS gateways, comma-separated, tried in order.
    pub ipfs_gateways: String,
    /// Buckets `s3://` sources may read, comma-separated; empty: any but the store's own.
    pub s3_allow: String,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest job message accepted, in bytes.
    pub max_message_bytes: u64,
    /// Largest inline source, decoded, in bytes.
    pub max_inline_bytes: u64,
    /// Largest module or input staged, in bytes.
    pub max_input_bytes: u64,
    /// Most files and folders one input may unpack to (a tar or a CID folder).
    pub max_input_files: u64,
    /// Most bytes all of a job's inputs may come to.
    pub max_job_input_bytes: u64,
    /// Most files and folders all of a job's inputs may come to.
    pub max_job_input_files: u64,
    /// Streams up to this size are inline in the result message.
    pub inline_stream_bytes: u64,
    /// What a job gets when it does not say.
    pub default: LimitValues,
    /// The most a job may ask for.
    pub ceiling: LimitValues,
}

/// One full set of per-job limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitValues {
    /// Fuel units.
    pub fuel: u64,
    /// Linear memory ceiling, bytes.
    pub memory_bytes: u64,
    /// Wall-clock limit, milliseconds.
    pub timeout_ms: u64,
    /// Stdout kept, bytes.
    pub max_stdout_bytes: u64,
    /// Stderr kept, bytes.
    pub max_stderr_bytes: u64,
    /// Output files kept, total bytes.
    pub max_output_bytes: u64,
    /// Output files kept, count.
    pub max_output_files: u64,
}

impl LimitValues {
    /// No ceiling at all: what `submit run --local` uses, since the person
    /// running it owns the machine.
    pub const UNLIMITED: LimitValues = LimitValues {
        fuel: u64::MAX,
        memory_bytes: u64::MAX,
        timeout_ms: u64::MAX,
        max_stdout_bytes: u64::MAX,
        max_stderr_bytes: u64::MAX,
        max_output_bytes: u64::MAX,
        max_output_files: u64::MAX,
    };

    fn fields(&self) -> [(&'static str, u64); 7] {
        [
            ("fuel", self.fuel),
            ("memory_bytes", self.memory_bytes),
            ("timeout_ms", self.timeout_ms),
            ("max_stdout_bytes", self.max_stdout_bytes),
            ("max_stderr_bytes", self.max_stderr_bytes),
            ("max_output_bytes", self.max_output_bytes),
            ("max_output_files", self.max_output_files),
        ]
    }
}

/// `[executor]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSection {
    /// Meter fuel.
    pub fuel_metering: bool,
    /// Compiled modules kept in memory.
    pub module_cache_entries: usize,
    /// Epoch tick, milliseconds.
    pub epoch_tick_ms: u64,
    /// Guest stack, bytes.
    pub max_wasm_stack_bytes: usize,
    /// Largest table, elements.
    pub max_table_elements: usize,
    /// Pooling allocator (room for `pool_stores` jobs).
    pub pooling: bool,
    /// Jobs the pool has room for; 0: twice `worker.concurrency`.
    pub pool_stores: usize,
    /// How long a job waits for room in the pool before it is handed back.
    pub slot_wait_ms: u64,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `text` or `json`.
    pub format: String,
    /// tracing filter directives.
    pub filter: String,
}

/// A configuration problem; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or parsing a layer failed.
    #[error("configuration: {0}")]
    Load(String),
    /// One or more values are out of range.
    #[error("configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Loads defaults, then `file`, then the process's `SHOAL_*` environment.
    #[allow(clippy::disallowed_methods)]
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_from(file, std::env::vars())
    }

    /// Loads defaults, then `file`, then the given environment; tests pass
    /// their own environment instead of touching the process's.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let keys = known_keys();
        let mut unknown = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            match keys.iter().find(|key| env_name(key) == name) {
                Some(key) if LIST_KEYS.contains(&key.as_str()) => {
                    // A list in one variable: comma-separated.
                    let items: Vec<String> = value
                        .split(',')
                        .map(|item| item.trim().to_owned())
                        .filter(|item| !item.is_empty())
                        .collect();
                    builder = builder
                        .set_override(key.as_str(), items)
                        .map_err(|e| ConfigError::Load(format!("{name}: {e}")))?;
                }
                Some(key) => {
                    builder = builder
                        .set_override(key.as_str(), value)
                        .map_err(|e| ConfigError::Load(format!("{name}: {e}")))?;
                }
                None => unknown.push(format!("unknown environment variable {ENV_PREFIX}{rest}")),
            }
        }
        if !unknown.is_empty() {
            unknown.push("docs/CONFIG.md lists the variables".into());
            return Err(ConfigError::Invalid(unknown));
        }
        let config: Config = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reports every problem at once, each naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for ((name, default), (_, ceiling)) in self
            .limits
            .default
            .fields()
            .into_iter()
            .zip(self.limits.ceiling.fields())
        {
            if default > ceiling {
                problems.push(format!(
                    "limits.default.{name} ({default}) is above limits.ceiling.{name} ({ceiling})"
                ));
            }
        }
        if self.limits.default.memory_bytes < 65536 {
            problems.push("limits.default.memory_bytes must be at least one 64 KiB page".into());
        }
        if self.limits.default.timeout_ms == 0 || self.limits.default.fuel == 0 {
            problems
                .push("limits.default.timeout_ms and limits.default.fuel must be positive".into());
        }
        if let Err(e) = parse_allow_list(&self.staging.url_allow) {
            problems.push(format!("staging.url_allow: {e}"));
        }
        if let Err(e) = self.amqp.brokers() {
            problems.push(format!("amqp.url/amqp.urls: {e}"));
        }
        if self.amqp.max_attempts == 0 {
            problems.push("amqp.max_attempts must be at least 1".into());
        }
        if self.staging.timeout_secs == 0 {
            problems.push("staging.timeout_secs must be positive".into());
        }
        if self.executor.epoch_tick_ms == 0 {
            problems.push("executor.epoch_tick_ms must be positive".into());
        }
        if self.executor.module_cache_entries == 0 {
            problems.push("executor.module_cache_entries must be positive".into());
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            problems.push(format!(
                "log.format must be \"text\" or \"json\", not {:?}",
                self.log.format
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The worker's name: configured, else `<hostname>-<pid>`.
    pub(crate) fn worker_name(&self) -> String {
        if !self.worker.name.is_empty() {
            return self.worker.name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "worker".into());
        format!("{host}-{}", std::process::id())
    }

    /// Jobs run at once.
    pub fn concurrency(&self) -> usize {
        match self.worker.concurrency {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }

    /// The folder that holds the worker's scratch folder:
    /// `worker.scratch_dir`, or the system's temporary folder when that is
    /// empty.
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn scratch_parent(&self) -> PathBuf {
        if self.worker.scratch_dir.as_os_str().is_empty() {
            std::env::temp_dir()
        } else {
            self.worker.scratch_dir.clone()
        }
    }

    /// `~/.cache/shoal`: where `submit run --local` keeps its cache when
    /// `cache.dir` is left at its default, so each user has one.
    #[allow(clippy::disallowed_methods)]
    pub fn user_cache_dir() -> Option<PathBuf> {
        std::env::home_dir().map(|home| home.join(".cache").join("shoal"))
    }
}

/// Every key path of the defaults, e.g. `limits.default.fuel`.
pub fn known_keys() -> Vec<String> {
    fn walk(prefix: &str, table: &toml_table::Table, out: &mut Vec<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml_table::Value::Table(inner) => walk(&path, inner, out),
                _ => out.push(path),
            }
        }
    }
    let table: toml_table::Table = DEFAULT_TOML.parse().expect("embedded defaults are TOML");
    let mut out = Vec::new();
    walk("", &table, &mut out);
    out
}

/// The environment variable of a key path.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_uppercase())
}

mod toml_table {
    pub(super) use toml::{Table, Value};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_validate() {
        let config = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(config.limits.default.timeout_ms, 60_000);
        assert!(config.executor.fuel_metering);
    }

    #[test]
    fn env_overrides_nested_keys() {
        let config = Config::load_from(
            None,
            env(&[
                ("SHOAL_LIMITS_DEFAULT_FUEL", "1234"),
                ("SHOAL_WORKER_NAME", "w1"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(config.limits.default.fuel, 1234);
        assert_eq!(config.worker_name(), "w1");
    }

    #[test]
    fn unknown_env_is_an_error_naming_it() {
        let err = Config::load_from(None, env(&[("SHOAL_LIMITS_FUELL", "1")])).unwrap_err();
        assert!(err.to_string().contains("SHOAL_LIMITS_FUELL"), "{err}");
    }

    #[test]
    fn the_amqp_password_is_redacted() {
        let config = Config::load_from(
            None,
            env(&[("SHOAL_AMQP_URL", "amqp://u:s3cret@h:5672/%2f")]),
        )
        .unwrap();
        assert_eq!(config.amqp.redacted_urls(), "amqp://u:***@h:5672/%2f");
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn broker_urls_come_from_url_or_urls_never_both() {
        let load = |vars: &[(&str, &str)]| Config::load_from(None, env(vars));
        // Neither: the local broker.
        let brokers = load(&[]).unwrap().amqp.brokers().unwrap();
        assert_eq!(brokers.url(0), DEFAULT_BROKER);
        assert_eq!(brokers.len(), 1);
        // SHOAL_AMQP_URL with a comma-separated list, and SHOAL_AMQP_URLS.
        for var in ["SHOAL_AMQP_URL", "SHOAL_AMQP_URLS"] {
            let config = load(&[(var, "amqp://u:p1@a/%2f, amqp://u:p2@b/%2f")]).unwrap();
            let brokers = config.amqp.brokers().unwrap();
            assert_eq!(
                (brokers.len(), brokers.url(1)),
                (2, "amqp://u:p2@b/%2f"),
                "{var}"
            );
        }
        // A file's list.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(&path, "[amqp]\nurls = [\"amqp://u:p1@a/%2f\", \"amqp://u:p2@b/%2f\", \"amqp://u:p3@c/%2f\"]\n").unwrap();
        let config = Config::load_from(Some(&path), env(&[])).unwrap();
        assert_eq!(config.amqp.brokers().unwrap().len(), 3);
        // Both: an error naming both keys, no password in it.
        let err = Config::load_from(Some(&path), env(&[("SHOAL_AMQP_URL", "amqp://u:p9@d/%2f")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("amqp.url and amqp.urls"), "{err}");
        assert!(!err.contains("p9") && !err.contains("p1"), "{err}");
        // A malformed one: named, its password not.
        let err = load(&[(
            "SHOAL_AMQP_URL",
            "amqp://u:p1@a/%2f,amqp://u:hunter2@b:port/",
        )])
        .unwrap_err()
        .to_string();
        assert!(err.contains("broker URL 2"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let err =
            Config::load_from(None, env(&[("SHOAL_EXECUTOR_EPOCH_TICK_MS", "soon")])).unwrap_err();
        assert!(err.to_string().contains("epoch_tick_ms"), "{err}");
    }

    #[test]
    fn unknown_file_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(&path, "[worker]\nconcurency = 3\n").unwrap();
        let err = Config::load_from(Some(&path), env(&[])).unwrap_err();
        assert!(err.to_string().contains("concurency"), "{err}");
    }

    #[test]
    fn default_above_ceiling_is_reported() {
        let err = Config::load_from(
            None,
            env(&[("SHOAL_LIMITS_DEFAULT_TIMEOUT_MS", "99999999")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("limits.default.timeout_ms"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod doc_tests {
    use super::*;

    /// docs/CONFIG.md lists every key with its variable, and nothing else.
    #[test]
    fn docs_list_every_key() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIG.md"))
                .unwrap();
        let keys = known_keys();
        for key in &keys {
            let row = format!("| `{key}` | `{}` |", env_name(key));
            assert!(
                doc.contains(&row),
                "docs/CONFIG.md has no row starting {row}"
            );
        }
        let rows = doc.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(
            rows,
            keys.len(),
            "docs/CONFIG.md lists keys the configuration does not have"
        );
    }
}
