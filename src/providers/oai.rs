//! What the gateway emits: OpenAI Chat Completions responses and stream chunks (providers.md
//! §0.1, §1.3), written by every provider that is not already OpenAI-shaped. Serialization goes
//! straight into a `BytesMut` from borrowed structs; no I/O.

use bytes::{BufMut, BytesMut};
use serde::Serialize;

/// Token usage of one response, normalized to OpenAI's invariants: `cached_tokens` is part of
/// `prompt_tokens`, `reasoning_tokens` is part of `completion_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

#[derive(Serialize)]
struct UsageJson {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u64,
    #[serde(skip_serializing_if = "is_zero")]
    cache_write_tokens: u64,
}

#[derive(Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl From<&Usage> for UsageJson {
    fn from(u: &Usage) -> Self {
        UsageJson {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total(),
            prompt_tokens_details: PromptDetails {
                cached_tokens: u.cached_tokens,
                cache_write_tokens: u.cache_write_tokens,
            },
            completion_tokens_details: (u.reasoning_tokens > 0).then_some(CompletionDetails {
                reasoning_tokens: u.reasoning_tokens,
            }),
        }
    }
}

/// One tool call in a complete (non-streamed) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallOut {
    pub id: String,
    pub name: String,
    /// JSON text of the arguments object.
    pub arguments: String,
}

/// A complete assistant message, ready to be written as a `chat.completion`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCallOut>,
    pub finish_reason: &'static str,
    pub usage: Usage,
}

impl Completion {
    pub fn to_json(&self) -> BytesMut {
        #[derive(Serialize)]
        struct Body<'a> {
            id: &'a str,
            object: &'static str,
            created: u64,
            model: &'a str,
            choices: [Choice<'a>; 1],
            usage: UsageJson,
        }
        #[derive(Serialize)]
        struct Choice<'a> {
            index: u32,
            message: Message<'a>,
            finish_reason: &'a str,
        }
        #[derive(Serialize)]
        struct Message<'a> {
            role: &'static str,
            content: Option<&'a str>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            tool_calls: &'a [ToolCallOut],
        }
        let body = Body {
            id: &self.id,
            object: "chat.completion",
            created: self.created,
            model: &self.model,
            choices: [Choice {
                index: 0,
                message: Message {
                    role: "assistant",
                    content: self.content.as_deref(),
                    tool_calls: &self.tool_calls,
                },
                finish_reason: self.finish_reason,
            }],
            usage: UsageJson::from(&self.usage),
        };
        let mut out = BytesMut::with_capacity(512);
        write_json(&mut out, &body);
        out
    }
}

impl Serialize for ToolCallOut {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Call<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            kind: &'static str,
            function: Function<'a>,
        }
        #[derive(Serialize)]
        struct Function<'a> {
            name: &'a str,
            arguments: &'a str,
        }
        Call {
            id: &self.id,
            kind: "function",
            function: Function {
                name: &self.name,
                arguments: &self.arguments,
            },
        }
        .serialize(s)
    }
}

/// Serializing these plain structs cannot fail (string keys, no maps with non-string keys).
fn write_json<T: Serialize>(out: &mut BytesMut, value: &T) {
    let _ = serde_json::to_writer(out.writer(), value);
}

/// Writes `data: <json>\n\n`.
fn write_event<T: Serialize>(out: &mut BytesMut, value: &T) {
    out.put_slice(b"data: ");
    write_json(out, value);
    out.put_slice(b"\n\n");
}

/// Writes one SSE event whose data is `data` (which may span lines), framed for the client.
pub fn write_data_event(out: &mut BytesMut, data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// The error event that ends a committed stream which failed (never followed by `[DONE]`).
pub fn write_error_event(out: &mut BytesMut, message: &str, error_type: &str, code: &str) {
    #[derive(Serialize)]
    struct Event<'a> {
        error: Err<'a>,
    }
    #[derive(Serialize)]
    struct Err<'a> {
        message: &'a str,
        #[serde(rename = "type")]
        kind: &'a str,
        param: Option<()>,
        code: &'a str,
    }
    write_event(
        out,
        &Event {
            error: Err {
                message,
                kind: error_type,
                param: None,
                code,
            },
        },
    );
}

