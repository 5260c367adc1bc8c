//! The fleet's shared store on a real S3 server: SeaweedFS on
//! 127.0.0.1:8333 with the buckets `shoal-test` (the store) and
//! `shoal-inputs` (what jobs read as s3:// sources) (`scripts/services` starts
//! it where it is missing).
use crate::fleet::{Fleet, WAIT};
use crate::support::{Harness, kind};
use object_store::{ObjectStoreExt, path::Path as StorePath};
use shoal_schemas::{Input, JobMessage, Location, Source, Status};
use shoal_worker::error::InfraError;
use shoal_worker::pipeline::LocalOptions;

const S3: [(&str, &str); 2] = [
    ("SHOAL_CACHE_S3_BUCKET", "shoal-test"),
    ("SHOAL_CACHE_S3_ENDPOINT", "http://127.0.0.1:8333"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_s3_stages_from_and_publishes_to_the_bucket() {
    let fleet = Fleet::start(1, &S3);
    let client = fleet.client().await;
    let job = fleet
        .probe(&["write", "/outputs/greeting.txt", "hello from s3"])
        .await;
    let handle = client.submit(job).await.unwrap();
    let result = client.wait_result(&handle.id, WAIT).await.unwrap();
    assert_eq!(result.status, Status::Succeeded, "{result:?}");

    // Everything went to the bucket; the local cache folder stayed empty.
    let store = shoal_worker::store::open(&fleet.config.cache).unwrap();
    let stored = shoal_worker::publish::get_result(store.as_ref(), &handle.id)
        .await
        .unwrap()
        .expect("result.json in the bucket");
    assert_eq!(stored, result);
    let output = store
        .get(&StorePath::from(format!(
            "results/{}/outputs/greeting.txt",
            handle.id
        )))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&output[..], b"hello from s3");
    assert!(
        std::fs::read_dir(fleet.cache.path())
            .unwrap()
            .next()
            .is_none(),
        "something was written to the local cache folder"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_s3_store_is_ours_to_retry_not_the_jobs_failure() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let h = Harness::with_env(&[
        ("SHOAL_CACHE_S3_BUCKET", "shoal-test"),
        ("SHOAL_CACHE_S3_ENDPOINT", &endpoint),
        ("SHOAL_CACHE_S3_RETRY_TIMEOUT_SECS", "1"),
    ]);
    // The module travels inline, so only the input needs the store.
    let module = base64_of(br#"(module (func (export "_start")))"#);
    let mut job = JobMessage::new(Source::new(Location::Inline(module)));
    job.inputs = vec![Input {
        source: Source::new(Location::Sha256("ab".repeat(32))),
        path: Some("/inputs/data".into()),
    }];
    let outcome = h.embedded.attempt(job, LocalOptions::default()).await;
    match outcome {
        Err(InfraError::Store(message)) => {
            assert!(message.to_string().contains("cache/sha256"), "{message}")
        }
        other => panic!(
            "expected an infrastructure error, got {:?}",
            other.map(|(r, _)| (r.status, kind(&r).map(str::to_owned)))
        ),
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_object_is_an_input_and_a_missing_one_is_unavailable() {
    let h = Harness::with_env(&[
        ("SHOAL_CACHE_S3_BUCKET", "shoal-test"),
        ("SHOAL_CACHE_S3_ENDPOINT", "http://127.0.0.1:8333"),
    ]);
    let key = format!("inputs/{}.txt", uuid::Uuid::new_v4().simple());
    inputs_bucket()
        .put(
            &StorePath::from(key.as_str()),
            b"an object in a bucket\n".to_vec().into(),
        )
        .await
        .unwrap();
    let mut job = h.probe(&["cat", "/inputs/data.txt"]).await;
    job.inputs = vec![Input {
        source: Source::new(Location::S3(format!("s3://shoal-inputs/{key}"))),
        path: Some("/inputs/data.txt".into()),
    }];
    let (result, _) = h.run(job.clone()).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert_eq!(crate::support::stdout(&result), "an object in a bucket\n");

    // The fleet's own store is never a job's to read.
    job.inputs[0].source = Source::new(Location::S3(format!("s3://shoal-test/{key}")));
    job.id = None;
    let (result, _) = h.run(job.clone()).await;
    assert_eq!(kind(&result), Some("input_refused"), "{result:?}");
    // Nor a bucket staging.s3_allow does not list.
    let allowed = Harness::with_env(&s3_env(("SHOAL_STAGING_S3_ALLOW", "some-other-bucket")));
    let mut other = allowed.probe(&["ls", "/inputs"]).await;
    other.inputs = vec![Input {
        source: Source::new(Location::S3(format!("s3://shoal-inputs/{key}"))),
        path: Some("/inputs/data.txt".into()),
    }];
    let (result, _) = allowed.run(other).await;
    assert_eq!(kind(&result), Some("input_refused"), "{result:?}");

    job.inputs[0].source = Source::new(Location::S3("s3://shoal-inputs/inputs/no-such-key".into()));
    job.id = None;
    let (result, _) = h.run(job).await;
    assert_eq!(kind(&result), Some("input_unavailable"), "{result:?}");
    assert!(result.error.unwrap().message.contains("does not exist"));
}

/// The S3 store's settings plus one more.
/// A worker trusts a store's create-only writes (and saves a lookup per
/// job) only when the store refused a second create-only write: SeaweedFS
/// and the local folder do; a store that refuses the condition outright
/// (object_store's S3 client with conditional writes off) is not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_only_writes_are_trusted_only_where_the_store_refuses_a_second() {
    use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
    use shoal_worker::store::honours_create_only;
    let config = shoal_worker::Config::load_from(
        None,
        S3.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap();
    let seaweed = shoal_worker::store::open(&config.cache).unwrap();
    assert!(honours_create_only(seaweed.as_ref()).await);
    let folder = tempfile::tempdir().unwrap();
    let local = object_store::local::LocalFileSystem::new_with_prefix(folder.path()).unwrap();
    assert!(honours_create_only(&local).await);
    let without = AmazonS3Builder::new()
        .with_bucket_name("shoal-test")
        .with_region("us-east-1")
        .with_endpoint("http://127.0.0.1:8333")
        .with_allow_http(true)
        .with_skip_signature(true)
        .with_conditional_put(S3ConditionalPut::Disabled)
        .build()
        .unwrap();
    assert!(!honours_create_only(&without).await);
    // The probe leaves nothing behind.
    let left: Vec<_> = futures::TryStreamExt::try_collect(
        seaweed.list(Some(&shoal_worker::store::keys::create_only_probes())),
    )
    .await
    .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// A re-run on S3 prunes the first run's leftovers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_twice_on_s3_keeps_only_the_last_run() {
    crate::fleet::same_id_twice(&S3).await;
}

fn s3_env<'a>(extra: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    S3.iter().copied().chain([extra]).collect()
}

/// The bucket jobs read `s3://` sources from (not the store).
fn inputs_bucket() -> std::sync::Arc<dyn object_store::ObjectStore> {
    let config = shoal_worker::Config::load_from(
        None,
        [
            (
                "SHOAL_CACHE_S3_BUCKET".to_owned(),
                "shoal-inputs".to_owned(),
            ),
            (
                "SHOAL_CACHE_S3_ENDPOINT".to_owned(),
                "http://127.0.0.1:8333".to_owned(),
            ),
        ],
    )
    .unwrap();
    shoal_worker::store::open(&config.cache).unwrap()
}

/// A module nobody has compiled before, so the bucket holds no artifact for it.
fn fresh_module() -> Source {
    let nonce = uuid::Uuid::new_v4().as_u128() as u64 as i64;
    let wat = format!(
        r#"(module (global (export "nonce") i64 (i64.const {nonce})) (func (export "_start")))"#
    );
    Source::new(Location::Inline(base64_of(wat.as_bytes())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_compiled_by_one_worker_is_loaded_by_the_next_without_compiling() {
    let keyed: Vec<(&str, &str)> = s3_env(("SHOAL_CACHE_COMPILED_KEY", "fleet secret"));
    let module = fresh_module();
    async fn run(h: &Harness, module: &Source) -> Option<bool> {
        let (result, _) = h.run(JobMessage::new(module.clone())).await;
        assert_eq!(result.status, Status::Succeeded, "{result:?}");
        result.usage.module_cache_hit
    }

    let first = Harness::with_env(&keyed);
    assert_eq!(run(&first, &module).await, Some(false));
    assert_eq!(first.embedded.executor().cache_stats().misses, 1);

    // A second worker with an empty memory cache: loaded, not compiled.
    let second = Harness::with_env(&keyed);
    assert_eq!(run(&second, &module).await, Some(true));
    let stats = second.embedded.executor().cache_stats();
    assert_eq!((stats.hits, stats.misses), (1, 0));

    // The artifact sits under the engine's fingerprint and the module's hash.
    let store = second.embedded.stager().store().clone();
    let Location::Inline(text) = &module.location else {
        unreachable!()
    };
    let wat = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text).unwrap();
    let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&wat).into();
    let key = shoal_worker::execute::artifacts::artifact_key(
        second.embedded.executor().fingerprint(),
        &sha,
    );
    let mut sealed = store
        .get(&key)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();

    // A worker with another key refuses it and compiles.
    let stranger = Harness::with_env(&S3);
    assert_eq!(run(&stranger, &module).await, Some(false));
    assert_eq!(stranger.embedded.executor().cache_stats().misses, 1);

    // So does one of the fleet when a byte of the native code changed.
    let last = sealed.len() - 1;
    sealed[last] ^= 0x01;
    store.put(&key, sealed.into()).await.unwrap();
    let third = Harness::with_env(&keyed);
    assert_eq!(run(&third, &module).await, Some(false));
    assert_eq!(third.embedded.executor().cache_stats().misses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_prefix_is_staged_as_a_folder_within_the_caps() {
    let h = Harness::with_env(&S3);
    let prefix = format!("trees/{}", uuid::Uuid::new_v4().simple());
    let store = inputs_bucket();
    for (name, body) in [
        ("a.txt", &b"first\n"[..]),
        ("sub/b c.txt", b"second\n"),
        ("sub/deeper/ü.bin", &[0u8, 1, 2, 255]),
    ] {
        store
            // parse, not from: the key as a person would write it, not percent-encoded.
            .put(
                &StorePath::parse(format!("{prefix}/{name}")).unwrap(),
                body.to_vec().into(),
            )
            .await
            .unwrap();
    }
    let input = |uri: String| Input {
        source: Source::new(Location::S3(uri)),
        path: Some("/inputs/tree".into()),
    };
    let mut job = h.probe(&["cat", "/inputs/tree/sub/b c.txt"]).await;
    job.inputs = vec![input(format!("s3://shoal-inputs/{prefix}/"))];
    let (result, _) = h.run(job.clone()).await;
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert_eq!(crate::support::stdout(&result), "second\n");

    let mut ls = h.probe(&["ls", "/inputs/tree/sub/deeper"]).await;
    ls.inputs = job.inputs.clone();
    let (result, _) = h.run(ls).await;
    assert_eq!(crate::support::stdout(&result), "ü.bin\n", "{result:?}");

    // An empty prefix is unavailable; three objects over a cap of two is too large.
    job.id = None;
    job.inputs = vec![input(format!("s3://shoal-inputs/{prefix}-none/"))];
    let (result, _) = h.run(job.clone()).await;
    assert_eq!(kind(&result), Some("input_unavailable"), "{result:?}");

    let capped = Harness::with_env(&s3_env(("SHOAL_LIMITS_MAX_INPUT_FILES", "2")));
    let mut job = capped.probe(&["ls", "/inputs"]).await;
    job.inputs = vec![input(format!("s3://shoal-inputs/{prefix}/"))];
    let (result, _) = capped.run(job).await;
    assert_eq!(kind(&result), Some("input_too_large"), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_caching_the_same_url_at_once_leave_one_good_entry() {
    use crate::origin::{Origin, Route};
    let body: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 251) as u8).collect();
    let path = format!("/{}.bin", uuid::Uuid::new_v4().simple());
    let origin = Origin::start(vec![(path.as_str(), Route::Body(body.clone()))]).await;
    let env: Vec<(&str, &str)> = s3_env(("SHOAL_STAGING_URL_ALLOW", "127.0.0.1/32"));
    async fn job(h: &Harness, url: String) {
        let mut job = JobMessage::new(fresh_module());
        job.inputs = vec![Input {
            source: Source::new(Location::Url(url)),
            path: Some("/inputs/big.bin".into()),
        }];
        let (result, _) = h.run(job).await;
        assert_eq!(result.status, Status::Succeeded, "{result:?}");
    }
    let url = origin.url(&path);
    let (a, b) = (Harness::with_env(&env), Harness::with_env(&env));
    tokio::join!(job(&a, url.clone()), job(&b, url.clone()));
    assert_eq!(
        origin.requests(&path),
        2,
        "both fetched: neither was cached yet"
    );

    // A third worker is served by the cache (verified as it is read): the
    // entry the two wrote at once is whole. It asks the origin (every job
    // revalidates), which answers 304 and sends no body.
    let c = Harness::with_env(&env);
    job(&c, url).await;
    assert_eq!(origin.requests(&path), 3);
    assert_eq!(origin.bodies(&path), 2, "the cache entry was not usable");
    let hex = shoal_worker::store::sha256_hex(&body);
    let stored = c
        .embedded
        .stager()
        .store()
        .get(&shoal_worker::store::keys::sha256(&hex))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        stored == body,
        "the cached content differs from the origin's"
    );
}

/// A TCP forwarder to SeaweedFS that can be switched off (new connections
/// refused, open ones cut) and on again: the S3 server "stopped" for this
/// test only, without stopping the one every other test shares.
struct Switch {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
}

impl Switch {
    async fn start() -> Switch {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, rx) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*rx.borrow() {
                    drop(inbound); // refused, as far as the client can tell
                    continue;
                }
                let mut down = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:8333").await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Switch { port, up }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_s3_store_stops_is_retried_and_succeeds_once_it_is_back() {
    let switch = Switch::start().await;
    let endpoint = switch.endpoint();
    let fleet = Fleet::start(
        1,
        &[
            ("SHOAL_CACHE_S3_BUCKET", "shoal-test"),
            ("SHOAL_CACHE_S3_ENDPOINT", &endpoint),
            ("SHOAL_CACHE_S3_RETRY_TIMEOUT_SECS", "1"),
            ("SHOAL_AMQP_MAX_ATTEMPTS", "6"),
            ("SHOAL_AMQP_RETRY_BASE_MS", "500"),
        ],
    );
    let client = fleet.client().await;
    let job = fleet.probe(&["args", "after-the-outage"]).await;
    switch.set(false);
    let handle = client.submit(job).await.unwrap();
    // Long enough for the first attempt to fail on the store.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    switch.set(true);
    let result = client.wait_result(&handle.id, WAIT).await.unwrap();
    assert_eq!(result.status, Status::Succeeded, "{result:?}");
    assert!(
        result.attempt >= 2,
        "the job did not need a retry: {result:?}"
    );
    assert_eq!(
        crate::support::stdout(&result),
        "probe.wasm\nargs\nafter-the-outage\n"
    );
    fleet.stop().await;
}
