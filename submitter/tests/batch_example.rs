//! `examples/batch.rs` is documentation that must work: this runs its
//! `run` with a real broker and an in-process worker, 1,000 jobs.
#[path = "../examples/batch.rs"]
#[allow(dead_code)]
mod batch;

use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_example_gets_each_of_1000_jobs_its_own_result() {
    let cache = tempfile::tempdir().unwrap();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let env: Vec<(String, String)> = vec![
        ("SHOAL_CACHE_DIR".into(), cache.path().display().to_string()),
        (
            "SHOAL_AMQP_JOB_QUEUE".into(),
            format!("batch.jobs.{suffix}"),
        ),
        (
            "SHOAL_AMQP_RESULTS_EXCHANGE".into(),
            format!("batch.results.{suffix}"),
        ),
        (
            "SHOAL_AMQP_DEAD_LETTER".into(),
            format!("batch.dead.{suffix}"),
        ),
        (
            "SHOAL_AMQP_CONTROL_EXCHANGE".into(),
            format!("batch.control.{suffix}"),
        ),
    ];
    let config = shoal_worker::Config::load_from(None, env).unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let pipeline =
        shoal_worker::pipeline::Pipeline::new(config.clone(), config.limits.ceiling).unwrap();
    let worker = tokio::spawn(shoal_worker::consume::run(
        pipeline,
        config.amqp.clone(),
        2,
        rx,
    ));

    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello/hello.wasm");
    let summary = batch::run(&config, &hello, 1000).await.unwrap();
    assert_eq!(summary.results.len(), 1000);
    for (i, result) in summary.results.iter().enumerate() {
        assert_eq!(
            result.status,
            shoal_submitter::Status::Succeeded,
            "{result:?}"
        );
        let stdout = result.stdout.as_ref().unwrap().text.as_deref().unwrap();
        assert!(
            stdout.contains(&format!("arg[1] = {i}\n")),
            "job {i} got someone else's result: {stdout}"
        );
    }

    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    let brokers = config.amqp.brokers().unwrap();
    let conn = lapin::Connection::connect(brokers.url(0), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    config.amqp.topology().delete(&channel).await.unwrap();
}
