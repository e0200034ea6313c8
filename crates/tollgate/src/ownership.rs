//! Tenancy in the gateway stack: [`OwnershipLayer`], beside client auth, keeps each client to
//! the endpoint families it may call and to the objects it created.
//!
//! Objects stored under an upstream key (files, uploads, batches, stored responses and chat
//! completions, vector stores, fine-tuning jobs, assistants, threads, conversations,
//! containers, evals) are recorded as they are created ([`records`]: id → client and key).
//! A request that names one (in its path, or in its body: `previous_response_id`,
//! `input_file_id`, `file_ids`, …) is answered 404 without reaching the upstream unless the
//! caller created it, and goes to the key that holds it; a listing keeps only the caller's
//! objects. In open mode (no clients) there is one tenant: nothing is checked, but follow-ups
//! still go to the key that holds their object.

pub mod records;

use crate::error::GatewayError;
use crate::request::{Answer, GatewayRequest};
use axum::body::Body;
use futures_util::future::{ready, BoxFuture, Either, Ready};
use http::{header, HeaderValue, Method};
use http_body_util::BodyExt;
use records::{Owner, Records};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

/// Collections of stored objects, by path after `/v1/`, and whether a GET of the root lists
/// them. The segment after the collection is the object's id.
const COLLECTIONS: [(&str, bool); 12] = [
    ("files", true),
    ("uploads", false),
    ("batches", true),
    ("responses", false),
    ("chat/completions", true),
    ("vector_stores", true),
    ("fine_tuning/jobs", true),
    ("assistants", true),
    ("threads", false),
    ("conversations", false),
    ("containers", true),
    ("evals", true),
];

/// Segments after a collection that name an action, not an object.
const ACTIONS: [&str; 3] = ["runs", "input_tokens", "compact"];

/// Collections whose objects name other objects made for them (a batch's output file, a
/// fine-tuning job's result files, a completed upload's file): reading one records those.
const MAKERS: [&str; 3] = ["batches", "fine_tuning/jobs", "uploads"];

/// Body fields that name a stored object.
pub(crate) const REFERENCES: [&str; 10] = [
    "previous_response_id",
    "conversation",
    "input_file_id",
    "training_file",
    "validation_file",
    "file_id",
    "file_ids",
    "vector_store_ids",
    "assistant_id",
    "thread_id",
];

/// Answer fields that name an object made for the caller.
const MADE: [&str; 4] = [
    "thread_id",
    "output_file_id",
    "error_file_id",
    "result_files",
];

/// Largest listing the gateway reads to filter.
const MAX_LISTING: usize = 64 * 1024 * 1024;

/// What a request does to stored objects.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scope<'a> {
    /// The collection the path is in.
    pub collection: Option<&'static str>,
    /// The object the path names.
    pub object: Option<&'a str>,
    /// The request creates an object whose id the answer carries.
    pub creates: bool,
    /// The request lists the collection.
    pub lists: bool,
}

/// What `method` on `path` (after `/v1/`) does to stored objects.
pub fn scope<'a>(method: &Method, path: &'a str) -> Scope<'a> {
    let Some((collection, rest)) = COLLECTIONS.iter().find_map(|(c, _)| {
        let rest = path.strip_prefix(c)?;
        (rest.is_empty() || rest.starts_with('/')).then_some((*c, rest))
    }) else {
        return Scope::default();
    };
    let lists = COLLECTIONS.iter().any(|(c, l)| *c == collection && *l);
    let first = rest
        .strip_prefix('/')
        .unwrap_or(rest)
        .split('/')
        .next()
        .unwrap_or_default();
    // Chat completions and responses are stored when their body says so (the handler knows).
    let stored_by_body = matches!(collection, "chat/completions" | "responses");
    let mut scope = Scope {
        collection: Some(collection),
        ..Scope::default()
    };
    if first.is_empty() {
        scope.creates = *method == Method::POST && !stored_by_body;
        scope.lists = *method == Method::GET && lists;
    } else if ACTIONS.contains(&first) {
        scope.creates = *method == Method::POST && collection == "threads";
    } else {
        scope.object = Some(first);
    }
    scope
}

