//! `POST /v1/embeddings` as pure translation (providers.md §1.5, §2, §5, §6, §7): the client's
//! OpenAI-shaped request validated into [`EmbeddingsRequest`], one body per upstream [`Target`],
//! and every upstream's answer turned back into OpenAI's list of embeddings. No I/O: URLs, auth
//! and signing are `upstream`'s.
//!
//! Every target is asked for floats; the gateway writes base64 itself when the client asks, so
//! `encoding_format` behaves the same whichever provider answers.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::{BufMut, BytesMut};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use super::oai::Usage;
use super::{is_context_window_message, status_error, RespMeta, TranslateError};
use crate::error::{ErrorClass, GatewayError, UpstreamError};

/// OpenAI's limit on inputs per request (providers.md §1.5).
pub const MAX_INPUTS: usize = 2048;
/// Sanity bound on `dimensions`; real models stop far below (3072 for the largest OpenAI one).
pub const MAX_DIMENSIONS: u32 = 65_536;
/// Cohere's embed endpoints (and Bedrock's Cohere models) take at most 96 texts per call.
const COHERE_MAX_TEXTS: usize = 96;
/// Voyage's list length limit (providers.md §7).
const VOYAGE_MAX_INPUTS: usize = 1000;
/// Gemini's `batchEmbedContents` takes at most 100 requests.
const GEMINI_MAX_BATCH: usize = 100;

// === request ===

/// A validated `POST /v1/embeddings` body. Strings borrow from the request bytes when they hold
/// no JSON escapes.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest<'a> {
    pub model: Cow<'a, str>,
    pub input: Input<'a>,
    pub dimensions: Option<u32>,
    pub encoding: Encoding,
    pub user: Option<Cow<'a, str>>,
    /// Gateway extension: retrieval role of the inputs (`query`, `document`, or a provider's own
    /// value such as Cohere's `search_query`/`classification`). Passed to Voyage, Cohere and
    /// Gemini (as `taskType`); OpenAI, Azure and Titan have no equivalent and ignore it.
    pub input_type: Option<Cow<'a, str>>,
}

/// What to embed: never empty, no empty string, no empty token list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<'a> {
    /// `"text"` becomes one element.
    Texts(Vec<Cow<'a, str>>),
    /// Token ids: `int[]` becomes one element, `int[][]` one per inner list.
    Tokens(Vec<Vec<u32>>),
}

/// The client's `encoding_format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    #[default]
    Float,
    /// Each vector as base64 of its f32 values, little-endian.
    Base64,
}

/// What the client asked for, as the response parser checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub inputs: usize,
    pub encoding: Encoding,
    pub est_tokens: u32,
    pub dimensions: Option<u32>,
}

impl EmbeddingsRequest<'_> {
    /// Number of inputs, i.e. of vectors in the answer.
    pub fn count(&self) -> usize {
        match &self.input {
            Input::Texts(t) => t.len(),
            Input::Tokens(t) => t.len(),
        }
    }

    /// Rough prompt tokens: a quarter of the characters (rounded up) per text, the exact count
    /// for token inputs. Saturates at `u32::MAX`.
    pub fn estimate_tokens(&self) -> u32 {
        let n: u64 = match &self.input {
            Input::Texts(t) => t
                .iter()
                .map(|s| (s.chars().count() as u64).div_ceil(4))
                .sum(),
            Input::Tokens(t) => t.iter().map(|v| v.len() as u64).sum(),
        };
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The facts [`parse_response`] checks the upstream answer against.
    pub fn ask(&self) -> Ask {
        Ask {
            inputs: self.count(),
            encoding: self.encoding,
            est_tokens: self.estimate_tokens(),
            dimensions: self.dimensions,
        }
    }
}

/// A JSON string that borrows from the input when it has no escapes.
#[derive(Deserialize)]
struct BStr<'a>(#[serde(borrow)] Cow<'a, str>);

/// The top-level object as (key, raw value) pairs, in order.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(6));
                while let Some(BStr(key)) = map.next_key::<BStr<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    out.push((key, value));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn bad(param: &str, why: impl fmt::Display) -> GatewayError {
    GatewayError::bad_request(format!("{param}: {why}"), Some(param.to_owned()))
}

fn is_null(v: &RawValue) -> bool {
    v.get() == "null"
}

fn string_of<'a>(v: &'a RawValue, param: &str) -> Result<Cow<'a, str>, GatewayError> {
    if !v.get().starts_with('"') {
        return Err(bad(param, "must be a string"));
    }
    serde_json::from_str::<BStr<'a>>(v.get())
        .map(|s| s.0)
        .map_err(|_| bad(param, "must be a string"))
}

/// Validates a `POST /v1/embeddings` body. Unknown fields are ignored; `null` counts as absent.
pub fn parse_request(bytes: &[u8]) -> Result<EmbeddingsRequest<'_>, GatewayError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let fields = Fields::deserialize(&mut de)
        .and_then(|f| de.end().map(|()| f))
        .map_err(|e| {
            let message = if e.is_syntax() || e.is_eof() {
                format!("request body is not valid JSON: {e}")
            } else {
                "request body must be a JSON object".to_owned()
            };
            GatewayError::bad_request(message, None)
        })?;
    // The known keys, in this order; unknown keys are ignored. A known key given twice is
    // refused (checked per key, so a body of many keys costs linear time).
    const KEYS: [&str; 6] = [
        "model",
        "input",
        "dimensions",
        "encoding_format",
        "user",
        "input_type",
    ];
    let mut seen = [false; KEYS.len()];
    let mut values: [Option<&RawValue>; KEYS.len()] = [None; KEYS.len()];
    for (key, value) in fields.0 {
        let Some(k) = KEYS.iter().position(|k| *k == key) else {
            continue;
        };
        if std::mem::replace(&mut seen[k], true) {
            return Err(bad(
                KEYS[k],
                "the key appears more than once in the request body",
            ));
        }
        values[k] = Some(value).filter(|v| !is_null(v));
    }
    let [model, input, dimensions, encoding, user, input_type] = values;

    let model = string_of(
        model.ok_or_else(|| bad("model", "this field is required"))?,
        "model",
    )?;
    if model.is_empty() {
        return Err(bad("model", "must not be empty"));
    }
    let input = parse_input(input.ok_or_else(|| bad("input", "this field is required"))?)?;
    let dimensions = dimensions
        .map(|v| {
            serde_json::from_str::<i64>(v.get())
                .ok()
                .filter(|d| (1..=i64::from(MAX_DIMENSIONS)).contains(d))
                .and_then(|d| u32::try_from(d).ok())
                .ok_or_else(|| {
                    bad(
                        "dimensions",
                        format_args!("must be an integer from 1 to {MAX_DIMENSIONS}"),
                    )
                })
        })
        .transpose()?;
    let encoding = match encoding {
        None => Encoding::Float,
        Some(v) => match string_of(v, "encoding_format").as_deref() {
            Ok("float") => Encoding::Float,
            Ok("base64") => Encoding::Base64,
            _ => return Err(bad("encoding_format", "must be \"float\" or \"base64\"")),
        },
    };
    let user = user.map(|v| string_of(v, "user")).transpose()?;
    let input_type = input_type.map(|v| string_of(v, "input_type")).transpose()?;
    if input_type.as_deref() == Some("") {
        return Err(bad("input_type", "must not be empty"));
    }
    Ok(EmbeddingsRequest {
        model,
        input,
        dimensions,
        encoding,
        user,
        input_type,
    })
}

const INPUT_SHAPES: &str =
    "must be a string, an array of strings, an array of token ids or an array of arrays of token ids";

