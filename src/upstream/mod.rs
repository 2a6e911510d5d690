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
use crate::providers::{self, Expect, Op, RespMeta, StreamDecoder, StreamTranslator, Wire};

/// Bound on an upstream error body we read (we only need its message and code).
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// After a stream's finish, what is left of the upstream body (normally just the chunked
/// terminator) is read so the connection goes back to the pool; at most this much, this long.
const DRAIN_BYTES: usize = 16 * 1024;
const DRAIN_TIME: Duration = Duration::from_millis(50);

/// Where and how to reach one deployment: its URLs and static headers, prepared once.
#[derive(Debug)]
pub struct Target {
    pub wire: Wire,
    /// URLs for the deployment's own upstream model: chat, chat stream, embeddings, embeddings
    /// batch (Gemini). `None` where the provider does not serve the operation.
    uris: [Option<Uri>; 4],
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The model the cached URLs name.
    model: Arc<str>,
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
    let wire = dep.wire.clone();
    let uri = |op, stream, batch| -> Result<Option<Uri>, String> {
        match wire.url(op, &dep.upstream_model, stream, batch) {
            Ok(u) => u
                .parse()
                .map(Some)
                .map_err(|_| "api_base does not form a valid URL".to_owned()),
            Err(_) => Ok(None),
        }
    };
    let uris = [
        uri(Op::Chat, false, false)?,
        uri(Op::Chat, true, false)?,
        uri(Op::Embeddings, false, false)?,
        uri(Op::Embeddings, false, true)?,
    ];
    let mut headers = Vec::new();
    for (name, value, sensitive) in wire.headers() {
        let mut v = HeaderValue::from_str(&value).map_err(|_| format!("invalid {name} header"))?;
        v.set_sensitive(sensitive);
        headers.push((HeaderName::from_static(name), v));
    }
    Ok(Target {
        wire,
        uris,
        headers,
        model: dep.upstream_model.clone(),
    })
}

/// One request's destination: which operation, which model (a wildcard group passes the
/// client's through), stream or not.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub model: &'a str,
    pub expect: Expect,
    pub stream: bool,
}

impl Target {
    fn uri(&self, call: &Call<'_>) -> Result<Uri, UpstreamError> {
        let batch = call
            .expect
            .embed
            .is_some_and(|(t, _)| t == crate::providers::embeddings::Target::GeminiBatch);
        let slot = match (call.expect.op, call.stream, batch) {
            (Op::Chat, false, _) => 0,
            (Op::Chat, true, _) => 1,
            (Op::Embeddings, _, false) => 2,
            (Op::Embeddings, _, true) => 3,
        };
        if *self.model == *call.model {
            if let Some(u) = &self.uris[slot] {
                return Ok(u.clone());
            }
        }
        let url = self
            .wire
            .url(call.expect.op, call.model, call.stream, batch)
            .map_err(|e| UpstreamError::new(ErrorClass::BadRequest, e.message))?;
        url.parse().map_err(|_| {
            UpstreamError::new(
                ErrorClass::BadRequest,
                "the model name does not form a valid upstream URL",
            )
        })
    }
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
    call: &Call<'_>,
    body: Bytes,
    deadline: Instant,
) -> Result<ClientResponse, UpstreamError> {
    let uri = target.uri(call)?;
    let signed = match &target.wire.aws {
        Some(providers::Aws {
            region,
            credentials: Some(creds),
        }) => {
            let url = uri.to_string();
            providers::bedrock::sign(
                creds,
                region,
                &url,
                &[("content-type", "application/json")],
                &body,
                std::time::SystemTime::now(),
            )
            .map_err(|e| {
                UpstreamError::new(
                    ErrorClass::UpstreamAuth,
                    format!("cannot sign request: {e}"),
                )
            })?
        }
        _ => Vec::new(),
    };
    let mut req = client
        .post(uri)
        .insert_header((actix_web::http::header::CONTENT_TYPE, "application/json"));
    for (name, value) in &target.headers {
        req = req.insert_header((name.clone(), value.clone()));
    }
    for (name, value) in signed {
        let mut v = HeaderValue::from_str(&value).map_err(|_| {
            UpstreamError::new(ErrorClass::UpstreamAuth, "signature is not a valid header")
        })?;
        v.set_sensitive(name == "authorization" || name == "x-amz-security-token");
        req = req.insert_header((HeaderName::from_static(name), v));
    }
    match timeout_at(deadline, req.send_body(body)).await {
        Ok(r) => r.map_err(send_error),
        Err(_) => Err(timed_out("response")),
    }
}

fn header<'a>(resp: &'a ClientResponse, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Facts from a response's headers for the translators.
fn resp_meta<'a>(resp: &'a ClientResponse, model: &'a str) -> RespMeta<'a> {
    RespMeta {
        model,
        created: oai::unix_now(),
        request_id: header(resp, "x-amzn-requestid")
            .or_else(|| header(resp, "x-request-id"))
            .or_else(|| header(resp, "request-id")),
        error_type: header(resp, "x-amzn-errortype"),
        input_token_count: header(resp, "x-amzn-bedrock-input-token-count")
            .and_then(|v| v.trim().parse().ok()),
    }
}

/// Reads and classifies a non-2xx response.
async fn error_from(
    target: &Target,
    call: &Call<'_>,
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
    let meta = resp_meta(&resp, call.model);
    let mut e = providers::classify_error(&target.wire, status, retry_after, &meta, &body);
    e.headroom = headroom(&resp).map(Box::new);
    e
}

