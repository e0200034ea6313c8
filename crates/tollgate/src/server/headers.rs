//! Which headers cross the gateway: hop-by-hop headers never do (nor any the client names in
//! `Connection`), the client's credentials, cookies, proxy and forwarding headers never go
//! upstream, nor provider feature switches billed to the gateway's key (`anthropic-beta`;
//! `openai-beta` outside the endpoints that require it); the upstream's cookies, organization and
//! project ids and request id never reach the client, whose `x-request-id` is the gateway's.

use http::header::{self, HeaderName};
use http::HeaderMap;

/// `x-request-id`, as a name built once (a lookup by a string parses the name every time).
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id as the edge set it: tower-http's `RequestId` extension (a lookup by type,
/// where the header's is a hash of its name), else the header itself.
pub(crate) fn request_id<'a>(
    extensions: &'a http::Extensions,
    headers: &'a HeaderMap,
) -> Option<&'a http::HeaderValue> {
    match extensions.get::<tower_http::request_id::RequestId>() {
        Some(id) => Some(id.header_value()),
        None => headers.get(X_REQUEST_ID),
    }
}

/// Headers that belong to one connection (RFC 9110 §7.6.1) plus framing the gateway redoes.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::HOST,
];

/// Client headers that must not reach the upstream: its credentials and org scoping, its
/// cookies, proxy and forwarding headers, and provider feature switches.
const CLIENT_ONLY: [&str; 13] = [
    "authorization",
    "api-key",
    "x-api-key",
    "openai-organization",
    "openai-project",
    "keep-alive",
    "proxy-connection",
    "cookie",
    "forwarded",
    "x-real-ip",
    "via",
    "anthropic-beta",
    "client-ip",
];

/// Header name prefixes that never go upstream.
const CLIENT_ONLY_PREFIXES: [&str; 2] = ["x-forwarded-", "proxy-"];

/// Upstream answer headers the client never sees.
const UPSTREAM_ONLY: [&str; 4] = [
    "set-cookie",
    "openai-organization",
    "openai-project",
    "x-request-id",
];

