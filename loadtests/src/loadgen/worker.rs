//! One generator thread: a current-thread runtime, its connections, the open or closed loop.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::report::{micros, ErrorKind, Outcome, Recorder};
use super::sse::{SseEvent, SseScanner};
use super::{LoadError, Mode, Phase, Plan, Target};

/// Pause after a failed connect in the closed loop, so that a dead target is not hammered.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Extra wait, after the last timeout could have fired, for the tasks to record it.
const DRAIN_GRACE: Duration = Duration::from_millis(50);

type Body = Full<Bytes>;

/// A kept-alive HTTP/1.1 connection; its driver is polled by the task that uses it (no spawn).
struct Conn {
    sender: SendRequest<Body>,
    driver: Pin<Box<Connection<TokioIo<TcpStream>, Body>>>,
}

pub(crate) fn thread_main(plan: &Arc<Plan>, k: usize) -> Result<Recorder, LoadError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| LoadError::Runtime(format!("cannot build a runtime: {e}")))?;
    let rec = Rc::new(RefCell::new(Recorder::new(plan)?));
    let local = tokio::task::LocalSet::new();
    match &plan.mode {
        Mode::Open {
            phases,
            max_in_flight,
        } => {
            let max_open = (max_in_flight / plan.threads
                + usize::from(k < max_in_flight % plan.threads))
            .max(1);
            let ctx = Rc::new(OpenCtx {
                plan: Arc::clone(plan),
                rec: Rc::clone(&rec),
                queue: RefCell::new(VecDeque::new()),
                idle: Cell::new(0),
                open: Cell::new(0),
                max_open,
                wake: Notify::new(),
                drained: Notify::new(),
            });
            local.block_on(&rt, open_loop(ctx, phases, k));
        }
        Mode::Closed { connections, .. } => {
            let n = connections / plan.threads + usize::from(k < connections % plan.threads);
            local.block_on(&rt, closed_loop(Arc::clone(plan), Rc::clone(&rec), n));
        }
    }
    // Drops the remaining tasks and connections while the runtime still exists.
    drop(local);
    drop(rt);
    Ok(Rc::try_unwrap(rec)
        .map(RefCell::into_inner)
        .unwrap_or_else(|rc| rc.borrow().clone()))
}

fn take_budget(plan: &Plan) -> bool {
    plan.sent_total.fetch_add(1, Ordering::Relaxed) < plan.max_requests
}

fn measured(plan: &Plan, intended: Instant) -> bool {
    intended >= plan.m_start && intended < plan.m_end
}

// ---------------------------------------------------------------------------------------------
// Closed loop

async fn closed_loop(plan: Arc<Plan>, rec: Rc<RefCell<Recorder>>, connections: usize) {
    tokio::time::sleep_until(plan.t0.into()).await;
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::task::spawn_local(closed_client(Arc::clone(&plan), Rc::clone(&rec))))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

