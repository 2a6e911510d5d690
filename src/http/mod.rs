//! HTTP surface. Handlers are thin: read the body within its limits, authenticate, parse, send one
//! `Route` message to this worker's router, write what comes back. The request pipeline, in order:
//!
//! 1. `x-request-id`: taken from the client if sane, else minted; echoed on every response.
//! 2. Auth: when `server.master_key` is set, `Authorization: Bearer <key>` (or `x-api-key`) must
//!    match (constant time). The client's credentials are never forwarded upstream.
//! 3. Body: `Content-Length` over `server.max_body_bytes` is refused before reading; the body is
//!    read under `server.body_read_timeout_ms` and the same size limit.
//! 4. Parse and validate (`providers::request`): 400 naming the field on any problem.
//! 5. `Route` to the worker's `RouterActor`; the reply is a complete body or a committed stream.
//! 6. Response headers say which deployment served, after how many attempts, at what cost, and
//!    the gateway's own overhead (upstream time excluded); one log line per request.

pub mod error;

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::{stream, StreamExt};
use serde::Serialize;
use tokio::time::{timeout_at, Instant};

use crate::actors::deployment::{GetSnapshot, Snapshot};
use crate::actors::registry::Registry;
use crate::actors::router::{RequestMeta, Route, RouteError, Routed, RoutedBody, RouterActor};
use crate::config::Config;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::providers::inbound;
use crate::providers::request::ChatBody;
use error::error_response;

pub const HEADER_DEPLOYMENT: &str = "x-switchyard-deployment";
pub const HEADER_MODEL_GROUP: &str = "x-switchyard-model-group";
pub const HEADER_ATTEMPTS: &str = "x-switchyard-attempts";
pub const HEADER_OVERHEAD: &str = "x-switchyard-overhead-ms";
pub const HEADER_COST: &str = "x-switchyard-cost-usd";
pub const HEADER_REQUEST_ID: &str = "x-request-id";

// The same names, built at compile time: a `&str` name is parsed and checked on every use.
const H_DEPLOYMENT: HeaderName = HeaderName::from_static(HEADER_DEPLOYMENT);
const H_MODEL_GROUP: HeaderName = HeaderName::from_static(HEADER_MODEL_GROUP);
const H_ATTEMPTS: HeaderName = HeaderName::from_static(HEADER_ATTEMPTS);
const H_OVERHEAD: HeaderName = HeaderName::from_static(HEADER_OVERHEAD);
const H_COST: HeaderName = HeaderName::from_static(HEADER_COST);
pub(crate) const H_REQUEST_ID: HeaderName = HeaderName::from_static(HEADER_REQUEST_ID);
const H_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Shared by every worker.
pub struct AppState {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    /// `GET /v1/models`, rendered once.
    pub models_body: Bytes,
    /// Response header values naming each deployment and its model group, built once.
    deployment_headers: Vec<(HeaderValue, HeaderValue)>,
}

impl AppState {
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>, registry: Arc<Registry>) -> Self {
        #[derive(Serialize)]
        struct Model<'a> {
            id: &'a str,
            object: &'static str,
            created: u64,
            owned_by: &'static str,
        }
        #[derive(Serialize)]
        struct List<'a> {
            object: &'static str,
            data: Vec<Model<'a>>,
        }
        let created = crate::providers::oai::unix_now();
        let list = List {
            object: "list",
            data: config
                .groups
                .iter()
                .map(|g| Model {
                    id: &g.name,
                    object: "model",
                    created,
                    owned_by: "switchyard",
                })
                .collect(),
        };
        let models_body = serde_json::to_vec(&list)
            .map(Bytes::from)
            .unwrap_or_default();
        let deployment_headers = config
            .deployments
            .iter()
            .map(|d| {
                let value = |s: &str| {
                    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("-"))
                };
                (value(&d.id), value(&config.groups[d.group].name))
            })
            .collect();
        AppState {
            config,
            metrics,
            registry,
            models_body,
            deployment_headers,
        }
    }
}

