//! What the `submit` binary's tests share: the binary without the shell's
//! store settings, a scratch cache and working folder, and fleet workers
//! run in the test's own process.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub struct Cli {
    pub cache: tempfile::TempDir,
    pub work: tempfile::TempDir,
}

impl Cli {
    pub fn new() -> Cli {
        Cli {
            cache: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
        }
    }

    pub fn submit(&self, args: &[&str]) -> Output {
        self.submit_with(args, &[])
    }

    /// `submit` with more settings in its environment.
    pub fn submit_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        submit_command()
            .args(args)
            .current_dir(self.work.path())
            .env("SHOAL_CACHE_DIR", self.cache.path())
            .env("HOST_ONLY_SECRET", "must-not-leak")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }
}

/// The `submit` binary, without the store and worker settings of the shell
/// running the tests (`SHOAL_CACHE_*`, `SHOAL_WORKER_*`): each test names
/// its own store, and one exported by hand (the S3 bucket, say) would
/// otherwise send the CLI to a store the test's worker does not read.
pub fn submit_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_submit"));
    // Reading the test's own environment, to keep it from the child.
    #[allow(clippy::disallowed_methods)]
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("SHOAL_CACHE_") || name.starts_with("SHOAL_WORKER_") {
            cmd.env_remove(&key);
        }
    }
    cmd
}

pub fn path(rel: &str) -> String {
    repo().join(rel).display().to_string()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fleet worker in this test's process, on queues of its own, sharing the
/// test's cache folder with `submit`.
pub struct InProcessWorker {
    runtime: tokio::runtime::Runtime,
    stop: tokio::sync::watch::Sender<bool>,
    worker: tokio::task::JoinHandle<Result<(), shoal_worker::error::InfraError>>,
    config: shoal_worker::Config,
    /// What makes this worker's queue names unique.
    pub suffix: String,
}

/// The settings of a fleet on queues of its own (names ending in a fresh
/// suffix, returned too) sharing `cache`, plus `extra`: for `submit` and
/// for [`InProcessWorker::join`].
pub fn fleet_env(
    prefix: &str,
    cache: &Path,
    extra: &[(&str, &str)],
) -> (Vec<(String, String)>, String) {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let mut env: Vec<(String, String)> = vec![
        ("SHOAL_CACHE_DIR".into(), cache.display().to_string()),
        (
            "SHOAL_AMQP_JOB_QUEUE".into(),
            format!("{prefix}.jobs.{suffix}"),
        ),
        (
            "SHOAL_AMQP_RESULTS_EXCHANGE".into(),
            format!("{prefix}.results.{suffix}"),
        ),
        (
            "SHOAL_AMQP_DEAD_LETTER".into(),
            format!("{prefix}.dead.{suffix}"),
        ),
        (
            "SHOAL_AMQP_CONTROL_EXCHANGE".into(),
            format!("{prefix}.control.{suffix}"),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    (env, suffix)
}

impl InProcessWorker {
    /// Starts the worker; returns it and the environment `submit` needs to
    /// reach it (the cache folder, the queues, and `extra`).
    pub fn start(
        prefix: &str,
        cache: &Path,
        extra: &[(&str, &str)],
    ) -> (InProcessWorker, Vec<(String, String)>) {
        let (env, suffix) = fleet_env(prefix, cache, extra);
        (InProcessWorker::join(&env, &suffix, None), env)
    }

    /// Starts a worker of the fleet `env` describes (see [`fleet_env`]),
    /// named `name` when given.
    pub fn join(env: &[(String, String)], suffix: &str, name: Option<&str>) -> InProcessWorker {
        let mut env = env.to_vec();
        if let Some(name) = name {
            env.push(("SHOAL_WORKER_NAME".into(), name.into()));
        }
        let config = shoal_worker::Config::load_from(None, env).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let pipeline =
            shoal_worker::pipeline::Pipeline::new(config.clone(), config.limits.ceiling).unwrap();
        let worker = runtime.spawn(shoal_worker::consume::run(
            pipeline,
            config.amqp.clone(),
            config.concurrency(),
            rx,
        ));
        InProcessWorker {
            runtime,
            stop,
            worker,
            config,
            suffix: suffix.to_owned(),
        }
    }

    /// Drains the worker and removes its queues from the shared broker.
    pub fn stop(self) {
        self.stop.send(true).unwrap();
        self.runtime.block_on(self.worker).unwrap().unwrap();
        let amqp = self.config.amqp;
        self.runtime.block_on(async {
            let brokers = amqp.brokers().unwrap();
            let conn =
                lapin::Connection::connect(brokers.url(0), lapin::ConnectionProperties::default())
                    .await
                    .unwrap();
            let channel = conn.create_channel().await.unwrap();
            amqp.topology().delete(&channel).await.unwrap();
        });
    }
}
