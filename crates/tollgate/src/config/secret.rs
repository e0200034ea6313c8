//! `Secret`: a string that never prints or serializes its value.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::sync::OnceLock;

/// A secret value (API key, token). `Debug`, `Display` and `Serialize` all show `***`.
#[derive(Clone, Default)]
pub struct Secret {
    value: String,
    /// Its header values (`Bearer <value>`, then the value alone; marked sensitive), made at
    /// their first use: an upstream request clones one (a count) instead of formatting and
    /// checking the key anew. `None`: the value cannot be a header's.
    headers: OnceLock<Option<[http::HeaderValue; 2]>>,
}

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret {
            value: value.into(),
            headers: OnceLock::new(),
        }
    }

    /// The value itself: call only where it is sent upstream or compared.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// `Bearer <value>` as a sensitive header value (`None`: not a valid one).
    pub fn bearer_header(&self) -> Option<http::HeaderValue> {
        self.headers().map(|[bearer, _]| bearer.clone())
    }

    /// The value as a sensitive header value (`None`: not a valid one).
    pub fn header(&self) -> Option<http::HeaderValue> {
        self.headers().map(|[_, plain]| plain.clone())
    }

    fn headers(&self) -> Option<&[http::HeaderValue; 2]> {
        let made = self.headers.get_or_init(|| {
            let sensitive = |v: String| {
                let mut v = http::HeaderValue::try_from(v).ok()?;
                v.set_sensitive(true);
                Some(v)
            };
            Some([
                sensitive(format!("Bearer {}", self.value))?,
                sensitive(self.value.clone())?,
            ])
        });
        made.as_ref()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// Accepts strings and, for a TOML integer (`token = 777`), integers as their digits. Environment
/// values of secret fields arrive as strings (`source::RawEnv`), so `000777` keeps its zeros.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        impl Visitor<'_> for SecretVisitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret::new(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret::new(v.to_string()))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Secret, E> {
                Ok(Secret::new(v.to_string()))
            }
        }
        d.deserialize_any(SecretVisitor)
    }
}

/// Whether a missing variable's name may be printed: a conventional name (capitals, digits,
/// `_`; at most 64). Anything else may be a secret written between the braces by mistake.
fn shown(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Replaces each `${VAR}` in `raw` by that environment variable; names the first one missing
/// when its name is a conventional one.
pub(crate) fn expand_env(
    raw: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated ${ in value".to_owned())?;
        let name = &after[..end];
        match lookup(name) {
            Some(v) => out.push_str(&v),
            None if shown(name) => return Err(format!("environment variable {name} is not set")),
            None => {
                return Err(
                    "the environment variable named in ${…} is not set (its name is \
                            not shown: only names of capitals, digits and _ are)"
                        .to_owned(),
                )
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_its_value() {
        let s = Secret::new("sk-live-123");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
    }

    #[test]
    fn numbers_stay_strings() {
        let s: Secret = serde_json::from_str("12345").unwrap();
        assert_eq!(s.expose(), "12345");
    }

    #[test]
    fn header_forms_are_sensitive_and_made_once() {
        let s = Secret::new("sk-1");
        let bearer = s.bearer_header().unwrap();
        assert_eq!(bearer, "Bearer sk-1");
        assert!(bearer.is_sensitive());
        let plain = s.header().unwrap();
        assert_eq!(plain, "sk-1");
        assert!(plain.is_sensitive());
        assert_eq!(s.clone().bearer_header().unwrap(), "Bearer sk-1");
        assert!(Secret::new("bad\nkey").header().is_none());
        assert!(Secret::new("bad\nkey").bearer_header().is_none());
    }

    #[test]
    fn expands_env_references() {
        let lookup = |n: &str| (n == "A").then(|| "x".to_owned());
        assert_eq!(expand_env("${A}", &lookup).unwrap(), "x");
        assert_eq!(expand_env("pre-${A}-post", &lookup).unwrap(), "pre-x-post");
        assert_eq!(
            expand_env("${B}", &lookup).unwrap_err(),
            "environment variable B is not set"
        );
        assert!(expand_env("${A", &lookup).is_err());
        // A secret written between the braces by mistake is not printed.
        for inside in ["sk-live-123", "deadbeef0123", "9LIVES", ""] {
            let err = expand_env(&format!("${{{inside}}}"), &lookup).unwrap_err();
            assert!(
                err.starts_with("the environment variable named in ${…} is not set"),
                "{err}"
            );
            assert!(inside.is_empty() || !err.contains(inside), "{err}");
        }
        assert_eq!(
            expand_env("${OPENAI_KEY_2}", &lookup).unwrap_err(),
            "environment variable OPENAI_KEY_2 is not set"
        );
    }
}
