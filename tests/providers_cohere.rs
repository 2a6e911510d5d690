//! Chat completions and embeddings through `cohere`-kind deployments: requests translated to
//! Cohere v2 (`/v2/chat`, `/v2/embed`), answers (JSON and typed-event streams) back to OpenAI's
//! shape, and Cohere's failures driving retries and fallbacks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::{json, Value};
use switchyard_loadtests::mock::{embedding_value, MOCK_TOOL_CALL_ID};

const KEY: &str = "co-upstream-key";

/// A mock that checks `Authorization: Bearer co-upstream-key` on every route.
async fn keyed_mock() -> MockUpstream {
    MockUpstream::start(MockConfig {
        require_api_key: Some(KEY.to_owned()),
        ..MockConfig::default()
    })
    .await
    .expect("mock upstream starts")
}

/// A cohere deployment on mock route `route`, with the upstream key and prices.
fn cohere(mock: &MockUpstream, id: &str, model: &str, route: &str, extra: &str) -> String {
    deployment(
        id,
        model,
        "cohere",
        &mock.route_url(route),
        &format!("api_key = \"{KEY}\"\n{extra}"),
    )
}

/// An OpenAI deployment on mock route `route` (the fallback groups).
fn openai(mock: &MockUpstream, id: &str, model: &str, route: &str) -> String {
    deployment(
        id,
        model,
        "openai",
        &openai_base(mock, route),
        &format!("api_key = \"{KEY}\"\nupstream_model = \"gpt-4o-mini\""),
    )
}

/// Group `command-r` (one cohere deployment, route `c`), its default fallback `backup` (OpenAI,
/// route `oa`) and its context-window fallback `big` (OpenAI, route `big`).
fn config(mock: &MockUpstream) -> String {
    format!(
        "{}{}{}{}\n[[fallbacks]]\nfrom = \"command-r\"\nto = [\"backup\"]\n\n[[fallbacks]]\nfrom = \"command-r\"\nto = [\"big\"]\non = \"context_window\"\n",
        FAST_ROUTER,
        cohere(
            mock,
            "cohere-main",
            "command-r",
            "c",
            "upstream_model = \"command-r-plus-08-2024\"\ninput_cost_per_mtok = 2.5\noutput_cost_per_mtok = 10.0"
        ),
        openai(mock, "backup-1", "backup", "oa"),
        openai(mock, "big-1", "big", "big"),
    )
}

fn weather_request(stream: bool) -> Value {
    json!({
        "model": "command-r",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "What's the weather in Paris?"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "tool_choice": "required",
        "stream": stream,
        "stream_options": {"include_usage": true}
    })
}

fn attempts(text: &str, deployment: &str, outcome: &str) -> f64 {
    metric_in(
        text,
        "gateway_upstream_attempts_total",
        &[("deployment", deployment), ("outcome", outcome)],
    )
}

