//! Traces: the request and attempt spans reach an OTLP collector (HTTP/protobuf and gRPC) in
//! the client's trace, with the GenAI attributes; the upstream gets the attempt's
//! `traceparent`; with nothing configured the gateway exports nothing and passes the client's
//! `traceparent` on as it is; a collector that is down costs one warning, not the requests.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use axum::extract::State;
use bytes::Bytes;
use mock_upstream::{Fault, MockHandle};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_e2e::{mock, provider, refusing_port, Gateway};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// What a collector received: the spans, and the resources' `service.name`s.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    services: Vec<String>,
    exports: usize,
}

type Shared = Arc<Mutex<Received>>;

fn keep(shared: &Shared, req: ExportTraceServiceRequest) {
    let mut r = shared.lock().unwrap();
    r.exports += 1;
    for rs in req.resource_spans {
        if let Some(res) = rs.resource {
            if let Some(name) = attr(&res.attributes, "service.name") {
                r.services.push(name);
            }
        }
        for ss in rs.scope_spans {
            r.spans.extend(ss.spans);
        }
    }
}

/// An OTLP/HTTP collector: `POST /v1/traces` with a protobuf body.
async fn http_collector() -> (SocketAddr, Shared) {
    let shared = Shared::default();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(|State(s): State<Shared>, body: Bytes| async move {
                keep(&s, ExportTraceServiceRequest::decode(body).unwrap());
                let answer = ExportTraceServiceResponse::default().encode_to_vec();
                ([("content-type", "application/x-protobuf")], answer)
            }),
        )
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, shared)
}

