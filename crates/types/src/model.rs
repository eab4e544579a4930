//! Content-addressed models. A model id is the SHA-256 of a canonical manifest naming the exact
//! weights, tokenizer and chat template, so a client knows which weights answered and a
//! provider cannot quietly swap them.

use bytes::BufMut;
use commonware_codec::{Buf, EncodeSize, Error, Read, ReadExt, Write};
use serde::{Deserialize, Serialize};

use crate::codec::{read_str, str_size, write_str};
use crate::crypto::{Hash, hash};

/// A model id: the hash of its [`ModelManifest`].
pub type ModelId = Hash;

/// Longest model name, in bytes.
pub const MODEL_NAME_BYTES_MAX: usize = 64;
/// Longest quantisation label, in bytes.
pub const QUANTIZATION_BYTES_MAX: usize = 16;

/// Which engine runs a model, and therefore what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// Text generation from a GGUF file on llama.cpp.
    LlamaCpp,
    /// Sentence embeddings from BERT safetensors on candle.
    CandleBert,
    /// A tensor model (classifier, forecaster, detector) from an ONNX graph on tract; paid per
    /// inference instead of per token.
    TractOnnx,
}

impl EngineKind {
    fn tag(self) -> u8 {
        match self {
            EngineKind::LlamaCpp => 1,
            EngineKind::CandleBert => 2,
            EngineKind::TractOnnx => 3,
        }
    }

    /// True for engines that generate text (chat/completions); false for embeddings.
    pub fn generates_text(self) -> bool {
        matches!(self, EngineKind::LlamaCpp)
    }

    /// True for tensor models (Open Inference Protocol; one row is one inference).
    pub fn is_tensor(self) -> bool {
        matches!(self, EngineKind::TractOnnx)
    }
}

/// Everything that determines what a model computes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelManifest {
    /// A human label (e.g. `smollm2-135m-instruct`); not unique, the id is.
    pub name: String,
    pub engine: EngineKind,
    /// SHA-256 of the weights file (GGUF) or of the safetensors file.
    pub weights_sha256: Hash,
    /// SHA-256 of the tokenizer: `tokenizer.json` for BERT; the tokenizer metadata for GGUF.
    pub tokenizer_sha256: Hash,
    /// SHA-256 of the chat template text ([`Hash::ZERO`] when the model has none).
    pub template_sha256: Hash,
    /// Quantisation label, e.g. `Q4_1` or `F32`.
    pub quantization: String,
    /// Context length in tokens the model is served with.
    pub context_length: u32,
}

impl ModelManifest {
    /// The model id: SHA-256 of everything that determines what the model computes — engine,
    /// weights, tokenizer, template, quantisation and context length — but not the name, which
    /// is only a label: the same weights pulled by name or served from a path have one id.
    pub fn id(&self) -> ModelId {
        let mut buf = Vec::with_capacity(self.encode_size());
        buf.extend_from_slice(b"plexus/model/v1");
        self.engine.tag().write(&mut buf);
        self.weights_sha256.write(&mut buf);
        self.tokenizer_sha256.write(&mut buf);
        self.template_sha256.write(&mut buf);
        write_str(&self.quantization, &mut buf);
        self.context_length.write(&mut buf);
        hash(&buf)
    }
}

impl Write for ModelManifest {
    fn write(&self, buf: &mut impl BufMut) {
        write_str(&self.name, buf);
        self.engine.tag().write(buf);
        self.weights_sha256.write(buf);
        self.tokenizer_sha256.write(buf);
        self.template_sha256.write(buf);
        write_str(&self.quantization, buf);
        self.context_length.write(buf);
    }
}

impl EncodeSize for ModelManifest {
    fn encode_size(&self) -> usize {
        str_size(&self.name) + 1 + 3 * 32 + str_size(&self.quantization) + 4
    }
}

impl Read for ModelManifest {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        let name = read_str(buf, MODEL_NAME_BYTES_MAX)?;
        let engine = match u8::read(buf)? {
            1 => EngineKind::LlamaCpp,
            2 => EngineKind::CandleBert,
            // Tensor models decode everywhere, but a block carrying one before execution
            // version 4 is invalid (as it is to older binaries, which cannot decode it).
            3 => EngineKind::TractOnnx,
            other => return Err(Error::InvalidEnum(other)),
        };
        Ok(ModelManifest {
            name,
            engine,
            weights_sha256: Hash::read(buf)?,
            tokenizer_sha256: Hash::read(buf)?,
            template_sha256: Hash::read(buf)?,
            quantization: read_str(buf, QUANTIZATION_BYTES_MAX)?,
            context_length: u32::read(buf)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::to_vec;
    use commonware_codec::{Copying, DecodeExt};

    fn manifest() -> ModelManifest {
        ModelManifest {
            name: "tiny".into(),
            engine: EngineKind::LlamaCpp,
            weights_sha256: hash(b"w"),
            tokenizer_sha256: hash(b"t"),
            template_sha256: hash(b"c"),
            quantization: "Q4_1".into(),
            context_length: 2048,
        }
    }

    #[test]
    fn id_is_stable_and_covers_every_field() {
        let m = manifest();
        let bytes = to_vec(&m);
        assert_eq!(bytes.len(), m.encode_size());
        assert_eq!(ModelManifest::decode(Copying(&bytes[..])).unwrap(), m);
        // Golden: the id of this manifest must never change, or every registered model would.
        assert_eq!(m.id().to_string(), "1a1285e146ea1adab4668f8f69b32880f904d5edd24e76621d428bd6efbee8cb");
        let mut renamed = m.clone();
        renamed.name = "another-label".into();
        assert_eq!(renamed.id(), m.id(), "the name is a label, not part of the identity");
        let mut other = m.clone();
        other.quantization = "Q8_0".into();
        assert_ne!(other.id(), m.id());
        let mut other = m.clone();
        other.weights_sha256 = hash(b"w2");
        assert_ne!(other.id(), m.id());
        let mut other = m.clone();
        other.context_length = 4096;
        assert_ne!(other.id(), m.id());
        let mut other = m.clone();
        other.template_sha256 = Hash::ZERO;
        assert_ne!(other.id(), m.id());
    }

    #[test]
    fn rejects_bad_bytes() {
        let mut bytes = to_vec(&manifest());
        bytes[5] = 9; // engine tag
        assert!(ModelManifest::decode(Copying(&bytes[..])).is_err());
        assert!(ModelManifest::decode(Copying(&[200u8, 1, 2][..])).is_err());
    }
}
