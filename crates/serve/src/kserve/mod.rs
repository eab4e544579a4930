//! The Open Inference Protocol (KServe v2, REST) for tensor models: what Triton, KServe,
//! Seldon MLServer and TorchServe clients already speak.
//!
//! Routes: `GET /v2` (server metadata), `GET /v2/health/live`, `GET /v2/health/ready`,
//! `GET /v2/models/{name}` (inputs, outputs, shapes), `GET /v2/models/{name}/ready` and
//! `POST /v2/models/{name}/infer` with JSON tensors:
//!
//! ```json
//! {"id": "42", "inputs": [{"name": "ecg_window", "shape": [2, 256], "datatype": "FP32", "data": [...]}]}
//! ```
//!
//! `data` may be flat (row-major) or nested as the shape, or sent as binary data after the JSON
//! (the binary tensor extension, [`wire`]), in any numeric datatype FP32 holds exactly; the answer
//! carries every output flat, or as binary data when asked, plus the provider's signed
//! attestation in the `X-Plexus-*` headers. The same routes answer under
//! `/v2/models/{name}/versions/{version}/...`, where the one version is the model's content id. Errors
//! are the protocol's `{"error": "..."}` with a 4xx for anything the caller sent wrong (unknown
//! model, wrong name, shape, type, a NaN, too many rows): nothing is computed or billed then.
//!
//! Metering: one row is one inference. A request is admitted for its row count before it runs
//! and reports `completion_tokens = rows` when done, so per-1k prices apply per 1,000
//! inferences with the same sessions, receipts and settlement as tokens.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use plexus_inference::Engine;
use plexus_inference::tensor::{FP32, RANK_MAX, Tensor, TensorRequest, TensorResponse, TensorSpec};
use plexus_types::Hash;
use plexus_types::tensor::{EvidenceTensor, TensorEvidence, TensorHasher};
use serde_json::{Value, json};

use crate::ServeError;
use crate::api::{AppState, batch_attestation};
use crate::metering::{Endpoint, MeterRequest, Usage};
use crate::metrics::Metrics;

pub mod wire;

type Shared = Arc<AppState>;

/// An Open Inference Protocol error: status and `{"error": message}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], json!({ "error": message.into() }).to_string())
        .into_response()
}

fn from_serve(state: &AppState, e: ServeError) -> Response {
    state.metrics.error(e.kind_label());
    let status = e.status();
    let mut r = error(status, e.to_string());
    if let ServeError::Busy { .. } = e {
        r.headers_mut().insert(header::RETRY_AFTER, state.config.retry_after_secs.into());
    }
    r
}

/// The served tensor model called `name` (or with that id), with its spec.
fn tensor_engine<'a>(state: &'a AppState, name: &str) -> Result<(&'a Arc<dyn Engine>, &'a TensorSpec), Response> {
    let Some(e) = state.engines.iter().find(|e| e.info().name == name || e.info().id.to_string() == name) else {
        return Err(error(StatusCode::NOT_FOUND, format!("model `{name}` is not served here")));
    };
    let Some(spec) = e.tensor_spec() else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("model `{name}` is not a tensor model; use the /v1 (OpenAI) routes for it"),
        ));
    };
    Ok((e, spec))
}

pub(crate) async fn server_metadata() -> Response {
    let body = json!({ "name": "plexus", "version": env!("CARGO_PKG_VERSION"), "extensions": ["plexus-attestation"] });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

pub(crate) async fn live() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json!({ "live": true }).to_string()).into_response()
}

pub(crate) async fn ready() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json!({ "ready": true }).to_string()).into_response()
}

pub(crate) async fn model_metadata(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    match tensor_engine(&state, &name) {
        Ok((e, spec)) => {
            let info = e.info();
            let body = json!({
                "name": info.name,
                "versions": [info.id.to_string()],
                "platform": "onnx_tract",
                "inputs": spec.inputs,
                "outputs": spec.outputs,
                "parameters": {
                    "task": spec.task,
                    "labels": spec.labels,
                    "preprocessing": spec.preprocessing,
                    "batch_max": spec.batch_max,
                    "opset": spec.opset,
                    "model_id": info.id.to_string(),
                    "provider": state.provider.to_string(),
                },
            });
            ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        }
        Err(r) => r,
    }
}

