//! Scripting the mock: queues, routes, recording, auth, validation, limits, lifecycle.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use switchyard_loadtests::{Behavior, ErrorPreset, Fault, MockConfig, MockUpstream};

fn content(a: &Answer) -> String {
    a.json()["choices"][0]["message"]["content"]
        .as_str()
        .expect("text reply")
        .to_owned()
}

#[actix_web::test]
async fn pushed_behaviors_are_used_in_order_then_the_default() {
    let mock = start().await;
    mock.set_behavior("", Behavior::text("default"));
    mock.push_behaviors(
        "",
        [
            Behavior::error(ErrorPreset::RateLimited {
                retry_after: Some(1),
            }),
            Behavior::text("second"),
        ],
    );
    mock.push_behaviors("", [Behavior::text("third")]);
    let body = openai_body(false, None);
    let first = post_openai(&mock, "", &body).await;
    assert_eq!(first.status, 429);
    assert_eq!(content(&post_openai(&mock, "", &body).await), "second");
    assert_eq!(content(&post_openai(&mock, "", &body).await), "third");
    assert_eq!(content(&post_openai(&mock, "", &body).await), "default");
    assert_eq!(content(&post_openai(&mock, "", &body).await), "default");
    assert_eq!(mock.request_count(""), 5);
}

#[actix_web::test]
async fn queues_are_shared_by_both_formats_of_a_route() {
    let mock = start().await;
    mock.push_behaviors("", [Behavior::text("one"), Behavior::text("two")]);
    let a = post_anthropic(&mock, "", &anthropic_body(false)).await;
    assert_eq!(a.json()["content"][0]["text"], "one");
    assert_eq!(
        content(&post_openai(&mock, "", &openai_body(false, None)).await),
        "two"
    );
}

#[actix_web::test]
async fn invalid_requests_do_not_consume_queued_behaviors() {
    let mock = start().await;
    mock.push_behaviors("", [Behavior::text("queued")]);
    let bad = post_openai(&mock, "", &json!({"model": "m"})).await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        content(&post_openai(&mock, "", &openai_body(false, None)).await),
        "queued"
    );
}

#[actix_web::test]
async fn named_routes_are_independent() {
    let mock = start_with(Behavior::text("config default")).await;
    mock.set_behavior("a", Behavior::text("from a"));
    mock.set_behavior("b", Behavior::error(ErrorPreset::Overloaded));
    mock.push_behaviors("a", [Behavior::text("queued on a")]);
    let body = openai_body(false, None);

    // b fails and does not eat a's queue.
    assert_eq!(post_openai(&mock, "b", &body).await.status, 503);
    assert_eq!(
        content(&post_openai(&mock, "a", &body).await),
        "queued on a"
    );
    assert_eq!(content(&post_openai(&mock, "a", &body).await), "from a");
    // Unconfigured routes, named or not, use the config default.
    assert_eq!(
        content(&post_openai(&mock, "", &body).await),
        "config default"
    );
    assert_eq!(
        content(&post_openai(&mock, "c", &body).await),
        "config default"
    );

    assert_eq!(mock.request_count("a"), 2);
    assert_eq!(mock.request_count("b"), 1);
    assert_eq!(mock.request_count("c"), 1);
    assert_eq!(mock.request_count(""), 1);
    assert_eq!(mock.request_count("never"), 0);
    assert_eq!(mock.requests("a").len(), 2);
    assert!(mock.requests("a").iter().all(|r| r.route == "a"));
    assert!(mock.requests("never").is_empty());

    mock.clear("a");
    assert_eq!(mock.request_count("a"), 0);
    assert!(mock.requests("a").is_empty());
    assert_eq!(mock.request_count("b"), 1);
    assert_eq!(mock.requests("b").len(), 1);
}

#[actix_web::test]
async fn recording_keeps_method_path_headers_and_body() {
    let mock = start().await;
    let url = format!("{}/r/v1/chat/completions?trace=1", mock.url());
    let body = openai_body(false, None).to_string();
    let before = Instant::now();
    let a = post_raw(
        &url,
        &[("Authorization", "Bearer sk-test"), ("X-Custom", "v")],
        body.clone(),
    )
    .await;
    assert_eq!(a.status, 200);
    let recorded = mock.requests("r");
    assert_eq!(recorded.len(), 1);
    let r = &recorded[0];
    assert_eq!(r.route, "r");
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/r/v1/chat/completions?trace=1");
    assert_eq!(r.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(r.header("X-CUSTOM"), Some("v"));
    assert_eq!(r.header("missing"), None);
    assert!(r.headers.iter().all(|(n, _)| *n == n.to_lowercase()));
    assert_eq!(r.body, body.as_bytes());
    assert_eq!(r.json(), openai_body(false, None));
    assert!(r.received_at >= before);

    // Not JSON: json() is Null, the request is still recorded.
    let a = post_raw(&url, &[], "not json").await;
    assert_eq!(a.status, 400);
    let recorded = mock.requests("r");
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[1].json(), serde_json::Value::Null);
}

