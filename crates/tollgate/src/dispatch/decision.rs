//! What each classified outcome does, as one pure table: [`decide`]. The key-selection layer
//! applies the key's part (its health, whether the request may use it again); the retry layer
//! applies what happens next to the request. Nothing else decides.

use crate::provider::classify::Kind;

/// What an outcome does to the key that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEffect {
    /// It answered: a probe restores it.
    Restore,
    /// Rate limited: it cools for what the provider asked (or the default), clamped.
    Cool,
    /// Rejected or out of money: disabled until a probe.
    Disable,
    /// A transient failure: a probe fails, a healthy key stays healthy.
    Fail,
    /// Nothing about the key.
    Keep,
}

/// Whether the request may use the key again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclude {
    /// Yes.
    No,
    /// Not for the rest of the request.
    ForRequest,
    /// Only after a backoff, and after the keys not yet tried.
    UntilBackoff,
}

/// What happens next to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// The answer goes to the client.
    Answer,
    /// Another attempt on this target (another key first; the same one after a backoff).
    Retry,
    /// This target cannot serve it: the next target, for the given reason.
    NextTarget(&'static str),
    /// The upstream's error goes to the client as is.
    PassThrough,
}

/// The row of the outcome table for one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The key's part.
    pub key: KeyEffect,
    /// Whether the key stays available to this request.
    pub exclude: Exclude,
    /// The request's part.
    pub then: Then,
}

impl Decision {
    /// The row adjusted for what the upstream asked: a transient answer asking for longer than
    /// the backoff's cap (`max_delay`) cools its key for that long instead (clamped by the
    /// pool), so the request moves on to another key or target at once; on the last target
    /// the retry layer may still wait for it when the deadline allows.
    pub fn with_ask(
        self,
        asked: Option<std::time::Duration>,
        max_delay: std::time::Duration,
    ) -> Self {
        match (self.key, asked) {
            (KeyEffect::Fail, Some(wait)) if wait > max_delay => Decision {
                key: KeyEffect::Cool,
                exclude: Exclude::UntilBackoff,
                then: self.then,
            },
            _ => self,
        }
    }
}

/// The outcome table (ARCHITECTURE.md, "The decision table").
pub fn decide(kind: Kind) -> Decision {
    let (key, exclude, then) = match kind {
        Kind::Success => (KeyEffect::Restore, Exclude::No, Then::Answer),
        Kind::RateLimited => (KeyEffect::Cool, Exclude::ForRequest, Then::Retry),
        Kind::QuotaExhausted | Kind::KeyRejected => {
            (KeyEffect::Disable, Exclude::ForRequest, Then::Retry)
        }
        Kind::KeyTooSmall => (KeyEffect::Keep, Exclude::ForRequest, Then::Retry),
        Kind::Transient | Kind::Timeout => (KeyEffect::Fail, Exclude::UntilBackoff, Then::Retry),
        Kind::ContextTooLong => (
            KeyEffect::Keep,
            Exclude::No,
            Then::NextTarget("context_too_long"),
        ),
        Kind::ModelUnavailable => (
            KeyEffect::Keep,
            Exclude::No,
            Then::NextTarget("model_unavailable"),
        ),
        Kind::ClientError => (KeyEffect::Keep, Exclude::No, Then::PassThrough),
        Kind::Misconfigured => (
            KeyEffect::Keep,
            Exclude::No,
            Then::NextTarget("misconfigured"),
        ),
    };
    Decision { key, exclude, then }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decision_table() {
        use Exclude as X;
        use KeyEffect as K;
        let rows = [
            (Kind::Success, K::Restore, X::No, Then::Answer),
            (Kind::RateLimited, K::Cool, X::ForRequest, Then::Retry),
            (Kind::QuotaExhausted, K::Disable, X::ForRequest, Then::Retry),
            (Kind::KeyRejected, K::Disable, X::ForRequest, Then::Retry),
            (Kind::KeyTooSmall, K::Keep, X::ForRequest, Then::Retry),
            (Kind::Transient, K::Fail, X::UntilBackoff, Then::Retry),
            (Kind::Timeout, K::Fail, X::UntilBackoff, Then::Retry),
            (
                Kind::ContextTooLong,
                K::Keep,
                X::No,
                Then::NextTarget("context_too_long"),
            ),
            (
                Kind::ModelUnavailable,
                K::Keep,
                X::No,
                Then::NextTarget("model_unavailable"),
            ),
            (Kind::ClientError, K::Keep, X::No, Then::PassThrough),
            (
                Kind::Misconfigured,
                K::Keep,
                X::No,
                Then::NextTarget("misconfigured"),
            ),
        ];
        assert_eq!(rows.len(), Kind::ALL.len(), "every kind has a row");
        for (kind, key, exclude, then) in rows {
            assert_eq!(
                decide(kind),
                Decision { key, exclude, then },
                "{}",
                kind.label()
            );
        }
    }
}
