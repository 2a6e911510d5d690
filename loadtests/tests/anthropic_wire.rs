//! Anthropic wire format of the mock, checked against providers.md §3 and the §9.2 vectors.

mod common;

use common::*;
use serde_json::json;
use switchyard_loadtests::{Behavior, Reply};

/// §9.2 text stream, verbatim.
const VECTOR_9_2_STREAM: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_01GwVecAnth0002","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":21,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type":"ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":4}}

event: message_stop
data: {"type":"message_stop"}

"#;

#[actix_web::test]
async fn text_stream_is_byte_for_byte_the_9_2_vector() {
    let mock = start_with(
        Behavior::text("Hello.")
            .with_chunks(2)
            .with_model("claude-sonnet-4-5-20250929")
            .with_usage(21, 4),
    )
    .await;
    let a = post_anthropic(&mock, "", &anthropic_body(true)).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(a.header("cache-control"), Some("no-cache"));
    assert_eq!(a.header("request-id"), Some("req_mock0001"));
    assert_eq!(a.header("x-request-id"), None);
    assert_eq!(
        a.text(),
        VECTOR_9_2_STREAM.replace("msg_01GwVecAnth0002", "msg_mock0001")
    );
}

#[actix_web::test]
async fn non_stream_text_has_the_message_shape() {
    let mock = start_with(
        Behavior::text("Let me check.")
            .with_model("claude-sonnet-4-5-20250929")
            .with_usage(412, 58)
            .with_cached_tokens(400),
    )
    .await;
    let a = post_anthropic(&mock, "", &anthropic_body(false)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("request-id"), Some("req_mock0001"));
    assert_eq!(
        a.json(),
        json!({
            "id": "msg_mock0001",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "Let me check."}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            // input_tokens excludes cache reads: 412 prompt tokens = 12 + 400 cached.
            "usage": {
                "input_tokens": 12,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 400,
                "output_tokens": 58
            }
        })
    );
}

#[actix_web::test]
async fn non_stream_tool_use_parses_the_arguments_into_input() {
    let mock = start_with(Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#)).await;
    let v = post_anthropic(&mock, "", &anthropic_body(false))
        .await
        .json();
    assert_eq!(
        v["content"],
        json!([{"type": "tool_use", "id": "call_mock0001", "name": "get_weather",
                "input": {"city": "Paris"}}])
    );
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["usage"]["output_tokens"], 4);
}

#[actix_web::test]
async fn non_stream_tool_use_with_invalid_arguments_sends_an_empty_input() {
    let mock = start_with(Behavior::tool_call("f", "{not json")).await;
    let v = post_anthropic(&mock, "", &anthropic_body(false))
        .await
        .json();
    assert_eq!(v["content"][0]["input"], json!({}));
    // OpenAI passes the text through untouched.
    let v = post_openai(&mock, "", &openai_body(false, None))
        .await
        .json();
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{not json"
    );
}

#[actix_web::test]
async fn tool_use_stream_follows_the_9_2_fragment() {
    let mock = start_with(
        Behavior {
            reply: Reply::ToolCall {
                id: "toolu_01GwVecTool0002".into(),
                name: "get_weather".into(),
                arguments: r#"{"city": "Paris"}"#.into(),
            },
            ..Behavior::default()
        }
        .with_chunks(2),
    )
    .await;
    let a = post_anthropic(&mock, "", &anthropic_body(true)).await;
    let events = parse_sse(a.text());
    let names: Vec<_> = events
        .iter()
        .map(|e| e.name.as_deref().expect("named"))
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for e in &events {
        assert_eq!(
            e.json()["type"],
            e.name.as_deref().expect("named"),
            "type = event name"
        );
    }
    assert_eq!(
        events[1].json(),
        json!({"type": "content_block_start", "index": 0, "content_block":
               {"type": "tool_use", "id": "toolu_01GwVecTool0002", "name": "get_weather", "input": {}}})
    );
    let fragments: Vec<_> = events[3..6]
        .iter()
        .map(|e| {
            let v = e.json();
            assert_eq!(v["index"], 0);
            assert_eq!(v["delta"]["type"], "input_json_delta");
            v["delta"]["partial_json"]
                .as_str()
                .expect("partial_json")
                .to_owned()
        })
        .collect();
    assert_eq!(fragments, ["", "{\"city\":", " \"Paris\"}"]);
    assert_eq!(
        events[7].json(),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
               "usage": {"output_tokens": 2}})
    );
}

#[actix_web::test]
async fn message_start_reports_input_and_cache_usage() {
    let mock = start_with(Behavior::default().with_usage(30, 7).with_cached_tokens(20)).await;
    let a = post_anthropic(&mock, "", &anthropic_body(true)).await;
    let start = parse_sse(a.text())[0].json();
    assert_eq!(
        start["message"]["usage"],
        json!({"input_tokens": 10, "cache_creation_input_tokens": 0,
               "cache_read_input_tokens": 20, "output_tokens": 1})
    );
    assert_eq!(start["message"]["content"], json!([]));
    assert_eq!(start["message"]["stop_reason"], json!(null));
}

#[actix_web::test]
async fn stream_options_do_not_change_anthropic_streams() {
    let mock = start().await;
    let plain = post_anthropic(&mock, "", &anthropic_body(true)).await;
    let mut body = anthropic_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let with = post_anthropic(&mock, "", &body).await;
    assert_eq!(plain.body, with.body);
}

#[actix_web::test]
async fn named_anthropic_route_is_served() {
    let mock = start().await;
    mock.set_behavior("claude", Behavior::text("hi from claude"));
    let v = post_anthropic(&mock, "claude", &anthropic_body(false))
        .await
        .json();
    assert_eq!(v["content"][0]["text"], "hi from claude");
    assert_eq!(mock.request_count("claude"), 1);
    assert_eq!(mock.request_count(""), 0);
}
