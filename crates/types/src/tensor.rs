//! Tensor inferences as the chain sees them: the canonical request and output hashes a
//! provider's attestation of a tensor-model inference commits to, and [`TensorEvidence`], what
//! a client puts on chain to challenge one.
//!
//! A tensor inference is attested like a generation ([`Attestation`]) with `input_tokens = 0`,
//! `output_tokens` = the rows of the batch (one paid inference each) and no output ids. Its
//! `request_hash` covers the model and every input (name, shape, values) and its `output_hash`
//! every output sent (name, shape, values), both computed by [`TensorHasher`] on the provider,
//! the gateway and, from a challenge's evidence, the chain. Values are hashed as the
//! little-endian bytes of their `f32` bit patterns, so two parties agree on a hash exactly when
//! they hold the same bits.

use bytes::BufMut;
use commonware_codec::{Buf, EncodeSize, Error, Read, ReadExt, Write};
use serde::{Deserialize, Serialize};

use crate::codec::{read_str, read_vec, str_size, write_str};
use crate::{Attestation, Hash, ModelId};

/// Most tensors on either side of a piece of evidence.
pub const EVIDENCE_TENSORS_MAX: usize = 8;
/// Most dimensions of one tensor, the batch included.
pub const EVIDENCE_RANK_MAX: usize = 4;
/// Most values in one piece of evidence, inputs and outputs together: 4 bytes each, so a
/// challenge stays well inside one transaction.
pub const EVIDENCE_VALUES_MAX: usize = 14_000;
/// Longest tensor name, in bytes.
pub const EVIDENCE_NAME_BYTES_MAX: usize = 64;

/// Builds the canonical request hash ([`TensorHasher::request`], then one
/// [`TensorHasher::input`] per input) or output hash ([`TensorHasher::outputs`], then one
/// [`TensorHasher::output`] per output sent).
pub struct TensorHasher(Vec<u8>);

impl TensorHasher {
    /// The request hash of an inference on `model`.
    pub fn request(model: &ModelId) -> Self {
        let mut buf = b"plexus/tensor-request/v1".to_vec();
        buf.extend_from_slice(model.as_bytes());
        TensorHasher(buf)
    }

    /// The output hash of an inference.
    pub fn outputs() -> Self {
        TensorHasher(b"plexus/tensor-output/v1".to_vec())
    }

    /// Adds an input: name, rank, dimensions, values (as `f32` bits).
    pub fn input(&mut self, name: &str, shape: &[u64], bits: impl IntoIterator<Item = u32>) {
        self.name(name);
        self.0.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        self.values(shape, bits);
    }

    /// Adds an output: name, dimensions, values (as `f32` bits). Without the rank, as version 1
    /// of the layout has it: a reader must know each output's rank (from the model's spec).
    pub fn output(&mut self, name: &str, shape: &[u64], bits: impl IntoIterator<Item = u32>) {
        self.name(name);
        self.values(shape, bits);
    }

    fn name(&mut self, name: &str) {
        self.0.extend_from_slice(&(name.len() as u32).to_le_bytes());
        self.0.extend_from_slice(name.as_bytes());
    }

    fn values(&mut self, shape: &[u64], bits: impl IntoIterator<Item = u32>) {
        for d in shape {
            self.0.extend_from_slice(&d.to_le_bytes());
        }
        for b in bits {
            self.0.extend_from_slice(&b.to_le_bytes());
        }
    }

    pub fn finish(self) -> Hash {
        crate::hash(&self.0)
    }
}

/// One tensor of a piece of evidence: values as `f32` bit patterns (so the evidence, like every
/// transaction, has one encoding and compares exactly).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EvidenceTensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub bits: Vec<u32>,
}

impl EvidenceTensor {
    pub fn from_f32(name: &str, shape: &[usize], data: &[f32]) -> Self {
        EvidenceTensor {
            name: name.into(),
            shape: shape.iter().map(|&d| d as u64).collect(),
            bits: data.iter().map(|v| v.to_bits()).collect(),
        }
    }

