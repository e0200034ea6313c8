//! The route layer: a request's model → its chain of targets (the configured targets, the
//! default provider for an unknown model, or 404), keeping only targets whose provider can serve
//! the endpoint. `GET /models` is answered here from the configured models when there are any.

use super::fallback::Routed;
use crate::config::Settings;
use crate::error::GatewayError;
use crate::provider::Provider;
use crate::request::{Answer, GatewayRequest, Served, Target};
use axum::body::Body;
use futures_util::future::{ready, Either, Ready};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// The route layer's state: the models and the providers.
pub struct RouteShared {
    settings: Arc<Settings>,
    providers: Arc<[Provider]>,
    /// Each configured model's targets, by model index, made with the layer (a request whose
    /// providers all serve its endpoint takes its chain as a count, not a list built anew).
    /// The layer is made per thread, and so are these counts and the model names' (a target
    /// is cloned for every attempt).
    chains: Vec<Arc<[Target]>>,
}

/// Builds [`Route`] services.
#[derive(Clone)]
pub struct RouteLayer {
    shared: Arc<RouteShared>,
}

impl RouteLayer {
    /// Routes by `settings.models` over `providers`.
    pub fn new(settings: Arc<Settings>, providers: Arc<[Provider]>) -> Self {
        let default_max = settings.limits.default_max_tokens;
        let chains = settings
            .models
            .iter()
            .map(|m| {
                m.targets
                    .iter()
                    .map(|t| Target {
                        provider: t.provider,
                        model: Some(Arc::from(&*t.model)),
                        max_tokens: t.max_tokens.unwrap_or(default_max),
                        context_window: t.context_window,
                        fit_max_tokens: m.fit_max_tokens,
                        reasoning: t.reasoning,
                    })
                    .collect()
            })
            .collect();
        RouteLayer {
            shared: Arc::new(RouteShared {
                settings,
                providers,
                chains,
            }),
        }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Route<S> {
        Route {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Turns a request into a routed one. Not a policy: it decides every request before calling
/// on, so its future is the next layer's own (or the answer it made), not one more boxed
/// future around it (as `ClientAuth` and `Ownership`).
#[derive(Clone)]
pub struct Route<S> {
    inner: S,
    shared: Arc<RouteShared>,
}

impl<S> Service<GatewayRequest> for Route<S>
where
    S: Service<Routed, Response = Answer, Error = GatewayError>,
{
    type Response = Answer;
    type Error = GatewayError;
    type Future = Either<Ready<Result<Answer, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: GatewayRequest) -> Self::Future {
        if let Some(answer) = self.shared.models_answer(&req) {
            return Either::Left(ready(answer));
        }
        match self.shared.chain(&req) {
            Ok(chain) => Either::Right(self.inner.call(Routed {
                req: Arc::new(req),
                chain,
            })),
            Err(GatewayError::EndpointUnsupported { .. })
                if req.endpoint == crate::request::Endpoint::CountTokens =>
            {
                Either::Left(ready(Ok(count_answer(&req))))
            }
            Err(e) => Either::Left(ready(Err(e))),
        }
    }
}

impl RouteShared {
    /// The chain for a request: configured targets, the default provider, or 404; only the
    /// targets that can serve its endpoint.
    fn chain(&self, req: &GatewayRequest) -> Result<Arc<[Target]>, GatewayError> {
        let default_max = self.settings.limits.default_max_tokens;
        let pass_through = |provider| Target {
            provider,
            model: None,
            max_tokens: default_max,
            context_window: None,
            fit_max_tokens: false,
            reasoning: false,
        };
        let serves = |t: &Target| self.providers[t.provider].supports(req);
        let only = |provider| -> Arc<[Target]> {
            Some(pass_through(provider))
                .into_iter()
                .filter(serves)
                .collect()
        };
        let chain = match (req.model.as_deref(), req.model_index) {
            (Some(_), Some(i)) => match self.chains.get(i) {
                Some(all) if all.iter().all(serves) => Arc::clone(all),
                Some(all) => all.iter().filter(|t| serves(t)).cloned().collect(),
                None => Arc::new([]),
            },
            (Some(model), None) => match self.settings.default_provider {
                Some(p) => only(p),
                None => return Err(GatewayError::ModelNotFound(model.to_owned())),
            },
            // No model (GET /models/…, files, multipart uploads): the default provider, else the first.
            (None, _) => only(self.settings.default_provider.unwrap_or(0)),
        };
        if chain.is_empty() {
            return Err(GatewayError::EndpointUnsupported {
                model: req.model.clone().unwrap_or_default(),
                endpoint: req.path.clone(),
            });
        }
        Ok(chain)
    }

    /// `GET /models` and `GET /models/{name}` from the configured models, filtered by what the
    /// client may use; `None` when the request is not that, or no models are configured.
    fn models_answer(&self, req: &GatewayRequest) -> Option<Result<Answer, GatewayError>> {
        let path = req.path.as_str();
        let listing = req.method == Method::GET
            && (path == "models" || path.starts_with("models/"))
            && !self.settings.models.is_empty();
        if !listing {
            return None;
        }
        let visible = |name: &str| req.client.as_ref().is_none_or(|c| c.allows(name));
        let model = |name: &str| serde_json::json!({"id": name, "object": "model", "created": 0, "owned_by": "tollgate"});
        let body = match path.strip_prefix("models/") {
            None => {
                let data: Vec<_> = self
                    .settings
                    .models
                    .iter()
                    .filter(|m| visible(&m.name))
                    .map(|m| model(&m.name))
                    .collect();
                serde_json::json!({"object": "list", "data": data})
            }
            Some(name) if self.settings.model(name).is_some() && visible(name) => model(name),
            Some(name) => return Some(Err(GatewayError::ModelNotFound(name.to_owned()))),
        };
        Some(Ok(own_answer(Body::from(body.to_string()))))
    }
}

/// An answer the gateway makes itself (JSON, 200).
fn own_answer(body: Body) -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Answer {
        status: StatusCode::OK,
        headers,
        body,
        provider: "tollgate".into(),
        key: "-".into(),
        attempts: 0,
        served: Served::FirstTry,
        hold: None,
    }
}

/// `/v1/messages/count_tokens` when no target of the model can count (only Anthropic's can):
/// the gateway's own estimate of the prompt.
fn count_answer(req: &GatewayRequest) -> Answer {
    let prompt = req.counted.map_or_else(
        || crate::rate_limit::estimate::estimate(&req.body, req.endpoint, 0).0,
        |c| c.prompt,
    );
    own_answer(Body::from(crate::provider::messages::count_answer(prompt)))
}
