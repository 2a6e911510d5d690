//! Providers' rate-limit response headers, parsed into how much room is left ([`Headroom`]).
//!
//! Formats understood (`get` looks up lower-case header names):
//! - **OpenAI and OpenAI-compatible** (Azure, Groq, Together, ...):
//!   `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`. Resets are Go-style durations
//!   (`1s`, `6m0s`, `20ms`, `0.5s`, `1h2m3.5s`; units `h m s ms us µs ns`).
//! - **Anthropic**: `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`, resets as
//!   RFC 3339 timestamps, turned into the duration from `now_unix` (0 if already past). When
//!   none of the `tokens-*` headers is present, the `input-tokens-*` ones stand in for them
//!   (input tokens are the ones a gateway can estimate and throttle before sending).
//!
//! For robustness every reset accepts any of these forms: a Go-style duration, a bare number of
//! seconds (a bare integer of at least 10^9 is taken as a Unix timestamp instead), an RFC 3339
//! timestamp (`Z` or `+00:00`) or an HTTP date. Counts are non-negative integers (a
//! non-negative decimal is rounded down). Anything else is ignored, header by header; parsing
//! never panics. OpenAI names win over Anthropic ones if a response carries both.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a response says about the caller's remaining rate limit. `None`: not reported.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Headroom {
    pub remaining_requests: Option<u64>,
    pub limit_requests: Option<u64>,
    /// Time until the request limit is fully replenished.
    pub reset_requests: Option<Duration>,
    pub remaining_tokens: Option<u64>,
    pub limit_tokens: Option<u64>,
    /// Time until the token limit is fully replenished.
    pub reset_tokens: Option<Duration>,
}

/// Reads the rate-limit headers of a response. `None` when there is nothing usable (no
/// rate-limit header, or only unparseable ones). `get` returns values borrowed from the
/// response (`'a`), not from the name, so a header map can be read without copying.
pub fn parse<'a>(get: impl Fn(&str) -> Option<&'a str>, now_unix: SystemTime) -> Option<Headroom> {
    let count = |name: &str| get(name).and_then(parse_count);
    let reset = |name: &str| get(name).and_then(|v| parse_reset(v, now_unix));

    const TOKENS: [&str; 3] = [
        "anthropic-ratelimit-tokens-limit",
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
    ];
    const INPUT_TOKENS: [&str; 3] = [
        "anthropic-ratelimit-input-tokens-limit",
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-input-tokens-reset",
    ];
    let [tokens_limit, tokens_remaining, tokens_reset] =
        if TOKENS.iter().any(|name| get(name).is_some()) {
            TOKENS
        } else {
            INPUT_TOKENS
        };

    let headroom = Headroom {
        remaining_requests: count("x-ratelimit-remaining-requests")
            .or_else(|| count("anthropic-ratelimit-requests-remaining")),
        limit_requests: count("x-ratelimit-limit-requests")
            .or_else(|| count("anthropic-ratelimit-requests-limit")),
        reset_requests: reset("x-ratelimit-reset-requests")
            .or_else(|| reset("anthropic-ratelimit-requests-reset")),
        remaining_tokens: count("x-ratelimit-remaining-tokens").or_else(|| count(tokens_remaining)),
        limit_tokens: count("x-ratelimit-limit-tokens").or_else(|| count(tokens_limit)),
        reset_tokens: reset("x-ratelimit-reset-tokens").or_else(|| reset(tokens_reset)),
    };
    (headroom != Headroom::default()).then_some(headroom)
}

impl Headroom {
    /// The smallest share left over the known `remaining / limit` pairs, in `[0, 1]`. Pairs
    /// with a limit of 0 are skipped; `None` if no pair is complete.
    pub fn fraction(&self) -> Option<f64> {
        [
            (self.remaining_requests, self.limit_requests),
            (self.remaining_tokens, self.limit_tokens),
        ]
        .into_iter()
        .filter_map(|pair| match pair {
            (Some(remaining), Some(limit)) if limit > 0 => {
                Some((remaining as f64 / limit as f64).clamp(0.0, 1.0))
            }
            _ => None,
        })
        .reduce(f64::min)
    }

