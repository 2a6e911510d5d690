//! Injected faults, in both formats, streaming and not.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use switchyard_loadtests::{Behavior, Fault, MockUpstream};

const ANTHROPIC_HEADERS: &[(&str, &str)] = &[("anthropic-version", "2023-06-01")];

async fn open_openai(mock: &MockUpstream, body: &Value) -> awc::ClientResponse {
    let url = format!("{}/v1/chat/completions", mock.url());
    open(&url, &[], body, Duration::from_secs(2))
        .await
        .expect("response headers")
}

async fn open_anthropic(mock: &MockUpstream, body: &Value) -> awc::ClientResponse {
    let url = format!("{}/v1/messages", mock.url());
    open(&url, ANTHROPIC_HEADERS, body, Duration::from_secs(2))
        .await
        .expect("response headers")
}

fn text(data: &[u8]) -> &str {
    std::str::from_utf8(data).expect("utf8")
}

/// Complete SSE events in `data` (a cut body may end inside one).
fn complete_events(data: &[u8]) -> Vec<Event> {
    let s = text(data);
    let end = s.rfind("\n\n").map_or(0, |i| i + 2);
    parse_sse(&s[..end])
}

fn openai_contents(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .skip(1) // role chunk
        .filter(|e| e.data != "[DONE]")
        .filter_map(|e| {
            e.json()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn anthropic_names(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e.name.as_deref().expect("named"))
        .collect()
}

#[actix_web::test]
async fn reset_mid_body_stream_sends_the_role_chunk_and_n_chunks_then_fails() {
    let mock = start_with(
        Behavior::text("abcd")
            .with_chunks(4)
            .with_fault(Fault::ResetMidBody { after_chunks: 2 }),
    )
    .await;

    let mut resp = open_openai(&mock, &openai_body(true, Some(true))).await;
    assert_eq!(resp.status(), 200);
    let (data, end) = read_chunks(&mut resp, Duration::from_secs(2)).await;
    assert!(
        matches!(end, BodyEnd::Failed(_)),
        "payload error expected: {end:?}"
    );
    let events = complete_events(&data);
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_eq!(openai_contents(&events), ["a", "b"]);

    let mut resp = open_anthropic(&mock, &anthropic_body(true)).await;
    let (data, end) = read_chunks(&mut resp, Duration::from_secs(2)).await;
    assert!(
        matches!(end, BodyEnd::Failed(_)),
        "payload error expected: {end:?}"
    );
    assert_eq!(
        anthropic_names(&complete_events(&data)),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta"
        ]
    );
}

#[actix_web::test]
async fn reset_mid_body_non_stream_sends_half_the_json_then_fails() {
    let mock =
        start_with(Behavior::default().with_fault(Fault::ResetMidBody { after_chunks: 0 })).await;
    let full = {
        let reference = start().await;
        post_openai(&reference, "", &openai_body(false, None))
            .await
            .body
    };
    let mut resp = open_openai(&mock, &openai_body(false, None)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some(full.len().to_string().as_str())
    );
    let (data, end) = read_chunks(&mut resp, Duration::from_secs(2)).await;
    assert!(
        matches!(end, BodyEnd::Failed(_)),
        "payload error expected: {end:?}"
    );
    assert_eq!(data.len(), full.len() / 2);
    assert!(resp.body().await.is_err() || data.len() < full.len());

    // The awc `body()` helper reports the same as a payload error.
    let url = format!("{}/v1/messages", mock.url());
    let mut resp = open(
        &url,
        ANTHROPIC_HEADERS,
        &anthropic_body(false),
        Duration::from_secs(2),
    )
    .await
    .expect("headers");
    assert!(resp.body().await.is_err());
}

#[actix_web::test]
async fn cut_stream_ends_cleanly_without_finish_or_done() {
    let mock = start_with(
        Behavior::text("abcd")
            .with_chunks(4)
            .with_fault(Fault::CutStream { after_chunks: 3 }),
    )
    .await;
    let a = post_openai(&mock, "", &openai_body(true, Some(true))).await;
    assert_eq!(a.status, 200);
    let events = parse_sse(a.text());
    assert_eq!(openai_contents(&events), ["a", "b", "c"]);
    assert_eq!(events.len(), 4);
    assert!(!a.text().contains("[DONE]"));
    assert!(!a.text().contains("finish_reason\":\"stop"));
    assert!(!a.text().contains("\"choices\":[]"));

    let a = post_anthropic(&mock, "", &anthropic_body(true)).await;
    assert_eq!(
        anthropic_names(&parse_sse(a.text())),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta"
        ]
    );
}

