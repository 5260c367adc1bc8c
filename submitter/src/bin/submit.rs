//! `submit`: the command line front of shoal-submitter. Thin: it parses
//! arguments, builds a job message and hands it to the library.
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use shoal_submitter::args::{self, InputSpec, MountSpec};
use shoal_submitter::local::{Config, LimitValues, LocalOptions, Mount, Pipeline, Stager};
use shoal_submitter::operate::Operator;
use shoal_submitter::{
    Input, JobMessage, JobState, Location, OutputMount, ResultMessage, Source, StateMessage,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "submit",
    version,
    about = "Run WebAssembly (WASI preview1) jobs with Shoal"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a module as a job. Options may also follow the module, as with
    /// `bacalhau wasm run`; put `--` before program arguments that start with `-`.
    Run(Box<RunArgs>),
    /// Fetch a job's result from the results store and lay it out like `run` does.
    Get(GetArgs),
    /// What the content cache holds (`submit cache stats`).
    Cache(CacheArgs),
    /// Upload files or folders to the store and print the `sha256:` source
    /// of each, for job messages written anywhere (a folder travels as a
    /// tar archive: its source needs "unpack": "tar"). Content already
    /// there is not sent again.
    Upload(UploadArgs),
    /// Operator tasks on the fleet's broker topology.
    Admin(AdminArgs),
    /// Cancel jobs: a queued one never runs, a running one stops within a
    /// second wherever it runs; each ends with status `cancelled`. Exits 0
    /// when every job was (or had been) cancelled, 1 when one had finished
    /// or is unknown.
    Cancel(CancelArgs),
    /// The most recent jobs, newest first: id, status, worker, submit time, duration.
    List(ListArgs),
    /// Where a job is now: queued, staging/running/publishing on a worker, or finished.
    Describe(DescribeArgs),
    /// A job's stdout (or stderr); with -f, as the guest writes it, ending
    /// when the job ends, with its exit code.
    Logs(LogsArgs),
}

#[derive(Args)]
struct CancelArgs {
    /// Job ids.
    #[arg(required = true, value_name = "ID")]
    ids: Vec<String>,
    /// Record the cancel even for a job nothing knows of (submitted by a
    /// client that records no index entry, and not yet taken by a worker).
    #[arg(long)]
    force: bool,
    /// A configuration file (TOML; see docs/CONFIG.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ListArgs {
    /// Only jobs with this status: queued, running, succeeded, failed, error, rejected, cancelled (repeatable, or comma-separated).
    #[arg(long, value_name = "STATUS", value_delimiter = ',')]
    status: Vec<String>,
    /// Only jobs submitted within this long, e.g. 1h, 30m, 2d.
    #[arg(long, value_parser = args::duration, value_name = "DURATION")]
    since: Option<std::time::Duration>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print a JSON array of objects with id, status, worker, submitted_at, finished_at.
    #[arg(long)]
    json: bool,
    /// A configuration file (TOML; see docs/CONFIG.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct DescribeArgs {
    /// The job id.
    id: String,
    /// Print a JSON object with id, state, status, worker, attempt, since.
    #[arg(long)]
    json: bool,
    /// A configuration file (TOML; see docs/CONFIG.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct LogsArgs {
    /// The job id.
    id: String,
    /// Follow a running or queued job's output until it ends; exit with its code.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Stderr instead of stdout.
    #[arg(long)]
    stderr: bool,
    /// A configuration file (TOML; see docs/CONFIG.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct AdminArgs {
    #[command(subcommand)]
    what: AdminCommand,
    /// A configuration file (TOML; see docs/CONFIG.md).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Rebuild the dead-letter queue (amqp.dead_letter) as a quorum queue,
    /// moving every dead letter (docs/RELIABILITY.md, "Upgrading the
    /// dead-letter queue"). Safe with workers running; safe to repeat.
    MigrateDeadLetters,
}

#[derive(Args)]
struct UploadArgs {
    /// Files or folders.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Print a JSON array: each path with its `source` object, as a job message takes it.
    #[arg(long)]
    json: bool,
    /// A configuration file (TOML; see docs/CONFIG.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct CacheArgs {
    #[command(subcommand)]
    what: CacheCommand,
    /// A configuration file (TOML; see docs/CONFIG.md).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Objects and bytes per kind of entry (uploads and URLs by sha256, URL
    /// records, IPFS CARs, compiled modules, unfinished temporary uploads).
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Where results go and how they are shown: shared by `run` and `get`.
#[derive(Args)]
struct OutputArgs {
    /// Where results go (default ./shoal-results/<job id>/).
    #[arg(long, value_name = "DIR")]
    download: Option<PathBuf>,
    /// Print only the result message, as JSON.
    #[arg(long)]
    json: bool,
    /// A configuration file (TOML; see docs/CONFIG.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct GetArgs {
    /// The job id.
    id: String,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args)]
