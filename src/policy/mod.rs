//! Small pure algorithms, no I/O and no actix: the circuit breaker state machine, retry backoff,
//! latency statistics and bid scoring. Actors wrap them; tests exercise them directly.

pub mod backoff;
pub mod breaker;
pub mod scoring;
pub mod stats;