/// Whether a comma-separated header value (`Connection`, `Upgrade`) lists `token`, in any case.
pub(super) fn lists(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Endpoints whose requests need `openai-beta` (the Assistants API and its objects).
fn needs_openai_beta(path: &str) -> bool {
    ["assistants", "threads", "vector_stores"]
        .iter()
        .any(|p| path.starts_with(p))
}

/// The client's headers as they go upstream (`path` is the one after `/v1/`); `features` are
/// the feature headers this client may have forwarded.
pub(super) fn upstream_headers(
    client: &HeaderMap,
    request_id: Option<&http::HeaderValue>,
    path: &str,
    features: crate::endpoint::FeatureHeaders,
) -> HeaderMap {
    // Room for what follows and what each attempt adds (the key's header, `host`): a clone of
    // this map keeps its index table, so the attempt's inserts do not rebuild it.
    let mut out = HeaderMap::with_capacity(client.len() + 4);
    // Headers the client marks as connection-specific (`Connection: x-secret-hop`) stop here;
    // `keep-alive` and `close` name no header worth the lookups.
    let connection: Option<&str> = client
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.eq_ignore_ascii_case("keep-alive") && !v.eq_ignore_ascii_case("close"));
    let named_in_connection =
        |name: &HeaderName| connection.is_some_and(|v| lists(v, name.as_str()));
    for (name, value) in client {
        let n = name.as_str();
        let allowed_feature = match n {
            // On the Messages API the provider's `anthropic_beta` decides, flag by flag.
            "anthropic-beta" => features.anthropic_beta || path.starts_with("messages"),
            "openai-beta" => features.openai_beta || needs_openai_beta(path),
            _ => false,
        };
        if !allowed_feature
            && (HOP_BY_HOP.contains(name)
                || CLIENT_ONLY.contains(&n)
                || CLIENT_ONLY_PREFIXES.iter().any(|p| n.starts_with(p))
                || name == header::CONTENT_LENGTH
                || n == "openai-beta"
                || named_in_connection(name))
        {
            continue;
        }
        if name == X_REQUEST_ID || name == header::ACCEPT_ENCODING {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    // The gateway reads error bodies, usage and answers it translates: it asks only for what
    // it can read (the client's accept-encoding would let a CDN-fronted provider gzip them).
    out.insert(
        header::ACCEPT_ENCODING,
        http::HeaderValue::from_static("identity"),
    );
    // The id the edge put on the request (the client's or its own).
    if let Some(id) = request_id {
        out.insert(X_REQUEST_ID, id.clone());
    }
    out
}

/// The upstream's headers as they go to the client (the gateway's own, such as its
/// `x-request-id`, are added by the edge). The upstream's request id stays findable as
/// `x-upstream-request-id`.
pub(super) fn client_headers(upstream: &mut HeaderMap) {
    let stays = |name: &HeaderName| {
        !(HOP_BY_HOP.contains(name)
            || matches!(name.as_str(), "keep-alive" | "proxy-connection")
            || UPSTREAM_ONLY.contains(&name.as_str()))
    };
    // One look at the few headers an answer has; the lookups only when one must go.
    if upstream.keys().all(stays) {
        return;
    }
    if let Some(id) = upstream.get(X_REQUEST_ID).cloned() {
        upstream.insert("x-upstream-request-id", id);
    }
    let gone: Vec<HeaderName> = upstream.keys().filter(|n| !stays(n)).cloned().collect();
    for name in gone {
        upstream.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_and_hop_by_hop_headers_stay_behind() {
        let mut client = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer client-key"),
            ("api-key", "x"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("host", "gw"),
            ("content-length", "10"),
            ("content-type", "application/json"),
            ("x-stainless-retry-count", "0"),
            ("x-request-id", "client-id"),
            ("accept-encoding", "gzip, br"),
        ] {
            client.insert(HeaderName::from_static(k), v.parse().unwrap());
        }
        let up = upstream_headers(
            &client,
            Some(&http::HeaderValue::from_static("req-1")),
            "chat/completions",
            Default::default(),
        );
        let names: Vec<&str> = up.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        assert_eq!(
            up["accept-encoding"], "identity",
            "upstreams are asked only for what the gateway can read"
        );
        assert_eq!(up["content-type"], "application/json");
        assert_eq!(up["x-stainless-retry-count"], "0");
        assert_eq!(up["x-request-id"], "req-1");
    }

    #[test]
    fn cookies_forwarding_and_feature_headers_stay_behind() {
        let mut client = HeaderMap::new();
        for (k, v) in [
            ("cookie", "session=abc"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "evil"),
            ("x-real-ip", "1.2.3.4"),
            ("via", "1.1 proxy"),
            ("proxy-authorization", "Basic x"),
            ("anthropic-beta", "context-1m-2025-08-07"),
            ("openai-beta", "assistants=v2"),
            ("connection", "x-secret-hop"),
            ("x-secret-hop", "1"),
            ("x-stainless-lang", "python"),
        ] {
            client.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        let up = upstream_headers(
            &client,
            Some(&http::HeaderValue::from_static("req-1")),
            "chat/completions",
            Default::default(),
        );
        let names: Vec<&str> = up.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["x-stainless-lang", "accept-encoding", "x-request-id"],
            "{names:?}"
        );
        let up = upstream_headers(
            &client,
            Some(&http::HeaderValue::from_static("req-1")),
            "assistants/asst_1",
            Default::default(),
        );
        assert_eq!(
            up["openai-beta"], "assistants=v2",
            "the Assistants API needs it"
        );
        let allowed = crate::endpoint::FeatureHeaders {
            anthropic_beta: true,
            openai_beta: false,
        };
        let up = upstream_headers(
            &client,
            Some(&http::HeaderValue::from_static("req-1")),
            "chat/completions",
            allowed,
        );
        assert_eq!(
            up["anthropic-beta"], "context-1m-2025-08-07",
            "allowed for this client"
        );
        assert!(!up.contains_key("openai-beta"), "not allowed");
        assert!(!up.contains_key("cookie"), "never allowed");
    }

    #[test]
    fn the_upstreams_identity_and_cookies_never_reach_the_client() {
        let mut up = HeaderMap::new();
        for (k, v) in [
            ("set-cookie", "__cf_bm=x"),
            ("openai-organization", "org-secret"),
            ("openai-project", "proj_1"),
            ("x-request-id", "req_upstream"),
            ("content-type", "application/json"),
        ] {
            up.insert(HeaderName::from_static(k), v.parse().unwrap());
        }
        client_headers(&mut up);
        let names: Vec<&str> = up.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(up.contains_key("content-type"));
        assert_eq!(up["x-upstream-request-id"], "req_upstream");
    }
}
