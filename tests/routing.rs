//! Weighted routing, retries with backoff and Retry-After, fallbacks to other model groups.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::time::Duration;

use common::*;
use switchyard::actors::board::Admit;

#[actix_web::test]
async fn weighted_shuffle_splits_traffic_by_weight_within_tolerance() {
    let mock = mock().await;
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}{}",
        deployment(
            "heavy",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "heavy"),
            "weight = 3"
        ),
        deployment(
            "light",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "light"),
            "weight = 1"
        ),
    ));
    let n = 800;
    for _ in 0..n {
        let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
        assert_eq!(r.status, 200);
    }
    let heavy = mock.request_count("heavy") as f64;
    let light = mock.request_count("light") as f64;
    assert_eq!(heavy + light, n as f64);
    // Expected 600/200; 5 standard deviations of a binomial(800, 0.75) is about 61.
    let share = heavy / n as f64;
    assert!(
        (share - 0.75).abs() < 0.076,
        "heavy got {share:.3} of the traffic"
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_500_moves_to_the_other_deployment_at_once() {
    let mock = mock().await;
    mock.set_behavior("bad", Behavior::error(ErrorPreset::ServerError));
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}{}",
        deployment(
            "bad",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "bad"),
            "weight = 1000"
        ),
        deployment(
            "good",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "good"),
            "weight = 1"
        ),
    ));
    for _ in 0..4 {
        let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-switchyard-deployment"), Some("good"));
    }
    assert!(mock.request_count("bad") >= 1);
    assert!(metric(&gw, "gateway_retries_total", &[("model_group", "gpt-4o")]).await >= 1.0);
    gw.stop(true).await;
}

#[actix_web::test]
async fn fallback_on_500_reaches_another_group_with_zero_client_errors() {
    let mock = mock().await;
    mock.set_behavior("primary", Behavior::error(ErrorPreset::ServerError));
    let gw = start_gateway(&format!(
        "{}{}{}\n[[fallbacks]]\nfrom = \"gpt-4o\"\nto = [\"claude-sonnet\"]\n",
        settings("num_retries = 0", ""),
        deployment(
            "primary",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "primary"),
            ""
        ),
        deployment(
            "claude",
            "claude-sonnet",
            "anthropic",
            &anthropic_base(&mock, "claude"),
            ""
        ),
    ));
    let mut errors = 0;
    for _ in 0..10 {
        let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
        if r.status != 200 {
            errors += 1;
        }
        assert_eq!(r.header("x-switchyard-deployment"), Some("claude"));
        assert_eq!(r.header("x-switchyard-model-group"), Some("claude-sonnet"));
        assert_openai_completion(&r.body);
    }
    assert_eq!(errors, 0, "with a healthy fallback 0 client errors");
    assert_eq!(mock.request_count("claude"), 10);
    assert_eq!(
        metric(
            &gw,
            "gateway_fallbacks_total",
            &[("from", "gpt-4o"), ("to", "claude-sonnet")]
        )
        .await,
        10.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_upstream_attempts_total",
            &[("deployment", "primary"), ("outcome", "server_error")]
        )
        .await,
        mock.request_count("primary") as f64
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn fallback_on_429_reaches_another_group_with_zero_client_errors() {
    let mock = mock().await;
    mock.set_behavior(
        "primary",
        Behavior::error(ErrorPreset::RateLimited {
            retry_after: Some(30),
        }),
    );
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}{}\n[[fallbacks]]\nfrom = \"gpt-4o\"\nto = [\"backup\"]\n",
        deployment(
            "primary",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "primary"),
            ""
        ),
        deployment(
            "backup-1",
            "backup",
            "openai",
            &openai_base(&mock, "backup"),
            ""
        ),
    ));
    for _ in 0..10 {
        let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-switchyard-deployment"), Some("backup-1"));
    }
    // The 429 said 30 s: a wait longer than max_retry_wait, so no waiting, and the deployment
    // cools down: it got exactly one request, the other nine went straight to the fallback.
    assert_eq!(mock.request_count("primary"), 1);
    assert_eq!(mock.request_count("backup"), 10);
    gw.stop(true).await;
}

