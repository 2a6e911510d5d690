//! The request handler: routing, body limit, auth, validation, then the behaviour's answer.
//!
//! Per request, in order: resolve the endpoint and route from the path (else 404), count the
//! request, read the body (16 MiB limit, else 413), record it (if recording), check the
//! credentials (`require_api_key`, `aws_credentials`), validate the request (400), pick the
//! behaviour (queue first, else the route's), wait `latency`, then answer: the `fail_rate` roll,
//! the fault, or the precompiled success (embeddings: the body built for this request).

use std::future::{pending, ready};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix_web::body::SizedStream;
use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::http::{Method, StatusCode};
use actix_web::rt::time::sleep;
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use bytes::{Bytes, BytesMut};
use futures_util::{stream, StreamExt};

use super::bedrock::{self, AuthError};
use super::compile::{json_headers, Compiled, FaultPlan, Format, HeaderList, Prepared};
use super::embed::{self, EmbedWants};
use super::path::{parse_path, Endpoint};
use super::record::RecordedRequest;
use super::sigv4::{self, SigError, SignedRequest};
use super::state::{InflightGuard, Shared};
use super::validate::{query_param, validate, Valid, Wants};
use super::wire::{self, anthropic as an, openai as oa};
use super::{azure, cohere, gemini};

/// Request body limit; larger bodies get a 413 in the route's format (Gemini: a 400, as Google
/// answers).
pub const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Pause between the last bytes of an aborted body and the abort, so that actix flushes them
/// to the socket first (it drops unflushed output when a body stream fails).
const ABORT_FLUSH_DELAY: Duration = Duration::from_millis(10);

/// `Fault::WrongContentType`: what a captive portal or misconfigured proxy sends.
const HTML_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>\
<h1>Network access portal</h1><p>Please sign in to continue.</p></body></html>\n";

static EMPTY: Bytes = Bytes::new();

pub(crate) async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let received_at = Instant::now();
    let shared = shared.into_inner();
    let Some((endpoint, route_name)) = parse_path(req.path()) else {
        return not_found(&req);
    };
    if req.method() != Method::POST {
        return not_found(&req);
    }
    let format = endpoint.format();
    let route = shared.route(route_name);
    route.count_request();
    let guard = InflightGuard::new(shared.clone());

    let body = match read_body(&req, payload).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(format),
        Err(BodyError::Broken) => {
            return invalid_request(format, "The request body could not be read.", None)
        }
    };
    if shared.record {
        route.record(RecordedRequest {
            route: route.name.to_string(),
            peer: req.peer_addr(),
            method: req.method().as_str().to_owned(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.path().to_owned(), |pq| pq.as_str().to_owned()),
            headers: req
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.clone(),
            received_at,
        });
    }
    if let Some(denied) = check_auth(&endpoint, &req, &body, &shared) {
        return denied;
    }
    let valid = match validate(&endpoint, &req, &body) {
        Ok(valid) => valid,
        Err(r) => return invalid_request(format, &r.message, r.param_code),
    };

    let compiled = route.pick();
    if !compiled.latency.is_zero() {
        sleep(compiled.latency).await;
    }
    match valid {
        Valid::Chat(wants) => answer(compiled, format, wants, guard).await,
        Valid::Embed(wants) => answer_embeddings(compiled, format, &wants, guard).await,
    }
}

// === responses ===

fn builder(status: StatusCode, headers: &HeaderList) -> HttpResponseBuilder {
    let mut b = HttpResponse::build(status);
    for (name, value) in headers {
        b.append_header((name.clone(), value.clone()));
    }
    b
}

fn prepared(p: &Prepared) -> HttpResponse {
    builder(p.status, &p.headers).body(p.body.clone())
}

fn error_response(format: Format, status: StatusCode, body: Vec<u8>) -> HttpResponse {
    builder(status, &json_headers(format)).body(body)
}

fn not_found(req: &HttpRequest) -> HttpResponse {
    let message = format!(
        "Unknown request URL: {} {}. Please check the URL for typos, or see the docs at \
         https://platform.openai.com/docs/api-reference/.",
        req.method(),
        req.path()
    );
    error_response(
        Format::OpenAi,
        StatusCode::NOT_FOUND,
        oa::error_body(&message, "invalid_request_error", None, Some("unknown_url")),
    )
}

