//! Governance in simulated networks: upgrades activate on every node at the same height only
//! with enough readiness, wait without it, expire at their deadline, and a faulty execution
//! version rolls back by itself (the chain starts at execution 5, upgrades to the real
//! version 6, then to the test-only faulty version 7); parameter changes apply at their height. All while links are
//! lossy and transfers flow. Every failure prints the seed to replay.

mod common;

use std::time::Duration;

use commonware_runtime::{Clock, Metrics as _};
use plexus_execution::gov::{self, ProposalStatus, UpgradeStatus};
use plexus_sim::{Sim, link_all, run_seeded, seeds};
use plexus_types::tx::{Payload, ProposalKind};
use plexus_types::version::{SupportedVersions, VersionRange};
use plexus_types::{Height, Layer};

use common::{height, propose_and_vote, signal, until, upgrade};
use plexus_execution::LATEST_EXECUTION_VERSION as LATEST;

#[test]
fn upgrades_need_readiness_expire_without_it_and_faulty_versions_roll_back() {
    assert!(
        plexus_execution::SUPPORTED_EXECUTION_VERSIONS.contains(&plexus_execution::faulty::VERSION),
        "this test needs the faulty execution version: run with --features plexus/faulty-version (scripts/test does)"
    );
    for seed in seeds(200, 3) {
        run_seeded(seed, move |mut context| async move {
            // The chain runs the version before the latest, and upgrades to the latest.
            let (old, new) = (LATEST - 1, LATEST);
            let at_old = plexus_types::VersionVector { execution: old, ..plexus_types::VersionVector::V1 };
            let mut sim = Sim::start_at(&mut context, 4, 20, None, true, at_old).await;
            sim.wait_for(&context, 3, Duration::from_secs(60)).await?;

            // 1. The latest execution version, approved by everyone; only half the stake is
            //    ready: it waits.
            let h = height(&sim);
            let (activation, deadline) = (h + 30, h + 90);
            let p = propose_and_vote(
                &mut sim,
                &mut context,
                "the proposal to be open",
                ProposalKind::Upgrade {
                    layer: Layer::Execution,
                    version: new,
                    activation_height: activation,
                    deadline_height: deadline,
                },
            )
            .await?;
            signal(&mut sim, &[0, 1], plexus_execution::faulty::VERSION)?;
            until(&mut sim, &mut context, "the vote to pass", Duration::from_secs(60), |s| {
                gov::proposal(s, p).is_some_and(|x| x.status == ProposalStatus::Passed)
            })
            .await?;
            until(&mut sim, &mut context, "the activation height", Duration::from_secs(60), |s| {
                s.chain().height >= activation + 3
            })
            .await?;
            let u = upgrade(&sim, 0);
            if u.iter().any(|u| u.as_ref().map(|u| (u.status, u.ready_bps)) != Some((UpgradeStatus::Pending, 5_000))) {
                return Err(format!("with half the stake ready the upgrade must wait: {u:?}"));
            }
            if sim.read_all(|s| s.versions().execution).iter().any(|v| *v != old) {
                return Err("execution moved to the new version without readiness".into());
            }

            // 2. A third validator signals: 3/4 of the stake. It activates, at one height everywhere.
            signal(&mut sim, &[2], plexus_execution::faulty::VERSION)?;
            until(&mut sim, &mut context, "the new version to activate", Duration::from_secs(60), |s| {
                s.versions().execution == new
            })
            .await?;
            let at: Vec<Height> = upgrade(&sim, 0).into_iter().flatten().map(|u| u.activated_height).collect();
            if at.windows(2).any(|w| w[0] != w[1]) || at.is_empty() {
                return Err(format!("activation heights differ between nodes: {at:?}"));
            }
            sim.check_safety().await?;

            // 3. The faulty version after it: approved and signalled; it activates, breaks
            //    conservation on its first block with transactions, and every node falls back
            //    to the latest real one on its own.
            let h = height(&sim);
            let activation = h + 30;
            let p = propose_and_vote(
                &mut sim,
                &mut context,
                "the faulty version's proposal",
                ProposalKind::Upgrade {
                    layer: Layer::Execution,
                    version: plexus_execution::faulty::VERSION,
                    activation_height: activation,
                    deadline_height: activation + 60,
                },
            )
            .await?;
            until(&mut sim, &mut context, "the faulty version to be aborted", Duration::from_secs(120), |s| {
                gov::upgrade(s, 1).is_some_and(|u| u.status == UpgradeStatus::Aborted)
            })
            .await
            .map_err(|e| {
                format!(
                    "{e}; proposal {p}: {:?}; upgrade 1: {:?}; versions {:?}",
                    sim.read_all(|s| gov::proposal(s, p).map(|x| (x.status, x.yes, x.voters.len()))),
                    upgrade(&sim, 1),
                    sim.read_all(|s| s.versions())
                )
            })?;
            if sim.read_all(|s| s.versions().execution).iter().any(|v| *v != new) {
                return Err("after the rollback every node runs the latest real version".into());
            }
            if upgrade(&sim, 0).iter().any(|u| u.as_ref().map(|u| u.status) != Some(UpgradeStatus::Active)) {
                return Err(format!("the latest real version must stay active: {:?}", upgrade(&sim, 0)));
            }
            let notes: Vec<String> = upgrade(&sim, 1).into_iter().flatten().map(|u| u.note).collect();
            if !notes.iter().all(|n| n.contains("changed records")) {
                return Err(format!("the abort records why: {notes:?}"));
            }
            // The chain goes on under it.
            let h = height(&sim);
            sim.wait_for(&context, h + 10, Duration::from_secs(60)).await?;

            // 4. An upgrade nobody is ready for expires at its deadline; nothing halts.
            let h = height(&sim);
            propose_and_vote(
                &mut sim,
                &mut context,
                "the network proposal",
                ProposalKind::Upgrade {
                    layer: Layer::Network,
                    version: 2,
                    activation_height: h + 25,
                    deadline_height: h + 40,
                },
            )
            .await?;
            until(&mut sim, &mut context, "the network upgrade to expire", Duration::from_secs(120), |s| {
                gov::upgrade(s, 2).is_some_and(|u| u.status == UpgradeStatus::Expired)
            })
            .await?;
            if sim.read_all(|s| s.versions().network).iter().any(|v| *v != 1) {
                return Err("an expired upgrade changed the network version".into());
            }

            // 5. A parameter change lands at its height on every node.
            let h = height(&sim);
            let effective = h + 30;
            propose_and_vote(
                &mut sim,
                &mut context,
                "the parameter proposal",
                ProposalKind::ParamChange { name: "max_block_txs".into(), value: 5_000, effective_height: effective },
            )
            .await?;
            until(&mut sim, &mut context, "the effective height", Duration::from_secs(90), |s| {
                s.chain().height >= effective
            })
            .await?;
            let values = sim.read_all(|s| s.params().max_block_txs);
            if values.iter().any(|v| *v != 5_000) {
                return Err(format!("max_block_txs after its height: {values:?}"));
            }
            let common = sim.check_safety().await?;
            eprintln!(
                "seed {seed}: the latest version activated, the faulty one rolled back, network v2 expired, parameter applied; agreed through height {common}"
            );
            Ok(())
        });
    }
}

