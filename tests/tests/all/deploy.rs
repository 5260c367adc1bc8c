//! docker/ (the image, the compose stack, the Kubernetes manifests, the
//! Grafana provisioning) and scripts/dev: what can be checked without a
//! Docker engine or a cluster. Every YAML file parses; every path compose
//! mounts exists; the image builds the binaries README.md builds, runs as a
//! non-root user and checks /healthz on the port it exposes; the Deployment
//! probes that port, outlasts the drain grace period and takes its secrets
//! from the example Secret; KEDA scales that Deployment on the job queue;
//! every SHOAL_* variable named is a real configuration key.
use crate::support::repo;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn docker() -> PathBuf {
    repo().join("docker")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every document of a YAML file (empty documents skipped).
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

/// A single-document YAML file.
fn yaml(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(
        docs.len(),
        1,
        "{}: expected one YAML document",
        path.display()
    );
    docs.remove(0)
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {value:?}"))
}

/// A scalar as compose and Kubernetes read it (numbers and booleans too).
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn seq<'a>(value: &'a Value, what: &str) -> &'a Vec<Value> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{what}: expected a list, found {value:?}"))
}

/// The defaults compiled into the worker: worker/config/default.toml.
fn defaults() -> shoal_worker::Config {
    shoal_worker::Config::load_from(None, std::iter::empty()).expect("the defaults load")
}

/// The environment variable of every configuration key.
fn config_env_names() -> BTreeSet<String> {
    shoal_worker::config::known_keys()
        .iter()
        .map(|key| shoal_worker::config::env_name(key))
        .collect()
}

/// `45s`, `2m`, `1m30s`: compose's durations, in seconds.
fn duration_secs(text: &str) -> u64 {
    let mut total = 0;
    let mut number = String::new();
    for c in text.chars() {
        match c {
            '0'..='9' => number.push(c),
            'h' | 'm' | 's' => {
                let n: u64 = number
                    .parse()
                    .unwrap_or_else(|_| panic!("duration {text:?}"));
                total += n * match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                number.clear();
            }
            _ => panic!("duration {text:?}: unexpected {c:?}"),
        }
    }
    assert!(number.is_empty(), "duration {text:?} lacks a unit");
    total
}

// ---- the Dockerfile ---------------------------------------------------------

/// One instruction: its keyword in capitals and its arguments, with
/// continuation lines joined and comment lines dropped.
struct Instruction {
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let text = read(&docker().join("Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((current.as_str(), ""));
                out.push(Instruction {
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.trim().to_owned(),
                });
                current.clear();
            }
        }
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends inside a continuation line"
    );
    out
}

/// The instructions of the last stage (after the last FROM).
fn runtime_stage(instructions: &[Instruction]) -> &[Instruction] {
    let last_from = instructions
        .iter()
        .rposition(|i| i.keyword == "FROM")
        .expect("the Dockerfile has a FROM");
    &instructions[last_from..]
}

/// The one port the image exposes.
fn exposed_port() -> u16 {
    let instructions = dockerfile();
    let ports: Vec<u16> = runtime_stage(&instructions)
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| {
            i.args
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|p| {
            p.trim_end_matches("/tcp")
                .parse()
                .unwrap_or_else(|_| panic!("EXPOSE {p}"))
        })
        .collect();
    assert_eq!(
        ports.len(),
        1,
        "the image should expose exactly one port (metrics.listen): {ports:?}"
    );
    ports[0]
}

/// `ENV` values of the runtime stage (both `K=V …` and `K V` forms).
fn runtime_env() -> BTreeMap<String, String> {
    let instructions = dockerfile();
    let mut env = BTreeMap::new();
    for i in runtime_stage(&instructions)
        .iter()
        .filter(|i| i.keyword == "ENV")
    {
        if i.args.contains('=') {
            for pair in i.args.split_whitespace() {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("ENV {}: {pair:?}", i.args));
                env.insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
        } else if let Some((k, v)) = i.args.split_once(char::is_whitespace) {
            env.insert(k.to_owned(), v.trim().to_owned());
        }
    }
    env
}

