//! Per-thread recording of outcomes, and the [`Report`] built from it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hyper::header::HeaderValue;

use super::{LoadError, LoadSpec, Mode, Plan, Report, Summary, Tick};

/// Histogram bounds: 1 µs .. 120 s.
const LOWEST_US: u64 = 1;
const HIGHEST_US: u64 = 120_000_000;

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ErrorKind {
    Status(u16),
    Timeout,
    Connect,
    Io,
    BadStream,
}

impl ErrorKind {
    fn key(self) -> String {
        match self {
            ErrorKind::Status(s) => format!("status {s}"),
            ErrorKind::Timeout => "timeout".to_owned(),
            ErrorKind::Connect => "connect".to_owned(),
            ErrorKind::Io => "io".to_owned(),
            ErrorKind::BadStream => "bad stream".to_owned(),
        }
    }
}

/// What happened to one request.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub result: Result<(), ErrorKind>,
    pub status: Option<u16>,
    /// When the last byte arrived (or the request failed).
    pub end: Instant,
    /// Streams: arrival of the first content event.
    pub ttft: Option<Instant>,
    /// The tracked response header, when tracking and present.
    pub header: Option<HeaderValue>,
}

impl Outcome {
    pub fn new() -> Self {
        Outcome {
            result: Ok(()),
            status: None,
            end: Instant::now(),
            ttft: None,
            header: None,
        }
    }

    pub fn failed(kind: ErrorKind) -> Self {
        Outcome {
            result: Err(kind),
            ..Outcome::new()
        }
    }
}

pub(crate) fn histogram(sigfig: u8) -> Result<Histogram<u64>, LoadError> {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, sigfig)
        .map_err(|e| LoadError::Runtime(format!("histogram: {e:?}")))
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[derive(Clone, Debug, Default)]
pub(crate) struct TickAcc {
    sent: u64,
    ok: u64,
    failed: u64,
    /// Latency of the successful requests (2 significant figures), created on first use.
    hist: Option<Histogram<u64>>,
    headers: BTreeMap<String, u64>,
}

/// One thread's measurements (measured period only).
#[derive(Clone, Debug)]
pub(crate) struct Recorder {
    m_start: Instant,
    track: bool,
    latency: Histogram<u64>,
    failed_latency: Histogram<u64>,
    ttft: Histogram<u64>,
    gap: Histogram<u64>,
    sent: u64,
    ok: u64,
    failed: u64,
    errors: BTreeMap<ErrorKind, u64>,
    status_counts: BTreeMap<u16, u64>,
    ticks: Vec<TickAcc>,
}

impl Recorder {
    pub fn new(plan: &Plan) -> Result<Self, LoadError> {
        Ok(Recorder {
            m_start: plan.m_start,
            track: plan.target.track_header.is_some(),
            latency: histogram(3)?,
            failed_latency: histogram(3)?,
            ttft: histogram(3)?,
            gap: histogram(3)?,
            sent: 0,
            ok: 0,
            failed: 0,
            errors: BTreeMap::new(),
            status_counts: BTreeMap::new(),
            ticks: vec![TickAcc::default(); plan.ticks],
        })
    }

    /// Records a request of the measured period sent (or meant to be sent) at `intended`.
    /// `gaps` (µs) are recorded for successful requests only, like TTFT.
    pub fn record(&mut self, intended: Instant, o: &Outcome, gaps: &[u64]) {
        let latency = micros(o.end.saturating_duration_since(intended));
        self.sent += 1;
        if let Some(s) = o.status {
            *self.status_counts.entry(s).or_insert(0) += 1;
        }
        let second = o_second(intended, self.m_start);
        let tick = self.ticks.get_mut(second);
        match o.result {
            Ok(()) => {
                self.ok += 1;
                self.latency.saturating_record(latency);
                if let Some(t) = o.ttft {
                    self.ttft
                        .saturating_record(micros(t.saturating_duration_since(intended)));
                }
                for &g in gaps {
                    self.gap.saturating_record(g);
                }
            }
            Err(kind) => {
                self.failed += 1;
                self.failed_latency.saturating_record(latency);
                *self.errors.entry(kind).or_insert(0) += 1;
            }
        }
        if let Some(tick) = tick {
            tick.sent += 1;
            if o.result.is_ok() {
                tick.ok += 1;
                if tick.hist.is_none() {
                    tick.hist = histogram(2).ok();
                }
                if let Some(h) = tick.hist.as_mut() {
                    h.saturating_record(latency);
                }
            } else {
                tick.failed += 1;
            }
            if self.track {
                let value = o
                    .header
                    .as_ref()
                    .map(|v| v.to_str().unwrap_or("(not text)"))
                    .unwrap_or("-");
                match tick.headers.get_mut(value) {
                    Some(n) => *n += 1,
                    None => {
                        tick.headers.insert(value.to_owned(), 1);
                    }
                }
            }
        }
    }

