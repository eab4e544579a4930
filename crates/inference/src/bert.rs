//! Sentence embeddings with candle's BERT: masked mean pooling and L2 normalisation, as
//! sentence-transformers computes them for models like all-MiniLM-L6-v2.
//!
//! Inputs are tokenized once, sorted by length and run in batches of similar length, so
//! padding wastes little work. An input longer than the model reads (`max_seq_length` of
//! `sentence_bert_config.json`, else `max_position_embeddings`, at most 512 tokens) is refused
//! with [`Error::InputTooLong`], as OpenAI's embeddings API refuses one: truncating it would
//! answer for a text the client did not send.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use plexus_types::EngineKind;

use crate::models::{ModelFiles, bert_tokens_max};
use crate::{BertConfig, CachedModel, Embeddings, Engine, Error, Load, ModelInfo};

pub(crate) struct BertEngine {
    info: ModelInfo,
    model: BertModel,
    tokenizer: BertTokenizer,
    device: Device,
    pad_id: u32,
    config: BertConfig,
    running: AtomicUsize,
}

/// Decrements the running-call counter however `embed` returns.
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn candle_err(e: candle_core::Error) -> Error {
    Error::Engine(format!("candle: {e}"))
}

impl BertEngine {
    pub(crate) fn load(cached: &CachedModel, config: &BertConfig) -> Result<Self, Error> {
        let ModelFiles::CandleBert { weights, tokenizer, config: config_file } = &cached.files else {
            return Err(Error::BadModelDir { path: cached.dir.clone(), reason: "not a BERT model".into() });
        };
        let dir = &cached.dir;
        let bad = |reason: String| Error::BadModelDir { path: dir.clone(), reason };
        let config_path = dir.join(config_file);
        let config_bytes = std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let bert_config: Config =
            serde_json::from_slice(&config_bytes).map_err(|e| bad(format!("config.json is not a BERT config: {e}")))?;
        let tokens_max = bert_tokens_max(dir)? as usize;

        let weights_path = dir.join(weights);
        crate::models::check_safetensors(&weights_path)?;
        let device = Device::Cpu;
        // SAFETY: the file is memory-mapped read-only; the cache never rewrites a model file in
        // place (pull and import write a new directory and rename it).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights_path], DType::F32, &device) }
            .map_err(|e| Error::Load { path: weights_path.clone(), reason: e.to_string() })?;
        let model = BertModel::load(vb, &bert_config)
            .map_err(|e| Error::Load { path: weights_path.clone(), reason: e.to_string() })?;

        let tokenizer = load_tokenizer(&dir.join(tokenizer), tokens_max)?;

        let info = ModelInfo {
            name: cached.manifest.name.clone(),
            id: cached.id,
            manifest: cached.manifest.clone(),
            kind: EngineKind::CandleBert,
            request_tokens_max: tokens_max as u32,
            embedding_dims: Some(bert_config.hidden_size),
        };
        tracing::info!(
            target: "inference::bert",
            model = %info.name, id = %info.id, dims = bert_config.hidden_size, tokens_max, "embedding engine ready"
        );
        Ok(BertEngine {
            info,
            model,
            tokenizer,
            device,
            pad_id: bert_config.pad_token_id as u32,
            config: config.clone(),
            running: AtomicUsize::new(0),
        })
    }

    /// Embeds one batch of encodings of similar length.
    fn forward(&self, encodings: &[&tokenizers::Encoding]) -> Result<Vec<Vec<f32>>, Error> {
        let b = encodings.len();
        let t = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for e in encodings {
            let n = e.get_ids().len();
            ids.extend_from_slice(e.get_ids());
            ids.extend(std::iter::repeat_n(self.pad_id, t - n));
            mask.extend(std::iter::repeat_n(1u32, n));
            mask.extend(std::iter::repeat_n(0u32, t - n));
        }
        let ids = Tensor::from_vec(ids, (b, t), &self.device).map_err(candle_err)?;
        let mask = Tensor::from_vec(mask, (b, t), &self.device).map_err(candle_err)?;
        let types = ids.zeros_like().map_err(candle_err)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask)).map_err(candle_err)?;
        let m = mask.to_dtype(DType::F32).and_then(|m| m.unsqueeze(2)).map_err(candle_err)?;
        let summed = hidden.broadcast_mul(&m).and_then(|x| x.sum(1)).map_err(candle_err)?;
        let counts = m.sum(1).and_then(|c| c.clamp(1e-9f32, f32::MAX)).map_err(candle_err)?;
        let mean = summed.broadcast_div(&counts).map_err(candle_err)?;
        let norm = mean
            .sqr()
            .and_then(|x| x.sum_keepdim(1))
            .and_then(|x| x.sqrt())
            .and_then(|x| x.clamp(1e-12f32, f32::MAX))
            .map_err(candle_err)?;
        mean.broadcast_div(&norm).and_then(|x| x.to_vec2::<f32>()).map_err(candle_err)
    }
}

