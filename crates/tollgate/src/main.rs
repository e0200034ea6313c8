//! The `tollgate` binary: arguments, config, logging, serve. Nothing else.

use std::path::PathBuf;

/// mimalloc: a proxy allocates many small, short-lived buffers per request; in the overhead
/// benchmark glibc's malloc/free took ~15% of the gateway's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;
use std::sync::Arc;
use tollgate::config::{Config, Sources};

const USAGE: &str = "usage:
  tollgate [--config PATH] [--listen ADDR] [--open]
                                             run the gateway (--open: with no [[clients]],
                                             serve every peer, not only loopback ones)
  tollgate check-config PATH                 validate a config and print it resolved (secrets as ***)
  tollgate healthcheck [URL]                 exit 0 when URL (default http://127.0.0.1:8080/healthz) answers 200
  tollgate --version

Without --config (or TOLLGATE_CONFIG), OPENAI_API_KEY or OPENAI_API_KEYS=sk-a,sk-b configure one
provider (TOLLGATE_UPSTREAM_URL, default https://api.openai.com/v1) that serves every model.
TOLLGATE_SECTION__FIELD variables override the config (e.g. TOLLGATE_SERVER__LISTEN=0.0.0.0:9000).";

enum Command {
    Run(Sources),
    Check(PathBuf),
    Healthcheck(String),
    Version,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut sources = Sources {
        path: std::env::var_os("TOLLGATE_CONFIG").map(PathBuf::from),
        ..Sources::default()
    };
    let mut first = true;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "check-config" if first => {
                return args
                    .next()
                    .map(|p| Command::Check(p.into()))
                    .ok_or("check-config needs a PATH".into())
            }
            "healthcheck" if first => {
                let url = args
                    .next()
                    .unwrap_or_else(|| "http://127.0.0.1:8080/healthz".into());
                return Ok(Command::Healthcheck(url));
            }
            "--version" | "-V" => return Ok(Command::Version),
            "--config" | "-c" => {
                sources.path = Some(args.next().ok_or("--config needs a PATH")?.into())
            }
            "--listen" | "-l" => {
                sources.listen = Some(args.next().ok_or("--listen needs an ADDR")?)
            }
            "--open" => sources.open = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
        first = false;
    }
    Ok(Command::Run(sources))
}

fn main() -> ExitCode {
    let command = match parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("tollgate: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Version => {
            eprintln!("tollgate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check(path) => check_config(path),
        Command::Healthcheck(url) => healthcheck(&url),
        Command::Run(sources) => run(sources),
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
    tollgate::telemetry::init(settings.server.log_json);
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let deps = tollgate::Deps::production(&settings).map_err(std::io::Error::other)?;
            tollgate::serve(settings, deps, Some(sources)).await
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            eprintln!("tollgate: {e}");
            ExitCode::FAILURE
        }
    }
}
