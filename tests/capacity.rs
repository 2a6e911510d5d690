//! Capacity and resilience end to end: tpm reservations corrected by real usage, adaptive
//! concurrency (AIMD), the bounded pending queue, hedging (non-stream and stream), honest
//! accounting after a fallback, and actors crashing while requests are in flight.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use switchyard::actors::deployment::Crash;

/// A request whose tpm estimate is its body bytes / 4 plus `max_tokens`.
fn with_max_tokens(max_tokens: u32) -> serde_json::Value {
    json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens
    })
}

fn body_estimate(body: &serde_json::Value) -> u64 {
    serde_json::to_vec(body).unwrap().len() as u64 / 4
}

#[actix_web::test]
async fn a_tpm_limit_reserves_the_estimate_and_corrects_it_with_the_real_usage() {
    let mock = mock().await;
    // Each answer really uses 20 + 10 = 30 tokens.
    mock.set_behavior("", Behavior::text("ok").with_usage(20, 10));
    let gw = start_gateway(&format!(
        "{}{}",
        settings("num_retries = 0", ""),
        deployment(
            "metered",
            "gpt-4o",
            "openai",
            &openai_base(&mock, ""),
            "tpm = 1000"
        ),
    ));
    let small = with_max_tokens(300);
    let estimate = body_estimate(&small) + 300;
    assert!(
        (300..340).contains(&estimate),
        "each request reserves ~320 tokens: {estimate}"
    );
    // Uncorrected, 1000 / ~320 = 3 requests would fit in the minute; corrected to 30 each,
    // ten fit (300 tokens used, 700 left).
    for i in 0..10 {
        let r = chat(&gw, &small).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.body["usage"]["total_tokens"], 30);
    }
    assert_eq!(mock.request_count(""), 10);
    assert_eq!(gw.registry().board(0).in_flight(), 0);

    // ~820 tokens estimated, ~700 left: declined without calling the upstream.
    let big = with_max_tokens(800);
    let r = chat(&gw, &big).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["error"]["type"], "rate_limit_error");
    let retry_after: u64 = r
        .header("retry-after")
        .expect("retry-after on a tpm decline")
        .parse()
        .unwrap();
    // ~120 tokens missing at 1000 / 60 s = 16.7 tokens/s: ~7 s.
    assert!(
        (5..=9).contains(&retry_after),
        "retry-after {retry_after} s for ~120 missing tokens"
    );
    assert_eq!(
        mock.request_count(""),
        10,
        "the declined request was not sent"
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_deployment_declines_total",
            &[("deployment", "metered"), ("reason", "rate_limited")]
        )
        .await,
        1.0
    );
    // The decline reserved nothing: after the Retry-After (virtual time) the big one fits.
    gw.clock().advance(Duration::from_secs(retry_after));
    let r = chat(&gw, &big).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(mock.request_count(""), 11);
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_request_over_one_deployments_tpm_goes_to_the_other_deployment() {
    let mock = mock().await;
    mock.set_behavior("metered", Behavior::text("ok").with_usage(20, 10));
    let gw = start_gateway(&format!(
        "{}{}{}",
        settings("num_retries = 0", ""),
        deployment(
            "metered",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "metered"),
            "tpm = 1000\norder = 1"
        ),
        deployment(
            "spare",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "spare"),
            "order = 2"
        ),
    ));
    for _ in 0..5 {
        let r = chat(&gw, &with_max_tokens(300)).await;
        assert_eq!(r.header("x-switchyard-deployment"), Some("metered"));
    }
    // 150 used, 850 left: a ~920-token estimate does not fit, the next tier serves.
    let r = chat(&gw, &with_max_tokens(900)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("spare"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("1"));
    assert_eq!(mock.request_count("metered"), 5);
    assert_eq!(mock.request_count("spare"), 1);
    gw.stop(true).await;
}

async fn concurrency_limit(gw: &Gateway) -> (Option<u32>, f64) {
    (
        gw.registry().board(0).limit(),
        metric(
            gw,
            "gateway_concurrency_limit",
            &[("deployment", "adaptive")],
        )
        .await,
    )
}

