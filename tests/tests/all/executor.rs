//! The executor through the embedded pipeline: what the guest gets, what it
//! cannot reach, and how each way of ending is reported.
use crate::support::{Harness, fixture, kind, repo, stdout};
use shoal_schemas::{Input, JobMessage, Location, OutputMount, Status, Unpack};
use shoal_worker::config::{Config, LimitValues};
use shoal_worker::pipeline::{LocalOptions, Pipeline};

#[tokio::test]
async fn args_and_env_reach_the_guest_but_host_env_does_not() {
    let h = Harness::new();
    let mut job = h.probe(&["env"]).await;
    job.env.insert("GREETING".into(), "hello world".into());
    job.env.insert("EMPTY".into(), "".into());
    let (result, _) = h.run(job).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    // Exactly the job's variables, sorted as the job message keeps them; no
    // PATH, HOME or anything else of the host's.
    assert_eq!(stdout(&result), "EMPTY=\nGREETING=hello world\n");

    let (result, _) = h
        .run(h.probe(&["args", "one", "two words", ""]).await)
        .await;
    assert_eq!(stdout(&result), "probe.wasm\nargs\none\ntwo words\n\n");
}

#[tokio::test]
async fn inputs_are_readable_and_read_only() {
    let h = Harness::new();
    let data = h.upload_bytes(b"input bytes\n", "data.txt").await;
    let mut job = h.probe(&["cat", "/inputs/data.txt"]).await;
    job.inputs.push(Input {
        source: data.clone(),
        path: None,
    });
    let (result, _) = h.run(job).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert_eq!(stdout(&result), "input bytes\n");

    let mut job = h.probe(&["write", "/inputs/data.txt", "overwritten"]).await;
    job.inputs.push(Input {
        source: data.clone(),
        path: None,
    });
    let (result, _) = h.run(job).await;
    assert_eq!(result.exit_code, Some(1), "{result:?}");
    assert!(
        stdout(&result).starts_with("error: "),
        "{}",
        stdout(&result)
    );

    // A new file beside an input is refused too: /inputs is read-only as a whole.
    let mut job = h.probe(&["write", "/inputs/new.txt", "x"]).await;
    job.inputs.push(Input {
        source: data,
        path: None,
    });
    let (result, _) = h.run(job).await;
    assert_eq!(result.exit_code, Some(1), "{result:?}");
}

#[tokio::test]
async fn a_folder_input_is_unpacked_under_its_path() {
    let h = Harness::new();
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("sub")).unwrap();
    std::fs::write(src.path().join("sub/deep.txt"), "deep\n").unwrap();
    let source = h.upload(src.path()).await;
    assert_eq!(source.unpack, Some(Unpack::Tar));
    let mut job = h.probe(&["cat", "/inputs/set/sub/deep.txt"]).await;
    job.inputs.push(Input {
        source,
        path: Some("/inputs/set".into()),
    });
    let (result, _) = h.run(job).await;
    assert_eq!(stdout(&result), "deep\n", "{result:?}");
}

#[tokio::test]
async fn outputs_land_in_the_download_folder_with_a_manifest() {
    let h = Harness::new();
    let mut job = h
        .probe(&["write", "/results/report.txt", "forty-two"])
        .await;
    job.outputs = Some(vec![OutputMount {
        name: "results".into(),
        path: "/results".into(),
    }]);
    let (result, dir) = h.run(job).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("results/report.txt")).unwrap(),
        "forty-two"
    );
    let out = &result.outputs[0];
    assert_eq!(
        (out.name.as_str(), out.path.as_str(), out.bytes, out.partial),
        ("results", "/results", 9, false)
    );
    assert_eq!(out.files[0].path, "report.txt");
    assert_eq!(
        out.files[0].sha256,
        shoal_worker::store::sha256_hex(b"forty-two")
    );
    assert_eq!(std::fs::read_to_string(dir.join("exitCode")).unwrap(), "0");
    let stored: shoal_schemas::ResultMessage =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(stored, result);
}