/// The `--bin` names of a cargo command line.
fn bins_of(command: &str) -> BTreeSet<String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1].to_owned())
        .collect()
}

#[test]
fn the_image_builds_exactly_the_binaries_the_readme_builds() {
    let instructions = dockerfile();
    let builds: Vec<&Instruction> = instructions
        .iter()
        .filter(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .collect();
    assert_eq!(builds.len(), 1, "one cargo build in the Dockerfile");
    let build = &builds[0].args[builds[0].args.find("cargo build").unwrap()..];
    let build = build.split("&&").next().unwrap();
    for flag in ["--release", "--locked"] {
        assert!(
            build.split_whitespace().any(|w| w == flag),
            "{build}: lacks {flag}"
        );
    }
    let image_bins = bins_of(build);

    let readme = read(&repo().join("README.md"));
    let mut readme_built = BTreeSet::new();
    let mut readme_run = BTreeSet::new();
    for line in readme.lines() {
        if line.contains("cargo build") {
            readme_built.extend(bins_of(line));
        }
        if line.contains("cargo run") {
            readme_run.extend(bins_of(line));
        }
    }
    assert!(
        !readme_built.is_empty(),
        "README.md has no `cargo build … --bin` line"
    );
    assert_eq!(
        image_bins, readme_built,
        "the image builds what README.md builds"
    );
    assert!(
        readme_run.is_subset(&image_bins),
        "README.md runs {readme_run:?}; the image has {image_bins:?}"
    );
    let expected: BTreeSet<String> = ["shoal-worker", "submit"].map(String::from).into();
    assert_eq!(image_bins, expected);

    // Both are real binary targets of the workspace.
    let worker_manifest = read(&repo().join("worker/Cargo.toml"));
    assert!(worker_manifest.contains("name = \"shoal-worker\""));
    assert!(repo().join("worker/src/main.rs").is_file());
    let submitter_manifest = read(&repo().join("submitter/Cargo.toml"));
    assert!(submitter_manifest.contains("[[bin]]\nname = \"submit\""));

    // The builder uses the workspace's Rust version; builder and runtime are
    // the same Debian release, so the binaries find the glibc they linked.
    let froms: Vec<&str> = instructions
        .iter()
        .filter(|i| i.keyword == "FROM")
        .map(|i| i.args.as_str())
        .collect();
    assert_eq!(froms.len(), 2, "a builder and a runtime stage: {froms:?}");
    let manifest = read(&repo().join("Cargo.toml"));
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("rust-version in Cargo.toml")
        .trim_matches('"');
    assert!(
        froms[0].starts_with(&format!("rust:{rust_version}-")),
        "builder {} is not Rust {rust_version}",
        froms[0]
    );
    let codename = froms[0]
        .split_whitespace()
        .next()
        .unwrap()
        .rsplit('-')
        .next()
        .unwrap();
    assert!(
        froms[1].contains(codename),
        "runtime {} is not Debian {codename} like the builder",
        froms[1]
    );

    // The runtime stage gets both binaries and runs the worker.
    let stage = runtime_stage(&instructions);
    let copies: Vec<&str> = stage
        .iter()
        .filter(|i| i.keyword == "COPY" && i.args.contains("--from="))
        .map(|i| i.args.as_str())
        .collect();
    for bin in &expected {
        assert!(
            copies.iter().any(|c| c.contains(&format!("/{bin} "))),
            "the runtime stage does not copy {bin}: {copies:?}"
        );
    }
    let last = |keyword: &str| {
        stage
            .iter()
            .rfind(|i| i.keyword == keyword)
            .map(|i| i.args.clone())
            .unwrap_or_default()
    };
    assert_eq!(last("ENTRYPOINT"), r#"["shoal-worker"]"#);
    assert_eq!(last("CMD"), r#"["serve"]"#);
}

#[test]
fn the_image_runs_as_non_root_and_checks_healthz_on_the_port_it_exposes() {
    let instructions = dockerfile();
    let stage = runtime_stage(&instructions);
    let user = stage
        .iter()
        .rfind(|i| i.keyword == "USER")
        .map(|i| i.args.clone())
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid != "root" && uid != "0" && !uid.is_empty(),
        "the runtime user is root: USER {user}"
    );
    assert_eq!(
        uid, "10001",
        "USER should be the numeric uid, for runAsNonRoot"
    );

    let port = exposed_port();
    let health = stage
        .iter()
        .rfind(|i| i.keyword == "HEALTHCHECK")
        .map(|i| i.args.clone())
        .expect("the runtime stage has a HEALTHCHECK");
    assert!(
        health.contains(&format!("127.0.0.1:{port}/healthz")),
        "HEALTHCHECK should ask /healthz on the exposed port {port}: {health}"
    );
    let env = runtime_env();
    assert_eq!(
        env.get("SHOAL_METRICS_LISTEN").map(String::as_str),
        Some(format!("0.0.0.0:{port}").as_str()),
        "the image must listen on all interfaces on the port it exposes"
    );
    assert!(
        env.contains_key("TMPDIR"),
        "the image names a scratch folder (TMPDIR)"
    );
    // The default listen address is loopback only, which a container
    // cannot be scraped on; the image's port is the default one.
    let default_listen = defaults().metrics.listen;
    assert!(default_listen.starts_with("127.0.0.1:"), "{default_listen}");
    assert!(
        default_listen.ends_with(&format!(":{port}")),
        "{default_listen}"
    );
}

#[test]
fn the_dockerignore_keeps_what_the_build_copies() {
    let ignore = read(&repo().join(".dockerignore"));
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target", ".git"] {
        assert!(
            ignored.contains(&needed),
            ".dockerignore should drop {needed}"
        );
    }
    let instructions = dockerfile();
    for copy in instructions
        .iter()
        .filter(|i| i.keyword == "COPY" && !i.args.contains("--from="))
    {
        let words: Vec<&str> = copy.args.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            assert!(
                repo().join(source).exists(),
                "COPY {source}: not in the repository"
            );
            assert!(
                !ignored.contains(source),
                "COPY {source}: excluded by .dockerignore"
            );
        }
    }
}

