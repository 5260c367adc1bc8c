//! A backend service in miniature: it hands a Shoal fleet 1,000 jobs and
//! collects every result, the way a service would fan work out to workers.
//!
//! Start a worker (`cargo run --release --bin shoal-worker -- serve`), then:
//!
//! ```text
//! cargo run --release -p shoal-submitter --example batch -- examples/hello/hello.wasm 1000
//! ```
//!
//! Broker and cache come from the same configuration as `submit` and the
//! worker (`SHOAL_AMQP_URL`, `SHOAL_CACHE_DIR`, …; see docs/CONFIG.md).
use anyhow::{Context, Result, bail};
use shoal_submitter::local::{Config, Stager, open_store, upload_path};
use shoal_submitter::{Client, ClientOptions, JobMessage, ResultMessage, Status};
use std::path::Path;
use std::time::{Duration, Instant};

/// Jobs published per round of publisher confirms.
const BATCH: usize = 100;

/// What the service saw.
pub struct Summary {
    /// One result per job, in submission order.
    pub results: Vec<ResultMessage>,
    /// From the first publish to the last result.
    pub elapsed: Duration,
}

/// Uploads `module` to the fleet's cache, submits `n` jobs running it (job
/// `i` gets the argument `i`), and waits for every result.
pub async fn run(config: &Config, module: &Path, n: usize) -> Result<Summary> {
    // The module goes into the content cache once, by hash; every job names it.
    let stager = Stager::new(
        open_store(&config.cache).map_err(anyhow::Error::msg)?,
        config,
    )
    .map_err(anyhow::Error::msg)?;
    let source = upload_path(&stager, module)
        .await
        .map_err(anyhow::Error::msg)?;
    // SHOAL_AMQP_URL (one broker, or a cluster's nodes comma-separated).
    let brokers = config.amqp.brokers()?;
    let client = Client::connect_to(brokers, config.amqp.topology(), ClientOptions::default())
        .await
        .context("connecting to the fleet")?;

    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let mut handles = Vec::with_capacity(n);
    let indices: Vec<usize> = (0..n).collect();
    for chunk in indices.chunks(BATCH) {
        let jobs = chunk
            .iter()
            .map(|i| {
                let mut job = JobMessage::new(source.clone());
                // Our own ids make a retried batch idempotent: a job that
                // was already queued is not a second, different job.
                job.id = Some(format!("batch-{run_id}-{i}"));
                job.args = vec![i.to_string()];
                job
            })
            .collect();
        handles.extend(client.submit_batch(jobs).await?);
    }
    // Results arrive in any order; wait for all of them at once.
    let waits = handles
        .iter()
        .map(|h| client.wait_result(&h.id, Duration::from_secs(600)));
    let results = futures::future::try_join_all(waits).await?;
    client.close().await;
    Ok(Summary {
        results,
        elapsed: started.elapsed(),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(module) = args.first() else {
        bail!("usage: batch MODULE.wasm [N]");
    };
    let n = match args.get(1) {
        Some(n) => n.parse().context("N must be a number")?,
        None => 1000,
    };
    let config = Config::load(None)?;
    let summary = run(&config, Path::new(module), n).await?;
    let succeeded = summary
        .results
        .iter()
        .filter(|r| r.status == Status::Succeeded)
        .count();
    println!(
        "{n} jobs, {succeeded} succeeded, {} did not, in {:.2} s ({:.0} jobs/s)",
        n - succeeded,
        summary.elapsed.as_secs_f64(),
        n as f64 / summary.elapsed.as_secs_f64()
    );
    Ok(())
}
