//! Routing strategies end to end: each `[router] strategy` (and the priority tiers, per-group
//! overrides and provider rate-limit headers) through the HTTP API against the mock upstream,
//! with exact counts per deployment wherever the strategy is deterministic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// `[[rules]]` that pin a request carrying `x-pin: <id>` to deployment `<id>` (and only it), so
/// a test can give a deployment load or latency samples deterministically. Requests without
/// the header match no rule and are routed by the group's strategy over every deployment.
fn pin_rules(ids: &[&str]) -> String {
    ids.iter()
        .map(|id| {
            format!(
                "\n[[rules]]\nname = \"pin-{id}\"\nheaders = {{ \"x-pin\" = \"{id}\" }}\nonly = [\"{id}\"]\n"
            )
        })
        .collect()
}

/// A request pinned to one deployment by [`pin_rules`].
async fn pinned(gw: &Gateway, body: &Value, id: &str) -> Answer {
    chat_raw(gw, serde_json::to_vec(body).unwrap(), &[("x-pin", id)]).await
}

/// Sends `n` requests one after the other; asserts each is a 200 and returns the serving
/// deployment of each, in order.
async fn serve_n(gw: &Gateway, body: &Value, n: usize) -> Vec<String> {
    let mut served = Vec::with_capacity(n);
    for i in 0..n {
        let r = chat(gw, body).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        served.push(
            r.header("x-switchyard-deployment")
                .expect("x-switchyard-deployment")
                .to_owned(),
        );
    }
    served
}

/// How many requests each deployment served.
fn tally(served: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for d in served {
        *counts.entry(d.as_str()).or_insert(0) += 1;
    }
    counts
}

#[actix_web::test]
async fn round_robin_with_weights_two_to_one_sends_exactly_two_thirds_and_one_third() {
    let mock = mock().await;
    let gw = start_gateway(&format!(
        "{}{}{}",
        // FAST_ROUTER has `workers = 1`: one router, one round-robin counter, exact shares.
        settings("strategy = \"round-robin\"", ""),
        deployment(
            "two",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "two"),
            "weight = 2"
        ),
        deployment(
            "one",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "one"),
            "weight = 1"
        ),
    ));
    let n = 30;
    let served = serve_n(&gw, &user_message("gpt-4o", "hi"), n).await;
    assert_eq!(mock.request_count("two"), 20, "{served:?}");
    assert_eq!(mock.request_count("one"), 10, "{served:?}");
    // Not just the totals: every 3 consecutive requests (one full turn of W = 3) hold exactly
    // two for `two` and one for `one`, wherever the turn starts.
    for (i, w) in served.windows(3).enumerate() {
        let twos = w.iter().filter(|d| *d == "two").count();
        assert_eq!(twos, 2, "requests {i}..{}: {w:?}", i + 3);
    }
    gw.stop(true).await;
}

#[actix_web::test]
async fn cheapest_picks_the_deployment_whose_prices_make_this_request_cheaper() {
    let mock = mock().await;
    let gw = start_gateway(&format!(
        "{}{}{}",
        settings("strategy = \"cheapest\"", ""),
        deployment(
            "cheap-input",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "cheap-input"),
            "input_cost_per_mtok = 1.0\noutput_cost_per_mtok = 100.0"
        ),
        deployment(
            "cheap-output",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "cheap-output"),
            "input_cost_per_mtok = 100.0\noutput_cost_per_mtok = 1.0"
        ),
    ));
    // A long prompt (~10 kB, about 2,500 estimated tokens) and a short answer: the input price
    // dominates. cheap-input: 2,500 * 1 + 10 * 100 = 3,500; cheap-output: 250,000 + 10.
    let long_prompt = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "word ".repeat(2000)}],
        "max_tokens": 10
    });
    // A short prompt (~25 estimated tokens) and a long answer: the output price dominates.
    // cheap-input: 25 + 4,000 * 100 = 400,025; cheap-output: 2,500 + 4,000 = 6,500.
    let long_answer = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4000
    });
    for _ in 0..10 {
        let r = chat(&gw, &long_prompt).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-switchyard-deployment"), Some("cheap-input"));
        let r = chat(&gw, &long_answer).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-switchyard-deployment"), Some("cheap-output"));
    }
    assert_eq!(mock.request_count("cheap-input"), 10);
    assert_eq!(mock.request_count("cheap-output"), 10);
    // And the prompts really went where they belong.
    assert!(mock
        .requests("cheap-input")
        .iter()
        .all(|r| r.json()["max_tokens"] == 10));
    assert!(mock
        .requests("cheap-output")
        .iter()
        .all(|r| r.json()["max_tokens"] == 4000));
    gw.stop(true).await;
}