fn parse_input(raw: &RawValue) -> Result<Input<'_>, GatewayError> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            let s = string_of(raw, "input")?;
            if s.is_empty() {
                return Err(bad("input", "must not be an empty string"));
            }
            Ok(Input::Texts(vec![s]))
        }
        Some(b'[') => {
            let items: Vec<&RawValue> =
                serde_json::from_str(text).map_err(|_| bad("input", INPUT_SHAPES))?;
            let first = items
                .first()
                .ok_or_else(|| bad("input", "must not be an empty array"))?;
            match first.get().as_bytes().first() {
                Some(b'"') => {
                    check_len(items.len())?;
                    let mut texts = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        let param = format!("input[{i}]");
                        if !item.get().starts_with('"') {
                            return Err(bad(&param, "must be a string like input[0]"));
                        }
                        let s = string_of(item, &param)?;
                        if s.is_empty() {
                            return Err(bad(&param, "must not be an empty string"));
                        }
                        texts.push(s);
                    }
                    Ok(Input::Texts(texts))
                }
                Some(b'[') => {
                    check_len(items.len())?;
                    let mut lists = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        let param = format!("input[{i}]");
                        if !item.get().starts_with('[') {
                            return Err(bad(&param, "must be an array of token ids like input[0]"));
                        }
                        let ids: Vec<&RawValue> = serde_json::from_str(item.get())
                            .map_err(|_| bad(&param, "must be an array of token ids"))?;
                        if ids.is_empty() {
                            return Err(bad(&param, "must not be an empty array"));
                        }
                        lists.push(token_ids(&ids, &param)?);
                    }
                    Ok(Input::Tokens(lists))
                }
                Some(b'-' | b'0'..=b'9') => Ok(Input::Tokens(vec![token_ids(&items, "input")?])),
                _ => Err(bad(
                    "input[0]",
                    "must be a string, a token id or an array of token ids",
                )),
            }
        }
        _ => Err(bad("input", INPUT_SHAPES)),
    }
}

fn check_len(n: usize) -> Result<(), GatewayError> {
    if n > MAX_INPUTS {
        return Err(bad(
            "input",
            format_args!("at most {MAX_INPUTS} inputs per request (got {n})"),
        ));
    }
    Ok(())
}

fn token_ids(items: &[&RawValue], param: &str) -> Result<Vec<u32>, GatewayError> {
    items
        .iter()
        .enumerate()
        .map(|(j, v)| {
            serde_json::from_str::<u32>(v.get()).map_err(|_| {
                bad(
                    &format!("{param}[{j}]"),
                    "must be a token id (an integer from 0 to 4294967295)",
                )
            })
        })
        .collect()
}

// === targets ===

/// The wire format one embeddings deployment speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// OpenAI `POST /v1/embeddings` and every OpenAI-compatible server.
    OpenAi,
    /// Azure OpenAI `…/embeddings` (same bodies as OpenAI).
    Azure,
    /// Bedrock InvokeModel with an `amazon.titan-embed-*` model: one text per call.
    BedrockTitan,
    /// Bedrock InvokeModel with a `cohere.embed-*` model.
    BedrockCohere,
    /// Gemini `models/{model}:embedContent`: exactly one text.
    Gemini,
    /// Gemini `models/{model}:batchEmbedContents`.
    GeminiBatch,
    /// Cohere `POST /v2/embed`.
    Cohere,
    /// Voyage `POST /v1/embeddings`.
    Voyage,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::OpenAi => "openai",
            Target::Azure => "azure",
            Target::BedrockTitan => "bedrock titan",
            Target::BedrockCohere => "bedrock cohere",
            Target::Gemini | Target::GeminiBatch => "gemini",
            Target::Cohere => "cohere",
            Target::Voyage => "voyage",
        }
    }
}

/// The Bedrock embeddings format of a model id, or `None` for a model that does not embed (or
/// an application inference profile ARN, which does not name its model). Accepts foundation
/// model ARNs and cross-region profile ids (`us.cohere.embed-v4:0`).
pub fn bedrock_target(model: &str) -> Option<Target> {
    let id = model.rsplit('/').next().unwrap_or(model);
    let unprefixed = id.split_once('.').map_or("", |(_, rest)| rest);
    let is = |prefix: &str| id.starts_with(prefix) || unprefixed.starts_with(prefix);
    if is("amazon.titan-embed") {
        Some(Target::BedrockTitan)
    } else if is("cohere.embed") {
        Some(Target::BedrockCohere)
    } else {
        None
    }
}

/// `embedContent` for a single text, `batchEmbedContents` otherwise.
pub fn gemini_target(req: &EmbeddingsRequest<'_>) -> Target {
    match &req.input {
        Input::Texts(t) if t.len() == 1 => Target::Gemini,
        _ => Target::GeminiBatch,
    }
}

// === request bodies ===

#[derive(Serialize)]
#[serde(untagged)]
enum InputRef<'r> {
    Texts(&'r [Cow<'r, str>]),
    Tokens(&'r [Vec<u32>]),
}

#[derive(Serialize)]
struct OaiBody<'r> {
    model: &'r str,
    input: InputRef<'r>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
    encoding_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'r str>,
}

#[derive(Serialize)]
struct VoyageBody<'r> {
    input: &'r [Cow<'r, str>],
    model: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimension: Option<u32>,
}

#[derive(Serialize)]
struct CohereBody<'r> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'r str>,
    texts: &'r [Cow<'r, str>],
    input_type: &'r str,
    embedding_types: [&'static str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimension: Option<u32>,
}

#[derive(Serialize)]
struct TitanBody<'r> {
    #[serde(rename = "inputText")]
    input_text: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    normalize: Option<bool>,
    #[serde(rename = "embeddingConfig", skip_serializing_if = "Option::is_none")]
    embedding_config: Option<TitanConfig>,
}

#[derive(Serialize)]
struct TitanConfig {
    #[serde(rename = "outputEmbeddingLength")]
    output_embedding_length: u32,
}

#[derive(Serialize)]
struct GeminiContent<'r> {
    parts: [GeminiPart<'r>; 1],
}

#[derive(Serialize)]
struct GeminiPart<'r> {
    text: &'r str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GeminiEmbed<'r> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'r str>,
    content: GeminiContent<'r>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimensionality: Option<u32>,
}

#[derive(Serialize)]
struct GeminiBatchBody<'r> {
    requests: Vec<GeminiEmbed<'r>>,
}

fn to_body<T: Serialize>(v: &T) -> Result<Vec<u8>, TranslateError> {
    serde_json::to_vec(v).map_err(|e| TranslateError::new("", e.to_string()))
}

fn texts<'r, 'a>(
    req: &'r EmbeddingsRequest<'a>,
    target: Target,
) -> Result<&'r [Cow<'a, str>], TranslateError> {
    match &req.input {
        Input::Texts(t) => Ok(t),
        Input::Tokens(_) => Err(TranslateError::new(
            "input",
            format!("{} embeds text, not token ids", target.as_str()),
        )),
    }
}

fn at_most(n: usize, max: usize, target: Target) -> Result<(), TranslateError> {
    if n > max {
        return Err(TranslateError::new(
            "input",
            format!(
                "{} embeds at most {max} inputs per request (got {n})",
                target.as_str()
            ),
        ));
    }
    Ok(())
}

fn dims_in(dims: Option<u32>, allowed: &[u32], what: &str) -> Result<Option<u32>, TranslateError> {
    match dims {
        Some(d) if !allowed.contains(&d) => Err(TranslateError::new(
            "dimensions",
            format!("{what} supports dimensions {allowed:?}, not {d}"),
        )),
        _ => Ok(dims),
    }
}

