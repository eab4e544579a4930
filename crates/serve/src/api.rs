//! Route handlers. Each request: parse (bounded body, JSON errors as 400), find the engine,
//! prepare (tokenize and check limits), meter, submit, then stream or collect, sign the
//! attestation and report usage.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use plexus_inference::{Engine, Event, Finish, FinishReason, GenerateRequest, Generation, TokenLogprob};
use plexus_types::{Address, Attestation, Hash, ModelId, PrivateKey, Sig};
use serde_json::Value;

use crate::dishonest::Lie;
use crate::metering::{Endpoint, MeterRequest, MeterTicket, Metering, Usage};
use crate::metrics::{Metrics, ModelLabel, RequestLabel};
use crate::openai::*;
use crate::{HEADER_ATTESTATION, HEADER_MODEL_ID, HEADER_PROVIDER, HEADER_SIGNATURE, ServeConfig, ServeError};

pub(crate) struct AppState {
    pub(crate) provider: Address,
    pub(crate) key: PrivateKey,
    pub(crate) engines: Vec<Arc<dyn Engine>>,
    pub(crate) metering: Arc<dyn Metering>,
    pub(crate) config: ServeConfig,
    pub(crate) metrics: Metrics,
    pub(crate) next_request: AtomicU64,
    pub(crate) started: u64,
    /// Always honest outside test builds ([`crate::dishonest`]).
    pub(crate) lie: crate::dishonest::Lie,
    /// Slots for open streams ([`crate::stream::STREAMS_MAX`]).
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
}

type Shared = Arc<AppState>;

pub(crate) fn router(state: Shared) -> Router {
    let limit = state.config.request_bytes_max;
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v2", get(crate::kserve::server_metadata))
        .route("/v2/health/live", get(crate::kserve::live))
        .route("/v2/health/ready", get(crate::kserve::ready))
        .route("/v2/models/{name}", get(crate::kserve::model_metadata))
        .route("/v2/models/{name}/ready", get(crate::kserve::model_ready))
        .route("/v2/models/{name}/infer", post(crate::kserve::infer))
        .route("/v2/models/{name}/versions/{version}", get(crate::kserve::version_metadata))
        .route("/v2/models/{name}/versions/{version}/ready", get(crate::kserve::version_ready))
        .route("/v2/models/{name}/versions/{version}/infer", post(crate::kserve::version_infer))
        .route("/v2/models/{name}/stream", get(crate::stream::handler::stream))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl AppState {
    fn engine(&self, name: &str) -> Result<Arc<dyn Engine>, ServeError> {
        self.engines
            .iter()
            .find(|e| e.info().name == name || e.info().id.to_string() == name)
            .cloned()
            .ok_or_else(|| ServeError::ModelNotFound(name.to_owned()))
    }

    pub(crate) fn count_request(&self, endpoint: &str) {
        self.metrics.requests.get_or_create(&RequestLabel { endpoint: endpoint.to_owned() }).inc();
    }

    fn fail(&self, e: ServeError) -> Response {
        let e = match e {
            ServeError::Busy { message, .. } => {
                ServeError::Busy { message, retry_after_secs: self.config.retry_after_secs }
            }
            e => e,
        };
        self.metrics.error(e.kind_label());
        e.into_response()
    }

    fn identity_headers(&self, model: &ModelId) -> HeaderMap {
        let mut h = HeaderMap::new();
        insert_hex(&mut h, HEADER_MODEL_ID, model.to_string());
        insert_hex(&mut h, HEADER_PROVIDER, self.provider.to_string());
        h
    }

    pub(crate) fn attestation_headers(&self, model: &ModelId, attestation: &Attestation, signature: &Sig) -> HeaderMap {
        let mut h = self.identity_headers(model);
        if self.lie == Lie::Strip {
            return h;
        }
        insert_hex(&mut h, HEADER_ATTESTATION, hex::encode(plexus_types::codec::to_vec(attestation)));
        insert_hex(&mut h, HEADER_SIGNATURE, signature.to_string());
        h
    }

    fn plexus_block(&self, attestation: Attestation, signature: &Sig, output_ids: Option<Vec<i32>>) -> PlexusBlock {
        let output_ids = match (self.lie, output_ids) {
            (Lie::Pad, Some(mut ids)) => {
                let more = ids.clone();
                ids.extend(more);
                Some(ids)
            }
            (_, ids) => ids,
        };
        PlexusBlock {
            attestation_hex: hex::encode(plexus_types::codec::to_vec(&attestation)),
            model_id: attestation.model.to_string(),
            attestation,
            signature: signature.to_string(),
            provider: self.provider.to_string(),
            output_ids,
        }
    }

    /// The bytes of a parsed body, or the error for a body that could not be read.
    pub(crate) fn bytes(&self, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ServeError> {
        body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ServeError::PayloadTooLarge { limit: self.config.request_bytes_max }
            } else {
                ServeError::BadRequest { message: rejection.body_text(), param: None, code: None }
            }
        })
    }
}

