//! The OpenAI-compatible routes the app talks to, and how each request is carried to a
//! provider: check who is asking, work out the model and count the request with the gateway's
//! own tokenizer ([`billing::Expect`]), pick a provider, use (or open) the session with it,
//! forward, verify the response against what was counted and attested
//! ([`billing`]), acknowledge exactly the verified tokens with a receipt, and on any failure —
//! including a response that does not verify — try another provider.
//!
//! Streams fail over in the middle: if a provider's stream breaks (or lies), the text delivered
//! so far becomes the prefix of a continuation request (`continue_final_message` for chat, the
//! extended prompt for completions) to the next provider, and the app keeps reading one stream
//! with one id. Each provider is acknowledged exactly for the verified tokens it delivered.
//!
//! Access: every route but `/health` needs the API key when one is set (it must be whenever
//! the gateway listens beyond loopback); request bodies must be JSON, and a request carrying a
//! browser `Origin` the gateway was not told to allow is refused, so no web page can spend
//! the client's money.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use plexus_inference::tensor::{Tensor, TensorRequest};
use plexus_inference::{Sampling, Tokenizer};
use plexus_types::{Address, Attestation, Hash, Sig};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tracing::{debug, info, warn};

use crate::billing::{self, Expect, Lie, StreamMeter, Verified};
use crate::chain::ChainClient;
use crate::directory::{Candidate, Directory, Outcome};
use crate::metrics::Metrics;
use crate::models::Tokenizers;
use crate::session::{Sessions, Shared};
use crate::sse::Events;
use crate::{GatewayConfig, GatewayError, directory};

/// Headers the gateway sends to providers (see `plexus-provider`).
const H_SESSION: &str = "x-plexus-session";
const H_TOKEN: &str = "x-plexus-token";
const H_RECEIPT: &str = "x-plexus-receipt";
const H_PROGRESS: &str = "x-plexus-progress";
/// Headers providers answer with (see `plexus-serve`).
const H_ATTESTATION: &str = "x-plexus-attestation";
const H_SIGNATURE: &str = "x-plexus-signature";
const H_PROVIDER: &str = "x-plexus-provider";
const H_MODEL_ID: &str = "x-plexus-model-id";

/// Why a stream's provider part ended when the app stopped reading (nobody else's fault).
const APP_LEFT: &str = "the app went away";

/// The longest `Retry-After` passed on from a busy provider, in seconds.
const RETRY_AFTER_MAX_SECS: u64 = 60;

/// Chunks buffered towards a slow app before the upstream read waits.
const APP_CHANNEL_CHUNKS: usize = 64;

pub(crate) struct App {
    pub(crate) config: GatewayConfig,
    pub(crate) chain: Arc<ChainClient>,
    pub(crate) directory: Arc<Directory>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) tokenizers: Tokenizers,
    /// Links to providers for whole responses.
    pub(crate) http: crate::link::Links,
    /// Links to providers for streamed responses (a read timeout instead of a total one).
    pub(crate) stream_http: crate::link::Links,
    pub(crate) metrics: Metrics,
    pub(crate) started: u64,
    pub(crate) next_id: AtomicU64,
    pub(crate) auditor: Arc<crate::audit::Auditor>,
    /// Text models apps asked for lately (bounded), and when last: the ones probes measure.
    pub(crate) asked: std::sync::Mutex<std::collections::VecDeque<(String, Instant)>>,
    /// Slots for open streams.
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
}

type Shared_ = Arc<App>;

pub(crate) fn router(app: Arc<App>) -> Router {
    let limit = app.config.request_bytes_max;
    let ids = RequestIds { started: app.started, next: Arc::new(AtomicU64::new(1)) };
    let cors = cors(&app.config.allowed_origins);
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/plexus/v1/status", get(status))
        .route("/plexus/v1/close", post(close))
        .route("/openapi.json", get(openapi))
        .route("/v2", get(crate::kserve::server_metadata))
        .route("/v2/health/live", get(crate::kserve::live))
        .route("/v2/health/ready", get(crate::kserve::ready))
        .route("/v2/models/{name}", get(crate::kserve::model_metadata))
        .route("/v2/models/{name}/ready", get(crate::kserve::model_ready))
        .route("/v2/models/{name}/infer", post(crate::kserve::infer))
        .route("/v2/models/{name}/versions/{version}", get(crate::kserve::version_metadata))
        .route("/v2/models/{name}/versions/{version}/ready", get(crate::kserve::version_ready))
        .route("/v2/models/{name}/versions/{version}/infer", post(crate::kserve::version_infer))
        .route("/v2/models/{name}/stream", get(crate::stream::stream))
        .fallback(|| async { GatewayError::bad("path", "no such route on the gateway").into_response() })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .layer(axum::middleware::from_fn_with_state(app.clone(), timed))
        // Outside the guard: a browser's preflight from an allowed origin is answered here, and
        // every response, refusals included, carries its request id.
        .layer(cors)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(ids))
        .with_state(app)
}

/// `x-request-id` for requests that come without one: the gateway's start time and a counter,
/// unique per gateway (an id the app sent is kept and echoed).
#[derive(Clone)]
struct RequestIds {
    started: u64,
    next: Arc<AtomicU64>,
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("req-{:x}{n:08x}", self.started)).ok().map(RequestId::new)
    }
}

/// CORS for the `--allow-origin` origins only (none by default): preflights are answered with
/// what a browser app needs (the OpenAI SDKs' own headers included), and responses expose the
/// headers that say who answered. Requests from other origins are refused by [`guard`].
fn cors(origins: &[String]) -> CorsLayer {
    let allowed: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    let expose = [
        "x-request-id",
        H_PROVIDER,
        H_SESSION,
        H_ATTESTATION,
        H_SIGNATURE,
        H_MODEL_ID,
        "retry-after",
        plexus_serve::kserve::wire::HEADER_LENGTH,
    ]
    .map(axum::http::HeaderName::from_static);
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers(expose)
        .max_age(Duration::from_secs(600))
}

/// The gateway's Plexus routes described in OpenAPI 3 (the OpenAI and KServe routes follow
/// those projects' own descriptions).
async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

