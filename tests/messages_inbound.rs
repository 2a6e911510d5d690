//! `POST /v1/messages`: Anthropic Messages requests in, routed like chat to any provider, the
//! answer (JSON, named-event stream, error) back in Anthropic's format.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::{json, Value};

/// `claude` served by an OpenAI deployment (route `oa`), falling back to an Anthropic one
/// (route `an`) in group `claude-backup`.
fn config(mock: &MockUpstream) -> String {
    format!(
        "{}{}{}\n[[fallbacks]]\nfrom = \"claude\"\nto = [\"claude-backup\"]\n",
        settings("num_retries = 0", ""),
        deployment(
            "oa",
            "claude",
            "openai",
            &openai_base(mock, "oa"),
            "upstream_model = \"gpt-4o-mini\"\ninput_cost_per_mtok = 1.0"
        ),
        deployment(
            "an",
            "claude-backup",
            "anthropic",
            &anthropic_base(mock, "an"),
            "upstream_model = \"claude-sonnet-4-5\""
        ),
    )
}

fn weather(stream: bool) -> Value {
    json!({
        "model": "claude",
        "max_tokens": 256,
        "system": "You are a terse assistant.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "What's the weather in Paris?"}]}],
        "tools": [{"name": "get_weather", "description": "Get current weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
        "tool_choice": {"type": "auto"},
        "stream": stream
    })
}

/// Named events of an Anthropic stream: (event, data).
fn events(raw: &str) -> Vec<(String, Value)> {
    raw.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            let v: Value =
                serde_json::from_str(&data).unwrap_or_else(|_| panic!("event data is JSON: {e}"));
            assert_eq!(v["type"], name.as_str(), "event name matches its type: {e}");
            (name, v)
        })
        .collect()
}

#[actix_web::test]
async fn a_messages_request_is_served_by_an_openai_deployment() {
    let mock = mock().await;
    mock.set_behavior("oa", Behavior::text("Hello.").with_usage(21, 4));
    let gw = start_gateway(&config(&mock));
    let r = post(
        &gw,
        "/v1/messages",
        &json!({"model": "claude", "max_tokens": 64, "system": "You are a terse assistant.",
            "messages": [{"role": "user", "content": "Say hello."}], "temperature": 0.2,
            "stop_sequences": ["END"], "metadata": {"user_id": "u-123"}}),
        &[("x-api-key", "anything")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["type"], "message");
    assert_eq!(r.body["role"], "assistant");
    assert_eq!(r.body["model"], "claude");
    assert_eq!(
        r.body["content"],
        json!([{"type": "text", "text": "Hello."}])
    );
    assert_eq!(r.body["stop_reason"], "end_turn");
    assert_eq!(r.body["usage"]["input_tokens"], 21);
    assert_eq!(r.body["usage"]["output_tokens"], 4);
    assert!(r.body["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(r.header("x-switchyard-deployment"), Some("oa"));
    assert_eq!(r.header("x-switchyard-cost-usd"), Some("0.000021"));

    // What went upstream is an OpenAI chat request with the same meaning.
    let sent = mock.requests("oa")[0].json();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "You are a terse assistant."},
               {"role": "user", "content": "Say hello."}])
    );
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(sent["stop"], json!(["END"]));
    assert_eq!(sent["user"], "u-123");
    assert!(
        mock.requests("oa")[0].header("x-api-key").is_none(),
        "the client's key stays here"
    );
}

#[actix_web::test]
async fn a_tool_call_comes_back_as_a_tool_use_block() {
    let mock = mock().await;
    mock.set_behavior(
        "oa",
        Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#),
    );
    let gw = start_gateway(&config(&mock));
    let r = post(&gw, "/v1/messages", &weather(false), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["stop_reason"], "tool_use");
    let block = &r.body["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["name"], "get_weather");
    assert_eq!(block["input"], json!({"city": "Paris"}));
    let sent = mock.requests("oa")[0].json();
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(sent["tool_choice"], "auto");
}

#[actix_web::test]
async fn a_stream_is_answered_with_anthropic_events() {
    let mock = mock().await;
    mock.set_behavior(
        "oa",
        Behavior::text("Hello.").with_chunks(2).with_usage(21, 4),
    );
    let gw = start_gateway(&config(&mock));
    let mut body = weather(true);
    body["tools"] = json!([]);
    body.as_object_mut().unwrap().remove("tool_choice");
    let (status, headers, raw) = post_text(&gw, "/v1/messages", &body).await;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let ev = events(&raw);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let text: String = ev
        .iter()
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello.");
    let delta = &ev[5].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 4);
    assert_eq!(delta["usage"]["input_tokens"], 21);
    // The gateway asked the upstream for usage so the client gets it.
    assert_eq!(
        mock.requests("oa")[0].json()["stream_options"]["include_usage"],
        true
    );
}

#[actix_web::test]
async fn a_streamed_tool_call_is_a_tool_use_block_with_json_deltas() {
    let mock = mock().await;
    mock.set_behavior(
        "oa",
        Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#).with_chunks(2),
    );
    let gw = start_gateway(&config(&mock));
    let (status, _, raw) = post_text(&gw, "/v1/messages", &weather(true)).await;
    assert_eq!(status, 200, "{raw}");
    let ev = events(&raw);
    let start = ev
        .iter()
        .find(|(n, v)| n == "content_block_start" && v["content_block"]["type"] == "tool_use")
        .expect("a tool_use block");
    assert_eq!(start.1["content_block"]["name"], "get_weather");
    let json: String = ev
        .iter()
        .filter_map(|(_, v)| v["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(json, r#"{"city":"Paris"}"#);
    let delta = ev.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
    assert_eq!(ev.last().unwrap().0, "message_stop");
}

#[actix_web::test]
async fn a_failing_provider_falls_back_to_another_format_invisibly() {
    let mock = mock().await;
    mock.set_behavior("oa", Behavior::error(ErrorPreset::Overloaded));
    mock.set_behavior("an", Behavior::text("From Claude.").with_usage(30, 5));
    let gw = start_gateway(&config(&mock));
    let r = post(&gw, "/v1/messages", &weather(false), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-switchyard-deployment"), Some("an"));
    assert_eq!(r.header("x-switchyard-model-group"), Some("claude-backup"));
    assert_eq!(r.body["content"][0]["text"], "From Claude.");
    assert_eq!(mock.request_count("oa"), 1);
    // The Anthropic upstream got a real Messages body.
    let sent = mock.requests("an")[0].json();
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["system"], "You are a terse assistant.");
    assert_eq!(
        sent["tools"][0]["input_schema"]["required"],
        json!(["city"])
    );
}

#[actix_web::test]
async fn errors_use_the_anthropic_envelope() {
    let mock = mock().await;
    mock.set_behavior("oa", Behavior::error(ErrorPreset::Overloaded));
    mock.set_behavior("an", Behavior::error(ErrorPreset::Overloaded));
    let gw = start_gateway(&config(&mock));

    let r = post(
        &gw,
        "/v1/messages",
        &json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]}),
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["type"], "error");
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens"),
        "{}",
        r.body
    );

    let r = post(&gw, "/v1/messages", &weather(false), &[]).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.body["type"], "error");
    assert_eq!(r.body["error"]["type"], "api_error");

    let mut unknown = weather(false);
    unknown["model"] = json!("nope");
    let r = post(&gw, "/v1/messages", &unknown, &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["type"], "not_found_error");
}
