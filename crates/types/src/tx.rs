//! Transactions: signed by one account, ordered by nonce, paying a fee, carrying one payload.
//!
//! The signature covers the chain id and the transaction body, so a transaction signed for one
//! network is invalid on every other. A [`SignedTx`] decodes only from at most
//! [`limits::TX_BYTES_MAX`] bytes, and every variable-length field has its own bound.

use bytes::BufMut;
use commonware_codec::{Buf, EncodeSize, Error, FixedSize, Read, ReadExt, Write};
use serde::{Deserialize, Serialize};

use crate::codec::{read_bytes, read_str, read_vec, str_size, to_vec, write_str};
use crate::crypto::{Address, Hash, PrivateKey, Sig, hash};
use crate::model::{ModelId, ModelManifest};
use crate::params::limits;
use crate::receipt::{Attestation, SignedReceipt, Transcript};
use crate::tensor::TensorEvidence;
use crate::version::{Layer, SupportedVersions};
use crate::{Amount, Height, namespace};

/// Prices one provider asks for one model, in base units per 1,000 tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelPrice {
    pub model: ModelId,
    pub input_per_1k: Amount,
    pub output_per_1k: Amount,
}

/// What a provider publishes about itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProviderInfo {
    /// Base URL of its OpenAI-compatible server, e.g. `http://10.0.0.5:8080`.
    pub endpoint: String,
    /// Free-form region label used by clients to constrain routing, e.g. `eu-west`.
    pub region: String,
    /// Free-form hardware profile, e.g. `2 vCPU x86_64, 24 GiB`.
    pub hardware: String,
    /// The models it serves and their prices.
    pub prices: Vec<ModelPrice>,
    /// Versions of every layer its binary can run.
    pub versions: SupportedVersions,
}

/// How a stake-weighted vote is cast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoteOption {
    Yes,
    No,
    Abstain,
    NoWithVeto,
}

/// What a governance proposal asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalKind {
    /// Set a chain parameter (see [`crate::Params`]) from `effective_height` on.
    ParamChange { name: String, value: u128, effective_height: Height },
    /// Activate `version` of `layer` at `activation_height`, if enough stake is ready by then;
    /// otherwise wait, and give up at `deadline_height`.
    Upgrade { layer: Layer, version: u16, activation_height: Height, deadline_height: Height },
    /// Pay `amount` from the treasury to `to`.
    TreasurySpend { to: Address, amount: Amount },
    /// A signal with no on-chain effect.
    Text { text: String },
}

/// Longest parameter name, in bytes.
pub const PARAM_NAME_BYTES_MAX: usize = 64;
/// Longest text proposal or title, in bytes.
pub const PROPOSAL_TEXT_BYTES_MAX: usize = 2_048;