/// Times every request to its response headers, labelled by the route it matched (not the raw
/// path, so model names cannot grow the label set).
async fn timed(State(app): State<Shared_>, request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    app.metrics.observe(&route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// Who may use the gateway: the API key (when set), JSON bodies only (on the KServe routes also
/// binary tensor bodies, and bodies with no declared type, as Triton's clients send them), no
/// foreign origin. Refusals on the KServe routes are in that protocol's shape, so its clients can
/// read them.
async fn guard(State(app): State<Shared_>, request: Request, next: Next) -> Response {
    let kserve = request.uri().path().starts_with("/v2/");
    let refuse = |status: StatusCode, code: &'static str, message: String| {
        let body =
            if kserve { json!({ "error": message }).to_string() } else { GatewayError::refusal_json(code, &message) };
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    if matches!(request.uri().path(), "/health" | "/v2/health/live" | "/v2/health/ready" | "/openapi.json") {
        return next.run(request).await;
    }
    let headers = request.headers();
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && !app.config.allowed_origins.iter().any(|o| o == origin)
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!("requests from the web page at {origin} are refused (allow it with --allow-origin)"),
        );
    }
    if let Some(key) = &app.config.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.trim().as_bytes(), key.as_bytes()) {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "a valid API key is required (Authorization: Bearer <key>; the devnet prints it)".into(),
            );
        }
    }
    if request.method() == Method::POST {
        // A body declared larger than the limit is refused before a byte of it is read.
        let limit = app.config.request_bytes_max;
        let declared =
            headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!("the request body is larger than {limit} bytes"),
            );
        }
        let kind = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase());
        let accepted = match kind.as_deref() {
            Some(t) if t.starts_with("application/json") => true,
            // The API key is required and a foreign page's Origin is refused above, so a body
            // without a declared type is no way around them.
            None => kserve,
            Some(t) => kserve && t.starts_with("application/octet-stream"),
        };
        if !accepted {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                if kserve {
                    "request bodies must be JSON or binary tensors (Content-Type: application/json or \
                     application/octet-stream)"
                        .into()
                } else {
                    "request bodies must be JSON (Content-Type: application/json)".into()
                },
            );
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Wire {
    Chat,
    Completion,
    Embedding,
    /// A tensor model's inference (Open Inference Protocol); its path names the model.
    Infer,
}

impl Wire {
    fn path(self) -> &'static str {
        match self {
            Wire::Chat => "/v1/chat/completions",
            Wire::Completion => "/v1/completions",
            Wire::Embedding => "/v1/embeddings",
            Wire::Infer => "/v2/models/{model}/infer",
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Wire::Chat => "chat_completions",
            Wire::Completion => "completions",
            Wire::Embedding => "embeddings",
            Wire::Infer => "infer",
        }
    }
}

fn parse_body(limit: usize, body: Result<Bytes, BytesRejection>) -> Result<Value, GatewayError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            GatewayError::BadRequest {
                message: format!("the request body is larger than {limit} bytes"),
                param: None,
                code: Some("request_too_large"),
            }
        } else {
            GatewayError::BadRequest { message: r.body_text(), param: None, code: None }
        }
    })?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| GatewayError::BadRequest {
        message: format!("the request body is not valid JSON: {e}"),
        param: None,
        code: None,
    })?;
    if !v.is_object() {
        return Err(GatewayError::BadRequest {
            message: "the request body must be a JSON object".into(),
            param: None,
            code: None,
        });
    }
    Ok(v)
}

/// A refusal the gateway makes with the provider's own parser: the same message, `param` and
/// `code` the provider would have answered with.
fn bad_request(e: plexus_serve::ServeError) -> GatewayError {
    match e {
        plexus_serve::ServeError::BadRequest { message, param, code } => {
            GatewayError::BadRequest { message, param, code }
        }
        other => GatewayError::BadRequest { message: other.to_string(), param: None, code: None },
    }
}

/// A request the gateway has counted, ready to send.
struct Counted {
    /// The body to send: the app's, with `max_tokens` and the sampling `seed` made explicit so
    /// the gateway and the provider derive the same request.
    body: Value,
    expect: Expect,
}

impl App {
    /// The model `requested` names, refreshing the directory once if needed.
    pub(crate) async fn resolve(
        &self,
        requested: &str,
    ) -> Result<(plexus_types::ModelId, plexus_types::ModelManifest), GatewayError> {
        match self.directory.resolve(requested, &self.config.constraints) {
            Ok(r) => Ok(r),
            Err(_) => {
                if let Err(e) = self.directory.refresh(&self.chain).await {
                    warn!(target: "gateway", "cannot refresh providers: {e}");
                }
                self.directory.resolve(requested, &self.config.constraints)
            }
        }
    }

    /// The model `requested` names and its tokenizer.
    async fn model(
        &self,
        requested: &str,
    ) -> Result<(plexus_types::ModelId, plexus_types::ModelManifest, Arc<Tokenizer>), GatewayError> {
        let (id, manifest) = self.resolve(requested).await?;
        let tokenizer = self.tokenizers.get(id, &manifest).await?;
        Ok((id, manifest, tokenizer))
    }

    /// Providers for `model`, refreshing the directory once if none is known.
    pub(crate) async fn candidates(
        &self,
        model: &plexus_types::ModelId,
        name: &str,
    ) -> Result<Vec<Candidate>, GatewayError> {
        let found = self.directory.candidates(model, &self.config.constraints);
        if !found.is_empty() {
            return Ok(found);
        }
        if let Err(e) = self.directory.refresh(&self.chain).await {
            warn!(target: "gateway", "cannot refresh providers: {e}");
        }
        let found = self.directory.candidates(model, &self.config.constraints);
        if found.is_empty() {
            return Err(GatewayError::NoProvider(format!(
                "no provider serves the model `{name}` ({model}){}",
                match self.config.constraints.regions.as_slice() {
                    [] => String::new(),
                    regions => format!(" in regions {regions:?}"),
                },
            )));
        }
        Ok(found)
    }

    /// Counts a generation request with the gateway's own tokenizer.
    fn count_generation(&self, wire: Wire, tokenizer: &Tokenizer, mut body: Value) -> Result<Counted, GatewayError> {
        let parse = |b: &Value| {
            let bytes = serde_json::to_vec(b).map_err(|e| GatewayError::Internal(e.to_string()))?;
            match wire {
                Wire::Chat => plexus_serve::openai::parse_chat(&bytes),
                _ => plexus_serve::openai::parse_completion(&bytes),
            }
            .map_err(bad_request)
        };
        let parsed = parse(&body)?;
        // The seed is the gateway's to choose when the app gave none, so both sides sample alike.
        if let Sampling::Random { seed, .. } = parsed.request.sampling
            && body.get("seed").is_none_or(Value::is_null)
        {
            body["seed"] = json!(seed);
        }
        // An explicit output bound: the gateway's default, within what the context leaves.
        if parsed.request.max_tokens.is_none() {
            let room = tokenizer.prepare(parsed.request.clone()).map_err(|e| bad_request(e.into()))?.max_tokens;
            body["max_tokens"] = json!(room.min(self.config.max_tokens_default));
        }
        let parsed = parse(&body)?;
        let prepared = tokenizer.prepare(parsed.request.clone()).map_err(|e| bad_request(e.into()))?;
        // A penalised or biased generation is audited like any other, so the chain must be able
        // to hear the challenge if the audit fails: not before the version that decodes it.
        let version = self.directory.execution_version();
        let adjust = &prepared.adjust;
        if !adjust.is_identity() && version < plexus_types::receipt::ADJUSTED_SAMPLING_SINCE {
            let param = match (adjust.presence != 0.0, adjust.frequency != 0.0) {
                (true, _) => "presence_penalty",
                (_, true) => "frequency_penalty",
                _ => "logit_bias",
            };
            return Err(GatewayError::bad(
                param,
                format!(
                    "`{param}` needs the chain at execution version {} or later, where such generations can be \
                     challenged; this chain runs version {version}",
                    plexus_types::receipt::ADJUSTED_SAMPLING_SINCE
                ),
            ));
        }
        // Likewise a constrained one, from the version that decodes its grammar.
        if let Some(c) = &prepared.constraint
            && version < plexus_types::receipt::CONSTRAINED_SAMPLING_SINCE
        {
            let param = plexus_inference::grammar::param_of(c.spec().kind);
            return Err(GatewayError::bad(
                param,
                format!(
                    "`{param}` needs the chain at execution version {} or later, where constrained generations can \
                     be challenged; this chain runs version {version}",
                    plexus_types::receipt::CONSTRAINED_SAMPLING_SINCE
                ),
            ));
        }
        let expect = Expect {
            model: tokenizer.model(),
            prompt_tokens: prepared.prompt_tokens(),
            max_tokens: prepared.max_tokens,
            request_hash: prepared.request_hash,
            stop: parsed.request.stop.clone(),
            sampling: prepared.spec(),
            prompt: prepared.tokens,
        };
        Ok(Counted { body, expect })
    }

