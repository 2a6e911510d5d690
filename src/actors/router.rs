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
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
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
use crate::config::{Deployment, ModelGroup, RouterConfig, Rule};
use crate::error::{ErrorClass, GatewayError, UpstreamError};
use crate::metrics::{Metrics, OUTCOME_CANCELLED, OUTCOME_SUCCESS};
use crate::policy::backoff::full_jitter;
use crate::policy::breaker::ProbeTicket;
use crate::policy::headroom::Headroom;
use crate::policy::scoring::Ask;
use crate::policy::scoring::{Bid, Decline};
use crate::providers::oai::Usage;
use crate::providers::request::ChatBody;
use crate::providers::Expect;
use crate::providers::{self, TranslateError};
use crate::upstream::{self, JsonAnswer, OpenStream, StreamEnd, Target};

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
    pub meta: RequestMeta,
}

/// What the handler learned about the request besides its body.
#[derive(Debug, Default)]
pub struct RequestMeta {
    /// Index into `config.keys` of the client's key (`None`: master key or no auth).
    pub key: Option<usize>,
    /// Deployments outside this region are never used (from the key, else the request).
    pub region: Option<Box<str>>,
    /// From `x-switchyard-tags` (comma separated).
    pub tags: Vec<Box<str>>,
    /// The request's values of the headers the routing rules look at (lower-case names).
    pub headers: Vec<(Box<str>, Box<str>)>,
    /// The client's own timeout; it can only shorten the deadline.
    pub timeout: Option<Duration>,
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
            let msg = ReportOutcomes::new(batch, self.registry.board(d).clone());
            // A batch that is not delivered settles itself when dropped.
            match self.registry.addr(d).try_send(msg) {
                Ok(()) => {}
                Err(SendError::Full(_)) => m.outcomes_dropped.increment(n),
                // The actor is gone; the registry respawns it on the next bid read.
                Err(SendError::Closed(_)) => m.actor_closed.increment(1),
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
    /// Round-robin counters, one per model group (per worker: each worker rotates on its own).
    pub ticks: Vec<Cell<u64>>,
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
/// when dropped unreported (the client went away mid-attempt, or a hedge lost the race).
struct Permit {
    deployment: usize,
    outbox: Rc<Outbox>,
    probe: Option<ProbeTicket>,
    board: Arc<Board>,
    metrics: Arc<Metrics>,
    reported: bool,
    /// Tokens reserved against the deployment's tpm limit, until corrected by real usage.
    tokens: u32,
    tokens_settled: bool,
}

impl Permit {
    fn report(
        &mut self,
        outcome: Outcome,
        latency: Duration,
        ttft: Option<Duration>,
        retry_after: Option<Duration>,
        headroom: Option<Headroom>,
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
        let urgent = self.probe.is_some()
            || matches!(outcome, Outcome::Failure(_))
            || headroom
                .as_ref()
                .is_some_and(|h| h.exhausted_until().is_some());
        let msg = ReportOutcome {
            outcome,
            probe: self.probe,
            latency,
            ttft,
            retry_after,
            headroom,
        };
        self.outbox.send(self.deployment, msg, urgent);
    }

    /// Corrects the tpm reservation with the tokens really used (`None`: give it back).
    fn settle_tokens(&mut self, used: Option<u64>) {
        if !self.tokens_settled {
            self.tokens_settled = true;
            self.board.settle_tokens(self.tokens, used);
        }
    }

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
            headroom: None,
        };
        self.outbox.send(self.deployment, msg, true);
    }
}

