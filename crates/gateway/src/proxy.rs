//! The OpenAI-compatible routes the app talks to, and how each request is carried to a
//! provider: pick one, use (or open) the session with it, forward, verify the signed
//! attestation, acknowledge the tokens with a receipt, and on failure try another provider.
//!
//! Streams fail over in the middle: if a provider's stream breaks, the text delivered so far
//! becomes the prefix of a continuation request (`continue_final_message` for chat, the
//! extended prompt for completions) to the next provider, and the app keeps reading one
//! stream with one id. Each provider is acknowledged exactly for the tokens it delivered.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use plexus_types::{Attestation, Hash, Sig};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::chain::ChainClient;
use crate::directory::{Candidate, Directory};
use crate::metrics::Metrics;
use crate::session::{Sessions, Shared};
use crate::sse::Events;
use crate::{GatewayConfig, GatewayError};

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

/// Chunks buffered towards a slow app before the upstream read waits.
const APP_CHANNEL_CHUNKS: usize = 64;

pub(crate) struct App {
    pub(crate) config: GatewayConfig,
    pub(crate) chain: Arc<ChainClient>,
    pub(crate) directory: Arc<Directory>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) http: reqwest::Client,
    pub(crate) stream_http: reqwest::Client,
    pub(crate) metrics: Metrics,
    pub(crate) started: u64,
    pub(crate) next_id: AtomicU64,
}

type Shared_ = Arc<App>;

pub(crate) fn router(app: Arc<App>) -> Router {
    let limit = app.config.request_bytes_max;
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/plexus/v1/status", get(status))
        .route("/plexus/v1/close", post(close))
        .fallback(|| async { GatewayError::bad("path", "no such route on the gateway").into_response() })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wire {
    Chat,
    Completion,
    Embedding,
}

impl Wire {
    fn path(self) -> &'static str {
        match self {
            Wire::Chat => "/v1/chat/completions",
            Wire::Completion => "/v1/completions",
            Wire::Embedding => "/v1/embeddings",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Wire::Chat => "chat_completions",
            Wire::Completion => "completions",
            Wire::Embedding => "embeddings",
        }
    }
}

fn parse_body(limit: usize, body: Result<Bytes, BytesRejection>) -> Result<Value, GatewayError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            GatewayError::BadRequest { message: format!("the request body is larger than {limit} bytes"), param: None }
        } else {
            GatewayError::BadRequest { message: r.body_text(), param: None }
        }
    })?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| GatewayError::BadRequest {
        message: format!("the request body is not valid JSON: {e}"),
        param: None,
    })?;
    if !v.is_object() {
        return Err(GatewayError::BadRequest { message: "the request body must be a JSON object".into(), param: None });
    }
    Ok(v)
}

impl App {
    /// Providers for `model`, refreshing the directory once if none is known.
    async fn candidates(&self, model: &str) -> Result<Vec<Candidate>, GatewayError> {
        let found = self.directory.candidates(model, &self.config.constraints);
        if !found.is_empty() {
            return Ok(found);
        }
        if let Err(e) = self.directory.refresh(&self.chain).await {
            warn!(target: "gateway", "cannot refresh providers: {e}");
        }
        let found = self.directory.candidates(model, &self.config.constraints);
        if found.is_empty() {
            let known: Vec<String> =
                self.directory.models(&self.config.constraints).into_iter().map(|m| m.manifest.name).collect();
            return Err(GatewayError::NoProvider(format!(
                "no provider serves the model `{model}`{} (available: {})",
                self.config.constraints.region.as_ref().map(|r| format!(" in region {r}")).unwrap_or_default(),
                if known.is_empty() { "none".into() } else { known.join(", ") }
            )));
        }
        Ok(found)
    }

    fn request_headers(&self, s: &Shared) -> reqwest::header::HeaderMap {
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
        put(H_PROGRESS, "1");
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
        };
        format!("{prefix}-plexus-{:x}{n:08x}", self.started)
    }
}

