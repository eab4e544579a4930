//! Run content-addressed models on the CPU: text generation on llama.cpp (GGUF) with continuous
//! batching, sentence embeddings on candle (BERT safetensors) and small tensor models on tract
//! (ONNX: [`tensor`]), behind one [`Engine`] trait.
//!
//! What is here:
//! - [`Engine`]: what the rest of Plexus sees. No llama.cpp or candle type crosses it.
//! - [`models`]: the model cache (`$PLEXUS_MODELS` or `~/.cache/plexus/models`), `pull` of the
//!   known models, `import` of any GGUF file or BERT safetensors directory, manifests and ids,
//!   and [`models::resolve`] from a name, path or id to a cached model.
//! - [`load_engine`]: a cached model to a running engine.
//! - [`gguf`]: a bounded GGUF header reader that checks files before llama.cpp sees them.
//! - [`template`]: chat templates rendered with minijinja.
//!
//! What is not: no HTTP (that is `plexus-serve`), no chain, no payment. The engines know
//! nothing of providers or keys; they return token counts, the output and a fingerprint of the
//! logits, which the server signs.
//!
//! Every request is bounded: prompt tokens, `max_tokens`, stop strings, queue length and batch
//! inputs all have limits, and bad input is an [`Error`] with [`ErrorKind::BadRequest`], never a
//! panic. Greedy output is reproducible for a given model, thread count and batch schedule.

pub mod audit;
pub mod edge;
mod error;
pub mod fingerprint;
pub mod gguf;
pub mod grammar;
pub mod models;
pub mod sampler;
pub mod template;
pub mod tensor;
pub mod text;
pub mod tokenizer;

#[cfg(feature = "bert")]
mod bert;
#[cfg(feature = "llama")]
mod llama;

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;

use plexus_types::{EngineKind, Hash, ModelId, ModelManifest};
use serde::{Deserialize, Serialize};

pub use error::{Error, ErrorKind};
pub use fingerprint::LogitsProbe;
pub use models::{CachedModel, ModelCache};
pub use template::ChatMessage;
pub use tokenizer::{Spelled, Tokenizer};

/// A token id in a model's vocabulary.
pub type TokenId = i32;

/// A loaded model. Implementations own their threads; every method is cheap to call from an
/// async task except [`Engine::embed`], which computes on the caller's thread.
pub trait Engine: Send + Sync + 'static {
    /// What this engine serves.
    fn info(&self) -> &ModelInfo;

    /// Renders, tokenizes and checks a generation request against the limits, without queueing
    /// it. The result tells a caller the prompt's token count before any work is done.
    fn prepare(&self, request: GenerateRequest) -> Result<Prepared, Error> {
        let _ = request;
        Err(Error::Unsupported { what: "text generation", model: self.info().name.clone() })
    }

    /// Queues a prepared request. Fails with [`Error::Busy`] when the queue is full. Dropping
    /// the returned [`Generation`] cancels the request and frees its slot.
    fn submit(&self, prepared: Prepared) -> Result<Generation, Error> {
        let _ = prepared;
        Err(Error::Unsupported { what: "text generation", model: self.info().name.clone() })
    }

    /// Embeds each input (blocking: call it from a blocking thread). Fails with
    /// [`Error::Busy`] when too many batches are already running.
    fn embed(&self, inputs: &[String]) -> Result<Embeddings, Error> {
        let _ = inputs;
        Err(Error::Unsupported { what: "embeddings", model: self.info().name.clone() })
    }

    /// Scores a given continuation: one teacher-forced prefill of `prompt` followed by
    /// `output`, returning for every output position the logits that chose it (the top
    /// `top_k` and the committed token's own). What a verifier re-running a request needs, and
    /// what tests use to tell an honest near-tie from a wrong answer. Blocking: call it from a
    /// blocking thread. Runs beside the serving loop on its own context.
    fn score(&self, request: &ScoreRequest) -> Result<Vec<PositionScore>, Error> {
        let _ = request;
        Err(Error::Unsupported { what: "scoring", model: self.info().name.clone() })
    }

    /// Compiles a grammar against this model's vocabulary (text models only): what a caller
    /// checks an output against ([`grammar::Constraint::check`]).
    fn grammar(&self, spec: &plexus_types::receipt::GrammarSpec) -> Result<grammar::Constraint, Error> {
        let _ = spec;
        Err(Error::Unsupported { what: "constrained generation", model: self.info().name.clone() })
    }

    /// What a tensor model takes and returns (tensor models only).
    fn tensor_spec(&self) -> Option<&tensor::TensorSpec> {
        None
    }

    /// Runs a tensor model on a batch of rows (blocking: call it from a blocking thread).
    /// Fails with [`Error::BadTensor`] for any input the spec does not allow and with
    /// [`Error::Busy`] when too many calls are already running.
    fn infer(&self, request: &tensor::TensorRequest) -> Result<tensor::TensorResponse, Error> {
        let _ = request;
        Err(Error::Unsupported { what: "tensor inference", model: self.info().name.clone() })
    }

    /// Current queue and batch sizes, for metrics.
    fn load(&self) -> Load;
}

