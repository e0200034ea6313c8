//! One upstream attempt: build, send, peek a stream's first event, classify, and apply the
//! verdict to the key and the request's walk.

use super::classify::{classify, Kind, Outcome, Verdict};
use super::walk::{AttemptRecord, Failure, Step, Walk};
use super::{Answer, Dispatcher, Served};
use crate::config::ProviderKind;
use crate::key_pool::Lease;
use crate::provider::{self, anthropic, BuildError, Target};
use crate::rate_limit::{remaining_from_headers, unix_ms, SharedHealth};
use crate::request::GatewayRequest;
use crate::stream::{peek_first_event, FirstEvent};
use crate::upstream::{BodyStream, UpstreamError, UpstreamResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use std::time::SystemTime;
use tokio::time::Instant;

/// Largest upstream error body kept for classification and pass-through.
const MAX_ERROR_BODY: usize = 1 << 20;

/// What an attempt produced before classification.
enum Raw {
    Ok(UpstreamResponse, Bytes),
    Error {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    StreamError(Bytes),
    Transport(UpstreamError),
}

async fn read_bounded(body: &mut BodyStream, deadline: Instant) -> Bytes {
    let mut buf = BytesMut::new();
    while buf.len() < MAX_ERROR_BODY {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.freeze()
}

pub(super) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

impl Dispatcher {
    async fn exchange(
        &self,
        req: &GatewayRequest,
        target: &Target,
        body: &Bytes,
        lease: &Lease,
    ) -> Raw {
        let settings = &self.settings.providers[target.provider];
        let up = match provider::build(settings, req, target, body.clone(), lease.secret()) {
            Ok(up) => up,
            Err(BuildError::BadKey | BuildError::Unsupported) => {
                return Raw::Transport(UpstreamError::Connect(
                    "the key cannot be sent as a header".into(),
                ))
            }
        };
        let first_byte = Instant::now() + self.settings.server.first_byte_timeout;
        let deadline = first_byte.min(req.deadline);
        let started = Instant::now();
        let sent = tokio::time::timeout_at(deadline, self.upstream.send(up)).await;
        self.handles
            .upstream_duration(target.provider)
            .observe(started.elapsed().as_secs_f64());
        let mut resp = match sent {
            Err(_) => return Raw::Transport(UpstreamError::Timeout("response headers")),
            Ok(Err(e)) => return Raw::Transport(e),
            Ok(Ok(resp)) => resp,
        };
        if !resp.status.is_success() {
            let body = read_bounded(&mut resp.body, deadline).await;
            return Raw::Error {
                status: resp.status,
                headers: resp.headers,
                body,
            };
        }
        if !(req.stream && is_event_stream(&resp.headers)) {
            if settings.kind == ProviderKind::Anthropic {
                return self.translate_message(req, resp, deadline).await;
            }
            return Raw::Ok(resp, Bytes::new());
        }
        match peek_first_event(&mut resp.body, deadline).await {
            Ok(FirstEvent::Data(prefix)) => {
                self.metrics
                    .ttft(self.model_label(req))
                    .observe(req.received.elapsed().as_secs_f64());
                Raw::Ok(resp, prefix)
            }
            Ok(FirstEvent::Error(json)) => Raw::StreamError(json),
            Ok(FirstEvent::Ended) => Raw::Transport(UpstreamError::Transport(
                "stream ended before its first event".into(),
            )),
            Err(e) => Raw::Transport(e),
        }
    }

    /// An Anthropic message answer, read whole (it is one JSON object) and turned into a
    /// `chat.completion`; an answer that does not translate counts as a transport failure.
    async fn translate_message(
        &self,
        req: &GatewayRequest,
        mut resp: UpstreamResponse,
        deadline: Instant,
    ) -> Raw {
        let body = read_bounded(&mut resp.body, deadline).await;
        let created = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match anthropic::translate_response(
            &body,
            req.model.as_deref().unwrap_or_default(),
            created,
        ) {
            Ok(json) => {
                resp.headers.remove(header::CONTENT_LENGTH);
                resp.headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                resp.body = Box::pin(futures_util::stream::iter([Ok(Bytes::from(json))]));
                Raw::Ok(resp, Bytes::new())
            }
            Err(e) => Raw::Transport(UpstreamError::Transport(format!(
                "untranslatable answer: {e}"
            ))),
        }
    }

    /// Runs one attempt. `Ok` is the answer; `Err(Some)` ends this target; `Err(None)` tries again.
    pub(super) async fn attempt(
        &self,
        req: &GatewayRequest,
        target: &Target,
        body: &Bytes,
        mut lease: Lease,
        walk: &mut Walk,
        served: Served,
    ) -> Result<Answer, Option<Step>> {
        let provider = target.provider;
        let anthropic = self.settings.providers[provider].kind == ProviderKind::Anthropic;
        let raw = self.exchange(req, target, body, &lease).await;
        let now = Instant::now();
        let wall = SystemTime::now();
        let (verdict, status) = match &raw {
            Raw::Ok(resp, _) => (
                Verdict {
                    kind: Kind::Success,
                    wait: None,
                },
                Some(resp.status.as_u16()),
            ),
            Raw::Error {
                status,
                headers,
                body,
            } => (
                classify(
                    Outcome::Response {
                        status: status.as_u16(),
                        headers,
                        body,
                    },
                    wall,
                ),
                Some(status.as_u16()),
            ),
            Raw::StreamError(json) => (
                classify(Outcome::StreamError { body: json }, wall),
                Some(200),
            ),
            Raw::Transport(UpstreamError::Timeout(_)) => (classify(Outcome::Timeout, wall), None),
            Raw::Transport(UpstreamError::Connect(_)) => {
                (classify(Outcome::ConnectError, wall), None)
            }
            Raw::Transport(UpstreamError::Transport(_)) => {
                (classify(Outcome::TransportError, wall), None)
            }
        };
        let answered_headers = match &raw {
            Raw::Ok(resp, _) => Some(&resp.headers),
            Raw::Error { headers, .. } => Some(headers),
            _ => None,
        };
        if let Some(headers) = answered_headers {
            let (requests, tokens) = remaining_from_headers(headers);
            let (bucket, limits) = self.pools[provider].bucket(lease.idx());
            self.limiter.sync(bucket, limits, requests, tokens).await;
        }
        let pname = &self.settings.providers[provider].name;
        self.handles
            .attempt(provider, lease.idx(), verdict.kind)
            .inc();
        if let Raw::Transport(e) = &raw {
            tracing::warn!(request_id = %req.id, provider = %pname, key = lease.id(), attempt = walk.attempts.len() + 1, error = %e, "upstream attempt failed");
        } else if verdict.kind != Kind::Success {
            tracing::info!(request_id = %req.id, provider = %pname, key = lease.id(), attempt = walk.attempts.len() + 1, status, kind = verdict.kind.label(), "upstream attempt failed");
        }
        let detail = match &raw {
            Raw::Transport(e) => Some(e.to_string()),
            _ => None,
        };
        walk.attempts.push(AttemptRecord {
            provider,
            key: lease.id().to_owned(),
            kind: verdict.kind,
            status,
            detail,
        });
        walk.last_kind = Some(verdict.kind);
        walk.last_wait = verdict.wait;
        let failure = |lease: &Lease| match &raw {
            Raw::Error {
                status,
                headers,
                body,
            } if anthropic => {
                // The client speaks OpenAI: give it the error in OpenAI's shape.
                let mut headers = headers.clone();
                headers.remove(header::CONTENT_LENGTH);
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Some(Failure {
                    status: *status,
                    headers,
                    body: Bytes::from(anthropic::translate_error(body)),
                    provider,
                    key: lease.id().to_owned(),
                })
            }
            Raw::Error {
                status,
                headers,
                body,
            } => Some(Failure {
                status: *status,
                headers: headers.clone(),
                body: body.clone(),
                provider,
                key: lease.id().to_owned(),
            }),
            Raw::StreamError(json) => {
                let json = if anthropic {
                    Bytes::from(anthropic::translate_error(json))
                } else {
                    json.clone()
                };
                let mut headers = HeaderMap::new();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Some(Failure {
                    status: StatusCode::BAD_GATEWAY,
                    headers,
                    body: json,
                    provider,
                    key: lease.id().to_owned(),
                })
            }
            _ => None,
        };
        if let Some(f) = failure(&lease) {
            walk.last_failure = Some(f);
        }
        let key = (provider, lease.idx());
        match verdict.kind {
            Kind::Success => {
                lease.success();
                let Raw::Ok(resp, prefix) = raw else {
                    return Err(Some(Step::Next("unreachable")));
                };
                Ok(self.answer(
                    req,
                    provider,
                    lease,
                    resp,
                    prefix,
                    walk.attempts.len() as u32,
                    served,
                ))
            }
            Kind::RateLimited => {
                lease.cool(verdict.wait, now);
                let policy_wait = verdict
                    .wait
                    .unwrap_or(self.settings.retry.cooldown_default)
                    .min(self.settings.retry.cooldown_max);
                walk.note_earliest(now + policy_wait);
                walk.hard.push(key);
                let until = unix_ms() + policy_wait.as_millis() as u64;
                self.limiter
                    .publish_health(lease.bucket().0, SharedHealth::Cooling(until));
                Err(None)
            }
            Kind::KeyRejected | Kind::QuotaExhausted => {
                lease.disable(now);
                walk.hard.push(key);
                let until = unix_ms() + self.settings.retry.probe_interval.as_millis() as u64;
                self.limiter
                    .publish_health(lease.bucket().0, SharedHealth::Disabled(until));
                Err(None)
            }
            Kind::KeyTooSmall => {
                walk.hard.push(key);
                Err(None)
            }
            Kind::Transient | Kind::Timeout => {
                lease.transient(now);
                if !walk.soft.contains(&key) {
                    walk.soft.push(key);
                }
                Err(None)
            }
            Kind::ContextTooLong => Err(Some(Step::Next("context_too_long"))),
            Kind::ClientError => match walk.last_failure.take() {
                Some(f) => Err(Some(Step::PassThrough(f))),
                None => Err(Some(Step::Next("client_error"))),
            },
        }
    }
}
