//! WASI preview1 conformance through the real `submit` binary: every
//! program in `tests/fixtures/wasi/` runs as `submit run --local`, and its
//! exit code and stdout must be exactly what its `.json` spec says (the
//! reference `wasmtime` CLI gives the same; `check-reference.sh` there).
//!
//! The programs are our own, written after the WebAssembly/wasi-testsuite
//! preview1 tests (see that folder's README): args and env verbatim, stdin
//! empty, stdout byte-exact, exit codes, clocks, the file system under a
//! writable host folder at `/` (paths, links, symlinks, timestamps,
//! `fd_readdir`, `poll_oneoff`, `fd_advise`, …) and escapes refused.
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("tests/fixtures/wasi")
}

/// One test's expectations (the format is in the fixtures' README).
struct Spec {
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    root: bool,
    outputs: bool,
    exit_code: i32,
    stdout: Option<String>,
}

impl Spec {
    fn load(json: &Path) -> Spec {
        let text = std::fs::read_to_string(json).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", json.display()));
        let strings = |key: &str| -> Vec<String> {
            v[key]
                .as_array()
                .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        };
        let env = v["env"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Spec {
            name: json.file_stem().unwrap().to_string_lossy().into_owned(),
            args: strings("args"),
            env,
            root: v["root"].as_bool().unwrap_or(false),
            outputs: v["outputs"].as_bool().unwrap_or(true),
            exit_code: v["exit_code"].as_i64().map_or(0, |c| c as i32),
            stdout: v["stdout"].as_str().map(str::to_owned),
        }
    }
}

/// Copies `from` into `to` (which exists), symlinks as symlinks.
fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if kind.is_dir() {
            std::fs::create_dir(&dst).unwrap();
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Runs one test; `Err` says how it differed.
fn run(spec: &Spec, cache: &Path) -> Result<(), String> {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let wasm = fixtures().join(format!("{}.wasm", spec.name));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_submit"));
    cmd.current_dir(work.path())
        .env("SHOAL_CACHE_DIR", cache)
        .env("HOST_ONLY_SECRET", "must-not-leak")
        .args(["run", "--local"])
        .arg(&wasm)
        .args(["--fuel", "unlimited", "--timeout", "60s", "--download"])
        .arg(work.path().join("results"));
    if spec.root {
        copy_tree(&fixtures().join("root"), &root);
        cmd.arg("--mount").arg(format!("{}:/:rw", root.display()));
    }
    if !spec.outputs {
        cmd.arg("--no-outputs");
    }
    for (k, v) in &spec.env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    cmd.arg("--").args(&spec.args);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(spec.exit_code) {
        return Err(format!(
            "exit {:?}, expected {}; stdout {stdout:?}; stderr {stderr:?}",
            out.status.code(),
            spec.exit_code
        ));
    }
    if let Some(want) = &spec.stdout
        && out.stdout != want.as_bytes()
    {
        return Err(format!(
            "stdout {stdout:?}, expected {want:?}; stderr {stderr:?}"
        ));
    }
    // The result carries the guest's own exit status, not only the CLI.
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("results/result.json")).unwrap())
            .unwrap();
    if result["exit_code"].as_i64() != Some(i64::from(spec.exit_code)) {
        return Err(format!("result.json exit_code {}", result["exit_code"]));
    }
    Ok(())
}

#[test]
fn every_wasi_conformance_program_passes_through_submit() {
    let mut specs: Vec<Spec> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| Spec::load(&p))
        .collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    // A spec without its program (or the reverse) is a fixture mistake.
    for spec in &specs {
        assert!(
            fixtures().join(format!("{}.wasm", spec.name)).is_file(),
            "{} has no .wasm; run scripts/build-fixtures",
            spec.name
        );
    }
    assert!(
        specs.len() >= 20,
        "only {} conformance programs",
        specs.len()
    );
    let cache = tempfile::tempdir().unwrap();
    let failed: Vec<String> = specs
        .iter()
        .filter_map(|spec| {
            run(spec, cache.path())
                .err()
                .map(|e| format!("{}: {e}", spec.name))
        })
        .collect();
    println!(
        "wasi conformance: {} of {} passed",
        specs.len() - failed.len(),
        specs.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
