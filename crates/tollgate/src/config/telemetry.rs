//! `[telemetry]`: OpenTelemetry traces over OTLP, and how the standard `OTEL_*` variables
//! combine with it. The rule is one: **a variable wins over the file**, setting by setting
//! (an operator's environment, such as the OpenTelemetry Operator's injected variables, is the
//! last word on a deployment), and the file gives what no variable sets. Traces are off unless
//! an endpoint is set by either; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turns
//! them off whatever the file says. A variable with a value the gateway cannot use is ignored
//! with a warning (as the OpenTelemetry spec asks), the next source then applies.

use super::settings::Problems;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[telemetry]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's base URL (`http://collector:4318` for `http/protobuf`, whose traces go
    /// to `/v1/traces` under it; `http://collector:4317` for `grpc`). None: no traces, unless
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set.
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (the default) or `grpc`.
    pub protocol: Option<String>,
    /// The resource's `service.name` (default `tollgate`).
    pub service_name: Option<String>,
    /// The share of new traces recorded, 0.0 to 1.0 (default 1.0); a client's `traceparent`
    /// decides for the traces it continues.
    pub sample_ratio: Option<f64>,
    /// More resource attributes (`deployment.environment.name = "prod"`, …).
    pub resource_attributes: BTreeMap<String, String>,
}

/// How traces are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies (`POST {endpoint}/v1/traces`).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/gRPC (plaintext HTTP/2).
    #[serde(rename = "grpc")]
    Grpc,
}

impl Protocol {
    fn parse(value: &str) -> Option<Protocol> {
        match value.trim() {
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            "grpc" => Some(Protocol::Grpc),
            _ => None,
        }
    }
}

/// Validated `[telemetry]`: the file's part only; [`TelemetrySettings::resolve`] adds the
/// environment's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TelemetrySettings {
    /// Collector base URL.
    pub otlp_endpoint: Option<String>,
    /// Protocol.
    pub protocol: Option<Protocol>,
    /// `service.name`.
    pub service_name: Option<String>,
    /// Share of new traces recorded.
    pub sample_ratio: Option<f64>,
    /// More resource attributes.
    pub resource_attributes: BTreeMap<String, String>,
}

/// Which traces are recorded: a ratio of new traces, and whether a parent's decision (the
/// client's sampled flag) is followed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sampling {
    /// Follow the parent's sampled flag when there is a parent.
    pub parent_based: bool,
    /// Share of traces (without a parent, when `parent_based`) recorded: 1.0 all, 0.0 none.
    pub ratio: f64,
}

/// The exporter the gateway runs: what `[telemetry]` and the `OTEL_*` variables resolve to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Otlp {
    /// Where traces go: the full `/v1/traces` URL for HTTP, the collector's address for gRPC.
    pub endpoint: String,
    /// How.
    pub protocol: Protocol,
    /// `service.name`.
    pub service_name: String,
    /// Which traces are recorded.
    pub sampling: Sampling,
    /// Resource attributes besides `service.name`, by key.
    pub resource: BTreeMap<String, String>,
}

/// What the resolution found: the exporter (`None`: traces off) and what it ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    /// The exporter to run, if any.
    pub otlp: Option<Otlp>,
    /// Variables ignored, each with why (logged once the logger runs).
    pub warnings: Vec<String>,
}

impl TelemetryConfig {
    pub(super) fn validate(&self, p: &mut Problems) -> TelemetrySettings {
        let otlp_endpoint = self
            .otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty());
        if let Some(e) = otlp_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://"))
                || e.parse::<http::Uri>().is_err()
            {
                p.push(
                    "telemetry.otlp_endpoint",
                    "is not an http:// or https:// URL",
                );
            }
        }
        let protocol = self.protocol.as_deref().and_then(|v| {
            let parsed = Protocol::parse(v);
            if parsed.is_none() {
                p.push("telemetry.protocol", "is not one of http/protobuf, grpc");
            }
            parsed
        });
        if let Some(r) = self.sample_ratio.filter(|r| !(0.0..=1.0).contains(r)) {
            p.push(
                "telemetry.sample_ratio",
                format_args!("{r} is not between 0.0 and 1.0"),
            );
        }
        TelemetrySettings {
            otlp_endpoint: otlp_endpoint.map(str::to_owned),
            protocol,
            service_name: self.service_name.clone().filter(|s| !s.is_empty()),
            sample_ratio: self.sample_ratio,
            resource_attributes: self.resource_attributes.clone(),
        }
    }
}

