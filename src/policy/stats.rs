//! Latency statistics of one deployment: an EWMA for routing decisions and an HDR histogram for
//! percentiles in snapshots. Pure data, owned by the deployment actor.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Exponentially weighted moving average. The first sample sets the value.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ewma {
    value: Option<f64>,
}

impl Ewma {
    /// Weight of a new sample: with 0.2, the last ~10 samples dominate.
    pub const ALPHA: f64 = 0.2;

    pub fn observe(&mut self, sample: f64) {
        self.value = Some(match self.value {
            None => sample,
            Some(v) => v + Self::ALPHA * (sample - v),
        });
    }

    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

/// Latency (whole attempt) and time to first token, in microseconds.
#[derive(Debug)]
pub struct LatencyStats {
    pub latency: Ewma,
    pub ttft: Ewma,
    latency_hist: Option<Histogram<u64>>,
    ttft_hist: Option<Histogram<u64>>,
}

/// Up to 1 hour, 2 significant digits: about 10 KiB per histogram.
fn new_histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).ok()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Default for LatencyStats {
    fn default() -> Self {
        LatencyStats {
            latency: Ewma::default(),
            ttft: Ewma::default(),
            latency_hist: new_histogram(),
            ttft_hist: new_histogram(),
        }
    }
}

impl LatencyStats {
    pub fn observe(&mut self, latency: Duration, ttft: Option<Duration>) {
        let us = micros(latency);
        self.latency.observe(us as f64);
        if let Some(h) = &mut self.latency_hist {
            h.saturating_record(us);
        }
        if let Some(t) = ttft {
            let us = micros(t);
            self.ttft.observe(us as f64);
            if let Some(h) = &mut self.ttft_hist {
                h.saturating_record(us);
            }
        }
    }

    /// Latency percentile in microseconds (`q` in 0..=1), if any sample was recorded.
    pub fn latency_quantile_us(&self, q: f64) -> Option<u64> {
        self.latency_hist
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(q))
    }

    pub fn ttft_quantile_us(&self, q: f64) -> Option<u64> {
        self.ttft_hist
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_starts_at_the_first_sample_and_moves_by_alpha() {
        let mut e = Ewma::default();
        assert_eq!(e.get(), None);
        e.observe(100.0);
        assert_eq!(e.get(), Some(100.0));
        e.observe(200.0);
        assert!((e.get().unwrap_or_default() - 120.0).abs() < 1e-9);
    }

    #[test]
    fn histogram_percentiles_follow_the_samples() {
        let mut s = LatencyStats::default();
        for ms in 1..=100u64 {
            s.observe(
                Duration::from_millis(ms),
                Some(Duration::from_millis(ms / 2)),
            );
        }
        let p50 = s.latency_quantile_us(0.5).unwrap_or_default();
        assert!((49_000..=51_000).contains(&p50), "{p50}");
        let p99 = s.latency_quantile_us(0.99).unwrap_or_default();
        assert!((98_000..=100_500).contains(&p99), "{p99}");
        assert!(s.ttft_quantile_us(0.5).is_some());
    }
}
