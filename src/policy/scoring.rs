//! Bids and routing strategies. A strategy is a pure function from the bids of the available
//! deployments (and some randomness) to the order in which to try them. New strategies slot in
//! as another arm of [`Strategy`] and another function here; nothing else changes.
//!
//! [`Strategy::order`] leaves out every bid that declined, groups the rest into priority tiers
//! by [`Bid::order`] (lower first, and a later tier never precedes an earlier one), and orders
//! each tier by the strategy:
//!
//! - `simple-shuffle`: weighted random permutation ([`weighted_shuffle`]).
//! - `round-robin`: weighted round robin on the group's `tick`: the tier's deployments in
//!   ascending id order own consecutive spans of `[0, W)` as wide as their weights (`W` = the
//!   tier's total weight); the one owning `tick % W` goes first, the rest follow in cyclic id
//!   order after it. Over `W` consecutive ticks each deployment is first exactly `weight` times.
//! - `cheapest`: ascending estimated cost of this request,
//!   `est_prompt_tokens * input + est_completion_tokens * output` (pico-dollars, saturating).
//! - `least-busy`: ascending utilisation, `in_flight / limit`, or `in_flight /`
//!   [`UNLIMITED_CAPACITY`] without a limit.
//! - `latency`: ascending EWMA latency (time to first token for streams when known, whole-attempt
//!   latency otherwise) times `1 + `[`THROTTLE_PENALTY`]` * throttle`; no sample yet scores 0, so
//!   new deployments are explored first.
//! - `usage`: descending rate-limit headroom; an unknown limit counts as fully free (1.0).
//!
//! Ties in the scored strategies are broken by a weighted random draw (the same keys as
//! [`weighted_shuffle`]), so equal deployments share traffic in proportion to their weights.
//! A weight of 0 (which config validation rejects) counts as 1 everywhere. Garbage numbers never
//! panic: scores are compared with `f64::total_cmp`; a NaN latency sample or headroom ranks
//! last and a NaN throttle counts as fully throttled.

use tokio::time::Instant;

use crate::config::Prices;

/// A deployment's answer to "could you take a request, and on what terms?".
#[derive(Debug, Clone, PartialEq)]
pub struct Bid {
    pub deployment: usize,
    /// `None` when the deployment would take a request now.
    pub decline: Option<Decline>,
    pub weight: u32,
    /// Priority tier: lower tiers are tried first; a higher number only when every deployment
    /// of the lower ones declined or failed.
    pub order: u32,
    pub in_flight: u32,
    /// The concurrency limit in force (adaptive or `max_concurrency`), if any.
    pub limit: Option<u32>,
    /// EWMA of whole-attempt latency, microseconds.
    pub latency_us: Option<f64>,
    /// EWMA of time to first token, microseconds.
    pub ttft_us: Option<f64>,
    /// EWMA (0..=1) of the share of recent attempts the upstream refused with 429.
    pub throttle: f64,
    /// Share (0..=1) of the tightest known rate limit (ours or the provider's) still free in
    /// the current window; `None` when no limit is known.
    pub headroom: Option<f64>,
    /// Pico-dollars per token.
    pub prices: Prices,
}

/// What a strategy knows about the request being routed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    pub est_prompt_tokens: u64,
    pub est_completion_tokens: u64,
    pub stream: bool,
}

impl Bid {
    pub fn available(&self) -> bool {
        self.decline.is_none()
    }
}

/// Why a deployment declines to bid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decline {
    /// The circuit breaker is open (or half-open with every probe slot taken).
    BreakerOpen { until: Option<Instant> },
    /// Cooling down after an upstream 429 (`rate_limited`) or a quota/auth failure.
    CoolingDown { until: Instant, long: bool },
    /// Our own rpm limiter has no room until `until`.
    RateLimited { until: Instant },
    /// `max_concurrency` requests are already in flight.
    AtCapacity,
    /// The actor did not answer (mailbox closed or full); it is being respawned.
    Unavailable,
}