/// A continuation to score with [`Engine::score`].
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreRequest {
    /// The prompt's tokens, as [`Prepared::tokens`] holds them.
    pub prompt: Vec<TokenId>,
    /// The generated tokens to score, in order.
    pub output: Vec<TokenId>,
    /// How many of the highest logits to return per position (at most [`SCORE_TOP_K_MAX`]).
    pub top_k: usize,
    /// With the sampling the output was generated with, each position also gets its
    /// [`sampler::margin`] from this engine's logits.
    pub sampling: Option<Sampling>,
    /// The logit adjustment the output was generated with: margins are measured on the
    /// adjusted logits (what the sampler read), the returned logits are the model's own.
    pub adjust: LogitAdjust,
    /// The grammar the output was generated under: margins are measured among the tokens it
    /// allowed at each position. A committed token it refused has an infinite margin, and the
    /// positions after it are measured without it.
    pub grammar: Option<plexus_types::receipt::GrammarSpec>,
}

/// Most logits returned per scored position.
pub const SCORE_TOP_K_MAX: usize = 64;

/// The logits at one output position of a scored continuation.
#[derive(Clone, Debug, PartialEq)]
pub struct PositionScore {
    /// The committed token's logit.
    pub token_logit: f32,
    /// How far the committed token is from what the request's sampling picks from these
    /// logits ([`sampler::margin`]), when the request named its sampling.
    pub margin: Option<f32>,
    /// (token, logit), highest first; ties broken by the lower token id.
    pub top: Vec<(TokenId, f32)>,
}

impl PositionScore {
    /// The highest logit at this position.
    pub fn max_logit(&self) -> f32 {
        self.top.first().map_or(f32::NEG_INFINITY, |t| t.1)
    }

    /// How far the committed token's logit is below the best one (0 when it is the best).
    pub fn shortfall(&self) -> f32 {
        (self.max_logit() - self.token_logit).max(0.0)
    }

    /// The gap between the two highest logits: how clear the greedy choice was.
    pub fn top_gap(&self) -> f32 {
        match (self.top.first(), self.top.get(1)) {
            (Some(a), Some(b)) => a.1 - b.1,
            _ => f32::INFINITY,
        }
    }
}

/// Static facts about a loaded model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// The manifest's name, e.g. `smollm2-135m-instruct`.
    pub name: String,
    pub id: ModelId,
    pub manifest: ModelManifest,
    pub kind: EngineKind,
    /// Most tokens (prompt + output) one request may use.
    pub request_tokens_max: u32,
    /// Length of embedding vectors (embedding models only).
    pub embedding_dims: Option<usize>,
}

/// Queue and batch sizes at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Most requests that may wait before new ones are refused as busy.
    pub queue_max: usize,
    /// Requests being processed.
    pub active: usize,
    /// Sequences in the last decode step (text engines).
    pub batch_sequences: usize,
    /// Tokens in the last decode step (text engines).
    pub batch_tokens: usize,
}

/// What to generate from.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// A conversation, rendered with the model's chat template.
    Chat {
        messages: Vec<ChatMessage>,
        /// Continue the final (assistant) message instead of starting a new turn.
        continue_final_message: bool,
    },
    /// Raw text, tokenized as is (special tokens in it are parsed, as llama-server does).
    Text(String),
}

