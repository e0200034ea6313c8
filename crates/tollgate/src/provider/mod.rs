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
pub mod messages;
pub mod responses;

pub use layer::{is_event_stream, Exchange, ProviderLayer, ProviderService, Raw};

use crate::config::{ProviderKind, ProviderSettings, ResponsesMode, Secret};
use crate::request::{Endpoint, GatewayRequest, Target};
use crate::upstream::{BodyStream, UpstreamRequest};
use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderMap;
use std::time::SystemTime;

fn azure_operation(endpoint: Endpoint) -> Option<&'static str> {
    match endpoint {
        Endpoint::ChatCompletions => Some("chat/completions"),
        Endpoint::Completions => Some("completions"),
        Endpoint::Embeddings => Some("embeddings"),
        _ => None,
    }
}

/// How a provider serves one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// It cannot.
    Unsupported,
    /// In its own dialect: the body as sent (the model renamed), or, for Anthropic, a chat
    /// request translated.
    Native,
    /// A Responses request through the chat pivot: read into a chat body, sent as chat (or
    /// on to Anthropic's Messages), and the answer written back as a Responses answer.
    ResponsesViaChat,
    /// An Anthropic Messages request (`/v1/messages`) to a chat target: read into a chat body,
    /// and the answer written back in Anthropic's shape and event grammar.
    MessagesViaChat,
}