impl Decline {
    pub fn as_str(&self) -> &'static str {
        match self {
            Decline::BreakerOpen { .. } => "breaker_open",
            Decline::CoolingDown { long: false, .. } => "cooling_down",
            Decline::CoolingDown { long: true, .. } => "disabled",
            Decline::RateLimited { .. } => "rate_limited",
            Decline::AtCapacity => "at_capacity",
            Decline::Unavailable => "unavailable",
        }
    }

    /// Declines that mean "too much traffic", which the client should see as a 429.
    pub fn is_rate_limit(&self) -> bool {
        matches!(
            self,
            Decline::RateLimited { .. }
                | Decline::AtCapacity
                | Decline::CoolingDown { long: false, .. }
        )
    }

    /// When this deployment will take requests again, if known.
    pub fn until(&self) -> Option<Instant> {
        match *self {
            Decline::BreakerOpen { until } => until,
            Decline::CoolingDown { until, .. } | Decline::RateLimited { until } => Some(until),
            Decline::AtCapacity | Decline::Unavailable => None,
        }
    }
}

/// How a model group orders its available deployments within a priority tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Weighted random: each deployment is picked with probability proportional to its weight;
    /// the rest of the order is weighted random too.
    SimpleShuffle,
    /// Weighted round robin over a per-group counter (`tick`): with the tier's deployments in
    /// ascending id order owning spans of `[0, W)` as wide as their weights, the owner of
    /// `tick % W` goes first and the others follow in cyclic id order after it. Over `W`
    /// consecutive ticks each deployment is first exactly `weight` times. No randomness.
    RoundRobin,
    /// Lowest estimated cost of this request first: `est_prompt_tokens * prices.input +
    /// est_completion_tokens * prices.output` in pico-dollars, saturating at `u64::MAX` (cached
    /// input is not estimated). Equal costs are ordered by weighted random.
    Cheapest,
    /// Lowest utilisation first: `in_flight / limit` when a concurrency limit is in force
    /// (a limit of 0 counts as 1), otherwise `in_flight / `[`UNLIMITED_CAPACITY`]. Equal
    /// utilisations (e.g. all idle) are ordered by weighted random.
    LeastBusy,
    /// Lowest score first: the EWMA time to first token for streaming requests (whole-attempt
    /// latency when no TTFT sample exists, or for non-streaming requests), times
    /// `1 + `[`THROTTLE_PENALTY`]` * throttle`, so a deployment that answers 429 quickly does not
    /// attract traffic. A deployment without a sample scores 0 and is explored first; a
    /// negative sample counts as 0 and a NaN one ranks last. Ties are ordered by weighted random.
    Latency,
    /// Most rpm/tpm headroom first; `None` (no known limit) counts as 1.0, fully free, and NaN
    /// as 0.0. Ties are ordered by weighted random.
    Usage,
}

/// How much a fully throttled deployment's latency is inflated by: the latency score is
/// multiplied by `1 + THROTTLE_PENALTY * throttle` (`throttle` clamped to `0..=1`), so a
/// deployment refusing every request with 429 looks 11 times slower than its raw latency.
pub const THROTTLE_PENALTY: f64 = 10.0;

/// The capacity assumed for a deployment with no concurrency limit in `least-busy`: its
/// utilisation is `in_flight / UNLIMITED_CAPACITY`. Large, because an unlimited deployment is
/// presumed to scale, but finite, so its load still counts.
pub const UNLIMITED_CAPACITY: f64 = 1000.0;

