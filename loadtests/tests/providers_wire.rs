//! Azure, Bedrock, Gemini / Vertex and Cohere chat formats of the mock, over HTTP, checked
//! against providers.md §2, §4, §5, §6 and the §9 vectors.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use switchyard_loadtests::mock::eventstream::{decode_frames, Frame};
use switchyard_loadtests::{Behavior, ErrorPreset, Fault, MockConfig, MockUpstream, Reply};

const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1%3A0";

fn azure_url(mock: &MockUpstream, route: &str, deployment: &str) -> String {
    format!(
        "{}/openai/deployments/{deployment}/chat/completions?api-version=2024-10-21",
        mock.route_url(route)
    )
}

fn bedrock_url(mock: &MockUpstream, route: &str, action: &str) -> String {
    format!("{}/model/{HAIKU}/{action}", mock.route_url(route))
}

fn gemini_url(mock: &MockUpstream, route: &str, method: &str) -> String {
    format!(
        "{}/v1beta/models/gemini-2.5-flash:{method}",
        mock.route_url(route)
    )
}

fn bedrock_body() -> Value {
    json!({"messages":[{"role":"user","content":[{"text":"Say hello."}]}],
           "inferenceConfig":{"maxTokens":64}})
}

fn gemini_body() -> Value {
    json!({"contents":[{"role":"user","parts":[{"text":"Say hello."}]}]})
}

fn cohere_body(stream: bool) -> Value {
    json!({"model":"command-r-plus","messages":[{"role":"user","content":"Say hello."}],
           "stream": stream})
}

async fn post(url: &str, body: &Value) -> Answer {
    post_raw(url, &[], body.to_string()).await
}

fn weather() -> Behavior {
    Behavior {
        reply: Reply::ToolCall {
            id: "tooluse_GwVec0001".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        },
        ..Behavior::default()
    }
    .with_chunks(2)
}

// === Azure ===

#[actix_web::test]
async fn azure_non_stream_adds_filter_results_and_names_the_model() {
    let mock = start_with(Behavior::text("Hello.").with_model("gpt-4o-2024-08-06")).await;
    let a = post(
        &azure_url(&mock, "", "my-gpt4o"),
        &json!({"messages":[{"role":"user","content":"hi"}]}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("x-request-id"), Some("req_mock0001"));
    let v = a.json();
    assert_eq!(v["model"], "gpt-4o-2024-08-06");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let safe = json!({"filtered": false, "severity": "safe"});
    assert_eq!(
        v["prompt_filter_results"],
        json!([{"prompt_index": 0, "content_filter_results":
            {"hate": safe, "self_harm": safe, "sexual": safe, "violence": safe}}])
    );
    assert_eq!(v["choices"][0]["content_filter_results"]["violence"], safe);
    assert_eq!(mock.request_count(""), 1);
}

#[actix_web::test]
async fn azure_stream_starts_with_an_empty_choices_prompt_filter_chunk() {
    let mock = start_with(Behavior::text("Hello.").with_chunks(2).with_usage(9, 3)).await;
    let a = post(&azure_url(&mock, "az", "d"), &openai_body(true, Some(true))).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let events = parse_sse(a.text());
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    let first = events[0].json();
    assert_eq!(first["choices"], json!([]));
    assert_eq!(first["id"], "");
    assert_eq!(first["usage"], Value::Null);
    assert!(
        first.get("usage").is_some(),
        "include_usage: usage is null, not absent"
    );
    assert_eq!(first["prompt_filter_results"][0]["prompt_index"], 0);
    let role = events[1].json();
    assert_eq!(
        role["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(role["choices"][0]["content_filter_results"], json!({}));
    let texts: Vec<String> = events[2..4]
        .iter()
        .map(|e| {
            let v = e.json();
            assert_eq!(
                v["choices"][0]["content_filter_results"]["hate"]["severity"],
                "safe"
            );
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(texts, ["Hel", "lo."]);
    assert_eq!(events[4].json()["choices"][0]["finish_reason"], "stop");
    let usage = events[5].json();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 12);
    // Without include_usage the filter chunk has no usage key.
    let a = post(&azure_url(&mock, "az", "d"), &openai_body(true, None)).await;
    let first = parse_sse(a.text())[0].json();
    assert!(first.get("usage").is_none());
}

#[actix_web::test]
async fn azure_paths_need_api_version_or_a_model_on_v1() {
    let mock = start().await;
    let url = format!("{}/openai/deployments/d/chat/completions", mock.url());
    let a = post(&url, &openai_body(false, None)).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["param"], "api-version");
    let v1 = format!("{}/openai/v1/chat/completions", mock.route_url("az"));
    let a = post(&v1, &json!({"messages":[{"role":"user","content":"hi"}]})).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["param"], "model");
    let a = post(&v1, &openai_body(false, None)).await;
    assert_eq!(a.status, 200);
    assert!(a.json()["prompt_filter_results"].is_array());
    assert_eq!(mock.request_count("az"), 2);
}

#[actix_web::test]
async fn azure_errors_rate_limit_headers_and_content_filter_body() {
    let mock = start_with(Behavior::error(ErrorPreset::RateLimited {
        retry_after: Some(7),
    }))
    .await;
    let a = post(&azure_url(&mock, "", "d"), &openai_body(true, None)).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after"), Some("7"));
    assert_eq!(a.header("retry-after-ms"), Some("7000"));
    let v = a.json();
    assert_eq!(v["error"]["code"], "429");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Please retry after 7 seconds"));

    mock.set_behavior("", Behavior::error(ErrorPreset::ContentFiltered));
    let a = post(&azure_url(&mock, "", "d"), &openai_body(false, None)).await;
    assert_eq!(a.status, 400);
    let v = a.json();
    assert_eq!(v["error"]["code"], "content_filter");
    assert_eq!(v["error"]["param"], "prompt");
    assert_eq!(v["error"]["type"], Value::Null);
    assert_eq!(v["error"]["status"], 400);
    assert_eq!(
        v["error"]["innererror"]["code"],
        "ResponsibleAIPolicyViolation"
    );
    // OpenAI's content policy signal for the same behaviour.
    let a = post_openai(&mock, "", &openai_body(false, None)).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["code"], "content_policy_violation");

    mock.set_behavior("", Behavior::error(ErrorPreset::ContextLength));
    let a = post(&azure_url(&mock, "", "d"), &openai_body(false, None)).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["code"], "context_length_exceeded");
}

