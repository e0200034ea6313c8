//! The `tollgate` binary: arguments, config, logging, serve. Nothing else.

use std::path::PathBuf;

/// mimalloc: a proxy allocates many small, short-lived buffers per request; in the overhead
/// benchmark glibc's malloc/free took ~15% of the gateway's CPU. Its v2 line, with arenas
/// committed on use (`.cargo/config.toml`; ARCHITECTURE.md, "Memory and the allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;
use std::sync::Arc;
use tollgate::config::{Config, Sources};

/// The gateway's command line. Each flag can also be set from the environment variable its
/// help names; without a subcommand the gateway runs.
#[derive(Debug, clap::Parser)]
#[command(
    name = "tollgate",
    version,
    about = "An OpenAI-compatible gateway: rate limits, a key pool, retries and fallback.",
    after_help = "Without --config, OPENAI_API_KEY or OPENAI_API_KEYS=sk-a,sk-b configure one provider \
(TOLLGATE_UPSTREAM_URL, default https://api.openai.com/v1) that serves every model. \
TOLLGATE_SECTION__FIELD variables override the config (e.g. TOLLGATE_SERVER__LISTEN=0.0.0.0:9000)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run(RunArgs),
    /// Validate a config and print it resolved (secrets as ***); exit 1 when it is invalid.
    CheckConfig {
        /// The config file.
        #[arg(env = "TOLLGATE_CONFIG", value_name = "PATH")]
        path: PathBuf,
    },
    /// Exit 0 when URL answers 200 (for container health checks).
    Healthcheck {
        /// The health endpoint.
        #[arg(default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
}

#[derive(Debug, Clone, Default, clap::Args)]
struct RunArgs {
    /// The config file (TOML).
    #[arg(short, long, env = "TOLLGATE_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// The address to listen on, overriding the config's server.listen.
    #[arg(short, long, env = "TOLLGATE_SERVER__LISTEN", value_name = "ADDR", value_parser = listen_addr)]
    listen: Option<String>,
    /// With no [[clients]], serve every peer, not only loopback ones (the config's server.open).
    #[arg(long, env = "TOLLGATE_SERVER__OPEN")]
    open: bool,
}

/// An address to listen on: `IP:PORT`.
fn listen_addr(value: &str) -> Result<String, String> {
    value
        .parse::<std::net::SocketAddr>()
        .map(|_| value.to_owned())
        .map_err(|_| "expected IP:PORT, e.g. 0.0.0.0:8080".to_owned())
}

impl RunArgs {
    fn sources(self) -> Sources {
        Sources {
            path: self.config,
            listen: self.listen,
            open: self.open,
        }
    }
}

fn main() -> ExitCode {
    let cli = <Cli as clap::Parser>::parse();
    match cli.command {
        Some(Command::CheckConfig { path }) => check_config(path),
        Some(Command::Healthcheck { url }) => healthcheck(&url),
        Some(Command::Run(args)) => run(args.sources()),
        None => run(cli.run.sources()),
    }
}

fn check_config(path: PathBuf) -> ExitCode {
    match Config::load(&Sources {
        path: Some(path),
        ..Sources::default()
    })
    .and_then(|c| c.validate())
    {
        Ok(settings) => {
            match serde_json::to_string_pretty(&settings) {
                Ok(text) => {
                    use std::io::Write;
                    let _ = writeln!(std::io::stdout(), "{text}");
                }
                Err(e) => eprintln!("tollgate: cannot print the config: {e}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tollgate: invalid config:");
            for p in e.problems {
                eprintln!("  {p}");
            }
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn healthcheck(url: &str) -> ExitCode {
    let ok = runtime()
        .ok()
        .is_some_and(|rt| rt.block_on(tollgate::server::probe(url)));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(sources: Sources) -> ExitCode {
    let settings = match Config::load(&sources).and_then(|c| c.validate()) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("tollgate: invalid config:");
            for p in e.problems {
                eprintln!("  {p}");
            }
            return ExitCode::FAILURE;
        }
    };
    let traces = settings.telemetry.resolve(&|name| std::env::var(name).ok());
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the trace exporter's batch task runs on its workers.
    let telemetry = {
        let _entered = rt.enter();
        tollgate::telemetry::init(settings.server.log_json, traces.otlp.as_ref())
    };
    for warning in &traces.warnings {
        tracing::warn!(warning, "telemetry setting ignored");
    }
    let result = rt.block_on(async {
        let deps = tollgate::Deps::production(&settings).map_err(std::io::Error::other)?;
        tollgate::serve(settings, deps, Some(sources)).await
    });
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            eprintln!("tollgate: {e}");
            ExitCode::FAILURE
        }
    };
    // The spans still queued go out (the runtime's workers run the exporter meanwhile), then
    // the log lines still queued.
    telemetry.shutdown();
    code
}
