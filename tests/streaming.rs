//! The commit rule for streams. Before the first meaningful upstream event, any failure is
//! retried or falls back invisibly; after it, a failure ends the stream with an error event and
//! no `[DONE]`, and counts against the deployment.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

/// `first` (primary, weight 1000, tried first) and `second`, both OpenAI-kind.
fn two_deployments(mock: &MockUpstream, first_kind: &str) -> String {
    let first_base = if first_kind == "anthropic" {
        anthropic_base(mock, "first")
    } else {
        openai_base(mock, "first")
    };
    format!(
        "{}{}{}",
        settings("num_retries = 1", ""),
        deployment("first", "m", first_kind, &first_base, "weight = 1000000"),
        deployment(
            "second",
            "m",
            "openai",
            &openai_base(mock, "second"),
            "weight = 1"
        ),
    )
}

async fn assert_invisible_retry(fault: Behavior, kind: &str) {
    let mock = mock().await;
    mock.push_behaviors("first", [fault.clone()]);
    mock.set_behavior("first", fault);
    mock.set_behavior("second", Behavior::text("Clean answer.").with_chunks(3));
    let gw = start_gateway(&two_deployments(&mock, kind));
    let s = chat_stream(&gw, &stream_request("m", true)).await;
    assert_openai_stream(&s, true);
    assert_eq!(
        s.content(),
        "Clean answer.",
        "nothing of the failed attempt reached the client"
    );
    assert_eq!(s.header("x-switchyard-deployment"), Some("second"));
    assert_eq!(s.header("x-switchyard-attempts"), Some("2"));
    assert!(mock.request_count("first") >= 1);
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_500_before_the_first_token_is_retried_invisibly() {
    assert_invisible_retry(Behavior::error(ErrorPreset::ServerError), "openai").await;
}

#[actix_web::test]
async fn an_anthropic_529_before_the_first_token_is_retried_invisibly() {
    assert_invisible_retry(Behavior::error(ErrorPreset::Overloaded), "anthropic").await;
}

#[actix_web::test]
async fn an_in_band_error_before_content_is_retried_invisibly() {
    assert_invisible_retry(
        Behavior::text("x").with_fault(Fault::InBandErrorBeforeContent),
        "anthropic",
    )
    .await;
    assert_invisible_retry(
        Behavior::text("x").with_fault(Fault::InBandErrorBeforeContent),
        "openai",
    )
    .await;
}

#[actix_web::test]
async fn a_stream_cut_before_any_content_is_retried_invisibly() {
    assert_invisible_retry(
        Behavior::text("lost").with_fault(Fault::CutStream { after_chunks: 0 }),
        "openai",
    )
    .await;
    assert_invisible_retry(
        Behavior::text("lost").with_fault(Fault::ResetMidBody { after_chunks: 0 }),
        "anthropic",
    )
    .await;
}

#[actix_web::test]
async fn a_silent_upstream_falls_back_after_the_first_token_timeout() {
    assert_invisible_retry(Behavior::text("never").with_fault(Fault::Hang), "openai").await;
    assert_invisible_retry(
        Behavior::text("never").with_fault(Fault::StallAfter { after_chunks: 0 }),
        "openai",
    )
    .await;
}

async fn assert_committed_failure(fault: Behavior, kind: &str) {
    let mock = mock().await;
    mock.set_behavior("first", fault.with_chunks(4));
    let gw = start_gateway(&two_deployments(&mock, kind));
    let s = chat_stream(&gw, &stream_request("m", true)).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("x-switchyard-deployment"), Some("first"));
    assert!(
        !s.content().is_empty(),
        "the committed content reached the client"
    );
    assert!(!s.ends_with_done(), "never a fake [DONE]: {}", s.raw);
    assert!(!s.events.contains(&Sse::Done));
    let err = s.error_event().expect("an error event ends the stream");
    assert!(err["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert_eq!(err["error"]["type"], "server_error");
    assert!(
        matches!(s.events.last(), Some(Sse::Json(v)) if v.get("error").is_some()),
        "the error is last"
    );
    assert_eq!(
        mock.request_count("second"),
        0,
        "no retry after the commit point"
    );
    // It counts against the deployment.
    let failures = |text: &str| -> f64 {
        ["server_error", "connect", "timeout"]
            .iter()
            .map(|o| {
                metric_in(
                    text,
                    "gateway_upstream_attempts_total",
                    &[("deployment", "first"), ("outcome", o)],
                )
            })
            .sum()
    };
    let text = metrics_until(&gw, |t| failures(t) > 0.0).await;
    assert_eq!(failures(&text), 1.0);
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_stream_cut_after_content_ends_with_an_error_event_and_no_done() {
    assert_committed_failure(
        Behavior::text("Partial answer that is cut")
            .with_fault(Fault::CutStream { after_chunks: 2 }),
        "openai",
    )
    .await;
    assert_committed_failure(
        Behavior::text("Partial answer that is cut")
            .with_fault(Fault::CutStream { after_chunks: 2 }),
        "anthropic",
    )
    .await;
}

#[actix_web::test]
async fn a_reset_after_content_ends_with_an_error_event_and_no_done() {
    assert_committed_failure(
        Behavior::text("Partial answer then reset")
            .with_fault(Fault::ResetMidBody { after_chunks: 2 }),
        "openai",
    )
    .await;
    assert_committed_failure(
        Behavior::text("Partial answer then reset")
            .with_fault(Fault::ResetMidBody { after_chunks: 2 }),
        "anthropic",
    )
    .await;
}

#[actix_web::test]
async fn a_stall_after_content_ends_with_an_error_event_after_the_idle_timeout() {
    assert_committed_failure(
        Behavior::text("Partial answer then silence")
            .with_fault(Fault::StallAfter { after_chunks: 2 }),
        "openai",
    )
    .await;
}

#[actix_web::test]
async fn invalid_json_events_are_skipped_and_counted() {
    let mock = mock().await;
    mock.set_behavior(
        "first",
        Behavior::text("Still fine.")
            .with_chunks(3)
            .with_fault(Fault::InvalidJsonEvent { after_chunks: 1 }),
    );
    let gw = start_gateway(&two_deployments(&mock, "openai"));
    let s = chat_stream(&gw, &stream_request("m", false)).await;
    assert_openai_stream(&s, false);
    assert_eq!(s.content(), "Still fine.");
    assert!(!s.raw.contains("not json"));
    let counted = metric_until(
        &gw,
        "gateway_stream_invalid_events_total",
        &[("deployment", "first")],
        1.0,
    )
    .await;
    assert_eq!(counted, 1.0);
    gw.stop(true).await;
}

#[actix_web::test]
async fn a_missing_done_after_the_finish_is_tolerated() {
    let mock = mock().await;
    let finish_without_done = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Done early.\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    );
    mock.set_behavior(
        "first",
        Behavior::error(ErrorPreset::Custom {
            status: 200,
            body: finish_without_done.to_owned(),
            headers: vec![("content-type".into(), "text/event-stream".into())],
        }),
    );
    let gw = start_gateway(&two_deployments(&mock, "openai"));
    let s = chat_stream(&gw, &stream_request("m", false)).await;
    assert_openai_stream(&s, false);
    assert_eq!(s.content(), "Done early.");
    assert_eq!(s.header("x-switchyard-deployment"), Some("first"));
    gw.stop(true).await;
}

/// An upstream that is slow to end its body after `[DONE]` (here 30 ms) must not leave the
/// client a window where its stream has ended but is not yet billed: the client's next request
/// would not find its spend. (Whether the connection is reused after such a delay depends on
/// the drain's 50 ms bound, so that is left to the test below, where the body ends at once.)
#[actix_web::test]
async fn when_the_clients_stream_ends_it_is_already_billed() {
    let mock = mock().await;
    mock.set_behavior(
        "",
        Behavior::text("Billed before the end.")
            .with_usage(12, 7)
            .with_end_delay(std::time::Duration::from_millis(30)),
    );
    let gw = start_gateway(&format!(
        "{}{}",
        settings("", ""),
        deployment("oa", "gpt-4o", "openai", &openai_base(&mock, ""), ""),
    ));
    for i in 1..=3 {
        let s = chat_stream(&gw, &stream_request("gpt-4o", false)).await;
        assert_openai_stream(&s, false);
        // Read at once, no polling.
        let text = metrics_text(&gw).await;
        let tokens = |direction| {
            metric_in(
                &text,
                "gateway_tokens_total",
                &[("deployment", "oa"), ("direction", direction)],
            )
        };
        assert_eq!(
            (tokens("input"), tokens("output")),
            (12.0 * f64::from(i), 7.0 * f64::from(i)),
            "stream {i} billed before its body ended"
        );
        assert_eq!(
            metric_in(
                &text,
                "gateway_upstream_attempts_total",
                &[("deployment", "oa"), ("outcome", "success")]
            ),
            f64::from(i)
        );
    }
    gw.stop(true).await;
}

/// awc returns a connection to its pool only when the body was read to its end; a stream
/// dropped at `[DONE]` / `message_stop` would cost every stream a new TCP connection.
#[actix_web::test]
async fn finished_streams_give_their_upstream_connection_back_for_the_next_request() {
    let mock = mock().await;
    let gw = start_gateway(&format!(
        "{}{}{}",
        settings("", ""),
        deployment("oa", "gpt-4o", "openai", &openai_base(&mock, "oa"), ""),
        deployment(
            "an",
            "claude",
            "anthropic",
            &anthropic_base(&mock, "an"),
            ""
        ),
    ));
    for (model, route) in [("gpt-4o", "oa"), ("claude", "an")] {
        for _ in 0..3 {
            let s = chat_stream(&gw, &stream_request(model, true)).await;
            assert_openai_stream(&s, true);
        }
        let peers: Vec<_> = mock.requests(route).iter().map(|r| r.peer).collect();
        assert_eq!(peers.len(), 3);
        assert!(peers[0].is_some());
        assert!(
            peers.iter().all(|p| *p == peers[0]),
            "{route}: one upstream connection for three streams, got {peers:?}"
        );
    }
    gw.stop(true).await;
}
