//! The gateway stack's layers as policies. A [`Policy`] says what one layer does with one
//! request, given the rest of the stack (`next`); [`PolicyLayer`] and [`PolicyService`] are the
//! `tower::Layer` and `tower::Service` every such layer shares, written once: the policy and the
//! rest of the stack behind one `Arc` (so a clone of a whole stack is one count, not one per
//! layer below), the call's future boxed once.
//!
//! A new policy is a type holding its shared state and an `impl Policy` with its `run`; the
//! stack adds it with `PolicyLayer::of(state)` (ARCHITECTURE.md, "The request path").
//!
//! `ClientAuth`, `Ownership` and `Route` are not policies: they decide requests synchronously and
//! return the next layer's future unboxed, which a policy's boxed future would cost them.

use futures_util::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// What one layer of the gateway stack does with a request, over the rest of the stack `S`
/// (the impl names what it needs of `S`: the request it takes, what it answers).
pub trait Policy<S>: Send + Sync + 'static {
    /// What the layer takes.
    type Request: Send + 'static;
    /// What it answers.
    type Response: Send + 'static;
    /// How it fails.
    type Error: Send + 'static;

    /// Serves `req`, calling `next` (ready or not: a policy that calls it more than once
    /// clones it, and `oneshot` readies each call) as often as it decides.
    fn run(
        self: Arc<Self>,
        next: S,
        req: Self::Request,
    ) -> impl Future<Output = Result<Self::Response, Self::Error>> + Send + 'static;
}

/// The layer of a [`Policy`].
pub struct PolicyLayer<P> {
    policy: Arc<P>,
}

impl<P> PolicyLayer<P> {
    /// The layer of `policy`.
    pub fn of(policy: P) -> Self {
        PolicyLayer {
            policy: Arc::new(policy),
        }
    }

    /// Its policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }
}

impl<P> Clone for PolicyLayer<P> {
    fn clone(&self) -> Self {
        PolicyLayer {
            policy: Arc::clone(&self.policy),
        }
    }
}

impl<P> std::fmt::Debug for PolicyLayer<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyLayer")
            .field("policy", &std::any::type_name::<P>())
            .finish_non_exhaustive()
    }
}

impl<P, S> Layer<S> for PolicyLayer<P> {
    type Service = PolicyService<P, S>;
    fn layer(&self, next: S) -> PolicyService<P, S> {
        PolicyService {
            shared: Arc::new(Shared {
                policy: Arc::clone(&self.policy),
                next,
            }),
        }
    }
}

/// The service of a [`Policy`] over the rest of the stack.
pub struct PolicyService<P, S> {
    shared: Arc<Shared<P, S>>,
}

/// A policy and the rest of the stack under it, shared by every clone of the service.
struct Shared<P, S> {
    policy: Arc<P>,
    next: S,
}

impl<P, S> Clone for PolicyService<P, S> {
    fn clone(&self) -> Self {
        PolicyService {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<P, S> Service<P::Request> for PolicyService<P, S>
where
    P: Policy<S>,
    S: Clone,
{
    type Response = P::Response;
    type Error = P::Error;
    type Future = BoxFuture<'static, Result<P::Response, P::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), P::Error>> {
        // The policy readies the rest of the stack itself, for every call it makes.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: P::Request) -> Self::Future {
        // The rest of the stack is a policy service too (one count to clone) or the upstream.
        let next = self.shared.next.clone();
        Box::pin(Arc::clone(&self.shared.policy).run(next, req))
    }
}
