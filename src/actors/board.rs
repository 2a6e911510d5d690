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

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::config::Deployment;
use crate::policy::scoring::{Bid, Decline};

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
    max_concurrency: Option<u32>,
    weight: u32,
    clock: Clock,
}

impl Board {
    /// A fresh deployment admits freely until its actor says otherwise.
    pub fn new(dep: &Deployment, clock: Clock) -> Board {
        Board::with_limits(dep.rpm, dep.max_concurrency, dep.weight, clock)
    }

    fn with_limits(
        rpm: Option<std::num::NonZeroU32>,
        max_concurrency: Option<u32>,
        weight: u32,
        clock: Clock,
    ) -> Board {
        Board {
            published: ArcSwap::from_pointee(Published {
                admit: Admit::Free,
                latency_us: None,
                ttft_us: None,
            }),
            in_flight: AtomicU32::new(0),
            outcomes_reported: AtomicU64::new(0),
            outcomes_settled: AtomicU64::new(0),
            limiter: rpm
                .map(|rpm| RateLimiter::direct_with_clock(Quota::per_minute(rpm), clock.clone())),
            max_concurrency,
            weight,
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
            in_flight,
            latency_us: p.latency_us,
            ttft_us: p.ttft_us,
        };
        (bid, path)
    }

    fn at_capacity(&self, in_flight: u32) -> Option<Decline> {
        self.max_concurrency
            .is_some_and(|max| in_flight >= max)
            .then_some(Decline::AtCapacity)
    }

    /// Takes one slot against the concurrency and rpm limits. On `Ok` the caller owns one unit
    /// of `in_flight` and must give it back with [`release`](Self::release).
    pub fn try_take(&self) -> Result<(), Decline> {
        match self.max_concurrency {
            Some(max) => {
                let taken = self
                    .in_flight
                    .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                        (n < max).then_some(n + 1)
                    });
                if taken.is_err() {
                    return Err(Decline::AtCapacity);
                }
            }
            None => {
                self.in_flight.fetch_add(1, Ordering::AcqRel);
            }
        }
        if let Some(limiter) = &self.limiter {
            if let Err(not_until) = limiter.check() {
                self.release();
                let wait = not_until.wait_time_from(governor::clock::Clock::now(&self.clock));
                return Err(Decline::RateLimited {
                    until: self.clock.now() + wait,
                });
            }
        }
        Ok(())
    }

    pub fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
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
            latency_us: None,
            ttft_us: None,
        }
    }

    #[test]
    fn a_fresh_board_admits_directly() {
        let b = board(None, None);
        let (bid, path) = b.bid(7, b.clock.now());
        assert_eq!((bid.deployment, bid.decline, path), (7, None, Path::Direct));
        b.try_take().unwrap();
        b.try_take().unwrap();
        assert_eq!(b.in_flight(), 2);
        b.release();
        assert_eq!(b.in_flight(), 1);
    }

    #[test]
    fn the_concurrency_limit_is_enforced_by_take_and_shown_in_the_bid() {
        let b = board(None, Some(1));
        b.try_take().unwrap();
        assert_eq!(b.bid(0, b.clock.now()).0.decline, Some(Decline::AtCapacity));
        assert_eq!(b.try_take(), Err(Decline::AtCapacity));
        assert_eq!(b.in_flight(), 1);
        b.release();
        b.try_take().unwrap();
    }

    #[test]
    fn the_rpm_limit_refuses_with_its_end_and_gives_the_slot_back() {
        let b = board(Some(1), None);
        let now = b.clock.now();
        b.try_take().unwrap();
        match b.try_take() {
            Err(Decline::RateLimited { until }) => {
                assert!(until > now && until <= now + Duration::from_secs(61))
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        assert_eq!(b.in_flight(), 1, "the refused take released its slot");
        b.clock.advance(Duration::from_secs(60));
        b.try_take().unwrap();
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
}
