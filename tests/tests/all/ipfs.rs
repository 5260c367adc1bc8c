//! `cid` sources through a real trustless gateway on 127.0.0.1 (`origin.rs`
//! serving the CARs that ipfs-car made, in tests/fixtures/ipfs/): files,
//! chunked files, CIDv0, folders, `cid/path`, modules by CID; the cache
//! (a second job asks no gateway), a tampered block, missing content,
//! gateway failures and fallback.
use crate::origin::{Origin, Route};
use crate::support::{Harness, fixture, kind, stdout};
use object_store::{ObjectStoreExt, path::Path as StorePath};
use shoal_schemas::{Input, JobMessage, Location, Source, Status};
use shoal_worker::error::InfraError;
use shoal_worker::pipeline::LocalOptions;
use std::collections::HashMap;

/// Root CIDs by CAR name, from cids.txt.
fn cids() -> HashMap<String, String> {
    std::fs::read_to_string(fixture("ipfs/cids.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let mut cols = l.split('\t');
            (
                cols.next().unwrap().to_owned(),
                cols.next().unwrap().to_owned(),
            )
        })
        .collect()
}

fn car(name: &str) -> Vec<u8> {
    std::fs::read(fixture("ipfs").join(name)).unwrap()
}

/// The route a trustless gateway answers for `cid[/path]`.
fn route(spec: &str) -> String {
    let encoded: Vec<String> = spec
        .split('/')
        .map(|part| {
            part.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect()
        })
        .collect();
    format!("/ipfs/{}?format=car", encoded.join("/"))
}

/// A gateway serving these `(cid[/path], CAR file)` pairs.
async fn gateway(serves: &[(&str, &str)]) -> Origin {
    let routes: Vec<(String, Route)> = serves
        .iter()
        .map(|(spec, file)| (route(spec), Route::Body(car(file))))
        .collect();
    Origin::start(
        routes
            .iter()
            .map(|(p, r)| (p.as_str(), r.clone()))
            .collect(),
    )
    .await
}

fn harness(gateways: &[&Origin]) -> Harness {
    let list: Vec<String> = gateways.iter().map(|g| g.url("")).collect();
    Harness::with_env(&[("SHOAL_STAGING_IPFS_GATEWAYS", &list.join(","))])
}

