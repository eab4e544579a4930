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

    /// Whether `proof` proves that `owner` holds the consensus (BLS) key `key`, on this chain.
    /// Must be a pure function of its inputs. `false` where consensus is not available.
    fn verify_possession(&self, owner: &Address, key: &[u8], proof: &[u8]) -> bool {
        let _ = (owner, key, proof);
        false
    }
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
