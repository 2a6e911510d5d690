//! Error presets in both wire formats (providers.md §1.7, §3.5, §9.1, §9.2), and `fail_rate`.

mod common;

use common::*;
use serde_json::json;
use switchyard_loadtests::{Behavior, ErrorPreset};

fn openai_error(
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> serde_json::Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

fn anthropic_error(kind: &str, message: &str, request_id: &str) -> serde_json::Value {
    json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id})
}

/// Answers of both formats, streaming requested or not (errors never stream).
async fn both(preset: ErrorPreset) -> (Vec<Answer>, Vec<Answer>) {
    let mock = start_with(Behavior::error(preset)).await;
    let mut oa = Vec::new();
    let mut an = Vec::new();
    for stream in [false, true] {
        oa.push(post_openai(&mock, "", &openai_body(stream, Some(true))).await);
        an.push(post_anthropic(&mock, "", &anthropic_body(stream)).await);
    }
    for a in oa.iter().chain(&an) {
        assert_eq!(a.header("content-type"), Some("application/json"));
        assert_eq!(a.header("cache-control"), None);
    }
    for a in &oa {
        assert_eq!(a.header("x-request-id"), Some("req_mock0001"));
    }
    (oa, an)
}

#[actix_web::test]
async fn rate_limited_matches_the_fixtures() {
    let (oa, an) = both(ErrorPreset::RateLimited { retry_after: None }).await;
    for a in &oa {
        assert_eq!(a.status, 429);
        assert_eq!(a.header("x-ratelimit-remaining-requests"), Some("0"));
        assert_eq!(a.header("x-ratelimit-reset-requests"), Some("2s"));
        assert_eq!(a.header("retry-after"), None);
        assert_eq!(
            a.text(),
            r#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#
        );
    }
    for a in &an {
        assert_eq!(a.status, 429);
        assert_eq!(a.header("retry-after"), None);
        assert_eq!(a.header("request-id"), Some("req_mock0001"));
        let v = a.json();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert_eq!(v["request_id"], "req_mock0001");
    }
}

#[actix_web::test]
async fn rate_limited_with_retry_after_adds_the_header_in_both_formats() {
    let (oa, an) = both(ErrorPreset::RateLimited {
        retry_after: Some(7),
    })
    .await;
    for a in oa.iter().chain(&an) {
        assert_eq!(a.status, 429);
        assert_eq!(a.header("retry-after"), Some("7"));
    }
}

#[actix_web::test]
async fn quota_exhausted_is_429_insufficient_quota_or_402_billing() {
    let (oa, an) = both(ErrorPreset::QuotaExhausted).await;
    for a in &oa {
        assert_eq!(a.status, 429);
        assert_eq!(a.header("retry-after"), None);
        let v = a.json();
        assert_eq!(v["error"]["type"], "insufficient_quota");
        assert_eq!(v["error"]["code"], "insufficient_quota");
        assert_eq!(v["error"]["param"], json!(null));
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("You exceeded your current quota")));
    }
    for a in &an {
        assert_eq!(a.status, 402);
        assert_eq!(a.json()["error"]["type"], "billing_error");
    }
}

#[actix_web::test]
async fn overloaded_is_503_or_the_exact_529_fixture() {
    let (oa, an) = both(ErrorPreset::Overloaded).await;
    for a in &oa {
        assert_eq!(a.status, 503);
        assert_eq!(
            a.json(),
            openai_error(
                "The server is overloaded or not ready yet.",
                "server_error",
                None,
                None
            )
        );
    }
    for a in &an {
        assert_eq!(a.status.as_u16(), 529);
        assert_eq!(
            a.text(),
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_GwVec0001"}"#
        );
        assert_eq!(a.header("request-id"), Some("req_GwVec0001"));
    }
}

#[actix_web::test]
async fn server_error_is_500_server_error_or_api_error() {
    let (oa, an) = both(ErrorPreset::ServerError).await;
    for a in &oa {
        assert_eq!(a.status, 500);
        let v = a.json();
        assert_eq!(v["error"]["type"], "server_error");
        assert_eq!(v["error"]["code"], json!(null));
    }
    for a in &an {
        assert_eq!(a.status, 500);
        assert_eq!(
            a.json(),
            anthropic_error("api_error", "Internal server error", "req_mock0001")
        );
    }
}

