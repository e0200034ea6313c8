//! The soak's result: totals, amplification, latency, RSS over time, per model and kind, per key,
//! the gateway's own counts, and every failure cause with a sample; as JSON and as text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use super::load::Tally;
use super::scenario::KEYS;
use crate::load::histogram;
use crate::procs::BoxError;

/// The gateway's resident memory over the run, KiB.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rss {
    /// After `/readyz`, before any load.
    pub(crate) start: u64,
    /// Half way through the load.
    pub(crate) middle: u64,
    /// After the last request.
    pub(crate) end: u64,
    /// `VmHWM` at the end (at least every sample above: the kernel updates it lazily).
    pub(crate) peak: u64,
}

/// Everything the report is made of.
pub(crate) struct Inputs<'a> {
    /// Client-side tallies.
    pub(crate) tally: &'a Tally,
    /// Attempts per key as the mock counted them, in `KEYS` order.
    pub(crate) key_attempts: &'a [u64],
    /// The gateway's `/metrics` text at the end.
    pub(crate) metrics: &'a str,
    /// Gateway memory.
    pub(crate) rss: Rss,
    /// Length of the load, seconds.
    pub(crate) seconds: f64,
    /// Concurrent loops.
    pub(crate) concurrency: usize,
    /// Highest amplification that passes.
    pub(crate) max_amplification: f64,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Sums of one metric's series in a Prometheus text exposition, by the value of `label`
/// (all under "" when `label` is empty).
pub(crate) fn metric_by(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let needle = format!("{label}=\"");
        let key = match rest.find(&needle).filter(|_| !label.is_empty()) {
            Some(at) => rest[at + needle.len()..]
                .split('"')
                .next()
                .unwrap_or_default()
                .to_owned(),
            None => String::new(),
        };
        *out.entry(key).or_default() += value;
    }
    out
}