    /// When requests or tokens are used up (`remaining == 0`), how long until they reset (the
    /// longer if both are). `None` when nothing is used up, or when the matching reset is
    /// unknown.
    pub fn exhausted_until(&self) -> Option<Duration> {
        [
            (self.remaining_requests, self.reset_requests),
            (self.remaining_tokens, self.reset_tokens),
        ]
        .into_iter()
        .filter_map(|pair| match pair {
            (Some(0), reset) => reset,
            _ => None,
        })
        .max()
    }
}

fn parse_count(value: &str) -> Option<u64> {
    let value = value.trim();
    if let Ok(n) = value.parse::<u64>() {
        return Some(n);
    }
    let x: f64 = value.parse().ok()?;
    // Saturating cast: finite and non-negative, so only huge values clamp to u64::MAX.
    (x.is_finite() && x >= 0.0).then_some(x as u64)
}

/// A reset as the duration from `now` (see the module docs for the accepted forms).
fn parse_reset(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if let Some(d) = parse_go_duration(value) {
        return Some(d);
    }
    if let Ok(n) = value.parse::<u64>() {
        return Some(if n >= 1_000_000_000 {
            until(UNIX_EPOCH.checked_add(Duration::from_secs(n))?, now)
        } else {
            Duration::from_secs(n)
        });
    }
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at = match value.strip_suffix("+00:00") {
        Some(utc) => humantime::parse_rfc3339(&format!("{utc}Z")),
        None => humantime::parse_rfc3339(value),
    };
    if let Ok(at) = at {
        return Some(until(at, now));
    }
    httpdate::parse_http_date(value)
        .ok()
        .map(|at| until(at, now))
}

fn until(at: SystemTime, now: SystemTime) -> Duration {
    at.duration_since(now).unwrap_or(Duration::ZERO)
}

