//! The provider's payment endpoints, merged into its OpenAI-compatible server:
//!
//! - `POST /plexus/v1/sessions/{id}/token` `{"nonce", "signature"}` → `{"token"}`: a client
//!   proves it holds the session's key and gets a bearer token for its requests.
//! - `POST /plexus/v1/receipts` `{"receipt": "<hex>"}` → the session's totals: a newer
//!   cumulative receipt (during long streams, or after a response).
//! - `GET /plexus/v1/sessions/{id}` → what was delivered, acknowledged and claimed.
//!
//! Errors are OpenAI-shaped JSON with a 4xx status, as everywhere on this server.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use plexus_serve::ServeError;
use plexus_types::{Hash, Sig, SignedReceipt};
use serde::{Deserialize, Serialize};

use crate::{ChainView, Provider};

/// Largest body of a payment request, in bytes.
const BODY_BYTES_MAX: usize = 4096;

/// The payment routes, to merge into the provider's server.
pub fn router<C: ChainView>(provider: Provider<C>) -> Router {
    Router::new()
        .route("/plexus/v1/sessions/{id}/token", post(token::<C>))
        .route("/plexus/v1/sessions/{id}", get(session::<C>))
        .route("/plexus/v1/receipts", post(receipt::<C>))
        .route("/openapi.json", get(openapi))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(provider)
}

/// These payment routes described in OpenAPI 3 (the OpenAI-compatible inference routes beside
/// them follow OpenAI's own description).
async fn openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ServeError> {
    serde_json::from_slice(body).map_err(|e| ServeError::BadRequest {
        message: format!("the request body is not valid JSON for this endpoint: {e}"),
        param: None,
        code: None,
    })
}

fn session_id(id: &str) -> Result<Hash, ServeError> {
    id.parse().map_err(|e| ServeError::bad("session", format!("{e}")))
}

#[derive(Deserialize)]
struct TokenRequest {
    nonce: u64,
    signature: String,
}

#[derive(Serialize)]
struct TokenResponse {
    session: Hash,
    token: String,
}

async fn token<C: ChainView>(State(p): State<Provider<C>>, Path(id): Path<String>, body: Bytes) -> Response {
    let result = (|| {
        let session = session_id(&id)?;
        let req: TokenRequest = parse(&body)?;
        let signature: Sig = req.signature.parse().map_err(|e| ServeError::bad("signature", format!("{e}")))?;
        let token = p.authenticate(&session, req.nonce, &signature)?;
        Ok::<_, ServeError>(axum::Json(TokenResponse { session, token: hex::encode(token) }))
    })();
    result.map_or_else(IntoResponse::into_response, IntoResponse::into_response)
}

#[derive(Deserialize)]
struct ReceiptRequest {
    receipt: String,
}

async fn receipt<C: ChainView>(State(p): State<Provider<C>>, body: Bytes) -> Response {
    let result = (|| {
        let req: ReceiptRequest = parse(&body)?;
        let signed = SignedReceipt::from_hex(&req.receipt).map_err(|e| ServeError::bad("receipt", e))?;
        Ok::<_, ServeError>(axum::Json(p.accept_receipt(signed)?))
    })();
    result.map_or_else(IntoResponse::into_response, IntoResponse::into_response)
}

async fn session<C: ChainView>(State(p): State<Provider<C>>, Path(id): Path<String>) -> Response {
    let result = session_id(&id).and_then(|id| {
        p.session_state(&id).ok_or_else(|| ServeError::NotFound(format!("this provider has no record of session {id}")))
    });
    result.map_or_else(IntoResponse::into_response, |s| axum::Json(s).into_response())
}