/// How to pick each next token. Closed on purpose: every variant is reproducible from its
/// parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Sampling {
    /// Always the most likely token.
    Greedy,
    /// top-k, then top-p, then min-p, then temperature, then a draw from a seeded generator
    /// (llama-server's order).
    Random {
        temperature: f32,
        /// 0 disables.
        top_k: u32,
        /// 1.0 disables.
        top_p: f32,
        /// 0.0 disables.
        min_p: f32,
        seed: u32,
    },
}

impl Sampling {
    /// Builds the sampling rule from OpenAI-style parameters; temperature 0 is greedy. `seed`
    /// defaults to a random one, which the caller can read back from the result.
    pub fn from_openai(
        temperature: Option<f32>,
        top_p: Option<f32>,
        top_k: Option<u32>,
        min_p: Option<f32>,
        seed: Option<u64>,
    ) -> Result<Sampling, Error> {
        let temperature = temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(Error::invalid("temperature", "must be between 0 and 2"));
        }
        let top_p = top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(Error::invalid("top_p", "must be in (0, 1]"));
        }
        let min_p = min_p.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(Error::invalid("min_p", "must be between 0 and 1"));
        }
        // llama-server's default: OpenAI's API has no top_k, and 40 keeps the seeded sampler's
        // work per token (and so an audit's) to forty candidates.
        let top_k = top_k.unwrap_or(DEFAULT_TOP_K);
        if temperature == 0.0 || top_k == 1 {
            return Ok(Sampling::Greedy);
        }
        let seed = match seed {
            Some(s) => (s & 0xFFFF_FFFF) as u32,
            None => random_seed(),
        };
        Ok(Sampling::Random { temperature, top_k, top_p, min_p, seed })
    }

    /// The rule for choice `index` of a request that asks for several (`n`): the seed plus the
    /// index (wrapping), so choices differ, and a client that knows the seed derives each one's
    /// request exactly as the provider does. Greedy choices are all the same.
    pub fn for_choice(&self, index: u32) -> Sampling {
        match *self {
            Sampling::Random { temperature, top_k, top_p, min_p, seed } => {
                Sampling::Random { temperature, top_k, top_p, min_p, seed: seed.wrapping_add(index) }
            }
            Sampling::Greedy => Sampling::Greedy,
        }
    }

    /// The sampling, with `adjust`, as a request hash (and a challenge's transcript) commits to
    /// it: the base rule alone when `adjust` changes nothing.
    pub fn spec(&self, adjust: &LogitAdjust) -> plexus_types::receipt::SamplingSpec {
        use plexus_types::receipt::SamplingSpec;
        let base = match *self {
            Sampling::Greedy => SamplingSpec::Greedy,
            Sampling::Random { temperature, top_k, top_p, min_p, seed } => SamplingSpec::Random {
                temperature_bits: temperature.to_bits(),
                top_k,
                top_p_bits: top_p.to_bits(),
                min_p_bits: min_p.to_bits(),
                seed,
            },
        };
        if adjust.is_identity() { base } else { SamplingSpec::Adjusted { base: Box::new(base), adjust: adjust.spec() } }
    }

    /// The sampling and logit adjustment a transcript names.
    pub fn from_spec(spec: &plexus_types::receipt::SamplingSpec) -> (Sampling, LogitAdjust) {
        use plexus_types::receipt::SamplingSpec;
        match spec {
            SamplingSpec::Greedy => (Sampling::Greedy, LogitAdjust::default()),
            &SamplingSpec::Random { temperature_bits, top_k, top_p_bits, min_p_bits, seed } => (
                Sampling::Random {
                    temperature: f32::from_bits(temperature_bits),
                    top_k,
                    top_p: f32::from_bits(top_p_bits),
                    min_p: f32::from_bits(min_p_bits),
                    seed,
                },
                LogitAdjust::default(),
            ),
            SamplingSpec::Adjusted { base, adjust } => (Sampling::from_spec(base).0, LogitAdjust::from_spec(adjust)),
            // The grammar is the spec's own ([`plexus_types::receipt::SamplingSpec::grammar`]).
            SamplingSpec::Constrained { base, .. } => Sampling::from_spec(base),
        }
    }
}

