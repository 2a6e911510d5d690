//! Chat completions through an `openai`-kind deployment, non-streamed and streamed, checked
//! field by field; what reaches the upstream; what never does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::json;

fn config(mock: &MockUpstream, extra: &str) -> String {
    format!(
        "{FAST_ROUTER}{}",
        deployment(
            "openai-main",
            "gpt-4o",
            "openai",
            &openai_base(mock, ""),
            &format!("upstream_model = \"gpt-4o-2024-08-06\"\napi_key = \"sk-upstream\"\ninput_cost_per_mtok = 2.5\noutput_cost_per_mtok = 10.0\n{extra}"),
        )
    )
}

#[actix_web::test]
async fn non_streamed_chat_returns_an_openai_completion_and_rewrites_the_model() {
    let mock = mock().await;
    mock.set_behavior(
        "",
        Behavior::text("Hello there.")
            .with_usage(1000, 100)
            .with_cached_tokens(0),
    );
    let gw = start_gateway(&config(&mock, ""));

    let r = chat(&gw, &user_message("gpt-4o", "Say hello.")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(r.body["choices"][0]["message"]["content"], "Hello there.");
    assert_eq!(r.body["choices"][0]["finish_reason"], "stop");
    assert_eq!(r.body["usage"]["prompt_tokens"], 1000);
    assert_eq!(r.body["usage"]["completion_tokens"], 100);
    assert_eq!(r.header("x-switchyard-deployment"), Some("openai-main"));
    assert_eq!(r.header("x-switchyard-model-group"), Some("gpt-4o"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("1"));
    let overhead: f64 = r
        .header("x-switchyard-overhead-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.0..1000.0).contains(&overhead), "overhead {overhead} ms");
    // 1000 prompt tokens at $2.50/M + 100 completion tokens at $10/M = $0.0035.
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.0035"));
    assert!(r
        .header("x-request-id")
        .is_some_and(|id| id.starts_with("req_")));

    let seen = mock.requests("");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    let body = seen[0].json();
    assert_eq!(
        body["model"], "gpt-4o-2024-08-06",
        "the upstream model is sent"
    );
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": "Say hello."}])
    );
    assert_eq!(seen[0].header("authorization"), Some("Bearer sk-upstream"));
    assert_eq!(
        metric(
            &gw,
            "gateway_tokens_total",
            &[("deployment", "openai-main"), ("direction", "input")]
        )
        .await,
        1000.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_cost_nanodollars_total",
            &[("deployment", "openai-main")]
        )
        .await,
        3_500_000.0
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_requests_total",
            &[
                ("model_group", "gpt-4o"),
                ("deployment", "openai-main"),
                ("status_class", "2xx")
            ]
        )
        .await,
        1.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn streamed_chat_follows_the_openai_chunk_contract_with_and_without_usage() {
    let mock = mock().await;
    mock.set_behavior(
        "",
        Behavior::text("Hello from the stream.")
            .with_chunks(5)
            .with_usage(21, 5),
    );
    let gw = start_gateway(&config(&mock, ""));

    for include_usage in [true, false] {
        let s = chat_stream(&gw, &stream_request("gpt-4o", include_usage)).await;
        assert_openai_stream(&s, include_usage);
        assert_eq!(s.content(), "Hello from the stream.");
        assert_eq!(s.header("x-switchyard-deployment"), Some("openai-main"));
        assert_eq!(s.header("cache-control"), Some("no-cache"));
        if include_usage {
            let usage = &s.chunks().last().unwrap()["usage"];
            assert_eq!(usage["prompt_tokens"], 21);
            assert_eq!(usage["completion_tokens"], 5);
        }
    }
    // Spend is known even when the client did not ask for usage: the gateway asks upstream.
    for r in mock.requests("") {
        assert_eq!(r.json()["stream_options"]["include_usage"], true);
    }
    let billed = metric(
        &gw,
        "gateway_tokens_total",
        &[("deployment", "openai-main"), ("direction", "output")],
    )
    .await;
    assert_eq!(billed, 10.0, "both streams billed 5 completion tokens");
    gw.stop(true).await;
}

#[actix_web::test]
async fn api_base_in_the_body_and_the_clients_key_never_reach_anywhere() {
    let mock = mock().await;
    let elsewhere = common::mock().await;
    // No master key: the client's Authorization is ignored, and never forwarded.
    let gw = start_gateway(&config(&mock, ""));
    let mut body = user_message("gpt-4o", "hi");
    body["api_base"] = json!(openai_base(&elsewhere, ""));
    body["base_url"] = json!(openai_base(&elsewhere, ""));
    body["api_key"] = json!("sk-client-secret");
    let r = chat_raw(
        &gw,
        serde_json::to_vec(&body).unwrap(),
        &[("authorization", "Bearer sk-client-secret")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        mock.request_count(""),
        1,
        "the configured upstream got the call"
    );
    assert_eq!(
        elsewhere.request_count(""),
        0,
        "the body's api_base got nothing"
    );
    let seen = &mock.requests("")[0];
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer sk-upstream"),
        "the configured key, not the client's"
    );
    assert!(!String::from_utf8_lossy(&seen.body).contains("sk-client-secret"));
    assert!(seen.json().get("api_base").is_none());
    gw.stop(true).await;
}

#[actix_web::test]
async fn unknown_fields_are_forwarded_and_tools_pass_through_unchanged() {
    let mock = mock().await;
    mock.set_behavior(
        "",
        Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#),
    );
    let gw = start_gateway(&config(&mock, ""));
    let req = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "What's the weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "auto",
        "service_tier": "flex",
        "max_completion_tokens": 50
    });
    let r = chat(&gw, &req).await;
    assert_eq!(r.status, 200);
    assert_openai_completion(&r.body);
    let call = &r.body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"city":"Paris"}"#);
    let sent = mock.requests("")[0].json();
    assert_eq!(sent["service_tier"], "flex");
    assert_eq!(sent["tools"], req["tools"]);
    assert_eq!(sent["max_completion_tokens"], 50);
    gw.stop(true).await;
}
