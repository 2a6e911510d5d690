//! Moving bytes to and from upstreams with one worker thread's `awc::Client`: build the client
//! with explicit limits, send one attempt, read a bounded body, open a stream and peek it up to
//! the first meaningful event (the commit point), then pump the rest to the client.
//!
//! Translation is delegated to `providers`; decisions (which deployment, retry or not) are the
//! router's. Every function here returns an [`UpstreamError`] with a class, never panics.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue};
use awc::error::{ConnectError, PayloadError, SendRequestError};
use awc::http::Uri;
use awc::{Client, ClientResponse, Connector};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

use crate::config::{Config, Deployment, RouterConfig};
use crate::error::{ErrorClass, UpstreamError};
use crate::policy::headroom::Headroom;
use crate::providers::oai::{self, Usage};
use crate::providers::sse::SseDecoder;
use crate::providers::{self, ProviderKind, StreamTranslator};

/// Bound on an upstream error body we read (we only need its message and code).
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// After a stream's finish, what is left of the upstream body (normally just the chunked
/// terminator) is read so the connection goes back to the pool; at most this much, this long.
const DRAIN_BYTES: usize = 16 * 1024;
const DRAIN_TIME: Duration = Duration::from_millis(50);

/// Where and how to reach one deployment: its URL and static headers, prepared once.
#[derive(Debug)]
pub struct Target {
    pub uri: Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub kind: ProviderKind,
}

/// Prepares every deployment's target. Fails only if config validation let something through.
pub fn targets(config: &Config) -> Result<Arc<[Target]>, String> {
    config
        .deployments
        .iter()
        .map(|d| target(d).map_err(|e| format!("deployments.{}: {e}", d.id)))
        .collect::<Result<Vec<_>, _>>()
        .map(Arc::from)
}

fn target(dep: &Deployment) -> Result<Target, String> {
    let uri: Uri = dep
        .endpoint
        .parse()
        .map_err(|_| "api_base does not form a valid URL".to_owned())?;
    let mut headers = Vec::new();
    for (name, value, sensitive) in dep.provider.headers(dep) {
        let mut v = HeaderValue::from_str(&value).map_err(|_| format!("invalid {name} header"))?;
        v.set_sensitive(sensitive);
        headers.push((HeaderName::from_static(name), v));
    }
    Ok(Target {
        uri,
        headers,
        kind: dep.provider,
    })
}

/// The worker's upstream client: explicit connect timeout, no redirects, bounded pool, and
/// `TCP_NODELAY` on every upstream connection (awc leaves Nagle on: a request body written after
/// its head, or a large body's last partial segment, would wait for the upstream's delayed ACK).
pub fn build_client(cfg: &RouterConfig) -> Client {
    use actix_service::ServiceExt as _;
    use actix_tls::connect::{Connection, Connector as TcpConnector, Resolver};
    fn nodelay(
        conn: Connection<awc::http::Uri, actix_web::rt::net::TcpStream>,
    ) -> Connection<awc::http::Uri, actix_web::rt::net::TcpStream> {
        // Best effort: a socket that refuses the option still works.
        let _ = conn.io_ref().set_nodelay(true);
        conn
    }
    let tcp = TcpConnector::new(Resolver::default())
        .service()
        .map(nodelay as fn(_) -> _);
    let connector = Connector::new()
        .connector(tcp)
        .timeout(cfg.connect_timeout)
        .handshake_timeout(cfg.connect_timeout)
        .limit(cfg.max_connections_per_worker)
        // Idle upstream connections are reused for this long.
        .conn_keep_alive(Duration::from_secs(30));
    Client::builder()
        .connector(connector)
        .disable_redirects()
        // Every attempt runs under its own deadline (`timeout_at` below), so awc's timer is off.
        .disable_timeout()
        .no_default_headers()
        .finish()
}

fn send_error(e: SendRequestError) -> UpstreamError {
    match e {
        SendRequestError::Timeout | SendRequestError::Connect(ConnectError::Timeout) => {
            UpstreamError::new(ErrorClass::Timeout, "upstream did not answer in time")
        }
        SendRequestError::Connect(c) => UpstreamError::new(
            ErrorClass::Connect,
            format!("cannot connect to upstream: {c}"),
        ),
        SendRequestError::Send(io) => UpstreamError::new(
            ErrorClass::Connect,
            format!("upstream connection failed: {io}"),
        ),
        SendRequestError::Response(p) => UpstreamError::new(
            ErrorClass::ServerError,
            format!("upstream sent a malformed response: {p}"),
        ),
        other => UpstreamError::new(
            ErrorClass::ServerError,
            format!("upstream request failed: {other}"),
        ),
    }
}