#[actix_web::test]
async fn without_recording_requests_are_only_counted() {
    let mock = MockUpstream::start(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await
    .expect("mock starts");
    for _ in 0..3 {
        post_openai(&mock, "", &openai_body(false, None)).await;
    }
    post_anthropic(&mock, "x", &anthropic_body(true)).await;
    assert_eq!(mock.request_count(""), 3);
    assert_eq!(mock.request_count("x"), 1);
    assert!(mock.requests("").is_empty());
    assert!(mock.requests("x").is_empty());
}

#[actix_web::test]
async fn require_api_key_checks_bearer_for_openai_and_x_api_key_for_anthropic() {
    let mock = MockUpstream::start(MockConfig {
        require_api_key: Some("sk-right".into()),
        ..MockConfig::default()
    })
    .await
    .expect("mock starts");
    let oa_url = format!("{}/v1/chat/completions", mock.url());
    let oa_body = openai_body(false, None).to_string();

    let a = post_raw(&oa_url, &[], oa_body.clone()).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["error"]["type"], "invalid_request_error");
    assert!(a.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("You didn't provide an API key")));
    let a = post_raw(
        &oa_url,
        &[("authorization", "Bearer sk-wrong")],
        oa_body.clone(),
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["error"]["code"], "invalid_api_key");
    // Auth comes before validation.
    let a = post_raw(&oa_url, &[("authorization", "Bearer sk-wrong")], "{}").await;
    assert_eq!(a.status, 401);
    let a = post_raw(&oa_url, &[("x-api-key", "sk-right")], oa_body.clone()).await;
    assert_eq!(a.status, 401, "OpenAI routes want a bearer token");
    let a = post_raw(&oa_url, &[("authorization", "Bearer sk-right")], oa_body).await;
    assert_eq!(a.status, 200);

    let an_url = format!("{}/v1/messages", mock.url());
    let an_body = anthropic_body(false).to_string();
    let version = ("anthropic-version", "2023-06-01");
    let a = post_raw(&an_url, &[version], an_body.clone()).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.header("request-id"), Some("req_mock0001"));
    assert_eq!(a.json()["type"], "error");
    assert_eq!(a.json()["error"]["type"], "authentication_error");
    let a = post_raw(
        &an_url,
        &[version, ("x-api-key", "sk-wrong")],
        an_body.clone(),
    )
    .await;
    assert_eq!(a.status, 401);
    let a = post_raw(
        &an_url,
        &[version, ("authorization", "Bearer sk-right")],
        an_body.clone(),
    )
    .await;
    assert_eq!(a.status, 401, "Anthropic routes want x-api-key");
    let a = post_raw(&an_url, &[version, ("x-api-key", "sk-right")], an_body).await;
    assert_eq!(a.status, 200);
    assert_eq!(mock.request_count(""), 9);
}

#[actix_web::test]
async fn openai_validation_names_the_field() {
    let mock = start().await;
    let cases = [
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "model",
            "missing_required_parameter",
        ),
        (
            json!({"model": 5, "messages": [{"role": "user", "content": "x"}]}),
            "model",
            "invalid_type",
        ),
        (
            json!({"model": "m"}),
            "messages",
            "missing_required_parameter",
        ),
        (
            json!({"model": "m", "messages": []}),
            "messages",
            "empty_array",
        ),
        (
            json!({"model": "m", "messages": "hi"}),
            "messages",
            "invalid_type",
        ),
    ];
    for (body, param, code) in cases {
        let a = post_openai(&mock, "", &body).await;
        assert_eq!(a.status, 400, "{body}");
        assert_eq!(a.header("x-request-id"), Some("req_mock0001"));
        let e = &a.json()["error"];
        assert_eq!(e["type"], "invalid_request_error", "{body}");
        assert_eq!(e["param"], param, "{body}");
        assert_eq!(e["code"], code, "{body}");
        assert!(
            e["message"].as_str().is_some_and(|m| m.contains(param)),
            "{e}"
        );
    }
    let url = format!("{}/v1/chat/completions", mock.url());
    for raw in [
        "",
        "not json",
        "[1,2]",
        "{\"model\":",
        r#"{"model":"m","messages":[1],"stream":"yes"}"#,
    ] {
        let a = post_raw(&url, &[], raw).await;
        assert_eq!(a.status, 400, "{raw:?}");
        assert_eq!(
            a.json()["error"]["type"],
            "invalid_request_error",
            "{raw:?}"
        );
    }
    // Unknown fields and odd but valid values are fine.
    let a = post_openai(
        &mock,
        "",
        &json!({"model": "m", "messages": [1], "n": 1, "stream": null, "stream_options": null}),
    )
    .await;
    assert_eq!(a.status, 200);
}