    pub fn values(&self) -> Vec<f32> {
        self.bits.iter().map(|&b| f32::from_bits(b)).collect()
    }

    /// The first dimension: the rows of the batch.
    pub fn rows(&self) -> u64 {
        self.shape.first().copied().unwrap_or(0)
    }
}

impl Write for EvidenceTensor {
    fn write(&self, buf: &mut impl BufMut) {
        write_str(&self.name, buf);
        self.shape.write(buf);
        self.bits.write(buf);
    }
}
impl EncodeSize for EvidenceTensor {
    fn encode_size(&self) -> usize {
        str_size(&self.name) + self.shape.encode_size() + self.bits.encode_size()
    }
}
impl Read for EvidenceTensor {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        let name = read_str(buf, EVIDENCE_NAME_BYTES_MAX)?;
        let shape: Vec<u64> = read_vec(buf, EVIDENCE_RANK_MAX, &())?;
        let bits: Vec<u32> = read_vec(buf, EVIDENCE_VALUES_MAX, &())?;
        let elements = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        if shape.is_empty() || elements != Some(bits.len() as u64) {
            return Err(Error::Invalid("tensor", "the values do not fill the shape"));
        }
        Ok(EvidenceTensor { name, shape, bits })
    }
}

/// The evidence of a challenge of a tensor inference: the request (model and inputs) and the
/// outputs a provider attested to. Anyone can check it is what the provider signed
/// ([`TensorEvidence::matches`]) and re-run it on their own copy of the model.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorEvidence {
    pub model: ModelId,
    pub inputs: Vec<EvidenceTensor>,
    pub outputs: Vec<EvidenceTensor>,
}

impl TensorEvidence {
    pub fn request_hash(&self) -> Hash {
        let mut h = TensorHasher::request(&self.model);
        for t in &self.inputs {
            h.input(&t.name, &t.shape, t.bits.iter().copied());
        }
        h.finish()
    }

    pub fn output_hash(&self) -> Hash {
        let mut h = TensorHasher::outputs();
        for t in &self.outputs {
            h.output(&t.name, &t.shape, t.bits.iter().copied());
        }
        h.finish()
    }

    /// The rows of the batch: one inference each.
    pub fn rows(&self) -> u64 {
        self.inputs.first().map_or(0, EvidenceTensor::rows)
    }

    /// Whether `att` attests to exactly this inference: same model, request and outputs, and
    /// one paid inference per row.
    pub fn matches(&self, att: &Attestation) -> Result<(), String> {
        if att.model != self.model {
            return Err(format!("the attestation is for model {}, the evidence for {}", att.model, self.model));
        }
        let rows = self.rows();
        if rows == 0 || self.inputs.iter().chain(&self.outputs).any(|t| t.rows() != rows) {
            return Err("every tensor of the evidence must have the same, positive, number of rows".into());
        }
        if att.input_tokens != 0 || u64::from(att.output_tokens) != rows || att.output_ids_hash != Hash::ZERO {
            return Err("the attestation is not of a tensor inference of this many rows".into());
        }
        if att.request_hash != self.request_hash() {
            return Err("the evidence is not the request the attestation names".into());
        }
        if att.output_hash != self.output_hash() {
            return Err("the evidence's outputs are not what the attestation commits to".into());
        }
        Ok(())
    }
}

impl Write for TensorEvidence {
    fn write(&self, buf: &mut impl BufMut) {
        self.model.write(buf);
        self.inputs.write(buf);
        self.outputs.write(buf);
    }
}
impl EncodeSize for TensorEvidence {
    fn encode_size(&self) -> usize {
        32 + self.inputs.encode_size() + self.outputs.encode_size()
    }
}
impl Read for TensorEvidence {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        let model = Hash::read(buf)?;
        let inputs: Vec<EvidenceTensor> = read_vec(buf, EVIDENCE_TENSORS_MAX, &())?;
        let outputs: Vec<EvidenceTensor> = read_vec(buf, EVIDENCE_TENSORS_MAX, &())?;
        let values: usize = inputs.iter().chain(&outputs).map(|t| t.bits.len()).sum();
        if inputs.is_empty() || outputs.is_empty() || values > EVIDENCE_VALUES_MAX {
            return Err(Error::Invalid("tensor evidence", "needs inputs and outputs, within the size limit"));
        }
        Ok(TensorEvidence { model, inputs, outputs })
    }
}