/// Reads and checks a provider's attestation of one response.
fn verify_attestation(
    chain_id: &str,
    c: &Candidate,
    attestation_hex: &str,
    signature: &str,
    output: Option<&str>,
) -> Result<Attestation, String> {
    let att = Attestation::from_hex(attestation_hex)?;
    let sig: Sig = signature.parse()?;
    if !att.verify(&c.provider, &sig, chain_id) {
        return Err("the attestation is not signed by the provider".into());
    }
    if att.model != c.model {
        return Err(format!("the attestation names model {}, not {}", att.model, c.model));
    }
    if let Some(text) = output {
        if att.output_hash != plexus_types::hash(text.as_bytes()) {
            return Err("the attestation's output hash does not match the text received".into());
        }
    }
    Ok(att)
}

enum Attempt {
    /// The provider answered; pass this to the app.
    Done(Response),
    /// Try another provider.
    Retry(String),
}

// ---- non-streamed requests (chat, completions, embeddings) ----

async fn forward_once(app: &Arc<App>, wire: Wire, c: &Candidate, body: &Value) -> Result<Attempt, GatewayError> {
    let s = match app.sessions.for_candidate(c).await {
        Ok(s) => s,
        Err(e @ GatewayError::Funds(_)) => return Err(e),
        Err(e) => return Ok(Attempt::Retry(format!("session with {}: {e}", c.provider))),
    };
    for round in 0..2 {
        let url = format!("{}{}", c.endpoint, wire.path());
        app.directory.started(&c.provider);
        let started = Instant::now();
        let sent = app.http.post(&url).headers(app.request_headers(&s)).json(body).send().await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                app.directory.finished(&c.provider, None);
                return Ok(Attempt::Retry(format!("{url}: {e}")));
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                app.directory.finished(&c.provider, None);
                return Ok(Attempt::Retry(format!("{url}: {e}")));
            }
        };
        if status == StatusCode::UNAUTHORIZED && round == 0 {
            // The provider forgot our token (it restarted): authenticate again.
            app.directory.finished(&c.provider, Some(started.elapsed()));
            app.sessions.drop_token(&s);
            if let Err(e) = app.sessions.ensure_token(&s).await {
                return Ok(Attempt::Retry(format!("re-authenticating with {}: {e}", c.provider)));
            }
            continue;
        }
        if status == StatusCode::PAYMENT_REQUIRED && round == 0 {
            app.directory.finished(&c.provider, Some(started.elapsed()));
            app.sessions.deliver(&s).await;
            app.sessions.maybe_top_up(&s);
            continue;
        }
        if !status.is_success() {
            let client_error = status.is_client_error()
                && status != StatusCode::TOO_MANY_REQUESTS
                && status != StatusCode::PAYMENT_REQUIRED;
            app.directory.finished(&c.provider, if client_error { Some(started.elapsed()) } else { None });
            if client_error {
                // The app's request is at fault: the next provider would say the same.
                let mut r = (status, bytes).into_response();
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return Ok(Attempt::Done(r));
            }
            return Ok(Attempt::Retry(format!("{url}: HTTP {status}")));
        }
        app.directory.finished(&c.provider, Some(started.elapsed()));
        let text_of = |v: &Value| -> Option<String> {
            match wire {
                Wire::Chat => v["choices"][0]["message"]["content"].as_str().map(String::from),
                Wire::Completion => v["choices"][0]["text"].as_str().map(String::from),
                Wire::Embedding => None,
            }
        };
        let parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let output = text_of(&parsed);
        let hv = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        let attestation =
            verify_attestation(app.sessions.chain_id(), c, hv(H_ATTESTATION), hv(H_SIGNATURE), output.as_deref());
        let (input, output_tokens, att_hash) = match &attestation {
            Ok(att) => (u64::from(att.input_tokens), u64::from(att.output_tokens), Some(att.hash())),
            Err(e) => {
                warn!(target: "gateway::verify", provider = %c.provider, "{e}");
                app.metrics.attestation_failures.inc();
                let u = &parsed["usage"];
                (u["prompt_tokens"].as_u64().unwrap_or(0), u["completion_tokens"].as_u64().unwrap_or(0), None)
            }
        };
        app.sessions.acknowledge(&s, input, output_tokens, att_hash);
        app.metrics.receipts_signed.inc();
        app.metrics.tokens(input, output_tokens);
        app.deliver_later(&s);
        app.sessions.maybe_top_up(&s);
        let mut r = (StatusCode::OK, bytes).into_response();
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

