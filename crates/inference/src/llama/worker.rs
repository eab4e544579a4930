//! The continuous-batching loop: one thread, one llama.cpp context, many sequences.
//!
//! Sequence ids: 0 holds the shared prefix (the default system prompt); slot `k` uses sequence
//! `k + 1`. The KV cache is unified, so copying a prefix from one sequence to another
//! (`seq_cp`) only tags existing cells: no memory is copied and no token is computed twice.
//!
//! Each step:
//! 1. admit queued requests into free slots, reusing the longest prefix already in the cache
//!    (seq 0, a finished request's cells, or a running request's prompt: a request that shares
//!    a long prefix with a prompt still being computed waits for it instead of computing the
//!    same tokens again);
//! 2. one batch: the next token of every generating sequence first, then prompt chunks, oldest
//!    request first, up to the batch size (so a long prompt never starves decoding and requests
//!    start in arrival order);
//! 3. one `decode`, then sample each sequence that produced logits and stream its text. Sampling
//!    is [`crate::sampler`]'s own seeded, replayable sampler over the raw logits, not llama.cpp's
//!    sequential `dist` sampler, so a verifier can check every position from one prefill.
//!
//! Bounds: the queue (`queue_max`) is a bounded channel and requests leave it only into a free
//! slot; each request uses at most `request_tokens_max` cells and the context holds
//! `parallel × request_tokens_max` plus the shared prefix, so the KV cache cannot overflow.
//! Cancelled requests (their receiver dropped) leave at the next step.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Instant;

use llama_cpp_2::DecodeError;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::{CONTEXT_LOCK, Job, Shared};
use crate::fingerprint::{fingerprint, is_probe_position, probe};
use crate::text::{Step, TextStream};
use crate::{Error, Event, Finish, FinishReason, LlamaConfig, LogitsProbe, TokenId, TokenLogprob, TopLogprob};

/// A request waits for another's prompt only when that saves at least this many tokens.
const SHARE_WAIT_TOKENS_MIN: usize = 32;
/// The shared-prefix sequence.
const PREFIX_SEQ: i32 = 0;

/// Entry point of the engine thread.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    backend: &LlamaBackend,
    model: &LlamaModel,
    config: &LlamaConfig,
    request_tokens_max: u32,
    prefix: Vec<LlamaToken>,
    ends: Vec<LlamaToken>,
    rx: Receiver<Job>,
    shared: Arc<Shared>,
    ready: Sender<Result<(), Error>>,
) {
    let parallel = config.parallel.get();
    // Room for every slot's worst case plus the prefix, so decode never runs out of cells.
    let n_ctx = (parallel * request_tokens_max + prefix.len() as u32).div_ceil(256) * 256;
    let params = LlamaContextParams::default()
        .with_n_ctx(std::num::NonZeroU32::new(n_ctx))
        .with_n_batch(config.batch_tokens.get())
        .with_n_ubatch(config.ubatch_tokens.get())
        .with_n_seq_max(parallel + 1)
        .with_n_threads(config.threads.get() as i32)
        .with_n_threads_batch(config.threads_batch.get() as i32)
        .with_kv_unified(true)
        .with_swa_full(false)
        .with_flash_attention_policy(match config.flash_attention {
            None => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
            Some(true) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            Some(false) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        });
    let ctx = {
        let _guard = CONTEXT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        model.new_context(backend, params)
    };
    let ctx = match ctx {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(Error::Engine(format!("creating a llama.cpp context of {n_ctx} tokens: {e}"))));
            return;
        }
    };
    let n_batch = ctx.n_batch() as usize;
    let n_ubatch = ctx.n_ubatch() as usize;
    let mut worker = Worker {
        ctx,
        model,
        batch: LlamaBatch::new(n_batch, 1),
        n_batch,
        n_ubatch,
        slots: (0..parallel as i32).map(|k| Slot::new(k + 1)).collect(),
        prefix: Vec::new(),
        ends,
        adjusted: Vec::new(),
        shared,
        clock: 0,
    };
    if let Err(e) = worker.load_prefix(&prefix) {
        let _ = ready.send(Err(e));
        return;
    }
    let _ = ready.send(Ok(()));
    worker.serve(&rx);
}