#[tokio::test]
async fn escaping_a_mount_fails() {
    let h = Harness::new();
    let data = h.upload_bytes(b"x", "data.txt").await;
    for path in [
        "/inputs/../../etc/passwd",
        "/etc/passwd",
        "/outputs/../../../etc/passwd",
        "../etc/passwd",
    ] {
        let mut job = h.probe(&["cat", path]).await;
        job.inputs.push(Input {
            source: data.clone(),
            path: None,
        });
        let (result, _) = h.run(job).await;
        assert_eq!(result.exit_code, Some(1), "cat {path}: {result:?}");
        assert!(
            !stdout(&result).contains("root:"),
            "cat {path} leaked the host file"
        );
    }
    let (result, _) = h.run(h.probe(&["ls", "/"]).await).await;
    assert_eq!(result.exit_code, Some(1), "listing / must fail: {result:?}");

    let (result, _) = h
        .run(h.probe(&["write", "/outputs/../escaped.txt", "x"]).await)
        .await;
    assert_eq!(result.exit_code, Some(1), "{result:?}");

    // A symlink to a host path: creating it may be refused, but it must
    // never lead out, and it is never stored as an output.
    let (created, _) = h
        .run(h.probe(&["symlink", "/etc/passwd", "/outputs/link"]).await)
        .await;
    let mut job = h.probe(&["cat", "/outputs/link"]).await;
    job.id = Some(format!("{}-cat", created.job_id));
    let (result, _) = h.run(job).await;
    assert_eq!(result.exit_code, Some(1), "{result:?}");
    let (result, _) = h
        .run(
            h.probe(&["symlink", "../../../../etc/passwd", "/outputs/rel"])
                .await,
        )
        .await;
    assert!(result.outputs[0].files.is_empty(), "{result:?}");
    if result.exit_code == Some(0) {
        assert_eq!(result.outputs[0].skipped[0].path, "rel");
        assert!(result.outputs[0].partial);
    }
}

#[tokio::test]
async fn exit_codes_come_back() {
    let h = Harness::new();
    for code in [0, 1, 42] {
        let (result, dir) = h.run(h.probe(&["exit", &code.to_string()]).await).await;
        assert_eq!(result.exit_code, Some(code));
        assert_eq!(
            result.status,
            if code == 0 {
                Status::Succeeded
            } else {
                Status::Failed
            }
        );
        assert_eq!(
            kind(&result),
            if code == 0 {
                None
            } else {
                Some("nonzero_exit")
            }
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("exitCode")).unwrap(),
            code.to_string()
        );
    }
}

#[tokio::test]
async fn a_trap_is_reported_with_where_it_happened() {
    let h = Harness::new();
    let (result, dir) = h.run(h.probe(&["trap"]).await).await;
    assert_eq!(
        (result.status, kind(&result)),
        (Status::Failed, Some("trap")),
        "{result:?}"
    );
    let message = &result.error.as_ref().unwrap().message;
    assert!(message.contains("unreachable"), "{message}");
    assert!(message.contains(" in "), "a backtrace summary: {message}");
    assert_eq!(result.exit_code, None);
    assert!(!dir.join("exitCode").exists());
}

#[tokio::test]
async fn deep_recursion_is_a_stack_overflow_trap() {
    let h = Harness::new();
    let (result, _) = h
        .run(shoal_schemas::JobMessage::new(
            h.upload(&fixture("recurse.wat")).await,
        ))
        .await;
    assert_eq!(kind(&result), Some("trap"), "{result:?}");
    assert!(
        result
            .error
            .unwrap()
            .message
            .contains("call stack exhausted"),
        "wasm stack overflow"
    );
    // C keeps its stack in linear memory: there, unbounded recursion runs
    // off the bottom of memory, which is a trap as well.
    let (result, _) = h.run(h.probe(&["recurse"]).await).await;
    assert_eq!(kind(&result), Some("trap"), "{result:?}");
    assert!(result.error.unwrap().message.contains("out of bounds"));
}

#[tokio::test]
async fn an_endless_loop_runs_out_of_fuel_or_time() {
    let h = Harness::new();
    let mut job = h.probe(&["spin"]).await;
    job.limits.fuel = Some(50_000_000);
    let (result, _) = h.run(job).await;
    assert_eq!(
        (result.status, kind(&result)),
        (Status::Failed, Some("out_of_fuel")),
        "{result:?}"
    );
    assert_eq!(result.usage.fuel_consumed, Some(50_000_000));

    let mut job = h.probe(&["spin"]).await;
    job.limits.fuel = Some(u64::MAX);
    job.limits.timeout_ms = Some(300);
    let (result, _) = h.run(job).await;
    assert_eq!(
        (result.status, kind(&result)),
        (Status::Failed, Some("timeout")),
        "{result:?}"
    );
    assert!(result.usage.durations.run_secs.unwrap() >= 0.3);

    // Blocked in a host call rather than spinning in wasm: the wall clock
    // still ends it, long before the guest's own 60 s sleep would.
    let mut job = h.probe(&["sleep", "60"]).await;
    job.limits.timeout_ms = Some(300);
    let (result, _) = h.run(job).await;
    assert_eq!(kind(&result), Some("timeout"), "{result:?}");
    assert!(result.usage.durations.run_secs.unwrap() < 30.0);
}

