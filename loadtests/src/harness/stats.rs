//! The pure maths of the bench and scenario reports: medians across runs, added latency,
//! ratios, memory per stream, traffic shift, verdicts. No I/O.

use std::fmt::Write as _;

use serde::Serialize;

use crate::loadgen::{Summary, Tick};

/// Median of the finite values (mean of the middle two for an even count); `None` if none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v.get(mid).copied()
    } else {
        Some((v.get(mid - 1)? + v.get(mid)?) / 2.0)
    }
}

/// Field-by-field median of several summaries (count: median too).
pub fn median_summary(runs: &[Summary]) -> Summary {
    let m = |f: fn(&Summary) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0);
    Summary {
        count: m(|s| s.count as f64).round() as u64,
        mean: m(|s| s.mean),
        p50: m(|s| s.p50),
        p90: m(|s| s.p90),
        p99: m(|s| s.p99),
        p999: m(|s| s.p999),
        max: m(|s| s.max),
    }
}

/// Differences of two latency distributions per percentile, ms (`b − a`).
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Added {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// `through − direct` per percentile.
pub fn added(through: &Summary, direct: &Summary) -> Added {
    Added {
        p50: through.p50 - direct.p50,
        p90: through.p90 - direct.p90,
        p99: through.p99 - direct.p99,
        max: through.max - direct.max,
    }
}

/// Field-by-field median of several per-run differences.
pub fn median_added(runs: &[Added]) -> Added {
    let m = |f: fn(&Added) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0);
    Added {
        p50: m(|a| a.p50),
        p90: m(|a| a.p90),
        p99: m(|a| a.p99),
        max: m(|a| a.max),
    }
}

/// `a / b`, `None` when `b` is not a positive number.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b.is_finite() && b > 0.0 && a.is_finite()).then(|| a / b)
}

/// Gateway CPU milliseconds per request; `None` without requests.
pub fn cpu_ms_per_request(cpu_seconds: f64, requests: f64) -> Option<f64> {
    (requests > 0.0 && cpu_seconds >= 0.0).then(|| cpu_seconds * 1000.0 / requests)
}

/// KiB of RSS per open stream: `(peak − idle) / streams` (0 if the peak is below idle).
pub fn kib_per_stream(idle_bytes: u64, peak_bytes: u64, streams: usize) -> Option<f64> {
    (streams > 0).then(|| peak_bytes.saturating_sub(idle_bytes) as f64 / 1024.0 / streams as f64)
}

/// The no-leak bound: after a second, identical wave of load, RSS may exceed what it was after
/// the first by at most max(5 %, 4 MiB). (Comparing with idle would measure the allocator,
/// which keeps freed memory for reuse, rather than a leak.)
pub fn leak_bound(after_first_wave: u64) -> u64 {
    after_first_wave + (after_first_wave / 20).max(4 * 1024 * 1024)
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Time from `flip_s` until traffic has moved away from a deployment, from windows of
/// (window end, seconds since start; attempts to the deployment; attempts in total): the end
/// of the last window after the flip in which the deployment still got more than `share` of the
/// attempts, minus `flip_s` (0 when no such window). `None` if no window after the flip had
/// any traffic (nothing to judge).
pub fn moved_after(windows: &[(f64, u64, u64)], flip_s: f64, share: f64) -> Option<f64> {
    let after: Vec<&(f64, u64, u64)> = windows.iter().filter(|w| w.0 > flip_s).collect();
    if after.iter().all(|w| w.2 == 0) {
        return None;
    }
    let last_bad = after
        .iter()
        .filter(|w| w.2 > 0 && (w.1 as f64) > share * w.2 as f64)
        .map(|w| w.0)
        .fold(None, |acc: Option<f64>, t| {
            Some(acc.map_or(t, |a| a.max(t)))
        });
    Some(last_bad.map_or(0.0, |t| (t - flip_s).max(0.0)))
}

/// Ticks whose second lies in `[from_s, to_s)`.
pub fn ticks_between(timeline: &[Tick], from_s: u64, to_s: u64) -> Vec<&Tick> {
    timeline
        .iter()
        .filter(|t| t.second >= from_s && t.second < to_s)
        .collect()
}

/// (ok, failed) summed over ticks.
pub fn tick_counts(ticks: &[&Tick]) -> (u64, u64) {
    ticks
        .iter()
        .fold((0, 0), |(ok, failed), t| (ok + t.ok, failed + t.failed))
}

/// Success rate over ticks (1.0 when nothing completed).
pub fn tick_success(ticks: &[&Tick]) -> f64 {
    let (ok, failed) = tick_counts(ticks);
    if ok + failed == 0 {
        1.0
    } else {
        ok as f64 / (ok + failed) as f64
    }
}

/// The worst per-second p99 over ticks that had successes (ms).
pub fn worst_tick_p99(ticks: &[&Tick]) -> f64 {
    ticks
        .iter()
        .filter(|t| t.ok > 0)
        .map(|t| t.p99_ms)
        .fold(0.0, f64::max)
}

/// A criterion and its outcome.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Verdict {
    pub name: String,
    /// The criterion in words, e.g. `≤ 0.10 ms`.
    pub target: String,
    /// The measured value in words (`n/a` when it could not be measured).
    pub measured: String,
    pub pass: bool,
}

