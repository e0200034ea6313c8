//! The soak's load: N loops, each sending one chat completion at a time through the gateway,
//! cycling over the models and alternating plain and streamed requests, and a tally of what came
//! back per model and kind (latency of successes, attempts the gateway reports, who served,
//! failures by cause with a sample).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Request, StatusCode, Uri};
use tokio::time::Instant;

use super::scenario::{CLIENT_KEY, MODELS};
use crate::load::{client, histogram, HttpClient};
use crate::procs::BoxError;

/// Longest a client waits for one answer before counting it as failed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Most of a failed answer's body kept as its sample.
const SAMPLE_BYTES: usize = 400;

/// Requests sent and failed so far, for progress lines while the load runs.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Requests answered (or failed).
    pub(crate) done: AtomicU64,
    /// Requests that failed.
    pub(crate) failed: AtomicU64,
}

/// One cause of failure: how often, and the first one in full.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// How many requests failed this way.
    pub(crate) count: u64,
    /// The first one: status, gateway headers, body.
    pub(crate) sample: String,
}

/// What the requests of one model and kind (plain or stream) got.
#[derive(Debug)]
pub(crate) struct ClassTally {
    /// Requests finished.
    pub(crate) requests: u64,
    /// Requests answered correctly.
    pub(crate) ok: u64,
    /// Sum of `x-tollgate-attempts` over every answer.
    pub(crate) attempts: u64,
    /// Answers by the provider that served them (`x-tollgate-provider`).
    pub(crate) served_by: BTreeMap<String, u64>,
    /// Latency of the correct answers, µs.
    pub(crate) latency: Histogram<u64>,
    /// Failures by cause (`status 502`, `stream: error event`, `transport`...).
    pub(crate) failures: BTreeMap<String, Failure>,
}

impl ClassTally {
    fn new() -> Result<ClassTally, BoxError> {
        Ok(ClassTally {
            requests: 0,
            ok: 0,
            attempts: 0,
            served_by: BTreeMap::new(),
            latency: histogram()?,
            failures: BTreeMap::new(),
        })
    }

    fn merge(&mut self, other: ClassTally) -> Result<(), BoxError> {
        self.requests += other.requests;
        self.ok += other.ok;
        self.attempts += other.attempts;
        for (provider, n) in other.served_by {
            *self.served_by.entry(provider).or_default() += n;
        }
        self.latency.add(&other.latency)?;
        for (cause, failure) in other.failures {
            self.failures
                .entry(cause)
                .and_modify(|f| f.count += failure.count)
                .or_insert(failure);
        }
        Ok(())
    }
}