impl Strategy {
    pub const ALL: [Strategy; 6] = [
        Strategy::SimpleShuffle,
        Strategy::RoundRobin,
        Strategy::Cheapest,
        Strategy::LeastBusy,
        Strategy::Latency,
        Strategy::Usage,
    ];
    pub const NAMES: &'static [&'static str] = &[
        "simple-shuffle",
        "round-robin",
        "cheapest",
        "least-busy",
        "latency",
        "usage",
    ];

    pub fn parse(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::SimpleShuffle => "simple-shuffle",
            Strategy::RoundRobin => "round-robin",
            Strategy::Cheapest => "cheapest",
            Strategy::LeastBusy => "least-busy",
            Strategy::Latency => "latency",
            Strategy::Usage => "usage",
        }
    }

    /// Orders the available bids, best first: priority tiers (`Bid::order`) ascending, the
    /// strategy within each tier. `tick` is the group's round-robin counter (one per request);
    /// `rand` yields uniform numbers in `[0, 1)`. Unavailable bids are left out. The result
    /// holds `Bid::deployment` ids.
    pub fn order(
        self,
        bids: &[Bid],
        ask: &Ask,
        tick: u64,
        rand: &mut dyn FnMut() -> f64,
    ) -> Vec<usize> {
        let mut ranked: Vec<Ranked> = Vec::with_capacity(bids.len());
        for b in bids.iter().filter(|b| b.available()) {
            let mut r = Ranked {
                order: b.order,
                cost: 0,
                score: 0.0,
                tie: 0.0,
                weight: b.weight.max(1),
                deployment: b.deployment,
            };
            match self {
                // Round robin needs no randomness: ids order the tier, `tick` rotates it.
                Strategy::RoundRobin => {}
                Strategy::SimpleShuffle => r.tie = shuffle_key(b.weight, rand),
                Strategy::Cheapest => {
                    r.cost = b
                        .prices
                        .cost(ask.est_prompt_tokens, 0, ask.est_completion_tokens);
                    r.tie = shuffle_key(b.weight, rand);
                }
                Strategy::LeastBusy => {
                    r.score = utilisation(b);
                    r.tie = shuffle_key(b.weight, rand);
                }
                Strategy::Latency => {
                    r.score = latency_score(b, ask.stream);
                    r.tie = shuffle_key(b.weight, rand);
                }
                Strategy::Usage => {
                    r.score = usage_score(b.headroom);
                    r.tie = shuffle_key(b.weight, rand);
                }
            }
            ranked.push(r);
        }
        ranked.sort_unstable_by(|a, b| {
            a.order
                .cmp(&b.order)
                .then(a.cost.cmp(&b.cost))
                .then(a.score.total_cmp(&b.score))
                .then(a.tie.total_cmp(&b.tie))
                .then(a.deployment.cmp(&b.deployment))
        });
        if self == Strategy::RoundRobin {
            // Sorted by (tier, id); rotate each tier so the owner of `tick % W` leads.
            let mut rest = ranked.as_mut_slice();
            while let Some(first) = rest.first() {
                let tier = first.order;
                let len = rest.iter().take_while(|r| r.order == tier).count();
                let (head, tail) = rest.split_at_mut(len);
                let lead = round_robin_lead(head, tick);
                head.rotate_left(lead);
                rest = tail;
            }
        }
        ranked.into_iter().map(|r| r.deployment).collect()
    }
}

/// One available bid, reduced to what the sort looks at. Sorted by `order`, then `cost`, then
/// `score` (both ascending, better first), then the random `tie` key, then the id.
struct Ranked {
    order: u32,
    cost: u64,
    score: f64,
    tie: f64,
    /// Effective weight (0 counts as 1), for round robin.
    weight: u32,
    deployment: usize,
}

/// The index, within one tier sorted by id, of the deployment whose weight span holds
/// `tick % W`.
fn round_robin_lead(tier: &[Ranked], tick: u64) -> usize {
    let total: u64 = tier.iter().map(|r| u64::from(r.weight)).sum();
    if total == 0 {
        return 0;
    }
    let mut slot = tick % total;
    for (i, r) in tier.iter().enumerate() {
        let w = u64::from(r.weight);
        if slot < w {
            return i;
        }
        slot -= w;
    }
    0
}

/// `in_flight / limit` (a limit of 0 counts as 1), or `in_flight / UNLIMITED_CAPACITY`.
fn utilisation(b: &Bid) -> f64 {
    let capacity = match b.limit {
        Some(limit) => f64::from(limit.max(1)),
        None => UNLIMITED_CAPACITY,
    };
    f64::from(b.in_flight) / capacity
}