impl Verdict {
    /// Passes when `value ≤ limit`; a missing value fails.
    pub fn at_most(name: &str, value: Option<f64>, limit: f64, unit: &str) -> Verdict {
        Verdict {
            name: name.to_owned(),
            target: format!("≤ {} {unit}", fmt_num(limit)).trim_end().to_owned(),
            measured: value.map_or_else(
                || "n/a".to_owned(),
                |v| format!("{} {unit}", fmt_num(v)).trim_end().to_owned(),
            ),
            pass: value.is_some_and(|v| v <= limit),
        }
    }

    /// Passes when `value ≥ limit`; a missing value fails.
    pub fn at_least(name: &str, value: Option<f64>, limit: f64, unit: &str) -> Verdict {
        Verdict {
            name: name.to_owned(),
            target: format!("≥ {} {unit}", fmt_num(limit)).trim_end().to_owned(),
            measured: value.map_or_else(
                || "n/a".to_owned(),
                |v| format!("{} {unit}", fmt_num(v)).trim_end().to_owned(),
            ),
            pass: value.is_some_and(|v| v >= limit),
        }
    }

    /// A yes/no criterion with free-form texts.
    pub fn check(name: &str, target: &str, measured: String, pass: bool) -> Verdict {
        Verdict {
            name: name.to_owned(),
            target: target.to_owned(),
            measured,
            pass,
        }
    }

    pub fn word(&self) -> &'static str {
        if self.pass {
            "PASS"
        } else {
            "FAIL"
        }
    }
}

/// A Markdown table of verdicts.
pub fn verdict_table(verdicts: &[Verdict]) -> String {
    let mut s = String::from("| criterion | target | measured | verdict |\n|---|---|---|---|\n");
    for v in verdicts {
        let _ = writeln!(
            s,
            "| {} | {} | {} | **{}** |",
            v.name,
            v.target,
            v.measured,
            v.word()
        );
    }
    s
}

/// A number for reports: 3 significant figures for small values, no decimals for large ones.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_owned();
    }
    let a = v.abs();
    if (v.fract() == 0.0 && a < 1e15) || a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// An optional number for reports (`–` when absent).
pub fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), fmt_num)
}

