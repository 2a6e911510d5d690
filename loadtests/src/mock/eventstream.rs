//! AWS event-stream framing (`application/vnd.amazon.eventstream`, providers.md §4.6), written
//! by hand on `crc32fast` so that it checks the gateway's decoder independently.
//!
//! A message is `[total_len u32][headers_len u32][prelude_crc u32][headers][payload][message_crc
//! u32]`, big-endian; both CRCs are CRC-32/IEEE. The mock only writes string headers (type 7),
//! as Bedrock does; the decoder (for tests, here and in the gateway's) reads every header type.

/// Bytes of framing around headers and payload: prelude (8), prelude CRC (4), message CRC (4).
const OVERHEAD: usize = 16;

/// One message with string headers. Header names longer than 255 bytes and values longer than
/// 65535 bytes are cut (the mock never writes such headers).
pub fn encode_frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut head = Vec::with_capacity(headers.len() * 32);
    for (name, value) in headers {
        let name = name.as_bytes();
        let name = name.get(..name.len().min(255)).unwrap_or(name);
        let value = value.as_bytes();
        let value = value.get(..value.len().min(65535)).unwrap_or(value);
        head.push(name.len() as u8);
        head.extend_from_slice(name);
        head.push(7);
        head.extend_from_slice(&(value.len() as u16).to_be_bytes());
        head.extend_from_slice(value);
    }
    let total = OVERHEAD + head.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    // A frame over 4 GiB cannot be expressed; the mock never builds one.
    out.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&u32::try_from(head.len()).unwrap_or(u32::MAX).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

/// A Bedrock event: `:event-type`, `:content-type: application/json`, `:message-type: event`.
pub(crate) fn event(event_type: &str, json: &[u8]) -> Vec<u8> {
    encode_frame(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        json,
    )
}

/// A Bedrock exception: `:exception-type`, `:content-type`, `:message-type: exception`.
pub(crate) fn exception(exception_type: &str, json: &[u8]) -> Vec<u8> {
    encode_frame(
        &[
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        json,
    )
}

/// A decoded header value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Bytes(Vec<u8>),
    String(String),
    Timestamp(i64),
    Uuid([u8; 16]),
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The value of a string header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }
}

/// Decodes a whole event-stream body, checking both CRCs of every message. Fails on a CRC
/// mismatch, a malformed header, or trailing bytes that do not form a complete message.
pub fn decode_frames(mut data: &[u8]) -> Result<Vec<Frame>, String> {
    let mut frames = Vec::new();
    while !data.is_empty() {
        let (frame, used) = decode_one(data)?;
        frames.push(frame);
        data = data.get(used..).unwrap_or_default();
    }
    Ok(frames)
}

fn be_u32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| format!("truncated at byte {at}"))
}

fn decode_one(data: &[u8]) -> Result<(Frame, usize), String> {
    let total = be_u32(data, 0)? as usize;
    let headers_len = be_u32(data, 4)? as usize;
    let prelude_crc = be_u32(data, 8)?;
    let prelude = data.get(..8).ok_or("truncated prelude")?;
    if crc32fast::hash(prelude) != prelude_crc {
        return Err("prelude CRC mismatch".into());
    }
    if total < OVERHEAD + headers_len {
        return Err(format!(
            "total length {total} too small for {headers_len} header bytes"
        ));
    }
    let frame = data
        .get(..total)
        .ok_or_else(|| format!("incomplete message: {} of {total} bytes", data.len()))?;
    let message_crc = be_u32(frame, total - 4)?;
    if crc32fast::hash(frame.get(..total - 4).unwrap_or_default()) != message_crc {
        return Err("message CRC mismatch".into());
    }
    let mut h = frame.get(12..12 + headers_len).ok_or("truncated headers")?;
    let payload = frame
        .get(12 + headers_len..total - 4)
        .ok_or("truncated payload")?
        .to_vec();
    let mut headers = Vec::new();
    while !h.is_empty() {
        let (name, value, rest) = decode_header(h)?;
        headers.push((name, value));
        h = rest;
    }
    Ok((Frame { headers, payload }, total))
}

fn fixed(b: &[u8], n: usize) -> Result<(Vec<u8>, &[u8]), String> {
    let (v, rest) = take(b, n)?;
    Ok((v.to_vec(), rest))
}

fn take(b: &[u8], n: usize) -> Result<(&[u8], &[u8]), String> {
    if b.len() < n {
        return Err(format!(
            "header truncated: need {n} bytes, have {}",
            b.len()
        ));
    }
    Ok(b.split_at(n))
}

