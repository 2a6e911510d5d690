//! Azure OpenAI errors (providers.md §2). Success bodies are OpenAI's with Azure's content-filter
//! annotations, rendered by the OpenAI renderer in `compile.rs`.
//!
//! Azure answers its own errors (rate limit, auth, service) as `{"error":{"code","message"}}`
//! with a string `code`, and model errors (context length) in OpenAI's shape.

use actix_web::http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use bytes::Bytes;
use serde::Serialize;

use super::behavior::ErrorPreset;
use super::compile::{json_headers, Format, Prepared};
use super::wire::{self, openai as oa};

const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");

/// The §2.3 input-filtered body, byte for byte.
pub(crate) const CONTENT_FILTER_BODY: &str = r#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry. To learn more about our content filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":false,"severity":"safe"},"jailbreak":{"filtered":false,"detected":false},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":true,"severity":"high"},"violence":{"filtered":false,"severity":"safe"}}}}}"#;

/// `{"error":{"code","message"}}`, Azure's own error shape.
pub(crate) fn error_body(code: &str, message: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        error: Detail<'a>,
    }
    #[derive(Serialize)]
    struct Detail<'a> {
        code: &'a str,
        message: &'a str,
    }
    wire::to_vec(&Body {
        error: Detail { code, message },
    })
}

/// 401 for a missing or wrong key (`api-key` or `Authorization: Bearer`).
pub(crate) fn unauthorized_body() -> Vec<u8> {
    error_body(
        "401",
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to \
         provide a valid key for an active subscription and use a correct regional API endpoint \
         for your resource.",
    )
}

pub(crate) fn error(preset: &ErrorPreset) -> Prepared {
    let mut headers = json_headers(Format::Azure);
    let (status, body) = match preset {
        ErrorPreset::RateLimited { retry_after } => {
            headers.push((REMAINING_REQUESTS, HeaderValue::from_static("0")));
            let when = match retry_after {
                Some(secs) => {
                    headers.push((RETRY_AFTER, HeaderValue::from(*secs)));
                    headers.push((RETRY_AFTER_MS, HeaderValue::from(secs.saturating_mul(1000))));
                    format!("Please retry after {secs} seconds.")
                }
                None => "Please retry later.".to_owned(),
            };
            let message = format!(
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version \
                 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing \
                 tier. {when} Please go here: https://aka.ms/oai/quotaincrease if you would like \
                 to further increase the default rate limit."
            );
            (StatusCode::TOO_MANY_REQUESTS, error_body("429", &message))
        }
        ErrorPreset::QuotaExhausted => (
            StatusCode::TOO_MANY_REQUESTS,
            oa::error_body(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                None,
                Some("insufficient_quota"),
            ),
        ),
        ErrorPreset::Overloaded => (
            StatusCode::SERVICE_UNAVAILABLE,
            error_body(
                "ServiceUnavailable",
                "The service is temporarily unable to process your request. Please try again \
                 later.",
            ),
        ),
        ErrorPreset::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            error_body(
                "InternalServerError",
                "The server had an error while processing your request. Sorry about that!",
            ),
        ),
        ErrorPreset::ContextLength => (
            StatusCode::BAD_REQUEST,
            oa::error_body(
                "This model's maximum context length is 128000 tokens. However, your messages \
                 resulted in 130512 tokens. Please reduce the length of the messages.",
                "invalid_request_error",
                Some("messages"),
                Some("context_length_exceeded"),
            ),
        ),
        ErrorPreset::BadRequest => (
            StatusCode::BAD_REQUEST,
            oa::error_body(
                "Invalid request: the mock upstream was told to reject this request.",
                "invalid_request_error",
                None,
                None,
            ),
        ),
        ErrorPreset::Unauthorized => (StatusCode::UNAUTHORIZED, unauthorized_body()),
        ErrorPreset::ContentFiltered => (
            StatusCode::BAD_REQUEST,
            CONTENT_FILTER_BODY.as_bytes().to_vec(),
        ),
        // Rendered by `compile::error_prepared`.
        ErrorPreset::Custom { .. } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            error_body("InternalServerError", "custom error"),
        ),
    };
    Prepared {
        status,
        headers,
        body: Bytes::from(body),
    }
}
