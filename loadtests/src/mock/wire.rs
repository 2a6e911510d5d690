//! JSON and SSE shapes of the two wire formats (providers.md §0.1, §1, §3, §9).
//!
//! Serialization structs borrow everything, keep the field order of the reference vectors and
//! never fail (only strings, integers and raw JSON). No I/O here; used once per compiled
//! behaviour, and for the rare per-request error bodies (auth, validation, 404, 413).

use serde::Serialize;

/// Ids are fixed: providers.md allows made-up ids, and fixed ones make tests simple.
pub(crate) const OPENAI_COMPLETION_ID: &str = "chatcmpl-mock0001";
pub(crate) const ANTHROPIC_MESSAGE_ID: &str = "msg_mock0001";
pub(crate) const REQUEST_ID: &str = "req_mock0001";
/// `x-amzn-RequestId` of every Bedrock answer (the §9.4 fixture's value).
pub(crate) const AWS_REQUEST_ID: &str = "3f0d6a52-6a7e-4b7d-9a51-0c1d2e3f4a5b";
/// request_id of the §9.2 Anthropic HTTP error fixture (used by `ErrorPreset::Overloaded`).
pub(crate) const FIXTURE_REQUEST_ID: &str = "req_GwVec0001";

pub(crate) fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    // The wire structs contain only strings, integers and RawValue: serializing cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// `data: <json>\n\n`
pub(crate) fn sse_data(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    out
}

/// `event: <name>\ndata: <json>\n\n`
pub(crate) fn sse_event(name: &str, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + name.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    out
}

#[derive(Serialize, Clone, Copy, Debug)]
pub(crate) struct EmptyObject {}

// === OpenAI ===

pub(crate) mod openai {
    use super::*;

    #[derive(Serialize)]
    pub(crate) struct Completion<'a> {
        pub id: &'a str,
        pub object: &'static str,
        pub created: u64,
        pub model: &'a str,
        pub choices: [CompletionChoice<'a>; 1],
        pub usage: FullUsage,
        pub service_tier: &'static str,
        pub system_fingerprint: &'static str,
        /// Azure only (§2.3).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub prompt_filter_results: Option<[PromptFilter; 1]>,
    }