/// What a transaction does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    Transfer {
        to: Address,
        amount: Amount,
    },
    /// Lock `amount` of the signer's balance as stake; `p2p_address` is where its node listens
    /// for peers (host:port), needed once it joins the validator set.
    Stake {
        amount: Amount,
        p2p_address: String,
    },
    /// Start unbonding `amount`; it returns to the balance after the unbonding delay.
    Unstake {
        amount: Amount,
    },
    RegisterProvider(ProviderInfo),
    RegisterModel(ModelManifest),
    /// Lock `deposit` in escrow for a session with `provider` serving `model`.
    OpenSession {
        provider: Address,
        model: ModelId,
        deposit: Amount,
        max_input_per_1k: Amount,
        max_output_per_1k: Amount,
        expiry_height: Height,
    },
    TopUpSession {
        session: Hash,
        amount: Amount,
    },
    /// A provider settles sessions with the latest receipt of each.
    Claim {
        receipts: Vec<SignedReceipt>,
    },
    /// Settle a session now: the provider (any time) or the client (after expiry).
    CloseSession {
        session: Hash,
    },
    /// Conflicting-vote evidence reported by consensus, in the consensus layer's encoding.
    ReportEvidence {
        evidence: Vec<u8>,
    },
    SubmitProposal {
        kind: ProposalKind,
        deposit: Amount,
    },
    Vote {
        proposal: u64,
        option: VoteOption,
    },
    /// The versions the signer's binary supports and whether its shadow run of the pending
    /// execution version passed.
    SignalVersions {
        versions: SupportedVersions,
        shadow_ok: bool,
    },
    /// Accuses the provider of `session` of a response its model did not produce, with the
    /// evidence: its signed attestation and the transcript that attestation names. Locks `bond`,
    /// lost if the committee acquits. Execution version 3 and later.
    Challenge {
        session: Hash,
        attestation: Attestation,
        signature: Sig,
        transcript: Transcript,
        bond: Amount,
    },
    /// A committee member's verdict on a challenge, after re-running its transcript.
    ChallengeVote {
        challenge: u64,
        guilty: bool,
    },
    /// [`Payload::OpenSession`] restricted to providers in `regions` (data residency): the chain
    /// refuses it unless the provider's registered region is one of them, and keeps the
    /// restriction with the session for the provider and the gateway to honour. Execution
    /// version 4 and later.
    OpenSessionIn {
        provider: Address,
        model: ModelId,
        deposit: Amount,
        max_input_per_1k: Amount,
        max_output_per_1k: Amount,
        expiry_height: Height,
        regions: Vec<String>,
    },
    /// [`Payload::Challenge`] for an inference of a tensor model: the evidence is the request's
    /// inputs and the attested outputs ([`TensorEvidence`]), which the committee re-runs on its
    /// own copies of the model and compares within a tolerance. Execution version 5 and later.
    ChallengeTensor {
        session: Hash,
        attestation: Attestation,
        signature: Sig,
        evidence: TensorEvidence,
        bond: Amount,
    },
    /// Registers the signer's BLS12-381 consensus key (consensus version 2 signs votes with it),
    /// with a proof of possession: the key's signature over itself on this chain, without which
    /// one validator could register a key that cancels the others' in an aggregate. Once per
    /// address, for good. Execution version 6 and later.
    RegisterConsensusKey {
        /// The public key ([`CONSENSUS_KEY_BYTES`] bytes, a point in G2).
        key: Vec<u8>,
        /// The proof of possession ([`POSSESSION_PROOF_BYTES`] bytes, a point in G1).
        proof: Vec<u8>,
    },
}

/// Bytes of a BLS12-381 consensus public key (consensus version 2).
pub const CONSENSUS_KEY_BYTES: usize = 96;
/// Bytes of a proof of possession of a consensus key.
pub const POSSESSION_PROOF_BYTES: usize = 48;

impl Payload {
    /// A session opening: restricted to `regions` when any are given
    /// ([`Payload::OpenSessionIn`], execution version 4 and later), plain otherwise.
    pub fn open_session(
        provider: Address,
        model: ModelId,
        deposit: Amount,
        max_input_per_1k: Amount,
        max_output_per_1k: Amount,
        expiry_height: Height,
        regions: Vec<String>,
    ) -> Payload {
        match regions.is_empty() {
            true => {
                Payload::OpenSession { provider, model, deposit, max_input_per_1k, max_output_per_1k, expiry_height }
            }
            false => Payload::OpenSessionIn {
                provider,
                model,
                deposit,
                max_input_per_1k,
                max_output_per_1k,
                expiry_height,
                regions,
            },
        }
    }

    /// A short name for logs, errors and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Transfer { .. } => "transfer",
            Payload::Stake { .. } => "stake",
            Payload::Unstake { .. } => "unstake",
            Payload::RegisterProvider(_) => "register_provider",
            Payload::RegisterModel(_) => "register_model",
            Payload::OpenSession { .. } => "open_session",
            Payload::TopUpSession { .. } => "top_up_session",
            Payload::Claim { .. } => "claim",
            Payload::CloseSession { .. } => "close_session",
            Payload::ReportEvidence { .. } => "report_evidence",
            Payload::SubmitProposal { .. } => "submit_proposal",
            Payload::Vote { .. } => "vote",
            Payload::SignalVersions { .. } => "signal_versions",
            Payload::Challenge { .. } => "challenge",
            Payload::ChallengeVote { .. } => "challenge_vote",
            Payload::OpenSessionIn { .. } => "open_session_in",
            Payload::ChallengeTensor { .. } => "challenge_tensor",
            Payload::RegisterConsensusKey { .. } => "register_consensus_key",
        }
    }
}