/// The answer header naming the tools a translated request left out.
const DROPPED_TOOLS: http::HeaderName = http::HeaderName::from_static("x-tollgate-dropped-tools");

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

    /// How it serves `req`. Only creating a response (`POST /v1/responses`) crosses dialects:
    /// a provider without the Responses API cannot retrieve, cancel or list one.
    pub fn serving(&self, req: &GatewayRequest) -> Serving {
        let kind = self.settings.kind;
        match (req.endpoint, kind) {
            (Endpoint::Messages | Endpoint::CountTokens, ProviderKind::Anthropic) => {
                return Serving::Native
            }
            (Endpoint::Messages, _) if req.method == http::Method::POST => {
                return Serving::MessagesViaChat
            }
            // Counting needs Anthropic: the route layer answers with the estimate otherwise.
            (Endpoint::Messages | Endpoint::CountTokens, _) => return Serving::Unsupported,
            _ => {}
        }
        let responses = req.endpoint == Endpoint::Responses;
        if responses
            && (kind == ProviderKind::Anthropic || self.settings.responses == ResponsesMode::Chat)
        {
            return match req.method == http::Method::POST && req.path == "responses" {
                true => Serving::ResponsesViaChat,
                false => Serving::Unsupported,
            };
        }
        let native = match kind {
            ProviderKind::OpenAi => true,
            ProviderKind::Azure => responses || azure_operation(req.endpoint).is_some(),
            ProviderKind::Anthropic => req.endpoint == Endpoint::ChatCompletions,
        };
        match native {
            true => Serving::Native,
            false => Serving::Unsupported,
        }
    }

    /// Whether it can serve `req` at all.
    pub fn supports(&self, req: &GatewayRequest) -> bool {
        self.serving(req) != Serving::Unsupported
    }

    /// The body sent to `target`, computed once per target: unchanged when the model name is
    /// the same, the model renamed otherwise, or translated for Anthropic.
    pub fn prepare(&self, req: &GatewayRequest, target: &Target) -> Result<Bytes, Refusal> {
        prepare_body(&self.settings, self.serving(req), req, target)
    }

    /// Builds the upstream request for one attempt with the target's prepared `body`.
    pub fn build(
        &self,
        req: &GatewayRequest,
        target: &Target,
        body: Bytes,
        key: &Secret,
    ) -> Result<UpstreamRequest, BuildError> {
        build(&self.settings, self.serving(req), req, target, body, key)
    }

    /// Whether a plain (non-stream) success answer to `req` must be read whole and translated.
    pub fn translates_answers(&self, req: &GatewayRequest) -> bool {
        match self.serving(req) {
            Serving::ResponsesViaChat | Serving::MessagesViaChat => true,
            Serving::Native => {
                self.settings.kind == ProviderKind::Anthropic && !speaks_messages(req)
            }
            Serving::Unsupported => false,
        }
    }

    /// A whole plain success answer in the client's dialect (only called when
    /// [`Provider::translates_answers`]); `Err` when it does not translate.
    pub fn translate_answer(
        &self,
        req: &GatewayRequest,
        headers: &mut HeaderMap,
        body: &[u8],
    ) -> Result<Bytes, String> {
        let chat = match self.settings.kind {
            ProviderKind::Anthropic => Bytes::from(
                anthropic::translate_response(
                    body,
                    req.model.as_deref().unwrap_or_default(),
                    unix_now(),
                )
                .map_err(|e| e.to_string())?,
            ),
            ProviderKind::OpenAi | ProviderKind::Azure => Bytes::copy_from_slice(body),
        };
        let json = match self.serving(req) {
            Serving::MessagesViaChat => {
                let chat: serde_json::Value =
                    serde_json::from_slice(&chat).map_err(|e| e.to_string())?;
                let model = req.model.as_deref().unwrap_or_default();
                Bytes::from(messages::from_chat(&chat, model)?.to_string())
            }
            Serving::ResponsesViaChat => {
                let chat: serde_json::Value =
                    serde_json::from_slice(&chat).map_err(|e| e.to_string())?;
                if !chat.get("choices").is_some_and(serde_json::Value::is_array) {
                    return Err("a chat answer without `choices`".into());
                }
                Bytes::from(responses::from_chat(&chat).to_string())
            }
            Serving::Native | Serving::Unsupported => chat,
        };
        json_content_type(headers);
        Ok(json)
    }

    /// Marks a success answer to `req` with what its translation left out: the tools a
    /// translated Responses request could not send (`x-tollgate-dropped-tools`, never taken
    /// from the upstream).
    pub fn answer_headers(&self, req: &GatewayRequest, headers: &mut HeaderMap) {
        headers.remove(DROPPED_TOOLS);
        let dropped = match self.serving(req) {
            Serving::ResponsesViaChat => responses::dropped_tools(&req.body),
            Serving::MessagesViaChat => messages::dropped_tools(&req.body),
            Serving::Native | Serving::Unsupported => return,
        };
        if let Some(value) = (!dropped.is_empty())
            .then(|| HeaderValue::try_from(dropped.join(", ")).ok())
            .flatten()
        {
            headers.insert(DROPPED_TOOLS, value);
        }
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
        let serving = self.serving(req);
        let via_chat = serving == Serving::ResponsesViaChat;
        let to_messages = serving == Serving::MessagesViaChat;
        let anthropic = self.settings.kind == ProviderKind::Anthropic && !speaks_messages(req);
        if !(anthropic || via_chat || to_messages) {
            return (prefix, body);
        }
        let keep_alive: &'static [u8] = match to_messages {
            true => messages::PING,
            false => KEEP_ALIVE,
        };
        let mut translation = StreamTranslation {
            // The Responses stream ends with its usage: the chat stream must carry it.
            anthropic: anthropic.then(|| {
                anthropic::StreamTranslator::new(
                    req.model.as_deref().unwrap_or_default(),
                    req.include_usage || via_chat,
                    unix_now(),
                )
            }),
            responses: via_chat.then(responses::ChatStream::default),
            messages: to_messages.then(|| {
                messages::ChatToMessages::new(
                    req.model.as_deref().unwrap_or_default(),
                    req.counted.map_or(0, |c| c.prompt),
                )
            }),
            chat: Vec::new(),
        };
        let mut first = Vec::new();
        translation.push(&prefix, &mut first);
        let rest = body.filter_map(move |chunk| {
            let out = chunk.and_then(|c| {
                let mut out = Vec::new();
                translation.push(&c, &mut out);
                match translation.pending() > max_event {
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
                Ok(b) if b.is_empty() => Ok(Bytes::from_static(keep_alive)),
                other => other,
            }))
        });
        (Bytes::from(first), Box::pin(rest))
    }
}

