//! `shoal-worker`: arguments, configuration, logging, then the pipeline.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use shoal_worker::Config;
use shoal_worker::pipeline::{LocalOptions, Pipeline};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "shoal-worker",
    version,
    about = "Shoal worker: runs WebAssembly jobs"
)]
struct Cli {
    /// Configuration file (TOML); SHOAL_* environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume jobs from RabbitMQ until SIGTERM or SIGINT, then drain.
    Serve,
    /// Run one job message (a shoal.job/v1 JSON file) in this process, with
    /// the configured cache and limits, and print its result message.
    Exec {
        /// The job message.
        job: PathBuf,
        /// Where results go (default ./shoal-results/<job id>/).
        #[arg(long, value_name = "DIR")]
        download: Option<PathBuf>,
    },
    /// Check the configuration and print every key's effective value.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shoal-worker: {}", shoal_worker::error::chain(&*e));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    init_tracing(&config);
    match cli.command {
        Command::Serve => {
            // One thread more than the cores: guests of modules compiled
            // already run on these threads, at most one fewer than there
            // are (execute::Inline), so with the default concurrency (the
            // cores) every guest can, and one thread is still free for the
            // store's requests, timers and the metrics endpoint.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cores + 1)
                .enable_all()
                .build()?;
            let served = runtime.block_on(serve(config));
            // Jobs abandoned at the end of the grace period may still hold a
            // blocking thread in the guest; their messages are back in the
            // queue already, so do not wait for them.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config => {
            println!("{config:#?}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec { job, download } => {
            let body = std::fs::read(&job).with_context(|| format!("reading {}", job.display()))?;
            if body.len() as u64 > config.limits.max_message_bytes {
                anyhow::bail!(
                    "{}: {} bytes is over limits.max_message_bytes",
                    job.display(),
                    body.len()
                );
            }
            let message = match shoal_schemas::decode_job(&body) {
                Ok(message) => message,
                Err(errors) => {
                    for e in &errors {
                        eprintln!("shoal-worker: {}: {e}", job.display());
                    }
                    return Ok(ExitCode::from(126));
                }
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let ceiling = config.limits.ceiling;
            let embedded = Pipeline::new(config, ceiling).map_err(anyhow::Error::msg)?;
            let (result, _) = runtime.block_on(embedded.run(
                message,
                LocalOptions {
                    extra_mounts: Vec::new(),
                    download,
                    ..LocalOptions::default()
                },
            ))?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(config: Config) -> Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
        }
        let _ = tx.send(true);
    });
    let concurrency = config.concurrency();
    let amqp = config.amqp.clone();
    let ceiling = config.limits.ceiling;
    let listen = config.metrics.listen.clone();
    let pipeline = Pipeline::new(config, ceiling).map_err(anyhow::Error::msg)?;
    if !listen.is_empty() {
        let addr: std::net::SocketAddr = listen
            .parse()
            .with_context(|| format!("metrics.listen {listen:?} is not an address:port"))?;
        shoal_worker::metrics::serve(addr, pipeline.stager().store().clone())
            .await
            .with_context(|| format!("listening on {addr} (metrics.listen)"))?;
    }
    shoal_worker::consume::run(pipeline, amqp, concurrency, rx).await?;
    tracing::info!("stopped");
    Ok(())
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
