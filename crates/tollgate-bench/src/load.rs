//! The load generator: N tasks, each looping one chat completion at a time over a pooled
//! HTTP/1.1 keep-alive client, timing every request into an HDR histogram.

use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::args::Scenario;
use crate::procs::BoxError;

/// The pooled client every run uses (a fresh one per run).
pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The client key configured in the gateway (sent to the mock too, which ignores it).
const CLIENT_KEY: &str = "Bearer tg-bench";

/// Highest latency the histograms track, in microseconds (larger values are clamped).
const MAX_LATENCY_US: u64 = 60_000_000;

/// A pooled HTTP/1.1 client with keep-alive and `TCP_NODELAY`.
pub(crate) fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// A latency histogram in microseconds.
pub(crate) fn histogram() -> Result<Histogram<u64>, BoxError> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?)
}

/// The request body of a scenario: one short user message, a small completion allowance; for
/// `prompt40k`, a 40 KB coding-agent turn with the same allowance (`crate::codex_turn`).
pub(crate) fn body(scenario: Scenario) -> Bytes {
    match scenario {
        Scenario::Prompt40k => return crate::codex_turn::prompt40k_body(),
        Scenario::Responses40k => return crate::codex_turn::responses40k_body(),
        Scenario::Messages40k => return crate::codex_turn::messages40k_body(),
        _ => {}
    }
    let stream = if scenario.streaming() {
        ",\"stream\":true"
    } else {
        ""
    };
    Bytes::from(format!(
        "{{\"model\":\"bench-model\",\"messages\":[{{\"role\":\"user\",\"content\":\
         \"Say hello in one short sentence.\"}}],\"max_tokens\":16{stream}}}"
    ))
}

/// `http://{addr}{path}` as a URI.
pub(crate) fn url(addr: std::net::SocketAddr, path: &str) -> Result<Uri, BoxError> {
    Ok(format!("http://{addr}{path}").parse()?)
}

/// Builds one `POST` to `uri` (a chat completions URL) with the scenario's mock headers plus
/// `extra`.
pub(crate) fn request(
    uri: &Uri,
    scenario: Scenario,
    body: Bytes,
    extra: &[(&'static str, &'static str)],
) -> Result<Request<Full<Bytes>>, BoxError> {
    let mut req = Request::post(uri.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(AUTHORIZATION, HeaderValue::from_static(CLIENT_KEY));
    for (name, value) in scenario.headers().iter().chain(extra) {
        req = req.header(*name, HeaderValue::from_static(value));
    }
    Ok(req.body(Full::new(body))?)
}

/// Sends one request and reads the whole answer; a non-200 status, a transport error or (for a
/// stream) a body that does not end with `[DONE]` is an error.
pub(crate) async fn exchange(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
    streaming: bool,
) -> Result<(), String> {
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut tail: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if let Some(data) = frame.data_ref() {
            if streaming {
                tail.extend_from_slice(&data[data.len().saturating_sub(32)..]);
                let excess = tail.len().saturating_sub(32);
                tail.drain(..excess);
            }
        }
    }
    if status != StatusCode::OK {
        return Err(format!("status {status}"));
    }
    if streaming && !tail.trim_ascii_end().ends_with(b"[DONE]") {
        return Err("stream did not end with [DONE]".to_owned());
    }
    Ok(())
}

/// What one run is.
pub(crate) struct RunSpec {
    /// Chat completions URL of the server under load.
    pub(crate) uri: Uri,
    /// Answer kind.
    pub(crate) scenario: Scenario,
    /// Concurrent request loops.
    pub(crate) concurrency: usize,
    /// Start of the measured window (load starts at once; earlier requests are warmup).
    pub(crate) start: Instant,
    /// End of the measured window; loops stop issuing requests here.
    pub(crate) end: Instant,
}

/// What one run measured.
pub(crate) struct RunResult {
    /// Requests that started and finished inside the window.
    pub(crate) requests: u64,
    /// Failed requests at any time (warmup included).
    pub(crate) errors: u64,
    /// The first failure, for the report.
    pub(crate) first_error: Option<String>,
    /// Latencies of the counted requests, in microseconds.
    pub(crate) latency: Histogram<u64>,
}

/// One loop: requests back to back until the window ends.
async fn worker(
    client: HttpClient,
    uri: Uri,
    scenario: Scenario,
    start: Instant,
    end: Instant,
) -> Result<RunResult, BoxError> {
    let body = body(scenario);
    let mut out = RunResult {
        requests: 0,
        errors: 0,
        first_error: None,
        latency: histogram()?,
    };
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            return Ok(out);
        }
        let req = request(&uri, scenario, body.clone(), &[])?;
        let outcome = exchange(&client, req, scenario.streaming()).await;
        let t1 = Instant::now();
        match outcome {
            Ok(()) if t0 >= start && t1 <= end => {
                let micros = u64::try_from((t1 - t0).as_micros()).unwrap_or(u64::MAX);
                out.latency.saturating_record(micros.max(1));
                out.requests += 1;
            }
            Ok(()) => {}
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(e);
                // Do not spin on a dead server.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Runs `spec.concurrency` loops on a fresh pooled client and merges their results.
pub(crate) async fn run(spec: &RunSpec) -> Result<RunResult, BoxError> {
    let client = client();
    let tasks: Vec<_> = (0..spec.concurrency)
        .map(|_| {
            tokio::spawn(worker(
                client.clone(),
                spec.uri.clone(),
                spec.scenario,
                spec.start,
                spec.end,
            ))
        })
        .collect();
    let mut total = RunResult {
        requests: 0,
        errors: 0,
        first_error: None,
        latency: histogram()?,
    };
    for task in tasks {
        let one = task.await??;
        total.requests += one.requests;
        total.errors += one.errors;
        if total.first_error.is_none() {
            total.first_error = one.first_error;
        }
        total.latency.add(&one.latency)?;
    }
    Ok(total)
}
