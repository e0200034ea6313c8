//! The trace exporter: OTLP over HTTP/protobuf (the hyper client already in the tree, with
//! rustls) or gRPC (tonic, plaintext), behind a batch span processor whose task runs on the
//! tokio runtime. A request only queues its finished spans (a full queue drops them); the
//! export happens in that task. A collector that cannot be reached costs one warning a minute,
//! with the count of batches and spans lost since the last one.

use crate::config::{Otlp, Protocol, Sampling};
use opentelemetry::KeyValue;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::runtime;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Longest wait for the collector's answer to one export (the variable
/// `OTEL_EXPORTER_OTLP_TIMEOUT` sets the exporter's own).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one warning this often about a collector that cannot be reached.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The tracer provider for `otlp`; must be built inside the tokio runtime.
pub(super) fn provider(otlp: &Otlp) -> Result<SdkTracerProvider, String> {
    let exporter = match otlp.protocol {
        Protocol::HttpProtobuf => {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
                .map_err(|e| e.to_string())?
                .https_or_http()
                .enable_http1()
                .build();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(HyperClient::new(https, HTTP_TIMEOUT, None))
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(otlp.endpoint.clone())
                .build()
        }
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(otlp.endpoint.clone())
            .build(),
    }
    .map_err(|e| e.to_string())?;
    let exporter = Warned {
        inner: exporter,
        endpoint: otlp.endpoint.clone(),
        failures: Mutex::new(Failures::default()),
    };
    let processor = BatchSpanProcessor::builder(exporter, runtime::Tokio).build();
    let resource = Resource::builder_empty()
        .with_service_name(otlp.service_name.clone())
        .with_attributes(
            otlp.resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler(otlp.sampling))
        .with_resource(resource)
        .build())
}

fn sampler(s: Sampling) -> Sampler {
    let root = if s.ratio >= 1.0 {
        Sampler::AlwaysOn
    } else if s.ratio <= 0.0 {
        Sampler::AlwaysOff
    } else {
        Sampler::TraceIdRatioBased(s.ratio)
    };
    match s.parent_based {
        true => Sampler::ParentBased(Box::new(root)),
        false => root,
    }
}

/// An exporter that reports its failures at most once per [`WARN_EVERY`].
#[derive(Debug)]
struct Warned<E> {
    inner: E,
    endpoint: String,
    failures: Mutex<Failures>,
}

/// Failed exports since the last warning.
#[derive(Debug, Default)]
struct Failures {
    warned: Option<Instant>,
    batches: u64,
    spans: u64,
}

impl Failures {
    /// Counts a failed export of `spans` spans at `now`; the batches and spans lost since the
    /// last warning when one is due now (the first failure, then one a [`WARN_EVERY`]).
    fn note(&mut self, spans: u64, now: Instant) -> Option<(u64, u64)> {
        self.batches += 1;
        self.spans += spans;
        let due = self
            .warned
            .is_none_or(|at| now.saturating_duration_since(at) >= WARN_EVERY);
        if !due {
            return None;
        }
        self.warned = Some(now);
        let lost = (self.batches, self.spans);
        (self.batches, self.spans) = (0, 0);
        Some(lost)
    }
}

impl<E: SpanExporter> SpanExporter for Warned<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        if let Err(error) = &result {
            let due = self
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .note(spans, Instant::now());
            if let Some((batches, spans)) = due {
                tracing::warn!(endpoint = self.endpoint, %error, batches, spans, "traces not exported: the collector cannot be reached (next warning in a minute at the soonest)");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_collector_that_is_down_warns_once_a_minute_with_what_was_lost() {
        let mut f = Failures::default();
        let start = Instant::now();
        assert_eq!(f.note(10, start), Some((1, 10)), "the first failure warns");
        for i in 1..=59 {
            assert_eq!(f.note(5, start + Duration::from_secs(i)), None);
        }
        assert_eq!(
            f.note(5, start + WARN_EVERY),
            Some((60, 300)),
            "a minute later: every batch since"
        );
        assert_eq!(f.note(1, start + WARN_EVERY + Duration::from_secs(1)), None);
    }

    #[test]
    fn sampling_maps_to_the_sdk_samplers() {
        let on = Sampling {
            parent_based: false,
            ratio: 1.0,
        };
        assert!(matches!(sampler(on), Sampler::AlwaysOn));
        assert!(matches!(
            sampler(Sampling { ratio: 0.0, ..on }),
            Sampler::AlwaysOff
        ));
        assert!(matches!(
            sampler(Sampling {
                parent_based: true,
                ratio: 0.5
            }),
            Sampler::ParentBased(_)
        ));
    }
}
