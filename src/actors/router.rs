//! `RouterActor`: one per HTTP worker thread, on that worker's arbiter, so every core routes and
//! the upstream call uses the worker's own `awc::Client`. For each `Route` message it runs the
//! plan:
//!
//! 1. resolve the model group (404 if none serves the model);
//! 2. read the bids the group's deployment actors published (`board`), order the available
//!    ones with the group's strategy (a pure function in `policy::scoring`);
//! 3. take a permit on the first (directly when its actor published "free", else with a
//!    `Reserve` message), call the upstream, report the outcome to the actor;
//! 4. on failure, per the error class: another deployment of the group at once; the same one
//!    again only after backoff or Retry-After, if the wait fits `max_retry_wait` and the deadline
//!    and retries remain; then the fallback groups in order (one pass each, no waiting);
//! 5. streams commit at the first meaningful upstream event: everything before is retried
//!    invisibly, everything after is the pump's (`upstream::pump`), which ends a failed stream
//!    with an error event.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::board::{Board, Path};
use super::deployment::{
    rate_limit_cooldown, Grant, Outcome, ReportOutcome, ReportOutcomes, Reserve,
};
use super::registry::Registry;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::{ErrorClass, GatewayError, UpstreamError};
use crate::metrics::{Metrics, OUTCOME_CANCELLED, OUTCOME_SUCCESS};
use crate::policy::backoff::full_jitter;
use crate::policy::breaker::ProbeTicket;
use crate::policy::scoring::{Bid, Decline};
use crate::providers::oai::Usage;
use crate::providers::request::ChatBody;
use crate::providers::{self, TranslateError};
use crate::upstream::{self, StreamEnd, Target};

/// Router mailbox bound; a `Route` is handled by spawning its plan, so the mailbox drains fast.
pub const MAILBOX_CAPACITY: usize = 1024;

/// Route one chat completion request.
#[derive(Message)]
#[rtype(result = "Result<Routed, RouteError>")]
pub struct Route {
    pub body: ChatBody,
    pub request_id: Arc<str>,
    /// When the handler had the whole body (real time), for overhead accounting.
    pub received: Instant,
}

/// A request that was served (or, for a stream, committed).
#[derive(Debug)]
pub struct Routed {
    /// The model group the client asked for.
    pub group: usize,
    /// The deployment that served.
    pub deployment: usize,
    pub attempts: u32,
    /// Time spent waiting on upstreams and retry waits; the rest is gateway overhead.
    pub upstream_wait: Duration,
    pub body: RoutedBody,
}

#[derive(Debug)]
pub enum RoutedBody {
    Json {
        body: Bytes,
        usage: Usage,
        /// Pico-dollars.
        cost: u64,
    },
    /// Send `prelude`, then everything from `rx` until it closes.
    Stream {
        prelude: Bytes,
        rx: mpsc::Receiver<Bytes>,
    },
}

#[derive(Debug)]
pub struct RouteError {
    pub error: GatewayError,
    pub group: Option<usize>,
    pub attempts: u32,
    pub upstream_wait: Duration,
}

pub struct RouterActor {
    core: Rc<RouterCore>,
}

/// Outcomes on their way to the deployment actors, batched per worker: successes wait up to
/// `OUTBOX_DELAY` (or until `OUTBOX_MAX` are pending) and go to each actor as one message, so
/// the actor thread wakes a few hundred times a second instead of once per request. Failures and
/// probe verdicts go at once, after whatever is pending, so each actor sees one router's
/// outcomes in order and a breaker decision is never delayed.
pub struct Outbox {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    pending: RefCell<Vec<(usize, ReportOutcome)>>,
    /// A delayed flush is queued on this worker.
    scheduled: Cell<bool>,
}

/// How long a success report may wait in a worker's outbox.
pub const OUTBOX_DELAY: Duration = Duration::from_millis(10);
/// Pending reports that trigger a flush at once.
const OUTBOX_MAX: usize = 256;

impl Outbox {
    pub fn new(registry: Arc<Registry>, metrics: Arc<Metrics>) -> Rc<Outbox> {
        Rc::new(Outbox {
            registry,
            metrics,
            pending: RefCell::new(Vec::new()),
            scheduled: Cell::new(false),
        })
    }

