//! The `submit` binary itself: what a person types and sees.
mod common;

use common::{Cli, InProcessWorker, path, repo, submit_command, text};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The root CID of a fixture CAR, from `tests/fixtures/ipfs/cids.txt`.
fn fixture_cid(car: &str) -> String {
    let cids = std::fs::read_to_string(repo().join("tests/fixtures/ipfs/cids.txt")).unwrap();
    cids.lines()
        .find_map(|l| l.strip_prefix(&format!("{car}\t")))
        .and_then(|rest| rest.split('\t').next())
        .unwrap()
        .to_owned()
}

#[test]
fn hello_prints_args_and_env_then_a_summary() {
    let cli = Cli::new();
    // Options after the module, as with `bacalhau wasm run`, and `--` before
    // a guest argument that starts with '-'.
    let out = cli.submit(&[
        "run",
        "--local",
        &path("examples/hello/hello.wasm"),
        "shoal",
        "-e",
        "HELLO=world",
        "--",
        "-v",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "hello from hello.wasm\narg[1] = shoal\narg[2] = -v\nHELLO = world\n"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("shoal: succeeded · exit 0 · fuel "),
        "{stderr}"
    );
    assert!(stderr.contains("results in shoal-results/"), "{stderr}");
    // The default download folder holds the Bacalhau-style layout.
    let results = cli.work.path().join("shoal-results");
    let job = std::fs::read_dir(&results)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for name in ["stdout", "stderr", "exitCode", "result.json", "outputs"] {
        assert!(
            job.join(name).exists(),
            "{name} missing in {}",
            job.display()
        );
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
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = cli.submit(&[
        "run",
        "--local",
        &probe,
        "spin",
        "--fuel",
        "unlimited",
        "--timeout",
        "200ms",
    ]);
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
        "run",
        "--local",
        &path("examples/wordcount/wordcount.wasm"),
        "-i",
        &format!("{}:/inputs/text.txt", path("examples/wordcount/sample.txt")),
        "/inputs/text.txt",
        "--download",
        dl.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "3 15 89 /inputs/text.txt\n");
    assert_eq!(
        std::fs::read_to_string(dl.join("outputs/result.txt")).unwrap(),
        "lines 3\nwords 15\nbytes 89\n"
    );
}

#[test]
fn json_prints_the_result_only() {
    let cli = Cli::new();
    let out = cli.submit(&[
        "run",
        "--local",
        "--json",
        "--id",
        "json-1",
        &path("tests/fixtures/probe.wasm"),
        "env",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    shoal_schemas::validate_result_value(&value).unwrap();
    assert_eq!(value["job_id"], "json-1");
    // The host's environment never reaches the guest.
    assert_eq!(value["stdout"]["text"], "");
    // A local run was submitted when it began; all three times are there,
    // in order (fixed-width RFC 3339 in UTC sorts as text).
    let times: Vec<&str> = ["submitted_at", "started_at", "finished_at"]
        .iter()
        .map(|k| value[k].as_str().unwrap_or_else(|| panic!("{k}: {value}")))
        .collect();
    assert!(
        times.iter().all(|t| t.len() == 27 && t.ends_with('Z')),
        "{times:?}"
    );
    assert!(times[0] <= times[1] && times[1] <= times[2], "{times:?}");
}

#[test]
fn a_mount_preopens_a_host_folder_read_only_unless_rw() {
    let cli = Cli::new();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("a.txt"), "from host").unwrap();
    let probe = path("tests/fixtures/probe.wasm");
    let ro = format!("{}:/data", host.path().display());
    let out = cli.submit(&[
        "run",
        "--local",
        &probe,
        "--mount",
        &ro,
        "cat",
        "/data/a.txt",
    ]);
    assert_eq!(text(&out.stdout), "from host");
    let out = cli.submit(&[
        "run",
        "--local",
        &probe,
        "--mount",
        &ro,
        "write",
        "/data/b.txt",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!host.path().join("b.txt").exists());
    let rw = format!("{ro}:rw");
    let out = cli.submit(&[
        "run",
        "--local",
        &probe,
        "--mount",
        &rw,
        "write",
        "/data/b.txt",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(host.path().join("b.txt")).unwrap(),
        "x"
    );
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
        assert!(
            text(&out.stderr).contains(hint),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = cli.submit(&["run", "--local", "no-such.wasm"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no such file"),
        "{}",
        text(&out.stderr)
    );
}

/// `submit run` without `--local`: through a real RabbitMQ to a worker
/// (in this test's process) sharing the cache folder, then `submit get`.
#[test]
fn run_against_a_fleet_then_get_the_result_again() {
    let cli = Cli::new();
    let (fleet, env) = InProcessWorker::start("cli", cli.cache.path(), &[]);
    let suffix = fleet.suffix.clone();

    let run = |args: &[&str]| {
        submit_command()
            .args(args)
            .current_dir(cli.work.path())
            .envs(env.iter().cloned())
            .output()
            .unwrap()
    };
    let dl = cli.work.path().join("fleet-wc");
    let out = run(&[
        "run",
        &path("examples/wordcount/wordcount.wasm"),
        "--id",
        &format!("wc-{suffix}"),
        "-i",
        &path("examples/wordcount/sample.txt"),
        "/inputs/sample.txt",
        "--download",
        dl.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "3 15 89 /inputs/sample.txt\n");
    assert_eq!(
        std::fs::read_to_string(dl.join("outputs/result.txt")).unwrap(),
        "lines 3\nwords 15\nbytes 89\n"
    );

    let again = cli.work.path().join("again");
    let out = run(&[
        "get",
        &format!("wc-{suffix}"),
        "--download",
        again.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for name in [
        "stdout",
        "stderr",
        "exitCode",
        "outputs/result.txt",
        "result.json",
    ] {
        assert_eq!(
            std::fs::read(dl.join(name)).unwrap(),
            std::fs::read(again.join(name)).unwrap(),
            "{name}"
        );
    }
    // Outputs round-trip byte-exact through the store and `submit get`:
    // binary and empty files, nested folders, spaces and non-ASCII names.
    let tree = cli.work.path().join("tree");
    std::fs::create_dir_all(tree.join("nested dir/deeper")).unwrap();
    let binary: Vec<u8> = (0..70_000u32).map(|i| (i % 256) as u8).collect();
    std::fs::write(tree.join("bin.dat"), &binary).unwrap();
    std::fs::write(tree.join("empty.txt"), b"").unwrap();
    std::fs::write(tree.join("with space.txt"), b"spaced\n").unwrap();
    std::fs::write(
        tree.join("nested dir/deeper/naïve café ☕.txt"),
        "ünïcödé\n",
    )
    .unwrap();
    let id = format!("tree-{suffix}");
    let out = run(&[
        "run",
        &path("tests/fixtures/probe.wasm"),
        "--id",
        &id,
        "-i",
        &format!("{}:/inputs/tree", tree.display()),
        "--",
        "copytree",
        "/inputs/tree",
        "/outputs",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let fetched = cli.work.path().join("tree-again");
    let out = run(&["get", &id, "--download", fetched.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let files = |root: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut found: Vec<_> = walk(root)
            .into_iter()
            .map(|p| {
                (
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        found.sort();
        found
    };
    let want = files(&tree);
    assert_eq!(want.len(), 4);
    assert!(
        files(&fetched.join("outputs")) == want,
        "outputs differ from the original tree"
    );

    // Import modules through the fleet: uploaded, staged, linked.
    let out = run(&[
        "run",
        &path("tests/fixtures/uses_mathlib.wat"),
        "--import",
        &format!("mathlib={}", path("tests/fixtures/mathlib.wat")),
    ]);
    assert_eq!(out.status.code(), Some(42), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from the library\n");

    // A job's own failure comes back as its exit code, through the fleet too.
    let out = run(&["run", &path("tests/fixtures/probe.wasm"), "exit", "7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let out = run(&[
        "run",
        "--detach",
        &path("tests/fixtures/probe.wasm"),
        "exit",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !text(&out.stdout).trim().is_empty(),
        "--detach prints the job id"
    );

    fleet.stop();
}

#[test]
fn an_unreachable_broker_is_a_clear_error() {
    let cli = Cli::new();
    let out = submit_command()
        .args(["run", &path("examples/hello/hello.wasm")])
        .current_dir(cli.work.path())
        .env("SHOAL_CACHE_DIR", cli.cache.path())
        .env("SHOAL_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("connecting to the fleet") && stderr.contains("127.0.0.1:1"),
        "{stderr}"
    );
}

/// A static gateway: `python3 -m http.server` over a folder laid out as
/// `ipfs/<cid>` (it ignores `?format=car`), killed on drop.
struct StaticGateway {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl StaticGateway {
    fn start(cars: &[(&str, &str)]) -> StaticGateway {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ipfs")).unwrap();
        for (cid, car) in cars {
            std::fs::copy(
                repo().join("tests/fixtures/ipfs").join(car),
                dir.path().join("ipfs").join(cid),
            )
            .unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "gateway did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        StaticGateway {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for StaticGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_module_and_an_input_by_cid_run_locally() {
    let (probe, hello) = (fixture_cid("probe.car"), fixture_cid("hello.car"));
    let gateway = StaticGateway::start(&[(&probe, "probe.car"), (&hello, "hello.car")]);
    let cli = Cli::new();
    let gateways = format!("http://127.0.0.1:{}", gateway.port);
    let env = [("SHOAL_STAGING_IPFS_GATEWAYS", gateways.as_str())];
    let module = format!("ipfs://{probe}");
    let input = format!("{hello}:/inputs/hello.txt");
    let out = cli.submit_with(
        &[
            "run",
            "--local",
            &module,
            "-i",
            &input,
            "--",
            "cat",
            "/inputs/hello.txt",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let want = std::fs::read(repo().join("tests/fixtures/ipfs/inputs/hello.txt")).unwrap();
    assert_eq!(out.stdout, want);

    // Bacalhau's spellings: a bare CID as the module, --input-volumes
    // CID:PATH, and an inline input carried in the message.
    let volume = format!("{hello}:/inputs/data/hello.txt");
    let out = cli.submit_with(
        &[
            "run",
            "--local",
            &probe,
            "--input-volumes",
            &volume,
            "--input-inline",
            "conf.txt=threads = 4",
            "--",
            "cat",
            "/inputs/conf.txt",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "threads = 4");

    // The cache now holds both CARs and the compiled module, nothing else.
    let out = submit_command()
        .args(["cache", "stats", "--json"])
        .env("SHOAL_CACHE_DIR", cli.cache.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let count = |kind: &str| {
        stats
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == kind)
            .map(|k| k["objects"].as_u64().unwrap())
            .unwrap()
    };
    assert_eq!(
        (
            count("cid"),
            count("compiled"),
            count("sha256"),
            count("tmp")
        ),
        (2, 1, 0, 0),
        "{stats}"
    );

    // A typo in a CID fails before anything runs, naming the CID.
    let out = cli.submit(&["run", "--local", "ipfs://bafyNOTACID", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("bafyNOTACID"),
        "{}",
        text(&out.stderr)
    );
}

/// Every file under `root`, recursively.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn an_import_module_runs_locally() {
    let cli = Cli::new();
    let out = cli.submit(&[
        "run",
        "--local",
        &path("tests/fixtures/uses_mathlib.wat"),
        "--import",
        &format!("mathlib={}", path("tests/fixtures/mathlib.wat")),
    ]);
    assert_eq!(out.status.code(), Some(42), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from the library\n");
    let out = cli.submit(&["run", "--local", &path("tests/fixtures/uses_mathlib.wat")]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("invalid_module"),
        "{}",
        text(&out.stderr)
    );
}

/// Every command shape of README's "Coming from Bacalhau" table, once with
/// `--local` and once through a fleet (a worker in this test's process).
#[test]
fn bacalhau_command_shapes_work_locally_and_through_a_fleet() {
    let (probe, hello) = (fixture_cid("probe.car"), fixture_cid("hello.car"));
    // One static server is both the IPFS gateway and the URL origin.
    let tree = fixture_cid("tree.car");
    let server = StaticGateway::start(&[
        (&probe, "probe.car"),
        (&hello, "hello.car"),
        (&tree, "tree.car"),
    ]);
    std::fs::write(server._dir.path().join("data.txt"), "from a url\n").unwrap();
    let base = format!("http://127.0.0.1:{}", server.port);

    let cli = Cli::new();
    let (fleet, env) = InProcessWorker::start(
        "bac",
        cli.cache.path(),
        &[
            ("SHOAL_STAGING_URL_ALLOW", "127.0.0.1/32"),
            ("SHOAL_STAGING_IPFS_GATEWAYS", &base),
        ],
    );

    let probe_wasm = path("tests/fixtures/probe.wasm");
    let hello_wasm = path("examples/hello/hello.wasm");
    let hello_text =
        std::fs::read_to_string(repo().join("tests/fixtures/ipfs/inputs/hello.txt")).unwrap();
    let import = format!("mathlib={}", path("tests/fixtures/mathlib.wat"));
    let uses = path("tests/fixtures/uses_mathlib.wat");
    let url = format!("{base}/data.txt");
    let volume = format!("{hello}:/inputs/data");
    let ipfs_input = format!("ipfs://{hello}:/inputs/h.txt");
    let ipfs_module = format!("ipfs://{probe}");
    let ipfs_folder = format!("ipfs://{tree}");
    let top_text =
        std::fs::read_to_string(repo().join("tests/fixtures/ipfs/inputs/tree/top.txt")).unwrap();
    let is_top = |o: &str| o == top_text;
    let is_hello = |o: &str| o == hello_text;
    // (README fragment, arguments after `run`, exit code, stdout check)
    type Shape<'a> = (&'a str, Vec<&'a str>, i32, &'a dyn Fn(&str) -> bool);
    let shapes: Vec<Shape> = vec![
        (
            "submit run --local prog.wasm a b",
            vec![&hello_wasm, "a", "b"],
            0,
            &|o: &str| o.contains("arg[1] = a\narg[2] = b"),
        ),
        (
            "`-e KEY=VALUE`",
            vec![&hello_wasm, "-e", "HELLO=world"],
            0,
            &|o: &str| o.contains("HELLO = world"),
        ),
        (
            "--input-urls",
            vec![
                &probe_wasm,
                "--input-urls",
                &url,
                "--",
                "cat",
                "/inputs/data.txt",
            ],
            0,
            &|o: &str| o == "from a url\n",
        ),
        (
            "`-o name:/path`",
            vec![
                &probe_wasm,
                "-o",
                "results:/results",
                "--",
                "write",
                "/results/r.txt",
                "x",
            ],
            0,
            &|_| true,
        ),
        (
            "keeps the default `outputs:/outputs`",
            vec![
                &probe_wasm,
                "-o",
                "extra:/extra",
                "--",
                "write",
                "/outputs/o.txt",
                "x",
            ],
            0,
            &|_| true,
        ),
        (
            "`-i ipfs://CID` (no path)",
            vec![
                &probe_wasm,
                "-i",
                &ipfs_folder,
                "--",
                "cat",
                "/inputs/top.txt",
            ],
            0,
            &is_top,
        ),
        (
            "--entry-point",
            vec![&probe_wasm, "--entry-point", "_start", "--", "args", "e"],
            0,
            &|o: &str| o.ends_with("args\ne\n"),
        ),
        (
            "`submit run CID`",
            vec![&probe, "--", "args", "bare"],
            0,
            &|o: &str| o.ends_with("args\nbare\n"),
        ),
        (
            "ipfs://CID",
            vec![&ipfs_module, "--", "args", "scheme"],
            0,
            &|o: &str| o.ends_with("args\nscheme\n"),
        ),
        (
            "-i CID[/path][:/inputs/PATH]",
            vec![&probe_wasm, "-i", &ipfs_input, "--", "cat", "/inputs/h.txt"],
            0,
            &is_hello,
        ),
        (
            "--input-volumes CID:/inputs/data",
            vec![
                &probe_wasm,
                "--input-volumes",
                &volume,
                "--",
                "cat",
                "/inputs/data",
            ],
            0,
            &is_hello,
        ),
        (
            "--import NAME=SOURCE",
            vec![&uses, "--import", &import],
            42,
            &|o: &str| o == "hello from the library\n",
        ),
        (
            "--input-inline NAME=TEXT",
            vec![
                &probe_wasm,
                "--input-inline",
                "c.txt=inline!",
                "--",
                "cat",
                "/inputs/c.txt",
            ],
            0,
            &|o: &str| o == "inline!",
        ),
        (
            "`rejected` / `invalid_job`, naming the limit",
            vec![&probe_wasm, "--memory", "858993459200"],
            126,
            &|_| true,
        ),
    ];
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for mode in ["--local", "fleet"] {
        for (row, args, code, check) in &shapes {
            assert!(readme.contains(row), "README's table lacks {row}");
            let mut cmd = submit_command();
            cmd.arg("run");
            if mode == "--local" {
                cmd.arg("--local");
            }
            let out = cmd
                .args(args)
                .current_dir(cli.work.path())
                .envs(env.iter().cloned())
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(*code),
                "{mode} {row}: {}",
                text(&out.stderr)
            );
            assert!(
                check(&text(&out.stdout)),
                "{mode} {row}: {}",
                text(&out.stdout)
            );
        }
    }

    fleet.stop();
}

/// Bacalhau's `-o` rule: `/outputs` stays beside other output mounts unless
/// an `-o` takes it; `--no-outputs` mounts nothing at all.
#[test]
fn output_mounts_follow_bacalhaus_rule() {
    let cli = Cli::new();
    let probe = path("tests/fixtures/probe.wasm");
    let run = |dl: &Path, extra: &[&str], guest: &[&str]| {
        let mut args = vec!["run", "--local", probe.as_str(), "--download"];
        args.push(dl.to_str().unwrap());
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(guest);
        cli.submit(&args)
    };
    let dl = cli.work.path().join("beside");
    let out = run(
        &dl,
        &["-o", "extra:/extra"],
        &["write", "/outputs/o.txt", "kept"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(dl.join("outputs/o.txt")).unwrap(),
        "kept"
    );
    assert!(
        dl.join("extra").is_dir(),
        "the -o mount has no results folder"
    );

    // An -o at /outputs is the one mount there, under its own name.
    let dl = cli.work.path().join("renamed");
    let out = run(
        &dl,
        &["-o", "mine:/outputs"],
        &["write", "/outputs/o.txt", "x"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(dl.join("mine/o.txt").is_file());
    assert!(!dl.join("outputs").exists());

    // --no-outputs: no preopen at all, so /outputs cannot be written.
    let dl = cli.work.path().join("none");
    let out = run(&dl, &["--no-outputs"], &["write", "/outputs/o.txt", "x"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("error: "),
        "{}",
        text(&out.stdout)
    );
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dl.join("result.json")).unwrap()).unwrap();
    assert_eq!(
        result["outputs"].as_array().map_or(0, Vec::len),
        0,
        "{result}"
    );
}

/// A CID given without a guest path mounts at `/inputs` itself, as in
/// Bacalhau: a folder is `/inputs`, a single file `/inputs/<CID>`.
#[test]
fn a_cid_without_a_path_mounts_at_inputs() {
    let (tree, hello) = (fixture_cid("tree.car"), fixture_cid("hello.car"));
    let gateway = StaticGateway::start(&[(&tree, "tree.car"), (&hello, "hello.car")]);
    let cli = Cli::new();
    let gateways = format!("http://127.0.0.1:{}", gateway.port);
    let env = [("SHOAL_STAGING_IPFS_GATEWAYS", gateways.as_str())];
    let probe = path("tests/fixtures/probe.wasm");
    let folder = format!("ipfs://{tree}");
    let out = cli.submit_with(
        &[
            "run", "--local", &probe, "-i", &folder, "--", "ls", "/inputs",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut listed: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    listed.sort();
    assert_eq!(listed, ["nested", "top.txt"]);

    let file_at = format!("/inputs/{hello}");
    let out = cli.submit_with(
        &[
            "run",
            "--local",
            &probe,
            "--input-volumes",
            &hello,
            "--",
            "cat",
            &file_at,
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let want = std::fs::read(repo().join("tests/fixtures/ipfs/inputs/hello.txt")).unwrap();
    assert_eq!(out.stdout, want);

    // /inputs cannot hold it and another input too: say so before anything runs.
    let named = format!("ipfs://{hello}:/inputs/h.txt");
    let out = cli.submit_with(
        &[
            "run", "--local", &probe, "-i", &folder, "-i", &named, "--", "ls", "/inputs",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("give it a path"),
        "{}",
        text(&out.stderr)
    );
}

/// In `--local`, a failure of ours after the job was accepted (an input that
/// could not be fetched) is still a result: status `error` in result.json,
/// the summary line and exit 127. Exit 2 stays for a wrong command line.
#[test]
fn an_infrastructure_failure_in_a_local_run_is_a_result() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cli = Cli::new();
    let probe = path("tests/fixtures/probe.wasm");
    let hello = fixture_cid("hello.car");
    let nowhere = format!("http://127.0.0.1:{port}");
    let dl = cli.work.path().join("offline");
    let input = format!("ipfs://{hello}:/inputs/h.txt");
    let out = cli.submit_with(
        &[
            "run",
            "--local",
            &probe,
            "-i",
            &input,
            "--download",
            dl.to_str().unwrap(),
            "--",
            "cat",
            "/inputs/h.txt",
        ],
        &[("SHOAL_STAGING_IPFS_GATEWAYS", nowhere.as_str())],
    );
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("shoal: error · input_unavailable: fetching: "),
        "{stderr}"
    );
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dl.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["status"], "error", "{result}");
    assert_eq!(result["error"]["kind"], "input_unavailable", "{result}");

    // `--input-urls HOST/PATH` is https, as in Bacalhau: a plain-HTTP
    // origin cannot answer it, which is again a result naming the URL.
    let origin = StaticGateway::start(&[]);
    std::fs::write(origin._dir.path().join("data.txt"), "plain\n").unwrap();
    let bare = format!("127.0.0.1:{}/data.txt", origin.port);
    let out = cli.submit_with(
        &[
            "run",
            "--local",
            &probe,
            "--input-urls",
            &bare,
            "--",
            "cat",
            "/inputs/data.txt",
        ],
        &[("SHOAL_STAGING_URL_ALLOW", "127.0.0.1/32")],
    );
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("https://{bare}")),
        "{}",
        text(&out.stderr)
    );
    // With its scheme spelled out, the same origin serves it.
    let spelled = format!("http://{bare}");
    let out = cli.submit_with(
        &[
            "run",
            "--local",
            &probe,
            "--input-urls",
            &spelled,
            "--",
            "cat",
            "/inputs/data.txt",
        ],
        &[("SHOAL_STAGING_URL_ALLOW", "127.0.0.1/32")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "plain\n");
}

/// `--mount HOST:/:rw` (what WASI test suites need) nests with `/inputs` and
/// `/outputs`, each path reaching its longest matching mount, and the guest
/// escapes none of them: not with `..`, not through symlinks.
#[test]
fn a_host_folder_at_root_nests_with_the_jobs_mounts_and_nothing_escapes() {
    let cli = Cli::new();
    let probe = path("tests/fixtures/probe.wasm");
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("inputs")).unwrap();
    std::fs::write(root.path().join("inputs/data.txt"), "the host's, hidden\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.path().join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/passwd", root.path().join("rel-link"))
        .unwrap();
    let data = cli.work.path().join("data.txt");
    std::fs::write(&data, "the job's input\n").unwrap();
    let mount = format!("{}:/:rw", root.path().display());
    let input = format!("{}:/inputs/data.txt", data.display());
    let dl = cli.work.path().join("nested");
    let run = |guest: &[&str]| {
        let mut args = vec![
            "run",
            "--local",
            probe.as_str(),
            "--mount",
            &mount,
            "-i",
            &input,
        ];
        if guest.first() == Some(&"write") {
            args.extend(["--download", dl.to_str().unwrap()]);
        }
        args.push("--");
        args.extend_from_slice(guest);
        cli.submit(&args)
    };
    let out = run(&["write", "/outputs/o.txt", "out"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(dl.join("outputs/o.txt")).unwrap(),
        "out"
    );
    assert!(
        !root.path().join("outputs").exists(),
        "/outputs reached the root mount"
    );
    let out = run(&["cat", "/made-here.txt"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let out = run(&["symlink", "../../../../../etc/passwd", "/guest-link"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let out = run(&["write", "/made-here.txt", "written"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(root.path().join("made-here.txt")).unwrap(),
        "written"
    );
    let out = run(&["cat", "made-here.txt"]);
    assert_eq!(text(&out.stdout), "written");
    let out = run(&["cat", "/inputs/data.txt"]);
    assert_eq!(text(&out.stdout), "the job's input\n");

    for escape in [
        "/../../../../etc/passwd",
        "../etc/passwd",
        "/inputs/../../etc/passwd",
        "/outputs/../../../etc/passwd",
        "/abs-link",
        "/rel-link",
        "/guest-link",
    ] {
        let out = run(&["cat", escape]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{escape}: {}",
            text(&out.stdout)
        );
        assert!(!text(&out.stdout).contains("root:"), "{escape} escaped");
    }

    // Two mounts at one path are refused, naming both.
    let out = cli.submit(&[
        "run",
        "--local",
        &probe,
        "--mount",
        &format!("{}:/outputs", root.path().display()),
        "--",
        "args",
    ]);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("already the mount of output"),
        "{}",
        text(&out.stderr)
    );
}

/// `submit upload`: files as they are, folders as tar archives, each
/// printed as the `sha256:` source a job message takes; content already in
/// the store is not written again.
#[test]
fn upload_prints_the_sources_of_files_and_folders() {
    let cli = Cli::new();
    let folder = cli.work.path().join("data");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    std::fs::write(folder.join("a.txt"), "a\n").unwrap();
    std::fs::write(folder.join("sub/b.txt"), "b\n").unwrap();
    let probe = path("tests/fixtures/probe.wasm");
    let out = cli.submit(&["upload", &probe, folder.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hex = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(std::fs::read(&probe).unwrap()))
    };
    assert_eq!(listed[0]["sha256"], format!("sha256:{hex}"), "{listed}");
    assert_eq!(listed[0]["source"]["sha256"], hex.as_str());
    assert_eq!(listed[0]["folder"], false);
    assert_eq!(listed[1]["folder"], true);
    assert_eq!(listed[1]["source"]["unpack"], "tar", "{listed}");
    let object = cli.cache.path().join("cache/sha256").join(&hex);
    assert_eq!(
        std::fs::read(&object).unwrap(),
        std::fs::read(&probe).unwrap()
    );
    // The folder's archive holds its files.
    let folder_hex = listed[1]["source"]["sha256"].as_str().unwrap();
    let archive = cli.cache.path().join("cache/sha256").join(folder_hex);
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    let names = text(&listing.stdout);
    assert!(
        names.contains("a.txt") && names.contains("sub/b.txt"),
        "{names}"
    );

    // Uploading again sends nothing: the stored object is left as it was.
    let before = std::fs::metadata(&object).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = cli.submit(&["upload", &probe]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("sha256:{hex}  {probe}\n"));
    assert_eq!(
        std::fs::metadata(&object).unwrap().modified().unwrap(),
        before
    );

    // The printed source runs, from the same store.
    let out = cli.submit(&[
        "run",
        "--local",
        &format!("sha256:{hex}"),
        "args",
        "uploaded",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).ends_with("args\nuploaded\n"),
        "{}",
        text(&out.stdout)
    );

    // A missing path fails before anything is sent.
    let out = cli.submit(&["upload", &probe, "/no/such/file"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("/no/such/file"),
        "{}",
        text(&out.stderr)
    );
}

/// No broker password reaches what `submit` prints, whatever fails: a list
/// of brokers none of which answers, a broker that refuses the password,
/// a malformed URL; for `run` and for `admin`.
#[test]
fn no_broker_password_reaches_what_submit_prints() {
    let cli = Cli::new();
    let secret = |tag: &str| format!("pw-{tag}-{}", uuid::Uuid::new_v4().simple());
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (a, b, c) = (secret("a"), secret("b"), secret("c"));
    let cases = [
        (
            format!("amqp://guest:{a}@127.0.0.1:{closed}/%2f,amqp://guest:{b}@127.0.0.1:5672/%2f"),
            "127.0.0.1:5672",
        ),
        (
            format!("amqp://guest:guest@127.0.0.1:{closed}/%2f, amqp://guest:{c}@127.0.0.1:x/%2f"),
            "broker URL 2",
        ),
    ];
    for (urls, named) in &cases {
        for args in [
            &["run", &path("examples/hello/hello.wasm")][..],
            &["admin", "migrate-dead-letters"],
        ] {
            let out = cli.submit_with(args, &[("SHOAL_AMQP_URL", urls.as_str())]);
            let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
            assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
            assert!(said.contains(named), "{args:?}: {said}");
            for password in [&a, &b, &c] {
                assert!(!said.contains(password.as_str()), "{args:?}: {said}");
            }
        }
    }
}

/// `submit admin migrate-dead-letters` turns a fleet's classic dead-letter
/// queue (as fleets before the quorum one declared it) into a quorum queue
/// under the same name, bound as before, every message moved in order with
/// its headers; a second run has nothing to do.
#[test]
fn migrate_dead_letters_makes_the_classic_queue_a_quorum_one_losing_nothing() {
    use lapin::options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
        QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, FieldTable, ShortString};
    use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
    const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let dead = format!("test.migrate.dead.{suffix}");
    let env = [
        ("SHOAL_AMQP_DEAD_LETTER", dead.clone()),
        (
            "SHOAL_AMQP_JOB_QUEUE",
            format!("test.migrate.jobs.{suffix}"),
        ),
        (
            "SHOAL_AMQP_RESULTS_EXCHANGE",
            format!("test.migrate.results.{suffix}"),
        ),
        (
            "SHOAL_AMQP_CONTROL_EXCHANGE",
            format!("test.migrate.control.{suffix}"),
        ),
    ];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let quorum = || {
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        arguments
    };
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let conn = runtime.block_on(async {
        // The old way: a classic queue bound to the fanout exchange, with
        // three dead letters in it.
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        channel
            .exchange_declare(
                dead.as_str().into(),
                ExchangeKind::Fanout,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(dead.as_str().into(), durable, FieldTable::default())
            .await
            .unwrap();
        channel
            .queue_bind(
                dead.as_str().into(),
                dead.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for i in 0..3 {
            let mut headers = FieldTable::default();
            headers.insert(
                "x-shoal-reason".into(),
                AMQPValue::LongString(format!("poison {i}").into()),
            );
            let confirm = channel
                .basic_publish(
                    dead.as_str().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    format!("dead letter {i}").as_bytes(),
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_headers(headers),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack());
        }
        // Declared the new way, it is refused: what workers meet.
        let probe = conn.create_channel().await.unwrap();
        let refused = probe
            .queue_declare(dead.as_str().into(), durable, quorum())
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("x-queue-type"), "{refused}");
        conn
    });

    let cli = Cli::new();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = cli.submit_with(&["admin", "migrate-dead-letters"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("{dead} is now a quorum queue; 3 dead letters moved")
    );

    runtime.block_on(async {
        let channel = conn.create_channel().await.unwrap();
        // Declaring it as a quorum queue now succeeds: it is one.
        let declared = channel
            .queue_declare(dead.as_str().into(), durable, quorum())
            .await
            .unwrap();
        assert_eq!(declared.message_count(), 3);
        // Still bound: a new dead letter reaches it.
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        channel
            .basic_publish(
                dead.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                b"dead letter 3",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        for i in 0..4 {
            let got = channel
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("dead letter {i} missing"));
            assert_eq!(got.delivery.data, format!("dead letter {i}").as_bytes());
            if i < 3 {
                let reason = got
                    .delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(&ShortString::from("x-shoal-reason")).cloned());
                assert_eq!(
                    reason,
                    Some(AMQPValue::LongString(format!("poison {i}").into()))
                );
            }
        }
        // No temporary queue left behind.
        let probe = conn.create_channel().await.unwrap();
        let staging = probe
            .queue_declare(
                format!("{dead}.migrating").as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        assert!(staging.is_err(), "the temporary queue is still there");
    });

    let again = cli.submit_with(&["admin", "migrate-dead-letters"], &env);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(
        text(&again.stdout).trim(),
        format!("{dead} is already a quorum queue; nothing to migrate")
    );
    runtime.block_on(async {
        let channel = conn.create_channel().await.unwrap();
        let topology = shoal_schemas::topology::Topology {
            job_queue: env[1].1.to_owned(),
            results_exchange: env[2].1.to_owned(),
            dead_letter: dead.clone(),
            control_exchange: env[3].1.to_owned(),
            delivery_limit: 10,
        };
        topology.delete(&channel).await.unwrap();
    });
}