/// The signed part of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transaction {
    pub signer: Address,
    /// Must equal the signer's account nonce; each applied transaction increments it.
    pub nonce: u64,
    /// Paid to the treasury whether or not the payload succeeds (it was ordered and executed).
    pub fee: Amount,
    pub payload: Payload,
}

impl Transaction {
    fn signing_message(&self, chain_id: &str) -> Vec<u8> {
        let mut msg = Vec::with_capacity(str_size(chain_id) + self.encode_size());
        write_str(chain_id, &mut msg);
        self.write(&mut msg);
        msg
    }

    pub fn sign(self, key: &PrivateKey, chain_id: &str) -> SignedTx {
        debug_assert_eq!(key.address(), self.signer);
        let signature = key.sign(namespace::TX, &self.signing_message(chain_id));
        SignedTx { tx: self, signature }
    }
}

/// A transaction with its signature.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedTx {
    pub tx: Transaction,
    pub signature: Sig,
}

impl SignedTx {
    /// True when the signature is the signer's over this chain's id and the body.
    pub fn verify(&self, chain_id: &str) -> bool {
        self.tx.signer.verify(namespace::TX, &self.tx.signing_message(chain_id), &self.signature)
    }

    /// True when every signature of `txs` is valid (see [`SignedTx::verify`]), checked in one
    /// batch; false for an empty list.
    pub fn verify_all(txs: &[&SignedTx], chain_id: &str) -> bool {
        let messages: Vec<Vec<u8>> = txs.iter().map(|t| t.tx.signing_message(chain_id)).collect();
        let items: Vec<(&Address, &[u8], &Sig)> =
            txs.iter().zip(&messages).map(|(t, m)| (&t.tx.signer, &m[..], &t.signature)).collect();
        Address::verify_batch(namespace::TX, &items)
    }

    /// The transaction hash: SHA-256 of the signed encoding.
    pub fn hash(&self) -> Hash {
        hash(&to_vec(self))
    }

    /// Decodes a signed transaction from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<SignedTx, Error> {
        crate::codec::decode_bounded(bytes, limits::TX_BYTES_MAX, &())
    }
}

// ---- encoding ----

impl Write for ModelPrice {
    fn write(&self, buf: &mut impl BufMut) {
        self.model.write(buf);
        self.input_per_1k.write(buf);
        self.output_per_1k.write(buf);
    }
}
impl FixedSize for ModelPrice {
    const SIZE: usize = 32 + 16 + 16;
}
impl Read for ModelPrice {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        Ok(ModelPrice { model: Hash::read(buf)?, input_per_1k: u128::read(buf)?, output_per_1k: u128::read(buf)? })
    }
}

impl Write for ProviderInfo {
    fn write(&self, buf: &mut impl BufMut) {
        write_str(&self.endpoint, buf);
        write_str(&self.region, buf);
        write_str(&self.hardware, buf);
        self.prices.write(buf);
        self.versions.write(buf);
    }
}
impl EncodeSize for ProviderInfo {
    fn encode_size(&self) -> usize {
        str_size(&self.endpoint)
            + str_size(&self.region)
            + str_size(&self.hardware)
            + self.prices.encode_size()
            + SupportedVersions::SIZE
    }
}
impl Read for ProviderInfo {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        Ok(ProviderInfo {
            endpoint: read_str(buf, limits::ENDPOINT_BYTES_MAX)?,
            region: read_str(buf, limits::REGION_BYTES_MAX)?,
            hardware: read_str(buf, limits::HARDWARE_BYTES_MAX)?,
            prices: read_vec(buf, limits::PROVIDER_MODELS_MAX, &())?,
            versions: SupportedVersions::read(buf)?,
        })
    }
}

impl VoteOption {
    fn tag(self) -> u8 {
        match self {
            VoteOption::Yes => 0,
            VoteOption::No => 1,
            VoteOption::Abstain => 2,
            VoteOption::NoWithVeto => 3,
        }
    }
}

impl Write for VoteOption {
    fn write(&self, buf: &mut impl BufMut) {
        self.tag().write(buf)
    }
}
impl FixedSize for VoteOption {
    const SIZE: usize = 1;
}
impl Read for VoteOption {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        match u8::read(buf)? {
            0 => Ok(VoteOption::Yes),
            1 => Ok(VoteOption::No),
            2 => Ok(VoteOption::Abstain),
            3 => Ok(VoteOption::NoWithVeto),
            t => Err(Error::InvalidEnum(t)),
        }
    }
}

