//! A real three-node RabbitMQ cluster (`scripts/cluster`, its own node
//! names, ports and folder) losing a node mid-run: two `shoal-worker`
//! processes and a submitter spread over the three nodes, 1,000 jobs in
//! flight, one node stopped hard (SIGKILL of its Erlang VM) and started
//! again later. Every job id ends with exactly one result in the store and
//! succeeds, nothing is lost, the dead-letter queue holds only the poison
//! messages (two of them sent while the node was down), and the worker
//! whose node was stopped reconnects to another node by itself.
//!
//! One test, two runs in turn (they stop and start the same nodes): first
//! the node that leads the queues, then a node that leads none.
mod common;

use common::{Reaper, repo, unique};
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use shoal_schemas::{JobMessage, Location, ResultMessage, Source, Status};
use std::collections::HashMap;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

const JOBS: usize = 1000;
/// Ports 5691..5693 and node names shoal-t1..3: not those of a cluster a
/// person started with `scripts/cluster up` (5681.., shoal-c1..).
const PORT_BASE: u16 = 5690;
const NAME: &str = "shoal-t";

/// The test's cluster: up when made, down (every node stopped, its folder
/// removed) when dropped, also when the test fails.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn up() -> Cluster {
        let cluster = Cluster {
            dir: tempfile::tempdir().unwrap(),
        };
        let out = cluster.script(&["up"]);
        assert!(
            out.status.success(),
            "scripts/cluster up (RabbitMQ from scripts/services): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(repo().join("scripts/cluster"));
        cmd.args(args)
            .env("SHOAL_CLUSTER_DIR", self.dir.path())
            .env("SHOAL_CLUSTER_PORT_BASE", PORT_BASE.to_string())
            .env("SHOAL_CLUSTER_NAME", NAME);
        cmd
    }

    fn script(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn url(n: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", PORT_BASE + n as u16)
    }

    /// The URLs of `nodes`, in that order, comma-separated.
    fn urls(nodes: &[usize]) -> String {
        nodes
            .iter()
            .map(|&n| Cluster::url(n))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node (1..=3) that leads `queue`, asked of node `via`.
    fn leader(&self, queue: &str, via: usize) -> usize {
        let out = self.script(&[
            "ctl",
            &via.to_string(),
            "list_queues",
            "name",
            "leader",
            "--formatter",
            "json",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        let start = text.find('[').expect("a JSON listing");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&text[start..]).unwrap();
        let leader = rows
            .iter()
            .find(|row| row["name"] == queue)
            .and_then(|row| row["leader"].as_str())
            .unwrap_or_else(|| panic!("{queue} not listed: {text}"));
        (1..=3)
            .find(|n| leader == format!("{NAME}{n}@localhost"))
            .unwrap_or_else(|| panic!("leader {leader}"))
    }

    /// Starts node `n` again, in the background (it takes seconds, while
    /// results keep arriving).
    fn start(&self, n: usize) -> Child {
        self.command(&["start", &n.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn stop(&self, n: usize) {
        let out = self.script(&["stop", &n.to_string()]);
        assert!(out.status.success(), "{out:?}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script(&["down"]);
    }
}

/// Publishes a persistent message to `queue`; the broker's confirm is
/// awaited by the caller (many are in flight at once).
async fn publish_job(
    publish: &lapin::Channel,
    queue: &str,
    body: Vec<u8>,
    props: BasicProperties,
) -> lapin::PublisherConfirm {
    publish
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions::default(),
            &body,
            props.with_delivery_mode(2),
        )
        .await
        .unwrap()
}

/// What one run measured.
struct Figures {
    redelivered: usize,
    longest_gap: Duration,
    reconnect: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_node_lost_mid_run_loses_no_job() {
    let cluster = Cluster::up();
    let leader = lose_a_node(&cluster, true).await;
    let other = lose_a_node(&cluster, false).await;
    a_client_whose_reply_node_is_lost_moves_its_replies(&cluster).await;
    for (what, f) in [("the leader", leader), ("a node leading nothing", other)] {
        eprintln!(
            "cluster: {JOBS} jobs, {what} stopped hard and restarted: {} jobs redelivered, longest gap in results {} ms, its worker consuming from another node {} ms after the stop; 0 lost",
            f.redelivered,
            f.longest_gap.as_millis(),
            f.reconnect.as_millis()
        );
    }
}

/// One run: node 1 leads the queues (they are declared there); worker A is
/// on node 1, worker B on node 2, the submitter on node 3. Stops node 1
/// (`lose_leader`) or node 2 (which leads nothing) once 200 results are in,
/// sends two poison messages while it is down, starts it again later.
async fn lose_a_node(cluster: &Cluster, lose_leader: bool) -> Figures {
    let topology = common::topology("test.cluster");
    // Declared from node 1: quorum queues start with their leader on the
    // declaring client's node.
    {
        let conn = Connection::connect(&Cluster::url(1), ConnectionProperties::default())
            .await
            .unwrap();
        topology
            .declare(&conn.create_channel().await.unwrap())
            .await
            .unwrap();
        let _ = conn.close(200, "declared".into()).await;
    }
    assert_eq!(cluster.leader(&topology.job_queue, 3), 1);
    assert_eq!(cluster.leader(&topology.dead_letter, 3), 1);
    let victim = if lose_leader { 1 } else { 2 };

    let cache = tempfile::tempdir().unwrap();
    let module = common::seed_probe(cache.path());
    let logs = tempfile::tempdir().unwrap();
    let worker = |name: &str, nodes: &[usize]| {
        let log = std::fs::File::create(logs.path().join(format!("{name}.log"))).unwrap();
        Command::new(env!("CARGO_BIN_EXE_shoal-worker"))
            .arg("serve")
            .env_clear()
            .env("SHOAL_CACHE_DIR", cache.path())
            .env("SHOAL_AMQP_URL", Cluster::urls(nodes))
            .env("SHOAL_AMQP_JOB_QUEUE", &topology.job_queue)
            .env("SHOAL_AMQP_RESULTS_EXCHANGE", &topology.results_exchange)
            .env("SHOAL_AMQP_DEAD_LETTER", &topology.dead_letter)
            .env("SHOAL_AMQP_CONTROL_EXCHANGE", &topology.control_exchange)
            .env("SHOAL_AMQP_MAX_ATTEMPTS", "5")
            .env("SHOAL_AMQP_RECONNECT_MAX_MS", "1000")
            .env("SHOAL_AMQP_HEARTBEAT_SECS", "5")
            .env("SHOAL_WORKER_NAME", name)
            .env("SHOAL_WORKER_CONCURRENCY", "2")
            .env("SHOAL_LOG_FILTER", "info")
            .env("SHOAL_LOG_FORMAT", "json")
            .env("SHOAL_METRICS_LISTEN", "")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let (a, b) = (unique("cluster-a"), unique("cluster-b"));
    let workers = Reaper(vec![worker(&a, &[1, 2, 3]), worker(&b, &[2, 3, 1])]);
    let on_victim = if lose_leader { &a } else { &b };

    // The submitter, on node 3: publishes with confirms, listens for results.
    let conn = Connection::connect(&Cluster::url(3), ConnectionProperties::default())
        .await
        .unwrap();
    let publish = conn.create_channel().await.unwrap();
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let (reply_queue, mut replies) =
        shoal_schemas::topology::reply_queue(&conn.create_channel().await.unwrap())
            .await
            .unwrap();
    let send = |body: Vec<u8>, props: BasicProperties| {
        publish_job(&publish, &topology.job_queue, body, props)
    };
    let mut confirms = vec![send(b"not json".to_vec(), BasicProperties::default()).await];
    let ids: Vec<String> = (0..JOBS).map(|i| unique(&format!("cl-{i}"))).collect();
    for (i, id) in ids.iter().enumerate() {
        let mut job = JobMessage::new(Source {
            name: Some("probe.wasm".into()),
            ..Source::new(Location::Sha256(module.clone()))
        });
        job.id = Some(id.clone());
        job.args = vec!["args".into(), i.to_string()];
        let props = BasicProperties::default()
            .with_message_id(ShortString::from(id.as_str()))
            .with_reply_to(ShortString::from(reply_queue.as_str()));
        confirms.push(send(serde_json::to_vec(&job).unwrap(), props).await);
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }

    let mut results: HashMap<String, Vec<ResultMessage>> = HashMap::new();
    let mut stopped_at: Option<Instant> = None;
    let mut stopped_wall = SystemTime::UNIX_EPOCH;
    // When results of the stopped node's worker arrived, after the stop.
    let mut victims_results = Vec::new();
    let mut restart: Option<Child> = None;
    let mut last = Instant::now();
    let mut longest_gap = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(300);
    while results.len() < JOBS {
        let delivery = tokio::time::timeout_at(deadline.into(), replies.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {JOBS} jobs answered", results.len()))
            .expect("reply consumer ended")
            .unwrap();
        if delivery.properties.kind().as_ref().map(|k| k.as_str())
            == Some(shoal_schemas::STATE_SCHEMA)
        {
            continue;
        }
        let result: ResultMessage = serde_json::from_slice(&delivery.data).unwrap();
        longest_gap = longest_gap.max(last.elapsed());
        last = Instant::now();
        if stopped_at.is_some() && &result.worker == on_victim {
            victims_results.push(SystemTime::now());
        }
        results
            .entry(result.job_id.clone())
            .or_default()
            .push(result);
        if stopped_at.is_none() && results.len() >= 200 {
            cluster.stop(victim);
            stopped_at = Some(Instant::now());
            stopped_wall = SystemTime::now();
            // Poison while the node is down: the dead-letter queue (led by
            // node 1 until now) must keep them.
            for poison in [&b"{\"schema\":\"shoal.job/v1\"}"[..], b"\xff\xfe"] {
                let confirm = send(poison.to_vec(), BasicProperties::default()).await;
                assert!(confirm.await.unwrap().is_ack());
            }
        }
        if restart.is_none()
            && stopped_at
                .is_some_and(|at| results.len() >= 700 || at.elapsed() > Duration::from_secs(5))
        {
            restart = Some(cluster.start(victim));
        }
    }
    // Late duplicates of redelivered jobs arrive now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(100), replies.next()).await
    {
        if let Ok(result) = serde_json::from_slice::<ResultMessage>(&delivery.data) {
            results
                .entry(result.job_id.clone())
                .or_default()
                .push(result);
        }
    }
    let mut restart = restart.unwrap_or_else(|| cluster.start(victim));
    let started = loop {
        if let Some(status) = restart.try_wait().unwrap() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(started.success(), "node {victim} did not start again");

    let mut redelivered = 0;
    for (i, id) in ids.iter().enumerate() {
        let got = results.get(id).unwrap_or_else(|| panic!("job {id} lost"));
        for result in got {
            assert_eq!(result.status, Status::Succeeded, "{result:?}");
            assert_eq!(
                result.stdout.as_ref().and_then(|s| s.text.as_deref()),
                Some(format!("probe.wasm\nargs\n{i}\n").as_str())
            );
        }
        if got.len() > 1 || got[0].attempt > 1 {
            redelivered += 1;
        }
        // Exactly one final result: the store's, written once.
        let stored = cache
            .path()
            .join(shoal_worker::store::keys::result(id).as_ref());
        let stored: ResultMessage =
            serde_json::from_slice(&std::fs::read(&stored).unwrap_or_else(|e| panic!("{id}: {e}")))
                .unwrap();
        assert_eq!(stored.status, Status::Succeeded);
    }
    assert_eq!(results.len(), JOBS, "results for ids nobody submitted");
    let stored = std::fs::read_dir(cache.path().join("results"))
        .unwrap()
        .count();
    assert_eq!(stored, JOBS, "results in the store");
    // It reached another node by itself: its second "consuming jobs" line
    // names another node's port, and it served jobs after that.
    let log = std::fs::read_to_string(logs.path().join(format!("{on_victim}.log"))).unwrap();
    assert!(!log.contains("guest:guest"), "a password in the log: {log}");
    let consuming: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "consuming jobs")
        .collect();
    assert!(consuming.len() >= 2, "{log}");
    let broker = consuming[1]["fields"]["broker"].as_str().unwrap();
    assert!(
        !broker.contains(&format!(":{}/", PORT_BASE + victim as u16)),
        "{log}"
    );
    let reconnected = humantime::parse_rfc3339_weak(
        consuming[1]["timestamp"]
            .as_str()
            .unwrap()
            .trim_end_matches('Z'),
    )
    .unwrap();
    let reconnect = reconnected
        .duration_since(stopped_wall)
        .unwrap_or(Duration::ZERO);
    assert!(
        victims_results.iter().any(|&at| at > reconnected),
        "worker {on_victim} served nothing after it reconnected; its log:\n{log}"
    );

    // Nothing left, and the dead letters are the three poison messages.
    let check = conn.create_channel().await.unwrap();
    let count = |queue: String| {
        let check = check.clone();
        async move {
            check
                .queue_declare(
                    ShortString::from(queue.as_str()),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap()
                .message_count()
        }
    };
    assert_eq!(count(topology.job_queue.clone()).await, 0);
    assert_eq!(
        count(topology.dead_letter.clone()).await,
        3,
        "the dead-letter queue holds other than the three poison messages"
    );
    drop(workers);
    topology.delete(&check).await.unwrap();
    let _ = conn.close(200, "done".into()).await;
    Figures {
        redelivered,
        longest_gap,
        reconnect,
    }
}

/// The Rust client, given every node, on node 1 with its reply queue (a
/// classic queue: it lives on node 1 only), a worker on node 2. Node 1 is
/// stopped while a job runs: that job's result cannot reach the client
/// (`RepliesLost`, fetch it from the store), and the client moves its reply
/// queue to a node that answers, so the next job's result arrives.
async fn a_client_whose_reply_node_is_lost_moves_its_replies(cluster: &Cluster) {
    use shoal_submitter::{Client, ClientError, ClientOptions};
    let topology = common::topology("test.cluster");
    let cache = tempfile::tempdir().unwrap();
    let module = common::seed_probe(cache.path());
    let client = Client::connect_with(
        &Cluster::urls(&[1, 2, 3]),
        topology.clone(),
        ClientOptions::default(),
    )
    .await
    .unwrap();
    let logs = tempfile::tempdir().unwrap();
    let worker = Command::new(env!("CARGO_BIN_EXE_shoal-worker"))
        .arg("serve")
        .env_clear()
        .env("SHOAL_CACHE_DIR", cache.path())
        .env("SHOAL_AMQP_URL", Cluster::urls(&[2, 3, 1]))
        .env("SHOAL_AMQP_JOB_QUEUE", &topology.job_queue)
        .env("SHOAL_AMQP_RESULTS_EXCHANGE", &topology.results_exchange)
        .env("SHOAL_AMQP_DEAD_LETTER", &topology.dead_letter)
        .env("SHOAL_AMQP_CONTROL_EXCHANGE", &topology.control_exchange)
        .env("SHOAL_AMQP_RECONNECT_MAX_MS", "1000")
        .env("SHOAL_METRICS_LISTEN", "")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(logs.path().join("worker.log")).unwrap())
        .spawn()
        .unwrap();
    let _workers = Reaper(vec![worker]);
    let job = |args: &[&str]| {
        let mut job = JobMessage::new(Source {
            name: Some("probe.wasm".into()),
            ..Source::new(Location::Sha256(module.clone()))
        });
        job.args = args.iter().map(|a| a.to_string()).collect();
        job
    };
    let wait = Duration::from_secs(60);
    let first = client.submit(job(&["args", "before"])).await.unwrap();
    let result = client.wait_result(&first.id, wait).await.unwrap();
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    let old_queue = client.reply_queue();

    // A job that runs 2 s; node 1 goes while it runs.
    let running = client.submit(job(&["sleep", "2"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.stop(1);
    match client.wait_result(&running.id, wait).await {
        Err(ClientError::RepliesLost(why)) => assert!(why.contains("node is down"), "{why}"),
        other => panic!("expected RepliesLost, got {other:?}"),
    }
    // The store has it.
    let stored = cache
        .path()
        .join(shoal_worker::store::keys::result(&running.id).as_ref());
    let deadline = Instant::now() + wait;
    while !stored.exists() {
        assert!(
            Instant::now() < deadline,
            "no stored result for {}",
            running.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Replies now go to a new queue on a node that answers.
    assert_ne!(client.reply_queue(), old_queue);
    let after = client.submit(job(&["args", "after"])).await.unwrap();
    let result = client.wait_result(&after.id, wait).await.unwrap();
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert_eq!(
        result.stdout.and_then(|s| s.text).as_deref(),
        Some("probe.wasm\nargs\nafter\n")
    );
    client.close().await;
    let mut restart = cluster.start(1);
    assert!(
        restart.wait().unwrap().success(),
        "node 1 did not start again"
    );
}
