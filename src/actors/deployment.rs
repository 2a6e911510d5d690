//! `DeploymentActor`: the single owner of one deployment's state — its circuit breaker, cooldown,
//! latency/TTFT statistics, and the [`Board`] on which it publishes its bid (with the rpm limiter
//! (governor) and in-flight count routers take permits from). It answers `Reserve` (take a permit
//! when the published bid says "ask me"), `ReportOutcomes` (how attempts went) and
//! `GetSnapshot` (for `/health/ready`). Every answer is computed from the state it holds, O(1),
//! with no I/O: upstream calls happen on the HTTP worker threads, never here.
//!
//! Time-driven transitions (breaker open -> half-open, cooldown over) are derived from timestamps
//! when a message arrives; a published decline carries its end, after which routers ask again.
//! A one-second timer republishes and refreshes the breaker gauge as a backstop.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::config::Deployment;
use crate::error::ErrorClass;
use crate::metrics::Metrics;
use crate::policy::aimd::Aimd;
use crate::policy::breaker::{Admission, Breaker, BreakerState, ProbeTicket};
use crate::policy::headroom::Headroom;
use crate::policy::scoring::Decline;
use crate::policy::stats::LatencyStats;

use super::board::{Admit, Board, Published};

/// Latency statistics are republished at least every this many outcomes (state changes are
/// published at once).
const STATS_PUBLISH_EVERY: u32 = 32;

/// Mailbox bound. Outcomes are sent with `try_send`; when full they are dropped and counted,
/// so a stuck actor cannot make request handling wait.
pub const MAILBOX_CAPACITY: usize = 4096;

/// Upstream Retry-After values are clamped to this range before cooling a deployment.
pub const RETRY_AFTER_MIN: Duration = Duration::from_secs(1);
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);

/// How long a rate-limited deployment cools: the upstream's Retry-After clamped to 1–300 s, else
/// `default`.
pub fn rate_limit_cooldown(retry_after: Option<Duration>, default: Duration) -> Duration {
    match retry_after {
        Some(ra) => ra.clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX),
        None => default,
    }
}

pub struct DeploymentActor {
    dep: Arc<Deployment>,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Published bid, in-flight count and rpm limiter; survives restarts and respawns.
    board: Arc<Board>,
    /// What was last published, and outcomes since.
    published: Admit,
    unpublished_outcomes: u32,
    breaker: Breaker,
    breaker_state: BreakerState,
    /// After an upstream 429 (short) or a quota/auth failure (long).
    cooldown: Option<(Instant, bool)>,
    stats: LatencyStats,
    successes: u64,
    failures: u64,
    /// EWMA (0..=1) of the share of attempts refused with 429, for the latency strategy.
    throttle: f64,
    /// The provider's last rate-limit headers: share left, and until when it is exhausted.
    provider_headroom: Option<(f64, Instant)>,
    provider_exhausted_until: Option<Instant>,
    /// Adaptive concurrency limit, when enabled for this deployment.
    aimd: Option<Aimd>,
}

/// Weight of one outcome in the throttle EWMA.
const THROTTLE_ALPHA: f64 = 0.2;
/// How long provider headroom without a reset time stays valid.
const HEADROOM_TTL: Duration = Duration::from_secs(60);

impl DeploymentActor {
    pub fn new(
        dep: Arc<Deployment>,
        clock: Clock,
        metrics: Arc<Metrics>,
        board: Arc<Board>,
    ) -> Self {
        let breaker = Breaker::new(dep.breaker);
        let aimd = dep
            .adaptive
            .and_then(|(min, max)| board.limit().map(|initial| Aimd::new(min, max, initial)));
        DeploymentActor {
            dep,
            clock,
            metrics,
            board,
            published: Admit::Free,
            unpublished_outcomes: 0,
            breaker,
            breaker_state: BreakerState::Closed,
            cooldown: None,
            stats: LatencyStats::default(),
            successes: 0,
            failures: 0,
            throttle: 0.0,
            provider_headroom: None,
            provider_exhausted_until: None,
            aimd,
        }
    }

    fn dep_metrics(&self) -> &crate::metrics::DeploymentMetrics {
        &self.metrics.deployments[self.dep.index]
    }

    fn sync_breaker_gauge(&mut self, now: Instant) {
        let state = self.breaker.state(now);
        if state != self.breaker_state {
            self.breaker_state = state;
            self.dep_metrics().breaker_state.set(state.gauge());
            tracing::info!(deployment = %self.dep.id, state = state.as_str(), "circuit breaker");
        }
    }