/// Writes `chat.completion.chunk` events for one response; `id`, `created` and `model` are the
/// same on every chunk.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    pub id: String,
    pub created: u64,
    pub model: String,
    /// The client asked for usage: every chunk carries `"usage":null` and a final usage chunk
    /// with `"choices":[]` follows the finish chunk.
    pub include_usage: bool,
}

/// A delta's fields; `None` fields are left out, except `content` when `content_null` is set.
#[derive(Default)]
pub struct Delta<'a> {
    pub role: bool,
    pub content: Option<&'a str>,
    /// Write `"content":null` (a role chunk whose first output is a tool call).
    pub content_null: bool,
    pub tool_call: Option<ToolCallDelta<'a>>,
}

pub struct ToolCallDelta<'a> {
    pub index: u32,
    /// Only on the first fragment of a call.
    pub id_and_name: Option<(&'a str, &'a str)>,
    pub arguments: &'a str,
}

impl Serialize for Delta<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        if self.role {
            m.serialize_entry("role", "assistant")?;
        }
        if let Some(c) = self.content {
            m.serialize_entry("content", c)?;
        } else if self.content_null {
            m.serialize_entry("content", &None::<()>)?;
        }
        if let Some(tc) = &self.tool_call {
            m.serialize_entry("tool_calls", &[tc])?;
        }
        m.end()
    }
}

impl Serialize for ToolCallDelta<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        #[derive(Serialize)]
        struct FunctionHead<'a> {
            name: &'a str,
            arguments: &'a str,
        }
        #[derive(Serialize)]
        struct FunctionArgs<'a> {
            arguments: &'a str,
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("index", &self.index)?;
        match self.id_and_name {
            Some((id, name)) => {
                m.serialize_entry("id", id)?;
                m.serialize_entry("type", "function")?;
                m.serialize_entry(
                    "function",
                    &FunctionHead {
                        name,
                        arguments: self.arguments,
                    },
                )?;
            }
            None => m.serialize_entry(
                "function",
                &FunctionArgs {
                    arguments: self.arguments,
                },
            )?,
        }
        m.end()
    }
}

impl ChunkWriter {
    fn chunk<T: Serialize>(&self, out: &mut BytesMut, choices: &[T], usage: Option<&Usage>) {
        #[derive(Serialize)]
        struct Chunk<'a, T> {
            id: &'a str,
            object: &'static str,
            created: u64,
            model: &'a str,
            choices: &'a [T],
            #[serde(skip_serializing_if = "Option::is_none")]
            usage: Option<Option<UsageJson>>,
        }
        let usage = if self.include_usage {
            Some(usage.map(UsageJson::from))
        } else {
            None
        };
        write_event(
            out,
            &Chunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices,
                usage,
            },
        );
    }

    /// A chunk with one delta and `finish_reason: null`.
    pub fn delta(&self, out: &mut BytesMut, delta: Delta<'_>) {
        #[derive(Serialize)]
        struct Choice<'a> {
            index: u32,
            delta: Delta<'a>,
            logprobs: Option<()>,
            finish_reason: Option<()>,
        }
        self.chunk(
            out,
            &[Choice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: None,
            }],
            None,
        );
    }

    /// The finish chunk: `delta: {}` and the finish reason.
    pub fn finish(&self, out: &mut BytesMut, reason: &str) {
        #[derive(Serialize)]
        struct Empty {}
        #[derive(Serialize)]
        struct Choice<'a> {
            index: u32,
            delta: Empty,
            logprobs: Option<()>,
            finish_reason: &'a str,
        }
        self.chunk(
            out,
            &[Choice {
                index: 0,
                delta: Empty {},
                logprobs: None,
                finish_reason: reason,
            }],
            None,
        );
    }

    /// The usage chunk (`choices: []`), only if the client asked for it; then `[DONE]`.
    pub fn end(&self, out: &mut BytesMut, usage: &Usage) {
        if self.include_usage {
            self.chunk::<()>(out, &[], Some(usage));
        }
        out.put_slice(DONE);
    }
}

/// The role goes out once, with the first output (providers.md §0.1): before the first text a
/// chunk of its own (`role` and `content: ""`); an answer that opens with a tool call carries the
/// role and `content: null` in that call's first chunk.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoleOnce {
    sent: bool,
}

