//! An HTTP/1.1 load generator for the gateway and the mock upstream.
//!
//! [`run`] sends POST requests to one loopback URL, either in an **open loop** ([`Mode::Open`]:
//! a fixed arrival rate per [`Phase`], whatever the server does) or a **closed loop**
//! ([`Mode::Closed`]: `connections` clients, each sending its next request when the previous one
//! completes), and returns a [`Report`]: counts, errors, latency percentiles (HdrHistogram,
//! microsecond resolution), stream time to first token and inter-event gaps, and a per-second
//! timeline.
//!
//! # No coordinated omission
//!
//! In the open loop, request `i` of a phase has an *intended* send time `start + i / rate`, and
//! its latency (and TTFT) is measured from that time, not from when it actually went out. A
//! request waits in a queue when every allowed connection is busy (`max_in_flight`), or when the
//! generator itself runs late; that wait is part of its latency, as it would be for a real client
//! arriving at that time. Requests are never skipped to catch up.
//!
//! # Client
//!
//! Each of `threads` threads runs a current-thread tokio runtime with its own connections
//! (hyper HTTP/1.1 low-level connections over `TCP_NODELAY` sockets, kept alive and reused; a
//! connection that fails or times out is dropped and a new one is opened for the next request).
//! The request head and body are built once. Response bodies are read and counted, not kept;
//! stream bodies are scanned for SSE events as they arrive.
//!
//! # Stream timings
//!
//! TTFT is the time to the arrival of the first SSE data event that carries content
//! (`"content":"x`, `"text":"x`, `"tool_calls"`, `"partial_json"`). Gaps are the times between
//! arrivals of consecutive data events from that first content event on (the end event
//! included). Times are taken per read from the socket: several events that arrive in one read
//! count as arriving together, with gaps of about 0.
//!
//! Only loopback targets are accepted (127.0.0.0/8, `::1`, `localhost`): this is a tool for
//! local benchmarks, not for loading other people's servers.

mod cli;
mod report;
mod sse;
mod worker;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::Uri;
use serde::Serialize;

pub use cli::{
    model_body, parse_args, parse_duration, parse_phases, CliError, CliOptions, Command, USAGE,
};
pub use sse::{has_content, SseEvent, SseScanner};

/// What to send, how, and for how long.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Full URL, e.g. `http://127.0.0.1:4000/v1/chat/completions`. `http` only; the host must
    /// be loopback (127.0.0.0/8, `::1`, `localhost` = 127.0.0.1).
    pub url: String,
    /// POST body.
    pub body: Bytes,
    /// Extra request headers (`content-type: application/json` is always sent, unless replaced
    /// here).
    pub headers: Vec<(String, String)>,
    /// The response is SSE: measure TTFT and inter-event gaps, and require a proper end.
    pub stream: bool,
    pub mode: Mode,
    /// Load runs for this long before the measured period; nothing is recorded during it
    /// (open loop: at the first phase's rate).
    pub warmup: Duration,
    /// Hard bound on requests sent (warmup included).
    pub max_requests: u64,
    /// Per request, from its (intended) send time to its last byte.
    pub timeout: Duration,
    /// Load-generator threads, each with a current-thread tokio runtime (0 is taken as 1).
    pub threads: usize,
    /// Count the values of this response header per second in the timeline.
    pub track_header: Option<String>,
}

impl LoadSpec {
    /// Defaults: no extra headers, not a stream, no warmup, at most 10,000,000 requests,
    /// 30 s timeout, one thread, no tracked header.
    pub fn new(url: impl Into<String>, body: impl Into<Bytes>, mode: Mode) -> Self {
        LoadSpec {
            url: url.into(),
            body: body.into(),
            headers: Vec::new(),
            stream: false,
            mode,
            warmup: Duration::ZERO,
            max_requests: 10_000_000,
            timeout: Duration::from_secs(30),
            threads: 1,
            track_header: None,
        }
    }

    /// The measured duration: the sum of the phases (open) or `duration` (closed).
    pub fn measured_duration(&self) -> Duration {
        match &self.mode {
            Mode::Open { phases, .. } => phases.iter().map(|p| p.duration).sum(),
            Mode::Closed { duration, .. } => *duration,
        }
    }
}

