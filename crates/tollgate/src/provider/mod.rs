//! Providers: each upstream dialect (`openai`, any OpenAI-compatible server; `azure`;
//! `anthropic`) behind one type, [`Provider`]. It owns what the dialect supports, how a request
//! is prepared (the model renamed, or the body translated: once per target) and built (URL,
//! auth header), and how an answer, an error body and a stream are read back into OpenAI's
//! shape. Outside this module nothing branches on the provider kind.
//!
//! [`classify`] is the outcome table (what an upstream answer means); [`ProviderLayer`] is the
//! gateway stack's innermost policy: one exchange with the upstream, classified.

pub mod anthropic;
pub mod classify;
mod encoding;
mod layer;
pub mod responses;

pub use layer::{is_event_stream, Exchange, ProviderLayer, ProviderService, Raw};

use crate::config::{ProviderKind, ProviderSettings, Secret};
use crate::request::{Endpoint, GatewayRequest, Target};
use crate::upstream::{BodyStream, UpstreamRequest};
use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderMap;
use std::time::SystemTime;

/// Whether a provider of `kind` can serve `endpoint`.
pub fn supports(kind: ProviderKind, endpoint: Endpoint) -> bool {
    match kind {
        ProviderKind::OpenAi => true,
        ProviderKind::Azure => azure_operation(endpoint).is_some(),
        ProviderKind::Anthropic => endpoint == Endpoint::ChatCompletions,
    }
}

fn azure_operation(endpoint: Endpoint) -> Option<&'static str> {
    match endpoint {
        Endpoint::ChatCompletions => Some("chat/completions"),
        Endpoint::Completions => Some("completions"),
        Endpoint::Embeddings => Some("embeddings"),
        _ => None,
    }
}

/// Why a request could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The provider cannot serve the endpoint.
    #[error("provider cannot serve this endpoint")]
    Unsupported,
    /// The key is not a valid header value.
    #[error("key is not a valid header value")]
    BadKey,
}

/// A request this dialect cannot express: the client gets a 400 naming `param` when no other
/// target can serve it.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// What cannot be expressed, for the client.
    pub message: String,
    /// The OpenAI parameter at fault.
    pub param: Option<String>,
}

/// One configured upstream and its dialect.
#[derive(Debug)]
pub struct Provider {
    settings: ProviderSettings,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn json_content_type(headers: &mut HeaderMap) {
    headers.remove(CONTENT_LENGTH);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
}

impl Provider {
    /// The provider of `settings`.
    pub fn new(settings: ProviderSettings) -> Self {
        Provider { settings }
    }

    /// Its configured name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Its settings.
    pub fn settings(&self) -> &ProviderSettings {
        &self.settings
    }

    /// Whether it can serve `endpoint`.
    pub fn supports(&self, endpoint: Endpoint) -> bool {
        supports(self.settings.kind, endpoint)
    }

    /// The body sent to `target`, computed once per target: unchanged when the model name is
    /// the same, the model renamed otherwise, or translated for Anthropic.
    pub fn prepare(&self, req: &GatewayRequest, target: &Target) -> Result<Bytes, Refusal> {
        prepare_body(&self.settings, req, target).map_err(|e| Refusal {
            message: e.to_string(),
            param: match e {
                anthropic::TranslateError::Unsupported { param, .. } => param,
                anthropic::TranslateError::Invalid(_) => None,
            },
        })
    }

    /// Builds the upstream request for one attempt with the target's prepared `body`.
    pub fn build(
        &self,
        req: &GatewayRequest,
        target: &Target,
        body: Bytes,
        key: &Secret,
    ) -> Result<UpstreamRequest, BuildError> {
        build(&self.settings, req, target, body, key)
    }

    /// Whether a plain (non-stream) success answer must be read whole and translated.
    pub fn translates_answers(&self) -> bool {
        self.settings.kind == ProviderKind::Anthropic
    }

    /// A whole plain success answer in OpenAI's shape (only called when
    /// [`Provider::translates_answers`]); `Err` when it does not translate.
    pub fn translate_answer(
        &self,
        req: &GatewayRequest,
        headers: &mut HeaderMap,
        body: &[u8],
    ) -> Result<Bytes, String> {
        let json = anthropic::translate_response(
            body,
            req.model.as_deref().unwrap_or_default(),
            unix_now(),
        )
        .map_err(|e| e.to_string())?;
        json_content_type(headers);
        Ok(Bytes::from(json))
    }

