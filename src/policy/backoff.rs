//! Retry backoff: exponential with full jitter (AWS "Exponential Backoff and Jitter"), pure.

use std::time::Duration;

/// The wait before retry number `retry` (0 = the first retry): a uniformly random duration in
/// `[0, min(max, base * 2^retry)]`. `unit` is a uniform random number in `[0, 1)`.
pub fn full_jitter(retry: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let ceiling = exponential_ceiling(retry, base, max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// `min(max, base * 2^retry)` without overflow.
pub fn exponential_ceiling(retry: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(8);

    #[test]
    fn ceilings_double_then_cap() {
        let ceilings: Vec<u64> = (0..6)
            .map(|r| exponential_ceiling(r, BASE, MAX).as_secs())
            .collect();
        assert_eq!(ceilings, vec![1, 2, 4, 8, 8, 8]);
        assert_eq!(exponential_ceiling(200, BASE, MAX), MAX);
    }

    #[test]
    fn jitter_stays_within_zero_and_the_ceiling() {
        for retry in 0..40 {
            for i in 0..=100 {
                let unit = f64::from(i) / 100.0;
                let d = full_jitter(retry, BASE, MAX, unit);
                assert!(d <= exponential_ceiling(retry, BASE, MAX));
            }
        }
        assert_eq!(full_jitter(2, BASE, MAX, 0.5), Duration::from_secs(2));
        assert_eq!(full_jitter(2, BASE, MAX, 0.0), Duration::ZERO);
        // Out-of-range randomness is clamped, never a panic or an overflow.
        assert_eq!(full_jitter(2, BASE, MAX, 7.0), Duration::from_secs(4));
        assert_eq!(
            full_jitter(2, BASE, MAX, f64::NAN.max(-1.0)),
            Duration::ZERO
        );
    }
}
