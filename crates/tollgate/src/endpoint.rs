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
    /// Classifies a path relative to `/v1/`.
    pub fn from_path(path: &str) -> Endpoint {
        let first = path.split('/').next().unwrap_or_default();
        match first {
            "chat" if path.starts_with("chat/completions") => Endpoint::ChatCompletions,
            "completions" => Endpoint::Completions,
            "embeddings" => Endpoint::Embeddings,
            "responses" => Endpoint::Responses,
            "models" => Endpoint::Models,
            "moderations" => Endpoint::Moderations,
            "images" => Endpoint::Images,
            "audio" => Endpoint::Audio,
            "files" | "uploads" | "batches" => Endpoint::Files,
            _ => Endpoint::Other,
        }
    }

    /// Closed-set label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
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
            _ => SseEnd::Close,
        }
    }
}
