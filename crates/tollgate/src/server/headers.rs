//! Which headers cross the gateway: hop-by-hop headers never do, the client's credentials never
//! go upstream, and the upstream's framing headers are recomputed for the client.

use http::header::{self, HeaderName};
use http::HeaderMap;

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

/// Client headers that must not reach the upstream: its credentials and org scoping.
const CLIENT_ONLY: [&str; 7] = [
    "authorization",
    "api-key",
    "x-api-key",
    "openai-organization",
    "openai-project",
    "keep-alive",
    "proxy-connection",
];

/// The client's headers as they go upstream.
pub(super) fn upstream_headers(client: &HeaderMap, request_id: &str) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(client.len() + 1);
    for (name, value) in client {
        if HOP_BY_HOP.contains(name)
            || CLIENT_ONLY.contains(&name.as_str())
            || name == header::CONTENT_LENGTH
        {
            continue;
        }
        if name.as_str() == "x-request-id" || name == header::ACCEPT_ENCODING {
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
    if let Ok(v) = request_id.parse() {
        out.insert("x-request-id", v);
    }
    out
}

/// The upstream's headers as they go to the client.
pub(super) fn client_headers(upstream: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        upstream.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
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
        let up = upstream_headers(&client, "req-1");
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
}