impl Write for ProposalKind {
    fn write(&self, buf: &mut impl BufMut) {
        match self {
            ProposalKind::ParamChange { name, value, effective_height } => {
                0u8.write(buf);
                write_str(name, buf);
                value.write(buf);
                effective_height.write(buf);
            }
            ProposalKind::Upgrade { layer, version, activation_height, deadline_height } => {
                1u8.write(buf);
                layer.write(buf);
                version.write(buf);
                activation_height.write(buf);
                deadline_height.write(buf);
            }
            ProposalKind::TreasurySpend { to, amount } => {
                2u8.write(buf);
                to.write(buf);
                amount.write(buf);
            }
            ProposalKind::Text { text } => {
                3u8.write(buf);
                write_str(text, buf);
            }
        }
    }
}
impl EncodeSize for ProposalKind {
    fn encode_size(&self) -> usize {
        1 + match self {
            ProposalKind::ParamChange { name, .. } => str_size(name) + 16 + 8,
            ProposalKind::Upgrade { .. } => 1 + 2 + 8 + 8,
            ProposalKind::TreasurySpend { .. } => Address::SIZE + 16,
            ProposalKind::Text { text } => str_size(text),
        }
    }
}
impl Read for ProposalKind {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        Ok(match u8::read(buf)? {
            0 => ProposalKind::ParamChange {
                name: read_str(buf, PARAM_NAME_BYTES_MAX)?,
                value: u128::read(buf)?,
                effective_height: u64::read(buf)?,
            },
            1 => ProposalKind::Upgrade {
                layer: Layer::read(buf)?,
                version: u16::read(buf)?,
                activation_height: u64::read(buf)?,
                deadline_height: u64::read(buf)?,
            },
            2 => ProposalKind::TreasurySpend { to: Address::read(buf)?, amount: u128::read(buf)? },
            3 => ProposalKind::Text { text: read_str(buf, PROPOSAL_TEXT_BYTES_MAX)? },
            t => return Err(Error::InvalidEnum(t)),
        })
    }
}

impl Write for Payload {
    fn write(&self, buf: &mut impl BufMut) {
        match self {
            Payload::Transfer { to, amount } => {
                0u8.write(buf);
                to.write(buf);
                amount.write(buf);
            }
            Payload::Stake { amount, p2p_address } => {
                1u8.write(buf);
                amount.write(buf);
                write_str(p2p_address, buf);
            }
            Payload::Unstake { amount } => {
                2u8.write(buf);
                amount.write(buf);
            }
            Payload::RegisterProvider(info) => {
                3u8.write(buf);
                info.write(buf);
            }
            Payload::RegisterModel(manifest) => {
                4u8.write(buf);
                manifest.write(buf);
            }
            Payload::OpenSession { provider, model, deposit, max_input_per_1k, max_output_per_1k, expiry_height } => {
                5u8.write(buf);
                provider.write(buf);
                model.write(buf);
                deposit.write(buf);
                max_input_per_1k.write(buf);
                max_output_per_1k.write(buf);
                expiry_height.write(buf);
            }
            Payload::TopUpSession { session, amount } => {
                6u8.write(buf);
                session.write(buf);
                amount.write(buf);
            }
            Payload::Claim { receipts } => {
                7u8.write(buf);
                receipts.write(buf);
            }
            Payload::CloseSession { session } => {
                8u8.write(buf);
                session.write(buf);
            }
            Payload::ReportEvidence { evidence } => {
                9u8.write(buf);
                evidence.write(buf);
            }
            Payload::SubmitProposal { kind, deposit } => {
                10u8.write(buf);
                kind.write(buf);
                deposit.write(buf);
            }
            Payload::Vote { proposal, option } => {
                11u8.write(buf);
                proposal.write(buf);
                option.write(buf);
            }
            Payload::SignalVersions { versions, shadow_ok } => {
                12u8.write(buf);
                versions.write(buf);
                shadow_ok.write(buf);
            }
            Payload::Challenge { session, attestation, signature, transcript, bond } => {
                13u8.write(buf);
                session.write(buf);
                attestation.write(buf);
                signature.write(buf);
                transcript.write(buf);
                bond.write(buf);
            }
            Payload::ChallengeVote { challenge, guilty } => {
                14u8.write(buf);
                challenge.write(buf);
                guilty.write(buf);
            }
            Payload::OpenSessionIn {
                provider,
                model,
                deposit,
                max_input_per_1k,
                max_output_per_1k,
                expiry_height,
                regions,
            } => {
                15u8.write(buf);
                provider.write(buf);
                model.write(buf);
                deposit.write(buf);
                max_input_per_1k.write(buf);
                max_output_per_1k.write(buf);
                expiry_height.write(buf);
                // Encoders never see more than SESSION_REGIONS_MAX from a decoded payload; a
                // longer list built locally is cut here and refused by the chain's check.
                (regions.len().min(u8::MAX as usize) as u8).write(buf);
                for r in regions.iter().take(u8::MAX as usize) {
                    write_str(r, buf);
                }
            }
            Payload::ChallengeTensor { session, attestation, signature, evidence, bond } => {
                16u8.write(buf);
                session.write(buf);
                attestation.write(buf);
                signature.write(buf);
                evidence.write(buf);
                bond.write(buf);
            }
            Payload::RegisterConsensusKey { key, proof } => {
                17u8.write(buf);
                key.write(buf);
                proof.write(buf);
            }
        }
    }
}

