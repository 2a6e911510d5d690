//! What a route answers: [`Behavior`] and the enums it is made of.
//!
//! These are plain data. Nothing here touches HTTP; `compile.rs` turns a `Behavior` into
//! ready-to-send bytes once, when it is set or pushed.

use std::time::Duration;

/// Tool call id used by [`Behavior::tool_call`] in both wire formats.
pub const MOCK_TOOL_CALL_ID: &str = "call_mock0001";

/// Text used by [`Behavior::default`].
pub const DEFAULT_REPLY_TEXT: &str = "Hello from the mock upstream.";

/// How a route answers a request.
///
/// Timings: `latency` is waited before anything is sent (for a non-stream reply, before the
/// whole response). For a stream, the response headers and the pre-content events (OpenAI role
/// chunk; Anthropic `message_start`, `content_block_start`, `ping`) are sent next, then `ttft`
/// is waited before the first content chunk and `chunk_delay` between content chunks.
///
/// Usage: `prompt_tokens` is the OpenAI notion (total input, cached tokens included).
/// Anthropic responses report `input_tokens = prompt_tokens - cached_tokens` and
/// `cache_read_input_tokens = cached_tokens` (Bedrock likewise with `inputTokens` and
/// `cacheReadInputTokens`), so a gateway translating them to OpenAI (providers.md §3.3, §4.5)
/// arrives back at `prompt_tokens`. Gemini reports `promptTokenCount = prompt_tokens` (and
/// `cachedContentTokenCount`), Cohere `input_tokens = prompt_tokens`. Values are sent as given,
/// up to `u32::MAX` each (totals are computed in 64 bits).
///
/// The other formats (Azure, Bedrock, Gemini, Cohere) and embeddings are described in the module
/// docs of `mock`.
#[derive(Clone, Debug)]
pub struct Behavior {
    /// Delay before response headers (non-stream: before the whole response).
    pub latency: Duration,
    /// Stream only: delay after the headers before the first content chunk.
    pub ttft: Duration,
    /// Stream only: delay between content chunks.
    pub chunk_delay: Duration,
    /// Stream only: delay after the last event (`[DONE]`, `message_stop`, ...) before the body
    /// ends, as an upstream that is slow to close its chunked body.
    pub end_delay: Duration,
    /// Number of content pieces the reply is split into (0 is treated as 1; a text shorter than
    /// this is split into one piece per character).
    pub chunks: usize,
    /// What the model says.
    pub reply: Reply,
    /// Failure to inject.
    pub fault: Fault,
    /// Probability (0.0..=1.0) that a request is answered with [`ErrorPreset::ServerError`].
    pub fail_rate: f64,
    /// Model name put in responses.
    pub model: String,
    /// Prompt tokens reported (OpenAI meaning: cached tokens included).
    pub prompt_tokens: u32,
    /// OpenAI `prompt_tokens_details.cached_tokens` / Anthropic `cache_read_input_tokens`.
    pub cached_tokens: u32,
    /// Completion tokens reported; `None` = the number of content pieces sent.
    pub completion_tokens: Option<u32>,
    /// Extra headers on successful responses (invalid names or values are skipped).
    pub headers: Vec<(String, String)>,
    /// Embeddings: vector length when the request names none (`dimensions`,
    /// `output_dimension`, `outputDimensionality`); 0 is treated as 1. Default 8.
    pub embedding_dims: usize,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            latency: Duration::ZERO,
            ttft: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            end_delay: Duration::ZERO,
            chunks: 4,
            reply: Reply::Text(DEFAULT_REPLY_TEXT.to_owned()),
            fault: Fault::None,
            fail_rate: 0.0,
            model: "mock-model".to_owned(),
            prompt_tokens: 10,
            cached_tokens: 0,
            completion_tokens: None,
            headers: Vec::new(),
            embedding_dims: 8,
        }
    }
}

impl Behavior {
    /// Default behaviour replying with this text.
    pub fn text(s: impl Into<String>) -> Self {
        Behavior {
            reply: Reply::Text(s.into()),
            ..Behavior::default()
        }
    }

    /// Default behaviour replying with one tool call (id [`MOCK_TOOL_CALL_ID`]).
    /// `arguments_json` is the JSON text of the arguments object, e.g. `{"city":"Paris"}`.
    pub fn tool_call(name: impl Into<String>, arguments_json: impl Into<String>) -> Self {
        Behavior {
            reply: Reply::ToolCall {
                id: MOCK_TOOL_CALL_ID.to_owned(),
                name: name.into(),
                arguments: arguments_json.into(),
            },
            ..Behavior::default()
        }
    }

    /// Default behaviour answering with this error (`Fault::Error(preset)`).
    pub fn error(preset: ErrorPreset) -> Self {
        Behavior {
            fault: Fault::Error(preset),
            ..Behavior::default()
        }
    }

    pub fn with_fault(mut self, f: Fault) -> Self {
        self.fault = f;
        self
    }