struct Grpc(Shared);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC collector.
async fn grpc_collector() -> (SocketAddr, Shared) {
    let shared = Shared::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(Grpc(shared.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, shared)
}

fn attr(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<String> {
    let value = attrs
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        Any::StringValue(s) => s.clone(),
        Any::IntValue(i) => i.to_string(),
        Any::BoolValue(b) => b.to_string(),
        Any::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits (up to 20 s) until the collector holds the request span and `attempts` attempt spans.
async fn spans(shared: &Shared, attempts: usize) -> (Span, Vec<Span>) {
    for _ in 0..400 {
        {
            let r = shared.lock().unwrap();
            let server = r.spans.iter().find(|s| s.kind == SpanKind::Server as i32);
            let clients: Vec<Span> = r
                .spans
                .iter()
                .filter(|s| s.kind == SpanKind::Client as i32)
                .cloned()
                .collect();
            if let (Some(server), true) = (server, clients.len() >= attempts) {
                let mut clients = clients;
                clients.sort_by_key(|s| s.start_time_unix_nano);
                return (server.clone(), clients);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the collector did not get the spans");
}

fn config(m: &MockHandle, keys: &[&str], extra: &str) -> String {
    format!("{extra}\n{}", provider("openai", &m.base_url(), keys, true))
}

/// Batches leave every 50 ms instead of every 5 s.
const FAST_BATCHES: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "50");

async fn chat_with_traceparent(gw: &Gateway) -> reqwest::Response {
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .header("tracestate", "vendor=abc")
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

/// The upstream's `traceparent`: (trace id, parent span id, flags).
fn upstream_traceparent(m: &MockHandle, n: usize) -> (String, String, String) {
    let requests = m.requests();
    let v = requests[n].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test]
async fn spans_reach_an_http_collector_in_the_clients_trace_with_genai_attributes() {
    let m = mock().await;
    let (addr, collector) = http_collector().await;
    let extra =
        format!("[telemetry]\notlp_endpoint = \"http://{addr}\"\nservice_name = \"from-file\"\n");
    let gw = Gateway::start(
        &config(&m, &["a"], &extra),
        &[FAST_BATCHES, ("OTEL_SERVICE_NAME", "tollgate-e2e")],
    )
    .await;
    let body = chat_with_traceparent(&gw).await.bytes().await.unwrap();
    assert!(!body.is_empty());

    let (request, attempts) = spans(&collector, 1).await;
    let attempt = &attempts[0];
    // The request span continues the client's trace.
    assert_eq!(hex(&request.trace_id), TRACE_ID);
    assert_eq!(hex(&request.parent_span_id), CLIENT_SPAN);
    assert_eq!(request.name, "POST /v1/chat/completions");
    let a = &request.attributes;
    assert_eq!(attr(a, "gen_ai.operation.name").as_deref(), Some("chat"));
    assert_eq!(
        attr(a, "gen_ai.request.model").as_deref(),
        Some("gpt-4o-mini")
    );
    assert_eq!(attr(a, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(a, "tollgate.outcome").as_deref(), Some("first_try"));
    assert_eq!(attr(a, "tollgate.key").as_deref(), Some("a"));
    assert_eq!(attr(a, "error.type"), None);
    // The attempt is the request's child, with the GenAI attributes and its usage.
    assert_eq!(attempt.trace_id, request.trace_id);
    assert_eq!(attempt.parent_span_id, request.span_id);
    assert_eq!(attempt.name, "chat gpt-4o-mini");
    let a = &attempt.attributes;
    assert_eq!(attr(a, "gen_ai.operation.name").as_deref(), Some("chat"));
    assert_eq!(attr(a, "gen_ai.provider.name").as_deref(), Some("openai"));
    assert_eq!(
        attr(a, "gen_ai.request.model").as_deref(),
        Some("gpt-4o-mini")
    );
    assert_eq!(
        attr(a, "gen_ai.response.model").as_deref(),
        Some("gpt-4o-mini")
    );
    let input: u64 = attr(a, "gen_ai.usage.input_tokens")
        .unwrap()
        .parse()
        .unwrap();
    let output: u64 = attr(a, "gen_ai.usage.output_tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(input > 0 && output > 0, "{input} {output}");
    assert_eq!(attr(a, "tollgate.key").as_deref(), Some("a"));
    assert_eq!(attr(a, "tollgate.attempt").as_deref(), Some("1"));
    assert_eq!(attr(a, "tollgate.outcome").as_deref(), Some("success"));
    assert_eq!(attr(a, "http.response.status_code").as_deref(), Some("200"));
    // Never a secret anywhere in the spans.
    assert!(!format!("{:?}", collector.lock().unwrap().spans).contains("sk-a"));
    // The variable won over the file.
    assert!(collector
        .lock()
        .unwrap()
        .services
        .iter()
        .all(|s| s == "tollgate-e2e"));
    // The upstream got the attempt's context, in the same trace, with the client's tracestate.
    let (trace, parent, flags) = upstream_traceparent(&m, 0);
    assert_eq!(trace, TRACE_ID);
    assert_eq!(parent, hex(&attempt.span_id));
    assert_eq!(flags, "01");
    assert_eq!(m.requests()[0].headers["tracestate"], "vendor=abc");
}

#[tokio::test]
async fn a_retried_request_has_one_span_per_attempt_and_its_waits_as_events() {
    let m = mock().await;
    let (addr, collector) = http_collector().await;
    m.script("sk-a", [Fault::status(503)]);
    let extra = format!("[retry]\nbase_delay = \"5ms\"\nmax_delay = \"10ms\"\n[telemetry]\notlp_endpoint = \"http://{addr}/\"\n");
    let gw = Gateway::start(&config(&m, &["a"], &extra), &[FAST_BATCHES]).await;
    chat_with_traceparent(&gw).await.bytes().await.unwrap();

    let (request, attempts) = spans(&collector, 2).await;
    assert_eq!(attempts.len(), 2);
    let (first, second) = (&attempts[0], &attempts[1]);
    assert_eq!(
        attr(&first.attributes, "error.type").as_deref(),
        Some("transient")
    );
    assert_eq!(
        attr(&first.attributes, "http.response.status_code").as_deref(),
        Some("503")
    );
    assert_eq!(
        attr(&first.attributes, "tollgate.attempt").as_deref(),
        Some("1")
    );
    assert_eq!(
        attr(&second.attributes, "tollgate.attempt").as_deref(),
        Some("2")
    );
    assert_eq!(
        attr(&second.attributes, "tollgate.served").as_deref(),
        Some("after_retry")
    );
    assert_eq!(attr(&second.attributes, "error.type"), None);
    assert!(
        request.events.iter().any(|e| e.name == "backoff"),
        "{:?}",
        request.events
    );
    assert_eq!(
        attr(&request.attributes, "tollgate.attempts").as_deref(),
        Some("2")
    );
    assert_eq!(
        attr(&request.attributes, "tollgate.outcome").as_deref(),
        Some("after_retry")
    );
    // Each upstream request names its own attempt.
    assert_eq!(upstream_traceparent(&m, 0).1, hex(&first.span_id));
    assert_eq!(upstream_traceparent(&m, 1).1, hex(&second.span_id));
}

#[tokio::test]
async fn spans_reach_a_grpc_collector() {
    let m = mock().await;
    let (addr, collector) = grpc_collector().await;
    let endpoint = format!("http://{addr}");
    let gw = Gateway::start(
        &config(&m, &["a"], ""),
        &[
            FAST_BATCHES,
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    )
    .await;
    chat_with_traceparent(&gw).await.bytes().await.unwrap();
    let (request, attempts) = spans(&collector, 1).await;
    assert_eq!(hex(&request.trace_id), TRACE_ID);
    assert_eq!(attempts[0].parent_span_id, request.span_id);
    assert_eq!(upstream_traceparent(&m, 0).1, hex(&attempts[0].span_id));
    assert!(collector
        .lock()
        .unwrap()
        .services
        .iter()
        .all(|s| s == "tollgate"));
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_the_clients_traceparent_passes_as_is() {
    let m = mock().await;
    // Telemetry settings without an endpoint, and variables that name none: off.
    let gw = Gateway::start(
        &config(&m, &["a"], "[telemetry]\nservice_name = \"gw\"\n"),
        &[FAST_BATCHES, ("OTEL_SERVICE_NAME", "x")],
    )
    .await;
    chat_with_traceparent(&gw).await.bytes().await.unwrap();
    let sent = &m.requests()[0].headers;
    assert_eq!(
        sent["traceparent"],
        format!("00-{TRACE_ID}-{CLIENT_SPAN}-01")
    );
    assert_eq!(sent["tracestate"], "vendor=abc");
    assert!(!gw.logs().contains("exporting traces"), "{}", gw.logs());

    // An endpoint, but the SDK switched off: the collector never hears from the gateway.
    let (addr, collector) = http_collector().await;
    let extra = format!("[telemetry]\notlp_endpoint = \"http://{addr}\"\n");
    let gw = Gateway::start(
        &config(&m, &["a"], &extra),
        &[FAST_BATCHES, ("OTEL_SDK_DISABLED", "true")],
    )
    .await;
    chat_with_traceparent(&gw).await.bytes().await.unwrap();
    assert_eq!(
        m.requests()[1].headers["traceparent"],
        format!("00-{TRACE_ID}-{CLIENT_SPAN}-01")
    );
    // Twenty batch intervals: nothing came.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(collector.lock().unwrap().exports, 0);
}

#[tokio::test]
async fn a_collector_that_is_down_costs_one_warning_not_the_requests() {
    let m = mock().await;
    // A port nobody listens on, and nobody else may take while the test runs.
    let (closed, _held) = refusing_port();
    let extra = format!("[telemetry]\notlp_endpoint = \"http://{closed}\"\n");
    let gw = Gateway::start(&config(&m, &["a"], &extra), &[FAST_BATCHES]).await;
    let warnings = |gw: &Gateway| gw.logs().matches("traces not exported").count();
    for _ in 0..3 {
        chat_with_traceparent(&gw).await.bytes().await.unwrap();
    }
    for _ in 0..200 {
        if warnings(&gw) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(warnings(&gw), 1, "{}", gw.logs());
    // More requests, more failed batches: still one warning (the next is due in a minute).
    for _ in 0..5 {
        let started = tokio::time::Instant::now();
        chat_with_traceparent(&gw).await.bytes().await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "an export timeout is 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(warnings(&gw), 1, "{}", gw.logs());
}

/// A client that leaves mid-answer marks the request span `client_cancelled`.
#[tokio::test]
async fn a_client_that_leaves_is_the_request_spans_outcome() {
    let m = mock().await;
    let (addr, collector) = http_collector().await;
    let endpoint = format!("http://{addr}");
    let gw = Gateway::start(
        &config(&m, &["a"], ""),
        &[FAST_BATCHES, ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    )
    .await;
    gw.leave_mid_stream().await;
    let (request, _) = spans(&collector, 1).await;
    assert_eq!(
        attr(&request.attributes, "tollgate.outcome").as_deref(),
        Some("client_cancelled")
    );
}