// ---- YAML files -------------------------------------------------------------

fn yaml_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(docker())
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    files
}

#[test]
fn every_yaml_file_under_docker_parses() {
    let files = yaml_files();
    let names: BTreeSet<String> = files
        .iter()
        .map(|p| p.strip_prefix(docker()).unwrap().display().to_string())
        .collect();
    for expected in [
        "compose.yaml",
        "prometheus.yml",
        "k8s/worker-deployment.yaml",
        "k8s/worker-service.yaml",
        "k8s/keda-scaledobject.yaml",
        "k8s/secret.example.yaml",
        "grafana/provisioning/datasources/prometheus.yaml",
        "grafana/provisioning/dashboards/shoal.yaml",
    ] {
        assert!(
            names.contains(expected),
            "docker/{expected} is missing: {names:?}"
        );
    }
    for file in &files {
        let docs = yaml_docs(file);
        assert!(!docs.is_empty(), "{} is empty", file.display());
        if file.starts_with(docker().join("k8s")) {
            for doc in &docs {
                for field in ["apiVersion", "kind"] {
                    str_of(&doc[field], &format!("{}: {field}", file.display()));
                }
                str_of(
                    &doc["metadata"]["name"],
                    &format!("{}: metadata.name", file.display()),
                );
            }
        }
    }
}

// ---- compose ------------------------------------------------------------------

fn compose() -> Value {
    yaml(&docker().join("compose.yaml"))
}