/// Registers every route. A known path with the wrong method gets a 405 naming the allowed
/// one; GET routes answer HEAD too.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for path in ["/v1/chat/completions", "/chat/completions"] {
        cfg.service(
            web::resource(path)
                .route(web::post().to(chat_completions))
                .default_service(web::to(method_not_allowed)),
        );
    }
    for path in ["/v1/embeddings", "/embeddings"] {
        cfg.service(
            web::resource(path)
                .route(web::post().to(embeddings))
                .default_service(web::to(method_not_allowed)),
        );
    }
    cfg.service(
        web::resource("/v1/messages")
            .route(web::post().to(messages))
            .default_service(web::to(method_not_allowed)),
    );
    for path in ["/v1/models", "/models"] {
        cfg.service(get_resource(path).route(get_or_head().to(models)));
    }
    cfg.service(get_resource("/health").route(get_or_head().to(health)))
        .service(get_resource("/health/ready").route(get_or_head().to(ready)))
        .service(get_resource("/metrics").route(get_or_head().to(metrics)));
}

fn get_resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

fn get_or_head() -> actix_web::Route {
    web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    let path = req.path();
    let allowed = if path.ends_with("completions")
        || path.ends_with("embeddings")
        || path.ends_with("messages")
    {
        "POST"
    } else {
        "GET, HEAD"
    };
    let err = GatewayError::BadRequest {
        message: format!(
            "{} is not allowed on {}; use {allowed}",
            req.method(),
            req.path()
        ),
        param: None,
        code: Some("method_not_allowed".to_owned()),
    };
    let mut resp = error_response(&err, None);
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    if let Ok(v) = HeaderValue::from_str(allowed) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

/// Anything else: an OpenAI-style 404.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let err = GatewayError::BadRequest {
        message: format!("no route for {} {}", req.method(), req.path()),
        param: None,
        code: Some("unknown_url".to_owned()),
    };
    let mut resp = error_response(&err, None);
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp
}