/// A 2xx answer whose media type is not what was asked for is a broken upstream (an HTML error
/// page from a proxy, say). A missing content type is accepted; the body is still validated.
fn check_content_type(resp: &ClientResponse, want: &str) -> Result<(), UpstreamError> {
    match header(resp, "content-type") {
        None => Ok(()),
        Some(ct) => {
            let media = ct.split(';').next().unwrap_or("").trim();
            let ok = media.eq_ignore_ascii_case(want)
                || (want == "application/json" && media.to_ascii_lowercase().ends_with("+json"));
            if ok {
                Ok(())
            } else {
                Err(UpstreamError::new(
                    ErrorClass::ServerError,
                    format!("upstream answered with content type {media:?}, expected {want}"),
                )
                .with_status(resp.status().as_u16()))
            }
        }
    }
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
/// validate and translate.
pub async fn call_json(
    client: &Client,
    target: &Target,
    call: &Call<'_>,
    body: Bytes,
    deadline: Instant,
    max_body: usize,
) -> Result<JsonAnswer, UpstreamError> {
    let mut resp = send(client, target, call, body, deadline).await?;
    if !resp.status().is_success() {
        return Err(error_from(target, call, resp, deadline).await);
    }
    check_content_type(&resp, "application/json")?;
    let headroom = headroom(&resp);
    let bytes = match timeout_at(deadline, resp.body().limit(max_body)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(payload_error(e)),
        Err(_) => return Err(timed_out("body")),
    };
    let meta = resp_meta(&resp, call.model);
    let (body, usage) = providers::parse_response(&target.wire, &call.expect, bytes, &meta)?;
    Ok(JsonAnswer {
        body,
        usage,
        headroom,
    })
}

/// A stream that reached its commit point: the bytes to send first, and the rest to pump.
pub struct OpenStream {
    resp: ClientResponse,
    decoder: StreamDecoder,
    translator: StreamTranslator,
    /// Translated output up to and including the first meaningful event.
    pub prelude: Bytes,
    /// When the first meaningful event (or the finish) arrived.
    pub first_token_at: Instant,
    pub headroom: Option<Headroom>,
    /// The upstream body has been read to its end.
    body_ended: bool,
}

/// Opens a stream and reads it up to the first meaningful event (or the finish), before
/// `first_token_deadline`. Any failure up to that point can still be retried invisibly.
pub async fn open_stream(
    client: &Client,
    target: &Target,
    call: &Call<'_>,
    body: Bytes,
    first_token_deadline: Instant,
    include_usage: bool,
) -> Result<OpenStream, UpstreamError> {
    let mut resp = send(client, target, call, body, first_token_deadline).await?;
    if !resp.status().is_success() {
        return Err(error_from(target, call, resp, first_token_deadline).await);
    }
    let want = target.wire.stream_content_type();
    let is_stream = header(&resp, "content-type").is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case(want))
    });
    if !is_stream {
        return Err(UpstreamError::new(
            ErrorClass::ServerError,
            "upstream answered a stream request without an event stream",
        )
        .with_status(resp.status().as_u16()));
    }
    let headroom = headroom(&resp);
    let mut decoder = StreamDecoder::new(target.wire.kind);
    let mut translator =
        StreamTranslator::new(&target.wire, include_usage, &resp_meta(&resp, call.model));
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
        while let Some(ev) = decoder.next_event()? {
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
                body_ended: false,
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
    /// The client's stream, still open, and the upstream body; [`StreamRest::close`] them once
    /// the stream is accounted for.
    pub rest: StreamRest,
}

/// What is left of a pumped stream: the client's end of it, held open so that the stream is
/// billed and its outcome reported before the client sees its end (a client's next request
/// then finds this one's spend recorded), and the upstream body, drained so its connection
/// goes back to the pool before the client's next request can want one.
pub struct StreamRest {
    tx: mpsc::Sender<Bytes>,
    stream: OpenStream,
    drain: bool,
    deadline: Instant,
}

impl StreamRest {
    /// Drains the upstream body (bounded by `DRAIN_BYTES` and `DRAIN_TIME`; an upstream that
    /// ends its body right after its terminator, as they do, costs nothing here), releases it,
    /// then ends the client's stream. The client already has the terminator (`[DONE]`) at this
    /// point; only the end of the HTTP body waits.
    pub async fn close(self) {
        let StreamRest {
            tx,
            mut stream,
            drain: wanted,
            deadline,
        } = self;
        if wanted {
            drain(&mut stream.resp, deadline).await;
        }
        drop(stream);
        drop(tx);
    }
}

/// Relays the rest of a committed stream into `tx` (bounded: a slow client slows the read).
/// Ends on the finish, on a failure (after sending an error event, never `[DONE]`), on the
/// client leaving, or on `deadline` / `idle` timeouts. The usage is final when it returns: what
/// the drain reads later is never translated.
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
    // A stream that ended with its body (Gemini has no terminator) has nothing left to read:
    // awc panics on a read after the end.
    let drain = matches!(end, StreamEnd::Complete) && !stream.body_ended;
    let mut usage = stream.translator.usage();
    let end = match (end, providers::check_usage(&usage)) {
        (end, Ok(())) => end,
        // The client has its stream; impossible numbers are not billed, and the deployment is
        // charged a failure.
        (StreamEnd::Cancelled, Err(_)) => {
            usage = Usage::default();
            StreamEnd::Cancelled
        }
        (_, Err(e)) => {
            usage = Usage::default();
            StreamEnd::Failed(e)
        }
    };
    PumpResult {
        end,
        usage,
        invalid_events: stream.translator.invalid_events(),
        rest: StreamRest {
            tx,
            stream,
            drain,
            deadline,
        },
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
        while let Some(ev) = s.decoder.next_event()? {
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
                s.body_ended = true;
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
