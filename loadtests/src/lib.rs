//! Mock upstream and load tools for Switchyard.
//!
//! - [`mock`]: an in-process mock of the providers' chat and embeddings APIs ([`MockUpstream`]),
//!   used by the gateway's integration tests and, through the `mock-upstream` command, by the
//!   demo and the load benchmarks. It shares no code with the gateway.
//! - [`cli`]: argument parsing of the `mock-upstream` command.
//! - [`loadgen`]: an open- and closed-loop HTTP load generator (latency histograms, stream
//!   TTFT and gaps, no coordinated omission), also the `loadgen` command.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod cli;
pub mod harness;
pub mod loadgen;
pub mod mock;

pub use mock::{Behavior, ErrorPreset, Fault, MockConfig, MockUpstream, RecordedRequest, Reply};