struct RunArgs {
    /// Run in this process with a local folder as the cache: no broker, no S3.
    #[arg(long)]
    local: bool,
    /// Fleet only: print the job id once it is queued, and exit without waiting.
    #[arg(long, conflicts_with = "local")]
    detach: bool,
    /// Fleet only: how long to wait for the result, e.g. 10m (default: a day).
    #[arg(long, value_parser = args::duration, value_name = "DURATION")]
    wait: Option<std::time::Duration>,
    /// The module: a local .wasm or .wat file, sha256:HEX for content already in the cache, an http(s) URL, an s3://BUCKET/KEY or an IPFS CID[/path].
    module: String,
    /// Program arguments (argv[1..]).
    args: Vec<String>,
    /// A local file or folder, an http(s) URL, an s3://BUCKET/KEY or an IPFS CID[/path] (ipfs:// optional), mounted read-only under /inputs (default /inputs/<its name>).
    #[arg(short = 'i', long = "input", value_name = "SRC[:GUEST_PATH]", value_parser = args::input_spec)]
    inputs: Vec<InputSpec>,
    /// A URL whose content appears under /inputs (Bacalhau's --input-urls); without a scheme, https:// is assumed.
    #[arg(long = "input-url", visible_alias = "input-urls", value_name = "URL")]
    input_urls: Vec<String>,
    /// Bacalhau's --input-volumes: the same as -i, e.g. CID:/inputs/data.
    #[arg(long = "input-volumes", value_name = "SRC:GUEST_PATH", value_parser = args::input_spec)]
    input_volumes: Vec<InputSpec>,
    /// An import module (Bacalhau's ImportModules): its exports become imports NAME.field of the module; any source a module can be. Repeatable.
    #[arg(long = "import", value_name = "NAME=SOURCE", value_parser = args::env_pair)]
    imports: Vec<(String, String)>,
    /// Small text carried in the job message itself, at /inputs/NAME (at most limits.max_inline_bytes).
    #[arg(long = "input-inline", value_name = "NAME=TEXT", value_parser = args::env_pair)]
    input_inline: Vec<(String, String)>,
    /// A writable mount kept after the job (repeatable). As in Bacalhau, the default outputs:/outputs is kept unless an -o names /outputs (or the name outputs).
    #[arg(short = 'o', long = "output", value_name = "NAME:GUEST_PATH", value_parser = args::output_spec)]
    outputs: Vec<(String, String)>,
    /// No output mount at all, not even /outputs (for programs and test suites that need fd 3 free).
    #[arg(long, conflicts_with = "outputs")]
    no_outputs: bool,
    /// Local runs only: preopen a host folder (read-only unless :rw), for debugging.
    #[arg(long = "mount", value_name = "HOST_DIR:GUEST_PATH[:rw]", value_parser = args::mount_spec)]
    mounts: Vec<MountSpec>,
    /// An environment variable for the guest (repeatable); the host's are never passed.
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE", value_parser = args::env_pair)]
    env: Vec<(String, String)>,
    /// Exported function to call (Bacalhau's --entry-point works too).
    #[arg(long, visible_alias = "entry-point", default_value = "_start")]
    entrypoint: String,
    /// Fuel units, or 'unlimited'.
    #[arg(long, value_parser = args::fuel)]
    fuel: Option<u64>,
    /// Linear memory limit, e.g. 64MiB.
    #[arg(long, value_parser = args::size)]
    memory: Option<u64>,
    /// Wall-clock limit, e.g. 30s.
    #[arg(long, value_parser = args::duration)]
    timeout: Option<std::time::Duration>,
    /// Job id (an idempotency key); generated when absent.
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    out: OutputArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("submit: starting the runtime: {e}");
            return ExitCode::from(127);
        }
    };
    let outcome = match cli.command {
        Command::Run(run) => runtime.block_on(run_command(*run)),
        Command::Get(get) => runtime.block_on(get_command(get)),
        Command::Cache(cache) => runtime.block_on(cache_command(cache)),
        Command::Upload(upload) => runtime.block_on(upload_command(upload)),
        Command::Admin(admin) => runtime.block_on(admin_command(admin)),
        Command::Cancel(cancel) => runtime.block_on(cancel_command(cancel)),
        Command::List(list) => runtime.block_on(list_command(list)),
        Command::Describe(describe) => runtime.block_on(describe_command(describe)),
        Command::Logs(logs) => runtime.block_on(logs_command(logs)),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("submit: {}", shoal_worker::error::chain(&*e));
            ExitCode::from(2)
        }
    }
}

