//! Command-line parsing for the `mock-upstream` command (kept in the library so it can be tested).

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::mock::{Behavior, ErrorPreset, Fault, MockConfig};

pub const USAGE: &str = "\
mock-upstream: a mock OpenAI / Anthropic upstream for Switchyard demos and load tests

USAGE:
    mock-upstream [OPTIONS]

OPTIONS (the behaviour flags set the default of every route):
    --listen ADDR          address to bind [default: 127.0.0.1:9100]
    --workers N            worker threads, at most 256 [default: 1]
    --record               keep every request in memory (off by default)
    --latency-ms N         delay before response headers [default: 0]
    --ttft-ms N            stream: delay before the first content chunk [default: 0]
    --chunk-delay-ms N     stream: delay between content chunks [default: 0]
    --chunks N             content pieces per reply, >= 1 [default: 4]
    --fail-rate P          probability 0..1 of answering 500 instead [default: 0]
    --model NAME           model name in responses [default: mock-model]
    --route NAME:key=value,key=value
                           a named route (may repeat); it starts from the flags above.
                           keys: latency_ms, ttft_ms, chunk_delay_ms, chunks, fail_rate,
                           model, error, retry_after (seconds, with error=rate_limited)
                           error: rate_limited, quota, overloaded, server_error,
                                  context_length, bad_request, unauthorized,
                                  content_filtered
    -h, --help             print this help

ROUTES (each also under /NAME/... for route NAME):
    OpenAI:    POST /v1/chat/completions (also without /v1), POST /v1/embeddings
    Anthropic: POST /v1/messages
    Azure:     POST /openai/deployments/D/chat/completions?api-version=V, .../D/embeddings?...,
               POST /NAME/openai/v1/chat/completions, /NAME/openai/v1/embeddings
    Bedrock:   POST /model/ID/converse, /model/ID/converse-stream, /model/ID/invoke
    Gemini:    POST /v1beta/models/M:generateContent, :streamGenerateContent?alt=sse,
               :embedContent, :batchEmbedContents; Vertex POST
               /v1/projects/P/locations/L/publishers/google/models/M:generateContent (and stream)
    Cohere:    POST /v2/chat, POST /v2/embed
    Voyage:    POST /voyage/v1/embeddings

EXAMPLE:
    mock-upstream --latency-ms 20 --route slow:latency_ms=500 --route busy:error=rate_limited,retry_after=2
";

/// Default address of the command (the library defaults to an ephemeral port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9100";

/// Upper bound of `--workers` (each worker is a thread).
pub const MAX_WORKERS: usize = 256;

/// What the command line asks for.
#[derive(Clone, Debug)]
pub enum Command {
    Help,
    Run(Box<CliOptions>),
}

#[derive(Clone, Debug)]
pub struct CliOptions {
    /// `record` false unless `--record`; `default_behavior` from the global flags.
    pub config: MockConfig,
    /// Named routes in command-line order.
    pub routes: Vec<(String, Behavior)>,
}

/// A bad command line; the command prints it and exits with status 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

impl From<lexopt::Error> for CliError {
    fn from(e: lexopt::Error) -> Self {
        CliError(e.to_string())
    }
}

pub(crate) fn bad(msg: impl Into<String>) -> CliError {
    CliError(msg.into())
}

/// Parses the arguments (without the program name).
pub fn parse_args<I>(args: I) -> Result<Command, CliError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    use lexopt::prelude::*;

    let mut parser = lexopt::Parser::from_args(args);
    let mut listen: SocketAddr = DEFAULT_LISTEN
        .parse()
        .map_err(|_| bad("internal: bad default address"))?;
    let mut workers = 1usize;
    let mut record = false;
    let mut global = Behavior::default();
    let mut route_specs: Vec<String> = Vec::new();

    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Long("listen") => {
                let v = parser.value()?.string()?;
                listen = v.parse().map_err(|_| {
                    bad(format!(
                        "--listen {v:?}: expected IP:PORT, e.g. 127.0.0.1:9100"
                    ))
                })?;
            }
            Long("workers") => {
                let v = parser.value()?.string()?;
                workers = parse_count("--workers", &v)?;
                if workers > MAX_WORKERS {
                    return Err(bad(format!("--workers {v:?}: at most {MAX_WORKERS}")));
                }
            }
            Long("record") => record = true,
            Long("latency-ms") => {
                global.latency = parse_ms("--latency-ms", &parser.value()?.string()?)?
            }
            Long("ttft-ms") => global.ttft = parse_ms("--ttft-ms", &parser.value()?.string()?)?,
            Long("chunk-delay-ms") => {
                global.chunk_delay = parse_ms("--chunk-delay-ms", &parser.value()?.string()?)?
            }
            Long("chunks") => global.chunks = parse_count("--chunks", &parser.value()?.string()?)?,
            Long("fail-rate") => {
                global.fail_rate = parse_rate("--fail-rate", &parser.value()?.string()?)?
            }
            Long("model") => {
                let v = parser.value()?.string()?;
                if v.is_empty() {
                    return Err(bad("--model: must not be empty"));
                }
                global.model = v;
            }
            Long("route") => route_specs.push(parser.value()?.string()?),
            Value(v) => {
                return Err(bad(format!(
                    "unexpected argument {:?}",
                    v.to_string_lossy()
                )))
            }
            _ => return Err(arg.unexpected().into()),
        }
    }

    let mut routes: Vec<(String, Behavior)> = Vec::new();
    for spec in &route_specs {
        let (name, behavior) = parse_route(spec, &global)?;
        if routes.iter().any(|(n, _)| *n == name) {
            return Err(bad(format!(
                "--route {spec:?}: route {name:?} is defined twice"
            )));
        }
        routes.push((name, behavior));
    }

    Ok(Command::Run(Box::new(CliOptions {
        config: MockConfig {
            listen,
            workers,
            record,
            require_api_key: None,
            aws_credentials: None,
            default_behavior: global,
        },
        routes,
    })))
}

