//! A fake OpenAI-compatible (and Anthropic) upstream with scripted faults, for end-to-end
//! tests (in process, on an ephemeral port) and benchmarks (the
//! `mock-upstream` binary).
//!
//! [`start`] binds `127.0.0.1:0` and serves on the current tokio runtime; the
//! returned [`MockHandle`] records every request and scripts faults per API
//! key. Answers:
//!
//! | route                        | answer                                                 |
//! |------------------------------|--------------------------------------------------------|
//! | `POST /v1/chat/completions`  | `chat.completion`, or SSE chunks with `"stream": true` |
//! | `POST /v1/messages`          | Anthropic `message`, or its named SSE events           |
//! | `POST /v1/completions`       | `text_completion`, streamed the same way               |
//! | `POST /v1/responses`         | `response`, or its named SSE events (Responses API)    |
//! | `GET /v1/responses/{id}`     | the stored `response`, for the key that created it     |
//! | `DELETE /v1/responses/{id}`  | `response.deleted`, for the key that created it        |
//! | `POST /v1/embeddings`        | one `[0.1, 0.2, 0.3]` embedding per input item         |
//! | `GET /v1/models`             | a single `mock-model`                                  |
//! | `POST /v1/audio/speech`      | 1024 bytes of `audio/mpeg`                             |
//! | anything else                | `{"object": "mock.echo", ...}`                         |
//!
//! Routes match on path suffix, so Azure-style deployment paths work too. The
//! three `responses` routes exist only while [`MockConfig::responses_api`] is on
//! (the default); see "The Responses API". Chat completions, Anthropic messages
//! and the Responses API all play Codex CLI's tool round trip (next sections).
//!
//! `/v1/messages` speaks Anthropic's dialect and validates strictly like the
//! real API (an `anthropic-version` header, `max_tokens`, alternating
//! `user`/`assistant` roles, no unknown top-level fields, no sampling
//! parameters with version `2026-10-21`), answering 400
//! `invalid_request_error` otherwise. Faults there are Anthropic-shaped:
//! [`Fault::status`] bodies (`529` → `overloaded_error`, `429` →
//! `rate_limit_error`, `401` → `authentication_error`...) and an
//! `event: error` for [`Fault::StreamErrorFirst`]. Outside the tool round trip,
//! a request with `tools` whose last user message says "use a tool" gets a
//! `tool_use` answer calling its first tool with `{"city":"Paris"}`.
//!
//! # Codex's tool round trip
//!
//! Chat completions, Anthropic messages and the Responses API answer Codex
//! CLI's tool round trip alike, so Codex can be run through a gateway that
//! translates its Responses requests into either of the others. The request's
//! last turn decides:
//!
//! - **a tool's output**: a text answer `"tool said: <output>"`. That is, on
//!   Responses, a last input item `function_call_output` (a list-shaped output
//!   is the `text` of its parts); on chat, a last message with role `tool`
//!   (content a string, or the `text` of its parts joined); on Anthropic, a last
//!   `user` message with `tool_result` blocks (their content a string or text
//!   blocks, joined);
//! - **a user message containing [`TOOL_MARKER`]** (`TOLLGATE_TOOL`, in string
//!   content or text parts) whose `tools` offer a function named `exec_command`
//!   (Codex CLI's shell tool): a call to it with the input
//!   `{"cmd":"echo tollgate-tool-ok"}`; failing that, a function named `shell`:
//!   a call with `{"command":["echo","tollgate-tool-ok"]}`. Tool names are read
//!   leniently: `{"name"}` (Responses, Anthropic), the chat shape
//!   `{"function": {"name"}}`, or inside a group's `tools`. [`TOOL_OUTPUT`] is
//!   what the command prints. The marker without either tool gets a text answer
//!   saying so;
//! - anything else: the route's usual answer ("Hello from mock").
//!
//! A text or a call's arguments are streamed in `x-mock-chunks` /
//! [`MockConfig::chunks`] pieces (at most one per character), arguments in at
//! least 2. Each route says it in its own shape:
//!
//! - **Responses**: a `function_call` or `message` output item (next section);
//! - **chat completions**: a call is the message
//!   `{"role":"assistant","content":null,"tool_calls":[{"id":"call_<port>_<n>",
//!   "type":"function","function":{"name","arguments"}}]}` (`arguments` a JSON
//!   string) with `finish_reason: "tool_calls"`, a text the message's
//!   `content` with `"stop"`; `completion_tokens` counts the pieces. Streamed in
//!   OpenAI's order: a first chunk whose delta has the role, `content: null` and
//!   the call (`index` 0, `id`, `type`, `function.name`, empty
//!   `function.arguments`), or for a text `{"role":"assistant","content":""}`;
//!   one chunk per piece (`{"tool_calls":[{"index":0,"function":{"arguments"}}]}`
//!   or `{"content"}`); a chunk with an empty delta and the finish reason; the
//!   usage chunk if `stream_options.include_usage`; `[DONE]`;
//! - **Anthropic messages**: a call is one `tool_use` block (`id`
//!   `toolu_<port>_<n>`, `name`, `input` the object above) with
//!   `stop_reason: "tool_use"`, streamed as `input_json_delta`s (an empty piece,
//!   then the pieces of that JSON); a text is one `text` block with `end_turn`,
//!   streamed as `text_delta`s.
//!
//! # The Responses API
//!
//! `/v1/responses` speaks OpenAI's Responses API as Codex CLI uses it. With
//! [`MockConfig::responses_api`] off, the server has none (like vLLM or Ollama
//! without it): `POST .../responses` and `GET`/`DELETE .../responses/{id}`
//! answer 404 with type `invalid_request_error`, null `param`, code
//! `unknown_url` and a message ending in
//! `this server has no Responses API (mock)`; they are still recorded and take
//! faults like any request.
//!
//! **`POST /v1/responses`** needs a JSON object with a `model` (else 400
//! `missing_required_parameter`). `input` is read leniently: a string, or a list
//! of items (`message` with string or `input_text` parts, `function_call`,
//! `function_call_output`, `reasoning`...). The answer is a `response` object:
//! `id` `resp_<port>_<n>` (unique across the servers of a test), `object`,
//! `created_at`, the `model` echoed, `status: "completed"`, `error: null`,
//! `previous_response_id`, `store`, one output item, and `usage`
//! (`input_tokens` = request body bytes / 4,
//! `input_tokens_details.cached_tokens`, `output_tokens` = the number of
//! deltas, `output_tokens_details.reasoning_tokens` = 0, `total_tokens`). The
//! output item is what the tool round trip decides (the last input item is the
//! turn; `input` a string is a user message):
//!
//! - a call: a `function_call` item (`id` `fc_<port>_<n>`, `call_id`
//!   `call_<port>_<n>`, the `name`, `arguments` the input as a JSON string);
//! - a text: a `message` (`id` `msg_<port>_<n>`) with one `output_text` part,
//!   `"Hello from mock"` by default.
//!
//! With `"stream": true` the answer is named SSE events (`event: NAME`, then
//! `data:` with the same `type` and a `sequence_number` counting from 0), no
//! `[DONE]`: `response.created`, `response.in_progress` (both with the
//! response `in_progress`, empty `output`, null `usage`),
//! `response.output_item.added`, then for a message
//! `response.content_part.added`, `response.output_text.delta`...,
//! `response.output_text.done`, `response.content_part.done`, or for a call
//! `response.function_call_arguments.delta`... (at least 2),
//! `response.function_call_arguments.done`; then `response.output_item.done`
//! and `response.completed` (the whole response, `usage` included). Text and
//! arguments come in `x-mock-chunks` / [`MockConfig::chunks`] deltas (at most
//! one per character).
//!
//! **Stored responses**: unless the request says `"store": false` (as Codex
//! does), the final response (completed, or failed by
//! [`Fault::ResponseFailed`]) is kept, bounded to the newest 10 000, with the
//! key that created it ([`MockHandle::response_key`]).
//! `GET /v1/responses/{id}` answers it and `DELETE /v1/responses/{id}` forgets
//! it (`{"id", "object": "response.deleted", "deleted": true}`) only for that
//! key; any other key (or an unknown id) gets a 404 with type
//! `invalid_request_error`, null `param` and `code`, and the message
//! `Response with id 'ID' not found.`. A `previous_response_id` not stored for
//! the request's key gets a 400 with code `previous_response_not_found`, param
//! `previous_response_id` and the message
//! `Previous response with id 'ID' not found.`, as the real API answers outside
//! the creating organization. These
//! requests take scripted one-shot faults like any other request with the key.
//!
//! **Prompt cache**: a request with a `prompt_cache_key` reports as
//! `cached_tokens` the `input_tokens` of the previous request with the same key
//! and `prompt_cache_key` (capped at its own), as a provider caching the
//! previous turn of a session per organization; the first turn on a key, or a
//! request without `prompt_cache_key`, gets 0. Sticky routing of a session to
//! one key therefore raises cached tokens. [`MockHandle::clear_prompt_cache`]
//! empties it.
//!
//! **Faults** on its streams: [`Fault::ResponseFailed`] fails in-band after
//! `response.in_progress` with `response.failed` (or an `error` event, with
//! [`Fault::as_error_event`]); build it with [`Fault::response_rate_limited`],
//! [`Fault::response_insufficient_quota`], [`Fault::response_server_error`],
//! [`Fault::response_overloaded`] or [`Fault::response_failed`]. A plain
//! request gets the matching HTTP error instead. [`Fault::ResponseCutAfter`]
//! aborts the connection after N deltas; [`Fault::ResponseEndAfter`] ends the
//! stream cleanly after N deltas without a terminal event. The generic faults
//! apply too: [`Fault::status`] answers its OpenAI error,
//! [`Fault::StreamErrorFirst`] sends a lone `event: error` with code
//! `server_is_overloaded`, [`Fault::BreakAfter`] counts SSE events,
//! [`Fault::HoldAfterFirst`] holds after the first `response.output_text.delta`, and
//! [`Fault::HugeUsage`] reports `u64::MAX` tokens.
//!
//! # Per-request knobs
//!
//! Per request, the headers `x-mock-fault` (`status=503`, `rate-limited=2`,
//! `try-again-in-ms=2000`, `delay-ms=200`, `break-after=2`,
//! `response-failed=CODE`, `response-error=CODE`, `response-cut-after=N`,
//! `response-end-after=N`, `error-first`, `hold`, `hang`, `huge-usage`,
//! `gzip`), `x-mock-chunks` and
//! `x-mock-chunk-delay-ms` override the defaults, `x-mock-ratelimit-remaining: R,T` answers
//! with `x-ratelimit-remaining-requests: R` and `x-ratelimit-remaining-tokens: T`; faults scripted for the
//! request's key win over the header (see [`Fault`]). Scripted faults can be
//! conditional: for streaming requests only ([`Fault::streams_only`]) or for one
//! request in N ([`Fault::flaky`]), and any answer can come gzip-compressed
//! ([`Fault::gzipped`]). [`MockHandle::count_for_key`] counts requests per key
//! even when recording is off (benchmarks, soaks).
#![warn(missing_docs)]