async fn forward(app: Arc<App>, wire: Wire, body: Value) -> Result<Response, GatewayError> {
    let model = body["model"].as_str().ok_or_else(|| GatewayError::bad("model", "`model` is required"))?.to_string();
    let candidates = app.candidates(&model).await?;
    let mut tried = Vec::new();
    let mut errors = Vec::new();
    for _ in 0..app.config.attempts_max {
        let Some(c) = app.directory.pick(&candidates, &tried) else { break };
        tried.push(c.provider.clone());
        match forward_once(&app, wire, &c, &body).await? {
            Attempt::Done(r) => return Ok(r),
            Attempt::Retry(why) => {
                debug!(target: "gateway", provider = %c.provider, "retrying elsewhere: {why}");
                app.metrics.failovers.inc();
                errors.push(why);
            }
        }
    }
    Err(GatewayError::Upstream(format!("every provider tried failed: {}", errors.join("; "))))
}

// ---- streams ----

/// A streamed request, with everything needed to continue it on another provider.
struct StreamJob {
    wire: Wire,
    body: Value,
    model: String,
    max_tokens: Option<u64>,
    include_usage: bool,
    id: String,
    created: u64,
}

impl StreamJob {
    /// The request to send to the next provider, continuing after `delivered`.
    fn continuation(&self, delivered: &str, completion_tokens: u64) -> Value {
        let mut body = self.body.clone();
        body["stream"] = json!(true);
        body["stream_options"] = json!({ "include_usage": true });
        if let Some(max) = self.max_tokens {
            let left = max.saturating_sub(completion_tokens).max(1);
            body["max_tokens"] = json!(left);
            if body.get("max_completion_tokens").is_some() {
                body["max_completion_tokens"] = json!(left);
            }
        }
        if delivered.is_empty() {
            return body;
        }
        match self.wire {
            Wire::Chat => {
                if let Some(messages) = body["messages"].as_array_mut() {
                    let continuing = body_continues(messages);
                    if continuing {
                        let last = messages.last_mut().expect("non-empty");
                        let prefix = last["content"].as_str().unwrap_or_default().to_string();
                        last["content"] = json!(format!("{prefix}{delivered}"));
                    } else {
                        messages.push(json!({ "role": "assistant", "content": delivered }));
                    }
                }
                body["continue_final_message"] = json!(true);
            }
            Wire::Completion => {
                let prompt = body["prompt"].as_str().unwrap_or_default().to_string();
                body["prompt"] = json!(format!("{prompt}{delivered}"));
            }
            Wire::Embedding => {}
        }
        body
    }

    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> String {
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
                    "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
                })
            }
            _ => json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{ "index": 0, "text": text.unwrap_or_default(), "logprobs": null, "finish_reason": finish }],
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

fn body_continues(messages: &[Value]) -> bool {
    messages.last().is_some_and(|m| m["role"] == "assistant")
}

/// One provider's part of a stream.
#[derive(Default)]
struct Segment {
    prompt: u64,
    completion: u64,
    text: String,
    acked_prompt: u64,
    acked_completion: u64,
    finish: Option<String>,
    attestation: Option<Attestation>,
    done: bool,
    chunks: u64,
    first_token: Option<Duration>,
    error: Option<String>,
    /// The provider refused for a reason the app must see (not a provider failure).
    client_error: Option<String>,
    /// The provider did not know our token (it restarted): authenticate and try it again.
    reauth: bool,
}