pub(crate) async fn model_ready(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    match tensor_engine(&state, &name) {
        Ok((e, _)) => {
            ([(header::CONTENT_TYPE, "application/json")], json!({ "name": e.info().name, "ready": true }).to_string())
                .into_response()
        }
        Err(r) => r,
    }
}

pub use wire::{BinaryOutputs, Parsed, parse};

/// Rows of a request: one inference each, what is paid for.
pub fn rows(request: &TensorRequest) -> usize {
    request.inputs.first().and_then(|t| t.shape.first()).copied().unwrap_or(0)
}

/// The attestation's request hash: model, then each input's name, shape and values
/// ([`TensorHasher`], the layout the chain checks a challenge's evidence with).
pub fn request_hash(model: &Hash, request: &TensorRequest) -> Hash {
    let mut h = TensorHasher::request(model);
    for t in &request.inputs {
        h.input(&t.name, &dims(&t.shape), t.data.iter().map(|v| v.to_bits()));
    }
    h.finish()
}

/// The attestation's output hash: each output sent (those asked for), its name, shape and values.
pub fn output_hash(response: &TensorResponse) -> Hash {
    let mut h = TensorHasher::outputs();
    for t in &response.outputs {
        h.output(&t.name, &dims(&t.shape), t.data.iter().map(|v| v.to_bits()));
    }
    h.finish()
}

fn dims(shape: &[usize]) -> Vec<u64> {
    shape.iter().map(|&d| d as u64).collect()
}

/// The evidence of a challenge of one inference: its request and the outputs attested.
pub fn evidence(model: &Hash, request: &TensorRequest, outputs: &[Tensor]) -> TensorEvidence {
    let side = |ts: &[Tensor]| ts.iter().map(|t| EvidenceTensor::from_f32(&t.name, &t.shape, &t.data)).collect();
    TensorEvidence { model: *model, inputs: side(&request.inputs), outputs: side(outputs) }
}

/// A challenge's evidence as the request to re-run and the outputs to compare with. Shapes
/// that do not fit this machine's `usize` are an error (the evidence is then not judged).
pub fn from_evidence(evidence: &TensorEvidence) -> Result<(TensorRequest, Vec<Tensor>), String> {
    let side = |ts: &[EvidenceTensor]| -> Result<Vec<Tensor>, String> {
        ts.iter()
            .map(|t| {
                let shape = t.shape.iter().map(|&d| usize::try_from(d)).collect::<Result<Vec<_>, _>>();
                let shape = shape.map_err(|_| format!("tensor `{}`: a dimension does not fit this machine", t.name))?;
                Ok(Tensor { name: t.name.clone(), shape, data: t.values() })
            })
            .collect()
    };
    Ok((TensorRequest { inputs: side(&evidence.inputs)? }, side(&evidence.outputs)?))
}

/// Reads the outputs of an inference response (flat FP32 data, as this server writes them),
/// so that a gateway can check them against the provider's attested output hash. `rows` is
/// the batch every output must have.
pub fn parse_outputs(body: &Value, rows: usize) -> Result<TensorResponse, String> {
    let list = body["outputs"].as_array().ok_or("the response has no `outputs`")?;
    if list.len() > 16 {
        return Err(format!("{} outputs is more than a tensor model here has", list.len()));
    }
    let mut outputs = Vec::with_capacity(list.len());
    for o in list {
        let name = o["name"].as_str().ok_or("an output without a name")?.to_string();
        let shape: Vec<usize> = o["shape"]
            .as_array()
            .ok_or_else(|| format!("output `{name}` has no shape"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("output `{name}` has a bad shape"))?;
        if shape.is_empty() || shape.len() > RANK_MAX || shape[0] != rows {
            return Err(format!("output `{name}` has shape {shape:?}, not {rows} rows"));
        }
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&c| c <= 1 << 24);
        let count = count.ok_or_else(|| format!("output `{name}` is too large"))?;
        let mut data = Vec::with_capacity(count);
        wire::flatten(&o["data"], wire::Datatype::F32, RANK_MAX - 1, &mut data, count)
            .map_err(|e| format!("output `{name}`: {e}"))?;
        if data.len() != count {
            return Err(format!("output `{name}` has {} values for shape {shape:?}", data.len()));
        }
        outputs.push(Tensor { name, shape, data });
    }
    Ok(TensorResponse { outputs, rows: rows.min(u32::MAX as usize) as u32 })
}