async fn closed_client(plan: Arc<Plan>, rec: Rc<RefCell<Recorder>>) {
    let mut slot = None;
    let mut gaps = Vec::new();
    loop {
        let start = Instant::now();
        if start >= plan.m_end || !take_budget(&plan) {
            break;
        }
        let o = one_request(&mut slot, &plan.target, start, &mut gaps).await;
        if start >= plan.m_start {
            rec.borrow_mut().record(start, &o, &gaps);
        }
        if o.result == Err(ErrorKind::Connect) {
            tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Open loop
//
// The scheduler pushes intended send times into a queue at their time. Connection tasks
// ("clients", at most `max_open`) take them: an idle client is woken, else a new client (with a
// new connection) is started while fewer than `max_open` exist, else the request waits in the
// queue for the first client that finishes. Latency counts from the time a request became due
// (its intended time, or the later moment the scheduler's timer fired for it) throughout.

struct OpenCtx {
    plan: Arc<Plan>,
    rec: Rc<RefCell<Recorder>>,
    /// Intended send times of the requests waiting for a client.
    queue: RefCell<VecDeque<Instant>>,
    /// Clients waiting for work and not yet woken.
    idle: Cell<usize>,
    /// Clients started.
    open: Cell<usize>,
    max_open: usize,
    /// Wakes an idle client.
    wake: Notify,
    /// A client went idle (for the final drain).
    drained: Notify,
}

/// (start, duration, rate) of the warmup (at the first phase's rate) and of each phase.
fn segments(plan: &Plan, phases: &[Phase]) -> Vec<(Instant, Duration, f64)> {
    let mut out = Vec::with_capacity(phases.len() + 1);
    if let Some(first) = phases.first() {
        if !plan.warmup.is_zero() {
            out.push((plan.t0, plan.warmup, first.rate));
        }
    }
    let mut start = plan.m_start;
    for p in phases {
        out.push((start, p.duration, p.rate));
        start += p.duration;
    }
    out
}

/// The most timer lateness forgiven per request: tokio rounds a deadline up to its next
/// millisecond tick, and the driver's `epoll_wait` timeout is in whole milliseconds too, so a
/// timer routinely fires up to 2 ms late on an otherwise idle machine.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// When a request scheduled for `intended` became due, given when the scheduler's timer last
/// fired: the later of the two, forgiving at most `TIMER_SLACK` of timer lateness.
fn due(intended: Instant, fired: Instant) -> Instant {
    intended.max(fired.min(intended + TIMER_SLACK))
}

async fn open_loop(ctx: Rc<OpenCtx>, phases: &[Phase], k: usize) {
    let plan = Arc::clone(&ctx.plan);
    let threads = plan.threads as u64;
    let k = k as u64;
    let mut fired = plan.t0;
    'schedule: for (start, duration, rate) in segments(&plan, phases) {
        let d = duration.as_secs_f64();
        // This thread takes requests k, k + threads, k + 2 threads... of the global sequence.
        let mut j = k;
        loop {
            let offset = j as f64 / rate;
            if offset >= d {
                break;
            }
            if !take_budget(&plan) {
                break 'schedule;
            }
            let intended = start + Duration::from_secs_f64(offset);
            if intended > Instant::now() {
                tokio::time::sleep_until(intended.into()).await;
                fired = Instant::now();
            }
            // tokio's timer has millisecond granularity: a request is due when the timer that
            // released it fired, not before (else every latency would include up to 1 ms of
            // timer rounding) — but never more than `TIMER_SLACK` after its intended time, so
            // a generator starved of CPU still counts its lateness. Waiting for a connection
            // after that counts too, and so does a scheduler that fell behind without sleeping
            // (`fired` then lies in the past).
            dispatch(&ctx, due(intended, fired));
            j += threads;
        }
    }
    // Wait for the queue to empty and every client to finish, at most until the last timeout.
    let hard_end = plan.m_end + plan.target.timeout + DRAIN_GRACE;
    let sleep = tokio::time::sleep_until(hard_end.into());
    tokio::pin!(sleep);
    while !(ctx.queue.borrow().is_empty() && ctx.idle.get() == ctx.open.get()) {
        tokio::select! {
            _ = ctx.drained.notified() => {}
            _ = &mut sleep => break,
        }
    }
    // Requests still waiting for a client: their timeout has passed.
    let left: Vec<Instant> = ctx.queue.borrow_mut().drain(..).collect();
    let mut rec = ctx.rec.borrow_mut();
    for intended in left {
        if measured(&plan, intended) {
            rec.record(intended, &Outcome::failed(ErrorKind::Timeout), &[]);
        }
    }
}

fn dispatch(ctx: &Rc<OpenCtx>, intended: Instant) {
    ctx.queue.borrow_mut().push_back(intended);
    let idle = ctx.idle.get();
    if idle > 0 {
        ctx.idle.set(idle - 1);
        ctx.wake.notify_one();
    } else if ctx.open.get() < ctx.max_open {
        ctx.open.set(ctx.open.get() + 1);
        tokio::task::spawn_local(open_client(Rc::clone(ctx)));
    }
    // Else it waits in the queue for the first client that finishes.
}

async fn open_client(ctx: Rc<OpenCtx>) {
    let mut slot: Option<Conn> = None;
    let mut gaps = Vec::new();
    loop {
        let job = ctx.queue.borrow_mut().pop_front();
        match job {
            Some(intended) => {
                let o = if Instant::now() >= intended + ctx.plan.target.timeout {
                    // Timed out while waiting for a connection: not sent.
                    Outcome::failed(ErrorKind::Timeout)
                } else {
                    one_request(&mut slot, &ctx.plan.target, intended, &mut gaps).await
                };
                if measured(&ctx.plan, intended) {
                    ctx.rec.borrow_mut().record(intended, &o, &gaps);
                }
            }
            None => {
                ctx.idle.set(ctx.idle.get() + 1);
                ctx.drained.notify_one();
                // Wait for work; meanwhile keep polling the connection so that a close by the
                // server is noticed (and the connection dropped) while idle.
                tokio::select! {
                    biased;
                    _ = ctx.wake.notified() => {}
                    _ = wait_closed(&mut slot) => {
                        // Still idle: wait again (the next loop turn finds the queue empty).
                        ctx.idle.set(ctx.idle.get().saturating_sub(1));
                    }
                }
            }
        }
    }
}

/// Resolves (and empties `slot`) when the idle connection in `slot` is closed.
async fn wait_closed(slot: &mut Option<Conn>) {
    match slot.as_mut() {
        Some(conn) => {
            let _ = conn.driver.as_mut().await;
            *slot = None;
        }
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------------------
// One request

async fn connect(addr: std::net::SocketAddr) -> std::io::Result<Conn> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, driver) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(std::io::Error::other)?;
    Ok(Conn {
        sender,
        driver: Box::pin(driver),
    })
}

impl Target {
    fn request(&self) -> Request<Body> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.path.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Sends one request on the connection in `slot` (opening one if needed) and reads the whole
/// response, within `intended + timeout`. `gaps` receives the stream gaps (µs).
async fn one_request(
    slot: &mut Option<Conn>,
    target: &Target,
    intended: Instant,
    gaps: &mut Vec<u64>,
) -> Outcome {
    gaps.clear();
    let deadline = intended + target.timeout;
    let mut out = Outcome::new();
    let result =
        tokio::time::timeout_at(deadline.into(), attempt(slot, target, gaps, &mut out)).await;
    out.end = Instant::now();
    out.result = match result {
        Ok(r) => r,
        Err(_elapsed) => {
            // The connection is in an unknown state.
            *slot = None;
            Err(ErrorKind::Timeout)
        }
    };
    out
}

async fn attempt(
    slot: &mut Option<Conn>,
    target: &Target,
    gaps: &mut Vec<u64>,
    out: &mut Outcome,
) -> Result<(), ErrorKind> {
    // A ready connection. A kept-alive one that turns out closed is replaced once (nothing has
    // been sent on it, so this is not a failure of the request).
    let mut fresh = false;
    loop {
        if slot.is_none() {
            let conn = connect(target.addr).await.map_err(|_| ErrorKind::Connect)?;
            *slot = Some(conn);
            fresh = true;
        }
        let Some(Conn { sender, driver }) = slot.as_mut() else {
            return Err(ErrorKind::Connect);
        };
        let ready = tokio::select! {
            biased;
            r = sender.ready() => r.is_ok(),
            _ = driver.as_mut() => false,
        };
        if ready {
            break;
        }
        *slot = None;
        if fresh {
            return Err(ErrorKind::Io);
        }
    }
    let Some(Conn { sender, driver }) = slot.as_mut() else {
        return Err(ErrorKind::Io);
    };
    let mut driver_done = false;
    let result = {
        let exchange = exchange(sender, target, gaps, out);
        tokio::pin!(exchange);
        tokio::select! {
            biased;
            r = &mut exchange => r,
            _ = driver.as_mut() => {
                // The connection ended (e.g. `connection: close` after the response): the
                // response may still complete from what was already read.
                driver_done = true;
                exchange.await
            }
        }
    };
    if driver_done || result == Err(ErrorKind::Io) {
        *slot = None;
    }
    result
}

/// Sends the request and reads the response.
async fn exchange(
    sender: &mut SendRequest<Body>,
    target: &Target,
    gaps: &mut Vec<u64>,
    out: &mut Outcome,
) -> Result<(), ErrorKind> {
    let resp = sender
        .send_request(target.request())
        .await
        .map_err(|_| ErrorKind::Io)?;
    let status = resp.status().as_u16();
    out.status = Some(status);
    if let Some(name) = &target.track_header {
        out.header = resp.headers().get(name).cloned();
    }
    let mut body = resp.into_body();
    if target.stream && status == 200 {
        let mut scanner = SseScanner::new();
        let mut timing = StreamTiming {
            gaps,
            ttft: None,
            last: None,
            ended: false,
        };
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| ErrorKind::Io)?;
            if let Some(data) = frame.data_ref() {
                let now = Instant::now();
                scanner.feed(data, |ev| timing.on_event(ev, now));
            }
        }
        let now = Instant::now();
        scanner.finish(|ev| timing.on_event(ev, now));
        out.ttft = timing.ttft;
        if timing.ended {
            Ok(())
        } else {
            Err(ErrorKind::BadStream)
        }
    } else {
        while let Some(frame) = body.frame().await {
            frame.map_err(|_| ErrorKind::Io)?;
        }
        if status == 200 {
            Ok(())
        } else {
            Err(ErrorKind::Status(status))
        }
    }
}

struct StreamTiming<'a> {
    gaps: &'a mut Vec<u64>,
    ttft: Option<Instant>,
    last: Option<Instant>,
    ended: bool,
}

impl StreamTiming<'_> {
    fn on_event(&mut self, ev: SseEvent, now: Instant) {
        if ev.end {
            self.ended = true;
        }
        match self.last {
            None if ev.content => {
                self.ttft = Some(now);
                self.last = Some(now);
            }
            None => {}
            Some(last) => {
                self.gaps.push(micros(now.saturating_duration_since(last)));
                self.last = Some(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_rounding_is_forgiven_up_to_the_slack_and_no_more() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        // On time, or the timer fired early relative to a later request: the intended time.
        assert_eq!(due(t, t), t);
        assert_eq!(due(t + ms(5), t), t + ms(5));
        // The timer fired 0.4 ms late: due when it fired.
        assert_eq!(
            due(t, t + Duration::from_micros(400)),
            t + Duration::from_micros(400)
        );
        // 30 ms late (a starved generator): only the slack is forgiven, the rest counts.
        assert_eq!(due(t, t + ms(30)), t + TIMER_SLACK);
    }
}