impl RoleOnce {
    /// The role chunk, if nothing has been written yet; call before writing text.
    pub fn before_text(&mut self, w: &ChunkWriter, out: &mut BytesMut) {
        if !self.sent {
            self.sent = true;
            w.delta(
                out,
                Delta {
                    role: true,
                    content: Some(""),
                    ..Delta::default()
                },
            );
        }
    }

    /// The first chunk of tool call `index` (its id and name, and any arguments known so far).
    pub fn tool_head(
        &mut self,
        w: &ChunkWriter,
        out: &mut BytesMut,
        index: u32,
        id: &str,
        name: &str,
        arguments: &str,
    ) {
        let first = !self.sent;
        self.sent = true;
        w.delta(
            out,
            Delta {
                role: first,
                content_null: first,
                tool_call: Some(ToolCallDelta {
                    index,
                    id_and_name: Some((id, name)),
                    arguments,
                }),
                ..Delta::default()
            },
        );
    }
}

/// Seconds since the Unix epoch, for `created`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn events(out: &BytesMut) -> Vec<Value> {
        std::str::from_utf8(out)
            .expect("utf8")
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let data = e.strip_prefix("data: ").expect("data: prefix");
                if data == "[DONE]" {
                    Value::String("[DONE]".into())
                } else {
                    serde_json::from_str(data).expect("json")
                }
            })
            .collect()
    }

    #[test]
    fn chunks_follow_the_openai_contract_with_usage() {
        let w = ChunkWriter {
            id: "x".into(),
            created: 7,
            model: "m".into(),
            include_usage: true,
        };
        let mut out = BytesMut::new();
        w.delta(
            &mut out,
            Delta {
                role: true,
                content: Some(""),
                ..Delta::default()
            },
        );
        w.delta(
            &mut out,
            Delta {
                role: true,
                content_null: true,
                tool_call: Some(ToolCallDelta {
                    index: 0,
                    id_and_name: Some(("call_1", "get_weather")),
                    arguments: "",
                }),
                ..Delta::default()
            },
        );
        w.delta(
            &mut out,
            Delta {
                tool_call: Some(ToolCallDelta {
                    index: 0,
                    id_and_name: None,
                    arguments: "{\"a\":",
                }),
                ..Delta::default()
            },
        );
        w.finish(&mut out, "tool_calls");
        w.end(
            &mut out,
            &Usage {
                prompt_tokens: 62,
                completion_tokens: 15,
                ..Usage::default()
            },
        );
        let ev = events(&out);
        assert_eq!(
            ev[0],
            json!({"id":"x","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null})
        );
        assert_eq!(
            ev[1]["choices"][0]["delta"],
            json!({"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]})
        );
        assert_eq!(
            ev[2]["choices"][0]["delta"],
            json!({"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]})
        );
        assert_eq!(ev[3]["choices"][0]["delta"], json!({}));
        assert_eq!(ev[3]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            ev[4],
            json!({"id":"x","object":"chat.completion.chunk","created":7,"model":"m","choices":[],"usage":{"prompt_tokens":62,"completion_tokens":15,"total_tokens":77,"prompt_tokens_details":{"cached_tokens":0}}})
        );
        assert_eq!(ev[5], "[DONE]");
    }

    #[test]
    fn without_include_usage_there_is_no_usage_key_and_no_usage_chunk() {
        let w = ChunkWriter {
            id: "x".into(),
            created: 7,
            model: "m".into(),
            include_usage: false,
        };
        let mut out = BytesMut::new();
        w.delta(
            &mut out,
            Delta {
                content: Some("hi"),
                ..Delta::default()
            },
        );
        w.finish(&mut out, "stop");
        w.end(&mut out, &Usage::default());
        let ev = events(&out);
        assert_eq!(ev.len(), 3);
        assert!(ev[0].get("usage").is_none());
        assert!(ev[1].get("usage").is_none());
        assert_eq!(ev[2], "[DONE]");
    }

    #[test]
    fn multi_line_data_is_framed_line_by_line() {
        let mut out = BytesMut::new();
        write_data_event(&mut out, b"a\nb");
        assert_eq!(&out[..], b"data: a\ndata: b\n\n");
    }
}
