//! A lock-free, refundable token bucket for tokens-per-minute limits. `governor` (used for
//! requests per minute) cannot give cells back, but LLM token counts are only estimated up
//! front: a request takes its estimate, then [`TokenBucket::refund`]s what it did not use or
//! [`TokenBucket::charge`]s what it used beyond.
//!
//! The bucket holds `per_minute` tokens at most (the burst) and refills continuously at
//! `per_minute` per 60 s. It is GCRA-style: the whole state is one `AtomicU64`, the theoretical
//! arrival time (TAT) — the instant at which the bucket would be full again — updated by
//! compare-and-swap, so it is `Send + Sync` without a lock.
//!
//! Time is measured from a `base` instant in *units* of `1 / SUBDIVISIONS` of a token's refill
//! interval (`60 s / per_minute / 1000`), rather than in nanoseconds: a token is then exactly
//! `SUBDIVISIONS` units, so sums of takes, refunds and charges never drift from rounding, and
//! "N takes of one token" admits exactly as much as "one take of N". Instants are converted
//! rounding down (refill is observed at most one unit late, never early); retry instants round
//! up. A `u64` of units since `base` covers `2^64 / (per_minute * 1000)` minutes: some 35,000
//! years at 1 M tokens per minute, eight years even at `per_minute = u32::MAX`; beyond that
//! the clock saturates (never wraps or panics) and the bucket stops limiting.
//!
//! With `now` in units and `tau = per_minute * SUBDIVISIONS` (one full bucket):
//! - `available = (tau - max(0, tat - now)) / SUBDIVISIONS`, floored, and 0 while in debt
//!   (`tat - now >= tau`): never more than `per_minute`;
//! - `try_take(n)`: `new = max(tat, now) + n` tokens; allowed iff `new - now <= tau`, otherwise
//!   nothing is taken and the error is the instant when `now` reaches `new - tau`, which is when
//!   `n` tokens will be available (if nothing else happens meanwhile). For `n > per_minute` that
//!   instant is computed the same way, as if the bucket were large enough: the take can never
//!   succeed, so callers should reject such requests (or [`TokenBucket::charge`] them);
//! - `refund(n)`: `tat = max(tat - n, now)`: never above a full bucket;
//! - `charge(n)`: `tat = max(tat, now) + n` unconditionally; the debt delays later takes.
//!
//! Instants before `base` count as `base`.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Units per token (time resolution: this fraction of one token's refill interval).
pub const SUBDIVISIONS: u64 = 1000;

const NANOS_PER_MINUTE: u128 = 60_000_000_000;

#[derive(Debug)]
pub struct TokenBucket {
    per_minute: NonZeroU32,
    base: Instant,
    /// Theoretical arrival time, in units since `base`.
    tat: AtomicU64,
}

impl TokenBucket {
    /// A full bucket of `per_minute` tokens, refilling at `per_minute` per minute. `base` is the
    /// origin of the bucket's clock (any instant not after the first `now`).
    pub fn new(per_minute: NonZeroU32, base: Instant) -> Self {
        TokenBucket {
            per_minute,
            base,
            tat: AtomicU64::new(0),
        }
    }

    /// The burst size: `per_minute`.
    pub fn capacity(&self) -> u32 {
        self.per_minute.get()
    }