/// OpenAI's `presence_penalty`, `frequency_penalty` and `logit_bias`: what the sampler adds to
/// the model's logits at each position before it picks, `bias[t] - count[t] * frequency -
/// (count[t] > 0) * presence`, with `count[t]` the times `t` was generated before the position
/// (as vLLM counts, the prompt does not). The default changes nothing. Kept canonical (see
/// [`plexus_types::receipt::LogitAdjustSpec`]): zero penalties are +0, the bias is sorted by
/// token with no zero values, so equal requests have equal hashes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogitAdjust {
    pub presence: f32,
    pub frequency: f32,
    /// (token, bias), by increasing token id.
    pub bias: Vec<(TokenId, f32)>,
}

impl LogitAdjust {
    /// Builds the adjustment from a request's parameters, refusing values out of OpenAI's
    /// ranges (penalties within ±2, biases within ±100, at most
    /// [`plexus_types::receipt::LOGIT_BIAS_MAX`] tokens). A token named twice keeps its last
    /// value. Whether the tokens are in a model's vocabulary is checked when a model prepares
    /// the request ([`LogitAdjust::check_vocabulary`]).
    pub fn from_openai(
        presence: Option<f64>,
        frequency: Option<f64>,
        bias: impl IntoIterator<Item = (TokenId, f64)>,
    ) -> Result<LogitAdjust, Error> {
        use plexus_types::receipt::{LOGIT_BIAS_MAX, LOGIT_BIAS_VALUE_MAX, PENALTY_MAX};
        let penalty = |name: &'static str, v: Option<f64>| match v {
            None => Ok(0.0),
            // `+ 0.0` turns a -0 penalty into +0, so it encodes as "no penalty".
            Some(v) if v.is_finite() && v.abs() <= f64::from(PENALTY_MAX) => Ok(v as f32 + 0.0),
            Some(_) => Err(Error::invalid(name, "must be between -2 and 2")),
        };
        let presence = penalty("presence_penalty", presence)?;
        let frequency = penalty("frequency_penalty", frequency)?;
        let mut by_token = std::collections::BTreeMap::new();
        for (token, value) in bias {
            if token < 0 {
                return Err(Error::invalid("logit_bias", format!("token id {token} is negative")));
            }
            if !(value.is_finite() && value.abs() <= f64::from(LOGIT_BIAS_VALUE_MAX)) {
                return Err(Error::invalid(
                    "logit_bias",
                    format!("the bias of token {token} must be between -100 and 100"),
                ));
            }
            by_token.insert(token, value as f32);
            if by_token.len() > LOGIT_BIAS_MAX {
                return Err(Error::invalid("logit_bias", format!("at most {LOGIT_BIAS_MAX} tokens")));
            }
        }
        let bias = by_token.into_iter().filter(|&(_, v)| v != 0.0).collect();
        Ok(LogitAdjust { presence, frequency, bias })
    }

    /// Whether this changes no logit.
    pub fn is_identity(&self) -> bool {
        !self.penalises() && self.bias.is_empty()
    }

    /// Whether a penalty is set, so the generated tokens must be counted.
    pub fn penalises(&self) -> bool {
        self.presence != 0.0 || self.frequency != 0.0
    }

    /// Refuses a bias on a token outside a vocabulary of `n_vocab` ids.
    pub fn check_vocabulary(&self, n_vocab: usize) -> Result<(), Error> {
        match self.bias.iter().find(|&&(t, _)| t as usize >= n_vocab) {
            Some((t, _)) => Err(Error::invalid(
                "logit_bias",
                format!("token id {t} is not in this model's vocabulary ({n_vocab} tokens)"),
            )),
            None => Ok(()),
        }
    }

    fn spec(&self) -> plexus_types::receipt::LogitAdjustSpec {
        plexus_types::receipt::LogitAdjustSpec {
            presence_bits: (self.presence + 0.0).to_bits(),
            frequency_bits: (self.frequency + 0.0).to_bits(),
            bias: self.bias.iter().map(|&(t, v)| (t, v.to_bits())).collect(),
        }
    }

    fn from_spec(spec: &plexus_types::receipt::LogitAdjustSpec) -> LogitAdjust {
        LogitAdjust {
            presence: f32::from_bits(spec.presence_bits),
            frequency: f32::from_bits(spec.frequency_bits),
            bias: spec.bias.iter().map(|&(t, bits)| (t, f32::from_bits(bits))).collect(),
        }
    }
}