#[actix_web::test]
async fn anthropic_validation_requires_version_model_messages_and_max_tokens() {
    let mock = start().await;
    let url = format!("{}/v1/messages", mock.url());
    let a = post_raw(&url, &[], anthropic_body(false).to_string()).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["type"], "invalid_request_error");
    assert_eq!(
        a.json()["error"]["message"],
        "anthropic-version: header is required"
    );
    assert_eq!(a.header("request-id"), Some("req_mock0001"));

    let msgs = json!([{"role": "user", "content": "x"}]);
    let cases = [
        (
            json!({"max_tokens": 5, "messages": msgs}),
            "model: Field required",
        ),
        (
            json!({"model": 1, "max_tokens": 5, "messages": msgs}),
            "model: Input should be a valid string",
        ),
        (
            json!({"model": "m", "max_tokens": 5}),
            "messages: Field required",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": []}),
            "messages: at least one message is required",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": {}}),
            "messages: Input should be a valid list",
        ),
        (
            json!({"model": "m", "messages": msgs}),
            "max_tokens: Field required",
        ),
        (
            json!({"model": "m", "max_tokens": 1.5, "messages": msgs}),
            "max_tokens: Input should be a valid integer",
        ),
        (
            json!({"model": "m", "max_tokens": "5", "messages": msgs}),
            "max_tokens: Input should be a valid integer",
        ),
    ];
    for (body, message) in cases {
        let a = post_anthropic(&mock, "", &body).await;
        assert_eq!(a.status, 400, "{body}");
        assert_eq!(
            a.json(),
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": message},
                   "request_id": "req_mock0001"}),
            "{body}"
        );
    }
    let a = post_raw(&url, &[("anthropic-version", "2023-06-01")], "[]").await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["type"], "error");
}

#[actix_web::test]
async fn unknown_paths_and_methods_get_an_openai_404() {
    let mock = start().await;
    for path in [
        "/",
        "/v1/models",
        "/v1/chat/completions/",
        "/a/b/v1/messages",
        "/a/messages",
    ] {
        let a = post_raw(&format!("{}{path}", mock.url()), &[], "{}").await;
        assert_eq!(a.status, 404, "{path}");
        let e = &a.json()["error"];
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["code"], "unknown_url");
        assert!(e["message"].as_str().is_some_and(|m| m.contains(path)));
    }
    let mut resp = client()
        .get(format!("{}/v1/chat/completions", mock.url()))
        .send()
        .await
        .expect("response");
    assert_eq!(resp.status(), 404);
    let body = resp.body().await.expect("body");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["error"]["code"], "unknown_url");
    assert_eq!(mock.request_count(""), 0);
}

#[actix_web::test]
async fn bodies_over_16_mib_get_413_in_the_route_format() {
    let mock = start().await;
    let big = vec![b' '; switchyard_loadtests::mock::BODY_LIMIT + 1];
    let a = post_raw(
        &format!("{}/v1/chat/completions", mock.url()),
        &[],
        big.clone(),
    )
    .await;
    assert_eq!(a.status, 413);
    assert_eq!(a.json()["error"]["code"], "request_too_large");
    let a = post_raw(
        &format!("{}/v1/messages", mock.url()),
        &[("anthropic-version", "2023-06-01")],
        big,
    )
    .await;
    assert_eq!(a.status, 413);
    assert_eq!(a.json()["error"]["type"], "request_too_large");
    // Exactly at the limit is read (and then rejected as invalid JSON, not as too large).
    let mut at_limit = vec![b' '; switchyard_loadtests::mock::BODY_LIMIT];
    at_limit[0] = b'{';
    let a = post_raw(
        &format!("{}/v1/chat/completions", mock.url()),
        &[],
        at_limit,
    )
    .await;
    assert_eq!(a.status, 400);
}

