//! Bad input gets an OpenAI-style error with the right status, and never reaches an upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::json;

async fn setup(extra_sections: &str) -> (MockUpstream, Gateway) {
    let mock = mock().await;
    let gw = start_gateway(&format!(
        "{}{}",
        settings("", extra_sections),
        deployment("a", "gpt-4o", "openai", &openai_base(&mock, ""), ""),
    ));
    (mock, gw)
}

fn assert_error(r: &Answer, status: u16, error_type: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let e = &r.body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    assert_eq!(e["type"], error_type, "{e}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "param and code keys: {e}"
    );
    assert!(r.header("x-request-id").is_some());
}

#[actix_web::test]
async fn malformed_json_is_a_400() {
    let (mock, gw) = setup("").await;
    let r = chat_raw(
        &gw,
        b"{\"model\": \"gpt-4o\", \"messages\": [".to_vec(),
        &[],
    )
    .await;
    assert_error(&r, 400, "invalid_request_error");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    let r = chat_raw(&gw, b"[1, 2, 3]".to_vec(), &[]).await;
    assert_error(&r, 400, "invalid_request_error");
    let r = chat_raw(&gw, Vec::new(), &[]).await;
    assert_error(&r, 400, "invalid_request_error");
    assert_eq!(mock.request_count(""), 0);
    gw.stop(true).await;
}

#[actix_web::test]
async fn missing_messages_is_a_400_naming_the_field() {
    let (_mock, gw) = setup("").await;
    let r = chat(&gw, &json!({"model": "gpt-4o"})).await;
    assert_error(&r, 400, "invalid_request_error");
    assert_eq!(r.body["error"]["param"], "messages");
    let r = chat(&gw, &json!({"model": "gpt-4o", "messages": []})).await;
    assert_error(&r, 400, "invalid_request_error");
    assert_eq!(
        r.body["error"]["message"],
        "messages: must contain at least one message"
    );
    let r = chat(
        &gw,
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.body["error"]["param"], "model");
    gw.stop(true).await;
}

#[actix_web::test]
async fn wrong_types_are_a_400_naming_the_path() {
    let (mock, gw) = setup("").await;
    for (body, param) in [
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}),
            "temperature",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}),
            "stream",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}),
            "max_tokens",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "robot", "content": "hi"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": 7}]}),
            "messages[0].content",
        ),
        (json!({"model": "gpt-4o", "messages": "hi"}), "messages"),
        (
            json!({"model": ["gpt-4o"], "messages": [{"role": "user", "content": "hi"}]}),
            "model",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {}}]}),
            "tools[0].function",
        ),
    ] {
        let r = chat(&gw, &body).await;
        assert_error(&r, 400, "invalid_request_error");
        assert_eq!(r.body["error"]["param"], param, "{}", r.body);
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(param),
            "{}",
            r.body
        );
    }
    assert_eq!(mock.request_count(""), 0);
    gw.stop(true).await;
}

#[actix_web::test]
async fn an_unknown_model_is_a_404() {
    let (mock, gw) = setup("").await;
    let r = chat(&gw, &user_message("gpt-5-ultra", "hi")).await;
    assert_error(&r, 404, "invalid_request_error");
    assert_eq!(r.body["error"]["code"], "model_not_found");
    assert_eq!(r.body["error"]["param"], "model");
    assert_eq!(mock.request_count(""), 0);
    gw.stop(true).await;
}

#[actix_web::test]
async fn an_oversized_body_is_a_413() {
    let (mock, gw) = setup("").await;
    let gw2 = {
        gw.stop(true).await;
        start_gateway(&format!(
            "{}{}",
            FAST_ROUTER.replace("workers = 1", "workers = 1\nmax_body_bytes = 1000"),
            deployment("a", "gpt-4o", "openai", &openai_base(&mock, ""), ""),
        ))
    };
    let big = user_message("gpt-4o", &"x".repeat(2000));
    let r = chat(&gw2, &big).await;
    assert_error(&r, 413, "invalid_request_error");
    assert_eq!(r.body["error"]["code"], "request_too_large");
    // Chunked, without a Content-Length: still refused at the limit.
    let body = serde_json::to_vec(&big).unwrap();
    let stream = futures_util::stream::iter(
        body.chunks(100)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let mut resp = client()
        .post(format!("{}/v1/chat/completions", gw2.url()))
        .insert_header(("content-type", "application/json"))
        .send_stream(stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");
    assert_eq!(mock.request_count(""), 0);
    gw2.stop(true).await;
}

#[actix_web::test]
async fn a_master_key_is_required_when_configured() {
    let mock = mock().await;
    let gw = start_gateway(&format!(
        "{}{}",
        FAST_ROUTER.replace("workers = 1", "workers = 1\nmaster_key = \"sk-gateway\""),
        deployment(
            "a",
            "gpt-4o",
            "openai",
            &openai_base(&mock, ""),
            "api_key = \"sk-upstream\""
        ),
    ));
    let body = serde_json::to_vec(&user_message("gpt-4o", "hi")).unwrap();
    let r = chat_raw(&gw, body.clone(), &[]).await;
    assert_error(&r, 401, "authentication_error");
    let r = chat_raw(&gw, body.clone(), &[("authorization", "Bearer sk-wrong")]).await;
    assert_error(&r, 401, "authentication_error");
    assert!(!r.body.to_string().contains("sk-gateway"));
    let r = chat_raw(&gw, body.clone(), &[("authorization", "Bearer sk-gateway")]).await;
    assert_eq!(r.status, 200);
    let r = chat_raw(&gw, body.clone(), &[("x-api-key", "sk-gateway")]).await;
    assert_eq!(r.status, 200);
    let r = chat_raw(&gw, body, &[("authorization", "bearer sk-gateway")]).await;
    assert_eq!(r.status, 200, "the auth scheme is case-insensitive");
    assert_eq!(mock.request_count(""), 3);
    for seen in mock.requests("") {
        assert_eq!(
            seen.header("authorization"),
            Some("Bearer sk-upstream"),
            "the client's key is never forwarded"
        );
        assert_eq!(seen.header("x-api-key"), None);
    }
    let models = client()
        .get(format!("{}/v1/models", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 401);
    gw.stop(true).await;
}

#[actix_web::test]
async fn an_unknown_path_is_an_openai_style_404_and_a_wrong_method_a_405() {
    let (_mock, gw) = setup("").await;
    let mut resp = client()
        .post(format!("{}/v1/completions/legacy", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unknown_url");
    let mut resp = client()
        .get(format!("{}/v1/chat/completions", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers().get("allow").unwrap(), "POST");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed");
    let resp = client()
        .post(format!("{}/health", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let resp = client()
        .head(format!("{}/health", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "load balancers may probe with HEAD");
    gw.stop(true).await;
}
