//! Every metric the gateway exports, in one owned registry (tests read their own).
//! Names are `tollgate_<area>_<thing>_<unit>`; labels come only from closed sets: configured
//! provider, model and key names, enum labels and status classes.

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets for LLM calls: milliseconds to ten minutes.
const LATENCY_BUCKETS: [f64; 17] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

/// The gateway's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `tollgate_requests_total{model, endpoint, status_class, outcome}`.
    pub requests: IntCounterVec,
    /// `tollgate_request_duration_seconds{endpoint}`.
    pub request_duration: HistogramVec,
    /// `tollgate_time_to_first_token_seconds{model}`.
    pub time_to_first_token: HistogramVec,
    /// `tollgate_inflight_requests`.
    pub inflight: IntGauge,
    /// `tollgate_upstream_attempts_total{provider, key, outcome_kind}`.
    pub upstream_attempts: IntCounterVec,
    /// `tollgate_upstream_duration_seconds{provider}`.
    pub upstream_duration: HistogramVec,
    /// `tollgate_retries_total{provider, reason}`.
    pub retries: IntCounterVec,
    /// `tollgate_fallbacks_total{from, to, reason}`.
    pub fallbacks: IntCounterVec,
    /// `tollgate_retry_budget_exhausted_total`.
    pub budget_exhausted: IntCounter,
    /// `tollgate_key_state{provider, key, state}`: 1 for the key's current state.
    pub key_state: IntGaugeVec,
    /// `tollgate_key_cooldown_seconds_total{provider, key}`: cooldown time imposed by 429s.
    pub key_cooldowns: CounterVec,
    /// `tollgate_key_ejections_total{provider, key}`: keys taken out for failing transiently.
    pub key_ejections: IntCounterVec,
    /// `tollgate_stream_errors_total{provider, reason}`: streams cut after their first byte.
    pub stream_errors: IntCounterVec,
    /// `tollgate_rate_limited_total{scope, dimension}`: requests refused or delayed by a bucket.
    pub rate_limited: IntCounterVec,
    /// `tollgate_ratelimit_wait_seconds`: time spent waiting for an upstream bucket to refill.
    pub ratelimit_wait: Histogram,
    /// `tollgate_tokens_total{provider, model, kind}`: real usage reported by upstreams.
    pub tokens: IntCounterVec,
    /// `tollgate_state_backend_degraded`: 1 while Redis is unreachable and limits are local.
    pub state_degraded: IntGauge,
    /// `tollgate_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `tollgate_build_info{version}`.
    pub build_info: IntGaugeVec,
    /// `tollgate_start_time_seconds`.
    pub start_time: IntGauge,
    /// `tollgate_uptime_seconds`, refreshed on each scrape.
    pub uptime: IntGauge,
}

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let inflight = IntGauge::new("tollgate_inflight_requests", "Requests being served now.")?;
        r.register(Box::new(inflight.clone()))?;
        let budget_exhausted = IntCounter::new(
            "tollgate_retry_budget_exhausted_total",
            "Retries refused because the retry budget was spent.",
        )?;
        r.register(Box::new(budget_exhausted.clone()))?;
        let start_time = IntGauge::new(
            "tollgate_start_time_seconds",
            "Unix time the gateway started.",
        )?;
        r.register(Box::new(start_time.clone()))?;
        let uptime = IntGauge::new(
            "tollgate_uptime_seconds",
            "Seconds since the gateway started.",
        )?;
        r.register(Box::new(uptime.clone()))?;
        let state_degraded = IntGauge::new(
            "tollgate_state_backend_degraded",
            "1 while the shared state backend is unreachable.",
        )?;
        r.register(Box::new(state_degraded.clone()))?;
        let ratelimit_wait = Histogram::with_opts(
            HistogramOpts::new(
                "tollgate_ratelimit_wait_seconds",
                "Time waited for an upstream key's bucket.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        r.register(Box::new(ratelimit_wait.clone()))?;
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let m = Metrics {
            requests: counter(
                &r,
                "tollgate_requests_total",
                "Client requests by outcome.",
                &["model", "endpoint", "status_class", "outcome"],
            )?,
            request_duration: histogram(
                &r,
                "tollgate_request_duration_seconds",
                "Time to the response head.",
                &["endpoint"],
            )?,
            time_to_first_token: histogram(
                &r,
                "tollgate_time_to_first_token_seconds",
                "Time to the first stream event.",
                &["model"],
            )?,
            inflight,
            upstream_attempts: counter(
                &r,
                "tollgate_upstream_attempts_total",
                "Upstream attempts by outcome kind.",
                &["provider", "key", "outcome_kind"],
            )?,
            upstream_duration: histogram(
                &r,
                "tollgate_upstream_duration_seconds",
                "Time to an upstream's response head.",
                &["provider"],
            )?,
            retries: counter(
                &r,
                "tollgate_retries_total",
                "Retries by the reason of the failed attempt.",
                &["provider", "reason"],
            )?,
            fallbacks: counter(
                &r,
                "tollgate_fallbacks_total",
                "Moves to the next target of a chain.",
                &["from", "to", "reason"],
            )?,
            budget_exhausted,
            key_state: gauge_vec(
                &r,
                "tollgate_key_state",
                "1 for each key's current health state.",
                &["provider", "key", "state"],
            )?,
            key_cooldowns: {
                let c = CounterVec::new(
                    Opts::new(
                        "tollgate_key_cooldown_seconds_total",
                        "Seconds of cooldown imposed on a key by rate-limit answers.",
                    ),
                    &["provider", "key"],
                )?;
                r.register(Box::new(c.clone()))?;
                c
            },
            key_ejections: counter(
                &r,
                "tollgate_key_ejections_total",
                "Keys ejected for repeated transient failures (outlier detection).",
                &["provider", "key"],
            )?,
            stream_errors: counter(
                &r,
                "tollgate_stream_errors_total",
                "Streams that failed after their first byte.",
                &["provider", "reason"],
            )?,
            rate_limited: counter(
                &r,
                "tollgate_rate_limited_total",
                "Requests refused or delayed by a bucket.",
                &["scope", "dimension"],
            )?,
            ratelimit_wait,
            tokens: counter(
                &r,
                "tollgate_tokens_total",
                "Tokens used, as reported by upstreams.",
                &["provider", "model", "kind"],
            )?,
            state_degraded,
            config_reloads: counter(
                &r,
                "tollgate_config_reloads_total",
                "Config reloads by result.",
                &["result"],
            )?,
            build_info: gauge_vec(
                &r,
                "tollgate_build_info",
                "Build information.",
                &["version"],
            )?,
            start_time,
            uptime,
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.start_time.set(unix_now());
        Ok(m)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.uptime.set(unix_now() - self.start_time.get());
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric data, which registration rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// A time-to-first-token histogram handle for one model label.
    pub fn ttft(&self, model: &str) -> Histogram {
        self.time_to_first_token.with_label_values(&[model])
    }
}

/// `2xx`, `4xx`, `5xx`… for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
