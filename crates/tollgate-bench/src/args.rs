//! Command line of `tollgate-bench`, and the scenarios it knows.

use std::path::PathBuf;
use std::time::Duration;

/// The usage text printed for `--help` and after a bad argument.
pub(crate) const USAGE: &str = "\
usage: tollgate-bench [--duration 5s] [--reps 5] [--concurrency 32,128]
                      [--scenarios immediate,delay20,stream20,prompt40k,responses40k,messages40k]
                      [--out target/bench/results.json]
                      [--warmup 500ms] [--client-threads 2] [--open-streams N]
                      [--bin-dir DIR] [--redis URL] [--smoke]
       tollgate-bench soak [--duration 60s] [--concurrency 16] ...   (see soak --help)

  --duration D        measured time of one run (suffix ms or s; a bare number is seconds)
  --reps N            repetitions of every direct/bare/gateway triple (medians are over these)
  --concurrency A,B   concurrent connections of the load generator
  --scenarios S,...   immediate (plain answer at once), delay20 (20 ms before headers),
                      stream20 (SSE answer of 20 chunks), prompt40k (plain answer to a
                      40 KB coding-agent turn: 31 messages, 10 tools), responses40k (the
                      same turn on /v1/responses, as Codex CLI sends it), messages40k (the
                      same turn on /v1/messages, as Claude Code sends it, to an Anthropic
                      provider); `none` runs no load matrix
  --out PATH          JSON results; CSVs are written next to it
  --warmup D          discarded load before every measured run
  --client-threads N  worker threads of the load generator's runtime
  --open-streams N    also hold N streams open through Tollgate and report its RSS
  --bin-dir DIR       use tollgate and mock-upstream from DIR instead of building them
  --redis URL         run the gateway with its buckets in Redis at URL (cost of a shared take)
  --smoke             immediate only, concurrency 4, 1 s, 1 rep (for the test suite)";

/// One kind of upstream answer, selected per request with mock-upstream's headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// A plain `chat.completion` answered at once.
    Immediate,
    /// A plain answer sent 20 ms after the request (`x-mock-fault: delay-ms=20`).
    Delay20,
    /// An SSE answer of 20 chunk events (`"stream": true`, `x-mock-chunks: 20`).
    Stream20,
    /// A plain answer at once to a 40 KB request shaped like a coding agent's turn (see
    /// `codex_turn`).
    Prompt40k,
    /// The same turn on the Responses API, as Codex CLI sends it (`/v1/responses`).
    Responses40k,
    /// The same turn on Anthropic's Messages API, as Claude Code sends it (`/v1/messages`).
    Messages40k,
}

impl Scenario {
    /// Every scenario, in report order.
    pub(crate) const ALL: [Scenario; 6] = [
        Scenario::Immediate,
        Scenario::Delay20,
        Scenario::Stream20,
        Scenario::Prompt40k,
        Scenario::Responses40k,
        Scenario::Messages40k,
    ];

    /// The name used on the command line and in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Immediate => "immediate",
            Scenario::Delay20 => "delay20",
            Scenario::Stream20 => "stream20",
            Scenario::Prompt40k => "prompt40k",
            Scenario::Responses40k => "responses40k",
            Scenario::Messages40k => "messages40k",
        }
    }

    /// The endpoint the requests go to.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Scenario::Responses40k => "/v1/responses",
            Scenario::Messages40k => "/v1/messages",
            _ => "/v1/chat/completions",
        }
    }

    /// Whether the request asks for a stream.
    pub(crate) fn streaming(self) -> bool {
        self == Scenario::Stream20
    }

    /// The headers the scenario adds to its requests: mock-upstream's knobs (Tollgate forwards
    /// them), or what its client sends.
    pub(crate) fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Scenario::Immediate | Scenario::Prompt40k | Scenario::Responses40k => &[],
            // As Claude Code sends it (the gateway forwards it to the Anthropic provider).
            Scenario::Messages40k => &[("anthropic-version", "2023-06-01")],
            Scenario::Delay20 => &[("x-mock-fault", "delay-ms=20")],
            Scenario::Stream20 => &[("x-mock-chunks", "20")],
        }
    }
}

/// Parsed command line.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    /// Measured time of one run.
    pub(crate) duration: Duration,
    /// Discarded load before each measured run.
    pub(crate) warmup: Duration,
    /// Repetitions of each direct/bare/gateway triple.
    pub(crate) reps: u32,
    /// Concurrency levels.
    pub(crate) concurrency: Vec<usize>,
    /// Scenarios to run.
    pub(crate) scenarios: Vec<Scenario>,
    /// JSON output path.
    pub(crate) out: PathBuf,
    /// Worker threads of the load generator.
    pub(crate) client_threads: usize,
    /// Number of streams to hold open for the memory measurement.
    pub(crate) open_streams: Option<usize>,
    /// Where prebuilt binaries are; `None` builds them.
    pub(crate) bin_dir: Option<PathBuf>,
    /// Redis URL: run the gateway with `state.backend = "redis"` (buckets shared through it).
    pub(crate) redis: Option<String>,
    /// Smoke mode (tiny run).
    pub(crate) smoke: bool,
}

