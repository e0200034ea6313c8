//! The OpenAI endpoints as a closed set, classified from the path after `/v1/`: what routing,
//! estimates and metric labels key on.

/// The OpenAI endpoints, as a closed set for routing and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `chat/completions`.
    ChatCompletions,
    /// `completions`.
    Completions,
    /// `embeddings`.
    Embeddings,
    /// `responses…`.
    Responses,
    /// `messages` (Anthropic's Messages API in front).
    Messages,
    /// `messages/count_tokens`.
    CountTokens,
    /// `models…`.
    Models,
    /// `moderations`.
    Moderations,
    /// `images/…`.
    Images,
    /// `audio/…`.
    Audio,
    /// `files…`, `uploads…`, `batches…`.
    Files,
    /// Anything else.
    Other,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Endpoint; 12] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
        Endpoint::Messages,
        Endpoint::CountTokens,
        Endpoint::Models,
        Endpoint::Moderations,
        Endpoint::Images,
        Endpoint::Audio,
        Endpoint::Files,
        Endpoint::Other,
    ];

    /// Classifies a path relative to `/v1/`.
    pub fn from_path(path: &str) -> Endpoint {
        let first = first_segment(path);
        match first {
            "chat" if path.starts_with("chat/completions") => Endpoint::ChatCompletions,
            "completions" => Endpoint::Completions,
            "embeddings" => Endpoint::Embeddings,
            "responses" => Endpoint::Responses,
            "messages" if path == "messages" => Endpoint::Messages,
            "messages" if path == "messages/count_tokens" => Endpoint::CountTokens,
            "models" => Endpoint::Models,
            "moderations" => Endpoint::Moderations,
            "images" => Endpoint::Images,
            "audio" => Endpoint::Audio,
            "files" | "uploads" | "batches" => Endpoint::Files,
            _ => Endpoint::Other,
        }
    }

    /// Its place in [`Endpoint::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Closed-set label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::Models => "models",
            Endpoint::Moderations => "moderations",
            Endpoint::Images => "images",
            Endpoint::Audio => "audio",
            Endpoint::Files => "files",
            Endpoint::Other => "other",
        }
    }

    /// What marks the honest end of this endpoint's streams.
    pub fn stream_end(self) -> crate::stream::SseEnd {
        use crate::stream::SseEnd;
        match self {
            Endpoint::ChatCompletions | Endpoint::Completions => SseEnd::Done,
            Endpoint::Responses => SseEnd::Terminal,
            Endpoint::Messages => SseEnd::MessageStop,
            _ => SseEnd::Close,
        }
    }
}

/// The endpoint families a client may be allowed (`[[clients]] endpoints`), by the first
/// segment of the path after `/v1/`. The first nine are the inference endpoints every client
/// has unless its `endpoints` says otherwise (`messages` is Anthropic's Messages API in front); the rest reach objects stored under the upstream
/// key (or the organization itself) and are opt-in.
const FAMILIES: [&str; 21] = [
    "chat",
    "completions",
    "responses",
    "embeddings",
    "moderations",
    "images",
    "audio",
    "models",
    "messages",
    "files",
    "uploads",
    "batches",
    "vector_stores",
    "fine_tuning",
    "assistants",
    "threads",
    "conversations",
    "containers",
    "evals",
    "organization",
    "realtime",
];

/// The inference families (the default).
const INFERENCE: u32 = 0x1ff;

/// A set of endpoint families, as bits of `FAMILIES`; a path of no known family needs `"*"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    bits: u32,
    any: bool,
}

impl Default for Families {
    /// The inference endpoints.
    fn default() -> Self {
        Families {
            bits: INFERENCE,
            any: false,
        }
    }
}

impl Families {
    /// Every endpoint, known or not.
    pub const ALL: Families = Families {
        bits: u32::MAX,
        any: true,
    };

