//! The soak's world: five providers on one fake upstream, their keys and scripted faults, four
//! models each with its own chain ending in the healthy backup, and the gateway config for them.
//!
//! Every key has its own secret, which is how the mock tells them apart (the bearer token the
//! gateway sends) and counts the attempts each one gets.

use std::net::SocketAddr;

use mock_upstream::{Fault, MockHandle};

/// One upstream key of the scenario.
pub(crate) struct KeySpec {
    /// The provider it belongs to.
    pub(crate) provider: &'static str,
    /// Its id in the config (and in metrics).
    pub(crate) id: &'static str,
    /// What is wrong with it, for the report ("healthy" when nothing).
    pub(crate) fault: &'static str,
}

impl KeySpec {
    /// The secret the gateway sends upstream, by which the mock knows the key.
    pub(crate) fn secret(&self) -> String {
        format!("sk-soak-{}", self.id)
    }

    /// The fault scripted for every request with this key.
    fn script(&self) -> Option<Fault> {
        match self.id {
            "dead-1" | "dead-2" => Some(Fault::status(503)),
            "stream-bad" => Some(Fault::StreamErrorFirst.streams_only()),
            "revoked" => Some(Fault::status(401)),
            "limited" => Some(Fault::rate_limited(RETRY_AFTER_SECS)),
            "flaky" => Some(Fault::status(500).flaky(FLAKY_EVERY)),
            _ => None,
        }
    }
}

/// The `retry-after` of the rate-limited key, in seconds.
const RETRY_AFTER_SECS: u64 = 30;

/// The flaky key fails one request in this many (20%).
const FLAKY_EVERY: u32 = 5;

/// The providers, in config order.
pub(crate) const PROVIDERS: [&str; 5] = ["dead", "streamy", "pool", "flaky", "backup"];

/// Every key of every provider.
pub(crate) const KEYS: [KeySpec; 10] = [
    KeySpec {
        provider: "dead",
        id: "dead-1",
        fault: "always 503",
    },
    KeySpec {
        provider: "dead",
        id: "dead-2",
        fault: "always 503",
    },
    KeySpec {
        provider: "streamy",
        id: "stream-bad",
        fault: "streams fail before their first event",
    },
    KeySpec {
        provider: "streamy",
        id: "stream-ok",
        fault: "healthy",
    },
    KeySpec {
        provider: "pool",
        id: "revoked",
        fault: "always 401 invalid_api_key",
    },
    KeySpec {
        provider: "pool",
        id: "limited",
        fault: "always 429, retry-after 30",
    },
    KeySpec {
        provider: "pool",
        id: "pool-ok",
        fault: "healthy",
    },
    KeySpec {
        provider: "flaky",
        id: "flaky",
        fault: "every 5th request 500",
    },
    KeySpec {
        provider: "flaky",
        id: "flaky-ok",
        fault: "healthy",
    },
    KeySpec {
        provider: "backup",
        id: "backup-1",
        fault: "healthy",
    },
];

/// The models clients ask for, each with its chain (the backup last).
pub(crate) const MODELS: [(&str, [&str; 2]); 4] = [
    ("dead-first", ["dead", "backup"]),
    ("stream-bad", ["streamy", "backup"]),
    ("mixed-pool", ["pool", "backup"]),
    ("flaky", ["flaky", "backup"]),
];

/// The client key configured in the gateway.
pub(crate) const CLIENT_KEY: &str = "tg-soak";

/// Scripts every faulty key's standing fault on `mock`.
pub(crate) fn script(mock: &MockHandle) {
    for key in &KEYS {
        if let Some(fault) = key.script() {
            mock.script_always(&key.secret(), fault);
        }
    }
}

/// Upstream attempts per key so far, as the mock counted them, in [`KEYS`] order.
pub(crate) fn attempts(mock: &MockHandle) -> Vec<u64> {
    KEYS.iter()
        .map(|key| mock.count_for_key(&key.secret()))
        .collect()
}

/// The gateway config: one client without limits, the five providers on `mock`, the four
/// models. Retry, ejection and timeout settings are the defaults: the soak measures those.
pub(crate) fn config(mock: SocketAddr) -> String {
    let base = format!("http://{mock}/v1");
    let mut out = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nlog_format = \"json\"\n\n\
         [[clients]]\nname = \"soak\"\nkey = \"{CLIENT_KEY}\"\n\n"
    );
    for provider in PROVIDERS {
        let keys: Vec<String> = KEYS
            .iter()
            .filter(|k| k.provider == provider)
            .map(|k| format!("{{ id = \"{}\", secret = \"{}\" }}", k.id, k.secret()))
            .collect();
        out += &format!(
            "[[providers]]\nname = \"{provider}\"\nkind = \"openai\"\nbase_url = \"{base}\"\n\
             keys = [{}]\n\n",
            keys.join(", ")
        );
    }
    for (model, chain) in MODELS {
        let targets: Vec<String> = chain
            .iter()
            .map(|p| format!("{{ provider = \"{p}\", model = \"gpt-4o-mini\" }}"))
            .collect();
        out += &format!(
            "[[models]]\nname = \"{model}\"\ntargets = [{}]\n\n",
            targets.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chain_ends_in_the_backup_and_names_known_providers() {
        for (model, chain) in MODELS {
            assert_eq!(chain.last(), Some(&"backup"), "{model}");
            assert!(chain.iter().all(|p| PROVIDERS.contains(p)), "{model}");
        }
        for provider in PROVIDERS {
            assert!(KEYS.iter().any(|k| k.provider == provider), "{provider}");
        }
    }

    #[test]
    fn the_config_lists_every_key_and_model() {
        let text = config(SocketAddr::from(([127, 0, 0, 1], 9)));
        for key in &KEYS {
            assert!(text.contains(&key.secret()), "{}", key.id);
        }
        for (model, _) in MODELS {
            assert!(text.contains(&format!("name = \"{model}\"")), "{model}");
        }
        assert_eq!(text.matches("[[providers]]").count(), 5);
        assert!(text.contains("base_url = \"http://127.0.0.1:9/v1\""));
    }

    #[test]
    fn only_the_faulty_keys_are_scripted() {
        for key in &KEYS {
            assert_eq!(key.script().is_none(), key.fault == "healthy", "{}", key.id);
        }
    }
}