impl Default for Args {
    fn default() -> Args {
        Args {
            duration: Duration::from_secs(5),
            warmup: Duration::from_millis(500),
            reps: 5,
            concurrency: vec![32, 128],
            scenarios: Scenario::ALL.to_vec(),
            out: PathBuf::from("target/bench/results.json"),
            client_threads: 2,
            open_streams: None,
            bin_dir: None,
            redis: None,
            smoke: false,
        }
    }
}

/// Parses `5s`, `500ms` or a bare number of seconds (fractions allowed).
pub(crate) fn parse_duration(value: &str) -> Result<Duration, String> {
    let bad = || format!("`{value}` is not a duration like 5s or 500ms");
    let (number, scale) = if let Some(ms) = value.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = value.strip_suffix('s') {
        (s, 1.0)
    } else {
        (value, 1.0)
    };
    let seconds = number.trim().parse::<f64>().map_err(|_| bad())? * scale;
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

fn parse_list<T>(value: &str, one: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(one)
        .collect()
}

/// A comma-separated list of scenario names.
pub(crate) fn parse_scenarios(value: &str) -> Result<Vec<Scenario>, String> {
    parse_list(value, |s| {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| format!("unknown scenario `{s}`"))
    })
}

pub(crate) fn parse_count(flag: &str, value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag}: `{value}` is not a positive number")),
    }
}

/// Parses the arguments after the program name; `Err` carries the message to print.
pub(crate) fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut out = Args::default();
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "-h" | "--help" => return Err(USAGE.to_owned()),
            "--smoke" => {
                out.smoke = true;
                continue;
            }
            _ => {}
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--duration" => out.duration = parse_duration(&value)?,
            "--warmup" => out.warmup = parse_duration(&value)?,
            "--reps" => {
                out.reps = u32::try_from(parse_count(&flag, &value)?)
                    .map_err(|_| format!("--reps: `{value}` is too large"))?;
            }
            "--concurrency" => {
                out.concurrency = parse_list(&value, |s| parse_count("--concurrency", s))?;
            }
            "--scenarios" if value == "none" => out.scenarios.clear(),
            "--scenarios" => {
                out.scenarios = parse_scenarios(&value)?;
            }
            "--out" => out.out = PathBuf::from(value),
            "--client-threads" => out.client_threads = parse_count(&flag, &value)?,
            "--open-streams" => out.open_streams = Some(parse_count(&flag, &value)?),
            "--bin-dir" => out.bin_dir = Some(PathBuf::from(value)),
            "--redis" => out.redis = Some(value),
            _ => return Err(format!("unknown argument `{flag}`\n{USAGE}")),
        }
    }
    if out.smoke {
        out.scenarios = vec![Scenario::Immediate];
        out.concurrency = vec![4];
        out.duration = Duration::from_secs(1);
        out.warmup = Duration::from_millis(200);
        out.reps = 1;
    }
    if out.concurrency.is_empty() {
        return Err(format!("--concurrency needs at least one level\n{USAGE}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Args, String> {
        parse(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_flags_and_smoke() -> Result<(), String> {
        let a = parse_strs(&[
            "--duration",
            "3s",
            "--reps",
            "2",
            "--concurrency",
            "8,64",
            "--scenarios",
            "delay20,prompt40k,stream20",
            "--warmup",
            "250ms",
        ])?;
        assert_eq!(a.duration, Duration::from_secs(3));
        assert_eq!(a.warmup, Duration::from_millis(250));
        assert_eq!(a.reps, 2);
        assert_eq!(a.concurrency, vec![8, 64]);
        assert_eq!(
            a.scenarios,
            vec![Scenario::Delay20, Scenario::Prompt40k, Scenario::Stream20]
        );
        let s = parse_strs(&["--smoke", "--out", "x.json"])?;
        assert_eq!(s.scenarios, vec![Scenario::Immediate]);
        assert_eq!(s.concurrency, vec![4]);
        assert_eq!(s.out, PathBuf::from("x.json"));
        assert!(parse_strs(&["--scenarios", "none"])?.scenarios.is_empty());
        Ok(())
    }

    #[test]
    fn every_scenario_is_named_on_the_command_line_in_report_order() -> Result<(), String> {
        let names = Scenario::ALL.map(Scenario::name).join(",");
        assert_eq!(
            names,
            "immediate,delay20,stream20,prompt40k,responses40k,messages40k"
        );
        assert_eq!(
            parse_strs(&["--scenarios", &names])?.scenarios,
            Scenario::ALL
        );
        assert_eq!(Args::default().scenarios, Scenario::ALL);
        Ok(())
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            &["--duration", "fast"][..],
            &["--reps", "0"],
            &["--concurrency", "x"],
            &["--scenarios", "slow"],
            &["--bogus", "1"],
            &["--reps"],
        ] {
            assert!(parse_strs(bad).is_err(), "{bad:?}");
        }
    }
}