/// `NAME` or `NAME:key=value,key=value`; the behaviour starts from `base`.
pub fn parse_route(spec: &str, base: &Behavior) -> Result<(String, Behavior), CliError> {
    let (name, keys) = spec.split_once(':').unwrap_or((spec, ""));
    let ctx = |msg: String| bad(format!("--route {spec:?}: {msg}"));
    if name.is_empty() {
        return Err(ctx("the route name is empty".into()));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ctx(format!(
            "route name {name:?} may only contain letters, digits, '-', '_' and '.'"
        )));
    }
    let mut b = base.clone();
    let mut error: Option<String> = None;
    let mut retry_after: Option<u64> = None;
    for pair in keys.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| ctx(format!("{pair:?}: expected key=value")))?;
        match key {
            "latency_ms" => b.latency = parse_ms(key, value).map_err(|e| ctx(e.0))?,
            "ttft_ms" => b.ttft = parse_ms(key, value).map_err(|e| ctx(e.0))?,
            "chunk_delay_ms" => b.chunk_delay = parse_ms(key, value).map_err(|e| ctx(e.0))?,
            "chunks" => b.chunks = parse_count(key, value).map_err(|e| ctx(e.0))?,
            "fail_rate" => b.fail_rate = parse_rate(key, value).map_err(|e| ctx(e.0))?,
            "model" if !value.is_empty() => b.model = value.to_owned(),
            "model" => return Err(ctx("model: must not be empty".into())),
            "error" => error = Some(value.to_owned()),
            "retry_after" => {
                retry_after =
                    Some(value.parse().map_err(|_| {
                        ctx(format!("retry_after={value:?}: expected whole seconds"))
                    })?)
            }
            other => {
                return Err(ctx(format!(
                    "unknown key {other:?} (keys: latency_ms, ttft_ms, chunk_delay_ms, chunks, \
                     fail_rate, model, error, retry_after)"
                )))
            }
        }
    }
    match (error.as_deref(), retry_after) {
        (None, None) => {}
        (None, Some(_)) => return Err(ctx("retry_after needs error=rate_limited".into())),
        (Some(e), retry) => {
            let preset = match e {
                "rate_limited" => ErrorPreset::RateLimited { retry_after: retry },
                _ if retry.is_some() => {
                    return Err(ctx("retry_after needs error=rate_limited".into()))
                }
                "quota" => ErrorPreset::QuotaExhausted,
                "overloaded" => ErrorPreset::Overloaded,
                "server_error" => ErrorPreset::ServerError,
                "context_length" => ErrorPreset::ContextLength,
                "bad_request" => ErrorPreset::BadRequest,
                "unauthorized" => ErrorPreset::Unauthorized,
                "content_filtered" => ErrorPreset::ContentFiltered,
                other => {
                    return Err(ctx(format!(
                        "unknown error {other:?} (one of rate_limited, quota, overloaded, \
                         server_error, context_length, bad_request, unauthorized, \
                         content_filtered)"
                    )))
                }
            };
            b.fault = Fault::Error(preset);
        }
    }
    Ok((name.to_owned(), b))
}

fn parse_ms(what: &str, v: &str) -> Result<Duration, CliError> {
    v.parse::<u64>().map(Duration::from_millis).map_err(|_| {
        bad(format!(
            "{what} {v:?}: expected a whole number of milliseconds"
        ))
    })
}

fn parse_count(what: &str, v: &str) -> Result<usize, CliError> {
    match v.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(bad(format!("{what} {v:?}: expected a whole number >= 1"))),
    }
}

fn parse_rate(what: &str, v: &str) -> Result<f64, CliError> {
    match v.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(bad(format!("{what} {v:?}: expected a number from 0 to 1"))),
    }
}
