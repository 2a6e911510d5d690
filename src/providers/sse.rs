//! Incremental Server-Sent Events decoder over raw bytes (WHATWG "event stream" parsing rules).
//! No I/O: feed it bytes as they arrive, take complete events out.
//!
//! Why not `eventsource-stream`: it copies the rest of its buffer after every line (quadratic in a
//! large read), decodes into a `String` per field, and a `\r` that ends one read followed by the
//! `\n` that starts the next is taken as two line ends, which dispatches an event early. Providers
//! do send CRLF (Gemini) and large batched reads, so this decoder keeps bytes, splits on complete
//! lines only and returns data as `Bytes` slices of the input when an event has one data line
//! (the common case), with no copy.

use bytes::{Buf, Bytes, BytesMut};

/// One dispatched event. `event` is empty when the stream gave no `event:` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Bytes,
    pub data: Bytes,
}

/// Upper bound on one event's size; an upstream that never ends an event must not exhaust memory.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: BytesMut,
    /// Bytes of `buf` already scanned for a line end without finding one.
    scanned: usize,
    /// A `\r` ended the previous line; a `\n` at the start of the next input belongs to it.
    skip_lf: bool,
    event: Bytes,
    data: Option<DataBuf>,
    /// Bytes held in the event being assembled, for the size bound.
    pending_bytes: usize,
}

#[derive(Debug)]
enum DataBuf {
    One(Bytes),
    Many(BytesMut),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server-sent event larger than {MAX_EVENT_BYTES} bytes")]
pub struct EventTooLarge;

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the upstream.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, if the input fed so far holds one.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, EventTooLarge> {
        loop {
            if self.skip_lf && !self.buf.is_empty() {
                if self.buf[0] == b'\n' {
                    self.buf.advance(1);
                }
                self.skip_lf = false;
            }
            let Some(rel) = memchr::memchr2(b'\n', b'\r', &self.buf[self.scanned..]) else {
                self.scanned = self.buf.len();
                if self.buf.len() + self.pending_bytes > MAX_EVENT_BYTES {
                    return Err(EventTooLarge);
                }
                return Ok(None);
            };
            let end = self.scanned + rel;
            let line = self.buf.split_to(end).freeze();
            let terminator = self.buf[0];
            self.buf.advance(1);
            self.scanned = 0;
            if terminator == b'\r' {
                self.skip_lf = true;
            }
            if let Some(event) = self.process_line(line)? {
                return Ok(Some(event));
            }
        }
    }

    fn process_line(&mut self, line: Bytes) -> Result<Option<SseEvent>, EventTooLarge> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None); // comment, e.g. `: keep-alive`
        }
        let (field, value) = match memchr::memchr(b':', &line) {
            Some(colon) => {
                let mut value = line.slice(colon + 1..);
                if value.first() == Some(&b' ') {
                    value.advance(1);
                }
                (line.slice(..colon), value)
            }
            None => (line.clone(), Bytes::new()),
        };
        match &field[..] {
            b"data" => {
                self.pending_bytes += value.len() + 1;
                if self.pending_bytes > MAX_EVENT_BYTES {
                    return Err(EventTooLarge);
                }
                self.data = Some(match self.data.take() {
                    None => DataBuf::One(value),
                    Some(DataBuf::One(first)) => {
                        let mut many = BytesMut::with_capacity(first.len() + 1 + value.len());
                        many.extend_from_slice(&first);
                        many.extend_from_slice(b"\n");
                        many.extend_from_slice(&value);
                        DataBuf::Many(many)
                    }
                    Some(DataBuf::Many(mut many)) => {
                        many.extend_from_slice(b"\n");
                        many.extend_from_slice(&value);
                        DataBuf::Many(many)
                    }
                });
            }
            b"event" => self.event = value,
            _ => {} // id, retry and unknown fields do not matter to a proxy
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = std::mem::take(&mut self.event);
        self.pending_bytes = 0;
        // Per the spec, an event with no data lines is not dispatched.
        let data = match self.data.take()? {
            DataBuf::One(b) => b,
            DataBuf::Many(m) => m.freeze(),
        };
        Some(SseEvent { event, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Vec<(String, String)> {
        let mut d = SseDecoder::new();
        d.feed(input);
        let mut out = Vec::new();
        while let Some(ev) = d.next_event().expect("no oversized event") {
            out.push((
                String::from_utf8_lossy(&ev.event).into_owned(),
                String::from_utf8_lossy(&ev.data).into_owned(),
            ));
        }
        out
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn decodes_openai_style_events() {
        let got = decode_all(b"data: {\"a\":1}\n\ndata: [DONE]\n\n");
        assert_eq!(got, pairs(&[("", "{\"a\":1}"), ("", "[DONE]")]));
    }

    #[test]
    fn decodes_named_events_with_crlf_and_cr() {
        let got = decode_all(
            b"event: message_start\r\ndata: {}\r\n\r\nevent: ping\rdata: {\"type\":\"ping\"}\r\r",
        );
        assert_eq!(
            got,
            pairs(&[("message_start", "{}"), ("ping", "{\"type\":\"ping\"}")])
        );
    }

    #[test]
    fn skips_comments_and_joins_data_lines() {
        let got = decode_all(
            b": keep-alive\n\n: OPENROUTER PROCESSING\ndata:a\ndata: b\nid: 7\nretry: 10\n\n",
        );
        assert_eq!(got, pairs(&[("", "a\nb")]));
    }

    #[test]
    fn an_event_without_a_blank_line_is_not_dispatched() {
        assert_eq!(decode_all(b"data: partial\n"), vec![]);
        assert_eq!(decode_all(b"event: x\n\n"), vec![]);
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        // Includes CRLF (split between \r and \n), a multi-byte character and a comment.
        let input =
            "event: a\r\ndata: héllo\r\n\r\n: c\ndata: {\"x\":\"ü\"}\n\ndata: z\r\r".as_bytes();
        let expected = decode_all(input);
        assert_eq!(expected.len(), 3);
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let mut d = SseDecoder::new();
                let mut got = Vec::new();
                for part in [&input[..i], &input[i..j], &input[j..]] {
                    d.feed(part);
                    while let Some(ev) = d.next_event().expect("small events") {
                        got.push((
                            String::from_utf8_lossy(&ev.event).into_owned(),
                            String::from_utf8_lossy(&ev.data).into_owned(),
                        ));
                    }
                }
                assert_eq!(got, expected, "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn single_line_data_is_a_slice_of_the_input_not_a_copy() {
        let mut d = SseDecoder::new();
        d.feed(b"data: 0123456789\n\n");
        let ev = d.next_event().expect("ok").expect("one event");
        assert_eq!(&ev.data[..], b"0123456789");
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut d = SseDecoder::new();
        let line = vec![b'x'; 1024 * 1024];
        d.feed(b"data: ");
        let mut result = Ok(None);
        for _ in 0..5 {
            d.feed(&line);
            result = d.next_event();
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(EventTooLarge));
        // Many data lines that each fit but together do not are refused too.
        let mut d = SseDecoder::new();
        let mut result = Ok(None);
        for _ in 0..5 {
            d.feed(b"data: ");
            d.feed(&line);
            d.feed(b"\n");
            result = d.next_event();
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(EventTooLarge));
    }
}
