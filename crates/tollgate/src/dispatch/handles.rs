//! Metric handles resolved once per dispatcher (per config), so the request path increments
//! counters without hashing label strings: labels come from closed sets (configured providers,
//! keys, models, outcome kinds), so every series can be created up front.

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::provider::classify::Kind;
use prometheus::IntCounter;

/// Pre-resolved series.
#[derive(Debug)]
pub(crate) struct Handles {
    /// `[provider][model or "other"][prompt, completion]`.
    tokens: Vec<Vec<[IntCounter; 3]>>,
    /// `[provider][key][kind]`.
    attempts: Vec<Vec<Vec<IntCounter>>>,
}

impl Handles {
    pub(crate) fn new(settings: &Settings, metrics: &Metrics) -> Self {
        let models: Vec<&str> = settings
            .models
            .iter()
            .map(|m| m.name.as_str())
            .chain(["other"])
            .collect();
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
    pub(super) fn tokens(&self, provider: usize, model: Option<usize>) -> [IntCounter; 3] {
        let row = &self.tokens[provider];
        let idx = model.unwrap_or(row.len() - 1).min(row.len() - 1);
        row[idx].clone()
    }

    /// The attempt counter of one key and outcome kind.
    pub(super) fn attempt(&self, provider: usize, key: usize, kind: Kind) -> &IntCounter {
        let pos = Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        &self.attempts[provider][key][pos]
    }
}