/// A service's environment as name → value (mapping or `NAME=value` list).
fn compose_env(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Null => BTreeMap::new(),
        Value::Mapping(map) => map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Value::Sequence(list) => list
            .iter()
            .map(|item| {
                let item = scalar(item);
                let (k, v) = item.split_once('=').unwrap_or((item.as_str(), ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        other => panic!("environment: {other:?}"),
    }
}

/// A service's volumes as (source, target): short `src:dst[:mode]` or long form.
fn compose_volumes(service: &Value) -> Vec<(String, String)> {
    match &service["volumes"] {
        Value::Null => Vec::new(),
        list => seq(list, "volumes")
            .iter()
            .map(|v| match v {
                Value::String(s) => {
                    let mut parts = s.splitn(3, ':');
                    let source = parts.next().unwrap().to_owned();
                    let target = parts
                        .next()
                        .unwrap_or_else(|| panic!("volume {s:?} has no target"))
                        .to_owned();
                    (source, target)
                }
                Value::Mapping(_) => (scalar(&v["source"]), scalar(&v["target"])),
                other => panic!("volume {other:?}"),
            })
            .collect(),
    }
}

/// Where a compose service mounts SOURCE.
fn mount_target(mounts: &[(String, String)], source: &str) -> PathBuf {
    mounts
        .iter()
        .find(|(s, _)| s == source)
        .map(|(_, t)| PathBuf::from(t))
        .unwrap_or_else(|| panic!("{source} is not mounted: {mounts:?}"))
}

fn is_bind(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/') || source.starts_with('~')
}

#[test]
fn compose_mounts_only_files_that_exist_and_declares_its_volumes() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services.keys().map(scalar).collect();
    for expected in [
        "rabbitmq",
        "s3",
        "s3-init",
        "worker",
        "prometheus",
        "grafana",
    ] {
        assert!(
            names.contains(expected),
            "compose.yaml lacks service {expected}"
        );
    }
    let declared: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .map(|m| m.keys().map(scalar).collect())
        .unwrap_or_default();
    let root = repo().canonicalize().unwrap();
    let mut binds = 0;
    for (name, service) in services {
        let name = scalar(name);
        for (source, target) in compose_volumes(service) {
            if is_bind(&source) {
                assert!(
                    source.starts_with('.'),
                    "{name}: bind mount {source} is not relative to docker/"
                );
                let host = docker().join(&source);
                let resolved = host.canonicalize().unwrap_or_else(|e| {
                    panic!(
                        "{name}: bind mount {source} ({}) does not exist: {e}",
                        host.display()
                    )
                });
                assert!(
                    resolved.starts_with(&root),
                    "{name}: {source} is outside the repository"
                );
                assert!(
                    target.starts_with('/'),
                    "{name}: target {target} is not absolute"
                );
                binds += 1;
            } else {
                assert!(
                    declared.contains(&source),
                    "{name}: volume {source} is not declared under top-level volumes"
                );
            }
        }
    }
    assert!(
        binds >= 6,
        "expected the plugin file, Prometheus and Grafana files to be mounted"
    );

    // The RabbitMQ plugin file enables the management UI and the
    // Prometheus endpoint the dashboards read.
    let rabbit = &compose["services"]["rabbitmq"];
    let mounts = compose_volumes(rabbit);
    assert!(
        mounts
            .iter()
            .any(|(s, t)| s == "./rabbitmq/enabled_plugins" && t == "/etc/rabbitmq/enabled_plugins"),
        "rabbitmq mounts {mounts:?}"
    );
    let plugins = read(&docker().join("rabbitmq/enabled_plugins"));
    assert_eq!(plugins.trim(), "[rabbitmq_management,rabbitmq_prometheus].");
    let health = seq(&rabbit["healthcheck"]["test"], "rabbitmq healthcheck")
        .iter()
        .map(scalar)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(health.contains("rabbitmq-diagnostics -q ping"), "{health}");
}

#[test]
fn compose_builds_the_worker_from_the_dockerfile_and_can_scale_it() {
    let compose = compose();
    let worker = &compose["services"]["worker"];
    let context = docker().join(str_of(&worker["build"]["context"], "worker build.context"));
    assert_eq!(
        context.canonicalize().unwrap(),
        repo().canonicalize().unwrap(),
        "the build context is the repository root"
    );
    let dockerfile = str_of(&worker["build"]["dockerfile"], "worker build.dockerfile");
    assert_eq!(dockerfile, "docker/Dockerfile");
    assert_eq!(
        context.join(dockerfile).canonicalize().unwrap(),
        docker().join("Dockerfile").canonicalize().unwrap()
    );
    // `--scale worker=N`: no fixed name, no published host port.
    assert!(
        worker["container_name"].is_null(),
        "a container_name prevents --scale"
    );
    assert!(
        worker["ports"].is_null(),
        "a published host port prevents --scale"
    );

    let env = compose_env(worker);
    let known = config_env_names();
    for name in env.keys() {
        assert!(
            known.contains(name),
            "worker: {name} is not a configuration variable"
        );
    }
    for required in [
        "SHOAL_AMQP_URL",
        "SHOAL_CACHE_S3_BUCKET",
        "SHOAL_CACHE_S3_ENDPOINT",
        "SHOAL_CACHE_COMPILED_KEY",
    ] {
        assert!(env.contains_key(required), "worker lacks {required}");
    }
    assert!(
        env["SHOAL_AMQP_URL"].contains("@rabbitmq:5672/"),
        "{}",
        env["SHOAL_AMQP_URL"]
    );
    assert_eq!(env["SHOAL_CACHE_S3_ENDPOINT"], "http://s3:8333");
    let port = exposed_port();
    if let Some(listen) = env.get("SHOAL_METRICS_LISTEN") {
        assert_eq!(listen, &format!("0.0.0.0:{port}"));
    }
    // The bucket the workers use is the one s3-init creates.
    let bucket = &env["SHOAL_CACHE_S3_BUCKET"];
    let init = seq(
        &compose["services"]["s3-init"]["command"],
        "s3-init command",
    )
    .iter()
    .map(scalar)
    .collect::<Vec<_>>()
    .join(" ");
    assert!(
        init.contains(&format!("http://s3:8333/{bucket}")),
        "s3-init does not create bucket {bucket}: {init}"
    );

    // docker compose stop waits stop_grace_period before SIGKILL: longer
    // than the drain.
    let grace = env
        .get("SHOAL_AMQP_DRAIN_GRACE_SECS")
        .map(|v| v.parse::<u64>().unwrap())
        .unwrap_or(defaults().amqp.drain_grace_secs);
    let stop = duration_secs(str_of(
        &worker["stop_grace_period"],
        "worker stop_grace_period",
    ));
    assert!(
        stop > grace,
        "stop_grace_period {stop}s must exceed the drain grace {grace}s"
    );

    let depends = &worker["depends_on"];
    assert_eq!(scalar(&depends["rabbitmq"]["condition"]), "service_healthy");
    assert_eq!(
        scalar(&depends["s3-init"]["condition"]),
        "service_completed_successfully"
    );
}

#[test]
fn compose_prometheus_and_grafana_load_the_dashboards() {
    let compose = compose();
    let port = exposed_port();

    // Prometheus: the compose configuration and the repository's rules, side
    // by side, since rule_files resolve against the configuration's folder.
    let prometheus = compose_volumes(&compose["services"]["prometheus"]);
    let config_target = mount_target(&prometheus, "./prometheus.yml");
    let rules_target = mount_target(&prometheus, "../dashboards/alerts.yml");
    assert_eq!(config_target.parent(), rules_target.parent());
    let config = yaml(&docker().join("prometheus.yml"));
    let rule_files: Vec<String> = seq(&config["rule_files"], "rule_files")
        .iter()
        .map(scalar)
        .collect();
    assert_eq!(
        rule_files,
        vec![
            rules_target
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string()
        ]
    );
    let jobs = seq(&config["scrape_configs"], "scrape_configs");
    let job = |name: &str| {
        jobs.iter()
            .find(|j| j["job_name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no scrape job {name}"))
    };
    // The alert rules and the dashboard read job="shoal-worker".
    let workers = &job("shoal-worker")["dns_sd_configs"][0];
    assert_eq!(
        scalar(&workers["names"][0]),
        "worker",
        "the compose service's DNS name"
    );
    assert_eq!(scalar(&workers["type"]), "A");
    assert_eq!(workers["port"].as_u64(), Some(u64::from(port)));
    let rabbit = job("rabbitmq");
    assert_eq!(scalar(&rabbit["metrics_path"]), "/metrics/per-object");
    assert_eq!(
        scalar(&rabbit["static_configs"][0]["targets"][0]),
        "rabbitmq:15692"
    );

    // Grafana: provisioning folders where Grafana reads them, the
    // dashboard where the provider looks, the data source at the compose
    // Prometheus.
    let grafana = compose_volumes(&compose["services"]["grafana"]);
    for kind in ["datasources", "dashboards"] {
        assert_eq!(
            mount_target(&grafana, &format!("./grafana/provisioning/{kind}")),
            PathBuf::from(format!("/etc/grafana/provisioning/{kind}"))
        );
    }
    let dashboard_target = mount_target(&grafana, "../dashboards/shoal.json");
    let providers = yaml(&docker().join("grafana/provisioning/dashboards/shoal.yaml"));
    let provider = &providers["providers"][0];
    assert_eq!(scalar(&provider["type"]), "file");
    assert_eq!(
        Some(Path::new(str_of(
            &provider["options"]["path"],
            "provider path"
        ))),
        dashboard_target.parent()
    );
    let sources = yaml(&docker().join("grafana/provisioning/datasources/prometheus.yaml"));
    let source = &sources["datasources"][0];
    assert_eq!(scalar(&source["type"]), "prometheus");
    assert_eq!(scalar(&source["url"]), "http://prometheus:9090");
    assert_eq!(source["isDefault"].as_bool(), Some(true));
}

#[test]
fn promtool_accepts_the_compose_prometheus_configuration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        docker().join("prometheus.yml"),
        dir.path().join("prometheus.yml"),
    )
    .unwrap();
    std::fs::copy(
        repo().join("dashboards/alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}); it checks docker/prometheus.yml: install it \
                 (Debian/Ubuntu: apt-get install prometheus; scripts/services does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check config failed:\n{text}"
    );
    assert!(text.contains("1 rule files found"), "{text}");
}

// ---- Kubernetes -----------------------------------------------------------------

/// Every document of every docker/k8s/*.yaml.
fn k8s() -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(docker().join("k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .collect();
    files.sort();
    files.iter().flat_map(|f| yaml_docs(f)).collect()
}

fn one_of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} in docker/k8s/");
    found[0]
}