#[actix_web::test]
async fn least_busy_sends_new_requests_to_the_deployment_without_requests_in_flight() {
    let mock = mock().await;
    // `busy` holds its requests for 3 s; `idle` answers at once.
    mock.set_behavior(
        "busy",
        Behavior::text("slow").with_latency(Duration::from_secs(3)),
    );
    let gw = start_gateway(&format!(
        "{}{}{}{}",
        settings("strategy = \"least-busy\"", ""),
        deployment("busy", "gpt-4o", "openai", &openai_base(&mock, "busy"), ""),
        deployment("idle", "gpt-4o", "openai", &openai_base(&mock, "idle"), ""),
        pin_rules(&["busy"]),
    ));
    let hi = user_message("gpt-4o", "hi");
    let held = futures_util::future::join_all((0..3).map(|_| pinned(&gw, &hi, "busy")));
    let rest = async {
        // Three requests in flight on `busy` (3 / 1000 of its assumed capacity), none on
        // `idle` (0 / 1000): every new request must go to `idle`.
        // The board counts a request when the deployment takes it, a moment before the
        // mock has read it: wait for both.
        eventually(|| gw.registry().board(0).in_flight() == 3).await;
        eventually(|| mock.request_count("busy") == 3).await;
        let served = serve_n(&gw, &hi, 10).await;
        // The premise still held while the ten were routed: busy's requests were all in flight.
        assert_eq!(
            gw.registry().board(0).in_flight(),
            3,
            "busy's slow requests ended too early for this test to mean anything"
        );
        served
    };
    let (held, served) = futures_util::future::join(held, rest).await;
    assert_eq!(tally(&served), [("idle", 10)].into(), "{served:?}");
    assert_eq!(
        mock.request_count("busy"),
        3,
        "busy got only the pinned three"
    );
    assert_eq!(mock.request_count("idle"), 10);
    for r in held {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-switchyard-deployment"), Some("busy"));
    }
    gw.stop(true).await;
}

/// Config for the latency tests: `fast` and `slow`, both pinnable for warm-up.
fn latency_config(mock: &MockUpstream) -> String {
    format!(
        "{}{}{}{}",
        settings("strategy = \"latency\"", ""),
        deployment("fast", "gpt-4o", "openai", &openai_base(mock, "fast"), ""),
        deployment("slow", "gpt-4o", "openai", &openai_base(mock, "slow"), ""),
        pin_rules(&["fast", "slow"]),
    )
}

/// Gives each deployment `n` latency samples (pinned requests), then waits until both have
/// published them (statistics are republished every 32 outcomes or by the actor's 1 s timer).
async fn warm_up(gw: &Gateway, n: usize) {
    let hi = user_message("gpt-4o", "hi");
    for id in ["fast", "slow"] {
        for _ in 0..n {
            let r = pinned(gw, &hi, id).await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.header("x-switchyard-deployment"), Some(id));
        }
    }
    let registry = gw.registry();
    eventually(|| (0..2).all(|d| registry.board(d).published().latency_us.is_some())).await;
}

