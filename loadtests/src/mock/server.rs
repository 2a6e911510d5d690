//! The request handler: routing, body limit, auth, validation, then the behaviour's answer.
//!
//! Per request, in order: resolve the route from the path (else 404), count the request,
//! read the body (16 MiB limit, else 413), record it (if recording), check the API key (401),
//! validate the body (400), pick the behaviour (queue first, else the route's), wait `latency`,
//! then answer: the `fail_rate` roll, the fault, or the precompiled success.

use std::future::{pending, ready};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::http::{Method, StatusCode};
use actix_web::rt::time::sleep;
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use bytes::{Bytes, BytesMut};
use futures_util::{stream, StreamExt};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::compile::{json_headers, Compiled, FaultPlan, Format, HeaderList, Prepared};
use super::record::RecordedRequest;
use super::state::{InflightGuard, Shared};
use super::wire::{self, anthropic as an, openai as oa};

/// Request body limit; larger bodies get a 413 in the route's format.
pub const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Pause between the last bytes of an aborted body and the abort, so that actix flushes them
/// to the socket first (it drops unflushed output when a body stream fails).
const ABORT_FLUSH_DELAY: Duration = Duration::from_millis(10);

static EMPTY: Bytes = Bytes::new();

pub(crate) async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let received_at = Instant::now();
    let shared = shared.into_inner();
    let Some((format, route_name)) = parse_path(req.path()) else {
        return not_found(&req);
    };
    if req.method() != Method::POST {
        return not_found(&req);
    }
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
    if let Some(key) = shared.api_key.as_deref() {
        if let Some(denied) = check_auth(format, &req, key) {
            return denied;
        }
    }
    let wants = match validate(format, &req, &body) {
        Ok(wants) => wants,
        Err(r) => return invalid_request(format, &r.message, r.param_code),
    };

    let compiled = route.pick();
    if !compiled.latency.is_zero() {
        sleep(compiled.latency).await;
    }
    answer(compiled, format, wants, guard).await
}

// === routing ===