fn insert_hex(h: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

// ---- one request's accounting ----

/// Tracks one generation: timing metrics, metering progress, and the final (or partial)
/// attestation. Dropping it before completion reports a partial, signed usage to metering.
struct Session {
    state: Shared,
    model: ModelId,
    label: ModelLabel,
    ticket: Option<MeterTicket>,
    request_hash: Hash,
    prompt_tokens: u32,
    text: String,
    /// Ids of the tokens whose text went out (a partial attestation commits to these).
    ids: Vec<i32>,
    completion_tokens: u32,
    next_meter: u32,
    started: Instant,
    last_token: Option<Instant>,
}

impl Session {
    fn new(
        state: Shared,
        model: ModelId,
        name: &str,
        ticket: MeterTicket,
        request_hash: Hash,
        prompt_tokens: u32,
        started: Instant,
    ) -> Self {
        let next_meter = state.config.meter_every_tokens.get();
        Session {
            state,
            model,
            label: Metrics::model(name),
            ticket: Some(ticket),
            request_hash,
            prompt_tokens,
            text: String::new(),
            ids: Vec::new(),
            completion_tokens: 0,
            next_meter,
            started,
            last_token: None,
        }
    }

    /// Records new text; an error from metering ends the generation. Metering is asked first,
    /// so text it refuses is neither sent nor counted: a partial attestation covers exactly
    /// what the client received.
    fn on_text(&mut self, text: &str, completion_tokens: u32, ids: &[i32]) -> Result<(), ServeError> {
        if completion_tokens >= self.next_meter {
            if let Some(ticket) = &self.ticket {
                self.state.metering.progress(ticket, self.prompt_tokens, completion_tokens)?;
            }
            let every = self.state.config.meter_every_tokens.get();
            while self.next_meter <= completion_tokens {
                self.next_meter = self.next_meter.saturating_add(every);
            }
        }
        let now = Instant::now();
        let new_tokens = completion_tokens.saturating_sub(self.completion_tokens);
        match self.last_token {
            None => {
                self.state
                    .metrics
                    .time_to_first_token
                    .get_or_create(&self.label)
                    .observe((now - self.started).as_secs_f64());
            }
            Some(last) if new_tokens > 0 => {
                let each = (now - last).as_secs_f64() / f64::from(new_tokens);
                let h = self.state.metrics.inter_token_latency.get_or_create(&self.label);
                for _ in 0..new_tokens {
                    h.observe(each);
                }
            }
            Some(_) => {}
        }
        self.last_token = Some(now);
        self.completion_tokens = completion_tokens;
        self.text.push_str(text);
        self.ids.extend_from_slice(ids);
        Ok(())
    }

    fn sign(&self, output: &str, ids: &[i32], logits_fingerprint: Hash) -> (Attestation, Sig) {
        let inflate = if self.state.lie == Lie::Inflate { 100 } else { 1 };
        let attestation = Attestation {
            request_hash: self.request_hash,
            output_hash: plexus_types::hash(output.as_bytes()),
            model: self.model,
            input_tokens: self.prompt_tokens.saturating_mul(inflate),
            output_tokens: (ids.len() as u32).saturating_mul(inflate),
            output_ids_hash: plexus_types::receipt::output_ids_hash(ids),
            logits_fingerprint,
        };
        let signature = match self.state.lie {
            Lie::Forge => attestation.sign(&PrivateKey::from_seed(666), &self.state.config.chain_id),
            _ => attestation.sign(&self.state.key, &self.state.config.chain_id),
        };
        (attestation, signature)
    }

    fn report(&mut self, usage: Usage, attestation: &Attestation, signature: &Sig) {
        self.state.metrics.prompt_tokens.get_or_create(&self.label).inc_by(u64::from(usage.prompt_tokens));
        self.state.metrics.completion_tokens.get_or_create(&self.label).inc_by(u64::from(usage.completion_tokens));
        if let Some(ticket) = self.ticket.take() {
            self.state.metering.finish(ticket, &usage, attestation, signature);
        }
    }

    /// The generation finished: sign it and report complete usage.
    fn complete(&mut self, finish: &Finish) -> (Attestation, Sig) {
        if self.last_token.is_none() {
            // Nothing was streamed (e.g. an immediate end of turn): TTFT is now.
            self.state
                .metrics
                .time_to_first_token
                .get_or_create(&self.label)
                .observe(self.started.elapsed().as_secs_f64());
        }
        let (attestation, signature) = self.sign(&finish.text, &finish.tokens, finish.logits_fingerprint);
        let usage = Usage {
            prompt_tokens: finish.prompt_tokens,
            completion_tokens: finish.completion_tokens,
            cached_tokens: finish.cached_tokens,
            complete: true,
        };
        self.report(usage, &attestation, &signature);
        (attestation, signature)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            let (attestation, signature) = self.sign(&self.text.clone(), &self.ids.clone(), Hash::ZERO);
            let usage = Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: self.ids.len() as u32,
                cached_tokens: 0,
                complete: false,
            };
            self.report(usage, &attestation, &signature);
        }
    }
}