/// Sums the simulation's metrics whose name ends with `suffix`.
fn metric(context: &commonware_runtime::deterministic::Context, suffix: &str) -> f64 {
    plexus_node::metrics::sum(&context.encode(), suffix)
}

/// Network v2 (blocks sent as compressed frames), voted in while one validator is cut off and
/// activated while another is crashed: it activates at the same height on every node, the
/// crashed node catches up across the switch when it comes back, blocks then travel as v2
/// frames, and no two nodes ever disagree on a finalized block.
#[test]
fn network_v2_activates_at_one_height_through_a_partition_and_a_crash() {
    for seed in seeds(300, 3) {
        run_seeded(seed, move |mut context| async move {
            let mut sim = Sim::start_at(&mut context, 4, 20, None, true, plexus_types::VersionVector::V1).await;
            sim.wait_for(&context, 3, Duration::from_secs(60)).await?;
            let keys: Vec<_> = sim.nodes.iter().map(|n| n.key.clone()).collect();

            let h = height(&sim);
            let activation = h + 40;
            let p = propose_and_vote(
                &mut sim,
                &mut context,
                "the network proposal",
                ProposalKind::Upgrade {
                    layer: Layer::Network,
                    version: 2,
                    activation_height: activation,
                    deadline_height: activation + 100,
                },
            )
            .await?;
            let v2 = SupportedVersions { network: VersionRange { min: 1, max: 2 }, ..SupportedVersions::V1_ONLY };
            for i in [0, 1, 2] {
                let key = sim.nodes[i].key.clone();
                sim.submit_as(&key, Payload::SignalVersions { versions: v2, shadow_ok: true })?;
            }

            // Node 3 is cut off from the others for a while during the vote.
            for k in &keys[..3] {
                let _ = sim.oracle.remove_link(keys[3].address().0, k.address().0).await;
                let _ = sim.oracle.remove_link(k.address().0, keys[3].address().0).await;
            }
            for _ in 0..20 {
                sim.submit_transfer(&mut context);
                context.sleep(Duration::from_millis(250)).await;
            }
            link_all(&mut context, &sim.oracle, &keys, true).await;
            until(&mut sim, &mut context, "the vote to pass", Duration::from_secs(90), |s| {
                gov::proposal(s, p).is_some_and(|x| x.status == ProposalStatus::Passed)
            })
            .await?;

            // Node 1 crashes before the activation height and comes back after it.
            sim.crash(1).await;
            until(&mut sim, &mut context, "network v2 to activate", Duration::from_secs(120), |s| {
                s.versions().network == 2
            })
            .await?;
            let h = height(&sim);
            sim.wait_for(&context, h + 5, Duration::from_secs(60)).await?;
            sim.boot(&context, 1).await;
            until(&mut sim, &mut context, "the crashed node on v2", Duration::from_secs(120), |s| {
                s.versions().network == 2
            })
            .await?;
            let h = height(&sim);
            sim.wait_for(&context, h + 10, Duration::from_secs(90)).await?;

            let u = upgrade(&sim, 0);
            let at: Vec<Height> = u.iter().flatten().map(|u| u.activated_height).collect();
            if at.len() != 4
                || at.windows(2).any(|w| w[0] != w[1])
                || u.iter().flatten().any(|u| u.status != UpgradeStatus::Active)
            {
                return Err(format!("network v2 must be active from one height on every node: {u:?}"));
            }
            let (payload, wire) =
                (metric(&context, "block_payload_bytes_total"), metric(&context, "block_wire_bytes_total"));
            if payload == 0.0 || payload == wire {
                return Err(format!("blocks were not sent as v2 frames: {payload} block bytes, {wire} on the wire"));
            }
            if metric(&context, "block_frames_refused_total") != 0.0 {
                return Err("an honest node's block frame was refused".into());
            }
            let common = sim.check_safety().await?;
            eprintln!(
                "seed {seed}: network v2 active from height {}; {payload} block bytes sent as {wire}; agreed through height {common}",
                at[0]
            );
            Ok(())
        });
    }
}

