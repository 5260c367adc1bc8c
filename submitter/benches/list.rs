//! `submit list` against a store holding 100,000 finished jobs: how long the
//! newest 50 take to come back (docs/BENCHMARKS.md, "Listing jobs").
//!
//! ```sh
//! cargo bench -p shoal-submitter --bench list                     # local-folder store
//! SHOAL_CACHE_S3_BUCKET=shoal-bench SHOAL_CACHE_S3_ENDPOINT=http://127.0.0.1:8333 \
//!     SHOAL_BENCH_JOBS=20000 cargo bench -p shoal-submitter --bench list   # on S3 (SeaweedFS), an empty bucket
//! ```
//!
//! The jobs are written as the fleet writes them (`index::put_submitted`
//! by the client, `index::put_ended` by the worker), spread over the last
//! `SHOAL_BENCH_HOURS` hours (default 24), and once more all within one
//! hour, the worst case for the hourly folders. Each figure is the median
//! of three runs of `list_jobs` (the store side of `submit list`; asking
//! the workers adds one broker round trip).
use futures::StreamExt as _;
use shoal_schemas::{ResultMessage, Status};
use shoal_submitter::operate::{ListFilter, ListStatus, list_jobs};
use shoal_worker::store::index;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

fn env(name: &str) -> Option<String> {
    // A benchmark, not the product: reading the environment directly is fine.
    #[allow(clippy::disallowed_methods)]
    std::env::var(name).ok()
}

fn settings() -> Vec<(String, String)> {
    #[allow(clippy::disallowed_methods)]
    std::env::vars()
        .filter(|(k, _)| k.starts_with("SHOAL_CACHE_"))
        .collect()
}

async fn fill(store: &Arc<dyn object_store::ObjectStore>, jobs: usize, span: Duration, tag: &str) {
    let now = SystemTime::now();
    let started = Instant::now();
    futures::stream::iter(0..jobs)
        .map(|i| {
            let store = store.clone();
            async move {
                let at = now - span.mul_f64(i as f64 / jobs as f64);
                let us = index::micros(at);
                let id = format!("{tag}-{i:06}");
                index::put_submitted(store.as_ref(), &id, us).await.unwrap();
                let status = if i % 10 == 3 {
                    Status::Failed
                } else {
                    Status::Succeeded
                };
                let mut result = ResultMessage::new(&id, status, "bench-worker");
                result.submitted_at = Some(index::rfc3339(at));
                result.started_at = Some(index::rfc3339(at + Duration::from_millis(2)));
                result.finished_at = Some(index::rfc3339(at + Duration::from_millis(5)));
                index::put_ended(store.as_ref(), &result).await.unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    println!(
        "  wrote {jobs} jobs over {} in {:.1} s",
        humantime::format_duration(span),
        started.elapsed().as_secs_f64()
    );
}

async fn measure(store: &dyn object_store::ObjectStore, filter: &ListFilter) -> (f64, usize) {
    let mut runs = Vec::new();
    let mut found = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let rows = list_jobs(store, filter, &HashMap::new()).await.unwrap();
        runs.push(started.elapsed().as_secs_f64() * 1e3);
        found = rows.len();
    }
    runs.sort_by(f64::total_cmp);
    (runs[1], found)
}

fn main() {
    let jobs: usize = env("SHOAL_BENCH_JOBS")
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let hours: u64 = env("SHOAL_BENCH_HOURS")
        .and_then(|n| n.parse().ok())
        .unwrap_or(24);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut vars = settings();
    vars.push(("SHOAL_CACHE_DIR".into(), dir.path().display().to_string()));
    let config = shoal_worker::Config::load_from(None, vars).unwrap();
    let place = if config.cache.s3_bucket.is_empty() {
        "a local folder".to_owned()
    } else {
        format!(
            "S3 bucket {} at {}",
            config.cache.s3_bucket, config.cache.s3_endpoint
        )
    };
    let mut layouts = vec![(
        format!("spread over {hours} h"),
        Duration::from_secs(hours * 3600),
    )];
    // A bucket holds one layout (give the S3 run an empty bucket); a local
    // folder is made for each.
    if config.cache.s3_bucket.is_empty() {
        layouts.push((
            "all within the last hour".to_owned(),
            Duration::from_secs(3000),
        ));
    }
    for (label, span) in layouts {
        // A fresh prefix of the store each time: a folder per layout.
        let sub = tempfile::tempdir_in(dir.path()).unwrap();
        let mut vars = settings();
        vars.push(("SHOAL_CACHE_DIR".into(), sub.path().display().to_string()));
        let config = shoal_worker::Config::load_from(None, vars).unwrap();
        let store = shoal_worker::store::open(&config.cache).unwrap();
        println!("{jobs} finished jobs in {place}, {label}:");
        runtime.block_on(fill(&store, jobs, span, "job"));
        for (what, filter) in [
            (
                "newest 50",
                ListFilter {
                    statuses: vec![],
                    since: None,
                    limit: 50,
                },
            ),
            (
                "newest 50 failed",
                ListFilter {
                    statuses: vec![ListStatus::Ended(Status::Failed)],
                    since: None,
                    limit: 50,
                },
            ),
            (
                "newest 50 of the last 10 min",
                ListFilter {
                    statuses: vec![],
                    since: Some(SystemTime::now() - Duration::from_secs(600)),
                    limit: 50,
                },
            ),
        ] {
            let (ms, found) = runtime.block_on(measure(store.as_ref(), &filter));
            println!("  {what:<30} {ms:>8.1} ms (median of 3), {found} rows");
        }
    }
}
