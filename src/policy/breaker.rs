//! The circuit breaker of one deployment, as a pure state machine: no I/O, no actix, no timers.
//! Every method takes `now`, and every transition that depends on time is derived from
//! timestamps when the next call arrives (in the order the events happened, each at its own
//! instant), so a busy actor whose timers fire late still sees the right state.
//!
//! - **Closed**: requests flow ([`Admission::Admit`]). Every success or breaker failure is
//!   recorded; neutral outcomes are not. The breaker ejects (opens) when either
//!   - the run of consecutive breaker failures reaches `consecutive_failures` (a success resets
//!     the run), or
//!   - the sliding `window` holds at least `min_calls` calls (successes + failures) and the share
//!     of failures among them is at least `failure_rate`. The window is [`BUCKETS`] fixed time
//!     buckets of `window / BUCKETS` each (O(1) memory); a bucket older than the window is
//!     dropped whole, so the window covers the last `window` give or take one bucket.
//!
//!   Outcomes in Closed count whether or not they carry a probe ticket.
//! - **Open** (ejected): the n-th consecutive ejection lasts `min(cooldown * n, max_cooldown)`,
//!   times `1 + jitter * u` with `u` uniform in `[0, 1)` from the breaker's own RNG. The count n
//!   ([`Breaker::ejections`]) starts from zero again when the breaker had stayed closed for at
//!   least `cooldown` since it last closed (decided when the next ejection happens). While open,
//!   if `probe_interval` is not zero, one real request is admitted as a probe
//!   ([`Admission::Probe`]) every `probe_interval`, measured from the ejection start or the last
//!   probe admission, with at most one such probe outstanding. Its success closes the breaker at
//!   once; its failure leaves it open with the same ejection end, and the next probe is due a
//!   `probe_interval` after the failed one was admitted. A probe unanswered by its deadline
//!   (`probe_timeout`) counts as failed and frees the slot. A neutral outcome frees the slot with
//!   no verdict, and another probe may be admitted at once. Everything else is rejected.
//! - **Half-open**, once the ejection has run its length: at most `half_open_probes` probes are
//!   out at once, each with a deadline of admission + `probe_timeout` (an interval probe still
//!   out when the ejection ends carries over as one of them, with its own deadline). The first
//!   probe success closes the breaker; a probe failure, or a probe passing its deadline
//!   unanswered, ejects it again (at that instant) for the next, longer ejection (n + 1), so a
//!   lost probe cannot wedge the breaker. A neutral outcome gives the probe's slot back.
//!
//! Outcomes without a ticket of a current probe (requests admitted before the breaker opened,
//! or probes of an earlier period) never move an Open or Half-open breaker. Ejecting clears the
//! failure run and the window, so a breaker that closes again starts from a clean record.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Breaker failures in a row that eject the deployment.
    pub consecutive_failures: u32,
    /// Share of breaker failures (0 < r <= 1) over the window that ejects ...
    pub failure_rate: f64,
    /// ... once the window holds at least this many calls.
    pub min_calls: u32,
    /// Length of the sliding window for the failure rate.
    pub window: Duration,
    /// First ejection; the n-th consecutive ejection lasts `cooldown * n`, capped at
    /// `max_cooldown`, plus up to `jitter` of it at random.
    pub cooldown: Duration,
    pub max_cooldown: Duration,
    /// 0..=1: an ejection lasts up to this share longer, at random, so deployments ejected
    /// together do not return together.
    pub jitter: f64,
    /// While ejected, one real request is admitted as a probe this often (zero: never).
    pub probe_interval: Duration,
    /// Probes admitted at once after an ejection ends (half-open).
    pub half_open_probes: u32,
    /// A probe that has not answered by then counts as failed.
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

/// Identifies one probe (in-ejection or half-open), so its outcome can be told from ordinary
/// outcomes. Tickets are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTicket(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Admit,
    /// Open (an interval probe is due) or half-open: go ahead as a probe; report the outcome
    /// with this ticket.
    Probe(ProbeTicket),
    /// Open with no probe due, or half-open with every probe slot taken. `until` is the earliest
    /// moment admission could change when known: while open, the next probe time or the
    /// ejection end, whichever is sooner; `None` in half-open.
    Reject { until: Option<Instant> },
}

/// Time buckets of the failure-rate window.
pub const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Absolute bucket number (time since the window's origin / bucket width).
    index: u64,
    successes: u32,
    failures: u32,
}