    /// Why this deployment would refuse a request now, if it would.
    fn decline(&mut self, now: Instant) -> Option<Decline> {
        if let Some((until, long)) = self.cooldown {
            if now < until {
                return Some(Decline::CoolingDown { until, long });
            }
            self.cooldown = None;
        }
        if !self.breaker.would_admit(now) {
            // Routers ask again when a probe is due or the ejection ends, whichever is first.
            let until = match (
                self.breaker.open_until(now),
                self.breaker.next_probe_at(now),
            ) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            return Some(Decline::BreakerOpen { until });
        }
        if let Some(until) = self.provider_exhausted_until {
            if now < until {
                // The provider said it has nothing left until then: move away before a 429.
                return Some(Decline::RateLimited { until });
            }
            self.provider_exhausted_until = None;
        }
        None
    }

    /// Publishes the bid routers read: at once when the admission state changed (`force` for
    /// statistics too), otherwise the statistics every `STATS_PUBLISH_EVERY` outcomes.
    fn publish(&mut self, now: Instant, force: bool) {
        let admit = match self.decline(now) {
            Some(d) => Admit::Declined(d),
            None if self.breaker.state(now) == BreakerState::Closed => Admit::Free,
            None => Admit::Ask,
        };
        self.sync_breaker_gauge(now);
        if !force && admit == self.published && self.unpublished_outcomes < STATS_PUBLISH_EVERY {
            return;
        }
        self.published = admit;
        self.unpublished_outcomes = 0;
        let provider_headroom = self
            .provider_headroom
            .filter(|&(_, until)| now < until)
            .map(|(h, _)| h);
        self.board.publish(Published {
            admit,
            latency_us: self.stats.latency.get(),
            ttft_us: self.stats.ttft.get(),
            latency_p95_us: self.stats.latency_quantile_us(0.95),
            ttft_p95_us: self.stats.ttft_quantile_us(0.95),
            throttle: self.throttle,
            provider_headroom,
        });
    }

    /// On `Ok` the caller owns one unit of the board's in-flight count.
    fn reserve(&mut self, tokens: u32) -> Result<Grant, Decline> {
        let now = self.clock.now();
        let result = self.try_reserve(now, tokens);
        self.publish(now, false);
        result
    }

    fn try_reserve(&mut self, now: Instant, tokens: u32) -> Result<Grant, Decline> {
        if let Some(d) = self.decline(now) {
            return Err(d);
        }
        self.board.try_take(tokens)?;
        match self.breaker.admit(now) {
            Admission::Admit => Ok(Grant { probe: None }),
            Admission::Probe(t) => Ok(Grant { probe: Some(t) }),
            Admission::Reject { until } => {
                // `decline` said it would admit; only a race with time can land here.
                self.board.release();
                self.board.settle_tokens(tokens, None);
                Err(Decline::BreakerOpen { until })
            }
        }
    }

    /// Applies one outcome; the caller publishes.
    fn outcome(&mut self, now: Instant, o: ReportOutcome) {
        if let Some(h) = &o.headroom {
            self.note_headroom(now, h);
        }
        let throttled = matches!(o.outcome, Outcome::Failure(ErrorClass::RateLimited));
        if !matches!(o.outcome, Outcome::Cancelled | Outcome::ProbeCommitted) {
            let x = if throttled { 1.0 } else { 0.0 };
            self.throttle += THROTTLE_ALPHA * (x - self.throttle);
        }
        if let Some(aimd) = &mut self.aimd {
            match o.outcome {
                Outcome::Success => aimd.on_success(),
                Outcome::Failure(ErrorClass::RateLimited | ErrorClass::Timeout) => {
                    aimd.on_overload(now)
                }
                _ => {}
            }
            let limit = aimd.limit();
            self.board.set_limit(limit);
            self.metrics.deployments[self.dep.index]
                .concurrency_limit
                .set(f64::from(limit));
        }
        match o.outcome {
            Outcome::Success => {
                self.successes += 1;
                self.stats.observe(o.latency, o.ttft);
                self.breaker.on_success(now, o.probe);
            }
            Outcome::Failure(class) => {
                self.failures += 1;
                if class.is_breaker_failure() {
                    self.breaker.on_failure(now, o.probe);
                } else if class == ErrorClass::RateLimited {
                    let d = rate_limit_cooldown(o.retry_after, self.dep.rate_limit_cooldown);
                    if !d.is_zero() {
                        self.cool(now + d, false);
                    }
                    self.breaker.on_neutral(now, o.probe);
                } else if class.is_long_cooldown() {
                    tracing::warn!(
                        deployment = %self.dep.id,
                        class = class.as_str(),
                        cooldown_s = self.dep.long_cooldown.as_secs(),
                        "deployment disabled: the upstream refused our credentials or quota"
                    );
                    self.dep_metrics().alert(class);
                    self.cool(now + self.dep.long_cooldown, true);
                    self.breaker.on_neutral(now, o.probe);
                } else {
                    // Context window, content policy, bad request: the upstream is healthy.
                    self.breaker.on_success(now, o.probe);
                }
            }
            Outcome::Cancelled => self.breaker.on_neutral(now, o.probe),
            Outcome::ProbeCommitted => {
                self.breaker.on_success(now, o.probe);
            }
        }
        self.unpublished_outcomes += 1;
    }

