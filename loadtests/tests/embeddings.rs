//! Embeddings in every format (providers.md §1.5, §2.1, §4, §5.1, §6, §7): shapes, dimensions,
//! base64, usage, errors and faults.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{json, Value};
use switchyard_loadtests::mock::embedding_value;
use switchyard_loadtests::{Behavior, ErrorPreset, Fault, MockConfig, MockUpstream};

fn vector(k: usize, dims: usize) -> Value {
    json!((0..dims)
        .map(|i| embedding_value(k, i))
        .collect::<Vec<f32>>())
}

async fn post(url: &str, body: &Value) -> Answer {
    post_raw(url, &[], body.to_string()).await
}

fn openai_url(mock: &MockUpstream, route: &str) -> String {
    format!("{}/v1/embeddings", mock.route_url(route))
}

#[test]
fn values_are_small_exact_and_vary() {
    for k in 0..20 {
        for i in 0..40 {
            let v = embedding_value(k, i);
            assert!((-0.5..=0.5).contains(&v));
            assert_eq!(v * 16.0, (v * 16.0).round());
        }
    }
    assert_ne!(vector(0, 8), vector(1, 8));
}

#[actix_web::test]
async fn openai_string_array_and_token_inputs() {
    let mock = start_with(
        Behavior::default()
            .with_model("text-embedding-3-small")
            .with_usage(7, 0),
    )
    .await;
    let a = post(
        &openai_url(&mock, ""),
        &json!({"model":"m","input":"hello"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("x-request-id"), Some("req_mock0001"));
    assert_eq!(
        a.json(),
        json!({"object":"list","data":[{"object":"embedding","index":0,"embedding":vector(0, 8)}],
               "model":"text-embedding-3-small","usage":{"prompt_tokens":7,"total_tokens":7}})
    );
    for (input, n) in [
        (json!(["a", "b", "c"]), 3),
        (json!([1, 2, 3]), 1),
        (json!([[1, 2], [3]]), 2),
    ] {
        let v = post(&openai_url(&mock, "r"), &json!({"model":"m","input":input}))
            .await
            .json();
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), n, "{input}");
        for (k, item) in data.iter().enumerate() {
            assert_eq!(item["index"], k);
            assert_eq!(item["embedding"], vector(k, 8));
        }
    }
    // Without /v1 too (a base URL that already ends in /v1).
    let a = post(
        &format!("{}/embeddings", mock.route_url("r")),
        &json!({"model":"m","input":"x"}),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(mock.request_count("r"), 4);
}

#[actix_web::test]
async fn dimensions_and_base64() {
    let mock = start_with(Behavior::default().with_embedding_dims(3)).await;
    let v = post(&openai_url(&mock, ""), &json!({"model":"m","input":"x"}))
        .await
        .json();
    assert_eq!(v["data"][0]["embedding"], vector(0, 3));
    let v = post(
        &openai_url(&mock, ""),
        &json!({"model":"m","input":["x","y"],"dimensions":5}),
    )
    .await
    .json();
    assert_eq!(v["data"][1]["embedding"], vector(1, 5));
    let v = post(
        &openai_url(&mock, ""),
        &json!({"model":"m","input":["x","y"],"dimensions":6,"encoding_format":"base64"}),
    )
    .await
    .json();
    let b64 = v["data"][1]["embedding"].as_str().unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let floats: Vec<f32> = raw
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(json!(floats), vector(1, 6));
    for bad in [
        json!({"model":"m","input":"x","dimensions":0}),
        json!({"model":"m","input":"x","dimensions":100000}),
        json!({"model":"m","input":"x","encoding_format":"int8"}),
        json!({"model":"m","input":[]}),
        json!({"model":"m"}),
        json!({"input":"x"}),
        json!({"model":"m","input":[{"a":1}]}),
    ] {
        let a = post(&openai_url(&mock, ""), &bad).await;
        assert_eq!(a.status, 400, "{bad}");
        assert_eq!(a.json()["error"]["type"], "invalid_request_error");
    }
}

#[actix_web::test]
async fn azure_embeddings() {
    let mock = start().await;
    let url = format!(
        "{}/openai/deployments/emb/embeddings?api-version=2024-10-21",
        mock.url()
    );
    let a = post(&url, &json!({"input":["a","b"]})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["data"][1]["embedding"], vector(1, 8));
    let a = post(
        &format!("{}/openai/deployments/emb/embeddings", mock.url()),
        &json!({"input":"a"}),
    )
    .await;
    assert_eq!(a.status, 400);
    let v1 = format!("{}/openai/v1/embeddings", mock.route_url("az"));
    assert_eq!(post(&v1, &json!({"input":"a"})).await.status, 400);
    assert_eq!(
        post(&v1, &json!({"model":"emb","input":"a"})).await.status,
        200
    );
    mock.set_behavior(
        "az",
        Behavior::error(ErrorPreset::RateLimited {
            retry_after: Some(2),
        }),
    );
    let a = post(&v1, &json!({"model":"emb","input":"a"})).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after-ms"), Some("2000"));
}

#[actix_web::test]
async fn bedrock_titan_and_cohere_by_model_id() {
    let mock = start_with(Behavior::default().with_usage(11, 0)).await;
    let titan = format!("{}/model/amazon.titan-embed-text-v2%3A0/invoke", mock.url());
    let a = post(&titan, &json!({"inputText":"hello","dimensions":4})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.header("x-amzn-requestid").is_some());
    assert_eq!(
        a.json(),
        json!({"embedding":vector(0, 4),"inputTextTokenCount":11})
    );
    let a = post(&titan, &json!({"texts":["a"]})).await;
    assert_eq!(a.status, 400);
    assert!(a
        .header("x-amzn-errortype")
        .unwrap()
        .starts_with("ValidationException:"));

    let cohere = format!("{}/br/model/cohere.embed-english-v3/invoke", mock.url());
    let a = post(
        &cohere,
        &json!({"texts":["a","b c"],"input_type":"search_document"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-amzn-bedrock-input-token-count"), Some("11"));
    let v = a.json();
    assert_eq!(v["embeddings"], json!([vector(0, 8), vector(1, 8)]));
    assert_eq!(v["response_type"], "embeddings_floats");
    assert_eq!(v["texts"], json!(["a", "b c"]));
    assert!(v["id"].is_string());
    let a = post(&cohere, &json!({"inputText":"a"})).await;
    assert_eq!(a.status, 400);
}

#[actix_web::test]
async fn gemini_embed_content_and_batch() {
    let mock = start().await;
    let one = format!(
        "{}/v1beta/models/text-embedding-004:embedContent",
        mock.url()
    );
    let a = post(
        &one,
        &json!({"content":{"parts":[{"text":"hi"}]},"outputDimensionality":2}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), json!({"embedding":{"values":vector(0, 2)}}));
    let batch = format!(
        "{}/g/v1beta/models/text-embedding-004:batchEmbedContents",
        mock.url()
    );
    let a = post(
        &batch,
        &json!({"requests":[
            {"model":"models/text-embedding-004","content":{"parts":[{"text":"a"}]}},
            {"model":"models/text-embedding-004","content":{"parts":[{"text":"b"}]},"outputDimensionality":3}
        ]}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.json(),
        json!({"embeddings":[{"values":vector(0, 8)},{"values":vector(1, 3)}]})
    );
    let a = post(&one, &json!({})).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["status"], "INVALID_ARGUMENT");
    // Content filtering on embeddings is an error (no finish reason to carry it).
    mock.set_behavior("", Behavior::error(ErrorPreset::ContentFiltered));
    assert_eq!(
        post(&one, &json!({"content":{"parts":[]}})).await.status,
        400
    );
}

#[actix_web::test]
async fn cohere_v2_embed() {
    let mock = start_with(Behavior::default().with_usage(5, 0)).await;
    let url = format!("{}/v2/embed", mock.url());
    let a = post(
        &url,
        &json!({"model":"embed-v4.0","texts":["x","y"],"input_type":"search_query",
                "embedding_types":["float"],"output_dimension":4}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(
        v["embeddings"]["float"],
        json!([vector(0, 4), vector(1, 4)])
    );
    assert_eq!(v["texts"], json!(["x", "y"]));
    assert_eq!(v["meta"]["billed_units"]["input_tokens"], 5);
    assert_eq!(v["response_type"], "embeddings_by_type");
    let a = post(
        &url,
        &json!({"model":"embed-v4.0","inputs":[{"content":[]},{"content":[]}]}),
    )
    .await;
    assert_eq!(a.json()["embeddings"]["float"].as_array().unwrap().len(), 2);
    let a = post(&url, &json!({"texts":["x"]})).await;
    assert_eq!(a.status, 400);
    assert!(a.json()["message"].is_string());
}

#[actix_web::test]
async fn voyage_embeddings_and_errors() {
    let mock = start_with(
        Behavior::default()
            .with_model("voyage-3.5")
            .with_usage(9, 0),
    )
    .await;
    let url = format!("{}/vo/voyage/v1/embeddings", mock.url());
    let a = post(
        &url,
        &json!({"model":"voyage-3.5","input":["a","b"],"output_dimension":2}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.json(),
        json!({"object":"list","data":[
                {"object":"embedding","index":0,"embedding":vector(0, 2)},
                {"object":"embedding","index":1,"embedding":vector(1, 2)}],
               "model":"voyage-3.5","usage":{"total_tokens":9}})
    );
    let a = post(&url, &json!({"input":"a"})).await;
    assert_eq!(a.status, 400);
    assert!(a.json()["detail"].is_string());
    mock.set_behavior(
        "vo",
        Behavior::error(ErrorPreset::RateLimited {
            retry_after: Some(4),
        }),
    );
    let a = post(&url, &json!({"model":"voyage-3.5","input":"a"})).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after"), Some("4"));
    assert!(a.json()["detail"].is_string());
    // Route-less path.
    let a = post(
        &format!("{}/voyage/v1/embeddings", mock.url()),
        &json!({"model":"v","input":"a"}),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(mock.request_count(""), 1);
}

#[actix_web::test]
async fn auth_for_embeddings() {
    let mock = MockUpstream::start(MockConfig {
        require_api_key: Some("ek".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let body = json!({"model":"m","input":"x","texts":["x"]}).to_string();
    for url in [
        openai_url(&mock, ""),
        format!("{}/voyage/v1/embeddings", mock.url()),
        format!("{}/v2/embed", mock.url()),
    ] {
        let a = post_raw(&url, &[("authorization", "Bearer ek")], body.clone()).await;
        assert_eq!(a.status, 200, "{url}: {}", a.text());
        let a = post_raw(&url, &[("authorization", "Bearer no")], body.clone()).await;
        assert_eq!(a.status, 401, "{url}");
    }
    let gemini = format!("{}/v1beta/models/e:embedContent", mock.url());
    let a = post_raw(
        &gemini,
        &[("x-goog-api-key", "ek")],
        r#"{"content":{"parts":[]}}"#,
    )
    .await;
    assert_eq!(a.status, 200);
}

#[actix_web::test]
async fn faults_apply_as_to_non_stream_chat() {
    let mock = start().await;
    let url = openai_url(&mock, "");
    let body = json!({"model":"m","input":["a","b"]});
    let full = post(&url, &body).await.body;

    mock.set_behavior("", Behavior::error(ErrorPreset::ServerError));
    assert_eq!(post(&url, &body).await.status, 500);
    mock.set_behavior("", Behavior::default().with_fail_rate(1.0));
    assert_eq!(post(&url, &body).await.status, 500);
    mock.set_behavior(
        "",
        Behavior::default().with_fault(Fault::InvalidJsonEvent { after_chunks: 0 }),
    );
    let a = post(&url, &body).await;
    assert_eq!((a.status.as_u16(), a.text()), (200, "{not json"));
    mock.set_behavior(
        "",
        Behavior::default().with_fault(Fault::CutStream { after_chunks: 0 }),
    );
    let a = post(&url, &body).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, full.slice(..full.len() / 2));
    mock.set_behavior("", Behavior::default().with_fault(Fault::WrongContentType));
    let a = post(&url, &body).await;
    assert_eq!(a.header("content-type"), Some("text/html; charset=utf-8"));
    mock.set_behavior(
        "",
        Behavior::default().with_fault(Fault::InBandErrorBeforeContent),
    );
    assert_eq!(post(&url, &body).await.status, 503);

    mock.set_behavior(
        "",
        Behavior::default().with_fault(Fault::ResetMidBody { after_chunks: 0 }),
    );
    let mut resp = open(&url, &[], &body, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (data, end) = read_chunks(&mut resp, Duration::from_secs(2)).await;
    assert!(matches!(end, BodyEnd::Failed(_)), "{end:?}");
    assert_eq!(data.len(), full.len() / 2);

    mock.set_behavior(
        "",
        Behavior::default().with_fault(Fault::StallAfter { after_chunks: 0 }),
    );
    let mut resp = open(&url, &[], &body, Duration::from_secs(2))
        .await
        .unwrap();
    let (data, end) = read_chunks(&mut resp, Duration::from_millis(300)).await;
    assert_eq!(end, BodyEnd::Stalled);
    assert_eq!(data.len(), full.len() / 2);

    mock.set_behavior("", Behavior::default().with_fault(Fault::Hang));
    let r = open(&url, &[], &body, Duration::from_millis(300)).await;
    assert!(r.is_err(), "no response headers while hanging");

    mock.set_behavior(
        "",
        Behavior::default().with_latency(Duration::from_millis(150)),
    );
    let t0 = std::time::Instant::now();
    assert_eq!(post(&url, &body).await.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(150));
}