async fn stream_from(
    app: &Arc<App>,
    job: &StreamJob,
    c: &Candidate,
    s: &Shared,
    body: &Value,
    out: &mpsc::Sender<String>,
    role_sent: &mut bool,
) -> Segment {
    let mut seg = Segment::default();
    let url = format!("{}{}", c.endpoint, job.wire.path());
    let started = Instant::now();
    let response = match app.stream_http.post(&url).headers(app.request_headers(s)).json(body).send().await {
        Ok(r) => r,
        Err(e) => {
            seg.error = Some(format!("{url}: {e}"));
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
    loop {
        let data = match events.next().await {
            None => {
                seg.error = Some("the provider closed the stream early".into());
                break;
            }
            Some(Err(e)) => {
                seg.error = Some(e.to_string());
                break;
            }
            Some(Ok(d)) => d,
        };
        if data == "[DONE]" {
            seg.done = true;
            break;
        }
        let Ok(v) = serde_json::from_str::<Value>(&data) else { continue };
        if let Some(err) = v.get("error") {
            seg.error = Some(format!("the provider stopped: {}", err["message"].as_str().unwrap_or("error")));
            break;
        }
        if let Some(u) = v.get("plexus_usage") {
            seg.prompt = u["prompt_tokens"].as_u64().unwrap_or(seg.prompt);
            seg.completion = u["completion_tokens"].as_u64().unwrap_or(seg.completion).max(seg.completion);
        }
        if let Some(p) = v.get("plexus") {
            match verify_attestation(
                app.sessions.chain_id(),
                c,
                p["attestation_hex"].as_str().unwrap_or(""),
                p["signature"].as_str().unwrap_or(""),
                Some(&seg.text),
            ) {
                Ok(att) => seg.attestation = Some(att),
                Err(e) => {
                    warn!(target: "gateway::verify", provider = %c.provider, "{e}");
                    app.metrics.attestation_failures.inc();
                }
            }
        }
        if let Some(choice) = v["choices"].get(0) {
            let text = match job.wire {
                Wire::Chat => choice["delta"]["content"].as_str(),
                _ => choice["text"].as_str(),
            };
            if let Some(t) = text.filter(|t| !t.is_empty()) {
                seg.first_token.get_or_insert(started.elapsed());
                seg.text.push_str(t);
                seg.chunks += 1;
                let role = job.wire == Wire::Chat && !*role_sent;
                *role_sent = true;
                if out.send(job.chunk(Some(t), role, None)).await.is_err() {
                    seg.error = Some("the app went away".into());
                    break;
                }
            } else if job.wire == Wire::Chat && !*role_sent && choice["delta"]["role"].is_string() {
                *role_sent = true;
                let _ = out.send(job.chunk(Some(""), true, None)).await;
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                seg.finish = Some(f.to_string());
            }
        }
        // Acknowledge long streams as they go, so the provider's credit never runs out.
        if (seg.prompt + seg.completion).saturating_sub(seg.acked_prompt + seg.acked_completion) >= every {
            acknowledge_segment(app, s, &mut seg, None);
        }
    }
    seg
}

/// Signs a receipt for what `seg` delivered since its last one.
fn acknowledge_segment(app: &Arc<App>, s: &Shared, seg: &mut Segment, attestation: Option<Hash>) {
    let (p, c) = (seg.prompt.saturating_sub(seg.acked_prompt), seg.completion.saturating_sub(seg.acked_completion));
    if app.sessions.acknowledge(s, p, c, attestation).is_some() {
        app.metrics.receipts_signed.inc();
        app.metrics.tokens(p, c);
        app.deliver_later(s);
    }
    seg.acked_prompt = seg.prompt;
    seg.acked_completion = seg.completion;
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
        let Some(c) = app.directory.pick(&candidates, &tried) else { break None };
        tried.push(c.provider.clone());
        let s = match app.sessions.for_candidate(&c).await {
            Ok(s) => s,
            Err(e @ GatewayError::Funds(_)) => {
                let _ = out.send(e.body_json()).await;
                return;
            }
            Err(e) => {
                app.directory.finished(&c.provider, None);
                errors.push(format!("session with {}: {e}", c.provider));
                continue;
            }
        };
        let body = job.continuation(&delivered, completion_total);
        app.directory.started(&c.provider);
        let mut seg = stream_from(&app, &job, &c, &s, &body, &out, &mut role_sent).await;
        if seg.reauth && app.sessions.ensure_token(&s).await.is_ok() {
            seg = stream_from(&app, &job, &c, &s, &body, &out, &mut role_sent).await;
        }
        if let Some(e) = seg.client_error.take() {
            app.directory.finished(&c.provider, None);
            let message = serde_json::from_str::<Value>(&e).ok().map(|v| v.to_string()).unwrap_or(e);
            let _ = out.send(message).await;
            return;
        }
        // A provider cannot charge for more output than it sent text for.
        seg.completion = seg.completion.min(seg.text.len() as u64 + 2);
        if let Some(att) = &seg.attestation {
            if seg.done {
                seg.prompt = u64::from(att.input_tokens);
                seg.completion = u64::from(att.output_tokens).min(seg.text.len() as u64 + 2);
            }
        }
        let att_hash = seg.attestation.as_ref().filter(|_| seg.done).map(Attestation::hash);
        acknowledge_segment(&app, &s, &mut seg, att_hash);
        app.sessions.maybe_top_up(&s);
        app.directory.finished(&c.provider, if seg.done { seg.first_token.or(Some(Duration::ZERO)) } else { None });
        if seg.prompt + seg.completion == 0 && !seg.done {
            // Nothing was delivered: not a part of the answer.
            errors.push(seg.error.unwrap_or_default());
            app.metrics.failovers.inc();
            continue;
        }
        prompt_first.get_or_insert(seg.prompt);
        completion_total += seg.completion;
        delivered.push_str(&seg.text);
        segments.push(json!({
            "provider": c.provider, "region": c.region, "model_id": c.model, "prompt_tokens": seg.prompt,
            "completion_tokens": seg.completion, "complete": seg.done,
            "session": s.lock().expect("session lock").id,
        }));
        if seg.done {
            break Some(seg.finish.unwrap_or_else(|| "stop".into()));
        }
        let why = seg.error.unwrap_or_default();
        if why == "the app went away" {
            return;
        }
        info!(target: "gateway", provider = %c.provider, delivered = seg.completion, "stream broke ({why}); continuing on another provider");
        app.metrics.failovers.inc();
        errors.push(why);
        if job.max_tokens.is_some_and(|m| completion_total >= m) {
            break Some("length".into());
        }
    };
    match finish {
        Some(reason) => {
            if job.wire == Wire::Chat && !role_sent {
                let _ = out.send(job.chunk(Some(""), true, None)).await;
            }
            let _ = out.send(job.chunk(None, false, Some(&reason))).await;
            if job.include_usage {
                let _ = out.send(job.usage_chunk(prompt_first.unwrap_or(0), completion_total, &segments)).await;
            }
            let _ = out.send("[DONE]".into()).await;
        }
        None => {
            let e = GatewayError::Upstream(format!("every provider tried failed: {}", errors.join("; ")));
            let _ = out.send(e.body_json()).await;
        }
    }
}

async fn generate(app: Arc<App>, wire: Wire, body: Value) -> Result<Response, GatewayError> {
    app.metrics.request(wire.label());
    if !body["stream"].as_bool().unwrap_or(false) {
        return forward(app, wire, body).await;
    }
    let model = body["model"].as_str().ok_or_else(|| GatewayError::bad("model", "`model` is required"))?.to_string();
    if wire == Wire::Chat && !body["messages"].as_array().is_some_and(|m| !m.is_empty()) {
        return Err(GatewayError::bad("messages", "messages must be a non-empty array"));
    }
    if wire == Wire::Completion && !body["prompt"].is_string() {
        return Err(GatewayError::bad("prompt", "prompt must be one string"));
    }
    let candidates = app.candidates(&model).await?;
    let max_tokens = body["max_completion_tokens"].as_u64().or_else(|| body["max_tokens"].as_u64());
    let include_usage = body["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    let job = StreamJob {
        wire,
        model,
        max_tokens,
        include_usage,
        id: app.new_id(wire),
        created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        body,
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
    app.metrics.request(Wire::Embedding.label());
    let limit = app.config.request_bytes_max;
    match parse_body(limit, body) {
        Ok(v) => forward(app, Wire::Embedding, v).await.unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    }
}

async fn models(State(app): State<Shared_>) -> Response {
    if app.directory.provider_count() == 0 {
        let _ = app.directory.refresh(&app.chain).await;
    }
    let data: Vec<Value> = app
        .directory
        .models(&app.config.constraints)
        .into_iter()
        .map(|m| {
            json!({
                "id": m.manifest.name, "object": "model", "created": 0, "owned_by": "plexus",
                "plexus": {
                    "model_id": m.id, "engine": m.manifest.engine, "providers": m.providers,
                    "cheapest_output_per_1k": m.cheapest_output_per_1k.to_string(), "manifest": m.manifest,
                },
            })
        })
        .collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

async fn health(State(app): State<Shared_>) -> Response {
    axum::Json(json!({ "status": "ok", "client": app.sessions.client(), "providers": app.directory.provider_count() }))
        .into_response()
}

async fn metrics(State(app): State<Shared_>) -> Response {
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
            })
        })
        .collect();
    axum::Json(
        json!({ "client": app.sessions.client(), "providers": app.directory.provider_count(), "sessions": sessions }),
    )
    .into_response()
}

async fn close(State(app): State<Shared_>, _headers: HeaderMap) -> Response {
    app.sessions.close_all().await;
    status(State(app)).await
}