fn random_seed() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; that is all a sampling seed needs.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    (h.finish() & 0xFFFF_FFFF) as u32
}

/// `top_k` when a request sets none (llama-server's default).
pub const DEFAULT_TOP_K: u32 = 40;

/// A text-generation request.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    /// Most tokens to generate; `None` means as many as fit in the request's context.
    pub max_tokens: Option<u32>,
    pub sampling: Sampling,
    /// Penalties and biases applied to the logits before `sampling` picks.
    pub adjust: LogitAdjust,
    /// Generation ends before the first occurrence of any of these (at most
    /// [`text::STOP_STRINGS_MAX`], each at most [`text::STOP_STRING_BYTES_MAX`] bytes).
    pub stop: Vec<String>,
    /// Report each generated token's log-probability and this many of the most likely
    /// alternatives (at most [`TOP_LOGPROBS_MAX`]); `None` reports none. Changes nothing about
    /// the output, so the request hash does not cover it.
    pub logprobs: Option<u8>,
    /// The grammar the output must follow (structured outputs); the request hash covers it.
    pub grammar: Option<plexus_types::receipt::GrammarSpec>,
}

/// Most alternatives per position a request may ask for (OpenAI's `top_logprobs` limit).
pub const TOP_LOGPROBS_MAX: u8 = 20;

/// A generated token's log-probability under the model, and the most likely alternatives at
/// its position ([`sampler::logprobs`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: TokenId,
    /// The token's text as bytes (a token may hold part of a UTF-8 character).
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// The most likely tokens at this position, best first (the asked-for count).
    pub top: Vec<TopLogprob>,
}

/// One alternative of a [`TokenLogprob`].
#[derive(Clone, Debug, PartialEq)]
pub struct TopLogprob {
    pub token: TokenId,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// A checked, tokenized request, ready to queue.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub model: ModelId,
    pub tokens: Vec<TokenId>,
    pub max_tokens: u32,
    pub sampling: Sampling,
    pub adjust: LogitAdjust,
    pub stop: Vec<String>,
    /// SHA-256 of the canonical request: model id, prompt tokens, sampling, `max_tokens` and
    /// stop strings. Two providers given the same request compute the same hash.
    pub request_hash: Hash,
    /// Alternatives to report per token, if log-probabilities were asked for
    /// ([`GenerateRequest::logprobs`]).
    pub logprobs: Option<u8>,
    /// The request's grammar, compiled and positioned before the first output token
    /// ([`Prepared::constrain`]).
    pub constraint: Option<grammar::Constraint>,
}

impl Prepared {
    /// Builds a prepared request and its hash.
    pub fn new(
        model: ModelId,
        tokens: Vec<TokenId>,
        max_tokens: u32,
        sampling: Sampling,
        adjust: LogitAdjust,
        stop: Vec<String>,
    ) -> Self {
        let spec = sampling.spec(&adjust);
        let request_hash = plexus_types::receipt::request_hash(&model, &tokens, max_tokens, &spec, &stop);
        Prepared { model, tokens, max_tokens, sampling, adjust, stop, request_hash, logprobs: None, constraint: None }
    }

    /// Constrains the request by a compiled grammar: its spec joins the sampling, so the hash
    /// changes with it.
    pub fn constrain(&mut self, constraint: grammar::Constraint) {
        self.constraint = Some(constraint);
        self.request_hash =
            plexus_types::receipt::request_hash(&self.model, &self.tokens, self.max_tokens, &self.spec(), &self.stop);
    }

    /// The sampling as the request hash commits to it.
    pub fn spec(&self) -> plexus_types::receipt::SamplingSpec {
        let base = self.sampling.spec(&self.adjust);
        match &self.constraint {
            None => base,
            Some(c) => {
                plexus_types::receipt::SamplingSpec::Constrained { base: Box::new(base), grammar: c.spec().clone() }
            }
        }
    }

