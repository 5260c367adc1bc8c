//! One harness: an embedded pipeline with its own cache and download
//! folders, and helpers that run a job and hand back its result.
use shoal_schemas::{JobMessage, Location, ResultMessage, Source};
use shoal_worker::Config;
use shoal_worker::config::LimitValues;
use shoal_worker::pipeline::{LocalOptions, Pipeline};
use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

pub struct Harness {
    pub embedded: Pipeline,
    /// Kept so the cache folder lives as long as the harness.
    pub _cache: tempfile::TempDir,
    pub results: tempfile::TempDir,
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with_env(&[])
    }

    /// A harness whose configuration comes from these `SHOAL_*` variables only.
    pub fn with_env(env: &[(&str, &str)]) -> Harness {
        let cache = tempfile::tempdir().unwrap();
        let results = tempfile::tempdir().unwrap();
        let mut vars: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        vars.push(("SHOAL_CACHE_DIR".into(), cache.path().display().to_string()));
        let config = Config::load_from(None, vars).unwrap();
        let embedded = Pipeline::new(config, LimitValues::UNLIMITED).unwrap();
        Harness {
            embedded,
            _cache: cache,
            results,
        }
    }

    /// Uploads a file into the cache and names it as a source.
    pub async fn upload(&self, path: &Path) -> Source {
        shoal_submitter::local::upload_path(self.embedded.stager(), path)
            .await
            .unwrap()
    }

    /// Uploads raw bytes into the cache.
    pub async fn upload_bytes(&self, bytes: &[u8], name: &str) -> Source {
        let hex = shoal_worker::store::put_content(
            self.embedded.stager().store().as_ref(),
            bytes.to_vec().into(),
        )
        .await
        .unwrap();
        Source {
            location: Location::Sha256(hex),
            name: Some(name.into()),
            unpack: None,
        }
    }

    /// A job running `probe` with these arguments.
    pub async fn probe(&self, args: &[&str]) -> JobMessage {
        let mut job = JobMessage::new(self.upload(&fixture("probe.wasm")).await);
        job.args = args.iter().map(|a| a.to_string()).collect();
        job
    }

    /// Runs a job to its result; the download folder is unique per job id.
    pub async fn run(&self, mut job: JobMessage) -> (ResultMessage, PathBuf) {
        let id = job
            .id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        let download = self.results.path().join(&id);
        self.embedded
            .run(
                job,
                LocalOptions {
                    extra_mounts: Vec::new(),
                    download: Some(download),
                    ..LocalOptions::default()
                },
            )
            .await
            .unwrap()
    }
}

/// The inline stdout text of a result.
pub fn stdout(result: &ResultMessage) -> &str {
    result
        .stdout
        .as_ref()
        .and_then(|s| s.text.as_deref())
        .unwrap_or("")
}

pub fn kind(result: &ResultMessage) -> Option<&'static str> {
    result.error.as_ref().map(|e| e.kind.as_str())
}
