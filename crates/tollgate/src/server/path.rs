//! Request paths the gateway forwards with an upstream key: refused unless every segment is
//! plain. A `.` or `..` segment (also percent-encoded, in any case), an encoded slash or
//! backslash, a backslash, an empty segment (`//`) or a NUL could make a server that normalizes
//! paths before routing (nginx in front of vLLM, most corporate proxies) serve something
//! outside `/v1` with the gateway's credentials; Envoy's `normalize_path` and `merge_slashes`
//! are the model, except that the gateway refuses rather than rewrites.

/// Why a path is refused.
pub(super) fn refusal(path: &str) -> Option<&'static str> {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Some("the path must start with /v1/");
    };
    if rest.is_empty() {
        return Some("the path names no endpoint");
    }
    // The common path (`chat/completions`, `models/gpt-4o`) has none of the bytes a refusal
    // needs: no copy, no decoding.
    // One pass over the bytes (a substring search for `//` costs more than the whole path).
    let suspect = |b: u8| matches!(b, b'%' | b'.' | b'\\' | 0 | b';');
    let mut previous = b'/';
    let clean = rest.bytes().all(|b| {
        let doubled = b == b'/' && previous == b'/';
        let ok = !suspect(b) && !doubled;
        previous = b;
        ok
    });
    if clean && previous != b'/' {
        return None;
    }
    let lower = rest.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || rest.contains('\\') {
        return Some("encoded slashes and backslashes are not allowed in the path");
    }
    if lower.contains("%00") || rest.contains('\0') {
        return Some("NUL is not allowed in the path");
    }
    if lower.contains("%25") {
        // A server that decodes twice would see `%2e%2e` or `%2f` here.
        return Some("percent-encoded `%` is not allowed in the path");
    }
    for segment in lower.split('/') {
        let decoded = segment.replace("%2e", ".");
        // Path parameters (`..;x`, as Tomcat reads them) do not hide a dot segment.
        let bare = decoded.split(';').next().unwrap_or_default();
        match bare {
            "" => return Some("empty path segments (//) are not allowed"),
            "." | ".." => return Some("`.` and `..` segments are not allowed in the path"),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_smuggling_are_refused() {
        for path in [
            "/v1/chat/completions/../../../metrics",
            "/v1/%2e%2e/admin/keys",
            "/v1/%2E%2E/admin/keys",
            "/v1/models/..%2F..%2Fadmin",
            "/v1//etc/passwd",
            "/v1/./models",
            "/v1/files/.%2e/x",
            "/v1/files/%2e",
            "/v1/files/a%5c..%5cb",
            "/v1/files\\..\\b",
            "/v1/files/a%00b",
            "/v1/%252e%252e/admin",
            "/v1/files/%252f..%252fadmin",
            "/v1/..;/admin",
            "/v1/files/.;x/y",
            "/v1/models/",
            "/v1/",
            "/v2/models",
        ] {
            assert!(refusal(path).is_some(), "{path}");
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for path in [
            "/v1/chat/completions",
            "/v1/models/gpt-4o-mini",
            "/v1/models/ft:gpt-4o-mini:org:custom:abc123",
            "/v1/files/file-abc/content",
            "/v1/responses/resp_123",
            "/v1/models/meta-llama%2FLlama-3",
        ] {
            let refused = refusal(path);
            if path.contains("%2F") {
                assert!(refused.is_some(), "an encoded slash is refused: {path}");
            } else {
                assert_eq!(refused, None, "{path}");
            }
        }
    }
}