/// Whether the answer to a request in `scope` names objects to record (read whole).
pub fn records_answer(scope: &Scope<'_>, path: &str) -> bool {
    scope.creates
        || scope.object.is_some_and(|_| {
            scope.collection.is_some_and(|c| MAKERS.contains(&c)) && !path.ends_with("/content")
        })
}

/// [`REFERENCES`] as they appear in a body, quoted.
const QUOTED: [&[u8]; 10] = [
    b"\"previous_response_id\"",
    b"\"conversation\"",
    b"\"input_file_id\"",
    b"\"training_file\"",
    b"\"validation_file\"",
    b"\"file_id\"",
    b"\"file_ids\"",
    b"\"vector_store_ids\"",
    b"\"assistant_id\"",
    b"\"thread_id\"",
];

/// Whether a body may name a stored object: one of [`QUOTED`] in its bytes, or an ASCII
/// character written as a `\u00XX` escape (which could spell a field name past the byte
/// search; text outside ASCII, escaped by many clients, does not count). This runs on every
/// tenant's request, so it searches for what the names end with (`_id`, `_file"`) and for
/// `"conversation"` and `\u00`, each a vectorized pass that a code-heavy prompt full of
/// underscores and `\n` escapes does not slow down, and checks the whole name only where one
/// of those is found.
fn may_reference(body: &[u8]) -> bool {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    /// The endings every name in [`QUOTED`] but `"conversation"` has one of.
    const ENDINGS: [&[u8]; 2] = [b"_id", b"_file\""];
    static FINDERS: LazyLock<[Finder<'static>; 4]> = LazyLock::new(|| {
        [
            Finder::new(ENDINGS[0]),
            Finder::new(ENDINGS[1]),
            Finder::new(b"\"conversation\""),
            Finder::new(b"\\u00"),
        ]
    });
    let [id, file, conversation, escape] = &*FINDERS;
    let escaped = escape
        .find_iter(body)
        .any(|i| body.get(i + 4).is_some_and(|c| matches!(c, b'2'..=b'7')));
    if escaped || conversation.find(body).is_some() {
        return true;
    }
    // A name ending at a found ending: it starts that many bytes before it.
    let named_at = |i: usize, ending: &[u8]| {
        QUOTED.iter().any(|name| {
            name.windows(ending.len())
                .rposition(|w| w == ending)
                .and_then(|at| i.checked_sub(at))
                .and_then(|start| body.get(start..))
                .is_some_and(|rest| rest.starts_with(name))
        })
    };
    id.find_iter(body).any(|i| named_at(i, ENDINGS[0]))
        || file.find_iter(body).any(|i| named_at(i, ENDINGS[1]))
}

/// The objects a JSON body names in `REFERENCES` fields, with the field; empty when the body
/// names none (checked on the bytes first: most bodies are never parsed here).
pub fn references(body: &[u8]) -> Vec<(&'static str, String)> {
    if !may_reference(body) {
        return Vec::new();
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    collect(&value, 0, &mut found);
    found
}

fn collect(value: &serde_json::Value, depth: usize, found: &mut Vec<(&'static str, String)>) {
    use serde_json::Value;
    if depth > 64 {
        return;
    }
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if let Some(name) = REFERENCES.iter().find(|r| **r == k.as_str()) {
                    match v {
                        Value::String(id) if !id.is_empty() => found.push((name, id.clone())),
                        Value::Array(ids) => found.extend(
                            ids.iter()
                                .filter_map(Value::as_str)
                                .filter(|id| !id.is_empty())
                                .map(|id| (*name, id.to_owned())),
                        ),
                        // `conversation: {"id": …}`.
                        Value::Object(o) => {
                            if let Some(id) = o.get("id").and_then(Value::as_str) {
                                found.push((name, id.to_owned()));
                            }
                        }
                        _ => {}
                    }
                }
                collect(v, depth + 1, found);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect(v, depth + 1, found)),
        _ => {}
    }
}

