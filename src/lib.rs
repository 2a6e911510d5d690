//! Switchyard: a resilient LLM gateway. One OpenAI-compatible endpoint in front of many
//! providers and deployments: translation, routing, retries, fallbacks, circuit breakers, rate
//! limits, spend tracking and metrics.
//!
//! Module map:
//! - [`config`]: TOML -> validated [`config::Config`] (every problem reported at once).
//! - [`policy`]: pure algorithms (breaker, backoff, scoring, stats).
//! - [`providers`]: pure wire-format translation (OpenAI, Anthropic), SSE decoding.
//! - [`clock`]: the one clock every time-derived decision reads (tests can advance it).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod clock;
pub mod config;
pub mod error;
pub mod policy;
pub mod providers;
pub mod secret;
