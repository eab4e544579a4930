//! Usage receipts and response attestations: how inference reaches the chain.
//!
//! A session is a one-way payment channel. After each response (and during long streams) the
//! client signs a [`Receipt`] with *cumulative* totals; a newer receipt supersedes every older
//! one, so settling a session needs exactly one receipt however many requests it served. The
//! provider signs an [`Attestation`] per response, binding output to request and model.

use bytes::BufMut;
use commonware_codec::{Buf, EncodeSize, Error, FixedSize, Read, ReadExt, Write};
use serde::{Deserialize, Serialize};

use crate::codec::to_vec;
use crate::crypto::{Address, Hash, PrivateKey, Sig};
use crate::model::ModelId;
use crate::{Amount, namespace};

/// A client's cumulative acknowledgement of what a provider delivered in one session.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Receipt {
    pub session: Hash,
    /// Strictly increasing per session; the chain keeps the highest settled.
    pub seq: u64,
    pub cum_input_tokens: u64,
    pub cum_output_tokens: u64,
    /// What the client owes in total for this session so far, in base units.
    pub cum_amount: Amount,
    /// Merkle root of the provider's attestation hashes covered by this receipt.
    pub outputs_root: Hash,
}

impl Write for Receipt {
    fn write(&self, buf: &mut impl BufMut) {
        self.session.write(buf);
        self.seq.write(buf);
        self.cum_input_tokens.write(buf);
        self.cum_output_tokens.write(buf);
        self.cum_amount.write(buf);
        self.outputs_root.write(buf);
    }
}
impl FixedSize for Receipt {
    const SIZE: usize = 32 + 8 + 8 + 8 + 16 + 32;
}
impl Read for Receipt {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        Ok(Receipt {
            session: Hash::read(buf)?,
            seq: u64::read(buf)?,
            cum_input_tokens: u64::read(buf)?,
            cum_output_tokens: u64::read(buf)?,
            cum_amount: u128::read(buf)?,
            outputs_root: Hash::read(buf)?,
        })
    }
}

impl Receipt {
    /// Signs for `chain_id`: the signature is valid on that chain only.
    pub fn sign(self, client: &PrivateKey, chain_id: &str) -> SignedReceipt {
        let signature = client.sign(namespace::RECEIPT, &bound(chain_id, &to_vec(&self)));
        SignedReceipt { receipt: self, signature }
    }
}

/// What every Plexus signature covers besides its type tag (the namespace): the chain id, then
/// the object's canonical encoding. A signature made on one network never verifies on another,
/// even where the same keys are used.
pub fn bound(chain_id: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(crate::codec::str_size(chain_id) + body.len());
    crate::codec::write_str(chain_id, &mut m);
    m.extend_from_slice(body);
    m
}

/// A receipt with the client's signature.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedReceipt {
    pub receipt: Receipt,
    pub signature: Sig,
}

impl SignedReceipt {
    /// True when `client` signed this receipt for `chain_id`.
    pub fn verify(&self, client: &Address, chain_id: &str) -> bool {
        client.verify(namespace::RECEIPT, &bound(chain_id, &to_vec(&self.receipt)), &self.signature)
    }

    /// Decodes exactly one signed receipt from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        crate::codec::decode_bounded(bytes, Self::SIZE, &())
    }

    /// Hex of the canonical encoding (how receipts travel in HTTP headers and bodies).
    pub fn to_hex(&self) -> String {
        hex::encode(to_vec(self))
    }

    /// Parses [`SignedReceipt::to_hex`] output from untrusted text.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("receipt is not hex: {e}"))?;
        Self::decode(&bytes).map_err(|e| format!("receipt does not decode: {e}"))
    }
}

impl Write for SignedReceipt {
    fn write(&self, buf: &mut impl BufMut) {
        self.receipt.write(buf);
        self.signature.write(buf);
    }
}
impl FixedSize for SignedReceipt {
    const SIZE: usize = Receipt::SIZE + Sig::SIZE;
}
impl Read for SignedReceipt {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        Ok(SignedReceipt { receipt: Receipt::read(buf)?, signature: Sig::read(buf)? })
    }
}

