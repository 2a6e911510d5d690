//! Incremental scanning of a server-sent-events body, for stream timings.
//!
//! The scanner is fed the body as it arrives, chunk by chunk; a line or an event may be split
//! across chunks anywhere (only an unfinished line is copied, into a buffer reused across
//! chunks). It does not parse JSON: it looks for a few byte patterns in `data:` lines.

use memchr::memmem;

/// One complete SSE event that carried data (or a `message_stop` event name).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The event carries model output: `"content":"x`, `"text":"x` (a non-empty string), or
    /// `"tool_calls"`, or `"partial_json"`.
    pub content: bool,
    /// The event ends the stream: OpenAI `data: [DONE]`, Anthropic `event: message_stop` or
    /// data with `"type":"message_stop"`.
    pub end: bool,
}

/// Incremental SSE scanner (one per response).
#[derive(Debug, Default)]
pub struct SseScanner {
    /// The unfinished last line of the previous chunks.
    partial: Vec<u8>,
    /// The event being read has at least one `data:` line.
    has_data: bool,
    /// Flags of the event being read.
    current: SseEvent,
}

impl SseScanner {
    pub fn new() -> Self {
        SseScanner::default()
    }

    /// Scans `chunk`; calls `on_event` for each event completed (by its blank line) in it.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(SseEvent)) {
        let mut rest = chunk;
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            let (line, after) = rest.split_at(pos);
            rest = after.get(1..).unwrap_or_default();
            if self.partial.is_empty() {
                self.line(line, &mut on_event);
            } else {
                let mut buf = std::mem::take(&mut self.partial);
                buf.extend_from_slice(line);
                self.line(&buf, &mut on_event);
                buf.clear();
                self.partial = buf;
            }
        }
        self.partial.extend_from_slice(rest);
    }

    /// Ends the body: an event not closed by a blank line still counts (some servers end the
    /// stream right after the last data line).
    pub fn finish(&mut self, mut on_event: impl FnMut(SseEvent)) {
        if !self.partial.is_empty() {
            let buf = std::mem::take(&mut self.partial);
            self.line(&buf, &mut on_event);
        }
        self.line(b"", &mut on_event);
    }

    fn line(&mut self, line: &[u8], on_event: &mut impl FnMut(SseEvent)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_data || self.current.end {
                on_event(self.current);
            }
            self.has_data = false;
            self.current = SseEvent::default();
        } else if let Some(data) = line.strip_prefix(b"data:") {
            let data = data.strip_prefix(b" ").unwrap_or(data);
            self.has_data = true;
            if data == b"[DONE]" {
                self.current.end = true;
            } else {
                if has_content(data) {
                    self.current.content = true;
                }
                if memmem::find(data, b"\"type\":\"message_stop\"").is_some() {
                    self.current.end = true;
                }
            }
        } else if let Some(name) = line.strip_prefix(b"event:") {
            let name = name.strip_prefix(b" ").unwrap_or(name);
            if name == b"message_stop" {
                self.current.end = true;
            }
        }
        // Comments (`:`), `id:`, `retry:` and anything else: ignored.
    }
}

/// Whether an event's data carries model output.
pub fn has_content(data: &[u8]) -> bool {
    non_empty_string_after(data, b"\"content\":")
        || non_empty_string_after(data, b"\"text\":")
        || memmem::find(data, b"\"tool_calls\"").is_some()
        || memmem::find(data, b"\"partial_json\"").is_some()
}

/// Some occurrence of `key` is followed (after optional spaces) by a non-empty JSON string.
fn non_empty_string_after(data: &[u8], key: &[u8]) -> bool {
    memmem::find_iter(data, key).any(|at| {
        let value = data.get(at + key.len()..).unwrap_or_default();
        let start = value.iter().position(|&b| b != b' ').unwrap_or(value.len());
        matches!(value.get(start..), Some([b'"', c, ..]) if *c != b'"')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAI: &str =
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: [DONE]\n\n";

    const ANTHROPIC: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"content\":[]}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\ndata: {\"type\": \"ping\"}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn scan(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut s = SseScanner::new();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |e| out.push(e));
        }
        s.finish(|e| out.push(e));
        out
    }

    fn ev(content: bool, end: bool) -> SseEvent {
        SseEvent { content, end }
    }

    #[test]
    fn openai_stream_in_one_chunk() {
        assert_eq!(
            scan(&[OPENAI.as_bytes()]),
            vec![
                ev(false, false),
                ev(true, false),
                ev(true, false),
                ev(false, false),
                ev(false, true)
            ]
        );
    }

    #[test]
    fn anthropic_stream_in_one_chunk() {
        assert_eq!(
            scan(&[ANTHROPIC.as_bytes()]),
            vec![
                ev(false, false),
                ev(false, false),
                ev(false, false),
                ev(true, false),
                ev(false, false),
                ev(false, false),
                ev(false, true)
            ]
        );
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        for body in [OPENAI, ANTHROPIC] {
            let whole = scan(&[body.as_bytes()]);
            let b = body.as_bytes();
            for i in 0..=b.len() {
                let (x, y) = b.split_at(i);
                assert_eq!(scan(&[x, y]), whole, "split at {i}");
            }
            // One byte at a time.
            let bytes: Vec<&[u8]> = b.chunks(1).collect();
            assert_eq!(scan(&bytes), whole);
        }
    }

    #[test]
    fn crlf_lines_and_split_crlf() {
        let body = b"data: {\"content\":\"x\"}\r\n\r\ndata: [DONE]\r\n\r\n";
        let whole = scan(&[body]);
        assert_eq!(whole, vec![ev(true, false), ev(false, true)]);
        for i in 0..=body.len() {
            let (x, y) = body.split_at(i);
            assert_eq!(scan(&[x, y]), whole, "split at {i}");
        }
    }

    #[test]
    fn event_without_final_blank_line_is_flushed_by_finish() {
        assert_eq!(scan(&[b"data: [DONE]"]), vec![ev(false, true)]);
        assert_eq!(scan(&[b"data: [DONE]\n"]), vec![ev(false, true)]);
    }

    #[test]
    fn content_patterns() {
        assert!(has_content(br#"{"delta":{"content":"a"}}"#));
        assert!(has_content(br#"{"delta":{"content": "a"}}"#));
        assert!(!has_content(br#"{"delta":{"content":""}}"#));
        assert!(!has_content(br#"{"message":{"content":[]}}"#));
        assert!(has_content(br#"{"content":"","x":{"content":"b"}}"#));
        assert!(has_content(br#"{"delta":{"text":"\"q"}}"#));
        assert!(!has_content(
            br#"{"content_block":{"type":"text","text":""}}"#
        ));
        assert!(has_content(br#"{"delta":{"tool_calls":[{"index":0}]}}"#));
        assert!(has_content(
            br#"{"delta":{"type":"input_json_delta","partial_json":""}}"#
        ));
        assert!(!has_content(br#"{"content":"#));
    }

    #[test]
    fn comments_and_other_fields_are_ignored() {
        assert_eq!(
            scan(&[b": keep-alive\n\nid: 1\nretry: 5\n\ndata: {\"text\":\"z\"}\n\n"]),
            vec![ev(true, false)]
        );
    }
}