impl EncodeSize for Payload {
    fn encode_size(&self) -> usize {
        1 + match self {
            Payload::Transfer { .. } => Address::SIZE + 16,
            Payload::Stake { p2p_address, .. } => 16 + str_size(p2p_address),
            Payload::Unstake { .. } => 16,
            Payload::RegisterProvider(info) => info.encode_size(),
            Payload::RegisterModel(manifest) => manifest.encode_size(),
            Payload::OpenSession { .. } => Address::SIZE + 32 + 16 * 3 + 8,
            Payload::TopUpSession { .. } => 32 + 16,
            Payload::Claim { receipts } => receipts.encode_size(),
            Payload::CloseSession { .. } => 32,
            Payload::ReportEvidence { evidence } => evidence.encode_size(),
            Payload::SubmitProposal { kind, .. } => kind.encode_size() + 16,
            Payload::Vote { .. } => 8 + 1,
            Payload::SignalVersions { .. } => SupportedVersions::SIZE + 1,
            Payload::Challenge { transcript, .. } => 32 + Attestation::SIZE + Sig::SIZE + transcript.encode_size() + 16,
            Payload::ChallengeVote { .. } => 8 + 1,
            Payload::OpenSessionIn { regions, .. } => {
                Address::SIZE + 32 + 16 * 3 + 8 + 1 + regions.iter().map(|r| str_size(r)).sum::<usize>()
            }
            Payload::ChallengeTensor { evidence, .. } => {
                32 + Attestation::SIZE + Sig::SIZE + evidence.encode_size() + 16
            }
            Payload::RegisterConsensusKey { key, proof } => key.encode_size() + proof.encode_size(),
        }
    }
}

/// A session's region list: a count (at most [`limits::SESSION_REGIONS_MAX`]), then the labels.
fn read_regions(buf: &mut impl Buf) -> Result<Vec<String>, Error> {
    let count = u8::read(buf)? as usize;
    if count > limits::SESSION_REGIONS_MAX {
        return Err(Error::Invalid("regions", "too many"));
    }
    (0..count).map(|_| read_str(buf, limits::REGION_BYTES_MAX)).collect()
}