/// What a provider signs about one response: the basis for metering and verification.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attestation {
    /// SHA-256 of the canonical request: model, prompt tokens, `max_tokens`, sampling (with its
    /// seed) and stop strings. A client that tokenizes the request itself computes the same.
    pub request_hash: Hash,
    /// SHA-256 of the output text (or of the embedding vectors' bytes).
    pub output_hash: Hash,
    pub model: ModelId,
    pub input_tokens: u32,
    /// Generated tokens: exactly the ids [`Attestation::output_ids_hash`] commits to.
    pub output_tokens: u32,
    /// [`output_ids_hash`] of the generated token ids ([`Hash::ZERO`] for embeddings). With the
    /// ids themselves a client checks that they spell the text it received, and so pays for
    /// tokens it can count, not for a number a provider reports.
    pub output_ids_hash: Hash,
    /// Fingerprint of the top-k logits at a few positions (zero for embeddings).
    pub logits_fingerprint: Hash,
}

/// The commitment to a generation's output token ids.
pub fn output_ids_hash(ids: &[i32]) -> Hash {
    let mut m = Vec::with_capacity(24 + 4 * ids.len());
    m.extend_from_slice(b"plexus/output-ids/v1");
    m.extend_from_slice(&(ids.len() as u32).to_be_bytes());
    for id in ids {
        m.extend_from_slice(&id.to_be_bytes());
    }
    crate::hash(&m)
}

impl Write for Attestation {
    fn write(&self, buf: &mut impl BufMut) {
        self.request_hash.write(buf);
        self.output_hash.write(buf);
        self.model.write(buf);
        self.input_tokens.write(buf);
        self.output_tokens.write(buf);
        self.output_ids_hash.write(buf);
        self.logits_fingerprint.write(buf);
    }
}
impl FixedSize for Attestation {
    const SIZE: usize = 32 * 5 + 8;
}
impl Read for Attestation {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        Ok(Attestation {
            request_hash: Hash::read(buf)?,
            output_hash: Hash::read(buf)?,
            model: Hash::read(buf)?,
            input_tokens: u32::read(buf)?,
            output_tokens: u32::read(buf)?,
            output_ids_hash: Hash::read(buf)?,
            logits_fingerprint: Hash::read(buf)?,
        })
    }
}

impl Attestation {
    /// Decodes exactly one attestation from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        crate::codec::decode_bounded(bytes, Self::SIZE, &())
    }

    /// Parses the hex of an attestation's encoding (the `x-plexus-attestation` header).
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("attestation is not hex: {e}"))?;
        Self::decode(&bytes).map_err(|e| format!("attestation does not decode: {e}"))
    }

    pub fn hash(&self) -> Hash {
        crate::hash(&to_vec(self))
    }

    /// Signs for `chain_id` (see [`bound`]).
    pub fn sign(&self, provider: &PrivateKey, chain_id: &str) -> Sig {
        provider.sign(namespace::ATTESTATION, &bound(chain_id, &to_vec(self)))
    }

    /// True when `provider` signed this attestation for `chain_id`.
    pub fn verify(&self, provider: &Address, sig: &Sig, chain_id: &str) -> bool {
        provider.verify(namespace::ATTESTATION, &bound(chain_id, &to_vec(self)), sig)
    }
}

/// How a generation picks its tokens, as a request hash commits to it: greedy, or the seeded
/// sampler with its parameters (floats as their IEEE-754 bits, so the encoding is exact), and
/// from execution version 7 either of them with the logits adjusted first ([`LogitAdjustSpec`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SamplingSpec {
    Greedy,
    Random {
        temperature_bits: u32,
        top_k: u32,
        top_p_bits: u32,
        min_p_bits: u32,
        seed: u32,
    },
    /// `base` (greedy or seeded, never itself adjusted) picking from logits changed by `adjust`,
    /// which is never the identity: a request without penalties or biases is its base spec, so
    /// its hash is the one it had before this variant existed.
    Adjusted {
        base: Box<SamplingSpec>,
        adjust: LogitAdjustSpec,
    },
    /// From execution version 8: `base` (greedy, seeded or adjusted, never itself constrained)
    /// picking only among the tokens `grammar` allows after the output so far. A request without
    /// a grammar is its base spec, so its hash is unchanged.
    Constrained {
        base: Box<SamplingSpec>,
        grammar: GrammarSpec,
    },
}

impl SamplingSpec {
    /// Whether this spec exists only from execution version 7 (binaries before it cannot
    /// decode it).
    pub fn is_adjusted(&self) -> bool {
        match self {
            SamplingSpec::Adjusted { .. } => true,
            SamplingSpec::Constrained { base, .. } => base.is_adjusted(),
            _ => false,
        }
    }

    /// Whether this spec exists only from execution version 8 (a grammar constrains it).
    pub fn is_constrained(&self) -> bool {
        matches!(self, SamplingSpec::Constrained { .. })
    }

    /// The grammar the output must follow, if any.
    pub fn grammar(&self) -> Option<&GrammarSpec> {
        match self {
            SamplingSpec::Constrained { grammar, .. } => Some(grammar),
            _ => None,
        }
    }
}

