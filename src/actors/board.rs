//! A deployment's published bid: what its `DeploymentActor` last decided about taking requests,
//! readable by every router without a message (design.md §2, "bids must stay cheap").
//!
//! The actor is the only writer of the published [`Admit`] state and statistics. Routers read
//! them with one atomic load per deployment, and take a permit themselves when the actor has
//! published [`Admit::Free`] (breaker closed, no cooldown): that costs an atomic increment of the
//! in-flight count and, when the deployment has an rpm limit, one governor check — governor's
//! GCRA is lock-free and made to be shared. Everything that needs the actor's judgement (a
//! half-open probe, a cooldown or open period whose end has passed, an unknown end) goes through
//! the `Reserve` message, which re-derives the state from timestamps and publishes the result.
//! Outcomes always go to the actor.
//!
//! The price of not asking: a router that read `Free` just before the actor opened the breaker
//! sends that one request to the failing deployment. The actor publishes as soon as it decides,
//! so that window is one message long.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::{Deployment, Prices};
use crate::policy::scoring::{Bid, Decline};
use crate::policy::token_bucket::TokenBucket;

type Limiter = RateLimiter<NotKeyed, InMemoryState, Clock, NoOpMiddleware<Duration>>;

/// What the actor decided about new requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admit {
    /// Take a permit without asking (subject to the concurrency and rpm limits).
    Free,
    /// Ask the actor (`Reserve`): half-open, or a state only the actor can move on.
    Ask,
    /// Refuse. When the decline's end has passed, routers ask the actor instead.
    Declined(Decline),
}

/// The published part, replaced as a whole by the actor.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub admit: Admit,
    /// EWMA of whole-attempt latency, microseconds.
    pub latency_us: Option<f64>,
    /// EWMA of time to first token, microseconds.
    pub ttft_us: Option<f64>,
    /// p95 of whole-attempt latency and of TTFT, microseconds (for hedging).
    pub latency_p95_us: Option<u64>,
    pub ttft_p95_us: Option<u64>,
    /// EWMA (0..=1) of the share of recent attempts refused with 429.
    pub throttle: f64,
    /// Share of the provider's own rate limit left, from its `x-ratelimit-*` headers.
    pub provider_headroom: Option<f64>,
}

impl Published {
    /// What a fresh deployment publishes: free, nothing known.
    pub fn fresh() -> Published {
        Published {
            admit: Admit::Free,
            latency_us: None,
            ttft_us: None,
            latency_p95_us: None,
            ttft_p95_us: None,
            throttle: 0.0,
            provider_headroom: None,
        }
    }
}

/// Requests of one model group waiting for a deployment at its concurrency limit.
#[derive(Debug, Default)]
pub struct GroupQueue {
    pub waiting: AtomicU32,
    /// Woken (one waiter) when a slot of one of the group's deployments is released.
    pub slot_freed: Notify,
}

/// How a router may get a permit from a deployment that bids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// [`Board::try_take`], no message.
    Direct,
    /// The `Reserve` message.
    Actor,
}

pub struct Board {
    published: ArcSwap<Published>,
    in_flight: AtomicU32,
    /// Outcomes reported by routers, and those the actor has handled (or that were dropped).
    outcomes_reported: AtomicU64,
    outcomes_settled: AtomicU64,
    limiter: Option<Limiter>,
    rpm: Option<NonZeroU32>,
    /// Requests taken in the current minute, for headroom: `(minute << 32) | count`.
    minute_count: AtomicU64,
    tpm: Option<TokenBucket>,
    /// The concurrency limit in force (`u32::MAX` = none); the actor moves it when adaptive.
    limit: AtomicU32,
    weight: u32,
    order: u32,
    prices: Prices,
    queue: Arc<GroupQueue>,
    clock: Clock,
}