async fn run_command(run: RunArgs) -> Result<u8> {
    if !run.local && !run.mounts.is_empty() {
        bail!(
            "--mount works with --local only: a fleet worker has no access to this machine's folders; use -i for inputs"
        );
    }
    let mut config = Config::load(run.out.config.as_deref()).context("loading configuration")?;
    // A fleet shares the cache folder of its workers (until S3 staging), so
    // only local runs move the default to a per-user folder.
    if run.local
        && config.cache.dir == Path::new("shoal-cache")
        && let Some(dir) = Config::user_cache_dir()
    {
        // The embedded default is a folder in the current directory; people
        // running `submit` get one cache per user instead.
        config.cache.dir = dir;
    }
    config.log.filter = "warn".into();
    let store = shoal_submitter::local::open_store(&config.cache).map_err(anyhow::Error::msg)?;
    let stager = Stager::new(store, &config).map_err(anyhow::Error::msg)?;

    let module = module_source(&stager, &run.module).await?;
    let mut job = JobMessage::new(module);
    job.id = run.id.clone();
    job.entrypoint = run.entrypoint.clone();
    job.args = run.args.clone();
    job.env = run.env.iter().cloned().collect();
    for url in &run.input_urls {
        job.inputs.push(Input {
            source: Source::new(Location::Url(url_source(&with_scheme(url))?)),
            path: None,
        });
    }
    for (name, source) in &run.imports {
        let module = module_source(&stager, source)
            .await
            .with_context(|| format!("--import {name}={source}"))?;
        job.imports.push(shoal_submitter::ImportModule {
            name: name.clone(),
            module,
        });
    }
    for (name, text) in &run.input_inline {
        use base64::Engine as _;
        job.inputs.push(Input {
            source: Source {
                name: Some(name.clone()),
                ..Source::new(Location::Inline(
                    base64::engine::general_purpose::STANDARD.encode(text),
                ))
            },
            path: Some(format!("/inputs/{}", name.trim_start_matches('/'))),
        });
    }
    let mut cid_at_root = None;
    for spec in run.inputs.iter().chain(&run.input_volumes) {
        if is_url(&spec.source) {
            job.inputs.push(Input {
                source: Source::new(Location::Url(url_source(&spec.source)?)),
                path: spec.path.clone(),
            });
            continue;
        }
        if spec.source.starts_with("s3://") {
            job.inputs.push(Input {
                source: Source::new(Location::S3(spec.source.clone())),
                path: spec.path.clone(),
            });
            continue;
        }
        let path = Path::new(&spec.source);
        if !path.exists() {
            if let Some(cid) = cid_source(&spec.source) {
                job.inputs.push(Input {
                    source: Source::new(Location::Cid(
                        cid.with_context(|| format!("--input {}", spec.source))?,
                    )),
                    // Bacalhau's place for a CID given without a path: a
                    // folder is /inputs itself (one file, /inputs/<name>).
                    path: Some(spec.path.clone().unwrap_or_else(|| "/inputs".to_owned())),
                });
                if spec.path.is_none() {
                    cid_at_root = Some(spec.source.clone());
                }
                continue;
            }
            bail!(
                "--input {}: no such file or folder, and not a URL, s3:// URI or IPFS CID",
                spec.source
            );
        }
        let source = shoal_submitter::local::upload_path(&stager, path)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("--input {}", spec.source))?;
        job.inputs.push(Input {
            source,
            path: spec.path.clone(),
        });
    }
    if let Some(cid) = cid_at_root
        && job.inputs.len() > 1
    {
        bail!(
            "--input {cid}: a CID given without a path is mounted at /inputs itself (as in Bacalhau), so it cannot share /inputs with other inputs; give it a path, e.g. -i {cid}:/inputs/data"
        );
    }
    job.outputs = output_mounts(&run.outputs, run.no_outputs);
    job.limits.fuel = run.fuel;
    job.limits.memory_bytes = run.memory;
    job.limits.timeout_ms = run
        .timeout
        .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1));

    // The same check a worker makes, so a bad flag is reported before anything runs.
    let body = serde_json::to_vec(&job)?;
    if let Err(errors) = shoal_submitter::validate(&body) {
        let first = errors.first().map(|e| e.to_string()).unwrap_or_default();
        bail!("the job is not valid: {first}");
    }
    let mut mounts = Vec::new();
    for m in &run.mounts {
        if !m.host.is_dir() {
            bail!("--mount {}: not a folder", m.host.display());
        }
        mounts.push(Mount {
            host: m.host.clone(),
            guest: m.guest.clone(),
            writable: m.writable,
        });
    }
    if !run.local {
        return run_on_fleet(&stager, &config.amqp, job, &run).await;
    }
    let embedded = Pipeline::new(config, LimitValues::UNLIMITED).map_err(anyhow::Error::msg)?;
    let spinner = spinner("staging");
    let shown = spinner.clone();
    let options = LocalOptions {
        extra_mounts: mounts,
        download: run.out.download.clone(),
        on_state: Some(Arc::new(move |state: JobState| {
            shown.set_message(state.to_string());
            Box::pin(async {})
        })),
    };
    let ran = embedded.run(job, options).await;
    spinner.finish_and_clear();
    let (result, dir) = ran.context("running the job")?;
    report(&result, &dir, run.out.json)?;
    Ok(u8::try_from(shoal_submitter::exit_code_of(&result)).unwrap_or(1))
}

