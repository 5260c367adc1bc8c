//! Operating jobs through the built `submit` binary against the real broker
//! and store: cancel, list, describe and logs.
mod common;

use common::{Cli, InProcessWorker, fleet_env, path, submit_command, text};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// `submit` with a fleet's settings.
struct Fleet {
    cli: Cli,
    env: Vec<(String, String)>,
    suffix: String,
}

impl Fleet {
    fn new(prefix: &str, extra: &[(&str, &str)]) -> Fleet {
        let cli = Cli::new();
        let (env, suffix) = fleet_env(prefix, cli.cache.path(), extra);
        Fleet { cli, env, suffix }
    }

    fn submit(&self, args: &[&str]) -> Output {
        submit_command()
            .args(args)
            .current_dir(self.cli.work.path())
            .envs(self.env.iter().cloned())
            .output()
            .unwrap()
    }

    /// `submit` while the broker is unreachable: what the store alone can do.
    fn submit_without_broker(&self, args: &[&str]) -> Output {
        submit_command()
            .args(args)
            .current_dir(self.cli.work.path())
            .envs(self.env.iter().cloned())
            .env("SHOAL_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .output()
            .unwrap()
    }

    fn worker(&self, name: &str) -> InProcessWorker {
        InProcessWorker::join(&self.env, &self.suffix, Some(name))
    }

    fn id(&self, name: &str) -> String {
        format!("{name}-{}", self.suffix)
    }

    /// Submits `probe ARGS…` as job `id` without waiting.
    fn detach(&self, id: &str, args: &[&str]) {
        let probe = path("tests/fixtures/probe.wasm");
        let mut argv = vec![
            "run",
            "--detach",
            "--id",
            id,
            "--timeout",
            "60s",
            &probe,
            "--",
        ];
        argv.extend(args);
        let out = self.submit(&argv);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), id);
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.submit(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out.stdout)))
    }

    /// Waits for the stored result of `id` (`submit get --json`).
    fn result(&self, id: &str) -> (Value, Option<i32>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.submit(&[
                "get",
                id,
                "--json",
                "--download",
                self.cli.work.path().join(id).to_str().unwrap(),
            ]);
            if out.status.code() != Some(2) {
                return (
                    serde_json::from_slice(&out.stdout).unwrap(),
                    out.status.code(),
                );
            }
            assert!(
                Instant::now() < deadline,
                "no result for {id}: {}",
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `describe` says `id` is in `state`; returns the description.
    fn described(&self, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let d = self.json(&["describe", id, "--json"]);
            if d["state"] == state {
                return d;
            }
            assert!(Instant::now() < deadline, "{id} never {state}: {d}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn listed(&self, args: &[&str]) -> Vec<(String, String)> {
        let mut argv = vec!["list", "--json"];
        argv.extend(args);
        self.json(&argv)
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                for key in ["id", "status", "worker", "submitted_at", "finished_at"] {
                    assert!(row.get(key).is_some(), "{key} missing from {row}");
                }
                (
                    row["id"].as_str().unwrap().to_owned(),
                    row["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

fn rfc3339(value: &Value) -> SystemTime {
    humantime::parse_rfc3339(value.as_str().unwrap()).unwrap()
}

#[test]
fn a_queued_job_cancelled_before_any_worker_is_up_never_runs() {
    let fleet = Fleet::new("cancel-queued", &[]);
    let id = fleet.id("queued");
    // Writes a file if it ever runs.
    fleet.detach(&id, &["write", "/outputs/ran", "yes"]);

    let d = fleet.json(&["describe", &id, "--json"]);
    assert_eq!(d["state"], "queued", "{d}");
    assert_eq!(d["id"], id.as_str());
    assert!(d.get("since").is_some(), "{d}");
    assert!(fleet.listed(&[]).contains(&(id.clone(), "queued".into())));

    // With the broker down, the store still describes and lists.
    let out = fleet.submit_without_broker(&["describe", &id, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["state"], "queued", "{d}");
    assert_eq!(d["workers_asked"], false, "{d}");
    assert!(
        text(&out.stderr).contains("did not answer"),
        "{}",
        text(&out.stderr)
    );
    let out = fleet.submit_without_broker(&["list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&id));

    let out = fleet.submit(&["cancel", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("without running"),
        "{}",
        text(&out.stdout)
    );
    // Twice is harmless, and says so.
    let out = fleet.submit(&["cancel", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("already cancelled"),
        "{}",
        text(&out.stdout)
    );
    let d = fleet.json(&["describe", &id, "--json"]);
    assert_eq!(d["cancel_requested"], true, "{d}");

    let worker = fleet.worker("w-late");
    let (result, code) = fleet.result(&id);
    assert_eq!(code, Some(130), "{result}");
    assert_eq!(result["status"], "cancelled", "{result}");
    assert_eq!(result["error"]["kind"], "cancelled", "{result}");
    assert_eq!(result["worker"], "w-late");
    assert!(
        result["usage"]["durations"].get("run_secs").is_none(),
        "it ran: {result}"
    );
    assert!(!fleet.cli.work.path().join(&id).join("outputs/ran").exists());

    // Finished now: cancelling again changes nothing; an unknown id is an error.
    let out = fleet.submit(&["cancel", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("already cancelled"));
    let out = fleet.submit(&["cancel", &fleet.id("no-such-job")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is known"),
        "{}",
        text(&out.stderr)
    );
    // A job that finished otherwise is left alone, and the exit code says so.
    let done = fleet.id("done");
    fleet.detach(&done, &["args", "x"]);
    fleet.result(&done);
    let out = fleet.submit(&["cancel", &done]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("already finished (succeeded)"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(fleet.result(&done).0["status"], "succeeded");

    let cancelled = fleet.listed(&["--status", "cancelled"]);
    assert_eq!(cancelled, vec![(id.clone(), "cancelled".into())]);
    worker.stop();
}

#[test]
fn a_spinning_guest_is_cancelled_within_a_second_wherever_it_runs_and_its_worker_goes_on() {
    // One guest slot and one job held per worker, so the second job goes
    // to the other worker.
    let fleet = Fleet::new(
        "cancel-running",
        &[
            ("SHOAL_WORKER_CONCURRENCY", "1"),
            ("SHOAL_AMQP_PREFETCH", "1"),
        ],
    );
    let first = fleet.worker("w-one");

    // One worker: cancelled mid-run, then the same worker takes the next job.
    let spin = fleet.id("spin");
    fleet.detach(&spin, &["spin"]);
    let d = fleet.described(&spin, "running");
    assert_eq!(d["worker"], "w-one", "{d}");
    assert_eq!(d["attempt"], 1, "{d}");
    assert!(d.get("since").is_some(), "{d}");
    let running = fleet.listed(&["--status", "running"]);
    assert_eq!(running, vec![(spin.clone(), "running".into())]);
    let out = fleet.submit(&["cancel", &spin]);
    let sent = SystemTime::now();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("stopping on w-one"),
        "{}",
        text(&out.stdout)
    );
    let (result, code) = fleet.result(&spin);
    assert_eq!(code, Some(130), "{result}");
    assert_eq!(result["status"], "cancelled");
    let stopped = rfc3339(&result["finished_at"]);
    assert!(
        stopped < sent + Duration::from_secs(1),
        "stopped {:?} after the cancel was sent",
        stopped.duration_since(sent)
    );
    let next = fleet.id("next");
    fleet.detach(&next, &["args", "after"]);
    let (result, code) = fleet.result(&next);
    assert_eq!(code, Some(0), "{result}");
    assert_eq!(result["worker"], "w-one");

    // A cancel that reaches only the store (the broker unreachable from
    // where it is asked) stops a running job once the worker reads the
    // records again, within seconds.
    let asleep = fleet.id("asleep");
    fleet.detach(&asleep, &["sleep", "50"]);
    fleet.described(&asleep, "running");
    let out = fleet.submit_without_broker(&["cancel", &asleep]);
    let recorded = SystemTime::now();
    assert_eq!(
        text(&out.stdout).trim(),
        format!("{asleep}: cancel recorded")
    );
    let (result, code) = fleet.result(&asleep);
    assert_eq!(code, Some(130), "{result}");
    // The worker reads the records every 5 s.
    assert!(
        rfc3339(&result["finished_at"]) < recorded + Duration::from_secs(7),
        "{result}"
    );

    // Two workers: the cancel reaches the one running the job, whichever.
    let second = fleet.worker("w-two");
    let spin = fleet.id("spin-two");
    fleet.detach(&spin, &["spin"]);
    let d = fleet.described(&spin, "running");
    let runs_on = d["worker"].as_str().unwrap().to_owned();
    // A job in the host (sleeping), on the other worker, stopped as well.
    let sleeper = fleet.id("sleeper");
    fleet.detach(&sleeper, &["sleep", "50"]);
    let other = fleet.described(&sleeper, "running");
    assert_ne!(other["worker"], runs_on.as_str(), "one slot each: {other}");
    let out = fleet.submit(&["cancel", &spin, &sleeper]);
    let sent = SystemTime::now();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for (id, on) in [
        (&spin, runs_on.clone()),
        (&sleeper, other["worker"].as_str().unwrap().to_owned()),
    ] {
        let (result, code) = fleet.result(id);
        assert_eq!(code, Some(130), "{result}");
        assert_eq!(result["worker"], on.as_str());
        assert!(
            rfc3339(&result["finished_at"]) < sent + Duration::from_secs(1),
            "{result}"
        );
    }
    second.stop();
    first.stop();
}

#[test]
fn a_redelivered_job_that_was_cancelled_is_skipped() {
    use lapin::options::BasicGetOptions;
    let fleet = Fleet::new("cancel-redelivered", &[]);
    let id = fleet.id("redelivered");
    fleet.detach(&id, &["write", "/outputs/ran", "yes"]);
    let queue = fleet.env[1].1.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // A "worker" takes the job and holds it unacknowledged, then dies.
    let conn = runtime.block_on(async {
        let conn = lapin::Connection::connect(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            lapin::ConnectionProperties::default(),
        )
        .await
        .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let got = channel
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("the job is in the queue");
        assert_eq!(
            got.delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .as_str(),
            id
        );
        conn
    });
    // Cancelled while the broker cannot be reached: the store's record
    // is enough.
    let out = fleet.submit_without_broker(&["cancel", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), format!("{id}: cancel recorded"));
    runtime.block_on(async { conn.close(200, "dying".into()).await.unwrap() });
    let worker = fleet.worker("w-after");
    let (result, code) = fleet.result(&id);
    assert_eq!(code, Some(130), "{result}");
    assert_eq!(result["status"], "cancelled");
    assert_eq!(result["attempt"], 2, "taken before: {result}");
    assert!(!fleet.cli.work.path().join(&id).join("outputs/ran").exists());
    worker.stop();
}

#[test]
fn logs_follow_shows_a_guests_lines_as_it_prints_them() {
    let fleet = Fleet::new("logs", &[]);
    let worker = fleet.worker("w-logs");
    let id = fleet.id("ticks");
    // Following from before the job runs: it waits, then streams.
    let mut follow = submit_command()
        .args(["logs", "-f", &id])
        .current_dir(fleet.cli.work.path())
        .envs(fleet.env.iter().cloned())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map(|line| (line.unwrap(), SystemTime::now()))
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(300));
    fleet.detach(&id, &["tick", "15", "100"]);
    let lines = reader.join().unwrap();
    let status = follow.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let (result, _) = fleet.result(&id);
    let finished = rfc3339(&result["finished_at"]);
    let want: Vec<String> = (1..=15).map(|i| format!("tick {i}")).collect();
    let got: Vec<String> = lines.iter().map(|(l, _)| l.clone()).collect();
    assert_eq!(got, want);
    // Seen while the guest ran, not only at its end.
    let early = lines.iter().filter(|(_, at)| *at < finished).count();
    assert!(
        early >= 5,
        "only {early} lines arrived before the job ended"
    );

    // Afterwards, the stored stream; a failing job's code comes back with -f.
    let out = fleet.submit(&["logs", &id]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        want.iter().map(|l| format!("{l}\n")).collect::<String>()
    );
    // A mistyped id is an error, after a while to appear.
    let out = fleet.submit(&["logs", "-f", &fleet.id("never-submitted")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is known"),
        "{}",
        text(&out.stderr)
    );
    let failing = fleet.id("failing");
    fleet.detach(&failing, &["exit", "3"]);
    let out = fleet.submit(&["logs", "-f", &failing]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    worker.stop();
}

#[test]
fn list_shows_jobs_of_every_status_newest_first_filtered() {
    let fleet = Fleet::new(
        "list",
        &[
            ("SHOAL_AMQP_MAX_ATTEMPTS", "1"),
            ("SHOAL_STAGING_URL_ALLOW", "127.0.0.0/8"),
        ],
    );
    let worker = fleet.worker("w-list");
    let ok = fleet.id("ok");
    fleet.detach(&ok, &["args", "x"]);
    fleet.result(&ok);
    let failed = fleet.id("failed");
    fleet.detach(&failed, &["exit", "3"]);
    fleet.result(&failed);
    let rows = fleet.listed(&[]);
    assert_eq!(
        rows,
        vec![
            (failed.clone(), "failed".into()),
            (ok.clone(), "succeeded".into())
        ],
        "newest first"
    );
    assert_eq!(
        fleet.listed(&["--status", "failed"]),
        vec![(failed.clone(), "failed".into())]
    );
    assert_eq!(
        fleet.listed(&["--limit", "1"]),
        vec![(failed.clone(), "failed".into())]
    );
    assert_eq!(fleet.listed(&["--status", "succeeded,failed"]).len(), 2);
    assert!(fleet.listed(&["--status", "rejected"]).is_empty());

    // Rejected: a message with an id that is not a valid job. Error: an
    // origin that never answers, past the fleet's one attempt.
    let rejected = fleet.id("rejected");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let conn = lapin::Connection::connect(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            lapin::ConnectionProperties::default(),
        )
        .await
        .unwrap();
        let channel = conn.create_channel().await.unwrap();
        channel
            .basic_publish(
                "".into(),
                fleet.env[1].1.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                br#"{"schema": "shoal.job/v1", "module": 7}"#,
                lapin::BasicProperties::default().with_message_id(rejected.as_str().into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        conn.close(200, "sent".into()).await.unwrap();
    });
    assert_eq!(fleet.result(&rejected).0["status"], "rejected");
    let error = fleet.id("error");
    let probe = path("tests/fixtures/probe.wasm");
    let out = fleet.submit(&[
        "run",
        "--detach",
        "--id",
        &error,
        "-i",
        "http://127.0.0.1:1/never",
        &probe,
        "--",
        "args",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fleet.result(&error).0["status"], "error");
    let statuses: Vec<String> = fleet.listed(&[]).into_iter().map(|(_, s)| s).collect();
    assert_eq!(statuses, ["error", "rejected", "failed", "succeeded"]);
    assert_eq!(
        fleet.listed(&["--status", "error,rejected"]),
        vec![
            (error.clone(), "error".into()),
            (rejected.clone(), "rejected".into())
        ]
    );
    std::thread::sleep(Duration::from_secs(6));
    let late = fleet.id("late");
    fleet.detach(&late, &["args", "y"]);
    fleet.result(&late);
    assert_eq!(
        fleet.listed(&["--since", "4s"]),
        vec![(late.clone(), "succeeded".into())]
    );
    let json = fleet.json(&["list", "--json", "--limit", "1"]);
    let row = &json[0];
    assert_eq!(row["worker"], "w-list");
    assert!(rfc3339(&row["finished_at"]) >= rfc3339(&row["submitted_at"]));
    // The table names each job, its status and worker.
    let out = fleet.submit(&["list"]);
    assert_eq!(out.status.code(), Some(0));
    let table = text(&out.stdout);
    for id in [&ok, &failed, &rejected, &error, &late] {
        assert!(table.contains(id.as_str()), "{table}");
    }
    assert!(
        table.contains("w-list") && table.contains("failed"),
        "{table}"
    );
    let out = fleet.submit(&["list", "--status", "sideways"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("one of queued, running"),
        "{}",
        text(&out.stderr)
    );
    worker.stop();
}
