//! Embeddings in every format: request parsing and per-request bodies (their size depends on
//! the request), plus Voyage's errors (Voyage speaks embeddings only).
//!
//! Vectors are deterministic: value `i` of input `k` is [`embedding_value`]`(k, i)`. The length
//! is the request's (`dimensions`, `output_dimension`, `outputDimensionality`), else
//! `Behavior::embedding_dims`. Usage is `Behavior::prompt_tokens` where the format reports it.

use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use base64::Engine;
use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::bedrock;
use super::behavior::ErrorPreset;
use super::compile::{json_headers, EmbedParams, Format, HeaderList, Prepared};
use super::path::Endpoint;
use super::validate::{reject, Kind, Rejection};
use super::wire;

/// Most inputs in one request.
pub const MAX_INPUTS: usize = 2048;
/// Largest vector length a request may ask for.
pub const MAX_DIMS: usize = 16384;
/// Most values (inputs × length) in one answer (about 30 MB of JSON).
const MAX_VALUES: usize = 4 << 20;

const COHERE_ID: &str = "5c0e6d0a-6d6f-4b63-8b00-0000000000e1";

/// Value `i` of the vector of input `k` (0-based, in request order): a multiple of 1/16 in
/// `-0.5..=0.5`, exact in `f32`, so float and base64 answers carry the same numbers.
pub fn embedding_value(k: usize, i: usize) -> f32 {
    let step = (k % 17 * 7 + i % 17 * 3 + 5) % 17;
    step as f32 / 16.0 - 0.5
}

/// Headers of a 200: the format's JSON headers; Bedrock adds the input token count.
pub(crate) fn headers(format: Format, prompt_tokens: u64) -> HeaderList {
    let mut h = json_headers(format);
    if format == Format::Bedrock {
        h.push((bedrock::INPUT_TOKEN_COUNT, HeaderValue::from(prompt_tokens)));
    }
    h
}

// === requests ===

/// Which answer shape a request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// OpenAI and Azure: `data[]` with `object`, `index`, `embedding`; `usage`.
    OpenAi,
    /// Voyage: like OpenAI, usage `{"total_tokens"}`.
    Voyage,
    /// Bedrock Titan: `{"embedding","inputTextTokenCount"}`.
    Titan,
    /// Cohere on Bedrock: `{"embeddings":[[…]],"id","response_type":"embeddings_floats","texts"}`.
    BedrockCohere,
    /// Gemini `embedContent`: `{"embedding":{"values"}}`.
    GeminiOne,
    /// Gemini `batchEmbedContents`: `{"embeddings":[{"values"}]}`.
    GeminiBatch,
    /// Cohere v2: `{"id","embeddings":{"float"},"texts","meta","response_type"}`.
    Cohere,
}

/// What an embeddings request asks for.
#[derive(Debug)]
pub(crate) struct EmbedWants<'a> {
    pub shape: Shape,
    pub count: usize,
    /// The requested length for every input, if any.
    pub dims: Option<usize>,
    /// Gemini batch: a length per input (`None`: the default).
    pub item_dims: Vec<Option<usize>>,
    /// OpenAI / Azure / Voyage `encoding_format: "base64"`.
    pub base64: bool,
    /// Cohere: the input texts, echoed as given (JSON strings).
    pub texts: Vec<&'a RawValue>,
}

/// Cohere on Bedrock is told apart from Titan by its model id (`cohere.embed-…`, also behind
/// an inference-profile prefix or in an ARN).
fn bedrock_is_cohere(model: &str) -> bool {
    model.contains("cohere.")
}

/// How many inputs an OpenAI / Voyage `input` holds: a string is one, an array of numbers (a
/// token array) is one, another array is one per element; an empty array is an error.
struct InputCount(usize);