    /// Takes `n` tokens if all are available; otherwise takes none and returns the instant when
    /// `n` will be (for `n > capacity()`, as if it fitted: see the module docs).
    pub fn try_take(&self, n: u32, now: Instant) -> Result<(), Instant> {
        let now_u = self.units_at(now);
        let cost = Self::cost(n);
        let tau = self.tau();
        let mut cur = self.tat.load(Ordering::Acquire);
        loop {
            let new = cur.max(now_u).saturating_add(cost);
            if new - now_u > tau {
                return Err(self.instant_of(new - tau, now));
            }
            match self
                .tat
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Gives back `n` unused tokens (never filling beyond capacity).
    pub fn refund(&self, n: u32, now: Instant) {
        let now_u = self.units_at(now);
        let cost = Self::cost(n);
        self.update(|tat| tat.saturating_sub(cost).max(now_u));
    }

    /// Takes `n` more tokens unconditionally; beyond what is available this is debt, repaid by
    /// refill before later takes succeed.
    pub fn charge(&self, n: u32, now: Instant) {
        let now_u = self.units_at(now);
        let cost = Self::cost(n);
        self.update(|tat| tat.max(now_u).saturating_add(cost));
    }

    /// Whole tokens available at `now` (0 while in debt), at most `capacity()`.
    pub fn available(&self, now: Instant) -> u32 {
        let now_u = self.units_at(now);
        let debt = self.tat.load(Ordering::Acquire).saturating_sub(now_u);
        let units = self.tau().saturating_sub(debt);
        u32::try_from(units / SUBDIVISIONS).unwrap_or(u32::MAX)
    }

    fn update(&self, f: impl Fn(u64) -> u64) {
        // The closure always returns `Some`, so this cannot fail.
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| Some(f(tat)));
    }

    fn cost(n: u32) -> u64 {
        u64::from(n) * SUBDIVISIONS
    }

    fn tau(&self) -> u64 {
        Self::cost(self.per_minute.get())
    }

    /// Units per minute.
    fn rate(&self) -> u128 {
        u128::from(self.per_minute.get()) * u128::from(SUBDIVISIONS)
    }

    /// `now` in units since `base`, rounded down, saturating.
    fn units_at(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.base).as_nanos();
        let units = nanos.saturating_mul(self.rate()) / NANOS_PER_MINUTE;
        u64::try_from(units).unwrap_or(u64::MAX)
    }