/// Tallies per (model, streaming).
pub(crate) type Tally = BTreeMap<(&'static str, bool), ClassTally>;

/// What one answer was.
struct Answer {
    status: StatusCode,
    attempts: u64,
    provider: Option<String>,
    body: Vec<u8>,
}

/// The request body for `model`, streamed or not.
fn body(model: &str, stream: bool) -> Bytes {
    Bytes::from(format!(
        "{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\
         \"Say hello in one short sentence.\"}}],\"max_tokens\":16,\"stream\":{stream}}}"
    ))
}

/// Sends one request and reads the whole answer (at most 64 KiB are kept).
async fn exchange(client: &HttpClient, uri: &Uri, body: Bytes) -> Result<Answer, String> {
    let req = Request::post(uri.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(AUTHORIZATION, format!("Bearer {CLIENT_KEY}"))
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("transport: {e:?}"))?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let attempts = header("x-tollgate-attempts")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let provider = header("x-tollgate-provider");
    let status = resp.status();
    let mut body = Vec::new();
    let mut incoming = resp.into_body();
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| format!("transport: body: {e}"))?;
        if let Some(data) = frame.data_ref() {
            let room = (64 * 1024usize).saturating_sub(body.len());
            body.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(Answer {
        status,
        attempts,
        provider,
        body,
    })
}

/// Why an answer is not a correct one, if it is not: a short cause for grouping.
fn fault_of(answer: &Answer, stream: bool) -> Option<String> {
    if answer.status != StatusCode::OK {
        return Some(format!("status {}", answer.status.as_u16()));
    }
    let text = String::from_utf8_lossy(&answer.body);
    if !stream {
        let complete = text.contains("\"chat.completion\"") && text.contains("\"choices\"");
        return (!complete).then(|| "plain: not a chat.completion".to_owned());
    }
    if text.contains("\"error\"") {
        return Some("stream: error event".to_owned());
    }
    if !text.contains("chat.completion.chunk") {
        return Some("stream: no chunk".to_owned());
    }
    (!text.trim_end().ends_with("data: [DONE]")).then(|| "stream: no [DONE]".to_owned())
}

/// The sample kept for a failed answer.
fn sample(answer: &Answer) -> String {
    let text = String::from_utf8_lossy(&answer.body);
    let cut: String = text.chars().take(SAMPLE_BYTES).collect();
    format!(
        "status {} attempts {} provider {} body {cut}",
        answer.status.as_u16(),
        answer.attempts,
        answer.provider.as_deref().unwrap_or("-"),
    )
}

/// What the loops share.
pub(crate) struct Spec {
    /// The gateway's chat completions URL.
    pub(crate) uri: Uri,
    /// When loops stop starting requests.
    pub(crate) end: Instant,
    /// Request counter: request k asks for model k mod 4, streamed when (k / 4) is odd.
    pub(crate) next: AtomicU64,
    /// Progress for the monitor.
    pub(crate) progress: Progress,
}

/// One loop: requests back to back until the end.
async fn worker(client: HttpClient, spec: Arc<Spec>) -> Result<Tally, BoxError> {
    let mut tally = Tally::new();
    for (model, _) in MODELS {
        for stream in [false, true] {
            tally.insert((model, stream), ClassTally::new()?);
        }
    }
    while Instant::now() < spec.end {
        let k = spec.next.fetch_add(1, Ordering::Relaxed);
        let n = MODELS.len() as u64;
        let model = MODELS[usize::try_from(k % n).unwrap_or(0)].0;
        let stream = (k / n) % 2 == 1;
        let t0 = Instant::now();
        let outcome = tokio::time::timeout(
            CLIENT_TIMEOUT,
            exchange(&client, &spec.uri, body(model, stream)),
        )
        .await
        .unwrap_or_else(|_| Err("client timeout".to_owned()));
        let micros = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        let class = tally
            .get_mut(&(model, stream))
            .ok_or("model missing from the tally")?;
        class.requests += 1;
        let failure = match outcome {
            Ok(answer) => {
                class.attempts += answer.attempts;
                if let Some(provider) = &answer.provider {
                    *class.served_by.entry(provider.clone()).or_default() += 1;
                }
                fault_of(&answer, stream).map(|cause| (cause, sample(&answer)))
            }
            Err(message) => Some((
                message.split(':').next().unwrap_or("error").to_owned(),
                message,
            )),
        };
        spec.progress.done.fetch_add(1, Ordering::Relaxed);
        match failure {
            None => {
                class.ok += 1;
                class.latency.saturating_record(micros.max(1));
            }
            Some((cause, sample)) => {
                spec.progress.failed.fetch_add(1, Ordering::Relaxed);
                class
                    .failures
                    .entry(cause)
                    .and_modify(|f| f.count += 1)
                    .or_insert(Failure { count: 1, sample });
            }
        }
    }
    Ok(tally)
}

/// Runs `concurrency` loops on one pooled client until `spec.end`; merges their tallies.
pub(crate) async fn run(spec: Arc<Spec>, concurrency: usize) -> Result<Tally, BoxError> {
    let client = client();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(worker(client.clone(), spec.clone())))
        .collect();
    let mut total = Tally::new();
    for task in tasks {
        for (class, tally) in task.await?? {
            match total.get_mut(&class) {
                Some(sum) => sum.merge(tally)?,
                None => {
                    total.insert(class, tally);
                }
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT),
            attempts: 1,
            provider: None,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn answers_are_judged_by_status_shape_and_stream_end() {
        let plain = r#"{"object":"chat.completion","choices":[]}"#;
        assert_eq!(fault_of(&answer(200, plain), false), None);
        assert_eq!(
            fault_of(&answer(502, "{}"), false).as_deref(),
            Some("status 502")
        );
        assert_eq!(
            fault_of(&answer(200, "{}"), false).as_deref(),
            Some("plain: not a chat.completion")
        );
        let chunk = r#"data: {"object":"chat.completion.chunk"}"#;
        let good = format!("{chunk}\n\ndata: [DONE]\n\n");
        assert_eq!(fault_of(&answer(200, &good), true), None);
        assert_eq!(
            fault_of(&answer(200, &format!("{chunk}\n\n")), true).as_deref(),
            Some("stream: no [DONE]")
        );
        let error = "data: {\"error\":{\"message\":\"x\"}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            fault_of(&answer(200, error), true).as_deref(),
            Some("stream: error event")
        );
    }
}