fn too_large(format: Format) -> HttpResponse {
    const MESSAGE: &str = "Request body too large: the limit is 16777216 bytes.";
    let status = StatusCode::PAYLOAD_TOO_LARGE;
    match format {
        Format::OpenAi | Format::Azure => error_response(
            format,
            status,
            oa::error_body(
                MESSAGE,
                "invalid_request_error",
                None,
                Some("request_too_large"),
            ),
        ),
        Format::Anthropic => error_response(
            format,
            status,
            an::error_body(
                "request_too_large",
                "Request exceeds the maximum allowed number of bytes.",
                wire::REQUEST_ID,
            ),
        ),
        Format::Bedrock => prepared(&bedrock::error_parts(
            status,
            "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            MESSAGE,
        )),
        Format::Gemini => prepared(&gemini::invalid_argument(
            "Request payload size exceeds the limit: 16777216 bytes.",
        )),
        Format::Cohere => prepared(&cohere::error_prepared(status, MESSAGE)),
        Format::Voyage => prepared(&embed::voyage_prepared(status, MESSAGE)),
    }
}

/// 400 in the format's shape; `param` and `code` are used by OpenAI and Azure only.
fn invalid_request(
    format: Format,
    message: &str,
    param_code: Option<(&str, &str)>,
) -> HttpResponse {
    let status = StatusCode::BAD_REQUEST;
    match format {
        Format::OpenAi | Format::Azure => error_response(
            format,
            status,
            oa::error_body(
                message,
                "invalid_request_error",
                param_code.map(|(p, _)| p),
                param_code.map(|(_, c)| c),
            ),
        ),
        Format::Anthropic => error_response(
            format,
            status,
            an::error_body("invalid_request_error", message, wire::REQUEST_ID),
        ),
        Format::Bedrock => prepared(&bedrock::error_parts(
            status,
            "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            message,
        )),
        Format::Gemini => prepared(&gemini::invalid_argument(message)),
        Format::Cohere => prepared(&cohere::error_prepared(status, message)),
        Format::Voyage => prepared(&embed::voyage_prepared(status, message)),
    }
}

fn wrong_content_type() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/html; charset=utf-8"))
        .body(HTML_PAGE)
}

// === body ===

enum BodyError {
    TooLarge,
    Broken,
}

async fn read_body(req: &HttpRequest, mut payload: web::Payload) -> Result<Bytes, BodyError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Err(BodyError::TooLarge);
    }
    // Usual case: the body arrives in one chunk and is used as is (no copy).
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| BodyError::Broken)?;
        total = total.saturating_add(chunk.len());
        if total > BODY_LIMIT {
            return Err(BodyError::TooLarge);
        }
        match first.take() {
            None if joined.is_empty() => first = Some(chunk),
            None => joined.extend_from_slice(&chunk),
            Some(head) => {
                let hint = declared.map_or(0, |n| n as usize).max(total);
                joined.reserve(hint);
                joined.extend_from_slice(&head);
                joined.extend_from_slice(&chunk);
            }
        }
    }
    Ok(match first {
        Some(only) => only,
        None => joined.freeze(),
    })
}

// === auth ===

