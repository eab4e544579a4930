//! Execution version 6: version 5 with BLS consensus keys, what consensus version 2 signs with.
//!
//! [`Payload::RegisterConsensusKey`] stores the signer's BLS12-381 public key once its proof of
//! possession verifies for the signer on this chain (the consensus layer checks it, through
//! [`crate::EvidenceVerifier::verify_possession`]; the proof names the signer, so a registration
//! copied from the mempool is worthless to anyone else). Rules:
//! - one key per address, for good: a second registration is refused (a key that could change
//!   would let nodes reading the table at different times disagree on an epoch's committee);
//! - one address per key: a key already registered by someone else is refused;
//! - the record keeps the registration height: consensus counts a key for an epoch only if it
//!   was registered before the epoch's first block.
//!
//! Only validator candidates (bonded at least `min_stake`) may register: the proof costs a
//! pairing check on every node, so it is not free for anyone to ask for. Before this
//! version a block carrying one is invalid ([`crate::too_new`]).
//!
//! Governance may also vote consensus and network one version back down ([`crate::gov::may_move_to`]):
//! the protection those layers have instead of an automatic rollback. A consensus downgrade
//! activates at an epoch boundary like any consensus change.
//!
//! Conflicting-vote evidence from a consensus-v2 epoch is checked against that epoch's BLS
//! committee ([`crate::gov::epoch_consensus`]); version 1 epochs' evidence as before.

use plexus_types::tx::{CONSENSUS_KEY_BYTES, POSSESSION_PROOF_BYTES, Payload};
use plexus_types::{Params, SignedTx};

use crate::state::{ConsensusKey, Store, keys};
use crate::v1::Rules;
use crate::{BlockEnv, BlockError, BlockOutcome, Event, ExecError, Executor, v3, v5};

/// The version that introduced what this module adds.
pub(crate) const VERSION: u16 = 6;

/// Version 6's rules on top of version 1's block structure (and version 3's end of block).
pub(crate) const RULES: Rules = Rules { payload: apply_payload, before_end: v3::before_end };

pub(crate) fn execute_block(
    exec: &Executor,
    state: &dyn crate::StateRead,
    env: &BlockEnv,
    txs: &[SignedTx],
) -> Result<BlockOutcome, BlockError> {
    v3::execute_with(exec, state, env, txs, &RULES)
}

pub(crate) fn build_block(
    exec: &Executor,
    state: &dyn crate::StateRead,
    env: &BlockEnv,
    candidates: impl IntoIterator<Item = SignedTx>,
    max_txs: usize,
    max_bytes: usize,
) -> Result<crate::BuiltBlock, BlockError> {
    v3::build_with(exec, state, env, candidates, max_txs, max_bytes, &RULES)
}

pub(crate) fn apply_payload(
    exec: &Executor,
    store: &mut Store<'_, '_>,
    params: &Params,
    env: &BlockEnv,
    tx: &SignedTx,
    events: &mut Vec<Event>,
) -> Result<(), ExecError> {
    match &tx.tx.payload {
        Payload::RegisterConsensusKey { key, proof } => {
            let signer = &tx.tx.signer;
            if key.len() != CONSENSUS_KEY_BYTES || proof.len() != POSSESSION_PROOF_BYTES {
                return Err(ExecError::Invalid(format!(
                    "a consensus key is {CONSENSUS_KEY_BYTES} bytes and its proof {POSSESSION_PROOF_BYTES}; got {} and {}",
                    key.len(),
                    proof.len()
                )));
            }
            if store.consensus_key(signer).is_some() {
                return Err(ExecError::Forbidden(format!("{signer} already registered its consensus key")));
            }
            let key_hash = plexus_types::hash(key);
            if store.read::<plexus_types::Address>(&keys::consensus_key_owner(&key_hash)).is_some() {
                return Err(ExecError::Forbidden("this consensus key is registered by another address".into()));
            }
            // The pairing check costs far more than a signature check: only validator candidates
            // (bonded at least `min_stake`), whose keys are ever used, may ask for it.
            let bonded = store.stake(signer).bonded;
            if bonded < params.min_stake {
                return Err(ExecError::Forbidden(format!(
                    "only validator candidates register consensus keys: {signer} has {bonded} bonded, min_stake is {}",
                    params.min_stake
                )));
            }
            if !exec.evidence().verify_possession(signer, key, proof) {
                return Err(ExecError::Invalid(
                    "the proof of possession does not verify for this key on this chain".into(),
                ));
            }
            store.write(keys::consensus_key(signer), &ConsensusKey { key: key.clone(), registered_height: env.height });
            store.write(keys::consensus_key_owner(&key_hash), signer);
            events.push(Event::ConsensusKeyRegistered { validator: signer.clone(), height: env.height });
            Ok(())
        }
        Payload::ReportEvidence { evidence } => {
            // Votes of a consensus-v2 epoch are BLS signatures: checked against that epoch's
            // committee keys (version 1 epochs as before).
            let committee_of = |epoch: u64| {
                let validators = store.validators(epoch)?.0.into_iter().map(|v| v.address).collect();
                let consensus = crate::gov::epoch_consensus(store, epoch)?;
                let bls_keys = (consensus.version >= 2).then_some(consensus.keys);
                Some(plexus_types::evidence::EpochCommittee { validators, bls_keys })
            };
            let proof = exec
                .evidence()
                .verify_in_committee(evidence, &committee_of)
                .map_err(|e| ExecError::Invalid(format!("evidence: {e}")))?;
            let before = events.len();
            crate::v1::record_evidence(store, env, &tx.tx.signer, proof, events)?;
            v3::slash_recorded_offence(store, params, env, &tx.tx.signer, events, before)
        }
        _ => v5::apply_payload(exec, store, params, env, tx, events),
    }
}