/// Voyage knows `query` and `document`; Cohere's names for the same are accepted too.
fn voyage_input_type(t: Option<&str>) -> Result<Option<&'static str>, TranslateError> {
    match t {
        None => Ok(None),
        Some("query" | "search_query") => Ok(Some("query")),
        Some("document" | "search_document") => Ok(Some("document")),
        Some(other) => Err(TranslateError::new(
            "input_type",
            format!("voyage accepts input_type \"query\" or \"document\", not {other:?}"),
        )),
    }
}

/// Cohere requires an input type; Voyage's names map to Cohere's, other values pass as given
/// (`classification`, `clustering`, ...). Default `search_document`.
fn cohere_input_type(t: Option<&str>) -> &str {
    match t {
        None | Some("document") => "search_document",
        Some("query") => "search_query",
        Some(other) => other,
    }
}

fn gemini_task_type(t: Option<&str>) -> Result<Option<&'static str>, TranslateError> {
    Ok(Some(match t {
        None => return Ok(None),
        Some("query" | "search_query" | "RETRIEVAL_QUERY") => "RETRIEVAL_QUERY",
        Some("document" | "search_document" | "RETRIEVAL_DOCUMENT") => "RETRIEVAL_DOCUMENT",
        Some("classification" | "CLASSIFICATION") => "CLASSIFICATION",
        Some("clustering" | "CLUSTERING") => "CLUSTERING",
        Some("semantic_similarity" | "SEMANTIC_SIMILARITY") => "SEMANTIC_SIMILARITY",
        Some(other) => {
            return Err(TranslateError::new(
                "input_type",
                format!("gemini has no task type for input_type {other:?}"),
            ))
        }
    }))
}

/// The upstream body for `target`, naming `model` (the deployment's upstream model).
/// Token inputs go to OpenAI and Azure only. OpenAI and Azure are always asked for floats.
pub fn build_request(
    target: Target,
    req: &EmbeddingsRequest<'_>,
    model: &str,
) -> Result<Vec<u8>, TranslateError> {
    let input_type = req.input_type.as_deref();
    match target {
        Target::OpenAi | Target::Azure => to_body(&OaiBody {
            model,
            input: match &req.input {
                Input::Texts(t) => InputRef::Texts(t),
                Input::Tokens(t) => InputRef::Tokens(t),
            },
            dimensions: req.dimensions,
            encoding_format: "float",
            user: req.user.as_deref(),
        }),
        Target::Voyage => {
            let input = texts(req, target)?;
            at_most(input.len(), VOYAGE_MAX_INPUTS, target)?;
            to_body(&VoyageBody {
                input,
                model,
                input_type: voyage_input_type(input_type)?,
                output_dimension: req.dimensions,
            })
        }
        Target::Cohere => {
            let t = texts(req, target)?;
            at_most(t.len(), COHERE_MAX_TEXTS, target)?;
            to_body(&CohereBody {
                model: Some(model),
                texts: t,
                input_type: cohere_input_type(input_type),
                embedding_types: ["float"],
                output_dimension: req.dimensions,
            })
        }
        Target::BedrockCohere => {
            let t = texts(req, target)?;
            at_most(t.len(), COHERE_MAX_TEXTS, target)?;
            // Only Embed v4 has `output_dimension` (256, 512, 1024, 1536); v3 is fixed-size.
            let output_dimension = if model.contains("embed-v4") {
                dims_in(req.dimensions, &[256, 512, 1024, 1536], "cohere embed v4")?
            } else if req.dimensions.is_some() {
                return Err(TranslateError::unsupported(
                    "dimensions",
                    "dimensions with a Cohere embed v3 model on Bedrock",
                ));
            } else {
                None
            };
            to_body(&CohereBody {
                model: None,
                texts: t,
                input_type: cohere_input_type(input_type),
                embedding_types: ["float"],
                output_dimension,
            })
        }
        Target::BedrockTitan => {
            let t = texts(req, target)?;
            let [text] = t else {
                return Err(TranslateError::new(
                    "input",
                    "Titan embeds one input per request",
                ));
            };
            let mut body = TitanBody {
                input_text: text,
                dimensions: None,
                normalize: None,
                embedding_config: None,
            };
            if model.contains("titan-embed-image") {
                body.embedding_config = dims_in(req.dimensions, &[256, 384, 1024], "titan image")?
                    .map(|n| TitanConfig {
                        output_embedding_length: n,
                    });
            } else if model.contains("titan-embed-text-v1") || model.contains("titan-embed-g1") {
                if req.dimensions.is_some() {
                    return Err(TranslateError::unsupported(
                        "dimensions",
                        "dimensions with Titan text v1",
                    ));
                }
            } else {
                // Text v2: unit-length vectors, like OpenAI's.
                body.dimensions = dims_in(req.dimensions, &[256, 512, 1024], "titan text v2")?;
                body.normalize = Some(true);
            }
            to_body(&body)
        }
        Target::Gemini => {
            let t = texts(req, target)?;
            let [text] = t else {
                return Err(TranslateError::new(
                    "input",
                    "embedContent embeds one input per request; use batchEmbedContents",
                ));
            };
            to_body(&GeminiEmbed {
                model: None,
                content: GeminiContent {
                    parts: [GeminiPart { text }],
                },
                task_type: gemini_task_type(input_type)?,
                output_dimensionality: req.dimensions,
            })
        }
        Target::GeminiBatch => {
            let t = texts(req, target)?;
            at_most(t.len(), GEMINI_MAX_BATCH, target)?;
            let name: Cow<'_, str> = if model.starts_with("models/") {
                Cow::Borrowed(model)
            } else {
                Cow::Owned(format!("models/{model}"))
            };
            let task_type = gemini_task_type(input_type)?;
            to_body(&GeminiBatchBody {
                requests: t
                    .iter()
                    .map(|text| GeminiEmbed {
                        model: Some(&name),
                        content: GeminiContent {
                            parts: [GeminiPart { text }],
                        },
                        task_type,
                        output_dimensionality: req.dimensions,
                    })
                    .collect(),
            })
        }
    }
}

// === responses ===

/// One upstream vector: a JSON array of numbers, or (leniently) base64 of f32 little-endian.
struct Vector(Vec<f32>);

impl<'de> Deserialize<'de> for Vector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vector;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of numbers or a base64 string")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vector, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(1024));
                while let Some(x) = seq.next_element::<f32>()? {
                    v.push(x);
                }
                Ok(Vector(v))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Vector, E> {
                let bytes = BASE64.decode(s).map_err(E::custom)?;
                if bytes.len() % 4 != 0 {
                    return Err(E::custom("base64 embedding is not a whole number of f32s"));
                }
                Ok(Vector(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ))
            }
        }
        d.deserialize_any(V)
    }
}

/// A token count, whether the provider writes `12` or `12.0`.
#[derive(Deserialize)]
struct Tokens(f64);

impl Tokens {
    fn get(t: Option<Tokens>) -> Option<u64> {
        t.map(|t| t.0)
            .filter(|x| x.is_finite() && *x >= 0.0)
            .map(|x| x.round() as u64)
    }
}

#[derive(Deserialize)]
struct OaiResp {
    data: Vec<OaiItem>,
    usage: Option<OaiUsage>,
}

#[derive(Deserialize)]
struct OaiItem {
    index: Option<usize>,
    embedding: Vector,
}

#[derive(Deserialize)]
struct OaiUsage {
    prompt_tokens: Option<Tokens>,
    total_tokens: Option<Tokens>,
}

#[derive(Deserialize)]
struct CohereResp<'a> {
    #[serde(borrow)]
    embeddings: &'a RawValue,
    meta: Option<CohereMeta>,
}

#[derive(Deserialize)]
struct CohereMeta {
    billed_units: Option<CohereBilled>,
}

#[derive(Deserialize)]
struct CohereBilled {
    input_tokens: Option<Tokens>,
}

