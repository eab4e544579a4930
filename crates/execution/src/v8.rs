//! Execution version 8: version 7 with challenges of constrained generations.
//!
//! A challenge's transcript may name a sampling whose tokens a grammar constrains (a JSON
//! schema or a Lark grammar, [`SamplingSpec::Constrained`]): committee members re-run it with
//! the same grammar, which allows at each position only the tokens that keep the output inside
//! it, as the provider's sampler allowed them; an output the grammar refuses at any position is
//! faulty outright. Every rule of a challenge is version 3's; only the transcripts it accepts
//! are more.
//!
//! Before this version, a block carrying such a challenge is invalid ([`crate::too_new`]), as
//! it is to older binaries, which cannot decode the transcript.
//!
//! [`SamplingSpec::Constrained`]: plexus_types::receipt::SamplingSpec::Constrained

use plexus_types::SignedTx;

use crate::{BlockEnv, BlockError, BlockOutcome, Executor, v7};

/// The version that introduced what this module adds.
pub(crate) const VERSION: u16 = 8;

pub(crate) fn execute_block(
    exec: &Executor,
    state: &dyn crate::StateRead,
    env: &BlockEnv,
    txs: &[SignedTx],
) -> Result<BlockOutcome, BlockError> {
    v7::execute_block(exec, state, env, txs)
}

pub(crate) fn build_block(
    exec: &Executor,
    state: &dyn crate::StateRead,
    env: &BlockEnv,
    candidates: impl IntoIterator<Item = SignedTx>,
    max_txs: usize,
    max_bytes: usize,
) -> Result<crate::BuiltBlock, BlockError> {
    v7::build_block(exec, state, env, candidates, max_txs, max_bytes)
}
