//! The circuit breaker of one deployment, as a pure state machine: no I/O, no actix, no timers.
//! Every method takes `now`, and every transition that depends on time is derived from
//! timestamps when the next call arrives, so a busy actor whose timers fire late still sees the
//! right state.
//!
//! - **Closed**: requests flow. Each breaker failure adds to a run of consecutive failures; a
//!   success resets it. When the run reaches `consecutive_failures`, the breaker opens.
//! - **Open**: nothing is admitted until `cooldown` has passed since it opened.
//! - **Half-open**: at most `half_open_probes` requests are admitted at once, each a probe with a
//!   deadline of `probe_timeout`. The first probe to succeed closes the breaker; a probe that fails
//!   (or whose deadline passes without an answer, so a lost probe cannot wedge the breaker)
//!   opens it again for another cooldown. Outcomes of requests admitted before the breaker opened
//!   are not probes and do not move it.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub cooldown: Duration,
    pub half_open_probes: u32,
    pub probe_timeout: Duration,
}

/// The state as reported to metrics and `/health/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    /// Value of the `gateway_breaker_state` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// Identifies one half-open probe, so its outcome can be told from ordinary outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTicket(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Admit,
    /// Half-open: go ahead as a probe; report the outcome with this ticket.
    Probe(ProbeTicket),
    /// Open, or half-open with every probe slot taken. `until` is when the open period ends.
    Reject { until: Option<Instant> },
}

#[derive(Debug)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probes: Vec<(ProbeTicket, Instant)> },
}