impl<'de> Deserialize<'de> for InputCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InputCount;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<InputCount, E> {
                Ok(InputCount(1))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<InputCount, A::Error> {
                let (mut n, mut numbers) = (0usize, 0usize);
                while let Some(kind) = seq.next_element::<Kind>()? {
                    n += 1;
                    match kind {
                        Kind::Integer => numbers += 1,
                        Kind::String | Kind::Array => {}
                        _ => {
                            return Err(de::Error::custom(
                                "input items must be strings or token arrays",
                            ))
                        }
                    }
                }
                match (n, numbers) {
                    (0, _) => Err(de::Error::custom("input must not be empty")),
                    (n, m) if m == n => Ok(InputCount(1)),
                    (n, 0) => Ok(InputCount(n)),
                    _ => Err(de::Error::custom("input mixes numbers and other items")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct OpenAiReq {
    #[serde(default)]
    model: Kind,
    input: Option<InputCount>,
    dimensions: Option<u64>,
    encoding_format: Option<String>,
}

#[derive(Deserialize)]
struct VoyageReq {
    #[serde(default)]
    model: Kind,
    input: Option<InputCount>,
    output_dimension: Option<u64>,
    encoding_format: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TitanReq {
    #[serde(default)]
    input_text: Kind,
    dimensions: Option<u64>,
}

#[derive(Deserialize)]
struct CohereReq<'a> {
    #[serde(default)]
    model: Kind,
    #[serde(borrow, default)]
    texts: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    inputs: Option<SeqLen>,
    output_dimension: Option<u64>,
}

/// The length of an array, its items skipped.
struct SeqLen(usize);

impl<'de> Deserialize<'de> for SeqLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SeqLen;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SeqLen, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(SeqLen(n))
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiReq {
    #[serde(default)]
    content: Kind,
    output_dimensionality: Option<u64>,
}

#[derive(Deserialize)]
struct GeminiBatchReq {
    requests: Option<Vec<GeminiReq>>,
}

fn dims(requested: Option<u64>, what: &str) -> Result<Option<usize>, Rejection> {
    match requested {
        None => Ok(None),
        Some(n) if n >= 1 && n <= MAX_DIMS as u64 => Ok(Some(n as usize)),
        Some(n) => Err(reject(
            format!("{what} = {n} is not supported: it must be between 1 and {MAX_DIMS}."),
            Some(("dimensions", "invalid_value")),
        )),
    }
}

fn base64_format(value: Option<&str>) -> Result<bool, Rejection> {
    match value {
        None | Some("float") => Ok(false),
        Some("base64") => Ok(true),
        Some(other) => Err(reject(
            format!("encoding_format {other:?} is not supported: use \"float\" or \"base64\"."),
            Some(("encoding_format", "invalid_value")),
        )),
    }
}

fn strings(texts: &[&RawValue], what: &str) -> Result<(), Rejection> {
    if texts.is_empty() {
        return Err(reject(
            format!("invalid request: {what} must not be empty"),
            None,
        ));
    }
    if texts.iter().any(|t| !t.get().starts_with('"')) {
        return Err(reject(
            format!("invalid request: {what} must be strings"),
            None,
        ));
    }
    Ok(())
}

/// Parses and checks an embeddings request for `endpoint`.
pub(crate) fn parse<'a>(
    endpoint: &Endpoint<'_>,
    body: &'a [u8],
) -> Result<EmbedWants<'a>, Rejection> {
    let format = endpoint.format();
    let bad_json = |e: serde_json::Error| super::validate::parse_error(format, &e.to_string());
    let mut wants = EmbedWants {
        shape: Shape::OpenAi,
        count: 1,
        dims: None,
        item_dims: Vec::new(),
        base64: false,
        texts: Vec::new(),
    };
    match endpoint {
        Endpoint::OpenAiEmbed | Endpoint::AzureEmbed { .. } => {
            let r: OpenAiReq = serde_json::from_slice(body).map_err(bad_json)?;
            let model_required = !matches!(
                endpoint,
                Endpoint::AzureEmbed {
                    deployment: Some(_)
                }
            );
            if model_required && r.model != Kind::String {
                return Err(reject(
                    "Missing required parameter: 'model'.",
                    Some(("model", "missing_required_parameter")),
                ));
            }
            wants.count = r
                .input
                .ok_or_else(|| {
                    reject(
                        "Missing required parameter: 'input'.",
                        Some(("input", "missing_required_parameter")),
                    )
                })?
                .0;
            wants.dims = dims(r.dimensions, "dimensions")?;
            wants.base64 = base64_format(r.encoding_format.as_deref())?;
        }
        Endpoint::VoyageEmbed => {
            let r: VoyageReq = serde_json::from_slice(body).map_err(bad_json)?;
            if r.model != Kind::String {
                return Err(reject("model: field required", None));
            }
            wants.shape = Shape::Voyage;
            wants.count = r
                .input
                .ok_or_else(|| reject("input: field required", None))?
                .0;
            wants.dims = dims(r.output_dimension, "output_dimension")?;
            wants.base64 = base64_format(r.encoding_format.as_deref())?;
        }
        Endpoint::BedrockInvoke { model } if bedrock_is_cohere(model) => {
            let r: CohereReq = serde_json::from_slice(body).map_err(bad_json)?;
            let texts = r.texts.unwrap_or_default();
            strings(&texts, "texts").map_err(|_| {
                reject(
                    "Malformed input request: #/texts: expected a non-empty array of strings, \
                     please reformat your input and try again.",
                    None,
                )
            })?;
            wants.shape = Shape::BedrockCohere;
            wants.count = texts.len();
            wants.texts = texts;
            wants.dims = dims(r.output_dimension, "output_dimension")?;
        }
        Endpoint::BedrockInvoke { .. } => {
            let r: TitanReq = serde_json::from_slice(body).map_err(bad_json)?;
            if r.input_text != Kind::String {
                return Err(reject(
                    "Malformed input request: #: required key [inputText] not found, please \
                     reformat your input and try again.",
                    None,
                ));
            }
            wants.shape = Shape::Titan;
            wants.dims = dims(r.dimensions, "dimensions")?;
        }
        Endpoint::GeminiEmbed { batch: false, .. } => {
            let r: GeminiReq = serde_json::from_slice(body).map_err(bad_json)?;
            if r.content != Kind::Object {
                return Err(reject(
                    "* EmbedContentRequest.content: content is not specified\n",
                    None,
                ));
            }
            wants.shape = Shape::GeminiOne;
            wants.dims = dims(r.output_dimensionality, "outputDimensionality")?;
        }
        Endpoint::GeminiEmbed { batch: true, .. } => {
            let r: GeminiBatchReq = serde_json::from_slice(body).map_err(bad_json)?;
            let requests = r.requests.unwrap_or_default();
            if requests.is_empty() {
                return Err(reject(
                    "* BatchEmbedContentsRequest.requests: requests is not specified\n",
                    None,
                ));
            }
            if requests.iter().any(|q| q.content != Kind::Object) {
                return Err(reject(
                    "* BatchEmbedContentsRequest.requests[].content: content is not specified\n",
                    None,
                ));
            }
            wants.shape = Shape::GeminiBatch;
            wants.count = requests.len();
            wants.item_dims = requests
                .iter()
                .map(|q| dims(q.output_dimensionality, "outputDimensionality"))
                .collect::<Result<_, _>>()?;
        }
        Endpoint::CohereEmbed => {
            let r: CohereReq = serde_json::from_slice(body).map_err(bad_json)?;
            if r.model != Kind::String {
                return Err(reject("invalid request: model must be specified", None));
            }
            wants.shape = Shape::Cohere;
            match (r.texts, r.inputs) {
                (Some(texts), _) => {
                    strings(&texts, "texts")?;
                    wants.count = texts.len();
                    wants.texts = texts;
                }
                // Multimodal `inputs`: counted, not echoed.
                (None, Some(SeqLen(n))) if n > 0 => wants.count = n,
                _ => {
                    return Err(reject(
                        "invalid request: one of texts, inputs or images must be specified",
                        None,
                    ))
                }
            }
            wants.dims = dims(r.output_dimension, "output_dimension")?;
        }
        _ => {}
    }
    if wants.count > MAX_INPUTS {
        return Err(reject(
            format!(
                "Too many inputs: {} (the mock takes at most {MAX_INPUTS}).",
                wants.count
            ),
            Some(("input", "invalid_value")),
        ));
    }
    let widest = wants
        .item_dims
        .iter()
        .flatten()
        .chain(wants.dims.as_ref())
        .copied()
        .max()
        .unwrap_or(1);
    if wants.count.saturating_mul(widest) > MAX_VALUES {
        return Err(reject(
            format!("The answer would hold more than {MAX_VALUES} values."),
            Some(("input", "invalid_value")),
        ));
    }
    Ok(wants)
}

// === answers ===

/// One vector: floats, or base64 of the little-endian `f32`s.
struct Vector {
    k: usize,
    dims: usize,
    base64: bool,
}

impl Serialize for Vector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.base64 {
            let mut raw = Vec::with_capacity(self.dims * 4);
            for i in 0..self.dims {
                raw.extend_from_slice(&embedding_value(self.k, i).to_le_bytes());
            }
            return s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(raw));
        }
        let mut seq = s.serialize_seq(Some(self.dims))?;
        for i in 0..self.dims {
            seq.serialize_element(&embedding_value(self.k, i))?;
        }
        seq.end()
    }
}

