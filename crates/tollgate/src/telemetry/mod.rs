//! Logs and traces. Logs: tracing-subscriber, JSON or human-readable, level from `RUST_LOG`
//! (default info), written to stdout by a thread of their own (tracing-appender's non-blocking
//! writer: a request's task formats its line and queues it, never waits on the pipe; a full
//! queue of 128k lines makes it wait rather than lose a line). Traces: OpenTelemetry over OTLP when `[telemetry]` or the `OTEL_*`
//! variables name an endpoint (`config::TelemetrySettings::resolve`). Off, none of it runs:
//! no exporter, no subscriber layer, and the request path reads one flag ([`enabled`]) before
//! doing anything for traces. On, the spans (`spans`) reach the exporter through
//! tracing-opentelemetry and leave in batches from a task on the tokio runtime
//! (`export`), never from a request.

mod export;
pub mod spans;

use crate::config::Otlp;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Whether traces are exported: set once, at start, by [`init`].
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are on (the request path's one check when they are off).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The running trace exporter, if any, and the log writer's thread; [`Telemetry::shutdown`]
/// sends what is still queued.
#[must_use = "dropping it stops the log writer; shutdown() also sends the last spans"]
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Dropped last: the lines still queued are written, then the writer's thread ends.
    _log: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl Telemetry {
    /// Flushes the queued spans (bounded by the exporter's timeout) and stops the exporter,
    /// then writes the queued log lines. Call it outside the runtime's worker threads (the
    /// exporter's task must run meanwhile).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// Lines the log writer's queue holds before a logging thread waits for it (no line is
/// dropped). The queue is allocated and touched whole at start, 32 bytes a line: tracing-
/// appender's default of 128,000 lines was 4 MB of the idle gateway's memory. 16,384 lines is
/// half a second of access log at 30,000 requests a second.
const LOG_QUEUE_LINES: usize = 16_384;

/// What the log thread gathers into one write: the lines it finds queued go out together (it
/// flushes whenever the queue is empty, so a line never waits for more). Stdout alone writes
/// each line as it comes: one `write` a request with the access log on.
const LOG_WRITE_BYTES: usize = 64 * 1024;

/// Stdout, written by a thread of its own.
fn log_writer() -> (
    tracing_appender::non_blocking::NonBlocking,
    tracing_appender::non_blocking::WorkerGuard,
) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(false)
        .thread_name("tollgate-log")
        .finish(std::io::BufWriter::with_capacity(
            LOG_WRITE_BYTES,
            std::io::stdout(),
        ))
}

fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber; logs go to stdout. With `otlp`, traces are exported too:
/// then it must run inside a tokio runtime, whose workers run the batch exporter.
pub fn init(json: bool, otlp: Option<&Otlp>) -> Telemetry {
    // Colours only for a terminal: a log written to a file or a pipe stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (writer, guard) = log_writer();
    let Some(otlp) = otlp else {
        logs_only(json, ansi, writer);
        return Telemetry {
            provider: None,
            _log: Some(guard),
        };
    };
    let provider = match export::provider(otlp) {
        Ok(provider) => provider,
        Err(error) => {
            logs_only(json, ansi, writer);
            tracing::warn!(%error, endpoint = otlp.endpoint, "traces off: the OTLP exporter cannot be built");
            return Telemetry {
                provider: None,
                _log: Some(guard),
            };
        }
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(false)
        .with_ansi(ansi);
    let fmt = match json {
        true => fmt
            .json()
            .flatten_event(true)
            .with_filter(env_filter())
            .boxed(),
        false => fmt.with_filter(env_filter()).boxed(),
    };
    // The gateway's own spans and events only, whatever RUST_LOG says of the logs: the
    // exporter's and the HTTP libraries' events never become spans' events.
    let traced = Targets::new().with_target("tollgate", tracing::Level::INFO);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tollgate"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(traced);
    if tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok()
    {
        ENABLED.store(true, Ordering::Relaxed);
    }
    tracing::info!(
        endpoint = otlp.endpoint,
        protocol = ?otlp.protocol,
        service_name = otlp.service_name,
        "exporting traces over OTLP"
    );
    Telemetry {
        provider: Some(provider),
        _log: Some(guard),
    }
}

/// The subscriber without traces: exactly the logs, nothing else per span or event.
fn logs_only(json: bool, ansi: bool, writer: tracing_appender::non_blocking::NonBlocking) {
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(env_filter())
        .with_target(false)
        .with_ansi(ansi);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