#[cfg(test)]
mod tests {
    use commonware_codec::{DecodeExt, Encode};

    use super::*;

    fn evidence() -> TensorEvidence {
        TensorEvidence {
            model: crate::hash(b"model"),
            inputs: vec![EvidenceTensor::from_f32("x", &[2, 3], &[0.5, -1.0, 2.0, 0.0, 0.125, 7.25])],
            outputs: vec![EvidenceTensor::from_f32("y", &[2, 1], &[0.25, -0.75])],
        }
    }

    /// The hashes are the ones providers have been signing since tensor models exist: these
    /// vectors were computed from the layout independently (a few lines of Python over the
    /// same bytes), so a change of the layout fails here before it breaks every attestation.
    #[test]
    fn hashes_keep_the_layout_attestations_were_signed_with() {
        let e = evidence();
        assert_eq!(e.request_hash().to_string(), REQUEST_VECTOR);
        assert_eq!(e.output_hash().to_string(), OUTPUT_VECTOR);
    }
    const REQUEST_VECTOR: &str = "f1fabd2fdfa3e3058ad73a03cb2166aa8c28f30487cb57db29f0542ab2107915";
    const OUTPUT_VECTOR: &str = "e8576ad12076ad0eba6d07fb1d85b981e3d8256d2e5a716db986d9b698138180";

    #[test]
    fn evidence_round_trips_and_bad_bytes_are_refused() {
        let e = evidence();
        let bytes = e.encode();
        assert_eq!(bytes.len(), e.encode_size());
        assert_eq!(TensorEvidence::decode(bytes.clone()).unwrap(), e);
        // Values that do not fill the shape.
        let mut short = e.clone();
        short.inputs[0].bits.pop();
        assert!(TensorEvidence::decode(short.encode()).is_err());
        // A shape whose product overflows.
        let mut huge = e.clone();
        huge.inputs[0].shape = vec![u64::MAX, 2];
        assert!(TensorEvidence::decode(huge.encode()).is_err());
        // No outputs.
        let mut none = e.clone();
        none.outputs.clear();
        assert!(TensorEvidence::decode(none.encode()).is_err());
        // Every truncation is an error, never a panic.
        for cut in 0..bytes.len() {
            assert!(TensorEvidence::decode(bytes.slice(..cut)).is_err());
        }
    }

    #[test]
    fn evidence_matches_only_its_own_attestation() {
        let e = evidence();
        let att = Attestation {
            request_hash: e.request_hash(),
            output_hash: e.output_hash(),
            model: e.model,
            input_tokens: 0,
            output_tokens: 2,
            output_ids_hash: Hash::ZERO,
            logits_fingerprint: Hash::ZERO,
        };
        e.matches(&att).unwrap();
        let mut other = e.clone();
        other.outputs[0].bits[1] = 0.5f32.to_bits();
        assert!(other.matches(&att).unwrap_err().contains("outputs"));
        let mut other = e.clone();
        other.inputs[0].bits[0] = 0.0f32.to_bits();
        assert!(other.matches(&att).unwrap_err().contains("request"));
        assert!(e.matches(&Attestation { output_tokens: 3, ..att.clone() }).is_err());
        assert!(e.matches(&Attestation { model: crate::hash(b"other"), ..att.clone() }).is_err());
        let mut ragged = e.clone();
        ragged.outputs[0] = EvidenceTensor::from_f32("y", &[1, 2], &[0.25, -0.75]);
        assert!(ragged.matches(&att).unwrap_err().contains("rows"));
    }
}
