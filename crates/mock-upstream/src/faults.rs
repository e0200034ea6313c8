//! Faults: what can go wrong with one answer, how tests ask for it, and the
//! OpenAI-shaped error bodies the fake upstream sends.
//!
//! A fault comes from one of two places, checked in this order:
//! 1. the per-key script ([`Scripts`]): first the one-shot queue, then the
//!    "always" fault set with `MockHandle::script_always`;
//! 2. the `x-mock-fault` request header (see [`parse_fault_header`]).
//!
//! Everything here is pure so the precedence rules are testable without a socket.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::{json, Value};

/// One thing that goes wrong (or slow) with a single answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer exactly this: status, body and extra headers. A `content-type:
    /// application/json` header is added unless `headers` names a content type.
    Status {
        /// HTTP status code.
        status: u16,
        /// Response body, sent verbatim.
        body: String,
        /// Extra response headers, in order.
        headers: Vec<(String, String)>,
    },
    /// Wait this long before sending headers, then answer normally.
    Delay(Duration),
    /// Send this many body pieces (SSE events when streaming; for a plain
    /// answer, the first half of the body when N >= 1), then abort the body
    /// with an error: the client sees a truncated response and never `[DONE]`.
    BreakAfter(usize),
    /// Status 200 whose first and only SSE event is an `{"error": ...}` object,
    /// then a clean end of stream. A non-streaming request gets the same
    /// error object as a 200 JSON body. On Anthropic's `/v1/messages` the
    /// event is `event: error` with an `overloaded_error`.
    StreamErrorFirst,
    /// Send the first body piece, then wait for `MockHandle::release_holds`
    /// before sending the rest.
    HoldAfterFirst,
}

impl Fault {
    /// An OpenAI-shaped error answer for `status`: 429 is `rate_limit_exceeded`
    /// (type `requests`), 401 `invalid_api_key`, other 4xx
    /// `invalid_request_error`, 5xx `server_error`. On Anthropic's
    /// `/v1/messages` the body is Anthropic-shaped instead: 429
    /// `rate_limit_error`, 401 `authentication_error`, 529 `overloaded_error`,
    /// other 5xx `api_error`, other 4xx `invalid_request_error`...
    pub fn status(status: u16) -> Fault {
        Fault::Status {
            status,
            body: error_body_for_status(status).to_string(),
            headers: Vec::new(),
        }
    }

    /// A 429 `rate_limit_exceeded` answer carrying `retry-after: <secs>`.
    pub fn rate_limited(retry_after_secs: u64) -> Fault {
        Fault::status(429).with_header("retry-after", retry_after_secs.to_string())
    }

    /// Adds a response header to a [`Fault::Status`]; other faults are returned
    /// unchanged because they answer with the normal headers.
    pub fn with_header(self, name: impl Into<String>, value: impl Into<String>) -> Fault {
        match self {
            Fault::Status {
                status,
                body,
                mut headers,
            } => {
                headers.push((name.into(), value.into()));
                Fault::Status {
                    status,
                    body,
                    headers,
                }
            }
            other => other,
        }
    }
}

/// `{"error": {"message", "type", "param", "code"}}`, the OpenAI error envelope.
pub(crate) fn error_envelope(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
}

