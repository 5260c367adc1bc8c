//! Compiled-module cache benchmark (not a timed test):
//! `cargo bench -p shoal-worker --bench compiled`.
//!
//! The first run of a ~5 MB module on a fresh worker (a new `Executor`, so
//! an empty memory cache), twice: compiling it, and loading the artifact
//! another worker stored (`stage::compiled`, read from a local-folder store
//! through object_store, tag checked). Results go to docs/BENCHMARKS.md.
use bytes::Bytes;
use sha2::{Digest, Sha256};
use shoal_worker::execute::artifacts::Artifacts;
use shoal_worker::execute::{Executor, ExecutorConfig, ModuleBytes, Outcome, RunLimits, RunSpec};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A synthetic module of about `target` bytes: many small arithmetic
/// functions, which is what compilers spend their time on.
fn big_module(target: usize) -> ModuleBytes {
    let mut wat = String::from("(module\n");
    let mut funcs = 0;
    loop {
        let mut body = String::new();
        for k in 0..60 {
            write!(
                body,
                " local.get 0 i32.const {} i32.add i32.const {} i32.mul local.set 0",
                funcs * 61 + k,
                k | 1
            )
            .unwrap();
        }
        writeln!(
            wat,
            "(func $f{funcs} (param i32) (result i32){body} local.get 0)"
        )
        .unwrap();
        funcs += 1;
        if funcs % 500 == 0 && wat::parse_str(format!("{wat})")).unwrap().len() >= target {
            break;
        }
    }
    wat.push_str("(func (export \"_start\") i32.const 1 call $f0 drop))");
    let bytes = wat::parse_str(&wat).unwrap();
    ModuleBytes {
        sha256: Sha256::digest(&bytes).into(),
        bytes: Bytes::from(bytes),
    }
}

fn spec(module: &ModuleBytes, artifact: Option<Bytes>, want: bool) -> RunSpec {
    RunSpec {
        module: module.clone(),
        argv0: "big.wasm".into(),
        entrypoint: "_start".into(),
        args: Vec::new(),
        env: Vec::new(),
        mounts: Vec::new(),
        limits: RunLimits {
            fuel: u64::MAX,
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(600),
            max_stdout_bytes: 1024,
            max_stderr_bytes: 1024,
            max_disk_bytes: u64::MAX,
            max_disk_files: u64::MAX,
        },
        artifact,
        want_artifact: want,
        compiled: None,
        imports: Vec::new(),
        live: Default::default(),
    }
}

fn main() {
    let module = big_module(5 << 20);
    println!("module: {} bytes", module.bytes.len());
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let artifacts = Artifacts::new(store, "bench key");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // The first worker compiles and shares.
    let first = Executor::new(ExecutorConfig::default()).unwrap();
    let report = first.run_blocking(spec(&module, None, true));
    assert_eq!(report.outcome, Outcome::Exited(0));
    let native = report.new_artifact.expect("an artifact");
    println!("artifact: {} bytes", native.len());
    rt.block_on(artifacts.put(first.fingerprint(), &module.sha256, &native));

    let runs = 3;
    let mut compile = Vec::new();
    let mut load = Vec::new();
    for _ in 0..runs {
        let fresh = Executor::new(ExecutorConfig::default()).unwrap();
        let started = Instant::now();
        let report = fresh.run_blocking(spec(&module, None, false));
        assert!(!report.cache_hit);
        compile.push(started.elapsed());

        let fresh = Executor::new(ExecutorConfig::default()).unwrap();
        let started = Instant::now();
        let artifact = rt.block_on(artifacts.get(fresh.fingerprint(), &module.sha256));
        assert!(artifact.is_some(), "the artifact was refused");
        let report = fresh.run_blocking(spec(&module, artifact, false));
        assert!(report.from_artifact);
        assert_eq!(report.outcome, Outcome::Exited(0));
        load.push(started.elapsed());
    }
    let best = |v: &[Duration]| v.iter().min().unwrap().as_secs_f64();
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    println!(
        "first run, compiling            best {:>9.1} ms | median {:>9.1} ms",
        best(&compile) * 1e3,
        median(&mut compile) * 1e3
    );
    println!(
        "first run, artifact from store  best {:>9.1} ms | median {:>9.1} ms",
        best(&load) * 1e3,
        median(&mut load) * 1e3
    );
    println!(
        "speed-up (medians)  {:>8.1}x",
        median(&mut compile) / median(&mut load)
    );
}