/// Signs the attestation of a tensor request (`req_hash`, the outputs sent, one inference per
/// row; nothing when it failed) and reports its usage to metering. Shared by requests and
/// stream windows.
pub(crate) fn settle(
    state: &AppState,
    ticket: crate::metering::MeterTicket,
    model: plexus_types::ModelId,
    req_hash: Hash,
    response: Option<&TensorResponse>,
) -> (plexus_types::Attestation, plexus_types::Sig) {
    let (attestation, usage) = match response {
        Some(r) => (
            batch_attestation(model, req_hash, output_hash(r), 0, r.rows),
            Usage { prompt_tokens: 0, completion_tokens: r.rows, cached_tokens: 0, complete: true },
        ),
        None => (batch_attestation(model, Hash::ZERO, Hash::ZERO, 0, 0), Usage::default()),
    };
    let signature = attestation.sign(&state.key, &state.config.chain_id);
    state.metering.finish(ticket, &usage, &attestation, &signature);
    (attestation, signature)
}

pub(crate) async fn infer(
    State(state): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    state.count_request("infer");
    let started = Instant::now();
    let (engine, spec) = match tensor_engine(&state, &name) {
        Ok((e, spec)) => (e.clone(), spec.clone()),
        Err(r) => return r,
    };
    let bytes = match state.bytes(body) {
        Ok(b) => b,
        Err(e) => return from_serve(&state, e),
    };
    let parsed = match wire::header_length(&headers).and_then(|len| parse(&bytes, len)) {
        Ok(p) => p,
        Err(message) => {
            state.metrics.error("invalid_request");
            return error(StatusCode::BAD_REQUEST, message);
        }
    };
    let Parsed { id, request, outputs: wanted, binary } = parsed;
    if let Some(names) = &wanted {
        if names.is_empty() {
            state.metrics.error("invalid_request");
            return error(StatusCode::BAD_REQUEST, "`outputs` is empty: name at least one, or leave it out for all");
        }
        if let Some(n) = names.iter().find(|n| !spec.outputs.iter().any(|o| &o.name == *n)) {
            state.metrics.error("invalid_request");
            return error(StatusCode::BAD_REQUEST, format!("this model has no output `{n}`"));
        }
    }
    let rows = rows(&request);
    let info = engine.info().clone();
    // Admission for the rows the request carries, before any work (the engine re-checks the
    // shape; a request it refuses reports zero usage).
    let request_id = state.next_request.fetch_add(1, Ordering::Relaxed);
    let ticket = match state.metering.begin(&MeterRequest {
        request_id,
        model: info.id,
        endpoint: Endpoint::Infer,
        headers: &headers,
        prompt_tokens: 0,
        max_tokens: rows.min(u32::MAX as usize) as u32,
    }) {
        Ok(t) => t,
        Err(e) => return from_serve(&state, e),
    };
    let req_hash = request_hash(&info.id, &request);
    let run_engine = engine.clone();
    let result = tokio::task::spawn_blocking(move || run_engine.infer(&request))
        .await
        .map_err(|e| ServeError::Internal(format!("inference task: {e}")))
        .and_then(|r| r.map_err(ServeError::from))
        .map(|mut r| {
            // What is sent is what is attested: the outputs asked for.
            r.outputs.retain(|t| wanted.as_ref().is_none_or(|w| w.contains(&t.name)));
            crate::dishonest::perturb(state.lie, &mut r);
            r
        });
    let (attestation, signature) = settle(&state, ticket, info.id, req_hash, result.as_ref().ok());
    let response = match result {
        Ok(r) => r,
        Err(e) => return from_serve(&state, e),
    };
    let label = Metrics::model(&info.name);
    state.metrics.inferences.get_or_create(&label).inc_by(u64::from(response.rows));
    state.metrics.infer_latency.get_or_create(&label).observe(started.elapsed().as_secs_f64());
    let outputs: Vec<Value> = response
        .outputs
        .iter()
        .map(|t| json!({ "name": t.name, "shape": t.shape, "datatype": FP32, "data": t.data }))
        .collect();
    let mut body = json!({ "model_name": info.name, "model_version": info.id.to_string(), "outputs": outputs });
    if let Some(id) = id {
        body["id"] = Value::String(id);
    }
    let mut headers = state.attestation_headers(&info.id, &attestation, &signature);
    match wire::encode_answer(body, &binary) {
        Ok((body, len)) => {
            for (name, value) in wire::content_headers(len) {
                if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
                    headers.insert(name, v);
                }
            }
            (headers, body).into_response()
        }
        Err(e) => from_serve(&state, ServeError::Internal(format!("encoding the answer: {e}"))),
    }
}