    pub fn prompt_tokens(&self) -> u32 {
        self.tokens.len() as u32
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of turn or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// One event of a running generation.
#[derive(Debug)]
pub enum Event {
    /// New text (never splits a UTF-8 character), the count of tokens generated so far, and
    /// the ids generated since the previous `Text` (they spell this text, plus any text still
    /// held back for a stop string; an end-of-generation id comes only in [`Finish::tokens`]).
    /// With [`GenerateRequest::logprobs`], `logprobs` holds one entry per id, in order; else it
    /// is empty.
    Text { text: String, completion_tokens: u32, ids: Vec<TokenId>, logprobs: Vec<TokenLogprob> },
    /// The end. Always the last event of a successful generation.
    Done(Finish),
    /// The generation failed; nothing follows.
    Failed(Error),
}

/// The summary of a finished generation.
#[derive(Clone, Debug)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens whose KV was reused from an earlier request instead of computed.
    pub cached_tokens: u32,
    /// The whole generated text (the concatenation of every `Text` event).
    pub text: String,
    /// The generated token ids, including a final end-of-generation token if one was sampled.
    pub tokens: Vec<TokenId>,
    /// With [`GenerateRequest::logprobs`], one entry per generated id but a final
    /// end-of-generation one (every `Text` event's, in order); else empty.
    pub logprobs: Vec<TokenLogprob>,
    /// Top-k logits at a few output positions.
    pub probes: Vec<LogitsProbe>,
    /// Hash of `probes`, for the attestation.
    pub logits_fingerprint: Hash,
    /// Seconds from submission to the first token.
    pub time_to_first_token: f64,
}

/// A running generation: a stream of [`Event`]s. Dropping it cancels the request.
#[derive(Debug)]
pub struct Generation {
    pub prompt_tokens: u32,
    pub request_hash: Hash,
    events: tokio::sync::mpsc::UnboundedReceiver<Event>,
}

impl Generation {
    /// The next event; `None` only if the engine stopped without finishing (reported to callers
    /// as [`Error::EngineStopped`]).
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next event, blocking the thread (not for async tasks).
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.events.blocking_recv()
    }

    /// Runs to the end, returning the summary.
    pub fn blocking_collect(mut self) -> Result<Finish, Error> {
        loop {
            match self.blocking_next() {
                Some(Event::Text { .. }) => {}
                Some(Event::Done(f)) => return Ok(f),
                Some(Event::Failed(e)) => return Err(e),
                None => return Err(Error::EngineStopped),
            }
        }
    }

    /// Runs to the end asynchronously, returning the summary.
    pub async fn collect(mut self) -> Result<Finish, Error> {
        loop {
            match self.next().await {
                Some(Event::Text { .. }) => {}
                Some(Event::Done(f)) => return Ok(f),
                Some(Event::Failed(e)) => return Err(e),
                None => return Err(Error::EngineStopped),
            }
        }
    }
}

/// Embedding vectors for a batch of inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    /// One L2-normalised vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens read, all inputs together (after truncation).
    pub prompt_tokens: u32,
    /// SHA-256 of the canonical request (model id and inputs).
    pub request_hash: Hash,
    /// SHA-256 of the vectors' little-endian f32 bytes, in order.
    pub output_hash: Hash,
}

/// SHA-256 of a canonical embeddings request: the model and its inputs, in order.
pub fn embedding_request_hash(model: &ModelId, inputs: &[String]) -> Hash {
    let mut canon = Vec::with_capacity(64 + inputs.iter().map(|s| 4 + s.len()).sum::<usize>());
    canon.extend(b"plexus/request/embed/v1");
    canon.extend(model.as_bytes());
    canon.extend((inputs.len() as u32).to_be_bytes());
    for s in inputs {
        canon.extend((s.len() as u32).to_be_bytes());
        canon.extend(s.as_bytes());
    }
    plexus_types::hash(&canon)
}

