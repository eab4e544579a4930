//! The Open Inference Protocol (KServe v2) for the network's tensor models, paid per inference:
//! `POST /v2/models/{name}/infer` (JSON tensors or the binary tensor extension) is carried to a provider exactly as a chat request is —
//! counted by the gateway itself (the rows of the request: one inference each, and the request
//! hash the provider must attest), sent on a session with that provider, checked (the attested
//! rows and request, and outputs that hash to what was attested) and acknowledged by a signed
//! receipt for exactly those rows; a provider that fails or does not verify is replaced by the
//! next. `GET /v2/models/{name}` asks a provider of the model for its metadata (inputs,
//! outputs, labels), free of charge; `GET /v2`, `/v2/health/live` and `/v2/health/ready` are
//! the protocol's server routes.
//!
//! Errors are the protocol's `{"error": "..."}` with the status the OpenAI routes would give.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use plexus_serve::kserve::wire;
use serde_json::{Value, json};

use crate::GatewayError;
use crate::billing::Expect;
use crate::proxy::{App, Check, Wire, forward};

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], json!({ "error": message.into() }).to_string())
        .into_response()
}

fn from_gateway(e: GatewayError) -> Response {
    let mut r = error(e.status(), e.to_string());
    e.mark_retry_after(&mut r);
    r
}

fn json_response(body: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

pub(crate) async fn server_metadata() -> Response {
    json_response(
        json!({ "name": "plexus-gateway", "version": env!("CARGO_PKG_VERSION"), "extensions": ["plexus-attestation"] }),
    )
}

pub(crate) async fn live() -> Response {
    json_response(json!({ "live": true }))
}

/// Ready when some model on offer has a provider the gateway may use now; 503 otherwise (no
/// provider registered, or each caught lying with every model it serves).
pub(crate) async fn ready(State(app): State<Arc<App>>) -> Response {
    let ready = app.servable_models() > 0;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, json_response(json!({ "ready": ready }))).into_response()
}

/// `GET /v2/models/{name}/ready`: whether the gateway can send a request for this model (of
/// any kind) now; 503 while every provider of it is shunned for it.
pub(crate) async fn model_ready(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    let found = match app.resolve(&name).await {
        Ok((id, manifest)) => app.candidates(&id, &manifest.name).await,
        Err(e) => Err(e),
    };
    let candidates = match found {
        Ok(c) => c,
        Err(e) => return from_gateway(e),
    };
    let ready = app.directory.can_serve(&candidates);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, json_response(json!({ "name": name, "ready": ready }))).into_response()
}

/// The tensor model `name` means on this network, and its providers.
pub(crate) async fn tensor_model(
    app: &App,
    name: &str,
) -> Result<(plexus_types::ModelId, Vec<crate::directory::Candidate>), GatewayError> {
    let (id, manifest) = app.resolve(name).await?;
    if !manifest.engine.is_tensor() {
        return Err(GatewayError::bad("model", format!("model `{name}` is not a tensor model; use the /v1 routes")));
    }
    let candidates = app.candidates(&id, &manifest.name).await?;
    Ok((id, candidates))
}

pub(crate) async fn model_metadata(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    let (id, candidates) = match tensor_model(&app, &name).await {
        Ok(found) => found,
        Err(e) => return from_gateway(e),
    };
    let mut errors = Vec::new();
    for c in candidates.iter().take(app.config.attempts_max as usize) {
        let url = format!("{}/v2/models/{id}", c.endpoint);
        let link = match app.http.to(&c.provider, &c.endpoint) {
            Ok(link) => link,
            Err(e) => {
                errors.push(format!("{}: {e}", c.provider));
                continue;
            }
        };
        match link.get(&url).send().await {
            Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                Ok(mut body) if body.is_object() => {
                    // Information only (nothing here is paid for); the provider's answer
                    // with the network's view of the model added.
                    body["parameters"]["model_id"] = json!(id.to_string());
                    body["parameters"]["providers"] = json!(candidates.len());
                    return json_response(body);
                }
                Ok(_) => errors.push(format!("{url}: not a JSON object")),
                Err(e) => errors.push(format!("{url}: {e}")),
            },
            Ok(r) => errors.push(format!("{url}: HTTP {}", r.status())),
            Err(e) => errors.push(format!("{url}: {}", crate::link::why(&e))),
        }
    }
    error(StatusCode::BAD_GATEWAY, format!("no provider answered: {}", errors.join("; ")))
}

