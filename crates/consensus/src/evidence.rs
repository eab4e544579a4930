//! Conflicting-vote evidence: captured from the engine, encoded for a transaction, and
//! re-verified by execution against the validator set of the offence's epoch.
//!
//! Encoding: one tag byte (1 conflicting notarize, 2 conflicting finalize, 3 nullify and
//! finalize in the same view) followed by the engine's own encoding of the pair of votes.

use commonware_codec::{Copying, DecodeExt, Encode};
use commonware_consensus::simplex::types::{
    Activity, Attributable, ConflictingFinalize, ConflictingNotarize, NullifyFinalize,
};
use commonware_consensus::{Epochable, Viewable};
use commonware_cryptography::certificate::Scheme as _;
use commonware_parallel::Sequential;
use commonware_utils::ordered::{BiMap, Quorum, Set};
use plexus_types::Address;
use plexus_types::evidence::{EpochCommittee, EvidenceVerifier, VerifiedEvidence};

use crate::{Digest, PublicKey, Scheme};

const NOTARIZE: u8 = 1;
const FINALIZE: u8 = 2;
const NULLIFY_FINALIZE: u8 = 3;

/// Encodes the evidence variants of an activity; `None` for every other activity.
pub fn encode(activity: &Activity<Scheme, Digest>) -> Option<Vec<u8>> {
    let (tag, body) = match activity {
        Activity::ConflictingNotarize(e) => (NOTARIZE, e.encode()),
        Activity::ConflictingFinalize(e) => (FINALIZE, e.encode()),
        Activity::NullifyFinalize(e) => (NULLIFY_FINALIZE, e.encode()),
        _ => return None,
    };
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(tag);
    out.extend_from_slice(&body);
    Some(out)
}

/// Verifies encoded evidence for execution: decodes it, rebuilds the verify-only scheme of the
/// offence's epoch from state, checks both signatures and names the offender. A pure function
/// of its inputs.
pub struct Verifier {
    namespace: Vec<u8>,
    chain_id: String,
}

impl Verifier {
    pub fn new(chain_id: &str) -> Self {
        Verifier { namespace: crate::namespace(chain_id), chain_id: chain_id.to_string() }
    }

    fn check<E>(
        &self,
        evidence: &E,
        kind: &'static str,
        scheme_of: &dyn Fn(u64) -> Result<Scheme, String>,
        verify: impl FnOnce(&E, &Scheme) -> bool,
    ) -> Result<VerifiedEvidence, String>
    where
        E: Attributable + Epochable + Viewable,
    {
        let epoch = evidence.epoch().get();
        let scheme = scheme_of(epoch)?;
        if !verify(evidence, &scheme) {
            return Err("signatures do not verify".into());
        }
        let offender =
            scheme.participants().key(evidence.signer()).ok_or("signer is not a validator of that epoch")?.clone();
        Ok(VerifiedEvidence { offender: Address(offender), epoch, view: evidence.view().get(), kind })
    }

    /// The ed25519 (consensus v1) verifier of an epoch's validator set.
    fn ed25519_of(&self, epoch: u64, validators: Option<Vec<Address>>) -> Result<Scheme, String> {
        let validators = validators.ok_or_else(|| format!("no validator set for epoch {epoch}"))?;
        let keys: Vec<PublicKey> = validators.into_iter().map(|a| a.0).collect();
        Ok(Scheme::ed25519_verifier(&self.namespace, Set::from_iter_dedup(keys)))
    }

