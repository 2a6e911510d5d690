//! Chat completions through an `anthropic`-kind deployment: the request is translated to the
//! Messages API and the answer (JSON or named-event stream) back to OpenAI's shape.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::json;

fn config(mock: &MockUpstream) -> String {
    format!(
        "{FAST_ROUTER}{}",
        deployment(
            "anthropic-main",
            "claude-sonnet",
            "anthropic",
            &anthropic_base(mock, ""),
            "upstream_model = \"claude-sonnet-4-5\"\napi_key = \"sk-ant-upstream\"\ndefault_max_tokens = 1000",
        )
    )
}

fn weather_request(stream: bool) -> serde_json::Value {
    json!({
        "model": "claude-sonnet",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "What's the weather in Paris?"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "tool_choice": "auto",
        "stream": stream,
        "stream_options": {"include_usage": true}
    })
}

#[actix_web::test]
async fn non_streamed_chat_is_translated_both_ways() {
    let mock = mock().await;
    mock.set_behavior(
        "",
        Behavior::text("Hello.")
            .with_model("claude-sonnet-4-5-20250929")
            .with_usage(412, 3)
            .with_cached_tokens(400),
    );
    let gw = start_gateway(&config(&mock));
    let r = chat(
        &gw,
        &json!({"model": "claude-sonnet", "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Say hello."}], "temperature": 0.2, "stop": ["END"], "user": "u-123"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    assert_eq!(r.body["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(r.body["choices"][0]["message"]["content"], "Hello.");
    assert_eq!(r.body["choices"][0]["finish_reason"], "stop");
    // The mock reports input_tokens = 12 and cache_read_input_tokens = 400 (Anthropic excludes
    // cache reads from input_tokens); OpenAI's prompt_tokens include them.
    assert_eq!(r.body["usage"]["prompt_tokens"], 412);
    assert_eq!(
        r.body["usage"]["prompt_tokens_details"]["cached_tokens"],
        400
    );
    assert_eq!(r.body["usage"]["completion_tokens"], 3);

    let seen = &mock.requests("")[0];
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some("sk-ant-upstream"));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(
        seen.json(),
        json!({"model": "claude-sonnet-4-5", "max_tokens": 1000, "system": "You are a terse assistant.",
               "messages": [{"role": "user", "content": "Say hello."}],
               "temperature": 0.2, "stop_sequences": ["END"], "metadata": {"user_id": "u-123"}})
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn streamed_chat_is_translated_into_openai_chunks() {
    let mock = mock().await;
    mock.set_behavior(
        "",
        Behavior::text("Hello there, friend.")
            .with_chunks(4)
            .with_usage(21, 4),
    );
    let gw = start_gateway(&config(&mock));
    for include_usage in [true, false] {
        let s = chat_stream(&gw, &stream_request("claude-sonnet", include_usage)).await;
        assert_openai_stream(&s, include_usage);
        assert_eq!(s.content(), "Hello there, friend.");
        assert_eq!(
            s.chunks()[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        if include_usage {
            assert_eq!(
                s.chunks().last().unwrap()["usage"],
                json!({"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25, "prompt_tokens_details": {"cached_tokens": 0}})
            );
        }
    }
    assert_eq!(mock.requests("")[0].json()["stream"], true);
    gw.stop(true).await;
}

#[actix_web::test]
async fn tool_calls_are_translated_non_streamed() {
    let mock = mock().await;
    mock.set_behavior(
        "",
        Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#),
    );
    let gw = start_gateway(&config(&mock));
    let r = chat(&gw, &weather_request(false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_openai_completion(&r.body);
    let msg = &r.body["choices"][0]["message"];
    assert_eq!(r.body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(msg["tool_calls"][0]["type"], "function");
    assert_eq!(msg["tool_calls"][0]["function"]["name"], "get_weather");
    let args: serde_json::Value = serde_json::from_str(
        msg["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args, json!({"city": "Paris"}));

    let sent = mock.requests("")[0].json();
    assert_eq!(sent["tools"][0]["name"], "get_weather");
    assert_eq!(
        sent["tools"][0]["input_schema"]["required"],
        json!(["city"])
    );
    assert_eq!(sent["tool_choice"], json!({"type": "auto"}));
    assert_eq!(sent["system"], "You are a terse assistant.");
    gw.stop(true).await;
}

#[actix_web::test]
async fn tool_calls_are_translated_streamed() {
    let mock = mock().await;
    mock.set_behavior(
        "",
        Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#).with_chunks(3),
    );
    let gw = start_gateway(&config(&mock));
    let s = chat_stream(&gw, &weather_request(true)).await;
    assert_openai_stream(&s, true);
    let (_, args) = assert_tool_call_stream(&s, "get_weather");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&args).unwrap(),
        json!({"city": "Paris"})
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_tool_result_conversation_is_sent_as_anthropic_blocks() {
    let mock = mock().await;
    let gw = start_gateway(&config(&mock));
    let r = chat(
        &gw,
        &json!({"model": "claude-sonnet", "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"}
        ], "tools": [{"type": "function", "function": {"name": "get_weather"}}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sent = mock.requests("")[0].json();
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C and sunny"}]}
        ])
    );
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_request_anthropic_cannot_express_is_a_clear_400() {
    let mock = mock().await;
    let gw = start_gateway(&config(&mock));
    let mut req = user_message("claude-sonnet", "hi");
    req["n"] = json!(3);
    let r = chat(&gw, &req).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["param"], "n");
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert_eq!(mock.request_count(""), 0);
    gw.stop(true).await;
}
