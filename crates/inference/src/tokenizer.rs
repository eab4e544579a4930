//! A model's tokenizer (and chat template) without its weights: what a client needs to count
//! a request's prompt tokens itself, compute the request hash a provider must attest to, and
//! check that the output token ids a provider reports spell the text it sent. The client pays
//! for tokens it can count this way, never for a number a provider merely states.
//!
//! Built from the same cached model files as the engine (for GGUF: llama.cpp's vocab-only load;
//! for BERT: `tokenizer.json`), so its counts are the engine's counts.

use plexus_types::{EngineKind, Hash};

use crate::{CachedModel, Error, GenerateRequest, Prepared, TokenId};

/// A loaded tokenizer of one content-addressed model.
pub struct Tokenizer {
    id: plexus_types::ModelId,
    kind: Kind,
}

enum Kind {
    #[cfg(feature = "llama")]
    Text(crate::llama::LlamaTokenizer),
    #[cfg(feature = "bert")]
    Embed(crate::bert::BertTokenizer),
}

/// What a sequence of generated token ids spells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spelled {
    /// The text bytes, as the engine streams them (end-of-generation tokens spell nothing).
    pub bytes: Vec<u8>,
    /// How many of the ids are end-of-generation tokens.
    pub ends: usize,
}

impl Tokenizer {
    /// Loads the tokenizer of a cached model.
    pub fn load(cached: &CachedModel) -> Result<Tokenizer, Error> {
        let kind = match cached.manifest.engine {
            EngineKind::LlamaCpp => {
                #[cfg(feature = "llama")]
                {
                    Kind::Text(crate::llama::LlamaTokenizer::load(cached)?)
                }
                #[cfg(not(feature = "llama"))]
                return Err(Error::BackendDisabled { what: "GGUF models", feature: "llama" });
            }
            EngineKind::CandleBert => {
                #[cfg(feature = "bert")]
                {
                    let crate::models::ModelFiles::CandleBert { tokenizer, .. } = &cached.files else {
                        return Err(Error::BadModelDir { path: cached.dir.clone(), reason: "not a BERT model".into() });
                    };
                    let tokens_max = crate::models::bert_tokens_max(&cached.dir)? as usize;
                    Kind::Embed(crate::bert::load_tokenizer(&cached.dir.join(tokenizer), tokens_max)?)
                }
                #[cfg(not(feature = "bert"))]
                return Err(Error::BackendDisabled { what: "BERT models", feature: "bert" });
            }
            EngineKind::TractOnnx => {
                return Err(Error::Unsupported { what: "tokenization", model: cached.manifest.name.clone() });
            }
        };
        Ok(Tokenizer { id: cached.id, kind })
    }

    /// The model this tokenizer belongs to.
    pub fn model(&self) -> plexus_types::ModelId {
        self.id
    }

    /// Renders, tokenizes and checks a generation request exactly as the engine does (against
    /// the model's full context): its prompt tokens and its request hash.
    pub fn prepare(&self, request: GenerateRequest) -> Result<Prepared, Error> {
        match &self.kind {
            #[cfg(feature = "llama")]
            Kind::Text(t) => t.prepare(request),
            #[allow(unreachable_patterns)]
            _ => Err(Error::Unsupported { what: "text generation", model: self.id.to_string() }),
        }
    }

    /// Compiles a grammar against this vocabulary: what a client checks a constrained
    /// answer's ids against ([`crate::grammar::Constraint::check`]).
    pub fn grammar(&self, spec: &plexus_types::receipt::GrammarSpec) -> Result<crate::grammar::Constraint, Error> {
        match &self.kind {
            #[cfg(feature = "llama")]
            Kind::Text(t) => t.grammar(spec),
            #[allow(unreachable_patterns)]
            _ => Err(Error::Unsupported { what: "constrained generation", model: self.id.to_string() }),
        }
    }

    /// What `ids` spell; an error if one is not in the vocabulary.
    pub fn spell(&self, ids: &[TokenId]) -> Result<Spelled, Error> {
        match &self.kind {
            #[cfg(feature = "llama")]
            Kind::Text(t) => t
                .spell(ids)
                .map(|(bytes, ends)| Spelled { bytes, ends })
                .ok_or_else(|| Error::invalid("output_ids", "a token id is outside the vocabulary")),
            #[allow(unreachable_patterns)]
            _ => Err(Error::Unsupported { what: "text generation", model: self.id.to_string() }),
        }
    }

    /// The tokens an embeddings request reads and its request hash (an input longer than the
    /// model reads is refused, as the engine refuses it).
    pub fn embedding_request(&self, inputs: &[String]) -> Result<(u32, Hash), Error> {
        match &self.kind {
            #[cfg(feature = "bert")]
            Kind::Embed(t) => {
                if inputs.is_empty() || inputs.iter().any(String::is_empty) {
                    return Err(Error::EmptyInput);
                }
                Ok((t.count(inputs)?, crate::embedding_request_hash(&self.id, inputs)))
            }
            #[allow(unreachable_patterns)]
            _ => Err(Error::Unsupported { what: "embeddings", model: self.id.to_string() }),
        }
    }
}