    fn merge(&mut self, other: Recorder) {
        // Same bounds everywhere: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.failed_latency.add(&other.failed_latency);
        let _ = self.ttft.add(&other.ttft);
        let _ = self.gap.add(&other.gap);
        self.sent += other.sent;
        self.ok += other.ok;
        self.failed += other.failed;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_insert(0) += n;
        }
        for (k, n) in other.status_counts {
            *self.status_counts.entry(k).or_insert(0) += n;
        }
        for (mine, theirs) in self.ticks.iter_mut().zip(other.ticks) {
            mine.sent += theirs.sent;
            mine.ok += theirs.ok;
            mine.failed += theirs.failed;
            match (&mut mine.hist, theirs.hist) {
                (Some(a), Some(b)) => {
                    let _ = a.add(&b);
                }
                (a @ None, b) => *a = b,
                (Some(_), None) => {}
            }
            for (k, n) in theirs.headers {
                *mine.headers.entry(k).or_insert(0) += n;
            }
        }
    }
}

fn o_second(intended: Instant, m_start: Instant) -> usize {
    usize::try_from(intended.saturating_duration_since(m_start).as_secs()).unwrap_or(usize::MAX)
}

/// Percentiles of `h` in milliseconds.
pub(crate) fn summary(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Summary {
        count: h.len(),
        mean: h.mean().round() / 1000.0,
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

/// Requests of one open-loop phase: the `j >= 0` with `j / rate < duration`.
pub(crate) fn scheduled(duration: Duration, rate: f64) -> u64 {
    let d = duration.as_secs_f64();
    let mut n = (d * rate).ceil().max(0.0) as u64;
    while n > 0 && (n - 1) as f64 / rate >= d {
        n -= 1;
    }
    while (n as f64) / rate < d {
        n += 1;
    }
    n
}

pub(crate) fn build(spec: &LoadSpec, plan: &Plan, results: Vec<Recorder>) -> Report {
    let mut results = results.into_iter();
    let mut all = match results.next() {
        Some(r) => r,
        None => return empty_report(spec, plan),
    };
    for r in results {
        all.merge(r);
    }
    let duration_s = plan.m_end.duration_since(plan.m_start).as_secs_f64();
    let (mode, target_rate, connections) = match &spec.mode {
        Mode::Open { phases, .. } => {
            let n: u64 = phases.iter().map(|p| scheduled(p.duration, p.rate)).sum();
            let rate = if duration_s > 0.0 {
                n as f64 / duration_s
            } else {
                0.0
            };
            ("open", Some(rate), None)
        }
        Mode::Closed { connections, .. } => ("closed", None, Some(*connections)),
    };
    let done = all.ok + all.failed;
    let timeline = all
        .ticks
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let (p50_ms, p99_ms) = t.hist.as_ref().map_or((0.0, 0.0), |h| {
                (
                    h.value_at_quantile(0.5) as f64 / 1000.0,
                    h.value_at_quantile(0.99) as f64 / 1000.0,
                )
            });
            Tick {
                second: i as u64,
                sent: t.sent,
                ok: t.ok,
                failed: t.failed,
                p50_ms,
                p99_ms,
                headers: t.headers,
            }
        })
        .collect();
    Report {
        label: String::new(),
        mode: mode.to_owned(),
        target_rate,
        connections,
        duration_s,
        sent: all.sent,
        ok: all.ok,
        failed: all.failed,
        success_rate: if done == 0 {
            1.0
        } else {
            all.ok as f64 / done as f64
        },
        achieved_rate: if duration_s > 0.0 {
            done as f64 / duration_s
        } else {
            0.0
        },
        errors: all.errors.into_iter().map(|(k, n)| (k.key(), n)).collect(),
        latency: summary(&all.latency),
        failed_latency: summary(&all.failed_latency),
        ttft: spec.stream.then(|| summary(&all.ttft)),
        gap: spec.stream.then(|| summary(&all.gap)),
        timeline,
        status_counts: all.status_counts,
    }
}