/// The objects an answer names that the caller now owns, and until when the provider keeps
/// them (unix seconds, when it says): a created object's `id` (a stream's `response.id`, or
/// its first chunk's `id`), a thread made with a run, a batch's output and error files, a
/// fine-tuning job's result files, a completed upload's file.
pub fn named_in_answer(head: &[u8], sse: bool, creates: bool) -> (Vec<String>, Option<u64>) {
    use serde_json::Value;
    if sse {
        let id = crate::stream::response_id_in(head, true)
            .or_else(|| crate::stream::first_event_id(head));
        return (id.into_iter().collect(), None);
    }
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(head) else {
        return (Vec::new(), None);
    };
    let mut ids = Vec::new();
    let mut push = |v: Option<&Value>| {
        match v {
            Some(Value::String(id)) if !id.is_empty() => ids.push(id.clone()),
            Some(Value::Array(items)) => ids.extend(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|id| !id.is_empty())
                    .map(str::to_owned),
            ),
            _ => {}
        };
    };
    if creates {
        push(answer.get("id"));
    }
    for field in MADE {
        push(answer.get(field));
    }
    if answer.get("object").and_then(Value::as_str) == Some("upload") {
        push(answer.get("file").and_then(|f| f.get("id")));
    }
    let expires = answer.get("expires_at").and_then(Value::as_u64);
    (ids, expires)
}

/// Builds [`Ownership`] services.
#[derive(Clone, Debug)]
pub struct OwnershipLayer {
    records: Arc<Records>,
}

impl OwnershipLayer {
    /// Checks and records against `records`.
    pub fn new(records: Arc<Records>) -> Self {
        OwnershipLayer { records }
    }
}

impl<S> Layer<S> for OwnershipLayer {
    type Service = Ownership<S>;
    fn layer(&self, inner: S) -> Ownership<S> {
        Ownership {
            inner,
            records: Arc::clone(&self.records),
        }
    }
}

/// See [`OwnershipLayer`].
#[derive(Clone, Debug)]
pub struct Ownership<S> {
    inner: S,
    records: Arc<Records>,
}

type Refused = Ready<Result<Answer, GatewayError>>;

impl<S> Service<GatewayRequest> for Ownership<S>
where
    S: Service<GatewayRequest, Response = Answer, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Answer;
    type Error = GatewayError;
    type Future =
        Either<Refused, Either<S::Future, BoxFuture<'static, Result<Answer, GatewayError>>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: GatewayRequest) -> Self::Future {
        let tenant = req.client.is_some();
        if let Some(c) = &req.client {
            if let Err(family) = c.settings.endpoints.check(&req.path) {
                return Either::Left(ready(Err(GatewayError::EndpointNotAllowed(family))));
            }
        }
        let scope = scope(&req.method, &req.path);
        if records_answer(&scope, &req.path) {
            req.records = true;
        }
        if let Some(id) = scope.object {
            req.object = Some(id.into());
        }
        // Only a tenant's body is searched for the objects it names, and not when its one
        // reading found no member that could name one.
        let refs = match tenant && req.method == Method::POST && req.names_objects != Some(false) {
            true => references(&req.body),
            false => Vec::new(),
        };
        if req.object.is_none() && refs.is_empty() && !(scope.lists && tenant) {
            return Either::Right(Either::Left(self.inner.call(req)));
        }
        let lists = scope.lists;
        let in_path = scope.object.is_some();
        // The readied service serves this request; a fresh clone takes its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let records = Arc::clone(&self.records);
        Either::Right(Either::Right(Box::pin(async move {
            let client = req.client.as_ref().map(|c| Arc::clone(&c.bucket));
            // The object in the path, else the response the body continues.
            if let Some(id) = req.object.clone() {
                let owner = records.owner_of(&id).await;
                if client.is_some() && owner.as_ref().map(|o| &o.client) != Some(&client) {
                    let param = (!in_path).then_some("previous_response_id");
                    return Err(GatewayError::ObjectNotFound {
                        id: id.into(),
                        param,
                    });
                }
                req.object_key = owner.map(|o| o.key);
            }
            for (param, id) in refs {
                let owner = records.owner_of(&id).await;
                if owner.as_ref().map(|o| &o.client) != Some(&client) {
                    return Err(GatewayError::ObjectNotFound {
                        id,
                        param: Some(param),
                    });
                }
                if req.object_key.is_none() {
                    req.object_key = owner.map(|o| o.key);
                }
            }
            let mut inner = inner;
            let answer = inner.ready().await?.call(req).await?;
            match client {
                Some(client) if lists && answer.status.is_success() => {
                    keep_own(answer, &records, &client).await
                }
                _ => Ok(answer),
            }
        })))
    }
}

