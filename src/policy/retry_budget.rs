//! A retry budget shared by every request to one target, after Finagle's `RetryBudget`: retries
//! may add at most a fixed share of load on top of first attempts, so a struggling upstream is
//! not hit by a retry storm.
//!
//! Over a sliding window of length `ttl` (default 10 s), the budget allows
//!
//! ```text
//! retries <= ratio * requests + min_per_sec * ttl_seconds
//! ```
//!
//! where `requests` are first attempts ([`RetryBudget::request`], a deposit) and `retries` are
//! the retries granted by [`RetryBudget::try_retry`] (a withdrawal). The second term is a
//! reserve, so a target with little traffic can still retry a little. Both counts live in
//! [`BUCKETS`] time buckets of `ttl / BUCKETS` each (like Finagle's `WindowedAdder`); a bucket is
//! forgotten as a whole once it falls out of the window.
//!
//! Bounds, with `w = ttl / BUCKETS` (the bucket granularity slack):
//! - a deposit or a withdrawal counts for at least `ttl - w` and at most `ttl` (it is always
//!   forgotten by `ttl` after it happened);
//! - hence at every grant at `t`: retries granted in `[t - (ttl - w), t]` are at most
//!   `ratio * requests in (t - ttl, t] + reserve`. Over a window of the full `ttl`, a burst of
//!   retries at the very start of the oldest bucket may be forgotten up to `w` early, so up to
//!   one bucket's worth of grants (at most the reserve plus `ratio` times that bucket's requests)
//!   can come on top.
//!
//! Deposits and withdrawals age out bucket by bucket, each on its own, so the balance can turn
//! negative (requests that paid for retries left the window first); no retry is granted until
//! it is back to at least one.
//!
//! Time is passed in explicitly as `now`; instants earlier than ones already seen count as the
//! latest one (the window never moves backwards).

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// Number of time buckets the window is kept in.
pub const BUCKETS: usize = 10;
/// Default share of first attempts that may be retried.
pub const DEFAULT_RATIO: f64 = 0.2;
/// Default retries per second always allowed, whatever the traffic.
pub const DEFAULT_MIN_PER_SEC: u32 = 10;
/// Default window.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// Absorbs float rounding in `ratio * requests` (counts are whole numbers).
const EPSILON: f64 = 1e-9;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    requests: u64,
    retries: u64,
}

#[derive(Debug)]
struct Window {
    /// Start of the bucket at `head`; `None` until the first call.
    head_start: Option<Instant>,
    head: usize,
    buckets: [Bucket; BUCKETS],
}

/// A thread-safe retry budget (`Send + Sync`); share it behind an `Arc`.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    reserve: f64,
    bucket_width: Duration,
    window: Mutex<Window>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(DEFAULT_RATIO, DEFAULT_MIN_PER_SEC, DEFAULT_TTL)
    }
}

impl RetryBudget {
    /// `ratio`: share of first attempts that may be retried (negative or NaN counts as 0).
    /// `min_per_sec`: reserve rate, giving `min_per_sec * ttl` retries per window regardless of
    /// traffic. `ttl`: window length (at least one nanosecond per bucket).
    pub fn new(ratio: f64, min_per_sec: u32, ttl: Duration) -> Self {
        let ratio = if ratio.is_finite() && ratio > 0.0 {
            ratio
        } else if ratio == f64::INFINITY {
            f64::MAX
        } else {
            0.0
        };
        let buckets = BUCKETS as u32;
        let bucket_width = (ttl / buckets).max(Duration::from_nanos(1));
        let ttl = bucket_width * buckets;
        RetryBudget {
            ratio,
            reserve: f64::from(min_per_sec) * ttl.as_secs_f64(),
            bucket_width,
            window: Mutex::new(Window {
                head_start: None,
                head: 0,
                buckets: [Bucket::default(); BUCKETS],
            }),
        }
    }

