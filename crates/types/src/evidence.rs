//! Evidence that a validator signed conflicting consensus messages. The consensus layer knows
//! how to decode and check it; execution only asks, through [`EvidenceVerifier`], so neither
//! depends on the other.

use crate::Address;

/// Checks consensus evidence. Implemented by the consensus layer.
pub trait EvidenceVerifier: Send + Sync {
    /// Decodes and verifies `evidence`. `validators_of(epoch)` gives that epoch's validator set
    /// from state. Must be a pure function of its inputs.
    fn verify(
        &self,
        evidence: &[u8],
        validators_of: &dyn Fn(u64) -> Option<Vec<Address>>,
    ) -> Result<VerifiedEvidence, String>;

    /// [`EvidenceVerifier::verify`] for chains where an epoch may run consensus version 2:
    /// `committee_of(epoch)` gives the epoch's validators and, for a version-2 epoch, the BLS keys
    /// of those who sign. Must be a pure function of its inputs.
    fn verify_in_committee(
        &self,
        evidence: &[u8],
        committee_of: &dyn Fn(u64) -> Option<EpochCommittee>,
    ) -> Result<VerifiedEvidence, String> {
        self.verify(evidence, &|epoch| committee_of(epoch).map(|c| c.validators))
    }

    /// Whether `proof` proves that `owner` holds the consensus (BLS) key `key`, on this chain.
    /// Must be a pure function of its inputs. `false` where consensus is not available.
    fn verify_possession(&self, owner: &Address, key: &[u8], proof: &[u8]) -> bool {
        let _ = (owner, key, proof);
        false
    }
}

/// Who signed consensus votes in an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochCommittee {
    /// The epoch's validators.
    pub validators: Vec<Address>,
    /// Consensus version 2: the signers and their BLS keys (as registered); `None` for version 1.
    pub bls_keys: Option<Vec<(Address, Vec<u8>)>>,
}

/// What verified evidence proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEvidence {
    pub offender: Address,
    pub epoch: u64,
    pub view: u64,
    pub kind: &'static str,
}

/// An evidence verifier that rejects everything, for nodes and tests without consensus.
pub struct NoEvidence;

impl EvidenceVerifier for NoEvidence {
    fn verify(&self, _: &[u8], _: &dyn Fn(u64) -> Option<Vec<Address>>) -> Result<VerifiedEvidence, String> {
        Err("evidence verification is not available on this node".into())
    }
}