#[actix_web::test]
async fn urls_have_no_trailing_slash() {
    let mock = start().await;
    let addr: SocketAddr = mock.addr();
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
    assert_eq!(mock.url(), format!("http://127.0.0.1:{}", addr.port()));
    assert_eq!(mock.route_url(""), mock.url());
    assert_eq!(
        mock.route_url("fast"),
        format!("http://127.0.0.1:{}/fast", addr.port())
    );
}

#[actix_web::test]
async fn many_mocks_run_side_by_side() {
    let a = start_with(Behavior::text("A")).await;
    let b = start_with(Behavior::text("B")).await;
    assert_ne!(a.addr(), b.addr());
    assert_eq!(
        content(&post_openai(&a, "", &openai_body(false, None)).await),
        "A"
    );
    assert_eq!(
        content(&post_openai(&b, "", &openai_body(false, None)).await),
        "B"
    );
}

#[actix_web::test]
async fn several_workers_serve_concurrent_requests() {
    let mock = MockUpstream::start(MockConfig {
        workers: 2,
        default_behavior: Behavior::default().with_latency(Duration::from_millis(100)),
        ..MockConfig::default()
    })
    .await
    .expect("mock starts");
    let t0 = Instant::now();
    let body = openai_body(false, None);
    let requests = (0..8).map(|_| post_openai(&mock, "", &body));
    let answers = futures_util::future::join_all(requests).await;
    assert!(answers.iter().all(|a| a.status == 200));
    // Concurrent, not serial: 8 x 100 ms would be 800 ms.
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(mock.request_count(""), 8);
}

#[actix_web::test]
async fn stop_lets_running_streams_finish() {
    let mock = start_with(
        Behavior::text("abc")
            .with_chunks(3)
            .with_chunk_delay(Duration::from_millis(60)),
    )
    .await;
    let url = format!("{}/v1/chat/completions", mock.url());
    let mut resp = open(&url, &[], &openai_body(true, None), Duration::from_secs(2))
        .await
        .expect("headers");
    let t0 = Instant::now();
    let reader =
        actix_web::rt::spawn(async move { read_chunks(&mut resp, Duration::from_secs(2)).await });
    actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    mock.stop().await;
    assert!(
        t0.elapsed() >= Duration::from_millis(100),
        "stop waited for the stream"
    );
    let (data, end) = reader.await.expect("reader");
    assert_eq!(end, BodyEnd::Complete);
    assert!(std::str::from_utf8(&data)
        .expect("utf8")
        .ends_with("data: [DONE]\n\n"));
}

#[actix_web::test]
async fn stop_closes_the_port() {
    let mock = start().await;
    let url = format!("{}/v1/chat/completions", mock.url());
    assert_eq!(
        post_raw(&url, &[], openai_body(false, None).to_string())
            .await
            .status,
        200
    );
    let t0 = Instant::now();
    mock.stop().await;
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    let err = open(
        &url,
        &[],
        &openai_body(false, None),
        Duration::from_millis(300),
    )
    .await;
    assert!(err.is_err());
}

#[actix_web::test]
async fn dropping_the_mock_stops_it() {
    let mock = start().await;
    let url = format!("{}/v1/chat/completions", mock.url());
    drop(mock);
    actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    assert!(open(
        &url,
        &[],
        &openai_body(false, None),
        Duration::from_millis(300)
    )
    .await
    .is_err());
}

#[actix_web::test]
async fn hang_on_one_route_does_not_block_another() {
    let mock = start().await;
    mock.set_behavior("stuck", Behavior::default().with_fault(Fault::Hang));
    let url = format!("{}/stuck/v1/chat/completions", mock.url());
    let hung = actix_web::rt::spawn(async move {
        open(
            &url,
            &[],
            &openai_body(false, None),
            Duration::from_millis(300),
        )
        .await
        .is_err()
    });
    actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        post_openai(&mock, "", &openai_body(false, None))
            .await
            .status,
        200
    );
    assert!(hung.await.expect("task"));
}

#[test]
fn start_outside_an_actix_system_is_an_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(MockUpstream::start(MockConfig::default()));
    assert!(result.is_err());
}
