//! The llama.cpp text engine. One dedicated thread owns the llama.cpp context and runs the
//! continuous-batching loop ([`worker`]); callers render, tokenize and check requests on their
//! own threads ([`LlamaEngine::prepare`]) and hand them over through a bounded queue.

mod worker;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use plexus_types::EngineKind;

use crate::gguf::GgufFile;
use crate::template::ChatTemplate;
use crate::text::{STOP_STRING_BYTES_MAX, STOP_STRINGS_MAX};
use crate::{
    CachedModel, Engine, Error, Event, GenerateRequest, Generation, LlamaConfig, Load, ModelInfo, PositionScore,
    Prepared, Prompt, SCORE_TOP_K_MAX, ScoreRequest, TokenId,
};

/// llama.cpp allows one backend per process.
static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
/// Most positions whose logits one scoring decode returns (each row is a vocabulary of floats).
const SCORE_ROWS_PER_DECODE: usize = 64;
/// llama.cpp context creation is not safe to run concurrently.
static CONTEXT_LOCK: Mutex<()> = Mutex::new(());

fn backend() -> Result<&'static LlamaBackend, Error> {
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs a lot at info level; route it to tracing (target `llama_cpp_2`) only
            // when asked, so a server's log stays readable.
            let enabled = std::env::var_os("PLEXUS_LLAMA_LOGS").is_some_and(|v| v != "0");
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default().with_logs_enabled(enabled));
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Engine(format!("llama.cpp backend: {e}")))
}

/// A queued request and where its events go.
pub(crate) struct Job {
    pub(crate) prepared: Prepared,
    pub(crate) events: tokio::sync::mpsc::UnboundedSender<Event>,
    pub(crate) enqueued: Instant,
}

/// Counters shared with the worker thread, for [`Engine::load`].
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) queued: AtomicUsize,
    pub(crate) active: AtomicUsize,
    pub(crate) batch_sequences: AtomicUsize,
    pub(crate) batch_tokens: AtomicUsize,
    pub(crate) stop: AtomicBool,
}

/// A GGUF model on llama.cpp with continuous batching.
pub(crate) struct LlamaEngine {
    info: ModelInfo,
    model: Arc<LlamaModel>,
    template: ChatTemplate,
    /// The template's end-of-turn ids beyond the vocabulary's own ([`end_of_turn`]).
    ends: Vec<LlamaToken>,
    vocabulary: LazyVocabulary,
    queue: Option<SyncSender<Job>>,
    shared: Arc<Shared>,
    config: LlamaConfig,
    thread: Option<JoinHandle<()>>,
}

impl LlamaEngine {
    pub(crate) fn load(cached: &CachedModel, config: &LlamaConfig) -> Result<Self, Error> {
        check_config(config)?;
        let path = cached.weights_path();
        let gguf = GgufFile::open(&path).map_err(|source| Error::Gguf { path: path.clone(), source })?;
        let meta = gguf.model_metadata().map_err(|source| Error::Gguf { path: path.clone(), source })?;
        let backend = backend()?;
        let model = load_model(backend, &path)?;
        let own = cached.chat_template()?;
        let template = template_of(&model, own.as_deref().or(meta.chat_template.as_deref()), &meta.architecture);
        let ends = end_of_turn(&model, &template);
        let worker_ends = ends.clone();

        let request_tokens_max = (config.ctx_tokens.get() / config.parallel.get()).min(model.n_ctx_train());
        if request_tokens_max < 16 {
            return Err(Error::invalid("ctx", format!("{request_tokens_max} tokens per request is too few")));
        }
        let prefix = if config.prefix_cache {
            template.default_prefix().map(|p| prefix_tokens(&model, &p)).unwrap_or_default()
        } else {
            Vec::new()
        };
        let prefix: Vec<LlamaToken> = if prefix.len() < request_tokens_max as usize / 2 { prefix } else { Vec::new() };

        let info = ModelInfo {
            name: cached.manifest.name.clone(),
            id: cached.id,
            manifest: cached.manifest.clone(),
            kind: EngineKind::LlamaCpp,
            request_tokens_max,
            embedding_dims: None,
        };
        let model = Arc::new(model);
        let shared = Arc::new(Shared::default());
        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue_max.get());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let worker_model = model.clone();
        let worker_shared = shared.clone();
        let worker_config = config.clone();
        let thread = std::thread::Builder::new()
            .name(format!("llama-{}", cached.manifest.name))
            .spawn(move || {
                worker::run(
                    backend,
                    &worker_model,
                    &worker_config,
                    request_tokens_max,
                    prefix,
                    worker_ends,
                    rx,
                    worker_shared,
                    ready_tx,
                )
            })
            .map_err(|e| Error::Engine(format!("cannot start the engine thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::Engine("the engine thread died while starting".into()));
            }
        }
        tracing::info!(
            target: "inference::llama",
            model = %info.name, id = %info.id, ctx = config.ctx_tokens, parallel = config.parallel,
            threads = config.threads, request_tokens_max, "text engine ready"
        );
        Ok(LlamaEngine {
            info,
            model,
            template,
            ends,
            vocabulary: LazyVocabulary::default(),
            queue: Some(tx),
            shared,
            config: config.clone(),
            thread: Some(thread),
        })
    }
}