/// A spinner on stderr, hidden when stderr is not a terminal.
fn spinner(message: &str) -> indicatif::ProgressBar {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(message.to_owned());
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    spinner
}

/// What the spinner says about a job on a worker.
fn describe(id: &str, state: &StateMessage) -> String {
    let retry = if state.attempt > 1 {
        format!(" (attempt {})", state.attempt)
    } else {
        String::new()
    };
    format!("job {id}: {} on {}{retry}", state.state, state.worker)
}

async fn run_on_fleet(
    stager: &Stager,
    amqp: &shoal_submitter::local::AmqpSection,
    job: JobMessage,
    run: &RunArgs,
) -> Result<u8> {
    let brokers = amqp.brokers()?;
    let client = shoal_submitter::Client::connect_to(
        brokers,
        amqp.topology(),
        shoal_submitter::ClientOptions {
            index: Some(stager.store().clone()),
            ..shoal_submitter::ClientOptions::default()
        },
    )
    .await
    .context("connecting to the fleet (set SHOAL_AMQP_URL, or use --local)")?;
    let waited = wait_on_fleet(&client, job, run).await;
    client.close().await;
    let Some(result) = waited? else {
        return Ok(0);
    };
    let dir = run
        .out
        .download
        .clone()
        .unwrap_or_else(|| Path::new("shoal-results").join(&result.job_id));
    shoal_submitter::local::download(stager.store().as_ref(), &result, &dir)
        .await
        .map_err(anyhow::Error::msg)
        .context("downloading the results")?;
    report(&result, &dir, run.out.json)?;
    Ok(u8::try_from(shoal_submitter::exit_code_of(&result)).unwrap_or(1))
}

/// Submits the job and, unless detached, waits for its result.
async fn wait_on_fleet(
    client: &shoal_submitter::Client,
    job: JobMessage,
    run: &RunArgs,
) -> Result<Option<ResultMessage>> {
    let handle = client.submit(job).await?;
    if run.detach {
        println!("{}", handle.id);
        return Ok(None);
    }
    let spinner = spinner(&format!("job {}: queued, waiting for a worker", handle.id));
    let waited = client
        .wait_result_with(
            &handle.id,
            run.wait.unwrap_or(std::time::Duration::from_secs(86_400)),
            |state| spinner.set_message(describe(&handle.id, state)),
        )
        .await;
    spinner.finish_and_clear();
    waited.map(Some).with_context(|| {
        format!(
            "the job is still queued or running; fetch it later with: submit get {}",
            handle.id
        )
    })
}

async fn get_command(get: GetArgs) -> Result<u8> {
    shoal_submitter::operate::check_id(&get.id)?;
    let mut config = Config::load(get.out.config.as_deref()).context("loading configuration")?;
    config.log.filter = "warn".into();
    let store = shoal_submitter::local::open_store(&config.cache).map_err(anyhow::Error::msg)?;
    let Some(result) = shoal_submitter::local::stored_result(store.as_ref(), &get.id)
        .await
        .map_err(anyhow::Error::msg)?
    else {
        bail!(
            "no result for job {} in the results store (still queued or running, or a different SHOAL_CACHE_DIR)",
            get.id
        );
    };
    let dir = get
        .out
        .download
        .clone()
        .unwrap_or_else(|| Path::new("shoal-results").join(&result.job_id));
    shoal_submitter::local::download(store.as_ref(), &result, &dir)
        .await
        .map_err(anyhow::Error::msg)?;
    report(&result, &dir, get.out.json)?;
    Ok(u8::try_from(shoal_submitter::exit_code_of(&result)).unwrap_or(1))
}

