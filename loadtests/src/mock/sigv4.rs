//! AWS Signature Version 4 verification for the Bedrock routes (providers.md §4.2), written from
//! the specification on `hmac` + `sha2` so that it checks the gateway's signer independently.
//!
//! The mock recomputes the signature from what it received: method, the raw request path with
//! every segment percent-encoded again (the double encoding of every service except S3), the
//! query, the headers named in `SignedHeaders`, and the SHA-256 of the body.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The signing name Bedrock Runtime expects in the credential scope.
const SERVICE: &str = "bedrock";
/// Largest accepted distance between `x-amz-date` and the mock's clock.
const MAX_SKEW_SECS: u64 = 5 * 60;

/// Why a request is refused (rendered as a 403 by the server).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SigError {
    /// No `Authorization` header: `MissingAuthenticationTokenException`.
    Missing,
    /// Another access key id: `UnrecognizedClientException`.
    UnknownKey,
    /// Malformed, expired or wrong signature: `InvalidSignatureException`, with this message.
    Invalid(String),
}

/// What the signature covers. Header names are lowercase; a name may repeat.
pub(crate) struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path as received (still percent-encoded), e.g. `/model/a.b-v1%3A0/converse`.
    pub raw_path: &'a str,
    /// The query string without `?` (may be empty).
    pub query: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

impl SignedRequest<'_> {
    fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .collect()
    }
}

/// Checks `Authorization` against the given credentials at time `now`.
pub(crate) fn verify(
    req: &SignedRequest<'_>,
    akid: &str,
    secret: &str,
    now: SystemTime,
) -> Result<(), SigError> {
    let auth = match req.header_values("authorization").first() {
        Some(v) => *v,
        None => return Err(SigError::Missing),
    };
    let invalid = |m: &str| SigError::Invalid(m.to_owned());
    let parts = auth
        .strip_prefix(ALGORITHM)
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or_else(|| invalid("Authorization header must use AWS4-HMAC-SHA256."))?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in parts.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed_headers = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(invalid(
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' \
             parameters.",
        ));
    };
    let mut scope_parts = credential.splitn(5, '/');
    let key = scope_parts.next().unwrap_or_default();
    let date = scope_parts.next().unwrap_or_default();
    let region = scope_parts.next().unwrap_or_default();
    let service = scope_parts.next().unwrap_or_default();
    let terminator = scope_parts.next().unwrap_or_default();
    if key != akid {
        return Err(SigError::UnknownKey);
    }
    if terminator != "aws4_request" || region.is_empty() || date.len() != 8 {
        return Err(invalid("Credential scope is malformed."));
    }
    if service != SERVICE {
        return Err(SigError::Invalid(format!(
            "Credential should be scoped to correct service: '{SERVICE}'."
        )));
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    if !names.contains(&"host") {
        return Err(invalid(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    let amz_date = match req.header_values("x-amz-date").first() {
        Some(d) if names.contains(&"x-amz-date") => *d,
        _ => return Err(invalid("x-amz-date must be sent and signed.")),
    };
    let signed_at = parse_amz_date(amz_date)
        .ok_or_else(|| invalid("x-amz-date is not of the form YYYYMMDDTHHMMSSZ."))?;
    if amz_date.get(..8) != Some(date) {
        return Err(invalid(
            "Date in Credential scope does not match YYYYMMDD from x-amz-date.",
        ));
    }
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if now_secs.abs_diff(signed_at) > MAX_SKEW_SECS {
        return Err(SigError::Invalid(format!(
            "Signature expired: {amz_date} is not within 5 minutes of the server time."
        )));
    }
    let creq = canonical_request(req, &names);
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = string_to_sign(amz_date, &scope, &creq);
    let expected = signature_hex(secret, date, region, service, &to_sign);
    if !constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        return Err(invalid(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details.",
        ));
    }
    Ok(())
}

/// `METHOD\nURI\nQUERY\nHEADERS\n\nSIGNED_HEADERS\nPAYLOAD_HASH`.
pub(crate) fn canonical_request(req: &SignedRequest<'_>, signed: &[&str]) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(req.method);
    out.push('\n');
    out.push_str(&canonical_uri(req.raw_path));
    out.push('\n');
    out.push_str(&canonical_query(req.query));
    out.push('\n');
    for name in signed {
        out.push_str(name);
        out.push(':');
        let values: Vec<String> = req
            .header_values(name)
            .iter()
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed.join(";"));
    out.push('\n');
    out.push_str(&hex(&Sha256::digest(req.body)));
    out
}

/// Every segment of the wire path percent-encoded once more (`%3A` becomes `%253A`).
fn canonical_uri(raw_path: &str) -> String {
    if raw_path.is_empty() {
        return "/".to_owned();
    }
    raw_path
        .split('/')
        .map(|segment| uri_encode(segment.as_bytes()))
        .collect::<Vec<_>>()
        .join("/")
}

/// Parameters decoded, re-encoded and sorted by name then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k)),
                uri_encode(&percent_decode(v)),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

pub(crate) fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    )
}