    /// An upstream error body (or a stream's error event) in OpenAI's error shape.
    pub fn error_body(&self, headers: &mut HeaderMap, body: &Bytes) -> Bytes {
        match self.settings.kind {
            ProviderKind::Anthropic => {
                json_content_type(headers);
                Bytes::from(anthropic::translate_error(body))
            }
            ProviderKind::OpenAi | ProviderKind::Azure => body.clone(),
        }
    }

    /// A success stream in OpenAI's event format: `prefix` (the events already read) and the
    /// rest of the body, translated as they arrive where the dialect needs it. An upstream
    /// event that grows past `max_event` before it ends fails the stream (the translator would
    /// hold it whole).
    pub fn stream(
        &self,
        req: &GatewayRequest,
        prefix: Bytes,
        body: BodyStream,
        max_event: usize,
    ) -> (Bytes, BodyStream) {
        if self.settings.kind != ProviderKind::Anthropic {
            return (prefix, body);
        }
        let mut translator = anthropic::StreamTranslator::new(
            req.model.as_deref().unwrap_or_default(),
            req.include_usage,
            unix_now(),
        );
        let mut first = Vec::new();
        translator.push(&prefix, &mut first);
        let rest = body.filter_map(move |chunk| {
            let out = chunk.and_then(|c| {
                let mut out = Vec::new();
                translator.push(&c, &mut out);
                match translator.pending() > max_event {
                    true => Err(crate::upstream::UpstreamError::Transport(format!(
                        "upstream event larger than {max_event} bytes"
                    ))),
                    false => Ok(Bytes::from(out)),
                }
            });
            // An upstream chunk that translates to nothing (a `ping`, thinking, a server-tool
            // block, an event still incomplete) still shows the upstream is alive: an SSE
            // comment goes on in its place, which resets the idle timer and every client ignores.
            std::future::ready(Some(match out {
                Ok(b) if b.is_empty() => Ok(Bytes::from_static(KEEP_ALIVE)),
                other => other,
            }))
        });
        (Bytes::from(first), Box::pin(rest))
    }
}

/// The SSE comment sent for upstream activity that translates to nothing.
const KEEP_ALIVE: &[u8] = b":\n\n";

/// The body sent to `target`, computed once per target: unchanged when the model name is the
/// same, the model renamed otherwise, or translated for Anthropic.
fn prepare_body(
    provider: &ProviderSettings,
    req: &GatewayRequest,
    target: &Target,
) -> Result<Bytes, anthropic::TranslateError> {
    let model = target.model.as_deref();
    if provider.kind == ProviderKind::Azure {
        azure_checks(req, model.or(req.model.as_deref()).unwrap_or_default())?;
    }
    match provider.kind {
        ProviderKind::Anthropic => {
            let opts = anthropic::RequestOptions {
                upstream_model: model.or(req.model.as_deref()).unwrap_or_default(),
                default_max_tokens: target.max_tokens,
                version: provider.api_version.as_deref().unwrap_or("2023-06-01"),
            };
            anthropic::translate_request(&req.body, &opts).map(Bytes::from)
        }
        ProviderKind::OpenAi | ProviderKind::Azure => Ok(match (model, req.model.as_deref()) {
            (Some(upstream), Some(asked)) if upstream != asked => {
                with_model(&req.body, upstream).unwrap_or_else(|| req.body.clone())
            }
            _ => req.body.clone(),
        }),
    }
}

/// What an Azure request may put into its upstream URL and method: a deployment name of the
/// characters Azure allows (letters, digits, `-`, `_`, `.`; not `.` or `..` alone), and the
/// method its operation takes (POST). Nothing a client sends changes the path or the query.
fn azure_checks(req: &GatewayRequest, deployment: &str) -> Result<(), anthropic::TranslateError> {
    let refuse = |message: String, param: &str| anthropic::TranslateError::Unsupported {
        message,
        param: Some(param.to_owned()),
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if deployment.is_empty()
        || deployment.len() > 64
        || matches!(deployment, "." | "..")
        || !deployment.chars().all(allowed)
    {
        return Err(refuse(
            "the model is not a valid Azure deployment name (letters, digits, `-`, `_` and `.`, at most 64)".into(),
            "model",
        ));
    }
    if req.method != http::Method::POST {
        return Err(refuse(
            format!("{} is not allowed on this endpoint", req.method),
            "method",
        ));
    }
    Ok(())
}

fn sensitive(value: &str) -> Result<HeaderValue, BuildError> {
    let mut v = HeaderValue::try_from(value).map_err(|_| BuildError::BadKey)?;
    v.set_sensitive(true);
    Ok(v)
}

fn build(
    provider: &ProviderSettings,
    req: &GatewayRequest,
    target: &Target,
    body: Bytes,
    key: &Secret,
) -> Result<UpstreamRequest, BuildError> {
    let mut headers = req.headers.clone();
    let url = match provider.kind {
        ProviderKind::OpenAi => {
            headers.insert(
                AUTHORIZATION,
                sensitive(&format!("Bearer {}", key.expose()))?,
            );
            let mut url = String::with_capacity(provider.base_url.len() + req.path.len() + 2);
            url.push_str(&provider.base_url);
            url.push('/');
            url.push_str(&req.path);
            if let Some(q) = &req.query {
                url.push('?');
                url.push_str(q);
            }
            url
        }
        ProviderKind::Azure => {
            let op = azure_operation(req.endpoint).ok_or(BuildError::Unsupported)?;
            headers.insert("api-key", sensitive(key.expose())?);
            let deployment = target
                .model
                .as_deref()
                .or(req.model.as_deref())
                .unwrap_or_default();
            let version = provider.api_version.as_deref().unwrap_or("2024-10-21");
            format!(
                "{}/openai/deployments/{deployment}/{op}?api-version={version}",
                provider.base_url
            )
        }
        ProviderKind::Anthropic => {
            if req.endpoint != Endpoint::ChatCompletions {
                return Err(BuildError::Unsupported);
            }
            headers.insert("x-api-key", sensitive(key.expose())?);
            let version = provider.api_version.as_deref().unwrap_or("2023-06-01");
            headers.insert(
                "anthropic-version",
                HeaderValue::try_from(version).map_err(|_| BuildError::Unsupported)?,
            );
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.remove(CONTENT_LENGTH);
            format!("{}/v1/messages", provider.base_url)
        }
    };
    Ok(UpstreamRequest {
        method: req.method.clone(),
        url,
        headers,
        body,
        // A provider with its own certificate authorities has its own connections.
        egress: provider
            .ca_file
            .as_ref()
            .map(|_| std::sync::Arc::from(provider.name.as_str())),
    })
}

/// The body with its `model` replaced; `None` when it is not a JSON object.
fn with_model(body: &Bytes, model: &str) -> Option<Bytes> {
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    map.insert("model".into(), serde_json::Value::String(model.to_owned()));
    serde_json::to_vec(&map).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeySettings;
    use http::{HeaderMap, Method};

    fn provider(kind: ProviderKind) -> ProviderSettings {
        ProviderSettings {
            name: "p".into(),
            kind,
            base_url: "https://host/v1".into(),
            api_version: Some("2024-10-21".into()),
            default: false,
            keys: vec![KeySettings {
                id: "k".into(),
                secret: Secret::new("sk-1"),
                weight: 1,
                rpm: None,
                tpm: None,
            }],
            ca_file: None,
        }
    }

    fn build_for(
        p: &ProviderSettings,
        req: &GatewayRequest,
        model: Option<&str>,
        key: &str,
    ) -> Result<UpstreamRequest, BuildError> {
        let target = Target {
            provider: 0,
            model: model.map(Into::into),
            max_tokens: 64,
            context_window: None,
            fit_max_tokens: false,
        };
        let body = prepare_body(p, req, &target).unwrap();
        build(p, req, &target, body, &Secret::new(key))
    }

    #[test]
    fn anthropic_gets_a_translated_body_and_its_headers() {
        let req = request(
            "chat/completions",
            r#"{"model":"alias","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#,
        );
        let mut p = provider(ProviderKind::Anthropic);
        p.base_url = "https://api.anthropic.com".into();
        p.api_version = Some("2023-06-01".into());
        let up = build_for(&p, &req, Some("claude-x"), "ant-key").unwrap();
        assert_eq!(up.url, "https://api.anthropic.com/v1/messages");
        assert_eq!(up.headers["x-api-key"], "ant-key");
        assert_eq!(up.headers["anthropic-version"], "2023-06-01");
        assert!(up.headers.get(AUTHORIZATION).is_none());
        let body: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(body["model"], "claude-x");
        assert_eq!(body["system"], "be brief");
        assert_eq!(body["max_tokens"], 64);
        assert!(!supports(ProviderKind::Anthropic, Endpoint::Embeddings));
    }

    fn request(path: &str, body: &str) -> GatewayRequest {
        let mut r = GatewayRequest::for_test(Method::POST, path, Bytes::from(body.to_owned()));
        r.headers = HeaderMap::new();
        r
    }

    #[test]
    fn openai_keeps_the_body_when_the_model_is_the_same() {
        let req = request("chat/completions", r#"{"model":"m","messages":[]}"#);
        let up = build_for(&provider(ProviderKind::OpenAi), &req, Some("m"), "sk-1").unwrap();
        assert_eq!(up.url, "https://host/v1/chat/completions");
        assert_eq!(up.headers[AUTHORIZATION], "Bearer sk-1");
        assert!(up.headers[AUTHORIZATION].is_sensitive());
        assert_eq!(up.body, req.body);
    }

    #[test]
    fn openai_rewrites_the_model_for_the_target() {
        let req = request("chat/completions", r#"{"model":"alias","messages":[]}"#);
        let up = build_for(&provider(ProviderKind::OpenAi), &req, Some("real"), "sk-1").unwrap();
        let body: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(body["model"], "real");
        assert_eq!(body["messages"], serde_json::json!([]));
    }

    #[test]
    fn azure_uses_deployment_urls_and_api_key() {
        let req = request("chat/completions", r#"{"model":"alias"}"#);
        let mut p = provider(ProviderKind::Azure);
        p.base_url = "https://res.openai.azure.com".into();
        let up = build_for(&p, &req, Some("dep-1"), "az-key").unwrap();
        assert_eq!(up.url, "https://res.openai.azure.com/openai/deployments/dep-1/chat/completions?api-version=2024-10-21");
        assert_eq!(up.headers["api-key"], "az-key");
        assert!(up.headers.get(AUTHORIZATION).is_none());
        let files = request("files", "");
        let target = Target {
            provider: 0,
            model: None,
            max_tokens: 64,
            context_window: None,
            fit_max_tokens: false,
        };
        assert!(matches!(
            build(&p, &files, &target, Bytes::new(), &Secret::new("k")),
            Err(BuildError::Unsupported)
        ));
    }

    #[tokio::test]
    async fn anthropic_pings_and_thinking_keep_the_stream_alive() {
        use futures_util::StreamExt;
        let p = Provider::new(provider(ProviderKind::Anthropic));
        let req = request(
            "chat/completions",
            r#"{"model":"m","stream":true,"messages":[]}"#,
        );
        let ping = "event: ping\ndata: {\"type\":\"ping\"}\n\n";
        let thinking = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hm\"}}\n\n";
        let chunks: Vec<Result<Bytes, crate::upstream::UpstreamError>> = [ping, ping, thinking]
            .iter()
            .map(|c| Ok(Bytes::from(c.to_string())))
            .collect();
        let (_, body) = p.stream(
            &req,
            Bytes::new(),
            Box::pin(futures_util::stream::iter(chunks)),
            1 << 20,
        );
        let out: Vec<Bytes> = body.map(Result::unwrap).collect().await;
        assert_eq!(out.len(), 3, "one frame per upstream chunk: {out:?}");
        assert!(out.iter().all(|b| b.as_ref() == KEEP_ALIVE), "{out:?}");
    }

    #[tokio::test]
    async fn an_anthropic_event_that_never_ends_fails_the_stream_at_max_event() {
        use futures_util::StreamExt;
        let p = Provider::new(provider(ProviderKind::Anthropic));
        let req = request(
            "chat/completions",
            r#"{"model":"m","stream":true,"messages":[]}"#,
        );
        let endless = futures_util::stream::repeat_with(|| {
            Ok::<_, crate::upstream::UpstreamError>(Bytes::from(vec![b'x'; 64 << 10]))
        });
        let (_, body) = p.stream(
            &req,
            Bytes::from_static(b"data: "),
            Box::pin(endless),
            1 << 20,
        );
        let out: Vec<_> = body.take(40).collect().await;
        let failed = out
            .iter()
            .position(Result::is_err)
            .expect("the stream fails");
        assert!(failed <= 17, "failed after {failed} chunks of 64 KiB");
    }

    #[test]
    fn azure_refuses_deployment_names_and_methods_that_would_change_the_url() {
        let p = Provider::new(provider(ProviderKind::Azure));
        let target = |model: &str| Target {
            provider: 0,
            model: Some(model.into()),
            max_tokens: 64,
            context_window: None,
            fit_max_tokens: false,
        };
        let chat = request("chat/completions", r#"{"model":"m","messages":[]}"#);
        for bad in [
            "dep1?api-version=2025-01-01-preview&",
            "dep1#frag",
            "x/../../files/file-abc?api-version=2024-10-21#",
            "..",
            "dep 1",
            "",
        ] {
            assert!(p.prepare(&chat, &target(bad)).is_err(), "{bad:?}");
        }
        assert!(p.prepare(&chat, &target("gpt-4o-mini.v2_prod-1")).is_ok());
        let mut delete = chat.clone();
        delete.method = http::Method::DELETE;
        assert!(p.prepare(&delete, &target("dep1")).is_err());
    }
}