    #[derive(Serialize)]
    pub(crate) struct CompletionChoice<'a> {
        pub index: u32,
        pub message: Message<'a>,
        pub logprobs: (),
        pub finish_reason: &'static str,
        /// Azure only (§2.3).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub content_filter_results: Option<FilterResults>,
    }

    #[derive(Serialize)]
    pub(crate) struct Message<'a> {
        pub role: &'static str,
        pub content: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tool_calls: Option<[ToolCall<'a>; 1]>,
        pub refusal: (),
    }

    #[derive(Serialize)]
    pub(crate) struct ToolCall<'a> {
        pub id: &'a str,
        #[serde(rename = "type")]
        pub kind: &'static str,
        pub function: FunctionCall<'a>,
    }

    #[derive(Serialize)]
    pub(crate) struct FunctionCall<'a> {
        pub name: &'a str,
        pub arguments: &'a str,
    }

    /// Non-stream usage, shaped like the §9.1 non-stream vector.
    #[derive(Serialize)]
    pub(crate) struct FullUsage {
        pub prompt_tokens: u64,
        pub completion_tokens: u64,
        pub total_tokens: u64,
        pub prompt_tokens_details: FullPromptDetails,
        pub completion_tokens_details: FullCompletionDetails,
    }

    #[derive(Serialize)]
    pub(crate) struct FullPromptDetails {
        pub cached_tokens: u64,
        pub audio_tokens: u64,
    }

    #[derive(Serialize)]
    pub(crate) struct FullCompletionDetails {
        pub reasoning_tokens: u64,
        pub audio_tokens: u64,
        pub accepted_prediction_tokens: u64,
        pub rejected_prediction_tokens: u64,
    }

    /// Stream usage chunk payload, shaped like the §9.1 streaming vector.
    #[derive(Serialize)]
    pub(crate) struct StreamUsage {
        pub prompt_tokens: u64,
        pub completion_tokens: u64,
        pub total_tokens: u64,
        pub prompt_tokens_details: StreamPromptDetails,
        pub completion_tokens_details: StreamCompletionDetails,
    }

    #[derive(Serialize)]
    pub(crate) struct StreamPromptDetails {
        pub cached_tokens: u64,
    }

    #[derive(Serialize)]
    pub(crate) struct StreamCompletionDetails {
        pub reasoning_tokens: u64,
    }

    #[derive(Serialize)]
    pub(crate) struct Chunk<'a> {
        pub id: &'a str,
        pub object: &'static str,
        pub created: u64,
        pub model: &'a str,
        pub choices: &'a [ChunkChoice<'a>],
        /// None: key absent (no include_usage); Some(None): `"usage":null`.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub usage: Option<Option<&'a StreamUsage>>,
    }

    #[derive(Serialize)]
    pub(crate) struct ChunkChoice<'a> {
        pub index: u32,
        pub delta: Delta<'a>,
        pub logprobs: (),
        pub finish_reason: Option<&'static str>,
        /// Azure only (§2.3).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub content_filter_results: Option<FilterResults>,
    }

    // --- Azure's content-filter annotations (§2.3) ---

    #[derive(Serialize, Clone, Copy, Debug)]
    pub(crate) struct Severity {
        pub filtered: bool,
        pub severity: &'static str,
    }

    #[derive(Serialize, Clone, Copy, Debug)]
    pub(crate) struct Categories {
        pub hate: Severity,
        pub self_harm: Severity,
        pub sexual: Severity,
        pub violence: Severity,
    }

    /// `{}` (role and finish chunks) or every category "safe".
    #[derive(Serialize, Clone, Copy, Debug)]
    #[serde(untagged)]
    pub(crate) enum FilterResults {
        Empty(EmptyObject),
        Safe(Categories),
    }

    const SAFE: Severity = Severity {
        filtered: false,
        severity: "safe",
    };

    pub(crate) const ALL_SAFE: FilterResults = FilterResults::Safe(Categories {
        hate: SAFE,
        self_harm: SAFE,
        sexual: SAFE,
        violence: SAFE,
    });

    #[derive(Serialize, Debug)]
    pub(crate) struct PromptFilter {
        pub prompt_index: u32,
        pub content_filter_results: FilterResults,
    }

    pub(crate) const PROMPT_FILTER: PromptFilter = PromptFilter {
        prompt_index: 0,
        content_filter_results: ALL_SAFE,
    };

    /// Azure's first stream chunk: no choices, only the prompt's filter results, and empty
    /// `id`, `model` and `object`.
    #[derive(Serialize)]
    pub(crate) struct PromptFilterChunk {
        pub choices: [EmptyObject; 0],
        pub created: u64,
        pub id: &'static str,
        pub model: &'static str,
        pub object: &'static str,
        pub prompt_filter_results: [PromptFilter; 1],
        /// None: key absent; Some(()): `"usage":null`.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub usage: Option<()>,
    }

    #[derive(Serialize, Default)]
    pub(crate) struct Delta<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub role: Option<&'static str>,
        /// None: key absent; Some(None): `"content":null`.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub content: Option<Option<&'a str>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tool_calls: Option<[ToolCallDelta<'a>; 1]>,
    }

    #[derive(Serialize)]
    pub(crate) struct ToolCallDelta<'a> {
        pub index: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub id: Option<&'a str>,
        #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
        pub kind: Option<&'static str>,
        pub function: FunctionDelta<'a>,
    }

    #[derive(Serialize)]
    pub(crate) struct FunctionDelta<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub name: Option<&'a str>,
        pub arguments: &'a str,
    }

    /// `{"error":{"message","type","param","code"}}` (§1.7).
    #[derive(Serialize)]
    pub(crate) struct ErrorBody<'a> {
        pub error: ErrorDetail<'a>,
    }

    #[derive(Serialize)]
    pub(crate) struct ErrorDetail<'a> {
        pub message: &'a str,
        #[serde(rename = "type")]
        pub kind: &'a str,
        pub param: Option<&'a str>,
        pub code: Option<&'a str>,
    }

    pub(crate) fn error_body(
        message: &str,
        kind: &str,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Vec<u8> {
        to_vec(&ErrorBody {
            error: ErrorDetail {
                message,
                kind,
                param,
                code,
            },
        })
    }
}