    /// A first attempt arrived: deposit `ratio` of a retry.
    pub fn request(&self, now: Instant) {
        let mut window = self.advance(now);
        let head = window.head;
        let bucket = &mut window.buckets[head];
        bucket.requests = bucket.requests.saturating_add(1);
    }

    /// Withdraws one retry if the budget allows it (`true`); otherwise nothing is withdrawn.
    pub fn try_retry(&self, now: Instant) -> bool {
        let mut window = self.advance(now);
        if self.balance_of(&window) + EPSILON < 1.0 {
            return false;
        }
        let head = window.head;
        let bucket = &mut window.buckets[head];
        bucket.retries = bucket.retries.saturating_add(1);
        true
    }

    /// `ratio * requests + reserve - retries` over the current window, for metrics: at least 1
    /// means a retry would be granted. It can be negative when the requests that paid for
    /// retries age out before those retries do.
    pub fn balance(&self, now: Instant) -> f64 {
        let window = self.advance(now);
        self.balance_of(&window)
    }

    fn balance_of(&self, window: &Window) -> f64 {
        let (requests, retries) = window.buckets.iter().fold((0u64, 0u64), |(req, ret), b| {
            (
                req.saturating_add(b.requests),
                ret.saturating_add(b.retries),
            )
        });
        self.ratio * requests as f64 + self.reserve - retries as f64
    }

