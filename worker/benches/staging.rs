//! Staging throughput and memory (not a timed test):
//! `cargo bench -p shoal-worker --bench staging` (SeaweedFS on
//! 127.0.0.1:8333 with bucket `shoal-test` for the S3 rows: `scripts/services`).
//!
//! A 1 GiB file (or `-- N` MiB) is served by an HTTP origin on
//! loopback and stored as an S3 object. Each row runs in a child process of
//! its own, so its peak RSS (VmHWM) is its own:
//! - url, plain copy: reqwest streams the body into a file (the floor);
//! - url, shoal: `Stager::fetch_to` — address guard, SHA-256, the file, and
//!   the copy into the cache (a local folder here);
//! - s3, plain copy: object_store streams the object into a file;
//! - s3, shoal: `Stager::fetch_to` for `s3://shoal-test/…`.
//!
//! Results go to docs/BENCHMARKS.md by hand.
use shoal_schemas::{Location, Source};
use shoal_worker::Config;
use shoal_worker::stage::Stager;
use shoal_worker::store::open as open_store;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const S3_ENDPOINT: &str = "http://127.0.0.1:8333";
const BUCKET: &str = "shoal-test";

/// The size in MiB: the first numeric argument (`-- 256`), else 1024.
fn megabytes() -> u64 {
    std::env::args()
        .filter_map(|a| a.parse().ok())
        .next()
        .unwrap_or(1024)
}

// A benchmark's own folder, not a worker's configuration.
#[allow(clippy::disallowed_methods)]
fn work_dir() -> PathBuf {
    std::env::temp_dir().join("shoal-bench-staging")
}

/// Deterministic, incompressible-looking content, made once.
fn source_file(mb: u64) -> PathBuf {
    let path = work_dir().join(format!("source-{mb}.bin"));
    if path.metadata().is_ok_and(|m| m.len() == mb << 20) {
        return path;
    }
    std::fs::create_dir_all(work_dir()).unwrap();
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mb {
        for word in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        out.write_all(&block).unwrap();
    }
    out.flush().unwrap();
    path
}

/// A minimal HTTP/1.1 origin serving one file at any path, streamed from disk.
async fn origin(file: PathBuf) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let file = file.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let mut f = tokio::fs::File::open(&file).await.unwrap();
                let len = f.metadata().await.unwrap().len();
                let header = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                );
                socket.write_all(header.as_bytes()).await.unwrap();
                let mut chunk = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    if socket.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    port
}

fn config(cache: &Path) -> Config {
    Config::load_from(
        None,
        [
            ("SHOAL_CACHE_DIR".to_owned(), cache.display().to_string()),
            ("SHOAL_STAGING_URL_ALLOW".into(), "127.0.0.1/32".into()),
            ("SHOAL_CACHE_S3_ENDPOINT".into(), S3_ENDPOINT.into()),
            (
                "SHOAL_LIMITS_MAX_INPUT_BYTES".into(),
                (4u64 << 30).to_string(),
            ),
        ],
    )
    .unwrap()
}

fn peak_and_current_rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// One row, in this (child) process: prints `secs rss_growth_kib`.
fn row(kind: &str, mb: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let source = source_file(mb);
        let port = origin(source.clone()).await;
        let url = format!("http://127.0.0.1:{port}/data.bin");
        let scratch = tempfile::tempdir_in(work_dir()).unwrap();
        let dest = scratch.path().join("staged");
        let cache = scratch.path().join("cache");
        let config = config(&cache);
        let key = format!("bench/source-{mb}.bin");
        let stager = Stager::new(open_store(&config.cache).unwrap(), &config).unwrap();
        let bucket = open_store(&shoal_worker::config::CacheSection {
            s3_bucket: BUCKET.into(),
            ..config.cache.clone()
        })
        .unwrap();
        let uploads = shoal_worker::store::Uploads::new(&work_dir());
        let (_, before) = peak_and_current_rss_kib();
        let started = Instant::now();
        let size = match kind {
            "url-plain" => {
                let mut response = reqwest::get(&url).await.unwrap();
                let mut file = tokio::fs::File::create(&dest).await.unwrap();
                let mut size = 0u64;
                while let Some(chunk) = response.chunk().await.unwrap() {
                    size += chunk.len() as u64;
                    file.write_all(&chunk).await.unwrap();
                }
                file.flush().await.unwrap();
                size
            }
            "url-shoal" => stager
                .fetch_to(
                    &Source::new(Location::Url(url.clone())),
                    "bench",
                    &dest,
                    &uploads,
                )
                .await
                .unwrap(),
            "s3-plain" => {
                use futures::TryStreamExt as _;
                use object_store::ObjectStoreExt as _;
                let got = bucket
                    .get(&object_store::path::Path::from(key.as_str()))
                    .await
                    .unwrap();
                let mut stream = got.into_stream();
                let mut file = tokio::fs::File::create(&dest).await.unwrap();
                let mut size = 0u64;
                while let Some(chunk) = stream.try_next().await.unwrap() {
                    size += chunk.len() as u64;
                    file.write_all(&chunk).await.unwrap();
                }
                file.flush().await.unwrap();
                size
            }
            "s3-shoal" => stager
                .fetch_to(
                    &Source::new(Location::S3(format!("s3://{BUCKET}/{key}"))),
                    "bench",
                    &dest,
                    &uploads,
                )
                .await
                .unwrap(),
            other => panic!("unknown row {other}"),
        };
        let secs = started.elapsed().as_secs_f64();
        // The cache copy, which a job overlaps with its guest's run.
        uploads.finish().await;
        let with_cache = started.elapsed().as_secs_f64();
        assert_eq!(size, mb << 20);
        let (peak, _) = peak_and_current_rss_kib();
        println!("{secs} {} {with_cache}", peak.saturating_sub(before));
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--row") {
        row(&args[i + 1], megabytes());
        return;
    }
    let mb = megabytes();
    let source = source_file(mb);
    // The S3 object, uploaded once.
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let cache = work_dir().join("unused-cache");
            let config = config(&cache);
            let bucket = open_store(&shoal_worker::config::CacheSection {
                s3_bucket: BUCKET.into(),
                ..config.cache.clone()
            })
            .unwrap();
            let key = object_store::path::Path::from(format!("bench/source-{mb}.bin"));
            shoal_worker::store::put_file(bucket.as_ref(), &key, &source)
                .await
                .expect("uploading the S3 object (is SeaweedFS running? scripts/services)");
        });
    }
    println!("## staging {mb} MiB (best of 3; peak RSS growth of the process)");
    let me = std::env::current_exe().unwrap();
    for kind in ["url-plain", "url-shoal", "s3-plain", "s3-shoal"] {
        let mut runs: Vec<(f64, u64, f64)> = (0..3)
            .map(|_| {
                let out = Command::new(&me)
                    .args(["--row", kind, &mb.to_string()])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{kind}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = String::from_utf8(out.stdout).unwrap();
                let mut parts = text.split_whitespace();
                (
                    parts.next().unwrap().parse().unwrap(),
                    parts.next().unwrap().parse().unwrap(),
                    parts.next().unwrap().parse().unwrap(),
                )
            })
            .collect();
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (secs, _, with_cache) = runs[0];
        let rss = runs.iter().map(|r| r.1).max().unwrap();
        println!(
            "{kind:<10} {:>8.0} MB/s  {:>6.2} s  (with the cache copy done: {:>6.2} s)  peak RSS growth {:>6.1} MB",
            (mb << 20) as f64 / 1e6 / secs,
            secs,
            with_cache,
            rss as f64 / 1024.0
        );
    }
}