fn payload_error(e: PayloadError) -> UpstreamError {
    match e {
        PayloadError::Overflow => UpstreamError::new(
            ErrorClass::ServerError,
            "upstream body exceeds the size limit",
        ),
        PayloadError::Io(io) => UpstreamError::new(
            ErrorClass::Connect,
            format!("upstream connection broke mid-body: {io}"),
        ),
        other => UpstreamError::new(
            ErrorClass::ServerError,
            format!("upstream body ended abnormally: {other}"),
        ),
    }
}

fn timed_out(what: &str) -> UpstreamError {
    UpstreamError::new(ErrorClass::Timeout, format!("upstream {what} timed out"))
}

async fn send(
    client: &Client,
    target: &Target,
    body: Bytes,
    deadline: Instant,
) -> Result<ClientResponse, UpstreamError> {
    let mut req = client
        .post(target.uri.clone())
        .insert_header((actix_web::http::header::CONTENT_TYPE, "application/json"));
    for (name, value) in &target.headers {
        req = req.insert_header((name.clone(), value.clone()));
    }
    match timeout_at(deadline, req.send_body(body)).await {
        Ok(r) => r.map_err(send_error),
        Err(_) => Err(timed_out("response")),
    }
}

fn header<'a>(resp: &'a ClientResponse, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Reads and classifies a non-2xx response.
async fn error_from(
    kind: ProviderKind,
    mut resp: ClientResponse,
    deadline: Instant,
) -> UpstreamError {
    let status = resp.status().as_u16();
    let retry_after = providers::parse_retry_after(
        header(&resp, "retry-after-ms"),
        header(&resp, "retry-after"),
    );
    let body = match timeout_at(deadline, resp.body().limit(MAX_ERROR_BODY_BYTES)).await {
        Ok(Ok(b)) => b,
        // The status alone still classifies the failure.
        _ => Bytes::new(),
    };
    let mut e = providers::classify_error(kind, status, retry_after, &body);
    e.headroom = headroom(&resp).map(Box::new);
    e
}

/// The provider's rate-limit headers, if it sent any.
fn headroom(resp: &ClientResponse) -> Option<Headroom> {
    crate::policy::headroom::parse(|name| header(resp, name), std::time::SystemTime::now())
}

/// A complete non-streamed answer.
pub struct JsonAnswer {
    pub body: Bytes,
    pub usage: Usage,
    pub headroom: Option<Headroom>,
}

/// One non-streaming attempt: send, wait for the whole body (bounded in size and time),
/// translate.
pub async fn call_json(
    client: &Client,
    target: &Target,
    body: Bytes,
    deadline: Instant,
    max_body: usize,
) -> Result<JsonAnswer, UpstreamError> {
    let mut resp = send(client, target, body, deadline).await?;
    if !resp.status().is_success() {
        return Err(error_from(target.kind, resp, deadline).await);
    }
    let headroom = headroom(&resp);
    let bytes = match timeout_at(deadline, resp.body().limit(max_body)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(payload_error(e)),
        Err(_) => return Err(timed_out("body")),
    };
    let (body, usage) = providers::parse_response(target.kind, bytes)?;
    Ok(JsonAnswer {
        body,
        usage,
        headroom,
    })
}

/// A stream that reached its commit point: the bytes to send first, and the rest to pump.
pub struct OpenStream {
    resp: ClientResponse,
    decoder: SseDecoder,
    translator: StreamTranslator,
    /// Translated output up to and including the first meaningful event.
    pub prelude: Bytes,
    /// When the first meaningful event (or the finish) arrived.
    pub first_token_at: Instant,
    pub headroom: Option<Headroom>,
}

/// Opens a stream and reads it up to the first meaningful event (or the finish), before
/// `first_token_deadline`. Any failure up to that point can still be retried invisibly.
pub async fn open_stream(
    client: &Client,
    target: &Target,
    body: Bytes,
    first_token_deadline: Instant,
    include_usage: bool,
) -> Result<OpenStream, UpstreamError> {
    let mut resp = send(client, target, body, first_token_deadline).await?;
    if !resp.status().is_success() {
        return Err(error_from(target.kind, resp, first_token_deadline).await);
    }
    let is_sse = header(&resp, "content-type")
        .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
    if !is_sse {
        return Err(UpstreamError::new(
            ErrorClass::ServerError,
            "upstream answered a stream request without an event stream",
        )
        .with_status(resp.status().as_u16()));
    }
    let headroom = headroom(&resp);
    let mut decoder = SseDecoder::new();
    let mut translator = StreamTranslator::new(target.kind, include_usage);
    let mut prelude = BytesMut::new();
    loop {
        let chunk = match timeout_at(first_token_deadline, resp.next()).await {
            Err(_) => return Err(timed_out("first token")),
            Ok(None) => {
                // Closed before any output: a truncation, retried like any other failure.
                translator.on_eof(&mut prelude)?;
                return Err(UpstreamError::new(
                    ErrorClass::ServerError,
                    "upstream closed the stream before any output",
                ));
            }
            Ok(Some(Err(e))) => return Err(payload_error(e)),
            Ok(Some(Ok(c))) => c,
        };
        decoder.feed(&chunk);
        let mut committed = false;
        while let Some(ev) = decoder
            .next_event()
            .map_err(|e| UpstreamError::new(ErrorClass::ServerError, e.to_string()))?
        {
            let p = translator.on_event(&ev, &mut prelude)?;
            if p.meaningful || p.finished {
                committed = true;
            }
            if translator.is_done() {
                break;
            }
        }
        if committed {
            return Ok(OpenStream {
                resp,
                decoder,
                translator,
                prelude: prelude.freeze(),
                first_token_at: Instant::now(),
                headroom,
            });
        }
    }
}

