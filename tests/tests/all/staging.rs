//! URL sources against a real HTTP origin on 127.0.0.1 (`origin.rs`):
//! staging, caching and revalidation, caps, and the address guard.
use crate::origin::{Origin, Route};
use crate::support::{Harness, kind, stdout};
use shoal_schemas::{Input, JobMessage, Location, Source, Status};
use shoal_worker::error::InfraError;
use shoal_worker::pipeline::LocalOptions;

/// Jobs may reach 127.0.0.1 only because these harnesses allow it.
const ALLOW_LOOPBACK: (&str, &str) = ("SHOAL_STAGING_URL_ALLOW", "127.0.0.1/32");

fn url_input(url: &str, path: &str) -> Input {
    Input {
        source: Source::new(Location::Url(url.into())),
        path: Some(path.into()),
    }
}

async fn cat_job(h: &Harness, url: &str) -> JobMessage {
    let mut job = h.probe(&["cat", "/inputs/data.txt"]).await;
    job.inputs = vec![url_input(url, "/inputs/data.txt")];
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_a_freshness_window_a_cached_url_is_used_without_a_request() {
    let origin = Origin::start(vec![(
        "/data.txt",
        Route::Body(b"fetched over http\n".to_vec()),
    )])
    .await;
    let h = Harness::with_env(&[ALLOW_LOOPBACK, ("SHOAL_STAGING_URL_REVALIDATE_SECS", "300")]);
    let url = origin.url("/data.txt");
    for _ in 0..2 {
        let (result, _) = h.run(cat_job(&h, &url).await).await;
        assert_eq!(result.status, Status::Succeeded, "{result:?}");
        assert_eq!(stdout(&result), "fetched over http\n");
    }
    assert_eq!(
        origin.requests("/data.txt"),
        1,
        "the second job asked the origin"
    );
}

/// By default every job asks the origin (as Bacalhau fetches on every
/// job): unchanged content costs a 304 and no body, changed content is
/// fetched, never served stale from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_changed_at_its_origin_is_never_served_stale() {
    let body = std::sync::Arc::new(std::sync::Mutex::new(b"version 1\n".to_vec()));
    let origin = Origin::start(vec![("/data.txt", Route::Mutable(body.clone()))]).await;
    let h = Harness::with_env(&[ALLOW_LOOPBACK]);
    let url = origin.url("/data.txt");
    for _ in 0..2 {
        let (result, _) = h.run(cat_job(&h, &url).await).await;
        assert_eq!(stdout(&result), "version 1\n", "{result:?}");
    }
    assert_eq!(
        origin.requests("/data.txt"),
        2,
        "the second job did not ask the origin"
    );
    assert_eq!(
        origin.bodies("/data.txt"),
        1,
        "an unchanged file was downloaded again"
    );
    *body.lock().unwrap() = b"version 2\n".to_vec();
    let (result, _) = h.run(cat_job(&h, &url).await).await;
    assert_eq!(stdout(&result), "version 2\n", "served stale: {result:?}");
    assert_eq!(origin.bodies("/data.txt"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_past_its_deadline_fails_the_job_and_the_next_job_is_served() {
    let origin = Origin::start(vec![
        ("/slow.txt", Route::Drip(100_000)),
        ("/data.txt", Route::Body(b"on time\n".to_vec())),
    ])
    .await;
    let h = Harness::with_env(&[ALLOW_LOOPBACK, ("SHOAL_STAGING_TIMEOUT_SECS", "1")]);
    let started = std::time::Instant::now();
    let (result, _) = h.run(cat_job(&h, &origin.url("/slow.txt")).await).await;
    assert_eq!(result.status, Status::Failed, "{result:?}");
    assert_eq!(kind(&result), Some("input_unavailable"));
    let message = &result.error.as_ref().unwrap().message;
    assert!(message.contains("staging.timeout_secs"), "{message}");
    // Not a measurement: only that the drip (10,000 s) was cut off.
    assert!(started.elapsed() < std::time::Duration::from_secs(60));

    let (result, _) = h.run(cat_job(&h, &origin.url("/data.txt")).await).await;
    assert_eq!(stdout(&result), "on time\n", "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_cache_entry_is_revalidated_and_a_304_downloads_no_body() {
    let origin = Origin::start(vec![("/data.txt", Route::Body(b"same bytes\n".to_vec()))]).await;
    let h = Harness::with_env(&[ALLOW_LOOPBACK, ("SHOAL_STAGING_URL_REVALIDATE_SECS", "0")]);
    let url = origin.url("/data.txt");
    for _ in 0..3 {
        let (result, _) = h.run(cat_job(&h, &url).await).await;
        assert_eq!(stdout(&result), "same bytes\n", "{result:?}");
    }
    assert_eq!(origin.requests("/data.txt"), 3);
    assert_eq!(
        origin.bodies("/data.txt"),
        1,
        "revalidations downloaded the body again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_can_come_from_a_url() {
    let probe = std::fs::read(crate::support::fixture("probe.wasm")).unwrap();
    let origin = Origin::start(vec![("/probe.wasm", Route::Body(probe))]).await;
    let h = Harness::with_env(&[ALLOW_LOOPBACK]);
    let mut job = JobMessage::new(Source {
        name: Some("probe.wasm".into()),
        ..Source::new(Location::Url(origin.url("/probe.wasm")))
    });
    job.args = vec!["args".into(), "from-url".into()];
    let (result, _) = h.run(job).await;
    assert_eq!(
        stdout(&result),
        "probe.wasm\nargs\nfrom-url\n",
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_url_is_input_unavailable_naming_it() {
    let origin = Origin::start(vec![]).await;
    let h = Harness::with_env(&[ALLOW_LOOPBACK]);
    let url = origin.url("/nowhere.txt");
    let (result, _) = h.run(cat_job(&h, &url).await).await;
    assert_eq!(
        (result.status, kind(&result)),
        (Status::Failed, Some("input_unavailable"))
    );
    let message = &result.error.unwrap().message;
    assert!(
        message.contains(&url) && message.contains("404"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_error_is_ours_to_retry_not_the_jobs_failure() {
    let origin = Origin::start(vec![("/flaky", Route::Status(500))]).await;
    let h = Harness::with_env(&[ALLOW_LOOPBACK]);
    let job = cat_job(&h, &origin.url("/flaky")).await;
    let outcome = h.embedded.attempt(job, LocalOptions::default()).await;
    assert!(
        matches!(outcome, Err(InfraError::Fetch(_))),
        "{:?}",
        outcome.map(|r| r.0)
    );
    // So is an origin nobody answers at.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let job = cat_job(&h, &format!("http://127.0.0.1:{port}/x")).await;
    let outcome = h.embedded.attempt(job, LocalOptions::default()).await;
    assert!(
        matches!(outcome, Err(InfraError::Fetch(_))),
        "{:?}",
        outcome.map(|r| r.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_larger_than_the_input_cap_is_input_too_large() {
    let origin = Origin::start(vec![("/big", Route::Body(vec![b'x'; 5000]))]).await;
    let h = Harness::with_env(&[ALLOW_LOOPBACK, ("SHOAL_LIMITS_MAX_INPUT_BYTES", "4096")]);
    // A module under the cap (the C fixtures are not), so the input alone is too big.
    let module = h
        .upload_bytes(br#"(module (func (export "_start")))"#, "tiny.wat")
        .await;
    let mut job = JobMessage::new(module);
    job.inputs = vec![url_input(&origin.url("/big"), "/inputs/big")];
    let (result, _) = h.run(job).await;
    assert_eq!(kind(&result), Some("input_too_large"), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_reaching_private_addresses_are_refused_before_any_request() {
    let origin = Origin::start(vec![
        ("/data.txt", Route::Body(b"secret\n".to_vec())),
        (
            "/to-private",
            Route::Redirect("http://10.1.2.3/latest".into()),
        ),
        (
            "/to-metadata",
            Route::Redirect("http://169.254.169.254/latest/meta-data/".into()),
        ),
        (
            "/to-loopback-v6",
            Route::Redirect("http://[::1]:1/x".into()),
        ),
    ])
    .await;
    // No allow list: the worker's defaults.
    let h = Harness::new();
    let port = origin.port;
    for url in [
        format!("http://127.0.0.1:{port}/data.txt"),
        format!("http://localhost:{port}/data.txt"),
        format!("http://[::1]:{port}/data.txt"),
        format!("http://[::ffff:127.0.0.1]:{port}/data.txt"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/x".to_owned(),
        "http://192.168.1.1/x".to_owned(),
    ] {
        let (result, _) = h.run(cat_job(&h, &url).await).await;
        assert_eq!(
            (result.status, kind(&result)),
            (Status::Failed, Some("input_refused")),
            "{url}: {result:?}"
        );
    }
    assert_eq!(
        origin.total_requests(),
        0,
        "a refused URL reached the origin"
    );

    // Allowed to reach the origin, but not where it redirects to.
    let h = Harness::with_env(&[ALLOW_LOOPBACK]);
    for path in ["/to-private", "/to-metadata", "/to-loopback-v6"] {
        let (result, _) = h.run(cat_job(&h, &origin.url(path)).await).await;
        assert_eq!(kind(&result), Some("input_refused"), "{path}: {result:?}");
        let message = result.error.unwrap().message;
        assert!(message.contains("address"), "{path}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_redirects_are_refused() {
    let origin = Origin::start(vec![
        ("/a", Route::Redirect("/b".into())),
        ("/b", Route::Redirect("/a".into())),
    ])
    .await;
    let h = Harness::with_env(&[ALLOW_LOOPBACK, ("SHOAL_STAGING_URL_MAX_REDIRECTS", "3")]);
    let (result, _) = h.run(cat_job(&h, &origin.url("/a")).await).await;
    assert_eq!(kind(&result), Some("input_refused"), "{result:?}");
    assert!(origin.requests("/a") + origin.requests("/b") <= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_are_staged_in_parallel_and_capped_per_job() {
    let origin = Origin::start(vec![
        ("/a", Route::Body(vec![b'a'; 600])),
        ("/b", Route::Body(vec![b'b'; 600])),
    ])
    .await;
    // Each input alone is under the per-job cap; together they are over it.
    let h = Harness::with_env(&[ALLOW_LOOPBACK, ("SHOAL_LIMITS_MAX_JOB_INPUT_BYTES", "1000")]);
    let mut job = h.probe(&["ls", "/inputs"]).await;
    job.inputs = vec![
        url_input(&origin.url("/a"), "/inputs/a"),
        url_input(&origin.url("/b"), "/inputs/b"),
    ];
    let (result, _) = h.run(job.clone()).await;
    assert_eq!(kind(&result), Some("input_too_large"), "{result:?}");
    assert!(
        result
            .error
            .unwrap()
            .message
            .contains("max_job_input_bytes"),
        "the message names the setting"
    );

    let roomy = Harness::with_env(&[ALLOW_LOOPBACK]);
    let inputs = job.inputs;
    let mut job = roomy.probe(&["ls", "/inputs"]).await;
    job.inputs = inputs;
    let (result, _) = roomy.run(job).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    let mut listed: Vec<&str> = stdout(&result).lines().collect();
    listed.sort();
    assert_eq!(listed, ["a", "b"]);
}