mod answers;
mod anthropic;
mod chat;
mod faults;
mod gzip;
mod handlers;
mod objects;
mod responses;
mod sse;
#[cfg(test)]
mod tests;
mod tools;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use faults::Fault;
pub use tools::{TOOL_MARKER, TOOL_OUTPUT};

/// How the fake upstream answers when no fault applies.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Number of SSE chunk events in a streamed answer (and the
    /// `completion_tokens` reported). Default 3.
    pub chunks: usize,
    /// Pause between streamed events. Default zero.
    pub chunk_delay: Duration,
    /// Pause before the headers of every answer. Default zero.
    pub response_delay: Duration,
    /// Keep a [`Recorded`] copy of every request. Default true; benchmarks
    /// turn it off, which makes [`MockHandle::requests`] empty.
    pub record: bool,
    /// Serve the Responses API. Default true; false makes a chat-only server (like vLLM or
    /// Ollama without it): every Responses route (`POST .../responses`, `GET` and `DELETE
    /// .../responses/{id}`) answers 404 with code `unknown_url`, and is still recorded.
    pub responses_api: bool,
}

impl Default for MockConfig {
    fn default() -> MockConfig {
        MockConfig {
            chunks: 3,
            chunk_delay: Duration::ZERO,
            response_delay: Duration::ZERO,
            record: true,
            responses_api: true,
        }
    }
}

