//! How the gateway reaches its upstreams (`[egress]`, and a provider's `ca_file`): which
//! certificate authorities it trusts beyond the system's store, and which HTTP proxy it goes
//! through (the environment's `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` unless the config says).

use super::settings::Problems;
use super::Secret;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[egress]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// PEM file of certificate authorities trusted for every upstream, beyond the system's.
    pub ca_file: Option<String>,
    /// Proxy for every upstream (`http://[user:password@]host:port`), overriding
    /// `HTTPS_PROXY`/`HTTP_PROXY`; `"none"` ignores those variables. May be `${ENV_VAR}`.
    pub proxy: Option<Secret>,
    /// Hosts reached without the proxy (as `NO_PROXY`), overriding `NO_PROXY`.
    pub no_proxy: Option<String>,
}

/// Which proxy the upstream connections take.
#[derive(Debug, Clone, Default)]
pub enum Proxy {
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` from the environment.
    #[default]
    FromEnv,
    /// None, whatever the environment says.
    Off,
    /// This one (it may carry credentials: never printed).
    Url(Secret),
}

/// Validated `[egress]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EgressSettings {
    /// Extra certificate authorities for every upstream.
    pub ca_file: Option<PathBuf>,
    /// The proxy.
    #[serde(serialize_with = "proxy_label")]
    pub proxy: Proxy,
    /// Hosts reached directly.
    pub no_proxy: Option<String>,
}

fn proxy_label<S: serde::Serializer>(p: &Proxy, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match p {
        Proxy::FromEnv => "from environment",
        Proxy::Off => "none",
        Proxy::Url(_) => "***",
    })
}

/// A PEM file that must hold at least one certificate.
pub(super) fn ca_file(path: &str, key: &str, p: &mut Problems) -> Option<PathBuf> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let certs = CertificateDer::pem_file_iter(Path::new(path));
    match certs.map(|c| c.collect::<Result<Vec<_>, _>>()) {
        Ok(Ok(certs)) if !certs.is_empty() => Some(PathBuf::from(path)),
        Ok(Ok(_)) => {
            p.push(key, "holds no PEM certificate");
            None
        }
        Ok(Err(_)) | Err(_) => {
            p.push(key, "is not a readable PEM file of certificates");
            None
        }
    }
}

pub(super) fn validate(
    c: &EgressConfig,
    p: &mut Problems,
    env: &dyn Fn(&str) -> Option<String>,
) -> EgressSettings {
    let proxy = match &c.proxy {
        None => Proxy::FromEnv,
        Some(raw) => match super::secret::expand_env(raw.expose(), env) {
            Ok(v) if v.eq_ignore_ascii_case("none") => Proxy::Off,
            Ok(v) => {
                let ok = v
                    .parse::<http::Uri>()
                    .ok()
                    .filter(|u| u.scheme_str() == Some("http") && u.host().is_some());
                if ok.is_none() {
                    p.push(
                        "egress.proxy",
                        "must be an http:// URL with a host (http://[user:password@]host:port), or \"none\"",
                    );
                }
                Proxy::Url(Secret::new(v))
            }
            Err(e) => {
                p.push("egress.proxy", e);
                Proxy::FromEnv
            }
        },
    };
    EgressSettings {
        ca_file: c
            .ca_file
            .as_deref()
            .and_then(|f| ca_file(f, "egress.ca_file", p)),
        proxy,
        no_proxy: c.no_proxy.clone(),
    }
}