/// The one version of a model here is its content id: `version` must name it.
fn check_version(state: &AppState, name: &str, version: &str) -> Result<(), Response> {
    let (e, _) = tensor_engine(state, name)?;
    let id = e.info().id.to_string();
    if version != id {
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
    State(state): State<Shared>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    if let Err(r) = check_version(&state, &name, &version) {
        return r;
    }
    model_metadata(State(state), Path(name)).await
}

pub(crate) async fn version_ready(
    State(state): State<Shared>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    if let Err(r) = check_version(&state, &name, &version) {
        return r;
    }
    model_ready(State(state), Path(name)).await
}

pub(crate) async fn version_infer(
    State(state): State<Shared>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = check_version(&state, &name, &version) {
        return r;
    }
    infer(State(state), Path(name), headers, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_evidence_hashes_as_the_attestation_does() {
        let m = plexus_types::hash(b"m");
        let request = TensorRequest {
            inputs: vec![Tensor { name: "x".into(), shape: vec![2, 2], data: vec![1.0, -2.0, 0.5, 3.0] }],
        };
        let outputs = vec![Tensor { name: "y".into(), shape: vec![2, 1], data: vec![0.25, f32::MIN_POSITIVE] }];
        let e = evidence(&m, &request, &outputs);
        assert_eq!(e.request_hash(), request_hash(&m, &request));
        assert_eq!(e.output_hash(), output_hash(&TensorResponse { outputs: outputs.clone(), rows: 2 }));
        assert_eq!(from_evidence(&e).unwrap(), (request, outputs));
    }

    #[test]
    fn hashes_cover_names_shapes_and_values() {
        use plexus_types::hash;
        let t = |name: &str, shape: Vec<usize>, data: Vec<f32>| TensorRequest {
            inputs: vec![Tensor { name: name.into(), shape, data }],
        };
        let m = Hash::ZERO;
        let base = request_hash(&m, &t("x", vec![1, 2], vec![1.0, 2.0]));
        assert_ne!(base, request_hash(&m, &t("y", vec![1, 2], vec![1.0, 2.0])));
        assert_ne!(base, request_hash(&m, &t("x", vec![2, 1], vec![1.0, 2.0])));
        assert_ne!(base, request_hash(&m, &t("x", vec![1, 2], vec![1.0, 2.5])));
        assert_ne!(base, request_hash(&hash(b"other model"), &t("x", vec![1, 2], vec![1.0, 2.0])));
    }
}