async fn admin_command(admin: AdminArgs) -> Result<u8> {
    let AdminCommand::MigrateDeadLetters = admin.what;
    let config = Config::load(admin.config.as_deref()).context("loading configuration")?;
    let brokers = config.amqp.brokers()?;
    let topology = config.amqp.topology();
    let migration =
        shoal_submitter::migrate::migrate_dead_letter_queue(&brokers, &topology).await?;
    match migration {
        shoal_submitter::migrate::Migration::AlreadyQuorum => println!(
            "{} is already a quorum queue; nothing to migrate",
            topology.dead_letter
        ),
        shoal_submitter::migrate::Migration::Migrated { moved } => println!(
            "{} is now a quorum queue; {moved} dead letters moved",
            topology.dead_letter
        ),
    }
    Ok(0)
}

/// The store and, when it answers, the fleet, for the operating commands.
async fn operate(
    config: Option<&Path>,
) -> Result<(
    Arc<dyn object_store::ObjectStore>,
    Result<Operator, shoal_submitter::operate::OperateError>,
)> {
    let mut config = Config::load(config).context("loading configuration")?;
    config.log.filter = "warn".into();
    let store = shoal_submitter::local::open_store(&config.cache).map_err(anyhow::Error::msg)?;
    let brokers = config.amqp.brokers()?;
    let operator = Operator::connect(&brokers, config.amqp.topology(), store.clone()).await;
    Ok((store, operator))
}

async fn cancel_command(cancel: CancelArgs) -> Result<u8> {
    use shoal_submitter::operate::{Cancelled, OperateError};
    let (store, operator) = operate(cancel.config.as_deref()).await?;
    let mut fleet = match operator {
        Ok(operator) => Some(operator),
        Err(e) => {
            eprintln!(
                "submit: the fleet did not answer ({e}); recording the cancels in the store only: a queued job will not run, a running one stops when its worker reconnects"
            );
            None
        }
    };
    let mut code = 0;
    for id in &cancel.ids {
        let done =
            shoal_submitter::operate::cancel(store.as_ref(), fleet.as_mut(), id, cancel.force)
                .await;
        match done {
            Ok(Cancelled::Stopping { worker }) => {
                println!("{id}: cancelled; stopping on {worker}")
            }
            Ok(Cancelled::WillNotRun) => {
                println!("{id}: cancelled; it will end `cancelled` without running")
            }
            Ok(Cancelled::Recorded) => println!("{id}: cancel recorded"),
            Ok(Cancelled::Already) => println!("{id}: already cancelled"),
            Ok(Cancelled::Finished(status)) => {
                println!(
                    "{id}: already finished ({}); nothing changed",
                    status.as_str()
                );
                code = 1;
            }
            Err(e @ OperateError::Unknown(_)) => {
                eprintln!("submit: {e}");
                code = 1;
            }
            Err(e) => {
                if let Some(fleet) = fleet {
                    fleet.close().await;
                }
                return Err(e).with_context(|| format!("cancelling {id}"));
            }
        }
    }
    if let Some(fleet) = fleet {
        fleet.close().await;
    }
    Ok(code)
}

async fn list_command(list: ListArgs) -> Result<u8> {
    use shoal_submitter::operate::{ListFilter, ListStatus};
    let mut statuses = Vec::new();
    for name in &list.status {
        statuses.push(ListStatus::parse(name.trim()).with_context(|| {
            format!("--status {name}: one of queued, running, succeeded, failed, error, rejected, cancelled")
        })?);
    }
    let filter = ListFilter {
        statuses,
        since: list.since.map(|d| std::time::SystemTime::now() - d),
        limit: list.limit,
    };
    let (store, operator) = operate(list.config.as_deref()).await?;
    let rows = match operator {
        Ok(mut operator) => {
            let rows = operator.list(&filter).await;
            operator.close().await;
            rows?
        }
        Err(e) => {
            eprintln!(
                "submit: the fleet did not answer ({e}); unfinished jobs are shown as queued"
            );
            shoal_submitter::operate::list_jobs(store.as_ref(), &filter, &Default::default())
                .await?
        }
    };
    let mut out = std::io::stdout().lock();
    if list.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<38} {:<10} {:<24} {:<20} {:>10}",
        "ID", "STATUS", "WORKER", "SUBMITTED", "DURATION"
    )?;
    for row in rows {
        let status = match row.state {
            Some(state) if state != "running" => format!("{}/{state}", row.status),
            _ => row.status.clone(),
        };
        let submitted = row
            .submitted_at
            .as_deref()
            .map(|t| t.get(..19).unwrap_or(t).replace('T', " "))
            .unwrap_or_else(|| "-".into());
        let duration = row
            .duration_secs
            .map(|s| {
                format!(
                    "{}",
                    humantime::format_duration(std::time::Duration::from_millis(
                        (s * 1000.0) as u64
                    ))
                )
            })
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<38} {:<10} {:<24} {:<20} {:>10}",
            row.id,
            status,
            row.worker.as_deref().unwrap_or("-"),
            submitted,
            duration
        )?;
    }
    Ok(0)
}