/// A list of items built from their index.
struct Each<F>(usize, F);

impl<T: Serialize, F: Fn(usize) -> T> Serialize for Each<F> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0))?;
        for k in 0..self.0 {
            seq.serialize_element(&(self.1)(k))?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct Values {
    values: Vector,
}

/// The 200 body for a parsed request under a behaviour.
pub(crate) fn render(w: &EmbedWants<'_>, p: &EmbedParams) -> Bytes {
    let dims_of = |k: usize| {
        w.item_dims
            .get(k)
            .copied()
            .flatten()
            .or(w.dims)
            .unwrap_or(p.default_dims)
    };
    let vector = |k: usize| Vector {
        k,
        dims: dims_of(k),
        base64: w.base64,
    };
    let prompt = p.prompt_tokens;
    let body = match w.shape {
        Shape::OpenAi | Shape::Voyage => {
            #[derive(Serialize)]
            struct Item {
                object: &'static str,
                index: usize,
                embedding: Vector,
            }
            #[derive(Serialize)]
            struct Usage {
                #[serde(skip_serializing_if = "Option::is_none")]
                prompt_tokens: Option<u64>,
                total_tokens: u64,
            }
            #[derive(Serialize)]
            #[serde(bound(serialize = "Each<F>: Serialize"))]
            struct List<'a, F> {
                object: &'static str,
                data: Each<F>,
                model: &'a str,
                usage: Usage,
            }
            wire::to_vec(&List {
                object: "list",
                data: Each(w.count, |k| Item {
                    object: "embedding",
                    index: k,
                    embedding: vector(k),
                }),
                model: &p.model,
                usage: Usage {
                    prompt_tokens: (w.shape == Shape::OpenAi).then_some(prompt),
                    total_tokens: prompt,
                },
            })
        }
        Shape::Titan => {
            #[derive(Serialize)]
            #[serde(rename_all = "camelCase")]
            struct Titan {
                embedding: Vector,
                input_text_token_count: u64,
            }
            wire::to_vec(&Titan {
                embedding: vector(0),
                input_text_token_count: prompt,
            })
        }
        Shape::BedrockCohere => {
            #[derive(Serialize)]
            #[serde(bound(serialize = "Each<F>: Serialize"))]
            struct Answer<'a, F> {
                embeddings: Each<F>,
                id: &'static str,
                response_type: &'static str,
                texts: &'a [&'a RawValue],
            }
            wire::to_vec(&Answer {
                embeddings: Each(w.count, vector),
                id: COHERE_ID,
                response_type: "embeddings_floats",
                texts: &w.texts,
            })
        }
        Shape::GeminiOne => {
            #[derive(Serialize)]
            struct One {
                embedding: Values,
            }
            wire::to_vec(&One {
                embedding: Values { values: vector(0) },
            })
        }
        Shape::GeminiBatch => {
            #[derive(Serialize)]
            #[serde(bound(serialize = "Each<F>: Serialize"))]
            struct Batch<F> {
                embeddings: Each<F>,
            }
            wire::to_vec(&Batch {
                embeddings: Each(w.count, |k| Values { values: vector(k) }),
            })
        }
        Shape::Cohere => {
            #[derive(Serialize)]
            #[serde(bound(serialize = "Each<F>: Serialize"))]
            struct Floats<F> {
                float: Each<F>,
            }
            #[derive(Serialize)]
            struct Meta {
                api_version: Version,
                billed_units: Billed,
            }
            #[derive(Serialize)]
            struct Version {
                version: &'static str,
            }
            #[derive(Serialize)]
            struct Billed {
                input_tokens: u64,
            }
            #[derive(Serialize)]
            #[serde(bound(serialize = "Each<F>: Serialize"))]
            struct Answer<'a, F> {
                id: &'static str,
                embeddings: Floats<F>,
                texts: &'a [&'a RawValue],
                meta: Meta,
                response_type: &'static str,
            }
            wire::to_vec(&Answer {
                id: COHERE_ID,
                embeddings: Floats {
                    float: Each(w.count, vector),
                },
                texts: &w.texts,
                meta: Meta {
                    api_version: Version { version: "2" },
                    billed_units: Billed {
                        input_tokens: prompt,
                    },
                },
                response_type: "embeddings_by_type",
            })
        }
    };
    Bytes::from(body)
}