    fn send(self: &Rc<Self>, deployment: usize, report: ReportOutcome, urgent: bool) {
        self.registry.board(deployment).outcome_reported();
        let len = {
            let mut pending = self.pending.borrow_mut();
            pending.push((deployment, report));
            pending.len()
        };
        if urgent || len >= OUTBOX_MAX {
            self.flush();
        } else if !self.scheduled.replace(true) {
            let outbox = self.clone();
            actix_web::rt::spawn(async move {
                // Real time: the delay is about batching, not about the routing clock.
                actix_web::rt::time::sleep(OUTBOX_DELAY).await;
                outbox.scheduled.set(false);
                outbox.flush();
            });
        }
    }

    fn flush(&self) {
        let mut pending = std::mem::take(&mut *self.pending.borrow_mut());
        if pending.is_empty() {
            return;
        }
        // Stable: each deployment's outcomes keep their order.
        pending.sort_by_key(|&(d, _)| d);
        let mut iter = pending.into_iter().peekable();
        while let Some((d, first)) = iter.next() {
            let mut batch = vec![first];
            while let Some((_, r)) = iter.next_if(|(next, _)| *next == d) {
                batch.push(r);
            }
            let n = batch.len() as u64;
            let m = &self.metrics.deployments[d];
            let lost = match self.registry.addr(d).try_send(ReportOutcomes(batch)) {
                Ok(()) => false,
                Err(SendError::Full(_)) => {
                    m.outcomes_dropped.increment(n);
                    true
                }
                // The actor is gone; the registry respawns it on the next bid read.
                Err(SendError::Closed(_)) => {
                    m.actor_closed.increment(1);
                    true
                }
            };
            if lost {
                self.registry.board(d).outcomes_settled(n);
            }
        }
    }
}

/// Everything a plan needs; shared by the plans running concurrently on this worker.
pub struct RouterCore {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub targets: Arc<[Target]>,
    pub client: awc::Client,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub outbox: Rc<Outbox>,
}

impl RouterActor {
    pub fn new(core: RouterCore) -> Self {
        RouterActor {
            core: Rc::new(core),
        }
    }
}

impl Actor for RouterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl Handler<Route> for RouterActor {
    type Result = ResponseFuture<Result<Routed, RouteError>>;

    fn handle(&mut self, msg: Route, _: &mut Context<Self>) -> Self::Result {
        let core = self.core.clone();
        Box::pin(async move { core.route(msg).await })
    }
}

/// A reserved slot on one deployment. Reports exactly one outcome: explicitly, or `Cancelled`
/// when dropped unreported (the client went away mid-attempt).
struct Permit {
    deployment: usize,
    outbox: Rc<Outbox>,
    probe: Option<ProbeTicket>,
    board: Arc<Board>,
    metrics: Arc<Metrics>,
    reported: bool,
}

impl Permit {
    fn report(
        &mut self,
        outcome: Outcome,
        latency: Duration,
        ttft: Option<Duration>,
        retry_after: Option<Duration>,
    ) {
        let slot = match outcome {
            // Not the attempt's end: the breaker's verdict on a probe, sent early.
            Outcome::ProbeCommitted => return self.probe_committed(),
            Outcome::Success => OUTCOME_SUCCESS,
            Outcome::Failure(class) => class.index(),
            Outcome::Cancelled => OUTCOME_CANCELLED,
        };
        if self.reported {
            return;
        }
        self.reported = true;
        self.metrics.deployments[self.deployment].attempts[slot].increment(1);
        let urgent = self.probe.is_some() || matches!(outcome, Outcome::Failure(_));
        let msg = ReportOutcome {
            outcome,
            probe: self.probe,
            latency,
            ttft,
            retry_after,
        };
        self.outbox.send(self.deployment, msg, urgent);
    }
}

