//! Execution version 2: version 1 with a block reward. Half of the transaction fees a block
//! collects (rounded down; the odd unit stays in the treasury) go to the block's proposer
//! instead of the treasury, paying validators for the blocks they produce — never more than the
//! treasury holds after the block (voter rewards come out of it too). Everything else is
//! version 1, called unchanged.

use plexus_types::{Amount, SignedTx};

use crate::state::{Bucket, Layered, Overlay, StateRead, Store};
use crate::{BlockEnv, BlockError, BlockOutcome, Event, Executor, v1};

pub(crate) fn execute_block(
    exec: &Executor,
    state: &dyn StateRead,
    env: &BlockEnv,
    txs: &[SignedTx],
) -> Result<BlockOutcome, BlockError> {
    let mut outcome = v1::execute_block(exec, state, env, txs)?;
    reward(state, env, &mut outcome)?;
    Ok(outcome)
}

pub(crate) fn build_block(
    exec: &Executor,
    state: &dyn StateRead,
    env: &BlockEnv,
    candidates: impl IntoIterator<Item = SignedTx>,
    max_txs: usize,
    max_bytes: usize,
) -> Result<crate::BuiltBlock, BlockError> {
    let (included, mut outcome, dropped) = v1::build_block(exec, state, env, candidates, max_txs, max_bytes);
    reward(state, env, &mut outcome)?;
    Ok((included, outcome, dropped))
}

/// The proposer's share of a block's fees: half, rounded down.
pub fn proposer_reward(fees: Amount) -> Amount {
    fees / 2
}

pub(crate) fn reward(state: &dyn StateRead, env: &BlockEnv, outcome: &mut BlockOutcome) -> Result<(), BlockError> {
    let fees = outcome.results.iter().fold(0u128, |acc, r| acc.saturating_add(r.fee));
    let after = Layered { base: state, changes: &outcome.changes };
    let mut overlay = Overlay::new(&after);
    let mut store = Store::new(&mut overlay);
    // Governance may have paid voters out of the treasury in this very block.
    let amount = proposer_reward(fees).min(store.supply().treasury);
    if amount == 0 {
        return Ok(());
    }
    store
        .credit(&env.proposer, amount, Bucket::Treasury)
        .map_err(|e| BlockError::Invariant(format!("proposer reward: {e}")))?;
    if !store.supply().is_conserved() {
        return Err(BlockError::Invariant("supply not conserved after the proposer reward".into()));
    }
    let changes = overlay.into_changes();
    outcome.changes.extend(changes);
    outcome.block_events.push(Event::ProposerRewarded { proposer: env.proposer.clone(), amount });
    Ok(())
}
