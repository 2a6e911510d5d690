//! Request checks before answering: the few fields each API requires, like the real ones
//! (message texts follow the providers' wording where known). Rejections are rendered as a 400
//! in the endpoint's format by `server::invalid_request`.

use actix_web::HttpRequest;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::compile::Format;
use super::embed::{self, EmbedWants};
use super::path::Endpoint;

/// What a chat request asked for, as far as the answer depends on it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wants {
    pub stream: bool,
    /// OpenAI / Azure `stream_options.include_usage` (always false for the others).
    pub include_usage: bool,
}

/// A request that passed the checks.
pub(crate) enum Valid<'a> {
    Chat(Wants),
    Embed(EmbedWants<'a>),
}

/// The JSON type of a field, found without allocating (arrays and objects are skipped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Kind {
    #[default]
    Missing,
    Null,
    Bool,
    Integer,
    Float,
    String,
    EmptyArray,
    Array,
    Object,
}

impl Kind {
    pub(crate) fn openai_name(self) -> &'static str {
        match self {
            Kind::Missing | Kind::Null => "null",
            Kind::Bool => "a boolean",
            Kind::Integer => "an integer",
            Kind::Float => "a decimal",
            Kind::String => "a string",
            Kind::EmptyArray | Kind::Array => "an array",
            Kind::Object => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KindVisitor;
        impl<'de> Visitor<'de> for KindVisitor {
            type Value = Kind;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Kind, E> {
                Ok(Kind::Bool)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Kind, E> {
                Ok(Kind::Integer)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Kind, E> {
                Ok(Kind::Integer)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Kind, E> {
                Ok(Kind::Float)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Kind, E> {
                Ok(Kind::String)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
                Ok(Kind::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Kind, E> {
                Ok(Kind::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
                let mut kind = Kind::EmptyArray;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    kind = Kind::Array;
                }
                Ok(kind)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Kind::Object)
            }
        }
        d.deserialize_any(KindVisitor)
    }
}

/// The few request fields the mock looks at; serde skips the rest.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    model: Kind,
    #[serde(default)]
    messages: Kind,
    #[serde(default)]
    max_tokens: Kind,
    /// Gemini.
    #[serde(default)]
    contents: Kind,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Why a request is rejected with a 400 (rendered in the route's format by `invalid_request`).
pub(crate) struct Rejection {
    pub message: String,
    /// OpenAI / Azure `param` and `code`.
    pub param_code: Option<(&'static str, &'static str)>,
}

pub(crate) fn reject(
    message: impl Into<String>,
    param_code: Option<(&'static str, &'static str)>,
) -> Rejection {
    Rejection {
        message: message.into(),
        param_code,
    }
}

/// The value of a query parameter (first occurrence, not decoded: the mock only compares
/// plain values such as `sse`).
pub(crate) fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// A JSON parse error, in the format's words.
pub(crate) fn parse_error(format: Format, detail: &str) -> Rejection {
    let message = match format {
        Format::OpenAi | Format::Azure => format!(
            "We could not parse the JSON body of your request. (HINT: This likely means \
             you aren't using your HTTP library correctly. The OpenAI API expects a JSON \
             payload, but what was sent was not valid JSON.) Detail: {detail}"
        ),
        Format::Anthropic => format!("There was an error parsing the body: {detail}"),
        Format::Bedrock => {
            format!("Malformed input request: {detail}, please reformat your input and try again.")
        }
        Format::Gemini => format!("Invalid JSON payload received. {detail}"),
        Format::Cohere => format!("invalid request: {detail}"),
        Format::Voyage => format!("Request body is not valid JSON: {detail}"),
    };
    reject(message, None)
}

pub(crate) fn is_object(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

/// Checks a request for `endpoint`; `body` stays borrowed by embeddings requests.
pub(crate) fn validate<'a>(
    endpoint: &Endpoint<'_>,
    req: &HttpRequest,
    body: &'a [u8],
) -> Result<Valid<'a>, Rejection> {
    let format = endpoint.format();
    match endpoint {
        Endpoint::AnthropicMessages if !req.headers().contains_key("anthropic-version") => {
            return Err(reject("anthropic-version: header is required", None));
        }
        Endpoint::AzureChat {
            deployment: Some(_),
        }
        | Endpoint::AzureEmbed {
            deployment: Some(_),
        } if query_param(req.query_string(), "api-version").is_none_or(str::is_empty) => {
            return Err(reject(
                "Missing required query parameter 'api-version'. Use a supported API version, \
                 e.g. api-version=2024-10-21.",
                Some(("api-version", "missing_required_parameter")),
            ));
        }
        Endpoint::GeminiGenerate { stream: true, .. }
            if query_param(req.query_string(), "alt") != Some("sse") =>
        {
            return Err(reject(
                "The mock upstream streams only server-sent events: add ?alt=sse.",
                None,
            ));
        }
        _ => {}
    }
    if !is_object(body) {
        return Err(parse_error(format, "expected a JSON object"));
    }
    if endpoint.is_embeddings() {
        return embed::parse(endpoint, body).map(Valid::Embed);
    }
    let probe =
        serde_json::from_slice::<Probe>(body).map_err(|e| parse_error(format, &e.to_string()))?;
    match endpoint {
        Endpoint::OpenAiChat => validate_openai(&probe, true)?,
        Endpoint::AzureChat { deployment } => validate_openai(&probe, deployment.is_none())?,
        Endpoint::AnthropicMessages => validate_anthropic(&probe)?,
        Endpoint::BedrockConverse { .. } => validate_bedrock(&probe)?,
        Endpoint::GeminiGenerate { .. } => validate_gemini(&probe)?,
        Endpoint::CohereChat => validate_cohere(&probe)?,
        _ => {}
    }
    let stream = match endpoint {
        Endpoint::BedrockConverse { stream, .. } | Endpoint::GeminiGenerate { stream, .. } => {
            *stream
        }
        _ => probe.stream.unwrap_or(false),
    };
    let include_usage = matches!(format, Format::OpenAi | Format::Azure)
        && probe
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
    Ok(Valid::Chat(Wants {
        stream,
        include_usage,
    }))
}

/// `model_required`: false on Azure's deployment paths (the deployment names the model).
fn validate_openai(p: &Probe, model_required: bool) -> Result<(), Rejection> {
    let missing = |field: &'static str| {
        reject(
            format!("Missing required parameter: '{field}'."),
            Some((field, "missing_required_parameter")),
        )
    };
    let wrong_type = |field: &'static str, expected: &str, got: Kind| {
        reject(
            format!(
                "Invalid type for '{field}': expected {expected}, but got {} instead.",
                got.openai_name()
            ),
            Some((field, "invalid_type")),
        )
    };
    match p.model {
        Kind::Missing | Kind::Null if model_required => return Err(missing("model")),
        Kind::Missing | Kind::Null | Kind::String => {}
        other => return Err(wrong_type("model", "a string", other)),
    }
    match p.messages {
        Kind::Missing | Kind::Null => Err(missing("messages")),
        Kind::Array => Ok(()),
        Kind::EmptyArray => Err(reject(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got \
             an empty array instead.",
            Some(("messages", "empty_array")),
        )),
        other => Err(wrong_type("messages", "an array of objects", other)),
    }
}

fn validate_anthropic(p: &Probe) -> Result<(), Rejection> {
    let fail = |message: &str| Err(reject(message, None));
    match p.model {
        Kind::Missing => return fail("model: Field required"),
        Kind::String => {}
        _ => return fail("model: Input should be a valid string"),
    }
    match p.messages {
        Kind::Missing => return fail("messages: Field required"),
        Kind::Array => {}
        Kind::EmptyArray => return fail("messages: at least one message is required"),
        _ => return fail("messages: Input should be a valid list"),
    }
    match p.max_tokens {
        Kind::Missing => fail("max_tokens: Field required"),
        Kind::Integer => Ok(()),
        _ => fail("max_tokens: Input should be a valid integer"),
    }
}

fn validate_bedrock(p: &Probe) -> Result<(), Rejection> {
    match p.messages {
        Kind::Array => Ok(()),
        Kind::Missing | Kind::Null => Err(reject(
            "1 validation error detected: Value null at 'messages' failed to satisfy \
             constraint: Member must not be null",
            None,
        )),
        Kind::EmptyArray => Err(reject(
            "A conversation must start with a user message. Try again with a conversation \
             that starts with a user message.",
            None,
        )),
        _ => Err(reject(
            "Malformed input request: #/messages: expected type: JSONArray, please reformat \
             your input and try again.",
            None,
        )),
    }
}

fn validate_gemini(p: &Probe) -> Result<(), Rejection> {
    match p.contents {
        Kind::Array => Ok(()),
        Kind::Missing | Kind::Null | Kind::EmptyArray => Err(reject(
            "* GenerateContentRequest.contents: contents is not specified\n",
            None,
        )),
        _ => Err(reject(
            "Invalid value at 'contents', expected a list of Content.",
            None,
        )),
    }
}

fn validate_cohere(p: &Probe) -> Result<(), Rejection> {
    match p.model {
        Kind::String => {}
        Kind::Missing | Kind::Null => {
            return Err(reject("invalid request: model must be specified", None))
        }
        _ => return Err(reject("invalid request: model must be a string", None)),
    }
    match p.messages {
        Kind::Array => Ok(()),
        Kind::EmptyArray => Err(reject("invalid request: messages cannot be empty", None)),
        Kind::Missing | Kind::Null => {
            Err(reject("invalid request: messages must be specified", None))
        }
        _ => Err(reject("invalid request: messages must be an array", None)),
    }
}