/// Settings of the llama.cpp text engine. None of these has to match across the network; they
/// change speed and memory, not what the model computes (greedy output can differ in the last
/// bits of the logits with the batch schedule).
#[derive(Clone, Debug)]
pub struct LlamaConfig {
    /// KV cells (tokens) shared by all sequences.
    pub ctx_tokens: NonZeroU32,
    /// Requests decoded together; each gets `ctx_tokens / parallel` tokens at most.
    pub parallel: NonZeroU32,
    /// Threads for single-token decode steps.
    pub threads: NonZeroU32,
    /// Threads for prompt processing.
    pub threads_batch: NonZeroU32,
    /// Most tokens in one decode call (prompt chunks are cut to fit).
    pub batch_tokens: NonZeroU32,
    /// Most tokens in one physical compute step.
    pub ubatch_tokens: NonZeroU32,
    /// Requests that may wait for a slot before new ones are refused as busy.
    pub queue_max: NonZeroUsize,
    /// Most tokens one request may generate, whatever it asks for.
    pub max_tokens_max: NonZeroU32,
    /// Keep the default system prompt's KV in a shared sequence and reuse prefixes across
    /// requests.
    pub prefix_cache: bool,
    /// Flash attention: `None` lets llama.cpp decide (llama-server's default), `Some(false)`
    /// turns it off.
    pub flash_attention: Option<bool>,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
        LlamaConfig {
            ctx_tokens: NonZeroU32::new(8192).expect("non-zero"),
            parallel: NonZeroU32::new(4).expect("non-zero"),
            threads: NonZeroU32::new(cores).unwrap_or(NonZeroU32::MIN),
            threads_batch: NonZeroU32::new(cores).unwrap_or(NonZeroU32::MIN),
            batch_tokens: NonZeroU32::new(2048).expect("non-zero"),
            ubatch_tokens: NonZeroU32::new(512).expect("non-zero"),
            queue_max: NonZeroUsize::new(64).expect("non-zero"),
            max_tokens_max: NonZeroU32::new(8192).expect("non-zero"),
            prefix_cache: true,
            flash_attention: None,
        }
    }
}

/// Settings of the candle BERT embeddings engine.
#[derive(Clone, Debug)]
pub struct BertConfig {
    /// Sentences per forward pass.
    pub batch_max: NonZeroUsize,
    /// Most inputs in one `embed` call.
    pub inputs_max: NonZeroUsize,
    /// Longest input, in bytes (tokens beyond the model's limit are truncated anyway).
    pub input_bytes_max: NonZeroUsize,
    /// `embed` calls that may run at once before new ones are refused as busy.
    pub concurrent_max: NonZeroUsize,
}

impl Default for BertConfig {
    fn default() -> Self {
        BertConfig {
            batch_max: NonZeroUsize::new(32).expect("non-zero"),
            inputs_max: NonZeroUsize::new(2048).expect("non-zero"),
            input_bytes_max: NonZeroUsize::new(64 * 1024).expect("non-zero"),
            concurrent_max: NonZeroUsize::new(8).expect("non-zero"),
        }
    }
}

/// Settings for every engine kind.
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    pub llama: LlamaConfig,
    pub bert: BertConfig,
}