/// The execution version from which a chain accepts challenges of constrained generations (the
/// first that can decode [`SamplingSpec::Constrained`]); a gateway serves them only from there.
pub const CONSTRAINED_SAMPLING_SINCE: u16 = 8;

/// The longest grammar source a request may carry, in bytes: with the longest transcript and
/// every logit bias a request may set, a challenge still fits one transaction.
pub const GRAMMAR_BYTES_MAX: usize = 4096;

/// What a grammar's source is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GrammarKind {
    /// A JSON schema, as compact JSON text (OpenAI's `response_format`; `json_object` is
    /// `{"type":"object"}`).
    JsonSchema,
    /// A grammar in llguidance's Lark dialect.
    Lark,
}

/// The grammar a constrained generation follows, as its source text. Which tokens it allows at
/// a position is a function of the source, the model's tokenizer and the output before the
/// position alone (no floats, no clock), so a verifier re-derives every position's mask.
/// Canonical: the source is non-empty and at most [`GRAMMAR_BYTES_MAX`] bytes of UTF-8.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GrammarSpec {
    pub kind: GrammarKind,
    pub source: String,
}

impl GrammarSpec {
    /// The canonical-form rules (see the type's documentation).
    pub fn check(&self) -> Result<(), &'static str> {
        if self.source.is_empty() {
            return Err("an empty grammar");
        }
        if self.source.len() > GRAMMAR_BYTES_MAX {
            return Err("a grammar longer than a request may carry");
        }
        Ok(())
    }
}

impl Write for GrammarSpec {
    fn write(&self, buf: &mut impl BufMut) {
        match self.kind {
            GrammarKind::JsonSchema => 0u8,
            GrammarKind::Lark => 1u8,
        }
        .write(buf);
        crate::codec::write_str(&self.source, buf);
    }
}
impl EncodeSize for GrammarSpec {
    fn encode_size(&self) -> usize {
        1 + crate::codec::str_size(&self.source)
    }
}
impl Read for GrammarSpec {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        let kind = match u8::read(buf)? {
            0 => GrammarKind::JsonSchema,
            1 => GrammarKind::Lark,
            t => return Err(Error::InvalidEnum(t)),
        };
        let grammar = GrammarSpec { kind, source: crate::codec::read_str(buf, GRAMMAR_BYTES_MAX)? };
        grammar.check().map_err(|why| Error::Invalid("grammar", why))?;
        Ok(grammar)
    }
}

/// The execution version from which a chain accepts challenges of adjusted generations (the
/// first that can decode [`SamplingSpec::Adjusted`]); a gateway serves them only from there.
pub const ADJUSTED_SAMPLING_SINCE: u16 = 7;

/// Most tokens a request's `logit_bias` may name.
pub const LOGIT_BIAS_MAX: usize = 1024;
/// The bound of a presence or frequency penalty, either sign (OpenAI's).
pub const PENALTY_MAX: f32 = 2.0;
/// The bound of one token's logit bias, either sign (OpenAI's).
pub const LOGIT_BIAS_VALUE_MAX: f32 = 100.0;

/// What a generation adds to the model's logits before sampling at each position, as OpenAI
/// defines it: `logit[t] += bias[t] - count[t] * frequency - (count[t] > 0) * presence`, where
/// `count[t]` is how often `t` was generated before the position (the prompt does not count).
///
/// Canonical, so a request has one hash: the penalties are finite and within
/// ±[`PENALTY_MAX`] (zero as +0.0), the bias lists at most [`LOGIT_BIAS_MAX`] tokens in
/// strictly increasing order, each with a finite, non-zero value within
/// ±[`LOGIT_BIAS_VALUE_MAX`], and something is adjusted. [`LogitAdjustSpec::check`] holds
/// the rules; decoding refuses anything else.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LogitAdjustSpec {
    pub presence_bits: u32,
    pub frequency_bits: u32,
    /// (token id, bias bits), by increasing token id.
    pub bias: Vec<(i32, u32)>,
}

impl LogitAdjustSpec {
    /// Whether this adjusts nothing (and so must not be encoded).
    pub fn is_identity(&self) -> bool {
        self.presence_bits == 0 && self.frequency_bits == 0 && self.bias.is_empty()
    }

