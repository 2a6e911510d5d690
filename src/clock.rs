//! The gateway's clock: every time-derived decision (breaker cooldowns, Retry-After, backoff waits,
//! rate-limit windows, deadlines) reads this clock, never `std::time::Instant` directly.
//!
//! In production it is tokio's monotonic clock. Tests can move it forward with [`Clock::advance`]
//! so a 30 s breaker cooldown or a 4 s backoff takes no real time; sleepers wake up when the clock
//! is advanced past their deadline. Network timeouts (connect, first token) stay on real time:
//! they guard real sockets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// A monotonic clock that tests can advance. Cloning is cheap (one `Arc`).
#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Reference point for [`governor::clock::Clock`], which wants a relative time.
    base: Instant,
    /// Virtual time added by `advance`, in nanoseconds. Always 0 in production.
    offset_ns: AtomicU64,
    /// Wakes sleepers when the clock jumps.
    advanced: Notify,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            inner: Arc::new(Inner {
                base: Instant::now(),
                offset_ns: AtomicU64::new(0),
                advanced: Notify::new(),
            }),
        }
    }

    /// The current time.
    #[inline]
    pub fn now(&self) -> Instant {
        let offset = self.inner.offset_ns.load(Ordering::Relaxed);
        Instant::now() + Duration::from_nanos(offset)
    }

    /// Time from this clock's creation to `at` (zero for an earlier instant).
    #[inline]
    pub fn since_start(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.inner.base)
    }

    /// Time since this clock was created (virtual time included).
    #[inline]
    pub fn elapsed(&self) -> Duration {
        self.now().saturating_duration_since(self.inner.base)
    }

    /// Moves the clock forward and wakes every sleeper so it can re-check its deadline.
    pub fn advance(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.inner.offset_ns.fetch_add(ns, Ordering::Relaxed);
        self.inner.advanced.notify_waiters();
    }

    /// Sleeps until `deadline` on this clock: real time passing or `advance` both count.
    pub async fn sleep_until(&self, deadline: Instant) {
        loop {
            // Register before reading the time, so an `advance` in between is not missed.
            let advanced = self.inner.advanced.notified();
            let now = self.now();
            if now >= deadline {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(deadline - now) => {}
                _ = advanced => {}
            }
        }
    }

    /// Runs `fut` until `deadline` on this clock; `None` if the deadline came first.
    pub async fn timeout_at<F: std::future::Future>(
        &self,
        deadline: Instant,
        fut: F,
    ) -> Option<F::Output> {
        tokio::select! {
            out = fut => Some(out),
            () = self.sleep_until(deadline) => None,
        }
    }

    /// Sleeps for `d` on this clock.
    pub async fn sleep(&self, d: Duration) {
        let deadline = self.now() + d;
        self.sleep_until(deadline).await
    }
}

/// governor measures time relative to a reference point; we give it the same virtual clock.
impl governor::clock::Clock for Clock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn advance_moves_now_and_wakes_sleepers() {
        let clock = Clock::new();
        let start = clock.now();
        let c2 = clock.clone();
        let sleeper = tokio::spawn(async move {
            c2.sleep(Duration::from_secs(30)).await;
        });
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(31));
        sleeper
            .await
            .expect("sleeper finishes once the clock passed its deadline");
        assert!(clock.now() - start >= Duration::from_secs(31));
        assert!(governor::clock::Clock::now(&clock) >= Duration::from_secs(31));
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_also_ends_with_real_time() {
        let clock = Clock::new();
        let before = Instant::now();
        clock.sleep(Duration::from_millis(250)).await;
        assert!(Instant::now() - before >= Duration::from_millis(250));
    }
}