/// Starts the engine for a cached (or described) model.
pub fn load_engine(model: &CachedModel, config: &EngineConfig) -> Result<Arc<dyn Engine>, Error> {
    match model.manifest.engine {
        EngineKind::LlamaCpp => {
            #[cfg(feature = "llama")]
            return Ok(Arc::new(llama::LlamaEngine::load(model, &config.llama)?));
            #[cfg(not(feature = "llama"))]
            return Err(Error::BackendDisabled { what: "GGUF models", feature: "llama" });
        }
        EngineKind::CandleBert => {
            #[cfg(feature = "bert")]
            return Ok(Arc::new(bert::BertEngine::load(model, &config.bert)?));
            #[cfg(not(feature = "bert"))]
            return Err(Error::BackendDisabled { what: "BERT models", feature: "bert" });
        }
        EngineKind::TractOnnx => {
            #[cfg(feature = "tensor")]
            return Ok(Arc::new(tensor::engine::TensorEngine::load(model)?));
            #[cfg(not(feature = "tensor"))]
            return Err(Error::BackendDisabled { what: "ONNX tensor models", feature: "tensor" });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_sampling_maps_to_the_closed_enum() {
        assert_eq!(Sampling::from_openai(Some(0.0), None, None, None, Some(5)).unwrap(), Sampling::Greedy);
        assert_eq!(Sampling::from_openai(Some(0.7), None, Some(1), None, None).unwrap(), Sampling::Greedy);
        assert_eq!(
            Sampling::from_openai(Some(0.7), Some(0.9), Some(40), None, Some(7)).unwrap(),
            Sampling::Random { temperature: 0.7, top_k: 40, top_p: 0.9, min_p: 0.0, seed: 7 }
        );
        assert!(matches!(
            Sampling::from_openai(Some(3.0), None, None, None, None),
            Err(Error::InvalidParam { param: "temperature", .. })
        ));
        assert!(matches!(
            Sampling::from_openai(None, Some(0.0), None, None, None),
            Err(Error::InvalidParam { param: "top_p", .. })
        ));
        assert!(matches!(
            Sampling::from_openai(Some(f32::NAN), None, None, None, None),
            Err(Error::InvalidParam { .. })
        ));
    }

    #[test]
    fn request_hash_covers_every_field() {
        let id = plexus_types::hash(b"m");
        let none = LogitAdjust::default;
        let base = Prepared::new(id, vec![1, 2, 3], 10, Sampling::Greedy, none(), vec![]);
        let same = Prepared::new(id, vec![1, 2, 3], 10, Sampling::Greedy, none(), vec![]);
        assert_eq!(base.request_hash, same.request_hash);
        let adjusted = |presence, frequency, bias: &[(TokenId, f64)]| {
            let adjust = LogitAdjust::from_openai(Some(presence), Some(frequency), bias.iter().copied()).unwrap();
            Prepared::new(id, vec![1, 2, 3], 10, Sampling::Greedy, adjust, vec![])
        };
        // Zero penalties (either sign) and zero biases are no adjustment: the old hash.
        assert_eq!(adjusted(0.0, -0.0, &[(5, 0.0)]).request_hash, base.request_hash);
        assert_eq!(adjusted(-0.0, 0.0, &[]).spec(), plexus_types::receipt::SamplingSpec::Greedy);
        let variants = [
            Prepared::new(plexus_types::hash(b"n"), vec![1, 2, 3], 10, Sampling::Greedy, none(), vec![]),
            Prepared::new(id, vec![1, 2], 10, Sampling::Greedy, none(), vec![]),
            Prepared::new(id, vec![1, 2, 3], 11, Sampling::Greedy, none(), vec![]),
            Prepared::new(
                id,
                vec![1, 2, 3],
                10,
                Sampling::Random { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 1 },
                none(),
                vec![],
            ),
            Prepared::new(id, vec![1, 2, 3], 10, Sampling::Greedy, none(), vec!["x".into()]),
            adjusted(0.5, 0.0, &[]),
            adjusted(0.0, 0.5, &[]),
            adjusted(0.0, 0.0, &[(5, 1.0)]),
            adjusted(0.0, 0.0, &[(6, 1.0)]),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(v.request_hash, base.request_hash, "variant {i}");
            // What a transcript carries decodes to the same request.
            let spec = v.spec();
            let bytes = plexus_types::codec::to_vec(&spec);
            let back: plexus_types::receipt::SamplingSpec =
                plexus_types::codec::decode_bounded(&bytes, bytes.len(), &()).unwrap();
            let (sampling, adjust) = Sampling::from_spec(&back);
            assert_eq!((sampling, &adjust), (v.sampling, &v.adjust), "variant {i}");
        }
        // The same bias given in another order, or a token twice (the last value counts).
        let a = LogitAdjust::from_openai(None, None, [(9, 2.0), (3, -1.0)]).unwrap();
        let b = LogitAdjust::from_openai(None, None, [(3, 5.0), (9, 2.0), (3, -1.0)]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.bias, vec![(3, -1.0), (9, 2.0)]);
        // Out of range: a 400 naming the parameter.
        for (presence, frequency, bias, param) in [
            (Some(2.5), None, vec![], "presence_penalty"),
            (None, Some(-2.01), vec![], "frequency_penalty"),
            (None, Some(f64::NAN), vec![], "frequency_penalty"),
            (None, None, vec![(1, 100.5)], "logit_bias"),
            (None, None, vec![(-1, 1.0)], "logit_bias"),
        ] {
            let e = LogitAdjust::from_openai(presence, frequency, bias).unwrap_err();
            assert_eq!(e.param(), Some(param), "{e}");
        }
        let many = (0..=plexus_types::receipt::LOGIT_BIAS_MAX as TokenId).map(|t| (t, 1.0));
        assert!(LogitAdjust::from_openai(None, None, many).is_err());
        assert!(a.check_vocabulary(10).is_ok());
        assert!(a.check_vocabulary(9).is_err());
    }
}