pub(crate) async fn infer(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    app.metrics.request(Wire::Infer.label());
    let bytes = match body {
        Ok(b) => b,
        Err(r) => return error(r.status(), r.body_text()),
    };
    // The gateway's own count: the same parser and bounds as the provider's.
    let header_len = match wire::header_length(&headers) {
        Ok(len) => len,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let parsed = match plexus_serve::kserve::parse(&bytes, header_len) {
        Ok(p) => p,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let rows = plexus_serve::kserve::rows(&parsed.request);
    let Ok(rows) = u32::try_from(rows) else {
        return error(StatusCode::BAD_REQUEST, format!("{rows} rows is too many"));
    };
    if rows == 0 {
        return error(StatusCode::BAD_REQUEST, "the request has no rows to infer");
    }
    let (id, candidates) = match tensor_model(&app, &name).await {
        Ok(found) => found,
        Err(e) => return from_gateway(e),
    };
    let expect = Expect {
        model: id,
        prompt_tokens: 0,
        max_tokens: rows,
        request_hash: plexus_serve::kserve::request_hash(&id, &parsed.request),
        stop: Vec::new(),
        prompt: Vec::new(),
        sampling: plexus_types::receipt::SamplingSpec::Greedy,
    };
    // The provider is asked for JSON outputs (the gateway checks them against the attestation)
    // and the app's binary outputs are encoded here after that check.
    let (body, binary) = match wire::provider_request(&bytes, header_len) {
        Ok(wire::ProviderBody::Json(v)) => (v, None),
        Ok(wire::ProviderBody::Binary { body, header_len }) => (Value::Null, Some((body, header_len))),
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let check = Check::Infer {
        expect: &expect,
        path: format!("/v2/models/{id}/infer"),
        request: &parsed.request,
        binary: binary.as_ref().map(|(b, len)| (&b[..], *len)),
    };
    let response = match forward(app.clone(), Wire::Infer, body, candidates, check).await {
        Ok(r) => r,
        Err(e) => return from_gateway(e),
    };
    if !parsed.binary.any() || !response.status().is_success() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // The gateway's own JSON of the verified answer, bounded by the rows asked for.
    let answer = match axum::body::to_bytes(body, usize::MAX).await.map(|b| serde_json::from_slice::<Value>(&b)) {
        Ok(Ok(v)) => v,
        _ => return error(StatusCode::INTERNAL_SERVER_ERROR, "reading the verified answer"),
    };
    match wire::encode_answer(answer, &parsed.binary) {
        Ok((body, len)) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            for (name, value) in wire::content_headers(len) {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    parts.headers.insert(name, v);
                }
            }
            Response::from_parts(parts, axum::body::Body::from(body))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the answer: {e}")),
    }
}

/// The one version of a model is its content id: `version` must name it.
async fn check_version(app: &App, name: &str, version: &str) -> Result<(), Response> {
    let (id, _) = app.resolve(name).await.map_err(from_gateway)?;
    if version != id.to_string() {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "model `{name}` has no version `{}`; its one version is {id}",
                &version[..version.floor_char_boundary(80)]
            ),
        ));
    }
    Ok(())
}

pub(crate) async fn version_metadata(
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    if let Err(r) = check_version(&app, &name, &version).await {
        return r;
    }
    model_metadata(State(app), Path(name)).await
}

pub(crate) async fn version_ready(
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    if let Err(r) = check_version(&app, &name, &version).await {
        return r;
    }
    model_ready(State(app), Path(name)).await
}

pub(crate) async fn version_infer(
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = check_version(&app, &name, &version).await {
        return r;
    }
    infer(State(app), Path(name), headers, body).await
}