    /// The first instant whose unit count is at least `units` (rounded up). Should that not be
    /// representable, an instant far in the future (or, failing even that, `fallback`).
    fn instant_of(&self, units: u64, fallback: Instant) -> Instant {
        let rate = self.rate();
        let nanos = (u128::from(units) * NANOS_PER_MINUTE).div_ceil(rate);
        u64::try_from(nanos)
            .ok()
            .and_then(|nanos| self.base.checked_add(Duration::from_nanos(nanos)))
            .or_else(|| fallback.checked_add(Duration::from_secs(86_400 * 365 * 30)))
            .unwrap_or(fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Duration = Duration::from_secs(1);

    fn bucket(per_minute: u32, base: Instant) -> TokenBucket {
        TokenBucket::new(NonZeroU32::new(per_minute).unwrap(), base)
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<TokenBucket>();
    }

    #[test]
    fn takes_up_to_capacity_then_refuses_with_the_retry_instant() {
        let t0 = Instant::now();
        let b = bucket(60, t0);
        assert_eq!(b.capacity(), 60);
        assert_eq!(b.available(t0), 60);
        assert_eq!(b.try_take(40, t0), Ok(()));
        assert_eq!(b.try_take(20, t0), Ok(()));
        assert_eq!(b.available(t0), 0);
        // One token per second.
        assert_eq!(b.try_take(1, t0), Err(t0 + SEC));
        assert_eq!(b.try_take(10, t0), Err(t0 + 10 * SEC));
        // Refusals take nothing: exactly at the retry instant the take succeeds.
        assert_eq!(
            b.try_take(10, t0 + 10 * SEC - Duration::from_nanos(1)),
            Err(t0 + 10 * SEC)
        );
        assert_eq!(b.try_take(10, t0 + 10 * SEC), Ok(()));
        assert_eq!(b.try_take(0, t0 + 10 * SEC), Ok(()));
    }

    #[test]
    fn more_than_capacity_never_fits_and_says_when_it_would() {
        let t0 = Instant::now();
        let b = bucket(60, t0);
        assert_eq!(b.try_take(90, t0), Err(t0 + 30 * SEC));
        assert_eq!(b.try_take(90, t0 + 1000 * SEC), Err(t0 + 1030 * SEC));
        assert_eq!(b.available(t0), 60);
    }

    #[test]
    fn refills_linearly_up_to_capacity() {
        let t0 = Instant::now();
        let b = bucket(600, t0);
        b.try_take(600, t0).unwrap();
        assert_eq!(b.available(t0 + Duration::from_millis(99)), 0);
        assert_eq!(b.available(t0 + Duration::from_millis(100)), 1);
        assert_eq!(b.available(t0 + 15 * SEC), 150);
        assert_eq!(b.available(t0 + 30 * SEC), 300);
        assert_eq!(b.available(t0 + 60 * SEC), 600);
        assert_eq!(b.available(t0 + 600 * SEC), 600);
    }

    #[test]
    fn many_small_takes_admit_exactly_the_capacity() {
        // 60 s / 7 is not a whole number of nanoseconds: no drift from rounding.
        let t0 = Instant::now();
        let b = bucket(7, t0);
        for _ in 0..7 {
            b.try_take(1, t0).unwrap();
        }
        assert!(b.try_take(1, t0).is_err());
        let t1 = t0 + 60 * SEC;
        for _ in 0..7 {
            b.try_take(1, t1).unwrap();
        }
        assert!(b.try_take(1, t1).is_err());
    }

    #[test]
    fn refund_makes_room_at_once_but_not_beyond_capacity() {
        let t0 = Instant::now();
        let b = bucket(100, t0);
        b.try_take(100, t0).unwrap();
        b.refund(30, t0);
        assert_eq!(b.available(t0), 30);
        assert_eq!(b.try_take(30, t0), Ok(()));
        b.refund(1_000, t0);
        assert_eq!(b.available(t0), 100);
        assert!(b.try_take(101, t0).is_err());
        // Refunding a full bucket does nothing, even later on.
        b.refund(50, t0 + 100 * SEC);
        assert_eq!(b.available(t0 + 100 * SEC), 100);
    }

    #[test]
    fn charge_creates_debt() {
        let t0 = Instant::now();
        let b = bucket(60, t0);
        b.try_take(60, t0).unwrap();
        b.charge(30, t0);
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.available(t0 + 30 * SEC), 0);
        assert_eq!(b.try_take(1, t0), Err(t0 + 31 * SEC));
        assert_eq!(b.available(t0 + 40 * SEC), 10);
        // Charging a full bucket simply takes.
        let b = bucket(60, t0);
        b.charge(20, t0);
        assert_eq!(b.available(t0), 40);
    }

    #[test]
    fn instants_before_base_count_as_base() {
        let t0 = Instant::now() + 10 * SEC;
        let b = bucket(60, t0);
        b.try_take(60, t0 - 5 * SEC).unwrap();
        assert_eq!(b.try_take(1, t0 - 5 * SEC), Err(t0 + SEC));
    }

    #[test]
    fn extremes_do_not_panic() {
        let t0 = Instant::now();
        let b = bucket(u32::MAX, t0);
        b.charge(u32::MAX, t0);
        b.charge(u32::MAX, t0);
        assert_eq!(b.available(t0), 0);
        assert!(b.try_take(u32::MAX, t0).is_err());
        let far = t0 + Duration::from_secs(86_400 * 365 * 20);
        assert_eq!(b.available(far), u32::MAX);
        b.try_take(u32::MAX, far).unwrap();
        b.refund(u32::MAX, far);
        let b = bucket(1, t0);
        for _ in 0..100 {
            b.charge(u32::MAX, t0);
        }
        assert!(b.try_take(1, far).is_err());
    }

    #[test]
    fn concurrent_takes_never_exceed_capacity() {
        let t0 = Instant::now();
        let b = bucket(10_000, t0);
        let taken = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..5_000 {
                        if b.try_take(1, t0).is_ok() {
                            taken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(taken.into_inner(), 10_000);
        assert_eq!(b.available(t0), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn works_with_the_paused_clock() {
        let t0 = Instant::now();
        let b = bucket(120, t0);
        b.try_take(120, Instant::now()).unwrap();
        let retry = b.try_take(2, Instant::now()).unwrap_err();
        assert_eq!(retry, t0 + SEC);
        tokio::time::advance(SEC).await;
        assert_eq!(b.try_take(2, Instant::now()), Ok(()));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Take(u32),
        Refund(u32),
        Charge(u32),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..2_000).prop_map(Op::Take),
            (0u32..2_000).prop_map(Op::Refund),
            (0u32..2_000).prop_map(Op::Charge),
            (0u64..120_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #[test]
        fn available_never_exceeds_capacity(
            per_minute in 1u32..1_500,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let t0 = Instant::now();
            let b = bucket(per_minute, t0);
            let mut now = t0;
            for op in ops {
                let before = b.available(now);
                match op {
                    Op::Take(n) => match b.try_take(n, now) {
                        Ok(()) => {
                            prop_assert!(n <= before);
                            prop_assert_eq!(b.available(now), before - n);
                        }
                        Err(at) => {
                            prop_assert!(at > now);
                            prop_assert_eq!(b.available(now), before);
                            if n <= per_minute {
                                prop_assert!(b.available(at) >= n);
                            }
                        }
                    },
                    Op::Refund(n) => b.refund(n, now),
                    Op::Charge(n) => b.charge(n, now),
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                }
                prop_assert!(b.available(now) <= per_minute);
            }
        }
    }
}
