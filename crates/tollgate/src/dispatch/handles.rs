//! Metric handles resolved once per dispatcher (per config), so the request path increments
//! counters without hashing label strings: labels come from closed sets (configured providers,
//! keys, models, outcome kinds), so every series can be created up front.

use crate::config::Settings;
use crate::endpoint::Endpoint;
use crate::metrics::Metrics;
use crate::provider::classify::Kind;
use crate::stream::StreamEnd;
use prometheus::IntCounter;

/// Pre-resolved series.
#[derive(Debug)]
pub(crate) struct Handles {
    /// `[provider][model or "other"][prompt, completion]`.
    tokens: Vec<Vec<[IntCounter; 3]>>,
    /// `[provider][key][kind]`.
    attempts: Vec<Vec<Vec<IntCounter>>>,
}

/// Why a request leaves a target for the next one, besides an outcome kind's label.
const FALLBACK_ENDS: [&str; 7] = [
    "no_key",
    "provider_down",
    "budget_spent",
    "wait_too_long",
    "timeout",
    "client_error",
    "context_window",
];

/// The endpoints whose requests name a model (the rest are counted under `other`).
const MODEL_ENDPOINTS: [Endpoint; 4] = [
    Endpoint::ChatCompletions,
    Endpoint::Responses,
    Endpoint::Completions,
    Endpoint::Embeddings,
];

/// Creates every series whose labels are known from the config at 0, so dashboards and alert
/// ratios read 0 rather than nothing before the first event of each kind (the Prometheus
/// instrumentation guide's advice). Runs at start and on every reload.
fn prime(settings: &Settings, metrics: &Metrics, models: &[&str]) {
    let kinds = Kind::ALL.iter().map(|k| k.label());
    for p in &settings.providers {
        for reason in kinds.clone().filter(|k| *k != "success").chain(["unknown"]) {
            metrics.retries.with_label_values(&[&p.name, reason]);
        }
        for end in StreamEnd::FAILURES {
            metrics
                .stream_errors
                .with_label_values(&[&p.name, end.label()]);
        }
    }
    for m in &settings.models {
        for (i, from) in m.targets.iter().enumerate() {
            for to in &m.targets[i + 1..] {
                let (from, to) = (
                    &settings.providers[from.provider].name,
                    &settings.providers[to.provider].name,
                );
                for reason in kinds
                    .clone()
                    .filter(|k| *k != "success")
                    .chain(FALLBACK_ENDS)
                {
                    metrics.fallbacks.with_label_values(&[from, to, reason]);
                }
            }
        }
    }
    for scope in ["client", "upstream"] {
        for dimension in ["requests", "tokens"] {
            metrics.rate_limited.with_label_values(&[scope, dimension]);
        }
    }
    for model in models {
        metrics.time_to_first_token.with_label_values(&[model]);
        for endpoint in MODEL_ENDPOINTS {
            for (class, outcome) in [
                ("2xx", "first_try"),
                ("2xx", "after_retry"),
                ("2xx", "after_fallback"),
                ("4xx", "failed"),
                ("5xx", "failed"),
                ("2xx", "client_cancelled"),
                ("4xx", "client_cancelled"),
            ] {
                metrics
                    .requests
                    .with_label_values(&[model, endpoint.label(), class, outcome]);
            }
        }
    }
    for endpoint in Endpoint::ALL {
        metrics
            .request_duration
            .with_label_values(&[endpoint.label()]);
    }
    for result in ["success", "failure"] {
        metrics.config_reloads.with_label_values(&[result]);
    }
}

impl Handles {
    pub(crate) fn new(settings: &Settings, metrics: &Metrics) -> Self {
        // The configured models' labels, and `other` for pass-through ones.
        let models: Vec<&str> = settings
            .models
            .iter()
            .map(|m| m.name.as_str())
            .chain(["other"])
            .collect();
        prime(settings, metrics, &models);
        let tokens = settings
            .providers
            .iter()
            .map(|p| {
                models
                    .iter()
                    .map(|m| {
                        ["prompt", "completion", "cached"].map(|kind| {
                            metrics
                                .tokens
                                .with_label_values(&[p.name.as_str(), m, kind])
                        })
                    })
                    .collect()
            })
            .collect();
        let attempts = settings
            .providers
            .iter()
            .map(|p| {
                p.keys
                    .iter()
                    .map(|k| {
                        Kind::ALL
                            .iter()
                            .map(|kind| {
                                metrics.upstream_attempts.with_label_values(&[
                                    &p.name,
                                    &k.id,
                                    kind.label(),
                                ])
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Handles { tokens, attempts }
    }

    /// Token counters of a provider and a model index (`None`: a pass-through model).
    pub(super) fn tokens(&self, provider: usize, model: Option<usize>) -> &[IntCounter; 3] {
        let row = &self.tokens[provider];
        let idx = model.unwrap_or(row.len() - 1).min(row.len() - 1);
        &row[idx]
    }

    /// The attempt counter of one key and outcome kind.
    pub(super) fn attempt(&self, provider: usize, key: usize, kind: Kind) -> &IntCounter {
        let pos = Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        &self.attempts[provider][key][pos]
    }
}