impl Permit {
    /// A streamed probe reached its commit point: give the breaker its verdict now. The
    /// permit's final report then goes without the probe ticket.
    fn probe_committed(&mut self) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        let msg = ReportOutcome {
            outcome: Outcome::ProbeCommitted,
            probe: Some(probe),
            latency: Duration::ZERO,
            ttft: None,
            retry_after: None,
        };
        self.outbox.send(self.deployment, msg, true);
    }

    /// An attempt's time limit: a half-open probe is also bounded by `probe_timeout_ms`.
    fn limit(&self, attempt_limit: Duration, probe_timeout: Duration) -> Duration {
        if self.probe.is_some() {
            attempt_limit.min(probe_timeout)
        } else {
            attempt_limit
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.report(Outcome::Cancelled, Duration::ZERO, None, None);
        // INVARIANT: the permit was created holding exactly one unit of in-flight.
        self.board.release();
        self.metrics.deployments[self.deployment]
            .in_flight
            .decrement(1.0);
    }
}

/// What the plan has learned so far, for the final error if nothing serves.
#[derive(Default)]
struct PlanState {
    attempts: u32,
    upstream_wait: Duration,
    last_error: Option<(usize, UpstreamError)>,
    /// Every attempt so far failed with a rate limit.
    only_rate_limit_failures: bool,
    /// Every decline so far was a rate limit (ours or a cooldown after the upstream's 429).
    only_rate_limit_declines: bool,
    /// The latest known moment each rate-limited deployment takes requests again.
    rate_limited_until: Vec<(usize, Instant)>,
    /// The earliest known end of the other declines (breaker open, long cooldown).
    unavailable_until: Option<Instant>,
    declines: Vec<(usize, &'static str)>,
    translate_error: Option<TranslateError>,
    deadline_hit: bool,
}

impl PlanState {
    fn new() -> Self {
        PlanState {
            only_rate_limit_failures: true,
            only_rate_limit_declines: true,
            ..PlanState::default()
        }
    }

    /// Newer information replaces older: a second 429 after a wait pushes the time out.
    fn note_rate_limited(&mut self, dep: usize, until: Instant) {
        match self.rate_limited_until.iter_mut().find(|(d, _)| *d == dep) {
            Some(entry) => entry.1 = until,
            None => self.rate_limited_until.push((dep, until)),
        }
    }

    /// When the first rate-limited deployment takes requests again.
    fn retry_at(&self) -> Option<Instant> {
        self.rate_limited_until.iter().map(|&(_, at)| at).min()
    }

    fn note_decline(&mut self, dep: usize, d: &Decline, now: Instant) {
        if d.is_rate_limit() {
            // At capacity has no known end; a second is a fair hint.
            self.note_rate_limited(dep, d.until().unwrap_or(now + Duration::from_secs(1)));
        } else {
            self.only_rate_limit_declines = false;
            if let Some(until) = d.until() {
                self.unavailable_until =
                    Some(self.unavailable_until.map_or(until, |u| u.min(until)));
            }
        }
        let reason = (dep, d.as_str());
        if !self.declines.contains(&reason) {
            self.declines.push(reason);
        }
    }
}

enum GroupEnd {
    Served(Routed),
    /// A client error: stop the whole plan.
    Stop(GatewayError),
    /// Nothing in this group served; go on with the next.
    Exhausted,
}

impl RouterCore {
    async fn route(self: Rc<Self>, msg: Route) -> Result<Routed, RouteError> {
        let Some(group) = self.config.group_by_name(&msg.body.model) else {
            return Err(RouteError {
                error: GatewayError::ModelNotFound(msg.body.model.to_string()),
                group: None,
                attempts: 0,
                upstream_wait: Duration::ZERO,
            });
        };
        let requested = group.index;
        let deadline = self.clock.now() + self.config.router.timeout;
        let mut st = PlanState::new();
        let chain: Vec<usize> = std::iter::once(requested)
            .chain(group.fallbacks.iter().copied())
            .collect();
        for (pos, &g) in chain.iter().enumerate() {
            if pos > 0 {
                self.metrics.fallbacks[requested][pos - 1].increment(1);
                tracing::debug!(request_id = %msg.request_id, from = %self.config.groups[requested].name, to = %self.config.groups[g].name, "falling back");
            }
            match self
                .run_group(requested, g, pos == 0, &msg, deadline, &mut st)
                .await
            {
                GroupEnd::Served(routed) => return Ok(routed),
                GroupEnd::Stop(error) => {
                    return Err(RouteError {
                        error,
                        group: Some(requested),
                        attempts: st.attempts,
                        upstream_wait: st.upstream_wait,
                    })
                }
                GroupEnd::Exhausted => {}
            }
            if st.deadline_hit {
                break;
            }
        }
        Err(RouteError {
            error: self.final_error(requested, &st),
            group: Some(requested),
            attempts: st.attempts,
            upstream_wait: st.upstream_wait,
        })
    }