fn decode_header(b: &[u8]) -> Result<(String, HeaderValue, &[u8]), String> {
    let (len, b) = take(b, 1)?;
    let (name, b) = take(b, len.first().copied().unwrap_or(0) as usize)?;
    let name = String::from_utf8(name.to_vec()).map_err(|_| "header name is not UTF-8")?;
    let (kind, b) = take(b, 1)?;
    let int = |v: &[u8]| v.iter().fold(0i64, |acc, x| (acc << 8) | i64::from(*x));
    let (value, rest) = match kind.first().copied().unwrap_or(255) {
        0 => (HeaderValue::Bool(true), b),
        1 => (HeaderValue::Bool(false), b),
        2 => {
            let (v, rest) = fixed(b, 1)?;
            (HeaderValue::Byte(v.first().map_or(0, |x| *x as i8)), rest)
        }
        3 => {
            let (v, rest) = fixed(b, 2)?;
            (HeaderValue::Int16(int(&v) as i16), rest)
        }
        4 => {
            let (v, rest) = fixed(b, 4)?;
            (HeaderValue::Int32(int(&v) as i32), rest)
        }
        5 => {
            let (v, rest) = fixed(b, 8)?;
            (HeaderValue::Int64(int(&v)), rest)
        }
        8 => {
            let (v, rest) = fixed(b, 8)?;
            (HeaderValue::Timestamp(int(&v)), rest)
        }
        9 => {
            let (v, rest) = fixed(b, 16)?;
            let mut uuid = [0u8; 16];
            uuid.copy_from_slice(&v);
            (HeaderValue::Uuid(uuid), rest)
        }
        6 | 7 => {
            let (len, b) = fixed(b, 2)?;
            let (v, rest) = fixed(b, int(&len) as usize)?;
            if kind.first() == Some(&6) {
                (HeaderValue::Bytes(v), rest)
            } else {
                let s = String::from_utf8(v).map_err(|_| "header value is not UTF-8")?;
                (HeaderValue::String(s), rest)
            }
        }
        other => return Err(format!("unknown header type {other}")),
    };
    Ok((name, value, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn matches_the_9_4_frame_vectors() {
        let plain = encode_frame(&[], br#"{"foo": "bar"}"#);
        assert_eq!(
            hex(&plain),
            "0000001e00000000baf2f68a7b22666f6f223a2022626172227dae7258e4"
        );
        let delta = event(
            "contentBlockDelta",
            br#"{"contentBlockIndex":0,"delta":{"text":"Hello"}}"#,
        );
        assert_eq!(delta.len(), 151);
        assert_eq!(
            hex(&delta),
            "0000009700000057f30be03e0b3a6576656e742d74797065070011636f6e74656e74426c6f636b44656c74610d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e0d3a6d6573736167652d747970650700056576656e747b22636f6e74656e74426c6f636b496e646578223a302c2264656c7461223a7b2274657874223a2248656c6c6f227d7d67623831"
        );
        let throttled = exception(
            "throttlingException",
            br#"{"message":"Too many requests, please wait before trying again."}"#,
        );
        assert_eq!(throttled.len(), 178);
        assert_eq!(
            hex(&throttled),
            "000000b2000000613590d5d30f3a657863657074696f6e2d747970650700137468726f74746c696e67457863657074696f6e0d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e0d3a6d6573736167652d74797065070009657863657074696f6e7b226d657373616765223a22546f6f206d616e792072657175657374732c20706c656173652077616974206265666f726520747279696e6720616761696e2e227de8ffb26a"
        );
    }

    #[test]
    fn decodes_what_it_encodes_and_rejects_corruption() {
        let mut body = event("messageStart", br#"{"role":"assistant"}"#);
        body.extend(exception("serviceUnavailableException", b"{}"));
        let frames = decode_frames(&body).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].header(":event-type"), Some("messageStart"));
        assert_eq!(frames[0].header(":message-type"), Some("event"));
        assert_eq!(frames[0].payload, br#"{"role":"assistant"}"#);
        assert_eq!(
            frames[1].header(":exception-type"),
            Some("serviceUnavailableException")
        );
        let mut bad = body.clone();
        bad[20] ^= 1;
        assert!(decode_frames(&bad).unwrap_err().contains("message CRC"));
        let mut bad = body.clone();
        bad[2] ^= 1;
        assert!(decode_frames(&bad).unwrap_err().contains("prelude CRC"));
        assert!(decode_frames(&body[..body.len() - 1])
            .unwrap_err()
            .contains("incomplete"));
    }
}