    pub(crate) fn request_headers(&self, s: &Shared, progress: bool) -> reqwest::header::HeaderMap {
        let st = s.lock().expect("session lock");
        let mut h = reqwest::header::HeaderMap::new();
        let mut put = |name: &'static str, value: &str| {
            if let Ok(v) = reqwest::header::HeaderValue::from_str(value) {
                h.insert(name, v);
            }
        };
        put(H_SESSION, &st.id.to_string());
        if let Some(t) = &st.token {
            put(H_TOKEN, t);
        }
        if let Some(r) = &st.latest {
            put(H_RECEIPT, r);
        }
        if progress {
            put(H_PROGRESS, "1");
        }
        h
    }

    fn deliver_later(self: &Arc<Self>, s: &Shared) {
        let app = self.clone();
        let s = s.clone();
        tokio::spawn(async move {
            app.sessions.deliver(&s).await;
        });
    }

    fn new_id(&self, wire: Wire) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let prefix = match wire {
            Wire::Chat => "chatcmpl",
            Wire::Completion => "cmpl",
            Wire::Embedding => "embd",
            Wire::Infer => "infer",
        };
        format!("{prefix}-plexus-{:x}{n:08x}", self.started)
    }

    /// Remembers that an app asked for the text model `name` (the last few, for probes).
    fn asked_for(&self, name: &str) {
        let mut asked = self.asked.lock().expect("asked lock");
        if let Some(i) = asked.iter().position(|(n, _)| n == name) {
            asked.remove(i);
        } else if asked.len() >= crate::probe::MODELS_PROBED_MAX {
            asked.pop_front();
        }
        asked.push_back((name.to_string(), Instant::now()));
    }

    /// Sends `body` (a chat request) to `c` alone, as any app request is sent: counted,
    /// verified, paid by receipt, maybe audited. True when it was answered and verified.
    pub(crate) async fn probe(self: &Arc<Self>, c: &Candidate, name: &str, body: Value) -> bool {
        let Ok((_, _, tokenizer)) = self.model(name).await else { return false };
        let Ok(counted) = self.count_generation(Wire::Chat, &tokenizer, body) else { return false };
        let check = Check::Generation { expect: &counted.expect, tokenizer: &tokenizer, wire: Wire::Chat };
        match forward(self.clone(), Wire::Chat, counted.body.clone(), vec![c.clone()], check).await {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }

    /// A generation was paid for: maybe audit it (decided now, after its receipt is signed).
    fn offer_audit(&self, c: &Candidate, s: &Shared, v: &Verified, attestation: Attestation, signature: Sig) {
        let Some(transcript) = &v.transcript else { return };
        self.auditor.offer(|| {
            Some(crate::audit::Job {
                provider: c.provider.clone(),
                session: s.lock().expect("session lock").id,
                attestation,
                signature,
                work: crate::audit::Work::Generation(transcript.clone()),
            })
        });
    }

    /// A tensor inference was paid for: maybe audit it. `work` builds the job's request and the
    /// outputs received, only when chosen.
    pub(crate) fn offer_tensor_audit(
        &self,
        c: &Candidate,
        s: &Shared,
        attestation: Attestation,
        signature: Sig,
        work: impl FnOnce() -> Option<(TensorRequest, Vec<Tensor>)>,
    ) {
        self.auditor.offer(|| {
            let (request, outputs) = work()?;
            Some(crate::audit::Job {
                provider: c.provider.clone(),
                session: s.lock().expect("session lock").id,
                work: crate::audit::Work::Tensor { model: attestation.model, request, outputs },
                attestation,
                signature,
            })
        });
    }

    /// A provider sent something that does not verify: no receipt for it, and it is shunned
    /// for that model (its other models are served as before).
    pub(crate) fn caught(&self, c: &Candidate, lie: &Lie) {
        let left = self.directory.caught_lying(&c.provider, &c.model, &lie.to_string());
        warn!(
            target: "gateway::verify", provider = %c.provider, model = %c.model_name, shunned_s = left.as_secs(),
            "not paid, provider shunned for this model: {lie}"
        );
        self.metrics.attestation_failures.inc();
    }

    /// The error for a request none of `candidates` answered: what went wrong with each provider
    /// tried (`errors`), and why each other one was not tried. When nothing could be tried at
    /// all (every provider is shunned for the model), a 503 that says until when.
    pub(crate) fn nobody_left(&self, candidates: &[Candidate], tried: &[Address], errors: Vec<String>) -> GatewayError {
        let (untried, soonest) = self.directory.unavailable(candidates, tried);
        let model = candidates.first().map_or("the model", |c| c.model_name.as_str());
        if errors.is_empty() {
            return GatewayError::Unavailable {
                message: format!("no provider of `{model}` can be used now: {}", untried.join("; ")),
                retry_after_secs: soonest.map_or(directory::COOLDOWN.as_secs(), |d| d.as_secs().max(1)),
            };
        }
        let mut message = format!("every provider tried failed: {}", errors.join("; "));
        if !untried.is_empty() {
            message.push_str(&format!("; not tried: {}", untried.join("; ")));
        }
        GatewayError::Upstream(message)
    }

    /// Ready models: those on offer with a provider that may be used now.
    pub(crate) fn servable_models(&self) -> usize {
        let constraints = &self.config.constraints;
        self.directory
            .models(constraints)
            .iter()
            .filter(|m| self.directory.can_serve(&self.directory.candidates(&m.id, constraints)))
            .count()
    }
}

/// Reads and checks the signature of a provider's attestation of one response.
fn signed_attestation(
    chain_id: &str,
    c: &Candidate,
    attestation_hex: &str,
    signature: &str,
) -> Result<(Attestation, Sig), Lie> {
    let att = Attestation::from_hex(attestation_hex).map_err(Lie::Attestation)?;
    let sig: Sig = signature.parse().map_err(Lie::Attestation)?;
    if !att.verify(&c.provider, &sig, chain_id) {
        return Err(Lie::Attestation("not signed by the provider for this chain".into()));
    }
    Ok((att, sig))
}

/// The name of an output of a tensor response whose data holds a `null` (how JSON writers put
/// NaN and infinities), if one does.
pub(crate) fn not_finite_output(body: &Value) -> Option<String> {
    fn has_null(v: &Value, depth: usize) -> bool {
        match v {
            Value::Null => true,
            Value::Array(items) if depth < plexus_inference::tensor::RANK_MAX => {
                items.iter().any(|x| has_null(x, depth + 1))
            }
            _ => false,
        }
    }
    let outputs = body["outputs"].as_array()?;
    outputs.iter().find(|o| has_null(&o["data"], 0)).map(|o| o["name"].as_str().unwrap_or("?").to_string())
}

