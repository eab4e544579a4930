//! A deliberately faulty execution version (the one after the latest real one), compiled only with the `faulty-version` feature
//! (tests and demonstrations of automatic rollback; never in a release build). It runs the
//! latest real version, then — once it is really active, so shadow runs before activation pass, like a bug that
//! only shows in production — writes the proposer one more base unit straight into its account
//! record on every block with transactions, without touching any supply counter. The counters
//! still add up; only the conservation check over what the block changed sees the unit that
//! came from nothing, and the chain must fall back to the version before it by itself.

use plexus_types::SignedTx;

use crate::state::{Layered, Overlay, StateRead, Store};
use crate::{BlockEnv, BlockError, BlockOutcome, Executor, v8};

pub const VERSION: u16 = crate::LATEST_EXECUTION_VERSION + 1;

pub(crate) fn execute_block(
    exec: &Executor,
    state: &dyn StateRead,
    env: &BlockEnv,
    txs: &[SignedTx],
) -> Result<BlockOutcome, BlockError> {
    let mut outcome = v8::execute_block(exec, state, env, txs)?;
    corrupt(state, env, &mut outcome, !txs.is_empty())?;
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
    let (included, mut outcome, dropped) = v8::build_block(exec, state, env, candidates, max_txs, max_bytes)?;
    corrupt(state, env, &mut outcome, !included.is_empty())?;
    Ok((included, outcome, dropped))
}

fn corrupt(state: &dyn StateRead, env: &BlockEnv, outcome: &mut BlockOutcome, has_txs: bool) -> Result<(), BlockError> {
    if !has_txs {
        return Ok(());
    }
    let after = Layered { base: state, changes: &outcome.changes };
    let mut overlay = Overlay::new(&after);
    let mut store = Store::new(&mut overlay);
    let last = crate::gov::meta(&store).last_activated[2];
    let active = crate::gov::upgrade(&store, last)
        .is_some_and(|u| u.version == VERSION && u.status == crate::gov::UpgradeStatus::Active);
    if !active {
        return Ok(());
    }
    let mut account = store.account(&env.proposer);
    account.balance += 1;
    store.set_account(&env.proposer, &account);
    outcome.changes.extend(overlay.into_changes());
    Ok(())
}
