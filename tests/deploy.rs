//! Static checks of the deployment files (deploy/, docker-compose.yml, .dockerignore): every
//! YAML and JSON file parses; the Dockerfile builds both binaries and runs them unprivileged,
//! and its prebuilt target (the one CI builds and tests/image.rs starts) shares that runtime;
//! the compose file, the Prometheus config and the Kubernetes manifests refer to files, names
//! and ports that exist; the alert rules and the Grafana dashboard query only metrics and labels
//! the gateway exports (read from `crates/tollgate/src/metrics.rs`, so a renamed metric fails
//! here); every gateway config passes the real `tollgate check-config`. With `promtool` on PATH
//! the Prometheus files are also checked and the alert rules' unit tests run
//! (`TOLLGATE_REQUIRE_PROMTOOL=1` makes its absence a failure). No Docker or cluster needed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step is a failed test"
)]

use promql_parser::label::{Labels, MatchOp, Matcher, METRIC_NAME};
use promql_parser::parser::{Expr, ParenExpr, SubqueryExpr, UnaryExpr, VectorSelector};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------------------------------------
// Files

fn root() -> PathBuf {
    tollgate_e2e::workspace()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every file under `dir` (relative to the root) whose name ends with one of `exts`, as
/// root-relative paths with `/` separators, sorted.
fn files_under(dir: &str, exts: &[&str]) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let base = root();
    let mut found = Vec::new();
    walk(&base.join(dir), &mut found);
    let mut rel: Vec<String> = found
        .iter()
        .map(|p| {
            p.strip_prefix(&base)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .filter(|p| exts.iter().any(|e| p.ends_with(e)))
        .collect();
    rel.sort();
    rel
}

/// Every document of a YAML file (a `---` line separates documents), as JSON values.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut flush = |doc: &mut String| {
        if !doc.trim().is_empty() {
            let v: Value = serde_yaml::from_str(doc)
                .unwrap_or_else(|e| panic!("{rel} does not parse as YAML: {e}"));
            if !v.is_null() {
                docs.push(v);
            }
        }
        doc.clear();
    };
    for line in text.lines() {
        if line.trim_end() == "---" {
            flush(&mut current);
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current);
    docs
}

/// The one document of a YAML file.
fn yaml(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: expected one YAML document");
    docs.remove(0)
}

fn json(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} does not parse: {e}"))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The `${NAME}` references of a config text.
fn env_refs(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after.find('}').expect("unterminated ${");
        names.insert(after[..end].to_owned());
        rest = &after[end + 1..];
    }
    names
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in `{addr}`"))
}

// ---------------------------------------------------------------------------------------------
// What the gateway exports

/// One exported metric.
#[derive(Debug)]
struct Metric {
    labels: BTreeSet<String>,
    /// Exposed as `_bucket`, `_sum` and `_count` series.
    histogram: bool,
}

