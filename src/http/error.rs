//! `GatewayError` -> HTTP response: the OpenAI error envelope
//! `{"error": {"message", "type", "param", "code"}}`, the status from `GatewayError::status`,
//! `Retry-After` when the client should wait. Never includes upstream raw bodies or secrets.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde::Serialize;

use crate::error::GatewayError;

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

pub fn error_response(err: &GatewayError, request_id: Option<&str>) -> HttpResponse {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = HttpResponse::build(status);
    if let Some(id) = request_id {
        resp.insert_header((super::H_REQUEST_ID, id));
    }
    if let Some(after) = err.retry_after() {
        // Whole seconds, rounded up, at least 1.
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        resp.insert_header((header::RETRY_AFTER, secs.max(1)));
    }
    resp.json(Envelope {
        error: Body {
            message: err.to_string(),
            kind: err.error_type(),
            param: err.param(),
            code: err.code(),
        },
    })
}