async fn describe_command(describe: DescribeArgs) -> Result<u8> {
    let (store, operator) = operate(describe.config.as_deref()).await?;
    let described = match operator {
        Ok(mut operator) => {
            let described = operator.describe(&describe.id).await;
            operator.close().await;
            described
        }
        Err(e) => {
            eprintln!("submit: the fleet did not answer ({e}); describing from the store alone");
            shoal_submitter::operate::describe(store.as_ref(), None, &describe.id).await
        }
    };
    let d = match described {
        Ok(d) => d,
        Err(e @ shoal_submitter::operate::OperateError::Unknown(_)) => {
            eprintln!("submit: {e}");
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    };
    if describe.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "job        {}", d.id)?;
    let mut state = d.state.to_owned();
    if let Some(status) = d.status {
        state = format!("{state}: {}", status.as_str());
    }
    if !d.workers_asked && d.state == "queued" {
        state.push_str(" (or running: the workers could not be asked)");
    }
    writeln!(out, "state      {state}")?;
    if let Some(worker) = &d.worker {
        writeln!(out, "worker     {worker}")?;
    }
    if let Some(attempt) = d.attempt {
        writeln!(out, "attempt    {attempt}")?;
    }
    if let Some(since) = &d.since {
        writeln!(out, "since      {since}")?;
    }
    if d.cancel_requested {
        writeln!(out, "cancel     requested; it ends `cancelled`")?;
    }
    if let Some(result) = &d.result {
        if let Some(code) = result.exit_code {
            writeln!(out, "exit code  {code}")?;
        }
        if let Some(error) = &result.error {
            writeln!(out, "error      {}: {}", error.kind.as_str(), error.message)?;
        }
        for (name, at) in [
            ("submitted", &result.submitted_at),
            ("started", &result.started_at),
            ("finished", &result.finished_at),
        ] {
            if let Some(at) = at {
                writeln!(out, "{name:<10} {at}")?;
            }
        }
        let usage = &result.usage;
        if let Some(fuel) = usage.fuel_consumed {
            writeln!(out, "fuel       {fuel}")?;
        }
        if let Some(peak) = usage.peak_memory_bytes {
            writeln!(out, "memory     {peak} bytes at peak")?;
        }
        if let Some(run) = usage.durations.run_secs {
            writeln!(out, "ran        {:.1} ms", run * 1000.0)?;
        }
        for output in &result.outputs {
            writeln!(
                out,
                "output     {} ({}): {} files",
                output.name,
                output.path,
                output.files.len()
            )?;
            for file in &output.files {
                writeln!(out, "             {} ({} bytes)", file.path, file.size)?;
            }
        }
    }
    Ok(0)
}

async fn logs_command(logs: LogsArgs) -> Result<u8> {
    use shoal_submitter::operate::Piece;
    let (store, operator) = operate(logs.config.as_deref()).await?;
    shoal_submitter::operate::check_id(&logs.id)?;
    if !logs.follow {
        let Some(result) = shoal_submitter::local::stored_result(store.as_ref(), &logs.id)
            .await
            .map_err(anyhow::Error::msg)?
        else {
            bail!(
                "job {} has not finished (or is unknown here): follow its output with `submit logs -f {}`",
                logs.id,
                logs.id
            );
        };
        let bytes =
            shoal_submitter::operate::stored_stream(store.as_ref(), &result, logs.stderr).await?;
        std::io::stdout().write_all(&bytes)?;
        return Ok(0);
    }
    let mut operator =
        operator.context("connecting to the fleet to follow a job (set SHOAL_AMQP_URL)")?;
    let followed = operator
        .follow(&logs.id, logs.stderr, |piece| {
            let mut out = std::io::stdout().lock();
            match piece {
                Piece::Bytes(bytes) => {
                    let _ = out.write_all(bytes);
                    let _ = out.flush();
                }
                Piece::Skipped(n) => {
                    eprintln!("submit: [{n} bytes not streamed; `submit logs` shows them once the job ends]");
                }
            }
        })
        .await;
    operator.close().await;
    let result = followed?;
    Ok(u8::try_from(shoal_submitter::exit_code_of(&result)).unwrap_or(1))
}

async fn cache_command(cache: CacheArgs) -> Result<u8> {
    let CacheCommand::Stats { json } = cache.what;
    let mut config = Config::load(cache.config.as_deref()).context("loading configuration")?;
    config.log.filter = "warn".into();
    let store = shoal_submitter::local::open_store(&config.cache).map_err(anyhow::Error::msg)?;
    let stats = shoal_submitter::local::cache_stats(store.as_ref())
        .await
        .map_err(anyhow::Error::msg)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &stats)?;
        writeln!(out)?;
    } else {
        let place = if config.cache.s3_bucket.is_empty() {
            config.cache.dir.display().to_string()
        } else {
            format!("s3://{}", config.cache.s3_bucket)
        };
        writeln!(out, "cache in {place}")?;
        writeln!(out, "{:<10} {:>10} {:>14}", "kind", "objects", "bytes")?;
        for kind in &stats {
            writeln!(
                out,
                "{:<10} {:>10} {:>14}",
                kind.kind, kind.objects, kind.bytes
            )?;
        }
    }
    Ok(0)
}