/// How a pumped stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    /// The upstream finished; the terminator went to the client.
    Complete,
    /// The upstream failed after the commit point; an error event went to the client.
    Failed(UpstreamError),
    /// The client went away; reading stopped.
    Cancelled,
}

pub struct PumpResult {
    pub end: StreamEnd,
    pub usage: Usage,
    pub invalid_events: u32,
}

/// Relays the rest of a committed stream into `tx` (bounded: a slow client slows the read).
/// Ends on the finish, on a failure (after sending an error event, never `[DONE]`), on the
/// client leaving, or on `deadline` / `idle` timeouts.
pub async fn pump(
    mut stream: OpenStream,
    tx: mpsc::Sender<Bytes>,
    idle: Duration,
    deadline: Instant,
) -> PumpResult {
    let end = pump_inner(&mut stream, &tx, idle, deadline).await;
    let end = match end {
        Err(e) => {
            let mut out = BytesMut::new();
            let code = match e.class {
                ErrorClass::Timeout => "upstream_timeout",
                ErrorClass::Overloaded => "upstream_overloaded",
                ErrorClass::RateLimited => "upstream_rate_limited",
                _ => "upstream_error",
            };
            oai::write_error_event(&mut out, &e.message, "server_error", code);
            // If the client is gone this send fails; nothing else to do then.
            let _ = tx.send(out.freeze()).await;
            StreamEnd::Failed(e)
        }
        Ok(end) => end,
    };
    // The client's stream ends here, whatever happens below.
    drop(tx);
    if matches!(end, StreamEnd::Complete) {
        drain(&mut stream.resp, deadline).await;
    }
    PumpResult {
        end,
        usage: stream.translator.usage(),
        invalid_events: stream.translator.invalid_events(),
    }
}

/// Reads a finished upstream body to its end, bounded by `DRAIN_BYTES` and `DRAIN_TIME`.
/// awc returns a connection to its pool only when the body was read to the end; dropping it
/// earlier closes the connection, and every stream would pay a new TCP connect.
async fn drain(resp: &mut ClientResponse, deadline: Instant) {
    let until = (Instant::now() + DRAIN_TIME).min(deadline);
    let mut left = DRAIN_BYTES;
    while let Ok(Some(Ok(chunk))) = timeout_at(until, resp.next()).await {
        match left.checked_sub(chunk.len()) {
            Some(l) => left = l,
            None => return,
        }
    }
}

async fn pump_inner(
    s: &mut OpenStream,
    tx: &mpsc::Sender<Bytes>,
    idle: Duration,
    deadline: Instant,
) -> Result<StreamEnd, UpstreamError> {
    let mut out = BytesMut::new();
    loop {
        // First the events already decoded (some may be left over from the peek).
        while let Some(ev) = s
            .decoder
            .next_event()
            .map_err(|e| UpstreamError::new(ErrorClass::ServerError, e.to_string()))?
        {
            if s.translator.is_done() {
                break;
            }
            s.translator.on_event(&ev, &mut out)?;
        }
        if !out.is_empty() && tx.send(out.split().freeze()).await.is_err() {
            return Ok(StreamEnd::Cancelled);
        }
        if s.translator.is_done() {
            return Ok(StreamEnd::Complete);
        }
        let wait_until = (Instant::now() + idle).min(deadline);
        let chunk = match timeout_at(wait_until, s.resp.next()).await {
            Err(_) if Instant::now() >= deadline => {
                return Err(UpstreamError::new(
                    ErrorClass::Timeout,
                    "request deadline reached mid-stream",
                ))
            }
            Err(_) => return Err(timed_out("stream (idle)")),
            Ok(None) => {
                s.translator.on_eof(&mut out)?;
                if !out.is_empty() && tx.send(out.split().freeze()).await.is_err() {
                    return Ok(StreamEnd::Cancelled);
                }
                return Ok(StreamEnd::Complete);
            }
            Ok(Some(Err(e))) => return Err(payload_error(e)),
            Ok(Some(Ok(c))) => c,
        };
        if tx.is_closed() {
            return Ok(StreamEnd::Cancelled);
        }
        s.decoder.feed(&chunk);
    }
}