    /// Locks the window (recovering from a poisoned lock: the state is plain counters, always
    /// consistent) and rotates it so the head bucket contains `now`.
    fn advance(&self, now: Instant) -> MutexGuard<'_, Window> {
        let mut window = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(start) = window.head_start else {
            window.head_start = Some(now);
            return window;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < self.bucket_width {
            return window;
        }
        let width = self.bucket_width.as_nanos();
        let steps = elapsed.as_nanos() / width;
        let clear = usize::try_from(steps).unwrap_or(usize::MAX).min(BUCKETS);
        for _ in 0..clear {
            window.head = (window.head + 1) % BUCKETS;
            let head = window.head;
            window.buckets[head] = Bucket::default();
        }
        // Keep bucket boundaries on the grid of the first call; if the jump is too large to
        // represent, restart the grid at `now` (every bucket was cleared anyway).
        let offset = u64::try_from(steps * width)
            .ok()
            .map(Duration::from_nanos)
            .and_then(|d| start.checked_add(d));
        window.head_start = Some(offset.unwrap_or(now));
        window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Duration = Duration::from_secs(1);

    fn budget() -> RetryBudget {
        RetryBudget::new(0.2, 10, Duration::from_secs(10))
    }

    fn drain(b: &RetryBudget, now: Instant) -> u32 {
        let mut n = 0;
        while b.try_retry(now) {
            n += 1;
            assert!(n <= 1_000_000, "budget never ran out");
        }
        n
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RetryBudget>();
    }

    #[test]
    fn with_no_traffic_exactly_the_reserve_is_allowed() {
        let b = budget();
        let t0 = Instant::now();
        assert!((b.balance(t0) - 100.0).abs() < 1e-9);
        assert_eq!(drain(&b, t0), 100);
        assert!(!b.try_retry(t0));
        // A refusal withdraws nothing.
        assert!(b.balance(t0).abs() < 1e-9);
        assert!(!b.try_retry(t0 + SEC));
    }

    #[test]
    fn thousand_requests_allow_two_hundred_retries_plus_reserve() {
        let b = budget();
        let t0 = Instant::now();
        for _ in 0..1000 {
            b.request(t0);
        }
        assert_eq!(drain(&b, t0 + SEC), 300);
    }

    #[test]
    fn spent_retries_and_deposits_age_out_after_ttl() {
        let b = budget();
        let t0 = Instant::now();
        for _ in 0..50 {
            b.request(t0);
        }
        assert_eq!(drain(&b, t0), 110);
        // Still inside the window: nothing has aged out.
        assert!(!b.try_retry(t0 + Duration::from_millis(8_999)));
        // After ttl both the deposits and the withdrawals are gone: the reserve is back.
        assert!((b.balance(t0 + Duration::from_secs(10)) - 100.0).abs() < 1e-9);
        assert_eq!(drain(&b, t0 + Duration::from_secs(10)), 100);
    }

    #[test]
    fn buckets_age_out_one_at_a_time() {
        let b = RetryBudget::new(0.5, 0, Duration::from_secs(10));
        let t0 = Instant::now();
        for s in 0..10 {
            b.request(t0 + SEC * s);
            b.request(t0 + SEC * s);
        }
        // Ten one-second buckets of two requests each: ten retries.
        assert!((b.balance(t0 + SEC * 9) - 10.0).abs() < 1e-9);
        assert!((b.balance(t0 + SEC * 10) - 9.0).abs() < 1e-9);
        assert!((b.balance(t0 + SEC * 15) - 4.0).abs() < 1e-9);
        // A jump of more than the window clears everything.
        assert!(b.balance(t0 + SEC * 1000).abs() < 1e-9);
    }

    #[test]
    fn time_going_backwards_is_the_latest_time() {
        let b = budget();
        let t0 = Instant::now() + Duration::from_secs(100);
        assert_eq!(drain(&b, t0), 100);
        assert!(!b.try_retry(t0 - Duration::from_secs(50)));
    }

    #[test]
    fn degenerate_parameters_do_not_panic() {
        let t0 = Instant::now();
        let b = RetryBudget::new(f64::NAN, 0, Duration::ZERO);
        b.request(t0);
        assert!(!b.try_retry(t0));
        let b = RetryBudget::new(-3.0, 0, Duration::from_secs(1));
        b.request(t0);
        assert!(!b.try_retry(t0));
        let b = RetryBudget::new(f64::INFINITY, 0, Duration::MAX);
        b.request(t0);
        assert!(b.try_retry(t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn shared_across_threads() {
        let b = budget();
        let t0 = Instant::now();
        let granted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if b.try_retry(t0) {
                            granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.into_inner(), 100);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Request,
        Retry,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Request),
            3 => Just(Op::Retry),
            1 => (0u64..3_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// At every grant at `t`, the grants in `[t - (ttl - w), t]` are at most
        /// `ratio * requests in (t - ttl, t] + reserve` (w = one bucket, the granularity slack).
        #[test]
        fn grants_stay_within_ratio_of_requests_plus_reserve(
            ratio in 0.0f64..1.0,
            min_per_sec in 0u32..5,
            ttl_ms in 100u64..5_000,
            ops in proptest::collection::vec(op(), 1..400),
        ) {
            let ttl = Duration::from_millis(ttl_ms);
            let b = RetryBudget::new(ratio, min_per_sec, ttl);
            let ttl = b.bucket_width * BUCKETS as u32;
            let slack = b.bucket_width;
            let reserve = f64::from(min_per_sec) * ttl.as_secs_f64();
            let t0 = Instant::now();
            let mut now = t0;
            let mut requests: Vec<Instant> = Vec::new();
            let mut grants: Vec<Instant> = Vec::new();
            for op in ops {
                match op {
                    Op::Request => {
                        b.request(now);
                        requests.push(now);
                    }
                    Op::Retry => {
                        if b.try_retry(now) {
                            grants.push(now);
                            let granted = grants
                                .iter()
                                .filter(|&&g| g + (ttl - slack) >= now)
                                .count();
                            let deposited = requests
                                .iter()
                                .filter(|&&r| r + ttl > now)
                                .count();
                            prop_assert!(
                                granted as f64 <= ratio * deposited as f64 + reserve + 1e-6,
                                "{granted} grants > {ratio} * {deposited} + {reserve}"
                            );
                        }
                    }
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                }
            }
        }
    }
}