fn cid_input(spec: &str, path: &str) -> Input {
    Input {
        source: Source::new(Location::Cid(spec.into())),
        path: Some(path.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cid_file_is_staged_verified_and_then_served_from_the_cache() {
    let cids = cids();
    let hello = &cids["hello.car"];
    let gw = gateway(&[(hello, "hello.car")]).await;
    let h = harness(&[&gw]);
    let want = std::fs::read_to_string(fixture("ipfs/inputs/hello.txt")).unwrap();
    for _ in 0..2 {
        let mut job = h.probe(&["cat", "/inputs/hello.txt"]).await;
        job.inputs = vec![cid_input(hello, "/inputs/hello.txt")];
        let (result, _) = h.run(job).await;
        assert_eq!(result.status, Status::Succeeded, "{result:?}");
        assert_eq!(stdout(&result), want);
    }
    assert_eq!(
        gw.total_requests(),
        1,
        "the second job asked the gateway again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_files_in_cidv1_and_cidv0_come_out_byte_exact() {
    let cids = cids();
    let (random, v0) = (&cids["random.car"], &cids["small-chunks-v0.car"]);
    assert!(v0.starts_with("Qm"), "{v0}");
    let gw = gateway(&[(random, "random.car"), (v0, "small-chunks-v0.car")]).await;
    let h = harness(&[&gw]);
    let mut job = h.probe(&["ls", "/inputs"]).await;
    job.inputs = vec![
        cid_input(random, "/inputs/random.bin"),
        cid_input(v0, "/inputs/small.bin"),
    ];
    let (result, _) = h.run(job).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    let mut listed: Vec<&str> = stdout(&result).lines().collect();
    listed.sort();
    assert_eq!(listed, ["random.bin", "small.bin"]);
    // Byte-exactness: the guest prints each file, and its stdout must be the original.
    for (input, original) in [
        ("/inputs/random.bin", "random.bin"),
        ("/inputs/small.bin", "small-chunks.bin"),
    ] {
        let mut job = h.probe(&["cat", input]).await;
        job.inputs = vec![
            cid_input(random, "/inputs/random.bin"),
            cid_input(v0, "/inputs/small.bin"),
        ];
        job.limits.max_stdout_bytes = Some(4 << 20);
        let (result, dir) = h.run(job).await;
        assert_eq!(result.status, Status::Succeeded, "{result:?}");
        let got = std::fs::read(dir.join("stdout")).unwrap();
        let want = std::fs::read(fixture("ipfs/inputs").join(original)).unwrap();
        assert!(got == want, "{input} differs from {original}");
    }
    assert_eq!(gw.total_requests(), 2, "each CID once, then the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_and_a_path_inside_a_wrapped_cid_are_staged_as_files_and_folders() {
    let cids = cids();
    let tree = &cids["tree.car"];
    let nested = format!("{tree}/nested");
    let deep = format!("{tree}/nested/sub/deeper/file.txt");
    let gw = gateway(&[
        (tree, "tree.car"),
        (&nested, "tree.car"),
        (&deep, "tree.car"),
    ])
    .await;
    let h = harness(&[&gw]);
    let inputs = || {
        vec![
            cid_input(tree, "/inputs/tree"),
            cid_input(&nested, "/inputs/data"),
            cid_input(&deep, "/inputs/one.txt"),
        ]
    };
    let src = fixture("ipfs/inputs/tree");
    for (args, want) in [
        (vec!["ls", "/inputs/tree"], "nested\ntop.txt\n".to_owned()),
        (
            vec!["cat", "/inputs/data/naïve café ☕.txt"],
            std::fs::read_to_string(src.join("nested/naïve café ☕.txt")).unwrap(),
        ),
        (
            vec!["cat", "/inputs/data/read me.txt"],
            std::fs::read_to_string(src.join("nested/read me.txt")).unwrap(),
        ),
        (vec!["cat", "/inputs/data/empty.txt"], String::new()),
        (
            vec!["cat", "/inputs/one.txt"],
            std::fs::read_to_string(src.join("nested/sub/deeper/file.txt")).unwrap(),
        ),
    ] {
        let mut job = h.probe(&args).await;
        job.inputs = inputs();
        let (result, _) = h.run(job).await;
        assert_eq!(result.status, Status::Succeeded, "{args:?}: {result:?}");
        let mut got: Vec<&str> = stdout(&result).lines().collect();
        let mut expected: Vec<&str> = want.lines().collect();
        if args[0] == "ls" {
            got.sort();
            expected.sort();
        }
        assert_eq!(got, expected, "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_can_come_from_a_cid() {
    let cids = cids();
    let probe = &cids["probe.car"];
    let gw = gateway(&[(probe, "probe.car")]).await;
    let h = harness(&[&gw]);
    let mut job = JobMessage::new(Source {
        name: Some("probe.wasm".into()),
        ..Source::new(Location::Cid(probe.clone()))
    });
    job.args = vec!["args".into(), "from-ipfs".into()];
    let (result, _) = h.run(job).await;
    assert_eq!(
        stdout(&result),
        "probe.wasm\nargs\nfrom-ipfs\n",
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_block_is_an_integrity_failure_and_nothing_is_cached() {
    let cids = cids();
    let random = &cids["random.car"];
    let gw = gateway(&[(random, "random-tampered.car")]).await;
    let h = harness(&[&gw]);
    let mut job = h.probe(&["ls", "/inputs"]).await;
    job.inputs = vec![cid_input(random, "/inputs/random.bin")];
    let (result, _) = h.run(job).await;
    assert_eq!(result.status, Status::Failed, "{result:?}");
    assert_eq!(kind(&result), Some("integrity"), "{result:?}");
    let store = h.embedded.stager().store();
    let cached = store
        .head(&StorePath::from(format!("cache/cid/{random}.car")))
        .await;
    assert!(
        matches!(cached, Err(object_store::Error::NotFound { .. })),
        "a tampered CAR was cached: {cached:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_gateway_is_skipped_for_the_next_one() {
    let cids = cids();
    let random = &cids["random.car"];
    let forger = gateway(&[(random, "random-tampered.car")]).await;
    let broken = Origin::start(vec![(route(random).as_str(), Route::Status(500))]).await;
    let honest = gateway(&[(random, "random.car")]).await;
    let h = harness(&[&forger, &broken, &honest]);
    let mut job = h.probe(&["ls", "/inputs"]).await;
    job.inputs = vec![cid_input(random, "/inputs/random.bin")];
    let (result, _) = h.run(job).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert_eq!(
        (
            forger.total_requests(),
            broken.total_requests(),
            honest.total_requests()
        ),
        (1, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_no_gateway_has_is_unavailable_and_a_missing_path_too() {
    let cids = cids();
    let tree = &cids["tree.car"];
    let nowhere = format!("{tree}/nested/no-such-file");
    // The gateway serves the whole tree for the bad path, as a lenient one
    // might; the walk itself must find the name missing.
    let gw = gateway(&[(&nowhere, "tree.car")]).await;
    let h = harness(&[&gw]);
    for (spec, needle) in [
        (cids["hello.car"].as_str(), "not found by any gateway"),
        (nowhere.as_str(), "no-such-file"),
    ] {
        let mut job = h.probe(&["ls", "/inputs"]).await;
        job.inputs = vec![cid_input(spec, "/inputs/x")];
        let (result, _) = h.run(job).await;
        assert_eq!(kind(&result), Some("input_unavailable"), "{result:?}");
        let message = result.error.as_ref().unwrap().message.clone();
        assert!(message.contains(needle), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_car_or_a_failing_gateway_is_ours_to_retry() {
    let cids = cids();
    let tree = &cids["tree.car"];
    let hello = &cids["hello.car"];
    let gw = gateway(&[(tree, "tree-missing.car")]).await;
    let broken = Origin::start(vec![(route(hello).as_str(), Route::Status(500))]).await;
    let h = harness(&[&gw, &broken]);
    for spec in [tree, hello] {
        let mut job = h.probe(&["ls", "/inputs"]).await;
        job.inputs = vec![cid_input(spec, "/inputs/x")];
        match h.embedded.attempt(job, LocalOptions::default()).await {
            Err(InfraError::Fetch(message)) => {
                assert!(message.to_string().contains(spec), "{message}")
            }
            other => panic!(
                "{spec}: expected an infrastructure error, got {:?}",
                other.map(|(r, _)| (r.status, kind(&r).map(str::to_owned)))
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cid_that_is_not_unixfs_is_refused_clearly() {
    let cids = cids();
    let cbor = &cids["cbor.car"];
    let gw = gateway(&[(cbor, "cbor.car")]).await;
    let h = harness(&[&gw]);
    let mut job = h.probe(&["ls", "/inputs"]).await;
    job.inputs = vec![cid_input(cbor, "/inputs/x")];
    let (result, _) = h.run(job).await;
    assert_eq!(kind(&result), Some("input_unavailable"), "{result:?}");
    let message = result.error.unwrap().message;
    assert!(message.contains(cbor.as_str()), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_gateway_times_out_and_the_next_one_answers() {
    let cids = cids();
    let hello = &cids["hello.car"];
    let hung = Origin::start(vec![(route(hello).as_str(), Route::Hang)]).await;
    let honest = gateway(&[(hello, "hello.car")]).await;
    let list = format!("{},{}", hung.url(""), honest.url(""));
    let env = [
        ("SHOAL_STAGING_IPFS_GATEWAYS", list.as_str()),
        ("SHOAL_STAGING_URL_READ_TIMEOUT_SECS", "1"),
    ];
    let h = Harness::with_env(&env);
    let mut job = h.probe(&["cat", "/inputs/hello.txt"]).await;
    job.inputs = vec![cid_input(hello, "/inputs/hello.txt")];
    let (result, _) = h.run(job).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert_eq!(hung.total_requests(), 1);

    // With only the hung gateway, it is ours to retry, not the job's failure.
    let only = hung.url("");
    let h = Harness::with_env(&[
        ("SHOAL_STAGING_IPFS_GATEWAYS", only.as_str()),
        ("SHOAL_STAGING_URL_READ_TIMEOUT_SECS", "1"),
    ]);
    let mut job = h.probe(&["ls", "/inputs"]).await;
    job.inputs = vec![cid_input(hello, "/inputs/x")];
    match h.embedded.attempt(job, LocalOptions::default()).await {
        Err(InfraError::Fetch(message)) => {
            assert!(message.to_string().contains(hello.as_str()), "{message}")
        }
        other => panic!(
            "expected an infrastructure error, got {:?}",
            other.map(|(r, _)| (r.status, kind(&r).map(str::to_owned)))
        ),
    }
}