#[actix_web::test]
async fn context_length_matches_the_fixtures() {
    let (oa, an) = both(ErrorPreset::ContextLength).await;
    for a in &oa {
        assert_eq!(a.status, 400);
        assert_eq!(
            a.text(),
            r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130512 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#
        );
    }
    for a in &an {
        assert_eq!(a.status, 400);
        assert_eq!(
            a.json(),
            anthropic_error(
                "invalid_request_error",
                "prompt is too long: 210000 tokens > 200000 maximum",
                "req_mock0001"
            )
        );
    }
}

#[actix_web::test]
async fn bad_request_is_a_generic_400() {
    let (oa, an) = both(ErrorPreset::BadRequest).await;
    for a in &oa {
        assert_eq!(a.status, 400);
        let v = a.json();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], json!(null));
    }
    for a in &an {
        assert_eq!(a.status, 400);
        assert_eq!(a.json()["error"]["type"], "invalid_request_error");
    }
}

#[actix_web::test]
async fn unauthorized_is_401_invalid_api_key_or_authentication_error() {
    let (oa, an) = both(ErrorPreset::Unauthorized).await;
    for a in &oa {
        assert_eq!(a.status, 401);
        let v = a.json();
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Incorrect API key provided")));
    }
    for a in &an {
        assert_eq!(a.status, 401);
        assert_eq!(a.json()["error"]["type"], "authentication_error");
    }
}

#[actix_web::test]
async fn custom_error_sends_exactly_the_given_status_body_and_headers() {
    let mock = start_with(Behavior::error(ErrorPreset::Custom {
        status: 418,
        body: "short and stout".into(),
        headers: vec![
            ("content-type".into(), "text/plain".into()),
            ("x-teapot".into(), "yes".into()),
        ],
    }))
    .await;
    for a in [
        post_openai(&mock, "", &openai_body(false, None)).await,
        post_anthropic(&mock, "", &anthropic_body(true)).await,
    ] {
        assert_eq!(a.status, 418);
        assert_eq!(a.text(), "short and stout");
        assert_eq!(a.header("content-type"), Some("text/plain"));
        assert_eq!(a.header("x-teapot"), Some("yes"));
    }
    // Default content type; an impossible status becomes 500.
    mock.set_behavior(
        "",
        Behavior::error(ErrorPreset::Custom {
            status: 1000,
            body: "{}".into(),
            headers: vec![],
        }),
    );
    let a = post_openai(&mock, "", &openai_body(false, None)).await;
    assert_eq!(a.status, 500);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.text(), "{}");
}

#[actix_web::test]
async fn fail_rate_one_always_fails_and_zero_never_does() {
    let mock = start_with(Behavior::default().with_fail_rate(1.0)).await;
    for _ in 0..5 {
        let a = post_openai(&mock, "", &openai_body(true, None)).await;
        assert_eq!(a.status, 500);
        assert_eq!(a.json()["error"]["type"], "server_error");
        let a = post_anthropic(&mock, "", &anthropic_body(false)).await;
        assert_eq!(a.status, 500);
        assert_eq!(a.json()["error"]["type"], "api_error");
    }
    mock.set_behavior("", Behavior::default().with_fail_rate(0.0));
    for _ in 0..5 {
        assert_eq!(
            post_openai(&mock, "", &openai_body(false, None))
                .await
                .status,
            200
        );
    }
}

#[actix_web::test]
async fn fail_rate_half_fails_some_requests() {
    let mock = start_with(Behavior::default().with_fail_rate(0.5)).await;
    let mut failed = 0;
    for _ in 0..60 {
        let status = post_openai(&mock, "", &openai_body(false, None))
            .await
            .status;
        assert!(status == 200 || status == 500);
        failed += usize::from(status == 500);
    }
    // P(outside 5..=55) is negligible (< 1e-11).
    assert!((5..=55).contains(&failed), "{failed} of 60 failed");
}