fn request_id(req: &HttpRequest) -> Arc<str> {
    let given = req
        .headers()
        .get(HEADER_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    match given {
        Some(id) => Arc::from(id),
        None => Arc::from(format!("req_{:016x}", fastrand::u64(..)).as_str()),
    }
}

/// A request id is ASCII by construction (checked or minted above).
fn request_id_value(id: &str) -> HeaderValue {
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn authorized(req: &HttpRequest, config: &Config) -> bool {
    authenticate(req, config).is_ok()
}

/// Who is calling: `Ok(None)` for the master key (or when no key is configured), `Ok(Some(i))`
/// for `config.keys[i]`, `Err` for a missing or unknown key. Every configured key is compared
/// in constant time.
fn authenticate(req: &HttpRequest, config: &Config) -> Result<Option<usize>, GatewayError> {
    if config.server.master_key.is_none() && config.keys.is_empty() {
        return Ok(None);
    }
    let h = req.headers();
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let bearer = h.get(header::AUTHORIZATION).and_then(|v| {
        let v = v.as_bytes();
        (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &v[7..])
    });
    let x_api_key = h.get("x-api-key").map(HeaderValue::as_bytes);
    let Some(presented) = bearer.or(x_api_key) else {
        return Err(GatewayError::Unauthorized);
    };
    let master = config
        .server
        .master_key
        .as_ref()
        .is_some_and(|k| k.matches(presented));
    // No early exit: every key is compared, so timing does not tell which one matched.
    let mut found = None;
    for (i, k) in config.keys.iter().enumerate() {
        if k.key.matches(presented) {
            found = Some(i);
        }
    }
    match (master, found) {
        (true, _) => Ok(None),
        (false, Some(i)) => Ok(Some(i)),
        (false, None) => Err(GatewayError::Unauthorized),
    }
}

pub const HEADER_REGION: &str = "x-switchyard-region";
pub const HEADER_TAGS: &str = "x-switchyard-tags";
pub const HEADER_TIMEOUT: &str = "x-switchyard-timeout";
/// The OpenAI SDKs send their own timeout, in seconds.
const HEADER_STAINLESS_TIMEOUT: &str = "x-stainless-timeout";

/// Routing facts from the request's headers and the caller's key.
fn request_meta(
    req: &HttpRequest,
    config: &Config,
    key: Option<usize>,
) -> Result<RequestMeta, GatewayError> {
    let h = req.headers();
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let key_region = key.and_then(|k| config.keys[k].region.as_deref());
    let region = match (key_region, text(HEADER_REGION).filter(|r| !r.is_empty())) {
        (Some(k), Some(asked)) if k != asked => {
            return Err(GatewayError::BadRequest {
                message: format!(
                    "this key is restricted to region `{k}`; {HEADER_REGION} asked for `{asked}`"
                ),
                param: None,
                code: Some("region_not_allowed".to_owned()),
            })
        }
        (Some(k), _) => Some(Box::from(k)),
        (None, asked) => asked.map(Box::from),
    };
    let tags = text(HEADER_TAGS)
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(Box::from)
                .collect()
        })
        .unwrap_or_default();
    let mut headers: Vec<(Box<str>, Box<str>)> = Vec::new();
    for rule in &config.rules {
        for (name, _) in &rule.headers {
            if headers.iter().any(|(n, _)| **n == **name) {
                continue;
            }
            if let Some(v) = text(name) {
                headers.push((Box::from(name.as_str()), Box::from(v)));
            }
        }
    }
    let seconds = |v: &str| {
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
    };
    let timeout = match text(HEADER_TIMEOUT) {
        Some(v) => Some(seconds(v).ok_or_else(|| {
            GatewayError::bad_request(
                format!("{HEADER_TIMEOUT} must be a positive number of seconds, got {v:?}"),
                None,
            )
        })?),
        // The SDK's own timeout is a hint; a bad one is ignored.
        None => text(HEADER_STAINLESS_TIMEOUT).and_then(seconds),
    };
    Ok(RequestMeta {
        key,
        region,
        tags,
        headers,
        timeout,
    })
}