/// A BERT model's `tokenizer.json` (padding off: batches are padded per batch) and the most
/// tokens the model reads: the engine's tokenizer, and a client's copy of it.
pub(crate) struct BertTokenizer {
    inner: tokenizers::Tokenizer,
    tokens_max: usize,
}

pub(crate) fn load_tokenizer(path: &std::path::Path, tokens_max: usize) -> Result<BertTokenizer, Error> {
    let load = |e: String| Error::Load { path: path.to_path_buf(), reason: e };
    let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| load(e.to_string()))?;
    inner.with_padding(None);
    inner.with_truncation(None).map_err(|e| load(e.to_string()))?;
    Ok(BertTokenizer { inner, tokens_max })
}

impl BertTokenizer {
    /// Each input's tokens; an input longer than the model reads is refused, naming it.
    pub(crate) fn encode(&self, inputs: &[String]) -> Result<Vec<tokenizers::Encoding>, Error> {
        let encodings =
            self.inner.encode_batch(inputs.to_vec(), true).map_err(|e| Error::Engine(format!("tokenizer: {e}")))?;
        if let Some((index, e)) = encodings.iter().enumerate().find(|(_, e)| e.get_ids().len() > self.tokens_max) {
            return Err(Error::InputTooLong { index, tokens: e.get_ids().len(), max: self.tokens_max });
        }
        Ok(encodings)
    }

    /// Tokens the engine reads for `inputs`, counted by a client's copy of the tokenizer.
    pub(crate) fn count(&self, inputs: &[String]) -> Result<u32, Error> {
        Ok(self.encode(inputs)?.iter().map(|e| e.get_ids().len()).sum::<usize>() as u32)
    }
}

impl Engine for BertEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self, inputs: &[String]) -> Result<Embeddings, Error> {
        if inputs.is_empty() {
            return Err(Error::EmptyInput);
        }
        if inputs.len() > self.config.inputs_max.get() {
            return Err(Error::invalid("input", format!("at most {} inputs per request", self.config.inputs_max)));
        }
        if let Some(i) = inputs.iter().position(|s| s.is_empty()) {
            return Err(Error::invalid("input", format!("input {i} is empty")));
        }
        if let Some(i) = inputs.iter().position(|s| s.len() > self.config.input_bytes_max.get()) {
            return Err(Error::invalid(
                "input",
                format!("input {i} is longer than {} bytes", self.config.input_bytes_max),
            ));
        }
        let running = self.running.fetch_add(1, Ordering::SeqCst);
        let _guard = Running(&self.running);
        if running >= self.config.concurrent_max.get() {
            return Err(Error::Busy { queued: running, queue_max: self.config.concurrent_max.get() });
        }

        let encodings = self.tokenizer.encode(inputs)?;
        let prompt_tokens: usize = encodings.iter().map(|e| e.get_ids().len()).sum();
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); encodings.len()];
        for chunk in order.chunks(self.config.batch_max.get()) {
            let batch: Vec<&tokenizers::Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            for (&i, v) in chunk.iter().zip(self.forward(&batch)?) {
                vectors[i] = v;
            }
        }

        let output: Vec<u8> = vectors.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
        Ok(Embeddings {
            vectors,
            prompt_tokens: prompt_tokens as u32,
            request_hash: crate::embedding_request_hash(&self.info.id, inputs),
            output_hash: plexus_types::hash(&output),
        })
    }

    fn load(&self) -> Load {
        Load {
            queued: 0,
            queue_max: self.config.concurrent_max.get(),
            active: self.running.load(Ordering::Relaxed),
            batch_sequences: 0,
            batch_tokens: 0,
        }
    }
}
