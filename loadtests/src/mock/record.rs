//! What the mock remembers about a request it received (only when recording is on).

use std::time::Instant;

use bytes::Bytes;

/// A request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Route name ("" for the default route).
    pub route: String,
    /// The client's address: requests from one kept-alive connection share it.
    pub peer: Option<std::net::SocketAddr>,
    pub method: String,
    /// Full path including the query string.
    pub path: String,
    /// Header names lowercased (order not preserved); non-UTF-8 values are converted lossily.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub received_at: Instant,
}

impl RecordedRequest {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, or `Value::Null` if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}