#[actix_web::test]
async fn azure_takes_the_key_as_api_key_or_bearer() {
    let mock = MockUpstream::start(MockConfig {
        require_api_key: Some("k1".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let url = azure_url(&mock, "", "d");
    let body = openai_body(false, None).to_string();
    for (headers, status) in [
        (vec![("api-key", "k1")], 200),
        (vec![("authorization", "Bearer k1")], 200),
        (vec![("api-key", "nope")], 401),
        (vec![], 401),
    ] {
        let a = post_raw(&url, &headers, body.clone()).await;
        assert_eq!(a.status, status, "{headers:?}");
        if status == 401 {
            assert_eq!(a.json()["error"]["code"], "401");
        }
    }
}

// === Bedrock ===

#[actix_web::test]
async fn bedrock_converse_matches_the_9_4_response() {
    let mock = start_with(Behavior::text("Hello.").with_usage(21, 4)).await;
    let a = post(&bedrock_url(&mock, "", "converse"), &bedrock_body()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(
        a.header("x-amzn-requestid"),
        Some("3f0d6a52-6a7e-4b7d-9a51-0c1d2e3f4a5b")
    );
    assert_eq!(
        a.json(),
        json!({"output":{"message":{"role":"assistant","content":[{"text":"Hello."}]}},
               "stopReason":"end_turn","usage":{"inputTokens":21,"outputTokens":4,"totalTokens":25},
               "metrics":{"latencyMs":0}})
    );
    // Cached tokens are reported apart from inputTokens (§4.5).
    mock.set_behavior(
        "",
        Behavior::text("x")
            .with_usage(100, 1)
            .with_cached_tokens(60),
    );
    let v = post(&bedrock_url(&mock, "", "converse"), &bedrock_body())
        .await
        .json();
    assert_eq!(v["usage"]["inputTokens"], 40);
    assert_eq!(v["usage"]["cacheReadInputTokens"], 60);
    assert_eq!(v["usage"]["totalTokens"], 101);
}

fn frame_json(f: &Frame) -> Value {
    serde_json::from_slice(&f.payload).expect("frame payload is JSON")
}

#[actix_web::test]
async fn bedrock_converse_stream_is_the_9_4_tool_transcript_in_frames() {
    let mock = start_with(weather().with_usage(380, 42)).await;
    let a = post(
        &bedrock_url(&mock, "br", "converse-stream"),
        &bedrock_body(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type"),
        Some("application/vnd.amazon.eventstream")
    );
    assert!(a.header("x-amzn-requestid").is_some());
    let frames = decode_frames(&a.body).expect("valid frames and CRCs");
    for f in &frames {
        assert_eq!(f.header(":message-type"), Some("event"));
        assert_eq!(f.header(":content-type"), Some("application/json"));
    }
    let types: Vec<_> = frames
        .iter()
        .map(|f| f.header(":event-type").unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "messageStart",
            "contentBlockStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    let payloads: Vec<Value> = frames.iter().map(frame_json).collect();
    assert_eq!(payloads[0], json!({"role":"assistant"}));
    assert_eq!(
        payloads[1],
        json!({"contentBlockIndex":0,"start":{"toolUse":{"toolUseId":"tooluse_GwVec0001","name":"get_weather"}}})
    );
    assert_eq!(
        payloads[2],
        json!({"contentBlockIndex":0,"delta":{"toolUse":{"input":"{\"city\":"}}})
    );
    assert_eq!(
        payloads[3],
        json!({"contentBlockIndex":0,"delta":{"toolUse":{"input":"\"Paris\"}"}}})
    );
    assert_eq!(payloads[4], json!({"contentBlockIndex":0}));
    assert_eq!(payloads[5], json!({"stopReason":"tool_use"}));
    assert_eq!(
        payloads[6]["usage"],
        json!({"inputTokens":380,"outputTokens":42,"totalTokens":422})
    );
    assert_eq!(mock.request_count("br"), 1);
}

#[actix_web::test]
async fn bedrock_text_stream_faults_and_in_band_exception() {
    let mock = start_with(Behavior::text("Hello.").with_chunks(2)).await;
    let url = bedrock_url(&mock, "", "converse-stream");
    let frames = decode_frames(&post(&url, &bedrock_body()).await.body).unwrap();
    let deltas: Vec<Value> = frames
        .iter()
        .filter(|f| f.header(":event-type") == Some("contentBlockDelta"))
        .map(frame_json)
        .collect();
    assert_eq!(deltas[0]["delta"]["text"], "Hel");
    assert_eq!(deltas[1]["delta"]["text"], "lo.");

    mock.set_behavior(
        "",
        Behavior::text("x").with_fault(Fault::InBandErrorBeforeContent),
    );
    let a = post(&url, &bedrock_body()).await;
    assert_eq!(a.status, 200);
    let frames = decode_frames(&a.body).unwrap();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].header(":event-type"), Some("messageStart"));
    assert_eq!(frames[1].header(":message-type"), Some("exception"));
    assert_eq!(
        frames[1].header(":exception-type"),
        Some("serviceUnavailableException")
    );
    assert!(frame_json(&frames[1])["message"].is_string());

    mock.set_behavior(
        "",
        Behavior::text("abcd").with_fault(Fault::InvalidJsonEvent { after_chunks: 1 }),
    );
    let frames = decode_frames(&post(&url, &bedrock_body()).await.body).unwrap();
    assert_eq!(frames[2].payload, b"{not json");
    assert_eq!(frames[2].header(":event-type"), Some("contentBlockDelta"));

    mock.set_behavior(
        "",
        Behavior::text("abcd").with_fault(Fault::CutStream { after_chunks: 2 }),
    );
    let frames = decode_frames(&post(&url, &bedrock_body()).await.body).unwrap();
    assert_eq!(frames.len(), 3, "messageStart and two deltas");
}

#[actix_web::test]
async fn bedrock_errors_carry_the_type_header() {
    let cases = [
        (
            ErrorPreset::RateLimited {
                retry_after: Some(3),
            },
            429,
            "ThrottlingException",
        ),
        (ErrorPreset::ContextLength, 400, "ValidationException"),
        (ErrorPreset::Unauthorized, 403, "AccessDeniedException"),
        (ErrorPreset::ServerError, 500, "InternalServerException"),
        (ErrorPreset::Overloaded, 503, "ServiceUnavailableException"),
        (
            ErrorPreset::QuotaExhausted,
            400,
            "ServiceQuotaExceededException",
        ),
    ];
    let mock = start().await;
    for (preset, status, kind) in cases {
        mock.set_behavior("", Behavior::error(preset));
        for action in ["converse", "converse-stream"] {
            let a = post(&bedrock_url(&mock, "", action), &bedrock_body()).await;
            assert_eq!(a.status, status, "{kind}");
            assert_eq!(a.header("content-type"), Some("application/json"));
            assert_eq!(
                a.header("x-amzn-errortype"),
                Some(
                    format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/").as_str()
                )
            );
            assert!(a.header("x-amzn-requestid").is_some());
            assert!(a.header("retry-after").is_none());
            let v = a.json();
            assert!(v["message"].is_string());
            if kind == "ValidationException" {
                assert_eq!(v["message"], "Input is too long for requested model.");
            }
        }
    }
}

#[actix_web::test]
async fn content_filtered_is_a_200_for_bedrock_anthropic_and_gemini() {
    let mock = start_with(Behavior::error(ErrorPreset::ContentFiltered)).await;
    let v = post(&bedrock_url(&mock, "", "converse"), &bedrock_body())
        .await
        .json();
    assert_eq!(v["stopReason"], "guardrail_intervened");
    assert!(v["output"]["message"]["content"][0]["text"].is_string());
    let frames = decode_frames(
        &post(&bedrock_url(&mock, "", "converse-stream"), &bedrock_body())
            .await
            .body,
    )
    .unwrap();
    let stop = frames
        .iter()
        .find(|f| f.header(":event-type") == Some("messageStop"))
        .unwrap();
    assert_eq!(frame_json(stop)["stopReason"], "guardrail_intervened");

    let a = post_anthropic(&mock, "", &anthropic_body(false)).await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(v["stop_reason"], "refusal");
    assert_eq!(v["content"], json!([]));
    let a = post_anthropic(&mock, "", &anthropic_body(true)).await;
    let names: Vec<_> = parse_sse(a.text())
        .into_iter()
        .map(|e| e.name.unwrap())
        .collect();
    assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
    assert!(a.text().contains(r#""stop_reason":"refusal""#));

    let a = post(&gemini_url(&mock, "", "generateContent"), &gemini_body()).await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(v["promptFeedback"]["blockReason"], "SAFETY");
    assert!(v.get("candidates").is_none());
    let a = post(
        &gemini_url(&mock, "", "streamGenerateContent?alt=sse"),
        &gemini_body(),
    )
    .await;
    let events = gemini_events(a.text());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["promptFeedback"]["blockReason"], "SAFETY");
}

/// `Authorization` for SigV4 (a second, test-local implementation of §4.2).
fn sign(host: &str, path: &str, body: &[u8], akid: &str, secret: &str, amz_date: &str) -> String {
    fn hmac(key: &[u8], data: &str) -> Vec<u8> {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        m.update(data.as_bytes());
        m.finalize().into_bytes().to_vec()
    }
    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
    let uri = path.replace('%', "%25");
    let date = &amz_date[..8];
    let creq = format!(
        "POST\n{uri}\n\ncontent-type:application/json\nhost:{host}\nx-amz-date:{amz_date}\n\n\
         content-type;host;x-amz-date\n{}",
        hex(&Sha256::digest(body))
    );
    let scope = format!("{date}/us-east-1/bedrock/aws4_request");
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(creq.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), date);
    for part in ["us-east-1", "bedrock", "aws4_request"] {
        key = hmac(&key, part);
    }
    format!(
        "AWS4-HMAC-SHA256 Credential={akid}/{scope}, SignedHeaders=content-type;host;x-amz-date, \
         Signature={}",
        hex(&hmac(&key, &sts))
    )
}

fn amz_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[actix_web::test]
async fn bedrock_verifies_sigv4_when_credentials_are_set() {
    let (akid, secret) = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
    let mock = MockUpstream::start(MockConfig {
        aws_credentials: Some((akid.into(), secret.into())),
        require_api_key: Some("unused-for-bedrock".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let host = mock.addr().to_string();
    let path = format!("/br/model/{HAIKU}/converse");
    let url = format!("{}{path}", mock.url());
    let body = bedrock_body().to_string();
    let date = amz_now();
    let good = sign(&host, &path, body.as_bytes(), akid, secret, &date);
    let a = post_raw(
        &url,
        &[("x-amz-date", &date), ("authorization", &good)],
        body.clone(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());

    let expect = |a: &Answer, kind: &str| {
        assert_eq!(a.status, 403, "{}", a.text());
        let t = a.header("x-amzn-errortype").unwrap();
        assert!(t.starts_with(&format!("{kind}:")), "{t}");
        assert!(a.json()["message"].is_string());
    };
    let a = post_raw(&url, &[("x-amz-date", &date)], body.clone()).await;
    expect(&a, "MissingAuthenticationTokenException");
    let other = sign(&host, &path, body.as_bytes(), "AKIDOTHER", secret, &date);
    let a = post_raw(
        &url,
        &[("x-amz-date", &date), ("authorization", &other)],
        body.clone(),
    )
    .await;
    expect(&a, "UnrecognizedClientException");
    let wrong = sign(&host, &path, body.as_bytes(), akid, "not-the-secret", &date);
    let a = post_raw(
        &url,
        &[("x-amz-date", &date), ("authorization", &wrong)],
        body.clone(),
    )
    .await;
    expect(&a, "InvalidSignatureException");
    // Signed with a single-encoded path: the classic bug.
    let single = sign(
        &host,
        &path.replace("%3A", ":"),
        body.as_bytes(),
        akid,
        secret,
        &date,
    );
    let a = post_raw(
        &url,
        &[("x-amz-date", &date), ("authorization", &single)],
        body.clone(),
    )
    .await;
    expect(&a, "InvalidSignatureException");
    let old = "20250101T000000Z";
    let stale = sign(&host, &path, body.as_bytes(), akid, secret, old);
    let a = post_raw(
        &url,
        &[("x-amz-date", old), ("authorization", &stale)],
        body.clone(),
    )
    .await;
    expect(&a, "InvalidSignatureException");
    assert!(a.json()["message"].as_str().unwrap().contains("expired"));
    // Other formats still use require_api_key.
    let a = post_openai(&mock, "", &openai_body(false, None)).await;
    assert_eq!(a.status, 401);
}

#[actix_web::test]
async fn bedrock_api_key_as_bearer_without_aws_credentials() {
    let mock = MockUpstream::start(MockConfig {
        require_api_key: Some("bk".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let url = bedrock_url(&mock, "", "converse");
    let body = bedrock_body().to_string();
    let a = post_raw(&url, &[("authorization", "Bearer bk")], body.clone()).await;
    assert_eq!(a.status, 200);
    let a = post_raw(&url, &[("authorization", "Bearer no")], body.clone()).await;
    assert_eq!(a.status, 403);
    assert!(a
        .header("x-amzn-errortype")
        .unwrap()
        .starts_with("UnrecognizedClientException:"));
}

#[actix_web::test]
async fn bedrock_validation_errors_are_validation_exceptions() {
    let mock = start().await;
    let a = post(
        &bedrock_url(&mock, "", "converse"),
        &json!({"messages": []}),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(a
        .header("x-amzn-errortype")
        .unwrap()
        .starts_with("ValidationException:"));
    let a = post_raw(&bedrock_url(&mock, "", "converse"), &[], "{oops").await;
    assert_eq!(a.status, 400);
    assert!(a.json()["message"]
        .as_str()
        .unwrap()
        .starts_with("Malformed input request"));
}

// === Gemini / Vertex ===

/// Splits a Gemini SSE body: every line ends CRLF, events end with a blank line, no `[DONE]`.
fn gemini_events(body: &str) -> Vec<Value> {
    assert!(body.ends_with("\r\n\r\n"), "{body:?}");
    let bytes = body.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            assert_eq!(bytes[i - 1], b'\r', "bare LF at {i}: {body:?}");
        }
    }
    body.split("\r\n\r\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e.strip_prefix("data: ").expect("one data line per event");
            assert!(!data.contains('\r') && !data.contains('\n'));
            assert_ne!(data, "[DONE]");
            serde_json::from_str(data).expect("event is JSON")
        })
        .collect()
}

#[actix_web::test]
async fn gemini_tool_call_matches_the_9_3_response() {
    let mock = start_with(weather().with_model("gemini-2.5-flash").with_usage(41, 6)).await;
    let a = post(&gemini_url(&mock, "", "generateContent"), &gemini_body()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.header("content-type"),
        Some("application/json; charset=UTF-8")
    );
    let v = a.json();
    assert_eq!(
        v["candidates"],
        json!([{"content":{"role":"model","parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}},
                "thoughtSignature":"c2lnLW1vY2s="}]},"finishReason":"STOP","index":0}])
    );
    assert_eq!(
        v["usageMetadata"],
        json!({"promptTokenCount":41,"candidatesTokenCount":6,"totalTokenCount":47,
               "promptTokensDetails":[{"modality":"TEXT","tokenCount":41}]})
    );
    assert_eq!(v["modelVersion"], "gemini-2.5-flash");
    assert!(v["responseId"].is_string());
}

#[actix_web::test]
async fn gemini_stream_is_crlf_framed_with_running_usage() {
    let mock = start_with(Behavior::text("Hello.").with_chunks(2).with_usage(9, 3)).await;
    let a = post(
        &gemini_url(&mock, "g", "streamGenerateContent?alt=sse"),
        &gemini_body(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let events = gemini_events(a.text());
    assert_eq!(events.len(), 3);
    let text = |v: &Value| v["candidates"][0]["content"]["parts"][0]["text"].clone();
    assert_eq!(text(&events[0]), "Hel");
    assert_eq!(text(&events[1]), "lo.");
    assert!(events[0]["candidates"][0].get("finishReason").is_none());
    assert_eq!(events[0]["usageMetadata"]["candidatesTokenCount"], 1);
    assert_eq!(events[1]["usageMetadata"]["candidatesTokenCount"], 3);
    assert_eq!(events[2]["candidates"][0]["finishReason"], "STOP");
    assert_eq!(
        events[2]["usageMetadata"],
        json!({"promptTokenCount":9,"candidatesTokenCount":3,"totalTokenCount":12,
               "promptTokensDetails":[{"modality":"TEXT","tokenCount":9}]})
    );
    // A tool call arrives whole in one event.
    mock.set_behavior("g", weather());
    let a = post(
        &gemini_url(&mock, "g", "streamGenerateContent?alt=sse"),
        &gemini_body(),
    )
    .await;
    let events = gemini_events(a.text());
    assert_eq!(events.len(), 2);
    let part = &events[0]["candidates"][0]["content"]["parts"][0];
    assert_eq!(part["functionCall"]["args"], json!({"city":"Paris"}));
    assert_eq!(part["thoughtSignature"], "c2lnLW1vY2s=");
    assert_eq!(events[1]["candidates"][0]["finishReason"], "STOP");
    // Without alt=sse: 400.
    let a = post(
        &gemini_url(&mock, "g", "streamGenerateContent"),
        &gemini_body(),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["status"], "INVALID_ARGUMENT");
}

#[actix_web::test]
async fn gemini_faults_and_errors() {
    let mock = start_with(Behavior::error(ErrorPreset::RateLimited {
        retry_after: Some(27),
    }))
    .await;
    let a = post(&gemini_url(&mock, "", "generateContent"), &gemini_body()).await;
    assert_eq!(a.status, 429);
    assert_eq!(
        a.text(),
        r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"27s"}]}}"#
    );
    for (preset, code, status) in [
        (ErrorPreset::Overloaded, 503, "UNAVAILABLE"),
        (ErrorPreset::ServerError, 500, "INTERNAL"),
        (ErrorPreset::ContextLength, 400, "INVALID_ARGUMENT"),
        (ErrorPreset::Unauthorized, 400, "INVALID_ARGUMENT"),
        (ErrorPreset::QuotaExhausted, 429, "RESOURCE_EXHAUSTED"),
    ] {
        mock.set_behavior("", Behavior::error(preset));
        let a = post(
            &gemini_url(&mock, "", "streamGenerateContent?alt=sse"),
            &gemini_body(),
        )
        .await;
        assert_eq!(a.status.as_u16(), code);
        let v = a.json();
        assert_eq!(v["error"]["code"], code);
        assert_eq!(v["error"]["status"], status);
    }
    mock.set_behavior("", Behavior::error(ErrorPreset::ContextLength));
    let a = post(&gemini_url(&mock, "", "generateContent"), &gemini_body()).await;
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("exceeds the maximum number of tokens allowed"));

    mock.set_behavior(
        "",
        Behavior::text("x").with_fault(Fault::InBandErrorBeforeContent),
    );
    let a = post(
        &gemini_url(&mock, "", "streamGenerateContent?alt=sse"),
        &gemini_body(),
    )
    .await;
    assert_eq!(a.status, 200);
    let events = gemini_events(a.text());
    assert_eq!(events[0]["error"]["status"], "UNAVAILABLE");

    mock.set_behavior(
        "",
        Behavior::text("abcd").with_fault(Fault::CutStream { after_chunks: 2 }),
    );
    let a = post(
        &gemini_url(&mock, "", "streamGenerateContent?alt=sse"),
        &gemini_body(),
    )
    .await;
    let events = gemini_events(a.text());
    assert_eq!(events.len(), 2);
    assert!(events
        .iter()
        .all(|e| e["candidates"][0].get("finishReason").is_none()));
}

#[actix_web::test]
async fn gemini_auth_by_key_header_or_query_and_vertex_by_bearer() {
    let mock = MockUpstream::start(MockConfig {
        require_api_key: Some("gk".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let body = gemini_body().to_string();
    let url = gemini_url(&mock, "", "generateContent");
    let a = post_raw(&url, &[("x-goog-api-key", "gk")], body.clone()).await;
    assert_eq!(a.status, 200);
    let a = post_raw(&format!("{url}?key=gk"), &[], body.clone()).await;
    assert_eq!(a.status, 200);
    let a = post_raw(&url, &[("x-goog-api-key", "bad")], body.clone()).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["details"][0]["reason"], "API_KEY_INVALID");
    let a = post_raw(&url, &[], body.clone()).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["error"]["status"], "PERMISSION_DENIED");

    let vertex = format!(
        "{}/v1/projects/p1/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
        mock.route_url("vx")
    );
    let a = post_raw(&vertex, &[("authorization", "Bearer gk")], body.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.json()["candidates"].is_array());
    let a = post_raw(&vertex, &[("x-goog-api-key", "gk")], body.clone()).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(mock.request_count("vx"), 2);
}

// === Cohere ===

#[actix_web::test]
async fn cohere_non_stream_text_and_tool_call() {
    let mock = start_with(Behavior::text("Hello.").with_usage(21, 4)).await;
    let url = format!("{}/v2/chat", mock.url());
    let a = post(&url, &cohere_body(false)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(v["finish_reason"], "COMPLETE");
    assert_eq!(
        v["message"],
        json!({"role":"assistant","content":[{"type":"text","text":"Hello."}]})
    );
    let tokens = json!({"input_tokens":21,"output_tokens":4});
    assert_eq!(
        v["usage"],
        json!({"billed_units": tokens, "tokens": tokens})
    );
    mock.set_behavior("", weather());
    let v = post(&url, &cohere_body(false)).await.json();
    assert_eq!(v["finish_reason"], "TOOL_CALL");
    assert_eq!(
        v["message"]["tool_calls"],
        json!([{"id":"tooluse_GwVec0001","type":"function",
                "function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}])
    );
    assert!(v["message"]["tool_plan"].is_string());
}

#[actix_web::test]
async fn cohere_stream_events_name_their_type() {
    let mock = start_with(Behavior::text("Hello.").with_chunks(2).with_usage(5, 2)).await;
    let url = format!("{}/c/v2/chat", mock.url());
    let a = post(&url, &cohere_body(true)).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let events = parse_sse(a.text());
    for e in &events {
        assert_eq!(e.name.as_deref(), e.json()["type"].as_str());
    }
    let names: Vec<_> = events.iter().map(|e| e.name.clone().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message-start",
            "content-start",
            "content-delta",
            "content-delta",
            "content-end",
            "message-end"
        ]
    );
    assert_eq!(
        events[2].json()["delta"]["message"]["content"]["text"],
        "Hel"
    );
    let end = events[5].json();
    assert_eq!(end["delta"]["finish_reason"], "COMPLETE");
    assert_eq!(end["delta"]["usage"]["tokens"]["output_tokens"], 2);
    assert_eq!(end["delta"]["usage"]["billed_units"]["input_tokens"], 5);

    mock.set_behavior("c", weather());
    let events = parse_sse(post(&url, &cohere_body(true)).await.text());
    let names: Vec<_> = events.iter().map(|e| e.name.clone().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message-start",
            "tool-plan-delta",
            "tool-call-start",
            "tool-call-delta",
            "tool-call-delta",
            "tool-call-end",
            "message-end"
        ]
    );
    let start = events[2].json();
    assert_eq!(
        start["delta"]["message"]["tool_calls"]["function"]["name"],
        "get_weather"
    );
    assert_eq!(
        events[3].json()["delta"]["message"]["tool_calls"]["function"]["arguments"],
        "{\"city\":"
    );
    assert_eq!(events[6].json()["delta"]["finish_reason"], "TOOL_CALL");
}

#[actix_web::test]
async fn cohere_errors_are_message_bodies() {
    let mock = start().await;
    let url = format!("{}/v2/chat", mock.url());
    for (preset, status, needle) in [
        (ErrorPreset::RateLimited { retry_after: None }, 429, "limit"),
        (ErrorPreset::ContextLength, 400, "too many tokens"),
        (ErrorPreset::Unauthorized, 401, "invalid api token"),
        (ErrorPreset::QuotaExhausted, 402, "payment"),
        (ErrorPreset::ServerError, 500, "internal"),
        (ErrorPreset::Overloaded, 503, "overloaded"),
    ] {
        mock.set_behavior("", Behavior::error(preset));
        let a = post(&url, &cohere_body(true)).await;
        assert_eq!(a.status.as_u16(), status);
        let m = a.json()["message"].as_str().unwrap().to_owned();
        assert!(m.contains(needle), "{m}");
    }
    mock.set_behavior(
        "",
        Behavior::text("x").with_fault(Fault::InBandErrorBeforeContent),
    );
    let events = parse_sse(post(&url, &cohere_body(true)).await.text());
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].json()["delta"]["finish_reason"], "ERROR");
    let a = post(&url, &json!({"messages": []})).await;
    assert_eq!(a.status, 400);
    assert!(a.json()["message"].is_string());
}

// === every format ===

#[actix_web::test]
async fn wrong_content_type_is_an_html_200_everywhere() {
    let mock = start_with(Behavior::default().with_fault(Fault::WrongContentType)).await;
    let answers = [
        post_openai(&mock, "", &openai_body(true, None)).await,
        post_anthropic(&mock, "", &anthropic_body(false)).await,
        post(&azure_url(&mock, "", "d"), &openai_body(false, None)).await,
        post(&bedrock_url(&mock, "", "converse-stream"), &bedrock_body()).await,
        post(&gemini_url(&mock, "", "generateContent"), &gemini_body()).await,
        post(&format!("{}/v2/chat", mock.url()), &cohere_body(true)).await,
    ];
    for a in answers {
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-type"), Some("text/html; charset=utf-8"));
        assert!(a.text().starts_with("<!DOCTYPE html>"));
    }
}

#[actix_web::test]
async fn absurd_usage_is_sent_as_given() {
    let max = u64::from(u32::MAX);
    let mock = start_with(Behavior::text("x").with_usage(u32::MAX, u32::MAX)).await;
    let v = post_openai(&mock, "", &openai_body(false, None))
        .await
        .json();
    assert_eq!(v["usage"]["prompt_tokens"], max);
    assert_eq!(v["usage"]["total_tokens"], 2 * max);
    let v = post(&bedrock_url(&mock, "", "converse"), &bedrock_body())
        .await
        .json();
    assert_eq!(v["usage"]["outputTokens"], max);
    assert_eq!(v["usage"]["totalTokens"], 2 * max);
    let v = post(&gemini_url(&mock, "", "generateContent"), &gemini_body())
        .await
        .json();
    assert_eq!(v["usageMetadata"]["totalTokenCount"], 2 * max);
    let v = post(&format!("{}/v2/chat", mock.url()), &cohere_body(false))
        .await
        .json();
    assert_eq!(v["usage"]["tokens"]["input_tokens"], max);
    let a = post(
        &gemini_url(&mock, "", "streamGenerateContent?alt=sse"),
        &gemini_body(),
    )
    .await;
    let last = gemini_events(a.text()).pop().unwrap();
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], max);
}

#[actix_web::test]
async fn queued_behaviors_and_counts_are_shared_by_all_formats_of_a_route() {
    let mock = start().await;
    mock.push_behaviors(
        "r",
        [
            Behavior::text("one"),
            Behavior::text("two"),
            Behavior::text("three"),
        ],
    );
    let v = post(&bedrock_url(&mock, "r", "converse"), &bedrock_body())
        .await
        .json();
    assert_eq!(v["output"]["message"]["content"][0]["text"], "one");
    let v = post(&gemini_url(&mock, "r", "generateContent"), &gemini_body())
        .await
        .json();
    assert_eq!(v["candidates"][0]["content"]["parts"][0]["text"], "two");
    let v = post(&format!("{}/r/v2/chat", mock.url()), &cohere_body(false))
        .await
        .json();
    assert_eq!(v["message"]["content"][0]["text"], "three");
    assert_eq!(mock.request_count("r"), 3);
    let paths: Vec<String> = mock.requests("r").into_iter().map(|r| r.path).collect();
    assert!(paths[0].ends_with("/converse"));
    assert!(paths[1].ends_with(":generateContent"));
}