// === Voyage errors ===

/// `{"detail": message}` (FastAPI style, providers.md §7).
pub(crate) fn voyage_body(message: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        detail: &'a str,
    }
    wire::to_vec(&Body { detail: message })
}

pub(crate) fn voyage_prepared(status: StatusCode, message: &str) -> Prepared {
    Prepared {
        status,
        headers: json_headers(Format::Voyage),
        body: Bytes::from(voyage_body(message)),
    }
}

pub(crate) fn voyage_error(preset: &ErrorPreset) -> Prepared {
    let (status, message) = match preset {
        ErrorPreset::RateLimited { retry_after } => {
            let mut p = voyage_prepared(
                StatusCode::TOO_MANY_REQUESTS,
                "You have exceeded your rate limits. Please wait and try again later.",
            );
            if let Some(secs) = retry_after {
                p.headers.push((RETRY_AFTER, HeaderValue::from(*secs)));
            }
            return p;
        }
        ErrorPreset::QuotaExhausted => (
            StatusCode::FORBIDDEN,
            "Your account has insufficient balance. Please add a payment method at \
             https://dashboard.voyageai.com/.",
        ),
        ErrorPreset::Overloaded => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is temporarily overloaded. Please try again later.",
        ),
        ErrorPreset::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, "Internal server error"),
        ErrorPreset::ContextLength => (
            StatusCode::BAD_REQUEST,
            "Request to model 'voyage-3.5' failed. The max allowed tokens per submitted batch \
             is 320000. Your batch has 330512 tokens after truncation.",
        ),
        ErrorPreset::BadRequest => (
            StatusCode::BAD_REQUEST,
            "Invalid request: the mock upstream was told to reject this request.",
        ),
        ErrorPreset::Unauthorized => (StatusCode::UNAUTHORIZED, "Provided API key is invalid."),
        ErrorPreset::ContentFiltered => (
            StatusCode::BAD_REQUEST,
            "The input was rejected by the content policy.",
        ),
        // Rendered by `compile::error_prepared`.
        ErrorPreset::Custom { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "custom error"),
    };
    voyage_prepared(status, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai(body: &str) -> Result<EmbedWants<'_>, String> {
        parse(&Endpoint::OpenAiEmbed, body.as_bytes()).map_err(|r| r.message)
    }

    #[test]
    fn counts_inputs_like_openai() {
        assert_eq!(openai(r#"{"model":"m","input":"a"}"#).unwrap().count, 1);
        assert_eq!(
            openai(r#"{"model":"m","input":["a","b"]}"#).unwrap().count,
            2
        );
        assert_eq!(openai(r#"{"model":"m","input":[1,2,3]}"#).unwrap().count, 1);
        assert_eq!(
            openai(r#"{"model":"m","input":[[1],[2,3]]}"#)
                .unwrap()
                .count,
            2
        );
        assert!(openai(r#"{"model":"m","input":[]}"#).is_err());
        assert!(openai(r#"{"model":"m","input":["a",1]}"#).is_err());
        assert!(openai(r#"{"model":"m","input":3}"#).is_err());
    }

    #[test]
    fn limits_inputs_dimensions_and_total_size() {
        let many = format!(
            r#"{{"model":"m","input":[{}]}}"#,
            vec!["\"x\""; MAX_INPUTS + 1].join(",")
        );
        assert!(openai(&many).unwrap_err().contains("Too many inputs"));
        let big = format!(
            r#"{{"model":"m","input":[{}],"dimensions":{MAX_DIMS}}}"#,
            vec!["\"x\""; 1000].join(",")
        );
        assert!(openai(&big).unwrap_err().contains("values"));
        assert!(openai(r#"{"model":"m","input":"x","dimensions":16385}"#).is_err());
        let ok = openai(r#"{"model":"m","input":"x","dimensions":16384}"#).unwrap();
        assert_eq!(ok.dims, Some(MAX_DIMS));
    }

    #[test]
    fn renders_base64_of_the_same_values() {
        let w = openai(r#"{"model":"m","input":["a","b"],"encoding_format":"base64"}"#).unwrap();
        let p = EmbedParams {
            model: "m".into(),
            prompt_tokens: 3,
            default_dims: 4,
        };
        let v: serde_json::Value = serde_json::from_slice(&render(&w, &p)).unwrap();
        let b64 = v["data"][1]["embedding"].as_str().unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let expected: Vec<u8> = (0..4)
            .flat_map(|i| embedding_value(1, i).to_le_bytes())
            .collect();
        assert_eq!(raw, expected);
        assert_eq!(v["usage"]["prompt_tokens"], 3);
    }
}
