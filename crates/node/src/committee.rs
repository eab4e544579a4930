//! A validator's duty on a challenge committee: when a finalized block opens a challenge this
//! node is drawn for, re-run the challenged transcript on its own copy of the model (one
//! prefill, [`plexus_inference::audit`]) and vote. A challenge of a tensor inference (execution
//! version 5) carries its inputs and attested outputs instead: they are checked against the
//! model's spec (evidence that does not fit it could not have been served: not guilty), re-run
//! and compared within the tolerance of [`audit_tensor`]. A node that does not serve the model
//! cannot judge and does not vote (the challenge is then decided by the others, or acquitted at
//! its deadline).

use std::sync::Arc;

use commonware_runtime::{Clock, Metrics, Spawner, Storage};
use plexus_execution::Event;
use plexus_execution::state::{self as st, Challenge};
use plexus_inference::Engine;
use plexus_inference::audit::{AuditReport, AuditRules, Verdict, audit, audit_tensor, fits_spec};
use plexus_types::tensor::TensorEvidence;
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
            let evidence = chain.read(|s| s.read::<TensorEvidence>(&st::keys::challenge_evidence(id)));
            let chain = chain.clone();
            tokio::spawn(async move {
                let transcript = record.transcript.clone();
                let judged = tokio::task::spawn_blocking(move || match evidence {
                    Some(evidence) => judge_tensor(engine.as_ref(), &evidence),
                    None => audit(engine.as_ref(), &transcript, &AuditRules::default()).map_err(|e| e.to_string()),
                })
                .await;
                let report = match judged {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        warn!(target: "committee", challenge = id, "cannot re-run the evidence: {e}; not voting");
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

/// Judges a tensor challenge's evidence: outputs that do not fit the model's spec are not
/// guilty (an honest verdict with nothing compared), the rest is [`audit_tensor`]'s.
fn judge_tensor(engine: &dyn Engine, evidence: &TensorEvidence) -> Result<AuditReport, String> {
    let spec = engine.tensor_spec().ok_or("the challenged model is not a tensor model here")?;
    let (request, claimed) = plexus_serve::kserve::from_evidence(evidence)?;
    if let Err(why) = fits_spec(spec, &request, &claimed) {
        warn!(target: "committee", "the evidence does not fit the model's spec ({why}): not guilty");
        return Ok(AuditReport { verdict: Verdict::Honest, positions: 0, failed: 0, margins: Vec::new() });
    }
    audit_tensor(engine, &request, &claimed).map_err(|e| e.to_string())
}