/// A stream's way from the upstream's dialect to the client's: Anthropic's events to chat
/// chunks, chat chunks to Responses events, or both in turn; or chat chunks to Anthropic's
/// events (a Messages client).
struct StreamTranslation {
    anthropic: Option<anthropic::StreamTranslator>,
    responses: Option<responses::ChatStream>,
    messages: Option<messages::ChatToMessages>,
    /// Chat chunks between the two steps.
    chat: Vec<u8>,
}

impl StreamTranslation {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if let Some(messages) = &mut self.messages {
            return messages.push(input, out);
        }
        match (&mut self.anthropic, &mut self.responses) {
            (Some(anthropic), Some(responses)) => {
                self.chat.clear();
                anthropic.push(input, &mut self.chat);
                responses.push(&self.chat, out);
            }
            (Some(anthropic), None) => anthropic.push(input, out),
            (None, Some(responses)) => responses.push(input, out),
            (None, None) => out.extend_from_slice(input),
        }
    }

    /// Bytes of unfinished events held.
    fn pending(&self) -> usize {
        self.anthropic.as_ref().map_or(0, |a| a.pending())
            + self.responses.as_ref().map_or(0, |r| r.pending())
            + self.messages.as_ref().map_or(0, |m| m.pending())
    }
}

/// The SSE comment sent for upstream activity that translates to nothing.
const KEEP_ALIVE: &[u8] = b":\n\n";

impl From<anthropic::TranslateError> for Refusal {
    fn from(e: anthropic::TranslateError) -> Refusal {
        Refusal {
            message: e.to_string(),
            param: match e {
                anthropic::TranslateError::Unsupported { param, .. } => param,
                anthropic::TranslateError::Invalid(_) => None,
            },
        }
    }
}

impl From<responses::Refused> for Refusal {
    fn from(e: responses::Refused) -> Refusal {
        Refusal {
            message: e.to_string(),
            param: Some(e.param().to_owned()),
        }
    }
}

/// The body sent to `target`, computed once per target: unchanged when the model name is the
/// same, the model renamed otherwise, or translated (a chat request for Anthropic, a Responses
/// request for a chat target).
fn prepare_body(
    provider: &ProviderSettings,
    serving: Serving,
    req: &GatewayRequest,
    target: &Target,
) -> Result<Bytes, Refusal> {
    let model = target.model.as_deref();
    let upstream_model = model.or(req.model.as_deref()).unwrap_or_default();
    let native_responses = serving == Serving::Native && req.endpoint == Endpoint::Responses;
    if provider.kind == ProviderKind::Azure && !native_responses {
        azure_checks(req, upstream_model)?;
    }
    if serving == Serving::MessagesViaChat {
        let opts = messages::ChatOptions {
            reasoning: target.reasoning,
        };
        let chat = messages::to_chat(&req.body, opts)?;
        if !chat.dropped_tools.is_empty() {
            tracing::info!(
                request_id = %req.id,
                provider = %provider.name,
                tools = %chat.dropped_tools.join(", "),
                "tools left out: the target cannot run them"
            );
        }
        let mut body = chat.body;
        body["model"] = serde_json::Value::from(upstream_model);
        return Ok(Bytes::from(body.to_string()));
    }
    let chat = match serving {
        Serving::ResponsesViaChat => {
            let chat = responses::to_chat(&req.body)?;
            if !chat.dropped_tools.is_empty() {
                tracing::info!(
                    request_id = %req.id,
                    provider = %provider.name,
                    tools = %chat.dropped_tools.join(", "),
                    "tools left out: the target cannot run them"
                );
            }
            let mut body = chat.body;
            body["model"] = serde_json::Value::from(upstream_model);
            if provider.kind == ProviderKind::Anthropic
                && body.get("response_format").is_some_and(|f| !f.is_null())
            {
                return Err(Refusal {
                    message: "`text.format` asks for JSON output, which this model's Anthropic target cannot be held to".into(),
                    param: Some("text.format".into()),
                });
            }
            Some(Bytes::from(body.to_string()))
        }
        Serving::Native | Serving::Unsupported | Serving::MessagesViaChat => None,
    };
    match provider.kind {
        // A Messages request to Anthropic: its bytes as they came, the model renamed in place.
        ProviderKind::Anthropic if speaks_messages(req) => {
            Ok(match (model, req.model.as_deref()) {
                (Some(upstream), Some(asked)) if upstream != asked => {
                    renamed(req, upstream).unwrap_or_else(|| req.body.clone())
                }
                _ => req.body.clone(),
            })
        }
        ProviderKind::Anthropic => {
            let opts = anthropic::RequestOptions {
                upstream_model,
                default_max_tokens: target.max_tokens,
                version: provider.api_version.as_deref().unwrap_or("2023-06-01"),
            };
            let chat = chat.as_ref().unwrap_or(&req.body);
            Ok(Bytes::from(anthropic::translate_request(chat, &opts)?))
        }
        ProviderKind::OpenAi | ProviderKind::Azure => {
            Ok(match (chat, model, req.model.as_deref()) {
                (Some(chat), _, _) => chat,
                (None, Some(upstream), Some(asked)) if upstream != asked => {
                    renamed(req, upstream).unwrap_or_else(|| req.body.clone())
                }
                _ => req.body.clone(),
            })
        }
    }
}