/// The output ids a provider listed, bounded by what the request allows.
fn ids_of(v: &Value, max: u32) -> Result<Vec<i32>, Lie> {
    let list = v.as_array().ok_or_else(|| Lie::Attestation("no output token ids".into()))?;
    if list.len() as u64 > u64::from(max) + 1 {
        return Err(Lie::TooMany(list.len() as u64, max));
    }
    list.iter()
        .map(|x| {
            x.as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| Lie::Spelling("a token id is not a number".into()))
        })
        .collect()
}

enum Attempt {
    /// The provider answered; pass this to the app.
    Done(Response),
    /// Try another provider.
    Retry(String),
    /// The provider is too busy now (429); it says when to come back, in seconds.
    Busy(String, u64),
}

// ---- non-streamed requests (chat, completions, embeddings) ----

/// What one non-streamed response is checked against.
pub(crate) enum Check<'a> {
    Generation {
        expect: &'a Expect,
        tokenizer: &'a Tokenizer,
        wire: Wire,
    },
    Embeddings {
        expect: &'a Expect,
    },
    /// A tensor model: `expect.max_tokens` is the row count the gateway read from the request;
    /// `path` is the provider's route.
    Infer {
        expect: &'a Expect,
        path: String,
        request: &'a TensorRequest,
        /// A body in the binary tensor extension, sent as it is (with its JSON header's
        /// length) in place of the JSON body.
        binary: Option<(&'a [u8], usize)>,
    },
}

impl Check<'_> {
    fn path(&self, wire: Wire) -> &str {
        match self {
            Check::Infer { path, .. } => path,
            _ => wire.path(),
        }
    }
}

async fn forward_once(
    app: &Arc<App>,
    wire: Wire,
    c: &Candidate,
    body: &Value,
    check: &Check<'_>,
) -> Result<Attempt, GatewayError> {
    let s = match app.sessions.for_candidate(c).await {
        Ok(s) => s,
        Err(e @ GatewayError::Funds(_)) => return Err(e),
        Err(e) => return Ok(Attempt::Retry(format!("session with {}: {e}", c.provider))),
    };
    for round in 0..2 {
        let url = format!("{}{}", c.endpoint, check.path(wire));
        app.directory.started(&c.provider);
        let started = Instant::now();
        let link = match app.http.to(&c.provider, &c.endpoint) {
            Ok(link) => link,
            Err(e) => return Ok(Attempt::Retry(format!("{}: {e}", c.provider))),
        };
        let post = link.post(&url).headers(app.request_headers(&s, false));
        let post = match check {
            Check::Infer { binary: Some((bytes, len)), .. } => post
                .header(plexus_serve::kserve::wire::HEADER_LENGTH, *len)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes.to_vec()),
            _ => post.json(body),
        };
        let sent = post.send().await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                app.directory.finished(&c.provider, &c.model, Outcome::Failed);
                return Ok(Attempt::Retry(format!("{url}: {}", crate::link::why(&e))));
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                app.directory.finished(&c.provider, &c.model, Outcome::Failed);
                return Ok(Attempt::Retry(format!("{url}: {e}")));
            }
        };
        if status == StatusCode::UNAUTHORIZED && round == 0 {
            // The provider forgot our token (it restarted): authenticate again.
            app.directory.finished(&c.provider, &c.model, Outcome::Served(started.elapsed()));
            app.sessions.drop_token(&s);
            if let Err(e) = app.sessions.ensure_token(&s).await {
                return Ok(Attempt::Retry(format!("re-authenticating with {}: {e}", c.provider)));
            }
            continue;
        }
        if status == StatusCode::PAYMENT_REQUIRED && round == 0 {
            app.directory.finished(&c.provider, &c.model, Outcome::Served(started.elapsed()));
            app.sessions.deliver(&s).await;
            app.sessions.maybe_top_up(&s);
            continue;
        }
        if !status.is_success() {
            let client_error = status.is_client_error()
                && status != StatusCode::TOO_MANY_REQUESTS
                && status != StatusCode::PAYMENT_REQUIRED;
            // A 4xx is the request's fault: no mark on the provider. A 5xx or 429 is nobody's
            // proven fault: tried last for this model for a while, never excluded.
            app.directory.finished(
                &c.provider,
                &c.model,
                if client_error { Outcome::Refused } else { Outcome::Failed },
            );
            if client_error {
                // The app's request is at fault: the next provider would say the same, and
                // nothing is billed (no receipt).
                let mut r = (status, bytes).into_response();
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return Ok(Attempt::Done(r));
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                let after = headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map_or(1, |s| s.clamp(1, RETRY_AFTER_MAX_SECS));
                return Ok(Attempt::Busy(format!("{url}: busy (HTTP 429)"), after));
            }
            return Ok(Attempt::Retry(format!("{url}: HTTP {status}")));
        }
        app.directory.finished(&c.provider, &c.model, Outcome::Served(started.elapsed()));
        let mut parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if let Check::Infer { .. } = check
            && let Some(output) = not_finite_output(&parsed)
        {
            // A value JSON cannot carry (NaN or infinity, sent as null): a provider that
            // does not refuse such outputs itself (an older binary) cannot prove what it
            // attested. Not paid, and not a lie either: the next provider is asked.
            app.directory.failed(&c.provider, &c.model);
            return Ok(Attempt::Retry(format!(
                "{}: output `{output}` holds a value that is not a finite number (not paid, no penalty)",
                c.provider
            )));
        }
        let hv = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        let verified = signed_attestation(app.sessions.chain_id(), c, hv(H_ATTESTATION), hv(H_SIGNATURE)).and_then(
            |(att, sig)| {
                let v = match check {
                    Check::Generation { expect, tokenizer, wire } => {
                        let text = match wire {
                            Wire::Chat => parsed["choices"][0]["message"]["content"].as_str(),
                            _ => parsed["choices"][0]["text"].as_str(),
                        }
                        .unwrap_or_default()
                        .to_string();
                        let ids = ids_of(&parsed["plexus"]["output_ids"], expect.max_tokens)?;
                        billing::check_generation(*tokenizer, expect, &att, &ids, &text)
                    }
                    Check::Embeddings { expect } => billing::check_embeddings(expect, &att),
                    Check::Infer { expect, .. } => billing::check_infer(expect, &att, &parsed),
                }?;
                Ok((v, att, sig))
            },
        );
        let (v, att, sig) = match verified {
            Ok(v) => v,
            Err(lie) => {
                app.caught(c, &lie);
                return Ok(Attempt::Retry(format!("{}: {lie}", c.provider)));
            }
        };
        app.sessions.acknowledge(&s, v.input_tokens, v.output_tokens, Some(v.attestation));
        app.directory.verified(&c.provider, &c.model);
        if let Check::Infer { request, expect, .. } = check {
            let rows = expect.max_tokens as usize;
            app.offer_tensor_audit(c, &s, att, sig, || {
                let outputs = plexus_serve::kserve::parse_outputs(&parsed, rows).ok()?.outputs;
                Some(((*request).clone(), outputs))
            });
        } else {
            app.offer_audit(c, &s, &v, att, sig);
        }
        app.metrics.receipts_signed.inc();
        app.metrics.tokens(v.input_tokens, v.output_tokens);
        app.deliver_later(&s);
        app.sessions.maybe_top_up(&s);
        if let Check::Infer { .. } = check {
            // The inferences the app pays for.
            parsed["parameters"]["plexus_inferences"] = json!(v.output_tokens);
        } else {
            // The app sees what it pays for: the gateway's counts, not the provider's.
            parsed["usage"]["prompt_tokens"] = json!(v.input_tokens);
            if wire != Wire::Embedding {
                parsed["usage"]["completion_tokens"] = json!(v.output_tokens);
            }
            parsed["usage"]["total_tokens"] = json!(v.input_tokens + v.output_tokens);
        }
        let mut r = (StatusCode::OK, parsed.to_string()).into_response();
        let out = r.headers_mut();
        out.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for name in [H_ATTESTATION, H_SIGNATURE, H_PROVIDER, H_MODEL_ID] {
            if let Some(v) = headers.get(name) {
                out.insert(name, v.clone());
            }
        }
        if let Ok(v) = HeaderValue::from_str(&s.lock().expect("session lock").id.to_string()) {
            out.insert(H_SESSION, v);
        }
        return Ok(Attempt::Done(r));
    }
    Ok(Attempt::Retry(format!("{} kept refusing the session", c.provider)))
}