/// (secret name, key) pairs the example Secrets define.
fn example_secret_keys(docs: &[Value]) -> BTreeSet<(String, String)> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some("Secret"))
        .flat_map(|secret| {
            let name = scalar(&secret["metadata"]["name"]);
            ["stringData", "data"]
                .iter()
                .filter_map(|field| secret[*field].as_mapping())
                .flat_map(|m| m.keys().map(scalar).collect::<Vec<_>>())
                .map(move |key| (name.clone(), key))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A probe's or Service's port, resolved through the container's named ports.
fn resolve_port(port: &Value, container: &Value) -> u64 {
    match port {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(name) => seq(&container["ports"], "container ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(name.as_str()))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}")),
        other => panic!("port {other:?}"),
    }
}

#[test]
fn the_deployment_probes_the_image_port_and_outlasts_the_drain() {
    let docs = k8s();
    let deployment = one_of_kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = seq(&pod["containers"], "containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let port = u64::from(exposed_port());

    let probe = |kind: &str, path: &str| {
        let get = &container[kind]["httpGet"];
        assert_eq!(scalar(&get["path"]), path, "{kind}");
        assert_eq!(
            resolve_port(&get["port"], container),
            port,
            "{kind} must use the port the image exposes"
        );
    };
    probe("readinessProbe", "/readyz");
    probe("livenessProbe", "/healthz");

    // Environment: only configuration variables; the drain grace the
    // termination grace period must exceed.
    let known = config_env_names();
    let env = seq(&container["env"], "env");
    let mut values = BTreeMap::new();
    let mut from_secret = BTreeMap::new();
    for var in env {
        let name = scalar(&var["name"]);
        assert!(
            known.contains(&name),
            "{name} is not a configuration variable"
        );
        if let Some(value) = var.get("value") {
            values.insert(name.clone(), scalar(value));
        }
        if let Some(secret) = var.get("valueFrom").and_then(|v| v.get("secretKeyRef")) {
            from_secret.insert(
                name.clone(),
                (scalar(&secret["name"]), scalar(&secret["key"])),
            );
        }
    }
    let default_grace = defaults().amqp.drain_grace_secs;
    let grace = values
        .get("SHOAL_AMQP_DRAIN_GRACE_SECS")
        .map(|v| v.parse::<u64>().unwrap())
        .unwrap_or(default_grace);
    let termination = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination > grace && termination > default_grace,
        "terminationGracePeriodSeconds {termination} must exceed amqp.drain_grace_secs \
         ({grace}; default {default_grace})"
    );
    if let Some(listen) = values.get("SHOAL_METRICS_LISTEN") {
        assert_eq!(listen, &format!("0.0.0.0:{port}"));
    }

    // Credentials come from the example Secret, under keys it defines.
    let secrets = example_secret_keys(&docs);
    for name in [
        "SHOAL_AMQP_URL",
        "SHOAL_CACHE_S3_ACCESS_KEY_ID",
        "SHOAL_CACHE_S3_SECRET_ACCESS_KEY",
        "SHOAL_CACHE_COMPILED_KEY",
    ] {
        let reference = from_secret
            .get(name)
            .unwrap_or_else(|| panic!("{name} should come from a Secret"));
        assert!(
            secrets.contains(reference),
            "{name} reads {reference:?}, which secret.example.yaml does not define"
        );
    }

    // Scraping: annotations on the pods name the exposed port.
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(scalar(&annotations["prometheus.io/scrape"]), "true");
    assert_eq!(scalar(&annotations["prometheus.io/port"]), port.to_string());
    assert_eq!(scalar(&annotations["prometheus.io/path"]), "/metrics");

    // The image's user, and a writable scratch folder at its TMPDIR under a
    // read-only root filesystem.
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(10001));
    let tmpdir = runtime_env().remove("TMPDIR").expect("TMPDIR in the image");
    let mounts = seq(&container["volumeMounts"], "volumeMounts");
    let scratch = mounts
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(tmpdir.as_str()))
        .unwrap_or_else(|| panic!("nothing is mounted at the image's TMPDIR {tmpdir}"));
    let volume = scalar(&scratch["name"]);
    assert!(
        seq(&pod["volumes"], "volumes")
            .iter()
            .any(|v| v["name"].as_str() == Some(volume.as_str()) && !v["emptyDir"].is_null()),
        "volume {volume} should be an emptyDir"
    );

    // The headless Service selects these pods and targets the same port.
    let service = one_of_kind(&docs, "Service");
    let labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap();
    for (k, v) in service["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(
            labels.get(k),
            Some(v),
            "the Service selects label {k:?} the pods lack"
        );
    }
    assert_eq!(
        resolve_port(&service["spec"]["ports"][0]["targetPort"], container),
        port
    );
}

