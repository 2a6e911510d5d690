//! Bids and routing strategies. A strategy is a pure function from the bids of the available
//! deployments (and some randomness) to the order in which to try them. New strategies slot in
//! as another arm of [`Strategy`] and another function here; nothing else changes.

use tokio::time::Instant;

/// A deployment's answer to "could you take a request, and on what terms?".
#[derive(Debug, Clone, PartialEq)]
pub struct Bid {
    pub deployment: usize,
    /// `None` when the deployment would take a request now.
    pub decline: Option<Decline>,
    pub weight: u32,
    pub in_flight: u32,
    /// EWMA of whole-attempt latency, microseconds.
    pub latency_us: Option<f64>,
    /// EWMA of time to first token, microseconds.
    pub ttft_us: Option<f64>,
}

impl Bid {
    pub fn available(&self) -> bool {
        self.decline.is_none()
    }
}

/// Why a deployment declines to bid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decline {
    /// The circuit breaker is open (or half-open with every probe slot taken).
    BreakerOpen { until: Option<Instant> },
    /// Cooling down after an upstream 429 (`rate_limited`) or a quota/auth failure.
    CoolingDown { until: Instant, long: bool },
    /// Our own rpm limiter has no room until `until`.
    RateLimited { until: Instant },
    /// `max_concurrency` requests are already in flight.
    AtCapacity,
    /// The actor did not answer (mailbox closed or full); it is being respawned.
    Unavailable,
}

impl Decline {
    pub fn as_str(&self) -> &'static str {
        match self {
            Decline::BreakerOpen { .. } => "breaker_open",
            Decline::CoolingDown { long: false, .. } => "cooling_down",
            Decline::CoolingDown { long: true, .. } => "disabled",
            Decline::RateLimited { .. } => "rate_limited",
            Decline::AtCapacity => "at_capacity",
            Decline::Unavailable => "unavailable",
        }
    }

    /// Declines that mean "too much traffic", which the client should see as a 429.
    pub fn is_rate_limit(&self) -> bool {
        matches!(
            self,
            Decline::RateLimited { .. }
                | Decline::AtCapacity
                | Decline::CoolingDown { long: false, .. }
        )
    }

    /// When this deployment will take requests again, if known.
    pub fn until(&self) -> Option<Instant> {
        match *self {
            Decline::BreakerOpen { until } => until,
            Decline::CoolingDown { until, .. } | Decline::RateLimited { until } => Some(until),
            Decline::AtCapacity | Decline::Unavailable => None,
        }
    }
}

/// How a model group orders its available deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Weighted random: each deployment is picked with probability proportional to its weight;
    /// the rest of the order is weighted random too.
    SimpleShuffle,
}

impl Strategy {
    pub const NAMES: &'static [&'static str] = &["simple-shuffle"];

    pub fn parse(name: &str) -> Option<Strategy> {
        match name {
            "simple-shuffle" => Some(Strategy::SimpleShuffle),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::SimpleShuffle => "simple-shuffle",
        }
    }

    /// Orders the available bids, best first. `rand` yields uniform numbers in `[0, 1)`.
    /// Unavailable bids are left out.
    pub fn order(self, bids: &[Bid], rand: &mut dyn FnMut() -> f64) -> Vec<usize> {
        match self {
            Strategy::SimpleShuffle => weighted_shuffle(bids, rand),
        }
    }
}

/// Weighted random permutation without replacement (Efraimidis–Spirakis): each item gets the key
/// `-ln(u) / weight` and items are taken in increasing key order. The first item is chosen with
/// probability `weight / total`, exactly like a weighted pick, and the rest follow the same rule.
pub fn weighted_shuffle(bids: &[Bid], rand: &mut dyn FnMut() -> f64) -> Vec<usize> {
    let mut keyed: Vec<(f64, usize)> = bids
        .iter()
        .filter(|b| b.available())
        .map(|b| {
            // 1 - u is in (0, 1], so ln never sees 0.
            let u = 1.0 - rand().clamp(0.0, 1.0 - f64::EPSILON);
            (-u.ln() / f64::from(b.weight.max(1)), b.deployment)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    keyed.into_iter().map(|(_, d)| d).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bid(deployment: usize, weight: u32) -> Bid {
        Bid {
            deployment,
            decline: None,
            weight,
            in_flight: 0,
            latency_us: None,
            ttft_us: None,
        }
    }

    #[test]
    fn weighted_shuffle_picks_first_in_proportion_to_weight() {
        let bids = [bid(0, 3), bid(1, 1)];
        let mut rng = fastrand::Rng::with_seed(7);
        let mut first = [0u32; 2];
        let n = 40_000;
        for _ in 0..n {
            let order = weighted_shuffle(&bids, &mut || rng.f64());
            assert_eq!(order.len(), 2);
            first[order[0]] += 1;
        }
        let share = f64::from(first[0]) / f64::from(n);
        assert!((share - 0.75).abs() < 0.01, "deployment 0 first in {share}");
    }

    #[test]
    fn unavailable_bids_are_left_out() {
        let mut declined = bid(1, 100);
        declined.decline = Some(Decline::AtCapacity);
        let bids = [bid(0, 1), declined, bid(2, 1)];
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..100 {
            let mut order = Strategy::SimpleShuffle.order(&bids, &mut || rng.f64());
            order.sort_unstable();
            assert_eq!(order, vec![0, 2]);
        }
    }

    #[test]
    fn extreme_randomness_never_panics_or_loses_bids() {
        let bids = [bid(0, 1), bid(1, u32::MAX), bid(2, 0)];
        for u in [0.0, 1.0, -5.0, 5.0, f64::NAN] {
            let order = weighted_shuffle(&bids, &mut || u);
            assert_eq!(order.len(), 3);
        }
    }
}