    /// The canonical-form rules (see the type's documentation).
    pub fn check(&self) -> Result<(), &'static str> {
        let penalty = |bits: u32| {
            let v = f32::from_bits(bits);
            v.is_finite() && v.abs() <= PENALTY_MAX && (v != 0.0 || bits == 0)
        };
        if !penalty(self.presence_bits) || !penalty(self.frequency_bits) {
            return Err("a penalty is not a finite number within 2 of zero, or is -0");
        }
        if self.bias.len() > LOGIT_BIAS_MAX {
            return Err("more logit biases than a request may set");
        }
        if self.bias.windows(2).any(|w| w[0].0 >= w[1].0) || self.bias.first().is_some_and(|b| b.0 < 0) {
            return Err("logit biases are not by increasing, non-negative token id");
        }
        if self.bias.iter().any(|&(_, bits)| {
            let v = f32::from_bits(bits);
            !v.is_finite() || v == 0.0 || v.abs() > LOGIT_BIAS_VALUE_MAX
        }) {
            return Err("a logit bias is zero, not finite, or beyond 100");
        }
        if self.is_identity() {
            return Err("an adjustment that changes nothing");
        }
        Ok(())
    }
}

impl Write for LogitAdjustSpec {
    fn write(&self, buf: &mut impl BufMut) {
        self.presence_bits.write(buf);
        self.frequency_bits.write(buf);
        (self.bias.len() as u32).write(buf);
        for &(token, bits) in &self.bias {
            token.write(buf);
            bits.write(buf);
        }
    }
}
impl EncodeSize for LogitAdjustSpec {
    fn encode_size(&self) -> usize {
        4 + 4 + 4 + self.bias.len() * 8
    }
}
impl Read for LogitAdjustSpec {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        let presence_bits = u32::read(buf)?;
        let frequency_bits = u32::read(buf)?;
        let n = u32::read(buf)? as usize;
        if n > LOGIT_BIAS_MAX {
            return Err(Error::Invalid("logit adjustment", "more logit biases than a request may set"));
        }
        let mut bias = Vec::with_capacity(n);
        for _ in 0..n {
            bias.push((i32::read(buf)?, u32::read(buf)?));
        }
        let adjust = LogitAdjustSpec { presence_bits, frequency_bits, bias };
        adjust.check().map_err(|why| Error::Invalid("logit adjustment", why))?;
        Ok(adjust)
    }
}

impl Write for SamplingSpec {
    fn write(&self, buf: &mut impl BufMut) {
        match self {
            SamplingSpec::Greedy => 0u8.write(buf),
            &SamplingSpec::Random { temperature_bits, top_k, top_p_bits, min_p_bits, seed } => {
                1u8.write(buf);
                temperature_bits.write(buf);
                top_k.write(buf);
                top_p_bits.write(buf);
                min_p_bits.write(buf);
                seed.write(buf);
            }
            SamplingSpec::Adjusted { base, adjust } => {
                2u8.write(buf);
                base.write(buf);
                adjust.write(buf);
            }
            SamplingSpec::Constrained { base, grammar } => {
                3u8.write(buf);
                base.write(buf);
                grammar.write(buf);
            }
        }
    }
}
impl EncodeSize for SamplingSpec {
    fn encode_size(&self) -> usize {
        match self {
            SamplingSpec::Greedy => 1,
            SamplingSpec::Random { .. } => 1 + 5 * 4,
            SamplingSpec::Adjusted { base, adjust } => 1 + base.encode_size() + adjust.encode_size(),
            SamplingSpec::Constrained { base, grammar } => 1 + base.encode_size() + grammar.encode_size(),
        }
    }
}
impl Read for SamplingSpec {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        match u8::read(buf)? {
            // A grammar over one unconstrained spec (a constrained one inside is an unknown tag
            // there).
            3 => {
                let base = read_unconstrained(u8::read(buf)?, buf)?;
                Ok(SamplingSpec::Constrained { base: Box::new(base), grammar: GrammarSpec::read(buf)? })
            }
            tag => read_unconstrained(tag, buf),
        }
    }
}

/// The rest of a spec without a grammar: a base rule, or one adjusted (tag 2).
fn read_unconstrained(tag: u8, buf: &mut impl Buf) -> Result<SamplingSpec, Error> {
    match tag {
        // One base rule (an adjusted one inside is an unknown tag there) and its adjustment.
        2 => {
            let base = read_rule(u8::read(buf)?, buf)?;
            Ok(SamplingSpec::Adjusted { base: Box::new(base), adjust: LogitAdjustSpec::read(buf)? })
        }
        tag => read_rule(tag, buf),
    }
}