    /// Keeps the provider's reported headroom; when it says nothing is left, decline until its
    /// reset.
    fn note_headroom(&mut self, now: Instant, h: &Headroom) {
        if let Some(f) = h.fraction() {
            let valid = h
                .reset_requests
                .into_iter()
                .chain(h.reset_tokens)
                .max()
                .unwrap_or(HEADROOM_TTL)
                .min(HEADROOM_TTL);
            self.provider_headroom = Some((f, now + valid.max(Duration::from_secs(1))));
            self.dep_metrics().headroom.set(f);
        }
        if let Some(wait) = h.exhausted_until() {
            let until = now + wait.clamp(Duration::from_millis(100), RETRY_AFTER_MAX);
            self.provider_exhausted_until = Some(until);
            self.dep_metrics()
                .decline(Decline::RateLimited { until }.as_str());
        }
    }

    fn cool(&mut self, until: Instant, long: bool) {
        let later = self.cooldown.is_none_or(|(u, _)| until > u);
        if later {
            self.cooldown = Some((until, long));
        }
    }

    fn snapshot(&mut self) -> Snapshot {
        let now = self.clock.now();
        let decline = self.decline(now);
        let breaker = self.breaker.state(now);
        self.sync_breaker_gauge(now);
        let ms_until =
            |t: Option<Instant>| t.map(|t| t.saturating_duration_since(now).as_millis() as u64);
        Snapshot {
            id: self.dep.id.to_string(),
            model: self.dep.model.to_string(),
            provider: self.dep.wire.name,
            available: decline.is_none(),
            decline: decline.map(|d| d.as_str()),
            breaker: breaker.as_str(),
            consecutive_failures: self.breaker.consecutive_failures(),
            ejections: self.breaker.ejections(),
            retry_in_ms: ms_until(decline.and_then(|d| d.until())),
            in_flight: self.board.in_flight(),
            concurrency_limit: self.board.limit(),
            throttle: self.throttle,
            provider_headroom: self.provider_headroom.map(|(h, _)| h),
            successes: self.successes,
            failures: self.failures,
            latency_ewma_ms: self.stats.latency.get().map(|us| us / 1000.0),
            ttft_ewma_ms: self.stats.ttft.get().map(|us| us / 1000.0),
            latency_p50_ms: self
                .stats
                .latency_quantile_us(0.5)
                .map(|us| us as f64 / 1000.0),
            latency_p99_ms: self
                .stats
                .latency_quantile_us(0.99)
                .map(|us| us as f64 / 1000.0),
            ttft_p99_ms: self
                .stats
                .ttft_quantile_us(0.99)
                .map(|us| us as f64 / 1000.0),
        }
    }
}

impl Actor for DeploymentActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        let now = self.clock.now();
        self.publish(now, true);
        // Backstop only: every message already derives the breaker state from timestamps, and
        // published declines carry their end.
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            let now = act.clock.now();
            act.publish(now, true);
        });
    }
}

impl Supervised for DeploymentActor {
    /// A deliberate stop means "my state is suspect": start clean, keep the limiter so a restart
    /// is not a way around the rpm limit.
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(deployment = %self.dep.id, "deployment actor restarting");
        self.breaker = Breaker::new(self.dep.breaker);
        self.breaker_state = BreakerState::Closed;
        self.dep_metrics()
            .breaker_state
            .set(BreakerState::Closed.gauge());
        self.cooldown = None;
        self.stats = LatencyStats::default();
        let now = self.clock.now();
        self.publish(now, true);
    }
}

// === messages ===