/// The whole result as JSON (see `describe` for the text).
pub(crate) fn summarize(inputs: &Inputs<'_>) -> Result<Value, BoxError> {
    let mut all = histogram()?;
    let (mut requests, mut ok, mut header_attempts) = (0, 0, 0);
    let mut classes = Vec::new();
    let mut failures = Vec::new();
    for ((model, stream), class) in inputs.tally {
        all.add(&class.latency)?;
        requests += class.requests;
        ok += class.ok;
        header_attempts += class.attempts;
        let ms = |q: f64| class.latency.value_at_quantile(q) as f64 / 1000.0;
        classes.push(json!({
            "model": model, "stream": stream, "requests": class.requests, "ok": class.ok,
            "attempts": class.attempts,
            "amplification": ratio(class.attempts as f64, class.requests as f64),
            "p50_ms": ms(0.5), "p99_ms": ms(0.99),
            "max_ms": class.latency.max() as f64 / 1000.0,
            "served_by": class.served_by,
        }));
        for (cause, failure) in &class.failures {
            failures.push(json!({
                "model": model, "stream": stream, "cause": cause, "count": failure.count,
                "sample": failure.sample,
            }));
        }
    }
    let mock_attempts: u64 = inputs.key_attempts.iter().sum();
    let keys: Vec<Value> = KEYS
        .iter()
        .zip(inputs.key_attempts)
        .map(|(k, n)| json!({ "provider": k.provider, "key": k.id, "fault": k.fault, "attempts": n }))
        .collect();
    let metric = |name: &str, label: &str| metric_by(inputs.metrics, name, label);
    // A fold from +0.0: `Sum` of no values is −0.0.
    let total = |name: &str| metric(name, "").values().fold(0.0, |a, b| a + b);
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    let amplification = ratio(mock_attempts as f64, requests as f64);
    let success_rate = ratio(ok as f64, requests as f64);
    let passed = requests > 0 && ok == requests && amplification <= inputs.max_amplification;
    Ok(json!({
        "passed": passed,
        "seconds": inputs.seconds,
        "concurrency": inputs.concurrency,
        "requests": requests,
        "ok": ok,
        "failed": requests - ok,
        "success_rate": success_rate,
        "rps": ratio(requests as f64, inputs.seconds),
        "upstream_attempts": mock_attempts,
        "amplification": amplification,
        "max_amplification": inputs.max_amplification,
        "attempts_reported_in_headers": header_attempts,
        "p50_ms": ms(0.5),
        "p90_ms": ms(0.9),
        "p99_ms": ms(0.99),
        "max_ms": all.max() as f64 / 1000.0,
        "rss_mib": {
            "start": mib(inputs.rss.start), "middle": mib(inputs.rss.middle),
            "end": mib(inputs.rss.end),
            "peak": mib(inputs.rss.peak.max(inputs.rss.start).max(inputs.rss.middle).max(inputs.rss.end)),
        },
        "gateway_metrics": {
            "upstream_attempts": total("tollgate_upstream_attempts_total"),
            "attempts_by_outcome": metric("tollgate_upstream_attempts_total", "outcome_kind"),
            "attempts_by_provider": metric("tollgate_upstream_attempts_total", "provider"),
            "retries_by_reason": metric("tollgate_retries_total", "reason"),
            "fallbacks_by_reason": metric("tollgate_fallbacks_total", "reason"),
            "key_ejections": total("tollgate_key_ejections_total"),
            "retry_budget_exhausted": total("tollgate_retry_budget_exhausted_total"),
            "stream_errors": total("tollgate_stream_errors_total"),
        },
        "classes": classes,
        "keys": keys,
        "failures": failures,
    }))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

/// The result as text for the terminal.
pub(crate) fn describe(v: &Value) -> String {
    let mut out = String::new();
    let rss = &v["rss_mib"];
    let _ = writeln!(
        out,
        "soak: {} requests in {:.0} s at concurrency {} ({:.0} req/s): {} ok, {} failed, \
         success rate {:.4}%\n\
         upstream attempts {} (mock), {} (gateway metrics), {} (x-tollgate-attempts): \
         amplification {:.4} (at most {})\n\
         latency of successes: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n\
         gateway RSS: start {:.1} MB, middle {:.1} MB, end {:.1} MB (peak {:.1} MB)",
        v["requests"],
        num(v, "seconds"),
        v["concurrency"],
        num(v, "rps"),
        v["ok"],
        v["failed"],
        num(v, "success_rate") * 100.0,
        v["upstream_attempts"],
        v["gateway_metrics"]["upstream_attempts"],
        v["attempts_reported_in_headers"],
        num(v, "amplification"),
        v["max_amplification"],
        num(v, "p50_ms"),
        num(v, "p90_ms"),
        num(v, "p99_ms"),
        num(v, "max_ms"),
        num(rss, "start"),
        num(rss, "middle"),
        num(rss, "end"),
        num(rss, "peak"),
    );
    let _ = writeln!(
        out,
        "\n| model | stream | requests | ok | attempts/req | p50 ms | p99 ms | served by |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    for c in v["classes"].as_array().into_iter().flatten() {
        let served: Vec<String> = c["served_by"]
            .as_object()
            .map(Map::iter)
            .into_iter()
            .flatten()
            .map(|(p, n)| format!("{p} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.4} | {:.2} | {:.2} | {} |",
            c["model"].as_str().unwrap_or_default(),
            c["stream"],
            c["requests"],
            c["ok"],
            num(c, "amplification"),
            num(c, "p50_ms"),
            num(c, "p99_ms"),
            served.join(", "),
        );
    }
    let _ = writeln!(out, "\n| provider | key | fault | attempts |");
    let _ = writeln!(out, "| --- | --- | --- | --- |");
    for k in v["keys"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            k["provider"].as_str().unwrap_or_default(),
            k["key"].as_str().unwrap_or_default(),
            k["fault"].as_str().unwrap_or_default(),
            k["attempts"],
        );
    }
    let gm = &v["gateway_metrics"];
    let _ = writeln!(
        out,
        "\ngateway: attempts by outcome {}; retries by reason {}; fallbacks by reason {}; \
         key ejections {}; retry budget exhausted {}; stream errors {}",
        gm["attempts_by_outcome"],
        gm["retries_by_reason"],
        gm["fallbacks_by_reason"],
        gm["key_ejections"],
        gm["retry_budget_exhausted"],
        gm["stream_errors"],
    );
    for f in v["failures"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "FAILED {} × {} (stream {}): {}\n    e.g. {}",
            f["count"],
            f["model"].as_str().unwrap_or_default(),
            f["stream"],
            f["cause"].as_str().unwrap_or_default(),
            f["sample"].as_str().unwrap_or_default(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_group_by_a_label() {
        let text = "# HELP tollgate_x_total x\n\
                    tollgate_x_total{kind=\"a\",p=\"1\"} 2\n\
                    tollgate_x_total{kind=\"b\",p=\"1\"} 3\n\
                    tollgate_x_total{kind=\"a\",p=\"2\"} 4\n\
                    tollgate_x_total_other{kind=\"a\"} 100\n\
                    tollgate_y 7\n";
        let by = metric_by(text, "tollgate_x_total", "kind");
        assert_eq!(by.get("a"), Some(&6.0));
        assert_eq!(by.get("b"), Some(&3.0));
        assert_eq!(metric_by(text, "tollgate_x_total", "").get(""), Some(&9.0));
        assert_eq!(metric_by(text, "tollgate_y", "").get(""), Some(&7.0));
        assert!(metric_by(text, "tollgate_z", "").is_empty());
    }
}