// ---- text generation ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wire {
    Chat,
    Completion,
}

/// Everything needed to shape one response's chunks.
struct Shape {
    wire: Wire,
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    include_usage: bool,
    /// Annotate chunks with running token counts ([`crate::HEADER_PROGRESS`]).
    progress: bool,
    /// The request asked for log-probabilities.
    logprobs: bool,
}

fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

impl Shape {
    fn to_json<T: serde::Serialize>(value: &T) -> String {
        serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
    }

    /// A choice's `logprobs` for `entries` in this wire's shape; `None` (null) when the request
    /// asked for none. `chars` counts the characters before them (completions' offsets).
    fn logprobs(&self, entries: &[TokenLogprob], chars: &mut usize) -> Option<Value> {
        self.logprobs.then(|| match self.wire {
            Wire::Chat => chat_logprobs(entries),
            Wire::Completion => completion_logprobs(entries, chars),
        })
    }

    /// One streamed chunk.
    #[allow(clippy::too_many_arguments)]
    fn chunk(
        &self,
        text: Option<String>,
        role: bool,
        finish: Option<&'static str>,
        plexus: Option<PlexusBlock>,
        counts: Option<ProgressBlock>,
        logprobs: Option<Value>,
    ) -> String {
        let plexus_usage = if self.progress { counts } else { None };
        let usage = self.include_usage.then_some(None);
        match self.wire {
            Wire::Chat => Self::to_json(&ChatChunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                system_fingerprint: &self.fingerprint,
                choices: vec![ChunkChoice {
                    index: 0,
                    delta: Delta { role: role.then_some("assistant"), content: text },
                    logprobs,
                    finish_reason: finish,
                }],
                usage,
                plexus,
                plexus_usage,
            }),
            Wire::Completion => Self::to_json(&TextCompletion {
                id: &self.id,
                object: "text_completion",
                created: self.created,
                model: &self.model,
                system_fingerprint: &self.fingerprint,
                choices: vec![CompletionChoice {
                    index: 0,
                    text: text.unwrap_or_default(),
                    logprobs,
                    finish_reason: finish,
                }],
                usage,
                plexus,
                plexus_usage,
            }),
        }
    }

    /// The final usage chunk (`choices` empty), sent when the client asked for usage.
    fn usage_chunk(&self, usage: UsageBody, plexus: PlexusBlock) -> String {
        match self.wire {
            Wire::Chat => Self::to_json(&ChatChunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                system_fingerprint: &self.fingerprint,
                choices: vec![],
                usage: Some(Some(usage)),
                plexus: Some(plexus),
                plexus_usage: None,
            }),
            Wire::Completion => Self::to_json(&TextCompletion {
                id: &self.id,
                object: "text_completion",
                created: self.created,
                model: &self.model,
                system_fingerprint: &self.fingerprint,
                choices: vec![],
                usage: Some(Some(usage)),
                plexus: Some(plexus),
                plexus_usage: None,
            }),
        }
    }

    /// The whole non-streamed response body.
    fn full(&self, finish: &Finish, plexus: Option<PlexusBlock>) -> String {
        let usage = UsageBody::new(finish.prompt_tokens, finish.completion_tokens, finish.cached_tokens);
        let logprobs = self.logprobs(&finish.logprobs, &mut 0);
        match self.wire {
            Wire::Chat => Self::to_json(&ChatCompletion {
                id: self.id.clone(),
                object: "chat.completion",
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: self.fingerprint.clone(),
                choices: vec![ChatChoice {
                    index: 0,
                    message: AssistantMessage { role: "assistant", content: finish.text.clone(), refusal: None },
                    logprobs,
                    finish_reason: finish_reason(finish.reason),
                }],
                usage,
                plexus,
            }),
            Wire::Completion => Self::to_json(&TextCompletion {
                id: &self.id,
                object: "text_completion",
                created: self.created,
                model: &self.model,
                system_fingerprint: &self.fingerprint,
                choices: vec![CompletionChoice {
                    index: 0,
                    text: finish.text.clone(),
                    logprobs,
                    finish_reason: Some(finish_reason(finish.reason)),
                }],
                usage: Some(Some(usage)),
                plexus,
                plexus_usage: None,
            }),
        }
    }
}