    /// Tries one model group. `primary` groups may wait and retry the same deployment;
    /// fallback groups get one pass over their available deployments.
    async fn run_group(
        &self,
        requested: usize,
        g: usize,
        primary: bool,
        msg: &Route,
        deadline: Instant,
        st: &mut PlanState,
    ) -> GroupEnd {
        let deployments = &self.config.groups[g].deployments;
        let max_attempts = 1 + self.config.router.num_retries;
        let mut attempts_here = 0u32;
        // Deployments that failed in this request, and when each may be tried again (if ever).
        let mut failed: Vec<(usize, Option<Instant>)> = Vec::new();
        loop {
            if attempts_here >= max_attempts {
                return GroupEnd::Exhausted;
            }
            if self.clock.now() >= deadline {
                st.deadline_hit = true;
                return GroupEnd::Exhausted;
            }
            let now = self.clock.now();
            let mut candidates: Vec<Bid> = Vec::with_capacity(deployments.len());
            for &d in deployments {
                if failed.iter().any(|(f, _)| *f == d) {
                    continue;
                }
                if !self.registry.alive(d) {
                    // Its published bid died with it; the fresh actor publishes anew.
                    self.metrics.deployments[d].decline(Decline::Unavailable.as_str());
                    st.note_decline(d, &Decline::Unavailable, now);
                    continue;
                }
                let (b, _) = self.registry.board(d).bid(d, now);
                match &b.decline {
                    Some(d) => {
                        self.metrics.deployments[b.deployment].decline(d.as_str());
                        st.note_decline(b.deployment, d, now);
                    }
                    None => candidates.push(b),
                }
            }
            let order = self
                .config
                .router
                .strategy
                .order(&candidates, &mut || fastrand::f64());

            let mut attempted = false;
            for dep in order {
                let body = match providers::build_body(&self.config.deployments[dep], &msg.body) {
                    Ok(b) => b,
                    Err(e) => {
                        // This provider cannot express the request; others may.
                        st.translate_error.get_or_insert(e);
                        failed.push((dep, None));
                        continue;
                    }
                };
                let permit = match self.reserve(dep).await {
                    Ok(p) => p,
                    Err(d) => {
                        self.metrics.deployments[dep].decline(d.as_str());
                        st.note_decline(dep, &d, self.clock.now());
                        continue;
                    }
                };
                attempts_here += 1;
                st.attempts += 1;
                if attempts_here > 1 {
                    self.metrics.retries[g].increment(1);
                }
                attempted = true;
                let result = if msg.body.facts.stream {
                    self.attempt_stream(requested, dep, permit, body, msg, deadline, st)
                        .await
                } else {
                    self.attempt_json(requested, dep, permit, body, deadline, st)
                        .await
                };
                let e = match result {
                    Ok(routed) => return GroupEnd::Served(routed),
                    Err(e) => e,
                };
                tracing::debug!(
                    request_id = %msg.request_id,
                    deployment = %self.config.deployments[dep].id,
                    class = e.class.as_str(),
                    status = e.status,
                    "attempt failed"
                );
                let class = e.class;
                let retry_after = e.retry_after;
                if class != ErrorClass::RateLimited {
                    st.only_rate_limit_failures = false;
                }
                st.last_error = Some((dep, e));
                if !class.moves_on() {
                    return GroupEnd::Stop(self.client_error(st));
                }
                if class.skips_rest_of_group() {
                    return GroupEnd::Exhausted;
                }
                let now = self.clock.now();
                let again = class.retry_same_deployment().then(|| {
                    if class == ErrorClass::RateLimited {
                        let at = now
                            + rate_limit_cooldown(
                                retry_after,
                                self.config.router.rate_limit_cooldown,
                            );
                        st.note_rate_limited(dep, at);
                        at
                    } else {
                        now + full_jitter(
                            attempts_here - 1,
                            self.config.router.backoff_base,
                            self.config.router.backoff_max,
                            fastrand::f64(),
                        )
                    }
                });
                failed.push((dep, again));
                break;
            }
            if attempted {
                continue;
            }
            // Nothing could be tried right now. The primary group may wait for a deployment
            // that failed retryably, if the wait is short enough.
            if !primary {
                return GroupEnd::Exhausted;
            }
            let Some((dep, at)) = failed
                .iter()
                .filter_map(|&(d, at)| at.map(|at| (d, at)))
                .min_by_key(|&(_, at)| at)
            else {
                return GroupEnd::Exhausted;
            };
            let now = self.clock.now();
            let wait = at.saturating_duration_since(now);
            if wait > self.config.router.max_retry_wait || at >= deadline {
                return GroupEnd::Exhausted;
            }
            let waited_from = Instant::now();
            self.clock.sleep_until(at).await;
            st.upstream_wait += waited_from.elapsed();
            failed.retain(|&(d, _)| d != dep);
        }
    }