impl Read for Payload {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        Ok(match u8::read(buf)? {
            0 => Payload::Transfer { to: Address::read(buf)?, amount: u128::read(buf)? },
            1 => {
                Payload::Stake { amount: u128::read(buf)?, p2p_address: read_str(buf, limits::P2P_ADDRESS_BYTES_MAX)? }
            }
            2 => Payload::Unstake { amount: u128::read(buf)? },
            3 => Payload::RegisterProvider(ProviderInfo::read(buf)?),
            4 => Payload::RegisterModel(ModelManifest::read(buf)?),
            5 => Payload::OpenSession {
                provider: Address::read(buf)?,
                model: Hash::read(buf)?,
                deposit: u128::read(buf)?,
                max_input_per_1k: u128::read(buf)?,
                max_output_per_1k: u128::read(buf)?,
                expiry_height: u64::read(buf)?,
            },
            6 => Payload::TopUpSession { session: Hash::read(buf)?, amount: u128::read(buf)? },
            7 => Payload::Claim { receipts: read_vec(buf, limits::CLAIM_RECEIPTS_MAX, &())? },
            8 => Payload::CloseSession { session: Hash::read(buf)? },
            9 => Payload::ReportEvidence { evidence: read_bytes(buf, limits::EVIDENCE_BYTES_MAX)? },
            10 => Payload::SubmitProposal { kind: ProposalKind::read(buf)?, deposit: u128::read(buf)? },
            11 => Payload::Vote { proposal: u64::read(buf)?, option: VoteOption::read(buf)? },
            12 => Payload::SignalVersions { versions: SupportedVersions::read(buf)?, shadow_ok: bool::read(buf)? },
            13 => Payload::Challenge {
                session: Hash::read(buf)?,
                attestation: Attestation::read(buf)?,
                signature: Sig::read(buf)?,
                transcript: Transcript::read(buf)?,
                bond: u128::read(buf)?,
            },
            14 => Payload::ChallengeVote { challenge: u64::read(buf)?, guilty: bool::read(buf)? },
            15 => Payload::OpenSessionIn {
                provider: Address::read(buf)?,
                model: Hash::read(buf)?,
                deposit: u128::read(buf)?,
                max_input_per_1k: u128::read(buf)?,
                max_output_per_1k: u128::read(buf)?,
                expiry_height: u64::read(buf)?,
                regions: read_regions(buf)?,
            },
            16 => Payload::ChallengeTensor {
                session: Hash::read(buf)?,
                attestation: Attestation::read(buf)?,
                signature: Sig::read(buf)?,
                evidence: TensorEvidence::read(buf)?,
                bond: u128::read(buf)?,
            },
            17 => Payload::RegisterConsensusKey {
                key: read_bytes(buf, CONSENSUS_KEY_BYTES)?,
                proof: read_bytes(buf, POSSESSION_PROOF_BYTES)?,
            },
            t => return Err(Error::InvalidEnum(t)),
        })
    }
}

impl Write for Transaction {
    fn write(&self, buf: &mut impl BufMut) {
        self.signer.write(buf);
        self.nonce.write(buf);
        self.fee.write(buf);
        self.payload.write(buf);
    }
}
impl EncodeSize for Transaction {
    fn encode_size(&self) -> usize {
        Address::SIZE + 8 + 16 + self.payload.encode_size()
    }
}
impl Read for Transaction {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        Ok(Transaction {
            signer: Address::read(buf)?,
            nonce: u64::read(buf)?,
            fee: u128::read(buf)?,
            payload: Payload::read(buf)?,
        })
    }
}