/// The rest of a greedy (tag 0) or seeded (tag 1) spec.
fn read_rule(tag: u8, buf: &mut impl Buf) -> Result<SamplingSpec, Error> {
    Ok(match tag {
        0 => SamplingSpec::Greedy,
        1 => SamplingSpec::Random {
            temperature_bits: u32::read(buf)?,
            top_k: u32::read(buf)?,
            top_p_bits: u32::read(buf)?,
            min_p_bits: u32::read(buf)?,
            seed: u32::read(buf)?,
        },
        t => return Err(Error::InvalidEnum(t)),
    })
}

/// Most prompt plus output tokens a transcript holds (so a challenge fits one transaction).
pub const TRANSCRIPT_TOKENS_MAX: usize = 12_000;
/// Most stop strings of a transcript, and the longest, in bytes.
pub const TRANSCRIPT_STOPS_MAX: usize = 4;
pub const TRANSCRIPT_STOP_BYTES_MAX: usize = 256;

/// The canonical hash of a generation request: the model, the prompt tokens, `max_tokens`, the
/// sampling and the stop strings. Providers attest to it, clients and verifiers recompute it.
pub fn request_hash(
    model: &ModelId,
    prompt: &[i32],
    max_tokens: u32,
    sampling: &SamplingSpec,
    stop: &[String],
) -> Hash {
    let mut canon = Vec::with_capacity(64 + prompt.len() * 4);
    canon.extend_from_slice(b"plexus/request/generate/v1");
    canon.extend_from_slice(model.as_bytes());
    canon.extend_from_slice(&(prompt.len() as u32).to_be_bytes());
    for t in prompt {
        canon.extend_from_slice(&t.to_be_bytes());
    }
    canon.extend_from_slice(&max_tokens.to_be_bytes());
    sampling.write(&mut canon);
    canon.extend_from_slice(&(stop.len() as u32).to_be_bytes());
    for s in stop {
        canon.extend_from_slice(&(s.len() as u32).to_be_bytes());
        canon.extend_from_slice(s.as_bytes());
    }
    crate::hash(&canon)
}

/// A generation as a verifier re-runs it: everything its attestation's request hash covers, and
/// the output ids the attestation commits to. With the attestation and its signature, it is
/// the evidence of a challenge: anyone can check it is what the provider signed, and re-run it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transcript {
    pub model: ModelId,
    pub prompt: Vec<i32>,
    pub max_tokens: u32,
    pub sampling: SamplingSpec,
    pub stop: Vec<String>,
    pub output: Vec<i32>,
}

impl Transcript {
    pub fn request_hash(&self) -> Hash {
        request_hash(&self.model, &self.prompt, self.max_tokens, &self.sampling, &self.stop)
    }

    /// Whether `att` attests to exactly this generation.
    pub fn matches(&self, att: &Attestation) -> Result<(), String> {
        if att.model != self.model {
            return Err(format!("the attestation is for model {}, the transcript for {}", att.model, self.model));
        }
        if att.request_hash != self.request_hash() {
            return Err("the transcript is not the request the attestation names".into());
        }
        if att.input_tokens as usize != self.prompt.len() || att.output_tokens as usize != self.output.len() {
            return Err("the transcript's token counts are not the attested ones".into());
        }
        if att.output_ids_hash != output_ids_hash(&self.output) {
            return Err("the transcript's output is not what the attestation commits to".into());
        }
        Ok(())
    }
}

impl Write for Transcript {
    fn write(&self, buf: &mut impl BufMut) {
        self.model.write(buf);
        self.prompt.write(buf);
        self.max_tokens.write(buf);
        self.sampling.write(buf);
        (self.stop.len() as u32).write(buf);
        for s in &self.stop {
            crate::codec::write_str(s, buf);
        }
        self.output.write(buf);
    }
}
impl EncodeSize for Transcript {
    fn encode_size(&self) -> usize {
        32 + self.prompt.encode_size()
            + 4
            + self.sampling.encode_size()
            + 4
            + self.stop.iter().map(|s| crate::codec::str_size(s)).sum::<usize>()
            + self.output.encode_size()
    }
}
impl Read for Transcript {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        let model = Hash::read(buf)?;
        let prompt: Vec<i32> = crate::codec::read_vec(buf, TRANSCRIPT_TOKENS_MAX, &())?;
        let max_tokens = u32::read(buf)?;
        let sampling = SamplingSpec::read(buf)?;
        let stops = u32::read(buf)? as usize;
        if stops > TRANSCRIPT_STOPS_MAX {
            return Err(Error::Invalid("transcript", "too many stop strings"));
        }
        let mut stop = Vec::with_capacity(stops);
        for _ in 0..stops {
            stop.push(crate::codec::read_str(buf, TRANSCRIPT_STOP_BYTES_MAX)?);
        }
        let output: Vec<i32> = crate::codec::read_vec(buf, TRANSCRIPT_TOKENS_MAX, &())?;
        if prompt.len() + output.len() > TRANSCRIPT_TOKENS_MAX {
            return Err(Error::Invalid("transcript", "more tokens than a transcript holds"));
        }
        Ok(Transcript { model, prompt, max_tokens, sampling, stop, output })
    }
}