/// The error body OpenAI would send with `status`.
pub(crate) fn error_body_for_status(status: u16) -> Value {
    match status {
        429 => error_envelope(
            "Rate limit reached for requests (mock). Please try again later.",
            "requests",
            Some("rate_limit_exceeded"),
        ),
        401 => error_envelope(
            "Incorrect API key provided (mock).",
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
        403 => error_envelope(
            "You are not allowed to access this resource (mock).",
            "invalid_request_error",
            Some("permission_denied"),
        ),
        404 => error_envelope(
            "The model does not exist or you do not have access to it (mock).",
            "invalid_request_error",
            Some("model_not_found"),
        ),
        400..=499 => error_envelope("Invalid request (mock).", "invalid_request_error", None),
        _ => error_envelope(
            "The server had an error while processing your request (mock).",
            "server_error",
            None,
        ),
    }
}

/// The error object sent by [`Fault::StreamErrorFirst`].
pub(crate) fn stream_error_body() -> Value {
    error_envelope("upstream overloaded", "server_error", None)
}

/// Parses an `x-mock-fault` header value.
///
/// Accepted: `status=503`, `rate-limited=SECS` (429 with `retry-after`),
/// `delay-ms=200`, `break-after=2`, `error-first`, `hold`.
/// Returns a message naming the bad value otherwise.
pub(crate) fn parse_fault_header(value: &str) -> Result<Fault, String> {
    let value = value.trim();
    let (name, arg) = match value.split_once('=') {
        Some((name, arg)) => (name.trim(), Some(arg.trim())),
        None => (value, None),
    };
    let number = |arg: Option<&str>| -> Result<u64, String> {
        arg.and_then(|a| a.parse::<u64>().ok())
            .ok_or_else(|| format!("x-mock-fault `{value}` needs a number after `=`"))
    };
    match name {
        "status" => {
            let status = number(arg)?;
            match u16::try_from(status) {
                Ok(s) if (100..=999).contains(&s) => Ok(Fault::status(s)),
                _ => Err(format!("x-mock-fault `{value}`: bad status")),
            }
        }
        "rate-limited" => Ok(Fault::rate_limited(number(arg)?)),
        "delay-ms" => Ok(Fault::Delay(Duration::from_millis(number(arg)?))),
        "break-after" => {
            let n = usize::try_from(number(arg)?).unwrap_or(usize::MAX);
            Ok(Fault::BreakAfter(n))
        }
        "error-first" if arg.is_none() => Ok(Fault::StreamErrorFirst),
        "hold" if arg.is_none() => Ok(Fault::HoldAfterFirst),
        _ => Err(format!(
            "unknown x-mock-fault `{value}` (expected status=N, rate-limited=S, delay-ms=N, \
             break-after=N, error-first or hold)"
        )),
    }
}

/// Per-key scripted faults: a one-shot queue and a standing fault per key.
#[derive(Debug, Default)]
pub(crate) struct Scripts {
    queued: HashMap<String, VecDeque<Fault>>,
    always: HashMap<String, Fault>,
}

impl Scripts {
    /// Appends one-shot faults for `key`.
    pub(crate) fn push(&mut self, key: &str, faults: impl IntoIterator<Item = Fault>) {
        self.queued
            .entry(key.to_owned())
            .or_default()
            .extend(faults);
    }

    /// Makes every request with `key` get `fault` (after the queue is drained).
    pub(crate) fn set_always(&mut self, key: &str, fault: Fault) {
        self.always.insert(key.to_owned(), fault);
    }

    /// Forgets all scripts.
    pub(crate) fn clear(&mut self) {
        self.queued.clear();
        self.always.clear();
    }

    /// The fault for the next request carrying `key`: pops the queue first,
    /// then falls back to the standing fault; `None` means answer normally
    /// (or use the header).
    pub(crate) fn take(&mut self, key: Option<&str>) -> Option<Fault> {
        let key = key?;
        if let Some(queue) = self.queued.get_mut(key) {
            if let Some(fault) = queue.pop_front() {
                if queue.is_empty() {
                    self.queued.remove(key);
                }
                return Some(fault);
            }
        }
        self.always.get(key).cloned()
    }
}

/// Chooses the fault for one request: the script wins over the header; a
/// malformed header becomes a 400 answer so typos in tests are loud.
pub(crate) fn choose(
    scripts: &mut Scripts,
    key: Option<&str>,
    header: Option<&str>,
) -> Option<Fault> {
    if let Some(fault) = scripts.take(key) {
        return Some(fault);
    }
    let header = header?;
    Some(
        parse_fault_header(header).unwrap_or_else(|message| Fault::Status {
            status: 400,
            body: error_envelope(&message, "invalid_request_error", None).to_string(),
            headers: Vec::new(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_faults_pop_in_order_then_normal() {
        let mut s = Scripts::default();
        s.push("k", [Fault::status(503), Fault::rate_limited(2)]);
        assert_eq!(s.take(Some("k")), Some(Fault::status(503)));
        assert_eq!(s.take(Some("other")), None);
        assert_eq!(s.take(Some("k")), Some(Fault::rate_limited(2)));
        assert_eq!(s.take(Some("k")), None);
        assert_eq!(s.take(None), None);
    }

    #[test]
    fn queue_wins_over_always_and_always_persists() {
        let mut s = Scripts::default();
        s.set_always("k", Fault::status(401));
        s.push("k", [Fault::HoldAfterFirst]);
        assert_eq!(s.take(Some("k")), Some(Fault::HoldAfterFirst));
        assert_eq!(s.take(Some("k")), Some(Fault::status(401)));
        assert_eq!(s.take(Some("k")), Some(Fault::status(401)));
        s.clear();
        assert_eq!(s.take(Some("k")), None);
    }

    #[test]
    fn script_takes_precedence_over_header() {
        let mut s = Scripts::default();
        s.push("k", [Fault::BreakAfter(1)]);
        assert_eq!(
            choose(&mut s, Some("k"), Some("status=500")),
            Some(Fault::BreakAfter(1))
        );
        assert_eq!(
            choose(&mut s, Some("k"), Some("status=500")),
            Some(Fault::status(500))
        );
        assert_eq!(choose(&mut s, Some("k"), None), None);
    }

    #[test]
    fn parses_every_header_form() {
        assert_eq!(parse_fault_header("status=503"), Ok(Fault::status(503)));
        assert_eq!(
            parse_fault_header(" delay-ms = 200 "),
            Ok(Fault::Delay(Duration::from_millis(200)))
        );
        assert_eq!(
            parse_fault_header("break-after=2"),
            Ok(Fault::BreakAfter(2))
        );
        assert_eq!(
            parse_fault_header("error-first"),
            Ok(Fault::StreamErrorFirst)
        );
        assert_eq!(parse_fault_header("hold"), Ok(Fault::HoldAfterFirst));
        assert_eq!(
            parse_fault_header("rate-limited=3"),
            Ok(Fault::rate_limited(3))
        );
        assert!(parse_fault_header("status=abc").is_err());
        assert!(parse_fault_header("status=70000").is_err());
        assert!(parse_fault_header("explode").is_err());
    }

    #[test]
    fn bad_header_becomes_400() {
        let mut s = Scripts::default();
        match choose(&mut s, None, Some("nope")) {
            Some(Fault::Status { status, .. }) => assert_eq!(status, 400),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn status_bodies_are_openai_shaped() -> Result<(), serde_json::Error> {
        let rate: Value = match Fault::rate_limited(7) {
            Fault::Status {
                status,
                body,
                headers,
            } => {
                assert_eq!(status, 429);
                assert_eq!(headers, vec![("retry-after".into(), "7".into())]);
                serde_json::from_str(&body)?
            }
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(rate["error"]["code"], "rate_limit_exceeded");
        assert_eq!(rate["error"]["type"], "requests");
        assert_eq!(
            error_body_for_status(401)["error"]["code"],
            "invalid_api_key"
        );
        assert_eq!(
            error_body_for_status(400)["error"]["type"],
            "invalid_request_error"
        );
        assert_eq!(error_body_for_status(502)["error"]["type"], "server_error");
        assert!(error_body_for_status(503)["error"]["param"].is_null());
        Ok(())
    }

    #[test]
    fn with_header_only_touches_status() {
        assert_eq!(
            Fault::HoldAfterFirst.with_header("a", "b"),
            Fault::HoldAfterFirst
        );
    }
}