fn check_config(c: &LlamaConfig) -> Result<(), Error> {
    if c.parallel.get() > 255 {
        return Err(Error::invalid("parallel", "at most 255 sequences"));
    }
    if c.parallel.get() > c.batch_tokens.get() {
        return Err(Error::invalid("parallel", "must not exceed the batch size"));
    }
    if c.ubatch_tokens.get() > c.batch_tokens.get() {
        return Err(Error::invalid("ubatch", "must not exceed the batch size"));
    }
    if c.ctx_tokens.get() > 1 << 22 {
        return Err(Error::invalid("ctx", "at most 4M tokens"));
    }
    Ok(())
}

fn load_model(backend: &LlamaBackend, path: &Path) -> Result<LlamaModel, Error> {
    load_with(backend, path, &LlamaModelParams::default())
}

fn load_with(backend: &LlamaBackend, path: &Path, params: &LlamaModelParams) -> Result<LlamaModel, Error> {
    // llama.cpp panics (debug) or fails obscurely on a missing path; check first.
    if !path.is_file() {
        return Err(Error::ModelNotFound(path.display().to_string()));
    }
    LlamaModel::load_from_file(backend, path, params)
        .map_err(|e| Error::Load { path: path.to_path_buf(), reason: e.to_string() })
}

/// A GGUF model's tokenizer and chat template without its weights (llama.cpp's vocab-only
/// load: milliseconds, a few MB): what a client needs to count and check what a provider did.
pub(crate) struct LlamaTokenizer {
    model: LlamaModel,
    template: ChatTemplate,
    /// End-of-turn ids of the template beyond the vocabulary's own ([`end_of_turn`]).
    ends: Vec<LlamaToken>,
    id: plexus_types::ModelId,
    limits: Limits,
    vocabulary: LazyVocabulary,
}

impl LlamaTokenizer {
    pub(crate) fn load(cached: &CachedModel) -> Result<Self, Error> {
        let path = cached.weights_path();
        let gguf = GgufFile::open(&path).map_err(|source| Error::Gguf { path: path.clone(), source })?;
        let meta = gguf.model_metadata().map_err(|source| Error::Gguf { path: path.clone(), source })?;
        let model = load_with(backend()?, &path, &LlamaModelParams::default().with_vocab_only(true))?;
        let own = cached.chat_template()?;
        let template = template_of(&model, own.as_deref().or(meta.chat_template.as_deref()), &meta.architecture);
        let ends = end_of_turn(&model, &template);
        let context = cached.manifest.context_length.max(16);
        Ok(LlamaTokenizer {
            model,
            template,
            ends,
            id: cached.id,
            limits: Limits { request_tokens_max: context, max_tokens_max: context },
            vocabulary: LazyVocabulary::default(),
        })
    }