pub(crate) async fn forward(
    app: Arc<App>,
    wire: Wire,
    body: Value,
    candidates: Vec<Candidate>,
    check: Check<'_>,
) -> Result<Response, GatewayError> {
    let mut tried = Vec::new();
    let mut errors = Vec::new();
    // Seconds until the soonest busy provider takes requests again; whether any failed otherwise.
    let (mut busy_after, mut failed_otherwise): (Option<u64>, bool) = (None, false);
    for _ in 0..app.config.attempts_max {
        let Some(c) = app.directory.pick(&candidates, &tried) else { break };
        tried.push(c.provider.clone());
        match forward_once(&app, wire, &c, &body, &check).await? {
            Attempt::Done(r) => return Ok(r),
            Attempt::Retry(why) => {
                debug!(target: "gateway", provider = %c.provider, "retrying elsewhere: {why}");
                app.metrics.failovers.inc();
                errors.push(why);
                failed_otherwise = true;
            }
            Attempt::Busy(why, after) => {
                debug!(target: "gateway", provider = %c.provider, "busy, retrying elsewhere: {why}");
                app.metrics.failovers.inc();
                errors.push(why);
                busy_after = Some(busy_after.map_or(after, |a| a.min(after)));
            }
        }
    }
    match busy_after {
        // Every provider tried is saturated: the app should come back, not give up.
        Some(after) if !failed_otherwise => Err(GatewayError::Saturated {
            message: format!("every provider of the model is busy now: {}", errors.join("; ")),
            retry_after_secs: after,
        }),
        _ => Err(app.nobody_left(&candidates, &tried, errors)),
    }
}

// ---- streams ----

/// A streamed request, with everything needed to continue it on another provider.
struct StreamJob {
    wire: Wire,
    /// The counted body (explicit `max_tokens` and `seed`).
    body: Value,
    tokenizer: Arc<Tokenizer>,
    model: String,
    max_tokens: u64,
    include_usage: bool,
    id: String,
    created: u64,
    deadline: tokio::time::Instant,
}

impl StreamJob {
    /// The request to send to the next provider, continuing after `delivered`.
    fn continuation(&self, delivered: &str, completion_tokens: u64) -> Value {
        let mut body = self.body.clone();
        body["stream"] = json!(true);
        body["stream_options"] = json!({ "include_usage": true });
        let left = self.max_tokens.saturating_sub(completion_tokens).max(1);
        body["max_tokens"] = json!(left);
        if body.get("max_completion_tokens").is_some() {
            body["max_completion_tokens"] = json!(left);
        }
        if delivered.is_empty() {
            return body;
        }
        match self.wire {
            Wire::Chat => {
                if let Some(messages) = body["messages"].as_array_mut() {
                    let continuing = body_continues(messages);
                    match messages.last_mut() {
                        Some(last) if continuing => {
                            let prefix = last["content"].as_str().unwrap_or_default().to_string();
                            last["content"] = json!(format!("{prefix}{delivered}"));
                        }
                        _ => messages.push(json!({ "role": "assistant", "content": delivered })),
                    }
                }
                body["continue_final_message"] = json!(true);
            }
            Wire::Completion => {
                let prompt = body["prompt"].as_str().unwrap_or_default().to_string();
                body["prompt"] = json!(format!("{prompt}{delivered}"));
            }
            Wire::Embedding | Wire::Infer => {}
        }
        body
    }

    /// One chunk to the app. `logprobs` is the provider's for this chunk's tokens (null when
    /// there are none).
    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>, logprobs: Option<Value>) -> String {
        let logprobs = logprobs.unwrap_or(Value::Null);
        let usage = if self.include_usage { Some(Value::Null) } else { None };
        let mut v = match self.wire {
            Wire::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "choices": [{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }],
                })
            }
            _ => json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{ "index": 0, "text": text.unwrap_or_default(), "logprobs": logprobs, "finish_reason": finish }],
            }),
        };
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v.to_string()
    }

    fn usage_chunk(&self, prompt: u64, completion: u64, segments: &[Value]) -> String {
        let object = if self.wire == Wire::Chat { "chat.completion.chunk" } else { "text_completion" };
        json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [],
            "usage": { "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion },
            "plexus": { "segments": segments },
        })
        .to_string()
    }
}

/// A completion's `logprobs` from a provider continuing after `chars` characters another
/// delivered: its `text_offset`s count from its own first token, the app's from the first of
/// the whole answer. (Chat logprobs carry no offsets.)
fn continue_offsets(mut logprobs: Value, chars: usize) -> Value {
    if chars > 0
        && let Some(offsets) = logprobs.get_mut("text_offset").and_then(Value::as_array_mut)
    {
        for o in offsets {
            if let Some(n) = o.as_u64() {
                *o = json!(n.saturating_add(chars as u64));
            }
        }
    }
    logprobs
}

fn body_continues(messages: &[Value]) -> bool {
    messages.last().is_some_and(|m| m["role"] == "assistant")
}

/// One provider's part of a stream.
struct Segment {
    meter: StreamMeter,
    acked_prompt: u64,
    acked_completion: u64,
    finish: Option<String>,
    /// The verified end of the stream.
    verified: Option<Verified>,
    /// Its signed attestation, kept to audit it.
    signed: Option<(Attestation, Sig)>,
    done: bool,
    first_token: Option<Duration>,
    error: Option<String>,
    /// The provider sent something that does not verify.
    lied: bool,
    /// The provider refused for a reason the app must see (not a provider failure).
    client_error: Option<String>,
    /// The provider did not know our token (it restarted): authenticate and try it again.
    reauth: bool,
}