/// TTFT (streams, when known) or whole latency, inflated by recent 429s; 0 without a sample
/// (explore it) unless it has only been refusing (then last but one), `+inf` for a NaN sample.
fn latency_score(b: &Bid, stream: bool) -> f64 {
    let sample = match (stream, b.ttft_us) {
        (true, Some(ttft)) => Some(ttft),
        _ => b.latency_us,
    };
    let Some(sample) = sample else {
        // A deployment that has answered nothing but 429s has no latency sample; it must not
        // win as "unexplored".
        return if b.throttle > 0.0 { f64::MAX } else { 0.0 };
    };
    if sample.is_nan() {
        return f64::INFINITY;
    }
    let throttle = if b.throttle.is_nan() {
        1.0
    } else {
        b.throttle.clamp(0.0, 1.0)
    };
    // `sample` is in [0, inf] and the factor in [1, 11]: the product is never NaN.
    sample.max(0.0) * (1.0 + THROTTLE_PENALTY * throttle)
}

/// Negated headroom, so ascending order means most headroom first; `None` is 1.0 (free), NaN
/// is 0.0 (no room).
fn usage_score(headroom: Option<f64>) -> f64 {
    match headroom {
        None => -1.0,
        Some(h) if h.is_nan() => 0.0,
        Some(h) => -h,
    }
}

/// The Efraimidis–Spirakis key `-ln(u) / weight`: smaller keys go first.
fn shuffle_key(weight: u32, rand: &mut dyn FnMut() -> f64) -> f64 {
    // 1 - u is in (0, 1], so ln never sees 0; a NaN draw counts as 0.
    let u = 1.0 - rand().clamp(0.0, 1.0 - f64::EPSILON);
    let u = if u.is_nan() { 1.0 } else { u };
    -u.ln() / f64::from(weight.max(1))
}