#[derive(Deserialize)]
struct ByType<T> {
    float: Option<T>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TitanResp {
    embedding: Option<Vector>,
    embeddings_by_type: Option<ByType<Vector>>,
    input_text_token_count: Option<Tokens>,
}

#[derive(Deserialize)]
struct GeminiValues {
    values: Vector,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiResp {
    embedding: Option<GeminiValues>,
    #[serde(default)]
    embeddings: Vec<GeminiValues>,
    usage_metadata: Option<GeminiUsage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiUsage {
    prompt_token_count: Option<Tokens>,
}

fn malformed(target: Target) -> UpstreamError {
    UpstreamError::new(
        ErrorClass::ServerError,
        format!(
            "upstream returned a malformed {} embeddings body",
            target.as_str()
        ),
    )
}

fn invalid(message: String) -> UpstreamError {
    UpstreamError::new(ErrorClass::ServerError, message)
}

type Parsed = (Vec<Vec<f32>>, Option<u64>);

fn parse_oai(body: &[u8], target: Target) -> Result<Parsed, UpstreamError> {
    let resp: OaiResp = serde_json::from_slice(body).map_err(|_| malformed(target))?;
    let n = resp.data.len();
    let mut slots: Vec<Option<Vec<f32>>> = Vec::with_capacity(n);
    slots.resize_with(n, || None);
    for (pos, item) in resp.data.into_iter().enumerate() {
        let i = item.index.unwrap_or(pos);
        match slots.get_mut(i) {
            Some(slot @ None) => *slot = Some(item.embedding.0),
            _ => {
                return Err(invalid(format!(
                    "upstream returned embedding index {i} out of range or twice"
                )))
            }
        }
    }
    // Every slot is filled: n items went into n distinct slots.
    let vectors = slots.into_iter().flatten().collect();
    let tokens = resp
        .usage
        .and_then(|u| Tokens::get(u.prompt_tokens).or(Tokens::get(u.total_tokens)));
    Ok((vectors, tokens))
}

/// Cohere writes `embeddings` as `{"float": [[…]]}` when types were asked for (we always ask),
/// or as a bare `[[…]]` (`embeddings_floats`, older models on Bedrock).
fn parse_cohere(body: &[u8], target: Target) -> Result<Parsed, UpstreamError> {
    let resp: CohereResp<'_> = serde_json::from_slice(body).map_err(|_| malformed(target))?;
    let raw = resp.embeddings.get();
    let vectors: Vec<Vector> = if raw.starts_with('[') {
        serde_json::from_str(raw).map_err(|_| malformed(target))?
    } else {
        serde_json::from_str::<ByType<Vec<Vector>>>(raw)
            .map_err(|_| malformed(target))?
            .float
            .ok_or_else(|| invalid("upstream returned no float embeddings".to_owned()))?
    };
    let tokens = resp
        .meta
        .and_then(|m| m.billed_units)
        .and_then(|b| Tokens::get(b.input_tokens));
    Ok((vectors.into_iter().map(|v| v.0).collect(), tokens))
}

fn parse_titan(body: &[u8]) -> Result<Parsed, UpstreamError> {
    let resp: TitanResp =
        serde_json::from_slice(body).map_err(|_| malformed(Target::BedrockTitan))?;
    let v = resp
        .embedding
        .or(resp.embeddings_by_type.and_then(|b| b.float))
        .ok_or_else(|| invalid("upstream returned no Titan embedding".to_owned()))?;
    Ok((vec![v.0], Tokens::get(resp.input_text_token_count)))
}

fn parse_gemini(body: &[u8], target: Target) -> Result<Parsed, UpstreamError> {
    let resp: GeminiResp = serde_json::from_slice(body).map_err(|_| malformed(target))?;
    let vectors = match target {
        Target::Gemini => resp.embedding.into_iter().map(|e| e.values.0).collect(),
        _ => resp.embeddings.into_iter().map(|e| e.values.0).collect(),
    };
    let tokens = resp
        .usage_metadata
        .and_then(|u| Tokens::get(u.prompt_token_count));
    Ok((vectors, tokens))
}

/// Checks the vectors against what was asked: one per input, none empty, all of one length
/// (the asked `dimensions` if any), all finite.
fn check(vectors: &[Vec<f32>], ask: &Ask) -> Result<(), UpstreamError> {
    if vectors.len() != ask.inputs {
        return Err(invalid(format!(
            "upstream returned {} embeddings for {} inputs",
            vectors.len(),
            ask.inputs
        )));
    }
    let dim = vectors.first().map_or(0, Vec::len);
    if dim == 0 {
        return Err(invalid("upstream returned an empty embedding".to_owned()));
    }
    for (i, v) in vectors.iter().enumerate() {
        if v.len() != dim {
            return Err(invalid(format!(
                "upstream embedding {i} has {} dimensions, embedding 0 has {dim}",
                v.len()
            )));
        }
        if !v.iter().all(|x| x.is_finite()) {
            return Err(invalid(format!(
                "upstream embedding {i} holds a number that is not finite"
            )));
        }
    }
    if let Some(d) = ask.dimensions {
        if usize::try_from(d).ok() != Some(dim) {
            return Err(invalid(format!(
                "upstream returned {dim} dimensions, {d} were asked for"
            )));
        }
    }
    Ok(())
}

/// Serializes as a JSON array (shortest round-trip floats) or as base64 of f32 little-endian.
struct OutVector<'a>(&'a [f32], Encoding);

impl Serialize for OutVector<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.1 {
            Encoding::Float => self.0.serialize(s),
            Encoding::Base64 => {
                let bytes: Vec<u8> = self.0.iter().flat_map(|x| x.to_le_bytes()).collect();
                s.serialize_str(&BASE64.encode(bytes))
            }
        }
    }
}

#[derive(Serialize)]
struct OutItem<'a> {
    object: &'static str,
    index: usize,
    embedding: OutVector<'a>,
}

#[derive(Serialize)]
struct OutUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct OutList<'a> {
    object: &'static str,
    data: Vec<OutItem<'a>>,
    model: &'a str,
    usage: OutUsage,
}

fn write_list(
    vectors: &[Vec<f32>],
    model: &str,
    tokens: u64,
    encoding: Encoding,
) -> Result<BytesMut, UpstreamError> {
    let floats: usize = vectors.iter().map(Vec::len).sum();
    let per_float = match encoding {
        Encoding::Float => 12,
        Encoding::Base64 => 6,
    };
    let capacity = floats
        .saturating_mul(per_float)
        .saturating_add(vectors.len() * 48)
        .saturating_add(128 + model.len());
    let list = OutList {
        object: "list",
        data: vectors
            .iter()
            .enumerate()
            .map(|(index, v)| OutItem {
                object: "embedding",
                index,
                embedding: OutVector(v, encoding),
            })
            .collect(),
        model,
        usage: OutUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    let mut w = BytesMut::with_capacity(capacity).writer();
    serde_json::to_writer(&mut w, &list).map_err(|e| invalid(e.to_string()))?;
    Ok(w.into_inner())
}

/// Turns a 2xx upstream embeddings body into OpenAI's list and its usage.
///
/// Prompt tokens come from the body (OpenAI/Azure `usage.prompt_tokens`, Voyage
/// `usage.total_tokens`, Cohere `meta.billed_units.input_tokens`, Titan `inputTextTokenCount`),
/// else from `meta.input_token_count` (Bedrock's header), else `ask.est_tokens`. Gemini reports
/// no usage for embeddings (a `usageMetadata.promptTokenCount` is read if one ever appears), so
/// Gemini answers are billed at the estimate. The vectors are checked by [`Ask`]; a body that
/// fails is `ErrorClass::ServerError`.
pub fn parse_response(
    target: Target,
    body: &[u8],
    meta: &RespMeta<'_>,
    ask: &Ask,
) -> Result<(BytesMut, Usage), UpstreamError> {
    let (vectors, tokens) = match target {
        Target::OpenAi | Target::Azure | Target::Voyage => parse_oai(body, target)?,
        Target::Cohere | Target::BedrockCohere => parse_cohere(body, target)?,
        Target::BedrockTitan => parse_titan(body)?,
        Target::Gemini | Target::GeminiBatch => parse_gemini(body, target)?,
    };
    check(&vectors, ask)?;
    let tokens = tokens
        .or(meta.input_token_count)
        .unwrap_or(u64::from(ask.est_tokens));
    let out = write_list(&vectors, meta.model, tokens, ask.encoding)?;
    Ok((
        out,
        Usage {
            prompt_tokens: tokens,
            ..Usage::default()
        },
    ))
}

// === errors ===

/// Voyage's FastAPI-style `{"detail": "…"}`, or a validation list `{"detail": [{"msg": "…"}]}`.
fn voyage_detail(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Body {
        detail: serde_json::Value,
    }
    match serde_json::from_slice::<Body>(body).map(|b| b.detail) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.get("msg").and_then(|m| m.as_str()))
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::new(),
    }
}