/// A listing with only `client`'s objects in its `data` (and `first_id`/`last_id` to match).
/// A listing that cannot be read is refused rather than passed on whole.
async fn keep_own(
    mut answer: Answer,
    records: &Records,
    client: &Arc<str>,
) -> Result<Answer, GatewayError> {
    use serde_json::Value;
    let unreadable = || GatewayError::AllFailed {
        status: http::StatusCode::BAD_GATEWAY,
        summary: "the upstream's listing could not be read to keep only this key's objects".into(),
    };
    let body = std::mem::replace(&mut answer.body, Body::empty());
    let bytes = http_body_util::Limited::new(body, MAX_LISTING)
        .collect()
        .await
        .map_err(|_| unreadable())?
        .to_bytes();
    let Ok(Value::Object(mut listing)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(unreadable());
    };
    let Some(Value::Array(items)) = listing.remove("data") else {
        return Err(unreadable());
    };
    let mut own = Vec::with_capacity(items.len());
    for item in items {
        let Some(id) = item.get("id").and_then(Value::as_str) else {
            continue;
        };
        let owner = records.owner_of(id).await;
        if owner.and_then(|o| o.client).as_ref() == Some(client) {
            own.push(item);
        }
    }
    let id_of = |item: Option<&Value>| item.and_then(|i| i.get("id")).cloned();
    if listing.contains_key("first_id") {
        listing.insert("first_id".into(), id_of(own.first()).unwrap_or(Value::Null));
    }
    if listing.contains_key("last_id") {
        listing.insert("last_id".into(), id_of(own.last()).unwrap_or(Value::Null));
    }
    listing.insert("data".into(), Value::Array(own));
    let out = serde_json::to_vec(&listing).map_err(|_| unreadable())?;
    answer.headers.remove(header::CONTENT_ENCODING);
    answer
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    answer.body = Body::from(out);
    Ok(answer)
}

/// Records the objects an answer names as the caller's (from the key-selection layer, which
/// knows the key).
pub fn record_answer(
    records: &Records,
    req: &GatewayRequest,
    head: &[u8],
    sse: bool,
    key: Arc<str>,
) {
    let creates = scope(&req.method, &req.path).creates || req.stores;
    let (ids, expires) = named_in_answer(head, sse, creates);
    if ids.is_empty() {
        return;
    }
    let lifetime = match req.endpoint {
        crate::endpoint::Endpoint::Responses | crate::endpoint::Endpoint::ChatCompletions => {
            records::RESPONSE_LIFETIME
        }
        _ => records::OBJECT_LIFETIME,
    };
    let expires = expires.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + lifetime
    });
    let owner = Owner {
        key,
        client: req.client.as_ref().map(|c| Arc::clone(&c.bucket)),
    };
    for id in ids {
        records.record(&id, owner.clone(), expires);
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