async fn chat(State(state): State<Shared>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    state.count_request("chat_completions");
    let result = async {
        let parsed = crate::openai::parse_chat(&state.bytes(body)?)?;
        let engine = state.engine(&parsed.model)?;
        if parsed.n > 1 {
            return several(&state, engine, &headers, parsed, Wire::Chat, started).await;
        }
        generate(&state, engine, &headers, parsed.request, parsed.stream, parsed.include_usage, Wire::Chat, started)
            .await
    }
    .await;
    result.unwrap_or_else(|e| state.fail(e))
}

async fn completions(State(state): State<Shared>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    state.count_request("completions");
    let result = async {
        let parsed = crate::openai::parse_completion(&state.bytes(body)?)?;
        let engine = state.engine(&parsed.model)?;
        if parsed.n > 1 {
            return several(&state, engine, &headers, parsed, Wire::Completion, started).await;
        }
        generate(
            &state,
            engine,
            &headers,
            parsed.request,
            parsed.stream,
            parsed.include_usage,
            Wire::Completion,
            started,
        )
        .await
    }
    .await;
    result.unwrap_or_else(|e| state.fail(e))
}

/// A request for `n` > 1 choices (never streamed): each choice is its own generation, run at
/// once beside the others (the engine batches them and the prompt's cache serves them all),
/// metered and attested on its own, with the seed plus its index. The answer joins them
/// ([`crate::openai::merge_choices`]); its headers are the first choice's, and every choice
/// carries its own `plexus` block. One failed choice fails the request.
async fn several(
    state: &Shared,
    engine: Arc<dyn Engine>,
    headers: &HeaderMap,
    parsed: crate::openai::ParsedGeneration,
    wire: Wire,
    started: Instant,
) -> Result<Response, ServeError> {
    let choices = (0..parsed.n).map(|i| {
        let mut request = parsed.request.clone();
        request.sampling = request.sampling.for_choice(i);
        let engine = engine.clone();
        async move {
            let response = generate(state, engine, headers, request, false, false, wire, started).await?;
            let (parts, body) = response.into_parts();
            // The body is this server's own JSON, bounded by the request's max_tokens.
            let bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .map_err(|e| ServeError::Internal(format!("reading a choice's answer: {e}")))?;
            let answer: Value = serde_json::from_slice(&bytes)
                .map_err(|e| ServeError::Internal(format!("a choice's answer is not JSON: {e}")))?;
            Ok::<_, ServeError>((parts.headers, answer))
        }
    });
    let mut answers = Vec::with_capacity(parsed.n as usize);
    let mut first_headers = None;
    for result in futures::future::join_all(choices).await {
        let (headers, answer) = result?;
        first_headers.get_or_insert(headers);
        answers.push(answer);
    }
    let mut headers = first_headers.unwrap_or_default();
    headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_string(&crate::openai::merge_choices(answers))
        .map_err(|e| ServeError::Internal(format!("joining choices: {e}")))?;
    Ok((headers, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[allow(clippy::too_many_arguments)]
async fn generate(
    state: &Shared,
    engine: Arc<dyn Engine>,
    headers: &HeaderMap,
    request: GenerateRequest,
    stream: bool,
    include_usage: bool,
    wire: Wire,
    started: Instant,
) -> Result<Response, ServeError> {
    let info = engine.info().clone();
    let asked_logprobs = request.logprobs.is_some();
    if !info.kind.generates_text() {
        return Err(ServeError::bad("model", format!("model `{}` does not generate text", info.name)));
    }
    // Rendering and tokenizing can take a few milliseconds on long prompts; keep them off the
    // async workers.
    let prep_engine = engine.clone();
    let prepared = tokio::task::spawn_blocking(move || prep_engine.prepare(request))
        .await
        .map_err(|e| ServeError::Internal(format!("prepare task: {e}")))??;
    let request_id = state.next_request.fetch_add(1, Ordering::Relaxed);
    let ticket = state.metering.begin(&MeterRequest {
        request_id,
        model: info.id,
        endpoint: match wire {
            Wire::Chat => Endpoint::ChatCompletions,
            Wire::Completion => Endpoint::Completions,
        },
        headers,
        prompt_tokens: prepared.prompt_tokens(),
        max_tokens: prepared.max_tokens,
    })?;
    let session = Session::new(
        state.clone(),
        info.id,
        &info.name,
        ticket,
        prepared.request_hash,
        prepared.prompt_tokens(),
        started,
    );
    let generation = engine.submit(crate::dishonest::tamper(state.lie, prepared))?;
    let shape = Shape {
        wire,
        id: format!("{}-{:x}{:08x}", if wire == Wire::Chat { "chatcmpl" } else { "cmpl" }, state.started, request_id),
        created: now_secs(),
        model: info.name.clone(),
        fingerprint: format!("plexus-{}", &info.id.to_string()[..16]),
        include_usage,
        progress: headers.contains_key(crate::HEADER_PROGRESS),
        logprobs: asked_logprobs,
    };
    if stream {
        let headers = state.identity_headers(&info.id);
        let keep_alive = KeepAlive::new().interval(Duration::from_secs(state.config.keep_alive_secs.max(1)));
        let sse = Sse::new(stream_events(state.clone(), session, generation, shape)).keep_alive(keep_alive);
        return Ok((headers, sse).into_response());
    }
    let (finish, attestation, signature) = collect(session, generation).await?;
    let headers = state.attestation_headers(&info.id, &attestation, &signature);
    let plexus =
        (state.lie != Lie::Strip).then(|| state.plexus_block(attestation, &signature, Some(finish.tokens.clone())));
    Ok((headers, [(header::CONTENT_TYPE, "application/json")], shape.full(&finish, plexus)).into_response())
}

async fn collect(mut session: Session, mut generation: Generation) -> Result<(Finish, Attestation, Sig), ServeError> {
    loop {
        match generation.next().await {
            Some(Event::Text { text, completion_tokens, ids, .. }) => {
                session.on_text(&text, completion_tokens, &ids)?
            }
            Some(Event::Done(finish)) => {
                let (a, s) = session.complete(&finish);
                return Ok((finish, a, s));
            }
            Some(Event::Failed(e)) => return Err(e.into()),
            None => return Err(plexus_inference::Error::EngineStopped.into()),
        }
    }
}

fn stream_events(
    state: Shared,
    mut session: Session,
    mut generation: Generation,
    shape: Shape,
) -> impl futures::Stream<Item = Result<SseEvent, Infallible>> {
    async_stream::stream! {
        if shape.wire == Wire::Chat {
            let counts = ProgressBlock { prompt_tokens: session.prompt_tokens, completion_tokens: 0, ids: Vec::new() };
            yield Ok(SseEvent::default().data(shape.chunk(Some(String::new()), true, None, None, Some(counts), None)));
        }
        let mut last = (String::new(), Vec::new());
        // Characters streamed so far (completions' logprob offsets).
        let mut chars = 0;
        loop {
            match generation.next().await {
                Some(Event::Text { text, completion_tokens, ids, logprobs }) => {
                    if let Err(e) = session.on_text(&text, completion_tokens, &ids) {
                        state.metrics.error(e.kind_label());
                        yield Ok(SseEvent::default().data(e.body_json()));
                        break;
                    }
                    let ids = if state.lie == Lie::Strip { Vec::new() } else { ids };
                    last = (text.clone(), ids.clone());
                    let counts = ProgressBlock { prompt_tokens: session.prompt_tokens, completion_tokens, ids };
                    let logprobs = shape.logprobs(&logprobs, &mut chars);
                    yield Ok(SseEvent::default().data(shape.chunk(Some(text), false, None, None, Some(counts), logprobs)));
                }
                Some(Event::Done(_)) if state.lie == Lie::Endless => {
                    // A stream that never ends, each chunk spelled by real ids.
                    loop {
                        let counts = ProgressBlock { prompt_tokens: session.prompt_tokens, completion_tokens: 0, ids: last.1.clone() };
                        yield Ok(SseEvent::default().data(shape.chunk(Some(last.0.clone()), false, None, None, Some(counts), None)));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                Some(Event::Done(finish)) if state.lie == Lie::Strip => {
                    session.complete(&finish);
                    yield Ok(SseEvent::default().data(shape.chunk(None, false, Some(finish_reason(finish.reason)), None, None, None)));
                    yield Ok(SseEvent::default().data("[DONE]"));
                    break;
                }
                Some(Event::Done(finish)) => {
                    let (attestation, signature) = session.complete(&finish);
                    let plexus = state.plexus_block(attestation, &signature, Some(finish.tokens.clone()));
                    let reason = finish_reason(finish.reason);
                    if shape.include_usage {
                        yield Ok(SseEvent::default().data(shape.chunk(None, false, Some(reason), None, None, None)));
                        let usage = UsageBody::new(finish.prompt_tokens, finish.completion_tokens, finish.cached_tokens);
                        yield Ok(SseEvent::default().data(shape.usage_chunk(usage, plexus)));
                    } else {
                        yield Ok(SseEvent::default().data(shape.chunk(None, false, Some(reason), Some(plexus), None, None)));
                    }
                    yield Ok(SseEvent::default().data("[DONE]"));
                    break;
                }
                Some(Event::Failed(e)) => {
                    let e = ServeError::from(e);
                    state.metrics.error(e.kind_label());
                    yield Ok(SseEvent::default().data(e.body_json()));
                    break;
                }
                None => {
                    let e = ServeError::from(plexus_inference::Error::EngineStopped);
                    state.metrics.error(e.kind_label());
                    yield Ok(SseEvent::default().data(e.body_json()));
                    break;
                }
            }
        }
        // Dropping `generation` here (or when the client goes away) cancels the request.
    }
}

// ---- embeddings ----

async fn embeddings(State(state): State<Shared>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    state.count_request("embeddings");
    let result = async {
        let req = crate::openai::parse_embeddings(&state.bytes(body)?)?;
        let engine = state.engine(&req.model)?;
        let info = engine.info().clone();
        let Some(dims) = info.embedding_dims else {
            return Err(ServeError::bad("model", format!("model `{}` does not produce embeddings", info.name)));
        };
        if req.dimensions.is_some_and(|d| d as usize != dims) {
            return Err(ServeError::bad(
                "dimensions",
                format!("this model's embeddings have exactly {dims} dimensions"),
            ));
        }
        let (inputs, base64) = (req.inputs, req.base64);
        let request_id = state.next_request.fetch_add(1, Ordering::Relaxed);
        let tokens_max = u64::from(info.request_tokens_max);
        let bound: u64 = inputs.iter().map(|s| (s.len() as u64 + 2).min(tokens_max)).sum();
        let ticket = state.metering.begin(&MeterRequest {
            request_id,
            model: info.id,
            endpoint: Endpoint::Embeddings,
            headers: &headers,
            prompt_tokens: bound.min(u64::from(u32::MAX)) as u32,
            max_tokens: 0,
        })?;
        let embed_engine = engine.clone();
        let result = tokio::task::spawn_blocking(move || embed_engine.embed(&inputs))
            .await
            .map_err(|e| ServeError::Internal(format!("embedding task: {e}")))
            .and_then(|r| r.map_err(ServeError::from));
        let (attestation, usage) = match &result {
            Ok(e) => (
                batch_attestation(info.id, e.request_hash, e.output_hash, e.prompt_tokens, 0),
                Usage { prompt_tokens: e.prompt_tokens, completion_tokens: 0, cached_tokens: 0, complete: true },
            ),
            // Failed: nothing delivered, but metering still hears of the end.
            Err(_) => (batch_attestation(info.id, Hash::ZERO, Hash::ZERO, 0, 0), Usage::default()),
        };
        let signature = attestation.sign(&state.key, &state.config.chain_id);
        state.metrics.prompt_tokens.get_or_create(&Metrics::model(&info.name)).inc_by(u64::from(usage.prompt_tokens));
        state.metering.finish(ticket, &usage, &attestation, &signature);
        let emb = result?;
        let data = emb
            .vectors
            .into_iter()
            .enumerate()
            .map(|(i, v)| EmbeddingData {
                object: "embedding",
                index: i as u32,
                embedding: if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    EmbeddingVector::Base64(crate::openai::base64(&bytes))
                } else {
                    EmbeddingVector::Float(v)
                },
            })
            .collect();
        let body = EmbeddingList {
            object: "list",
            data,
            model: info.name.clone(),
            usage: EmbeddingUsage { prompt_tokens: emb.prompt_tokens, total_tokens: emb.prompt_tokens },
        };
        let headers = state.attestation_headers(&info.id, &attestation, &signature);
        Ok((headers, [(header::CONTENT_TYPE, "application/json")], Shape::to_json(&body)).into_response())
    }
    .await;
    result.unwrap_or_else(|e| state.fail(e))
}

/// The attestation of a one-shot request (embeddings, tensor inference): no token ids and no
/// logits probes. With zero hashes and counts it attests that nothing was delivered.
pub(crate) fn batch_attestation(
    model: ModelId,
    request_hash: Hash,
    output_hash: Hash,
    input_tokens: u32,
    output_tokens: u32,
) -> Attestation {
    Attestation {
        request_hash,
        output_hash,
        model,
        input_tokens,
        output_tokens,
        output_ids_hash: Hash::ZERO,
        logits_fingerprint: Hash::ZERO,
    }
}

// ---- models, health, metrics ----

fn model_object(state: &AppState, e: &Arc<dyn Engine>) -> ModelObject {
    let info = e.info();
    ModelObject {
        id: info.name.clone(),
        object: "model",
        created: state.started,
        owned_by: "plexus",
        plexus: serde_json::json!({
            "model_id": info.id.to_string(),
            "engine": info.kind,
            "request_tokens_max": info.request_tokens_max,
            "embedding_dims": info.embedding_dims,
            "manifest": info.manifest,
            "provider": state.provider.to_string(),
        }),
    }
}

async fn models(State(state): State<Shared>) -> Response {
    let data = state.engines.iter().map(|e| model_object(&state, e)).collect();
    let body = ModelList { object: "list", data };
    ([(header::CONTENT_TYPE, "application/json")], Shape::to_json(&body)).into_response()
}

async fn model(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    match state.engine(&id) {
        Ok(e) => {
            ([(header::CONTENT_TYPE, "application/json")], Shape::to_json(&model_object(&state, &e))).into_response()
        }
        Err(e) => state.fail(e),
    }
}

async fn health(State(state): State<Shared>) -> Response {
    let models: Vec<&str> = state.engines.iter().map(|e| e.info().name.as_str()).collect();
    let body = serde_json::json!({ "status": "ok", "models": models, "provider": state.provider.to_string() });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn metrics(State(state): State<Shared>) -> Response {
    let mut text = state.metrics.render(&state.engines);
    let extra = state.metering.metrics();
    if !extra.is_empty() {
        // One exposition: the metering's families go before the server's closing `# EOF`.
        let body = text.strip_suffix("# EOF\n").unwrap_or(&text).to_string();
        text = format!("{body}{}{}# EOF\n", extra, if extra.ends_with('\n') { "" } else { "\n" });
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

async fn not_found(State(state): State<Shared>, method: Method, uri: Uri) -> Response {
    state.fail(ServeError::NotFound(format!("no route for {method} {}", uri.path())))
}