#[actix_web::test]
async fn retry_after_is_honoured_before_retrying_the_same_deployment() {
    let mock = mock().await;
    mock.push_behaviors(
        "",
        [Behavior::error(ErrorPreset::RateLimited {
            retry_after: Some(2),
        })],
    );
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}",
        deployment("only", "gpt-4o", "openai", &openai_base(&mock, ""), ""),
    ));
    let clock = gw.clock().clone();
    let url = gw.url();
    let pending = actix_web::rt::spawn(async move {
        let mut resp = client()
            .post(format!("{url}/v1/chat/completions"))
            .send_json(&user_message("gpt-4o", "hi"))
            .await
            .unwrap();
        let attempts = resp
            .headers()
            .get("x-switchyard-attempts")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        (resp.status().as_u16(), attempts, resp.body().await.unwrap())
    });
    eventually(|| mock.request_count("") == 1).await;
    // The actor has taken the 429 in (the clock must not move before, or its cooldown would
    // end a second after the router's wait).
    eventually(|| gw.registry().board(0).published().admit != Admit::Free).await;
    // One virtual second: still inside the Retry-After, so no second call.
    clock.advance(Duration::from_secs(1));
    actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        mock.request_count(""),
        1,
        "no retry before Retry-After has passed"
    );
    clock.advance(Duration::from_secs(1));
    let (status, attempts, _) = pending.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(attempts, "2");
    assert_eq!(mock.request_count(""), 2);
    gw.stop(true).await;
}

#[actix_web::test]
async fn server_errors_are_retried_on_the_same_deployment_after_backoff() {
    let mock = mock().await;
    mock.push_behaviors(
        "",
        [
            Behavior::error(ErrorPreset::ServerError),
            Behavior::error(ErrorPreset::Overloaded),
        ],
    );
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}",
        deployment("only", "gpt-4o", "openai", &openai_base(&mock, ""), ""),
    ));
    let clock = gw.clock().clone();
    let url = gw.url();
    let pending = actix_web::rt::spawn(async move {
        let resp = client()
            .post(format!("{url}/v1/chat/completions"))
            .send_json(&user_message("gpt-4o", "hi"))
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.headers()
                .get("x-switchyard-attempts")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned(),
        )
    });
    // Backoff is at most 1 s then 2 s (full jitter); advancing the clock releases each wait.
    for expected in [1, 2] {
        eventually(|| mock.request_count("") >= expected).await;
        clock.advance(Duration::from_secs(4));
    }
    let (status, attempts) = pending.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(attempts, "3");
    gw.stop(true).await;
}

#[actix_web::test]
async fn when_every_deployment_is_rate_limited_the_client_gets_429_with_retry_after() {
    let mock = mock().await;
    mock.set_behavior(
        "",
        Behavior::error(ErrorPreset::RateLimited {
            retry_after: Some(20),
        }),
    );
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}",
        deployment("only", "gpt-4o", "openai", &openai_base(&mock, ""), ""),
    ));
    let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["error"]["type"], "rate_limit_error");
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (19..=20).contains(&retry_after),
        "retry-after {retry_after}"
    );
    // While it cools down, the deployment is not called again.
    let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
    assert_eq!(r.status, 429);
    assert_eq!(mock.request_count(""), 1);
    gw.stop(true).await;
}

#[actix_web::test]
async fn our_own_rpm_limit_declines_and_answers_429() {
    let mock = mock().await;
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}",
        deployment(
            "limited",
            "gpt-4o",
            "openai",
            &openai_base(&mock, ""),
            "rpm = 2"
        ),
    ));
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(chat(&gw, &user_message("gpt-4o", "hi")).await.status);
        }
        v
    };
    assert_eq!(statuses, vec![200, 200, 429, 429]);
    assert_eq!(mock.request_count(""), 2);
    // A minute later (virtual), the limiter has room again.
    gw.clock().advance(Duration::from_secs(60));
    assert_eq!(chat(&gw, &user_message("gpt-4o", "hi")).await.status, 200);
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_context_window_error_skips_the_group_and_goes_to_the_fallback() {
    let mock = mock().await;
    mock.set_behavior("small", Behavior::error(ErrorPreset::ContextLength));
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}{}{}\n[[fallbacks]]\nfrom = \"small\"\nto = [\"large\"]\n",
        deployment(
            "small-1",
            "small",
            "openai",
            &openai_base(&mock, "small"),
            ""
        ),
        deployment(
            "small-2",
            "small",
            "openai",
            &openai_base(&mock, "small"),
            ""
        ),
        deployment(
            "large-1",
            "large",
            "anthropic",
            &anthropic_base(&mock, "large"),
            ""
        ),
    ));
    let r = chat(&gw, &user_message("small", "a very long prompt")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("large-1"));
    assert_eq!(
        mock.request_count("small"),
        1,
        "the same prompt is not sent to the same model twice"
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn an_upstream_bad_request_goes_back_to_the_client_without_retries() {
    let mock = mock().await;
    mock.set_behavior("", Behavior::error(ErrorPreset::BadRequest));
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}{}",
        deployment("a", "gpt-4o", "openai", &openai_base(&mock, ""), ""),
        deployment("b", "gpt-4o", "openai", &openai_base(&mock, ""), ""),
    ));
    let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert_eq!(mock.request_count(""), 1);
    gw.stop(true).await;
}