#[tokio::test]
async fn a_memory_bomb_hits_the_memory_limit() {
    let h = Harness::new();
    let mut job = h.probe(&["grow"]).await;
    job.limits.memory_bytes = Some(16 << 20);
    let (result, _) = h.run(job).await;
    assert_eq!(
        (result.status, kind(&result)),
        (Status::Failed, Some("memory_limit")),
        "{result:?}"
    );
    let peak = result.usage.peak_memory_bytes.unwrap();
    assert!(peak <= 16 << 20 && peak > 8 << 20, "peak {peak}");

    let (result, _) = h
        .run(shoal_schemas::JobMessage::new(
            h.upload(&fixture("table_grow.wat")).await,
        ))
        .await;
    assert_eq!(
        kind(&result),
        Some("memory_limit"),
        "table growth is bounded too: {result:?}"
    );
}

#[tokio::test]
async fn stdout_and_stderr_floods_are_cut_at_the_cap() {
    let h = Harness::new();
    let mut job = h.probe(&["flood", "5000000"]).await;
    job.limits.max_stdout_bytes = Some(1000);
    let (result, dir) = h.run(job).await;
    assert_eq!(
        result.status,
        Status::Succeeded,
        "a truncated stream is not a failure: {result:?}"
    );
    let out = result.stdout.unwrap();
    assert_eq!((out.size, out.truncated), (1000, true));
    assert_eq!(std::fs::read(dir.join("stdout")).unwrap(), vec![b'x'; 1000]);

    let mut job = h.probe(&["flood", "300000", "err"]).await;
    job.limits.max_stderr_bytes = Some(10);
    let (result, _) = h.run(job).await;
    let err = result.stderr.unwrap();
    assert_eq!(
        (err.size, err.truncated, err.text.as_deref()),
        (10, true, Some("xxxxxxxxxx"))
    );
    assert!(!result.stdout.unwrap().truncated);
}

#[tokio::test]
async fn bad_modules_are_invalid_module_or_missing_export() {
    let h = Harness::new();
    let garbage = h
        .upload_bytes(b"\0asm garbage that is not a module", "garbage.wasm")
        .await;
    let (result, _) = h.run(shoal_schemas::JobMessage::new(garbage)).await;
    assert_eq!(
        (result.status, kind(&result)),
        (Status::Failed, Some("invalid_module")),
        "{result:?}"
    );

    let (result, _) = h
        .run(shoal_schemas::JobMessage::new(
            h.upload(&fixture("beyond_wasi.wat")).await,
        ))
        .await;
    assert_eq!(kind(&result), Some("invalid_module"), "{result:?}");
    assert!(
        result
            .error
            .unwrap()
            .message
            .contains("env::launch_missiles")
    );

    let (result, _) = h
        .run(shoal_schemas::JobMessage::new(
            h.upload(&fixture("no_start.wat")).await,
        ))
        .await;
    assert_eq!(kind(&result), Some("missing_export"), "{result:?}");

    let mut job = h.probe(&["env"]).await;
    job.entrypoint = "main_that_is_not_there".into();
    let (result, _) = h.run(job).await;
    assert_eq!(kind(&result), Some("missing_export"), "{result:?}");
    assert!(
        result
            .error
            .unwrap()
            .message
            .contains("main_that_is_not_there")
    );
}

#[tokio::test]
async fn jobs_share_compiled_modules_but_nothing_else() {
    let h = Harness::new();
    let mut first = h.probe(&["write", "/outputs/secret.txt", "mine"]).await;
    first.env.insert("SECRET".into(), "1".into());
    let before = h.embedded.executor().cache_stats();
    let (one, _) = h.run(first).await;
    assert_eq!(one.status, Status::Succeeded);
    let (two, _) = h.run(h.probe(&["ls", "/outputs"]).await).await;
    let (three, _) = h.run(h.probe(&["env"]).await).await;
    let after = h.embedded.executor().cache_stats();
    assert_eq!(after.misses - before.misses, 1, "compiled once");
    assert_eq!(after.hits - before.hits, 2, "then found in the cache twice");
    assert_eq!(one.usage.module_cache_hit, Some(false));
    assert_eq!(two.usage.module_cache_hit, Some(true));
    assert_eq!(stdout(&two), "", "the second job sees an empty /outputs");
    assert_eq!(stdout(&three), "", "and none of the first job's env");
}

