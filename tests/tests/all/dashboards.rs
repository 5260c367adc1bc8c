//! dashboards/: the Grafana dashboard, the alert rules and the example
//! Prometheus configuration. promtool checks the rules, the configuration
//! and every dashboard query; each metric name they read must be one the
//! worker exports or one of the RabbitMQ plugin's listed below.
use crate::support::repo;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The per-queue metrics of RabbitMQ's built-in `rabbitmq_prometheus` plugin
/// (port 15692) that dashboards/ reads. They carry the `vhost` and `queue`
/// labels only on the `/metrics/per-object` endpoint (or on `/metrics` with
/// `prometheus.return_per_object_metrics = true`); `/metrics/detailed` names
/// them `rabbitmq_detailed_*`. Checked against the plugin's source in
/// rabbitmq/rabbitmq-server: `deps/rabbitmq_prometheus/src/collectors/
/// prometheus_rabbitmq_core_metrics_collector.erl` (groups
/// `queue_coarse_metrics`: queue_messages_ready, queue_messages_unacked,
/// queue_messages; `queue_metrics`: queue_consumers;
/// `channel_queue_exchange_metrics`: queue_messages_published_total; all with
/// the `rabbitmq_` prefix) and its `test/rabbit_prometheus_http_SUITE.erl`,
/// which reads `rabbitmq_queue_messages_ready{`, `rabbitmq_queue_consumers{`
/// and `rabbitmq_queue_messages_published_total{` from `/metrics/per-object`.
const RABBITMQ_METRICS: &[&str] = &[
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_messages",
    "rabbitmq_queue_consumers",
    "rabbitmq_queue_messages_published_total",
];

/// The worker's histogram families: only these may be read as
/// `<name>_bucket`, `<name>_sum` and `<name>_count`.
const HISTOGRAMS: &[&str] = &[
    "shoal_job_stage_duration_seconds",
    "shoal_job_peak_memory_bytes",
];

/// Panels the dashboard must keep (by title).
const PANELS: &[&str] = &[
    "Throughput (jobs finished/s)",
    "Errors by kind",
    "Stage latency (p50/p90/p99)",
    "Cache hit ratio by kind",
    "In-flight jobs vs concurrency",
    "Queue depth",
    "Queue consumers",
    "Broker connected",
];

fn dashboards() -> PathBuf {
    repo().join("dashboards")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn dashboard() -> Value {
    let path = dashboards().join("shoal.json");
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// Runs promtool from the workspace root and asserts it succeeds. promtool
/// is required, not optional: `apt-get install prometheus` provides it.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}); it checks dashboards/: install it \
                 (Debian/Ubuntu: apt-get install prometheus) and put it on PATH"
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{stdout}\n{stderr}",
        args.join(" "),
        out.status
    );
    format!("{stdout}{stderr}")
}

// ---------------------------------------------------------------- PromQL

/// Index just past the string literal opening at `i` (", ' or `).
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() {
        match chars[j] {
            '\\' if quote != '`' => j += 2,
            c if c == quote => return j + 1,
            _ => j += 1,
        }
    }
    j
}