    pub(crate) fn prepare(&self, request: GenerateRequest) -> Result<Prepared, Error> {
        let vocabulary = || self.vocabulary.get(&self.model, &self.ends);
        prepare_text(&self.model, &self.template, self.id, self.limits, &vocabulary, request)
    }

    pub(crate) fn grammar(
        &self,
        spec: &plexus_types::receipt::GrammarSpec,
    ) -> Result<crate::grammar::Constraint, Error> {
        self.vocabulary.get(&self.model, &self.ends)?.compile(spec)
    }

    pub(crate) fn spell(&self, ids: &[TokenId]) -> Option<(Vec<u8>, usize)> {
        spell(&self.model, &self.ends, ids)
    }
}

/// Tokens of the default prefix, cut before the last token unless it is a control token: the
/// text that follows may merge with it.
fn prefix_tokens(model: &LlamaModel, text: &str) -> Vec<LlamaToken> {
    let vocab = model.vocab();
    let mut tokens = vocab.tokenize(text.as_bytes(), false, true);
    if vocab.should_add_bos() && vocab.bos().0 >= 0 && tokens.first() != Some(&vocab.bos()) {
        tokens.insert(0, vocab.bos());
    }
    if tokens.last().is_some_and(|&last| !vocab.is_control(last)) {
        tokens.pop();
    }
    tokens
}

/// The limits a text request is checked against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Most tokens (prompt + output) one request may use.
    pub(crate) request_tokens_max: u32,
    /// Most tokens one request may generate.
    pub(crate) max_tokens_max: u32,
}

/// Renders, tokenizes and checks a generation request: what the engine runs, and what a client
/// holding only the tokenizer computes to know the prompt's length and the request's hash.
pub(crate) fn prepare_text(
    model: &LlamaModel,
    template: &ChatTemplate,
    id: plexus_types::ModelId,
    limits: Limits,
    vocabulary: &dyn Fn() -> Result<Arc<crate::grammar::Vocabulary>, Error>,
    request: GenerateRequest,
) -> Result<Prepared, Error> {
    if request.stop.len() > STOP_STRINGS_MAX {
        return Err(Error::invalid("stop", format!("at most {STOP_STRINGS_MAX} stop strings")));
    }
    if request.stop.iter().any(|s| s.len() > STOP_STRING_BYTES_MAX) {
        return Err(Error::invalid("stop", format!("each stop string must be at most {STOP_STRING_BYTES_MAX} bytes")));
    }
    let text = match &request.prompt {
        Prompt::Chat { messages, continue_final_message } => {
            template.render_prompt(messages, *continue_final_message)?
        }
        Prompt::Text(text) => text.clone(),
    };
    if text.is_empty() {
        return Err(Error::EmptyInput);
    }
    // A token is at least one byte, so a text this long cannot fit; refuse before tokenizing.
    let limit = limits.request_tokens_max as usize;
    if text.len() > limit.saturating_mul(64) {
        return Err(Error::PromptTooLong { tokens: text.len() / 4, max: limit - 1 });
    }
    let tokens = tokenize(model, &text);
    if tokens.is_empty() {
        return Err(Error::EmptyInput);
    }
    if tokens.len() >= limit {
        return Err(Error::PromptTooLong { tokens: tokens.len(), max: limit - 1 });
    }
    let available = (limit - tokens.len()) as u32;
    let cap = available.min(limits.max_tokens_max);
    let max_tokens = match request.max_tokens {
        Some(0) => return Err(Error::invalid("max_tokens", "must be at least 1")),
        Some(n) if n > cap => {
            return Err(Error::MaxTokensTooLarge {
                requested: n,
                available: cap,
                context: limit as u32,
                prompt: tokens.len() as u32,
            });
        }
        Some(n) => n,
        None => cap,
    };
    if request.logprobs.is_some_and(|n| n > crate::TOP_LOGPROBS_MAX) {
        return Err(Error::invalid("top_logprobs", format!("at most {}", crate::TOP_LOGPROBS_MAX)));
    }
    request.adjust.check_vocabulary(model.n_vocab().max(0) as usize)?;
    let mut prepared = Prepared::new(id, tokens, max_tokens, request.sampling, request.adjust, request.stop);
    prepared.logprobs = request.logprobs;
    if let Some(spec) = &request.grammar {
        prepared.constrain(vocabulary()?.compile(spec)?);
    }
    Ok(prepared)
}