fn empty_report(spec: &LoadSpec, plan: &Plan) -> Report {
    Report {
        label: String::new(),
        mode: match spec.mode {
            Mode::Open { .. } => "open".into(),
            Mode::Closed { .. } => "closed".into(),
        },
        target_rate: None,
        connections: None,
        duration_s: plan.m_end.duration_since(plan.m_start).as_secs_f64(),
        sent: 0,
        ok: 0,
        failed: 0,
        success_rate: 1.0,
        achieved_rate: 0.0,
        errors: BTreeMap::new(),
        latency: Summary::default(),
        failed_latency: Summary::default(),
        ttft: None,
        gap: None,
        timeline: Vec::new(),
        status_counts: BTreeMap::new(),
    }
}

impl Report {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A Markdown table, one row per report: label, mode, target rate, achieved rate, success,
    /// latency p50 / p90 / p99 / max (ms), and TTFT p50 / p99 (ms) when any report has TTFT.
    pub fn markdown_table(rows: &[&Report]) -> String {
        let with_ttft = rows.iter().any(|r| r.ttft.is_some());
        let mut out = String::from(
            "| label | mode | target rate | achieved | success | p50 ms | p90 ms | p99 ms | max ms |",
        );
        if with_ttft {
            out.push_str(" ttft p50 ms | ttft p99 ms |");
        }
        out.push_str("\n|---|---|---:|---:|---:|---:|---:|---:|---:|");
        if with_ttft {
            out.push_str("---:|---:|");
        }
        out.push('\n');
        for r in rows {
            let mode = match r.connections {
                Some(c) => format!("{} ({c} conn)", r.mode),
                None => r.mode.clone(),
            };
            let target = r
                .target_rate
                .map_or_else(|| "-".to_owned(), |t| format!("{t:.1}"));
            let _ = write!(
                out,
                "| {} | {} | {} | {:.1} | {:.2}% | {:.2} | {:.2} | {:.2} | {:.2} |",
                r.label.replace('|', "\\|"),
                mode,
                target,
                r.achieved_rate,
                r.success_rate * 100.0,
                r.latency.p50,
                r.latency.p90,
                r.latency.p99,
                r.latency.max,
            );
            if with_ttft {
                match r.ttft {
                    Some(t) => {
                        let _ = write!(out, " {:.2} | {:.2} |", t.p50, t.p99);
                    }
                    None => out.push_str(" - | - |"),
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_counts_requests_strictly_inside_the_phase() {
        assert_eq!(scheduled(Duration::from_secs(1), 200.0), 200);
        assert_eq!(scheduled(Duration::from_millis(1500), 3.0), 5); // 0, .33, .67, 1, 1.33
        assert_eq!(scheduled(Duration::from_millis(100), 3.0), 1);
        assert_eq!(scheduled(Duration::ZERO, 3.0), 0);
        assert_eq!(scheduled(Duration::from_secs(10), 0.1), 1);
    }

    #[test]
    fn summary_is_in_milliseconds() {
        let mut h = histogram(3).unwrap();
        for v in [1000, 2000, 3000, 4000] {
            h.record(v).unwrap();
        }
        let s = summary(&h);
        assert_eq!(s.count, 4);
        assert!((s.mean - 2.5).abs() < 0.005, "{s:?}");
        assert_eq!(s.p50, 2.0);
        assert!((s.max - 4.0).abs() < 0.005, "{s:?}");
    }
}