/// `None` if the request may pass. Bedrock checks SigV4 when `aws_credentials` is set (else a
/// Bedrock API key as `Authorization: Bearer`); the others check `require_api_key`.
fn check_auth(
    endpoint: &Endpoint<'_>,
    req: &HttpRequest,
    body: &[u8],
    shared: &Shared,
) -> Option<HttpResponse> {
    let format = endpoint.format();
    if format == Format::Bedrock {
        if let Some((akid, secret)) = &shared.aws_credentials {
            return check_sigv4(req, body, akid, secret);
        }
    }
    let key = shared.api_key.as_deref()?;
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let bearer = header("authorization").map(|v| v.strip_prefix("Bearer ") == Some(key));
    let body = match format {
        Format::OpenAi => match bearer {
            Some(true) => return None,
            None => oa::error_body(
                "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
                None,
            ),
            Some(false) => oa::error_body(
                "Incorrect API key provided. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
        },
        Format::Anthropic => match header("x-api-key") {
            None => an::error_body(
                "authentication_error",
                "x-api-key header is required",
                wire::REQUEST_ID,
            ),
            Some(v) if v == key => return None,
            Some(_) => an::error_body(
                "authentication_error",
                "invalid x-api-key",
                wire::REQUEST_ID,
            ),
        },
        Format::Azure => {
            if header("api-key") == Some(key) || bearer == Some(true) {
                return None;
            }
            azure::unauthorized_body()
        }
        Format::Bedrock => {
            return match bearer {
                Some(true) => None,
                None => Some(prepared(&bedrock::auth_error(
                    AuthError::Missing,
                    "Missing Authentication Token",
                ))),
                Some(false) => Some(prepared(&bedrock::auth_error(
                    AuthError::UnknownKey,
                    "The security token included in the request is invalid.",
                ))),
            };
        }
        Format::Gemini => {
            let vertex = matches!(endpoint, Endpoint::GeminiGenerate { vertex: true, .. });
            if vertex {
                return (bearer != Some(true)).then(|| prepared(&gemini::unauthenticated()));
            }
            let given = header("x-goog-api-key").or_else(|| query_param(req.query_string(), "key"));
            return match given {
                Some(v) if v == key => None,
                Some(_) => Some(prepared(&gemini::invalid_key())),
                None => Some(prepared(&gemini::missing_key())),
            };
        }
        Format::Cohere => match bearer {
            Some(true) => return None,
            None => cohere::error_body("no api key supplied"),
            Some(false) => cohere::error_body("invalid api token"),
        },
        Format::Voyage => match bearer {
            Some(true) => return None,
            None => embed::voyage_body(
                "No API key provided. Please set your API key in the Authorization header.",
            ),
            Some(false) => embed::voyage_body("Provided API key is invalid."),
        },
    };
    Some(error_response(format, StatusCode::UNAUTHORIZED, body))
}

/// Verifies SigV4 (providers.md §4.2) against `aws_credentials`; 403 in Bedrock's shape if not.
fn check_sigv4(req: &HttpRequest, body: &[u8], akid: &str, secret: &str) -> Option<HttpResponse> {
    let headers: Vec<(&str, &str)> = req
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
        .collect();
    let signed = SignedRequest {
        method: req.method().as_str(),
        raw_path: req.path(),
        query: req.query_string(),
        headers: &headers,
        body,
    };
    let (kind, message) = match sigv4::verify(&signed, akid, secret, SystemTime::now()) {
        Ok(()) => return None,
        Err(SigError::Missing) => (
            AuthError::Missing,
            "Missing Authentication Token".to_owned(),
        ),
        Err(SigError::UnknownKey) => (
            AuthError::UnknownKey,
            "The security token included in the request is invalid.".to_owned(),
        ),
        Err(SigError::Invalid(message)) => (AuthError::BadSignature, message),
    };
    Some(prepared(&bedrock::auth_error(kind, &message)))
}

// === answering ===

fn fail_roll(c: &Compiled) -> bool {
    c.fail_rate > 0.0 && fastrand::f64() < c.fail_rate
}

async fn answer(
    c: Arc<Compiled>,
    format: Format,
    wants: Wants,
    guard: InflightGuard,
) -> HttpResponse {
    let set = c.format(format);
    if fail_roll(&c) {
        return prepared(&set.server_error);
    }
    let usage = wants.include_usage;
    let half = || set.json.body.slice(..set.json.body.len() / 2);
    let plan = |upto, invalid_at, ending| Plan {
        upto,
        invalid_at,
        ending,
    };
    let script = |usage| Source::Script { format, usage };
    match set.fault {
        FaultPlan::None if !wants.stream => prepared(&set.json),
        FaultPlan::None if !c.paced() => {
            // Fast path: the whole stream is one precomputed buffer.
            let full = set.script(usage).full.clone();
            builder(StatusCode::OK, &set.sse_headers).streaming(stream::once(ready(Ok::<
                _,
                io::Error,
            >(
                full
            ))))
        }
        FaultPlan::None => {
            let p = plan(usize::MAX, None, Ending::Tail);
            sse(c, format, script(usage), p, guard)
        }
        FaultPlan::Error => prepared(set.fault_error.as_ref().unwrap_or(&set.server_error)),
        FaultPlan::ResetMidBody(k) if wants.stream => {
            let p = plan(k, None, Ending::Abort);
            sse(c, format, script(usage), p, guard)
        }
        FaultPlan::ResetMidBody(_) => {
            let (prefix, full_len) = (half(), set.json.body.len());
            let b = builder(StatusCode::OK, &set.json.headers);
            sized_prefix(b, c, prefix, full_len, Ending::Abort, guard)
        }
        FaultPlan::CutStream(k) if wants.stream => {
            let p = plan(k, None, Ending::Clean);
            sse(c, format, script(usage), p, guard)
        }
        FaultPlan::CutStream(_) => builder(StatusCode::OK, &set.json.headers).body(half()),
        FaultPlan::InBand if wants.stream => {
            let p = plan(usize::MAX, None, Ending::Clean);
            sse(c, format, Source::InBand { format }, p, guard)
        }
        FaultPlan::InBand => prepared(set.fault_error.as_ref().unwrap_or(&set.server_error)),
        FaultPlan::StallAfter(k) if wants.stream => {
            let p = plan(k, None, Ending::Stall);
            sse(c, format, script(usage), p, guard)
        }
        FaultPlan::StallAfter(_) => {
            let (prefix, full_len) = (half(), set.json.body.len());
            let b = builder(StatusCode::OK, &set.json.headers);
            sized_prefix(b, c, prefix, full_len, Ending::Stall, guard)
        }
        FaultPlan::InvalidJson(k) if wants.stream => {
            let p = plan(usize::MAX, Some(k), Ending::Tail);
            sse(c, format, script(usage), p, guard)
        }
        FaultPlan::InvalidJson(_) => {
            builder(StatusCode::OK, &set.json.headers).body(Bytes::from_static(b"{not json"))
        }
        FaultPlan::Hang => {
            // Not in flight: it never finishes, `stop` must not wait for it.
            drop(guard);
            pending().await
        }
        FaultPlan::WrongContentType => wrong_content_type(),
    }
}

/// Embeddings: faults play as for a non-stream chat answer, on the body built for the request.
async fn answer_embeddings(
    c: Arc<Compiled>,
    format: Format,
    wants: &EmbedWants<'_>,
    guard: InflightGuard,
) -> HttpResponse {
    let set = c.embed_set(format);
    if fail_roll(&c) {
        return prepared(&set.server_error);
    }
    let body = || embed::render(wants, &c.embed);
    match set.fault {
        FaultPlan::None => builder(StatusCode::OK, &set.headers).body(body()),
        FaultPlan::Error | FaultPlan::InBand => {
            prepared(set.fault_error.as_ref().unwrap_or(&set.server_error))
        }
        FaultPlan::ResetMidBody(_) | FaultPlan::StallAfter(_) => {
            let full = body();
            let ending = match set.fault {
                FaultPlan::StallAfter(_) => Ending::Stall,
                _ => Ending::Abort,
            };
            let b = builder(StatusCode::OK, &set.headers);
            let prefix = full.slice(..full.len() / 2);
            sized_prefix(b, c.clone(), prefix, full.len(), ending, guard)
        }
        FaultPlan::CutStream(_) => {
            let full = body();
            builder(StatusCode::OK, &set.headers).body(full.slice(..full.len() / 2))
        }
        FaultPlan::InvalidJson(_) => {
            builder(StatusCode::OK, &set.headers).body(Bytes::from_static(b"{not json"))
        }
        FaultPlan::Hang => {
            drop(guard);
            pending().await
        }
        FaultPlan::WrongContentType => wrong_content_type(),
    }
}

/// A 200 stream paced by the behaviour's delays.
fn sse(
    c: Arc<Compiled>,
    format: Format,
    source: Source,
    plan: Plan,
    guard: InflightGuard,
) -> HttpResponse {
    let mut b = builder(StatusCode::OK, &c.format(format).sse_headers);
    b.streaming(paced(c, source, plan, guard))
}

/// A 200 non-stream body (headers in `b`) that declares `full_len` bytes but sends only
/// `prefix`, then aborts or stalls.
fn sized_prefix(
    mut b: HttpResponseBuilder,
    c: Arc<Compiled>,
    prefix: Bytes,
    full_len: usize,
    ending: Ending,
    guard: InflightGuard,
) -> HttpResponse {
    let plan = Plan {
        upto: 0,
        invalid_at: None,
        ending,
    };
    let body = paced(c, Source::Prefix(prefix), plan, guard);
    b.body(SizedStream::new(full_len as u64, body))
}

// === paced streams ===

/// Which precompiled events a stream plays.
enum Source {
    Script {
        format: Format,
        usage: bool,
    },
    InBand {
        format: Format,
    },
    /// Just these bytes as the head (non-stream faults).
    Prefix(Bytes),
}

#[derive(Clone, Copy)]
enum Ending {
    /// Send the tail (finish / usage / `[DONE]`, or the closing Anthropic events).
    Tail,
    /// End the body cleanly without the tail.
    Clean,
    /// Fail the body: actix drops the connection, the chunked body never terminates.
    Abort,
    /// Send nothing more, ever.
    Stall,
}

struct Plan {
    /// Content chunks to send before the ending.
    upto: usize,
    /// Insert the invalid-JSON event after this many content chunks.
    invalid_at: Option<usize>,
    ending: Ending,
}

#[derive(Clone, Copy)]
enum Phase {
    Head,
    Content(usize),
    /// The tail went out; the body ends after the behaviour's `end_delay`.
    Closing,
    Done,
}

struct Player {
    compiled: Arc<Compiled>,
    source: Source,
    plan: Plan,
    phase: Phase,
    guard: Option<InflightGuard>,
}

impl Player {
    /// (head, content, tail)
    fn parts(&self) -> (&Bytes, &[Bytes], &Bytes) {
        let script = match &self.source {
            Source::Script { format, usage } => self.compiled.format(*format).script(*usage),
            Source::InBand { format } => &self.compiled.format(*format).inband,
            Source::Prefix(prefix) => return (prefix, &[], &EMPTY),
        };
        (&script.head, &script.content, &script.tail)
    }

    /// The broken event of `Fault::InvalidJsonEvent` (only scripts insert one).
    fn invalid_event(&self) -> Bytes {
        match &self.source {
            Source::Script { format, .. } | Source::InBand { format } => {
                self.compiled.format(*format).invalid_event.clone()
            }
            Source::Prefix(_) => Bytes::new(),
        }
    }

    async fn next_item(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            match self.phase {
                Phase::Head => {
                    self.phase = Phase::Content(0);
                    let head = self.parts().0.clone();
                    // An empty chunk would end a chunked body early: never yield one.
                    if !head.is_empty() {
                        return Some(Ok(head));
                    }
                }
                Phase::Content(i) => {
                    if self.plan.invalid_at == Some(i) {
                        self.plan.invalid_at = None;
                        return Some(Ok(self.invalid_event()));
                    }
                    let content = self.parts().1;
                    if i < self.plan.upto.min(content.len()) {
                        let item = content.get(i).cloned().unwrap_or_default();
                        let delay = if i == 0 {
                            self.compiled.ttft
                        } else {
                            self.compiled.chunk_delay
                        };
                        self.phase = Phase::Content(i + 1);
                        if !delay.is_zero() {
                            sleep(delay).await;
                        }
                        if !item.is_empty() {
                            return Some(Ok(item));
                        }
                        continue;
                    }
                    if self.plan.invalid_at.take().is_some() {
                        // after_chunks beyond the content: insert before the ending.
                        return Some(Ok(self.invalid_event()));
                    }
                    self.phase = Phase::Done;
                    return match self.plan.ending {
                        Ending::Tail => {
                            self.phase = Phase::Closing;
                            let tail = self.parts().2.clone();
                            if tail.is_empty() {
                                continue;
                            }
                            Some(Ok(tail))
                        }
                        Ending::Clean => None,
                        Ending::Abort => {
                            sleep(ABORT_FLUSH_DELAY).await;
                            Some(Err(io::Error::new(
                                io::ErrorKind::ConnectionReset,
                                "mock upstream: connection reset mid-body",
                            )))
                        }
                        Ending::Stall => {
                            // Not in flight any more: `stop` must not wait for it.
                            self.guard = None;
                            pending().await
                        }
                    };
                }
                Phase::Closing => {
                    self.phase = Phase::Done;
                    let delay = self.compiled.end_delay;
                    if !delay.is_zero() {
                        sleep(delay).await;
                    }
                    return None;
                }
                Phase::Done => return None,
            }
        }
    }
}

fn paced(
    compiled: Arc<Compiled>,
    source: Source,
    plan: Plan,
    guard: InflightGuard,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + 'static {
    let player = Player {
        compiled,
        source,
        plan,
        phase: Phase::Head,
        guard: Some(guard),
    };
    stream::unfold(player, |mut player| async move {
        let item = player.next_item().await?;
        Some((item, player))
    })
}