/// A model's vocabulary for the grammar engine, built on first use (it reads every token once)
/// and kept.
#[derive(Default)]
pub(crate) struct LazyVocabulary(OnceLock<Result<Arc<crate::grammar::Vocabulary>, String>>);

impl LazyVocabulary {
    pub(crate) fn get(
        &self,
        model: &LlamaModel,
        ends: &[LlamaToken],
    ) -> Result<Arc<crate::grammar::Vocabulary>, Error> {
        self.0
            .get_or_init(|| {
                let vocab = model.vocab();
                let n = model.n_vocab().max(0);
                let is_end = |t: LlamaToken| is_end(model, ends, t);
                let tokens = (0..n)
                    .map(|i| {
                        let t = LlamaToken(i);
                        (!(vocab.is_control(t) || is_end(t))).then(|| vocab.token_to_piece(t, false, None))
                    })
                    .collect();
                let ends: Vec<TokenId> = (0..n).filter(|&i| is_end(LlamaToken(i))).collect();
                crate::grammar::Vocabulary::new(tokens, &ends).map(Arc::new).map_err(|e| e.to_string())
            })
            .clone()
            .map_err(Error::Engine)
    }
}

fn tokenize(model: &LlamaModel, text: &str) -> Vec<TokenId> {
    let vocab = model.vocab();
    let mut tokens = vocab.tokenize(text.as_bytes(), false, true);
    // The template may already have written the BOS text; add it only when missing.
    if vocab.should_add_bos() && vocab.bos().0 >= 0 && tokens.first() != Some(&vocab.bos()) {
        tokens.insert(0, vocab.bos());
    }
    tokens.into_iter().map(|t| t.0).collect()
}

/// A GGUF model's chat template, read from its metadata, else its architecture's known one,
/// else ChatML.
pub(crate) fn template_of(model: &LlamaModel, meta_template: Option<&str>, architecture: &str) -> ChatTemplate {
    let vocab = model.vocab();
    let token_text = |t: LlamaToken| {
        if t.0 < 0 || t.0 >= vocab.n_tokens() {
            return String::new();
        }
        String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
    };
    ChatTemplate::for_model(meta_template, architecture, &token_text(vocab.bos()), &token_text(vocab.eos()))
}

/// The ids that end a turn in `template` ([`ChatTemplate::end_of_turn_texts`], each one
/// control token of the vocabulary) that the vocabulary does not already count as ends of
/// generation: a model imported with another format's template stops where that format ends
/// a reply. The engine stops at them and the client's check counts them the same way.
pub(crate) fn end_of_turn(model: &LlamaModel, template: &ChatTemplate) -> Vec<LlamaToken> {
    let vocab = model.vocab();
    let mut ends = Vec::new();
    for text in template.end_of_turn_texts() {
        if let [t] = vocab.tokenize(text.as_bytes(), false, true)[..]
            && vocab.is_control(t)
            && !vocab.is_eog(t)
            && !ends.contains(&t)
        {
            ends.push(t);
        }
    }
    ends
}

/// Whether `token` ends generation: the vocabulary's end-of-generation tokens and `ends`.
pub(crate) fn is_end(model: &LlamaModel, ends: &[LlamaToken], token: LlamaToken) -> bool {
    model.vocab().is_eog(token) || ends.contains(&token)
}