#[actix_web::test]
async fn adaptive_concurrency_halves_on_429s_and_grows_back_with_successes() {
    let mock = mock().await;
    let gw = start_gateway(&format!(
        "{}{}",
        settings("num_retries = 0", ""),
        deployment(
            "adaptive",
            "gpt-4o",
            "openai",
            &openai_base(&mock, ""),
            "adaptive_concurrency = true\nmax_concurrency = 8"
        ),
    ));
    assert_eq!(gw.registry().board(0).limit(), Some(4), "starts at max / 2");
    let rate_limited = || {
        Behavior::error(ErrorPreset::RateLimited {
            retry_after: Some(1),
        })
    };
    for want in [2, 1, 1] {
        mock.push_behaviors("", [rate_limited()]);
        let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
        assert_eq!(r.status, 429, "{}", r.body);
        assert_eq!(concurrency_limit(&gw).await, (Some(want), f64::from(want)));
        // Past the 1 s cooldown and AIMD's 100 ms between decreases.
        gw.clock().advance(Duration::from_secs(2));
    }
    // Additive increase: +1 per `limit` successes: 1 -> 2 after 1, -> 3 after 2 more, -> 4
    // after 3 more.
    let mut seen = Vec::new();
    for _ in 0..6 {
        let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        seen.push(concurrency_limit(&gw).await.0.unwrap());
    }
    assert_eq!(seen, vec![2, 2, 3, 3, 3, 4]);
    assert_eq!(concurrency_limit(&gw).await.1, 4.0);
    gw.stop(true).await;
}

fn one_slot(mock: &MockUpstream, router_extra: &str) -> String {
    format!(
        "{}{}",
        settings(&format!("num_retries = 0\n{router_extra}"), ""),
        deployment(
            "single",
            "gpt-4o",
            "openai",
            &openai_base(mock, ""),
            "max_concurrency = 1"
        ),
    )
}

async fn queued(gw: &Gateway, outcome: &str) -> f64 {
    metric(
        gw,
        "gateway_queued_requests_total",
        &[("model_group", "gpt-4o"), ("outcome", outcome)],
    )
    .await
}

async fn queued_counts(gw: &Gateway) -> [f64; 3] {
    [
        queued(gw, "served").await,
        queued(gw, "timed_out").await,
        queued(gw, "queue_full").await,
    ]
}

/// Waits until `n` requests of group 0 wait in its queue.
async fn until_waiting(gw: &Gateway, n: u32) {
    let queue = gw.registry().queue(0);
    eventually(|| queue.waiting.load(Ordering::Acquire) == n).await;
}