impl Write for SignedTx {
    fn write(&self, buf: &mut impl BufMut) {
        self.tx.write(buf);
        self.signature.write(buf);
    }
}
impl EncodeSize for SignedTx {
    fn encode_size(&self) -> usize {
        self.tx.encode_size() + Sig::SIZE
    }
}
impl Read for SignedTx {
    type Cfg = ();
    /// Wherever a transaction is decoded (API, gossip, inside a block) it must fit
    /// [`limits::TX_BYTES_MAX`]: the field bounds alone would allow a larger one.
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        let tx = SignedTx { tx: Transaction::read(buf)?, signature: Sig::read(buf)? };
        if tx.encode_size() > limits::TX_BYTES_MAX {
            return Err(Error::Invalid("transaction", "larger than TX_BYTES_MAX"));
        }
        Ok(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EngineKind;
    use proptest::prelude::*;

    fn sample_payloads() -> Vec<Payload> {
        let a = PrivateKey::from_seed(9).address();
        let manifest = ModelManifest {
            name: "m".into(),
            engine: EngineKind::CandleBert,
            weights_sha256: hash(b"1"),
            tokenizer_sha256: hash(b"2"),
            template_sha256: Hash::ZERO,
            quantization: "F32".into(),
            context_length: 512,
        };
        // A challenge of a generation sampled by `sampling`.
        let challenge = |sampling: crate::receipt::SamplingSpec| Payload::Challenge {
            session: hash(b"s"),
            attestation: Attestation {
                request_hash: hash(b"r"),
                output_hash: hash(b"o"),
                model: manifest.id(),
                input_tokens: 2,
                output_tokens: 1,
                output_ids_hash: Hash::ZERO,
                logits_fingerprint: Hash::ZERO,
            },
            signature: PrivateKey::from_seed(3).sign(b"x", b"y"),
            transcript: Transcript {
                model: manifest.id(),
                prompt: vec![1, 2],
                max_tokens: 4,
                sampling,
                stop: vec!["\n".into()],
                output: vec![7],
            },
            bond: 10,
        };
        vec![
            Payload::Transfer { to: a.clone(), amount: 5 },
            Payload::Stake { amount: 7, p2p_address: "127.0.0.1:9000".into() },
            Payload::Unstake { amount: 1 },
            Payload::RegisterProvider(ProviderInfo {
                endpoint: "http://127.0.0.1:8080".into(),
                region: "eu".into(),
                hardware: "2 vCPU".into(),
                prices: vec![ModelPrice { model: manifest.id(), input_per_1k: 1, output_per_1k: 2 }],
                versions: SupportedVersions::V1_ONLY,
            }),
            Payload::RegisterModel(manifest.clone()),
            Payload::OpenSession {
                provider: a.clone(),
                model: manifest.id(),
                deposit: 100,
                max_input_per_1k: 3,
                max_output_per_1k: 4,
                expiry_height: 99,
            },
            Payload::TopUpSession { session: hash(b"s"), amount: 3 },
            Payload::Claim { receipts: vec![] },
            Payload::CloseSession { session: hash(b"s") },
            Payload::ReportEvidence { evidence: vec![1, 2, 3] },
            Payload::SubmitProposal {
                kind: ProposalKind::Upgrade {
                    layer: Layer::Execution,
                    version: 2,
                    activation_height: 10,
                    deadline_height: 20,
                },
                deposit: 10,
            },
            Payload::SubmitProposal {
                kind: ProposalKind::ParamChange { name: "min_tx_fee".into(), value: 5, effective_height: 3 },
                deposit: 10,
            },
            Payload::SubmitProposal { kind: ProposalKind::TreasurySpend { to: a.clone(), amount: 1 }, deposit: 1 },
            Payload::SubmitProposal { kind: ProposalKind::Text { text: "hi".into() }, deposit: 1 },
            Payload::Vote { proposal: 1, option: VoteOption::NoWithVeto },
            Payload::SignalVersions { versions: SupportedVersions::V1_ONLY, shadow_ok: true },
            challenge(crate::receipt::SamplingSpec::Greedy),
            Payload::ChallengeVote { challenge: 3, guilty: true },
            challenge(crate::receipt::SamplingSpec::Adjusted {
                base: Box::new(crate::receipt::SamplingSpec::Random {
                    temperature_bits: 0.7f32.to_bits(),
                    top_k: 40,
                    top_p_bits: 1.0f32.to_bits(),
                    min_p_bits: 0,
                    seed: 5,
                }),
                adjust: crate::receipt::LogitAdjustSpec {
                    presence_bits: 0.5f32.to_bits(),
                    frequency_bits: 0,
                    bias: vec![(3, (-100.0f32).to_bits()), (9, 2.0f32.to_bits())],
                },
            }),
            Payload::OpenSessionIn {
                provider: a.clone(),
                model: manifest.id(),
                deposit: 100,
                max_input_per_1k: 0,
                max_output_per_1k: 4,
                expiry_height: 99,
                regions: vec!["eu-west".into(), "eu-central".into()],
            },
            Payload::RegisterModel(ModelManifest { engine: EngineKind::TractOnnx, ..manifest.clone() }),
            Payload::ChallengeTensor {
                session: hash(b"s"),
                attestation: Attestation {
                    request_hash: hash(b"r"),
                    output_hash: hash(b"o"),
                    model: manifest.id(),
                    input_tokens: 0,
                    output_tokens: 1,
                    output_ids_hash: Hash::ZERO,
                    logits_fingerprint: Hash::ZERO,
                },
                signature: PrivateKey::from_seed(3).sign(b"x", b"y"),
                evidence: TensorEvidence {
                    model: manifest.id(),
                    inputs: vec![crate::tensor::EvidenceTensor::from_f32("x", &[1, 2], &[0.5, 1.5])],
                    outputs: vec![crate::tensor::EvidenceTensor::from_f32("y", &[1, 1], &[f32::NAN])],
                },
                bond: 10,
            },
            Payload::RegisterConsensusKey { key: vec![7; CONSENSUS_KEY_BYTES], proof: vec![9; POSSESSION_PROOF_BYTES] },
        ]
    }

    #[test]
    fn region_lists_are_bounded_on_decode() {
        let key = PrivateKey::from_seed(1);
        let open = |regions: Vec<String>| {
            let payload = Payload::OpenSessionIn {
                provider: key.address(),
                model: Hash::ZERO,
                deposit: 1,
                max_input_per_1k: 0,
                max_output_per_1k: 1,
                expiry_height: 9,
                regions,
            };
            to_vec(&Transaction { signer: key.address(), nonce: 0, fee: 1, payload }.sign(&key, "c"))
        };
        let ok = vec!["r".to_string(); limits::SESSION_REGIONS_MAX];
        assert!(SignedTx::decode(&open(ok)).is_ok());
        let many = vec!["r".to_string(); limits::SESSION_REGIONS_MAX + 1];
        assert!(SignedTx::decode(&open(many)).is_err());
        let long = vec!["r".repeat(limits::REGION_BYTES_MAX + 1)];
        assert!(SignedTx::decode(&open(long)).is_err());
    }

    #[test]
    fn every_payload_roundtrips_and_sizes_match() {
        let key = PrivateKey::from_seed(1);
        for (nonce, payload) in sample_payloads().into_iter().enumerate() {
            let tx = Transaction { signer: key.address(), nonce: nonce as u64, fee: 10, payload };
            let signed = tx.sign(&key, "test");
            let bytes = to_vec(&signed);
            assert_eq!(bytes.len(), signed.encode_size(), "{}", signed.tx.payload.kind());
            let back = SignedTx::decode(&bytes).unwrap();
            assert_eq!(back, signed);
            assert!(back.verify("test"));
            assert!(!back.verify("other-chain"), "signature must bind the chain id");
        }
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let key = PrivateKey::from_seed(1);
        let signed = Transaction {
            signer: key.address(),
            nonce: 0,
            fee: 10,
            payload: Payload::Transfer { to: key.address(), amount: 1 },
        }
        .sign(&key, "c");
        let mut bad = signed.clone();
        bad.tx.fee = 11;
        assert!(!bad.verify("c"));
    }

    #[test]
    fn rejects_oversized_and_trailing_bytes() {
        let key = PrivateKey::from_seed(1);
        let signed = Transaction { signer: key.address(), nonce: 0, fee: 1, payload: Payload::Unstake { amount: 1 } }
            .sign(&key, "c");
        let mut bytes = to_vec(&signed);
        bytes.push(0);
        assert!(SignedTx::decode(&bytes).is_err());
        assert!(SignedTx::decode(&vec![0u8; limits::TX_BYTES_MAX + 1]).is_err());
        // An evidence blob over its bound is refused before allocation.
        let huge = Payload::ReportEvidence { evidence: vec![0; limits::EVIDENCE_BYTES_MAX + 1] };
        let tx = Transaction { signer: key.address(), nonce: 0, fee: 1, payload: huge }.sign(&key, "c");
        assert!(SignedTx::decode(&to_vec(&tx)).is_err());
    }

    proptest! {
        // Arbitrary bytes never panic the decoder.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = SignedTx::decode(&bytes);
        }

        #[test]
        fn transfer_roundtrip(nonce in any::<u64>(), fee in any::<u128>(), amount in any::<u128>(), seed in any::<u64>()) {
            let key = PrivateKey::from_seed(seed);
            let signed = Transaction { signer: key.address(), nonce, fee, payload: Payload::Transfer { to: key.address(), amount } }
                .sign(&key, "c");
            prop_assert_eq!(SignedTx::decode(&to_vec(&signed)).unwrap(), signed);
        }
    }
}