/// Every metric the gateway exports, from the `"tollgate_…"` literals of metrics.rs: its labels
/// are the first `&[…]` list after the name (none: no labels), and it is a histogram when the
/// constructor just before the name is one (`histogram(`, `HistogramOpts::new(`).
fn exported_metrics() -> BTreeMap<String, Metric> {
    let src = read("crates/tollgate/src/metrics.rs");
    let starts: Vec<usize> = src.match_indices("\"tollgate_").map(|(i, _)| i).collect();
    assert!(
        starts.len() >= 10,
        "metrics.rs: expected the metric names as \"tollgate_…\" string literals"
    );
    let mut out = BTreeMap::new();
    let mut prev_end = 0;
    for (n, &start) in starts.iter().enumerate() {
        let name_end = src[start + 1..].find('"').unwrap() + start + 1;
        let name = src[start + 1..name_end].to_owned();
        let segment = &src[name_end..starts.get(n + 1).copied().unwrap_or(src.len())];
        let labels = segment
            .find("&[")
            .map(|i| {
                let list = &segment[i + 2..i + 2 + segment[i + 2..].find(']').unwrap()];
                list.split(',')
                    .map(|l| l.trim().trim_matches('"').to_owned())
                    .filter(|l| !l.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let before = &src[prev_end.max(start.saturating_sub(200))..start];
        let last = |word: &str| before.rfind(word).map_or(-1, |i| i as i64);
        let histogram = last("istogram") > last("ounter").max(last("auge"));
        out.insert(name, Metric { labels, histogram });
        prev_end = name_end;
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The string literals the gateway's code (its tests and fuzz targets left out) can write as a
/// label value:
/// a match arm's result (`=> "failed"`), an element of a list (`&["failure"]`, `[.., "prompt"]`),
/// or an argument (`map_or("no_key", ..)`). Not JSON keys, comparisons, index expressions or
/// patterns, so common words elsewhere in the code do not pass for label values.
fn label_literals() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for file in files_under("crates/tollgate/src", &[".rs"]) {
        if file.ends_with("/tests.rs") || file.ends_with("/fuzz.rs") || file.contains("/tests/") {
            continue;
        }
        let text = read(&file);
        // An inline `mod tests { .. }` comes last: cut there.
        let code = text
            .match_indices("#[cfg(test)]")
            .find(|(i, m)| text[i + m.len()..].trim_start().starts_with("mod tests {"))
            .map_or(text.as_str(), |(i, _)| &text[..i]);
        let mut rest = code;
        let mut offset = 0;
        while let Some(open) = rest.find('"') {
            let start = offset + open;
            if code[..start].ends_with('\'') && code[start + 1..].starts_with('\'') {
                offset = start + 1; // the char literal '"'
                rest = &code[offset..];
                continue;
            }
            let mut end = start + 1;
            let bytes = code.as_bytes();
            while end < bytes.len() && bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            if end >= bytes.len() {
                break;
            }
            let value = &code[start + 1..end];
            let before = code[..start].trim_end();
            let after = code[end + 1..].trim_start();
            let index_expr = before.ends_with('[')
                && before[..before.len() - 1]
                    .trim_end()
                    .ends_with(|c: char| is_ident(c) || c == ']' || c == ')');
            let written = (before.ends_with("=>")
                || before.ends_with('[')
                || before.ends_with(',')
                || before.ends_with('('))
                && !index_expr
                // A lookup (`json.get("error")`) reads a name, it writes no value.
                && !before.ends_with(".get(")
                && !after.starts_with([':', '=', '|']);
            if written && !value.is_empty() && value.chars().all(|c| is_ident(c) || c == '-') {
                out.insert(value.to_owned());
            }
            offset = end + 1;
            rest = &code[offset..];
        }
    }
    out
}

/// Labels whose values come from a closed set written in the gateway's code.
const CLOSED_LABELS: [&str; 10] = [
    "outcome",
    "state",
    "result",
    "reason",
    "status_class",
    "outcome_kind",
    "scope",
    "dimension",
    "kind",
    "endpoint",
];

/// Labels Prometheus adds to every scraped series (`service` by prometheus.yml's relabeling).
const TARGET_LABELS: [&str; 3] = ["job", "instance", "service"];

// ---------------------------------------------------------------------------------------------
// PromQL, parsed by promql-parser: the gateway's metric selectors and the grouping clauses.

#[derive(Debug)]
struct Selector {
    metric: String,
    /// (label, operator, value).
    matchers: Vec<(String, String, String)>,
}

impl Selector {
    /// A selector of a gateway (`tollgate_…`) metric, named before its braces or by
    /// `__name__="…"`; other selectors (`up`) are not the gateway's to check.
    fn of(vs: &VectorSelector) -> Option<Self> {
        let matchers: Vec<&Matcher> = (vs.matchers.matchers.iter())
            .chain(vs.matchers.or_matchers.iter().flatten())
            .collect();
        let by_name = matchers
            .iter()
            .find(|m| m.name == METRIC_NAME && matches!(m.op, MatchOp::Equal))
            .map(|m| m.value.clone());
        let metric = vs.name.clone().or(by_name)?;
        metric.starts_with("tollgate_").then(|| Selector {
            metric,
            matchers: (matchers.iter())
                .map(|m| (m.name.clone(), m.op.to_string(), m.value.clone()))
                .collect(),
        })
    }
}

#[derive(Debug, Default)]
struct Scan {
    selectors: Vec<Selector>,
    /// Labels of `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
    grouping: Vec<String>,
}

impl Scan {
    fn select(&mut self, vs: &VectorSelector) {
        self.selectors.extend(Selector::of(vs));
    }

    fn group(&mut self, labels: &Labels) {
        self.grouping.extend(labels.labels.iter().cloned());
    }

    /// Every node of the AST, depth first.
    fn walk(&mut self, expr: &Expr) {
        match expr {
            Expr::VectorSelector(vs) => self.select(vs),
            Expr::MatrixSelector(ms) => self.select(&ms.vs),
            Expr::Aggregate(agg) => {
                if let Some(modifier) = &agg.modifier {
                    self.group(modifier.labels());
                }
                self.walk(&agg.expr);
                if let Some(param) = &agg.param {
                    self.walk(param);
                }
            }
            Expr::Binary(bin) => {
                if let Some(modifier) = &bin.modifier {
                    if let Some(matching) = &modifier.matching {
                        self.group(matching.labels());
                    }
                    if let Some(include) = modifier.card.labels() {
                        self.group(include);
                    }
                }
                self.walk(&bin.lhs);
                self.walk(&bin.rhs);
            }
            Expr::Unary(UnaryExpr { expr })
            | Expr::Paren(ParenExpr { expr })
            | Expr::Subquery(SubqueryExpr { expr, .. }) => self.walk(expr),
            Expr::Call(call) => call.args.args.iter().for_each(|arg| self.walk(arg)),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
}

/// Grafana's interval variables, which stand where PromQL wants a duration. (Its other
/// variables sit in label values, strings to PromQL, and are checked as they are written.)
const GRAFANA_INTERVALS: [&str; 3] = ["__rate_interval", "__interval", "__range"];

/// The expression with each Grafana interval variable (`$__rate_interval`,
/// `${__rate_interval}`) replaced by a placeholder duration, so that it parses.
fn with_placeholder_intervals(expr: &str) -> String {
    GRAFANA_INTERVALS.iter().fold(expr.to_owned(), |out, var| {
        out.replace(&format!("${{{var}}}"), "5m")
            .replace(&format!("${var}"), "5m")
    })
}

/// The gateway's selectors and the grouping labels of a PromQL expression, or why it does not
/// parse.
fn scan_promql(expr: &str) -> Result<Scan, String> {
    let ast = promql_parser::parser::parse(&with_placeholder_intervals(expr))?;
    let mut scan = Scan::default();
    scan.walk(&ast);
    Ok(scan)
}

/// The PromQL inside a Grafana variable query: `label_values(selector, label)` reads a label of
/// a selector, checked as `group by (label) (selector)`; `query_result(expr)` and
/// `label_names(selector)` hold PromQL; anything else is taken as PromQL itself. None for the
/// forms that name no metric: `label_values(label)`, `label_names()`, `metrics(regex)`.
fn variable_query_promql(query: &str) -> Option<String> {
    let query = query.trim();
    let call = |f: &str| {
        let args = query.strip_prefix(f)?.trim_start().strip_prefix('(')?;
        args.strip_suffix(')').map(str::trim)
    };
    if let Some(args) = call("label_values") {
        let (selector, label) = args.rsplit_once(',')?;
        return Some(format!("group by ({}) ({selector})", label.trim()));
    }
    if let Some(arg) = call("query_result").or_else(|| call("label_names")) {
        return (!arg.is_empty()).then(|| arg.to_owned());
    }
    call("metrics").is_none().then(|| query.to_owned())
}

/// The problems of one PromQL expression: not PromQL, unknown metrics, labels a metric does not
/// have, closed-set label values the gateway never writes, grouping by labels no metric has.
fn promql_problems(
    what: &str,
    expr: &str,
    exported: &BTreeMap<String, Metric>,
    literals: &BTreeSet<String>,
) -> Vec<String> {
    let scan = match scan_promql(expr) {
        Ok(scan) => scan,
        Err(e) => return vec![format!("{what}: `{expr}` does not parse as PromQL: {e}")],
    };
    let mut problems = Vec::new();
    let mut all_labels: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    for sel in &scan.selectors {
        let (base, bucket) = resolve_metric(&sel.metric, exported);
        let Some(base) = base else {
            problems.push(format!(
                "{what}: `{}` is not a metric the gateway exports (in `{expr}`)",
                sel.metric
            ));
            continue;
        };
        let mut allowed = exported[&base].labels.clone();
        allowed.extend(TARGET_LABELS.iter().map(|l| l.to_string()));
        if bucket {
            allowed.insert("le".into());
        }
        all_labels.extend(allowed.iter().cloned());
        for matcher in &sel.matchers {
            let label = &matcher.0;
            if label == METRIC_NAME {
                continue;
            }
            if !allowed.contains(label) {
                problems.push(format!(
                    "{what}: `{}` has no label `{label}` (it has {:?})",
                    sel.metric, exported[&base].labels
                ));
            }
            problems.extend(closed_value_problems(what, &sel.metric, matcher, literals));
        }
    }
    for label in &scan.grouping {
        if !all_labels.contains(label) && label != "le" {
            problems.push(format!(
                "{what}: grouping by `{label}`, a label of none of its metrics (in `{expr}`)"
            ));
        }
    }
    problems
}

/// A matcher on a closed-set label (`CLOSED_LABELS`) may only name values the gateway writes:
/// each alternative of a regex (`=~"a|b"`), or the one value.
fn closed_value_problems(
    what: &str,
    metric: &str,
    (label, op, value): &(String, String, String),
    literals: &BTreeSet<String>,
) -> Vec<String> {
    if !CLOSED_LABELS.contains(&label.as_str()) {
        return Vec::new();
    }
    let values: Vec<&str> = if op.contains('~') {
        value.split('|').collect()
    } else {
        vec![value.as_str()]
    };
    values
        .into_iter()
        .filter(|v| !literals.contains(*v))
        .map(|v| {
            format!(
                "{what}: {metric}{{{label}{op}\"{value}\"}}: no {label} value `{v}` \
                 is written by crates/tollgate/src (see label_literals)"
            )
        })
        .collect()
}

/// The exported metric a series name belongs to (histogram series carry `_bucket`, `_sum`,
/// `_count`), and whether it is a bucket series.
fn resolve_metric(name: &str, exported: &BTreeMap<String, Metric>) -> (Option<String>, bool) {
    if exported.contains_key(name) {
        return (Some(name.to_owned()), false);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if exported.get(base).is_some_and(|m| m.histogram) {
                return (Some(base.to_owned()), suffix == "_bucket");
            }
        }
    }
    (None, false)
}

fn metrics_named(exprs: &[String]) -> BTreeSet<String> {
    let exported = exported_metrics();
    exprs
        .iter()
        .flat_map(|e| {
            scan_promql(e)
                .unwrap_or_else(|err| panic!("`{e}`: {err}"))
                .selectors
        })
        .filter_map(|s| resolve_metric(&s.metric, &exported).0)
        .collect()
}

fn assert_no_problems(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

#[test]
fn the_promql_checker_catches_unknown_metrics_labels_and_values() {
    let exported = exported_metrics();
    let literals = label_literals();
    for name in [
        "tollgate_requests_total",
        "tollgate_request_duration_seconds",
        "tollgate_key_state",
        "tollgate_state_backend_degraded",
    ] {
        assert!(exported.contains_key(name), "metrics.rs lost {name}");
    }
    assert!(exported["tollgate_requests_total"]
        .labels
        .contains("outcome"));
    assert!(exported["tollgate_inflight_requests"].labels.is_empty());
    assert!(exported["tollgate_request_duration_seconds"].histogram);
    assert!(exported["tollgate_ratelimit_wait_seconds"].histogram);
    assert!(!exported["tollgate_requests_total"].histogram);
    assert!(!exported["tollgate_inflight_requests"].histogram);
    let good = r#"sum by (provider) (rate(tollgate_retries_total{reason=~"transient|timeout", provider!=""}[5m]))
        / on (provider) group_left sum by (provider, le) (rate(tollgate_upstream_duration_seconds_bucket{job="tollgate"}[$__rate_interval]))"#;
    assert_no_problems(&promql_problems("good", good, &exported, &literals));
    for bad in [
        "rate(tollgate_requests_totals[5m])",
        r#"tollgate_requests_total{provider="openai"}"#,
        r#"tollgate_requests_total{outcome="exploded"}"#,
        r#"tollgate_requests_total{outcome="error"}"#,
        r#"tollgate_key_state{state=~"healthy|sleepy"}"#,
        "sum by (flavour) (tollgate_inflight_requests)",
        "tollgate_inflight_requests_bucket",
        "tollgate_requests_total_count",
        r#"{__name__="tollgate_requests_totals"}"#,
        r#"sum(rate(tollgate_requests_total{outcome="failed"}[5m])"#,
        "sum(rate(tollgate_requests_total[$window]))",
    ] {
        assert!(
            !promql_problems("bad", bad, &exported, &literals).is_empty(),
            "not caught: {bad}"
        );
    }
    let variable = |q: &str| variable_query_promql(q).unwrap_or_default();
    assert_no_problems(&promql_problems(
        "templating",
        &variable("label_values(tollgate_key_state{state=\"healthy\"}, provider)"),
        &exported,
        &literals,
    ));
    for bad in [
        "label_values(tollgate_key_state, flavour)",
        "label_values(tollgate_key_states, provider)",
        "query_result(tollgate_requests_totals)",
        r#"label_names(tollgate_requests_total{flavour="x"})"#,
        "sum by (flavour) (tollgate_inflight_requests)",
    ] {
        assert!(
            !promql_problems("bad", &variable(bad), &exported, &literals).is_empty(),
            "not caught: {bad}"
        );
    }
    for none in [
        "label_values(provider)",
        "label_names()",
        "metrics(tollgate_.*)",
    ] {
        assert_eq!(variable_query_promql(none), None, "{none}");
    }
}

// ---------------------------------------------------------------------------------------------
// Every file parses

#[test]
fn every_yaml_and_json_file_parses() {
    let mut yamls = files_under("deploy", &[".yml", ".yaml"]);
    yamls.push("docker-compose.yml".into());
    assert!(
        yamls.len() >= 12,
        "expected the deploy YAML files, found {yamls:?}"
    );
    for f in &yamls {
        assert!(!yaml_docs(f).is_empty(), "{f} is empty");
    }
    for f in files_under("deploy", &[".json"]) {
        json(&f);
    }
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// One Dockerfile instruction: keyword (upper case) and its arguments, continuation lines
/// joined and comment lines dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && pending.is_empty()) {
            continue;
        }
        let (body, continued) = match t.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (t, false),
        };
        pending.push_str(body);
        pending.push(' ');
        if !continued {
            let text = pending.trim().to_owned();
            pending.clear();
            if text.is_empty() {
                continue;
            }
            let (kw, args) = text.split_once(char::is_whitespace).unwrap_or((&text, ""));
            out.push((kw.to_ascii_uppercase(), args.trim().to_owned()));
        }
    }
    out
}

/// The Dockerfile's stages: each starts at a FROM.
fn stages() -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for ins in dockerfile() {
        if ins.0 == "FROM" {
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push(ins);
        }
    }
    stages
}

/// A stage's FROM: the image or stage it starts from, and its own name (`FROM base AS name`).
fn stage_from(stage: &[(String, String)]) -> (String, Option<String>) {
    let parts: Vec<&str> = stage[0].1.split_whitespace().collect();
    match parts[..] {
        [base] => (base.to_owned(), None),
        [base, as_, name] if as_.eq_ignore_ascii_case("as") => {
            (base.to_owned(), Some(name.to_owned()))
        }
        _ => panic!("FROM {}: expected `image [AS name]`", stage[0].1),
    }
}

/// The stage named `name` (`None`: the last one, what a build without --target makes).
fn stage(name: Option<&str>) -> Vec<(String, String)> {
    let stages = stages();
    match name {
        None => stages.last().unwrap().clone(),
        Some(name) => stages
            .into_iter()
            .find(|s| stage_from(s).1.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("the Dockerfile has no stage `{name}`")),
    }
}

/// What an image target is made of: its stage after the stages it is built FROM, the base's
/// FROM first.
fn target(name: Option<&str>) -> Vec<(String, String)> {
    let mut chain = stage(name);
    loop {
        let (base, _) = stage_from(&chain);
        let Some(parent) = stages()
            .into_iter()
            .find(|s| stage_from(s).1.as_deref() == Some(base.as_str()))
        else {
            return chain;
        };
        chain = parent
            .into_iter()
            .chain(chain.into_iter().skip(1))
            .collect();
    }
}

/// The default target (`docker build -f deploy/Dockerfile .`): the image users build.
fn image() -> Vec<(String, String)> {
    target(None)
}

fn exec_form(args: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("`{args}` is not the exec (JSON array) form: {e}"));
    strings(&v)
}

/// The image's `ENV`: the environment every gateway config runs with.
fn image_env() -> Vec<(String, String)> {
    env_of(&image())
}

/// The `ENV` of a target's instructions.
fn env_of(instructions: &[(String, String)]) -> Vec<(String, String)> {
    instructions
        .iter()
        .filter(|(k, _)| k == "ENV")
        .map(|(_, a)| {
            let (k, v) = a
                .split_once('=')
                .unwrap_or_else(|| panic!("ENV `{a}`: use the KEY=value form"));
            (k.trim().to_owned(), v.trim().trim_matches('"').to_owned())
        })
        .collect()
}

/// Patterns of .dockerignore (no wildcard matching needed for the ones used).
fn dockerignored(path: &str) -> bool {
    read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/'))
        .any(|p| path == p || path.starts_with(&format!("{p}/")))
}

/// The arguments of every `kw` instruction of `instructions`.
fn find(instructions: &[(String, String)], kw: &str) -> Vec<String> {
    instructions
        .iter()
        .filter(|(k, _)| k == kw)
        .map(|(_, a)| a.clone())
        .collect()
}

/// What a user of an image target relies on: the base, the CA store, an unprivileged user, the
/// healthcheck, ports, listen address, entrypoint, the default config and both binaries.
fn check_runtime(what: &str, runtime: &[(String, String)]) {
    assert!(
        runtime[0].1.contains("debian:bookworm-slim"),
        "{what}: based on {}",
        runtime[0].1
    );
    let runs = find(runtime, "RUN").join("\n");
    assert!(
        runs.contains("apt-get install") && runs.contains("ca-certificates"),
        "{what} does not install ca-certificates"
    );
    let user = find(runtime, "USER");
    let user = user.last().unwrap_or_else(|| panic!("{what} sets no USER"));
    let name = user.split(':').next().unwrap();
    assert!(
        name != "root" && name != "0" && !name.is_empty(),
        "{what}: USER is root: {user}"
    );
    let health = find(runtime, "HEALTHCHECK");
    let health = health
        .last()
        .unwrap_or_else(|| panic!("{what}: no HEALTHCHECK"));
    let cmd = exec_form(&health[health.find("CMD").expect("HEALTHCHECK without CMD") + 3..]);
    assert_eq!(
        cmd[..2],
        ["tollgate", "healthcheck"],
        "{what}: HEALTHCHECK {health}"
    );
    assert!(
        cmd.get(2).is_some_and(|u| u.ends_with(":8080/healthz")),
        "{what}: HEALTHCHECK should probe :8080/healthz: {cmd:?}"
    );
    let exposed: Vec<String> = find(runtime, "EXPOSE")
        .iter()
        .flat_map(|a| {
            a.split_whitespace()
                .map(|p| p.split('/').next().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    for port in ["8080", "9090"] {
        assert!(
            exposed.iter().any(|p| p == port),
            "{what}: EXPOSE lacks {port}: {exposed:?}"
        );
    }
    assert_eq!(
        env_of(runtime)
            .iter()
            .find(|(k, _)| k == "TOLLGATE_SERVER__LISTEN")
            .map(|(_, v)| v.as_str()),
        Some("0.0.0.0:8080"),
        "{what} should listen on 0.0.0.0:8080"
    );
    assert_eq!(
        exec_form(
            find(runtime, "ENTRYPOINT")
                .last()
                .unwrap_or_else(|| panic!("{what}: no ENTRYPOINT"))
        ),
        ["tollgate"],
        "{what}: ENTRYPOINT"
    );
    let default_cmd = exec_form(
        find(runtime, "CMD")
            .last()
            .unwrap_or_else(|| panic!("{what}: no CMD")),
    );
    assert_eq!(default_cmd[0], "--config", "{what}: CMD");
    let copies = find(runtime, "COPY");
    assert!(
        copies.iter().any(|c| c.starts_with("--from=")
            && c.contains("tollgate")
            && c.contains("mock-upstream")
            && c.ends_with("/usr/local/bin/")),
        "{what} should copy both binaries into /usr/local/bin/: {copies:?}"
    );
    assert!(
        copies
            .iter()
            .any(|c| c.ends_with(&format!(" {}", default_cmd[1]))),
        "{what}: the default --config {} is not copied into the image",
        default_cmd[1]
    );
}

#[test]
fn dockerfile_builds_both_binaries_and_runs_them_unprivileged() {
    let stages = stages();
    assert!(stages.len() >= 2, "expected a build and a runtime stage");
    let build = stage(Some("build"));

    // Build stage: a Rust image, a locked release build of both binaries.
    assert!(build[0].1.contains("rust:"), "build stage: {}", build[0].1);
    let builds = find(&build, "RUN").join("\n");
    for needle in [
        "cargo build",
        "--release",
        "--locked",
        "-p tollgate",
        "-p mock-upstream",
    ] {
        assert!(builds.contains(needle), "build stage runs no `{needle}`");
    }
    // Every workspace member is copied into the build stage (cargo reads them all).
    let manifest = read("Cargo.toml");
    let members_list = &manifest[manifest.find("members").unwrap()..];
    let members_list =
        &members_list[members_list.find('[').unwrap()..=members_list.find(']').unwrap()];
    let copied: Vec<String> = find(&build, "COPY")
        .iter()
        .flat_map(|a| {
            let parts: Vec<&str> = a
                .split_whitespace()
                .filter(|p| !p.starts_with("--"))
                .collect();
            parts[..parts.len() - 1]
                .iter()
                .map(|p| p.trim_end_matches('/').to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    for member in members_list.split('"').skip(1).step_by(2) {
        assert!(
            copied
                .iter()
                .any(|c| member == c || member.starts_with(&format!("{c}/"))),
            "workspace member {member} is not copied into the build stage (COPY {copied:?})"
        );
    }
    for file in ["Cargo.toml", "Cargo.lock"] {
        assert!(
            copied.iter().any(|c| c == file),
            "build stage does not copy {file}"
        );
    }

    // The default target: the runtime with the build stage's binaries.
    check_runtime("the default target", &image());
    assert!(
        find(&stage(None), "COPY")
            .iter()
            .any(|c| c.starts_with("--from=build ")),
        "the default target should take the binaries of the build stage"
    );

    // COPY sources from the context exist and are not excluded by .dockerignore.
    for stage in &stages {
        for args in find(stage, "COPY")
            .iter()
            .filter(|a| !a.starts_with("--from"))
        {
            let parts: Vec<&str> = args
                .split_whitespace()
                .filter(|p| !p.starts_with("--"))
                .collect();
            for src in &parts[..parts.len() - 1] {
                let src = src.trim_end_matches('/');
                assert!(
                    root().join(src).exists(),
                    "COPY source {src} does not exist"
                );
                assert!(
                    !dockerignored(src),
                    "COPY source {src} is excluded by .dockerignore"
                );
            }
        }
    }
    for heavy in ["target", ".git"] {
        assert!(
            dockerignored(heavy),
            ".dockerignore should exclude {heavy}/"
        );
    }
}

#[test]
fn dockerfile_prebuilt_target_shares_the_runtime_with_the_full_build() {
    let prebuilt = target(Some("prebuilt"));
    check_runtime("the prebuilt target", &prebuilt);
    // Both final stages add only the binaries to one common base: every other line is shared.
    let (default, own) = (stage(None), stage(Some("prebuilt")));
    assert_eq!(
        stage_from(&default).0,
        stage_from(&own).0,
        "the default and prebuilt targets should start from one runtime stage"
    );
    for (what, s) in [("default", &default), ("prebuilt", &own)] {
        assert!(
            s[1..]
                .iter()
                .all(|(k, a)| k == "COPY" && a.ends_with(" /usr/local/bin/")),
            "the {what} target should only copy the binaries: {s:?}"
        );
    }
    // Its binaries come from a named build context, documented and given by CI.
    let copy = find(&own, "COPY").pop().unwrap();
    let context = copy
        .strip_prefix("--from=")
        .and_then(|c| c.split_whitespace().next())
        .expect("the prebuilt target copies --from a build context");
    assert!(
        stages()
            .iter()
            .all(|s| stage_from(s).1.as_deref() != Some(context)),
        "--from={context} should name a build context, not a stage"
    );
    let flag = format!("--build-context {context}=target/release");
    assert!(
        read("deploy/Dockerfile").contains(&flag),
        "the Dockerfile's header should show `{flag}`"
    );
    let ci = read(".ci/run");
    assert!(
        ci.contains("--target prebuilt") && ci.contains(&format!("--build-context {context}=")),
        ".ci/run should build the prebuilt target with --build-context {context}=DIR"
    );
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml

fn compose() -> Value {
    yaml("docker-compose.yml")
}

/// The (source, target) pairs of a service's bind mounts, short or long syntax.
fn mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .map(|vols| {
            vols.iter()
                .map(|v| match v.as_str() {
                    Some(short) => {
                        let mut parts = short.split(':');
                        (
                            parts.next().unwrap().to_owned(),
                            parts.next().unwrap_or_default().to_owned(),
                        )
                    }
                    None => (
                        str_at(v, "/source").to_owned(),
                        str_at(v, "/target").to_owned(),
                    ),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The root-relative path of a compose path (`./deploy/x` → `deploy/x`).
fn compose_path(p: &str) -> Option<String> {
    (p.starts_with("./") || p == ".").then(|| {
        p.trim_start_matches("./")
            .trim_start_matches('.')
            .to_owned()
    })
}

fn profiles(service: &Value) -> Vec<String> {
    strings(&service["profiles"])
}

#[test]
fn compose_refers_to_files_that_exist_and_wires_the_demo() {
    let c = compose();
    let services = c["services"].as_object().expect("services");
    for name in [
        "tollgate",
        "redis",
        "prometheus",
        "grafana",
        "mock-upstream",
        "tollgate-demo",
    ] {
        assert!(services.contains_key(name), "no service {name}");
    }
    for (name, s) in services {
        // Every local path exists.
        if let Some(build) = s.get("build") {
            let context = compose_path(str_at(build, "/context")).expect("relative build context");
            let dockerfile = root().join(&context).join(str_at(build, "/dockerfile"));
            assert!(dockerfile.is_file(), "{name}: no {}", dockerfile.display());
        }
        for (source, _) in mounts(s) {
            if let Some(rel) = compose_path(&source) {
                assert!(
                    root().join(&rel).exists(),
                    "{name} mounts {source}, which does not exist"
                );
            }
        }
        let demo_only = ["mock-upstream", "tollgate-demo"].contains(&name.as_str());
        assert_eq!(
            profiles(s),
            if demo_only {
                vec!["demo".to_owned()]
            } else {
                vec![]
            },
            "{name}: profiles"
        );
        // depends_on names real services.
        let deps: Vec<String> = match &s["depends_on"] {
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Value::Object(o) => o.keys().cloned().collect(),
            _ => vec![],
        };
        for d in deps {
            assert!(
                services.contains_key(&d),
                "{name} depends on unknown service {d}"
            );
        }
    }

    // The fake upstream: the image's second binary, listening where the demo config points.
    let mock = &services["mock-upstream"];
    let entry = strings(&mock["entrypoint"]);
    assert_eq!(entry[0], "mock-upstream");
    let listen = entry
        .iter()
        .skip_while(|a| *a != "--listen")
        .nth(1)
        .expect("--listen");
    assert_eq!(port_of(listen), 9000);
    let health = strings(&mock["healthcheck"]["test"]);
    assert!(
        health.iter().any(|a| a.contains(":9000/")),
        "mock-upstream healthcheck {health:?}"
    );

    // Both gateways run the same image with a config from deploy/compose/.
    for name in ["tollgate", "tollgate-demo"] {
        let s = &services[name];
        let cfg = gateway_config_mount(s).unwrap_or_else(|| panic!("{name} mounts no config"));
        assert!(cfg.starts_with("deploy/compose/"), "{name}: {cfg}");
        // Every ${VAR} of the config is passed to the container.
        let env = s["environment"]
            .as_object()
            .map(|o| o.keys().cloned().collect::<BTreeSet<_>>())
            .unwrap_or_default();
        for var in env_refs(&read(&cfg)) {
            assert!(
                env.contains(&var),
                "{name}: config needs ${{{var}}}, not in its environment"
            );
        }
        assert_eq!(
            strings(&s["command"]),
            ["--config", "/etc/tollgate/tollgate.toml"]
        );
    }
    assert_eq!(
        services["tollgate"]["image"],
        services["tollgate-demo"]["image"]
    );
    assert_eq!(services["tollgate"]["image"], mock["image"]);

    // Grafana: provisioning and dashboards where its provisioning file says.
    let grafana = mounts(&services["grafana"]);
    assert!(grafana.contains(&(
        "./deploy/grafana/provisioning".into(),
        "/etc/grafana/provisioning".into()
    )));
    let dash_dir = grafana
        .iter()
        .find(|(s, _)| s == "./deploy/grafana/dashboards")
        .map(|(_, t)| t.clone())
        .expect("grafana mounts no dashboards");
    let providers = yaml("deploy/grafana/provisioning/dashboards/tollgate.yml");
    assert_eq!(str_at(&providers, "/providers/0/options/path"), dash_dir);
    let home = str_at(
        &services["grafana"],
        "/environment/GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH",
    );
    let home_file = home
        .strip_prefix(&format!("{dash_dir}/"))
        .expect("home dashboard in the mounted dir");
    assert!(root()
        .join("deploy/grafana/dashboards")
        .join(home_file)
        .is_file());

    // Prometheus: its config and every rule file mounted side by side.
    let prom = &services["prometheus"];
    let config_flag = strings(&prom["command"])
        .into_iter()
        .find_map(|a| a.strip_prefix("--config.file=").map(str::to_owned))
        .expect("--config.file");
    let prom_mounts = mounts(prom);
    let mounted = |target: &str| {
        prom_mounts
            .iter()
            .find(|(_, t)| t == target)
            .map(|(s, _)| s.clone())
    };
    assert_eq!(
        mounted(&config_flag).as_deref(),
        Some("./deploy/prometheus/prometheus.yml")
    );
    let dir = config_flag.rsplit_once('/').unwrap().0;
    for rule in strings(&yaml("deploy/prometheus/prometheus.yml")["rule_files"]) {
        assert_eq!(
            mounted(&format!("{dir}/{rule}")),
            Some(format!("./deploy/prometheus/{rule}")),
            "rule file {rule} is not mounted beside the config"
        );
    }
}

/// The root-relative config file a gateway service mounts at /etc/tollgate/tollgate.toml.
fn gateway_config_mount(service: &Value) -> Option<String> {
    mounts(service)
        .into_iter()
        .find(|(_, t)| t == "/etc/tollgate/tollgate.toml")
        .and_then(|(s, _)| compose_path(&s))
}

// ---------------------------------------------------------------------------------------------
// Prometheus and alerts

#[test]
fn prometheus_scrapes_every_gateway_and_loads_the_rules() {
    let p = yaml("deploy/prometheus/prometheus.yml");
    let rule_files = strings(&p["rule_files"]);
    assert_eq!(rule_files, ["alerts.yml"]);
    let job = p["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "tollgate")
        .expect("a `tollgate` scrape job");
    assert_eq!(
        job["metrics_path"].as_str().unwrap_or("/metrics"),
        "/metrics"
    );
    let interval = job["scrape_interval"]
        .as_str()
        .or(p["global"]["scrape_interval"].as_str());
    assert_eq!(interval, Some("15s"));
    // Targets: compose gateway services on the admin port.
    let sd = &job["dns_sd_configs"][0];
    assert_eq!(sd["port"], 9090);
    let c = compose();
    for name in strings(&sd["names"]) {
        let s = &c["services"][&name];
        assert!(
            gateway_config_mount(s).is_some(),
            "scrape target {name} is not a gateway service"
        );
    }
    // The `service` label the relabeling adds is one the checks allow.
    assert!(TARGET_LABELS.contains(&str_at(job, "/relabel_configs/0/target_label")));
}

fn alert_rules() -> Vec<Value> {
    let a = yaml("deploy/prometheus/alerts.yml");
    a["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

#[test]
fn alert_rules_query_only_exported_metrics_and_cover_the_failure_modes() {
    let exported = exported_metrics();
    let literals = label_literals();
    let rules = alert_rules();
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    let mut exprs = Vec::new();
    for r in &rules {
        let name = str_at(r, "/alert");
        assert!(names.insert(name.to_owned()), "alert {name} twice");
        let severity = str_at(r, "/labels/severity");
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity}"
        );
        for a in ["summary", "description"] {
            assert!(
                !str_at(r, &format!("/annotations/{a}")).trim().is_empty(),
                "{name}: empty {a}"
            );
        }
        let expr = str_at(r, "/expr");
        problems.extend(promql_problems(name, expr, &exported, &literals));
        exprs.push(expr.to_owned());
    }
    // The promtool unit tests feed series of real metrics and labels too.
    let tests = yaml("deploy/prometheus/alerts_test.yml");
    for t in tests["tests"].as_array().expect("tests") {
        for s in t["input_series"].as_array().expect("input_series") {
            let series = str_at(s, "/series");
            problems.extend(promql_problems(
                "alerts_test.yml",
                series,
                &exported,
                &literals,
            ));
        }
        for case in t["alert_rule_test"].as_array().expect("alert_rule_test") {
            let alert = str_at(case, "/alertname");
            assert!(
                names.contains(alert),
                "alerts_test.yml tests unknown alert {alert}"
            );
        }
    }
    assert_eq!(strings(&tests["rule_files"]), ["alerts.yml"]);
    assert_no_problems(&problems);
    let used = metrics_named(&exprs);
    for metric in [
        "tollgate_requests_total",
        "tollgate_retries_total",
        "tollgate_key_state",
        "tollgate_retry_budget_exhausted_total",
        "tollgate_state_backend_degraded",
        "tollgate_config_reloads_total",
        "tollgate_stream_errors_total",
    ] {
        assert!(used.contains(metric), "no alert on {metric}");
    }
    // Every alert is exercised by a promtool unit test.
    let tested: BTreeSet<String> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap().clone())
        .map(|c| str_at(&c, "/alertname").to_owned())
        .collect();
    assert_eq!(
        tested, names,
        "alerts without a unit test in alerts_test.yml"
    );
}

// ---------------------------------------------------------------------------------------------
// Grafana

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p.clone());
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter().cloned());
        }
    }
    out
}

#[test]
fn dashboard_queries_only_exported_metrics_from_the_provisioned_datasource() {
    let d = json("deploy/grafana/dashboards/tollgate.json");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(!str_at(&d, "/uid").is_empty() && !str_at(&d, "/title").is_empty());
    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let uid = str_at(&datasources, "/datasources/0/uid");
    assert_eq!(str_at(&datasources, "/datasources/0/type"), "prometheus");

    let exported = exported_metrics();
    let literals = label_literals();
    let mut problems = Vec::new();
    let mut exprs = Vec::new();
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    for p in panels(&d) {
        let title = str_at(&p, "/title").to_owned();
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "panel id twice: {title}"
        );
        let g = &p["gridPos"];
        let rect = ["x", "y", "w", "h"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        });
        assert!(rect[0] + rect[2] <= 24, "{title} is wider than the grid");
        for (other, r) in &boxes {
            let overlap = rect[0] < r[0] + r[2]
                && r[0] < rect[0] + rect[2]
                && rect[1] < r[1] + r[3]
                && r[1] < rect[1] + rect[3];
            assert!(!overlap, "panels {title} and {other} overlap");
        }
        boxes.push((title.clone(), rect));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"].as_str(),
            Some(uid),
            "{title}: datasource"
        );
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no queries");
        for t in targets {
            let ds = t
                .get("datasource")
                .map_or(uid, |ds| ds["uid"].as_str().unwrap_or(""));
            assert_eq!(ds, uid, "{title}: query datasource");
            let expr = str_at(t, "/expr");
            problems.extend(promql_problems(&title, expr, &exported, &literals));
            exprs.push(expr.to_owned());
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        for key in ["query", "definition"] {
            let query = v[key].as_str().or(v[key]["query"].as_str());
            if let Some(q) = query.and_then(variable_query_promql) {
                problems.extend(promql_problems("templating", &q, &exported, &literals));
                exprs.push(q);
            }
        }
    }
    assert_no_problems(&problems);
    let used = metrics_named(&exprs);
    for metric in [
        "tollgate_requests_total",
        "tollgate_request_duration_seconds",
        "tollgate_time_to_first_token_seconds",
        "tollgate_retries_total",
        "tollgate_fallbacks_total",
        "tollgate_key_state",
        "tollgate_rate_limited_total",
        "tollgate_tokens_total",
        "tollgate_inflight_requests",
        "tollgate_state_backend_degraded",
    ] {
        assert!(used.contains(metric), "no panel queries {metric}");
    }
    let latency = exprs
        .iter()
        .filter(|e| {
            e.contains("histogram_quantile")
                && e.contains("tollgate_request_duration_seconds_bucket")
        })
        .count();
    assert!(latency >= 3, "request latency needs p50, p95 and p99");
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

fn k8s_objects() -> Vec<(String, Value)> {
    files_under("deploy/kubernetes", &[".yaml", ".yml"])
        .into_iter()
        .flat_map(|f| yaml_docs(&f).into_iter().map(move |d| (f.clone(), d)))
        .collect()
}

fn k8s(kind: &str, name: &str) -> Value {
    k8s_objects()
        .into_iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} under deploy/kubernetes"))
}

fn is_subset(small: &Value, big: &Value) -> bool {
    small
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| big.get(k) == Some(v)))
}

/// The number a container port reference (a name or a number) resolves to.
fn container_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == *port)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port {port}"))
}

#[test]
fn kubernetes_manifests_are_complete_and_consistent() {
    let objects = k8s_objects();
    for (file, o) in &objects {
        assert!(
            o["apiVersion"].is_string() && o["kind"].is_string(),
            "{file}: apiVersion, kind"
        );
        if o["kind"] != "Kustomization" {
            assert!(o["metadata"]["name"].is_string(), "{file}: metadata.name");
        }
    }
    // kustomization lists every manifest but itself and the example Secret.
    let kust = yaml("deploy/kubernetes/kustomization.yaml");
    let resources: BTreeSet<String> = strings(&kust["resources"]).into_iter().collect();
    for r in &resources {
        assert!(
            root().join("deploy/kubernetes").join(r).is_file(),
            "kustomization lists missing {r}"
        );
    }
    for f in files_under("deploy/kubernetes", &[".yaml", ".yml"]) {
        let name = f.rsplit('/').next().unwrap();
        if name != "kustomization.yaml" && !name.contains(".example.") {
            assert!(
                resources.contains(name),
                "kustomization.yaml does not list {name}"
            );
        }
    }

    let dep = k8s("Deployment", "tollgate");
    let spec = &dep["spec"];
    assert_eq!(spec["replicas"], 2);
    let pod = &spec["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > 30,
        "terminationGracePeriodSeconds {grace} must outlast the 30s drain"
    );
    assert!(is_subset(
        &spec["selector"]["matchLabels"],
        &spec["template"]["metadata"]["labels"]
    ));
    let c = &pod["containers"][0];
    assert_eq!(
        container_port(c, &c["livenessProbe"]["httpGet"]["port"]),
        8080,
        "liveness probe port"
    );
    assert_eq!(str_at(c, "/livenessProbe/httpGet/path"), "/healthz");
    assert_eq!(
        container_port(c, &c["readinessProbe"]["httpGet"]["port"]),
        8080
    );
    assert_eq!(str_at(c, "/readinessProbe/httpGet/path"), "/readyz");
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][res].is_string(),
                "resources.{kind}.{res}"
            );
        }
    }
    let non_root = c["securityContext"]["runAsNonRoot"] == true
        || pod["securityContext"]["runAsNonRoot"] == true;
    assert!(non_root, "runAsNonRoot");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);

    // Prometheus annotations point at the metrics port.
    let ann = &spec["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    let metrics_port: u64 = str_at(ann, "/prometheus.io~1port").parse().unwrap();
    assert_eq!(container_port(c, &Value::from("metrics")), metrics_port);

    // The config: the ConfigMap's key, mounted where --config points.
    let cm = k8s("ConfigMap", "tollgate-config");
    let args = strings(&c["args"]);
    let config_path = args
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("--config");
    let (dir, file) = config_path.rsplit_once('/').unwrap();
    let vol = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .expect("config mount");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == vol["name"])
        .expect("config volume");
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);
    assert!(
        vol.get("subPath").is_none(),
        "a subPath mount never sees ConfigMap updates"
    );
    let toml = str_at(&cm, &format!("/data/{file}"));
    // Every ${VAR} of it comes from the Secret the pods read.
    let secret = k8s("Secret", "tollgate-secrets");
    let from: Vec<&str> = c["envFrom"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["secretRef"]["name"].as_str())
        .collect();
    assert_eq!(from, [str_at(&secret, "/metadata/name")]);
    let keys: BTreeSet<String> = secret["stringData"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let refs = env_refs(toml);
    assert!(
        refs.contains("OPENAI_API_KEY") && refs.contains("TOLLGATE_CLIENT_KEY"),
        "{refs:?}"
    );
    for var in refs {
        assert!(
            keys.contains(&var),
            "the config needs ${{{var}}}, not a key of the Secret"
        );
    }
    assert!(
        toml.contains("redis://redis:6379"),
        "the config should use the `redis` Service"
    );

    // Services select the pods and expose the ports.
    let svc = k8s("Service", "tollgate");
    assert!(is_subset(
        &svc["spec"]["selector"],
        &spec["template"]["metadata"]["labels"]
    ));
    let svc_ports: BTreeSet<u64> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| container_port(c, &p["targetPort"]))
        .collect();
    assert_eq!(svc_ports, BTreeSet::from([8080, 9090]));
    let pdb = k8s("PodDisruptionBudget", "tollgate");
    assert!(is_subset(
        &pdb["spec"]["selector"]["matchLabels"],
        &spec["template"]["metadata"]["labels"]
    ));
    let redis = k8s("Deployment", "redis");
    assert_eq!(redis["spec"]["replicas"], 1);
    let redis_svc = k8s("Service", "redis");
    assert!(is_subset(
        &redis_svc["spec"]["selector"],
        &redis["spec"]["template"]["metadata"]["labels"]
    ));
    assert_eq!(redis_svc["spec"]["ports"][0]["port"], 6379);
}