    pub fn with_latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }

    pub fn with_ttft(mut self, d: Duration) -> Self {
        self.ttft = d;
        self
    }

    pub fn with_chunk_delay(mut self, d: Duration) -> Self {
        self.chunk_delay = d;
        self
    }

    pub fn with_end_delay(mut self, d: Duration) -> Self {
        self.end_delay = d;
        self
    }

    pub fn with_chunks(mut self, n: usize) -> Self {
        self.chunks = n;
        self
    }

    pub fn with_model(mut self, m: impl Into<String>) -> Self {
        self.model = m.into();
        self
    }

    pub fn with_fail_rate(mut self, p: f64) -> Self {
        self.fail_rate = p;
        self
    }

    /// Report these token counts (prompt includes cached tokens, see the type docs).
    pub fn with_usage(mut self, prompt: u32, completion: u32) -> Self {
        self.prompt_tokens = prompt;
        self.completion_tokens = Some(completion);
        self
    }

    pub fn with_cached_tokens(mut self, n: u32) -> Self {
        self.cached_tokens = n;
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_embedding_dims(mut self, n: usize) -> Self {
        self.embedding_dims = n;
        self
    }
}

/// What the model replies.
#[derive(Clone, Debug)]
pub enum Reply {
    Text(String),
    /// One tool call; `arguments` is the JSON text of the arguments object, e.g. `{"city":"Paris"}`.
    /// For the Anthropic non-stream body it must parse as JSON (it becomes `input`); if it does
    /// not, `input` is `{}`. Streams send the text as given.
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
}

/// A failure to inject. "Content chunks" are the pieces of the reply (see [`Behavior::chunks`]);
/// `after_chunks` larger than the number of pieces means "after all of them".
#[derive(Clone, Debug)]
pub enum Fault {
    None,
    /// Answer with this error in the route's wire format.
    Error(ErrorPreset),
    /// Stream: send the role chunk (OpenAI) / pre-content events (Anthropic) plus
    /// `after_chunks` content chunks, then abort the connection mid-body (the chunked body never
    /// terminates). Non-stream: send the first half of the JSON body (with the full
    /// `content-length`), then abort the same way.
    ResetMidBody {
        after_chunks: usize,
    },
    /// Stream: send `after_chunks` content chunks, then end the body cleanly without
    /// finish_reason / content_block_stop / message_delta / message_stop / `[DONE]`.
    /// Non-stream: a 200 whose body is the first half of the JSON (content-length matching).
    CutStream {
        after_chunks: usize,
    },
    /// Stream: HTTP 200, then an in-band error before any content (Anthropic: `message_start`
    /// then `event: error`; OpenAI: `data: {"error":{...}}`; others: see the module docs), then
    /// end the body.
    /// Non-stream: like `Error(ErrorPreset::Overloaded)`.
    InBandErrorBeforeContent,
    /// Stream: send `after_chunks` content chunks, then nothing more, never ending.
    /// Non-stream: headers and the first half of the body, then nothing more.
    StallAfter {
        after_chunks: usize,
    },
    /// Stream: after `after_chunks` content chunks insert one event whose data is not valid JSON
    /// (`data: {not json`), then continue normally. Non-stream: a 200 with body `{not json`.
    InvalidJsonEvent {
        after_chunks: usize,
    },
    /// Never send response headers (until the client goes away or the mock stops).
    Hang,
    /// A 200 with `content-type: text/html` and an HTML page (a proxy or portal in the way),
    /// whether or not a stream was asked for.
    WrongContentType,
}

/// Canned upstream errors, rendered in the route's wire format (see providers.md §1.7, §2.3,
/// §3.5, §4.7, §5.5, §6, §7, §9). Azure, Bedrock, Gemini, Cohere and Voyage are described in the
/// module docs of `mock` (table "Error presets").
#[derive(Clone, Debug)]
pub enum ErrorPreset {
    /// 429 rate limit; `retry_after: Some(s)` adds `retry-after: s` in both formats.
    RateLimited { retry_after: Option<u64> },
    /// OpenAI 429 `insufficient_quota`; Anthropic 402 `billing_error`.
    QuotaExhausted,
    /// OpenAI 503 `server_error`; Anthropic 529 `overloaded_error` (the §9.2 fixture body).
    Overloaded,
    /// 500: OpenAI `server_error`; Anthropic `api_error`.
    ServerError,
    /// 400: OpenAI `context_length_exceeded` (§9.1 fixture); Anthropic "prompt is too long".
    ContextLength,
    /// 400 `invalid_request_error`, generic message.
    BadRequest,
    /// 401: OpenAI `invalid_api_key`; Anthropic `authentication_error`.
    Unauthorized,
    /// The provider's content-policy signal (providers.md §0.3): OpenAI 400
    /// `content_policy_violation`; Azure 400 `code: content_filter` (§2.3 body). Where the signal
    /// is a 200, a chat request gets a successful answer (stream or not) with the filtered finish:
    /// Anthropic `stop_reason: refusal`, Bedrock `stopReason: guardrail_intervened`, Gemini
    /// `promptFeedback.blockReason: SAFETY` without candidates. Embeddings of those get a 400.
    ContentFiltered,
    /// Any status with this exact body and headers (`content-type: application/json` unless
    /// given). An invalid status becomes 500; invalid headers are skipped.
    Custom {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
}
