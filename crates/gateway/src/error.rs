//! Gateway errors, shaped as OpenAI errors for the app behind it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The app's request is malformed: `param` names the field at fault and `code` says how
    /// (OpenAI's `error.param` and `error.code`, e.g. `context_length_exceeded`).
    #[error("{message}")]
    BadRequest { message: String, param: Option<String>, code: Option<&'static str> },
    /// No provider on the network serves the model (within the gateway's constraints).
    #[error("{0}")]
    NoProvider(String),
    /// Every provider tried failed.
    #[error("{0}")]
    Upstream(String),
    /// No provider of the model may be used now (each was caught lying with it lately); one
    /// may be again in `retry_after_secs`.
    #[error("{message}")]
    Unavailable { message: String, retry_after_secs: u64 },
    /// Every provider tried was too busy to take the request (each answered 429).
    #[error("{message}")]
    Saturated { message: String, retry_after_secs: u64 },
    /// The chain could not be reached or answered unexpectedly.
    #[error("chain: {0}")]
    Chain(String),
    /// The chain refused a request or transaction.
    #[error("chain refused ({code}): {message}")]
    Rejected { code: String, message: String, status: u16 },
    /// The client account cannot pay (opening or topping up a session), or the spending
    /// budget is used up.
    #[error("{0}")]
    Funds(String),
    /// The gateway cannot count or check responses for this model (no local tokenizer), so it
    /// will not pay for any.
    #[error("{0}")]
    Unverifiable(String),
    /// Bad settings.
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Internal(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<String>,
    code: Option<&'a str>,
}

impl GatewayError {
    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        GatewayError::BadRequest { message: message.into(), param: Some(param.into()), code: None }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            GatewayError::NoProvider(_) => StatusCode::NOT_FOUND,
            GatewayError::Funds(_) => StatusCode::PAYMENT_REQUIRED,
            GatewayError::Saturated { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Upstream(_) | GatewayError::Chain(_) | GatewayError::Rejected { .. } => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::Unverifiable(_) | GatewayError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Config(_) | GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> (&'static str, Option<&'static str>) {
        match self {
            GatewayError::BadRequest { code, .. } => ("invalid_request_error", *code),
            GatewayError::NoProvider(_) => ("invalid_request_error", Some("model_not_found")),
            GatewayError::Funds(_) => ("insufficient_quota", Some("insufficient_quota")),
            GatewayError::Unavailable { .. } => ("api_error", Some("no_provider_available")),
            GatewayError::Saturated { .. } => ("rate_limit_error", Some("providers_busy")),
            _ => ("api_error", None),
        }
    }

    /// An OpenAI-shaped error body for a refusal made before any routing (access control).
    pub fn refusal_json(code: &str, message: &str) -> String {
        serde_json::json!({ "error": { "message": message, "type": "invalid_request_error", "param": null, "code": code } })
            .to_string()
    }

    /// The JSON body, also sent as an SSE `data:` line when a stream fails.
    pub fn body_json(&self) -> String {
        let (kind, code) = self.kind();
        let param = match self {
            GatewayError::BadRequest { param, .. } => param.clone(),
            _ => None,
        };
        serde_json::to_string(&Body { error: Detail { message: self.to_string(), kind, param, code } })
            .unwrap_or_else(|_| "{}".into())
    }
}

impl GatewayError {
    /// Seconds after which the same request may succeed, when that is known.
    fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::Unavailable { retry_after_secs, .. } | GatewayError::Saturated { retry_after_secs, .. } => {
                Some(*retry_after_secs)
            }
            _ => None,
        }
    }

    /// Says on `r` (this error's answer, in whatever body shape the route uses) when to retry.
    pub(crate) fn mark_retry_after(&self, r: &mut Response) {
        if let Some(secs) = self.retry_after() {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut r =
            (self.status(), [(axum::http::header::CONTENT_TYPE, "application/json")], self.body_json()).into_response();
        self.mark_retry_after(&mut r);
        r
    }
}
