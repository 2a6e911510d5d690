//! Error taxonomy. Every upstream failure is classified into one [`ErrorClass`]; retry, fallback
//! and breaker policy are one table over it (the team's design reference, design.md §3, which the README reproduces). [`GatewayError`] is what a
//! client sees; its status and OpenAI `type`/`code` are decided in one match each, here.

use std::time::Duration;

/// What went wrong with one upstream attempt.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// 429 with or without Retry-After.
    RateLimited,
    /// 429 insufficient_quota, 402, spend limit.
    QuotaExhausted,
    /// Anthropic 529, 503.
    Overloaded,
    /// 500, 502, 504, a malformed upstream body, a stream cut before its finish.
    ServerError,
    /// Connect timeout, first-token timeout, idle stream, per-try timeout.
    Timeout,
    /// Refused, reset, DNS.
    Connect,
    /// The prompt does not fit the model.
    ContextWindow,
    /// The provider refused the content.
    ContentPolicy,
    /// 401/403/404 from the provider: our configuration is wrong.
    UpstreamAuth,
    /// The client's request is invalid for this provider.
    BadRequest,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 10] = [
        ErrorClass::RateLimited,
        ErrorClass::QuotaExhausted,
        ErrorClass::Overloaded,
        ErrorClass::ServerError,
        ErrorClass::Timeout,
        ErrorClass::Connect,
        ErrorClass::ContextWindow,
        ErrorClass::ContentPolicy,
        ErrorClass::UpstreamAuth,
        ErrorClass::BadRequest,
    ];

    /// Stable name for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::QuotaExhausted => "quota_exhausted",
            ErrorClass::Overloaded => "overloaded",
            ErrorClass::ServerError => "server_error",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connect => "connect",
            ErrorClass::ContextWindow => "context_window",
            ErrorClass::ContentPolicy => "content_policy",
            ErrorClass::UpstreamAuth => "upstream_auth",
            ErrorClass::BadRequest => "bad_request",
        }
    }

    /// Index into per-class metric arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// May the same deployment be tried again within this request (after backoff or Retry-After)?
    pub fn retry_same_deployment(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimited | ErrorClass::Overloaded | ErrorClass::ServerError
        )
    }

    /// May the request go on after this failure (to another deployment, or to the fallback
    /// chain for its class)? `BadRequest` goes back to the client at once.
    pub fn moves_on(self) -> bool {
        !matches!(self, ErrorClass::BadRequest)
    }

    /// Does the failure count against the deployment's circuit breaker?
    pub fn is_breaker_failure(self) -> bool {
        matches!(
            self,
            ErrorClass::Overloaded
                | ErrorClass::ServerError
                | ErrorClass::Timeout
                | ErrorClass::Connect
        )
    }

    /// Does the failure put the deployment on a long cooldown (our config or account is wrong)?
    pub fn is_long_cooldown(self) -> bool {
        matches!(self, ErrorClass::QuotaExhausted | ErrorClass::UpstreamAuth)
    }

    /// The other deployments of the same model group serve the same model, so a prompt that is
    /// too long (or refused) for one is for all of them: leave the group, and let the fallback
    /// chain for the class decide (a refusal without a content-policy chain goes back as 400).
    pub fn skips_rest_of_group(self) -> bool {
        matches!(self, ErrorClass::ContextWindow | ErrorClass::ContentPolicy)
    }
}

/// One failed upstream attempt, classified. `message` is safe to show a client: it never holds
/// credentials, and for auth failures it is our own text, not the provider's.
#[derive(Clone, Debug)]
pub struct UpstreamError {
    pub class: ErrorClass,
    /// HTTP status from the upstream, when there was one.
    pub status: Option<u16>,
    pub message: String,
    /// The provider's error code when it is a plain identifier (e.g. `context_length_exceeded`).
    pub code: Option<String>,
    /// Retry-After (or the provider's equivalent), when given.
    pub retry_after: Option<Duration>,
    /// The provider's rate-limit headers on the failed response.
    pub headroom: Option<Box<crate::policy::headroom::Headroom>>,
}

impl UpstreamError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        UpstreamError {
            class,
            status: None,
            message: message.into(),
            code: None,
            retry_after: None,
            headroom: None,
        }
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub fn with_code(mut self, code: Option<String>) -> Self {
        self.code = code;
        self
    }

    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} (HTTP {s}): {}", self.class.as_str(), self.message),
            None => write!(f, "{}: {}", self.class.as_str(), self.message),
        }
    }
}