#[tokio::test]
async fn a_module_compiled_in_memory_is_not_fetched_again_but_a_fresh_worker_checks_it() {
    let scratch = tempfile::tempdir().unwrap();
    let scratch_dir = scratch.path().display().to_string();
    let h = Harness::with_env(&[("SHOAL_WORKER_SCRATCH_DIR", &scratch_dir)]);
    let job = h.probe(&["args", "hi"]).await;
    let Location::Sha256(hex) = &job.module.location else {
        panic!("uploads are named by sha256");
    };
    let (first, _) = h.run(job.clone()).await;
    assert_eq!(first.status, Status::Succeeded, "{first:?}");
    assert_eq!(first.usage.module_cache_hit, Some(false));

    // The cache entry goes bad after the module was compiled.
    let entry = h._cache.path().join(format!("cache/sha256/{hex}"));
    assert!(entry.is_file(), "{} is where uploads go", entry.display());
    std::fs::write(&entry, b"not the module any more").unwrap();

    // This worker holds the compiled module, so it does not read the entry.
    let (again, _) = h.run(job.clone()).await;
    assert_eq!(again.status, Status::Succeeded, "{again:?}");
    assert_eq!(again.usage.module_cache_hit, Some(true));
    assert!(stdout(&again).ends_with("args\nhi\n"), "{again:?}");

    // A worker that has to read it refuses it.
    let config = Config::load_from(
        None,
        vec![(
            "SHOAL_CACHE_DIR".to_owned(),
            h._cache.path().display().to_string(),
        )],
    )
    .unwrap();
    let fresh = Pipeline::new(config, LimitValues::UNLIMITED).unwrap();
    let (refused, _) = fresh
        .run(
            job,
            LocalOptions {
                download: Some(h.results.path().join("fresh")),
                ..LocalOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(refused.status, Status::Failed, "{refused:?}");
    assert_eq!(kind(&refused), Some("integrity"), "{refused:?}");

    // Scratch folders went where worker.scratch_dir says: one per job slot
    // and one to spare, made ahead and reused.
    settled(&h, scratch.path()).await;
}

/// The scratch folders a worker made under `dir` (in its own
/// `shoal-worker-*` folder), by name.
fn scratch_folders(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    let homes: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("shoal-worker-"))
        .collect();
    assert_eq!(homes.len(), 1, "one worker, one folder of its own");
    std::fs::read_dir(homes[0].path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("shoal-job-"))
        .collect()
}

/// Waits until the pool holds all its folders again, and names them.
async fn settled(h: &Harness, dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    // One for every job a worker may hold (its prefetch), and one to spare.
    let config = h.embedded.config();
    let keep = usize::from(config.amqp.prefetch_for(config.concurrency())) + 1;
    for _ in 0..400 {
        let names = scratch_folders(dir);
        if names.len() == keep {
            return names;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!(
        "the pool never settled at {keep} folders: {:?}",
        scratch_folders(dir)
    );
}

#[tokio::test]
async fn a_scratch_folder_is_reused_only_after_a_guest_that_ended_on_its_own() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().display().to_string();
    let h = Harness::with_env(&[("SHOAL_WORKER_SCRATCH_DIR", &dir)]);
    let (warm, _) = h.run(h.probe(&["args"]).await).await;
    assert_eq!(warm.status, Status::Succeeded);
    let before = settled(&h, scratch.path()).await;

    // Jobs that ended on their own, with and without outputs: the same
    // folders serve again.
    let (plain, _) = h.run(h.probe(&["args"]).await).await;
    assert_eq!(plain.status, Status::Succeeded);
    assert_eq!(settled(&h, scratch.path()).await, before);
    let (wrote, _) = h
        .run(h.probe(&["write", "/outputs/a.txt", "left behind?"]).await)
        .await;
    assert_eq!(wrote.status, Status::Succeeded);
    assert_eq!(settled(&h, scratch.path()).await, before);
    let (next, _) = h.run(h.probe(&["ls", "/outputs"]).await).await;
    assert_eq!(stdout(&next), "", "a reused /outputs is empty");

    // A guest stopped by the clock may have a file operation still running:
    // its folder is removed and a new one made.
    let mut stopped = h.probe(&["sleep", "60"]).await;
    stopped.limits.timeout_ms = Some(200);
    let (timed_out, _) = h.run(stopped).await;
    assert_eq!(kind(&timed_out), Some("timeout"), "{timed_out:?}");
    let after = settled(&h, scratch.path()).await;
    assert_eq!(before.difference(&after).count(), 1, "one folder replaced");
    assert_eq!(after.difference(&before).count(), 1);
}

#[tokio::test]
async fn the_examples_run() {
    let h = Harness::new();
    let mut job = shoal_schemas::JobMessage::new(
        h.upload(&repo().join("examples/wordcount/wordcount.wasm"))
            .await,
    );
    job.inputs.push(Input {
        source: h
            .upload(&repo().join("examples/wordcount/sample.txt"))
            .await,
        path: None,
    });
    job.args = vec!["/inputs/sample.txt".into()];
    let (result, dir) = h.run(job).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert_eq!(stdout(&result), "3 15 89 /inputs/sample.txt\n");
    assert_eq!(
        std::fs::read_to_string(dir.join("outputs/result.txt")).unwrap(),
        "lines 3\nwords 15\nbytes 89\n"
    );
}

#[tokio::test]
async fn invalid_jobs_are_rejected_before_anything_runs() {
    let h = Harness::new();
    let mut job = h.probe(&["env"]).await;
    job.outputs = Some(vec![OutputMount {
        name: "o".into(),
        path: "/inputs/o".into(),
    }]);
    let (result, _) = h.run(job).await;
    assert_eq!(
        (result.status, kind(&result)),
        (Status::Rejected, Some("invalid_job")),
        "{result:?}"
    );
    assert!(result.error.unwrap().message.contains("/outputs/0/path"));

    let mut job = h.probe(&["env"]).await;
    job.outputs = Some(vec![
        OutputMount {
            name: "a".into(),
            path: "/out".into(),
        },
        OutputMount {
            name: "b".into(),
            path: "/out/inner".into(),
        },
    ]);
    let (result, _) = h.run(job).await;
    assert_eq!(
        kind(&result),
        Some("invalid_job"),
        "overlapping mounts: {result:?}"
    );

    let missing = shoal_schemas::Source::new(shoal_schemas::Location::Sha256("ab".repeat(32)));
    let mut job = h.probe(&["env"]).await;
    job.inputs.push(Input {
        source: missing,
        path: Some("/inputs/x".into()),
    });
    let (result, _) = h.run(job).await;
    assert_eq!(
        (result.status, kind(&result)),
        (Status::Failed, Some("input_unavailable")),
        "{result:?}"
    );
}

#[tokio::test]
async fn limits_above_the_ceiling_are_rejected() {
    let cache = tempfile::tempdir().unwrap();
    let config = shoal_worker::Config::load_from(
        None,
        vec![(
            "SHOAL_CACHE_DIR".to_string(),
            cache.path().display().to_string(),
        )],
    )
    .unwrap();
    let ceiling = config.limits.ceiling;
    let embedded = shoal_worker::pipeline::Pipeline::new(config, ceiling).unwrap();
    let source = shoal_submitter::local::upload_path(embedded.stager(), &fixture("probe.wasm"))
        .await
        .unwrap();
    let mut job = shoal_schemas::JobMessage::new(source);
    job.limits.memory_bytes = Some(ceiling.memory_bytes + 1);
    let dl = tempfile::tempdir().unwrap();
    let (result, _) = embedded
        .run(
            job,
            shoal_worker::pipeline::LocalOptions {
                extra_mounts: vec![],
                download: Some(dl.path().join("r")),
                ..shoal_worker::pipeline::LocalOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(result.status, Status::Rejected);
    assert!(
        result
            .error
            .unwrap()
            .message
            .contains("/limits/memory_bytes")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_flood_is_cut_at_the_cap_and_what_was_kept_is_partial() {
    let h = Harness::new();
    let mut job = h.probe(&["files", "/outputs", "20"]).await;
    job.limits.max_output_files = Some(5);
    let (result, dir) = h.run(job).await;
    assert_eq!(result.status, Status::Failed, "{result:?}");
    assert_eq!(kind(&result), Some("output_limit"));
    assert_eq!(result.exit_code, Some(0), "the guest itself succeeded");
    let out = &result.outputs[0];
    assert!(out.partial);
    assert_eq!(out.files.len(), 5);
    assert_eq!(out.skipped.len(), 15);
    assert!(
        out.skipped
            .iter()
            .all(|s| serde_json::to_value(s.reason).unwrap() == "output_limit"),
        "{:?}",
        out.skipped
    );
    // Exactly the kept files were written out, and nothing else.
    let written = std::fs::read_dir(dir.join("outputs")).unwrap().count();
    assert_eq!(written, 5);

    // Bytes are capped the same way.
    let mut job = h.probe(&["files", "/outputs", "3"]).await;
    job.limits.max_output_bytes = Some(3);
    let (result, _) = h.run(job).await;
    assert_eq!(kind(&result), Some("output_limit"), "{result:?}");
    assert!(result.outputs[0].bytes <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_filling_the_disk_is_stopped_while_it_runs() {
    let h = Harness::new();
    // Outputs capped at 1,000 bytes: the run may hold at most 1 MiB on disk
    // (twice the cap, with a 1 MiB floor). The guest tries to write 1 GiB.
    let mut job = h.probe(&["fill", "/outputs/huge.bin", "1073741824"]).await;
    job.limits.max_output_bytes = Some(1000);
    let started = std::time::Instant::now();
    let (result, _) = h.run(job).await;
    assert_eq!(result.status, Status::Failed, "{result:?}");
    assert_eq!(kind(&result), Some("output_limit"), "{result:?}");
    let message = &result.error.as_ref().unwrap().message;
    assert!(message.contains("while running"), "{message}");
    // Stopped early, not after writing the whole gigabyte or timing out.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(result.outputs[0].files.is_empty(), "{result:?}");

    // The worker serves the next job normally.
    let (result, _) = h
        .run(h.probe(&["fill", "/outputs/small.bin", "500"]).await)
        .await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert_eq!(result.outputs[0].bytes, 500);
}

/// Bacalhau once panicked a node on a request for 13,107,200 memory pages.
/// Here it is a rejection naming the limit, the value and the bound, even
/// with no ceiling at all (a local run), and the next job runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirteen_million_pages_is_a_clear_rejection_even_without_a_ceiling() {
    let h = Harness::new();
    let mut job = h.probe(&["args"]).await;
    job.limits.memory_bytes = Some(13_107_200 * 65_536);
    let (result, _) = h.run(job).await;
    assert_eq!(result.status, Status::Rejected, "{result:?}");
    assert_eq!(kind(&result), Some("invalid_job"));
    let message = result.error.unwrap().message;
    assert!(
        message.contains("/limits/memory_bytes")
            && message.contains("858993459200")
            && message.contains("4294967296"),
        "{message}"
    );
    let mut job = h.probe(&["args"]).await;
    job.limits.timeout_ms = Some(u64::MAX);
    let (result, _) = h.run(job).await;
    assert_eq!(result.status, Status::Rejected, "{result:?}");
    assert!(result.error.unwrap().message.contains("/limits/timeout_ms"));
    let (result, _) = h.run(h.probe(&["exit", "0"]).await).await;
    assert_eq!(result.status, Status::Succeeded);
}

/// A module whose declared initial memory is already above the job's
/// memory limit fails at instantiation, before any of its code runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_declaring_more_memory_than_the_limit_is_memory_limit_before_it_runs() {
    let h = Harness::new();
    // 512 pages = 32 MiB of initial memory; _start would print if it ran.
    let wat = br#"(module
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 512)
        (func (export "_start") (call $exit (i32.const 7))))"#;
    let mut job = JobMessage::new(h.upload_bytes(wat, "big-memory.wat").await);
    job.limits.memory_bytes = Some(16 << 20);
    let (result, _) = h.run(job).await;
    assert_eq!(result.status, Status::Failed, "{result:?}");
    assert_eq!(kind(&result), Some("memory_limit"), "{result:?}");
    assert_eq!(result.exit_code, None, "the module ran: {result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_modules_provide_functions_and_memory_to_the_entry_module() {
    use shoal_schemas::ImportModule;
    let h = Harness::new();
    let lib = h.upload(&fixture("mathlib.wat")).await;
    let mut job = JobMessage::new(h.upload(&fixture("uses_mathlib.wat")).await);
    job.imports = vec![ImportModule {
        name: "mathlib".into(),
        module: lib.clone(),
    }];
    let (result, _) = h.run(job.clone()).await;
    assert_eq!(result.exit_code, Some(42), "{result:?}");
    assert_eq!(stdout(&result), "hello from the library\n");
    // Fuel covers the import modules too: it is one store.
    assert!(result.usage.fuel_consumed.unwrap() > 0);

    // Without the import module, or under another name: invalid_module
    // naming what is missing; and the next job runs.
    for imports in [
        vec![],
        vec![ImportModule {
            name: "otherlib".into(),
            module: lib.clone(),
        }],
    ] {
        let mut job = job.clone();
        job.id = None;
        job.imports = imports;
        let (result, _) = h.run(job).await;
        assert_eq!(kind(&result), Some("invalid_module"), "{result:?}");
        let message = result.error.unwrap().message;
        assert!(message.contains("mathlib"), "{message}");
    }
    // The same name twice is a rejected job.
    let mut twice = job.clone();
    twice.id = None;
    twice.imports.push(twice.imports[0].clone());
    let (result, _) = h.run(twice).await;
    assert_eq!(result.status, Status::Rejected, "{result:?}");
    let (result, _) = h.run(h.probe(&["exit", "0"]).await).await;
    assert_eq!(result.status, Status::Succeeded);
}

/// The memory limit is the job's, across all its memories: two memories
/// of 10 MiB each do not fit under 16 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_limit_counts_every_memory_of_the_job() {
    let h = Harness::new();
    let wat = br#"(module
        (memory (export "memory") 160)
        (memory $second 160)
        (func (export "_start")))"#;
    let mut job = JobMessage::new(h.upload_bytes(wat, "two-memories.wat").await);
    job.limits.memory_bytes = Some(16 << 20);
    let (result, _) = h.run(job.clone()).await;
    assert_eq!(kind(&result), Some("memory_limit"), "{result:?}");
    job.id = None;
    job.limits.memory_bytes = Some(32 << 20);
    let (result, _) = h.run(job).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert_eq!(result.usage.peak_memory_bytes, Some(20 << 20));
}

/// A name no object key can hold (a control character) is skipped and
/// reported, not a store failure to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_name_with_a_control_character_is_skipped_not_retried() {
    let h = Harness::new();
    let (result, _) = h
        .run(h.probe(&["write", "/outputs/bad\nname", "x"]).await)
        .await;
    assert_eq!(result.exit_code, Some(0), "{result:?}");
    let out = &result.outputs[0];
    assert!(out.files.is_empty(), "{result:?}");
    assert_eq!(out.skipped.len(), 1, "{result:?}");
    assert_eq!(out.skipped[0].path, "bad\\nname");
}

/// A probe run straight on an executor, with limits no test reaches.
fn probe_spec(args: &[&str]) -> shoal_worker::execute::RunSpec {
    use sha2::Digest;
    use shoal_worker::execute::{ModuleBytes, RunLimits, RunSpec};
    let bytes = std::fs::read(fixture("probe.wasm")).unwrap();
    RunSpec {
        module: ModuleBytes {
            sha256: sha2::Sha256::digest(&bytes).into(),
            bytes: bytes.into(),
        },
        argv0: "probe.wasm".into(),
        entrypoint: "_start".into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: Vec::new(),
        mounts: Vec::new(),
        limits: RunLimits {
            fuel: u64::MAX,
            memory_bytes: 64 << 20,
            timeout: std::time::Duration::from_secs(60),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waits_for_a_pool_slot_and_a_full_pool_is_our_error_not_the_jobs() {
    use shoal_worker::execute::{Executor, ExecutorConfig, Outcome};
    let executor = Executor::new(ExecutorConfig {
        pool_stores: 1,
        ..ExecutorConfig::default()
    })
    .unwrap();
    let asleep = tokio::spawn({
        let executor = executor.clone();
        async move { executor.run(probe_spec(&["sleep", "2"])).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    // Bypassing the slot count (the blocking entry point takes none), the
    // pool is full: an internal error, not the job's failure.
    let bypass = executor.clone();
    let crowded =
        tokio::task::spawn_blocking(move || bypass.run_blocking(probe_spec(&["args", "x"])))
            .await
            .unwrap();
    match &crowded.outcome {
        Outcome::Internal(why) => assert!(why.contains("pool is full"), "{why}"),
        other => panic!("expected the pool to be full, got {other:?}"),
    }

    // Through `run`, the job waits for the sleeping guest's slot instead
    // (which the sleeper holds for another 1.5 s or so).
    let started = std::time::Instant::now();
    let waited = executor.run(probe_spec(&["args", "x"])).await;
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "ran before the slot was free"
    );
    assert_eq!(waited.outcome, Outcome::Exited(0));
    assert_eq!(asleep.await.unwrap().outcome, Outcome::Exited(0));
}

/// The wall-clock limit is a moment: time a guest spent asleep in a host
/// call counts in full, so one that sleeps most of its limit and then
/// spins is stopped at the limit, not a limit's worth of spinning later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_asleep_in_the_host_counts_toward_the_wall_clock_limit() {
    use shoal_worker::execute::{Executor, ExecutorConfig, Outcome};
    let executor = Executor::new(ExecutorConfig::default()).unwrap();
    let mut spec = probe_spec(&["sleepspin", "800"]);
    spec.limits.timeout = std::time::Duration::from_secs(1);
    let report = executor.run(spec).await;
    assert_eq!(report.outcome, Outcome::TimedOut);
    assert!(
        report.run < std::time::Duration::from_millis(1500),
        "stopped after {:?}",
        report.run
    );
}

/// A module compiled already runs on its job's task, on the async
/// runtime's thread, yielding at every epoch tick, but never on every
/// thread at once: beside guests spinning on as many slots as the runtime
/// has threads, a task that sleeps 5 ms at a time still runs about as
/// often as it asks (were every thread running a guest, the runtime would
/// look at its timers only every few dozen ticks).
#[test]
fn spinning_guests_leave_the_runtime_a_thread_for_its_timers() {
    for threads in [1, 2] {
        let runtime = match threads {
            1 => tokio::runtime::Builder::new_current_thread(),
            n => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(n);
                b
            }
        }
        .enable_all()
        .build()
        .unwrap();
        let ticks = runtime.block_on(ticks_beside_spinning_guests(threads));
        assert!(
            ticks >= 20,
            "{ticks} ticks in 1 s beside {threads} spinning guests on {threads} threads"
        );
    }
}

/// 5 ms sleeps a task completes while `guests` guests spin for 1 s.
async fn ticks_beside_spinning_guests(guests: usize) -> usize {
    use shoal_worker::execute::{Executor, ExecutorConfig, Outcome};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let executor = Executor::new(ExecutorConfig::default()).unwrap();
    // Compiled first (on the blocking pool); the next runs may be inline.
    let first = executor.run(probe_spec(&["args", "x"])).await;
    assert_eq!(first.outcome, Outcome::Exited(0));
    let done = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn({
        let done = done.clone();
        async move {
            let mut ticks = 0;
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                ticks += 1;
            }
            ticks
        }
    });
    let started = Instant::now();
    let spinning: Vec<_> = (0..guests)
        .map(|_| {
            let mut spec = probe_spec(&["spin"]);
            spec.limits.timeout = Duration::from_secs(1);
            let executor = executor.clone();
            tokio::spawn(async move { executor.run(spec).await })
        })
        .collect();
    for run in spinning {
        assert_eq!(run.await.unwrap().outcome, Outcome::TimedOut);
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
    done.store(true, Ordering::Relaxed);
    ticker.await.unwrap()
}

/// A cancel stops a guest spinning in wasm (the epoch callback) and one
/// asleep in a host call (the run's select), and one still waiting for its
/// guest slot never starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_a_guest_wherever_it_is() {
    use shoal_worker::execute::{Executor, ExecutorConfig, Live, Outcome};
    let executor = Executor::new(ExecutorConfig {
        guests: 2,
        ..ExecutorConfig::default()
    })
    .unwrap();
    let start = |args: &'static [&'static str]| {
        let live = Live::default();
        let mut spec = probe_spec(args);
        spec.live = live.clone();
        let executor = executor.clone();
        (live, tokio::spawn(async move { executor.run(spec).await }))
    };
    let (spinning, spun) = start(&["spin"]);
    let (sleeping, slept) = start(&["sleep", "60"]);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (waiting, waited) = start(&["args", "never"]);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for live in [&waiting, &spinning, &sleeping] {
        live.cancel();
    }
    let waited = waited.await.unwrap();
    assert_eq!(waited.outcome, Outcome::Cancelled);
    assert!(waited.stdout.is_empty(), "it ran");
    for ran in [spun, slept] {
        let report = ran.await.unwrap();
        assert_eq!(report.outcome, Outcome::Cancelled);
        assert!(
            report.run < std::time::Duration::from_secs(5),
            "{:?}",
            report.run
        );
    }
}

#[tokio::test]
async fn a_table_declared_past_the_limit_is_refused_by_either_allocator() {
    // 200,000 elements against executor.max_table_elements = 100,000.
    let wat = b"(module (table 200000 funcref) (func (export \"_start\")))";
    for (pooling, want) in [("true", "invalid_module"), ("false", "memory_limit")] {
        let h = Harness::with_env(&[("SHOAL_EXECUTOR_POOLING", pooling)]);
        let module = h.upload_bytes(wat, "big_table.wat").await;
        let (result, _) = h.run(shoal_schemas::JobMessage::new(module)).await;
        assert_eq!(
            (result.status, kind(&result)),
            (Status::Failed, Some(want)),
            "pooling {pooling}: {result:?}"
        );
    }
}