#[actix_web::test]
async fn non_streamed_chat_is_translated_to_v2_chat_and_back_with_usage_and_cost() {
    let mock = keyed_mock().await;
    mock.set_behavior("c", Behavior::text("Hello.").with_usage(400, 20));
    let gw = start_gateway(&config(&mock));
    let r = chat(
        &gw,
        &json!({"model": "command-r", "messages": [
            {"role": "developer", "content": "You are a terse assistant."},
            {"role": "user", "content": "Say hello."}],
            "temperature": 0.2, "top_p": 1.0, "stop": ["END", "STOP"], "max_tokens": 64, "user": "u-123",
            "seed": 11, "frequency_penalty": 0.3, "presence_penalty": 1.5}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(r.body["choices"][0]["message"]["content"], "Hello.");
    // Cohere's answer names no model: the one asked for upstream; its id is the response's.
    assert_eq!(r.body["model"], "command-r-plus-08-2024");
    assert_eq!(r.body["id"], "5c0e6d0a-6d6f-4b63-8b00-000000000001");
    assert_eq!(r.body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        r.body["usage"],
        json!({"prompt_tokens": 400, "completion_tokens": 20, "total_tokens": 420,
               "prompt_tokens_details": {"cached_tokens": 0}}),
    );
    assert_eq!(r.header("x-switchyard-deployment"), Some("cohere-main"));
    assert_eq!(r.header("x-switchyard-model-group"), Some("command-r"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("1"));
    // 400 * $2.5/M + 20 * $10/M = $0.001 + $0.0002.
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.0012"));

    let seen = &mock.requests("c")[0];
    assert_eq!(seen.path, "/c/v2/chat");
    let auth = format!("Bearer {KEY}");
    assert_eq!(seen.header("authorization"), Some(auth.as_str()));
    // developer -> system, top_p -> p (clamped to 0.99), stop -> stop_sequences, user dropped,
    // penalties clamped into 0-1.
    assert_eq!(
        seen.json(),
        json!({"model": "command-r-plus-08-2024",
               "messages": [{"role": "system", "content": "You are a terse assistant."},
                            {"role": "user", "content": "Say hello."}],
               "max_tokens": 64, "temperature": 0.2, "p": 0.99,
               "stop_sequences": ["END", "STOP"], "seed": 11, "frequency_penalty": 0.3,
               "presence_penalty": 1.0, "stream": false})
    );

    let text = metrics_text(&gw).await;
    let m = |name, labels: &[(&str, &str)]| metric_in(&text, name, labels);
    assert_eq!(attempts(&text, "cohere-main", "success"), 1.0);
    assert_eq!(
        m(
            "gateway_upstream_attempts_total",
            &[("deployment", "cohere-main"), ("provider", "cohere")]
        ),
        1.0
    );
    assert_eq!(
        m(
            "gateway_tokens_total",
            &[("deployment", "cohere-main"), ("direction", "input")]
        ),
        400.0
    );
    assert_eq!(
        m(
            "gateway_tokens_total",
            &[("deployment", "cohere-main"), ("direction", "output")]
        ),
        20.0
    );
    assert_eq!(
        m(
            "gateway_cost_nanodollars_total",
            &[("deployment", "cohere-main")]
        ),
        1_200_000.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn streamed_chat_becomes_openai_chunks_with_and_without_include_usage() {
    let mock = keyed_mock().await;
    mock.set_behavior(
        "c",
        Behavior::text("Hello there, friend.")
            .with_chunks(4)
            .with_usage(21, 4)
            .with_cached_tokens(16),
    );
    let gw = start_gateway(&config(&mock));
    for include_usage in [true, false] {
        let s = chat_stream(&gw, &stream_request("command-r", include_usage)).await;
        assert_openai_stream(&s, include_usage);
        assert_eq!(s.content(), "Hello there, friend.");
        assert_eq!(s.header("x-switchyard-deployment"), Some("cohere-main"));
        let chunks = s.chunks();
        assert_eq!(chunks[0]["id"], "5c0e6d0a-6d6f-4b63-8b00-000000000001");
        assert_eq!(chunks[0]["model"], "command-r-plus-08-2024");
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let finish = chunks
            .iter()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str());
        assert_eq!(finish, Some("stop"));
        if include_usage {
            assert_eq!(
                chunks.last().unwrap()["usage"],
                json!({"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25,
                       "prompt_tokens_details": {"cached_tokens": 16}})
            );
        }
    }
    let sent = mock.requests("c");
    assert_eq!(sent.len(), 2);
    for r in &sent {
        assert_eq!(r.path, "/c/v2/chat");
        assert_eq!(r.json()["stream"], true);
        assert_eq!(r.json()["model"], "command-r-plus-08-2024");
        assert!(
            r.json().get("stream_options").is_none(),
            "no OpenAI-only fields go to Cohere: {}",
            r.json()
        );
    }
    // Usage is billed for both streams, asked for or not.
    let tokens = metric_until(
        &gw,
        "gateway_tokens_total",
        &[("deployment", "cohere-main"), ("direction", "input")],
        42.0,
    )
    .await;
    assert_eq!(tokens, 42.0);
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_tool_call_is_translated_both_ways_non_streamed() {
    let mock = keyed_mock().await;
    mock.set_behavior(
        "c",
        Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#),
    );
    let gw = start_gateway(&config(&mock));
    let r = chat(&gw, &weather_request(false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(r.body["choices"][0]["finish_reason"], "tool_calls");
    let msg = &r.body["choices"][0]["message"];
    assert_eq!(msg["content"], Value::Null, "the tool plan is not content");
    let call = &msg["tool_calls"][0];
    assert_eq!(call["id"], MOCK_TOOL_CALL_ID);
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));

    let sent = mock.requests("c")[0].json();
    assert_eq!(
        sent["tools"],
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Get current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    );
    assert_eq!(sent["tool_choice"], "REQUIRED");

    // The tool result goes back as Cohere's tool message, the call with its id.
    let r = chat(
        &gw,
        &json!({"model": "command-r", "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"}
        ], "tools": [{"type": "function", "function": {"name": "get_weather"}}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sent = mock.requests("c")[1].json();
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "tool_plan": "Let me check.", "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "content": "18C and sunny", "tool_call_id": "call_1"}
        ])
    );
    assert_eq!(
        sent["tools"][0]["function"]["parameters"],
        json!({"type": "object", "properties": {}})
    );
    assert!(
        sent.get("tool_choice").is_none(),
        "auto is Cohere's default"
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_tool_call_is_translated_streamed() {
    let mock = keyed_mock().await;
    mock.set_behavior(
        "c",
        Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#)
            .with_chunks(3)
            .with_usage(50, 12),
    );
    let gw = start_gateway(&config(&mock));
    let s = chat_stream(&gw, &weather_request(true)).await;
    assert_openai_stream(&s, true);
    let (id, args) = assert_tool_call_stream(&s, "get_weather");
    assert_eq!(id, MOCK_TOOL_CALL_ID);
    assert_eq!(
        s.content(),
        "",
        "no text content in the stream (the tool plan is not sent)"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Paris"})
    );
    let chunks = s.chunks();
    assert_eq!(
        chunks.last().unwrap()["usage"]["total_tokens"],
        62,
        "{}",
        s.raw
    );
    assert_eq!(mock.requests("c")[0].json()["tool_choice"], "REQUIRED");
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_cohere_429_cools_the_deployment_and_the_default_fallback_group_serves() {
    let mock = keyed_mock().await;
    mock.set_behavior(
        "c",
        Behavior::error(ErrorPreset::RateLimited { retry_after: None }),
    );
    mock.set_behavior("oa", Behavior::text("from backup").with_usage(7, 3));
    let gw = start_gateway(&config(&mock));
    for stream in [false, true] {
        let mut req = user_message("command-r", "hi");
        req["stream"] = json!(stream);
        let (status, deployment, group) = if stream {
            let s = chat_stream(&gw, &req).await;
            assert_openai_stream(&s, false);
            assert_eq!(s.content(), "from backup");
            (
                s.status,
                s.header("x-switchyard-deployment").map(str::to_owned),
                s.header("x-switchyard-model-group").map(str::to_owned),
            )
        } else {
            let r = chat(&gw, &req).await;
            assert_openai_completion(&r.body);
            assert_eq!(r.body["choices"][0]["message"]["content"], "from backup");
            assert_eq!(r.header("x-switchyard-attempts"), Some("2"));
            (
                r.status,
                r.header("x-switchyard-deployment").map(str::to_owned),
                r.header("x-switchyard-model-group").map(str::to_owned),
            )
        };
        assert_eq!(status, 200, "stream {stream}");
        assert_eq!(deployment.as_deref(), Some("backup-1"));
        assert_eq!(group.as_deref(), Some("backup"));
    }
    // The 429 cooled cohere-main (rate_limit_cooldown_ms, no Retry-After): the second request
    // went straight to the fallback group, and the 429 was no breaker failure.
    assert_eq!(mock.request_count("c"), 1);
    assert_eq!(mock.request_count("oa"), 2);
    let text = metrics_text(&gw).await;
    assert_eq!(attempts(&text, "cohere-main", "rate_limited"), 1.0);
    assert_eq!(attempts(&text, "backup-1", "success"), 2.0);
    assert_eq!(
        metric_in(
            &text,
            "gateway_deployment_declines_total",
            &[("deployment", "cohere-main"), ("reason", "cooling_down")]
        ),
        1.0
    );
    assert_eq!(
        metric_in(
            &text,
            "gateway_fallbacks_total",
            &[("from", "command-r"), ("to", "backup")]
        ),
        2.0
    );
    assert_eq!(
        metric_in(
            &text,
            "gateway_breaker_state",
            &[("deployment", "cohere-main")]
        ),
        0.0
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn too_many_tokens_takes_the_context_window_chain_and_blocked_input_is_a_400() {
    let mock = keyed_mock().await;
    mock.set_behavior("c", Behavior::error(ErrorPreset::ContextLength));
    mock.set_behavior("big", Behavior::text("from big"));
    let gw = start_gateway(&config(&mock));
    let r = chat(&gw, &user_message("command-r", "a very long prompt")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("big-1"));
    assert_eq!(r.header("x-switchyard-model-group"), Some("big"));
    assert_eq!(r.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(r.body["choices"][0]["message"]["content"], "from big");
    assert_eq!(mock.request_count("c"), 1, "never retried");
    assert_eq!(mock.request_count("oa"), 0, "not the default chain");
    let text = metrics_text(&gw).await;
    assert_eq!(attempts(&text, "cohere-main", "context_window"), 1.0);
    assert_eq!(
        metric_in(
            &text,
            "gateway_fallbacks_total",
            &[("from", "command-r"), ("to", "big")]
        ),
        1.0
    );

    // "blocked input" is a content-policy refusal: no content_policy chain, so a 400 and no
    // fallback at all (neither chain).
    mock.set_behavior("c", Behavior::error(ErrorPreset::ContentFiltered));
    let r = chat(&gw, &user_message("command-r", "something nasty")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("blocked input")),
        "{}",
        r.body
    );
    assert_eq!(mock.request_count("c"), 2);
    assert_eq!(mock.request_count("oa"), 0);
    assert_eq!(mock.request_count("big"), 1);
    let text = metrics_text(&gw).await;
    assert_eq!(attempts(&text, "cohere-main", "content_policy"), 1.0);
    gw.stop(true).await;
}

#[actix_web::test]
async fn an_in_band_error_before_content_is_retried_invisibly_on_another_deployment() {
    let mock = keyed_mock().await;
    mock.set_behavior(
        "c1",
        Behavior::text("never seen").with_fault(Fault::InBandErrorBeforeContent),
    );
    mock.set_behavior("c2", Behavior::text("Hello from c2.").with_chunks(3));
    let gw = start_gateway(&format!(
        "{}{}{}",
        settings("num_retries = 1", ""),
        cohere(&mock, "c1", "command-r", "c1", "order = 1"),
        cohere(&mock, "c2", "command-r", "c2", "order = 2"),
    ));
    let s = chat_stream(&gw, &stream_request("command-r", true)).await;
    assert_openai_stream(&s, true);
    assert!(s.error_event().is_none(), "{}", s.raw);
    assert_eq!(s.content(), "Hello from c2.");
    assert_eq!(s.header("x-switchyard-deployment"), Some("c2"));
    assert_eq!(s.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(mock.request_count("c1"), 1);
    assert_eq!(mock.request_count("c2"), 1);
    // Cohere's `message-end` with finish_reason ERROR is a server error, not an answer.
    let text = metrics_until(&gw, |t| attempts(t, "c2", "success") == 1.0).await;
    assert_eq!(attempts(&text, "c1", "server_error"), 1.0);
    assert_eq!(attempts(&text, "c1", "success"), 0.0);
    assert_eq!(attempts(&text, "c2", "success"), 1.0);
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_named_tool_choice_on_a_cohere_only_group_is_a_400_naming_the_param() {
    let mock = keyed_mock().await;
    // Two cohere deployments and no fallback: no deployment can express it.
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}{}",
        cohere(&mock, "c1", "command-r", "c", ""),
        cohere(&mock, "c2", "command-r", "c", ""),
    ));
    let mut req = weather_request(false);
    req["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    let r = chat(&gw, &req).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["param"], "tool_choice");
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("tool_choice")),
        "{}",
        r.body
    );
    assert_eq!(mock.request_count("c"), 0, "nothing was sent upstream");
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric_in(
            &text,
            "gateway_upstream_attempts_total",
            &[("deployment", "c1")]
        ),
        0.0
    );
    assert_eq!(
        metric_in(&text, "gateway_breaker_state", &[("deployment", "c1")]),
        0.0
    );

    // Streamed, the same 400 before any event.
    req["stream"] = json!(true);
    let s = chat_stream(&gw, &req).await;
    assert_eq!(s.status, 400, "{}", s.raw);
    assert_eq!(s.chunks()[0]["error"]["param"], "tool_choice");
    assert_eq!(mock.request_count("c"), 0);
    gw.stop(true).await;
}

#[actix_web::test]
async fn embeddings_go_to_v2_embed_with_cohere_fields_and_usage_from_billed_units() {
    let mock = keyed_mock().await;
    mock.set_behavior(
        "ce",
        Behavior::default().with_usage(12, 0).with_embedding_dims(4),
    );
    let gw = start_gateway(&format!(
        "{FAST_ROUTER}{}",
        cohere(
            &mock,
            "cohere-embed",
            "embed",
            "ce",
            "upstream_model = \"embed-english-v3.0\"\ninput_cost_per_mtok = 100.0"
        ),
    ));
    let r = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "embed", "input": ["first text", "second text"]}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["object"], "list");
    let data = r.body["data"].as_array().expect("data array");
    assert_eq!(data.len(), 2);
    for (k, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], k);
        let v: Vec<f64> = d["embedding"]
            .as_array()
            .expect("float vector")
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(v.len(), 4);
        for (i, x) in v.iter().enumerate() {
            let want = f64::from(embedding_value(k, i));
            assert!((x - want).abs() < 1e-6, "vector {k}[{i}]: {x} != {want}");
        }
    }
    assert_eq!(r.body["usage"]["prompt_tokens"], 12);
    assert_eq!(r.body["usage"]["total_tokens"], 12);
    assert_eq!(r.header("x-switchyard-deployment"), Some("cohere-embed"));
    // 12 * $100/M.
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.0012"));

    let seen = &mock.requests("ce")[0];
    assert_eq!(seen.path, "/ce/v2/embed");
    let auth = format!("Bearer {KEY}");
    assert_eq!(seen.header("authorization"), Some(auth.as_str()));
    assert_eq!(
        seen.json(),
        json!({"model": "embed-english-v3.0", "texts": ["first text", "second text"],
               "input_type": "search_document", "embedding_types": ["float"]})
    );

    // input_type `query` is Cohere's search_query; dimensions become output_dimension.
    let r = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "embed", "input": "a query", "input_type": "query", "dimensions": 3}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"][0]["embedding"].as_array().unwrap().len(), 3);
    assert_eq!(
        mock.requests("ce")[1].json(),
        json!({"model": "embed-english-v3.0", "texts": ["a query"],
               "input_type": "search_query", "embedding_types": ["float"], "output_dimension": 3})
    );
    gw.stop(true).await;
}