#[test]
fn keda_scales_the_deployment_on_the_job_queue() {
    let docs = k8s();
    let deployment = one_of_kind(&docs, "Deployment");
    let scaled = one_of_kind(&docs, "ScaledObject");
    assert_eq!(
        scalar(&scaled["spec"]["scaleTargetRef"]["name"]),
        scalar(&deployment["metadata"]["name"])
    );
    let triggers = seq(&scaled["spec"]["triggers"], "triggers");
    assert_eq!(triggers.len(), 1);
    let trigger = &triggers[0];
    assert_eq!(scalar(&trigger["type"]), "rabbitmq");
    let metadata = &trigger["metadata"];
    assert_eq!(scalar(&metadata["queueName"]), defaults().amqp.job_queue);
    assert_eq!(scalar(&metadata["mode"]), "QueueLength");
    // Over HTTP, QueueLength counts running (unacked) jobs too.
    assert_eq!(scalar(&metadata["protocol"]), "http");
    assert!(scalar(&metadata["value"]).parse::<f64>().unwrap() > 0.0);

    let auth = one_of_kind(&docs, "TriggerAuthentication");
    assert_eq!(
        scalar(&trigger["authenticationRef"]["name"]),
        scalar(&auth["metadata"]["name"])
    );
    let secrets = example_secret_keys(&docs);
    let refs = seq(&auth["spec"]["secretTargetRef"], "secretTargetRef");
    assert!(refs.iter().any(|r| r["parameter"].as_str() == Some("host")));
    for r in refs {
        let reference = (scalar(&r["name"]), scalar(&r["key"]));
        assert!(
            secrets.contains(&reference),
            "TriggerAuthentication reads {reference:?}, which secret.example.yaml does not define"
        );
    }
}