/// The bytes a sequence of generated ids spells, as the engine streams them (control tokens
/// spell nothing), and how many of them end generation ([`is_end`]). `None` if an id is not
/// in the vocabulary.
pub(crate) fn spell(model: &LlamaModel, ends: &[LlamaToken], ids: &[TokenId]) -> Option<(Vec<u8>, usize)> {
    let vocab = model.vocab();
    let mut bytes = Vec::new();
    let mut ended = 0;
    for &id in ids {
        if id < 0 || id >= vocab.n_tokens() {
            return None;
        }
        let token = LlamaToken(id);
        if is_end(model, ends, token) {
            ended += 1;
            continue;
        }
        bytes.extend_from_slice(&vocab.token_to_piece(token, false, None));
    }
    Some((bytes, ended))
}

impl Engine for LlamaEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn prepare(&self, request: GenerateRequest) -> Result<Prepared, Error> {
        let limits = Limits {
            request_tokens_max: self.info.request_tokens_max,
            max_tokens_max: self.config.max_tokens_max.get(),
        };
        let vocabulary = || self.vocabulary.get(&self.model, &self.ends);
        prepare_text(&self.model, &self.template, self.info.id, limits, &vocabulary, request)
    }

    fn grammar(&self, spec: &plexus_types::receipt::GrammarSpec) -> Result<crate::grammar::Constraint, Error> {
        self.vocabulary.get(&self.model, &self.ends)?.compile(spec)
    }

    fn submit(&self, prepared: Prepared) -> Result<Generation, Error> {
        if prepared.model != self.info.id {
            return Err(Error::invalid("model", "the request was prepared for another model"));
        }
        let vocab_size = self.model.n_vocab();
        let limit = self.info.request_tokens_max as usize;
        if prepared.tokens.is_empty()
            || prepared.tokens.len() + prepared.max_tokens as usize > limit
            || prepared.tokens.iter().any(|&t| t < 0 || t >= vocab_size)
        {
            return Err(Error::invalid("prompt", "the prepared request is outside this model's limits"));
        }
        let queue = self.queue.as_ref().ok_or(Error::EngineStopped)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let prompt_tokens = prepared.prompt_tokens();
        let request_hash = prepared.request_hash;
        // Count before sending so the worker's decrement can never run first.
        let queued = self.shared.queued.fetch_add(1, Ordering::SeqCst);
        match queue.try_send(Job { prepared, events: tx, enqueued: Instant::now() }) {
            Ok(()) => Ok(Generation { prompt_tokens, request_hash, events: rx }),
            Err(TrySendError::Full(_)) => {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                Err(Error::Busy { queued, queue_max: self.config.queue_max.get() })
            }
            Err(TrySendError::Disconnected(_)) => {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                Err(Error::EngineStopped)
            }
        }
    }

    fn score(&self, request: &ScoreRequest) -> Result<Vec<PositionScore>, Error> {
        let (prompt, output) = (&request.prompt, &request.output);
        let vocab_size = self.model.n_vocab();
        let total = prompt.len() + output.len();
        if prompt.is_empty() || output.is_empty() {
            return Err(Error::invalid("score", "both the prompt and the output must be non-empty"));
        }
        if total > self.info.request_tokens_max as usize {
            return Err(Error::PromptTooLong { tokens: total, max: self.info.request_tokens_max as usize });
        }
        if prompt.iter().chain(output).any(|&t| t < 0 || t >= vocab_size) {
            return Err(Error::invalid("score", "a token id is outside this model's vocabulary"));
        }
        if request.top_k == 0 || request.top_k > SCORE_TOP_K_MAX {
            return Err(Error::invalid("top_k", format!("must be between 1 and {SCORE_TOP_K_MAX}")));
        }
        let n_batch = self.config.batch_tokens.get();
        let params = LlamaContextParams::default()
            .with_n_ctx(std::num::NonZeroU32::new((total as u32).div_ceil(256) * 256))
            .with_n_batch(n_batch)
            .with_n_ubatch(self.config.ubatch_tokens.get())
            .with_n_seq_max(1)
            .with_n_threads(self.config.threads.get() as i32)
            .with_n_threads_batch(self.config.threads_batch.get() as i32);
        let mut ctx = {
            let _guard = CONTEXT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            self.model.new_context(backend()?, params)
        }
        .map_err(|e| Error::Engine(format!("creating a scoring context: {e}")))?;
        // Logits are wanted where the next token is an output token: the last prompt position
        // and every output position but the last.
        let tokens: Vec<LlamaToken> = prompt.iter().chain(output).map(|&t| LlamaToken(t)).collect();
        let first_wanted = prompt.len() - 1;
        let mut batch = LlamaBatch::new(n_batch as usize, 1);
        let mut scores = Vec::with_capacity(output.len());
        // Penalties count the output tokens before each position, as the generation did.
        let (mut counts, mut adjusted) = (crate::sampler::TokenCounts::new(), Vec::new());
        let penalised = request.adjust.penalises();
        // The grammar's mask at each position, as the generation's sampler read it; dropped at
        // the first committed token it refuses (infinitely far from anything it allowed).
        let mut constraint = request.grammar.as_ref().map(|g| self.grammar(g)).transpose()?;
        // Prompt chunks of a whole batch; output chunks small enough that the logits buffer
        // (rows x vocabulary floats) stays a few MB.
        let mut bounds = Vec::new();
        let mut start = 0;
        while start < total - 1 {
            let step =
                if start >= first_wanted { (n_batch as usize).min(SCORE_ROWS_PER_DECODE) } else { n_batch as usize };
            let end = (start + step).min(total - 1);
            let end = if start < first_wanted { end.min(first_wanted) } else { end };
            bounds.push((start, end));
            start = end;
        }
        for (start, end) in bounds {
            batch.clear();
            for (i, &t) in tokens.iter().enumerate().take(end).skip(start) {
                batch.add(t, i as i32, &[0], i >= first_wanted).map_err(|e| Error::Engine(e.to_string()))?;
            }
            ctx.decode(&mut batch).map_err(|e| Error::Engine(format!("scoring decode failed: {e}")))?;
            for i in start.max(first_wanted)..end {
                let logits = ctx.get_logits_ith((i - start) as i32);
                let next = tokens[i + 1].0;
                let position = (i - first_wanted) as u32;
                let mask = match constraint.as_mut().map(|c| c.mask()) {
                    Some(Ok(mask)) => Some(mask),
                    Some(Err(_)) => {
                        constraint = None;
                        None
                    }
                    None => None,
                };
                let refused = mask.as_ref().is_some_and(|m| !m.allows(next));
                let margin = request.sampling.map(|s| {
                    if refused {
                        return f32::INFINITY;
                    }
                    let picked_from =
                        crate::sampler::adjusted(logits, &request.adjust, &counts, mask.as_ref(), &mut adjusted);
                    crate::sampler::margin(picked_from, &s, position, next)
                });
                if let Some(c) = constraint.as_mut()
                    && (refused || c.advance(next).is_err())
                {
                    constraint = None;
                }
                if penalised {
                    *counts.entry(next).or_default() += 1;
                }
                scores.push(PositionScore {
                    token_logit: logits.get(next as usize).copied().unwrap_or(f32::NEG_INFINITY),
                    margin,
                    top: crate::fingerprint::top_k(logits, request.top_k),
                });
            }
        }
        Ok(scores)
    }

    fn load(&self) -> Load {
        Load {
            queued: self.shared.queued.load(Ordering::Relaxed),
            queue_max: self.config.queue_max.get(),
            active: self.shared.active.load(Ordering::Relaxed),
            batch_sequences: self.shared.batch_sequences.load(Ordering::Relaxed),
            batch_tokens: self.shared.batch_tokens.load(Ordering::Relaxed),
        }
    }
}

impl Drop for LlamaEngine {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.queue = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