/// What the client gets when a request does not succeed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Malformed JSON, missing or ill-typed fields.
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        code: Option<String>,
    },
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("the model `{0}` does not exist or is not served by this gateway")]
    ModelNotFound(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body was not received in time")]
    BodyTimeout,
    /// Every deployment is rate limited (ours or theirs).
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
    },
    /// Nothing could take the request: breakers open, cooling down, actors unavailable.
    /// `retry_after` when the earliest recovery is known.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The upstream refused the request in a way that is the client's to fix (400, content policy,
    /// context window with nowhere left to go).
    #[error("{}", .0.message)]
    UpstreamRejected(UpstreamError),
    /// Every attempt in the plan failed.
    #[error("{message}")]
    UpstreamFailed { message: String },
    /// The overall deadline passed.
    #[error("{message}")]
    DeadlineExceeded { message: String },
    /// A bug or an internal limit (actor mailbox gone); never carries secrets.
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    pub fn bad_request(message: impl Into<String>, param: Option<String>) -> Self {
        GatewayError::BadRequest {
            message: message.into(),
            param,
            code: None,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            GatewayError::BadRequest { .. } => 400,
            GatewayError::Unauthorized => 401,
            GatewayError::ModelNotFound(_) => 404,
            GatewayError::BodyTimeout => 408,
            GatewayError::PayloadTooLarge { .. } => 413,
            GatewayError::RateLimited { .. } => 429,
            GatewayError::UpstreamRejected(_) => 400,
            GatewayError::Internal(_) => 500,
            GatewayError::UpstreamFailed { .. } => 502,
            GatewayError::Unavailable { .. } => 503,
            GatewayError::DeadlineExceeded { .. } => 504,
        }
    }

    /// OpenAI's `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            GatewayError::BadRequest { .. }
            | GatewayError::ModelNotFound(_)
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::BodyTimeout
            | GatewayError::UpstreamRejected(_) => "invalid_request_error",
            GatewayError::Unauthorized => "authentication_error",
            GatewayError::RateLimited { .. } => "rate_limit_error",
            GatewayError::Unavailable { .. }
            | GatewayError::UpstreamFailed { .. }
            | GatewayError::DeadlineExceeded { .. }
            | GatewayError::Internal(_) => "server_error",
        }
    }

    /// OpenAI's `error.code`.
    pub fn code(&self) -> Option<&str> {
        match self {
            GatewayError::BadRequest { code, .. } => code.as_deref(),
            GatewayError::Unauthorized => Some("invalid_api_key"),
            GatewayError::ModelNotFound(_) => Some("model_not_found"),
            GatewayError::PayloadTooLarge { .. } => Some("request_too_large"),
            GatewayError::BodyTimeout => Some("request_timeout"),
            GatewayError::RateLimited { .. } => Some("rate_limit_exceeded"),
            GatewayError::Unavailable { .. } => Some("no_deployment_available"),
            GatewayError::UpstreamRejected(e) => match e.class {
                ErrorClass::ContextWindow => Some("context_length_exceeded"),
                ErrorClass::ContentPolicy => Some("content_policy_violation"),
                _ => e.code.as_deref(),
            },
            GatewayError::UpstreamFailed { .. } => Some("upstream_error"),
            GatewayError::DeadlineExceeded { .. } => Some("timeout"),
            GatewayError::Internal(_) => Some("internal_error"),
        }
    }

    pub fn param(&self) -> Option<&str> {
        match self {
            GatewayError::BadRequest { param, .. } => param.as_deref(),
            GatewayError::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::RateLimited { retry_after, .. } => Some(*retry_after),
            GatewayError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_table_matches_the_design() {
        use ErrorClass::*;
        // (class, same deployment again, moves on, skips the group, breaker failure, long cooldown)
        let table = [
            (RateLimited, true, true, false, false, false),
            (QuotaExhausted, false, true, false, false, true),
            (Overloaded, true, true, false, true, false),
            (ServerError, true, true, false, true, false),
            (Timeout, false, true, false, true, false),
            (Connect, false, true, false, true, false),
            (ContextWindow, false, true, true, false, false),
            (ContentPolicy, false, true, true, false, false),
            (UpstreamAuth, false, true, false, false, true),
            (BadRequest, false, false, false, false, false),
        ];
        for (class, same, moves, skips, breaker, long) in table {
            assert_eq!(class.retry_same_deployment(), same, "{class:?} same");
            assert_eq!(class.moves_on(), moves, "{class:?} moves on");
            assert_eq!(
                class.skips_rest_of_group(),
                skips,
                "{class:?} skips the group"
            );
            assert_eq!(class.is_breaker_failure(), breaker, "{class:?} breaker");
            assert_eq!(class.is_long_cooldown(), long, "{class:?} long cooldown");
        }
        for (i, c) in ErrorClass::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
    }
}
