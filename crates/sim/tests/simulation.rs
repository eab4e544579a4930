//! Deterministic simulations: safety under faults, liveness after healing, conservation, and
//! recorded evidence of an equivocating validator. Every failure prints the seed to replay.

use std::time::Duration;

use commonware_runtime::Clock;
use plexus_sim::{Sim, link_all, run_seeded, seeds};
use rand::RngExt as _;

/// Four validators on lossy links with a transfer workload; random partitions and crashes for
/// a while, then everything heals: no two nodes ever finalize different blocks, state roots and
/// supply audits agree, and the chain finalizes again after healing.
#[test]
fn safety_and_liveness_under_partitions_loss_and_crashes() {
    for seed in seeds(1, 6) {
        run_seeded(seed, move |mut context| async move {
            let mut sim = Sim::start(&mut context, 4, 20, None, true).await;
            sim.wait_for(&context, 5, Duration::from_secs(60)).await?;
            let keys: Vec<_> = sim.nodes.iter().map(|n| n.key.clone()).collect();
            let fault_end = context.current() + Duration::from_secs(40);
            let mut crashed: Option<usize> = None;
            let (mut partitions, mut crashes) = (0, 0);
            while context.current() < fault_end {
                for _ in 0..3 {
                    sim.submit_transfer(&mut context);
                }
                match context.random_range(0..10u32) {
                    // Partition: cut the links between a random minority and the rest.
                    0 | 1 => {
                        partitions += 1;
                        let victim = context.random_range(0..4usize);
                        for (i, k) in keys.iter().enumerate() {
                            if i != victim {
                                let _ = sim.oracle.remove_link(keys[victim].address().0, k.address().0).await;
                                let _ = sim.oracle.remove_link(k.address().0, keys[victim].address().0).await;
                            }
                        }
                        let ms = context.random_range(1000..5000);
                        context.sleep(Duration::from_millis(ms)).await;
                        link_all(&mut context, &sim.oracle, &keys, true).await;
                    }
                    // Crash one node (at most one at a time: f = 1) and restart it later.
                    2 => match crashed.take() {
                        None => {
                            let i = context.random_range(0..4usize);
                            sim.crash(i).await;
                            crashes += 1;
                            crashed = Some(i);
                        }
                        Some(i) => sim.boot(&context, i).await,
                    },
                    _ => {}
                }
                let ms = context.random_range(100..1000);
                context.sleep(Duration::from_millis(ms)).await;
                sim.check_safety().await?;
            }
            if let Some(i) = crashed {
                sim.boot(&context, i).await;
            }
            link_all(&mut context, &sim.oracle, &keys, false).await;
            let top = sim.heights().into_iter().flatten().max().unwrap_or(0);
            sim.wait_for(&context, top + 10, Duration::from_secs(120)).await?;
            let common = sim.check_safety().await?;
            if common < top {
                return Err(format!("common height {common} below {top} after healing"));
            }
            let txs = sim.txs_through(common).await;
            if txs == 0 {
                return Err("no transaction of the workload was finalized".into());
            }
            eprintln!(
                "seed {seed}: {partitions} partitions, {crashes} crashes, {txs} transfers finalized, all nodes agree through height {common}"
            );
            Ok(())
        });
    }
}

/// A validator that signs conflicting votes: honest nodes keep finalizing (3 of 4), report the
/// evidence, and the chain records the offender.
#[test]
fn equivocation_is_recorded_on_chain() {
    for seed in seeds(100, 2) {
        run_seeded(seed, |mut context| async move {
            let sim = Sim::start(&mut context, 4, 1000, Some(3), false).await;
            sim.wait_for(&context, 10, Duration::from_secs(120)).await?;
            let offender = sim.nodes[3].key.address();
            let deadline = context.current() + Duration::from_secs(120);
            loop {
                let recorded: Vec<bool> = (0..3).map(|i| sim.recorded_offenders(i).contains(&offender)).collect();
                if recorded.iter().all(|r| *r) {
                    break;
                }
                if context.current() > deadline {
                    return Err(format!("evidence not recorded on every honest node: {recorded:?}"));
                }
                context.sleep(Duration::from_millis(500)).await;
            }
            for i in 0..3 {
                let offenders = sim.recorded_offenders(i);
                if offenders.iter().any(|o| o != &offender) {
                    return Err(format!("node {i} recorded an honest validator as an offender: {offenders:?}"));
                }
            }
            sim.check_safety().await?;
            Ok(())
        });
    }
}