// ---- SHOAL_* names and scripts/dev ------------------------------------------------

#[test]
fn every_shoal_variable_named_is_a_configuration_key() {
    let known = config_env_names();
    let files = [
        docker().join("Dockerfile"),
        docker().join("compose.yaml"),
        docker().join("k8s/worker-deployment.yaml"),
        repo().join("scripts/dev"),
        repo().join("docs/SCALING.md"),
    ];
    for file in &files {
        let text = read(file);
        let mut rest = text.as_str();
        while let Some(at) = rest.find("SHOAL_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            // scripts/dev's own SHOAL_DEV_DIR, and patterns like SHOAL_CACHE_*.
            if name.starts_with("SHOAL_DEV_") || name.ends_with('_') {
                continue;
            }
            assert!(
                known.contains(&name),
                "{}: {name} is not a configuration variable (docs/CONFIG.md)",
                file.display()
            );
        }
    }
}

#[test]
fn scripts_dev_is_valid_bash_and_reports_an_empty_state() {
    let script = repo().join("scripts/dev");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&script).unwrap().permissions());
    assert!(mode & 0o111 != 0, "scripts/dev is not executable");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "bash -n scripts/dev:\n{}",
        String::from_utf8_lossy(&syntax.stderr)
    );

    // status with a fresh state folder: nothing started, exit 0, no files.
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("dev");
    let status = Command::new(&script)
        .arg("status")
        .env("SHOAL_DEV_DIR", &dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "scripts/dev status: {stdout}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let dir_text = dir.display().to_string();
    for expected in [
        "rabbitmq",
        "seaweedfs",
        "prometheus",
        "none started",
        dir_text.as_str(),
    ] {
        assert!(
            stdout.contains(expected),
            "scripts/dev status lacks {expected:?}:\n{stdout}"
        );
    }
    assert!(!dir.exists(), "status created {}", dir.display());

    // Bad usage fails before starting anything.
    let usage = Command::new(&script).arg("sideways").output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    let bad = Command::new(&script)
        .args(["up", "0"])
        .env("SHOAL_DEV_DIR", &dir)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(!dir.exists(), "a refused `up` created {}", dir.display());
}
