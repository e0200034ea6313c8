//! Faults: what can go wrong with one answer, how tests ask for it, and the
//! OpenAI-shaped error bodies the fake upstream sends.
//!
//! A fault comes from one of two places, checked in this order:
//! 1. the per-key script ([`Scripts`]): first the one-shot queue, then the
//!    "always" fault set with `MockHandle::script_always`;
//! 2. the `x-mock-fault` request header (see [`parse_fault_header`]).
//!
//! A scripted fault may be conditional ([`Fault::Flaky`], [`Fault::StreamsOnly`]); [`choose`]
//! resolves it for the request at hand, and a request it spares is answered as if nothing were
//! scripted for its key.
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
    /// Wait this long, then apply the inner fault (a slow 429, say).
    Delayed(Duration, Box<Fault>),
    /// Send this many body pieces (SSE events when streaming; for a plain
    /// answer, the first half of the body when N >= 1), then abort the body
    /// with an error: the client sees a truncated response and never `[DONE]`.
    BreakAfter(usize),
    /// Status 200 whose first and only SSE event is an `{"error": ...}` object,
    /// then a clean end of stream. A non-streaming request gets the same
    /// error object as a 200 JSON body. On Anthropic's `/v1/messages` the
    /// event is `event: error` with an `overloaded_error`.
    StreamErrorFirst,
    /// A Responses API stream (`POST /v1/responses` with `"stream": true`) that fails in-band:
    /// `response.created` and `response.in_progress` as usual, then a terminal `response.failed`
    /// event whose `response.status` is `"failed"` and whose `response.error` is
    /// `{"code": code, "message": message}` (with `error_event`, an `error` event
    /// `{"type": "error", "code", "message", "param": null, "sequence_number"}` instead), then a
    /// clean end of stream. The stored response (see `GET /v1/responses/{id}`) is the failed one.
    ///
    /// A non-streaming request (on `/v1/responses` or any other route) gets the plain HTTP error
    /// OpenAI sends for `code` instead: `rate_limit_exceeded` a 429 of type `tokens`,
    /// `insufficient_quota` a 429 of type `insufficient_quota`, `context_length_exceeded` a
    /// 400, `server_is_overloaded` a 503, anything else a 500 `server_error`; the body carries
    /// the same message and code. Build it with [`Fault::response_failed`],
    /// [`Fault::response_rate_limited`], [`Fault::response_insufficient_quota`] or
    /// [`Fault::response_server_error`], and [`Fault::as_error_event`].
    ResponseFailed {
        /// `response.error.code`, e.g. `rate_limit_exceeded`.
        code: String,
        /// `response.error.message`.
        message: String,
        /// Send an `error` event instead of `response.failed`.
        error_event: bool,
    },
    /// A Responses API stream cut after this many output deltas (`response.output_text.delta`
    /// or `response.function_call_arguments.delta` events; more than the answer has means all
    /// of them): every event up to and including that delta, then the connection is aborted
    /// with no terminal event, as when a provider drops the connection mid-answer. `0` cuts
    /// right before the first delta. Other requests (plain, or other routes) are answered
    /// normally. For a cut counted in SSE events on any route, see [`Fault::BreakAfter`].
    ResponseCutAfter(usize),
    /// Like [`Fault::ResponseCutAfter`], but the stream then ends cleanly (a proper end of the
    /// chunked body): no `response.completed`, `response.failed` or `response.incomplete`, which
    /// a client must still treat as a failed turn.
    ResponseEndAfter(usize),
    /// Send the body up to its first piece of output (a stream's role-only
    /// chunk or `response.created` and the first delta, or a chat chunk that
    /// starts a tool call; a plain body's first half), then wait for
    /// `MockHandle::release_holds` before sending the rest.
    HoldAfterFirst,
    /// Send nothing, not even headers, until `MockHandle::release_holds` (then answer
    /// normally) or until the client hangs up: an upstream that took the request and went
    /// silent.
    Hang,
    /// Answer normally, but every `usage` object reports 18446744073709551615 (`u64::MAX`)
    /// prompt, completion and total tokens (chat and legacy completions, plain or streamed with
    /// `include_usage`, and embeddings; on the Responses API `input_tokens`, `output_tokens` and
    /// `total_tokens`, with zero cached and reasoning tokens).
    HugeUsage,
    /// Compress the body with gzip and say `content-encoding: gzip`, as an upstream that ignores
    /// `accept-encoding: identity` does: the inner fault's body (an error, a broken stream...),
    /// or with `None` the normal answer. Streamed bodies are flushed piece by piece, so each
    /// event can be decoded as it arrives.
    Gzip(Option<Box<Fault>>),
    /// The inner fault for requests asking for a stream (`"stream": true` in the body); other
    /// requests are answered as if nothing were scripted.
    StreamsOnly(Box<Fault>),
    /// The inner fault for the `every`-th, `2·every`-th, ... request that reaches this fault for
    /// its key (counted per key; `every = 0` never fails); the others are answered as if nothing
    /// were scripted. A key failing one request in `every`, reproducibly.
    Flaky {
        /// One request in this many gets the fault.
        every: u32,
        /// What those requests get.
        fault: Box<Fault>,
    },
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

    /// This fault, after `wait`.
    pub fn after(self, wait: Duration) -> Fault {
        Fault::Delayed(wait, Box::new(self))
    }

    /// A 429 `rate_limit_exceeded` answer carrying `retry-after: <secs>`.
    pub fn rate_limited(retry_after_secs: u64) -> Fault {
        Fault::status(429).with_header("retry-after", retry_after_secs.to_string())
    }

    /// A 429 `rate_limit_exceeded` whose only wait is in its message, as OpenAI words it
    /// ("... Please try again in 2s. Visit ..."), with no `retry-after` header. The wait is
    /// written `20ms` below a second, else in seconds (`2s`, `1.5s`).
    pub fn rate_limited_in_message(wait: Duration) -> Fault {
        let message = format!(
            "Rate limit reached for gpt-4o-mini in organization org-mock on requests per min \
             (RPM): Limit 3, Used 3, Requested 1. Please try again in {}. Visit \
             https://platform.openai.com/account/rate-limits to learn more.",
            openai_wait(wait)
        );
        Fault::error(429, &message, "requests", Some("rate_limit_exceeded"))
    }

    /// An answer with `status` and an OpenAI error envelope of exactly these fields (e.g. a 403
    /// `model_not_found`, or a 400 whose message speaks of quota).
    pub fn error(status: u16, message: &str, kind: &str, code: Option<&str>) -> Fault {
        Fault::Status {
            status,
            body: error_envelope(message, kind, code).to_string(),
            headers: Vec::new(),
        }
    }

    /// The normal answer, gzip-compressed (see [`Fault::Gzip`]).
    pub fn gzip() -> Fault {
        Fault::Gzip(None)
    }

    /// This fault with its body gzip-compressed (see [`Fault::Gzip`]).
    pub fn gzipped(self) -> Fault {
        Fault::Gzip(Some(Box::new(self)))
    }

    /// This fault for streaming requests only (see [`Fault::StreamsOnly`]).
    pub fn streams_only(self) -> Fault {
        Fault::StreamsOnly(Box::new(self))
    }

    /// This fault for one request in `every` (see [`Fault::Flaky`]).
    pub fn flaky(self, every: u32) -> Fault {
        Fault::Flaky {
            every,
            fault: Box::new(self),
        }
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

/// A wait as OpenAI's rate-limit messages write it: `20ms`, `2s`, `1.5s`.
fn openai_wait(wait: Duration) -> String {
    if wait < Duration::from_secs(1) {
        format!("{}ms", wait.as_millis())
    } else if wait.subsec_millis() == 0 {
        format!("{}s", wait.as_secs())
    } else {
        let seconds = format!("{:.3}", wait.as_secs_f64());
        format!("{}s", seconds.trim_end_matches('0'))
    }
}

/// `{"error": {"message", "type", "param", "code"}}`, the OpenAI error envelope (`param` null).
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
/// `try-again-in-ms=MS` (429 whose wait is only in its message), `delay-ms=200`,
/// `break-after=2`, `response-failed=CODE` and `response-error=CODE` (see
/// [`Fault::response_failure_for_code`]), `response-cut-after=N`, `response-end-after=N`,
/// `error-first`, `hold`, `hang`, `huge-usage`, `gzip`.
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
    let count = |arg: Option<&str>| number(arg).map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let code = || {
        arg.filter(|a| !a.is_empty())
            .ok_or_else(|| format!("x-mock-fault `{value}` needs a code after `=`"))
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
        "break-after" => Ok(Fault::BreakAfter(count(arg)?)),
        "try-again-in-ms" => Ok(Fault::rate_limited_in_message(Duration::from_millis(
            number(arg)?,
        ))),
        "response-failed" => Ok(Fault::response_failure_for_code(code()?)),
        "response-error" => Ok(Fault::response_failure_for_code(code()?).as_error_event()),
        "response-cut-after" => Ok(Fault::ResponseCutAfter(count(arg)?)),
        "response-end-after" => Ok(Fault::ResponseEndAfter(count(arg)?)),
        "error-first" if arg.is_none() => Ok(Fault::StreamErrorFirst),
        "hold" if arg.is_none() => Ok(Fault::HoldAfterFirst),
        "hang" if arg.is_none() => Ok(Fault::Hang),
        "huge-usage" if arg.is_none() => Ok(Fault::HugeUsage),
        "gzip" if arg.is_none() => Ok(Fault::gzip()),
        _ => Err(format!(
            "unknown x-mock-fault `{value}` (expected status=N, rate-limited=S, \
             try-again-in-ms=N, delay-ms=N, break-after=N, response-failed=CODE, \
             response-error=CODE, response-cut-after=N, response-end-after=N, error-first, hold, \
             hang, huge-usage or gzip)"
        )),
    }
}