struct Slot {
    seq: i32,
    /// Tokens whose KV this sequence holds, at positions `0..cached.len()`.
    cached: Vec<LlamaToken>,
    last_used: u64,
    active: Option<Active>,
}

impl Slot {
    fn new(seq: i32) -> Self {
        Slot { seq, cached: Vec::new(), last_used: 0, active: None }
    }
}

enum Phase {
    /// Waiting for slot `source` to finish computing the first `len` prompt tokens.
    Waiting { source: usize, len: usize },
    /// Computing the prompt; `cached.len()` tokens are done.
    Prompt,
    /// Generating; `last` is the sampled token not yet in the KV cache.
    Generate { last: LlamaToken },
}

struct Active {
    job: Job,
    serial: u64,
    phase: Phase,
    /// Index in the current batch of this sequence's logits, if it has some.
    logits_at: Option<i32>,
    text: TextStream,
    full_text: String,
    out: Vec<TokenId>,
    /// How many of `out` went out with a `Text` event already.
    sent: usize,
    /// With [`Prepared::logprobs`]: one per generated id but an end of generation.
    logprobs: Vec<TokenLogprob>,
    probes: Vec<LogitsProbe>,
    cached_tokens: u32,
    first_token: Option<Instant>,
    /// How often each token was generated, when the request has penalties.
    counts: crate::sampler::TokenCounts,
    /// The request's grammar, following the output.
    constraint: Option<crate::grammar::Constraint>,
}

impl Active {
    /// After a stop string cut the text: drops the log-probabilities of the tokens that lie
    /// wholly in the cut part (the stop string and anything after it), as llama-server does; a
    /// token that begins in the text keeps its entry.
    fn drop_logprobs_past_text(&mut self) {
        let mut start = 0;
        let keep = self.logprobs.iter().take_while(|t| {
            let inside = start < self.full_text.len();
            start += t.bytes.len();
            inside
        });
        let keep = keep.count();
        self.logprobs.truncate(keep);
    }

    /// The ids (and their log-probabilities, if asked for) not yet sent with a `Text` event,
    /// marked sent.
    fn unsent(&mut self) -> (Vec<TokenId>, Vec<TokenLogprob>) {
        let ids = self.out[self.sent..].to_vec();
        // Log-probabilities skip only a final end of generation (sent, if at all, last).
        let logprobs = self.logprobs.get(self.sent..).map(<[_]>::to_vec).unwrap_or_default();
        self.sent = self.out.len();
        (ids, logprobs)
    }
}

/// What one batch holds for one slot.
#[derive(Clone, Copy)]
struct Planned {
    slot: usize,
    /// Prompt tokens added (0 for a decode token).
    prompt: usize,
}

