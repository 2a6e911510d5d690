//! An adaptive concurrency limit by AIMD (additive increase, multiplicative decrease), the
//! congestion control of TCP Reno applied to in-flight requests.
//!
//! - **Additive increase**: every `limit` successes raise the limit by one, so it grows by about
//!   one per window of successes (one "round trip" of a full pipe), never above `max`.
//! - **Multiplicative decrease**: an overload signal (429, 503, a timeout) multiplies the limit
//!   by [`BACKOFF_RATIO`] (rounded down), never below `min`. Overloads arrive in bursts (every
//!   request in flight when the upstream saturates fails at once), so the limit decreases at
//!   most once per `cooldown` ([`DEFAULT_COOLDOWN`], 100 ms, about one upstream round trip);
//!   further overloads within the cooldown are ignored. A decrease also restarts the count of
//!   successes towards the next increase.
//!
//! Bounds: `1 <= min <= limit() <= max` at all times (`new` repairs inconsistent arguments:
//! `min` is raised to 1, `max` to `min`, and `initial` is clamped into `[min, max]`).

use std::time::Duration;

use tokio::time::Instant;

/// Factor applied to the limit on an overload.
pub const BACKOFF_RATIO: f64 = 0.5;
/// Minimum time between two decreases.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct Aimd {
    min: u32,
    max: u32,
    limit: u32,
    /// Successes since the last change of the limit.
    successes: u32,
    cooldown: Duration,
    last_decrease: Option<Instant>,
}

impl Aimd {
    /// A limit starting at `initial`, kept within `[min, max]`, with [`DEFAULT_COOLDOWN`].
    pub fn new(min: u32, max: u32, initial: u32) -> Self {
        let min = min.max(1);
        let max = max.max(min);
        Aimd {
            min,
            max,
            limit: initial.clamp(min, max),
            successes: 0,
            cooldown: DEFAULT_COOLDOWN,
            last_decrease: None,
        }
    }

    /// Replaces the minimum time between two decreases (zero: every overload decreases).
    pub fn with_cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// A request completed without overload: +1 to the limit per `limit` successes.
    pub fn on_success(&mut self) {
        self.successes = self.successes.saturating_add(1);
        if self.successes >= self.limit {
            self.successes = 0;
            self.limit = self.limit.saturating_add(1).min(self.max);
        }
    }

    /// The upstream signalled overload: multiply the limit by [`BACKOFF_RATIO`], not below
    /// `min`, unless the last decrease was less than `cooldown` before `now`.
    pub fn on_overload(&mut self, now: Instant) {
        if let Some(last) = self.last_decrease {
            if now.saturating_duration_since(last) < self.cooldown {
                return;
            }
        }
        self.last_decrease = Some(now);
        self.successes = 0;
        let decreased = (f64::from(self.limit) * BACKOFF_RATIO).floor();
        // `decreased` is in [0, limit], so the cast is exact.
        self.limit = (decreased as u32).clamp(self.min, self.max);
    }

    /// The current concurrency limit, in `[min, max]`.
    pub fn limit(&self) -> u32 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_by_one_per_window_of_successes() {
        let mut a = Aimd::new(1, 100, 10);
        for _ in 0..9 {
            a.on_success();
        }
        assert_eq!(a.limit(), 10);
        a.on_success();
        assert_eq!(a.limit(), 11);
        for _ in 0..11 {
            a.on_success();
        }
        assert_eq!(a.limit(), 12);
    }

    #[test]
    fn never_grows_above_max() {
        let mut a = Aimd::new(1, 5, 4);
        for _ in 0..1000 {
            a.on_success();
        }
        assert_eq!(a.limit(), 5);
    }

    #[test]
    fn overload_halves_not_below_min() {
        let t0 = Instant::now();
        let mut a = Aimd::new(3, 100, 40);
        a.on_overload(t0);
        assert_eq!(a.limit(), 20);
        a.on_overload(t0 + 100 * MS);
        assert_eq!(a.limit(), 10);
        a.on_overload(t0 + 200 * MS);
        assert_eq!(a.limit(), 5);
        a.on_overload(t0 + 300 * MS);
        assert_eq!(a.limit(), 3);
        a.on_overload(t0 + 400 * MS);
        assert_eq!(a.limit(), 3);
    }

    #[test]
    fn a_burst_of_overloads_decreases_once_per_cooldown() {
        let t0 = Instant::now();
        let mut a = Aimd::new(1, 100, 64);
        for i in 0..50 {
            a.on_overload(t0 + i * MS);
        }
        assert_eq!(a.limit(), 32);
        a.on_overload(t0 + 100 * MS);
        assert_eq!(a.limit(), 16);
        let mut b = Aimd::new(1, 100, 64).with_cooldown(Duration::ZERO);
        for _ in 0..3 {
            b.on_overload(t0);
        }
        assert_eq!(b.limit(), 8);
    }

    #[test]
    fn decrease_restarts_the_success_count() {
        let t0 = Instant::now();
        let mut a = Aimd::new(1, 100, 8);
        for _ in 0..7 {
            a.on_success();
        }
        a.on_overload(t0);
        assert_eq!(a.limit(), 4);
        for _ in 0..3 {
            a.on_success();
        }
        assert_eq!(a.limit(), 4);
        a.on_success();
        assert_eq!(a.limit(), 5);
    }

    #[test]
    fn inconsistent_arguments_are_repaired() {
        let a = Aimd::new(0, 0, 0);
        assert_eq!(a.limit(), 1);
        let a = Aimd::new(10, 5, 1);
        assert_eq!(a.limit(), 10);
        let a = Aimd::new(2, 8, 50);
        assert_eq!(a.limit(), 8);
        let mut a = Aimd::new(1, u32::MAX, u32::MAX);
        a.on_success();
        assert_eq!(a.limit(), u32::MAX);
    }

    proptest! {
        #[test]
        fn limit_stays_within_min_and_max(
            min in 0u32..50,
            max in 0u32..200,
            initial in 0u32..300,
            cooldown_ms in 0u64..200,
            ops in proptest::collection::vec(prop_oneof![Just(None), (0u64..150).prop_map(Some)], 0..2_000),
        ) {
            let mut a = Aimd::new(min, max, initial).with_cooldown(Duration::from_millis(cooldown_ms));
            let lo = min.max(1);
            let hi = max.max(lo);
            let mut now = Instant::now();
            prop_assert!((lo..=hi).contains(&a.limit()));
            for op in ops {
                match op {
                    None => a.on_success(),
                    Some(ms) => {
                        now += Duration::from_millis(ms);
                        a.on_overload(now);
                    }
                }
                prop_assert!((lo..=hi).contains(&a.limit()), "limit {} outside [{lo}, {hi}]", a.limit());
            }
        }
    }
}