#[actix_web::test]
async fn cut_stream_non_stream_is_a_clean_but_truncated_json_body() {
    let mock =
        start_with(Behavior::default().with_fault(Fault::CutStream { after_chunks: 1 })).await;
    let a = post_openai(&mock, "", &openai_body(false, None)).await;
    assert_eq!(a.status, 200);
    assert!(serde_json::from_slice::<Value>(&a.body).is_err());
    assert!(a.text().starts_with("{\"id\":\"chatcmpl-mock0001\""));
}

#[actix_web::test]
async fn in_band_error_before_content_openai() {
    let mock = start_with(Behavior::default().with_fault(Fault::InBandErrorBeforeContent)).await;
    let a = post_openai(&mock, "", &openai_body(true, None)).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(
        a.text(),
        "data: {\"error\":{\"message\":\"The server is overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":\"overloaded\"}}\n\n"
    );
    // Non-stream: like ErrorPreset::Overloaded.
    let a = post_openai(&mock, "", &openai_body(false, None)).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["error"]["type"], "server_error");
}

#[actix_web::test]
async fn in_band_error_before_content_anthropic() {
    let mock = start_with(Behavior::default().with_fault(Fault::InBandErrorBeforeContent)).await;
    let a = post_anthropic(&mock, "", &anthropic_body(true)).await;
    assert_eq!(a.status, 200);
    let events = parse_sse(a.text());
    assert_eq!(anthropic_names(&events), ["message_start", "error"]);
    assert_eq!(
        events[1].data,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
    );
    let a = post_anthropic(&mock, "", &anthropic_body(false)).await;
    assert_eq!(a.status.as_u16(), 529);
    assert_eq!(a.json()["error"]["type"], "overloaded_error");
}

#[actix_web::test]
async fn stall_after_sends_n_chunks_then_nothing() {
    let mock = start_with(
        Behavior::text("abcd")
            .with_chunks(4)
            .with_fault(Fault::StallAfter { after_chunks: 1 }),
    )
    .await;
    let mut resp = open_openai(&mock, &openai_body(true, None)).await;
    let (data, end) = read_chunks(&mut resp, Duration::from_millis(250)).await;
    assert_eq!(end, BodyEnd::Stalled);
    let events = parse_sse(text(&data));
    assert_eq!(openai_contents(&events), ["a"]);

    let mut resp = open_anthropic(&mock, &anthropic_body(true)).await;
    let (data, end) = read_chunks(&mut resp, Duration::from_millis(250)).await;
    assert_eq!(end, BodyEnd::Stalled);
    assert_eq!(
        anthropic_names(&parse_sse(text(&data))),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta"
        ]
    );

    // Non-stream: headers and half the body, then nothing.
    let mut resp = open_openai(&mock, &openai_body(false, None)).await;
    let (data, end) = read_chunks(&mut resp, Duration::from_millis(250)).await;
    assert_eq!(end, BodyEnd::Stalled);
    assert!(!data.is_empty());

    // Stalled responses are not waited for when stopping.
    let t0 = Instant::now();
    mock.stop().await;
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
}