struct Worker<'m> {
    ctx: LlamaContext<'m>,
    model: &'m LlamaModel,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    n_ubatch: usize,
    slots: Vec<Slot>,
    /// Tokens held by sequence 0.
    prefix: Vec<LlamaToken>,
    /// The template's end-of-turn ids beyond the vocabulary's own (`super::end_of_turn`).
    ends: Vec<LlamaToken>,
    shared: Arc<Shared>,
    clock: u64,
    /// Where a sequence's adjusted logits are written (one vocabulary of floats, reused).
    adjusted: Vec<f32>,
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Worker<'_> {
    /// Computes the shared prefix into sequence 0.
    fn load_prefix(&mut self, prefix: &[LlamaToken]) -> Result<(), Error> {
        for chunk_start in (0..prefix.len()).step_by(self.n_batch) {
            let chunk = &prefix[chunk_start..(chunk_start + self.n_batch).min(prefix.len())];
            self.batch.clear();
            for (i, &t) in chunk.iter().enumerate() {
                self.batch
                    .add(t, (chunk_start + i) as i32, &[PREFIX_SEQ], false)
                    .map_err(|e| Error::Engine(e.to_string()))?;
            }
            self.ctx.decode(&mut self.batch).map_err(|e| Error::Engine(format!("computing the shared prefix: {e}")))?;
        }
        self.prefix = prefix.to_vec();
        Ok(())
    }

    fn serve(&mut self, rx: &Receiver<Job>) {
        let mut serial = 0u64;
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                self.fail_all(|| Error::EngineStopped);
                return;
            }
            // Admit: block only when there is nothing else to do.
            while self.slots.iter().any(|s| s.active.is_none()) {
                let busy = self.slots.iter().any(|s| s.active.is_some());
                let job = if busy {
                    match rx.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => break,
                    }
                } else {
                    match rx.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                };
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                if job.events.is_closed() {
                    continue;
                }
                serial += 1;
                let Some(k) = self.free_slot(&job.prepared.tokens) else { break };
                self.admit(k, job, serial);
            }
            self.drop_cancelled();
            self.shared.active.store(self.slots.iter().filter(|s| s.active.is_some()).count(), Ordering::Relaxed);
            if self.slots.iter().all(|s| s.active.is_none()) {
                if self.shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            self.step();
            // Again after the step: requests that just finished must not look active while
            // the loop waits for the next one.
            self.shared.active.store(self.slots.iter().filter(|s| s.active.is_some()).count(), Ordering::Relaxed);
        }
    }

    /// The free slot for a prompt: the one whose cached tokens share the longest prefix with it
    /// (reused in place: no copy, and no second set of cells left behind to lengthen every
    /// attention scan), else the least recently used (its cells are the least likely to be
    /// wanted again).
    fn free_slot(&self, tokens: &[TokenId]) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active.is_none())
            .max_by_key(|(_, s)| {
                let shared = s.cached.iter().zip(tokens).take_while(|(a, b)| a.0 == **b).count();
                (shared, std::cmp::Reverse(s.last_used))
            })
            .map(|(k, _)| k)
    }

    fn admit(&mut self, k: usize, mut job: Job, serial: u64) {
        let text = TextStream::new(&job.prepared.stop);
        let constraint = job.prepared.constraint.take();
        self.clock += 1;
        self.slots[k].last_used = self.clock;
        let tokens: Vec<LlamaToken> = job.prepared.tokens.iter().map(|&t| LlamaToken(t)).collect();
        let active = Active {
            job,
            serial,
            phase: Phase::Prompt,
            logits_at: None,
            text,
            full_text: String::new(),
            out: Vec::new(),
            sent: 0,
            logprobs: Vec::new(),
            probes: Vec::new(),
            cached_tokens: 0,
            first_token: None,
            counts: Default::default(),
            constraint,
        };
        self.slots[k].active = Some(active);

        // A running prompt that shares much more than anything already computed: wait for it.
        let have = self.best_cached_source(k, &tokens).map_or(0, |(_, l)| l);
        let waiting = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(j, s)| j != k && matches!(s.active.as_ref().map(|a| &a.phase), Some(Phase::Prompt)))
            .map(|(j, s)| {
                let prompt = &s.active.as_ref().map(|a| &a.job.prepared.tokens[..]).unwrap_or(&[]);
                let l = tokens.iter().zip(prompt.iter()).take_while(|(x, y)| x.0 == **y).count();
                (j, l.min(tokens.len() - 1))
            })
            .max_by_key(|&(_, l)| l)
            .filter(|&(_, l)| l >= have + SHARE_WAIT_TOKENS_MIN);
        match waiting {
            Some((source, len)) => {
                if let Some(a) = self.slots[k].active.as_mut() {
                    a.phase = Phase::Waiting { source, len };
                }
            }
            None => self.attach_prefix(k),
        }
    }

    /// The sequence (and slot, `None` for the prefix sequence) whose computed tokens share the
    /// longest prefix with `tokens`, leaving at least one token to compute.
    fn best_cached_source(&self, k: usize, tokens: &[LlamaToken]) -> Option<(Option<usize>, usize)> {
        let cap = tokens.len().saturating_sub(1);
        let mut best: Option<(Option<usize>, usize)> = None;
        let mut consider = |src: Option<usize>, cached: &[LlamaToken]| {
            let l = common_prefix(tokens, cached).min(cap);
            // Prefer the slot itself on ties: reusing in place needs no copy.
            if l > 0 && best.is_none_or(|(_, b)| l > b || (l == b && src == Some(k))) {
                best = Some((src, l));
            }
        };
        consider(None, &self.prefix);
        for (j, s) in self.slots.iter().enumerate() {
            consider(Some(j), &s.cached);
        }
        best
    }

    /// Points slot `k`'s sequence at the longest computed prefix of its prompt.
    fn attach_prefix(&mut self, k: usize) {
        let Some(active) = self.slots[k].active.as_ref() else { return };
        let tokens: Vec<LlamaToken> = active.job.prepared.tokens.iter().map(|&t| LlamaToken(t)).collect();
        let seq = self.slots[k].seq;
        let best = self.best_cached_source(k, &tokens);
        let reused = match best {
            Some((Some(j), len)) if j == k => self.keep_own_prefix(k, len),
            Some((src, len)) => {
                self.clear_seq(k);
                let src_seq = src.map_or(PREFIX_SEQ, |j| self.slots[j].seq);
                match self.ctx.copy_kv_cache_seq(src_seq, seq, Some(0), Some(len as u32)) {
                    Ok(()) => {
                        self.slots[k].cached = tokens[..len].to_vec();
                        len
                    }
                    Err(_) => 0,
                }
            }
            None => {
                self.clear_seq(k);
                0
            }
        };
        if let Some(a) = self.slots[k].active.as_mut() {
            a.cached_tokens = reused as u32;
            a.phase = Phase::Prompt;
        }
    }

    /// Keeps slot `k`'s first `len` cells and drops the rest; returns how many were kept.
    fn keep_own_prefix(&mut self, k: usize, len: usize) -> usize {
        let seq = self.slots[k].seq;
        if self.ctx.clear_kv_cache_seq(Some(seq as u32), Some(len as u32), None).unwrap_or(false) {
            self.slots[k].cached.truncate(len);
            return len;
        }
        self.clear_seq(k);
        0
    }

    fn clear_seq(&mut self, k: usize) {
        let seq = self.slots[k].seq;
        let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
        self.slots[k].cached.clear();
    }

    fn drop_cancelled(&mut self) {
        for s in &mut self.slots {
            if s.active.as_ref().is_some_and(|a| a.job.events.is_closed()) {
                s.active = None;
            }
        }
    }

    /// Starts slots whose prefix donor is done (or gone).
    fn resolve_waiting(&mut self) {
        for k in 0..self.slots.len() {
            let Some(Phase::Waiting { source, len }) = self.slots[k].active.as_ref().map(|a| &a.phase) else {
                continue;
            };
            let (source, len) = (*source, *len);
            let donor_busy = self.slots[source]
                .active
                .as_ref()
                .is_some_and(|a| matches!(a.phase, Phase::Prompt) && self.slots[source].cached.len() < len);
            if !donor_busy {
                self.attach_prefix(k);
            }
        }
    }

    fn step(&mut self) {
        self.resolve_waiting();
        // While some sequences are generating, cap prompt work per step at one micro-batch so
        // their next tokens are not delayed by a whole long prompt; alone, take all we can.
        let generating =
            self.slots.iter().any(|s| s.active.as_ref().is_some_and(|a| matches!(a.phase, Phase::Generate { .. })));
        let mut prompt_budget = if generating { self.n_ubatch } else { self.n_batch };
        loop {
            let plan = self.build_batch(prompt_budget);
            if plan.is_empty() {
                return;
            }
            self.shared.batch_sequences.store(plan.len(), Ordering::Relaxed);
            self.shared.batch_tokens.store(self.batch.n_tokens() as usize, Ordering::Relaxed);
            match self.ctx.decode(&mut self.batch) {
                Ok(()) => {
                    self.after_decode(&plan);
                    return;
                }
                Err(DecodeError::NoKvCacheSlot) => {
                    // Nothing was applied. Free cells kept for reuse, then try smaller chunks.
                    if self.evict_idle() {
                        continue;
                    }
                    let had_prompt = plan.iter().any(|p| p.prompt > 0);
                    if had_prompt && prompt_budget > 1 {
                        prompt_budget /= 2;
                        continue;
                    }
                    tracing::error!(target: "inference::llama", "KV cache full although every sequence is within its budget");
                    for p in plan {
                        self.fail_slot(p.slot, Error::ContextFull);
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(target: "inference::llama", error = %e, "decode failed");
                    for p in plan {
                        self.fail_slot(p.slot, Error::Engine(format!("decode failed: {e}")));
                    }
                    return;
                }
            }
        }
    }

    fn evict_idle(&mut self) -> bool {
        let mut freed = false;
        for k in 0..self.slots.len() {
            if self.slots[k].active.is_none() && !self.slots[k].cached.is_empty() {
                self.clear_seq(k);
                freed = true;
            }
        }
        freed
    }

    /// Fills the batch: decode tokens first, then prompt chunks oldest first.
    fn build_batch(&mut self, prompt_budget: usize) -> Vec<Planned> {
        self.batch.clear();
        let mut plan = Vec::new();
        for (k, s) in self.slots.iter_mut().enumerate() {
            let Some(a) = s.active.as_mut() else { continue };
            a.logits_at = None;
            if let Phase::Generate { last } = a.phase {
                let at = self.batch.n_tokens();
                if self.batch.add(last, s.cached.len() as i32, &[s.seq], true).is_ok() {
                    a.logits_at = Some(at);
                    plan.push(Planned { slot: k, prompt: 0 });
                }
            }
        }
        let mut order: Vec<(u64, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(k, s)| s.active.as_ref().filter(|a| matches!(a.phase, Phase::Prompt)).map(|a| (a.serial, k)))
            .collect();
        order.sort_unstable();
        let mut budget = prompt_budget;
        for (_, k) in order {
            let room = (self.n_batch - self.batch.n_tokens() as usize).min(budget);
            if room == 0 {
                break;
            }
            let s = &mut self.slots[k];
            let Some(a) = s.active.as_mut() else { continue };
            let done = s.cached.len();
            let total = a.job.prepared.tokens.len();
            let take = (total - done).min(room);
            let mut added = 0;
            for i in done..done + take {
                let last = i + 1 == total;
                let at = self.batch.n_tokens();
                if self.batch.add(LlamaToken(a.job.prepared.tokens[i]), i as i32, &[s.seq], last).is_err() {
                    break;
                }
                if last {
                    a.logits_at = Some(at);
                }
                added += 1;
            }
            if added > 0 {
                budget -= added;
                plan.push(Planned { slot: k, prompt: added });
            }
        }
        plan
    }

    fn after_decode(&mut self, plan: &[Planned]) {
        for p in plan {
            let s = &mut self.slots[p.slot];
            let Some(a) = s.active.as_mut() else { continue };
            if p.prompt > 0 {
                let done = s.cached.len();
                s.cached.extend(a.job.prepared.tokens[done..done + p.prompt].iter().map(|&t| LlamaToken(t)));
            } else if let Phase::Generate { last } = a.phase {
                s.cached.push(last);
            }
            if a.logits_at.is_some() {
                self.sample(p.slot);
            }
        }
    }

    fn sample(&mut self, k: usize) {
        let vocab = self.model.vocab();
        let s = &mut self.slots[k];
        let Some(a) = s.active.as_mut() else { return };
        let Some(at) = a.logits_at.take() else { return };
        let position = a.out.len() as u32;
        let logits = self.ctx.get_logits_ith(at);
        if is_probe_position(position) {
            a.probes.push(probe(position, logits));
        }
        // The grammar's mask, then the pick among what it allows; a grammar that cannot go on
        // (its work bound) fails the request, as it would on every machine.
        let mask = match a.constraint.as_mut().map(|c| c.mask()).transpose() {
            Ok(mask) => mask,
            Err(e) => return self.fail_slot(k, e),
        };
        let prepared = &a.job.prepared;
        let picked_from =
            crate::sampler::adjusted(logits, &prepared.adjust, &a.counts, mask.as_ref(), &mut self.adjusted);
        let token = LlamaToken(crate::sampler::choose(picked_from, &prepared.sampling, position));
        if let Some(Err(e)) = a.constraint.as_mut().map(|c| c.advance(token.0)) {
            return self.fail_slot(k, e);
        }
        if prepared.adjust.penalises() {
            *a.counts.entry(token.0).or_default() += 1;
        }
        if let Some(top) = a.job.prepared.logprobs.filter(|_| !super::is_end(self.model, &self.ends, token)) {
            // From the logits just sampled from, before the next decode overwrites them.
            let (logprob, best) = crate::sampler::logprobs(logits, token.0, usize::from(top));
            let bytes = |t: TokenId| vocab.token_to_piece(LlamaToken(t), true, None);
            a.logprobs.push(TokenLogprob {
                token: token.0,
                bytes: bytes(token.0),
                logprob,
                top: best.into_iter().map(|(t, logprob)| TopLogprob { token: t, bytes: bytes(t), logprob }).collect(),
            });
        }
        a.out.push(token.0);
        if a.first_token.is_none() {
            a.first_token = Some(Instant::now());
        }
        let n_out = a.out.len() as u32;
        let mut finish = None;
        if super::is_end(self.model, &self.ends, token) {
            finish = Some((FinishReason::Stop, true));
        } else {
            let piece = vocab.token_to_piece(token, false, None);
            let (text, stopped) = match a.text.push(&piece) {
                Step::Text(t) => (t, false),
                Step::Stop(t) => (t, true),
            };
            a.full_text.push_str(&text);
            if stopped {
                a.drop_logprobs_past_text();
            }
            if !text.is_empty() {
                let (ids, logprobs) = a.unsent();
                let _ = a.job.events.send(Event::Text { text, completion_tokens: n_out, ids, logprobs });
            }
            if stopped {
                finish = Some((FinishReason::Stop, false));
            } else if n_out >= a.job.prepared.max_tokens {
                finish = Some((FinishReason::Length, true));
            } else {
                a.phase = Phase::Generate { last: token };
            }
        }
        if let Some((reason, flush)) = finish {
            self.finish(k, reason, flush);
        }
    }

    /// Ends slot `k`'s request. `flush` sends text held back for a stop string that never
    /// completed (not after a stop string matched: that text is cut).
    fn finish(&mut self, k: usize, reason: FinishReason, flush: bool) {
        self.clock += 1;
        let s = &mut self.slots[k];
        s.last_used = self.clock;
        let Some(mut a) = s.active.take() else { return };
        if flush {
            let tail = a.text.finish();
            if !tail.is_empty() {
                a.full_text.push_str(&tail);
                let (ids, logprobs) = a.unsent();
                let _ =
                    a.job.events.send(Event::Text { text: tail, completion_tokens: a.out.len() as u32, ids, logprobs });
            }
        }
        let first = a.first_token.unwrap_or_else(Instant::now);
        let finish = Finish {
            reason,
            prompt_tokens: a.job.prepared.tokens.len() as u32,
            completion_tokens: a.out.len() as u32,
            cached_tokens: a.cached_tokens,
            text: a.full_text,
            tokens: a.out,
            logprobs: a.logprobs,
            logits_fingerprint: fingerprint(&a.probes),
            probes: a.probes,
            time_to_first_token: first.duration_since(a.job.enqueued).as_secs_f64(),
        };
        let _ = a.job.events.send(Event::Done(finish));
    }

    fn fail_slot(&mut self, k: usize, error: Error) {
        if let Some(a) = self.slots[k].active.take() {
            let _ = a.job.events.send(Event::Failed(error));
        }
        self.clear_seq(k);
    }

    fn fail_all(&mut self, error: impl Fn() -> Error) {
        for k in 0..self.slots.len() {
            if self.slots[k].active.is_some() {
                self.fail_slot(k, error());
            }
        }
    }
}
