//! Steps shared by the governance simulations: proposals, votes, readiness signals, and waiting
//! in simulated time for a condition on every node.
#![allow(dead_code)] // each test binary uses its own subset

use std::time::Duration;

use commonware_runtime::Clock;
use plexus_execution::gov;
use plexus_sim::Sim;
use plexus_types::Height;
use plexus_types::tx::{Payload, ProposalKind, VoteOption};
use plexus_types::version::{SupportedVersions, VersionRange};

pub const DEPOSIT: u128 = 100_000_000;

pub fn height(sim: &Sim) -> Height {
    sim.heights().into_iter().flatten().max().unwrap_or(0)
}

/// Submits `kind` from validator 0; returns the proposal id.
pub fn propose(sim: &mut Sim, kind: ProposalKind) -> Result<u64, String> {
    let v0 = sim.nodes[0].key.clone();
    let next = sim.read_all(|s| gov::meta(s).next_proposal).into_iter().max().unwrap_or(0);
    sim.submit_as(&v0, Payload::SubmitProposal { kind, deposit: DEPOSIT })?;
    Ok(next)
}

pub fn vote(sim: &mut Sim, id: u64, voters: &[usize]) -> Result<(), String> {
    for &i in voters {
        let key = sim.nodes[i].key.clone();
        sim.submit_as(&key, Payload::Vote { proposal: id, option: VoteOption::Yes })?;
    }
    Ok(())
}

pub fn signal(sim: &mut Sim, who: &[usize], execution_max: u16) -> Result<(), String> {
    let versions =
        SupportedVersions { execution: VersionRange { min: 1, max: execution_max }, ..SupportedVersions::V1_ONLY };
    for &i in who {
        let key = sim.nodes[i].key.clone();
        sim.submit_as(&key, Payload::SignalVersions { versions, shadow_ok: true })?;
    }
    Ok(())
}

/// Submits `kind` from validator 0, waits until the proposal is open (`what` names it if that
/// times out), and has every validator vote yes; returns its id.
pub async fn propose_and_vote(
    sim: &mut Sim,
    context: &mut commonware_runtime::deterministic::Context,
    what: &str,
    kind: ProposalKind,
) -> Result<u64, String> {
    let p = propose(sim, kind)?;
    until(sim, context, what, Duration::from_secs(30), |s| gov::proposal(s, p).is_some()).await?;
    let everyone: Vec<usize> = (0..sim.nodes.len()).collect();
    vote(sim, p, &everyone)?;
    Ok(p)
}

/// Waits until `f` holds on every honest running node (in simulated time).
pub async fn until(
    sim: &mut Sim,
    context: &mut commonware_runtime::deterministic::Context,
    what: &str,
    limit: Duration,
    f: impl Fn(&plexus_execution::state::Store<'_, '_>) -> bool,
) -> Result<(), String> {
    let start = context.current();
    loop {
        let all = sim.read_all(&f);
        if !all.is_empty() && all.iter().all(|x| *x) {
            return Ok(());
        }
        if context.current().duration_since(start).unwrap_or_default() > limit {
            return Err(format!("timed out waiting for {what} (heights {:?})", sim.heights()));
        }
        sim.submit_transfer(context);
        context.sleep(Duration::from_millis(200)).await;
    }
}

pub fn upgrade(sim: &Sim, id: u64) -> Vec<Option<gov::Upgrade>> {
    sim.read_all(|s| gov::upgrade(s, id))
}