impl Board {
    /// A fresh deployment admits freely until its actor says otherwise.
    pub fn new(dep: &Deployment, queue: Arc<GroupQueue>, clock: Clock) -> Board {
        let mut b = Board::with_limits(dep.rpm, dep.max_concurrency, dep.weight, clock);
        b.order = dep.order;
        b.prices = dep.prices;
        b.queue = queue;
        b.tpm = dep.tpm.map(|t| TokenBucket::new(t, b.clock.now()));
        if let Some((min, max)) = dep.adaptive {
            // Start in the middle: room to grow, room to shrink.
            b.limit
                .store(min.max(max / 2).max(1).min(max), Ordering::Relaxed);
        }
        b
    }

    fn with_limits(
        rpm: Option<NonZeroU32>,
        max_concurrency: Option<u32>,
        weight: u32,
        clock: Clock,
    ) -> Board {
        Board {
            published: ArcSwap::from_pointee(Published::fresh()),
            in_flight: AtomicU32::new(0),
            outcomes_reported: AtomicU64::new(0),
            outcomes_settled: AtomicU64::new(0),
            limiter: rpm
                .map(|rpm| RateLimiter::direct_with_clock(Quota::per_minute(rpm), clock.clone())),
            rpm,
            minute_count: AtomicU64::new(0),
            tpm: None,
            limit: AtomicU32::new(max_concurrency.unwrap_or(u32::MAX)),
            weight,
            order: 1,
            prices: Prices::default(),
            queue: Arc::new(GroupQueue::default()),
            clock,
        }
    }

    /// Actor only.
    pub fn publish(&self, p: Published) {
        self.published.store(Arc::new(p));
    }

    pub fn published(&self) -> arc_swap::Guard<Arc<Published>> {
        self.published.load()
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The concurrency limit in force, if any.
    pub fn limit(&self) -> Option<u32> {
        let l = self.limit.load(Ordering::Relaxed);
        (l != u32::MAX).then_some(l)
    }

    /// Actor only: the adaptive limit moved. Waiters may fit now.
    pub fn set_limit(&self, limit: u32) {
        let before = self.limit.swap(limit.max(1), Ordering::AcqRel);
        if limit > before {
            self.wake_waiter();
        }
    }

    /// The bid a router reads at `now`, and how to get a permit if it is not a decline.
    pub fn bid(&self, deployment: usize, now: Instant) -> (Bid, Path) {
        let p = self.published.load();
        let in_flight = self.in_flight();
        let (decline, path) = match p.admit {
            Admit::Free => (self.at_capacity(in_flight), Path::Direct),
            Admit::Ask => (self.at_capacity(in_flight), Path::Actor),
            Admit::Declined(d) => match d.until() {
                Some(until) if now < until => (Some(d), Path::Actor),
                // Over, or of unknown end: only the actor can say what comes next.
                _ => (self.at_capacity(in_flight), Path::Actor),
            },
        };
        let bid = Bid {
            deployment,
            decline,
            weight: self.weight,
            order: self.order,
            in_flight,
            limit: self.limit(),
            latency_us: p.latency_us,
            ttft_us: p.ttft_us,
            throttle: p.throttle,
            headroom: self.headroom(p.provider_headroom, now),
            prices: self.prices,
        };
        (bid, path)
    }

    /// The tightest known share of a rate limit left: the provider's, our rpm, our tpm.
    fn headroom(&self, provider: Option<f64>, now: Instant) -> Option<f64> {
        let rpm = self.rpm.map(|rpm| {
            let (minute, count) = self.minute_now(now);
            let used = if self.minute_count.load(Ordering::Relaxed) >> 32 == minute {
                count
            } else {
                0
            };
            1.0 - f64::from(used.min(rpm.get())) / f64::from(rpm.get())
        });
        let tpm = self
            .tpm
            .as_ref()
            .map(|b| f64::from(b.available(now)) / f64::from(b.capacity().max(1)));
        [provider, rpm, tpm]
            .into_iter()
            .flatten()
            .map(|h| h.clamp(0.0, 1.0))
            .min_by(f64::total_cmp)
    }

    /// The current minute's index and the count recorded for it (0 if another minute's).
    fn minute_now(&self, now: Instant) -> (u64, u32) {
        let minute = self.clock.since_start(now).as_secs() / 60;
        let packed = self.minute_count.load(Ordering::Relaxed);
        let count = if packed >> 32 == minute {
            (packed & 0xffff_ffff) as u32
        } else {
            0
        };
        (minute, count)
    }

    fn count_request(&self, now: Instant) {
        if self.rpm.is_none() {
            return;
        }
        let minute = self.clock.since_start(now).as_secs() / 60;
        let _ = self
            .minute_count
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |packed| {
                Some(if packed >> 32 == minute {
                    packed.saturating_add(1)
                } else {
                    (minute << 32) | 1
                })
            });
    }