async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, GatewayError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    let deadline = Instant::now() + timeout;
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    loop {
        let chunk = match timeout_at(deadline, payload.next()).await {
            Err(_) => return Err(GatewayError::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(GatewayError::bad_request(
                    format!("could not read the request body: {e}"),
                    None,
                ))
            }
            Ok(Some(Ok(c))) => c,
        };
        let so_far = buf.as_ref().map_or(0, |b| b.len()) + first.as_ref().map_or(0, |b| b.len());
        if so_far + chunk.len() > limit {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
        // The common case is one chunk: keep it without copying.
        match (&mut first, &mut buf) {
            (None, None) => first = Some(chunk),
            (Some(f), None) => {
                let mut b = BytesMut::with_capacity(declared.map_or(f.len() * 2, |n| n as usize));
                b.extend_from_slice(f);
                b.extend_from_slice(&chunk);
                first = None;
                buf = Some(b);
            }
            (_, Some(b)) => b.extend_from_slice(&chunk),
        }
    }
    Ok(match (first, buf) {
        (_, Some(b)) => b.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}

/// What one request's log line says.
struct Outcome<'a> {
    request_id: &'a str,
    model: Option<&'a str>,
    group: Option<usize>,
    deployment: Option<usize>,
    status: u16,
    attempts: u32,
    overhead: Duration,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost: u64,
    error: Option<&'a GatewayError>,
}

fn log_request(config: &Config, started: Instant, o: Outcome<'_>) {
    if !config.log.requests {
        return;
    }
    let group = o.group.map(|g| &*config.groups[g].name);
    let deployment = o.deployment.map(|d| &*config.deployments[d].id);
    tracing::info!(
        target: "switchyard::request",
        request_id = o.request_id,
        model = o.model,
        model_group = group,
        deployment = deployment,
        status = o.status,
        stream = false,
        attempts = o.attempts,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        overhead_ms = o.overhead.as_secs_f64() * 1000.0,
        prompt_tokens = o.prompt_tokens,
        completion_tokens = o.completion_tokens,
        cost_usd = o.cost as f64 / 1e12,
        error_type = o.error.map(|e| e.error_type()),
        error = o.error.map(|e| e.to_string()).as_deref(),
        "request"
    );
}

/// A header value formatted on the stack (no `String` on the hot path).
fn header_value(args: std::fmt::Arguments<'_>) -> HeaderValue {
    use std::io::Write;
    let mut buf = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let written = cursor
        .write_fmt(args)
        .ok()
        .and_then(|()| usize::try_from(cursor.position()).ok())
        .and_then(|n| buf.get(..n))
        .and_then(|bytes| HeaderValue::from_bytes(bytes).ok());
    written.unwrap_or_else(|| HeaderValue::from_static("-"))
}

/// Milliseconds with three decimals (microsecond resolution), from integers.
fn overhead_ms(d: Duration) -> HeaderValue {
    let us = d.as_micros();
    header_value(format_args!("{}.{:03}", us / 1000, us % 1000))
}

/// Pico-dollars as a decimal dollar amount: `0.0035`, `1.25`, `2.0`.
fn usd(pico: u64) -> HeaderValue {
    let whole = pico / 1_000_000_000_000;
    let mut frac = pico % 1_000_000_000_000;
    if frac == 0 {
        return header_value(format_args!("{whole}.0"));
    }
    let mut digits = 12;
    while frac % 10 == 0 {
        frac /= 10;
        digits -= 1;
    }
    header_value(format_args!("{whole}.{frac:0digits$}"))
}

/// The client-facing APIs that route through the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/messages`: Anthropic Messages in, translated to chat and back.
    Messages,
}

pub async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    router: web::Data<Addr<RouterActor>>,
) -> HttpResponse {
    serve(Api::Chat, req, payload, state, router).await
}

pub async fn embeddings(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    router: web::Data<Addr<RouterActor>>,
) -> HttpResponse {
    serve(Api::Embeddings, req, payload, state, router).await
}

pub async fn messages(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    router: web::Data<Addr<RouterActor>>,
) -> HttpResponse {
    serve(Api::Messages, req, payload, state, router).await
}

/// An error in the client's API's own format: OpenAI's envelope, or Anthropic's for
/// `/v1/messages` (same status and headers).
fn api_error(api: Api, err: &GatewayError, rid: &str) -> HttpResponse {
    let mut resp = error_response(err, Some(rid));
    if api == Api::Messages {
        let body = inbound::error_body(err.status(), &err.to_string());
        let mut out = HttpResponse::build(resp.status());
        for (name, value) in resp.headers().iter() {
            if name != header::CONTENT_LENGTH {
                out.insert_header((name.clone(), value.clone()));
            }
        }
        resp = out.content_type("application/json").body(body);
    }
    resp
}

/// Parses the body for `api` into what the router takes.
fn parse_for(api: Api, bytes: Bytes) -> Result<ChatBody, GatewayError> {
    match api {
        Api::Chat => ChatBody::parse(bytes),
        Api::Embeddings => ChatBody::parse_embeddings(bytes),
        Api::Messages => {
            let inbound = inbound::to_openai(&bytes)?;
            ChatBody::parse(Bytes::from(inbound.body))
        }
    }
}