/// A rate as a percentage with two decimals.
pub fn pct(rate: f64) -> String {
    format!("{:.2} %", rate * 100.0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn summary(p50: f64, p99: f64) -> Summary {
        Summary {
            count: 10,
            mean: p50,
            p50,
            p90: (p50 + p99) / 2.0,
            p99,
            p999: p99,
            max: p99 * 2.0,
        }
    }

    fn tick(second: u64, ok: u64, failed: u64, p99_ms: f64) -> Tick {
        Tick {
            second,
            sent: ok + failed,
            ok,
            failed,
            p50_ms: p99_ms / 2.0,
            p99_ms,
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0, 1.0]), Some(1.5));
        let m = median_summary(&[summary(1.0, 10.0), summary(3.0, 30.0), summary(2.0, 90.0)]);
        assert_eq!(m.p50, 2.0);
        assert_eq!(m.p99, 30.0);
        assert_eq!(m.max, 60.0);
        assert_eq!(m.count, 10);
    }

    #[test]
    fn added_latency_and_ratios() {
        let a = added(&summary(0.30, 1.0), &summary(0.25, 0.8));
        assert!((a.p50 - 0.05).abs() < 1e-9);
        assert!((a.p99 - 0.2).abs() < 1e-9);
        let m = median_added(&[
            Added {
                p50: 0.1,
                p90: 0.0,
                p99: 0.5,
                max: 1.0,
            },
            Added {
                p50: 0.3,
                p90: 0.0,
                p99: 0.1,
                max: 1.0,
            },
            Added {
                p50: 0.2,
                p90: 0.0,
                p99: 0.2,
                max: 1.0,
            },
        ]);
        assert_eq!((m.p50, m.p99), (0.2, 0.2));
        assert_eq!(ratio(1.0, 2.0), Some(0.5));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(1.0, -1.0), None);
        assert_eq!(cpu_ms_per_request(2.0, 20_000.0), Some(0.1));
        assert_eq!(cpu_ms_per_request(2.0, 0.0), None);
    }

    #[test]
    fn memory() {
        assert_eq!(kib_per_stream(10 << 20, 30 << 20, 2000), Some(10.24));
        assert_eq!(kib_per_stream(10 << 20, 5 << 20, 2000), Some(0.0));
        assert_eq!(kib_per_stream(1, 2, 0), None);
        assert_eq!(leak_bound(20 << 20), (20 << 20) + (4 << 20));
        assert_eq!(leak_bound(200 << 20), (200 << 20) + (10 << 20));
        assert_eq!(mib(3 << 20), 3.0);
    }

    #[test]
    fn traffic_shift() {
        // Flip at 10 s; b still gets 40 % in the window ending at 10.5, 5 % at 11.0, then 0.
        let w = [
            (9.5, 50, 100),
            (10.0, 50, 100),
            (10.5, 40, 100),
            (11.0, 5, 100),
            (11.5, 0, 100),
            (12.0, 1, 200),
        ];
        assert_eq!(moved_after(&w, 10.0, 0.01), Some(1.0));
        assert_eq!(moved_after(&w, 10.0, 0.5), Some(0.0));
        assert_eq!(moved_after(&w, 20.0, 0.01), None);
        assert_eq!(moved_after(&[(11.0, 0, 0)], 10.0, 0.01), None);
    }

    #[test]
    fn ticks() {
        let t = [tick(0, 10, 0, 1.0), tick(1, 9, 1, 5.0), tick(2, 0, 10, 0.0)];
        let mid = ticks_between(&t, 1, 3);
        assert_eq!(mid.len(), 2);
        assert_eq!(tick_counts(&mid), (9, 11));
        assert!((tick_success(&mid) - 0.45).abs() < 1e-9);
        assert_eq!(tick_success(&[]), 1.0);
        assert_eq!(worst_tick_p99(&ticks_between(&t, 0, 3)), 5.0);
    }

    #[test]
    fn verdicts() {
        let v = Verdict::at_most("p50", Some(0.08), 0.10, "ms");
        assert!(v.pass);
        assert_eq!(v.target, "≤ 0.100 ms");
        assert_eq!(v.measured, "0.080 ms");
        assert!(!Verdict::at_most("p50", Some(0.11), 0.10, "ms").pass);
        assert!(!Verdict::at_most("p50", None, 0.10, "ms").pass);
        assert!(Verdict::at_least("rps", Some(25_000.0), 20_000.0, "req/s").pass);
        assert!(!Verdict::at_least("rps", Some(19_999.0), 20_000.0, "req/s").pass);
        let table = verdict_table(&[v, Verdict::check("x", "y", "z".into(), false)]);
        assert!(table.contains("| p50 | ≤ 0.100 ms | 0.080 ms | **PASS** |"));
        assert!(table.contains("**FAIL**"));
        assert_eq!(fmt_num(12345.6), "12346");
        assert_eq!(fmt_num(0.0456), "0.046");
        assert_eq!(fmt_num(5.0), "5");
        assert_eq!(pct(0.999), "99.90 %");
    }
}