async fn upload_command(upload: UploadArgs) -> Result<u8> {
    let mut config = Config::load(upload.config.as_deref()).context("loading configuration")?;
    config.log.filter = "warn".into();
    let store = shoal_submitter::local::open_store(&config.cache).map_err(anyhow::Error::msg)?;
    let stager = Stager::new(store, &config).map_err(anyhow::Error::msg)?;
    // Every path is checked before anything is sent, so a typo in the
    // last one does not leave the first ones half done.
    for path in &upload.paths {
        if !path.exists() {
            bail!("{}: no such file or folder", path.display());
        }
    }
    let mut uploaded = Vec::with_capacity(upload.paths.len());
    for path in &upload.paths {
        let source = shoal_submitter::local::upload_path(&stager, path)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("uploading {}", path.display()))?;
        let Location::Sha256(hex) = &source.location else {
            unreachable!("uploads are named by their hash")
        };
        let named = format!("sha256:{hex}");
        let folder = source.unpack == Some(shoal_submitter::Unpack::Tar);
        uploaded.push((path, named, folder, source));
    }
    let mut out = std::io::stdout().lock();
    if upload.json {
        let listed: Vec<serde_json::Value> = uploaded
            .iter()
            .map(|(path, named, folder, source)| {
                serde_json::json!({
                    "path": path.display().to_string(),
                    "sha256": named,
                    "folder": folder,
                    "source": source,
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut out, &listed)?;
        writeln!(out)?;
    } else {
        for (path, named, folder, _) in &uploaded {
            let note = if *folder {
                "  (a folder: use with \"unpack\": \"tar\")"
            } else {
                ""
            };
            writeln!(out, "{named}  {}{note}", path.display())?;
        }
    }
    Ok(0)
}

async fn module_source(stager: &Stager, module: &str) -> Result<Source> {
    let path = Path::new(module);
    if path.is_file() {
        return shoal_submitter::local::upload_path(stager, path)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("module {module}"));
    }
    if let Some(hex) = module.strip_prefix("sha256:") {
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Source::new(Location::Sha256(hex.to_ascii_lowercase())));
        }
        bail!("module {module}: write sha256: followed by 64 hex digits");
    }
    if path.exists() {
        bail!("module {module}: is a folder; give the .wasm file");
    }
    if is_url(module) {
        return Ok(Source::new(Location::Url(url_source(module)?)));
    }
    if module.starts_with("s3://") {
        return Ok(Source::new(Location::S3(module.to_owned())));
    }
    if let Some(cid) = cid_source(module) {
        return Ok(Source::new(Location::Cid(
            cid.with_context(|| format!("module {module}"))?,
        )));
    }
    bail!(
        "module {module}: no such file; give a local .wasm or .wat file, sha256:HEX, an http(s) URL, an s3:// URI or an IPFS CID"
    )
}

/// `CID[/path]` or `ipfs://CID[/path]` as a `cid` source; `None` when `s`
/// does not look like one at all, an error when it looks like one but the
/// CID does not parse (a typo fails here, before anything is queued).
fn cid_source(s: &str) -> Option<Result<String>> {
    let spec = s.strip_prefix("ipfs://").unwrap_or(s);
    let first = spec.split('/').next().unwrap_or_default();
    let looks_like = s.starts_with("ipfs://")
        || (first.starts_with("Qm") && first.len() == 46)
        || (first.starts_with("baf") && first.len() > 50);
    if !looks_like {
        return None;
    }
    Some(
        shoal_ipfs::Cid::parse(first)
            .map(|_| spec.to_owned())
            .map_err(|e| anyhow::anyhow!("{first:?} is not a valid IPFS CID: {e}")),
    )
}

