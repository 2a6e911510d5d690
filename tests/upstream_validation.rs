//! Every upstream answer is validated before it is relayed or billed: a wrong content type, a
//! malformed body or impossible usage is a `server_error` (retried elsewhere, never billed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::json;

/// Group `m`: deployment `bad` (route `bad`) first by priority, then `good` (route `good`).
fn config(mock: &MockUpstream, provider_bad: &str, base_bad: &str) -> String {
    format!(
        "{}{}{}",
        settings("num_retries = 1", ""),
        deployment(
            "bad",
            "m",
            provider_bad,
            base_bad,
            "order = 1\ninput_cost_per_mtok = 1.0\noutput_cost_per_mtok = 1.0"
        ),
        deployment(
            "good",
            "m",
            "openai",
            &openai_base(mock, "good"),
            "order = 2\ninput_cost_per_mtok = 1.0\noutput_cost_per_mtok = 1.0"
        ),
    )
}

async fn attempts(gw: &Gateway, dep: &str, outcome: &str) -> f64 {
    metric(
        gw,
        "gateway_upstream_attempts_total",
        &[("deployment", dep), ("outcome", outcome)],
    )
    .await
}

async fn cost_of(gw: &Gateway, dep: &str) -> f64 {
    metric(gw, "gateway_cost_nanodollars_total", &[("deployment", dep)]).await
}

#[actix_web::test]
async fn a_wrong_content_type_is_a_server_error_and_the_request_moves_on() {
    let mock = mock().await;
    mock.set_behavior(
        "bad",
        Behavior::text("x").with_fault(Fault::WrongContentType),
    );
    mock.set_behavior("good", Behavior::text("fine").with_usage(10, 2));
    let gw = start_gateway(&config(&mock, "openai", &openai_base(&mock, "bad")));

    let r = chat(&gw, &user_message("m", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("good"));
    assert!(attempts(&gw, "bad", "server_error").await >= 1.0);
    assert_eq!(cost_of(&gw, "bad").await, 0.0);

    let s = chat_stream(&gw, &stream_request("m", true)).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("x-switchyard-deployment"), Some("good"));
    assert_openai_stream(&s, true);
    assert_eq!(s.content(), "fine");
}

#[actix_web::test]
async fn a_malformed_body_is_a_server_error_in_every_format() {
    let mock = mock().await;
    mock.set_behavior(
        "bad",
        Behavior::text("x").with_fault(Fault::InvalidJsonEvent { after_chunks: 0 }),
    );
    mock.set_behavior("good", Behavior::text("fine"));
    for (provider, base, extra) in [
        ("openai", openai_base(&mock, "bad"), ""),
        ("anthropic", anthropic_base(&mock, "bad"), ""),
        ("gemini", mock.route_url("bad"), ""),
        ("cohere", mock.route_url("bad"), ""),
    ] {
        let _ = extra;
        let gw = start_gateway(&config(&mock, provider, &base));
        let r = chat(&gw, &user_message("m", "hi")).await;
        assert_eq!(r.status, 200, "{provider}: {}", r.body);
        assert_eq!(
            r.header("x-switchyard-deployment"),
            Some("good"),
            "{provider}"
        );
        assert!(
            attempts(&gw, "bad", "server_error").await >= 1.0,
            "{provider}: the broken body counts as a server error"
        );
        assert_eq!(cost_of(&gw, "bad").await, 0.0, "{provider}");
    }
}

#[actix_web::test]
async fn impossible_usage_is_never_billed() {
    let mock = mock().await;
    // Four billion prompt tokens in one response: a broken upstream, not a bill.
    mock.set_behavior("bad", Behavior::text("x").with_usage(u32::MAX, 5));
    mock.set_behavior("good", Behavior::text("fine").with_usage(10, 2));
    let gw = start_gateway(&config(&mock, "openai", &openai_base(&mock, "bad")));

    let r = chat(&gw, &user_message("m", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("good"));
    assert_eq!(r.body["usage"]["prompt_tokens"], 10);
    assert!(attempts(&gw, "bad", "server_error").await >= 1.0);
    assert_eq!(cost_of(&gw, "bad").await, 0.0);

    // A committed stream cannot be taken back: the client keeps it, nothing is billed and the
    // deployment is charged a failure.
    let only_bad = format!(
        "{}{}",
        settings("num_retries = 0", ""),
        deployment(
            "bad",
            "m",
            "openai",
            &openai_base(&mock, "bad"),
            "input_cost_per_mtok = 1.0"
        )
    );
    let gw = start_gateway(&only_bad);
    let s = chat_stream(&gw, &stream_request("m", true)).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.content(), "x");
    assert_eq!(cost_of(&gw, "bad").await, 0.0);
    assert_eq!(attempts(&gw, "bad", "server_error").await, 1.0);
}

#[actix_web::test]
async fn an_embeddings_answer_with_impossible_usage_is_refused_too() {
    let mock = mock().await;
    mock.set_behavior("bad", Behavior::text("x").with_usage(u32::MAX, 0));
    mock.set_behavior("good", Behavior::text("x").with_usage(7, 0));
    let gw = start_gateway(&config(&mock, "openai", &openai_base(&mock, "bad")));
    let r = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "m", "input": "hello"}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("good"));
    assert_eq!(r.body["usage"]["prompt_tokens"], 7);
    assert_eq!(cost_of(&gw, "bad").await, 0.0);
}