/// Index just past the bracket closing the one at `i`, skipping nested
/// brackets and string literals.
fn skip_group(chars: &[char], i: usize) -> usize {
    let (open, close) = match chars[i] {
        '{' => ('{', '}'),
        '[' => ('[', ']'),
        '(' => ('(', ')'),
        c => panic!("not a bracket: {c}"),
    };
    let mut depth = 0;
    let mut j = i;
    while j < chars.len() {
        match chars[j] {
            '"' | '\'' | '`' => {
                j = skip_string(chars, j);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    j
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Identifiers of a PromQL expression that name metrics: `[a-zA-Z_:][a-zA-Z0-9_:]*`
/// outside string literals, label matchers `{...}`, ranges and subqueries
/// `[...]`, comments, Grafana variables (`$x`, `${x}`), numbers and
/// durations, and the label lists of `by`, `without`, `on`, `ignoring`,
/// `group_left` and `group_right`; an identifier followed by `(`, `by` or
/// `without` is a function or aggregation, and the binary operators and
/// modifiers are keywords.
fn metric_names(expr: &str) -> Vec<String> {
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' || c == '[' {
            i = skip_group(&chars, i);
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(&chars, i);
            } else {
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // 0.99, 5m, 1h30m, 0x1f, 1e3
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let paren = chars.get(next) == Some(&'(');
            // `sum by (a) (x)`, `max without (a) (x)`: an aggregation.
            let next_word: String = chars[next..].iter().take_while(|c| is_ident(**c)).collect();
            let aggregation = next_word == "by" || next_word == "without";
            if GROUPING.contains(&word.as_str()) {
                if paren {
                    i = skip_group(&chars, next);
                }
            } else if paren || aggregation || KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
            {
                // A function, an aggregation or a keyword.
            } else {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_promql_tokenizer_finds_metrics_and_nothing_else() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (stage, le) (rate(shoal_job_stage_duration_seconds_bucket{job=~"$job", instance=~"${instance}", shoal_label="x{y}"}[$__rate_interval])))
           / ignoring (status) group_left () sum without (instance) (shoal_jobs_total offset 5m) > bool 1e3
           and on (queue) rabbitmq_queue_consumers{queue="shoal.jobs"} == 0 # shoal_comment
           or deriv(rabbitmq_queue_messages_ready[10m:1m]) unless label_replace(up, "shoal_dst", "$1", "a", "(.*)")"#,
    );
    assert_eq!(
        names,
        [
            "shoal_job_stage_duration_seconds_bucket",
            "shoal_jobs_total",
            "rabbitmq_queue_consumers",
            "rabbitmq_queue_messages_ready",
            "up",
        ]
    );
}

// ---------------------------------------------------------------- files

/// Every `expr` and template variable `definition` in the dashboard.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        for p in v["panels"].as_array().into_iter().flatten() {
            out.push(p);
            walk(p, out);
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// The `expr` of every rule in alerts.yml: a plain or quoted scalar on the
/// `expr:` line, or a block scalar (`|`, `|-`, `>`, `>-`) below it.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        i += 1;
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        let value = value.trim();
        if matches!(value, "|" | "|-" | "|+" | ">" | ">-" | ">+") {
            let mut block = Vec::new();
            while i < lines.len() {
                let l = lines[i];
                let body = l.trim_start();
                if !body.is_empty() && l.len() - body.len() <= indent {
                    break;
                }
                block.push(body);
                i += 1;
            }
            exprs.push(block.join("\n").trim().to_string());
        } else if value.starts_with('"') {
            exprs.push(serde_json::from_str(value).unwrap_or_else(|e| {
                panic!("expr {value} is not a double-quoted scalar this test reads: {e}")
            }));
        } else if let Some(inner) = value.strip_prefix('\'') {
            exprs.push(inner.trim_end_matches('\'').replace("''", "'"));
        } else {
            exprs.push(value.split(" #").next().unwrap_or("").trim().to_string());
        }
    }
    exprs
}

/// Checks one name against the worker's registry or the RabbitMQ list;
/// returns the family it belongs to, or why it is unknown.
fn family(name: &str, worker: &[String]) -> Result<String, String> {
    if name.starts_with("rabbitmq_") {
        return if RABBITMQ_METRICS.contains(&name) {
            Ok(name.to_string())
        } else {
            Err(format!(
                "{name} is not in RABBITMQ_METRICS (verified rabbitmq_prometheus per-object names)"
            ))
        };
    }
    if worker.iter().any(|w| w == name) {
        return Ok(name.to_string());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && HISTOGRAMS.contains(&base)
            && worker.iter().any(|w| w == base)
        {
            return Ok(base.to_string());
        }
    }
    Err(format!(
        "{name} is not exported by the worker (shoal_worker::metrics::METRICS.names(): {worker:?})"
    ))
}

/// The `shoal_`/`rabbitmq_` names these queries read, each checked.
fn checked_names(queries: &[String], worker: &[String], file: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names = Vec::new();
    for q in queries {
        for name in metric_names(q) {
            if !(name.starts_with("shoal_") || name.starts_with("rabbitmq_")) {
                continue;
            }
            match family(&name, worker) {
                Ok(_) => names.push(name),
                Err(e) => problems.push(format!("{e}\n  in: {q}")),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{file} reads metrics that do not exist:\n{}",
        problems.join("\n")
    );
    names
}

// ---------------------------------------------------------------- tests

#[test]
fn promtool_accepts_the_rules_and_the_scrape_configuration() {
    let out = promtool(&["check", "rules", "dashboards/alerts.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["check", "config", "dashboards/prometheus.yml"]);
    // The rule file resolves relative to the configuration and is checked too.
    assert!(out.contains("1 rule files found"), "{out}");
}

#[test]
fn the_histogram_list_matches_the_registry() {
    let worker = shoal_worker::metrics::METRICS.names();
    for h in HISTOGRAMS {
        assert!(worker.iter().any(|w| w == h), "{h} is not in {worker:?}");
    }
    // Families rendered so far (a vector shows up once it has a series);
    // any histogram among them must be listed, and the listed ones that
    // show up must be histograms.
    let text = shoal_worker::metrics::METRICS.render();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            assert_eq!(
                HISTOGRAMS.contains(&name),
                kind == "histogram",
                "{name} is a {kind}: update HISTOGRAMS"
            );
        }
    }
    // A plain histogram always renders.
    assert!(
        text.contains("# TYPE shoal_job_peak_memory_bytes histogram"),
        "{text}"
    );
}

#[test]
fn the_dashboard_parses_and_has_its_panels() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion: {}",
        d["schemaVersion"]
    );
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus `datasource` variable: {vars:?}"
    );
    let all = panels(&d);
    let titles: BTreeSet<&str> = all.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in PANELS {
        assert!(
            titles.contains(want),
            "no panel {want:?}; panels: {titles:?}"
        );
    }
    // Every query panel reads the chosen data source, not one fixed uid.
    for p in all.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {}",
            p["title"]
        );
        let targets = p["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "panel {} has no queries", p["title"]);
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "panel {}",
                p["title"]
            );
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "panel {} has an empty query",
                p["title"]
            );
        }
    }
}