// === Anthropic ===

pub(crate) mod anthropic {
    use super::*;

    /// Pre-content shape of a block in `content_block_start`.
    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub(crate) enum StartBlock<'a> {
        Text {
            text: &'static str,
        },
        ToolUse {
            id: &'a str,
            name: &'a str,
            input: EmptyObject,
        },
    }

    #[derive(Serialize)]
    pub(crate) struct Usage {
        pub input_tokens: u64,
        pub cache_creation_input_tokens: u64,
        pub cache_read_input_tokens: u64,
        pub output_tokens: u64,
    }

    #[derive(Serialize)]
    pub(crate) struct StartMessage<'a> {
        pub id: &'a str,
        #[serde(rename = "type")]
        pub kind: &'static str,
        pub role: &'static str,
        pub model: &'a str,
        pub content: [EmptyObject; 0],
        pub stop_reason: (),
        pub stop_sequence: (),
        pub usage: Usage,
    }

    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub(crate) enum BlockDelta<'a> {
        TextDelta { text: &'a str },
        InputJsonDelta { partial_json: &'a str },
    }

    #[derive(Serialize)]
    pub(crate) struct MessageDeltaBody {
        pub stop_reason: &'static str,
        pub stop_sequence: (),
    }

    #[derive(Serialize)]
    pub(crate) struct OutputUsage {
        pub output_tokens: u64,
    }

    #[derive(Serialize)]
    pub(crate) struct ErrorDetail<'a> {
        #[serde(rename = "type")]
        pub kind: &'a str,
        pub message: &'a str,
    }

    /// Stream events (§3.4); the tag comes first, as on the wire.
    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub(crate) enum Event<'a> {
        MessageStart {
            message: StartMessage<'a>,
        },
        ContentBlockStart {
            index: u32,
            content_block: StartBlock<'a>,
        },
        Ping,
        ContentBlockDelta {
            index: u32,
            delta: BlockDelta<'a>,
        },
        ContentBlockStop {
            index: u32,
        },
        MessageDelta {
            delta: MessageDeltaBody,
            usage: OutputUsage,
        },
        MessageStop,
        Error {
            error: ErrorDetail<'a>,
        },
    }

    impl Event<'_> {
        pub(crate) fn name(&self) -> &'static str {
            match self {
                Event::MessageStart { .. } => "message_start",
                Event::ContentBlockStart { .. } => "content_block_start",
                Event::Ping => "ping",
                Event::ContentBlockDelta { .. } => "content_block_delta",
                Event::ContentBlockStop { .. } => "content_block_stop",
                Event::MessageDelta { .. } => "message_delta",
                Event::MessageStop => "message_stop",
                Event::Error { .. } => "error",
            }
        }

        /// `event: <name>\ndata: <json>\n\n`
        pub(crate) fn to_sse(&self) -> Vec<u8> {
            sse_event(self.name(), &to_vec(self))
        }
    }

    /// `{"type":"error","error":{"type","message"},"request_id"}` (§3.5).
    #[derive(Serialize)]
    pub(crate) struct ErrorBody<'a> {
        #[serde(rename = "type")]
        pub kind: &'static str,
        pub error: ErrorDetail<'a>,
        pub request_id: &'a str,
    }

    pub(crate) fn error_body(kind: &str, message: &str, request_id: &str) -> Vec<u8> {
        to_vec(&ErrorBody {
            kind: "error",
            error: ErrorDetail { kind, message },
            request_id,
        })
    }
}
