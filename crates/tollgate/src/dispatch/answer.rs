//! A successful attempt's answer on its way to the client: the body guarded (idle timeout,
//! error event on a break), usage tapped for the buckets and the tokens metric (a usage beyond
//! plausible is ignored), and the key's lease held until the last byte. (The provider layer already translated the stream.)

use super::select::SelectShared;
use crate::key_pool::Lease;
use crate::provider::is_event_stream;
use crate::request::{Answer, GatewayRequest, Served};
use crate::stream::{guard, Framing, StreamEnd};
use crate::upstream::UpstreamResponse;
use crate::usage::{plausible_total, UsageTap};
use axum::body::Body;
use bytes::Bytes;
use http::header;
use openai_types::Usage;
use std::sync::Arc;

impl SelectShared {
    /// What runs when an answer's body ends: the key's lease is released, stream failures are
    /// counted, real usage is counted and reconciled with the buckets' estimate and recorded on
    /// the attempt's `span` (which ends then).
    pub(super) fn on_end(
        self: &Arc<Self>,
        req: &GatewayRequest,
        provider: usize,
        lease: Lease,
        span: tracing::Span,
    ) -> impl FnOnce(StreamEnd, Option<Usage>) + Send + 'static {
        // This thread's policy state (the stack is made per thread), not clones of what it
        // holds: those counts are shared by every thread.
        let shared = Arc::clone(self);
        let model = req.model_index;
        let client_bucket = req
            .client_bucket
            .as_ref()
            .filter(|(_, l)| l.tpm.is_some())
            .cloned();
        let estimate = req.tokens;
        let request_id = Arc::clone(&req.id);
        move |end, usage| {
            match end {
                StreamEnd::Complete => {}
                StreamEnd::Cancelled => {
                    tracing::info!(request_id = %request_id, provider = %lease.provider(), "client left before the answer's end");
                }
                _ => {
                    let pname = lease.provider();
                    shared
                        .metrics
                        .stream_errors
                        .with_label_values(&[pname, end.label()])
                        .inc();
                    tracing::warn!(request_id = %request_id, provider = %pname, reason = end.label(), "answer ended early");
                }
            }
            let Some(u) = usage else { return };
            let Some(actual) = plausible_total(&u) else {
                tracing::warn!(request_id = %request_id, provider = %lease.provider(), prompt_tokens = u.prompt_tokens, completion_tokens = u.completion_tokens, total_tokens = u.total_tokens, "implausible usage ignored: the estimate stands");
                return;
            };
            if !span.is_none() {
                crate::telemetry::spans::usage(&span, u.prompt_tokens, u.completion_tokens);
            }
            let counters = shared.handles.tokens(provider, model);
            counters[0].inc_by(u.prompt_tokens);
            counters[1].inc_by(u.completion_tokens);
            counters[2].inc_by(u.cached_tokens().min(u.prompt_tokens));
            let key_limits = lease.bucket().1;
            let key_bucket = key_limits.tpm.map(|_| (lease.bucket_id(), key_limits));
            drop(lease);
            let buckets = [key_bucket, client_bucket];
            if actual == estimate || buckets.iter().all(Option::is_none) {
                return;
            }
            let limiter = &shared.limiter;
            if !limiter.is_shared() {
                // Memory buckets: correct them before the client can send its next request.
                for (id, limits) in buckets.iter().flatten() {
                    limiter.reconcile_local(id, *limits, estimate, actual);
                }
                return;
            }
            let limiter = Arc::clone(limiter);
            // One call corrects the key's and the client's buckets.
            let buckets: Vec<_> = buckets.into_iter().flatten().collect();
            let reconcile = async move {
                let buckets: Vec<(&str, _)> = buckets.iter().map(|(id, l)| (&**id, *l)).collect();
                limiter.reconcile_many(&buckets, estimate, actual).await;
            };
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(reconcile);
            }
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one answer's parts, each used once"
    )]
    pub(super) fn answer(
        self: &Arc<Self>,
        req: &GatewayRequest,
        provider: usize,
        lease: Lease,
        mut resp: UpstreamResponse,
        prefix: Bytes,
        attempts: u32,
        served: Served,
        span: tracing::Span,
    ) -> Answer {
        let (pname, key) = lease.names();
        strip_key_limits(&mut resp.headers);
        // Room for what the gateway adds on the way out (its own and the client's rate-limit
        // headers, attempts, provider, key, request id): one growth of the map, not several.
        resp.headers.reserve(16);
        let sse = req.stream && is_event_stream(&resp.headers);
        if req.records && resp.status.is_success() {
            crate::ownership::record_answer(&self.records, req, &prefix, sse, lease.bucket_id());
        }
        let json = resp
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| names_json(v.as_bytes()));
        let tap = if sse {
            Some(UsageTap::stream(req.strip_usage))
        } else {
            json.then(UsageTap::body)
        };
        let framing = if sse {
            Framing::Sse {
                end: req.endpoint.stream_end(),
                max_event: self.max_event,
            }
        } else {
            let length = resp
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok());
            Framing::Raw { length }
        };
        let on_end = self.on_end(req, provider, lease, span);
        let body = guard(prefix, resp.body, self.idle_timeout, framing, tap, on_end);
        let body = Body::new(body);
        Answer {
            status: resp.status,
            headers: resp.headers,
            body,
            provider: pname,
            key,
            attempts,
            served,
            hold: None,
        }
    }
}

/// The upstream key's own rate-limit headers (read into its buckets already) are the gateway's
/// business, not the client's: a client sees its own limits (the client-limit layer sets them)
/// or none.
fn strip_key_limits(headers: &mut http::HeaderMap) {
    let is_limit = |n: &http::HeaderName| {
        let n = n.as_str();
        n.starts_with("x-ratelimit-") || n.starts_with("anthropic-ratelimit-")
    };
    if !headers.keys().any(is_limit) {
        return;
    }
    let names: Vec<http::HeaderName> = headers.keys().filter(|n| is_limit(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// Whether a `content-type` names JSON (`application/json`, `+json` types; any case). A
/// substring search's setup costs more than these few bytes.
fn names_json(value: &[u8]) -> bool {
    value.windows(4).any(|w| w.eq_ignore_ascii_case(b"json"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_media_types_are_named_in_any_case() {
        for value in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/problem+json",
        ] {
            assert!(super::names_json(value.as_bytes()), "{value}");
        }
        for value in [
            "text/event-stream",
            "text/plain",
            "",
            "jso",
            "application/octet-stream",
        ] {
            assert!(!super::names_json(value.as_bytes()), "{value}");
        }
    }
}