/// How requests are paced.
#[derive(Clone, Debug)]
pub enum Mode {
    /// A fixed arrival rate per phase, phases back to back; the measured duration is the sum
    /// of the phases. At most `max_in_flight` requests are outstanding (split over the
    /// threads); the others wait for a connection, and that wait counts in their latency.
    Open {
        phases: Vec<Phase>,
        max_in_flight: usize,
    },
    /// `connections` clients, each with its own connection, sending the next request when the
    /// previous one completes, for `duration`.
    Closed {
        connections: usize,
        duration: Duration,
    },
}

/// Part of an open-loop run: `rate` requests per second for `duration`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Phase {
    pub duration: Duration,
    pub rate: f64,
}

impl Mode {
    /// Open loop, one phase, `max_in_flight` 10,000.
    pub fn open(rate: f64, duration: Duration) -> Mode {
        Mode::Open {
            phases: vec![Phase { duration, rate }],
            max_in_flight: 10_000,
        }
    }

    /// Closed loop.
    pub fn closed(connections: usize, duration: Duration) -> Mode {
        Mode::Closed {
            connections,
            duration,
        }
    }
}

/// Why a run could not be made.
#[derive(Debug)]
pub enum LoadError {
    /// The URL cannot be parsed or is not `http://host[:port]/path`.
    BadUrl(String),
    /// The URL's host is not a loopback address.
    NotLoopback(String),
    /// The spec is inconsistent (no phase, a rate that is not positive, no connections...).
    InvalidSpec(String),
    /// Not even one connection to the target could be made.
    Connect {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// A generator thread or its runtime failed.
    Runtime(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::BadUrl(m) => write!(f, "bad URL: {m}"),
            LoadError::NotLoopback(h) => {
                write!(
                    f,
                    "refusing non-loopback host {h:?} (only 127.0.0.0/8, ::1, localhost)"
                )
            }
            LoadError::InvalidSpec(m) => write!(f, "invalid load spec: {m}"),
            LoadError::Connect { addr, error } => write!(f, "cannot connect to {addr}: {error}"),
            LoadError::Runtime(m) => write!(f, "load generator failure: {m}"),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Connect { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// The result of a run. Counts, latencies and the timeline cover the measured period only:
/// the requests whose (intended) send time is inside it.
#[derive(Serialize, Clone, Debug)]
pub struct Report {
    /// Empty by default; callers set it.
    pub label: String,
    /// `"open"` or `"closed"`.
    pub mode: String,
    /// Open loop: requests scheduled in the measured period / measured duration.
    pub target_rate: Option<f64>,
    /// Closed loop: number of connections.
    pub connections: Option<usize>,
    /// Measured period, seconds.
    pub duration_s: f64,
    /// Requests of the measured period (`ok + failed`; an open-loop request still waiting for
    /// a connection when its timeout passed counts as sent and failed with `timeout`).
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// `ok / (ok + failed)`, 1.0 when nothing was sent.
    pub success_rate: f64,
    /// Completed requests (`ok + failed`) per second of the measured period.
    pub achieved_rate: f64,
    /// Failures by kind: `status N`, `timeout`, `connect`, `io`, `bad stream` (a 200 stream
    /// that did not end with `[DONE]` / `message_stop`).
    pub errors: BTreeMap<String, u64>,
    /// Latency of successful requests, ms, to the last byte; open loop: from the intended send
    /// time.
    pub latency: Summary,
    /// Latency of failed requests, ms (timeouts count as their timeout).
    pub failed_latency: Summary,
    /// Streams only: time to the first content event, ms (from the intended send time).
    pub ttft: Option<Summary>,
    /// Streams only: time between consecutive data events from the first content event on, ms.
    pub gap: Option<Summary>,
    /// One tick per second of the measured period (the last one may be partial).
    pub timeline: Vec<Tick>,
    /// Responses by HTTP status (requests without a response are not here).
    pub status_counts: BTreeMap<u16, u64>,
}

/// Percentiles of a latency distribution, milliseconds (microsecond resolution).
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// One second of the measured period, by intended send time.
#[derive(Serialize, Clone, Debug)]
pub struct Tick {
    pub second: u64,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// Latency of the successful requests of this second (ms, 2 significant figures).
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Counts of the tracked header's values (`"-"` when absent, including requests without a
    /// response); empty when no header is tracked.
    pub headers: BTreeMap<String, u64>,
}

/// Where and what to send, ready for the hot path.
#[derive(Debug)]
pub(crate) struct Target {
    pub addr: SocketAddr,
    pub path: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub stream: bool,
    pub timeout: Duration,
    pub track_header: Option<HeaderName>,
}

/// Shared by the generator threads.
#[derive(Debug)]
pub(crate) struct Plan {
    pub target: Target,
    pub mode: Mode,
    pub threads: usize,
    /// Start of the load (warmup included).
    pub t0: Instant,
    pub warmup: Duration,
    /// Measured period: `[m_start, m_end)`.
    pub m_start: Instant,
    pub m_end: Instant,
    /// Requests left to send (shared budget).
    pub sent_total: AtomicU64,
    pub max_requests: u64,
    /// Seconds in the timeline.
    pub ticks: usize,
}

/// Runs the load described by `spec` and returns its report. **Blocking**: it starts
/// `spec.threads` threads, each with its own current-thread tokio runtime, and returns when the
/// load is over (after at most about `warmup + measured duration + timeout`).
///
/// Call it from a plain thread (or `spawn_blocking`), never directly from an async task: it
/// would block that task's runtime for the whole run (with actix, a mock upstream running on
/// the same `System` would stop answering).
pub fn run(spec: &LoadSpec) -> Result<Report, LoadError> {
    let plan = plan(spec)?;
    // Fail fast when nothing listens.
    let probe_timeout = spec
        .timeout
        .clamp(Duration::from_millis(1), Duration::from_secs(2));
    std::net::TcpStream::connect_timeout(&plan.target.addr, probe_timeout).map_err(|error| {
        LoadError::Connect {
            addr: plan.target.addr,
            error,
        }
    })?;
    let threads = plan.threads;
    let plan = Arc::new(plan);
    let mut handles = Vec::with_capacity(threads);
    for k in 0..threads {
        let plan = Arc::clone(&plan);
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{k}"))
            .spawn(move || worker::thread_main(&plan, k))
            .map_err(|e| LoadError::Runtime(format!("cannot start a thread: {e}")))?;
        handles.push(h);
    }
    let mut results = Vec::with_capacity(threads);
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(LoadError::Runtime("a generator thread panicked".into())),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(report::build(spec, &plan, results))
}

/// Validates the spec and prepares everything the threads need.
fn plan(spec: &LoadSpec) -> Result<Plan, LoadError> {
    let (addr, path, authority) = parse_url(&spec.url)?;
    let threads = spec.threads.max(1);
    let threads = match &spec.mode {
        Mode::Open {
            phases,
            max_in_flight,
        } => {
            if phases.is_empty() {
                return Err(LoadError::InvalidSpec("open loop without phases".into()));
            }
            if let Some(p) = phases
                .iter()
                .find(|p| !(p.rate.is_finite() && p.rate > 0.0))
            {
                return Err(LoadError::InvalidSpec(format!(
                    "rate must be a positive number, got {}",
                    p.rate
                )));
            }
            if *max_in_flight == 0 {
                return Err(LoadError::InvalidSpec("max_in_flight must be >= 1".into()));
            }
            threads.min(*max_in_flight)
        }
        Mode::Closed { connections, .. } => {
            if *connections == 0 {
                return Err(LoadError::InvalidSpec("connections must be >= 1".into()));
            }
            threads.min(*connections)
        }
    };
    let mut headers = HeaderMap::new();
    let host = HeaderValue::from_str(&authority)
        .map_err(|_| LoadError::BadUrl(format!("bad host {authority:?}")))?;
    headers.insert(HOST, host);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut replaced = Vec::new();
    for (name, value) in &spec.headers {
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| LoadError::InvalidSpec(format!("bad header name {name:?}")))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| LoadError::InvalidSpec(format!("bad value for header {name}")))?;
        // A header given here replaces the default one of the same name.
        if !replaced.contains(&name) {
            headers.remove(&name);
            replaced.push(name.clone());
        }
        headers.append(name, value);
    }
    let track_header = match &spec.track_header {
        None => None,
        Some(h) => Some(
            HeaderName::from_bytes(h.trim().as_bytes())
                .map_err(|_| LoadError::InvalidSpec(format!("bad header name {h:?}")))?,
        ),
    };
    if spec.timeout.is_zero() {
        return Err(LoadError::InvalidSpec("timeout must be positive".into()));
    }
    let measured = spec.measured_duration();
    // A little head start so that every thread has its runtime ready at t0.
    let t0 = Instant::now() + Duration::from_millis(5);
    let m_start = t0 + spec.warmup;
    let m_end = m_start + measured;
    let whole = measured.as_secs() + u64::from(measured.subsec_nanos() > 0);
    Ok(Plan {
        target: Target {
            addr,
            path,
            headers,
            body: spec.body.clone(),
            stream: spec.stream,
            timeout: spec.timeout,
            track_header,
        },
        mode: spec.mode.clone(),
        threads,
        t0,
        warmup: spec.warmup,
        m_start,
        m_end,
        sent_total: AtomicU64::new(0),
        max_requests: spec.max_requests,
        ticks: usize::try_from(whole).unwrap_or(usize::MAX),
    })
}

/// `http://host[:port]/path?query` → (address, origin-form URI, `Host` header value).
fn parse_url(url: &str) -> Result<(SocketAddr, Uri, String), LoadError> {
    let uri: Uri = url
        .trim()
        .parse()
        .map_err(|e| LoadError::BadUrl(format!("{url:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(LoadError::BadUrl(format!(
                "{url:?}: scheme {other:?} is not supported (http only)"
            )))
        }
        None => {
            return Err(LoadError::BadUrl(format!(
                "{url:?}: expected http://HOST..."
            )))
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| LoadError::BadUrl(format!("{url:?}: no host")))?;
    if authority.as_str().contains('@') {
        return Err(LoadError::BadUrl(format!("{url:?}: credentials in URL")));
    }
    let host = authority.host();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ip = if bare.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        match bare.parse::<IpAddr>() {
            Ok(ip) if ip.is_loopback() => ip,
            _ => return Err(LoadError::NotLoopback(host.to_owned())),
        }
    };
    let port = authority.port_u16().unwrap_or(80);
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let path: Uri = path
        .parse()
        .map_err(|e| LoadError::BadUrl(format!("{url:?}: {e}")))?;
    Ok((
        SocketAddr::new(ip, port),
        path,
        authority.as_str().to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (addr, path, host) = parse_url("http://127.0.0.1:4000/v1/chat/completions").unwrap();
        assert_eq!(addr, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(host, "127.0.0.1:4000");
        let (addr, path, _) = parse_url("http://localhost").unwrap();
        assert_eq!(addr, "127.0.0.1:80".parse().unwrap());
        assert_eq!(path, "/");
        let (addr, path, host) = parse_url("http://[::1]:9/a?b=c").unwrap();
        assert_eq!(addr, "[::1]:9".parse().unwrap());
        assert_eq!(path, "/a?b=c");
        assert_eq!(host, "[::1]:9");
        assert!(parse_url("http://127.9.8.7:1/").is_ok());
        for bad in [
            "http://10.0.0.1/",
            "http://example.com/",
            "http://0.0.0.0:80/",
        ] {
            assert!(
                matches!(parse_url(bad), Err(LoadError::NotLoopback(_))),
                "{bad}"
            );
        }
        for bad in [
            "https://127.0.0.1/",
            "127.0.0.1:80",
            "/v1",
            "http://u:p@127.0.0.1/",
        ] {
            assert!(matches!(parse_url(bad), Err(LoadError::BadUrl(_))), "{bad}");
        }
    }
}
