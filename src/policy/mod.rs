//! Small pure algorithms, no I/O and no actix: the circuit breaker state machine, retry backoff,
//! latency statistics and bid scoring. Actors wrap them; tests exercise them directly.

pub mod aimd;
pub mod backoff;
pub mod breaker;
pub mod headroom;
pub mod retry_budget;
pub mod scoring;
pub mod stats;
pub mod token_bucket;