/// A Go `time.Duration` string as OpenAI sends it: one or more `<decimal><unit>`, e.g.
/// `6m0s`, `0.5s`, `20ms`. No sign (a reset is never negative), no bare numbers.
fn parse_go_duration(value: &str) -> Option<Duration> {
    const UNITS: [(&str, f64); 8] = [
        // Longer names first, so "ms" is not read as "m".
        ("ns", 1e-9),
        ("us", 1e-6),
        ("µs", 1e-6),
        ("μs", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ];
    if value.is_empty() {
        return None;
    }
    let mut rest = value;
    let mut secs = 0.0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        let x: f64 = number.parse().ok()?;
        rest = &rest[number_len..];
        let (unit, scale) = UNITS.iter().find(|(unit, _)| rest.starts_with(unit))?;
        rest = &rest[unit.len()..];
        secs += x * scale;
    }
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        move |name| map.get(name).copied()
    }

    fn now() -> SystemTime {
        humantime::parse_rfc3339("2026-11-21T10:00:00Z").unwrap()
    }

    #[test]
    fn openai_headers() {
        let h = parse(
            headers(&[
                ("x-ratelimit-limit-requests", "10000"),
                ("x-ratelimit-limit-tokens", "2000000"),
                ("x-ratelimit-remaining-requests", "9999"),
                ("x-ratelimit-remaining-tokens", "1999977"),
                ("x-ratelimit-reset-requests", "6m0s"),
                ("x-ratelimit-reset-tokens", "1s"),
            ]),
            now(),
        )
        .unwrap();
        assert_eq!(
            h,
            Headroom {
                remaining_requests: Some(9999),
                limit_requests: Some(10000),
                reset_requests: Some(Duration::from_secs(360)),
                remaining_tokens: Some(1_999_977),
                limit_tokens: Some(2_000_000),
                reset_tokens: Some(Duration::from_secs(1)),
            }
        );
        assert!((h.fraction().unwrap() - 0.9999).abs() < 1e-12);
        assert_eq!(h.exhausted_until(), None);
    }

    #[test]
    fn go_durations() {
        let d = |s: &str| parse_reset(s, now());
        assert_eq!(d("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(d("0.5s"), Some(Duration::from_millis(500)));
        assert_eq!(d("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(d("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(d("2m59.56s"), Some(Duration::from_millis(179_560)));
        assert_eq!(d("7.66s"), Some(Duration::from_millis(7660)));
        assert_eq!(d("0s"), Some(Duration::ZERO));
        assert_eq!(d("150us"), Some(Duration::from_micros(150)));
        assert_eq!(d("1µs"), Some(Duration::from_micros(1)));
        assert_eq!(d(" 1s "), Some(Duration::from_secs(1)));
        // Bare numbers are seconds; a large integer is a Unix timestamp.
        assert_eq!(d("30"), Some(Duration::from_secs(30)));
        assert_eq!(d("1.5"), Some(Duration::from_millis(1500)));
        let unix = now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(d(&(unix + 42).to_string()), Some(Duration::from_secs(42)));
        for junk in [
            "", "s", "1x", "1.2.3s", "-1s", "1s-", "NaN", "inf", ".s", "1e400", "🙂",
        ] {
            assert_eq!(d(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn anthropic_headers() {
        let h = parse(
            headers(&[
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", "2026-11-21T10:00:30Z"),
                ("anthropic-ratelimit-tokens-limit", "40000"),
                ("anthropic-ratelimit-tokens-remaining", "10000"),
                ("anthropic-ratelimit-tokens-reset", "2026-11-21T10:00:05Z"),
                ("anthropic-ratelimit-input-tokens-limit", "30000"),
                ("anthropic-ratelimit-input-tokens-remaining", "1"),
            ]),
            now(),
        )
        .unwrap();
        assert_eq!(
            h,
            Headroom {
                remaining_requests: Some(0),
                limit_requests: Some(50),
                reset_requests: Some(Duration::from_secs(30)),
                remaining_tokens: Some(10_000),
                limit_tokens: Some(40_000),
                reset_tokens: Some(Duration::from_secs(5)),
            }
        );
        assert_eq!(h.fraction(), Some(0.0));
        assert_eq!(h.exhausted_until(), Some(Duration::from_secs(30)));
    }

    #[test]
    fn anthropic_input_tokens_stand_in_for_tokens() {
        let h = parse(
            headers(&[
                ("anthropic-ratelimit-input-tokens-limit", "20000"),
                ("anthropic-ratelimit-input-tokens-remaining", "5000"),
                (
                    "anthropic-ratelimit-input-tokens-reset",
                    "2026-11-21T10:00:12+00:00",
                ),
                ("anthropic-ratelimit-output-tokens-limit", "4000"),
                ("anthropic-ratelimit-output-tokens-remaining", "0"),
                (
                    "anthropic-ratelimit-output-tokens-reset",
                    "2026-11-21T10:01:00Z",
                ),
            ]),
            now(),
        )
        .unwrap();
        assert_eq!(h.limit_tokens, Some(20_000));
        assert_eq!(h.remaining_tokens, Some(5000));
        assert_eq!(h.reset_tokens, Some(Duration::from_secs(12)));
        assert_eq!(h.remaining_requests, None);
        assert_eq!(h.fraction(), Some(0.25));
        assert_eq!(h.exhausted_until(), None);
    }

    #[test]
    fn resets_in_the_past_clamp_to_zero() {
        let h = parse(
            headers(&[
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", "2026-11-21T09:59:00Z"),
            ]),
            now(),
        )
        .unwrap();
        assert_eq!(h.reset_requests, Some(Duration::ZERO));
        assert_eq!(h.exhausted_until(), Some(Duration::ZERO));
        // An HTTP date works too.
        let h = parse(
            headers(&[("x-ratelimit-reset-tokens", "Sat, 21 Nov 2026 10:00:07 GMT")]),
            now(),
        )
        .unwrap();
        assert_eq!(h.reset_tokens, Some(Duration::from_secs(7)));
    }

    #[test]
    fn exhausted_until_takes_the_longer_reset() {
        let h = Headroom {
            remaining_requests: Some(0),
            reset_requests: Some(Duration::from_secs(2)),
            remaining_tokens: Some(0),
            reset_tokens: Some(Duration::from_secs(9)),
            ..Headroom::default()
        };
        assert_eq!(h.exhausted_until(), Some(Duration::from_secs(9)));
        let h = Headroom {
            remaining_tokens: Some(0),
            reset_tokens: Some(Duration::from_millis(20)),
            remaining_requests: Some(3),
            reset_requests: Some(Duration::from_secs(60)),
            ..Headroom::default()
        };
        assert_eq!(h.exhausted_until(), Some(Duration::from_millis(20)));
        let h = Headroom {
            remaining_tokens: Some(0),
            ..Headroom::default()
        };
        assert_eq!(h.exhausted_until(), None);
    }

    #[test]
    fn fraction_is_the_minimum_clamped() {
        let h = Headroom {
            remaining_requests: Some(90),
            limit_requests: Some(100),
            remaining_tokens: Some(300),
            limit_tokens: Some(1000),
            ..Headroom::default()
        };
        assert_eq!(h.fraction(), Some(0.3));
        let h = Headroom {
            remaining_requests: Some(500),
            limit_requests: Some(100),
            remaining_tokens: Some(5),
            limit_tokens: Some(0),
            ..Headroom::default()
        };
        assert_eq!(h.fraction(), Some(1.0));
        let h = Headroom {
            remaining_requests: Some(5),
            limit_tokens: Some(10),
            ..Headroom::default()
        };
        assert_eq!(h.fraction(), None);
    }

    #[test]
    fn no_or_only_junk_headers_give_none() {
        assert_eq!(
            parse(headers(&[("content-type", "application/json")]), now()),
            None
        );
        assert_eq!(
            parse(
                headers(&[
                    ("x-ratelimit-remaining-requests", "lots"),
                    ("x-ratelimit-reset-requests", "soon"),
                    ("anthropic-ratelimit-requests-reset", "2026-13-45T99:00:00Z"),
                ]),
                now(),
            ),
            None
        );
        // Junk next to good values is ignored on its own.
        let h = parse(
            headers(&[
                ("x-ratelimit-remaining-tokens", "-5"),
                ("x-ratelimit-limit-tokens", "1000.7"),
                ("x-ratelimit-reset-tokens", "later"),
            ]),
            now(),
        )
        .unwrap();
        assert_eq!(
            h,
            Headroom {
                limit_tokens: Some(1000),
                ..Headroom::default()
            }
        );
    }

    proptest! {
        #[test]
        fn junk_never_panics(values in proptest::collection::vec(any::<String>(), 12), secs in any::<u64>()) {
            let names = [
                "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
                "anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-reset",
                "anthropic-ratelimit-input-tokens-reset", "anthropic-ratelimit-requests-limit",
                "anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-input-tokens-limit",
            ];
            let pairs: Vec<(&str, &str)> =
                names.iter().copied().zip(values.iter().map(String::as_str)).collect();
            let now = UNIX_EPOCH + Duration::from_secs(secs % (1 << 40));
            if let Some(h) = parse(headers(&pairs), now) {
                if let Some(f) = h.fraction() {
                    prop_assert!((0.0..=1.0).contains(&f));
                }
                let _ = h.exhausted_until();
            }
        }

        #[test]
        fn go_duration_round_trips(h in 0u64..100, m in 0u64..60, ms in 0u64..60_000) {
            let text = format!("{h}h{m}m{}.{:03}s", ms / 1000, ms % 1000);
            let expected = Duration::from_secs(h * 3600 + m * 60) + Duration::from_millis(ms);
            let got = parse_reset(&text, now()).unwrap();
            let diff = got.abs_diff(expected);
            prop_assert!(diff < Duration::from_micros(1), "{text}: {got:?}");
        }
    }
}