pub(crate) fn signature_hex(
    secret: &str,
    date: &str,
    region: &str,
    service: &str,
    string_to_sign: &str,
) -> String {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    hex(&hmac_sha256(&k_signing, string_to_sign.as_bytes()))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(nibble(b >> 4, false));
        out.push(nibble(b & 15, false));
    }
    out
}

fn nibble(n: u8, upper: bool) -> char {
    let c = char::from_digit(u32::from(n), 16).unwrap_or('0');
    if upper {
        c.to_ascii_uppercase()
    } else {
        c
    }
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters kept, the rest `%XX` (upper hex).
fn uri_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(nibble(b >> 4, true));
            out.push(nibble(b & 15, true));
        }
    }
    out
}

/// `%XX` decoded and `+` as a space (form encoding, as SDKs parse queries); bad escapes kept.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex_at = |j: usize| b.get(j).and_then(|h| char::from(*h).to_digit(16));
        match (c, hex_at(i + 1), hex_at(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` to Unix seconds.
fn parse_amz_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b.get(8) != Some(&b'T') || b.get(15) != Some(&b'Z') {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u64> { s.get(from..to)?.parse().ok() };
    let (y, mo, d) = (num(0, 4)?, num(4, 6)?, num(6, 8)?);
    let (h, mi, sec) = (num(9, 11)?, num(11, 13)?, num(13, 15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant), for years >= 1970.
    let (y, mo) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3_600 + mi * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const PATH: &str = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";
    const BODY: &[u8] = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
    const SIGNATURE: &str = "229262f88c48cccf94b4168237b5cba8281cd1a9e3956c5daf6bc1bfb490ceed";

    fn vector_headers(auth: &str) -> Vec<(&str, &str)> {
        vec![
            ("content-type", "application/json"),
            ("host", "bedrock-runtime.us-east-1.amazonaws.com"),
            ("x-amz-date", "20250101T000000Z"),
            ("authorization", auth),
        ]
    }

    fn signed_at() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(parse_amz_date("20250101T000000Z").unwrap())
    }

    #[test]
    fn the_9_4_vector_step_by_step() {
        assert_eq!(parse_amz_date("20250101T000000Z"), Some(1_735_689_600));
        let headers = vector_headers("");
        let req = SignedRequest {
            method: "POST",
            raw_path: PATH,
            query: "",
            headers: &headers,
            body: BODY,
        };
        assert_eq!(
            hex(&Sha256::digest(BODY)),
            "c3335e07d6e89650bf94cb98664be69f8774dbc3198df221f113db0a59ea14f0"
        );
        let creq = canonical_request(&req, &["content-type", "host", "x-amz-date"]);
        assert_eq!(
            creq,
            "POST\n/model/anthropic.claude-3-haiku-20240307-v1%253A0/converse\n\n\
             content-type:application/json\nhost:bedrock-runtime.us-east-1.amazonaws.com\n\
             x-amz-date:20250101T000000Z\n\ncontent-type;host;x-amz-date\n\
             c3335e07d6e89650bf94cb98664be69f8774dbc3198df221f113db0a59ea14f0"
        );
        let sts = string_to_sign(
            "20250101T000000Z",
            "20250101/us-east-1/bedrock/aws4_request",
            &creq,
        );
        assert_eq!(
            sts,
            "AWS4-HMAC-SHA256\n20250101T000000Z\n20250101/us-east-1/bedrock/aws4_request\n\
             c4d912100bbbd299fd09e4b4f9c4d3fcd43fea14e9315793e031ac508794f915"
        );
        assert_eq!(
            signature_hex(SECRET, "20250101", "us-east-1", "bedrock", &sts),
            SIGNATURE
        );
    }

    #[test]
    fn verifies_the_9_4_authorization_header_and_rejects_changes() {
        let good = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/us-east-1/bedrock/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature={SIGNATURE}"
        );
        let headers = vector_headers(&good);
        let req = |path, body, headers| SignedRequest {
            method: "POST",
            raw_path: path,
            query: "",
            headers,
            body,
        };
        assert_eq!(
            verify(&req(PATH, BODY, &headers), AKID, SECRET, signed_at()),
            Ok(())
        );
        // Within the allowed skew, and outside it.
        let later = signed_at() + Duration::from_secs(299);
        assert_eq!(
            verify(&req(PATH, BODY, &headers), AKID, SECRET, later),
            Ok(())
        );
        let expired = verify(
            &req(PATH, BODY, &headers),
            AKID,
            SECRET,
            signed_at() + Duration::from_secs(301),
        );
        assert!(matches!(expired, Err(SigError::Invalid(m)) if m.contains("expired")));
        // The single-encoded path (the classic bug) is a different canonical request.
        let single = "/model/anthropic.claude-3-haiku-20240307-v1:0/converse";
        assert!(matches!(
            verify(&req(single, BODY, &headers), AKID, SECRET, signed_at()),
            Err(SigError::Invalid(m)) if m.contains("does not match")
        ));
        assert!(matches!(
            verify(&req(PATH, b"{}", &headers), AKID, SECRET, signed_at()),
            Err(SigError::Invalid(_))
        ));
        assert!(matches!(
            verify(&req(PATH, BODY, &headers), AKID, "other", signed_at()),
            Err(SigError::Invalid(_))
        ));
        assert_eq!(
            verify(&req(PATH, BODY, &headers), "AKIDOTHER", SECRET, signed_at()),
            Err(SigError::UnknownKey)
        );
        let no_auth = &headers[..3];
        assert_eq!(
            verify(&req(PATH, BODY, no_auth), AKID, SECRET, signed_at()),
            Err(SigError::Missing)
        );
        let wrong_service = good.replace("/bedrock/", "/s3/");
        let headers = vector_headers(&wrong_service);
        assert!(matches!(
            verify(&req(PATH, BODY, &headers), AKID, SECRET, signed_at()),
            Err(SigError::Invalid(m)) if m.contains("service")
        ));
        let headers = vector_headers("Bearer abc");
        assert!(matches!(
            verify(&req(PATH, BODY, &headers), AKID, SECRET, signed_at()),
            Err(SigError::Invalid(_))
        ));
    }

    #[test]
    fn query_and_header_canonical_forms() {
        assert_eq!(canonical_query(""), "");
        assert_eq!(canonical_query("b=2&a=x+y&a=1"), "a=1&a=x%20y&b=2");
        assert_eq!(canonical_query("k=%2F%zz"), "k=%2F%25zz");
        assert_eq!(canonical_uri("/a b/%2F"), "/a%20b/%252F");
        let headers = [("x-a", "  one   two "), ("x-a", "three")];
        let req = SignedRequest {
            method: "GET",
            raw_path: "/",
            query: "",
            headers: &headers,
            body: b"",
        };
        assert!(canonical_request(&req, &["x-a"]).contains("\nx-a:one two,three\n"));
    }
}