async fn serve(
    api: Api,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    router: web::Data<Addr<RouterActor>>,
) -> HttpResponse {
    let started = Instant::now();
    let config = &state.config;
    let rid = request_id(&req);
    let fail = |err: GatewayError, model: Option<&str>, group, attempts, overhead| {
        let status = err.status();
        state.metrics.request(group, None, status);
        log_request(
            config,
            started,
            Outcome {
                request_id: &rid,
                model,
                group,
                deployment: None,
                status,
                attempts,
                overhead,
                prompt_tokens: 0,
                completion_tokens: 0,
                cost: 0,
                error: Some(&err),
            },
        );
        let mut resp = api_error(api, &err, &rid);
        if attempts > 0 {
            resp.headers_mut()
                .insert(H_ATTEMPTS, HeaderValue::from(attempts));
        }
        resp
    };

    let meta = match authenticate(&req, config).and_then(|key| request_meta(&req, config, key)) {
        Ok(m) => m,
        Err(e) => return fail(e, None, None, 0, Duration::ZERO),
    };
    let bytes = match read_body(
        &req,
        payload,
        config.server.max_body_bytes,
        config.server.body_read_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return fail(e, None, None, 0, Duration::ZERO),
    };
    let received = Instant::now();
    let body = match parse_for(api, bytes) {
        Ok(b) => b,
        Err(e) => return fail(e, None, None, 0, received.elapsed()),
    };
    let model = body.model.clone();
    let routed = router
        .send(Route {
            body,
            request_id: rid.clone(),
            received,
            meta,
        })
        .await;
    let routed: Routed = match routed {
        Ok(Ok(r)) => r,
        Ok(Err(RouteError {
            error,
            group,
            attempts,
            upstream_wait,
        })) => {
            let overhead = received.elapsed().saturating_sub(upstream_wait);
            state.metrics.overhead.record(overhead.as_secs_f64());
            return fail(error, Some(&model), group, attempts, overhead);
        }
        Err(e) => {
            return fail(
                GatewayError::Internal(format!("router unavailable: {e}")),
                Some(&model),
                None,
                0,
                Duration::ZERO,
            )
        }
    };

    let overhead = received.elapsed().saturating_sub(routed.upstream_wait);
    state.metrics.overhead.record(overhead.as_secs_f64());
    state
        .metrics
        .request(Some(routed.group), Some(routed.deployment), 200);
    let (dep_value, group_value) = state.deployment_headers[routed.deployment].clone();
    let mut resp = HttpResponse::Ok();
    resp.insert_header((H_REQUEST_ID, request_id_value(&rid)))
        .insert_header((H_DEPLOYMENT, dep_value))
        .insert_header((H_MODEL_GROUP, group_value))
        .insert_header((H_ATTEMPTS, HeaderValue::from(routed.attempts)))
        .insert_header((H_OVERHEAD, overhead_ms(overhead)));
    match routed.body {
        RoutedBody::Json { body, usage, cost } => {
            log_request(
                config,
                started,
                Outcome {
                    request_id: &rid,
                    model: Some(&model),
                    group: Some(routed.group),
                    deployment: Some(routed.deployment),
                    status: 200,
                    attempts: routed.attempts,
                    overhead,
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    cost,
                    error: None,
                },
            );
            let body = if api == Api::Messages {
                // Our own output failing to translate is a bug, not the upstream's fault;
                // the request was served and billed, so the client gets a 500 that says so.
                match inbound::message_from_completion(&body, &model) {
                    Ok(b) => Bytes::from(b),
                    Err(e) => {
                        let err = GatewayError::Internal(format!(
                            "cannot express the answer in the Messages format: {e}"
                        ));
                        return api_error(api, &err, &rid);
                    }
                }
            } else {
                body
            };
            resp.insert_header((H_COST, usd(cost)))
                .content_type("application/json")
                .body(body)
        }
        RoutedBody::Stream { prelude, rx } => {
            // The stream's log line is written by the pump when it ends.
            resp.content_type("text/event-stream")
                .insert_header((header::CACHE_CONTROL, "no-cache"))
                .insert_header((H_ACCEL_BUFFERING, HeaderValue::from_static("no")));
            if api == Api::Messages {
                return resp.streaming(anthropic_stream(prelude, rx, &model));
            }
            let rest = stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<_, actix_web::Error>(b), rx))
            });
            let body = stream::once(async move { Ok::<_, actix_web::Error>(prelude) }).chain(rest);
            resp.streaming(body)
        }
    }
}

