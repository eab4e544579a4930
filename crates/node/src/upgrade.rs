//! Upgrade readiness: the node signals on-chain which versions of every layer its binary can
//! run, and whether its shadow runs of a pending execution version passed, whenever either
//! changes. Approved upgrades activate only once enough stake has signalled this way.

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
        let versions = crate::supported_versions();
        let pending = chain.pending_shadowed_upgrade();
        let shadow_ok = pending.is_some_and(|(layer, v)| chain.shadow_ok(layer, v));
        let (bonded, current) = chain.read(|s| (s.stake(&me).bonded, plexus_execution::gov::signal(s, &me)));
        if bonded == 0 || current.is_some_and(|c| c.versions == versions && c.shadow_ok == shadow_ok) {
            continue;
        }
        match chain.submit_own(Payload::SignalVersions { versions, shadow_ok }) {
            Ok(hash) => {
                info!(target: "upgrade", %hash, execution_max = versions.execution.max, data_max = versions.data.max, shadow_ok, ?pending, "signalled supported versions");
                sent_at = Some(height);
            }
            Err(e) => warn!(target: "upgrade", "cannot signal supported versions: {e}"),
        }
    }
}