/// Take a permit for one attempt (counts against rpm, concurrency and, when half-open, probes).
/// Routers send it only when the published bid says to ask (`board::Path::Actor`).
#[derive(Message)]
#[rtype(result = "Result<Grant, Decline>")]
pub struct Reserve {
    /// Estimated tokens of the request, for the tpm limit.
    pub tokens: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct Grant {
    /// Set when the attempt is a half-open probe.
    pub probe: Option<ProbeTicket>,
}

impl Handler<Reserve> for DeploymentActor {
    type Result = Result<Grant, Decline>;
    fn handle(&mut self, msg: Reserve, _: &mut Context<Self>) -> Self::Result {
        self.reserve(msg.tokens)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(ErrorClass),
    /// The client left or the attempt was abandoned: no verdict on the deployment.
    Cancelled,
    /// A streamed half-open probe reached its first token: the deployment is healthy again.
    /// Sent at the commit point so a long stream cannot outlive its probe deadline; the
    /// stream's own outcome follows later as an ordinary report, without the ticket.
    ProbeCommitted,
}

/// How an attempt went.
#[derive(Debug)]
pub struct ReportOutcome {
    pub outcome: Outcome,
    pub probe: Option<ProbeTicket>,
    pub latency: Duration,
    pub ttft: Option<Duration>,
    pub retry_after: Option<Duration>,
    /// The provider's rate-limit headers on this attempt's response.
    pub headroom: Option<Headroom>,
}

/// Outcomes of attempts, in the order one router saw them. Fire and forget (`try_send`); a
/// router batches its outcomes (see `router::Outbox`). A batch that is never handled (a full
/// mailbox, or an actor that panicked with it queued) counts itself settled when dropped, so
/// the board's pending count cannot stick.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReportOutcomes {
    reports: Vec<ReportOutcome>,
    board: Arc<Board>,
}

impl ReportOutcomes {
    pub fn new(reports: Vec<ReportOutcome>, board: Arc<Board>) -> Self {
        ReportOutcomes { reports, board }
    }
}

impl Drop for ReportOutcomes {
    fn drop(&mut self) {
        if !self.reports.is_empty() {
            self.board.outcomes_settled(self.reports.len() as u64);
        }
    }
}

impl Handler<ReportOutcomes> for DeploymentActor {
    type Result = ();
    fn handle(&mut self, mut msg: ReportOutcomes, _: &mut Context<Self>) {
        let now = self.clock.now();
        let reports = std::mem::take(&mut msg.reports);
        let n = reports.len() as u64;
        for o in reports {
            self.outcome(now, o);
        }
        self.publish(now, false);
        self.board.outcomes_settled(n);
    }
}

/// The deployment's state, for `/health/ready`.
#[derive(Message)]
#[rtype(result = "Snapshot")]
pub struct GetSnapshot;

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub id: String,
    pub model: String,
    pub provider: &'static str,
    pub available: bool,
    pub decline: Option<&'static str>,
    pub breaker: &'static str,
    pub consecutive_failures: u32,
    /// Consecutive ejections (each lasts longer).
    pub ejections: u32,
    pub retry_in_ms: Option<u64>,
    pub in_flight: u32,
    pub concurrency_limit: Option<u32>,
    pub throttle: f64,
    pub provider_headroom: Option<f64>,
    pub successes: u64,
    pub failures: u64,
    pub latency_ewma_ms: Option<f64>,
    pub ttft_ewma_ms: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
}

impl Snapshot {
    /// For a deployment whose actor did not answer.
    pub fn unavailable(dep: &Deployment) -> Snapshot {
        Snapshot {
            id: dep.id.to_string(),
            model: dep.model.to_string(),
            provider: dep.wire.name,
            available: false,
            decline: Some("unavailable"),
            breaker: "unknown",
            consecutive_failures: 0,
            ejections: 0,
            retry_in_ms: None,
            in_flight: 0,
            concurrency_limit: None,
            throttle: 0.0,
            provider_headroom: None,
            successes: 0,
            failures: 0,
            latency_ewma_ms: None,
            ttft_ewma_ms: None,
            latency_p50_ms: None,
            latency_p99_ms: None,
            ttft_p99_ms: None,
        }
    }
}

impl Handler<GetSnapshot> for DeploymentActor {
    type Result = MessageResult<GetSnapshot>;
    fn handle(&mut self, _: GetSnapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.snapshot())
    }
}

/// Test hook: make the actor stop (the supervisor restarts it) or panic (its mailbox closes and
/// the registry respawns it). Reachable only from Rust, never from HTTP.
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash {
    pub panic: bool,
}

impl Handler<Crash> for DeploymentActor {
    type Result = ();
    fn handle(&mut self, msg: Crash, ctx: &mut Context<Self>) {
        if msg.panic {
            #[expect(clippy::panic, reason = "test hook that simulates a bug in the actor")]
            {
                panic!(
                    "deployment actor {} crashed on request (test hook)",
                    self.dep.id
                );
            }
        }
        ctx.stop();
    }
}
