//! Command-line parsing for the `loadgen` command (kept in the library so it can be tested).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::{LoadSpec, Mode, Phase};

pub const USAGE: &str = "\
loadgen: an HTTP load generator for Switchyard and the mock upstream (loopback targets only)

USAGE:
    loadgen --url URL [--body FILE | --model NAME] [--stream] [--header 'K: V']...
            (--rate R [--phases 10s@500,10s@5000] [--max-in-flight N] | --connections C)
            [--duration 10s] [--warmup 1s] [--max-requests N] [--timeout 30s] [--threads 1]
            [--track-header NAME] [--label TEXT] [--json FILE]

OPTIONS:
    --url URL              target, e.g. http://127.0.0.1:4000/v1/chat/completions
    --body FILE            POST body read from FILE
    --model NAME           POST {\"model\":NAME,\"messages\":[{\"role\":\"user\",\"content\":\"Say hello.\"}]}
                           (+ \"stream\":true with --stream) [default: gpt-4o-mini]
    --stream               the response is SSE: measure TTFT and gaps, require [DONE]/message_stop
    --header 'K: V'        extra request header (may repeat)
    --rate R               open loop: R requests per second for --duration
    --phases D@R,D@R       open loop in phases (replaces --rate and --duration), e.g. 10s@500,10s@5000
    --max-in-flight N      open loop: most requests outstanding at once [default: 10000]
    --connections C        closed loop: C connections, each sending when the previous answer ends
    --duration D           measured duration [default: 10s]
    --warmup D             load before measuring, not recorded [default: 0s]
    --max-requests N       most requests sent, warmup included [default: 10000000]
    --timeout D            per request, from its intended send time [default: 30s]
    --threads N            generator threads [default: 1]
    --track-header NAME    count this response header's values per second (timeline in JSON)
    --label TEXT           label of the report row
    --json FILE            also write the full report as JSON to FILE
    -h, --help             print this help

Durations: 500ms, 10s, 2m (a bare number is seconds).
";

/// What the command line asks for.
#[derive(Clone, Debug)]
pub enum Command {
    Help,
    Run(Box<CliOptions>),
}

#[derive(Clone, Debug)]
pub struct CliOptions {
    pub spec: LoadSpec,
    pub label: String,
    pub json: Option<PathBuf>,
}

use crate::cli::bad;
/// A bad command line (shared with the `mock-upstream` command); `loadgen` prints it with the
/// usage and exits with status 2.
pub use crate::cli::CliError;

/// Parses a duration: `500ms`, `10s`, `1.5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?} (expected e.g. 500ms, 10s, 2m)"))?;
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("bad duration {s:?} (must be >= 0)"))
}

/// Parses `10s@500,10s@5000` (duration @ requests per second, comma separated).
pub fn parse_phases(s: &str) -> Result<Vec<Phase>, String> {
    s.split(',')
        .map(|part| {
            let (d, r) = part
                .split_once('@')
                .ok_or_else(|| format!("bad phase {part:?} (expected DURATION@RATE)"))?;
            Ok(Phase {
                duration: parse_duration(d)?,
                rate: parse_rate(r)?,
            })
        })
        .collect()
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("bad rate {s:?} (expected a positive number)")),
    }
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("bad header {s:?} (expected 'Name: value')")),
    }
}

