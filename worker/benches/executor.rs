//! Executor benchmarks (not timed tests): `cargo bench -p shoal-worker --bench executor`.
//!
//! 1. Per-job overhead of `hello` with a warm module cache, as a
//!    distribution, beside wasmtime's own floor (instantiating the same
//!    pre-linked module, with the on-demand and the pooling allocator).
//! 2. Fuel overhead: a CPU-bound loop with metering on versus off.
//!
//! Results go to docs/BENCHMARKS.md by hand, with the machine they ran on.
use bytes::Bytes;
use sha2::{Digest, Sha256};
use shoal_worker::execute::{Executor, ExecutorConfig, ModuleBytes, Outcome, RunLimits, RunSpec};
use std::path::Path;
use std::time::{Duration, Instant};

fn module(path: &Path) -> ModuleBytes {
    let bytes = std::fs::read(path).expect("fixture");
    ModuleBytes {
        sha256: Sha256::digest(&bytes).into(),
        bytes: Bytes::from(bytes),
    }
}

fn spec(module: &ModuleBytes, args: &[&str], fuel: u64) -> RunSpec {
    RunSpec {
        module: module.clone(),
        argv0: "m.wasm".into(),
        entrypoint: "_start".into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![("HELLO".into(), "bench".into())],
        mounts: Vec::new(),
        limits: RunLimits {
            fuel,
            memory_bytes: 256 << 20,
            timeout: Duration::from_secs(600),
            max_stdout_bytes: 1 << 20,
            max_stderr_bytes: 1 << 20,
            max_disk_bytes: u64::MAX,
            max_disk_files: u64::MAX,
        },
        artifact: None,
        want_artifact: false,
        compiled: None,
        imports: Vec::new(),
        live: Default::default(),
    }
}

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "p50 {:>7.1} µs | p90 {:>7.1} µs | p99 {:>7.1} µs | n {}",
        at(0.50).as_secs_f64() * 1e6,
        at(0.90).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        samples.len()
    )
}

fn floor(module: &ModuleBytes, pooling: bool, n: usize) -> Vec<Duration> {
    use wasmtime::{
        Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig, Store,
    };
    let mut config = Config::new();
    config.consume_fuel(true).epoch_interruption(true);
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(16)
            .total_memories(16)
            .total_tables(16)
            .max_memory_size(256 << 20);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    let engine = Engine::new(&config).unwrap();
    let mut linker: Linker<wasmtime_wasi::p1::WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s| s).unwrap();
    let pre = linker
        .instantiate_pre(&Module::new(&engine, &module.bytes).unwrap())
        .unwrap();
    (0..n)
        .map(|_| {
            let started = Instant::now();
            let mut store = Store::new(&engine, wasmtime_wasi::WasiCtxBuilder::new().build_p1());
            store.set_fuel(u64::MAX).unwrap();
            store.set_epoch_deadline(u64::MAX / 2);
            let _instance = pre.instantiate(&mut store).unwrap();
            started.elapsed()
        })
        .collect()
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let hello = module(&root.join("examples/hello/hello.wasm"));
    let cpu = module(&root.join("tests/fixtures/cpu.wasm"));
    let n = 3000;

    println!("## hello, warm module cache ({n} jobs each)");
    let on_demand = Executor::new(ExecutorConfig::default()).unwrap();
    let executor = Executor::new(ExecutorConfig {
        pool_stores: 4,
        ..ExecutorConfig::default()
    })
    .unwrap();
    for (name, executor) in [("on demand", &on_demand), ("pooling  ", &executor)] {
        let warm = executor.run_blocking(spec(&hello, &["x"], u64::MAX));
        assert_eq!(warm.outcome, Outcome::Exited(0));
        let samples: Vec<Duration> = (0..n)
            .map(|_| {
                let started = Instant::now();
                let report = executor.run_blocking(spec(&hello, &["x"], u64::MAX));
                assert!(report.cache_hit);
                started.elapsed()
            })
            .collect();
        println!("executor.run_blocking, {name} {}", percentiles(samples));
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let samples: Vec<Duration> = rt.block_on(async {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            executor.run(spec(&hello, &["x"], u64::MAX)).await;
            out.push(started.elapsed());
        }
        out
    });
    println!(
        "executor.run, pooling (blocking pool) {}",
        percentiles(samples)
    );
    println!(
        "floor: instantiate, on-demand alloc  {}",
        percentiles(floor(&hello, false, n))
    );
    println!(
        "floor: instantiate, pooling alloc    {}",
        percentiles(floor(&hello, true, n))
    );

    let iterations = "300000000";
    println!();
    println!("## fuel overhead: cpu.wasm, {iterations} iterations (best of 3)");
    let best = |metering: bool| {
        let executor = Executor::new(ExecutorConfig {
            fuel_metering: metering,
            ..ExecutorConfig::default()
        })
        .unwrap();
        (0..3)
            .map(|_| {
                let report = executor.run_blocking(spec(&cpu, &[iterations], u64::MAX));
                assert_eq!(report.outcome, Outcome::Exited(0));
                report.run
            })
            .min()
            .unwrap()
    };
    let off = best(false);
    let on = best(true);
    println!("metering off {:>8.1} ms", off.as_secs_f64() * 1e3);
    println!("metering on  {:>8.1} ms", on.as_secs_f64() * 1e3);
    println!(
        "ratio        {:>8.2}x",
        on.as_secs_f64() / off.as_secs_f64()
    );
}