/// Per-key scripted faults: a one-shot queue and a standing fault per key, and how many
/// requests each key's [`Fault::Flaky`] has seen.
#[derive(Debug, Default)]
pub(crate) struct Scripts {
    queued: HashMap<String, VecDeque<Fault>>,
    always: HashMap<String, Fault>,
    flaky_seen: HashMap<String, u64>,
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
        self.flaky_seen.clear();
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
///
/// A conditional script is resolved here (`streaming` says whether the request asks for a
/// stream; it is only called when a [`Fault::StreamsOnly`] needs it); a request it spares falls
/// through to the header, like a request with nothing scripted.
pub(crate) fn choose(
    scripts: &mut Scripts,
    key: Option<&str>,
    header: Option<&str>,
    streaming: impl Fn() -> bool,
) -> Option<Fault> {
    if let Some(key) = key {
        if let Some(fault) = scripts.take(Some(key)) {
            let seen = scripts.flaky_seen.entry(key.to_owned()).or_default();
            if let Some(fault) = resolve(fault, seen, &streaming) {
                return Some(fault);
            }
        }
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

/// The fault `fault` means for this request: conditions applied, `None` when it is spared.
/// `seen` counts the requests that reached a [`Fault::Flaky`] for this key.
fn resolve(fault: Fault, seen: &mut u64, streaming: &impl Fn() -> bool) -> Option<Fault> {
    match fault {
        Fault::Flaky { every, fault } => {
            *seen += 1;
            let hit = every > 0 && seen.is_multiple_of(u64::from(every));
            if hit {
                resolve(*fault, seen, streaming)
            } else {
                None
            }
        }
        Fault::StreamsOnly(fault) if streaming() => resolve(*fault, seen, streaming),
        Fault::StreamsOnly(_) => None,
        // A spared inner fault still leaves the normal answer to compress.
        Fault::Gzip(inner) => Some(Fault::Gzip(
            inner.and_then(|f| resolve(*f, seen, streaming).map(Box::new)),
        )),
        other => Some(other),
    }
}

mod responses;

#[cfg(test)]
use responses::failure_as_status;
pub(crate) use responses::outside_responses_stream;

#[cfg(test)]
mod tests;