#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: State,
    next_ticket: u64,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            state: State::Closed {
                consecutive_failures: 0,
            },
            next_ticket: 0,
        }
    }

    /// Applies the transitions that time alone causes: the open period ending, probes expiring.
    fn refresh(&mut self, now: Instant) {
        match &mut self.state {
            State::Open { until } if now >= *until => {
                self.state = State::HalfOpen { probes: Vec::new() };
            }
            State::HalfOpen { probes } if probes.iter().any(|&(_, deadline)| now >= deadline) => {
                // A probe that never answered counts as a failed probe.
                self.open(now);
            }
            _ => {}
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open {
            until: now + self.cfg.cooldown,
        };
    }

    /// The state at `now`.
    pub fn state(&mut self, now: Instant) -> BreakerState {
        self.refresh(now);
        self.kind()
    }

    fn kind(&self) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Would `admit` let a request through at `now`? Does not take a probe slot.
    pub fn would_admit(&mut self, now: Instant) -> bool {
        self.refresh(now);
        match &self.state {
            State::Closed { .. } => true,
            State::Open { .. } => false,
            State::HalfOpen { probes } => probes.len() < self.cfg.half_open_probes as usize,
        }
    }

    /// When the current open period ends (`None` unless open).
    pub fn open_until(&mut self, now: Instant) -> Option<Instant> {
        self.refresh(now);
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        match self.state {
            State::Closed {
                consecutive_failures,
            } => consecutive_failures,
            _ => 0,
        }
    }

    /// Admits a request, taking a probe slot when half-open.
    pub fn admit(&mut self, now: Instant) -> Admission {
        self.refresh(now);
        match &mut self.state {
            State::Closed { .. } => Admission::Admit,
            State::Open { until } => Admission::Reject {
                until: Some(*until),
            },
            State::HalfOpen { probes } => {
                if probes.len() < self.cfg.half_open_probes as usize {
                    let ticket = ProbeTicket(self.next_ticket);
                    self.next_ticket += 1;
                    probes.push((ticket, now + self.cfg.probe_timeout));
                    Admission::Probe(ticket)
                } else {
                    Admission::Reject { until: None }
                }
            }
        }
    }

    /// The upstream answered properly. Returns the new state if it changed.
    pub fn on_success(&mut self, now: Instant, probe: Option<ProbeTicket>) -> Option<BreakerState> {
        self.refresh(now);
        let before = self.kind();
        match &mut self.state {
            State::Closed {
                consecutive_failures,
            } => *consecutive_failures = 0,
            State::HalfOpen { probes } => {
                if probe.is_some_and(|t| probes.iter().any(|&(p, _)| p == t)) {
                    self.state = State::Closed {
                        consecutive_failures: 0,
                    };
                }
            }
            State::Open { .. } => {}
        }
        self.changed(before)
    }

    /// The attempt failed in a way that counts against the deployment. Returns the new state if
    /// it changed.
    pub fn on_failure(&mut self, now: Instant, probe: Option<ProbeTicket>) -> Option<BreakerState> {
        self.refresh(now);
        let before = self.kind();
        match &mut self.state {
            State::Closed {
                consecutive_failures,
            } => {
                *consecutive_failures += 1;
                if *consecutive_failures >= self.cfg.consecutive_failures {
                    self.open(now);
                }
            }
            State::HalfOpen { probes } => {
                if probe.is_some_and(|t| probes.iter().any(|&(p, _)| p == t)) {
                    self.open(now);
                }
            }
            State::Open { .. } => {}
        }
        self.changed(before)
    }

    /// The attempt ended without a verdict on the deployment's health (client went away, a
    /// 429, a local rejection): give the probe slot back.
    pub fn on_neutral(&mut self, now: Instant, probe: Option<ProbeTicket>) {
        self.refresh(now);
        if let (State::HalfOpen { probes }, Some(t)) = (&mut self.state, probe) {
            probes.retain(|&(p, _)| p != t);
        }
    }

    fn changed(&self, before: BreakerState) -> Option<BreakerState> {
        let after = self.kind();
        (after != before).then_some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            cooldown: Duration::from_secs(30),
            half_open_probes: 2,
            probe_timeout: Duration::from_secs(10),
        }
    }

    fn open_breaker(b: &mut Breaker) {
        for _ in 0..3 {
            assert_eq!(b.admit(Instant::now()), Admission::Admit);
            b.on_failure(Instant::now(), None);
        }
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_n_consecutive_failures_and_a_success_resets_the_run() {
        let mut b = Breaker::new(cfg());
        let now = Instant::now();
        b.on_failure(now, None);
        b.on_failure(now, None);
        b.on_success(now, None);
        assert_eq!(b.consecutive_failures(), 0);
        b.on_failure(now, None);
        b.on_failure(now, None);
        assert_eq!(b.state(now), BreakerState::Closed);
        assert_eq!(b.on_failure(now, None), Some(BreakerState::Open));
        assert_eq!(
            b.admit(now),
            Admission::Reject {
                until: Some(now + Duration::from_secs(30))
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rejects_everything_during_the_cooldown_then_admits_bounded_probes() {
        let mut b = Breaker::new(cfg());
        open_breaker(&mut b);
        advance(Duration::from_secs(29)).await;
        assert!(!b.would_admit(Instant::now()));
        assert!(matches!(b.admit(Instant::now()), Admission::Reject { .. }));
        advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(Instant::now()), BreakerState::HalfOpen);
        let p1 = b.admit(Instant::now());
        let p2 = b.admit(Instant::now());
        assert!(matches!(p1, Admission::Probe(_)));
        assert!(matches!(p2, Admission::Probe(_)));
        assert_ne!(p1, p2);
        assert_eq!(b.admit(Instant::now()), Admission::Reject { until: None });
        assert!(!b.would_admit(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_successful_probe_closes_and_a_failed_probe_reopens() {
        let mut b = Breaker::new(cfg());
        open_breaker(&mut b);
        advance(Duration::from_secs(30)).await;
        let Admission::Probe(t) = b.admit(Instant::now()) else {
            panic!("expected a probe")
        };
        assert_eq!(
            b.on_failure(Instant::now(), Some(t)),
            Some(BreakerState::Open)
        );
        advance(Duration::from_secs(30)).await;
        let Admission::Probe(t) = b.admit(Instant::now()) else {
            panic!("expected a probe")
        };
        assert_eq!(
            b.on_success(Instant::now(), Some(t)),
            Some(BreakerState::Closed)
        );
        assert_eq!(b.admit(Instant::now()), Admission::Admit);
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_of_requests_admitted_before_opening_do_not_move_it() {
        let mut b = Breaker::new(cfg());
        open_breaker(&mut b);
        // A slow request admitted while closed succeeds during the open period.
        assert_eq!(b.on_success(Instant::now(), None), None);
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
        advance(Duration::from_secs(30)).await;
        // ...or during half-open: still not a probe.
        assert_eq!(b.on_success(Instant::now(), None), None);
        assert_eq!(b.on_failure(Instant::now(), None), None);
        assert_eq!(b.state(Instant::now()), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_answers_cannot_wedge_the_breaker() {
        let mut b = Breaker::new(cfg());
        open_breaker(&mut b);
        advance(Duration::from_secs(30)).await;
        assert!(matches!(b.admit(Instant::now()), Admission::Probe(_)));
        assert!(matches!(b.admit(Instant::now()), Admission::Probe(_)));
        // Both probes are lost. After their deadline the breaker re-opens...
        advance(Duration::from_secs(10)).await;
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
        // ...and after another cooldown probes are admitted again.
        advance(Duration::from_secs(30)).await;
        assert!(matches!(b.admit(Instant::now()), Admission::Probe(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_neutral_outcome_gives_the_probe_slot_back() {
        let mut b = Breaker::new(cfg());
        open_breaker(&mut b);
        advance(Duration::from_secs(30)).await;
        let Admission::Probe(t1) = b.admit(Instant::now()) else {
            panic!("expected a probe")
        };
        assert!(matches!(b.admit(Instant::now()), Admission::Probe(_)));
        assert!(!b.would_admit(Instant::now()));
        b.on_neutral(Instant::now(), Some(t1));
        assert!(b.would_admit(Instant::now()));
        assert_eq!(b.state(Instant::now()), BreakerState::HalfOpen);
    }

    #[test]
    fn never_admits_more_probes_than_configured() {
        // Exhaustive over small configurations and admission sequences.
        for max in 1..=4u32 {
            let mut b = Breaker::new(BreakerConfig {
                half_open_probes: max,
                consecutive_failures: 1,
                ..cfg()
            });
            let t0 = Instant::now();
            b.on_failure(t0, None);
            let later = t0 + Duration::from_secs(30);
            let mut admitted = 0;
            for _ in 0..10 {
                if let Admission::Probe(_) = b.admit(later) {
                    admitted += 1;
                }
            }
            assert_eq!(admitted, max);
        }
    }
}
