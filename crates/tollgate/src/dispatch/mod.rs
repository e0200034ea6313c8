//! Dispatch: the gateway stack's policies between the route and the provider, each a tower
//! `Layer` + `Service` pair with its loop explicit in its own `call`:
//!
//! - [`route`]: model → chain of targets (or a local answer for `GET /models`);
//! - [`fallback`]: walks the chain, one target at a time;
//! - [`retry`]: the attempts on one target: backoff, deadline, retry budget;
//! - [`select`]: a key per attempt (health, bucket, never one already tried), and what the
//!   attempt's outcome does to the key.
//!
//! What each outcome does is one pure table, [`decision::decide`]; the per-request state the
//! layers share travels with the request as its [`trail::Trail`]. The stack is assembled in
//! `crate::stack`.

mod answer;
pub mod backoff;
pub mod decision;
pub mod fallback;
pub(crate) mod handles;
pub mod retry;
pub mod route;
pub mod select;
pub mod trail;
pub mod window;

pub use fallback::{FallbackLayer, Routed};
pub use retry::{RetryLayer, TargetCall, TargetEnd};
pub use route::RouteLayer;
pub use select::{AttemptCall, KeySelectLayer, Missed, NoKey};

#[cfg(test)]
mod layer_tests;
#[cfg(test)]
mod tests;