    /// The verifier of an epoch's committee, by its consensus version.
    fn committee_of(&self, epoch: u64, committee: Option<EpochCommittee>) -> Result<Scheme, String> {
        let committee = committee.ok_or_else(|| format!("no validator set for epoch {epoch}"))?;
        let Some(keys) = committee.bls_keys else { return self.ed25519_of(epoch, Some(committee.validators)) };
        let pairs = keys
            .iter()
            .map(|(a, k)| {
                Ok((a.0.clone(), crate::BlsPublicKey::decode(Copying(&k[..])).map_err(|e| format!("bad key: {e}"))?))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let committee = BiMap::try_from(pairs).map_err(|e| format!("committee of epoch {epoch}: {e:?}"))?;
        Ok(Scheme::bls_verifier(&self.namespace, committee))
    }

    fn verify_with(
        &self,
        evidence: &[u8],
        scheme_of: &dyn Fn(u64) -> Result<Scheme, String>,
    ) -> Result<VerifiedEvidence, String> {
        let (&tag, body) = evidence.split_first().ok_or("empty evidence")?;
        // Each vote is one signature checked on its own (no random batching), so the verdict is
        // the same on every node; the generator is only what the interface asks for.
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let bad = |e: commonware_codec::Error| format!("undecodable evidence: {e}");
        match tag {
            NOTARIZE => {
                let e = ConflictingNotarize::<Scheme, Digest>::decode(Copying(body)).map_err(bad)?;
                self.check(&e, "conflicting_notarize", scheme_of, |e, s| e.verify(&mut rng, s, &Sequential))
            }
            FINALIZE => {
                let e = ConflictingFinalize::<Scheme, Digest>::decode(Copying(body)).map_err(bad)?;
                self.check(&e, "conflicting_finalize", scheme_of, |e, s| e.verify(&mut rng, s, &Sequential))
            }
            NULLIFY_FINALIZE => {
                let e = NullifyFinalize::<Scheme, Digest>::decode(Copying(body)).map_err(bad)?;
                self.check(&e, "nullify_finalize", scheme_of, |e, s| e.verify(&mut rng, s, &Sequential))
            }
            t => Err(format!("unknown evidence tag {t}")),
        }
    }
}

impl EvidenceVerifier for Verifier {
    fn verify(
        &self,
        evidence: &[u8],
        validators_of: &dyn Fn(u64) -> Option<Vec<Address>>,
    ) -> Result<VerifiedEvidence, String> {
        self.verify_with(evidence, &|epoch| self.ed25519_of(epoch, validators_of(epoch)))
    }

    fn verify_in_committee(
        &self,
        evidence: &[u8],
        committee_of: &dyn Fn(u64) -> Option<EpochCommittee>,
    ) -> Result<VerifiedEvidence, String> {
        self.verify_with(evidence, &|epoch| self.committee_of(epoch, committee_of(epoch)))
    }

    fn verify_possession(&self, owner: &Address, key: &[u8], proof: &[u8]) -> bool {
        let Ok(key) = crate::BlsPublicKey::decode(Copying(key)) else { return false };
        let Ok(proof) = crate::BlsSignature::decode(Copying(proof)) else { return false };
        crate::verify_possession(&self.chain_id, &owner.0, &key, &proof)
    }
}

use rand::SeedableRng as _;

#[cfg(test)]
mod tests {
    use super::*;
    use commonware_consensus::simplex::types::{Notarize, Proposal};
    use commonware_consensus::types::{Epoch, Round, View};
    use commonware_cryptography::{Hasher as _, Sha256, Signer as _, ed25519};

    #[test]
    fn equivocation_is_proven_on_its_own_chain_only() {
        let keys: Vec<ed25519::PrivateKey> = (0..4).map(ed25519::PrivateKey::from_seed).collect();
        let set = Set::from_iter_dedup(keys.iter().map(|k| k.public_key()));
        let signer =
            Scheme::ed25519_signer(&crate::namespace("chain-a"), set, keys[0].clone()).expect("a member signs");
        let round = Round::new(Epoch::new(0), View::new(5));
        let vote = |payload: &[u8]| {
            Notarize::sign(&signer, Proposal::new(round, View::new(4), Sha256::hash(&[payload]))).expect("signs")
        };
        let evidence = encode(&Activity::ConflictingNotarize(ConflictingNotarize::new(vote(b"one"), vote(b"two"))))
            .expect("evidence encodes");
        let validators: Vec<Address> = keys.iter().map(|k| Address(k.public_key())).collect();
        let of = |_: u64| Some(validators.clone());
        let proven = Verifier::new("chain-a").verify(&evidence, &of).unwrap();
        assert_eq!((proven.offender, proven.view, proven.kind), (validators[0].clone(), 5, "conflicting_notarize"));
        // The same votes say nothing on another chain (its namespace is in every signature).
        assert!(Verifier::new("chain-b").verify(&evidence, &of).is_err());
        // Nor with a validator set the signer is not in, nor cut short.
        let others = |_: u64| Some(validators[1..].to_vec());
        assert!(Verifier::new("chain-a").verify(&evidence, &others).is_err());
        assert!(Verifier::new("chain-a").verify(&evidence[..evidence.len() - 1], &of).is_err());
    }

    #[test]
    fn equivocation_in_a_v2_epoch_is_proven_with_its_committee_keys() {
        let keys: Vec<ed25519::PrivateKey> = (0..4).map(ed25519::PrivateKey::from_seed).collect();
        let bls: Vec<(Address, Vec<u8>)> = keys
            .iter()
            .map(|k| (Address(k.public_key()), crate::bls_public(&crate::derive_bls_key(k)).encode().to_vec()))
            .collect();
        let pairs: Vec<_> =
            keys.iter().map(|k| (k.public_key(), crate::bls_public(&crate::derive_bls_key(k)))).collect();
        let committee = BiMap::try_from(pairs).unwrap();
        let signer = Scheme::bls_signer(&crate::namespace("chain-a"), committee, crate::derive_bls_key(&keys[2]))
            .expect("member");
        let round = Round::new(Epoch::new(3), View::new(9));
        let vote = |payload: &[u8]| {
            Notarize::sign(&signer, Proposal::new(round, View::new(8), Sha256::hash(&[payload]))).expect("signs")
        };
        let evidence = encode(&Activity::ConflictingNotarize(ConflictingNotarize::new(vote(b"one"), vote(b"two"))))
            .expect("evidence encodes");
        let validators: Vec<Address> = keys.iter().map(|k| Address(k.public_key())).collect();
        let v2 = |_: u64| Some(EpochCommittee { validators: validators.clone(), bls_keys: Some(bls.clone()) });
        let proven = Verifier::new("chain-a").verify_in_committee(&evidence, &v2).unwrap();
        assert_eq!((proven.offender, proven.epoch, proven.view), (validators[2].clone(), 3, 9));
        // Read as a version-1 epoch, the same bytes prove nothing.
        let v1 = |_: u64| Some(EpochCommittee { validators: validators.clone(), bls_keys: None });
        assert!(Verifier::new("chain-a").verify_in_committee(&evidence, &v1).is_err());
        assert!(Verifier::new("chain-a").verify(&evidence, &|_| Some(validators.clone())).is_err());
        // Nor on another chain.
        assert!(Verifier::new("chain-b").verify_in_committee(&evidence, &v2).is_err());
    }
}