#[actix_web::test]
async fn a_request_waits_in_the_queue_for_a_busy_deployment_and_is_served() {
    let mock = mock().await;
    mock.set_behavior(
        "",
        Behavior::text("slow").with_latency(Duration::from_millis(300)),
    );
    let gw = start_gateway(&one_slot(&mock, ""));
    let started = Instant::now();
    let (a, b) = futures_util::future::join(chat(&gw, &user_message("gpt-4o", "first")), async {
        eventually(|| mock.request_count("") == 1).await;
        let r = chat(&gw, &user_message("gpt-4o", "second")).await;
        (r, started.elapsed())
    })
    .await;
    let (b, b_done) = b;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(b.header("x-switchyard-attempts"), Some("1"));
    assert!(
        b_done >= Duration::from_millis(600),
        "one slot: the second ran after the first ({b_done:?})"
    );
    assert_eq!(mock.request_count(""), 2);
    assert_eq!(queued_counts(&gw).await, [1.0, 0.0, 0.0]);
    assert_eq!(
        metric(
            &gw,
            "gateway_deployment_declines_total",
            &[("deployment", "single"), ("reason", "at_capacity")]
        )
        .await,
        1.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn when_the_pending_queue_is_full_the_next_request_gets_429_at_once() {
    let mock = mock().await;
    mock.set_behavior(
        "",
        Behavior::text("slow").with_latency(Duration::from_millis(1500)),
    );
    // A long pending timeout, so that "at once" is far from "after the timeout" even on a
    // loaded machine; the first request holds the slot long enough for the third to arrive.
    let gw = start_gateway(&one_slot(
        &mock,
        "max_pending = 1\npending_timeout_ms = 10000",
    ));
    let (a, (b, (c, c_took))) = futures_util::future::join(
        chat(&gw, &user_message("gpt-4o", "first")),
        futures_util::future::join(
            async {
                eventually(|| mock.request_count("") == 1).await;
                chat(&gw, &user_message("gpt-4o", "second")).await
            },
            async {
                eventually(|| mock.request_count("") == 1).await;
                until_waiting(&gw, 1).await;
                let sent = Instant::now();
                let r = chat(&gw, &user_message("gpt-4o", "third")).await;
                (r, sent.elapsed())
            },
        ),
    )
    .await;
    assert_eq!(c.status, 429, "{}", c.body);
    assert_eq!(c.body["error"]["type"], "rate_limit_error");
    assert_eq!(c.header("retry-after"), Some("1"));
    assert!(
        c_took < Duration::from_secs(5),
        "a full queue answers at once, not after the 10 s pending timeout: {c_took:?}"
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(mock.request_count(""), 2);
    assert_eq!(queued_counts(&gw).await, [1.0, 0.0, 1.0]);
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_request_waiting_longer_than_the_pending_timeout_gets_429_with_retry_after() {
    let mock = mock().await;
    mock.set_behavior(
        "",
        Behavior::text("slow").with_latency(Duration::from_millis(3000)),
    );
    let gw = start_gateway(&one_slot(&mock, "pending_timeout_ms = 100"));
    let (a, (b, b_took)) =
        futures_util::future::join(chat(&gw, &user_message("gpt-4o", "first")), async {
            eventually(|| mock.request_count("") == 1).await;
            let sent = Instant::now();
            let r = chat(&gw, &user_message("gpt-4o", "second")).await;
            (r, sent.elapsed())
        })
        .await;
    assert_eq!(b.status, 429, "{}", b.body);
    assert_eq!(b.header("retry-after"), Some("1"));
    assert!(
        b_took >= Duration::from_millis(90) && b_took < Duration::from_millis(2500),
        "gave up after the 100 ms pending timeout, long before the slot was free: {b_took:?}"
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(mock.request_count(""), 1);
    assert_eq!(queued_counts(&gw).await, [0.0, 1.0, 0.0]);
    gw.stop(true).await;
}

/// `slow` (tier 1, tried first) and `fast` (tier 2), hedged after 100 ms. Prices: `fast`
/// $3 / $4 per Mtok; `slow` $1000 / $1000, so billing it would show.
fn hedged(mock: &MockUpstream) -> String {
    format!(
        "{}{}{}",
        settings(
            "num_retries = 0",
            "[groups.\"gpt-4o\"]\nhedge = true\nhedge_delay_ms = 100\n"
        ),
        deployment(
            "slow",
            "gpt-4o",
            "openai",
            &openai_base(mock, "slow"),
            "order = 1\ninput_cost_per_mtok = 1000.0\noutput_cost_per_mtok = 1000.0"
        ),
        deployment(
            "fast",
            "gpt-4o",
            "openai",
            &openai_base(mock, "fast"),
            "order = 2\ninput_cost_per_mtok = 3.0\noutput_cost_per_mtok = 4.0"
        ),
    )
}

/// The accounting every hedged request must end with: `fast` won and is billed for 100 + 50
/// tokens ($0.0005), `slow` was cancelled and billed nothing.
async fn assert_hedge_won_by_fast(gw: &Gateway) {
    let attempts = |dep: &'static str, outcome: &'static str| {
        move |t: &str| {
            metric_in(
                t,
                "gateway_upstream_attempts_total",
                &[("deployment", dep), ("outcome", outcome)],
            )
        }
    };
    let text = metrics_until(gw, |t| {
        attempts("slow", "cancelled")(t) == 1.0 && attempts("fast", "success")(t) == 1.0
    })
    .await;
    assert_eq!(attempts("slow", "cancelled")(&text), 1.0);
    assert_eq!(attempts("fast", "success")(&text), 1.0);
    assert_eq!(attempts("slow", "success")(&text), 0.0);
    let hedges = |o| {
        metric_in(
            &text,
            "gateway_hedges_total",
            &[("model_group", "gpt-4o"), ("outcome", o)],
        )
    };
    assert_eq!((hedges("started"), hedges("won")), (1.0, 1.0));
    let tokens = |dep, dir| {
        metric_in(
            &text,
            "gateway_tokens_total",
            &[("deployment", dep), ("direction", dir)],
        )
    };
    assert_eq!(tokens("fast", "input"), 100.0);
    assert_eq!(tokens("fast", "output"), 50.0);
    assert_eq!(tokens("slow", "input") + tokens("slow", "output"), 0.0);
    let cost = |dep| {
        metric_in(
            &text,
            "gateway_cost_nanodollars_total",
            &[("deployment", dep)],
        )
    };
    assert_eq!(cost("fast"), 500_000.0, "100 * $3/M + 50 * $4/M = $0.0005");
    assert_eq!(cost("slow"), 0.0, "the cancelled attempt is not billed");
}

#[actix_web::test]
async fn a_hedged_request_is_served_by_the_fast_deployment_and_the_slow_attempt_is_not_billed() {
    let mock = mock().await;
    mock.set_behavior(
        "slow",
        Behavior::text("slow")
            .with_latency(Duration::from_secs(5))
            .with_usage(1000, 1000),
    );
    mock.set_behavior("fast", Behavior::text("fast").with_usage(100, 50));
    let gw = start_gateway(&hedged(&mock));
    let sent = Instant::now();
    let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
    let took = sent.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        took < Duration::from_secs(3),
        "served by the hedge, not after the slow 5 s: {took:?}"
    );
    assert_eq!(r.header("x-switchyard-deployment"), Some("fast"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.0005"));
    assert_eq!(r.body["choices"][0]["message"]["content"], "fast");
    assert_eq!(r.body["usage"]["prompt_tokens"], 100);
    assert_eq!(r.body["usage"]["completion_tokens"], 50);
    assert_eq!(mock.request_count("slow"), 1);
    assert_eq!(mock.request_count("fast"), 1);
    assert_hedge_won_by_fast(&gw).await;
    assert_eq!(gw.registry().board(0).in_flight(), 0);
    assert_eq!(gw.registry().board(1).in_flight(), 0);
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_hedged_stream_is_served_by_the_deployment_whose_first_token_comes_first() {
    let mock = mock().await;
    mock.set_behavior(
        "slow",
        Behavior::text("slow")
            .with_ttft(Duration::from_secs(5))
            .with_usage(1000, 1000),
    );
    mock.set_behavior("fast", Behavior::text("fast").with_usage(100, 50));
    let gw = start_gateway(&hedged(&mock));
    let sent = Instant::now();
    let s = chat_stream(&gw, &stream_request("gpt-4o", true)).await;
    let took = sent.elapsed();
    assert_openai_stream(&s, true);
    assert!(
        took < Duration::from_secs(3),
        "served by the hedge, not after the slow 5 s first token: {took:?}"
    );
    assert_eq!(s.header("x-switchyard-deployment"), Some("fast"));
    assert_eq!(s.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(s.content(), "fast");
    let usage = &s.chunks().last().unwrap()["usage"];
    assert_eq!(
        (&usage["prompt_tokens"], &usage["completion_tokens"]),
        (&json!(100), &json!(50))
    );
    assert_hedge_won_by_fast(&gw).await;
    let (board0, board1) = (
        gw.registry().board(0).clone(),
        gw.registry().board(1).clone(),
    );
    eventually(|| board0.in_flight() == 0 && board1.in_flight() == 0).await;
    gw.stop(true).await;
}

#[actix_web::test]
async fn after_a_fallback_headers_body_usage_cost_and_metrics_name_only_the_group_that_served() {
    let mock = mock().await;
    mock.set_behavior("a", Behavior::error(ErrorPreset::ServerError));
    mock.set_behavior(
        "b",
        Behavior::text("from beta")
            .with_model("beta-upstream-2025")
            .with_usage(200, 80),
    );
    let gw = start_gateway(&format!(
        "{}{}{}\n[[fallbacks]]\nfrom = \"alpha\"\nto = [\"beta\"]\n",
        settings("num_retries = 0", ""),
        deployment(
            "alpha-1",
            "alpha",
            "openai",
            &openai_base(&mock, "a"),
            "upstream_model = \"alpha-upstream\"\ninput_cost_per_mtok = 1000.0\noutput_cost_per_mtok = 2000.0"
        ),
        deployment(
            "beta-1",
            "beta",
            "anthropic",
            &anthropic_base(&mock, "b"),
            "upstream_model = \"beta-upstream-2025\"\ninput_cost_per_mtok = 5.0\noutput_cost_per_mtok = 15.0"
        ),
    ));
    let r = chat(&gw, &user_message("alpha", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("beta-1"));
    assert_eq!(r.header("x-switchyard-model-group"), Some("beta"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(r.body["model"], "beta-upstream-2025");
    assert_eq!(r.body["choices"][0]["message"]["content"], "from beta");
    assert_eq!(r.body["usage"]["prompt_tokens"], 200);
    assert_eq!(r.body["usage"]["completion_tokens"], 80);
    assert_eq!(r.body["usage"]["total_tokens"], 280);
    // 200 * $5/M + 80 * $15/M = $0.001 + $0.0012.
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.0022"));
    assert_eq!(mock.requests("a")[0].json()["model"], "alpha-upstream");
    assert_eq!(mock.requests("b")[0].json()["model"], "beta-upstream-2025");

    let text = metrics_text(&gw).await;
    let m = |name, labels: &[(&str, &str)]| metric_in(&text, name, labels);
    assert_eq!(m("gateway_tokens_total", &[("deployment", "alpha-1")]), 0.0);
    assert_eq!(
        m(
            "gateway_cost_nanodollars_total",
            &[("deployment", "alpha-1")]
        ),
        0.0
    );
    assert_eq!(
        m(
            "gateway_tokens_total",
            &[("deployment", "beta-1"), ("direction", "input")]
        ),
        200.0
    );
    assert_eq!(
        m(
            "gateway_tokens_total",
            &[("deployment", "beta-1"), ("direction", "output")]
        ),
        80.0
    );
    assert_eq!(
        m(
            "gateway_cost_nanodollars_total",
            &[("deployment", "beta-1")]
        ),
        2_200_000.0
    );
    let attempts = |dep, outcome| {
        m(
            "gateway_upstream_attempts_total",
            &[("deployment", dep), ("outcome", outcome)],
        )
    };
    assert_eq!(attempts("alpha-1", "server_error"), 1.0);
    assert_eq!(attempts("alpha-1", "success"), 0.0);
    assert_eq!(attempts("beta-1", "success"), 1.0);
    assert_eq!(
        m(
            "gateway_upstream_attempts_total",
            &[("deployment", "beta-1")]
        ),
        1.0
    );
    assert_eq!(
        m(
            "gateway_fallbacks_total",
            &[("from", "alpha"), ("to", "beta")]
        ),
        1.0
    );
    gw.stop(true).await;
}

/// `a` (weight 1000, so nearly always first) and `b`, both answering after 200 ms.
fn crash_config(mock: &MockUpstream) -> String {
    format!(
        "{}{}{}",
        settings("", ""),
        deployment(
            "a",
            "gpt-4o",
            "openai",
            &openai_base(mock, "a"),
            "weight = 1000"
        ),
        deployment(
            "b",
            "gpt-4o",
            "openai",
            &openai_base(mock, "b"),
            "weight = 1"
        ),
    )
}

/// Crashes `a`'s actor while 8 requests are in flight on it and 8 more arrive: every request
/// finishes (200), nothing stays in flight, and `a` serves again afterwards. "Finishes" is
/// bounded at 30 s: printing the panic's backtrace (CI sets `RUST_BACKTRACE`) holds the actor
/// thread for up to a second or more under load, and the bound only has to tell a slow answer
/// from a hung one.
async fn crash_with_requests_in_flight(panic: bool) {
    let mock = mock().await;
    let slow = Behavior::text("ok").with_latency(Duration::from_millis(200));
    mock.set_behavior("a", slow.clone());
    mock.set_behavior("b", slow);
    let gw = start_gateway(&crash_config(&mock));
    let bounded = |text: &'static str| {
        let gw = &gw;
        async move {
            actix_web::rt::time::timeout(
                Duration::from_secs(30),
                chat(gw, &user_message("gpt-4o", text)),
            )
            .await
            .unwrap_or_else(|_| panic!("a request hung across the crash (panic: {panic})"))
        }
    };
    let before = futures_util::future::join_all((0..8).map(|_| bounded("before")));
    let after = async {
        eventually(|| mock.request_count("a") + mock.request_count("b") >= 8).await;
        gw.registry().addr(0).do_send(Crash { panic });
        futures_util::future::join_all((0..8).map(|_| bounded("after"))).await
    };
    let (before, after) = futures_util::future::join(before, after).await;
    let statuses: Vec<u16> = before.iter().chain(&after).map(|r| r.status).collect();
    assert_eq!(statuses, vec![200; 16], "every request is served");
    let (a, b) = (
        gw.registry().board(0).clone(),
        gw.registry().board(1).clone(),
    );
    eventually(|| a.in_flight() == 0 && b.in_flight() == 0).await;
    // `a` serves again (the respawn, after a panic, happens on the next bid read).
    let mut served_by_a = false;
    for _ in 0..5 {
        let r = bounded("later").await;
        assert_eq!(r.status, 200);
        if r.header("x-switchyard-deployment") == Some("a") {
            served_by_a = true;
            break;
        }
    }
    assert!(served_by_a, "the restarted actor serves again");
    assert!(gw.registry().addr(0).connected());
    assert_eq!(
        metric(&gw, "gateway_actor_respawns_total", &[("deployment", "a")]).await,
        if panic { 1.0 } else { 0.0 }
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_deployment_actor_that_panics_with_requests_in_flight_leaves_none_hanging() {
    crash_with_requests_in_flight(true).await;
}

#[actix_web::test]
async fn a_deployment_actor_that_stops_with_requests_in_flight_leaves_none_hanging() {
    crash_with_requests_in_flight(false).await;
}