    /// From config names: a family, `"inference"` for the default nine, `"*"` for all; none
    /// given means the default.
    pub fn parse(names: &[String]) -> Result<Families, String> {
        if names.is_empty() {
            return Ok(Families::default());
        }
        let mut set = Families {
            bits: 0,
            any: false,
        };
        for name in names {
            match name.as_str() {
                "*" => set = Families::ALL,
                "inference" => set.bits |= INFERENCE,
                n => match FAMILIES.iter().position(|f| *f == n) {
                    Some(i) => set.bits |= 1 << i,
                    None => {
                        return Err(format!(
                            "an entry is not one of \"inference\", \"*\", {}",
                            FAMILIES.join(", ")
                        ))
                    }
                },
            }
        }
        Ok(set)
    }

    /// Whether a path (after `/v1/`) is in the set; the family's name when it is not.
    pub fn check(self, path: &str) -> Result<(), &'static str> {
        let first = first_segment(path);
        match FAMILIES.iter().position(|f| *f == first) {
            Some(i) if self.bits & (1 << i) != 0 => Ok(()),
            Some(i) => Err(FAMILIES[i]),
            None if self.any => Ok(()),
            None => Err("*"),
        }
    }

    /// The names in the set, for the config dump.
    pub fn names(self) -> Vec<&'static str> {
        if self.any {
            return vec!["*"];
        }
        FAMILIES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.bits & (1 << i) != 0)
            .map(|(_, f)| *f)
            .collect()
    }
}

/// Provider feature headers a client may have forwarded (`[[clients]] forward_headers`): each
/// turns on features billed to the gateway's key, so none crosses unless allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeatureHeaders {
    /// `anthropic-beta`.
    pub anthropic_beta: bool,
    /// `openai-beta` (always forwarded on the Assistants endpoints, which require it).
    pub openai_beta: bool,
}

impl FeatureHeaders {
    /// From config names.
    pub fn parse(names: &[String]) -> Result<FeatureHeaders, String> {
        let mut set = FeatureHeaders::default();
        for name in names {
            match name.to_ascii_lowercase().as_str() {
                "anthropic-beta" => set.anthropic_beta = true,
                "openai-beta" => set.openai_beta = true,
                _ => return Err("an entry is not one of anthropic-beta, openai-beta".into()),
            }
        }
        Ok(set)
    }

    /// The names in the set, for the config dump.
    pub fn names(self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.anthropic_beta {
            names.push("anthropic-beta");
        }
        if self.openai_beta {
            names.push("openai-beta");
        }
        names
    }
}

/// A path's first segment (all of it when it has no `/`). A byte loop: a char searcher's
/// setup costs more than these few bytes.
fn first_segment(path: &str) -> &str {
    match path.bytes().position(|b| b == b'/') {
        Some(at) => &path[..at],
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_endpoint_indexes_its_place_in_all() {
        for (i, endpoint) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(endpoint.index(), i, "{endpoint:?}");
        }
    }

    #[test]
    fn clients_call_inference_endpoints_unless_given_more() {
        let default = Families::parse(&[]).expect("empty is the default");
        for path in [
            "chat/completions",
            "responses/resp_1",
            "models",
            "audio/speech",
        ] {
            assert_eq!(default.check(path), Ok(()), "{path}");
        }
        assert_eq!(default.check("files/file-1/content"), Err("files"));
        assert_eq!(
            default.check("organization/usage/completions"),
            Err("organization")
        );
        assert_eq!(default.check("batches"), Err("batches"));
        assert_eq!(default.check("something_new"), Err("*"));

        let files = Families::parse(&names(&["inference", "files"])).expect("valid");
        assert_eq!(files.check("files"), Ok(()));
        assert_eq!(files.check("batches"), Err("batches"));
        let only_files = Families::parse(&names(&["files"])).expect("valid");
        assert_eq!(only_files.check("chat/completions"), Err("chat"));
        let all = Families::parse(&names(&["*"])).expect("valid");
        assert_eq!(all.check("something_new"), Ok(()));
        assert_eq!(all.names(), ["*"]);
        assert!(Families::parse(&names(&["file"])).is_err());
    }

    #[test]
    fn feature_headers_are_named_ones_only() {
        let set = FeatureHeaders::parse(&names(&["Anthropic-Beta"])).expect("valid");
        assert!(set.anthropic_beta && !set.openai_beta);
        assert!(FeatureHeaders::parse(&names(&["cookie"])).is_err());
    }
}