/// Classifies a non-2xx response from Voyage (providers.md §7).
pub fn classify_voyage_error(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> UpstreamError {
    let message = voyage_detail(body);
    let lower = message.to_ascii_lowercase();
    // Voyage caps tokens per batch per model ("The max allowed tokens per submitted batch is
    // …"); a model with a larger cap may take the request, so it is a context-window failure.
    let too_long = is_context_window_message(&message)
        || lower.contains("max allowed tokens")
        || lower.contains("tokens per submitted batch");
    let class = match status {
        429 => ErrorClass::RateLimited,
        402 => ErrorClass::QuotaExhausted,
        401 | 403 | 404 => ErrorClass::UpstreamAuth,
        400 | 413 | 422 if too_long => ErrorClass::ContextWindow,
        408 => ErrorClass::Timeout,
        503 | 529 => ErrorClass::Overloaded,
        500..=599 => ErrorClass::ServerError,
        400..=499 => ErrorClass::BadRequest,
        _ => ErrorClass::ServerError,
    };
    status_error(class, status, &message, None, retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn req(body: &str) -> EmbeddingsRequest<'_> {
        parse_request(body.as_bytes()).expect("valid request")
    }

    fn err(body: &str) -> (String, Option<String>) {
        match parse_request(body.as_bytes()) {
            Err(e) => (e.to_string(), e.param().map(str::to_owned)),
            Ok(r) => panic!("accepted {body}: {r:?}"),
        }
    }

    fn body(target: Target, r: &EmbeddingsRequest<'_>, model: &str) -> Value {
        let b = build_request(target, r, model).expect("translates");
        serde_json::from_slice(&b).expect("valid JSON")
    }

    fn meta(model: &str) -> RespMeta<'_> {
        RespMeta {
            model,
            ..RespMeta::default()
        }
    }

    fn ask(inputs: usize) -> Ask {
        Ask {
            inputs,
            encoding: Encoding::Float,
            est_tokens: 7,
            dimensions: None,
        }
    }

    fn parse(target: Target, upstream: &str, ask: &Ask) -> Result<(Value, Usage), UpstreamError> {
        parse_response(target, upstream.as_bytes(), &meta("m-1"), ask)
            .map(|(b, u)| (serde_json::from_slice(&b).expect("valid JSON"), u))
    }

    // --- request validation ---

    #[test]
    fn accepts_every_input_shape() {
        let r = req(r#"{"model":"e","input":"hello"}"#);
        assert_eq!(r.input, Input::Texts(vec!["hello".into()]));
        assert!(matches!(&r.model, Cow::Borrowed("e")), "model borrows");
        assert!(
            matches!(&r.input, Input::Texts(t) if matches!(t[0], Cow::Borrowed(_))),
            "unescaped text borrows"
        );
        assert_eq!(r.encoding, Encoding::Float);
        assert_eq!(r.count(), 1);

        let r = req(
            r#"{"model":"e","input":["a","b\n"],"encoding_format":"base64","dimensions":256,"user":"u","input_type":"query","extra":1}"#,
        );
        assert_eq!(r.input, Input::Texts(vec!["a".into(), "b\n".into()]));
        assert_eq!(r.encoding, Encoding::Base64);
        assert_eq!(r.dimensions, Some(256));
        assert_eq!(r.user.as_deref(), Some("u"));
        assert_eq!(r.input_type.as_deref(), Some("query"));
        assert_eq!(r.count(), 2);

        let r = req(r#"{"model":"e","input":[1,2,3]}"#);
        assert_eq!(r.input, Input::Tokens(vec![vec![1, 2, 3]]));
        assert_eq!((r.count(), r.estimate_tokens()), (1, 3));

        let r = req(r#"{"model":"e","input":[[1,2],[3]],"dimensions":null,"user":null}"#);
        assert_eq!(r.input, Input::Tokens(vec![vec![1, 2], vec![3]]));
        assert_eq!((r.count(), r.estimate_tokens()), (2, 3));
        assert_eq!((r.dimensions, r.user), (None, None));
    }

    #[test]
    fn estimates_a_quarter_of_the_characters_per_text() {
        // 1 char -> 1, 4 -> 1, 5 -> 2, "héllo" is 5 chars (6 bytes) -> 2.
        let r = req(r#"{"model":"e","input":["a","abcd","abcde","héllo"]}"#);
        assert_eq!(r.estimate_tokens(), 6);
        assert_eq!(
            r.ask(),
            Ask {
                inputs: 4,
                encoding: Encoding::Float,
                est_tokens: 6,
                dimensions: None
            }
        );
    }

    #[test]
    fn rejects_invalid_requests_naming_the_field() {
        let many = format!(
            r#"{{"model":"e","input":[{}]}}"#,
            vec![r#""x""#; MAX_INPUTS + 1].join(",")
        );
        let table: &[(&str, &str, Option<&str>)] = &[
            (r#"[1]"#, "must be a JSON object", None),
            (r#""x""#, "must be a JSON object", None),
            (r#"{"model":"e","input":"#, "not valid JSON", None),
            (
                r#"{"input":"x"}"#,
                "model: this field is required",
                Some("model"),
            ),
            (
                r#"{"model":null,"input":"x"}"#,
                "model: this field is required",
                Some("model"),
            ),
            (
                r#"{"model":"","input":"x"}"#,
                "model: must not be empty",
                Some("model"),
            ),
            (
                r#"{"model":3,"input":"x"}"#,
                "model: must be a string",
                Some("model"),
            ),
            (
                r#"{"model":"e"}"#,
                "input: this field is required",
                Some("input"),
            ),
            (
                r#"{"model":"e","input":[]}"#,
                "input: must not be an empty array",
                Some("input"),
            ),
            (
                r#"{"model":"e","input":""}"#,
                "input: must not be an empty string",
                Some("input"),
            ),
            (
                r#"{"model":"e","input":["a",""]}"#,
                "input[1]: must not be an empty string",
                Some("input[1]"),
            ),
            (
                r#"{"model":"e","input":["a",1]}"#,
                "input[1]: must be a string",
                Some("input[1]"),
            ),
            (
                r#"{"model":"e","input":[1,"a"]}"#,
                "input[1]: must be a token id",
                Some("input[1]"),
            ),
            (
                r#"{"model":"e","input":[1,-2]}"#,
                "input[1]: must be a token id",
                Some("input[1]"),
            ),
            (
                r#"{"model":"e","input":[1.5]}"#,
                "input[0]: must be a token id",
                Some("input[0]"),
            ),
            (
                r#"{"model":"e","input":[[1],[2,"x"]]}"#,
                "input[1][1]: must be a token id",
                Some("input[1][1]"),
            ),
            (
                r#"{"model":"e","input":[[1],[]]}"#,
                "input[1]: must not be an empty array",
                Some("input[1]"),
            ),
            (
                r#"{"model":"e","input":[[1],2]}"#,
                "input[1]: must be an array of token ids",
                Some("input[1]"),
            ),
            (
                r#"{"model":"e","input":[null]}"#,
                "input[0]: must be a string, a token id or an array",
                Some("input[0]"),
            ),
            (
                r#"{"model":"e","input":[{"a":1}]}"#,
                "input[0]:",
                Some("input[0]"),
            ),
            (
                r#"{"model":"e","input":5}"#,
                "input: must be a string",
                Some("input"),
            ),
            (
                r#"{"model":"e","input":{"t":"x"}}"#,
                "input: must be a string",
                Some("input"),
            ),
            (
                &many,
                "input: at most 2048 inputs per request (got 2049)",
                Some("input"),
            ),
            (
                r#"{"model":"e","input":"x","dimensions":0}"#,
                "dimensions: must be an integer from 1 to 65536",
                Some("dimensions"),
            ),
            (
                r#"{"model":"e","input":"x","dimensions":-5}"#,
                "dimensions: must be",
                Some("dimensions"),
            ),
            (
                r#"{"model":"e","input":"x","dimensions":65537}"#,
                "dimensions: must be",
                Some("dimensions"),
            ),
            (
                r#"{"model":"e","input":"x","dimensions":1.5}"#,
                "dimensions: must be",
                Some("dimensions"),
            ),
            (
                r#"{"model":"e","input":"x","dimensions":"256"}"#,
                "dimensions: must be",
                Some("dimensions"),
            ),
            (
                r#"{"model":"e","input":"x","encoding_format":"int8"}"#,
                "encoding_format: must be \"float\" or \"base64\"",
                Some("encoding_format"),
            ),
            (
                r#"{"model":"e","input":"x","encoding_format":1}"#,
                "encoding_format: must be",
                Some("encoding_format"),
            ),
            (
                r#"{"model":"e","input":"x","user":5}"#,
                "user: must be a string",
                Some("user"),
            ),
            (
                r#"{"model":"e","input":"x","input_type":""}"#,
                "input_type: must not be empty",
                Some("input_type"),
            ),
            (
                r#"{"model":"e","input":"x","model":"f"}"#,
                "model: the key appears more than once",
                Some("model"),
            ),
        ];
        for (body, msg, param) in table {
            let (m, p) = err(body);
            assert!(m.contains(msg), "{body}: {m}");
            assert_eq!(p.as_deref(), *param, "{body}: {m}");
        }
        // 2048 inputs are fine, and so is the largest `dimensions`.
        let ok = format!(
            r#"{{"model":"e","input":[{}],"dimensions":65536}}"#,
            vec![r#""x""#; MAX_INPUTS].join(",")
        );
        assert_eq!(req(&ok).count(), MAX_INPUTS);
    }

    // --- targets ---

    #[test]
    fn picks_bedrock_and_gemini_targets() {
        for (model, want) in [
            ("amazon.titan-embed-text-v2:0", Some(Target::BedrockTitan)),
            ("amazon.titan-embed-image-v1", Some(Target::BedrockTitan)),
            ("cohere.embed-english-v3", Some(Target::BedrockCohere)),
            ("us.cohere.embed-v4:0", Some(Target::BedrockCohere)),
            (
                "arn:aws:bedrock:us-east-1::foundation-model/cohere.embed-multilingual-v3",
                Some(Target::BedrockCohere),
            ),
            ("anthropic.claude-3-haiku-20240307-v1:0", None),
            ("amazon.titan-text-express-v1", None),
        ] {
            assert_eq!(bedrock_target(model), want, "{model}");
        }
        assert_eq!(
            gemini_target(&req(r#"{"model":"g","input":"x"}"#)),
            Target::Gemini
        );
        assert_eq!(
            gemini_target(&req(r#"{"model":"g","input":["x"]}"#)),
            Target::Gemini
        );
        assert_eq!(
            gemini_target(&req(r#"{"model":"g","input":["x","y"]}"#)),
            Target::GeminiBatch
        );
    }

    // --- request bodies ---

    const FULL: &str = r#"{"model":"alias","input":["a","b"],"dimensions":1024,"encoding_format":"base64","user":"u-1","input_type":"query"}"#;

    #[test]
    fn openai_and_azure_bodies_always_ask_for_floats() {
        let r = req(FULL);
        for t in [Target::OpenAi, Target::Azure] {
            assert_eq!(
                body(t, &r, "text-embedding-3-small"),
                json!({"model":"text-embedding-3-small","input":["a","b"],"dimensions":1024,"encoding_format":"float","user":"u-1"})
            );
        }
        let r = req(r#"{"model":"alias","input":"one"}"#);
        assert_eq!(
            body(Target::OpenAi, &r, "m"),
            json!({"model":"m","input":["one"],"encoding_format":"float"})
        );
        let r = req(r#"{"model":"alias","input":[[1,2],[3]]}"#);
        assert_eq!(
            body(Target::OpenAi, &r, "m"),
            json!({"model":"m","input":[[1,2],[3]],"encoding_format":"float"})
        );
    }

    #[test]
    fn voyage_body() {
        assert_eq!(
            body(Target::Voyage, &req(FULL), "voyage-3.5"),
            json!({"input":["a","b"],"model":"voyage-3.5","input_type":"query","output_dimension":1024})
        );
        let r = req(r#"{"model":"a","input":"x","input_type":"search_document"}"#);
        assert_eq!(
            body(Target::Voyage, &r, "v"),
            json!({"input":["x"],"model":"v","input_type":"document"})
        );
        let r = req(r#"{"model":"a","input":"x","input_type":"clustering"}"#);
        let e = build_request(Target::Voyage, &r, "v").expect_err("unknown input_type");
        assert_eq!(e.param, "input_type");
    }

    #[test]
    fn cohere_bodies() {
        assert_eq!(
            body(Target::Cohere, &req(FULL), "embed-v4.0"),
            json!({"model":"embed-v4.0","texts":["a","b"],"input_type":"search_query","embedding_types":["float"],"output_dimension":1024})
        );
        let r = req(r#"{"model":"a","input":"x"}"#);
        assert_eq!(
            body(Target::Cohere, &r, "embed-english-v3.0"),
            json!({"model":"embed-english-v3.0","texts":["x"],"input_type":"search_document","embedding_types":["float"]})
        );
        let r = req(r#"{"model":"a","input":"x","input_type":"classification"}"#);
        assert_eq!(
            body(Target::BedrockCohere, &r, "cohere.embed-english-v3"),
            json!({"texts":["x"],"input_type":"classification","embedding_types":["float"]})
        );
        assert_eq!(
            body(Target::BedrockCohere, &req(FULL), "us.cohere.embed-v4:0"),
            json!({"texts":["a","b"],"input_type":"search_query","embedding_types":["float"],"output_dimension":1024})
        );
        let e = build_request(Target::BedrockCohere, &req(FULL), "cohere.embed-english-v3")
            .expect_err("v3 has fixed dimensions");
        assert_eq!(e.param, "dimensions");
        let many = format!(
            r#"{{"model":"a","input":[{}]}}"#,
            vec![r#""x""#; 97].join(",")
        );
        let e = build_request(Target::Cohere, &req(&many), "c").expect_err("too many texts");
        assert_eq!(e.param, "input");
    }

    #[test]
    fn titan_bodies_take_one_text() {
        let r = req(r#"{"model":"a","input":["only"],"dimensions":512}"#);
        assert_eq!(
            body(Target::BedrockTitan, &r, "amazon.titan-embed-text-v2:0"),
            json!({"inputText":"only","dimensions":512,"normalize":true})
        );
        let r = req(r#"{"model":"a","input":"only"}"#);
        assert_eq!(
            body(Target::BedrockTitan, &r, "amazon.titan-embed-text-v2:0"),
            json!({"inputText":"only","normalize":true})
        );
        assert_eq!(
            body(Target::BedrockTitan, &r, "amazon.titan-embed-text-v1"),
            json!({"inputText":"only"})
        );
        let r = req(r#"{"model":"a","input":"only","dimensions":384}"#);
        assert_eq!(
            body(Target::BedrockTitan, &r, "amazon.titan-embed-image-v1"),
            json!({"inputText":"only","embeddingConfig":{"outputEmbeddingLength":384}})
        );
        let e = build_request(Target::BedrockTitan, &r, "amazon.titan-embed-text-v2:0")
            .expect_err("384 is not a v2 size");
        assert_eq!(e.param, "dimensions");
        let e = build_request(
            Target::BedrockTitan,
            &req(FULL),
            "amazon.titan-embed-text-v2:0",
        )
        .expect_err("two inputs");
        assert_eq!(e.message, "Titan embeds one input per request");
        assert_eq!(e.param, "input");
    }

    #[test]
    fn gemini_bodies() {
        let r = req(r#"{"model":"a","input":"hi","dimensions":768}"#);
        assert_eq!(
            body(Target::Gemini, &r, "gemini-embedding-001"),
            json!({"content":{"parts":[{"text":"hi"}]},"outputDimensionality":768})
        );
        assert_eq!(
            body(Target::GeminiBatch, &req(FULL), "gemini-embedding-001"),
            json!({"requests":[
                {"model":"models/gemini-embedding-001","content":{"parts":[{"text":"a"}]},"taskType":"RETRIEVAL_QUERY","outputDimensionality":1024},
                {"model":"models/gemini-embedding-001","content":{"parts":[{"text":"b"}]},"taskType":"RETRIEVAL_QUERY","outputDimensionality":1024}
            ]})
        );
        let r = req(r#"{"model":"a","input":["x"]}"#);
        assert_eq!(
            body(Target::GeminiBatch, &r, "models/text-embedding-004"),
            json!({"requests":[{"model":"models/text-embedding-004","content":{"parts":[{"text":"x"}]}}]})
        );
        let e = build_request(Target::Gemini, &req(FULL), "g").expect_err("two inputs");
        assert_eq!(e.param, "input");
    }

    #[test]
    fn token_inputs_only_go_to_openai_shaped_targets() {
        let r = req(r#"{"model":"a","input":[1,2,3]}"#);
        for t in [
            Target::Voyage,
            Target::Cohere,
            Target::BedrockTitan,
            Target::BedrockCohere,
            Target::Gemini,
            Target::GeminiBatch,
        ] {
            let e = build_request(t, &r, "m").expect_err("token ids");
            assert_eq!(e.param, "input", "{t:?}");
            assert!(e.message.contains("not token ids"), "{t:?}: {}", e.message);
        }
    }

    // --- responses ---

    #[test]
    fn openai_response_in_float_and_base64() {
        // Out of order on purpose: the output follows `index`.
        let up = r#"{"object":"list","data":[{"object":"embedding","index":1,"embedding":[0.5,-1.25,3e-8]},{"object":"embedding","index":0,"embedding":[0.1,0.2,0.30000001]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":9,"total_tokens":9}}"#;
        let (v, u) = parse(Target::OpenAi, up, &ask(2)).expect("parses");
        assert_eq!(
            v,
            json!({"object":"list","data":[
                {"object":"embedding","index":0,"embedding":[0.1,0.2,0.3]},
                {"object":"embedding","index":1,"embedding":[0.5,-1.25,3e-8]}
            ],"model":"m-1","usage":{"prompt_tokens":9,"total_tokens":9}})
        );
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 9,
                ..Usage::default()
            }
        );
        // Shortest round-trip for f32: 0.30000001 is the same f32 as 0.3.
        let raw =
            parse_response(Target::Azure, up.as_bytes(), &meta("m-1"), &ask(2)).expect("parses");
        assert!(std::str::from_utf8(&raw.0)
            .expect("utf-8")
            .contains("[0.1,0.2,0.3]"));

        let b64 = Ask {
            encoding: Encoding::Base64,
            ..ask(2)
        };
        let (v, _) = parse(Target::OpenAi, up, &b64).expect("parses");
        let decode = |s: &Value| -> Vec<f32> {
            let bytes = BASE64
                .decode(s.as_str().expect("a string"))
                .expect("base64");
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        };
        assert_eq!(decode(&v["data"][0]["embedding"]), vec![0.1f32, 0.2, 0.3]);
        assert_eq!(
            decode(&v["data"][1]["embedding"]),
            vec![0.5f32, -1.25, 3e-8]
        );
        assert_eq!(v["data"][1]["index"], 1);
    }

    #[test]
    fn openai_shaped_upstream_base64_is_read_too() {
        let b: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let up = format!(
            r#"{{"data":[{{"index":0,"embedding":"{}"}}],"usage":{{"prompt_tokens":2}}}}"#,
            BASE64.encode(b)
        );
        let (v, _) = parse(Target::OpenAi, &up, &ask(1)).expect("parses");
        assert_eq!(v["data"][0]["embedding"], json!([1.5, -2.0]));
    }

    #[test]
    fn voyage_response_uses_total_tokens() {
        let up = r#"{"object":"list","data":[{"object":"embedding","embedding":[0.25,0.75],"index":0}],"model":"voyage-3.5","usage":{"total_tokens":4}}"#;
        let (v, u) = parse(Target::Voyage, up, &ask(1)).expect("parses");
        assert_eq!(v["data"][0]["embedding"], json!([0.25, 0.75]));
        assert_eq!(v["usage"], json!({"prompt_tokens":4,"total_tokens":4}));
        assert_eq!(u.prompt_tokens, 4);
    }

    #[test]
    fn cohere_response() {
        let up = r#"{"id":"x","embeddings":{"float":[[0.5,1],[2,-0.5]]},"texts":["a","b"],"meta":{"api_version":{"version":"2"},"billed_units":{"input_tokens":3}},"response_type":"embeddings_by_type"}"#;
        let (v, u) = parse(Target::Cohere, up, &ask(2)).expect("parses");
        assert_eq!(v["data"][1]["embedding"], json!([2.0, -0.5]));
        assert_eq!(u.prompt_tokens, 3);
        let missing = r#"{"embeddings":{"int8":[[1,2]]}}"#;
        assert_eq!(
            parse(Target::Cohere, missing, &ask(1))
                .expect_err("no floats")
                .class,
            ErrorClass::ServerError
        );
    }

    #[test]
    fn bedrock_cohere_response_in_both_shapes_with_header_tokens() {
        let m = RespMeta {
            model: "cohere.embed-english-v3",
            input_token_count: Some(11),
            ..RespMeta::default()
        };
        for up in [
            r#"{"id":"i","embeddings":[[0.5,0.25]],"response_type":"embeddings_floats","texts":["a"]}"#,
            r#"{"id":"i","embeddings":{"float":[[0.5,0.25]]},"response_type":"embeddings_by_type","texts":["a"]}"#,
        ] {
            let (b, u) =
                parse_response(Target::BedrockCohere, up.as_bytes(), &m, &ask(1)).expect("parses");
            let v: Value = serde_json::from_slice(&b).expect("JSON");
            assert_eq!(v["data"][0]["embedding"], json!([0.5, 0.25]));
            assert_eq!(v["model"], "cohere.embed-english-v3");
            assert_eq!(u.prompt_tokens, 11);
        }
        // Without the header: the estimate.
        let (_, u) =
            parse(Target::BedrockCohere, r#"{"embeddings":[[0.5]]}"#, &ask(1)).expect("parses");
        assert_eq!(u.prompt_tokens, 7);
    }

    #[test]
    fn titan_response() {
        let up = r#"{"embedding":[0.125,-0.5,1],"inputTextTokenCount":5,"embeddingsByType":{"float":[0.125,-0.5,1]}}"#;
        let a = Ask {
            dimensions: Some(3),
            ..ask(1)
        };
        let (v, u) = parse(Target::BedrockTitan, up, &a).expect("parses");
        assert_eq!(v["data"][0]["embedding"], json!([0.125, -0.5, 1.0]));
        assert_eq!(u.prompt_tokens, 5);
        let e = parse(Target::BedrockTitan, r#"{"inputTextTokenCount":5}"#, &a)
            .expect_err("no embedding");
        assert_eq!(e.class, ErrorClass::ServerError);
    }

    #[test]
    fn gemini_responses_bill_the_estimate() {
        let (v, u) = parse(
            Target::Gemini,
            r#"{"embedding":{"values":[0.5,0.5]}}"#,
            &ask(1),
        )
        .expect("parses");
        assert_eq!(v["data"][0]["embedding"], json!([0.5, 0.5]));
        assert_eq!(v["usage"], json!({"prompt_tokens":7,"total_tokens":7}));
        assert_eq!(u.prompt_tokens, 7);
        let (v, _) = parse(
            Target::GeminiBatch,
            r#"{"embeddings":[{"values":[1,2]},{"values":[3,4]}]}"#,
            &ask(2),
        )
        .expect("parses");
        assert_eq!(v["data"][1]["embedding"], json!([3.0, 4.0]));
        assert_eq!(v["data"][1]["index"], 1);
    }

    #[test]
    fn rejects_answers_that_do_not_match_the_ask() {
        let two = r#"{"data":[{"index":0,"embedding":[1,2]},{"index":1,"embedding":[3,4]}]}"#;
        let cases: &[(Target, &str, Ask, &str)] = &[
            (Target::OpenAi, two, ask(3), "2 embeddings for 3 inputs"),
            (
                Target::GeminiBatch,
                r#"{"embeddings":[{"values":[1]}]}"#,
                ask(2),
                "1 embeddings for 2 inputs",
            ),
            (
                Target::OpenAi,
                r#"{"data":[{"index":0,"embedding":[]}]}"#,
                ask(1),
                "empty embedding",
            ),
            (
                Target::OpenAi,
                r#"{"data":[{"index":0,"embedding":[1,2]},{"index":1,"embedding":[3]}]}"#,
                ask(2),
                "embedding 1 has 1 dimensions",
            ),
            (
                Target::OpenAi,
                two,
                Ask {
                    dimensions: Some(3),
                    ..ask(2)
                },
                "2 dimensions, 3 were asked for",
            ),
            (
                Target::OpenAi,
                r#"{"data":[{"index":0,"embedding":[1,2]},{"index":0,"embedding":[3,4]}]}"#,
                ask(2),
                "index 0 out of range or twice",
            ),
            (
                Target::OpenAi,
                r#"{"data":[{"index":5,"embedding":[1,2]}]}"#,
                ask(1),
                "index 5",
            ),
            // Too large for an f32: not finite.
            (
                Target::OpenAi,
                r#"{"data":[{"index":0,"embedding":[1,1e39]}]}"#,
                ask(1),
                "not finite",
            ),
            (
                Target::OpenAi,
                r#"{"data":[{"index":0,"embedding":[1,NaN]}]}"#,
                ask(1),
                "malformed",
            ),
            (
                Target::OpenAi,
                r#"{"data":[{"index":0,"embedding":[1,"2"]}]}"#,
                ask(1),
                "malformed",
            ),
            (
                Target::OpenAi,
                r#"{"data":[{"index":0,"embedding":[1,null]}]}"#,
                ask(1),
                "malformed",
            ),
            (Target::OpenAi, "<html>502</html>", ask(1), "malformed"),
            (Target::Cohere, "{}", ask(1), "malformed"),
            (
                Target::Gemini,
                r#"{"embedding":{"values":"!!"}}"#,
                ask(1),
                "malformed",
            ),
            (Target::Gemini, r#"{}"#, ask(1), "0 embeddings for 1 inputs"),
        ];
        for (target, up, a, msg) in cases {
            let e = parse(*target, up, a).expect_err(up);
            assert_eq!(e.class, ErrorClass::ServerError, "{up}");
            assert!(e.message.contains(msg), "{up}: {}", e.message);
        }
        // A base64 NaN is caught as well.
        let nan: Vec<u8> = [1.0f32, f32::NAN]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let up = format!(
            r#"{{"data":[{{"index":0,"embedding":"{}"}}]}}"#,
            BASE64.encode(nan)
        );
        assert!(parse(Target::OpenAi, &up, &ask(1))
            .expect_err("NaN")
            .message
            .contains("not finite"));
    }

    // --- errors ---

    #[test]
    fn classifies_voyage_errors() {
        let table: &[(u16, &str, ErrorClass)] = &[
            (
                400,
                r#"{"detail":"Input type must be query or document"}"#,
                ErrorClass::BadRequest,
            ),
            (
                400,
                r#"{"detail":"Request to model 'voyage-3.5' failed. The max allowed tokens per submitted batch is 320000. Your batch has 345678 tokens after truncation."}"#,
                ErrorClass::ContextWindow,
            ),
            (
                400,
                r#"{"detail":"Input is too long"}"#,
                ErrorClass::ContextWindow,
            ),
            (
                401,
                r#"{"detail":"Provided API key is invalid."}"#,
                ErrorClass::UpstreamAuth,
            ),
            (403, r#"{"detail":"Forbidden"}"#, ErrorClass::UpstreamAuth),
            (
                422,
                r#"{"detail":[{"loc":["body","input"],"msg":"field required","type":"value_error.missing"}]}"#,
                ErrorClass::BadRequest,
            ),
            (
                429,
                r#"{"detail":"You have exceeded the rate limit."}"#,
                ErrorClass::RateLimited,
            ),
            (
                500,
                r#"{"detail":"Internal Server Error"}"#,
                ErrorClass::ServerError,
            ),
            (502, "<html>bad gateway</html>", ErrorClass::ServerError),
            (
                503,
                r#"{"detail":"Service Unavailable"}"#,
                ErrorClass::Overloaded,
            ),
        ];
        for (status, body, class) in table {
            let e = classify_voyage_error(*status, None, body.as_bytes());
            assert_eq!(e.class, *class, "{status} {body}");
            assert_eq!(e.status, Some(*status));
        }
        let e = classify_voyage_error(
            429,
            Some(Duration::from_secs(3)),
            br#"{"detail":"slow down"}"#,
        );
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(e.message, "slow down");
        let e = classify_voyage_error(
            422,
            None,
            br#"{"detail":[{"msg":"field required"},{"msg":"bad model"}]}"#,
        );
        assert_eq!(e.message, "field required; bad model");
        let e = classify_voyage_error(401, None, br#"{"detail":"key pa-123 is invalid"}"#);
        assert!(!e.message.contains("pa-123"), "{}", e.message);
        let e = classify_voyage_error(502, None, b"<html>");
        assert_eq!(e.message, "upstream returned HTTP 502");
    }
}