/// `(format, route)` for the paths the mock serves (see the module docs of `mock`).
pub(crate) fn parse_path(path: &str) -> Option<(Format, &str)> {
    let path = path.strip_prefix('/')?;
    match path {
        "v1/chat/completions" | "chat/completions" => return Some((Format::OpenAi, "")),
        "v1/messages" => return Some((Format::Anthropic, "")),
        _ => {}
    }
    let (route, rest) = path.split_once('/')?;
    if route.is_empty() {
        return None;
    }
    match rest {
        "v1/chat/completions" | "chat/completions" => Some((Format::OpenAi, route)),
        "v1/messages" => Some((Format::Anthropic, route)),
        _ => None,
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
    builder(status, &json_headers(format, wire::REQUEST_ID)).body(body)
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
    let body = match format {
        Format::OpenAi => oa::error_body(
            "Request body too large: the limit is 16777216 bytes.",
            "invalid_request_error",
            None,
            Some("request_too_large"),
        ),
        Format::Anthropic => an::error_body(
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
            wire::REQUEST_ID,
        ),
    };
    error_response(format, StatusCode::PAYLOAD_TOO_LARGE, body)
}

/// 400 `invalid_request_error`; `param` and `code` are used by the OpenAI format only.
fn invalid_request(
    format: Format,
    message: &str,
    param_code: Option<(&str, &str)>,
) -> HttpResponse {
    let body = match format {
        Format::OpenAi => oa::error_body(
            message,
            "invalid_request_error",
            param_code.map(|(p, _)| p),
            param_code.map(|(_, c)| c),
        ),
        Format::Anthropic => an::error_body("invalid_request_error", message, wire::REQUEST_ID),
    };
    error_response(format, StatusCode::BAD_REQUEST, body)
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

fn check_auth(format: Format, req: &HttpRequest, key: &str) -> Option<HttpResponse> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let body = match format {
        Format::OpenAi => match header("authorization") {
            None => oa::error_body(
                "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
                None,
            ),
            Some(v) if v.strip_prefix("Bearer ") == Some(key) => return None,
            Some(_) => oa::error_body(
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
    };
    Some(error_response(format, StatusCode::UNAUTHORIZED, body))
}

// === validation ===

/// What the request asked for, as far as the answer depends on it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wants {
    pub stream: bool,
    /// OpenAI `stream_options.include_usage` (always false for Anthropic).
    pub include_usage: bool,
}

/// The JSON type of a field, found without allocating (arrays and objects are skipped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Kind {
    #[default]
    Missing,
    Null,
    Bool,
    Integer,
    Float,
    String,
    EmptyArray,
    Array,
    Object,
}

impl Kind {
    fn openai_name(self) -> &'static str {
        match self {
            Kind::Missing | Kind::Null => "null",
            Kind::Bool => "a boolean",
            Kind::Integer => "an integer",
            Kind::Float => "a decimal",
            Kind::String => "a string",
            Kind::EmptyArray | Kind::Array => "an array",
            Kind::Object => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KindVisitor;
        impl<'de> Visitor<'de> for KindVisitor {
            type Value = Kind;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Kind, E> {
                Ok(Kind::Bool)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Kind, E> {
                Ok(Kind::Integer)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Kind, E> {
                Ok(Kind::Integer)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Kind, E> {
                Ok(Kind::Float)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Kind, E> {
                Ok(Kind::String)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
                Ok(Kind::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Kind, E> {
                Ok(Kind::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
                let mut kind = Kind::EmptyArray;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    kind = Kind::Array;
                }
                Ok(kind)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Kind::Object)
            }
        }
        d.deserialize_any(KindVisitor)
    }
}

/// The few request fields the mock looks at; serde skips the rest.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    model: Kind,
    #[serde(default)]
    messages: Kind,
    #[serde(default)]
    max_tokens: Kind,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Why a request is rejected with a 400 (rendered in the route's format by `invalid_request`).
struct Rejection {
    message: String,
    /// OpenAI `param` and `code`.
    param_code: Option<(&'static str, &'static str)>,
}

fn reject(
    message: impl Into<String>,
    param_code: Option<(&'static str, &'static str)>,
) -> Rejection {
    Rejection {
        message: message.into(),
        param_code,
    }
}

fn validate(format: Format, req: &HttpRequest, body: &[u8]) -> Result<Wants, Rejection> {
    if format == Format::Anthropic && !req.headers().contains_key("anthropic-version") {
        return Err(reject("anthropic-version: header is required", None));
    }
    let is_object = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    let parsed = if is_object {
        serde_json::from_slice::<Probe>(body).map_err(|e| e.to_string())
    } else {
        Err("expected a JSON object".to_owned())
    };
    let probe = match parsed {
        Ok(probe) => probe,
        Err(detail) => {
            let message = match format {
                Format::OpenAi => format!(
                    "We could not parse the JSON body of your request. (HINT: This likely means \
                     you aren't using your HTTP library correctly. The OpenAI API expects a JSON \
                     payload, but what was sent was not valid JSON.) Detail: {detail}"
                ),
                Format::Anthropic => format!("There was an error parsing the body: {detail}"),
            };
            return Err(reject(message, None));
        }
    };
    match format {
        Format::OpenAi => validate_openai(&probe)?,
        Format::Anthropic => validate_anthropic(&probe)?,
    }
    let stream = probe.stream.unwrap_or(false);
    let include_usage = format == Format::OpenAi
        && probe
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
    Ok(Wants {
        stream,
        include_usage,
    })
}

fn validate_openai(p: &Probe) -> Result<(), Rejection> {
    let missing = |field: &'static str| {
        reject(
            format!("Missing required parameter: '{field}'."),
            Some((field, "missing_required_parameter")),
        )
    };
    let wrong_type = |field: &'static str, expected: &str, got: Kind| {
        reject(
            format!(
                "Invalid type for '{field}': expected {expected}, but got {} instead.",
                got.openai_name()
            ),
            Some((field, "invalid_type")),
        )
    };
    match p.model {
        Kind::Missing | Kind::Null => return Err(missing("model")),
        Kind::String => {}
        other => return Err(wrong_type("model", "a string", other)),
    }
    match p.messages {
        Kind::Missing | Kind::Null => Err(missing("messages")),
        Kind::Array => Ok(()),
        Kind::EmptyArray => Err(reject(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got \
             an empty array instead.",
            Some(("messages", "empty_array")),
        )),
        other => Err(wrong_type("messages", "an array of objects", other)),
    }
}

fn validate_anthropic(p: &Probe) -> Result<(), Rejection> {
    let fail = |message: &str| Err(reject(message, None));
    match p.model {
        Kind::Missing => return fail("model: Field required"),
        Kind::String => {}
        _ => return fail("model: Input should be a valid string"),
    }
    match p.messages {
        Kind::Missing => return fail("messages: Field required"),
        Kind::Array => {}
        Kind::EmptyArray => return fail("messages: at least one message is required"),
        _ => return fail("messages: Input should be a valid list"),
    }
    match p.max_tokens {
        Kind::Missing => fail("max_tokens: Field required"),
        Kind::Integer => Ok(()),
        _ => fail("max_tokens: Input should be a valid integer"),
    }
}

// === answering ===

async fn answer(
    c: Arc<Compiled>,
    format: Format,
    wants: Wants,
    guard: InflightGuard,
) -> HttpResponse {
    let set = c.format(format);
    if c.fail_rate > 0.0 && fastrand::f64() < c.fail_rate {
        return prepared(&set.server_error);
    }
    let usage = wants.include_usage;
    let half = || set.json.body.slice(..set.json.body.len() / 2);
    let plan = |upto, invalid_at, ending| Plan {
        upto,
        invalid_at,
        ending,
    };
    match c.fault {
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
            sse(c, format, Source::Script { usage }, p, guard)
        }
        FaultPlan::Error => prepared(set.fault_error.as_ref().unwrap_or(&set.server_error)),
        FaultPlan::ResetMidBody(k) if wants.stream => {
            let p = plan(k, None, Ending::Abort);
            sse(c, format, Source::Script { usage }, p, guard)
        }
        FaultPlan::ResetMidBody(_) => {
            let (prefix, full_len) = (half(), set.json.body.len());
            sized_prefix(c, format, prefix, full_len, Ending::Abort, guard)
        }
        FaultPlan::CutStream(k) if wants.stream => {
            let p = plan(k, None, Ending::Clean);
            sse(c, format, Source::Script { usage }, p, guard)
        }
        FaultPlan::CutStream(_) => builder(StatusCode::OK, &set.json.headers).body(half()),
        FaultPlan::InBand if wants.stream => {
            let p = plan(usize::MAX, None, Ending::Clean);
            sse(c, format, Source::InBand, p, guard)
        }
        FaultPlan::InBand => prepared(set.fault_error.as_ref().unwrap_or(&set.server_error)),
        FaultPlan::StallAfter(k) if wants.stream => {
            let p = plan(k, None, Ending::Stall);
            sse(c, format, Source::Script { usage }, p, guard)
        }
        FaultPlan::StallAfter(_) => {
            let (prefix, full_len) = (half(), set.json.body.len());
            sized_prefix(c, format, prefix, full_len, Ending::Stall, guard)
        }
        FaultPlan::InvalidJson(k) if wants.stream => {
            let p = plan(usize::MAX, Some(k), Ending::Tail);
            sse(c, format, Source::Script { usage }, p, guard)
        }
        FaultPlan::InvalidJson(_) => {
            builder(StatusCode::OK, &set.json.headers).body(Bytes::from_static(b"{not json"))
        }
        FaultPlan::Hang => {
            // Not in flight: it never finishes, `stop` must not wait for it.
            drop(guard);
            pending().await
        }
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
    b.streaming(paced(c, format, source, plan, guard))
}

/// A 200 non-stream body that declares `full_len` bytes but sends only `prefix`, then aborts or
/// stalls.
fn sized_prefix(
    c: Arc<Compiled>,
    format: Format,
    prefix: Bytes,
    full_len: usize,
    ending: Ending,
    guard: InflightGuard,
) -> HttpResponse {
    let mut b = builder(StatusCode::OK, &c.format(format).json.headers);
    let plan = Plan {
        upto: 0,
        invalid_at: None,
        ending,
    };
    let body = paced(c, format, Source::Prefix(prefix), plan, guard);
    b.body(SizedStream::new(full_len as u64, body))
}

// === paced streams ===

/// Which precompiled events a stream plays.
enum Source {
    Script {
        usage: bool,
    },
    InBand,
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
    Done,
}

struct Player {
    compiled: Arc<Compiled>,
    format: Format,
    source: Source,
    plan: Plan,
    phase: Phase,
    guard: Option<InflightGuard>,
}

impl Player {
    /// (head, content, tail)
    fn parts(&self) -> (&Bytes, &[Bytes], &Bytes) {
        let set = self.compiled.format(self.format);
        let script = match &self.source {
            Source::Script { usage } => set.script(*usage),
            Source::InBand => &set.inband,
            Source::Prefix(prefix) => return (prefix, &[], &EMPTY),
        };
        (&script.head, &script.content, &script.tail)
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
                        let invalid = self.compiled.format(self.format).invalid_event.clone();
                        return Some(Ok(invalid));
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
                        let invalid = self.compiled.format(self.format).invalid_event.clone();
                        return Some(Ok(invalid));
                    }
                    self.phase = Phase::Done;
                    return match self.plan.ending {
                        Ending::Tail => {
                            let tail = self.parts().2.clone();
                            (!tail.is_empty()).then_some(Ok(tail))
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
                Phase::Done => return None,
            }
        }
    }
}

fn paced(
    compiled: Arc<Compiled>,
    format: Format,
    source: Source,
    plan: Plan,
    guard: InflightGuard,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + 'static {
    let player = Player {
        compiled,
        format,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths() {
        assert_eq!(
            parse_path("/v1/chat/completions"),
            Some((Format::OpenAi, ""))
        );
        assert_eq!(parse_path("/chat/completions"), Some((Format::OpenAi, "")));
        assert_eq!(parse_path("/v1/messages"), Some((Format::Anthropic, "")));
        assert_eq!(
            parse_path("/a/v1/chat/completions"),
            Some((Format::OpenAi, "a"))
        );
        assert_eq!(
            parse_path("/a/chat/completions"),
            Some((Format::OpenAi, "a"))
        );
        assert_eq!(parse_path("/a/v1/messages"), Some((Format::Anthropic, "a")));
        assert_eq!(parse_path("/a/messages"), None);
        assert_eq!(parse_path("//v1/messages"), None);
        assert_eq!(parse_path("/a/b/v1/messages"), None);
        assert_eq!(parse_path("/v1/chat/completions/"), None);
        assert_eq!(parse_path(""), None);
        assert_eq!(parse_path("/"), None);
    }
}