    /// The error to return when the upstream refused the request as the client's fault.
    fn client_error(&self, st: &PlanState) -> GatewayError {
        match &st.last_error {
            Some((_, e)) => GatewayError::UpstreamRejected(e.clone()),
            None => GatewayError::Internal("client error without an upstream error".to_owned()),
        }
    }

    fn final_error(&self, group: usize, st: &PlanState) -> GatewayError {
        let model = &self.config.groups[group].name;
        let now = self.clock.now();
        let until = |at: Instant| {
            at.saturating_duration_since(now)
                .max(Duration::from_secs(1))
        };
        if st.deadline_hit {
            return GatewayError::DeadlineExceeded {
                message: format!(
                    "the request deadline of {} s passed after {} attempts",
                    self.config.router.timeout.as_secs_f64(),
                    st.attempts
                ),
            };
        }
        let rate_limited = || GatewayError::RateLimited {
            message: format!("every deployment serving `{model}` is rate limited; retry later"),
            retry_after: st
                .retry_at()
                .or(st.unavailable_until)
                .map_or(Duration::from_secs(1), until),
        };
        if let Some((dep, e)) = &st.last_error {
            return match e.class {
                _ if st.only_rate_limit_failures => rate_limited(),
                ErrorClass::ContextWindow => GatewayError::UpstreamRejected(e.clone()),
                ErrorClass::Timeout => GatewayError::DeadlineExceeded {
                    message: format!(
                        "{} attempt(s) failed; the last, on deployment {}, timed out: {}",
                        st.attempts, self.config.deployments[*dep].id, e.message
                    ),
                },
                _ => GatewayError::UpstreamFailed {
                    message: format!(
                        "{} attempt(s) failed; the last, on deployment {}: {e}",
                        st.attempts, self.config.deployments[*dep].id
                    ),
                },
            };
        }
        // No attempt was made. Declines come first: a deployment that could have taken the
        // request was busy or sick, which is worth retrying, unlike a translation problem.
        if !st.declines.is_empty() {
            if st.only_rate_limit_declines {
                return rate_limited();
            }
            let reasons: Vec<String> = st
                .declines
                .iter()
                .map(|(d, r)| format!("{}: {r}", self.config.deployments[*d].id))
                .collect();
            return GatewayError::Unavailable {
                message: format!(
                    "no deployment is available for `{model}` ({})",
                    reasons.join(", ")
                ),
                retry_after: st
                    .unavailable_until
                    .into_iter()
                    .chain(st.retry_at())
                    .min()
                    .map(until),
            };
        }
        match &st.translate_error {
            Some(t) => GatewayError::BadRequest {
                message: format!("no deployment serving `{model}` can take this request: {t}"),
                param: (!t.param.is_empty()).then(|| t.param.clone()),
                code: Some("unsupported_parameter".to_owned()),
            },
            None => GatewayError::Unavailable {
                message: format!("no deployment is available for `{model}`"),
                retry_after: None,
            },
        }
    }

