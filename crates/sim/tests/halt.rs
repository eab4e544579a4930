//! A validator whose binary lacks a version the chain activates stops at the activating block:
//! it commits that block and nothing past it, lets its views go instead of building on it, and
//! carries on from there once restarted on a binary that has the version.
//!
//! The cap that makes a binary "old" (`PLEXUS_EXECUTION_VERSION_MAX`) is per process, and every
//! simulated node runs in this one, so here all four play old binaries; this file is its own
//! test binary so that the cap reaches no other test.

mod common;

use std::time::Duration;

use commonware_runtime::Clock;
use futures::FutureExt as _;
use plexus_consensus::Chain as _;
use plexus_execution::gov::{self, ProposalStatus};
use plexus_sim::{Sim, run_seeded, seeds};
use plexus_types::tx::ProposalKind;
use plexus_types::{Layer, VersionVector};

use common::{height, propose_and_vote, signal, until, upgrade};

fn cap_execution(max: Option<&str>) {
    // SAFETY: the deterministic runtime runs every simulated task on this one thread, and no
    // other test shares this process.
    unsafe {
        match max {
            Some(max) => std::env::set_var(plexus_node::EXECUTION_VERSION_MAX_ENV, max),
            None => std::env::remove_var(plexus_node::EXECUTION_VERSION_MAX_ENV),
        }
    }
}

#[test]
fn nodes_without_an_activated_version_stop_at_its_block_and_carry_on_once_upgraded() {
    for seed in seeds(300, 2) {
        run_seeded(seed, move |mut context| async move {
            cap_execution(Some("5"));
            let at_v5 = VersionVector { execution: 5, ..VersionVector::V1 };
            let mut sim = Sim::start_at(&mut context, 4, 20, None, true, at_v5).await;
            sim.wait_for(&context, 3, Duration::from_secs(60)).await?;

            // Execution v6, voted and signalled by every operator, whose binaries lack it.
            let activation = height(&sim) + 25;
            let p = propose_and_vote(
                &mut sim,
                &mut context,
                "the proposal to be open",
                ProposalKind::Upgrade {
                    layer: Layer::Execution,
                    version: 6,
                    activation_height: activation,
                    deadline_height: activation + 60,
                },
            )
            .await?;
            signal(&mut sim, &[0, 1, 2, 3], 6)?;
            until(&mut sim, &mut context, "the vote to pass", Duration::from_secs(60), |s| {
                gov::proposal(s, p).is_some_and(|x| x.status == ProposalStatus::Passed)
            })
            .await?;
            until(&mut sim, &mut context, "v6 to activate", Duration::from_secs(120), |s| s.versions().execution == 6)
                .await?;

            // Every node halts with the activating block committed, and stays there.
            let first_v6 = upgrade(&sim, 0).into_iter().flatten().map(|u| u.activated_height).max().unwrap_or(0);
            let stopped_at = first_v6.checked_sub(1).ok_or("v6 has no activation height")?;
            context.sleep(Duration::from_secs(10)).await;
            for i in 0..sim.nodes.len() {
                let chain = sim.nodes[i].chain.lock().expect("slot").clone().ok_or("node not running")?;
                let why = chain.halted().now_or_never().ok_or(format!("node {i} did not halt"))?;
                if !why.contains("activated execution version 6") {
                    return Err(format!("node {i} halted for another reason: {why}"));
                }
                let (tip, hash) = chain.tip();
                if tip != stopped_at {
                    return Err(format!("node {i} committed up to {tip}, not the activating block {stopped_at}"));
                }
                match chain.can_extend(&hash) {
                    Err(e) if e.contains("execution version 6") => {}
                    other => return Err(format!("node {i} would build on the activating block: {other:?}")),
                }
            }
            sim.check_safety().await?;

            // Restarted on binaries that run v6, they carry on from the activating block.
            cap_execution(None);
            for i in 0..sim.nodes.len() {
                sim.crash(i).await;
                sim.boot(&context, i).await;
            }
            sim.wait_for(&context, first_v6 + 10, Duration::from_secs(120)).await?;
            let chain = sim.any_chain().ok_or("no node is running")?;
            let record = chain.blocks().by_height(first_v6).await.map_err(|e| e.to_string())?.ok_or("block missing")?;
            if record.block.header.versions.execution != 6 {
                return Err(format!("block {first_v6} ran under {:?}", record.block.header.versions));
            }
            let common = sim.check_safety().await?;
            eprintln!(
                "seed {seed}: every node stopped at {stopped_at} and carried on under v6; agreed through {common}"
            );
            Ok(())
        });
    }
}