#[actix_web::test]
async fn when_everything_fails_the_client_gets_502_naming_the_last_attempt() {
    let mock = mock().await;
    mock.set_behavior("", Behavior::error(ErrorPreset::ServerError));
    let gw = start_gateway(&format!(
        "{}{}",
        settings("num_retries = 0", ""),
        deployment("a", "gpt-4o", "openai", &openai_base(&mock, ""), ""),
    ));
    let r = chat(&gw, &user_message("gpt-4o", "hi")).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.body["error"]["type"], "server_error");
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("deployment a") && msg.contains("HTTP 500"),
        "{msg}"
    );
    assert_eq!(r.header("x-switchyard-attempts"), Some("1"));
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_deployment_at_its_concurrency_limit_declines_and_the_client_gets_429() {
    let mock = mock().await;
    // The first request is held for 1.5 s, long enough for the second to arrive meanwhile.
    mock.push_behaviors(
        "",
        [Behavior::text("slow").with_latency(Duration::from_millis(1500))],
    );
    // No waiting queue: the second request is declined at once, whatever the timing.
    let gw = start_gateway(&format!(
        "{}{}",
        settings("max_pending = 0", ""),
        deployment(
            "one-at-a-time",
            "gpt-4o",
            "openai",
            &openai_base(&mock, ""),
            "max_concurrency = 1"
        ),
    ));
    let (a, b) = futures_util::future::join(chat(&gw, &user_message("gpt-4o", "first")), async {
        eventually(|| mock.request_count("") == 1).await;
        chat(&gw, &user_message("gpt-4o", "second")).await
    })
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(b.status, 429, "{}", b.body);
    assert_eq!(b.header("retry-after"), Some("1"));
    assert_eq!(mock.request_count(""), 1);
    assert_eq!(
        metric(
            &gw,
            "gateway_deployment_declines_total",
            &[("deployment", "one-at-a-time"), ("reason", "at_capacity")]
        )
        .await,
        1.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn retry_after_given_to_the_client_comes_from_the_latest_429() {
    let mock = mock().await;
    mock.set_behavior(
        "",
        Behavior::error(ErrorPreset::RateLimited {
            retry_after: Some(3),
        }),
    );
    let gw = start_gateway(&format!(
        "{}{}",
        settings("num_retries = 1", ""),
        deployment("only", "gpt-4o", "openai", &openai_base(&mock, ""), ""),
    ));
    let clock = gw.clock().clone();
    let url = gw.url();
    let pending = actix_web::rt::spawn(async move {
        let resp = client()
            .post(format!("{url}/v1/chat/completions"))
            .send_json(&user_message("gpt-4o", "hi"))
            .await
            .unwrap();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (resp.status().as_u16(), retry_after)
    });
    eventually(|| mock.request_count("") == 1).await;
    // The deployment's actor must have taken the 429 (and set its cooldown) before the clock
    // moves, or the cooldown would start after the advance and outlast the router's wait.
    eventually(|| gw.registry().board(0).published().admit != Admit::Free).await;
    clock.advance(Duration::from_secs(3));
    let (status, retry_after) = pending.await.unwrap();
    assert_eq!(
        mock.request_count(""),
        2,
        "retried once after the Retry-After"
    );
    assert_eq!(status, 429);
    assert_eq!(
        retry_after.as_deref(),
        Some("3"),
        "the second 429's 3 s, not what is left of the first"
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_sick_deployment_that_could_serve_gives_503_not_a_translation_400() {
    let mock = mock().await;
    mock.set_behavior("openai", Behavior::error(ErrorPreset::ServerError));
    let gw = start_gateway(&format!(
        "{}{}{}\n[[fallbacks]]\nfrom = \"gpt-4o\"\nto = [\"claude\"]\n",
        settings(
            "num_retries = 0",
            "[breaker]\nconsecutive_failures = 1\ncooldown_ms = 30000\n"
        ),
        deployment(
            "openai-1",
            "gpt-4o",
            "openai",
            &openai_base(&mock, "openai"),
            ""
        ),
        deployment(
            "claude-1",
            "claude",
            "anthropic",
            &anthropic_base(&mock, "claude"),
            ""
        ),
    ));
    // One failure opens openai-1's breaker (the request itself falls back to claude).
    assert_eq!(chat(&gw, &user_message("gpt-4o", "hi")).await.status, 200);
    // n = 2: openai-1 could serve it but is ejected; claude-1 cannot express n > 1.
    let mut req = user_message("gpt-4o", "hi");
    req["n"] = serde_json::json!(2);
    let r = chat(&gw, &req).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "no_deployment_available");
    let retry_after: u64 = r
        .header("retry-after")
        .expect("the breaker's end is known")
        .parse()
        .unwrap();
    assert!(
        (9..=10).contains(&retry_after),
        "the next probe is due in probe_interval (10 s): {retry_after}"
    );
    gw.stop(true).await;
}
