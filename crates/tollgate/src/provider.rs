//! Providers turn a `GatewayRequest` into the request one upstream dialect expects: URL, auth
//! header and (when the upstream model name differs) the body. Pure functions, no I/O.

use crate::config::{ProviderKind, ProviderSettings, Secret};
use crate::request::{Endpoint, GatewayRequest};
use crate::upstream::UpstreamRequest;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION};

/// Whether a provider of `kind` can serve `endpoint`.
pub fn supports(kind: ProviderKind, endpoint: Endpoint) -> bool {
    match kind {
        ProviderKind::OpenAi => true,
        ProviderKind::Azure => azure_operation(endpoint).is_some(),
    }
}

fn azure_operation(endpoint: Endpoint) -> Option<&'static str> {
    match endpoint {
        Endpoint::ChatCompletions => Some("chat/completions"),
        Endpoint::Completions => Some("completions"),
        Endpoint::Embeddings => Some("embeddings"),
        _ => None,
    }
}

/// Why a request could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The provider cannot serve the endpoint.
    #[error("provider cannot serve this endpoint")]
    Unsupported,
    /// The key is not a valid header value.
    #[error("key is not a valid header value")]
    BadKey,
}

/// Builds the upstream request for one attempt. `model` is the target's upstream model name
/// (`None` for requests without a model, which pass through unchanged).
pub fn build(
    provider: &ProviderSettings,
    req: &GatewayRequest,
    model: Option<&str>,
    key: &Secret,
) -> Result<UpstreamRequest, BuildError> {
    let mut headers = req.headers.clone();
    let body = match (model, req.model.as_deref()) {
        (Some(upstream), Some(asked)) if upstream != asked => {
            with_model(&req.body, upstream).unwrap_or_else(|| req.body.clone())
        }
        _ => req.body.clone(),
    };
    let url = match provider.kind {
        ProviderKind::OpenAi => {
            let mut v = HeaderValue::try_from(format!("Bearer {}", key.expose()))
                .map_err(|_| BuildError::BadKey)?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
            let mut url = String::with_capacity(provider.base_url.len() + req.path.len() + 2);
            url.push_str(&provider.base_url);
            url.push('/');
            url.push_str(&req.path);
            if let Some(q) = &req.query {
                url.push('?');
                url.push_str(q);
            }
            url
        }
        ProviderKind::Azure => {
            let op = azure_operation(req.endpoint).ok_or(BuildError::Unsupported)?;
            let mut v = HeaderValue::try_from(key.expose()).map_err(|_| BuildError::BadKey)?;
            v.set_sensitive(true);
            headers.insert("api-key", v);
            let deployment = model.or(req.model.as_deref()).unwrap_or_default();
            let version = provider.api_version.as_deref().unwrap_or("2024-10-21");
            format!(
                "{}/openai/deployments/{deployment}/{op}?api-version={version}",
                provider.base_url
            )
        }
    };
    Ok(UpstreamRequest {
        method: req.method.clone(),
        url,
        headers,
        body,
    })
}

/// The body with its `model` replaced; `None` when it is not a JSON object.
fn with_model(body: &Bytes, model: &str) -> Option<Bytes> {
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    map.insert("model".into(), serde_json::Value::String(model.to_owned()));
    serde_json::to_vec(&map).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeySettings;
    use http::{HeaderMap, Method};

    fn provider(kind: ProviderKind) -> ProviderSettings {
        ProviderSettings {
            name: "p".into(),
            kind,
            base_url: "https://host/v1".into(),
            api_version: Some("2024-10-21".into()),
            default: false,
            keys: vec![KeySettings {
                id: "k".into(),
                secret: Secret::new("sk-1"),
                weight: 1,
                rpm: None,
                tpm: None,
            }],
        }
    }

    fn request(path: &str, body: &str) -> GatewayRequest {
        let mut r = GatewayRequest::for_test(Method::POST, path, Bytes::from(body.to_owned()));
        r.headers = HeaderMap::new();
        r
    }

    #[test]
    fn openai_keeps_the_body_when_the_model_is_the_same() {
        let req = request("chat/completions", r#"{"model":"m","messages":[]}"#);
        let up = build(
            &provider(ProviderKind::OpenAi),
            &req,
            Some("m"),
            &Secret::new("sk-1"),
        )
        .unwrap();
        assert_eq!(up.url, "https://host/v1/chat/completions");
        assert_eq!(up.headers[AUTHORIZATION], "Bearer sk-1");
        assert!(up.headers[AUTHORIZATION].is_sensitive());
        assert_eq!(up.body, req.body);
    }

    #[test]
    fn openai_rewrites_the_model_for_the_target() {
        let req = request("chat/completions", r#"{"model":"alias","messages":[]}"#);
        let up = build(
            &provider(ProviderKind::OpenAi),
            &req,
            Some("real"),
            &Secret::new("sk-1"),
        )
        .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(body["model"], "real");
        assert_eq!(body["messages"], serde_json::json!([]));
    }

    #[test]
    fn azure_uses_deployment_urls_and_api_key() {
        let req = request("chat/completions", r#"{"model":"alias"}"#);
        let mut p = provider(ProviderKind::Azure);
        p.base_url = "https://res.openai.azure.com".into();
        let up = build(&p, &req, Some("dep-1"), &Secret::new("az-key")).unwrap();
        assert_eq!(up.url, "https://res.openai.azure.com/openai/deployments/dep-1/chat/completions?api-version=2024-10-21");
        assert_eq!(up.headers["api-key"], "az-key");
        assert!(up.headers.get(AUTHORIZATION).is_none());
        let files = request("files", "");
        assert!(matches!(
            build(&p, &files, None, &Secret::new("k")),
            Err(BuildError::Unsupported)
        ));
    }
}

pub mod anthropic;
