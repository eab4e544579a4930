//! A committee of `n` validators signing one block's finalization, under either consensus
//! version, for measuring what certificates cost (bytes, and time to verify) without a network.
//! Used by `plexus-bench certificates`; keys are generated from fixed seeds.

use commonware_codec::{Decode as _, DecodeExt as _, Encode as _};
use commonware_consensus::simplex::types::{Finalization, Finalize, Proposal};
use commonware_consensus::types::{Epoch, Round, View};
use commonware_cryptography::certificate::{Scheme as _, Verifier as _};
use commonware_cryptography::{Hasher as _, Sha256, Signer as _, ed25519};
use commonware_parallel::Sequential;
use commonware_utils::iter::NonEmpty;
use commonware_utils::ordered::{BiMap, Set};
use rand::SeedableRng as _;

use crate::{Digest, Scheme, bls_public, derive_bls_key};

/// `n` validators with keys from fixed seeds, and a verify-only scheme of the same set.
pub struct Committee {
    signers: Vec<Scheme>,
    verifier: Scheme,
    proposal: Proposal<Digest>,
}

impl Committee {
    /// A committee of `n` (at least 1) under consensus `version` (1 or 2).
    pub fn new(version: u16, n: usize) -> Committee {
        assert!(n > 0 && crate::SUPPORTED_VERSIONS.contains(&version), "a committee of {n} under v{version}");
        let ns = b"plexus-committee";
        let keys: Vec<ed25519::PrivateKey> = (0..n as u64).map(ed25519::PrivateKey::from_seed).collect();
        let (signers, verifier) = match version {
            1 => {
                let set = Set::from_iter_dedup(keys.iter().map(|k| k.public_key()));
                let signers = keys.iter().map(|k| Scheme::ed25519_signer(ns, set.clone(), k.clone()).expect("member"));
                (signers.collect(), Scheme::ed25519_verifier(ns, set))
            }
            _ => {
                let pairs: Vec<_> = keys.iter().map(|k| (k.public_key(), bls_public(&derive_bls_key(k)))).collect();
                let set = BiMap::try_from(pairs).expect("distinct keys");
                let signers =
                    keys.iter().map(|k| Scheme::bls_signer(ns, set.clone(), derive_bls_key(k)).expect("member"));
                (signers.collect(), Scheme::bls_verifier(ns, set))
            }
        };
        let proposal =
            Proposal::new(Round::new(Epoch::new(1), View::new(42)), View::new(41), Sha256::hash(&[b"block"]));
        Committee { signers, verifier, proposal }
    }

    /// The smallest quorum: what a finalization certificate needs (`n - f`, `f = (n - 1) / 3`).
    pub fn quorum(&self) -> usize {
        let n = self.signers.len();
        n - (n - 1) / 3
    }

    /// Each of a quorum's finalize votes, encoded as sent on the wire.
    pub fn votes(&self) -> Vec<Vec<u8>> {
        self.signers[..self.quorum()]
            .iter()
            .map(|s| Finalize::sign(s, self.proposal.clone()).expect("signs").encode().to_vec())
            .collect()
    }

    /// Decodes and verifies votes as a validator receiving them would (in one batch); how many
    /// verified.
    pub fn verify_votes(&self, votes: &[Vec<u8>]) -> usize {
        let decoded: Vec<Finalize<Scheme, Digest>> =
            votes.iter().filter_map(|v| Finalize::decode(commonware_codec::Copying(&v[..])).ok()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let attestations = decoded.into_iter().map(|v| v.attestation);
        let subject = commonware_consensus::simplex::types::Subject::Finalize { proposal: &self.proposal };
        self.verifier.verify_attestations::<_, Digest, _>(&mut rng, subject, attestations, &Sequential).verified.len()
    }

    /// A finalization assembled from a quorum's votes, encoded as stored and sent.
    pub fn finalization(&self) -> Vec<u8> {
        let votes: Vec<Finalize<Scheme, Digest>> = self.signers[..self.quorum()]
            .iter()
            .map(|s| Finalize::sign(s, self.proposal.clone()).expect("signs"))
            .collect();
        Finalization::from_finalizes(&self.signers[0], NonEmpty::try_new(votes.iter()).expect("votes"), &Sequential)
            .expect("a quorum assembles")
            .encode()
            .to_vec()
    }

    /// Bytes of the certificate alone inside an encoded finalization.
    pub fn certificate_bytes(&self, finalization: &[u8]) -> usize {
        self.decode(finalization).map_or(0, |f| commonware_codec::EncodeSize::encode_size(&f.certificate))
    }

    /// Decodes and verifies an encoded finalization, as a node receiving it does.
    pub fn verify_finalization(&self, finalization: &[u8]) -> bool {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        self.decode(finalization).is_some_and(|f| f.verify(&mut rng, &self.verifier, &Sequential))
    }

    fn decode(&self, bytes: &[u8]) -> Option<Finalization<Scheme, Digest>> {
        Finalization::decode_cfg(commonware_codec::Copying(bytes), &self.verifier.certificate_codec_config()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_verify_their_own_finalizations_and_votes() {
        for version in [1, 2] {
            let c = Committee::new(version, 7);
            assert_eq!(c.quorum(), 5);
            let f = c.finalization();
            assert!(c.verify_finalization(&f), "v{version}");
            assert_eq!(c.verify_votes(&c.votes()), 5, "v{version}");
            // A flipped byte in the certificate's signature part fails it.
            let mut bad = f.clone();
            let last = bad.len() - 1;
            bad[last] ^= 0x40;
            assert!(!c.verify_finalization(&bad), "v{version}");
        }
        let (one, two) = (Committee::new(1, 16), Committee::new(2, 16));
        assert!(!two.verify_finalization(&one.finalization()) && !one.verify_finalization(&two.finalization()));
        assert!(two.certificate_bytes(&two.finalization()) < one.certificate_bytes(&one.finalization()) / 10);
    }
}
