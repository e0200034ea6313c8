//! The Responses API faults: constructors for [`Fault::ResponseFailed`] with OpenAI's own
//! wording, and the plain HTTP error each failure code becomes outside a stream.

use std::time::Duration;

use super::{error_envelope, openai_wait, Fault};

/// OpenAI's `insufficient_quota` message.
const QUOTA_MESSAGE: &str = "You exceeded your current quota, please check your plan and billing \
                             details. For more information on this error, read the docs: \
                             https://platform.openai.com/docs/guides/error-codes/api-errors.";

/// OpenAI's `server_error` message.
const SERVER_ERROR_MESSAGE: &str = "An error occurred while processing your request. You can \
                                    retry your request, or contact us through our help center at \
                                    help.openai.com if the error persists. Please include the \
                                    request ID req_mock in your message.";

/// OpenAI's `server_is_overloaded` message.
const OVERLOADED_MESSAGE: &str = "Our servers are currently overloaded. Please try again later.";

impl Fault {
    /// A Responses stream that fails after `response.created` and `response.in_progress` with a
    /// `response.failed` event carrying `response.error = {"code": code, "message": message}`;
    /// a plain request gets the matching HTTP error (see [`Fault::ResponseFailed`]).
    pub fn response_failed(code: &str, message: &str) -> Fault {
        Fault::ResponseFailed {
            code: code.to_owned(),
            message: message.to_owned(),
            error_event: false,
        }
    }

    /// [`Fault::response_failed`] with code `rate_limit_exceeded` and OpenAI's tokens-per-minute
    /// wording, the wait only in the message:
    ///
    /// ```text
    /// Rate limit reached for gpt-test in organization org-mock on tokens per min (TPM): Limit
    /// 30000, Used 29000, Requested 4000. Please try again in 1.5s. Visit
    /// https://platform.openai.com/account/rate-limits to learn more.
    /// ```
    ///
    /// (one line). The wait is written `20ms` below a second, else in seconds (`2s`, `1.5s`). A plain
    /// request gets a 429 of type `tokens` with that message and no `retry-after` header.
    pub fn response_rate_limited(wait: Duration) -> Fault {
        let message = format!(
            "Rate limit reached for gpt-test in organization org-mock on tokens per min (TPM): \
             Limit 30000, Used 29000, Requested 4000. Please try again in {}. Visit \
             https://platform.openai.com/account/rate-limits to learn more.",
            openai_wait(wait)
        );
        Fault::response_failed("rate_limit_exceeded", &message)
    }

    /// [`Fault::response_failed`] with code `insufficient_quota` ("You exceeded your current
    /// quota, please check your plan and billing details..."): the key is out of money. A plain
    /// request gets a 429 of type `insufficient_quota`.
    pub fn response_insufficient_quota() -> Fault {
        Fault::response_failed("insufficient_quota", QUOTA_MESSAGE)
    }

    /// [`Fault::response_failed`] with code `server_error` ("An error occurred while processing
    /// your request. You can retry your request..."). A plain request gets a 500.
    pub fn response_server_error() -> Fault {
        Fault::response_failed("server_error", SERVER_ERROR_MESSAGE)
    }

    /// [`Fault::response_failed`] with code `server_is_overloaded` ("Our servers are currently
    /// overloaded. Please try again later."). A plain request gets a 503.
    pub fn response_overloaded() -> Fault {
        Fault::response_failed("server_is_overloaded", OVERLOADED_MESSAGE)
    }

    /// The failure for `code` as the helpers above word it (`rate_limit_exceeded` waits 1.5s);
    /// any other code gets the message "Mock failure: CODE.". What the `x-mock-fault` header
    /// forms `response-failed=CODE` and `response-error=CODE` use.
    pub fn response_failure_for_code(code: &str) -> Fault {
        match code {
            "rate_limit_exceeded" => Fault::response_rate_limited(Duration::from_millis(1500)),
            "insufficient_quota" => Fault::response_insufficient_quota(),
            "server_error" => Fault::response_server_error(),
            "server_is_overloaded" => Fault::response_overloaded(),
            other => Fault::response_failed(other, &format!("Mock failure: {other}.")),
        }
    }

    /// This [`Fault::ResponseFailed`] sent as an `error` event (`{"type": "error", "code",
    /// "message", "param": null, "sequence_number"}`) instead of `response.failed`; also inside
    /// [`Fault::flaky`], [`Fault::streams_only`] and [`Fault::gzipped`]. Other faults are
    /// returned unchanged.
    pub fn as_error_event(self) -> Fault {
        match self {
            Fault::ResponseFailed { code, message, .. } => Fault::ResponseFailed {
                code,
                message,
                error_event: true,
            },
            Fault::Flaky { every, fault } => Fault::Flaky {
                every,
                fault: Box::new(fault.as_error_event()),
            },
            Fault::StreamsOnly(fault) => Fault::StreamsOnly(Box::new(fault.as_error_event())),
            Fault::Gzip(Some(fault)) => Fault::Gzip(Some(Box::new(fault.as_error_event()))),
            other => other,
        }
    }
}

/// What a fault means for a request that is not a Responses stream (a plain request, or another
/// route): a [`Fault::ResponseFailed`] becomes the HTTP error OpenAI sends for its code, a
/// [`Fault::ResponseCutAfter`] or [`Fault::ResponseEndAfter`] nothing; others stay.
pub(crate) fn outside_responses_stream(fault: Fault) -> Option<Fault> {
    match fault {
        Fault::ResponseFailed { code, message, .. } => Some(failure_as_status(&code, &message)),
        Fault::ResponseCutAfter(_) | Fault::ResponseEndAfter(_) => None,
        other => Some(other),
    }
}

/// The plain HTTP error OpenAI sends for a failure `code` outside a stream: a
/// [`Fault::Status`] with the same message and code.
pub(crate) fn failure_as_status(code: &str, message: &str) -> Fault {
    let (status, kind) = match code {
        "rate_limit_exceeded" => (429, "tokens"),
        "insufficient_quota" => (429, "insufficient_quota"),
        "context_length_exceeded" => (400, "invalid_request_error"),
        "server_is_overloaded" => (503, "server_error"),
        _ => (500, "server_error"),
    };
    Fault::Status {
        status,
        body: error_envelope(message, kind, Some(code)).to_string(),
        headers: Vec::new(),
    }
}
