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
use commonware_utils::ordered::{Quorum, Set};
use plexus_execution::{EvidenceVerifier, VerifiedEvidence};
use plexus_types::Address;

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
}

impl Verifier {
    pub fn new(chain_id: &str) -> Self {
        Verifier { namespace: crate::namespace(chain_id) }
    }

    fn check<E>(
        &self,
        evidence: &E,
        kind: &'static str,
        validators_of: &dyn Fn(u64) -> Option<Vec<Address>>,
        verify: impl FnOnce(&E, &Scheme) -> bool,
    ) -> Result<VerifiedEvidence, String>
    where
        E: Attributable + Epochable + Viewable,
    {
        let epoch = evidence.epoch().get();
        let validators = validators_of(epoch).ok_or_else(|| format!("no validator set for epoch {epoch}"))?;
        let keys: Vec<PublicKey> = validators.into_iter().map(|a| a.0).collect();
        let set = Set::from_iter_dedup(keys);
        let scheme = Scheme::verifier(&self.namespace, set);
        if !verify(evidence, &scheme) {
            return Err("signatures do not verify".into());
        }
        let offender =
            scheme.participants().key(evidence.signer()).ok_or("signer is not a validator of that epoch")?.clone();
        Ok(VerifiedEvidence { offender: Address(offender), epoch, view: evidence.view().get(), kind })
    }
}

impl EvidenceVerifier for Verifier {
    fn verify(
        &self,
        evidence: &[u8],
        validators_of: &dyn Fn(u64) -> Option<Vec<Address>>,
    ) -> Result<VerifiedEvidence, String> {
        let (&tag, body) = evidence.split_first().ok_or("empty evidence")?;
        // Each vote is one ed25519 signature checked on its own (no random batching), so the
        // verdict is the same on every node; the generator is only what the interface asks for.
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let bad = |e: commonware_codec::Error| format!("undecodable evidence: {e}");
        match tag {
            NOTARIZE => {
                let e = ConflictingNotarize::<Scheme, Digest>::decode(Copying(body)).map_err(bad)?;
                self.check(&e, "conflicting_notarize", validators_of, |e, s| e.verify(&mut rng, s, &Sequential))
            }
            FINALIZE => {
                let e = ConflictingFinalize::<Scheme, Digest>::decode(Copying(body)).map_err(bad)?;
                self.check(&e, "conflicting_finalize", validators_of, |e, s| e.verify(&mut rng, s, &Sequential))
            }
            NULLIFY_FINALIZE => {
                let e = NullifyFinalize::<Scheme, Digest>::decode(Copying(body)).map_err(bad)?;
                self.check(&e, "nullify_finalize", validators_of, |e, s| e.verify(&mut rng, s, &Sequential))
            }
            t => Err(format!("unknown evidence tag {t}")),
        }
    }
}

use rand::SeedableRng as _;