/// One request as the fake upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// URI path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Raw query string, without `?`.
    pub query: Option<String>,
    /// All request headers.
    pub headers: http::HeaderMap,
    /// The API key: bearer token, else `api-key`, else `x-api-key`.
    pub key: Option<String>,
    /// The full request body.
    pub body: Bytes,
    /// When the request was received (after its body was read).
    pub at: std::time::Instant,
}

/// State shared by the handler and every [`MockHandle`] clone.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: MockConfig,
    log: Mutex<Vec<Recorded>>,
    /// Requests per key (keyless ones under ""), kept even when recording is off.
    counts: Mutex<HashMap<String, u64>>,
    scripts: Mutex<faults::Scripts>,
    /// Bumped by `release_holds`; held streams wait for a change.
    pub(crate) holds: watch::Sender<u64>,
    /// Request sequence number, used in response ids.
    pub(crate) seq: AtomicU64,
    /// The bound port, part of Responses ids so two servers never hand out the same one.
    pub(crate) port: u16,
    /// Stored Responses API responses and the prompt cache, per key.
    responses: Mutex<responses::Store>,
    /// Files and batches.
    objects: Mutex<objects::Store>,
}

impl Shared {
    pub(crate) fn record(&self, request: Recorded) {
        lock(&self.log).push(request);
    }

