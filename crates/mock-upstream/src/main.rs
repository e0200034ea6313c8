//! `mock-upstream`: the fake OpenAI-compatible upstream as a process, for
//! benchmarks and chaos drills.
//!
//! ```text
//! mock-upstream [--port N | --listen ADDR] [--chunks N] [--chunk-delay-ms N] [--delay-ms N]
//! ```
//!
//! Prints one line to stderr with the bound address, then serves until
//! Ctrl-C. Requests are not recorded, to keep the hot path cheap.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use mock_upstream::{start_on, MockConfig};

const USAGE: &str = "usage: mock-upstream [--port N | --listen ADDR] [--chunks N] \
                     [--chunk-delay-ms N] [--delay-ms N]";

/// Parsed command line.
#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    config: MockConfig,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let mut config = MockConfig {
        record: false,
        ..MockConfig::default()
    };
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_owned());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: `{value}` is not a number"))
        };
        match flag.as_str() {
            "--port" => {
                let port = u16::try_from(number()?)
                    .map_err(|_| format!("--port: `{value}` is out of range"))?;
                listen.set_port(port);
            }
            "--listen" => {
                listen = value.parse().map_err(|_| {
                    format!("--listen: `{value}` is not an address like 127.0.0.1:9000")
                })?;
            }
            "--chunks" => {
                config.chunks = usize::try_from(number()?).unwrap_or(usize::MAX);
            }
            "--chunk-delay-ms" => config.chunk_delay = Duration::from_millis(number()?),
            "--delay-ms" => config.response_delay = Duration::from_millis(number()?),
            _ => return Err(format!("unknown argument `{flag}`\n{USAGE}")),
        }
    }
    Ok(Args { listen, config })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let handle = match start_on(args.listen, args.config).await {
        Ok(handle) => handle,
        Err(err) => {
            eprintln!("mock-upstream: cannot listen on {}: {err}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    eprintln!("mock-upstream listening on {}", handle.addr());
    if let Err(err) = tokio::signal::ctrl_c().await {
        eprintln!("mock-upstream: cannot wait for Ctrl-C: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_all_flags() -> Result<(), String> {
        let args = parse(&[
            "--port",
            "9000",
            "--chunks",
            "20",
            "--chunk-delay-ms",
            "5",
            "--delay-ms",
            "7",
        ])?;
        assert_eq!(args.listen, SocketAddr::from((Ipv4Addr::LOCALHOST, 9000)));
        assert_eq!(args.config.chunks, 20);
        assert_eq!(args.config.chunk_delay, Duration::from_millis(5));
        assert_eq!(args.config.response_delay, Duration::from_millis(7));
        assert!(!args.config.record);
        let args = parse(&["--listen", "0.0.0.0:8080"])?;
        assert_eq!(args.listen.port(), 8080);
        Ok(())
    }

    #[test]
    fn rejects_bad_flags() {
        assert!(parse(&["--port"]).is_err());
        assert!(parse(&["--port", "70000"]).is_err());
        assert!(parse(&["--bogus", "1"]).is_err());
        assert!(parse(&["--help"]).is_err());
    }
}
