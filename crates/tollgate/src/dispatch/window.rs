//! A target's context window: whether a request's estimated prompt plus the completion it asks
//! for fits the window a target declares (`context_window`), and, where the model opts in
//! (`fit_max_tokens`), the body with `max_tokens` lowered so that it does. A target that cannot
//! hold the request is skipped without an attempt (the article seed's "reduce max_tokens, or
//! fall back to a model with a larger window").

use crate::rate_limit::estimate::estimate;
use crate::request::{GatewayRequest, Target};
use bytes::Bytes;

/// The client's completion-size fields, in every dialect the gateway reads.
const MAX_FIELDS: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];

/// Whether a request fits a target.
#[derive(Debug, PartialEq, Eq)]
pub enum Fit {
    /// It fits, or the target declares no window.
    Fits,
    /// It fits with this body, whose `max_tokens` is lowered to what the window leaves.
    Lowered(Bytes),
    /// The prompt (plus the completion asked for) is larger than the window.
    TooLong {
        /// The estimated prompt tokens.
        prompt: u64,
        /// The completion tokens asked for.
        completion: u64,
        /// The window.
        window: u64,
    },
}

/// Checks `req` against `target`'s window. A request that names no completion size is held to
/// its prompt alone (the upstream sizes the completion to what is left).
pub fn fit(req: &GatewayRequest, target: &Target) -> Fit {
    let Some(window) = target.context_window.map(u64::from) else {
        return Fit::Fits;
    };
    let (prompt, completion) = match &req.counted {
        Some(counted) => counted.split(req.endpoint, 0),
        None => estimate(&req.body, req.endpoint, 0),
    };
    if prompt.saturating_add(completion) <= window {
        return Fit::Fits;
    }
    if target.fit_max_tokens && prompt < window && completion > 0 {
        if let Some(body) = lower_max_tokens(&req.body, window - prompt) {
            return Fit::Lowered(body);
        }
    }
    Fit::TooLong {
        prompt,
        completion,
        window,
    }
}

/// The body with every completion-size field it names set to `to`.
fn lower_max_tokens(body: &[u8], to: u64) -> Option<Bytes> {
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let mut changed = false;
    for field in MAX_FIELDS {
        if let Some(v) = map.get_mut(field) {
            *v = to.into();
            changed = true;
        }
    }
    changed.then(|| serde_json::to_vec(&map).ok().map(Bytes::from))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn req(body: serde_json::Value) -> GatewayRequest {
        GatewayRequest::for_test(
            Method::POST,
            "chat/completions",
            Bytes::from(body.to_string()),
        )
    }

    fn target(window: Option<u32>, fit: bool) -> Target {
        Target {
            provider: 0,
            model: None,
            max_tokens: 16,
            context_window: window,
            fit_max_tokens: fit,
            reasoning: false,
        }
    }

    fn chat(text_bytes: usize, max_tokens: Option<u64>) -> serde_json::Value {
        let mut v = serde_json::json!({
            "model": "m",
            "messages": [{"role": "user", "content": "x".repeat(text_bytes)}],
        });
        if let Some(m) = max_tokens {
            v["max_tokens"] = m.into();
        }
        v
    }

    #[test]
    fn no_window_always_fits() {
        let r = req(chat(400_000, Some(1_000_000)));
        assert_eq!(fit(&r, &target(None, false)), Fit::Fits);
    }

    #[test]
    fn a_prompt_larger_than_the_window_is_too_long() {
        // ~1000 tokens of text (4 bytes each) against a 500-token window.
        let r = req(chat(4000, None));
        assert!(matches!(
            fit(&r, &target(Some(500), true)),
            Fit::TooLong { window: 500, .. }
        ));
        assert_eq!(fit(&r, &target(Some(2000), false)), Fit::Fits);
    }

    #[test]
    fn prompt_plus_max_tokens_past_the_window_is_skipped_or_lowered() {
        let r = req(chat(4000, Some(4000)));
        assert!(matches!(
            fit(&r, &target(Some(2000), false)),
            Fit::TooLong {
                completion: 4000,
                ..
            }
        ));
        let Fit::Lowered(body) = fit(&r, &target(Some(2000), true)) else {
            panic!("expected a lowered body");
        };
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let lowered = v["max_tokens"].as_u64().unwrap();
        let (prompt, _) = estimate(&body, r.endpoint, 0);
        assert_eq!(prompt + lowered, 2000, "fills the window exactly");
        assert_eq!(v["messages"][0]["content"].as_str().unwrap().len(), 4000);
    }

    #[test]
    fn huge_numbers_do_not_overflow() {
        let r = req(chat(10, Some(u64::MAX)));
        assert!(matches!(
            fit(&r, &target(Some(u32::MAX), false)),
            Fit::TooLong { .. }
        ));
        assert!(matches!(
            fit(&r, &target(Some(1000), true)),
            Fit::Lowered(_)
        ));
    }
}