#[actix_web::test]
async fn invalid_json_event_is_inserted_then_the_stream_continues() {
    let mock = start_with(
        Behavior::text("abc")
            .with_chunks(3)
            .with_fault(Fault::InvalidJsonEvent { after_chunks: 1 }),
    )
    .await;
    let a = post_openai(&mock, "", &openai_body(true, None)).await;
    let events = parse_sse(a.text());
    // role, "a", broken, "b", "c", finish, [DONE]
    assert_eq!(events.len(), 7, "{events:#?}");
    assert_eq!(events[2].data, "{not json");
    assert!(serde_json::from_str::<Value>(&events[2].data).is_err());
    assert_eq!(events[3].json()["choices"][0]["delta"]["content"], "b");
    assert_eq!(events[6].data, "[DONE]");

    let a = post_anthropic(&mock, "", &anthropic_body(true)).await;
    let events = parse_sse(a.text());
    assert_eq!(events.len(), 3 + 1 + 1 + 2 + 3, "{events:#?}");
    assert_eq!(events[4].name.as_deref(), Some("content_block_delta"));
    assert_eq!(events[4].data, "{not json");
    assert_eq!(
        events.last().and_then(|e| e.name.as_deref()),
        Some("message_stop")
    );

    // Beyond the content: inserted just before the finish.
    mock.set_behavior(
        "",
        Behavior::text("ab")
            .with_chunks(2)
            .with_fault(Fault::InvalidJsonEvent { after_chunks: 99 }),
    );
    let a = post_openai(&mock, "", &openai_body(true, None)).await;
    let events = parse_sse(a.text());
    assert_eq!(events.len(), 6);
    assert_eq!(events[3].data, "{not json");

    // Non-stream: a 200 whose body is not JSON.
    let a = post_openai(&mock, "", &openai_body(false, None)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "{not json");
}

#[actix_web::test]
async fn hang_never_sends_headers() {
    let mock = start_with(Behavior::default().with_fault(Fault::Hang)).await;
    let url = format!("{}/v1/chat/completions", mock.url());
    let t0 = Instant::now();
    let err = open(
        &url,
        &[],
        &openai_body(false, None),
        Duration::from_millis(200),
    )
    .await
    .expect_err("no response");
    assert!(
        matches!(err, awc::error::SendRequestError::Timeout),
        "timeout expected: {err:?}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(200));
    let url = format!("{}/v1/messages", mock.url());
    let err = open(
        &url,
        ANTHROPIC_HEADERS,
        &anthropic_body(true),
        Duration::from_millis(150),
    )
    .await
    .expect_err("no response");
    assert!(matches!(err, awc::error::SendRequestError::Timeout));
    assert_eq!(mock.request_count(""), 2);

    let t0 = Instant::now();
    mock.stop().await;
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
}

#[actix_web::test]
async fn faults_wait_for_ttft_and_chunk_delay_too() {
    let mock = start_with(
        Behavior::text("abcd")
            .with_chunks(4)
            .with_ttft(Duration::from_millis(60))
            .with_chunk_delay(Duration::from_millis(30))
            .with_fault(Fault::CutStream { after_chunks: 3 }),
    )
    .await;
    let t0 = Instant::now();
    let a = post_openai(&mock, "", &openai_body(true, None)).await;
    assert!(t0.elapsed() >= Duration::from_millis(60 + 2 * 30));
    assert_eq!(openai_contents(&parse_sse(a.text())), ["a", "b", "c"]);
}

#[actix_web::test]
async fn end_delay_holds_the_body_open_after_the_last_event() {
    let mock = start_with(Behavior::text("ab").with_end_delay(Duration::from_secs(1))).await;
    let mut resp = open_openai(&mock, &openai_body(true, None)).await;
    // Everything, `[DONE]` included, arrives; then the body stays open.
    let (data, end) = read_chunks(&mut resp, Duration::from_millis(200)).await;
    assert!(matches!(end, BodyEnd::Stalled), "{end:?}");
    assert!(text(&data).ends_with("data: [DONE]\n\n"), "{}", text(&data));
    assert_eq!(openai_contents(&parse_sse(text(&data))), ["a", "b"]);
    // Until the delay has passed.
    let (rest, end) = read_chunks(&mut resp, Duration::from_secs(3)).await;
    assert!(matches!(end, BodyEnd::Complete), "{end:?}");
    assert!(rest.is_empty());
}