#[actix_web::test]
async fn latency_sends_traffic_to_the_faster_deployment_after_warm_up() {
    let mock = mock().await;
    mock.set_behavior(
        "slow",
        Behavior::text("slow").with_latency(Duration::from_millis(150)),
    );
    let gw = start_gateway(&latency_config(&mock));
    warm_up(&gw, 3).await;
    let registry = gw.registry();
    let fast_us = registry.board(0).published().latency_us.unwrap();
    let slow_us = registry.board(1).published().latency_us.unwrap();
    assert!(
        fast_us < slow_us && slow_us >= 150_000.0,
        "fast {fast_us} us, slow {slow_us} us"
    );
    let served = serve_n(&gw, &user_message("gpt-4o", "hi"), 20).await;
    assert_eq!(tally(&served), [("fast", 20)].into(), "{served:?}");
    assert_eq!(mock.request_count("fast"), 3 + 20);
    assert_eq!(mock.request_count("slow"), 3, "only the warm-up");
    gw.stop(true).await;
}

#[actix_web::test]
async fn latency_does_not_send_traffic_to_a_deployment_that_answers_429_fast() {
    let mock = mock().await;
    // `fast` answers in 100 ms, `slow` in 200 ms: on latency alone `fast` wins. (Wide gaps, so
    // scheduling noise under CI load cannot flip either comparison below.)
    mock.set_behavior(
        "fast",
        Behavior::text("fast").with_latency(Duration::from_millis(100)),
    );
    mock.set_behavior(
        "slow",
        Behavior::text("slow").with_latency(Duration::from_millis(200)),
    );
    let gw = start_gateway(&latency_config(&mock));
    warm_up(&gw, 5).await;
    let hi = user_message("gpt-4o", "hi");
    let r = chat(&gw, &hi).await;
    assert_eq!(r.header("x-switchyard-deployment"), Some("fast"));

    // Now `fast` refuses everything at once with 429 (Retry-After: 1 s).
    mock.set_behavior(
        "fast",
        Behavior::error(ErrorPreset::RateLimited {
            retry_after: Some(1),
        }),
    );
    let r = chat(&gw, &hi).await;
    assert_eq!(r.status, 200, "the 429 moved on to slow: {}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("slow"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(mock.request_count("fast"), 5 + 1 + 1);
    // The 429 put fast's throttle EWMA at 0.2, so its score is its ~100 ms latency times
    // 1 + 10 * 0.2 = 3, about 300 ms: worse than slow's ~200 ms. Its cooldown (1 s) ends, its raw
    // latency is still the best, and yet it gets nothing: a refusal is not a fast answer. (The
    // throttle only decays with new outcomes, so this holds for every later request; 429s with
    // no latency sample at all would rank it last outright.)
    let clock = gw.clock().clone();
    let mut served = Vec::new();
    let mut errors = 0;
    for _ in 0..20 {
        clock.advance(Duration::from_millis(1500));
        let r = chat(&gw, &hi).await;
        if r.status != 200 {
            errors += 1;
        }
        served.push(
            r.header("x-switchyard-deployment")
                .unwrap_or("-")
                .to_owned(),
        );
    }
    assert_eq!(errors, 0);
    assert_eq!(tally(&served), [("slow", 20)].into(), "{served:?}");
    assert_eq!(
        mock.request_count("fast"),
        7,
        "no request reached the throttled deployment after its cooldown"
    );
    assert!(gw.registry().board(0).published().throttle > 0.19);
    gw.stop(true).await;
}

#[actix_web::test]
async fn usage_sends_traffic_to_the_deployment_whose_provider_reports_more_headroom() {
    let mock = mock().await;
    let with_room = |remaining: u32| {
        Behavior::text("ok")
            .with_header("x-ratelimit-limit-requests", "1000")
            .with_header("x-ratelimit-remaining-requests", remaining.to_string())
    };
    mock.set_behavior("tight", with_room(100));
    mock.set_behavior("roomy", with_room(900));
    let gw = start_gateway(&format!(
        "{}{}{}{}",
        settings("strategy = \"usage\"", ""),
        deployment(
            "tight",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "tight"),
            ""
        ),
        deployment(
            "roomy",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "roomy"),
            ""
        ),
        pin_rules(&["tight", "roomy"]),
    ));
    let hi = user_message("gpt-4o", "hi");
    // One pinned request each, so both have reported their headroom (a deployment that has
    // reported nothing counts as fully free).
    for id in ["tight", "roomy"] {
        assert_eq!(pinned(&gw, &hi, id).await.status, 200);
    }
    let registry = gw.registry();
    let headroom = |d: usize| registry.board(d).published().provider_headroom;
    eventually(|| headroom(0) == Some(0.1) && headroom(1) == Some(0.9)).await;
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric_in(
            &text,
            "gateway_ratelimit_headroom",
            &[("deployment", "tight")]
        ),
        0.1
    );
    assert_eq!(
        metric_in(
            &text,
            "gateway_ratelimit_headroom",
            &[("deployment", "roomy")]
        ),
        0.9
    );

    let served = serve_n(&gw, &hi, 20).await;
    assert_eq!(tally(&served), [("roomy", 20)].into(), "{served:?}");
    assert_eq!(mock.request_count("tight"), 1, "only the pinned one");

    // roomy's provider now says only 5 % is left; tight (10 %) has more and takes over.
    mock.set_behavior("roomy", with_room(50));
    let r = chat(&gw, &hi).await;
    assert_eq!(r.header("x-switchyard-deployment"), Some("roomy"));
    eventually(|| headroom(1) == Some(0.05)).await;
    let served = serve_n(&gw, &hi, 20).await;
    assert_eq!(tally(&served), [("tight", 20)].into(), "{served:?}");
    assert_eq!(mock.request_count("roomy"), 1 + 20 + 1);
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_second_tier_deployment_gets_nothing_while_the_first_is_healthy_and_serves_when_it_fails()
{
    let mock = mock().await;
    let gw = start_gateway(&format!(
        "{}{}{}",
        settings(
            "num_retries = 3",
            "[breaker]\nconsecutive_failures = 3\ncooldown_ms = 30000\nprobe_interval_ms = 0\njitter = 0.0\n"
        ),
        deployment(
            "primary",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "primary"),
            // A tiny weight must not matter: the tier decides.
            "order = 1\nweight = 1"
        ),
        deployment(
            "backup",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "backup"),
            "order = 2\nweight = 1000"
        ),
    ));
    let hi = user_message("gpt-4o", "hi");
    let served = serve_n(&gw, &hi, 20).await;
    assert_eq!(tally(&served), [("primary", 20)].into(), "{served:?}");
    assert_eq!(mock.request_count("backup"), 0);

    // The primary fails: each request moves on to the backup at once, and after three
    // failures in a row the breaker opens and the primary is not called any more.
    mock.set_behavior("primary", Behavior::error(ErrorPreset::ServerError));
    let mut errors = 0;
    let mut served = Vec::new();
    for _ in 0..20 {
        let r = chat(&gw, &hi).await;
        if r.status != 200 {
            errors += 1;
        }
        served.push(
            r.header("x-switchyard-deployment")
                .unwrap_or("-")
                .to_owned(),
        );
    }
    assert_eq!(errors, 0, "the backup tier served every request");
    assert_eq!(tally(&served), [("backup", 20)].into(), "{served:?}");
    assert_eq!(
        mock.request_count("primary"),
        20 + 3,
        "3 failures, then the breaker is open"
    );
    assert_eq!(
        metric_until(
            &gw,
            "gateway_breaker_state",
            &[("deployment", "primary")],
            2.0
        )
        .await,
        2.0
    );

    // Healthy again after the cooldown: the first tier takes the traffic back.
    mock.set_behavior("primary", Behavior::text("back"));
    gw.clock().advance(Duration::from_secs(31));
    let served = serve_n(&gw, &hi, 10).await;
    assert_eq!(tally(&served), [("primary", 10)].into(), "{served:?}");
    assert_eq!(mock.request_count("backup"), 20);
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_per_group_strategy_override_applies_to_that_group_only() {
    let mock = mock().await;
    let priced = |id: &str, model: &str, price: &str| {
        deployment(
            id,
            model,
            "openai",
            &openai_base(&mock, id),
            &format!("input_cost_per_mtok = {price}\noutput_cost_per_mtok = {price}"),
        )
    };
    // Globally `cheapest`; the "rr" group overrides it with round-robin. Both groups have a
    // cheap and a dear deployment.
    let gw = start_gateway(&format!(
        "{}{}{}{}{}\n[groups.\"rr\"]\nstrategy = \"round-robin\"\n",
        settings("strategy = \"cheapest\"", ""),
        priced("plain-cheap", "plain", "1.0"),
        priced("plain-dear", "plain", "50.0"),
        priced("rr-cheap", "rr", "1.0"),
        priced("rr-dear", "rr", "50.0"),
    ));
    let plain = serve_n(&gw, &user_message("plain", "hi"), 20).await;
    let rr = serve_n(&gw, &user_message("rr", "hi"), 20).await;
    assert_eq!(tally(&plain), [("plain-cheap", 20)].into(), "{plain:?}");
    assert_eq!(
        tally(&rr),
        [("rr-cheap", 10), ("rr-dear", 10)].into(),
        "{rr:?}"
    );
    assert!(
        rr.windows(2).all(|w| w[0] != w[1]),
        "round robin alternates: {rr:?}"
    );
    assert_eq!(mock.request_count("plain-dear"), 0);
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_deployment_whose_provider_headroom_is_exhausted_gets_nothing_until_the_reset() {
    let mock = mock().await;
    // The first answer of `exhausted` says: no requests left for the next 20 s. Later answers
    // are plain.
    mock.push_behaviors(
        "exhausted",
        [Behavior::text("last one")
            .with_header("x-ratelimit-limit-requests", "100")
            .with_header("x-ratelimit-remaining-requests", "0")
            .with_header("x-ratelimit-reset-requests", "20s")],
    );
    // Round robin, so the exhausted deployment would get every other request were it not
    // declining.
    let gw = start_gateway(&format!(
        "{}{}{}",
        settings("strategy = \"round-robin\"", ""),
        deployment(
            "exhausted",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "exhausted"),
            ""
        ),
        deployment(
            "other",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "other"),
            ""
        ),
    ));
    let hi = user_message("gpt-4o", "hi");
    // Tick 0 goes to the first deployment.
    let r = chat(&gw, &hi).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-deployment"), Some("exhausted"));

    // 20 requests over 10 virtual seconds (the gateway's clock also runs in real time: the rest
    // of the 20 s is the margin for the requests under CI load): all to `other`, none refused,
    // and `exhausted` is never called, so it never had the chance to answer 429.
    let clock = gw.clock().clone();
    let mut served = Vec::new();
    for _ in 0..20 {
        clock.advance(Duration::from_millis(500));
        let r = chat(&gw, &hi).await;
        assert_eq!(r.status, 200, "0 client errors: {}", r.body);
        served.push(r.header("x-switchyard-deployment").unwrap().to_owned());
    }
    assert_eq!(tally(&served), [("other", 20)].into(), "{served:?}");
    assert_eq!(mock.request_count("exhausted"), 1);
    assert!(
        metric(
            &gw,
            "gateway_deployment_declines_total",
            &[("deployment", "exhausted"), ("reason", "rate_limited")]
        )
        .await
            >= 1.0
    );

    // Past the reset (21 s in all) it takes its turns again.
    clock.advance(Duration::from_secs(11));
    let served = serve_n(&gw, &hi, 4).await;
    assert_eq!(
        tally(&served),
        [("exhausted", 2), ("other", 2)].into(),
        "{served:?}"
    );
    assert_eq!(mock.request_count("exhausted"), 3);
    gw.stop(true).await;
}
