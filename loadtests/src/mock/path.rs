//! Which API a request path names, and on which route (the table in the module docs of `mock`).
//!
//! A path is `/{api path}` (route `""`) or `/{route}/{api path}`. When both readings match, the
//! route-less one wins, except for `/openai/v1/chat/completions` and `/openai/v1/embeddings`,
//! which stay OpenAI on route `openai` (as before Azure was added): Azure's v1 API on the
//! default route cannot be told apart, so it needs a route prefix.

use super::compile::Format;

/// A recognized endpoint. Borrowed parts are raw path segments (still percent-encoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint<'a> {
    /// OpenAI `chat/completions`.
    OpenAiChat,
    /// Anthropic `v1/messages`.
    AnthropicMessages,
    /// Azure `openai/deployments/{d}/chat/completions` (Some) or `openai/v1/chat/completions`.
    AzureChat { deployment: Option<&'a str> },
    /// Bedrock `model/{id}/converse` or `converse-stream`.
    BedrockConverse { model: &'a str, stream: bool },
    /// Gemini `models/{m}:generateContent` or `:streamGenerateContent`, AI Studio or Vertex.
    GeminiGenerate {
        model: &'a str,
        stream: bool,
        vertex: bool,
    },
    /// Cohere `v2/chat`.
    CohereChat,
    /// OpenAI `embeddings`.
    OpenAiEmbed,
    /// Azure `openai/deployments/{d}/embeddings` (Some) or `openai/v1/embeddings`.
    AzureEmbed { deployment: Option<&'a str> },
    /// Bedrock `model/{id}/invoke` (Titan or Cohere embeddings).
    BedrockInvoke { model: &'a str },
    /// Gemini `models/{m}:embedContent` or `:batchEmbedContents`.
    GeminiEmbed { model: &'a str, batch: bool },
    /// Cohere `v2/embed`.
    CohereEmbed,
    /// Voyage `voyage/v1/embeddings`.
    VoyageEmbed,
}

impl Endpoint<'_> {
    /// The wire format of the answer (errors included).
    pub fn format(&self) -> Format {
        match self {
            Endpoint::OpenAiChat | Endpoint::OpenAiEmbed => Format::OpenAi,
            Endpoint::AnthropicMessages => Format::Anthropic,
            Endpoint::AzureChat { .. } | Endpoint::AzureEmbed { .. } => Format::Azure,
            Endpoint::BedrockConverse { .. } | Endpoint::BedrockInvoke { .. } => Format::Bedrock,
            Endpoint::GeminiGenerate { .. } | Endpoint::GeminiEmbed { .. } => Format::Gemini,
            Endpoint::CohereChat | Endpoint::CohereEmbed => Format::Cohere,
            Endpoint::VoyageEmbed => Format::Voyage,
        }
    }

    pub fn is_embeddings(&self) -> bool {
        matches!(
            self,
            Endpoint::OpenAiEmbed
                | Endpoint::AzureEmbed { .. }
                | Endpoint::BedrockInvoke { .. }
                | Endpoint::GeminiEmbed { .. }
                | Endpoint::CohereEmbed
                | Endpoint::VoyageEmbed
        )
    }
}

/// `(endpoint, route)` for the paths the mock serves.
pub(crate) fn parse_path(path: &str) -> Option<(Endpoint<'_>, &str)> {
    let path = path.strip_prefix('/')?;
    let whole = api(path);
    if whole.is_some() && !path.starts_with("openai/v1/") {
        return whole.map(|e| (e, ""));
    }
    let routed = path
        .split_once('/')
        .filter(|(route, _)| !route.is_empty())
        .and_then(|(route, rest)| Some((api(rest)?, route)));
    match (whole, routed) {
        (Some(_), Some(r @ (Endpoint::OpenAiChat | Endpoint::OpenAiEmbed, "openai"))) => Some(r),
        (Some(e), _) => Some((e, "")),
        (None, routed) => routed,
    }
}

/// The endpoint named by an API path (no leading `/`, no route).
fn api(p: &str) -> Option<Endpoint<'_>> {
    match p {
        "v1/chat/completions" | "chat/completions" => return Some(Endpoint::OpenAiChat),
        "v1/messages" => return Some(Endpoint::AnthropicMessages),
        "v1/embeddings" | "embeddings" => return Some(Endpoint::OpenAiEmbed),
        "openai/v1/chat/completions" => return Some(Endpoint::AzureChat { deployment: None }),
        "openai/v1/embeddings" => return Some(Endpoint::AzureEmbed { deployment: None }),
        "v2/chat" => return Some(Endpoint::CohereChat),
        "v2/embed" => return Some(Endpoint::CohereEmbed),
        "voyage/v1/embeddings" => return Some(Endpoint::VoyageEmbed),
        _ => {}
    }
    // At most 9 segments (Vertex), split without allocating.
    let mut buf = [""; 9];
    let mut n = 0;
    for seg in p.split('/') {
        if seg.is_empty() {
            return None;
        }
        *buf.get_mut(n)? = seg;
        n += 1;
    }
    match buf.get(..n)? {
        ["openai", "deployments", d, "chat", "completions"] => Some(Endpoint::AzureChat {
            deployment: Some(d),
        }),
        ["openai", "deployments", d, "embeddings"] => Some(Endpoint::AzureEmbed {
            deployment: Some(d),
        }),
        ["model", model, "converse"] => Some(Endpoint::BedrockConverse {
            model,
            stream: false,
        }),
        ["model", model, "converse-stream"] => Some(Endpoint::BedrockConverse {
            model,
            stream: true,
        }),
        ["model", model, "invoke"] => Some(Endpoint::BedrockInvoke { model }),
        ["v1beta" | "v1", "models", call] => {
            let (model, method) = call.rsplit_once(':').filter(|(m, _)| !m.is_empty())?;
            match method {
                "generateContent" | "streamGenerateContent" => Some(Endpoint::GeminiGenerate {
                    model,
                    stream: method == "streamGenerateContent",
                    vertex: false,
                }),
                "embedContent" | "batchEmbedContents" => Some(Endpoint::GeminiEmbed {
                    model,
                    batch: method == "batchEmbedContents",
                }),
                _ => None,
            }
        }
        ["v1" | "v1beta1", "projects", _, "locations", _, "publishers", "google", "models", call] =>
        {
            let (model, method) = call.rsplit_once(':').filter(|(m, _)| !m.is_empty())?;
            match method {
                "generateContent" | "streamGenerateContent" => Some(Endpoint::GeminiGenerate {
                    model,
                    stream: method == "streamGenerateContent",
                    vertex: true,
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Endpoint::*;

    #[test]
    fn openai_and_anthropic_paths_as_before() {
        assert_eq!(parse_path("/v1/chat/completions"), Some((OpenAiChat, "")));
        assert_eq!(parse_path("/chat/completions"), Some((OpenAiChat, "")));
        assert_eq!(parse_path("/v1/messages"), Some((AnthropicMessages, "")));
        assert_eq!(
            parse_path("/a/v1/chat/completions"),
            Some((OpenAiChat, "a"))
        );
        assert_eq!(parse_path("/a/chat/completions"), Some((OpenAiChat, "a")));
        assert_eq!(parse_path("/a/v1/messages"), Some((AnthropicMessages, "a")));
        // Route "openai" keeps meaning OpenAI (Azure v1 needs a route prefix).
        assert_eq!(
            parse_path("/openai/v1/chat/completions"),
            Some((OpenAiChat, "openai"))
        );
        assert_eq!(
            parse_path("/openai/v1/embeddings"),
            Some((OpenAiEmbed, "openai"))
        );
        assert_eq!(
            parse_path("/openai/chat/completions"),
            Some((OpenAiChat, "openai"))
        );
        for bad in [
            "/a/messages",
            "//v1/messages",
            "/a/b/v1/messages",
            "/v1/chat/completions/",
            "",
            "/",
            "/v1",
        ] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn embeddings_paths() {
        assert_eq!(parse_path("/v1/embeddings"), Some((OpenAiEmbed, "")));
        assert_eq!(parse_path("/embeddings"), Some((OpenAiEmbed, "")));
        assert_eq!(parse_path("/r/v1/embeddings"), Some((OpenAiEmbed, "r")));
        assert_eq!(parse_path("/r/embeddings"), Some((OpenAiEmbed, "r")));
        assert_eq!(parse_path("/voyage/v1/embeddings"), Some((VoyageEmbed, "")));
        assert_eq!(
            parse_path("/r/voyage/v1/embeddings"),
            Some((VoyageEmbed, "r"))
        );
        // Only embeddings: OpenAI chat on a route named "voyage" still works.
        assert_eq!(
            parse_path("/voyage/v1/chat/completions"),
            Some((OpenAiChat, "voyage"))
        );
        assert_eq!(parse_path("/v2/embed"), Some((CohereEmbed, "")));
        assert_eq!(parse_path("/r/v2/embed"), Some((CohereEmbed, "r")));
    }

    #[test]
    fn azure_paths() {
        assert_eq!(
            parse_path("/openai/deployments/gpt4o/chat/completions"),
            Some((
                AzureChat {
                    deployment: Some("gpt4o")
                },
                ""
            ))
        );
        assert_eq!(
            parse_path("/r/openai/deployments/gpt4o/chat/completions"),
            Some((
                AzureChat {
                    deployment: Some("gpt4o")
                },
                "r"
            ))
        );
        assert_eq!(
            parse_path("/r/openai/v1/chat/completions"),
            Some((AzureChat { deployment: None }, "r"))
        );
        assert_eq!(
            parse_path("/openai/deployments/e/embeddings"),
            Some((
                AzureEmbed {
                    deployment: Some("e")
                },
                ""
            ))
        );
        assert_eq!(
            parse_path("/r/openai/v1/embeddings"),
            Some((AzureEmbed { deployment: None }, "r"))
        );
        assert_eq!(parse_path("/openai/deployments//chat/completions"), None);
        assert_eq!(parse_path("/openai/deployments/d/completions"), None);
    }

    #[test]
    fn bedrock_paths() {
        let id = "anthropic.claude-3-haiku-20240307-v1%3A0";
        assert_eq!(
            parse_path(&format!("/model/{id}/converse")),
            Some((
                BedrockConverse {
                    model: id,
                    stream: false
                },
                ""
            ))
        );
        assert_eq!(
            parse_path(&format!("/br/model/{id}/converse-stream")),
            Some((
                BedrockConverse {
                    model: id,
                    stream: true
                },
                "br"
            ))
        );
        assert_eq!(
            parse_path("/model/amazon.titan-embed-text-v2%3A0/invoke"),
            Some((
                BedrockInvoke {
                    model: "amazon.titan-embed-text-v2%3A0"
                },
                ""
            ))
        );
        assert_eq!(parse_path("/model//converse"), None);
        assert_eq!(parse_path("/model/x/converse/more"), None);
        assert_eq!(parse_path("/model/x/invoke-with-response-stream"), None);
    }

    #[test]
    fn gemini_and_vertex_paths() {
        assert_eq!(
            parse_path("/v1beta/models/gemini-2.5-flash:generateContent"),
            Some((
                GeminiGenerate {
                    model: "gemini-2.5-flash",
                    stream: false,
                    vertex: false
                },
                ""
            ))
        );
        assert_eq!(
            parse_path("/g/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
            Some((
                GeminiGenerate {
                    model: "gemini-2.5-flash",
                    stream: true,
                    vertex: false
                },
                "g"
            ))
        );
        assert_eq!(
            parse_path("/v1beta/models/text-embedding-004:embedContent"),
            Some((
                GeminiEmbed {
                    model: "text-embedding-004",
                    batch: false
                },
                ""
            ))
        );
        assert_eq!(
            parse_path("/g/v1beta/models/text-embedding-004:batchEmbedContents"),
            Some((
                GeminiEmbed {
                    model: "text-embedding-004",
                    batch: true
                },
                "g"
            ))
        );
        let vertex = "/v1/projects/p1/locations/us-central1/publishers/google/models/\
                      gemini-2.5-pro:streamGenerateContent";
        assert_eq!(
            parse_path(vertex),
            Some((
                GeminiGenerate {
                    model: "gemini-2.5-pro",
                    stream: true,
                    vertex: true
                },
                ""
            ))
        );
        assert_eq!(
            parse_path(&format!("/vx{vertex}")).map(|(_, r)| r),
            Some("vx")
        );
        assert_eq!(parse_path("/v1beta/models/:generateContent"), None);
        assert_eq!(parse_path("/v1beta/models/m:countTokens"), None);
        assert_eq!(parse_path("/v1beta/models/m"), None);
        assert_eq!(
            parse_path("/v1/projects/p/locations/l/publishers/google/models/m:embedContent"),
            None
        );
    }

    #[test]
    fn cohere_paths() {
        assert_eq!(parse_path("/v2/chat"), Some((CohereChat, "")));
        assert_eq!(parse_path("/c/v2/chat"), Some((CohereChat, "c")));
        assert_eq!(parse_path("/v1/chat"), None);
    }
}