    fn mailbox_failed(&self, d: usize, e: MailboxError) {
        let m = &self.metrics.deployments[d];
        match e {
            MailboxError::Closed => {
                m.actor_closed.increment(1);
                self.registry.respawn(d);
            }
            MailboxError::Timeout => m.actor_timeouts.increment(1),
        }
    }

    /// Takes a permit: from the board when the actor published "free", else from the actor.
    /// The board is read again here, so a state published since the bids were read counts.
    async fn reserve(&self, dep: usize) -> Result<Permit, Decline> {
        let board = self.registry.board(dep);
        let (_, path) = board.bid(dep, self.clock.now());
        let probe = match path {
            Path::Direct => {
                board.try_take()?;
                None
            }
            Path::Actor => {
                match self
                    .registry
                    .addr(dep)
                    .send(Reserve)
                    .timeout(self.config.router.mailbox_timeout)
                    .await
                {
                    Ok(Ok(Grant { probe })) => probe,
                    Ok(Err(d)) => return Err(d),
                    Err(e) => {
                        self.mailbox_failed(dep, e);
                        return Err(Decline::Unavailable);
                    }
                }
            }
        };
        self.metrics.deployments[dep].in_flight.increment(1.0);
        Ok(Permit {
            deployment: dep,
            outbox: self.outbox.clone(),
            probe,
            board: board.clone(),
            metrics: self.metrics.clone(),
            reported: false,
        })
    }

    /// Real-time deadline for I/O: the attempt's own limit, inside the overall deadline.
    fn io_deadline(&self, deadline: Instant, limit: Duration) -> Instant {
        let remaining = deadline.saturating_duration_since(self.clock.now());
        Instant::now() + remaining.min(limit)
    }

