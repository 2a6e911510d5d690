//! Shared state of one mock server: routes, their behaviours, counters and recordings.
//!
//! Read path (every request): one `ArcSwap` load for a named route, one atomic load of the
//! queue length, one `ArcSwap` load of the behaviour. Locks are taken only when behaviours are
//! queued, when recording, and when a route is created.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use super::compile::Compiled;
use super::record::RecordedRequest;

/// Locks a mutex, ignoring poisoning (the data stays usable; a mock must not cascade panics).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) struct Shared {
    pub record: bool,
    pub api_key: Option<Box<str>>,
    /// `(access key id, secret)`: Bedrock routes verify SigV4 with them.
    pub aws_credentials: Option<(Box<str>, Box<str>)>,
    /// Behaviour of routes that have none set (`MockConfig::default_behavior`).
    default: Arc<Compiled>,
    /// Route "" (kept out of the map so the common case skips the lookup).
    default_route: Arc<RouteState>,
    /// Named routes. Copy-on-write under `routes_write`; readers never lock.
    routes: ArcSwap<HashMap<Box<str>, Arc<RouteState>>>,
    routes_write: Mutex<()>,
    /// Requests being answered, excluding hung or stalled ones (which never finish).
    /// `MockUpstream::stop` waits for this to reach 0.
    pub inflight: AtomicUsize,
}

impl Shared {
    pub fn new(
        record: bool,
        api_key: Option<String>,
        aws_credentials: Option<(String, String)>,
        default: Arc<Compiled>,
    ) -> Self {
        Shared {
            record,
            api_key: api_key.map(String::into_boxed_str),
            aws_credentials: aws_credentials.map(|(k, s)| (k.into(), s.into())),
            default_route: Arc::new(RouteState::new("", default.clone())),
            default,
            routes: ArcSwap::from_pointee(HashMap::new()),
            routes_write: Mutex::new(()),
            inflight: AtomicUsize::new(0),
        }
    }

    /// The route, if it exists.
    pub fn find(&self, name: &str) -> Option<Arc<RouteState>> {
        if name.is_empty() {
            return Some(self.default_route.clone());
        }
        self.routes.load().get(name).cloned()
    }

    /// The route, created with the default behaviour if needed.
    pub fn route(&self, name: &str) -> Arc<RouteState> {
        if let Some(route) = self.find(name) {
            return route;
        }
        let _write = lock(&self.routes_write);
        let current = self.routes.load_full();
        if let Some(route) = current.get(name) {
            return route.clone();
        }
        let route = Arc::new(RouteState::new(name, self.default.clone()));
        let mut next = HashMap::clone(&current);
        next.insert(name.into(), route.clone());
        self.routes.store(Arc::new(next));
        route
    }
}

pub(crate) struct RouteState {
    pub name: Box<str>,
    behavior: ArcSwap<Compiled>,
    /// Length of `queue`, read without locking it.
    queued: AtomicUsize,
    queue: Mutex<VecDeque<Arc<Compiled>>>,
    count: AtomicUsize,
    recorded: Mutex<Vec<RecordedRequest>>,
}

impl RouteState {
    fn new(name: &str, behavior: Arc<Compiled>) -> Self {
        RouteState {
            name: name.into(),
            behavior: ArcSwap::new(behavior),
            queued: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
            count: AtomicUsize::new(0),
            recorded: Mutex::new(Vec::new()),
        }
    }

    pub fn set(&self, behavior: Arc<Compiled>) {
        self.behavior.store(behavior);
    }

    pub fn push(&self, behaviors: impl IntoIterator<Item = Arc<Compiled>>) {
        let mut queue = lock(&self.queue);
        queue.extend(behaviors);
        self.queued.store(queue.len(), Ordering::Release);
    }

    /// Next queued behaviour, else the route's default.
    pub fn pick(&self) -> Arc<Compiled> {
        if self.queued.load(Ordering::Acquire) > 0 {
            let mut queue = lock(&self.queue);
            let next = queue.pop_front();
            self.queued.store(queue.len(), Ordering::Release);
            if let Some(next) = next {
                return next;
            }
        }
        self.behavior.load_full()
    }

    pub fn count_request(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn record(&self, request: RecordedRequest) {
        lock(&self.recorded).push(request);
    }

    pub fn recorded(&self) -> Vec<RecordedRequest> {
        lock(&self.recorded).clone()
    }

    pub fn clear(&self) {
        let mut recorded = lock(&self.recorded);
        recorded.clear();
        self.count.store(0, Ordering::Relaxed);
    }
}

/// Counts a request in `Shared::inflight` while alive. Streams carry it until their body ends.
pub(crate) struct InflightGuard(Arc<Shared>);

impl InflightGuard {
    pub fn new(shared: Arc<Shared>) -> Self {
        shared.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(shared)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}
