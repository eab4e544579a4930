//! Execution version 7: version 6 with challenges of penalised and biased generations.
//!
//! A challenge's transcript may name a sampling with the logits adjusted first (OpenAI's
//! presence and frequency penalties and `logit_bias`, [`SamplingSpec::Adjusted`]): committee
//! members re-run it with the same adjustment, counted over the output before each position,
//! as the provider's sampler applied it. Every rule of a challenge is version 3's; only the
//! transcripts it accepts are more.
//!
//! Before this version, a block carrying such a challenge is invalid ([`crate::too_new`]), as
//! it is to older binaries, which cannot decode the transcript.
//!
//! [`SamplingSpec::Adjusted`]: plexus_types::receipt::SamplingSpec::Adjusted

use plexus_types::SignedTx;

use crate::{BlockEnv, BlockError, BlockOutcome, Executor, v6};

/// The version that introduced what this module adds.
pub(crate) const VERSION: u16 = 7;

pub(crate) fn execute_block(
    exec: &Executor,
    state: &dyn crate::StateRead,
    env: &BlockEnv,
    txs: &[SignedTx],
) -> Result<BlockOutcome, BlockError> {
    v6::execute_block(exec, state, env, txs)
}

pub(crate) fn build_block(
    exec: &Executor,
    state: &dyn crate::StateRead,
    env: &BlockEnv,
    candidates: impl IntoIterator<Item = SignedTx>,
    max_txs: usize,
    max_bytes: usize,
) -> Result<crate::BuiltBlock, BlockError> {
    v6::build_block(exec, state, env, candidates, max_txs, max_bytes)
}