    pub(crate) fn count(&self, key: Option<&str>) {
        let mut counts = lock(&self.counts);
        let key = key.unwrap_or_default();
        match counts.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                counts.insert(key.to_owned(), 1);
            }
        }
    }

    pub(crate) fn lock_scripts(&self) -> MutexGuard<'_, faults::Scripts> {
        lock(&self.scripts)
    }

    pub(crate) fn lock_responses(&self) -> MutexGuard<'_, responses::Store> {
        lock(&self.responses)
    }

    pub(crate) fn lock_objects(&self) -> MutexGuard<'_, objects::Store> {
        lock(&self.objects)
    }
}

/// Locks ignoring poison: a panicking test thread must not wedge the server.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fake upstream. Cheap to clone; all clones control the same server.
#[derive(Clone, Debug)]
pub struct MockHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Arc<watch::Sender<bool>>,
}

impl MockHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`, the OpenAI base URL of this server.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request received so far, in arrival order (empty when
    /// [`MockConfig::record`] is off).
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.log).clone()
    }

    /// How many recorded requests carried `key`.
    pub fn requests_for_key(&self, key: &str) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.key.as_deref() == Some(key))
            .count()
    }

    /// How many requests carried `key`, counted even when [`MockConfig::record`] is off
    /// (cheap enough for benchmarks; never reset).
    pub fn count_for_key(&self, key: &str) -> u64 {
        lock(&self.shared.counts).get(key).copied().unwrap_or(0)
    }

    /// Requests received per key (keyless ones under `""`), counted like
    /// [`MockHandle::count_for_key`].
    pub fn counts(&self) -> HashMap<String, u64> {
        lock(&self.shared.counts).clone()
    }

    /// Every request received so far (with a readable body), recorded or not.
    pub fn count(&self) -> u64 {
        self.shared.seq.load(Ordering::Relaxed)
    }

    /// Queues one-shot faults for requests carrying `key`: each such request
    /// takes the next one; once the queue is empty they are answered normally
    /// (or by [`MockHandle::script_always`], or the `x-mock-fault` header).
    pub fn script(&self, key: &str, faults: impl IntoIterator<Item = Fault>) {
        self.shared.lock_scripts().push(key, faults);
    }

    /// Gives every request carrying `key` this fault until [`MockHandle::clear`];
    /// queued faults from [`MockHandle::script`] still go first.
    pub fn script_always(&self, key: &str, fault: Fault) {
        self.shared.lock_scripts().set_always(key, fault);
    }

    /// Forgets all scripted faults (queued and standing). Recorded requests
    /// are kept (see [`MockHandle::clear_requests`]); streams already held
    /// stay held until [`MockHandle::release_holds`].
    pub fn clear(&self) {
        self.shared.lock_scripts().clear();
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    /// Lets every stream currently held by [`Fault::HoldAfterFirst`] (or
    /// `x-mock-fault: hold`) continue, and every request hung by [`Fault::Hang`]
    /// answer, including requests already received that have not reached their
    /// hold point yet. Later requests hold again.
    pub fn release_holds(&self) {
        self.shared.holds.send_modify(|generation| *generation += 1);
    }

    /// The key that created the stored Responses API response `id` (see
    /// `GET /v1/responses/{id}`); `None` when it is not stored (never created, created with
    /// `"store": false`, deleted, or evicted) or was created without a key.
    pub fn response_key(&self, id: &str) -> Option<String> {
        self.shared.lock_responses().owner(id).flatten()
    }

    /// Empties the emulated prompt cache of the Responses API (as a provider evicting it):
    /// the next request of every session reports zero `cached_tokens`. Stored responses stay.
    pub fn clear_prompt_cache(&self) {
        self.shared.lock_responses().clear_prompt_cache();
    }

    /// Stops accepting connections and closes idle ones; in-flight answers
    /// finish. Other clones of this handle stop working too.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

/// Starts a fake upstream on `127.0.0.1` with an ephemeral port, served by a
/// task on the current tokio runtime.
pub async fn start(config: MockConfig) -> std::io::Result<MockHandle> {
    start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
}

/// Starts a fake upstream on `addr`, served by a task on the current tokio
/// runtime. Fails if the address cannot be bound.
pub async fn start_on(addr: SocketAddr, config: MockConfig) -> std::io::Result<MockHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        config,
        log: Mutex::new(Vec::new()),
        counts: Mutex::new(HashMap::new()),
        scripts: Mutex::new(faults::Scripts::default()),
        holds: watch::Sender::new(0),
        seq: AtomicU64::new(0),
        port: addr.port(),
        responses: Mutex::new(responses::Store::default()),
        objects: Mutex::new(objects::Store::default()),
    });
    let (shutdown, mut stop) = watch::channel(false);
    let app = Router::new()
        .fallback(handlers::handle)
        .with_state(Arc::clone(&shared));
    let server = axum::serve(
        listener.tap_io(|tcp| {
            // Streamed chunks go out at once: no Nagle delay against the client's delayed ACK.
            let _ = tcp.set_nodelay(true);
        }),
        app,
    )
    .with_graceful_shutdown(async move {
        // An error means every handle is gone; keep serving until the runtime ends.
        if stop.wait_for(|stopped| *stopped).await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    tokio::spawn(async move {
        // Accept errors are retried inside axum; nothing useful to do on exit.
        let _ = server.await;
    });
    Ok(MockHandle {
        addr,
        shared,
        shutdown: Arc::new(shutdown),
    })
}
