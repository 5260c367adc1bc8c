//! What the worker binary's tests share: names of their own on the shared
//! broker, a store seeded with the probe module, and reaping the worker
//! processes they start.
#![allow(dead_code)]
use shoal_schemas::topology::Topology;
use std::path::{Path, PathBuf};
use std::process::Child;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A topology of the test's own (`<prefix>.jobs.<suffix>` and so on), so
/// tests sharing the broker never see each other's messages.
pub fn topology(prefix: &str) -> Topology {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    Topology {
        job_queue: format!("{prefix}.jobs.{suffix}"),
        results_exchange: format!("{prefix}.results.{suffix}"),
        dead_letter: format!("{prefix}.dead.{suffix}"),
        control_exchange: format!("{prefix}.control.{suffix}"),
        delivery_limit: 10,
    }
}

/// Puts the probe module into the local store at `cache` (as `submit
/// upload` would); returns its `sha256` source.
pub fn seed_probe(cache: &Path) -> String {
    let probe = std::fs::read(repo().join("tests/fixtures/probe.wasm")).unwrap();
    let module = shoal_worker::store::sha256_hex(&probe);
    let entry = cache.join("cache/sha256").join(&module);
    std::fs::create_dir_all(entry.parent().unwrap()).unwrap();
    std::fs::write(entry, probe).unwrap();
    module
}

/// Kills the children when a test fails halfway, so no worker outlives it.
pub struct Reaper(pub Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