/// Weighted random permutation without replacement (Efraimidis–Spirakis): each item gets the key
/// `-ln(u) / weight` and items are taken in increasing key order. The first item is chosen with
/// probability `weight / total`, exactly like a weighted pick, and the rest follow the same rule.
pub fn weighted_shuffle(bids: &[Bid], rand: &mut dyn FnMut() -> f64) -> Vec<usize> {
    let mut keyed: Vec<(f64, usize)> = bids
        .iter()
        .filter(|b| b.available())
        .map(|b| (shuffle_key(b.weight, rand), b.deployment))
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    keyed.into_iter().map(|(_, d)| d).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bid(deployment: usize, weight: u32) -> Bid {
        Bid {
            deployment,
            decline: None,
            weight,
            order: 0,
            in_flight: 0,
            limit: None,
            latency_us: None,
            ttft_us: None,
            throttle: 0.0,
            headroom: None,
            prices: Prices::default(),
        }
    }

    #[test]
    fn weighted_shuffle_picks_first_in_proportion_to_weight() {
        let bids = [bid(0, 3), bid(1, 1)];
        let mut rng = fastrand::Rng::with_seed(7);
        let mut first = [0u32; 2];
        let n = 40_000;
        for _ in 0..n {
            let order = weighted_shuffle(&bids, &mut || rng.f64());
            assert_eq!(order.len(), 2);
            first[order[0]] += 1;
        }
        let share = f64::from(first[0]) / f64::from(n);
        assert!((share - 0.75).abs() < 0.01, "deployment 0 first in {share}");
    }

    #[test]
    fn unavailable_bids_are_left_out() {
        let mut declined = bid(1, 100);
        declined.decline = Some(Decline::AtCapacity);
        let bids = [bid(0, 1), declined, bid(2, 1)];
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..100 {
            let mut order =
                Strategy::SimpleShuffle.order(&bids, &Ask::default(), 0, &mut || rng.f64());
            order.sort_unstable();
            assert_eq!(order, vec![0, 2]);
        }
    }

    #[test]
    fn extreme_randomness_never_panics_or_loses_bids() {
        let bids = [bid(0, 1), bid(1, u32::MAX), bid(2, 0)];
        for u in [0.0, 1.0, -5.0, 5.0, f64::NAN] {
            let order = weighted_shuffle(&bids, &mut || u);
            assert_eq!(order.len(), 3);
        }
    }

    fn seeded(seed: u64) -> impl FnMut() -> f64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        move || rng.f64()
    }

    fn priced(deployment: usize, input: u64, output: u64) -> Bid {
        Bid {
            prices: Prices {
                input,
                cached_input: 0,
                output,
            },
            ..bid(deployment, 1)
        }
    }

    fn ask(prompt: u64, completion: u64, stream: bool) -> Ask {
        Ask {
            est_prompt_tokens: prompt,
            est_completion_tokens: completion,
            stream,
        }
    }

    /// The deployment that `strategy` puts first, for every seed of a few hundred.
    fn always_first(strategy: Strategy, bids: &[Bid], ask: &Ask) -> usize {
        let mut rand = seeded(3);
        let first = strategy.order(bids, ask, 0, &mut rand)[0];
        for tick in 1..300 {
            let order = strategy.order(bids, ask, tick, &mut rand);
            assert_eq!(
                order[0], first,
                "{strategy:?} is not deterministic: {order:?}"
            );
        }
        first
    }

    #[test]
    fn cheapest_puts_the_deployment_cheaper_for_this_request_first() {
        let bids = [
            priced(0, 3_000_000, 15_000_000),
            priced(1, 2_500_000, 10_000_000),
        ];
        let order = Strategy::Cheapest.order(&bids, &ask(1000, 200, false), 0, &mut seeded(1));
        assert_eq!(order, vec![1, 0]);
    }

    #[test]
    fn cheapest_flips_when_the_prompt_completion_mix_flips() {
        // 0: cheap input, dear output. 1: dear input, cheap output.
        let bids = [
            priced(0, 1_000_000, 20_000_000),
            priced(1, 5_000_000, 2_000_000),
        ];
        let long_prompt = ask(10_000, 100, false);
        let long_answer = ask(100, 10_000, false);
        assert_eq!(always_first(Strategy::Cheapest, &bids, &long_prompt), 0);
        assert_eq!(always_first(Strategy::Cheapest, &bids, &long_answer), 1);
    }

    #[test]
    fn cheapest_saturates_instead_of_overflowing() {
        let bids = [priced(0, u64::MAX, u64::MAX), priced(1, u64::MAX / 2, 0)];
        let order = Strategy::Cheapest.order(&bids, &ask(u64::MAX, 5, false), 0, &mut seeded(1));
        assert_eq!(order.len(), 2);
    }

    #[test]
    fn equal_costs_are_broken_by_weight() {
        let bids = [bid(0, 1), bid(1, 3)];
        let mut rand = seeded(9);
        let n = 20_000;
        let firsts = (0..n)
            .filter(|_| Strategy::Cheapest.order(&bids, &Ask::default(), 0, &mut rand)[0] == 1)
            .count();
        let share = firsts as f64 / f64::from(n);
        assert!((share - 0.75).abs() < 0.02, "deployment 1 first in {share}");
    }

    #[test]
    fn least_busy_prefers_lower_utilisation() {
        let limited = |d, in_flight, limit| Bid {
            in_flight,
            limit: Some(limit),
            ..bid(d, 1)
        };
        // 5/10 against 3/4: fewer slots taken in absolute terms loses to the lower share.
        let bids = [limited(0, 3, 4), limited(1, 5, 10)];
        assert_eq!(always_first(Strategy::LeastBusy, &bids, &Ask::default()), 1);
        // Unlimited with 100 in flight is 100 / 1000 = 0.1, below 1/5.
        let unlimited = Bid {
            in_flight: 100,
            ..bid(2, 1)
        };
        let bids = [limited(0, 1, 5), unlimited];
        assert_eq!(always_first(Strategy::LeastBusy, &bids, &Ask::default()), 2);
        let bids = [limited(0, 1, 5), limited(1, 0, 5), limited(2, 4, 5)];
        let order = Strategy::LeastBusy.order(&bids, &Ask::default(), 0, &mut seeded(1));
        assert_eq!(order, vec![1, 0, 2]);
    }

    #[test]
    fn latency_uses_ttft_for_streams_and_whole_latency_otherwise() {
        // 0: quick first token, long answers. 1: slow first token, short answers.
        let timed = |d, ttft: f64, whole: f64| Bid {
            ttft_us: Some(ttft),
            latency_us: Some(whole),
            ..bid(d, 1)
        };
        let bids = [
            timed(0, 100_000.0, 5_000_000.0),
            timed(1, 800_000.0, 1_000_000.0),
        ];
        assert_eq!(always_first(Strategy::Latency, &bids, &ask(0, 0, true)), 0);
        assert_eq!(always_first(Strategy::Latency, &bids, &ask(0, 0, false)), 1);
    }

    #[test]
    fn latency_falls_back_to_whole_latency_for_streams_without_a_ttft_sample() {
        let a = Bid {
            latency_us: Some(300_000.0),
            ..bid(0, 1)
        };
        let b = Bid {
            ttft_us: Some(400_000.0),
            latency_us: Some(100_000.0),
            ..bid(1, 1)
        };
        assert_eq!(
            always_first(Strategy::Latency, &[a, b], &ask(0, 0, true)),
            0
        );
    }

    #[test]
    fn a_throttled_fast_deployment_loses_to_a_slower_unthrottled_one() {
        let fast_but_429 = Bid {
            latency_us: Some(50_000.0),
            throttle: 0.5,
            ..bid(0, 1)
        };
        let slower = Bid {
            latency_us: Some(200_000.0),
            ..bid(1, 1)
        };
        let bids = [fast_but_429.clone(), slower];
        assert_eq!(always_first(Strategy::Latency, &bids, &Ask::default()), 1);
        // Without the 429s the fast one wins.
        let calm = Bid {
            throttle: 0.0,
            ..fast_but_429
        };
        let bids = [calm, bids[1].clone()];
        assert_eq!(always_first(Strategy::Latency, &bids, &Ask::default()), 0);
    }

    #[test]
    fn latency_explores_a_deployment_without_a_sample_first() {
        let measured = Bid {
            latency_us: Some(1.0),
            ..bid(0, 1)
        };
        let fresh = bid(1, 1);
        assert_eq!(
            always_first(Strategy::Latency, &[measured, fresh], &Ask::default()),
            1
        );
    }

    #[test]
    fn usage_prefers_more_headroom_and_counts_unknown_as_free() {
        let room = |d, h| Bid {
            headroom: h,
            ..bid(d, 1)
        };
        let bids = [room(0, Some(0.2)), room(1, Some(0.9)), room(2, Some(0.5))];
        let order = Strategy::Usage.order(&bids, &Ask::default(), 0, &mut seeded(1));
        assert_eq!(order, vec![1, 2, 0]);
        let bids = [room(0, Some(0.99)), room(1, None)];
        assert_eq!(always_first(Strategy::Usage, &bids, &Ask::default()), 1);
        let bids = [room(0, Some(f64::NAN)), room(1, Some(0.01))];
        assert_eq!(always_first(Strategy::Usage, &bids, &Ask::default()), 1);
    }

    #[test]
    fn round_robin_gives_each_deployment_exactly_its_weight_share_of_first_places() {
        // Deliberately not in id order, and with a declined bid that must not take a turn.
        let mut declined = bid(7, 5);
        declined.decline = Some(Decline::Unavailable);
        let bids = [bid(4, 2), bid(1, 3), declined, bid(9, 1)];
        let total = 6;
        for start in [0, 1, 5, 1_000_003, u64::MAX - total] {
            let mut firsts = std::collections::BTreeMap::new();
            for tick in start..start + total {
                let order = Strategy::RoundRobin.order(&bids, &Ask::default(), tick, &mut || {
                    panic!("round robin needs no randomness")
                });
                *firsts.entry(order[0]).or_insert(0) += 1;
            }
            assert_eq!(firsts, [(1, 3), (4, 2), (9, 1)].into(), "from tick {start}");
        }
    }

    #[test]
    fn round_robin_follows_the_first_with_the_others_in_cyclic_order() {
        let bids = [bid(4, 2), bid(1, 3), bid(9, 1)];
        let at = |tick| Strategy::RoundRobin.order(&bids, &Ask::default(), tick, &mut || 0.5);
        // Spans: 1 owns 0..3, 4 owns 3..5, 9 owns 5..6.
        assert_eq!(at(0), vec![1, 4, 9]);
        assert_eq!(at(2), vec![1, 4, 9]);
        assert_eq!(at(3), vec![4, 9, 1]);
        assert_eq!(at(5), vec![9, 1, 4]);
        assert_eq!(at(6), vec![1, 4, 9]);
    }

    #[test]
    fn a_lower_priority_tier_never_comes_before_an_available_higher_priority_one() {
        // The tier-1 deployment beats the tier-0 ones on every criterion.
        let best_but_backup = Bid {
            order: 1,
            weight: 1_000_000,
            headroom: Some(1.0),
            ..priced(0, 0, 0)
        };
        let primary = |d| Bid {
            in_flight: 9,
            limit: Some(10),
            latency_us: Some(9e6),
            ttft_us: Some(9e6),
            throttle: 1.0,
            headroom: Some(0.0),
            ..priced(d, 1_000_000, 1_000_000)
        };
        let bids = [best_but_backup, primary(1), primary(2)];
        for strategy in Strategy::ALL {
            let mut rand = seeded(5);
            for tick in 0..50 {
                let order = strategy.order(&bids, &ask(100, 100, tick % 2 == 0), tick, &mut rand);
                assert_eq!(order.len(), 3);
                assert_eq!(order[2], 0, "{strategy:?} at tick {tick}: {order:?}");
            }
        }
        // With the primaries declined, the backup tier is all there is.
        let mut bids = bids;
        bids[1].decline = Some(Decline::AtCapacity);
        bids[2].decline = Some(Decline::BreakerOpen { until: None });
        for strategy in Strategy::ALL {
            assert_eq!(
                strategy.order(&bids, &Ask::default(), 0, &mut seeded(1)),
                vec![0]
            );
        }
    }

    #[test]
    fn no_bids_give_an_empty_order() {
        for strategy in Strategy::ALL {
            assert!(strategy
                .order(&[], &Ask::default(), 3, &mut seeded(1))
                .is_empty());
        }
    }

    mod properties {
        use super::super::Strategy as Routing;
        use super::*;
        use proptest::prelude::*;
        use proptest::strategy::Strategy;

        fn any_f64() -> impl Strategy<Value = f64> {
            prop_oneof![
                4 => 0.0..1e7f64,
                1 => Just(0.0),
                1 => Just(-1.0),
                1 => Just(f64::NAN),
                1 => Just(f64::INFINITY),
                1 => Just(f64::NEG_INFINITY),
                1 => any::<f64>(),
            ]
        }

        fn any_share() -> impl Strategy<Value = f64> {
            prop_oneof![4 => 0.0..=1.0f64, 1 => any_f64()]
        }

        fn any_decline() -> impl Strategy<Value = Option<Decline>> {
            prop_oneof![
                3 => Just(None),
                1 => Just(Some(Decline::AtCapacity)),
                1 => Just(Some(Decline::Unavailable)),
                1 => Just(Some(Decline::BreakerOpen { until: None })),
            ]
        }

        fn any_weight() -> impl Strategy<Value = u32> {
            prop_oneof![4 => 0..10u32, 1 => any::<u32>()]
        }

        prop_compose! {
            fn any_bid()(
                decline in any_decline(),
                weight in any_weight(),
                order in 0..4u32,
                in_flight in any::<u32>(),
                limit in proptest::option::of(any::<u32>()),
                latency_us in proptest::option::of(any_f64()),
                ttft_us in proptest::option::of(any_f64()),
                throttle in any_share(),
                headroom in proptest::option::of(any_share()),
                input in any::<u64>(),
                cached_input in any::<u64>(),
                output in any::<u64>(),
            ) -> Bid {
                Bid {
                    deployment: 0,
                    decline,
                    weight,
                    order,
                    in_flight,
                    limit,
                    latency_us,
                    ttft_us,
                    throttle,
                    headroom,
                    prices: Prices { input, cached_input, output },
                }
            }
        }

        /// Bids with distinct deployment ids, not in id order.
        fn any_bids() -> impl Strategy<Value = Vec<Bid>> {
            proptest::collection::vec(any_bid(), 0..12).prop_flat_map(|bids| {
                let ids: Vec<usize> = (0..bids.len()).map(|i| i * 3 + 1).collect();
                Just(ids).prop_shuffle().prop_map(move |ids| {
                    let mut bids = bids.clone();
                    for (b, id) in bids.iter_mut().zip(ids) {
                        b.deployment = id;
                    }
                    bids
                })
            })
        }

        prop_compose! {
            fn any_ask()(
                est_prompt_tokens in prop_oneof![0..100_000u64, any::<u64>()],
                est_completion_tokens in prop_oneof![0..100_000u64, any::<u64>()],
                stream in any::<bool>(),
            ) -> Ask {
                Ask { est_prompt_tokens, est_completion_tokens, stream }
            }
        }

        /// A uniform stream, or a constant (possibly absurd) value.
        fn any_rand() -> impl Strategy<Value = (u64, Option<f64>)> {
            (
                any::<u64>(),
                prop_oneof![
                    4 => Just(None),
                    1 => prop_oneof![
                        Just(0.0),
                        Just(1.0),
                        Just(-3.0),
                        Just(f64::NAN),
                        Just(f64::INFINITY),
                    ].prop_map(Some),
                ],
            )
        }

        fn check(
            strategy: Routing,
            bids: &[Bid],
            ask: &Ask,
            tick: u64,
            (seed, constant): (u64, Option<f64>),
        ) -> Result<(), TestCaseError> {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut rand = || constant.unwrap_or_else(|| rng.f64());
            let order = strategy.order(bids, ask, tick, &mut rand);

            let mut expected: Vec<usize> = bids
                .iter()
                .filter(|b| b.available())
                .map(|b| b.deployment)
                .collect();
            expected.sort_unstable();
            let mut got = order.clone();
            got.sort_unstable();
            prop_assert_eq!(got, expected, "{:?} gave {:?}", strategy, order);

            let tier = |d: usize| bids.iter().find(|b| b.deployment == d).map(|b| b.order);
            let tiers: Vec<_> = order.iter().map(|&d| tier(d)).collect();
            prop_assert!(
                tiers.windows(2).all(|w| w[0] <= w[1]),
                "{:?} interleaved tiers: {:?}",
                strategy,
                tiers
            );
            Ok(())
        }

        proptest! {
            #[test]
            fn every_strategy_orders_exactly_the_available_bids_tier_by_tier(
                bids in any_bids(),
                ask in any_ask(),
                tick in any::<u64>(),
                rand in any_rand(),
            ) {
                for strategy in Routing::ALL {
                    check(strategy, &bids, &ask, tick, rand)?;
                }
            }

            #[test]
            fn cheapest_never_puts_a_dearer_deployment_before_a_cheaper_one_in_a_tier(
                bids in any_bids(),
                ask in any_ask(),
                seed in any::<u64>(),
            ) {
                let mut rng = fastrand::Rng::with_seed(seed);
                let order = Routing::Cheapest.order(&bids, &ask, 0, &mut || rng.f64());
                let find = |d: usize| bids.iter().find(|b| b.deployment == d);
                for w in order.windows(2) {
                    let (Some(a), Some(b)) = (find(w[0]), find(w[1])) else {
                        return Err(TestCaseError::fail("unknown deployment"));
                    };
                    let cost = |x: &Bid| x.prices.cost(ask.est_prompt_tokens, 0, ask.est_completion_tokens);
                    prop_assert!(a.order < b.order || cost(a) <= cost(b));
                }
            }

            #[test]
            fn round_robin_first_places_over_w_ticks_match_the_weights(
                weights in proptest::collection::vec(1..6u32, 1..6),
                start in any::<u64>(),
            ) {
                let bids: Vec<Bid> =
                    weights.iter().enumerate().map(|(d, &w)| bid(d, w)).collect();
                let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
                let mut firsts = vec![0u32; weights.len()];
                for i in 0..total {
                    let tick = start.wrapping_add(i);
                    let order = Routing::RoundRobin
                        .order(&bids, &Ask::default(), tick, &mut || 0.5);
                    firsts[order[0]] += 1;
                }
                // `tick` wrapping at u64::MAX restarts the cycle, which may skew one cycle; the
                // wrap is 2^64 requests away, so only check cycles that do not cross it.
                if start.checked_add(total).is_some() {
                    prop_assert_eq!(firsts, weights);
                }
            }
        }
    }
}