/// The body built by `--model NAME`.
pub fn model_body(model: &str, stream: bool) -> String {
    let model = serde_json::Value::from(model);
    let stream = if stream { r#","stream":true"# } else { "" };
    format!(r#"{{"model":{model},"messages":[{{"role":"user","content":"Say hello."}}]{stream}}}"#)
}

/// Parses the arguments (without the program name). `--body FILE` is read here.
pub fn parse_args<I>(args: I) -> Result<Command, CliError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    use lexopt::prelude::*;

    let mut parser = lexopt::Parser::from_args(args);
    let mut url = None;
    let mut body_file: Option<PathBuf> = None;
    let mut model: Option<String> = None;
    let mut stream = false;
    let mut headers = Vec::new();
    let mut rate = None;
    let mut phases = None;
    let mut max_in_flight = 10_000usize;
    let mut connections = None;
    let mut duration = Duration::from_secs(10);
    let mut warmup = Duration::ZERO;
    let mut max_requests = 10_000_000u64;
    let mut timeout = Duration::from_secs(30);
    let mut threads = 1usize;
    let mut track_header = None;
    let mut label = String::new();
    let mut json = None;

    let string = |p: &mut lexopt::Parser| -> Result<String, CliError> {
        p.value()?
            .into_string()
            .map_err(|v| bad(format!("not UTF-8: {v:?}")))
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Long("url") => url = Some(string(&mut parser)?),
            Long("body") => body_file = Some(PathBuf::from(parser.value()?)),
            Long("model") => model = Some(string(&mut parser)?),
            Long("stream") => stream = true,
            Long("header") => headers.push(parse_header(&string(&mut parser)?).map_err(bad)?),
            Long("rate") => rate = Some(parse_rate(&string(&mut parser)?).map_err(bad)?),
            Long("phases") => phases = Some(parse_phases(&string(&mut parser)?).map_err(bad)?),
            Long("max-in-flight") => {
                max_in_flight = parser.value()?.parse()?;
                if max_in_flight == 0 {
                    return Err(bad("--max-in-flight must be >= 1"));
                }
            }
            Long("connections") => {
                let c: usize = parser.value()?.parse()?;
                if c == 0 {
                    return Err(bad("--connections must be >= 1"));
                }
                connections = Some(c);
            }
            Long("duration") => duration = parse_duration(&string(&mut parser)?).map_err(bad)?,
            Long("warmup") => warmup = parse_duration(&string(&mut parser)?).map_err(bad)?,
            Long("max-requests") => max_requests = parser.value()?.parse()?,
            Long("timeout") => {
                timeout = parse_duration(&string(&mut parser)?).map_err(bad)?;
                if timeout.is_zero() {
                    return Err(bad("--timeout must be positive"));
                }
            }
            Long("threads") => {
                threads = parser.value()?.parse()?;
                if threads == 0 || threads > 256 {
                    return Err(bad("--threads must be 1..=256"));
                }
            }
            Long("track-header") => track_header = Some(string(&mut parser)?),
            Long("label") => label = string(&mut parser)?,
            Long("json") => json = Some(PathBuf::from(parser.value()?)),
            _ => return Err(arg.unexpected().into()),
        }
    }

    let url = url.ok_or_else(|| bad("--url is required"))?;
    let mode = match (rate, phases, connections) {
        (None, None, Some(c)) => Mode::closed(c, duration),
        (_, _, Some(_)) => {
            return Err(bad(
                "--connections (closed loop) excludes --rate/--phases (open loop)",
            ))
        }
        (_, Some(phases), None) => Mode::Open {
            phases,
            max_in_flight,
        },
        (Some(rate), None, None) => Mode::Open {
            phases: vec![Phase { duration, rate }],
            max_in_flight,
        },
        (None, None, None) => {
            return Err(bad(
                "one of --rate R (open loop) or --connections C (closed loop) is required",
            ))
        }
    };
    let body = match (body_file, model) {
        (Some(_), Some(_)) => return Err(bad("--body and --model exclude each other")),
        (Some(path), None) => {
            std::fs::read(&path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?
        }
        (None, model) => model_body(model.as_deref().unwrap_or("gpt-4o-mini"), stream).into(),
    };
    let mut spec = LoadSpec::new(url, body, mode);
    spec.headers = headers;
    spec.stream = stream;
    spec.warmup = warmup;
    spec.max_requests = max_requests;
    spec.timeout = timeout;
    spec.threads = threads;
    spec.track_header = track_header;
    Ok(Command::Run(Box::new(CliOptions { spec, label, json })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> CliOptions {
        match parse_args(args.iter().copied()) {
            Ok(Command::Run(o)) => *o,
            other => panic!("expected Run for {args:?}, got {other:?}"),
        }
    }

    fn error(args: &[&str]) -> String {
        match parse_args(args.iter().copied()) {
            Err(e) => e.to_string(),
            other => panic!("expected an error for {args:?}, got {other:?}"),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "s", "ms", "-1s", "10x", "abc", "1e400s", "NaNs"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn phases() {
        assert_eq!(
            parse_phases("10s@500,500ms@5000.5"),
            Ok(vec![
                Phase {
                    duration: Duration::from_secs(10),
                    rate: 500.0
                },
                Phase {
                    duration: Duration::from_millis(500),
                    rate: 5000.5
                }
            ])
        );
        assert!(parse_phases("10s").is_err());
        assert!(parse_phases("10s@0").is_err());
        assert!(parse_phases("10s@-3").is_err());
        assert!(parse_phases("").is_err());
    }

    #[test]
    fn open_loop_defaults() {
        let o = run(&[
            "--url",
            "http://127.0.0.1:1/v1/chat/completions",
            "--rate",
            "100",
        ]);
        let s = &o.spec;
        assert_eq!(s.url, "http://127.0.0.1:1/v1/chat/completions");
        match &s.mode {
            Mode::Open {
                phases,
                max_in_flight,
            } => {
                assert_eq!(
                    phases,
                    &vec![Phase {
                        duration: Duration::from_secs(10),
                        rate: 100.0
                    }]
                );
                assert_eq!(*max_in_flight, 10_000);
            }
            m => panic!("{m:?}"),
        }
        assert_eq!(
            &s.body[..],
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}"#
        );
        assert!(!s.stream);
        assert_eq!(s.warmup, Duration::ZERO);
        assert_eq!(s.timeout, Duration::from_secs(30));
        assert_eq!(s.threads, 1);
        assert_eq!(s.max_requests, 10_000_000);
        assert_eq!(o.label, "");
        assert_eq!(o.json, None);
    }

    #[test]
    fn every_flag() {
        let o = run(&[
            "--url=http://localhost:9/x",
            "--model",
            "m1",
            "--stream",
            "--header",
            "X-A: 1",
            "--header=authorization:Bearer k",
            "--phases",
            "1s@10,2s@20",
            "--max-in-flight",
            "7",
            "--warmup",
            "500ms",
            "--max-requests",
            "99",
            "--timeout",
            "2s",
            "--threads",
            "2",
            "--track-header",
            "x-route",
            "--label",
            "run 1",
            "--json",
            "/tmp/r.json",
        ]);
        let s = &o.spec;
        let body: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
        assert_eq!(body["model"], "m1");
        assert_eq!(body["stream"], true);
        assert!(s.stream);
        assert_eq!(
            s.headers,
            vec![
                ("X-A".to_owned(), "1".to_owned()),
                ("authorization".to_owned(), "Bearer k".to_owned())
            ]
        );
        match &s.mode {
            Mode::Open {
                phases,
                max_in_flight,
            } => {
                assert_eq!(phases.len(), 2);
                assert_eq!(*max_in_flight, 7);
            }
            m => panic!("{m:?}"),
        }
        assert_eq!(s.warmup, Duration::from_millis(500));
        assert_eq!(s.max_requests, 99);
        assert_eq!(s.timeout, Duration::from_secs(2));
        assert_eq!(s.threads, 2);
        assert_eq!(s.track_header.as_deref(), Some("x-route"));
        assert_eq!(o.label, "run 1");
        assert_eq!(o.json, Some(PathBuf::from("/tmp/r.json")));
    }

    #[test]
    fn closed_loop() {
        let o = run(&[
            "--url",
            "http://127.0.0.1:1/",
            "--connections",
            "64",
            "--duration",
            "5s",
        ]);
        match o.spec.mode {
            Mode::Closed {
                connections,
                duration,
            } => {
                assert_eq!(connections, 64);
                assert_eq!(duration, Duration::from_secs(5));
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn body_file() {
        let path = std::env::temp_dir().join(format!("loadgen-body-{}.json", std::process::id()));
        std::fs::write(&path, b"{\"x\":1}").unwrap();
        let o = run(&[
            "--url",
            "http://127.0.0.1:1/",
            "--rate",
            "1",
            "--body",
            path.to_str().unwrap(),
        ]);
        assert_eq!(&o.spec.body[..], b"{\"x\":1}");
        let _ = std::fs::remove_file(&path);
        assert!(error(&[
            "--url",
            "http://127.0.0.1:1/",
            "--rate",
            "1",
            "--body",
            "/nonexistent/x"
        ])
        .contains("cannot read"));
    }

    #[test]
    fn bad_command_lines() {
        assert!(error(&["--rate", "1"]).contains("--url"));
        assert!(error(&["--url", "http://127.0.0.1:1/"]).contains("required"));
        assert!(error(&["--url", "u", "--rate", "1", "--connections", "2"]).contains("excludes"));
        assert!(error(&["--url", "u", "--rate", "0"]).contains("rate"));
        assert!(error(&["--url", "u", "--connections", "0"]).contains(">= 1"));
        assert!(error(&["--url", "u", "--rate", "1", "--duration", "x"]).contains("duration"));
        assert!(error(&["--url", "u", "--rate", "1", "--header", "nocolon"]).contains("header"));
        assert!(error(&["--url", "u", "--rate", "1", "--bogus"]).contains("bogus"));
        assert!(
            error(&["--url", "u", "--rate", "1", "--model", "m", "--body", "f"])
                .contains("exclude")
        );
        assert!(error(&["--url", "u", "--rate", "1", "--threads", "0"]).contains("threads"));
        assert!(matches!(parse_args(["--help"]), Ok(Command::Help)));
    }
}