/// The output mounts of `-o` and `--no-outputs`, by Bacalhau's rule: the
/// default `outputs:/outputs` stays unless an `-o` takes its path or a
/// path inside it (which it would overlap), or its name (which would be
/// used twice). `None` is the job's default, that one mount.
fn output_mounts(given: &[(String, String)], none: bool) -> Option<Vec<OutputMount>> {
    if none {
        return Some(Vec::new());
    }
    if given.is_empty() {
        return None;
    }
    let mut mounts: Vec<OutputMount> = given
        .iter()
        .map(|(name, path)| OutputMount {
            name: name.clone(),
            path: path.clone(),
        })
        .collect();
    let is_outputs = |path: &str| {
        let path = path.trim_end_matches('/');
        path == "/outputs" || path.starts_with("/outputs/")
    };
    if !mounts
        .iter()
        .any(|m| m.name == "outputs" || is_outputs(&m.path))
    {
        mounts.insert(
            0,
            OutputMount {
                name: "outputs".into(),
                path: "/outputs".into(),
            },
        );
    }
    Some(mounts)
}

/// `--input-urls example.com/data.txt` means https, as in Bacalhau; a
/// string with a scheme of its own is left for `url_source` to judge.
fn with_scheme(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("https://{url}")
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// A URL source, checked here so a typo fails before anything is queued.
/// The worker fetches it (and decides whether its address may be reached).
fn url_source(s: &str) -> Result<String> {
    match url::Url::parse(s) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Ok(s.to_owned())
        }
        Ok(_) => bail!("{s}: only http and https URLs with a host can be fetched"),
        Err(e) => bail!("{s}: not a URL: {e}"),
    }
}

fn report(result: &ResultMessage, dir: &Path, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(result)?);
        return Ok(());
    }
    // The guest's own output first, byte for byte, from the download folder.
    let stdout = std::fs::read(dir.join("stdout")).unwrap_or_default();
    let stderr = std::fs::read(dir.join("stderr")).unwrap_or_default();
    std::io::stdout().write_all(&stdout)?;
    std::io::stdout().flush()?;
    std::io::stderr().write_all(&stderr)?;
    let mut parts = vec![result.status.as_str().to_owned()];
    if let Some(code) = result.exit_code {
        parts.push(format!("exit {code}"));
    }
    if let Some(error) = &result.error
        && error.kind != shoal_submitter::ErrorKind::NonzeroExit
    {
        parts.push(format!("{}: {}", error.kind.as_str(), error.message));
    }
    if let Some(fuel) = result.usage.fuel_consumed {
        parts.push(format!("fuel {fuel}"));
    }
    if let Some(run) = result.usage.durations.run_secs {
        parts.push(format!("ran {:.1} ms", run * 1000.0));
    }
    for (name, stream) in [("stdout", &result.stdout), ("stderr", &result.stderr)] {
        if let Some(s) = stream
            && s.truncated
        {
            parts.push(format!("{name} truncated at {} bytes", s.size));
        }
    }
    parts.push(format!("job {}", result.job_id));
    parts.push(format!("results in {}", dir.display()));
    eprintln!("shoal: {}", parts.join(" · "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(given: &[(&str, &str)], none: bool) -> Option<Vec<(String, String)>> {
        let given: Vec<(String, String)> = given
            .iter()
            .map(|(n, p)| ((*n).to_owned(), (*p).to_owned()))
            .collect();
        output_mounts(&given, none).map(|m| m.into_iter().map(|m| (m.name, m.path)).collect())
    }

    #[test]
    fn outputs_stay_unless_an_output_takes_them() {
        let owned = |pairs: &[(&str, &str)]| -> Option<Vec<(String, String)>> {
            Some(
                pairs
                    .iter()
                    .map(|(n, p)| ((*n).to_owned(), (*p).to_owned()))
                    .collect(),
            )
        };
        assert_eq!(mounts(&[], false), None);
        assert_eq!(mounts(&[], true), Some(Vec::new()));
        assert_eq!(
            mounts(&[("extra", "/extra")], false),
            owned(&[("outputs", "/outputs"), ("extra", "/extra")])
        );
        assert_eq!(
            mounts(&[("mine", "/outputs/")], false),
            owned(&[("mine", "/outputs/")])
        );
        assert_eq!(
            mounts(&[("sub", "/outputs/sub")], false),
            owned(&[("sub", "/outputs/sub")])
        );
        assert_eq!(
            mounts(&[("outputs", "/results")], false),
            owned(&[("outputs", "/results")])
        );
        // A longer name that merely starts like it does not count.
        assert_eq!(
            mounts(&[("o", "/outputs2")], false),
            owned(&[("outputs", "/outputs"), ("o", "/outputs2")])
        );
    }

    #[test]
    fn a_url_without_a_scheme_is_https() {
        assert_eq!(with_scheme("example.com"), "https://example.com");
        assert_eq!(
            with_scheme("example.com/a/b.txt"),
            "https://example.com/a/b.txt"
        );
        assert_eq!(with_scheme("http://example.com/x"), "http://example.com/x");
        assert!(url_source(&with_scheme("example.com/data.txt")).is_ok());
        assert!(url_source(&with_scheme("ftp://example.com/x")).is_err());
    }
}
