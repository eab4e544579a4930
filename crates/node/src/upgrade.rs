//! Upgrade readiness: the node signals on-chain which versions of every layer its binary can
//! run, and whether its shadow runs of a pending execution version passed, whenever either
//! changes. Approved upgrades activate only once enough stake has signalled this way.
//!
//! Consensus version 2 needs each validator's BLS key on chain: a validator candidate (bonded at
//! least `min_stake`) whose binary runs it registers its key (once the chain's execution version accepts registrations) and signals
//! consensus version 2 only after the key is registered, so the stake that makes the upgrade
//! ready is stake that can sign under it.

use std::time::Duration;

use commonware_runtime::{Clock, Metrics, Spawner, Storage};
use plexus_types::Height;
use plexus_types::tx::Payload;
use tracing::{info, warn};

use crate::chain::ChainState;

/// Blocks to wait for a signal to land before sending another.
const RESEND_BLOCKS: Height = 10;

/// Keeps this node's on-chain readiness signal current, until the process stops.
pub async fn signal_loop<E>(chain: ChainState<E>)
where
    E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static,
{
    let me = chain.address();
    let mut sent_at: Option<Height> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let height = chain.tip().0;
        if sent_at.is_some_and(|h| height < h + RESEND_BLOCKS) {
            continue;
        }
        let mut versions = crate::supported_versions();
        let pending = chain.pending_shadowed_upgrade();
        let shadow_ok = pending.is_some_and(|(layer, v)| chain.shadow_ok(layer, v));
        let (bonded, current, has_key, execution, min_stake) = chain.read(|s| {
            (
                s.stake(&me).bonded,
                plexus_execution::gov::signal(s, &me),
                s.consensus_key(&me).is_some(),
                s.versions().execution,
                s.params().min_stake,
            )
        });
        if bonded == 0 {
            continue;
        }
        if versions.consensus.max >= 2 && !has_key {
            versions.consensus.max = 1;
            // Only validator candidates may register (the proof costs every node a pairing).
            if execution >= plexus_execution::CONSENSUS_KEYS_SINCE && bonded >= min_stake {
                match chain.submit_own(chain.consensus_key_registration()) {
                    Ok(hash) => {
                        info!(target: "upgrade", %hash, "registered this node's BLS consensus key");
                        sent_at = Some(height);
                        continue;
                    }
                    Err(e) => warn!(target: "upgrade", "cannot register the consensus key: {e}"),
                }
            }
        }
        if current.is_some_and(|c| c.versions == versions && c.shadow_ok == shadow_ok) {
            continue;
        }
        match chain.submit_own(Payload::SignalVersions { versions, shadow_ok }) {
            Ok(hash) => {
                info!(target: "upgrade", %hash, execution_max = versions.execution.max, data_max = versions.data.max, consensus_max = versions.consensus.max, shadow_ok, ?pending, "signalled supported versions");
                sent_at = Some(height);
            }
            Err(e) => warn!(target: "upgrade", "cannot signal supported versions: {e}"),
        }
    }
}
