//! Switchyard: a resilient LLM gateway. One OpenAI-compatible endpoint in front of many
//! providers and deployments: translation, routing, retries, fallbacks, circuit breakers, rate
//! limits, spend tracking and metrics.
//!
//! Module map:
//! - [`config`]: TOML -> validated [`config::Config`] (every problem reported at once).
//! - [`http`]: actix-web handlers (thin) and the request pipeline, in order.
//! - [`actors`]: `DeploymentActor` (per-deployment state), `Registry` (spawn/respawn),
//!   `RouterActor` (per worker: bids, plan, retries, fallbacks, commit rule).
//! - [`policy`]: pure algorithms (breaker, backoff, scoring, stats).
//! - [`providers`]: pure wire-format translation (OpenAI, Anthropic), SSE decoding.
//! - [`upstream`]: the per-worker awc client: send, bounded reads, stream peek and pump.
//! - [`metrics`]: Prometheus handles, registered once.
//! - [`clock`]: the one clock every time-derived decision reads (tests can advance it).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod actors;
pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod policy;
pub mod providers;
pub mod secret;
pub mod upstream;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use actix_web::{dev::ServerHandle, web, App, HttpServer};

use actors::registry::Registry;
use actors::router::{Outbox, RouterActor, RouterCore};
use clock::Clock;
use config::Config;
use metrics::Metrics;

/// A running gateway: its address, its clock, and a handle to stop it.
pub struct Gateway {
    addr: SocketAddr,
    clock: Clock,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    handle: ServerHandle,
    server: actix_web::rt::task::JoinHandle<io::Result<()>>,
    upkeep: actix_web::rt::task::JoinHandle<()>,
}

/// How to start a gateway.
pub struct Options {
    /// Stop on SIGINT/SIGTERM (the service binary); tests turn it off.
    pub handle_signals: bool,
    pub clock: Clock,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            handle_signals: true,
            clock: Clock::new(),
        }
    }
}

impl Gateway {
    /// Starts serving on an already-bound listener. Must run inside an actix `System`
    /// (`#[actix_web::main]` or `#[actix_web::test]`).
    pub fn start(config: Config, listener: TcpListener, options: Options) -> io::Result<Gateway> {
        // rustls needs a process-wide crypto provider; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = Arc::new(config);
        let targets = upstream::targets(&config).map_err(io::Error::other)?;
        let metrics = Arc::new(Metrics::new(&config));
        let clock = options.clock;
        let registry = Registry::start(config.clone(), clock.clone(), metrics.clone());
        let state = web::Data::new(http::AppState::new(
            config.clone(),
            metrics.clone(),
            registry.clone(),
        ));
        let addr = listener.local_addr()?;

        let factory = {
            let (config, registry, metrics, clock) = (
                config.clone(),
                registry.clone(),
                metrics.clone(),
                clock.clone(),
            );
            move || {
                // Runs on each worker thread: its own upstream client and router.
                let router = RouterActor::new(RouterCore {
                    config: config.clone(),
                    registry: registry.clone(),
                    targets: targets.clone(),
                    client: upstream::build_client(&config.router),
                    metrics: metrics.clone(),
                    clock: clock.clone(),
                    outbox: Outbox::new(registry.clone(), metrics.clone()),
                    ticks: config.groups.iter().map(|_| Default::default()).collect(),
                })
                .start();
                App::new()
                    .app_data(state.clone())
                    .app_data(web::Data::new(router))
                    // Handlers read the payload themselves with an explicit limit.
                    .app_data(web::PayloadConfig::new(config.server.max_body_bytes))
                    .configure(http::configure)
                    .default_service(web::to(http::not_found))
            }
        };
        let s = &config.server;
        let mut server = HttpServer::new(factory)
            // Stream chunks are small writes: never let Nagle hold one back for an ACK.
            .tcp_nodelay(true)
            .workers(s.workers)
            .max_connections(s.max_connections)
            .client_request_timeout(s.client_request_timeout)
            .keep_alive(s.keep_alive)
            // actix counts whole seconds; round up so a short grace period is not zero.
            .shutdown_timeout(
                u64::try_from(s.shutdown_timeout.as_millis().div_ceil(1000)).unwrap_or(u64::MAX),
            );
        if !options.handle_signals {
            server = server.disable_signals();
        }
        let server = server.listen(listener)?.run();
        let handle = server.handle();
        let server = actix_web::rt::spawn(server);
        let upkeep = {
            let metrics = metrics.clone();
            actix_web::rt::spawn(async move {
                loop {
                    actix_web::rt::time::sleep(Duration::from_secs(5)).await;
                    metrics.run_upkeep();
                }
            })
        };
        Ok(Gateway {
            addr,
            clock,
            registry,
            metrics,
            handle,
            server,
            upkeep,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The gateway's clock; tests advance it to skip cooldowns and backoff waits.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Runs until the server stops (a signal, or `stop` through a cloned handle).
    pub async fn wait(self) -> io::Result<()> {
        let Gateway {
            server,
            upkeep,
            registry,
            ..
        } = self;
        let result = match server.await {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e)),
        };
        upkeep.abort();
        registry.stop();
        result
    }

    /// Stops accepting, lets in-flight requests finish (up to `shutdown_timeout_ms`), stops the
    /// actors.
    pub async fn stop(self, graceful: bool) {
        self.handle.stop(graceful).await;
        self.shutdown_actors();
    }

    fn shutdown_actors(&self) {
        self.upkeep.abort();
        self.registry.stop();
    }
}

/// Serves `config` until SIGINT/SIGTERM.
pub async fn run(config: Config) -> io::Result<()> {
    let listener = TcpListener::bind(config.server.listen)?;
    let gateway = Gateway::start(config, listener, Options::default())?;
    tracing::info!(listen = %gateway.local_addr(), "switchyard listening");
    gateway.wait().await
}
