//! A validator's duty on a challenge committee: when a finalized block opens a challenge this
//! node is drawn for, re-run the challenged transcript on its own copy of the model (one
//! prefill, [`plexus_inference::audit`]) and vote. A node that does not serve the model cannot
//! judge and does not vote (the challenge is then decided by the others, or acquitted at its
//! deadline).

use std::sync::Arc;

use commonware_runtime::{Clock, Metrics, Spawner, Storage};
use plexus_execution::Event;
use plexus_execution::state::{self as st, Challenge};
use plexus_inference::Engine;
use plexus_inference::audit::{AuditRules, Verdict, audit};
use plexus_types::tx::Payload;
use tracing::{info, warn};

use crate::chain::ChainState;

/// Watches finalized blocks for challenges this node must judge, for as long as it runs.
pub async fn serve<E>(chain: ChainState<E>, engines: Vec<Arc<dyn Engine>>)
where
    E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static,
{
    let me = chain.address();
    let mut blocks = chain.subscribe();
    loop {
        let block = match blocks.recv().await {
            Ok(b) => b,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                warn!(target: "committee", missed = n, "fell behind the finalized blocks; challenges in them are not judged here");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        for event in block.txs.iter().flat_map(|t| &t.events) {
            let Event::ChallengeOpened { challenge, committee, .. } = event else { continue };
            if !committee.contains(&me) {
                continue;
            }
            let id = *challenge;
            let Some(record) = chain.read(|s| s.read::<Challenge>(&st::keys::challenge(id))) else { continue };
            let Some(engine) = engines.iter().find(|e| e.info().id == record.transcript.model).cloned() else {
                warn!(target: "committee", challenge = id, model = %record.transcript.model, "drawn to judge a model this node does not serve; not voting");
                continue;
            };
            let chain = chain.clone();
            tokio::spawn(async move {
                let transcript = record.transcript.clone();
                let judged =
                    tokio::task::spawn_blocking(move || audit(engine.as_ref(), &transcript, &AuditRules::default()))
                        .await;
                let report = match judged {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        warn!(target: "committee", challenge = id, "cannot re-run the transcript: {e}; not voting");
                        return;
                    }
                    Err(e) => {
                        warn!(target: "committee", challenge = id, "the audit task failed: {e}; not voting");
                        return;
                    }
                };
                let guilty = report.verdict == Verdict::Faulty;
                info!(
                    target: "committee", challenge = id, provider = %record.provider, guilty,
                    positions = report.positions, failed = report.failed, worst = report.worst_margin(),
                    "re-ran a challenged response"
                );
                match chain.submit_own(Payload::ChallengeVote { challenge: id, guilty }) {
                    Ok(hash) => info!(target: "committee", challenge = id, %hash, "voted"),
                    Err(e) => warn!(target: "committee", challenge = id, "cannot vote: {e}"),
                }
            });
        }
    }
}