#[test]
fn the_dashboard_reads_only_metrics_that_exist() {
    let worker = shoal_worker::metrics::METRICS.names();
    let queries = dashboard_queries(&dashboard());
    assert!(queries.len() >= 20, "only {} queries found", queries.len());
    let names = checked_names(&queries, &worker, "dashboards/shoal.json");
    let families: BTreeSet<String> = names
        .iter()
        .filter(|n| n.starts_with("shoal_"))
        .map(|n| family(n, &worker).unwrap())
        .collect();
    let rabbit: BTreeSet<&String> = names
        .iter()
        .filter(|n| n.starts_with("rabbitmq_"))
        .collect();
    // Not vacuous: the tokenizer found the worker's families and the queue's.
    assert!(
        families.len() >= 13,
        "the dashboard reads only {} worker families: {families:?}",
        families.len()
    );
    assert!(rabbit.len() >= 4, "RabbitMQ metrics read: {rabbit:?}");
    for h in HISTOGRAMS {
        assert!(
            names.iter().any(|n| n == &format!("{h}_bucket")),
            "no quantiles of {h}"
        );
    }
}

#[test]
fn the_dashboard_queries_are_valid_promql() {
    let d = dashboard();
    // Grafana's variables, as Prometheus would see them after substitution.
    let mut vars: Vec<String> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    vars.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let queries: Vec<String> = panels(&d)
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(queries.len() >= 20, "only {} queries", queries.len());
    for (i, q) in queries.iter().enumerate() {
        let mut expr = q
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h");
        for v in &vars {
            expr = expr
                .replace(&format!("${{{v}}}"), "x")
                .replace(&format!("${v}"), "x");
        }
        assert!(!expr.contains('$'), "unknown variable in {q}");
        // A JSON string is a YAML double-quoted scalar.
        let quoted = serde_json::to_string(&expr).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.rules.yml");
    std::fs::write(&path, &rules).unwrap();
    let path = path.display().to_string();
    promtool(&["check", "rules", &path]);
}

#[test]
fn the_alert_rules_read_only_metrics_that_exist() {
    let worker = shoal_worker::metrics::METRICS.names();
    let yaml = read(&dashboards().join("alerts.yml"));
    let exprs = rule_exprs(&yaml);
    let rules = yaml
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("- alert:") || t.starts_with("- record:")
        })
        .count();
    assert_eq!(exprs.len(), rules, "one expr per rule: {exprs:#?}");
    assert!(rules >= 6, "only {rules} rules");
    assert!(exprs.iter().all(|e| !e.is_empty()), "{exprs:#?}");

    let names = checked_names(&exprs, &worker, "dashboards/alerts.yml");
    let distinct: BTreeSet<&String> = names.iter().collect();
    for want in [
        "shoal_jobs_total",
        "shoal_dead_letters_total",
        "shoal_broker_connected",
        "rabbitmq_queue_messages_ready",
        "rabbitmq_queue_consumers",
    ] {
        assert!(
            distinct.iter().any(|n| *n == want),
            "the rules do not read {want}: {distinct:?}"
        );
    }
}

#[test]
fn every_alert_has_a_duration_a_severity_and_annotations() {
    let yaml = read(&dashboards().join("alerts.yml"));
    // Each alert's text runs from its `- alert:` line to the next rule or group.
    let mut alerts: Vec<(String, String)> = Vec::new();
    for line in yaml.lines() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert:") {
            alerts.push((name.trim().to_string(), String::new()));
        } else if t.starts_with("- record:") || t.starts_with("- name:") {
            alerts.push((String::new(), String::new()));
        } else if let Some((_, body)) = alerts.last_mut() {
            body.push_str(t);
            body.push('\n');
        }
    }
    let alerts: Vec<_> = alerts.into_iter().filter(|(n, _)| !n.is_empty()).collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for (name, body) in &alerts {
        for key in ["for:", "severity:", "summary:", "description:"] {
            assert!(
                body.lines().any(|l| l.starts_with(key)),
                "alert {name} has no {key}"
            );
        }
    }
    let names: Vec<&str> = alerts.iter().map(|(n, _)| n.as_str()).collect();
    // Infrastructure errors and all failures are separate alerts.
    let infra = yaml.contains("status=\"error\"");
    let all = yaml.contains("status=~\"failed|error|rejected\"");
    assert!(
        infra && all,
        "expected one alert on status=\"error\" and one on all failures"
    );
    assert!(
        names.len() == names.iter().collect::<BTreeSet<_>>().len(),
        "duplicate alert names: {names:?}"
    );
}