/// Sliding failure-rate window: `BUCKETS` buckets in a ring.
#[derive(Debug)]
struct Window {
    /// The instant bucket 0 starts; set by the first recorded call.
    origin: Option<Instant>,
    width_nanos: u128,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    fn new(window: Duration) -> Self {
        Window {
            origin: None,
            width_nanos: (window.as_nanos() / BUCKETS as u128).max(1),
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn index(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        let n = now.saturating_duration_since(origin).as_nanos() / self.width_nanos;
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    fn record(&mut self, now: Instant, failed: bool) {
        let index = self.index(now);
        let slot = (index % BUCKETS as u64) as usize;
        if let Some(b) = self.buckets.get_mut(slot) {
            if b.index != index {
                *b = Bucket {
                    index,
                    ..Bucket::default()
                };
            }
            if failed {
                b.failures = b.failures.saturating_add(1);
            } else {
                b.successes = b.successes.saturating_add(1);
            }
        }
    }

    /// (calls, failures) in the window ending at `now`.
    fn counts(&mut self, now: Instant) -> (u64, u64) {
        let current = self.index(now);
        self.buckets
            .iter()
            .filter(|b| b.index.saturating_add(BUCKETS as u64) > current)
            .fold((0, 0), |(calls, failures), b| {
                (
                    calls + u64::from(b.successes) + u64::from(b.failures),
                    failures + u64::from(b.failures),
                )
            })
    }

    fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    ticket: ProbeTicket,
    admitted: Instant,
    deadline: Instant,
}

#[derive(Debug)]
enum State {
    /// `since`: when it last closed after an ejection (`None`: never ejected).
    Closed {
        since: Option<Instant>,
    },
    /// `next_probe`: when the next interval probe is due (if `probe_interval` is not zero and
    /// no probe is out).
    Open {
        until: Instant,
        next_probe: Instant,
        probe: Option<Probe>,
    },
    HalfOpen {
        probes: Vec<Probe>,
    },
}

#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: State,
    next_ticket: u64,
    /// Consecutive ejections so far (n of the current or last ejection).
    ejections: u32,
    /// Current run of breaker failures while closed.
    consecutive: u32,
    window: Window,
    rng: fastrand::Rng,
}

/// `t + d`, saturating far in the future instead of overflowing.
fn later(t: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    t.checked_add(d).or_else(|| t.checked_add(FAR)).unwrap_or(t)
}

/// When the next in-ejection probe may be admitted, given the Open state's fields: the due
/// time, or the outstanding probe's deadline if later; `None` if never or not before `until`.
fn next_probe_time(
    interval: Duration,
    until: Instant,
    next_probe: Instant,
    probe: Option<Probe>,
) -> Option<Instant> {
    if interval.is_zero() {
        return None;
    }
    let at = probe.map_or(next_probe, |p| next_probe.max(p.deadline));
    (at < until).then_some(at)
}

impl Breaker {
    /// A closed breaker whose jitter is seeded at random.
    pub fn new(cfg: BreakerConfig) -> Self {
        Self::with_rng(cfg, fastrand::Rng::new())
    }

    /// A closed breaker with deterministic jitter.
    pub fn with_seed(cfg: BreakerConfig, seed: u64) -> Self {
        Self::with_rng(cfg, fastrand::Rng::with_seed(seed))
    }

    fn with_rng(cfg: BreakerConfig, rng: fastrand::Rng) -> Self {
        Breaker {
            cfg,
            state: State::Closed { since: None },
            next_ticket: 0,
            ejections: 0,
            consecutive: 0,
            window: Window::new(cfg.window),
            rng,
        }
    }

    /// Applies the transitions that time alone causes, each at the instant it happened.
    fn refresh(&mut self, now: Instant) {
        // Terminates: Open -> HalfOpen -> (expired probe) Open -> HalfOpen with no probes.
        while self.step(now) {}
    }

    /// One time-driven transition due by `now`, if any; returns whether the state changed kind.
    fn step(&mut self, now: Instant) -> bool {
        match &mut self.state {
            State::Closed { .. } => false,
            State::Open { until, probe, .. } => {
                let until = *until;
                // An interval probe unanswered by its deadline (within the ejection) has failed.
                if probe.is_some_and(|p| p.deadline <= now.min(until)) {
                    *probe = None;
                }
                if now < until {
                    return false;
                }
                // A probe still out carries over into half-open.
                let mut probes = Vec::with_capacity(self.cfg.half_open_probes as usize);
                probes.extend(probe.take());
                self.state = State::HalfOpen { probes };
                true
            }
            State::HalfOpen { probes } => {
                let expired = probes
                    .iter()
                    .map(|p| p.deadline)
                    .filter(|&d| d <= now)
                    .min();
                match expired {
                    Some(at) => {
                        self.eject(at);
                        true
                    }
                    None => false,
                }
            }
        }
    }

    /// Opens the breaker at `at` for the next ejection.
    fn eject(&mut self, at: Instant) {
        if let State::Closed {
            since: Some(closed),
        } = self.state
        {
            if at.saturating_duration_since(closed) >= self.cfg.cooldown {
                self.ejections = 0;
            }
        }
        self.ejections = self.ejections.saturating_add(1);
        let until = later(at, self.ejection_length());
        self.consecutive = 0;
        self.window.clear();
        self.state = State::Open {
            until,
            next_probe: later(at, self.cfg.probe_interval),
            probe: None,
        };
    }

    /// Length of ejection number `self.ejections`, jitter included.
    fn ejection_length(&mut self) -> Duration {
        let base = self
            .cfg
            .cooldown
            .saturating_mul(self.ejections)
            .min(self.cfg.max_cooldown);
        let jitter = if self.cfg.jitter.is_finite() {
            self.cfg.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let u = self.rng.f64();
        Duration::try_from_secs_f64(base.as_secs_f64() * (1.0 + jitter * u)).unwrap_or(base)
    }

    fn close(&mut self, now: Instant) {
        self.consecutive = 0;
        self.window.clear();
        self.state = State::Closed { since: Some(now) };
    }

    fn ticket(&mut self) -> ProbeTicket {
        let t = ProbeTicket(self.next_ticket);
        self.next_ticket = self.next_ticket.wrapping_add(1);
        t
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
            State::Open {
                next_probe, probe, ..
            } => !self.cfg.probe_interval.is_zero() && probe.is_none() && now >= *next_probe,
            State::HalfOpen { probes } => probes.len() < self.cfg.half_open_probes as usize,
        }
    }

    /// When the current ejection ends (`None` unless open).
    pub fn open_until(&mut self, now: Instant) -> Option<Instant> {
        self.refresh(now);
        match self.state {
            State::Open { until, .. } => Some(until),
            _ => None,
        }
    }

    /// While open: when the next in-ejection probe may be admitted (now or later; if a probe is
    /// out, no sooner than its deadline). `None` when not open, when `probe_interval` is zero,
    /// or when no probe is due before the ejection ends.
    pub fn next_probe_at(&mut self, now: Instant) -> Option<Instant> {
        self.refresh(now);
        match self.state {
            State::Open {
                until,
                next_probe,
                probe,
            } => next_probe_time(self.cfg.probe_interval, until, next_probe, probe),
            _ => None,
        }
    }

    /// The current run of breaker failures (0 unless closed).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }

    /// Consecutive ejections so far: n of the current (or last) ejection. Whether a long stay
    /// closed resets it is decided at the next ejection, so it can read high until then.
    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// Admits a request, taking a probe slot when open (a probe is due) or half-open.
    pub fn admit(&mut self, now: Instant) -> Admission {
        self.refresh(now);
        let interval = self.cfg.probe_interval;
        let timeout = self.cfg.probe_timeout;
        let max_probes = self.cfg.half_open_probes as usize;
        let fresh = ProbeTicket(self.next_ticket);
        let admission = match &mut self.state {
            State::Closed { .. } => return Admission::Admit,
            State::Open {
                until,
                next_probe,
                probe,
            } => {
                if !interval.is_zero() && probe.is_none() && now >= *next_probe {
                    *probe = Some(Probe {
                        ticket: fresh,
                        admitted: now,
                        deadline: later(now, timeout),
                    });
                    *next_probe = later(now, interval);
                    Admission::Probe(fresh)
                } else {
                    let next = next_probe_time(interval, *until, *next_probe, *probe);
                    Admission::Reject {
                        until: Some(next.map_or(*until, |t| t.min(*until))),
                    }
                }
            }
            State::HalfOpen { probes } => {
                if probes.len() < max_probes {
                    probes.push(Probe {
                        ticket: fresh,
                        admitted: now,
                        deadline: later(now, timeout),
                    });
                    Admission::Probe(fresh)
                } else {
                    Admission::Reject { until: None }
                }
            }
        };
        if let Admission::Probe(_) = admission {
            self.ticket();
        }
        admission
    }

    /// Is `ticket` one of the current probes?
    fn is_live(&self, ticket: Option<ProbeTicket>) -> bool {
        let Some(t) = ticket else {
            return false;
        };
        match &self.state {
            State::Closed { .. } => false,
            State::Open { probe, .. } => probe.is_some_and(|p| p.ticket == t),
            State::HalfOpen { probes } => probes.iter().any(|p| p.ticket == t),
        }
    }

    /// Records a closed-state outcome and ejects if a threshold is crossed.
    fn record_closed(&mut self, now: Instant, failed: bool) {
        self.window.record(now, failed);
        if failed {
            self.consecutive = self.consecutive.saturating_add(1);
        } else {
            self.consecutive = 0;
        }
        let (calls, failures) = self.window.counts(now);
        let rate_tripped = calls > 0
            && calls >= u64::from(self.cfg.min_calls)
            && failures as f64 / calls as f64 >= self.cfg.failure_rate;
        if self.consecutive >= self.cfg.consecutive_failures || rate_tripped {
            self.eject(now);
        }
    }

    /// The upstream answered properly. Returns the new state if it changed. (In Closed, a
    /// success can still complete `min_calls` with the failure share at or above the rate.)
    pub fn on_success(&mut self, now: Instant, probe: Option<ProbeTicket>) -> Option<BreakerState> {
        self.refresh(now);
        let before = self.kind();
        match self.state {
            State::Closed { .. } => self.record_closed(now, false),
            State::Open { .. } | State::HalfOpen { .. } => {
                if self.is_live(probe) {
                    self.close(now);
                }
            }
        }
        self.changed(before)
    }

    /// The attempt failed in a way that counts against the deployment. Returns the new state if
    /// it changed.
    pub fn on_failure(&mut self, now: Instant, probe: Option<ProbeTicket>) -> Option<BreakerState> {
        self.refresh(now);
        let before = self.kind();
        let live = self.is_live(probe);
        match &mut self.state {
            State::Closed { .. } => self.record_closed(now, true),
            // A failed interval probe: stay open, same end; the next one is due an interval
            // after this one was admitted (already set at admission).
            State::Open { probe, .. } => {
                if live {
                    *probe = None;
                }
            }
            State::HalfOpen { .. } => {
                if live {
                    self.eject(now);
                }
            }
        }
        self.changed(before)
    }

    /// The attempt ended without a verdict on the deployment's health (client went away, a
    /// 429, a local rejection): give the probe slot back.
    pub fn on_neutral(&mut self, now: Instant, probe: Option<ProbeTicket>) {
        self.refresh(now);
        let Some(t) = probe else {
            return;
        };
        match &mut self.state {
            State::Closed { .. } => {}
            State::Open {
                next_probe, probe, ..
            } => {
                if let Some(p) = probe.filter(|p| p.ticket == t) {
                    *next_probe = p.admitted;
                    *probe = None;
                }
            }
            State::HalfOpen { probes } => probes.retain(|p| p.ticket != t),
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
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn millis(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The product defaults, without jitter and with a 5 s probe timeout.
    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_calls: 20,
            window: secs(30),
            cooldown: secs(30),
            max_cooldown: secs(300),
            jitter: 0.0,
            probe_interval: secs(10),
            half_open_probes: 3,
            probe_timeout: secs(5),
        }
    }

    fn no_interval() -> BreakerConfig {
        BreakerConfig {
            probe_interval: Duration::ZERO,
            ..cfg()
        }
    }

    /// Ejects a closed breaker at `at` with consecutive failures.
    fn eject(b: &mut Breaker, at: Instant) {
        for _ in 0..b.cfg.consecutive_failures {
            assert_eq!(b.admit(at), Admission::Admit);
            b.on_failure(at, None);
        }
        assert_eq!(b.state(at), BreakerState::Open);
    }

    fn probe(b: &mut Breaker, at: Instant) -> ProbeTicket {
        match b.admit(at) {
            Admission::Probe(t) => t,
            other => panic!("expected a probe, got {other:?}"),
        }
    }

    #[test]
    fn opens_after_n_consecutive_failures_and_a_success_resets_the_run() {
        let mut b = Breaker::with_seed(cfg(), 1);
        let now = Instant::now();
        for _ in 0..4 {
            b.on_failure(now, None);
        }
        assert_eq!(b.consecutive_failures(), 4);
        b.on_success(now, None);
        assert_eq!(b.consecutive_failures(), 0);
        for _ in 0..4 {
            assert_eq!(b.on_failure(now, None), None);
        }
        assert_eq!(b.state(now), BreakerState::Closed);
        assert_eq!(b.on_failure(now, None), Some(BreakerState::Open));
        assert_eq!(b.ejections(), 1);
        assert_eq!(b.open_until(now), Some(now + secs(30)));
        assert_eq!(
            b.admit(now),
            Admission::Reject {
                until: Some(now + secs(10))
            }
        );
    }

    #[test]
    fn opens_when_half_the_calls_in_the_window_fail_once_min_calls_is_reached() {
        let mut b = Breaker::with_seed(cfg(), 1);
        let t0 = Instant::now();
        // Alternating, so the consecutive rule never fires: S F S F ... over 19 s.
        for i in 0..19u64 {
            let at = t0 + secs(i);
            if i % 2 == 0 {
                assert_eq!(b.on_success(at, None), None);
            } else {
                assert_eq!(b.on_failure(at, None), None);
            }
        }
        // 19 calls, 9 failures: below both thresholds.
        assert_eq!(b.state(t0 + secs(19)), BreakerState::Closed);
        // The 20th call is the 10th failure: 50 %.
        assert_eq!(b.on_failure(t0 + secs(19), None), Some(BreakerState::Open));
    }

    #[test]
    fn does_not_open_on_failure_rate_below_min_calls() {
        let mut b = Breaker::with_seed(cfg(), 1);
        let now = Instant::now();
        // 19 calls, 16 failures (84 %), never 5 in a row.
        for i in 0..19 {
            if i % 5 == 4 {
                b.on_success(now, None);
            } else {
                assert_eq!(b.on_failure(now, None), None);
            }
        }
        assert_eq!(b.state(now), BreakerState::Closed);
        assert!(b.would_admit(now));
    }

    #[test]
    fn failures_older_than_the_window_age_out() {
        let t0 = Instant::now();
        let fill = |b: &mut Breaker| {
            // 19 calls at t0: 10 successes, 9 failures, ending with a success.
            for i in 0..19 {
                if i % 2 == 0 {
                    b.on_success(t0, None);
                } else {
                    b.on_failure(t0, None);
                }
            }
        };
        // Within the window the 20th call (a failure) reaches 50 % ...
        let mut recent = Breaker::with_seed(cfg(), 1);
        fill(&mut recent);
        assert_eq!(
            recent.on_failure(t0 + secs(20), None),
            Some(BreakerState::Open)
        );
        // ... but once the window has passed, the old calls no longer count.
        let mut aged = Breaker::with_seed(cfg(), 1);
        fill(&mut aged);
        assert_eq!(aged.on_failure(t0 + secs(31), None), None);
        assert_eq!(aged.state(t0 + secs(31)), BreakerState::Closed);
    }

    #[test]
    fn ejections_escalate_by_cooldown_and_are_capped_at_max_cooldown() {
        let mut b = Breaker::with_seed(no_interval(), 1);
        let mut now = Instant::now();
        eject(&mut b, now);
        let mut lengths = Vec::new();
        for n in 1..=12u32 {
            assert_eq!(b.ejections(), n);
            let until = b.open_until(now).unwrap();
            lengths.push((until - now).as_secs());
            now = until;
            assert_eq!(b.state(now), BreakerState::HalfOpen);
            let t = probe(&mut b, now);
            assert_eq!(b.on_failure(now, Some(t)), Some(BreakerState::Open));
        }
        assert_eq!(
            lengths,
            [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
        );
    }

    #[test]
    fn jitter_lengthens_ejections_within_bounds_and_is_deterministic_per_seed() {
        let jittery = BreakerConfig {
            jitter: 0.5,
            ..no_interval()
        };
        let now = Instant::now();
        let mut seen = Vec::new();
        for seed in 0..32 {
            let mut b = Breaker::with_seed(jittery, seed);
            eject(&mut b, now);
            let first = b.open_until(now).unwrap() - now;
            assert!(first >= secs(30) && first < secs(45), "{first:?}");
            let end = now + first;
            let t = probe(&mut b, end);
            b.on_failure(end, Some(t));
            let second = b.open_until(end).unwrap() - end;
            assert!(second >= secs(60) && second < secs(90), "{second:?}");
            seen.push(first);

            let mut twin = Breaker::with_seed(jittery, seed);
            eject(&mut twin, now);
            assert_eq!(twin.open_until(now), Some(now + first));
        }
        seen.sort();
        seen.dedup();
        assert!(seen.len() > 1, "jitter never varied: {seen:?}");
        // At the cap, jitter still applies on top.
        let capped = BreakerConfig {
            max_cooldown: secs(30),
            ..jittery
        };
        let mut b = Breaker::with_seed(capped, 7);
        eject(&mut b, now);
        let end = b.open_until(now).unwrap();
        let t = probe(&mut b, end);
        b.on_failure(end, Some(t));
        let len = b.open_until(end).unwrap() - end;
        assert!(len >= secs(30) && len < secs(45), "{len:?}");
    }

    #[test]
    fn the_ejection_count_resets_only_after_staying_closed_for_a_cooldown() {
        // Ejection 1 (30 s), a failed probe, ejection 2 (60 s), then a successful probe.
        let setup = || {
            let mut b = Breaker::with_seed(no_interval(), 1);
            let t0 = Instant::now();
            eject(&mut b, t0);
            let t = probe(&mut b, t0 + secs(30));
            b.on_failure(t0 + secs(30), Some(t));
            let closed_at = t0 + secs(90);
            let t = probe(&mut b, closed_at);
            assert_eq!(b.on_success(closed_at, Some(t)), Some(BreakerState::Closed));
            assert_eq!(b.ejections(), 2);
            (b, closed_at)
        };
        // Ejected again 29 s after closing: the third ejection, 90 s.
        let (mut b, closed_at) = setup();
        let at = closed_at + secs(29);
        eject(&mut b, at);
        assert_eq!(b.ejections(), 3);
        assert_eq!(b.open_until(at), Some(at + secs(90)));
        // Ejected again 30 s after closing: a first ejection again, 30 s.
        let (mut b, closed_at) = setup();
        let at = closed_at + secs(30);
        eject(&mut b, at);
        assert_eq!(b.ejections(), 1);
        assert_eq!(b.open_until(at), Some(at + secs(30)));
    }

    #[test]
    fn admits_exactly_one_interval_probe_per_probe_interval_during_an_ejection() {
        let long = BreakerConfig {
            cooldown: secs(100),
            ..cfg()
        };
        let mut b = Breaker::with_seed(long, 1);
        let t0 = Instant::now();
        eject(&mut b, t0);
        let mut probes = Vec::new();
        let mut at = t0;
        while at < t0 + secs(100) {
            assert_eq!(b.state(at), BreakerState::Open);
            let due = b.would_admit(at);
            match b.admit(at) {
                Admission::Probe(t) => {
                    assert!(due);
                    probes.push((at - t0).as_secs());
                    // Only one probe out at a time.
                    assert!(!b.would_admit(at));
                    assert!(matches!(b.admit(at), Admission::Reject { .. }));
                    assert_eq!(b.on_failure(at + millis(200), Some(t)), None);
                }
                Admission::Reject { .. } => assert!(!due),
                Admission::Admit => panic!("admitted freely while open"),
            }
            at += millis(250);
        }
        assert_eq!(probes, [10, 20, 30, 40, 50, 60, 70, 80, 90]);
        assert_eq!(b.open_until(t0), Some(t0 + secs(100)));
    }

    #[test]
    fn a_successful_interval_probe_closes_the_breaker_at_once() {
        let long = BreakerConfig {
            cooldown: secs(300),
            ..cfg()
        };
        let mut b = Breaker::with_seed(long, 1);
        let t0 = Instant::now();
        eject(&mut b, t0);
        assert_eq!(b.next_probe_at(t0), Some(t0 + secs(10)));
        assert!(!b.would_admit(t0 + secs(10) - millis(1)));
        let t = probe(&mut b, t0 + secs(10));
        assert_eq!(
            b.on_success(t0 + secs(12), Some(t)),
            Some(BreakerState::Closed)
        );
        assert_eq!(b.admit(t0 + secs(12)), Admission::Admit);
        assert_eq!(b.next_probe_at(t0 + secs(12)), None);
    }

    #[test]
    fn a_failed_interval_probe_keeps_the_breaker_open_until_the_same_end() {
        let mut b = Breaker::with_seed(cfg(), 1);
        let t0 = Instant::now();
        eject(&mut b, t0);
        let t = probe(&mut b, t0 + secs(10));
        assert_eq!(b.on_failure(t0 + secs(11), Some(t)), None);
        assert_eq!(b.state(t0 + secs(11)), BreakerState::Open);
        assert_eq!(b.open_until(t0 + secs(11)), Some(t0 + secs(30)));
        assert_eq!(b.ejections(), 1);
        // The next probe comes an interval after the failed one.
        assert_eq!(b.next_probe_at(t0 + secs(11)), Some(t0 + secs(20)));
        assert!(!b.would_admit(t0 + secs(19)));
        assert!(matches!(b.admit(t0 + secs(20)), Admission::Probe(_)));
    }

    #[test]
    fn a_stuck_interval_probe_frees_its_slot_after_probe_timeout() {
        let slow = BreakerConfig {
            cooldown: secs(60),
            probe_timeout: secs(15),
            ..cfg()
        };
        let mut b = Breaker::with_seed(slow, 1);
        let t0 = Instant::now();
        eject(&mut b, t0);
        let stuck = probe(&mut b, t0 + secs(10));
        // The next probe is due at 20 s, but the first is still out until its deadline.
        assert_eq!(
            b.admit(t0 + secs(20)),
            Admission::Reject {
                until: Some(t0 + secs(25))
            }
        );
        assert_eq!(b.next_probe_at(t0 + secs(20)), Some(t0 + secs(25)));
        assert!(!b.would_admit(t0 + secs(25) - millis(1)));
        // At the deadline it counts as failed: the slot is free, the breaker still open.
        assert!(b.would_admit(t0 + secs(25)));
        assert_eq!(b.state(t0 + secs(25)), BreakerState::Open);
        assert_eq!(b.open_until(t0 + secs(25)), Some(t0 + secs(60)));
        let fresh = probe(&mut b, t0 + secs(25));
        assert_ne!(fresh, stuck);
        // The stuck probe's late answer no longer counts.
        assert_eq!(b.on_success(t0 + secs(26), Some(stuck)), None);
        assert_eq!(b.state(t0 + secs(26)), BreakerState::Open);
    }

    #[test]
    fn an_interval_probe_still_out_when_the_ejection_ends_becomes_a_half_open_probe() {
        let mut b = Breaker::with_seed(cfg(), 1);
        let t0 = Instant::now();
        eject(&mut b, t0);
        let t = probe(&mut b, t0 + secs(28));
        assert_eq!(b.state(t0 + secs(30)), BreakerState::HalfOpen);
        // It holds one of the three half-open slots.
        assert!(matches!(b.admit(t0 + secs(30)), Admission::Probe(_)));
        assert!(matches!(b.admit(t0 + secs(30)), Admission::Probe(_)));
        assert!(!b.would_admit(t0 + secs(30)));
        assert_eq!(
            b.on_success(t0 + secs(31), Some(t)),
            Some(BreakerState::Closed)
        );
    }

    #[test]
    fn rejects_everything_during_the_ejection_when_probe_interval_is_zero() {
        let mut b = Breaker::with_seed(no_interval(), 1);
        let t0 = Instant::now();
        eject(&mut b, t0);
        assert_eq!(b.next_probe_at(t0), None);
        let mut at = t0;
        while at < t0 + secs(30) {
            assert!(!b.would_admit(at));
            assert_eq!(
                b.admit(at),
                Admission::Reject {
                    until: Some(t0 + secs(30))
                }
            );
            at += millis(500);
        }
        assert_eq!(b.state(t0 + secs(30)), BreakerState::HalfOpen);
    }

    #[test]
    fn reject_carries_the_earliest_moment_admission_could_change() {
        let short = BreakerConfig {
            cooldown: secs(15),
            ..cfg()
        };
        let mut b = Breaker::with_seed(short, 1);
        let t0 = Instant::now();
        eject(&mut b, t0);
        assert_eq!(
            b.admit(t0 + secs(5)),
            Admission::Reject {
                until: Some(t0 + secs(10))
            }
        );
        let t = probe(&mut b, t0 + secs(10));
        b.on_failure(t0 + secs(11), Some(t));
        // The next probe (20 s) would come after the ejection ends (15 s).
        assert_eq!(b.next_probe_at(t0 + secs(12)), None);
        assert_eq!(
            b.admit(t0 + secs(12)),
            Admission::Reject {
                until: Some(t0 + secs(15))
            }
        );
    }

    #[test]
    fn half_open_admits_at_most_half_open_probes_at_once() {
        let mut b = Breaker::with_seed(no_interval(), 1);
        let t0 = Instant::now();
        eject(&mut b, t0);
        let now = t0 + secs(30);
        assert_eq!(b.state(now), BreakerState::HalfOpen);
        let tickets: Vec<_> = (0..3).map(|_| probe(&mut b, now)).collect();
        assert_eq!(tickets.len(), 3);
        assert!(tickets[0] != tickets[1] && tickets[1] != tickets[2]);
        assert!(!b.would_admit(now));
        assert_eq!(b.admit(now), Admission::Reject { until: None });
        // A neutral outcome gives a slot back, with no verdict.
        b.on_neutral(now, Some(tickets[0]));
        assert_eq!(b.state(now), BreakerState::HalfOpen);
        assert!(b.would_admit(now));
        probe(&mut b, now);
        assert!(!b.would_admit(now));
    }

    #[test]
    fn a_neutral_interval_probe_gives_its_slot_back() {
        let mut b = Breaker::with_seed(cfg(), 1);
        let t0 = Instant::now();
        eject(&mut b, t0);
        let t = probe(&mut b, t0 + secs(10));
        b.on_neutral(t0 + secs(11), Some(t));
        assert_eq!(b.state(t0 + secs(11)), BreakerState::Open);
        assert!(b.would_admit(t0 + secs(11)));
        assert!(matches!(b.admit(t0 + secs(11)), Admission::Probe(_)));
        assert!(!b.would_admit(t0 + secs(11)));
    }

    #[test]
    fn a_failed_half_open_probe_re_ejects_for_longer() {
        let mut b = Breaker::with_seed(no_interval(), 1);
        let t0 = Instant::now();
        eject(&mut b, t0);
        let now = t0 + secs(30);
        let first = probe(&mut b, now);
        let second = probe(&mut b, now);
        assert_eq!(b.on_failure(now + S, Some(first)), Some(BreakerState::Open));
        assert_eq!(b.ejections(), 2);
        assert_eq!(b.open_until(now + S), Some(now + S + secs(60)));
        // The other probe of that period is stale now.
        assert_eq!(b.on_success(now + S, Some(second)), None);
        assert_eq!(b.state(now + S), BreakerState::Open);
    }

    #[test]
    fn a_half_open_probe_that_never_answers_re_ejects_at_its_deadline() {
        let mut b = Breaker::with_seed(no_interval(), 1);
        let t0 = Instant::now();
        eject(&mut b, t0);
        let now = t0 + secs(30);
        probe(&mut b, now);
        assert_eq!(b.state(now + secs(5) - millis(1)), BreakerState::HalfOpen);
        // Derived lazily, long after: re-ejected at the deadline (35 s) for 60 s.
        assert_eq!(b.state(now + secs(40)), BreakerState::Open);
        assert_eq!(b.open_until(now + secs(40)), Some(now + secs(65)));
        assert_eq!(b.state(now + secs(65)), BreakerState::HalfOpen);
        assert!(matches!(b.admit(now + secs(65)), Admission::Probe(_)));
    }

    #[test]
    fn outcomes_of_requests_admitted_before_the_ejection_do_not_move_it() {
        let mut b = Breaker::with_seed(cfg(), 1);
        let t0 = Instant::now();
        eject(&mut b, t0);
        // Slow requests admitted while closed answer during the ejection.
        assert_eq!(b.on_success(t0 + S, None), None);
        assert_eq!(b.on_failure(t0 + S, None), None);
        b.on_neutral(t0 + S, None);
        assert_eq!(b.state(t0 + S), BreakerState::Open);
        assert_eq!(b.open_until(t0 + S), Some(t0 + secs(30)));
        // ... or during half-open, or with a ticket that was never issued.
        let now = t0 + secs(30);
        assert_eq!(b.on_success(now, None), None);
        assert_eq!(b.on_failure(now, None), None);
        assert_eq!(b.on_failure(now, Some(ProbeTicket(u64::MAX))), None);
        assert_eq!(b.state(now), BreakerState::HalfOpen);
        assert_eq!(b.consecutive_failures(), 0);
    }

    // ---- properties ----

    #[derive(Debug, Clone)]
    enum Op {
        Advance(u64),
        Admit,
        /// verdict: 0 success, 1 failure, 2 neutral; ticket: an index into the tickets issued
        /// so far (below 48), a ticket never issued (48..), or none.
        Report {
            verdict: u8,
            ticket: Option<usize>,
        },
        Query,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u64..12_000).prop_map(Op::Advance),
            4 => Just(Op::Admit),
            4 => (0u8..3, proptest::option::of(0usize..56))
                .prop_map(|(verdict, ticket)| Op::Report { verdict, ticket }),
            1 => Just(Op::Query),
        ]
    }

    fn config() -> impl Strategy<Value = BreakerConfig> {
        (
            (1u32..6, 0.05f64..=1.0, 1u32..12, 1u64..40_000),
            (0u64..40_000, 0u64..200_000, 0.0f64..=1.0),
            (prop_oneof![Just(0u64), 1u64..15_000], 1u32..5, 0u64..20_000),
        )
            .prop_map(
                |(
                    (consecutive_failures, failure_rate, min_calls, window),
                    (cooldown, extra, jitter),
                    (probe_interval, half_open_probes, probe_timeout),
                )| BreakerConfig {
                    consecutive_failures,
                    failure_rate,
                    min_calls,
                    window: millis(window),
                    cooldown: millis(cooldown),
                    max_cooldown: millis(cooldown + extra),
                    jitter,
                    probe_interval: millis(probe_interval),
                    half_open_probes,
                    probe_timeout: millis(probe_timeout),
                },
            )
    }

    struct Issued {
        ticket: ProbeTicket,
        /// (closes observed so far, ejections at admission): identifies one ejection period.
        period: (u64, u32),
        deadline: Instant,
        resolved: bool,
    }

    /// Runs `ops`, checking after each admission that probes stay within their limits, judged
    /// both from outside (a model of outstanding tickets) and from the breaker's own state.
    fn run(cfg: BreakerConfig, seed: u64, ops: &[Op]) {
        let mut b = Breaker::with_seed(cfg, seed);
        let mut now = Instant::now();
        let mut closes = 0u64;
        let mut issued: Vec<Issued> = Vec::new();
        for op in ops {
            match *op {
                Op::Advance(ms) => now += millis(ms),
                Op::Query => {
                    let state = b.state(now);
                    let until = b.open_until(now);
                    let next = b.next_probe_at(now);
                    assert_eq!(until.is_some(), state == BreakerState::Open);
                    if let Some(u) = until {
                        assert!(u > now);
                    }
                    if let Some(n) = next {
                        assert!(!cfg.probe_interval.is_zero() && until.is_some_and(|u| n < u));
                    }
                }
                Op::Admit => {
                    let state = b.state(now);
                    let would = b.would_admit(now);
                    let period = (closes, b.ejections());
                    let live = issued
                        .iter()
                        .filter(|p| p.period == period && !p.resolved && p.deadline > now)
                        .count();
                    let admission = b.admit(now);
                    assert_eq!(would, !matches!(admission, Admission::Reject { .. }));
                    match (state, admission) {
                        (BreakerState::Closed, a) => assert_eq!(a, Admission::Admit),
                        (_, Admission::Admit) => panic!("admitted freely while {state:?}"),
                        (BreakerState::Open, Admission::Probe(_)) => {
                            assert!(!cfg.probe_interval.is_zero());
                            assert_eq!(live, 0, "a second interval probe while one is out");
                        }
                        (BreakerState::HalfOpen, Admission::Probe(_)) => {
                            assert!(live < cfg.half_open_probes as usize, "too many probes");
                        }
                        (_, Admission::Reject { until }) => {
                            if let Some(u) = until {
                                assert!(u > now, "a rejection until the past");
                            }
                        }
                    }
                    if let Admission::Probe(ticket) = admission {
                        issued.push(Issued {
                            ticket,
                            period,
                            deadline: now + cfg.probe_timeout,
                            resolved: false,
                        });
                    }
                }
                Op::Report { verdict, ticket } => {
                    let ticket = ticket.map(|i| match issued.get(i) {
                        Some(p) if i < 48 => p.ticket,
                        _ => ProbeTicket(u64::MAX - i as u64),
                    });
                    for p in issued.iter_mut().filter(|p| Some(p.ticket) == ticket) {
                        p.resolved = true;
                    }
                    let changed = match verdict {
                        0 => b.on_success(now, ticket),
                        1 => b.on_failure(now, ticket),
                        _ => {
                            b.on_neutral(now, ticket);
                            None
                        }
                    };
                    if changed == Some(BreakerState::Closed) {
                        closes += 1;
                    }
                }
            }
            match &b.state {
                State::HalfOpen { probes } => {
                    assert!(probes.len() <= cfg.half_open_probes as usize);
                }
                State::Open { probe, .. } => {
                    assert!(probe.is_none() || !cfg.probe_interval.is_zero());
                }
                State::Closed { .. } => {}
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_sequences_never_exceed_the_probe_limits_or_panic(
            cfg in config(),
            seed in any::<u64>(),
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            run(cfg, seed, &ops);
        }

        #[test]
        fn an_open_breaker_without_probe_interval_never_admits(
            cfg in config(),
            seed in any::<u64>(),
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            let cfg = BreakerConfig { probe_interval: Duration::ZERO, ..cfg };
            // `run` asserts that nothing is admitted while open without a probe interval.
            run(cfg, seed, &ops);
        }
    }
}