// ---------------------------------------------------------------------------------------------
// Gateway configs, through the real binary

/// Runs `tollgate check-config` on `path` with the image's ENV and a dummy value for each
/// `${VAR}`, and nothing else from this environment; returns the resolved config it prints.
fn check_config(what: &str, path: &Path, text: &str) -> Value {
    let mut cmd = Command::new(tollgate_e2e::binary());
    cmd.arg("check-config").arg(path).env_clear();
    for (k, v) in image_env() {
        cmd.env(k, v);
    }
    for var in env_refs(text) {
        cmd.env(&var, format!("dummy-{}", var.to_ascii_lowercase()));
    }
    let out = cmd.output().expect("run tollgate check-config");
    assert!(
        out.status.success(),
        "tollgate check-config rejects {what}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: check-config output: {e}"))
}

fn millis(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.strip_suffix("ms"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a duration: {v}"))
}

#[test]
fn every_gateway_config_passes_check_config() {
    let mut resolved = BTreeMap::new();
    let tomls = files_under("deploy", &[".toml"]);
    assert!(
        tomls.len() >= 3,
        "expected the image, compose and demo configs: {tomls:?}"
    );
    for f in &tomls {
        resolved.insert(f.clone(), check_config(f, &root().join(f), &read(f)));
    }
    let cm = k8s("ConfigMap", "tollgate-config");
    let text = str_at(&cm, "/data/tollgate.toml");
    let k8s_cfg = check_config(
        "the ConfigMap's tollgate.toml",
        &tollgate_e2e::write_config(text),
        text,
    );

    // Everything runs in the image: main port 8080 (the HEALTHCHECK's), metrics on 9090.
    let configmap = "the ConfigMap".to_owned();
    for (what, cfg) in resolved.iter().chain([(&configmap, &k8s_cfg)]) {
        assert_eq!(
            port_of(str_at(cfg, "/server/listen")),
            8080,
            "{what}: listen"
        );
        assert_eq!(
            port_of(str_at(cfg, "/server/admin_listen")),
            9090,
            "{what}: admin_listen"
        );
        assert!(!cfg["providers"].as_array().unwrap().is_empty());
    }

    // Compose gateways share Redis; the demo routes only to the fake upstream.
    let c = compose();
    for name in ["tollgate", "tollgate-demo"] {
        let file = gateway_config_mount(&c["services"][name]).unwrap();
        let cfg = &resolved[&file];
        assert_eq!(str_at(cfg, "/state/backend"), "redis", "{file}");
        assert!(
            read(&file).contains("redis://redis:6379"),
            "{file}: redis_url should be the `redis` service"
        );
        assert!(c["services"]["redis"].is_object());
    }
    let demo = &resolved[&gateway_config_mount(&c["services"]["tollgate-demo"]).unwrap()];
    for p in demo["providers"].as_array().unwrap() {
        assert_eq!(
            str_at(p, "/base_url"),
            "http://mock-upstream:9000/v1",
            "demo provider"
        );
    }
    let live = gateway_config_mount(&c["services"]["tollgate"]).unwrap();
    assert!(
        read(&live).contains("${OPENAI_API_KEY}"),
        "{live}: the key comes from the environment"
    );

    // Open mode: the image, the compose gateway and the cluster require a client key from the
    // environment; only the demo (fake keys) opts into serving every caller without one.
    let image_config = image()
        .iter()
        .filter(|(k, _)| k == "COPY")
        .find_map(|(_, a)| {
            let parts: Vec<&str> = a.split_whitespace().collect();
            (parts.len() >= 2 && parts[parts.len() - 1] == "/etc/tollgate/tollgate.toml")
                .then(|| parts[parts.len() - 2].to_owned())
        })
        .expect("the image copies a config to /etc/tollgate/tollgate.toml");
    assert!(resolved.contains_key(&image_config), "{image_config}");
    let demo_file = gateway_config_mount(&c["services"]["tollgate-demo"]).unwrap();
    for (what, cfg) in resolved.iter().chain([(&configmap, &k8s_cfg)]) {
        let clients = cfg["clients"].as_array().unwrap();
        let open = &cfg["server"]["open"];
        if *what == demo_file {
            assert_eq!(
                open, true,
                "{what}: the demo opts into open mode explicitly"
            );
            assert!(clients.is_empty(), "{what}: clients");
        } else {
            assert_eq!(open, false, "{what}: server.open");
            assert!(!clients.is_empty(), "{what}: should require client keys");
        }
    }
    for (what, text) in [
        (image_config.as_str(), read(&image_config)),
        (live.as_str(), read(&live)),
        ("the ConfigMap", text.to_owned()),
    ] {
        assert!(
            env_refs(&text).contains("TOLLGATE_CLIENT_KEY"),
            "{what}: the client key comes from the environment"
        );
    }

    // Kubernetes: Redis, as many replicas as the Deployment, a grace period past the drain.
    assert_eq!(str_at(&k8s_cfg, "/state/backend"), "redis");
    let dep = k8s("Deployment", "tollgate");
    assert_eq!(
        k8s_cfg["state"]["replicas"], dep["spec"]["replicas"],
        "state.replicas vs Deployment replicas"
    );
    let grace_ms = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap()
        * 1000;
    assert!(
        grace_ms > millis(&k8s_cfg["server"]["drain_timeout"]) + 5000,
        "grace period vs drain_timeout + preStop"
    );
    assert!(
        !k8s_cfg["clients"].as_array().unwrap().is_empty(),
        "the cluster config should require client keys"
    );
}

// ---------------------------------------------------------------------------------------------
// promtool

#[test]
fn promtool_accepts_the_rules_and_config_and_the_rule_tests_pass() {
    let test = "promtool_accepts_the_rules_and_config_and_the_rule_tests_pass";
    let install = "Debian: apt-get install prometheus";
    if !tollgate_e2e::tool_or_skip("promtool", "TOLLGATE_REQUIRE_PROMTOOL", test, install) {
        return;
    }
    for args in [
        ["check", "rules", "deploy/prometheus/alerts.yml"],
        ["check", "config", "deploy/prometheus/prometheus.yml"],
        ["test", "rules", "deploy/prometheus/alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(root())
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every PromQL expression of the alert rules and the dashboard (panels and variables).
fn queried_exprs() -> Vec<String> {
    let mut exprs: Vec<String> = alert_rules()
        .iter()
        .map(|r| str_at(r, "/expr").to_owned())
        .collect();
    let d = json("deploy/grafana/dashboards/tollgate.json");
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(str_at(t, "/expr").to_owned());
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        for key in ["query", "definition"] {
            let query = v[key].as_str().or(v[key]["query"].as_str());
            exprs.extend(query.and_then(variable_query_promql));
        }
    }
    exprs
}

/// A fresh gateway, before any request, already exports every family the alerts and the
/// dashboard query, so panels show 0 rather than "No data" and alert ratios are 0, not empty.
#[tokio::test]
async fn every_queried_metric_is_exported_before_any_traffic() {
    let (a, b) = (tollgate_e2e::mock().await, tollgate_e2e::mock().await);
    let toml = format!(
        "{}{}[[models]]\nname = \"chat\"\ntargets = [{{ provider = \"a\" }}, {{ provider = \"b\" }}]\n[[clients]]\nname = \"team\"\nkey = \"tg-team\"\nrpm = 60\n",
        tollgate_e2e::provider("a", &a.base_url(), &["a1", "a2"], true),
        tollgate_e2e::provider("b", &b.base_url(), &["b1"], false),
    );
    let gw = tollgate_e2e::Gateway::start(&toml, &[]).await;
    let text = gw.metrics().await;
    let exported = exported_metrics();
    let mut missing = Vec::new();
    for name in metrics_named(&queried_exprs()) {
        let series = match exported[&name].histogram {
            true => format!("{name}_bucket"),
            false => name.clone(),
        };
        let present = text.lines().any(|l| {
            l.strip_prefix(series.as_str())
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        });
        if !present {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "no series before traffic: {missing:?}");
    // The series alert ratios divide by read 0, each with its known labels.
    for series in [
        // (labels in the exposition's order: sorted by name)
        "tollgate_requests_total{endpoint=\"chat_completions\",model=\"chat\",outcome=\"failed\",status_class=\"5xx\"} 0",
        "tollgate_retries_total{provider=\"a\",reason=\"transient\"} 0",
        "tollgate_fallbacks_total{from=\"a\",reason=\"rate_limited\",to=\"b\"} 0",
        "tollgate_stream_errors_total{provider=\"b\",reason=\"broken\"} 0",
        "tollgate_rate_limited_total{dimension=\"requests\",scope=\"client\"} 0",
        "tollgate_config_reloads_total{result=\"failure\"} 0",
    ] {
        assert!(text.contains(series), "{series} missing");
    }
}