/// The routed OpenAI chunks, re-expressed as Anthropic stream events.
fn anthropic_stream(
    prelude: Bytes,
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    model: &str,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    let mut t = inbound::StreamToAnthropic::new(model);
    let mut first = BytesMut::new();
    t.feed(&prelude, &mut first);
    let state = (Some(rx), t, Some(first.freeze()));
    stream::unfold(state, |(mut rx, mut t, first)| async move {
        if let Some(first) = first {
            return Some((Ok(first), (rx, t, None)));
        }
        let r = rx.as_mut()?;
        let mut out = BytesMut::new();
        match r.recv().await {
            Some(chunk) => t.feed(&chunk, &mut out),
            None => {
                t.finish(&mut out);
                rx = None;
            }
        }
        Some((Ok(out.freeze()), (rx, t, None)))
    })
}

pub async fn models(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !authorized(&req, &state.config) {
        return error_response(&GatewayError::Unauthorized, None);
    }
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.models_body.clone())
}

/// Liveness: the process serves HTTP. Never calls an upstream or an actor.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

#[derive(Serialize)]
struct Readiness<'a> {
    status: &'static str,
    model_groups: Vec<GroupReadiness<'a>>,
    deployments: Vec<Snapshot>,
}

#[derive(Serialize)]
struct GroupReadiness<'a> {
    name: &'a str,
    ready: bool,
    available: usize,
    deployments: Vec<&'a str>,
}

/// Readiness: every model group has at least one deployment that would take a request now.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let config = &state.config;
    let timeout = config.router.mailbox_timeout;
    let asks = config.deployments.iter().map(|d| {
        let addr = state.registry.addr(d.index);
        async move { addr.send(GetSnapshot).timeout(timeout).await }
    });
    let snapshots: Vec<Snapshot> = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .zip(config.deployments.iter())
        .map(|(r, d)| match r {
            Ok(s) => s,
            Err(e) => {
                if matches!(e, actix::MailboxError::Closed) {
                    state.registry.respawn(d.index);
                }
                Snapshot::unavailable(d)
            }
        })
        .collect();
    let groups: Vec<GroupReadiness> = config
        .groups
        .iter()
        .map(|g| {
            let available = g
                .deployments
                .iter()
                .filter(|&&d| snapshots[d].available)
                .count();
            GroupReadiness {
                name: &g.name,
                ready: available > 0,
                available,
                deployments: g
                    .deployments
                    .iter()
                    .map(|&d| &*config.deployments[d].id)
                    .collect(),
            }
        })
        .collect();
    let all_ready = groups.iter().all(|g| g.ready);
    let body = Readiness {
        status: if all_ready { "ready" } else { "not_ready" },
        model_groups: groups,
        deployments: snapshots,
    };
    let status = if all_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(body)
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_formats_pico_dollars() {
        assert_eq!(usd(0), "0.0");
        assert_eq!(usd(3_500_000_000), "0.0035");
        assert_eq!(usd(1_250_000_000_000), "1.25");
        assert_eq!(usd(2_000_000_000_000), "2.0");
        assert_eq!(usd(1), "0.000000000001");
        assert_eq!(usd(u64::MAX), "18446744.073709551615");
    }

    #[test]
    fn overhead_has_microsecond_resolution() {
        assert_eq!(overhead_ms(Duration::from_nanos(123_456_789)), "123.456");
        assert_eq!(overhead_ms(Duration::from_micros(7)), "0.007");
        assert_eq!(overhead_ms(Duration::ZERO), "0.000");
    }
}