/// Node `i`'s consensus-key registration, as its node makes it.
fn key_registration(sim: &Sim, i: usize) -> Payload {
    let identity = &sim.nodes[i].key;
    plexus_consensus::key_registration(plexus_sim::CHAIN_ID, &identity.0, &identity.address().0)
}

/// The consensus version of the certificate that finalized `height`, on every running node.
async fn certificate_versions(sim: &Sim, height: Height) -> Vec<Option<u16>> {
    let mut out = Vec::new();
    for chain in sim.nodes.iter().filter_map(|n| n.chain.lock().expect("slot").clone()) {
        let record = chain.blocks().by_height(height).await.ok().flatten();
        out.push(record.and_then(|r| plexus_consensus::finalization_version(&r.finalization)));
    }
    out
}

/// Consensus v2 (aggregated BLS certificates): validators register their keys, the upgrade is
/// voted in while one validator is cut off, waits for readiness and an epoch boundary, and
/// activates there while another validator is crashed; the crashed one catches up across the
/// switch. Blocks before the boundary carry v1 certificates and blocks after it v2 ones on every
/// node. Then governance votes consensus back down to v1, which activates at the next boundary.
/// No two nodes ever disagree on a finalized block.
#[test]
fn consensus_v2_activates_at_an_epoch_boundary_through_a_partition_and_a_crash() {
    for seed in seeds(400, 3) {
        run_seeded(seed, move |mut context| async move {
            let at_v6 = plexus_types::VersionVector { execution: 6, ..plexus_types::VersionVector::V1 };
            let mut sim = Sim::start_at(&mut context, 4, 20, None, true, at_v6).await;
            sim.wait_for(&context, 3, Duration::from_secs(60)).await?;
            let keys: Vec<_> = sim.nodes.iter().map(|n| n.key.clone()).collect();
            for (i, key) in keys.iter().enumerate() {
                let registration = key_registration(&sim, i);
                sim.submit_as(key, registration)?;
            }
            until(&mut sim, &mut context, "every key registered", Duration::from_secs(60), |s| {
                keys.iter().all(|k| s.consensus_key(&k.address()).is_some())
            })
            .await?;

            let h = height(&sim);
            let activation = h + 30;
            let p = propose_and_vote(
                &mut sim,
                &mut context,
                "the consensus proposal",
                ProposalKind::Upgrade {
                    layer: Layer::Consensus,
                    version: 2,
                    activation_height: activation,
                    deadline_height: activation + 200,
                },
            )
            .await?;
            let v2 = SupportedVersions { consensus: VersionRange { min: 1, max: 2 }, ..SupportedVersions::V1_ONLY };
            for i in [0, 1, 2] {
                sim.submit_as(&keys[i], Payload::SignalVersions { versions: v2, shadow_ok: true })?;
            }
            // Node 3 is cut off from the others for a while during the vote.
            for k in &keys[..3] {
                let _ = sim.oracle.remove_link(keys[3].address().0, k.address().0).await;
                let _ = sim.oracle.remove_link(k.address().0, keys[3].address().0).await;
            }
            for _ in 0..20 {
                sim.submit_transfer(&mut context);
                context.sleep(Duration::from_millis(250)).await;
            }
            link_all(&mut context, &sim.oracle, &keys, true).await;
            until(&mut sim, &mut context, "the vote to pass", Duration::from_secs(90), |s| {
                gov::proposal(s, p).is_some_and(|x| x.status == ProposalStatus::Passed)
            })
            .await?;

            // Node 1 crashes before the activation and comes back after it.
            sim.crash(1).await;
            until(&mut sim, &mut context, "consensus v2 to activate", Duration::from_secs(180), |s| {
                s.versions().consensus == 2
            })
            .await?;
            let h = height(&sim);
            sim.wait_for(&context, h + 25, Duration::from_secs(120)).await?;
            sim.boot(&context, 1).await;
            until(&mut sim, &mut context, "the crashed node on v2", Duration::from_secs(120), |s| {
                s.versions().consensus == 2
            })
            .await?;
            let h = height(&sim);
            sim.wait_for(&context, h + 10, Duration::from_secs(120)).await?;

            let u = upgrade(&sim, 0);
            let at: Vec<Height> = u.iter().flatten().map(|u| u.activated_height).collect();
            if at.len() != 4 || at.windows(2).any(|w| w[0] != w[1]) || !at[0].is_multiple_of(20) {
                return Err(format!("consensus v2 must be active from one epoch boundary on every node: {u:?}"));
            }
            // A node that fetched a block while catching up may hold it without its certificate
            // (`None`); every certificate held is of its epoch's version, and most nodes hold one.
            let (before, after) =
                (certificate_versions(&sim, at[0] - 1).await, certificate_versions(&sim, at[0] + 1).await);
            let wrong = |vs: &[Option<u16>], version| {
                vs.iter().any(|v| v.is_some_and(|v| v != version)) || vs.iter().flatten().count() < 3
            };
            if wrong(&before, 1) || wrong(&after, 2) {
                return Err(format!("certificates around the boundary {}: {before:?} before, {after:?} after", at[0]));
            }
            sim.check_safety().await?;

            // What protects consensus instead of an automatic rollback: a downgrade that
            // governance can always pass (every binary that runs v2 runs v1). It activates at the
            // next epoch boundary, and certificates are ed25519 ones again from there.
            let h = height(&sim);
            propose_and_vote(
                &mut sim,
                &mut context,
                "the downgrade proposal",
                ProposalKind::Upgrade {
                    layer: Layer::Consensus,
                    version: 1,
                    activation_height: h + 30,
                    deadline_height: h + 230,
                },
            )
            .await?;
            until(&mut sim, &mut context, "consensus back on v1", Duration::from_secs(180), |s| {
                s.versions().consensus == 1
            })
            .await?;
            let back: Vec<Height> = upgrade(&sim, 1).into_iter().flatten().map(|u| u.activated_height).collect();
            if back.len() != 4 || back.windows(2).any(|w| w[0] != w[1]) || !back[0].is_multiple_of(20) {
                return Err(format!("the downgrade must activate at one epoch boundary everywhere: {back:?}"));
            }
            let h = height(&sim);
            sim.wait_for(&context, h + 5, Duration::from_secs(60)).await?;
            let after_downgrade = certificate_versions(&sim, back[0] + 1).await;
            if after_downgrade.iter().any(|v| v.is_some_and(|v| v != 1)) || after_downgrade.iter().flatten().count() < 3
            {
                return Err(format!("certificates after the downgrade at {}: {after_downgrade:?}", back[0]));
            }
            let common = sim.check_safety().await?;
            eprintln!(
                "seed {seed}: consensus v2 active from height {}, back on v1 from {}; agreed through height {common}",
                at[0], back[0]
            );
            Ok(())
        });
    }
}