/// Extends a receipt's `outputs_root` with one more response: a hash chain over the attestation
/// hashes in the order the client received them, starting from [`Hash::ZERO`].
pub fn extend_outputs_root(root: &Hash, attestation: &Hash) -> Hash {
    crate::hash_parts(&[b"plexus/outputs/v1", root.as_bytes(), attestation.as_bytes()])
}

/// A client's proof, to one provider, that it holds the key of a session: the provider answers
/// with a bearer token for that session's requests. `nonce` must grow with each proof so an old
/// one cannot be replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionAuth {
    pub session: Hash,
    pub provider: Address,
    pub nonce: u64,
}

impl SessionAuth {
    fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(32 + 32 + 8);
        m.extend_from_slice(self.session.as_bytes());
        m.extend_from_slice(self.provider.as_bytes());
        m.extend_from_slice(&self.nonce.to_be_bytes());
        m
    }

    /// Signs for `chain_id` (see [`bound`]).
    pub fn sign(&self, client: &PrivateKey, chain_id: &str) -> Sig {
        client.sign(namespace::SESSION_AUTH, &bound(chain_id, &self.message()))
    }

    /// True when `client` signed this proof for `chain_id`.
    pub fn verify(&self, client: &Address, sig: &Sig, chain_id: &str) -> bool {
        client.verify(namespace::SESSION_AUTH, &bound(chain_id, &self.message()), sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attestations_and_session_proofs_are_bound_to_their_chain() {
        let key = PrivateKey::from_seed(5);
        let att = Attestation {
            request_hash: crate::hash(b"r"),
            output_hash: crate::hash(b"o"),
            model: crate::hash(b"m"),
            input_tokens: 3,
            output_tokens: 4,
            output_ids_hash: output_ids_hash(&[1, 2, 3, 4]),
            logits_fingerprint: Hash::ZERO,
        };
        assert_ne!(output_ids_hash(&[1, 2]), output_ids_hash(&[1, 2, 0]));
        assert_eq!(Attestation::decode(&to_vec(&att)).unwrap(), att);
        let sig = att.sign(&key, "chain-a");
        assert!(att.verify(&key.address(), &sig, "chain-a"));
        assert!(!att.verify(&key.address(), &sig, "chain-b"));
        let auth = SessionAuth { session: crate::hash(b"s"), provider: key.address(), nonce: 9 };
        let sig = auth.sign(&key, "chain-a");
        assert!(auth.verify(&key.address(), &sig, "chain-a"));
        assert!(!auth.verify(&key.address(), &sig, "chain-b"));
        // A signature of one kind never passes as another, even over the same bytes.
        let receipt_sig = key.sign(namespace::RECEIPT, &bound("chain-a", &to_vec(&att)));
        assert!(!att.verify(&key.address(), &receipt_sig, "chain-a"));
    }

    #[test]
    fn adjusted_sampling_has_one_encoding() {
        let decode = |bytes: &[u8]| crate::codec::decode_bounded::<SamplingSpec>(bytes, 1 << 16, &());
        let base = SamplingSpec::Random {
            temperature_bits: 0.7f32.to_bits(),
            top_k: 40,
            top_p_bits: 1.0f32.to_bits(),
            min_p_bits: 0,
            seed: 9,
        };
        let adjust = LogitAdjustSpec {
            presence_bits: 0.5f32.to_bits(),
            frequency_bits: (-1.0f32).to_bits(),
            bias: vec![(3, (-100.0f32).to_bits()), (7, 2.5f32.to_bits())],
        };
        let spec = SamplingSpec::Adjusted { base: Box::new(base.clone()), adjust: adjust.clone() };
        let bytes = to_vec(&spec);
        assert_eq!(bytes.len(), spec.encode_size());
        assert_eq!(decode(&bytes).unwrap(), spec);
        // The older tags encode as before (a request without adjustment keeps its hash).
        assert_eq!(to_vec(&SamplingSpec::Greedy), vec![0]);
        assert_eq!(to_vec(&base)[0], 1);
        // Anything but the canonical form is refused.
        let refused = |adjust: LogitAdjustSpec| {
            let spec = SamplingSpec::Adjusted { base: Box::new(SamplingSpec::Greedy), adjust };
            decode(&to_vec(&spec)).is_err()
        };
        assert!(refused(LogitAdjustSpec::default()), "the identity");
        assert!(refused(LogitAdjustSpec { presence_bits: (-0.0f32).to_bits(), ..adjust.clone() }), "-0");
        assert!(refused(LogitAdjustSpec { presence_bits: 2.5f32.to_bits(), ..adjust.clone() }), "beyond 2");
        assert!(refused(LogitAdjustSpec { frequency_bits: f32::NAN.to_bits(), ..adjust.clone() }), "NaN");
        let bias = |b: Vec<(i32, f32)>| LogitAdjustSpec {
            bias: b.into_iter().map(|(t, v)| (t, v.to_bits())).collect(),
            ..LogitAdjustSpec::default()
        };
        assert!(!refused(bias(vec![(0, 1.0)])));
        assert!(refused(bias(vec![(7, 1.0), (3, 1.0)])), "out of order");
        assert!(refused(bias(vec![(3, 1.0), (3, 2.0)])), "a token twice");
        assert!(refused(bias(vec![(-1, 1.0)])), "a negative token");
        assert!(refused(bias(vec![(3, 0.0)])), "a zero bias");
        assert!(refused(bias(vec![(3, 100.5)])), "beyond 100");
        assert!(refused(bias(vec![(3, f32::INFINITY)])), "infinite");
        assert!(refused(bias((0..=LOGIT_BIAS_MAX as i32).map(|t| (t, 1.0)).collect())), "too many");
        // An adjusted spec inside an adjusted one, or a count that would over-allocate.
        let mut nested = vec![2u8];
        nested.extend(to_vec(&spec));
        nested.extend(to_vec(&adjust));
        assert!(decode(&nested).is_err());
        let mut huge = vec![2u8, 0];
        huge.extend(0u32.to_be_bytes());
        huge.extend(0u32.to_be_bytes());
        huge.extend(u32::MAX.to_be_bytes());
        assert!(decode(&huge).is_err());
        assert!(decode(&[3]).is_err());
        assert!(decode(&bytes[..bytes.len() - 1]).is_err(), "truncated");
        // The largest transcript, with every bias a request may set, still fits a challenge
        // transaction (with room for its attestation, signature and envelope).
        let worst = Transcript {
            model: crate::hash(b"m"),
            prompt: vec![i32::MAX; TRANSCRIPT_TOKENS_MAX - 1],
            max_tokens: 1,
            sampling: SamplingSpec::Adjusted {
                base: Box::new(base),
                adjust: LogitAdjustSpec {
                    bias: (0..LOGIT_BIAS_MAX as i32).map(|t| (t, 1.0f32.to_bits())).collect(),
                    ..adjust
                },
            },
            stop: vec!["x".repeat(TRANSCRIPT_STOP_BYTES_MAX); TRANSCRIPT_STOPS_MAX],
            output: vec![i32::MAX],
        };
        assert!(worst.encode_size() + 1024 < crate::params::limits::TX_BYTES_MAX, "{}", worst.encode_size());
        // And with the longest grammar over it.
        let worst = Transcript {
            sampling: SamplingSpec::Constrained {
                base: Box::new(worst.sampling.clone()),
                grammar: GrammarSpec { kind: GrammarKind::Lark, source: "x".repeat(GRAMMAR_BYTES_MAX) },
            },
            ..worst
        };
        assert!(worst.encode_size() + 1024 < crate::params::limits::TX_BYTES_MAX, "{}", worst.encode_size());
    }

    #[test]
    fn constrained_sampling_has_one_encoding() {
        let decode = |bytes: &[u8]| crate::codec::decode_bounded::<SamplingSpec>(bytes, 1 << 16, &());
        let grammar = GrammarSpec { kind: GrammarKind::JsonSchema, source: r#"{"type":"object"}"#.into() };
        let adjusted = SamplingSpec::Adjusted {
            base: Box::new(SamplingSpec::Greedy),
            adjust: LogitAdjustSpec { presence_bits: 1.0f32.to_bits(), ..LogitAdjustSpec::default() },
        };
        for base in [SamplingSpec::Greedy, adjusted] {
            let spec = SamplingSpec::Constrained { base: Box::new(base.clone()), grammar: grammar.clone() };
            let bytes = to_vec(&spec);
            assert_eq!(bytes.len(), spec.encode_size());
            assert_eq!(bytes[0], 3);
            assert_eq!(decode(&bytes).unwrap(), spec);
            assert_eq!(spec.is_adjusted(), base.is_adjusted());
            assert!(spec.is_constrained() && spec.grammar() == Some(&grammar));
            // The hash of a request covers the grammar: another source, another hash.
            let other = SamplingSpec::Constrained {
                base: Box::new(base.clone()),
                grammar: GrammarSpec { kind: GrammarKind::Lark, source: grammar.source.clone() },
            };
            let m = crate::hash(b"m");
            assert_ne!(request_hash(&m, &[1], 4, &spec, &[]), request_hash(&m, &[1], 4, &other, &[]));
            assert_ne!(request_hash(&m, &[1], 4, &spec, &[]), request_hash(&m, &[1], 4, &base, &[]));
        }
        // A grammar inside a grammar, an empty or over-long source, an unknown kind: refused.
        let spec = SamplingSpec::Constrained { base: Box::new(SamplingSpec::Greedy), grammar: grammar.clone() };
        let mut nested = vec![3u8];
        nested.extend(to_vec(&spec));
        assert!(decode(&nested).is_err());
        let with =
            |g: GrammarSpec| to_vec(&SamplingSpec::Constrained { base: Box::new(SamplingSpec::Greedy), grammar: g });
        assert!(decode(&with(GrammarSpec { kind: GrammarKind::Lark, source: String::new() })).is_err());
        let long = GrammarSpec { kind: GrammarKind::Lark, source: "x".repeat(GRAMMAR_BYTES_MAX + 1) };
        assert!(decode(&with(long)).is_err());
        let mut unknown = to_vec(&spec);
        unknown[2] = 9;
        assert!(decode(&unknown).is_err());
        assert!(decode(&to_vec(&spec)[..4]).is_err(), "truncated");
    }

    #[test]
    fn a_transcript_is_what_the_attestation_names() {
        let t = Transcript {
            model: crate::hash(b"m"),
            prompt: vec![1, 2, 3],
            max_tokens: 8,
            sampling: SamplingSpec::Random {
                temperature_bits: 0.7f32.to_bits(),
                top_k: 40,
                top_p_bits: 1.0f32.to_bits(),
                min_p_bits: 0,
                seed: 9,
            },
            stop: vec!["\n\n".into()],
            output: vec![4, 5, 2],
        };
        let bytes = to_vec(&t);
        assert_eq!(bytes.len(), t.encode_size());
        let back =
            <Transcript as commonware_codec::DecodeExt<()>>::decode(commonware_codec::Copying(&bytes[..])).unwrap();
        assert_eq!(back, t);
        let att = Attestation {
            request_hash: t.request_hash(),
            output_hash: crate::hash(b"text"),
            model: t.model,
            input_tokens: 3,
            output_tokens: 3,
            output_ids_hash: output_ids_hash(&t.output),
            logits_fingerprint: Hash::ZERO,
        };
        assert_eq!(t.matches(&att), Ok(()));
        let mut other = t.clone();
        other.output[1] = 6;
        assert!(other.matches(&att).is_err(), "another output");
        let mut other = t.clone();
        other.sampling = SamplingSpec::Greedy;
        assert!(other.matches(&att).is_err(), "another sampling");
        // Oversized transcripts do not decode.
        let big = Transcript { prompt: vec![0; TRANSCRIPT_TOKENS_MAX], ..t.clone() };
        assert!(
            <Transcript as commonware_codec::DecodeExt<()>>::decode(commonware_codec::Copying(&to_vec(&big)[..]))
                .is_err()
        );
    }

    #[test]
    fn receipt_signature_roundtrip() {
        let client = PrivateKey::from_seed(3);
        let r = Receipt {
            session: crate::hash(b"s"),
            seq: 4,
            cum_input_tokens: 10,
            cum_output_tokens: 20,
            cum_amount: 12345,
            outputs_root: crate::hash(b"o"),
        };
        let signed = r.clone().sign(&client, "chain-a");
        assert!(signed.verify(&client.address(), "chain-a"));
        assert!(!signed.verify(&client.address(), "chain-b"), "a receipt is valid on its own chain only");
        assert!(!signed.verify(&PrivateKey::from_seed(4).address(), "chain-a"));
        let bytes = to_vec(&signed);
        assert_eq!(bytes.len(), SignedReceipt::SIZE);
        let back = SignedReceipt::decode(&bytes).unwrap();
        assert!(SignedReceipt::decode(&bytes[1..]).is_err());
        assert_eq!(SignedReceipt::from_hex(&signed.to_hex()).unwrap(), signed);
        assert_eq!(back, signed);
        let mut forged = signed.clone();
        forged.receipt.cum_amount += 1;
        assert!(!forged.verify(&client.address(), "chain-a"));
    }
}