/// What an Azure request may put into its upstream URL and method: a deployment name of the
/// characters Azure allows (letters, digits, `-`, `_`, `.`; not `.` or `..` alone), and the
/// method its operation takes (POST). Nothing a client sends changes the path or the query.
fn azure_checks(req: &GatewayRequest, deployment: &str) -> Result<(), Refusal> {
    let refuse = |message: String, param: &str| Refusal {
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

fn build(
    provider: &ProviderSettings,
    serving: Serving,
    req: &GatewayRequest,
    target: &Target,
    body: Bytes,
    key: &Secret,
) -> Result<UpstreamRequest, BuildError> {
    let mut headers = req.headers.clone();
    let via_chat = matches!(
        serving,
        Serving::ResponsesViaChat | Serving::MessagesViaChat
    );
    if via_chat {
        json_content_type(&mut headers);
    }
    if provider.kind != ProviderKind::Anthropic && speaks_messages(req) {
        // A Messages client's Anthropic headers mean nothing to another dialect.
        headers.remove(ANTHROPIC_BETA);
        headers.remove("anthropic-version");
    }
    let url = match provider.kind {
        _ if serving == Serving::Unsupported => return Err(BuildError::Unsupported),
        ProviderKind::OpenAi => {
            // Made once per key (a clone is a count), sensitive.
            headers.insert(
                AUTHORIZATION,
                key.bearer_header().ok_or(BuildError::BadKey)?,
            );
            let path = match via_chat {
                true => "chat/completions",
                false => &req.path,
            };
            let mut url = String::with_capacity(provider.base_url.len() + path.len() + 2);
            url.push_str(&provider.base_url);
            url.push('/');
            url.push_str(path);
            if let (false, Some(q)) = (via_chat, &req.query) {
                url.push('?');
                url.push_str(q);
            }
            url
        }
        ProviderKind::Azure if req.endpoint == Endpoint::Responses && !via_chat => {
            // The Responses API is Azure's v1 API: the deployment is the body's `model`.
            headers.insert("api-key", key.header().ok_or(BuildError::BadKey)?);
            let mut url = format!("{}/openai/v1/{}", provider.base_url, req.path);
            if let Some(q) = &req.query {
                url.push('?');
                url.push_str(q);
            }
            url
        }
        ProviderKind::Azure => {
            let op = match via_chat {
                true => "chat/completions",
                false => azure_operation(req.endpoint).ok_or(BuildError::Unsupported)?,
            };
            headers.insert("api-key", key.header().ok_or(BuildError::BadKey)?);
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
            headers.insert("x-api-key", key.header().ok_or(BuildError::BadKey)?);
            let version = provider.api_version.as_deref().unwrap_or("2023-06-01");
            headers.insert(
                "anthropic-version",
                HeaderValue::try_from(version).map_err(|_| BuildError::Unsupported)?,
            );
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.remove(CONTENT_LENGTH);
            if speaks_messages(req) {
                allowed_betas(provider, req, &mut headers);
            }
            match req.endpoint {
                Endpoint::CountTokens => format!("{}/v1/messages/count_tokens", provider.base_url),
                _ => format!("{}/v1/messages", provider.base_url),
            }
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

/// Whether the client speaks Anthropic's Messages API (`/v1/messages…`).
fn speaks_messages(req: &GatewayRequest) -> bool {
    matches!(req.endpoint, Endpoint::Messages | Endpoint::CountTokens)
}

const ANTHROPIC_BETA: http::HeaderName = http::HeaderName::from_static("anthropic-beta");

/// The client's `anthropic-beta` flags that this provider's `anthropic_beta` allows (`"*"`:
/// all), or all of them for a client whose `forward_headers` has `anthropic-beta`; the header
/// removed when none is left.
fn allowed_betas(provider: &ProviderSettings, req: &GatewayRequest, headers: &mut HeaderMap) {
    let client_may = req
        .client
        .as_ref()
        .is_some_and(|c| c.settings.forward_headers.anthropic_beta);
    let allowed = |flag: &str| {
        client_may
            || provider
                .anthropic_beta
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(flag))
    };
    let flags: Vec<&str> = headers
        .get_all(ANTHROPIC_BETA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|f| !f.is_empty() && allowed(f))
        .collect();
    let value = (!flags.is_empty())
        .then(|| HeaderValue::try_from(flags.join(",")).ok())
        .flatten();
    match value {
        Some(v) => {
            headers.insert(ANTHROPIC_BETA, v);
        }
        None => {
            headers.remove(ANTHROPIC_BETA);
        }
    }
}

/// The body with its `model` renamed: spliced where the value is when its place is known,
/// else re-serialized; `None` when it is not a JSON object.
fn renamed(req: &GatewayRequest, model: &str) -> Option<Bytes> {
    let span = req.model_span.clone().filter(|s| {
        req.body
            .get(s.clone())
            .is_some_and(|v| v.first() == Some(&b'"'))
    });
    match span {
        Some(span) => {
            let value = serde_json::to_string(model).ok()?;
            crate::request::splice(&req.body, span, value.as_bytes())
        }
        None => with_model(&req.body, model),
    }
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
            responses: ResponsesMode::Native,
            anthropic_beta: Vec::new(),
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
            reasoning: false,
        };
        let provider = Provider::new(p.clone());
        let body = provider.prepare(req, &target).unwrap();
        provider.build(req, &target, body, &Secret::new(key))
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
        let embeddings = request("embeddings", r#"{"model":"m","input":"x"}"#);
        assert!(!Provider::new(p).supports(&embeddings));
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
        // Spliced in place: every other byte as the client sent it.
        let sent = r#"{ "messages": [ ],  "model" : "al\u0069as", "x": 1.50 }"#;
        let req = request("chat/completions", sent);
        assert!(req.model_span.is_some());
        let up = build_for(
            &provider(ProviderKind::OpenAi),
            &req,
            Some("re\"al"),
            "sk-1",
        )
        .unwrap();
        assert_eq!(
            up.body,
            r#"{ "messages": [ ],  "model" : "re\"al", "x": 1.50 }"#.as_bytes()
        );
        // Without a known place (a body rewritten before), the body is re-serialized.
        let mut moved = req.clone();
        moved.model_span = Some(0..3);
        let up = build_for(
            &provider(ProviderKind::OpenAi),
            &moved,
            Some("real"),
            "sk-1",
        )
        .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(body["model"], "real");
        assert_eq!(body["x"], 1.5);
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
            reasoning: false,
        };
        assert!(matches!(
            Provider::new(p).build(&files, &target, Bytes::new(), &Secret::new("k")),
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
            reasoning: false,
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

    fn target(model: &str) -> Target {
        Target {
            provider: 0,
            model: Some(model.into()),
            max_tokens: 64,
            context_window: None,
            fit_max_tokens: false,
            reasoning: false,
        }
    }

    const CODEX_TURN: &str = r#"{"model":"alias","instructions":"Be brief.","store":false,"stream":true,
        "input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}],
        "tools":[{"type":"function","name":"exec_command","parameters":{"type":"object"}},{"type":"web_search"}]}"#;

    #[test]
    fn responses_are_native_or_translated_per_provider() {
        let create = request("responses", CODEX_TURN);
        let mut get = request("responses/resp_1", "");
        get.method = Method::GET;
        let chat_mode = |kind| {
            let mut p = provider(kind);
            p.responses = ResponsesMode::Chat;
            Provider::new(p)
        };
        let native = Provider::new(provider(ProviderKind::OpenAi));
        let azure = Provider::new(provider(ProviderKind::Azure));
        let anthropic = Provider::new(provider(ProviderKind::Anthropic));
        assert_eq!(native.serving(&create), Serving::Native);
        assert_eq!(native.serving(&get), Serving::Native);
        assert_eq!(azure.serving(&create), Serving::Native);
        assert_eq!(anthropic.serving(&create), Serving::ResponsesViaChat);
        assert_eq!(anthropic.serving(&get), Serving::Unsupported);
        for kind in [ProviderKind::OpenAi, ProviderKind::Azure] {
            assert_eq!(chat_mode(kind).serving(&create), Serving::ResponsesViaChat);
            assert_eq!(chat_mode(kind).serving(&get), Serving::Unsupported);
        }
        let chat = request("chat/completions", r#"{"model":"m","messages":[]}"#);
        assert_eq!(
            chat_mode(ProviderKind::OpenAi).serving(&chat),
            Serving::Native
        );

        // A chat-only OpenAI-compatible server gets a chat request at /chat/completions.
        let mut openai = provider(ProviderKind::OpenAi);
        openai.responses = ResponsesMode::Chat;
        let mut create_q = create.clone();
        create_q.query = Some("x=1".into());
        let up = build_for(&openai, &create_q, Some("llama"), "sk-1").unwrap();
        assert_eq!(up.url, "https://host/v1/chat/completions");
        let body: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(body["model"], "llama");
        assert_eq!(body["messages"][0]["content"], "Be brief.");
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["tools"].as_array().unwrap().len(), 1);

        // Anthropic gets a Messages request.
        let up = build_for(
            &provider(ProviderKind::Anthropic),
            &create,
            Some("claude"),
            "a",
        )
        .unwrap();
        assert!(up.url.ends_with("/v1/messages"), "{}", up.url);
        let body: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(body["system"], "Be brief.");
        assert_eq!(body["tools"][0]["name"], "exec_command");
        assert_eq!(body["max_tokens"], 64);

        // Azure: the v1 Responses API natively, its chat deployment when translated.
        let mut az = provider(ProviderKind::Azure);
        az.base_url = "https://res.openai.azure.com".into();
        let up = build_for(&az, &create, Some("dep-1"), "az").unwrap();
        assert_eq!(up.url, "https://res.openai.azure.com/openai/v1/responses");
        assert_eq!(up.headers["api-key"], "az");
        let body: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(body["model"], "dep-1");
        az.responses = ResponsesMode::Chat;
        let up = build_for(&az, &create, Some("dep-1"), "az").unwrap();
        assert_eq!(
            up.url,
            "https://res.openai.azure.com/openai/deployments/dep-1/chat/completions?api-version=2024-10-21"
        );
    }

    #[test]
    fn a_translated_responses_request_is_refused_naming_what_cannot_cross() {
        let anthropic = Provider::new(provider(ProviderKind::Anthropic));
        let stateful = request(
            "responses",
            r#"{"model":"m","input":"hi","previous_response_id":"resp_1"}"#,
        );
        let refusal = anthropic.prepare(&stateful, &target("c")).unwrap_err();
        assert_eq!(refusal.param.as_deref(), Some("previous_response_id"));
        let json = request(
            "responses",
            r#"{"model":"m","input":"hi","text":{"format":{"type":"json_schema","name":"x","schema":{"type":"object"}}}}"#,
        );
        let refusal = anthropic.prepare(&json, &target("c")).unwrap_err();
        assert_eq!(refusal.param.as_deref(), Some("text.format"));
        // A chat target honors the format as `response_format`.
        let mut chat = provider(ProviderKind::OpenAi);
        chat.responses = ResponsesMode::Chat;
        let body = Provider::new(chat).prepare(&json, &target("c")).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["response_format"]["type"], "json_schema");
    }

    #[test]
    fn translated_answers_come_back_as_responses_with_the_dropped_tools_named() {
        let anthropic = Provider::new(provider(ProviderKind::Anthropic));
        let mut plain = request("responses", CODEX_TURN);
        plain.stream = false;
        let message = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{"type":"tool_use","id":"toolu_1","name":"exec_command","input":{"cmd":"ls"}}],"stop_reason":"tool_use","usage":{"input_tokens":7,"output_tokens":3}}"#;
        let mut headers = HeaderMap::new();
        let out = anthropic
            .translate_answer(&plain, &mut headers, message.as_bytes())
            .unwrap();
        let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["object"], "response");
        assert_eq!(out["output"][0]["type"], "function_call");
        assert_eq!(out["output"][0]["call_id"], "toolu_1");
        assert_eq!(out["output"][0]["arguments"], r#"{"cmd":"ls"}"#);
        assert_eq!(out["usage"]["input_tokens"], 7);
        headers.insert(DROPPED_TOOLS, HeaderValue::from_static("spoofed"));
        anthropic.answer_headers(&plain, &mut headers);
        assert_eq!(headers[DROPPED_TOOLS], "web_search");
        let native = Provider::new(provider(ProviderKind::OpenAi));
        native.answer_headers(&plain, &mut headers);
        assert!(headers.get(DROPPED_TOOLS).is_none(), "never the upstream's");
        // A chat-only server's plain answer.
        let mut p = provider(ProviderKind::OpenAi);
        p.responses = ResponsesMode::Chat;
        let chat = Provider::new(p);
        assert!(chat.translates_answers(&plain));
        let answer = r#"{"id":"c1","model":"llama","choices":[{"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}]}"#;
        let out = chat
            .translate_answer(&plain, &mut HeaderMap::new(), answer.as_bytes())
            .unwrap();
        let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["output"][0]["content"][0]["text"], "hello");
        assert!(chat
            .translate_answer(&plain, &mut HeaderMap::new(), br#"{"error":{}}"#)
            .is_err());
    }

    #[tokio::test]
    async fn an_anthropic_stream_becomes_a_responses_stream_at_every_chunking() {
        use futures_util::StreamExt;
        let anthropic = Provider::new(provider(ProviderKind::Anthropic));
        let req = request("responses", CODEX_TURN);
        let events = [
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[],"usage":{"input_tokens":11,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Running"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"exec_command","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"cmd\":"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"ls\"}"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":5}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let mut input = String::new();
        for e in events {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            input.push_str(&format!(
                "event: {}\ndata: {e}\n\n",
                v["type"].as_str().unwrap()
            ));
        }
        let mut outputs = Vec::new();
        for size in [1, 2, 7, 64, input.len()] {
            let pieces: Vec<Result<Bytes, crate::upstream::UpstreamError>> = input
                .as_bytes()
                .chunks(size)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let (first, rest) = anthropic.stream(
                &req,
                Bytes::new(),
                Box::pin(futures_util::stream::iter(pieces)),
                1 << 20,
            );
            let mut out = first.to_vec();
            let rest: Vec<Bytes> = rest.map(Result::unwrap).collect().await;
            for b in rest.iter().filter(|b| b.as_ref() != KEEP_ALIVE) {
                out.extend_from_slice(b);
            }
            outputs.push(String::from_utf8(out).unwrap());
        }
        assert!(outputs.iter().all(|o| o == &outputs[0]), "{outputs:#?}");
        let last = outputs[0].trim_end().rsplit("\n\n").next().unwrap();
        assert!(
            last.starts_with("event: response.completed\ndata: "),
            "{last}"
        );
        let done: serde_json::Value =
            serde_json::from_str(last.split_once("data: ").unwrap().1).unwrap();
        assert_eq!(
            done["response"]["output"][0]["content"][0]["text"],
            "Running"
        );
        assert_eq!(done["response"]["output"][1]["name"], "exec_command");
        assert_eq!(
            done["response"]["output"][1]["arguments"],
            r#"{"cmd":"ls"}"#
        );
        assert_eq!(done["response"]["usage"]["input_tokens"], 11);
        assert_eq!(done["response"]["usage"]["output_tokens"], 5);
    }
}
