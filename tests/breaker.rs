//! The circuit breaker through the HTTP API: it opens after N consecutive failures, sends the
//! deployment nothing during the cooldown, and closes after a successful probe.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::time::Duration;

use common::*;

fn config(mock: &MockUpstream) -> String {
    format!(
        "{}{}{}",
        settings(
            "num_retries = 1",
            // The classic machine: no probes during an ejection, no jitter.
            "[breaker]\nconsecutive_failures = 3\ncooldown_ms = 30000\nhalf_open_probes = 1\nprobe_interval_ms = 0\njitter = 0.0\n"
        ),
        deployment(
            "sick",
            "gpt-4o",
            "openai",
            &openai_base(mock, "sick"),
            "weight = 1000"
        ),
        deployment(
            "healthy",
            "gpt-4o",
            "openai",
            &openai_base(mock, "healthy"),
            "weight = 1"
        ),
    )
}

#[actix_web::test]
async fn the_breaker_opens_after_n_failures_sends_nothing_during_the_cooldown_and_closes_after_a_probe(
) {
    let mock = mock().await;
    mock.set_behavior("sick", Behavior::error(ErrorPreset::ServerError));
    let gw = start_gateway(&config(&mock));

    // Each request fails over to `healthy`; three failures in a row open `sick`'s breaker.
    let mut served = 0;
    while mock.request_count("sick") < 3 {
        let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
        assert_eq!(r.status, 200, "the healthy deployment serves: {}", r.body);
        served += 1;
        assert!(served < 200, "sick was almost never chosen");
    }
    assert_eq!(mock.request_count("sick"), 3);
    assert_eq!(
        metric_until(&gw, "gateway_breaker_state", &[("deployment", "sick")], 2.0).await,
        2.0
    );

    // During the 30 s cooldown (20 s of it, virtually; the gateway's clock also runs in real
    // time, so the 50 requests keep a margin under CI load): zero calls to `sick`, zero client
    // errors.
    gw.clock().advance(Duration::from_secs(20));
    for _ in 0..50 {
        let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-switchyard-deployment"), Some("healthy"));
    }
    assert_eq!(
        mock.request_count("sick"),
        3,
        "during the cooldown the failing deployment received 0 requests"
    );
    let ready = client()
        .get(format!("{}/health/ready", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "the group still has a healthy deployment"
    );

    // The deployment recovers; after the cooldown one probe goes through and closes the breaker.
    mock.set_behavior("sick", Behavior::text("I am better."));
    gw.clock().advance(Duration::from_secs(10));
    let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-switchyard-deployment"),
        Some("sick"),
        "the probe went to the recovering deployment"
    );
    assert_eq!(mock.request_count("sick"), 4);
    assert_eq!(
        metric_until(&gw, "gateway_breaker_state", &[("deployment", "sick")], 0.0).await,
        0.0,
        "the successful probe closed the breaker"
    );
    // Closed again: with weight 1000 it takes nearly all the traffic.
    for _ in 0..10 {
        chat(&gw, &user_message("gpt-4o", "hi")).await;
    }
    assert!(mock.request_count("sick") >= 12);
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_failed_probe_reopens_the_breaker_for_another_cooldown() {
    let mock = mock().await;
    mock.set_behavior("sick", Behavior::error(ErrorPreset::Overloaded));
    let gw = start_gateway(&config(&mock));
    while mock.request_count("sick") < 3 {
        assert_eq!(chat(&gw, &user_message("gpt-4o", "hi")).await.status, 200);
    }
    gw.clock().advance(Duration::from_secs(30));
    // The probe fails (invisibly: the request falls over to `healthy`) and re-opens the breaker.
    let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
    assert_eq!(r.status, 200);
    assert_eq!(mock.request_count("sick"), 4);
    gw.clock().advance(Duration::from_secs(29));
    for _ in 0..20 {
        assert_eq!(chat(&gw, &user_message("gpt-4o", "hi")).await.status, 200);
    }
    assert_eq!(
        mock.request_count("sick"),
        4,
        "re-opened: no calls during the second cooldown"
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn when_every_breaker_is_open_the_client_gets_503_and_ready_says_not_ready() {
    let mock = mock().await;
    mock.set_behavior("", Behavior::error(ErrorPreset::ServerError));
    let gw = start_gateway(&format!(
        "{}{}",
        settings("num_retries = 0", "[breaker]\nconsecutive_failures = 2\n"),
        deployment("only", "gpt-4o", "openai", &openai_base(&mock, ""), ""),
    ));
    assert_eq!(chat(&gw, &user_message("gpt-4o", "hi")).await.status, 502);
    assert_eq!(chat(&gw, &user_message("gpt-4o", "hi")).await.status, 502);
    let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "no_deployment_available");
    assert_eq!(
        r.header("retry-after"),
        Some("10"),
        "the breaker lets a probe through in probe_interval (10 s)"
    );
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("only: breaker_open"));
    assert_eq!(mock.request_count(""), 2);

    let mut ready = client()
        .get(format!("{}/health/ready", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["model_groups"][0]["ready"], false);
    assert_eq!(body["deployments"][0]["breaker"], "open");
    gw.stop(true).await;
}

fn probe_config(mock: &MockUpstream) -> String {
    format!(
        "{}{}{}",
        settings(
            "num_retries = 1",
            "[breaker]\nconsecutive_failures = 1\ncooldown_ms = 30000\nhalf_open_probes = 1\nprobe_timeout_ms = 300\n"
        ),
        // A long per-try timeout, so that "bounded by the probe timeout" is far from it.
        deployment(
            "sick",
            "gpt-4o",
            "openai",
            &openai_base(mock, "sick"),
            "weight = 1000000\nper_try_timeout_ms = 20000"
        ),
        deployment("healthy", "gpt-4o", "openai", &openai_base(mock, "healthy"), "weight = 1"),
    )
}

#[actix_web::test]
async fn a_probe_is_bounded_by_the_probe_timeout_and_its_failure_falls_back_invisibly() {
    let mock = mock().await;
    mock.set_behavior("sick", Behavior::error(ErrorPreset::ServerError));
    let gw = start_gateway(&probe_config(&mock));
    while mock.request_count("sick") < 1 {
        assert_eq!(chat(&gw, &user_message("gpt-4o", "hi")).await.status, 200);
    }
    // The deployment now hangs; after the cooldown, the probe must give up after 300 ms, not
    // after the 20 s per-try timeout.
    mock.set_behavior("sick", Behavior::text("never").with_fault(Fault::Hang));
    gw.clock().advance(std::time::Duration::from_secs(30));
    let started = std::time::Instant::now();
    let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
    let took = started.elapsed();
    assert_eq!(
        r.status, 200,
        "the failed probe fell back invisibly: {}",
        r.body
    );
    assert_eq!(r.header("x-switchyard-deployment"), Some("healthy"));
    // One probe went to the sick deployment (the mock may read it after the gateway gave up).
    eventually(|| mock.request_count("sick") == 2).await;
    assert!(
        took < std::time::Duration::from_secs(10),
        "probe bounded by probe_timeout_ms (300 ms), not the 20 s per-try timeout: took {took:?}"
    );
    assert_eq!(
        metric(&gw, "gateway_breaker_state", &[("deployment", "sick")]).await,
        2.0,
        "re-opened"
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_streamed_probe_closes_the_breaker_at_its_first_token_even_if_the_stream_outlives_the_probe_timeout(
) {
    let mock = mock().await;
    mock.set_behavior("sick", Behavior::error(ErrorPreset::ServerError));
    let gw = start_gateway(&probe_config(&mock));
    while mock.request_count("sick") < 1 {
        assert_eq!(chat(&gw, &user_message("gpt-4o", "hi")).await.status, 200);
    }
    // Recovered, but slow: 6 chunks 100 ms apart, twice the probe timeout.
    mock.set_behavior(
        "sick",
        Behavior::text("slow but healthy answer")
            .with_chunks(6)
            .with_chunk_delay(std::time::Duration::from_millis(100)),
    );
    gw.clock().advance(std::time::Duration::from_secs(30));
    let s = chat_stream(&gw, &stream_request("gpt-4o", false)).await;
    assert_openai_stream(&s, false);
    assert_eq!(s.header("x-switchyard-deployment"), Some("sick"));
    // Once the stream's own outcome (after 600 ms) has reached the actor, the breaker must
    // still be closed: the probe's verdict came at the first token.
    let outcome = [("deployment", "sick"), ("outcome", "success")];
    let text = metrics_until(&gw, |t| {
        metric_in(t, "gateway_upstream_attempts_total", &outcome) == 1.0
    })
    .await;
    assert_eq!(
        metric_in(&text, "gateway_upstream_attempts_total", &outcome),
        1.0
    );
    // The counter moves before the actor has handled the outcome: wait for that too.
    settle(&gw).await;
    let state = metric(&gw, "gateway_breaker_state", &[("deployment", "sick")]).await;
    assert_eq!(
        state, 0.0,
        "closed by the probe's first token, and still closed after the long stream"
    );
    gw.stop(true).await;
}