impl Segment {
    fn new(expect: Expect) -> Self {
        Segment {
            meter: StreamMeter::new(expect),
            acked_prompt: 0,
            acked_completion: 0,
            finish: None,
            verified: None,
            signed: None,
            done: false,
            first_token: None,
            error: None,
            lied: false,
            client_error: None,
            reauth: false,
        }
    }

    /// Verified tokens delivered: the prompt once output started, and the output.
    fn delivered(&self) -> (u64, u64) {
        match &self.verified {
            Some(v) => (v.input_tokens, v.output_tokens),
            None if self.meter.verified_output() > 0 => {
                (u64::from(self.meter.expect.prompt_tokens), self.meter.verified_output())
            }
            None => (0, 0),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream_from(
    app: &Arc<App>,
    job: &StreamJob,
    c: &Candidate,
    s: &Shared,
    body: &Value,
    expect: Expect,
    out: &mpsc::Sender<String>,
    role_sent: &mut bool,
    delivered_chars: usize,
) -> Segment {
    let mut seg = Segment::new(expect);
    let url = format!("{}{}", c.endpoint, job.wire.path());
    let started = Instant::now();
    let link = match app.stream_http.to(&c.provider, &c.endpoint) {
        Ok(link) => link,
        Err(e) => {
            seg.error = Some(format!("{}: {e}", c.provider));
            return seg;
        }
    };
    let response = match link.post(&url).headers(app.request_headers(s, true)).json(body).send().await {
        Ok(r) => r,
        Err(e) => {
            seg.error = Some(format!("{url}: {}", crate::link::why(&e)));
            return seg;
        }
    };
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        if status == StatusCode::UNAUTHORIZED {
            app.sessions.drop_token(s);
            seg.reauth = true;
        } else if status.is_client_error()
            && status != StatusCode::TOO_MANY_REQUESTS
            && status != StatusCode::PAYMENT_REQUIRED
        {
            seg.client_error = Some(text);
            return seg;
        }
        seg.error = Some(format!("{url}: HTTP {status}: {text}"));
        return seg;
    }
    let mut events = Events::new(response.bytes_stream());
    let every = app.config.receipt_every_tokens;
    let tokenizer = job.tokenizer.clone();
    loop {
        let next = tokio::time::timeout_at(job.deadline, events.next()).await;
        let data = match next {
            Err(_) => {
                seg.error = Some("the stream ran past its deadline".into());
                break;
            }
            Ok(None) => {
                seg.error = Some("the provider closed the stream early".into());
                break;
            }
            Ok(Some(Err(e))) => {
                seg.error = Some(e.to_string());
                break;
            }
            Ok(Some(Ok(d))) => d,
        };
        if data == "[DONE]" {
            seg.done = seg.verified.is_some();
            if !seg.done {
                let lie = Lie::Attestation("the stream ended without a verified attestation".into());
                app.caught(c, &lie);
                seg.lied = true;
                seg.error = Some(lie.to_string());
            }
            break;
        }
        let Ok(v) = serde_json::from_str::<Value>(&data) else { continue };
        if let Some(err) = v.get("error") {
            seg.error = Some(format!("the provider stopped: {}", err["message"].as_str().unwrap_or("error")));
            break;
        }
        if let Some(p) = v.get("plexus").filter(|p| p.get("attestation_hex").is_some()) {
            let checked = signed_attestation(
                app.sessions.chain_id(),
                c,
                p["attestation_hex"].as_str().unwrap_or(""),
                p["signature"].as_str().unwrap_or(""),
            )
            .and_then(|(att, sig)| {
                let ids = ids_of(&p["output_ids"], seg.meter.expect.max_tokens)?;
                Ok((seg.meter.finish(tokenizer.as_ref(), &att, &ids)?, att, sig))
            });
            match checked {
                Ok((verified, att, sig)) => {
                    seg.signed = Some((att, sig));
                    seg.verified = Some(verified);
                }
                Err(lie) => {
                    app.caught(c, &lie);
                    seg.lied = true;
                    seg.error = Some(lie.to_string());
                    break;
                }
            }
        }
        if let Some(choice) = v["choices"].get(0) {
            let text = match job.wire {
                Wire::Chat => choice["delta"]["content"].as_str(),
                _ => choice["text"].as_str(),
            }
            .unwrap_or_default();
            // Every chunk carries the ids it spells; text without them is not paid for, and
            // text they do not spell (or past max_tokens) ends the provider's part here.
            let ids = match v.get("plexus_usage") {
                None if text.is_empty() => Ok(Vec::new()),
                _ => ids_of(&v["plexus_usage"]["ids"], seg.meter.expect.max_tokens),
            };
            if let Err(lie) = ids.and_then(|ids| seg.meter.on_chunk(tokenizer.as_ref(), text, &ids)) {
                app.caught(c, &lie);
                seg.lied = true;
                seg.error = Some(lie.to_string());
                break;
            }
            if !text.is_empty() {
                seg.first_token.get_or_insert(started.elapsed());
                let role = job.wire == Wire::Chat && !*role_sent;
                *role_sent = true;
                let logprobs = choice.get("logprobs").filter(|v| !v.is_null()).cloned();
                let logprobs = logprobs.map(|lp| continue_offsets(lp, delivered_chars));
                if out.send(job.chunk(Some(text), role, None, logprobs)).await.is_err() {
                    seg.error = Some(APP_LEFT.into());
                    break;
                }
            } else if job.wire == Wire::Chat && !*role_sent && choice["delta"]["role"].is_string() {
                *role_sent = true;
                let _ = out.send(job.chunk(Some(""), true, None, None)).await;
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                seg.finish = Some(f.to_string());
            }
        }
        // Acknowledge long streams as they go, for verified tokens only, so the provider's
        // credit never runs out.
        let (p, o) = seg.delivered();
        if (p + o).saturating_sub(seg.acked_prompt + seg.acked_completion) >= every {
            acknowledge_segment(app, s, &mut seg, None);
        }
    }
    seg
}

/// Signs a receipt for the verified tokens `seg` delivered since its last one.
fn acknowledge_segment(app: &Arc<App>, s: &Shared, seg: &mut Segment, attestation: Option<Hash>) {
    let (prompt, completion) = seg.delivered();
    let (p, c) = (prompt.saturating_sub(seg.acked_prompt), completion.saturating_sub(seg.acked_completion));
    if app.sessions.acknowledge(s, p, c, attestation).is_some() {
        app.metrics.receipts_signed.inc();
        app.metrics.tokens(p, c);
        app.deliver_later(s);
    }
    seg.acked_prompt = seg.acked_prompt.max(prompt);
    seg.acked_completion = seg.acked_completion.max(completion);
}

async fn drive_stream(app: Arc<App>, job: StreamJob, candidates: Vec<Candidate>, out: mpsc::Sender<String>) {
    let mut delivered = String::new();
    let mut completion_total = 0u64;
    let mut prompt_first: Option<u64> = None;
    let mut tried = Vec::new();
    let mut segments = Vec::new();
    let mut role_sent = false;
    let mut errors = Vec::new();
    let finish = loop {
        if tried.len() >= app.config.attempts_max as usize {
            break None;
        }
        if completion_total >= job.max_tokens {
            break Some("length".into());
        }
        let Some(c) = app.directory.pick(&candidates, &tried) else { break None };
        tried.push(c.provider.clone());
        let s = match app.sessions.for_candidate(&c).await {
            Ok(s) => s,
            Err(e @ GatewayError::Funds(_)) => {
                let _ = out.send(e.body_json()).await;
                return;
            }
            Err(e) => {
                app.directory.failed(&c.provider, &c.model);
                errors.push(format!("session with {}: {e}", c.provider));
                continue;
            }
        };
        let body = job.continuation(&delivered, completion_total);
        let counted = match app.count_generation(job.wire, &job.tokenizer, body) {
            Ok(counted) => counted,
            Err(e) => {
                let _ = out.send(e.body_json()).await;
                return;
            }
        };
        app.directory.started(&c.provider);
        let chars = delivered.chars().count();
        let mut seg =
            stream_from(&app, &job, &c, &s, &counted.body, counted.expect.clone(), &out, &mut role_sent, chars).await;
        if seg.reauth && app.sessions.ensure_token(&s).await.is_ok() {
            seg = stream_from(&app, &job, &c, &s, &counted.body, counted.expect.clone(), &out, &mut role_sent, chars)
                .await;
        }
        if let Some(e) = seg.client_error.take() {
            // The request's fault: passed on as the provider said it, no mark on the provider.
            app.directory.finished(&c.provider, &c.model, Outcome::Refused);
            let message = serde_json::from_str::<Value>(&e).ok().map(|v| v.to_string()).unwrap_or(e);
            let _ = out.send(message).await;
            return;
        }
        let att_hash = seg.verified.as_ref().map(|v| v.attestation);
        acknowledge_segment(&app, &s, &mut seg, att_hash);
        if let (Some(v), Some((att, sig))) = (&seg.verified, seg.signed.take()) {
            app.offer_audit(&c, &s, v, att, sig);
        }
        app.sessions.maybe_top_up(&s);
        let outcome = match (seg.done, seg.error.as_deref()) {
            (true, _) => Outcome::Served(seg.first_token.unwrap_or(Duration::ZERO)),
            (false, Some(APP_LEFT)) => Outcome::Refused,
            (false, _) => Outcome::Failed,
        };
        app.directory.finished(&c.provider, &c.model, outcome);
        if seg.done && seg.verified.is_some() {
            app.directory.verified(&c.provider, &c.model);
        }
        let (prompt, completion) = seg.delivered();
        if completion == 0 && !seg.done {
            // Nothing verified was delivered: not a part of the answer.
            errors.push(seg.error.unwrap_or_default());
            app.metrics.failovers.inc();
            continue;
        }
        prompt_first.get_or_insert(prompt);
        completion_total += completion;
        delivered.push_str(&seg.meter.text());
        segments.push(json!({
            "provider": c.provider, "region": c.region, "model_id": c.model, "prompt_tokens": prompt,
            "completion_tokens": completion, "complete": seg.done,
            "session": s.lock().expect("session lock").id,
        }));
        if seg.done {
            break Some(seg.finish.unwrap_or_else(|| "stop".into()));
        }
        let why = seg.error.unwrap_or_default();
        if why == APP_LEFT {
            return;
        }
        info!(target: "gateway", provider = %c.provider, delivered = completion, lied = seg.lied, "stream broke ({why}); continuing on another provider");
        app.metrics.failovers.inc();
        errors.push(why);
    };
    match finish {
        Some(reason) => {
            if job.wire == Wire::Chat && !role_sent {
                let _ = out.send(job.chunk(Some(""), true, None, None)).await;
            }
            let _ = out.send(job.chunk(None, false, Some(&reason), None)).await;
            if job.include_usage {
                let _ = out.send(job.usage_chunk(prompt_first.unwrap_or(0), completion_total, &segments)).await;
            }
            let _ = out.send("[DONE]".into()).await;
        }
        None => {
            let e = app.nobody_left(&candidates, &tried, errors);
            let _ = out.send(e.body_json()).await;
        }
    }
}

async fn generate(app: Arc<App>, wire: Wire, body: Value) -> Result<Response, GatewayError> {
    app.metrics.request(wire.label());
    let requested =
        body["model"].as_str().ok_or_else(|| GatewayError::bad("model", "`model` is required"))?.to_string();
    let (id, manifest, tokenizer) = app.model(&requested).await?;
    if !manifest.engine.generates_text() {
        return Err(GatewayError::bad("model", format!("model `{requested}` does not generate text")));
    }
    let mut body = body;
    let n = take_choices(&mut body)?;
    let counted = app.count_generation(wire, &tokenizer, body)?;
    let candidates = app.candidates(&id, &manifest.name).await?;
    app.asked_for(&requested);
    if n > 1 {
        return several(app, wire, &tokenizer, counted, n, candidates).await;
    }
    if !counted.body["stream"].as_bool().unwrap_or(false) {
        let check = Check::Generation { expect: &counted.expect, tokenizer: &tokenizer, wire };
        return forward(app.clone(), wire, counted.body.clone(), candidates, check).await;
    }
    if !app.directory.can_serve(&candidates) {
        // Said before the stream starts, so the app gets the status, not an error event.
        return Err(app.nobody_left(&candidates, &[], Vec::new()));
    }
    let include_usage = counted.body["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    let job = StreamJob {
        wire,
        model: requested,
        max_tokens: u64::from(counted.expect.max_tokens),
        include_usage,
        id: app.new_id(wire),
        created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        deadline: tokio::time::Instant::now() + app.config.stream_deadline,
        tokenizer,
        body: counted.body,
    };
    let (tx, mut rx) = mpsc::channel::<String>(APP_CHANNEL_CHUNKS);
    tokio::spawn(drive_stream(app.clone(), job, candidates, tx));
    let stream = async_stream::stream! {
        while let Some(data) = rx.recv().await {
            yield Ok::<_, Infallible>(SseEvent::default().data(data));
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

/// Removes `n` from an app's body, refusing what `plexus serve` refuses: `n` outside 1 to
/// [`plexus_serve::openai::CHOICES_MAX`], or above 1 with `stream`.
fn take_choices(body: &mut Value) -> Result<u32, GatewayError> {
    let max = plexus_serve::openai::CHOICES_MAX;
    let n = match body.as_object_mut().and_then(|o| o.remove("n")) {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=u64::from(max)).contains(&n) => n as u32,
            _ => return Err(GatewayError::bad("n", format!("`n` must be from 1 to {max}"))),
        },
    };
    if n > 1 && body["stream"].as_bool().unwrap_or(false) {
        return Err(GatewayError::bad("n", "`n` above 1 cannot be streamed; ask without `stream`"));
    }
    Ok(n)
}

/// `n` > 1 choices: each is a request of its own (the seed plus its index, as `plexus serve`
/// derives them), counted, forwarded with failover, verified and billed like any other, so a
/// provider is paid for each choice it proved and for nothing else. They run at once; the
/// answer joins them ([`plexus_serve::openai::merge_choices`]) with the first choice's headers.
/// A choice nobody could serve fails the request (the choices served are still paid: their work
/// was done).
async fn several(
    app: Arc<App>,
    wire: Wire,
    tokenizer: &Arc<Tokenizer>,
    first: Counted,
    n: u32,
    candidates: Vec<Candidate>,
) -> Result<Response, GatewayError> {
    let bytes = serde_json::to_vec(&first.body).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let parsed = match wire {
        Wire::Chat => plexus_serve::openai::parse_chat(&bytes),
        _ => plexus_serve::openai::parse_completion(&bytes),
    }
    .map_err(bad_request)?;
    let mut counted = vec![first];
    for i in 1..n {
        let mut body = counted[0].body.clone();
        if let Sampling::Random { seed, .. } = parsed.request.sampling.for_choice(i) {
            body["seed"] = json!(seed);
        }
        counted.push(app.count_generation(wire, tokenizer, body)?);
    }
    let choices = counted.iter().map(|c| {
        let check = Check::Generation { expect: &c.expect, tokenizer, wire };
        forward(app.clone(), wire, c.body.clone(), candidates.clone(), check)
    });
    let mut answers = Vec::with_capacity(n as usize);
    let mut headers = None;
    for response in futures::future::join_all(choices).await {
        let response = response?;
        if !response.status().is_success() {
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        // The gateway's own JSON of one verified answer, bounded by its max_tokens.
        let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|e| GatewayError::Internal(e.to_string()))?;
        answers.push(serde_json::from_slice::<Value>(&bytes).map_err(|e| GatewayError::Internal(e.to_string()))?);
        headers.get_or_insert(parts.headers);
    }
    let mut headers = headers.unwrap_or_default();
    headers.remove(header::CONTENT_LENGTH);
    let body = plexus_serve::openai::merge_choices(answers).to_string();
    Ok((StatusCode::OK, headers, body).into_response())
}

async fn embed(app: Arc<App>, body: Value) -> Result<Response, GatewayError> {
    app.metrics.request(Wire::Embedding.label());
    let bytes = serde_json::to_vec(&body).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let parsed = plexus_serve::openai::parse_embeddings(&bytes).map_err(bad_request)?;
    let (id, manifest, tokenizer) = app.model(&parsed.model).await?;
    let (tokens, request_hash) = tokenizer.embedding_request(&parsed.inputs).map_err(|e| bad_request(e.into()))?;
    let expect = Expect {
        model: id,
        prompt_tokens: tokens,
        max_tokens: 0,
        request_hash,
        stop: Vec::new(),
        prompt: Vec::new(),
        sampling: plexus_types::receipt::SamplingSpec::Greedy,
    };
    let candidates = app.candidates(&id, &manifest.name).await?;
    forward(app.clone(), Wire::Embedding, body, candidates, Check::Embeddings { expect: &expect }).await
}

// ---- handlers ----

async fn chat(State(app): State<Shared_>, body: Result<Bytes, BytesRejection>) -> Response {
    let limit = app.config.request_bytes_max;
    match parse_body(limit, body) {
        Ok(v) => generate(app, Wire::Chat, v).await.unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    }
}

async fn completions(State(app): State<Shared_>, body: Result<Bytes, BytesRejection>) -> Response {
    let limit = app.config.request_bytes_max;
    match parse_body(limit, body) {
        Ok(v) => generate(app, Wire::Completion, v).await.unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    }
}

async fn embeddings(State(app): State<Shared_>, body: Result<Bytes, BytesRejection>) -> Response {
    let limit = app.config.request_bytes_max;
    match parse_body(limit, body) {
        Ok(v) => embed(app, v).await.unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    }
}

async fn models(State(app): State<Shared_>) -> Response {
    if app.directory.provider_count() == 0 {
        let _ = app.directory.refresh(&app.chain).await;
    }
    let data: Vec<Value> = app.directory.models(&app.config.constraints).iter().map(model_object).collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

/// `GET /v1/models/{model}`: one model on offer, by name or id, as OpenAI describes a model.
async fn model(State(app): State<Shared_>, axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let found = match app.resolve(&name).await {
        Ok((id, _)) => app.directory.models(&app.config.constraints).into_iter().find(|m| m.id == id),
        Err(_) => None,
    };
    match found {
        Some(m) => axum::Json(model_object(&m)).into_response(),
        None => GatewayError::NoProvider(format!("no model `{name}` is on offer here")).into_response(),
    }
}

fn model_object(m: &crate::directory::NetworkModel) -> Value {
    json!({
        "id": m.manifest.name, "object": "model", "created": 0, "owned_by": "plexus",
        "plexus": {
            "model_id": m.id, "engine": m.manifest.engine, "providers": m.providers,
            "cheapest_output_per_1k": m.cheapest_output_per_1k.to_string(), "manifest": m.manifest,
        },
    })
}

async fn health(State(app): State<Shared_>) -> Response {
    axum::Json(json!({
        "status": "ok", "providers": app.directory.provider_count(), "ready": app.servable_models() > 0,
    }))
    .into_response()
}

async fn metrics(State(app): State<Shared_>) -> Response {
    let (spent, deposited) = app.sessions.spending();
    app.metrics.set_spend(spent, deposited);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], app.metrics.render())
        .into_response()
}

async fn status(State(app): State<Shared_>) -> Response {
    let sessions: Vec<Value> = app
        .sessions
        .all()
        .into_iter()
        .map(|s| {
            json!({
                "id": s.id, "provider": s.provider, "model": s.model, "deposit": s.deposit.to_string(),
                "seq": s.seq, "cum_input_tokens": s.cum_input_tokens, "cum_output_tokens": s.cum_output_tokens,
                "cum_amount": s.cum_amount.to_string(), "expiry_height": s.expiry_height,
                "receipt_delivered": s.delivered, "retired": s.retired,
                "provider_lies": app.directory.lies(&s.provider),
            })
        })
        .collect();
    axum::Json(json!({
        "client": app.sessions.client(), "providers": app.directory.provider_count(), "sessions": sessions,
        "budget": app.sessions.budget_view(),
        "audits": {
            "rate": app.config.audit.rate, "counts": app.auditor.counts(), "recent": app.auditor.findings(),
        },
        "probes": {
            "interval_s": app.config.probe_interval.as_secs(), "providers": app.directory.probe_view(),
        },
        // Providers that failed or lied with a model lately (none: every provider in good standing).
        "standing": app.directory.standing_view(),
        "servable_models": app.servable_models(),
    }))
    .into_response()
}

async fn close(State(app): State<Shared_>, _headers: HeaderMap) -> Response {
    app.sessions.close_all().await;
    status(State(app)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_continuing_provider_offsets_count_from_the_whole_answer() {
        let own = json!({ "tokens": ["a", "bc"], "token_logprobs": [-0.1, -0.2], "top_logprobs": [{}, {}], "text_offset": [0, 1] });
        assert_eq!(continue_offsets(own.clone(), 0), own);
        let moved = continue_offsets(own.clone(), 40);
        assert_eq!(moved["text_offset"], json!([40, 41]));
        assert_eq!(moved["tokens"], own["tokens"], "nothing else changes");
        // Chat entries carry no offsets; a value that is not a count is left as the provider sent it.
        let chat = json!({ "content": [{ "token": "a", "logprob": -0.1 }] });
        assert_eq!(continue_offsets(chat.clone(), 7), chat);
        assert_eq!(
            continue_offsets(json!({ "text_offset": ["x", u64::MAX] }), 7)["text_offset"],
            json!(["x", u64::MAX])
        );
    }
}
