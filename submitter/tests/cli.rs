//! The `submit` binary itself: what a person types and sees.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

struct Cli {
    cache: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl Cli {
    fn new() -> Cli {
        Cli { cache: tempfile::tempdir().unwrap(), work: tempfile::tempdir().unwrap() }
    }

    fn submit(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_submit"))
            .args(args)
            .current_dir(self.work.path())
            .env("SHOAL_CACHE_DIR", self.cache.path())
            .env("HOST_ONLY_SECRET", "must-not-leak")
            .output()
            .unwrap()
    }
}

fn path(rel: &str) -> String {
    repo().join(rel).display().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn hello_prints_args_and_env_then_a_summary() {
    let cli = Cli::new();
    // Options after the module, as with `bacalhau wasm run`, and `--` before
    // a guest argument that starts with '-'.
    let out = cli.submit(&["run", "--local", &path("examples/hello/hello.wasm"), "shoal", "-e", "HELLO=world", "--", "-v"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from hello.wasm\narg[1] = shoal\narg[2] = -v\nHELLO = world\n");
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("shoal: succeeded · exit 0 · fuel "), "{stderr}");
    assert!(stderr.contains("results in shoal-results/"), "{stderr}");
    // The default download folder holds the Bacalhau-style layout.
    let results = cli.work.path().join("shoal-results");
    let job = std::fs::read_dir(&results).unwrap().next().unwrap().unwrap().path();
    for name in ["stdout", "stderr", "exitCode", "result.json", "outputs"] {
        assert!(job.join(name).exists(), "{name} missing in {}", job.display());
    }
}

#[test]
fn the_process_exits_with_the_jobs_code() {
    let cli = Cli::new();
    let probe = path("tests/fixtures/probe.wasm");
    for (args, code) in [
        (vec!["exit", "42"], 42),
        (vec!["exit", "1"], 1),
        // WASI preview1 refuses statuses of 126 and above: that is a trap.
        (vec!["exit", "256"], 125),
        (vec!["trap"], 125),
    ] {
        let mut argv = vec!["run", "--local", probe.as_str()];
        argv.extend(args.iter().copied());
        let out = cli.submit(&argv);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out.stderr));
    }
    let out = cli.submit(&["run", "--local", &probe, "spin", "--fuel", "unlimited", "--timeout", "200ms"]);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("timeout"));
    // Rejected by the worker's checks (an output over /inputs): 126.
    let out = cli.submit(&["run", "--local", &probe, "env", "-o", "o:/inputs/o"]);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
}

#[test]
fn wordcount_reads_an_input_and_writes_an_output() {
    let cli = Cli::new();
    let dl = cli.work.path().join("wc");
    let out = cli.submit(&[
        "run", "--local", &path("examples/wordcount/wordcount.wasm"),
        "-i", &format!("{}:/inputs/text.txt", path("examples/wordcount/sample.txt")),
        "/inputs/text.txt", "--download", dl.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "3 15 89 /inputs/text.txt\n");
    assert_eq!(std::fs::read_to_string(dl.join("outputs/result.txt")).unwrap(), "lines 3\nwords 15\nbytes 89\n");
}

#[test]
fn json_prints_the_result_only() {
    let cli = Cli::new();
    let out = cli.submit(&["run", "--local", "--json", "--id", "json-1", &path("tests/fixtures/probe.wasm"), "env"]);
    assert_eq!(out.status.code(), Some(0));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    shoal_schemas::validate_result_value(&value).unwrap();
    assert_eq!(value["job_id"], "json-1");
    // The host's environment never reaches the guest.
    assert_eq!(value["stdout"]["text"], "");
}

#[test]
fn a_mount_preopens_a_host_folder_read_only_unless_rw() {
    let cli = Cli::new();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("a.txt"), "from host").unwrap();
    let probe = path("tests/fixtures/probe.wasm");
    let ro = format!("{}:/data", host.path().display());
    let out = cli.submit(&["run", "--local", &probe, "--mount", &ro, "cat", "/data/a.txt"]);
    assert_eq!(text(&out.stdout), "from host");
    let out = cli.submit(&["run", "--local", &probe, "--mount", &ro, "write", "/data/b.txt", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!host.path().join("b.txt").exists());
    let rw = format!("{ro}:rw");
    let out = cli.submit(&["run", "--local", &probe, "--mount", &rw, "write", "/data/b.txt", "x"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(host.path().join("b.txt")).unwrap(), "x");
}

#[test]
fn bad_arguments_say_what_to_type() {
    let cli = Cli::new();
    let hello = path("examples/hello/hello.wasm");
    for (args, hint) in [
        (vec!["--memory", "lots"], "64MiB"),
        (vec!["--timeout", "soon"], "30s"),
        (vec!["-e", "NOVALUE"], "NAME=VALUE"),
        (vec!["-o", "/results"], "NAME:/GUEST/PATH"),
        (vec!["--fuel", "0"], "unlimited"),
    ] {
        let mut argv = vec!["run", "--local", hello.as_str()];
        argv.extend(args.iter().copied());
        let out = cli.submit(&argv);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains(hint), "{args:?}: {}", text(&out.stderr));
    }
    let out = cli.submit(&["run", "--local", "no-such.wasm"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no such file"), "{}", text(&out.stderr));
}