    fn at_capacity(&self, in_flight: u32) -> Option<Decline> {
        (in_flight >= self.limit.load(Ordering::Relaxed)).then_some(Decline::AtCapacity)
    }

    /// Takes one slot against the concurrency, rpm and tpm limits (`tokens` is the request's
    /// estimate). On `Ok` the caller owns one unit of `in_flight` and `tokens` of the tpm
    /// bucket, and gives them back with [`release`](Self::release) and
    /// [`settle_tokens`](Self::settle_tokens).
    pub fn try_take(&self, tokens: u32) -> Result<(), Decline> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == u32::MAX {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
        } else {
            let taken = self
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < limit).then_some(n + 1)
                });
            if taken.is_err() {
                return Err(Decline::AtCapacity);
            }
        }
        let now = self.clock.now();
        if let Some(limiter) = &self.limiter {
            if let Err(not_until) = limiter.check() {
                self.release();
                let wait = not_until.wait_time_from(governor::clock::Clock::now(&self.clock));
                return Err(Decline::RateLimited { until: now + wait });
            }
        }
        if let Some(tpm) = &self.tpm {
            if let Err(until) = tpm.try_take(tokens, now) {
                // The rpm cell is spent; a request refused for tokens is rare enough.
                self.release();
                return Err(Decline::RateLimited { until });
            }
        }
        self.count_request(now);
        Ok(())
    }

    /// Corrects a tpm reservation of `reserved` tokens to the `used` ones (`None`: unknown,
    /// e.g. a failed attempt, which gives the reservation back).
    pub fn settle_tokens(&self, reserved: u32, used: Option<u64>) {
        let Some(tpm) = &self.tpm else {
            return;
        };
        let now = self.clock.now();
        let used = used.map_or(0, |u| u32::try_from(u).unwrap_or(u32::MAX));
        if used < reserved {
            tpm.refund(reserved - used, now);
        } else if used > reserved {
            tpm.charge(used - reserved, now);
        }
    }

    pub fn has_tpm(&self) -> bool {
        self.tpm.is_some()
    }

    pub fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.wake_waiter();
    }

    fn wake_waiter(&self) {
        if self.queue.waiting.load(Ordering::Acquire) > 0 {
            self.queue.slot_freed.notify_one();
        }
    }

    /// A router reported an outcome (it may sit in the router's outbox for a while).
    pub fn outcome_reported(&self) {
        self.outcomes_reported.fetch_add(1, Ordering::AcqRel);
    }

    /// The actor handled `n` outcomes, or they were dropped on the way.
    pub fn outcomes_settled(&self, n: u64) {
        self.outcomes_settled.fetch_add(n, Ordering::AcqRel);
    }

    /// Outcomes reported but not yet handled by the actor (tests wait for 0).
    pub fn outcomes_pending(&self) -> u64 {
        let settled = self.outcomes_settled.load(Ordering::Acquire);
        self.outcomes_reported
            .load(Ordering::Acquire)
            .saturating_sub(settled)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn board(rpm: Option<u32>, max_concurrency: Option<u32>) -> Board {
        Board::with_limits(
            rpm.and_then(NonZeroU32::new),
            max_concurrency,
            1,
            Clock::new(),
        )
    }

    fn published(admit: Admit) -> Published {
        Published {
            admit,
            ..Published::fresh()
        }
    }

    #[test]
    fn a_fresh_board_admits_directly() {
        let b = board(None, None);
        let (bid, path) = b.bid(7, b.clock.now());
        assert_eq!((bid.deployment, bid.decline, path), (7, None, Path::Direct));
        b.try_take(0).unwrap();
        b.try_take(0).unwrap();
        assert_eq!(b.in_flight(), 2);
        b.release();
        assert_eq!(b.in_flight(), 1);
    }

    #[test]
    fn the_concurrency_limit_is_enforced_by_take_and_shown_in_the_bid() {
        let b = board(None, Some(1));
        b.try_take(0).unwrap();
        assert_eq!(b.bid(0, b.clock.now()).0.decline, Some(Decline::AtCapacity));
        assert_eq!(b.try_take(0), Err(Decline::AtCapacity));
        assert_eq!(b.in_flight(), 1);
        b.release();
        b.try_take(0).unwrap();
    }

    #[test]
    fn the_rpm_limit_refuses_with_its_end_and_gives_the_slot_back() {
        let b = board(Some(1), None);
        let now = b.clock.now();
        b.try_take(0).unwrap();
        match b.try_take(0) {
            Err(Decline::RateLimited { until }) => {
                assert!(until > now && until <= now + Duration::from_secs(61))
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        assert_eq!(b.in_flight(), 1, "the refused take released its slot");
        b.clock.advance(Duration::from_secs(60));
        b.try_take(0).unwrap();
    }

    #[test]
    fn a_decline_holds_until_its_end_then_routers_ask_the_actor() {
        let b = board(None, None);
        let now = b.clock.now();
        let until = now + Duration::from_secs(10);
        let cooling = Decline::CoolingDown { until, long: false };
        b.publish(published(Admit::Declined(cooling)));
        assert_eq!(b.bid(0, now).0.decline, Some(cooling));
        let (bid, path) = b.bid(0, until);
        assert_eq!((bid.decline, path), (None, Path::Actor));
    }

    #[test]
    fn a_decline_of_unknown_end_and_half_open_go_through_the_actor() {
        let b = board(None, None);
        let now = b.clock.now();
        b.publish(published(Admit::Declined(Decline::BreakerOpen {
            until: None,
        })));
        assert_eq!(b.bid(0, now), (b.bid(0, now).0, Path::Actor));
        assert_eq!(b.bid(0, now).0.decline, None);
        b.publish(published(Admit::Ask));
        assert_eq!(b.bid(0, now).1, Path::Actor);
    }

    #[test]
    fn tpm_reserves_the_estimate_and_settles_to_the_real_usage() {
        let mut b = board(None, None);
        b.tpm = Some(TokenBucket::new(
            NonZeroU32::new(1000).unwrap(),
            b.clock.now(),
        ));
        // 600 estimated: the next 600 do not fit.
        b.try_take(600).unwrap();
        assert!(matches!(b.try_take(600), Err(Decline::RateLimited { .. })));
        assert_eq!(b.in_flight(), 1, "the refused take released its slot");
        // Only 100 were used: 500 come back at once.
        b.settle_tokens(600, Some(100));
        b.try_take(600).unwrap();
        // A failed attempt gives its whole reservation back: 900 free, 300 after the take.
        b.settle_tokens(600, None);
        b.try_take(600).unwrap();
        let h = b.bid(0, b.clock.now()).0.headroom.unwrap();
        assert!((0.29..=0.31).contains(&h), "tpm headroom {h}");
    }

    #[test]
    fn the_limit_in_force_moves_with_the_actor_and_rpm_use_shows_as_headroom() {
        let b = board(Some(10), Some(4));
        assert_eq!(b.limit(), Some(4));
        b.set_limit(1);
        b.try_take(0).unwrap();
        assert_eq!(b.try_take(0), Err(Decline::AtCapacity));
        assert_eq!(b.bid(0, b.clock.now()).0.decline, Some(Decline::AtCapacity));
        b.set_limit(2);
        b.try_take(0).unwrap();
        // 2 of 10 requests this minute.
        let h = b.bid(0, b.clock.now()).0.headroom.unwrap();
        assert!((h - 0.8).abs() < 1e-9, "rpm headroom {h}");
        b.clock.advance(Duration::from_secs(60));
        assert_eq!(b.bid(0, b.clock.now()).0.headroom, Some(1.0));
    }
}