impl TelemetrySettings {
    /// Combines the file's settings with the `OTEL_*` variables `env` reads (variables win).
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Resolved {
        let mut warnings = Vec::new();
        // Unset and empty are the same, as the spec asks.
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let off = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| {
                let v = v.trim();
                if v != "otlp" && v != "none" {
                    warnings.push(format!(
                        "OTEL_TRACES_EXPORTER={v} ignored: only otlp and none are supported"
                    ));
                }
                v == "none"
            });
        if off {
            return Resolved {
                otlp: None,
                warnings,
            };
        }
        let mut protocol = None;
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let (Some(v), None) = (var(name), protocol) {
                protocol = Protocol::parse(&v);
                if protocol.is_none() {
                    warnings.push(format!(
                        "{name}={v} ignored: only http/protobuf and grpc are supported"
                    ));
                }
            }
        }
        let protocol = protocol.or(self.protocol).unwrap_or(Protocol::HttpProtobuf);
        let endpoint = match var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            // The signal's own endpoint is used as it is.
            Some(e) => Some(e.trim().to_owned()),
            None => var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .or_else(|| self.otlp_endpoint.clone())
                .map(|base| traces_url(base.trim(), protocol)),
        };
        let Some(endpoint) = endpoint else {
            return Resolved {
                otlp: None,
                warnings,
            };
        };
        let mut resource = self.resource_attributes.clone();
        let file_named = resource.remove("service.name");
        let mut env_named = None;
        if let Some(list) = var("OTEL_RESOURCE_ATTRIBUTES") {
            for (k, v) in resource_attributes(&list, &mut warnings) {
                if k == "service.name" {
                    env_named = Some(v);
                } else {
                    resource.insert(k, v);
                }
            }
        }
        let service_name = var("OTEL_SERVICE_NAME")
            .or(env_named)
            .or_else(|| self.service_name.clone())
            .or(file_named)
            .unwrap_or_else(|| "tollgate".to_owned());
        let file_sampling = Sampling {
            parent_based: true,
            ratio: self.sample_ratio.unwrap_or(1.0),
        };
        let sampling = var("OTEL_TRACES_SAMPLER")
            .and_then(|s| sampler(&s, var("OTEL_TRACES_SAMPLER_ARG"), &mut warnings))
            .unwrap_or(file_sampling);
        Resolved {
            otlp: Some(Otlp {
                endpoint,
                protocol,
                service_name,
                sampling,
                resource,
            }),
            warnings,
        }
    }
}

/// The traces URL under a base endpoint: `{base}/v1/traces` for HTTP; gRPC's is the base.
fn traces_url(base: &str, protocol: Protocol) -> String {
    match protocol {
        Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
        Protocol::Grpc => base.to_owned(),
    }
}

/// `OTEL_TRACES_SAMPLER` (with its `_ARG`), `None` when it is not one the gateway knows.
fn sampler(name: &str, arg: Option<String>, warnings: &mut Vec<String>) -> Option<Sampling> {
    let mut ratio = || {
        let parsed = arg.as_deref().map(|a| a.trim().parse::<f64>());
        match parsed {
            Some(Ok(r)) if (0.0..=1.0).contains(&r) => r,
            None => 1.0,
            Some(_) => {
                warnings
                    .push("OTEL_TRACES_SAMPLER_ARG ignored: not a ratio between 0 and 1".into());
                1.0
            }
        }
    };
    let (parent_based, ratio) = match name.trim() {
        "always_on" => (false, 1.0),
        "always_off" => (false, 0.0),
        "traceidratio" => (false, ratio()),
        "parentbased_always_on" => (true, 1.0),
        "parentbased_always_off" => (true, 0.0),
        "parentbased_traceidratio" => (true, ratio()),
        other => {
            warnings.push(format!(
                "OTEL_TRACES_SAMPLER={other} ignored: not a sampler the gateway knows"
            ));
            return None;
        }
    };
    Some(Sampling {
        parent_based,
        ratio,
    })
}

/// `key1=value1,key2=value2` with percent-encoded values (the W3C Baggage octets).
fn resource_attributes(list: &str, warnings: &mut Vec<String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.push((k.trim().to_owned(), percent_decode(v.trim())));
            }
            _ => {
                warnings.push("OTEL_RESOURCE_ATTRIBUTES: an entry without key=value ignored".into())
            }
        }
    }
    out
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
