//! Errors as OpenAI shapes them: `{"error": {"message", "type", "param", "code"}}` with a 4xx
//! status for anything the client can fix, 429 with `Retry-After` when busy, 5xx otherwise.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use plexus_inference::ErrorKind;
use serde::Serialize;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The request is malformed or asks for something impossible.
    #[error("{message}")]
    BadRequest { message: String, param: Option<String>, code: Option<&'static str> },
    /// No model by that name or id is served here.
    #[error("the model `{0}` does not exist or is not served here")]
    ModelNotFound(String),
    /// No such route.
    #[error("{0}")]
    NotFound(String),
    /// The body is larger than the server accepts.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The queue is full; try again after `retry_after_secs`.
    #[error("{message}")]
    Busy { message: String, retry_after_secs: u32 },
    /// Metering refused: no session, or its credit is used up.
    #[error("{0}")]
    PaymentRequired(String),
    /// Metering refused: the caller is not who it claims to be.
    #[error("{0}")]
    Unauthorized(String),
    /// Metering refused: this provider may not serve the session (e.g. it is outside the
    /// session's regions).
    #[error("{0}")]
    Forbidden(String),
    /// The model failed.
    #[error(transparent)]
    Inference(plexus_inference::Error),
    /// Anything else on our side.
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

impl From<plexus_inference::Error> for ServeError {
    fn from(e: plexus_inference::Error) -> Self {
        match e.kind() {
            ErrorKind::BadRequest => ServeError::BadRequest {
                message: e.to_string(),
                param: e.param().map(str::to_owned),
                code: match e {
                    plexus_inference::Error::PromptTooLong { .. }
                    | plexus_inference::Error::MaxTokensTooLarge { .. }
                    | plexus_inference::Error::InputTooLong { .. } => Some("context_length_exceeded"),
                    plexus_inference::Error::OutputNotFinite { .. } => Some("output_not_finite"),
                    plexus_inference::Error::BadTensor { .. } => Some("invalid_tensor"),
                    _ => None,
                },
            },
            ErrorKind::Busy => ServeError::Busy { message: e.to_string(), retry_after_secs: 1 },
            _ => ServeError::Inference(e),
        }
    }
}

impl ServeError {
    /// A 400 about one parameter.
    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        ServeError::BadRequest { message: message.into(), param: Some(param.to_owned()), code: None }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ServeError::ModelNotFound(_) | ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            ServeError::PaymentRequired(_) => StatusCode::PAYMENT_REQUIRED,
            ServeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ServeError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServeError::Inference(e) if e.kind() == ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ServeError::Inference(_) | ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short label for the errors-by-kind metric.
    pub fn kind_label(&self) -> &'static str {
        match self {
            ServeError::BadRequest { .. } => "bad_request",
            ServeError::ModelNotFound(_) | ServeError::NotFound(_) => "not_found",
            ServeError::PayloadTooLarge { .. } => "too_large",
            ServeError::Busy { .. } => "busy",
            ServeError::PaymentRequired(_) => "payment_required",
            ServeError::Unauthorized(_) => "unauthorized",
            ServeError::Forbidden(_) => "forbidden",
            ServeError::Inference(_) | ServeError::Internal(_) => "internal",
        }
    }

    fn openai_type(&self) -> &'static str {
        match self {
            ServeError::BadRequest { .. }
            | ServeError::ModelNotFound(_)
            | ServeError::NotFound(_)
            | ServeError::PayloadTooLarge { .. } => "invalid_request_error",
            ServeError::Busy { .. } => "rate_limit_error",
            ServeError::PaymentRequired(_) => "insufficient_quota",
            ServeError::Unauthorized(_) => "authentication_error",
            ServeError::Forbidden(_) => "permission_error",
            ServeError::Inference(_) | ServeError::Internal(_) => "server_error",
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            ServeError::BadRequest { code, .. } => *code,
            ServeError::ModelNotFound(_) => Some("model_not_found"),
            ServeError::PayloadTooLarge { .. } => Some("request_too_large"),
            ServeError::Busy { .. } => Some("rate_limit_exceeded"),
            ServeError::PaymentRequired(_) => Some("insufficient_quota"),
            _ => None,
        }
    }

    pub(crate) fn param(&self) -> Option<String> {
        match self {
            ServeError::BadRequest { param, .. } => param.clone(),
            ServeError::ModelNotFound(_) => Some("model".into()),
            _ => None,
        }
    }

    /// The JSON body, also sent as an SSE event when a stream fails midway.
    pub fn body_json(&self) -> String {
        let message = match self {
            // Internal details stay in the log.
            ServeError::Inference(e) if e.kind() == ErrorKind::Internal => format!("inference failed: {e}"),
            other => other.to_string(),
        };
        let body = Body { error: Detail { message, kind: self.openai_type(), param: self.param(), code: self.code() } };
        serde_json::to_string(&body).unwrap_or_else(|_| {
            r#"{"error":{"message":"error","type":"server_error","param":null,"code":null}}"#.into()
        })
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(target: "serve::http", error = %self, "request failed");
        } else {
            tracing::debug!(target: "serve::http", error = %self, status = status.as_u16(), "request refused");
        }
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], self.body_json()).into_response();
        if let ServeError::Busy { retry_after_secs, .. } = &self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_errors_map_to_statuses() {
        let e: ServeError = plexus_inference::Error::EmptyMessages.into();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let body: serde_json::Value = serde_json::from_str(&e.body_json()).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "messages");
        let e: ServeError = plexus_inference::Error::Busy { queued: 3, queue_max: 3 }.into();
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        let r = e.into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let e: ServeError =
            plexus_inference::Error::MaxTokensTooLarge { requested: 9, available: 1, context: 2, prompt: 1 }.into();
        let body: serde_json::Value = serde_json::from_str(&e.body_json()).unwrap();
        assert_eq!(body["error"]["code"], "context_length_exceeded");
        assert_eq!(body["error"]["param"], "max_tokens");
        let e: ServeError = plexus_inference::Error::EngineStopped.into();
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
