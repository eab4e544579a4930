//! Execution version 5: version 4 with challenges of tensor-model inferences.
//!
//! [`Payload::ChallengeTensor`] accuses a provider of attesting to outputs its tensor model does
//! not produce. The evidence is the request's inputs and the attested outputs
//! ([`TensorEvidence`]); the chain checks what it can without running a model (the session's
//! client challenges, the provider signed the attestation, the evidence hashes to the
//! attestation's request and output hashes, one paid inference per row) and then the challenge
//! is version 3's in every other way: the same bond, committee, votes, deadline, slash, refund
//! and reward. Committee members re-run the inputs on their own copies of the model and vote
//! guilty when an output differs beyond the tolerance tensor audits use. The record's transcript
//! names the model only; the evidence is kept beside it (`table::CHALLENGE_EVIDENCE`).
//!
//! Before this version, a block carrying one is invalid ([`crate::too_new`]), as it is to older
//! binaries, which cannot decode it.
//!
//! [`TensorEvidence`]: plexus_types::tensor::TensorEvidence

use plexus_types::receipt::{SamplingSpec, Transcript};
use plexus_types::tx::Payload;
use plexus_types::{Params, SignedTx};

use crate::state::{Store, keys};
use crate::v1::Rules;
use crate::{BlockEnv, BlockError, BlockOutcome, Event, ExecError, Executor, v3, v4};

/// The version that introduced what this module adds.
pub(crate) const VERSION: u16 = 5;

/// Version 5's rules on top of version 1's block structure (and version 3's end of block).
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
        Payload::ChallengeTensor { session, attestation, signature, evidence, bond } => {
            let challenger = &tx.tx.signer;
            let accused = v3::accused_session(exec, store, params, challenger, session, attestation, signature, *bond)?;
            evidence.matches(attestation).map_err(ExecError::Invalid)?;
            let transcript = Transcript {
                model: evidence.model,
                prompt: Vec::new(),
                max_tokens: 0,
                sampling: SamplingSpec::Greedy,
                stop: Vec::new(),
                output: Vec::new(),
            };
            let id =
                v3::open(store, params, env, challenger, session, accused, attestation, transcript, *bond, events)?;
            store.write(keys::challenge_evidence(id), evidence);
            Ok(())
        }
        _ => v4::apply_payload(exec, store, params, env, tx, events),
    }
}