/// An attempt's time limit: a probe is also bounded by its probe timeout.
fn attempt_limit(limit: Duration, probe: bool, probe_timeout: Duration) -> Duration {
    if probe {
        limit.min(probe_timeout)
    } else {
        limit
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.report(Outcome::Cancelled, Duration::ZERO, None, None, None);
        self.settle_tokens(None);
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
    /// The group's retry budget refused a retry: the plan stops.
    budget_spent: bool,
    /// Some deployment was left out because it is outside the request's region.
    region_excluded: bool,
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

/// One request's routing context, fixed for the whole plan.
struct Plan<'a> {
    msg: &'a Route,
    /// The group the client asked for (after tenant, alias and wildcard resolution).
    requested: usize,
    /// For a wildcard group: the model to send upstream instead of the deployment's.
    passthrough: Option<Box<str>>,
    deadline: Instant,
    ask: Ask,
}

/// An answered attempt, before it is reported and turned into a response.
enum Answer {
    Json(JsonAnswer),
    Stream(Box<OpenStream>),
}

/// One attempt in flight: its deployment, its permit, when it started.
struct Attempt {
    dep: usize,
    permit: Permit,
    started: Instant,
}

/// A failed attempt's lesson for the group loop.
enum AfterFailure {
    /// Try the next deployment in the order.
    Next,
    /// Leave this group.
    Exhausted,
    Stop(GatewayError),
}

impl RouterCore {
    async fn route(self: Rc<Self>, msg: Route) -> Result<Routed, RouteError> {
        let fail = |error, group| RouteError {
            error,
            group,
            attempts: 0,
            upstream_wait: Duration::ZERO,
        };
        let Some((group, passthrough)) = self.resolve(&msg) else {
            return Err(fail(
                GatewayError::ModelNotFound(msg.body.model.to_string()),
                None,
            ));
        };
        let requested = group.index;
        let policy = &group.policy;
        let now = self.clock.now();
        let timeout = msg
            .meta
            .timeout
            .map_or(policy.timeout, |t| t.min(policy.timeout));
        let facts = &msg.body.facts;
        let plan = Plan {
            msg: &msg,
            requested,
            passthrough,
            deadline: now + timeout,
            ask: Ask {
                est_prompt_tokens: u64::from(facts.est_prompt_tokens),
                est_completion_tokens: u64::from(facts.max_tokens.unwrap_or(256)),
                stream: facts.stream,
            },
        };
        self.registry.budget(requested).request(now);
        let mut st = PlanState::new();
        let end = self.run_group(&plan, requested, true, &mut st).await;
        let end = match end {
            GroupEnd::Exhausted if !st.deadline_hit && !st.budget_spent => {
                self.run_fallbacks(&plan, group, &mut st).await
            }
            other => other,
        };
        let error = match end {
            GroupEnd::Served(routed) => return Ok(routed),
            GroupEnd::Stop(error) => error,
            GroupEnd::Exhausted => self.final_error(&plan, &st),
        };
        Err(RouteError {
            error,
            group: Some(requested),
            attempts: st.attempts,
            upstream_wait: st.upstream_wait,
        })
    }

    /// The fallback chain for how the requested group failed: the content-policy chain after a
    /// refusal (none configured: the refusal goes back to the client), the context-window chain
    /// after a prompt too long (else the default chain), otherwise the default chain. Each
    /// fallback group gets one pass and is not retried.
    async fn run_fallbacks(
        &self,
        plan: &Plan<'_>,
        group: &ModelGroup,
        st: &mut PlanState,
    ) -> GroupEnd {
        let class = st.last_error.as_ref().map(|(_, e)| e.class);
        let chain = match class {
            Some(ErrorClass::ContentPolicy) if group.content_policy_fallbacks.is_empty() => {
                return GroupEnd::Stop(self.client_error(st));
            }
            Some(ErrorClass::ContentPolicy) => &group.content_policy_fallbacks,
            Some(ErrorClass::ContextWindow) if !group.context_window_fallbacks.is_empty() => {
                &group.context_window_fallbacks
            }
            _ => &group.fallbacks,
        };
        for &g in chain {
            self.metrics.fallback(plan.requested, g);
            tracing::debug!(request_id = %plan.msg.request_id, from = %group.name, to = %self.config.groups[g].name, "falling back");
            match self.run_group(plan, g, false, st).await {
                GroupEnd::Exhausted if !st.deadline_hit && !st.budget_spent => {}
                end => return end,
            }
        }
        GroupEnd::Exhausted
    }

    /// The model group a request resolves to, and the model a wildcard group passes through.
    /// A key with a tenant sees its tenant's groups first (`gpt-4o` -> `tenant-a/gpt-4o`), then
    /// the shared ones; no key sees another tenant's groups.
    fn resolve(&self, msg: &Route) -> Option<(&ModelGroup, Option<Box<str>>)> {
        let config = &self.config;
        let name: &str = &msg.body.model;
        let key = msg.meta.key.map(|k| &config.keys[k]);
        if let Some(owner) = config.tenant_of(name) {
            // The master key (or no auth) may address any tenant; a key only its own.
            if key.is_some_and(|k| k.tenant.as_deref() != Some(owner)) {
                return None;
            }
        }
        let own = key
            .and_then(|k| k.tenant.as_deref())
            .filter(|_| config.tenant_of(name).is_none())
            .and_then(|t| {
                let scoped = format!("{t}/{name}");
                config.resolve(&scoped).map(|g| (g, scoped))
            });
        let (group, resolved) = match own {
            Some(found) => found,
            None => (config.resolve(name)?, name.to_owned()),
        };
        let resolved = config
            .aliases
            .get(resolved.as_str())
            .map_or(resolved, |t| t.to_string());
        let passthrough = group
            .wildcard
            .as_deref()
            .and_then(|prefix| resolved.strip_prefix(prefix))
            .map(Box::from);
        Some((group, passthrough))
    }

    /// The first rule that matches this request in group `g`.
    fn rule_for(&self, g: usize, msg: &Route) -> Option<&Rule> {
        let meta = &msg.meta;
        self.config.rules.iter().find(|r| {
            r.group.is_none_or(|rg| rg == g)
                && r.user
                    .as_deref()
                    .is_none_or(|u| msg.body.facts.user.as_deref() == Some(u))
                && r.key
                    .as_deref()
                    .is_none_or(|k| meta.key.is_some_and(|i| *self.config.keys[i].name == *k))
                && r.headers.iter().all(|(name, value)| {
                    meta.headers
                        .iter()
                        .any(|(n, v)| **n == **name && **v == **value)
                })
                && r.tags
                    .iter()
                    .all(|t| meta.tags.iter().any(|have| **have == **t))
        })
    }

    /// Tries one model group. The requested group may wait and retry the same deployment;
    /// fallback groups get one pass over their available deployments.
    async fn run_group(
        &self,
        plan: &Plan<'_>,
        g: usize,
        primary: bool,
        st: &mut PlanState,
    ) -> GroupEnd {
        let group = &self.config.groups[g];
        let policy: &RouterConfig = &group.policy;
        let rule = self.rule_for(g, plan.msg);
        let region = plan.msg.meta.region.as_deref();
        // Outside the request's region, or left out by the rule: never used, not even counted
        // as a decline.
        let eligible = |d: usize| {
            region.is_none_or(|r| self.config.deployments[d].region.as_deref() == Some(r))
                && rule.is_none_or(|r| r.only.is_empty() || r.only.contains(&d))
        };
        if region.is_some()
            && group
                .deployments
                .iter()
                .any(|&d| self.config.deployments[d].region.as_deref() != region)
        {
            st.region_excluded = true;
        }
        let max_attempts = 1 + policy.num_retries;
        let mut attempts_here = 0u32;
        // Deployments that failed in this request, and when each may be tried again (if ever).
        let mut failed: Vec<(usize, Option<Instant>)> = Vec::new();
        // When a wait for a free slot (all deployments at their concurrency limit) gives up.
        let mut queue_deadline: Option<Instant> = None;
        loop {
            if attempts_here >= max_attempts {
                return GroupEnd::Exhausted;
            }
            if self.clock.now() >= plan.deadline {
                st.deadline_hit = true;
                return GroupEnd::Exhausted;
            }
            let now = self.clock.now();
            let mut candidates: Vec<Bid> = Vec::with_capacity(group.deployments.len());
            let mut at_capacity = false;
            for &d in &group.deployments {
                if !eligible(d) || failed.iter().any(|(f, _)| *f == d) {
                    continue;
                }
                if !self.registry.alive(d) {
                    // Its published bid died with it; the fresh actor publishes anew.
                    self.metrics.deployments[d].decline(Decline::Unavailable.as_str());
                    st.note_decline(d, &Decline::Unavailable, now);
                    continue;
                }
                let (mut b, _) = self.registry.board(d).bid(d, now);
                match &b.decline {
                    Some(decline) => {
                        at_capacity |= *decline == Decline::AtCapacity;
                        self.metrics.deployments[d].decline(decline.as_str());
                        st.note_decline(d, decline, now);
                    }
                    None => {
                        if rule.is_some_and(|r| !r.prefer.is_empty() && !r.prefer.contains(&d)) {
                            // Not preferred: after every preferred deployment.
                            b.order = b.order.saturating_add(1 << 16);
                        }
                        candidates.push(b);
                    }
                }
            }
            let tick = self
                .ticks
                .get(g)
                .map_or(0, |t| t.replace(t.get().wrapping_add(1)));
            let mut order = policy
                .strategy
                .order(&candidates, &plan.ask, tick, &mut || fastrand::f64())
                .into_iter();

            let mut attempted = false;
            while let Some(dep) = order.next() {
                let Some(first) = self.start(plan, dep, st, &mut failed).await else {
                    continue;
                };
                // Every attempt after the request's first is a retry, in a fallback group too.
                if st.attempts > 0 && !self.may_retry(plan, st) {
                    return GroupEnd::Exhausted;
                }
                if queue_deadline.take().is_some() {
                    self.metrics.queued[g][0].increment(1);
                }
                attempts_here += 1;
                st.attempts += 1;
                if attempts_here > 1 {
                    self.metrics.retries[g].increment(1);
                }
                attempted = true;
                let (winner, losers) = self
                    .race(
                        plan,
                        g,
                        policy,
                        first,
                        &mut order,
                        st,
                        &mut failed,
                        &mut attempts_here,
                    )
                    .await;
                let mut next = AfterFailure::Next;
                for (attempt, e) in losers {
                    match self.after_failure(
                        plan,
                        policy,
                        attempt,
                        e,
                        attempts_here,
                        st,
                        &mut failed,
                    ) {
                        AfterFailure::Next => {}
                        other => next = other,
                    }
                }
                if let Some((attempt, answer)) = winner {
                    return GroupEnd::Served(self.finish(plan, attempt, answer, st));
                }
                match next {
                    AfterFailure::Next => break,
                    AfterFailure::Exhausted => return GroupEnd::Exhausted,
                    AfterFailure::Stop(e) => return GroupEnd::Stop(e),
                }
            }
            if attempted {
                continue;
            }
            // Nothing could be tried right now. Every deployment at its concurrency limit: wait
            // in the group's bounded queue for a slot.
            if at_capacity && policy.max_pending > 0 {
                let now = self.clock.now();
                let until = *queue_deadline.get_or_insert(now + policy.pending_timeout);
                if self
                    .wait_for_slot(g, policy, until.min(plan.deadline))
                    .await
                {
                    continue;
                }
            }
            // The requested group may wait for a deployment that failed retryably, if the wait
            // is short enough.
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
            if wait > policy.max_retry_wait || at >= plan.deadline {
                return GroupEnd::Exhausted;
            }
            let waited_from = Instant::now();
            self.clock.sleep_until(at).await;
            st.upstream_wait += waited_from.elapsed();
            failed.retain(|&(d, _)| d != dep);
        }
    }

    /// Waits until a slot of group `g` is released, or `until`. `false` when the queue is
    /// full or the wait timed out.
    async fn wait_for_slot(&self, g: usize, policy: &RouterConfig, until: Instant) -> bool {
        let queue = self.registry.queue(g);
        let m = &self.metrics.queued[g];
        if queue.waiting.load(Ordering::Acquire) >= policy.max_pending {
            m[2].increment(1);
            return false;
        }
        let now = self.clock.now();
        if until <= now {
            m[1].increment(1);
            return false;
        }
        queue.waiting.fetch_add(1, Ordering::AcqRel);
        let freed = self
            .clock
            .timeout_at(until, queue.slot_freed.notified())
            .await;
        queue.waiting.fetch_sub(1, Ordering::AcqRel);
        if freed.is_none() {
            m[1].increment(1);
        }
        // A wake-up is not yet a slot (another request may take it): `served` is counted
        // when the attempt starts.
        freed.is_some()
    }

    /// Retries are every attempt after a request's first; the requested group's budget caps
    /// them so a failing provider cannot multiply the load.
    fn may_retry(&self, plan: &Plan<'_>, st: &mut PlanState) -> bool {
        if self
            .registry
            .budget(plan.requested)
            .try_retry(self.clock.now())
        {
            return true;
        }
        self.metrics.retry_budget_exhausted[plan.requested].increment(1);
        st.budget_spent = true;
        false
    }

    /// Builds the body for `dep` and reserves a permit; `None` (noted in `st`) when the
    /// provider cannot express the request or the deployment declines.
    async fn start(
        &self,
        plan: &Plan<'_>,
        dep: usize,
        st: &mut PlanState,
        failed: &mut Vec<(usize, Option<Instant>)>,
    ) -> Option<(Attempt, Bytes)> {
        let d: &Deployment = &self.config.deployments[dep];
        let model = match (&plan.passthrough, d.wildcard) {
            (Some(m), true) => &**m,
            _ => &*d.upstream_model,
        };
        let body = match providers::build_body(d, model, &plan.msg.body) {
            Ok(b) => b,
            Err(e) => {
                // This provider cannot express the request; others may.
                st.translate_error.get_or_insert(e);
                failed.push((dep, None));
                return None;
            }
        };
        let tokens = u32::try_from(plan.ask.est_prompt_tokens + plan.ask.est_completion_tokens)
            .unwrap_or(u32::MAX);
        match self.reserve(dep, tokens).await {
            Ok(permit) => Some((
                Attempt {
                    dep,
                    permit,
                    started: Instant::now(),
                },
                body,
            )),
            Err(decline) => {
                self.metrics.deployments[dep].decline(decline.as_str());
                st.note_decline(dep, &decline, self.clock.now());
                None
            }
        }
    }

    /// Runs an attempt; with hedging on, starts a second one on the next deployment in `order`
    /// when the first has not answered within the hedge delay, and keeps whichever answers
    /// first (the other is dropped: cancelled upstream, reported `Cancelled`, never billed).
    /// Returns the winner, if any, and the attempts that failed.
    #[expect(
        clippy::too_many_arguments,
        reason = "the race shares the group loop's whole state; a struct would only rename it"
    )]
    async fn race(
        &self,
        plan: &Plan<'_>,
        g: usize,
        policy: &RouterConfig,
        first: (Attempt, Bytes),
        order: &mut std::vec::IntoIter<usize>,
        st: &mut PlanState,
        failed: &mut Vec<(usize, Option<Instant>)>,
        attempts_here: &mut u32,
    ) -> (Option<(Attempt, Answer)>, Vec<(Attempt, UpstreamError)>) {
        let (a, body_a) = first;
        let mut fut_a = pin!(self.call(plan, a.dep, a.permit.probe.is_some(), body_a));
        let hedge_after = if policy.hedge {
            self.hedge_delay(plan, g, a.dep, policy)
        } else {
            None
        };
        let Some(delay) = hedge_after else {
            let r = fut_a.await;
            st.upstream_wait += a.started.elapsed();
            return match r {
                Ok(answer) => (Some((a, answer)), Vec::new()),
                Err(e) => (None, vec![(a, e)]),
            };
        };
        let hedge_at = Instant::now() + delay;
        tokio::select! {
            r = &mut fut_a => {
                st.upstream_wait += a.started.elapsed();
                return match r {
                    Ok(answer) => (Some((a, answer)), Vec::new()),
                    Err(e) => (None, vec![(a, e)]),
                };
            }
            () = tokio::time::sleep_until(hedge_at) => {}
        }
        // The first attempt is slow: hedge on the next deployment that takes a permit.
        let mut second = None;
        for dep in order.by_ref() {
            if let Some(b) = self.start(plan, dep, st, failed).await {
                second = Some(b);
                break;
            }
        }
        let Some((b, body_b)) = second else {
            let r = fut_a.await;
            st.upstream_wait += a.started.elapsed();
            return match r {
                Ok(answer) => (Some((a, answer)), Vec::new()),
                Err(e) => (None, vec![(a, e)]),
            };
        };
        self.metrics.hedges[g][0].increment(1);
        *attempts_here += 1;
        st.attempts += 1;
        tracing::debug!(request_id = %plan.msg.request_id, first = %self.config.deployments[a.dep].id, second = %self.config.deployments[b.dep].id, "hedging");
        let mut fut_b = pin!(self.call(plan, b.dep, b.permit.probe.is_some(), body_b));
        let mut failures = Vec::new();
        let mut a = Some(a);
        let mut b = Some(b);
        let started = Instant::now();
        // Both attempts run until one answers or both fail.
        let winner = loop {
            tokio::select! {
                r = &mut fut_a, if a.is_some() => {
                    let Some(att) = a.take() else { break None };
                    match r {
                        Ok(answer) => break Some((att, answer)),
                        Err(e) => {
                            failures.push((att, e));
                            if b.is_none() { break None; }
                        }
                    }
                }
                r = &mut fut_b, if b.is_some() => {
                    let Some(att) = b.take() else { break None };
                    match r {
                        Ok(answer) => {
                            self.metrics.hedges[g][1].increment(1);
                            break Some((att, answer));
                        }
                        Err(e) => {
                            failures.push((att, e));
                            if a.is_none() { break None; }
                        }
                    }
                }
                else => break None,
            }
        };
        st.upstream_wait += started.elapsed() + delay;
        // The loser, if still running, is dropped here with its permit: `Cancelled`.
        drop(a);
        drop(b);
        (winner, failures)
    }

    /// How long to wait for the first attempt before hedging: the configured delay, else the
    /// deployment's p95 TTFT (whole latency for non-streams), else the group's slowest known.
    fn hedge_delay(
        &self,
        plan: &Plan<'_>,
        g: usize,
        dep: usize,
        policy: &RouterConfig,
    ) -> Option<Duration> {
        if let Some(d) = policy.hedge_delay {
            return Some(d);
        }
        let p95 = |d: usize| {
            let p = self.registry.board(d).published();
            if plan.ask.stream {
                p.ttft_p95_us
            } else {
                p.latency_p95_us
            }
        };
        p95(dep)
            .or_else(|| {
                self.config.groups[g]
                    .deployments
                    .iter()
                    .filter_map(|&d| p95(d))
                    .max()
            })
            .map(Duration::from_micros)
    }

    /// Sends one attempt and waits for its answer: the whole body, or a stream up to its first
    /// meaningful event (the commit point). Never reports; the caller does.
    async fn call(
        &self,
        plan: &Plan<'_>,
        dep: usize,
        probe: bool,
        body: Bytes,
    ) -> Result<Answer, UpstreamError> {
        let r = &self.config.router;
        let d = &self.config.deployments[dep];
        let policy = &self.config.groups[d.group].policy;
        let probe_timeout = d.breaker.probe_timeout;
        let per_try = d.per_try_timeout.unwrap_or(policy.per_try_timeout);
        let model = match (&plan.passthrough, d.wildcard) {
            (Some(m), true) => &**m,
            _ => &*d.upstream_model,
        };
        let facts = &plan.msg.body.facts;
        let target = &self.targets[dep];
        let call = upstream::Call {
            model,
            expect: Expect {
                op: plan.msg.body.op,
                embed: facts.embed.map(|ask| {
                    let t = providers::embed_target(target.wire.kind, model, ask.inputs);
                    (t.unwrap_or(providers::embeddings::Target::OpenAi), ask)
                }),
            },
            stream: facts.stream,
        };
        if facts.stream {
            let first_token = d.first_token_timeout.unwrap_or(policy.first_token_timeout);
            let limit = attempt_limit(first_token.min(per_try), probe, probe_timeout);
            upstream::open_stream(
                &self.client,
                target,
                &call,
                body,
                self.io_deadline(plan.deadline, limit),
                facts.include_usage,
            )
            .await
            .map(|open| Answer::Stream(Box::new(open)))
        } else {
            let limit = attempt_limit(per_try, probe, probe_timeout);
            upstream::call_json(
                &self.client,
                target,
                &call,
                body,
                self.io_deadline(plan.deadline, limit),
                r.max_response_bytes,
            )
            .await
            .map(Answer::Json)
        }
    }

    /// Reports a failed attempt and decides what the group loop does next.
    #[expect(
        clippy::too_many_arguments,
        reason = "a failure updates the group loop's whole state"
    )]
    fn after_failure(
        &self,
        plan: &Plan<'_>,
        policy: &RouterConfig,
        mut a: Attempt,
        e: UpstreamError,
        attempts_here: u32,
        st: &mut PlanState,
        failed: &mut Vec<(usize, Option<Instant>)>,
    ) -> AfterFailure {
        let dep = a.dep;
        a.permit.report(
            Outcome::Failure(e.class),
            a.started.elapsed(),
            None,
            e.retry_after,
            e.headroom.as_deref().copied(),
        );
        tracing::debug!(
            request_id = %plan.msg.request_id,
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
            return AfterFailure::Stop(self.client_error(st));
        }
        if class.skips_rest_of_group() {
            // The fallback chain for this class decides (`run_fallbacks`).
            return AfterFailure::Exhausted;
        }
        let now = self.clock.now();
        let again = class.retry_same_deployment().then(|| {
            if class == ErrorClass::RateLimited {
                let d = &self.config.deployments[dep];
                let at = now + rate_limit_cooldown(retry_after, d.rate_limit_cooldown);
                st.note_rate_limited(dep, at);
                at
            } else {
                now + full_jitter(
                    attempts_here.saturating_sub(1),
                    policy.backoff_base,
                    policy.backoff_max,
                    fastrand::f64(),
                )
            }
        });
        failed.push((dep, again));
        AfterFailure::Next
    }

    /// Reports a successful attempt and turns it into the response: the body (billed now), or
    /// a committed stream whose pump reports and bills when it ends.
    fn finish(&self, plan: &Plan<'_>, a: Attempt, answer: Answer, st: &mut PlanState) -> Routed {
        let Attempt {
            dep,
            mut permit,
            started,
        } = a;
        let group = self.config.deployments[dep].group;
        match answer {
            Answer::Json(answer) => {
                let latency = started.elapsed();
                permit.report(Outcome::Success, latency, None, None, answer.headroom);
                permit.settle_tokens(Some(
                    answer.usage.prompt_tokens + answer.usage.completion_tokens,
                ));
                self.metrics.deployments[dep]
                    .latency
                    .record(latency.as_secs_f64());
                let cost = self.bill(dep, &answer.usage);
                Routed {
                    group,
                    deployment: dep,
                    attempts: st.attempts,
                    upstream_wait: st.upstream_wait,
                    body: RoutedBody::Json {
                        body: answer.body,
                        usage: answer.usage,
                        cost,
                    },
                }
            }
            Answer::Stream(mut open) => {
                permit.report(Outcome::ProbeCommitted, Duration::ZERO, None, None, None);
                let headroom = open.headroom.take();
                let ttft = open.first_token_at.saturating_duration_since(started);
                let prelude = open.prelude.clone();
                let r = &self.config.router;
                let d = &self.config.deployments[dep];
                let idle = d
                    .stream_idle_timeout
                    .unwrap_or(self.config.groups[group].policy.stream_idle_timeout);
                let (tx, rx) = mpsc::channel(r.stream_buffer_chunks);
                let msg = plan.msg;
                let overhead = msg.received.elapsed().saturating_sub(st.upstream_wait);
                let log = StreamLog {
                    request_id: msg.request_id.clone(),
                    model: msg.body.model.clone(),
                    group: self.config.groups[group].name.clone(),
                    deployment: d.id.clone(),
                    attempts: st.attempts,
                    overhead,
                    received: msg.received,
                };
                let metrics = self.metrics.clone();
                let config = self.config.clone();
                let stream_deadline = self.io_deadline(plan.deadline, Duration::MAX);
                actix_web::rt::spawn(async move {
                    let result = upstream::pump(*open, tx, idle, stream_deadline).await;
                    let latency = started.elapsed();
                    let m = &metrics.deployments[dep];
                    if result.invalid_events > 0 {
                        m.invalid_events.increment(u64::from(result.invalid_events));
                    }
                    let cost = bill(&config, &metrics, dep, &result.usage);
                    let used = result.usage.prompt_tokens + result.usage.completion_tokens;
                    permit.settle_tokens((used > 0).then_some(used));
                    match &result.end {
                        StreamEnd::Complete => {
                            permit.report(Outcome::Success, latency, Some(ttft), None, headroom);
                            m.latency.record(latency.as_secs_f64());
                            m.ttft.record(ttft.as_secs_f64());
                        }
                        StreamEnd::Failed(e) => permit.report(
                            Outcome::Failure(e.class),
                            latency,
                            Some(ttft),
                            e.retry_after,
                            headroom,
                        ),
                        StreamEnd::Cancelled => {
                            permit.report(Outcome::Cancelled, latency, Some(ttft), None, None)
                        }
                    }
                    drop(permit);
                    if config.log.requests {
                        log.emit(&result.end, &result.usage, cost);
                    }
                    // Billed and reported: now the client's stream ends.
                    result.rest.close().await;
                });
                Routed {
                    group,
                    deployment: dep,
                    attempts: st.attempts,
                    upstream_wait: st.upstream_wait,
                    body: RoutedBody::Stream { prelude, rx },
                }
            }
        }
    }

    /// The error to return when the upstream refused the request as the client's fault.
    fn client_error(&self, st: &PlanState) -> GatewayError {
        match &st.last_error {
            Some((_, e)) => GatewayError::UpstreamRejected(e.clone()),
            None => GatewayError::Internal("client error without an upstream error".to_owned()),
        }
    }

    /// The error when nothing served. A request pinned to a region whose plan left deployments
    /// out says so: the client learns that other regions could have served.
    fn final_error(&self, plan: &Plan<'_>, st: &PlanState) -> GatewayError {
        let error = self.plan_error(plan, st);
        let Some(region) = plan
            .msg
            .meta
            .region
            .as_deref()
            .filter(|_| st.region_excluded)
        else {
            return error;
        };
        let model = &self.config.groups[plan.requested].name;
        match error {
            GatewayError::UpstreamFailed { message } => GatewayError::Unavailable {
                message: format!(
                    "no deployment in region `{region}` could serve `{model}` ({message}); deployments in other regions were not used"
                ),
                retry_after: None,
            },
            GatewayError::Unavailable {
                message,
                retry_after,
            } if st.last_error.is_some() || !st.declines.is_empty() => GatewayError::Unavailable {
                message: format!(
                    "{message}; only deployments in region `{region}` may serve this request"
                ),
                retry_after,
            },
            other => other,
        }
    }

    fn plan_error(&self, plan: &Plan<'_>, st: &PlanState) -> GatewayError {
        let group = &self.config.groups[plan.requested];
        let model = &group.name;
        let now = self.clock.now();
        let until = |at: Instant| {
            at.saturating_duration_since(now)
                .max(Duration::from_secs(1))
        };
        if st.deadline_hit {
            return GatewayError::DeadlineExceeded {
                message: format!("the request deadline passed after {} attempts", st.attempts),
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
            let budget = if st.budget_spent {
                " (no more retries: the retry budget is spent)"
            } else {
                ""
            };
            return match e.class {
                _ if st.only_rate_limit_failures => rate_limited(),
                ErrorClass::ContextWindow | ErrorClass::ContentPolicy => {
                    GatewayError::UpstreamRejected(e.clone())
                }
                ErrorClass::Timeout => GatewayError::DeadlineExceeded {
                    message: format!(
                        "{} attempt(s) failed; the last, on deployment {}, timed out: {}{budget}",
                        st.attempts, self.config.deployments[*dep].id, e.message
                    ),
                },
                _ => GatewayError::UpstreamFailed {
                    message: format!(
                        "{} attempt(s) failed; the last, on deployment {}: {e}{budget}",
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
        if let (Some(region), true) = (&plan.msg.meta.region, st.region_excluded) {
            return GatewayError::Unavailable {
                message: format!(
                    "no deployment in region `{region}` serves `{model}` or its fallbacks"
                ),
                retry_after: None,
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
    async fn reserve(&self, dep: usize, tokens: u32) -> Result<Permit, Decline> {
        let board = self.registry.board(dep);
        let (_, path) = board.bid(dep, self.clock.now());
        let probe = match path {
            Path::Direct => {
                board.try_take(tokens)?;
                None
            }
            Path::Actor => {
                match self
                    .registry
                    .addr(dep)
                    .send(Reserve { tokens })
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
            tokens: if board.has_tpm() { tokens } else { 0 },
            tokens_settled: false,
        })
    }

    /// Real-time deadline for I/O: the attempt's own limit, inside the overall deadline.
    fn io_deadline(&self, deadline: Instant, limit: Duration) -> Instant {
        let remaining = deadline.saturating_duration_since(self.clock.now());
        Instant::now() + remaining.min(limit)
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
