//! An in-process mock of the OpenAI Chat Completions and Anthropic Messages APIs.
//!
//! It speaks the wire formats of `shared/docs/providers.md` (§0.1, §1, §3, §9) and shares no
//! code with the gateway, so the gateway's tests can use it as an independent upstream.
//!
//! Routes (one path segment names a route; `""` is the default route):
//!
//! | path | format |
//! |---|---|
//! | `POST /v1/chat/completions`, `POST /chat/completions` | OpenAI, route `""` |
//! | `POST /{route}/v1/chat/completions`, `POST /{route}/chat/completions` | OpenAI, route `{route}` |
//! | `POST /v1/messages` | Anthropic, route `""` |
//! | `POST /{route}/v1/messages` | Anthropic, route `{route}` |
//!
//! Anything else is a 404 with an OpenAI-style error body. A route that was never configured
//! answers with `MockConfig::default_behavior` and is counted like any other.
//!
//! Each behaviour is compiled into its response bytes when it is set or pushed
//! (`compile.rs`); the request path (`server.rs`) only clones `Bytes` and reads atomics
//! (`state.rs`).

mod behavior;
mod compile;
mod record;
mod server;
mod state;
mod wire;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::KeepAlive;
use actix_web::{web, App, HttpServer};

pub use behavior::{Behavior, ErrorPreset, Fault, Reply, DEFAULT_REPLY_TEXT, MOCK_TOOL_CALL_ID};
pub use record::RecordedRequest;
pub use server::BODY_LIMIT;

use compile::compile;
use state::Shared;

/// How long `stop` waits for in-flight requests before closing connections anyway.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Idle keep-alive of the mock's connections. Longer than awc's pool default (15 s) so that a
/// client never reuses a connection the mock has just closed.
const KEEP_ALIVE: Duration = Duration::from_secs(75);

/// Configuration of a [`MockUpstream`].
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Address to bind; default `127.0.0.1:0` (an ephemeral port).
    pub listen: SocketAddr,
    /// actix worker threads; default 1 (0 is treated as 1).
    pub workers: usize,
    /// Keep every request for [`MockUpstream::requests`]; default true.
    pub record: bool,
    /// If set, OpenAI routes need `Authorization: Bearer <key>` and Anthropic routes
    /// `x-api-key: <key>`; otherwise they answer 401 in their format.
    pub require_api_key: Option<String>,
    /// Behaviour of every route that has none set.
    pub default_behavior: Behavior,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            workers: 1,
            record: true,
            require_api_key: None,
            default_behavior: Behavior::default(),
        }
    }
}

/// A running mock upstream. Dropping it stops the server (without waiting).
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    handle: ServerHandle,
}

impl MockUpstream {
    /// Binds `config.listen` and starts serving inside the current actix `System` (for example
    /// under `#[actix_web::test]` or `#[actix_web::main]`); the server future is spawned.
    /// Fails with `io::ErrorKind::Other` outside an actix `System`.
    pub async fn start(config: MockConfig) -> io::Result<MockUpstream> {
        if actix_web::rt::System::try_current().is_none() {
            return Err(io::Error::other(
                "MockUpstream::start must run inside an actix System",
            ));
        }
        let default = Arc::new(compile(&config.default_behavior));
        let shared = Arc::new(Shared::new(
            config.record,
            config.require_api_key.clone(),
            default,
        ));
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(server::handle))
        })
        .on_connect(abortive_close)
        .workers(config.workers.max(1))
        // Paced SSE chunks are small: do not let Nagle hold them back.
        .tcp_nodelay(true)
        .backlog(2048)
        .keep_alive(KeepAlive::Timeout(KEEP_ALIVE))
        // A client that half-closes has gone away: drop its hung or stalled response.
        .h1_allow_half_closed(false)
        .disable_signals()
        .shutdown_timeout(1)
        .bind(config.listen)?;
        let addr = server
            .addrs()
            .first()
            .copied()
            .ok_or_else(|| io::Error::other("the mock upstream bound no address"))?;
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Ok(MockUpstream {
            addr,
            shared,
            handle,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/{route}`; route `""` gives [`url`](Self::url).
    pub fn route_url(&self, route: &str) -> String {
        if route.is_empty() {
            self.url()
        } else {
            format!("http://{}/{route}", self.addr)
        }
    }

    /// Replaces the default behaviour of a route (creating the route if needed).
    /// Route `""` is the default route.
    pub fn set_behavior(&self, route: &str, behavior: Behavior) {
        self.shared.route(route).set(Arc::new(compile(&behavior)));
    }

    /// The next requests on that route take these behaviours, in order, before falling back
    /// to the route's default.
    pub fn push_behaviors(&self, route: &str, behaviors: impl IntoIterator<Item = Behavior>) {
        let compiled: Vec<_> = behaviors
            .into_iter()
            .map(|b| Arc::new(compile(&b)))
            .collect();
        self.shared.route(route).push(compiled);
    }

    /// Requests recorded on the route (empty if recording is off).
    pub fn requests(&self, route: &str) -> Vec<RecordedRequest> {
        self.shared
            .find(route)
            .map(|r| r.recorded())
            .unwrap_or_default()
    }

    /// Number of requests the route received (counted even when recording is off, including
    /// requests later rejected by auth, validation or the body limit).
    pub fn request_count(&self, route: &str) -> usize {
        self.shared.find(route).map_or(0, |r| r.count())
    }

    /// Forgets recorded requests and the count of a route (queued behaviours stay).
    pub fn clear(&self, route: &str) {
        if let Some(r) = self.shared.find(route) {
            r.clear();
        }
    }

    /// Graceful stop: stops accepting, waits (up to 5 s) for requests being answered to finish
    /// (hung and stalled ones excluded), then closes the remaining connections.
    pub async fn stop(self) {
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        self.handle.pause().await;
        while self.shared.inflight.load(Ordering::Acquire) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.handle.stop(false).await;
    }
}

/// Sets `SO_LINGER` 0 on every accepted connection, so that closing it sends a TCP reset.
///
/// Why: awc (and so the gateway) reads a body that ends with a clean FIN as complete, even when
/// it is cut mid-chunk or short of its `content-length`. Only a reset makes
/// `Fault::ResetMidBody` visible as an error. Normal traffic is unaffected as long as the client
/// keeps connections alive or closes them itself (every HTTP/1.1 client does); a client that
/// reads until the server closes (HTTP/1.0 style) sees a reset after the complete response.
fn abortive_close(conn: &dyn std::any::Any, _: &mut actix_web::dev::Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        // The command is sent at once; the returned future only waits for completion.
        drop(self.handle.stop(false));
    }
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}