    async fn attempt_json(
        &self,
        requested: usize,
        dep: usize,
        mut permit: Permit,
        body: Bytes,
        deadline: Instant,
        st: &mut PlanState,
    ) -> Result<Routed, UpstreamError> {
        let limit = permit.limit(
            self.config.router.per_try_timeout,
            self.config.breaker.probe_timeout,
        );
        let io_deadline = self.io_deadline(deadline, limit);
        let started = Instant::now();
        let result = upstream::call_json(
            &self.client,
            &self.targets[dep],
            body,
            io_deadline,
            self.config.router.max_response_bytes,
        )
        .await;
        let latency = started.elapsed();
        st.upstream_wait += latency;
        match result {
            Ok(answer) => {
                permit.report(Outcome::Success, latency, None, None);
                let m = &self.metrics.deployments[dep];
                m.latency.record(latency.as_secs_f64());
                let cost = self.bill(dep, &answer.usage);
                Ok(Routed {
                    group: requested,
                    deployment: dep,
                    attempts: st.attempts,
                    upstream_wait: st.upstream_wait,
                    body: RoutedBody::Json {
                        body: answer.body,
                        usage: answer.usage,
                        cost,
                    },
                })
            }
            Err(e) => {
                permit.report(Outcome::Failure(e.class), latency, None, e.retry_after);
                Err(e)
            }
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one attempt needs the plan's whole context; a struct would only rename it"
    )]
    async fn attempt_stream(
        &self,
        requested: usize,
        dep: usize,
        mut permit: Permit,
        body: Bytes,
        msg: &Route,
        deadline: Instant,
        st: &mut PlanState,
    ) -> Result<Routed, UpstreamError> {
        let r = &self.config.router;
        let limit = permit.limit(
            r.first_token_timeout.min(r.per_try_timeout),
            self.config.breaker.probe_timeout,
        );
        let first_token = self.io_deadline(deadline, limit);
        let started = Instant::now();
        let opened = upstream::open_stream(
            &self.client,
            &self.targets[dep],
            body,
            first_token,
            msg.body.facts.include_usage,
        )
        .await;
        st.upstream_wait += started.elapsed();
        let open = match opened {
            Ok(open) => open,
            Err(e) => {
                permit.report(
                    Outcome::Failure(e.class),
                    started.elapsed(),
                    None,
                    e.retry_after,
                );
                return Err(e);
            }
        };
        permit.report(Outcome::ProbeCommitted, Duration::ZERO, None, None);
        let ttft = open.first_token_at.saturating_duration_since(started);
        let prelude = open.prelude.clone();
        let (tx, rx) = mpsc::channel(r.stream_buffer_chunks);
        let overhead = msg.received.elapsed().saturating_sub(st.upstream_wait);
        let log = StreamLog {
            request_id: msg.request_id.clone(),
            model: msg.body.model.clone(),
            group: self.config.groups[requested].name.clone(),
            deployment: self.config.deployments[dep].id.clone(),
            attempts: st.attempts,
            overhead,
            received: msg.received,
        };
        let metrics = self.metrics.clone();
        let config = self.config.clone();
        let idle = r.stream_idle_timeout;
        let stream_deadline = self.io_deadline(deadline, Duration::MAX);
        actix_web::rt::spawn(async move {
            let result = upstream::pump(open, tx, idle, stream_deadline).await;
            let latency = started.elapsed();
            let m = &metrics.deployments[dep];
            if result.invalid_events > 0 {
                m.invalid_events.increment(u64::from(result.invalid_events));
            }
            let cost = bill(&config, &metrics, dep, &result.usage);
            match &result.end {
                StreamEnd::Complete => {
                    permit.report(Outcome::Success, latency, Some(ttft), None);
                    m.latency.record(latency.as_secs_f64());
                    m.ttft.record(ttft.as_secs_f64());
                }
                StreamEnd::Failed(e) => permit.report(
                    Outcome::Failure(e.class),
                    latency,
                    Some(ttft),
                    e.retry_after,
                ),
                StreamEnd::Cancelled => {
                    permit.report(Outcome::Cancelled, latency, Some(ttft), None)
                }
            }
            drop(permit);
            if config.log.requests {
                log.emit(&result.end, &result.usage, cost);
            }
        });
        Ok(Routed {
            group: requested,
            deployment: dep,
            attempts: st.attempts,
            upstream_wait: st.upstream_wait,
            body: RoutedBody::Stream { prelude, rx },
        })
    }

    fn bill(&self, dep: usize, usage: &Usage) -> u64 {
        bill(&self.config, &self.metrics, dep, usage)
    }
}

/// Records tokens and spend for one served attempt; returns the cost in pico-dollars.
fn bill(config: &Config, metrics: &Metrics, dep: usize, usage: &Usage) -> u64 {
    let m = &metrics.deployments[dep];
    m.tokens_in.increment(usage.prompt_tokens);
    m.tokens_out.increment(usage.completion_tokens);
    let cost = config.deployments[dep].prices.cost(
        usage.prompt_tokens,
        usage.cached_tokens,
        usage.completion_tokens,
    );
    m.cost_nanodollars.increment(cost / 1000);
    cost
}

/// The request log line of a committed stream, written when the stream ends.
struct StreamLog {
    request_id: Arc<str>,
    model: Box<str>,
    group: Arc<str>,
    deployment: Arc<str>,
    attempts: u32,
    overhead: Duration,
    received: Instant,
}

impl StreamLog {
    fn emit(&self, end: &StreamEnd, usage: &Usage, cost: u64) {
        let (outcome, error) = match end {
            StreamEnd::Complete => ("complete", None),
            StreamEnd::Failed(e) => ("failed", Some(e.to_string())),
            StreamEnd::Cancelled => ("cancelled", None),
        };
        tracing::info!(
            target: "switchyard::request",
            request_id = %self.request_id,
            model = %self.model,
            model_group = %self.group,
            deployment = %self.deployment,
            status = 200u16,
            stream = true,
            stream_outcome = outcome,
            error = error.as_deref(),
            attempts = self.attempts,
            duration_ms = self.received.elapsed().as_secs_f64() * 1000.0,
            overhead_ms = self.overhead.as_secs_f64() * 1000.0,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            cost_usd = cost as f64 / 1e12,
            "request"
        );
    }
}
