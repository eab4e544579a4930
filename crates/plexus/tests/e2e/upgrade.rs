//! Upgrades as operators and token holders run them, on a 4-validator devnet with models that
//! starts at execution v5 and network v1: a proposal to activate execution v6 (BLS consensus
//! keys) passes by vote (`plexus gov`), waits while every node runs a binary that cannot execute
//! v6, and activates on its own once three of the four have been replaced one by one (a rolling
//! restart). The new binaries register their consensus keys and signal; consensus v2 (aggregated
//! certificates) and network v2 (compressed blocks) are then voted in together and activate on
//! every node at one height each, consensus at an epoch boundary. Then the deliberately faulty
//! execution version activates, fails on its first real block, and every node rolls back by
//! itself. All of it under continuous client load through the gateway, with no failed request;
//! the chain goes on and all nodes agree on every state root.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::*;

fn cli(args: &[&str]) -> Value {
    let out = plexus().args(args).arg("--json").output().unwrap();
    assert!(
        out.status.success(),
        "plexus {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("plexus {args:?} printed no JSON: {e}"))
}

fn upgrades(api: &str) -> Value {
    get(&format!("{api}/chain/v1/upgrades")).unwrap()
}

fn execution_version(api: &str) -> Option<u64> {
    get(&format!("{api}/chain/v1/status"))?["versions"]["execution"].as_u64()
}

fn restart(home: &str, env_cap: Option<&str>) -> Guard {
    let log = std::fs::OpenOptions::new().append(true).open(Path::new(home).join("node.log")).unwrap();
    let mut cmd = plexus();
    cmd.args(["node", "run", "--home", home]).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
    match env_cap {
        Some(v) => cmd.env(plexus_node::EXECUTION_VERSION_MAX_ENV, v),
        None => cmd.env_remove(plexus_node::EXECUTION_VERSION_MAX_ENV),
    };
    Guard(cmd.spawn().unwrap())
}

/// Votes yes on `proposal` from every validator.
fn vote_all(nodes: &[Value], api: &str, proposal: u64) {
    for n in nodes {
        let r = cli(&[
            "gov",
            "vote",
            "--node",
            api,
            "--key",
            n["key_file"].as_str().unwrap(),
            "--proposal",
            &proposal.to_string(),
            "--option",
            "yes",
        ]);
        assert!(r["result"]["error"].is_null(), "{r}");
    }
}

fn propose_upgrade(api: &str, key: &str, layer: &str, version: u16) -> u64 {
    let r = cli(&[
        "gov",
        "propose",
        "upgrade",
        "--node",
        api,
        "--key",
        key,
        "--layer",
        layer,
        "--to-version",
        &version.to_string(),
    ]);
    assert!(r["result"]["error"].is_null(), "{r}");
    r["result"]["events"].as_array().unwrap().iter().find(|e| e["type"] == "proposal_submitted").unwrap()["proposal"]
        .as_u64()
        .unwrap()
}

#[test]
fn governance_upgrades_under_load_with_a_rolling_restart_and_a_rollback() {
    assert!(
        plexus_execution::SUPPORTED_EXECUTION_VERSIONS.contains(&plexus_execution::faulty::VERSION),
        "this test needs the faulty execution version: run with --features plexus/faulty-version (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("devnet");
    // The chain starts at execution v5 and network v1; every node starts as an "old binary" that
    // cannot run execution v6 (BLS consensus keys), nor consensus or network v2.
    // SAFETY: set before any thread of this test starts processes that read them.
    unsafe {
        std::env::set_var(plexus_node::EXECUTION_VERSION_MAX_ENV, "5");
        std::env::set_var(plexus_node::CONSENSUS_VERSION_MAX_ENV, "1");
        std::env::set_var(plexus_node::NETWORK_VERSION_MAX_ENV, "1");
    }
    let started = start_devnet(
        &home,
        4,
        &["--threads", "1", "--claim-interval", "5", "--execution-version", "5", "--network-version", "1"],
    );
    unsafe {
        std::env::remove_var(plexus_node::EXECUTION_VERSION_MAX_ENV);
        std::env::remove_var(plexus_node::CONSENSUS_VERSION_MAX_ENV);
        std::env::remove_var(plexus_node::NETWORK_VERSION_MAX_ENV);
    }
    let (devnet, info) = started;
    let nodes: Vec<Value> = info["nodes"].as_array().unwrap().clone();
    let apis: Vec<String> = nodes.iter().map(|n| n["api"].as_str().unwrap().to_string()).collect();
    let api = apis[0].clone();
    let gateway = info["gateway"]["url"].as_str().unwrap().to_string();
    let key = info["gateway"]["api_key"].as_str().unwrap().to_string();

    // Continuous client load through the gateway, and a watch on finality.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed, gateway, key) = (stop.clone(), ok.clone(), failed.clone(), gateway.clone(), key.clone());
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"model": "smollm2-135m-instruct", "max_tokens": 8, "temperature": 0,
                                  "messages": [{"role": "user", "content": "Say hello."}]});
                match client.post(format!("{gateway}/chat/completions")).bearer_auth(&key).json(&body).send() {
                    Ok(r) if r.status().is_success() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("HTTP {}: {}", r.status(), r.text().unwrap_or_default()));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(e.to_string());
                    }
                }
            }
            errors
        })
    };
    let first_height = height(&api).unwrap();
    let gap_ms = Arc::new(AtomicU64::new(0));
    let watch = {
        let (stop, gap_ms, apis) = (stop.clone(), gap_ms.clone(), apis.clone());
        std::thread::spawn(move || {
            let (mut top, mut since) = (0, Instant::now());
            while !stop.load(Ordering::Relaxed) {
                let h = apis.iter().filter_map(|a| height(a)).max().unwrap_or(0);
                if h > top {
                    gap_ms.fetch_max(since.elapsed().as_millis() as u64, Ordering::Relaxed);
                    (top, since) = (h, Instant::now());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // Token holders approve execution v6; nobody's binary can run it yet, so it waits.
    let key0 = nodes[0]["key_file"].as_str().unwrap().to_string();
    let p = propose_upgrade(&api, &key0, "execution", 6);
    vote_all(&nodes, &api, p);
    let passed = wait_for("the proposal to pass", Duration::from_secs(120), || {
        let v = get(&format!("{api}/chain/v1/proposals/{p}"))?;
        (v["status"] != "voting").then_some(v)
    });
    assert_eq!(passed["status"], "passed", "{passed}");
    let activation = passed["kind"]["upgrade"]["activation_height"].as_u64().unwrap();
    wait_for("the activation height", Duration::from_secs(60), || (height(&api)? > activation + 5).then_some(()));
    let u = upgrades(&api);
    assert_eq!(u["upgrades"][0]["status"], "pending", "{u}");
    assert_eq!(u["upgrades"][0]["ready_bps_now"], 0);
    assert_eq!(execution_version(&api), Some(5));

    // The rolling restart: one node at a time onto a binary that supports v6.
    let mut restarted = Vec::new();
    let rolling_from = height(&api).unwrap();
    for (i, n) in nodes.iter().enumerate() {
        let pid = n["pid"].as_u64().unwrap() as libc::pid_t;
        // SAFETY: signalling a node process of this test's devnet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        wait_for("the node to stop", Duration::from_secs(30), || height(&apis[i]).is_none().then_some(()));
        restarted.push(restart(n["home"].as_str().unwrap(), None));
        let others = apis.iter().enumerate().filter(|(j, _)| *j != i).filter_map(|(_, a)| height(a)).max().unwrap();
        wait_for("the restarted node to catch up", Duration::from_secs(120), || {
            (height(&apis[i])? >= others).then_some(())
        });
        wait_for("its provider to be back", Duration::from_secs(120), || get_provider(n, "/health").map(|_| ()));
        // The hand-off: the next node stops only once this one votes again (its votes go out),
        // so the network never waits on two absent validators at once. Catching up on blocks is
        // not enough: a node that has the blocks may still be entering the current view.
        let votes = |a: &str| {
            let text = http().get(format!("{a}/metrics")).send().ok()?.text().ok()?;
            Some(plexus_node::metrics::sum(&text, "outbound_messages_total") as u64)
        };
        let before = wait_for("its consensus metrics", Duration::from_secs(60), || votes(&apis[i]));
        wait_for("the restarted node to vote again", Duration::from_secs(120), || {
            (votes(&apis[i])? >= before + 8).then_some(())
        });
        if i == 2 {
            // Three of four (3/4 of the stake) can run v6 now: it activates by itself.
            wait_for("v6 to activate", Duration::from_secs(120), || (execution_version(&api)? == 6).then_some(()));
        }
    }
    for a in &apis {
        wait_for("every node on v6", Duration::from_secs(60), || (execution_version(a)? == 6).then_some(()));
    }
    let u = upgrades(&api);
    assert_eq!(u["upgrades"][0]["status"], "active", "{u}");
    let activated = u["upgrades"][0]["activated_height"].as_u64().unwrap();
    assert!(activated > activation);

    // On v6 every node registers its BLS consensus key by itself, then signals consensus v2.
    wait_for("every node to register its key and signal consensus v2", Duration::from_secs(120), || {
        let s = get(&format!("{api}/chain/v1/signals"))?;
        let signals = s["signals"].as_array()?;
        let v2 = signals.iter().filter(|s| s["signal"]["versions"]["consensus"]["max"] == 2).count();
        (v2 == nodes.len()).then_some(())
    });
    // Consensus v2 and network v2, voted in together, and the execution versions after v6 (every
    // binary has them now), one at a time.
    let consensus = propose_upgrade(&api, &key0, "consensus", 2);
    let network = propose_upgrade(&api, &key0, "network", 2);
    vote_all(&nodes, &api, consensus);
    vote_all(&nodes, &api, network);
    // A penalised chat can be challenged only from v7: until then the gateway refuses it, by name.
    let penalised = || {
        let body = json!({"model": "smollm2-135m-instruct", "max_tokens": 8, "temperature": 0, "presence_penalty": 1.0,
                          "messages": [{"role": "user", "content": "Say hello."}]});
        let r = http().post(format!("{gateway}/chat/completions")).bearer_auth(&key).json(&body).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let (code, text) = penalised();
    assert!(code == 400 && text.contains("presence_penalty") && text.contains("execution version 7"), "{code} {text}");
    let latest = plexus_execution::LATEST_EXECUTION_VERSION;
    for version in 7..=latest {
        let p = propose_upgrade(&api, &key0, "execution", version);
        vote_all(&nodes, &api, p);
        for a in &apis {
            wait_for("the execution version on every node", Duration::from_secs(240), || {
                (execution_version(a)? == u64::from(version)).then_some(())
            });
        }
    }
    // The gateway reads the version with its next refresh of the directory (every 5 s).
    wait_for("the gateway to serve a penalised chat", Duration::from_secs(30), || (penalised().0 == 200).then_some(()));
    for a in &apis {
        wait_for("consensus v2 and network v2 on every node", Duration::from_secs(240), || {
            let v = get(&format!("{a}/chain/v1/status"))?["versions"].clone();
            (v["consensus"] == 2 && v["network"] == 2).then_some(())
        });
    }
    let layer_upgrade = |a: &str, layer: &str| {
        let u = upgrades(a);
        u["upgrades"].as_array().unwrap().iter().find(|u| u["layer"] == layer).unwrap().clone()
    };
    let epoch_length = get(&format!("{api}/chain/v1/params")).unwrap()["epoch_length_blocks"].as_u64().unwrap();
    let consensus_at: Vec<u64> =
        apis.iter().map(|a| layer_upgrade(a, "consensus")["activated_height"].as_u64().unwrap()).collect();
    let network_at: Vec<u64> =
        apis.iter().map(|a| layer_upgrade(a, "network")["activated_height"].as_u64().unwrap()).collect();
    assert!(consensus_at.windows(2).all(|w| w[0] == w[1]), "consensus v2 activation heights: {consensus_at:?}");
    assert!(network_at.windows(2).all(|w| w[0] == w[1]), "network v2 activation heights: {network_at:?}");
    assert_eq!(consensus_at[0] % epoch_length, 0, "consensus v2 must activate at an epoch boundary");
    // Blocks of the new epoch are finalized by aggregated certificates, the ones before it not.
    let certificate = |h: u64| {
        wait_for("the block's certificate", Duration::from_secs(60), || {
            let hex = get(&format!("{api}/chain/v1/blocks/{h}"))?["finalization"].as_str()?.to_string();
            plexus_consensus::finalization_version(&hex::decode(hex).ok()?)
        })
    };
    assert_eq!((certificate(consensus_at[0] - 1), certificate(consensus_at[0] + 1)), (1, 2));

    // The faulty version: it passes its shadow runs (its bug only shows once active), so nodes
    // signal ready and it activates; its first block with transactions breaks conservation, and
    // every node falls back to the latest real version on its own.
    let faulty_from = height(&api).unwrap();
    let faulty = plexus_execution::faulty::VERSION;
    let p = propose_upgrade(&api, &key0, "execution", faulty);
    vote_all(&nodes, &api, p);
    wait_for("the faulty version to be rolled back", Duration::from_secs(240), || {
        let u = upgrades(&api);
        let bad =
            u["upgrades"].as_array()?.iter().find(|u| u["version"] == faulty && u["layer"] == "execution")?.clone();
        (bad["status"] == "aborted").then_some(bad)
    });
    for a in &apis {
        wait_for("every node back on the latest version", Duration::from_secs(60), || {
            (execution_version(a)? == u64::from(latest)).then_some(())
        });
    }
    let h = height(&api).unwrap();
    wait_for("the chain to go on", Duration::from_secs(60), || {
        apis.iter().all(|a| height(a).unwrap_or(0) >= h + 10).then_some(())
    });

    stop.store(true, Ordering::Relaxed);
    let errors = load.join().unwrap();
    watch.join().unwrap();
    // Same state root everywhere at a common height.
    let common = apis.iter().filter_map(|a| height(a)).min().unwrap();
    let roots: Vec<Value> = apis
        .iter()
        .map(|a| get(&format!("{a}/chain/v1/blocks/{common}")).unwrap()["header"]["state_root"].clone())
        .collect();
    assert!(roots.windows(2).all(|w| w[0] == w[1]), "state roots differ at {common}: {roots:?}");
    let status = cli(&["gov", "status", "--node", &api]);
    let ok = ok.load(Ordering::Relaxed);
    // The longest time between two consecutive blocks, from the proposers' own timestamps (one
    // machine, one clock): what the chain did, without the polling above and its HTTP delays.
    let stamps: Vec<(u64, u64)> = (first_height..=common)
        .filter_map(|h| Some((h, get(&format!("{api}/chain/v1/blocks/{h}"))?["header"]["timestamp_ms"].as_u64()?)))
        .collect();
    let mut gaps: Vec<(u64, u64)> = stamps.windows(2).map(|w| (w[1].1.saturating_sub(w[0].1), w[1].0)).collect();
    // Block intervals by phase: p50 / p99 / max in ms (what finality does, block by block).
    let phase = |from: u64, to: u64| {
        let mut ms: Vec<u64> = gaps.iter().filter(|(_, h)| (from + 1..=to).contains(h)).map(|(g, _)| *g).collect();
        ms.sort();
        let q = |q: f64| ms.get(((ms.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0);
        format!("{}/{}/{} ({} blocks)", q(0.5), q(0.99), ms.last().copied().unwrap_or(0), ms.len())
    };
    // Before the restarts | the rolling restart up to v6 | v6 to consensus v2 | on consensus v2
    // and network v2 | the faulty version and its rollback.
    eprintln!(
        "block intervals p50/p99/max ms: {} | {} | {} | {} | {}",
        phase(first_height, rolling_from),
        phase(rolling_from, activated),
        phase(activated, consensus_at[0]),
        phase(consensus_at[0], faulty_from),
        phase(faulty_from, common),
    );
    gaps.sort_by(|a, b| b.cmp(a));
    eprintln!(
        "block gaps: longest {:?} (ms, at height) over heights {first_height}..={common}; epoch length {epoch_length}",
        &gaps[..gaps.len().min(5)]
    );
    eprintln!(
        "rolling upgrade: {ok} client requests served, {} failed, longest finality gap {} ms; execution v6 active from height {activated}, consensus v2 from {}, network v2 from {}; gov status: {}",
        failed.load(Ordering::Relaxed),
        gap_ms.load(Ordering::Relaxed),
        consensus_at[0],
        network_at[0],
        status["upgrades"]["upgrades"]
    );
    assert!(ok > 0);
    assert!(errors.is_empty(), "client requests failed during the rolling upgrade: {errors:?}");
    assert_eq!(get(&format!("{api}/chain/v1/supply")).unwrap()["conserved"], true);
    // The gateway closes its sessions while the (restarted) nodes still run.
    drop(devnet);
    drop(restarted);
    // PLEXUS_E2E_KEEP=1 keeps the nodes' homes and logs (bench/rolling-upgrade/run.sh --keep).
    if std::env::var_os("PLEXUS_E2E_KEEP").is_some() {
        eprintln!("kept the devnet home: {}", dir.keep().display());
    }
}

/// For each suffix, the sum of a node's metrics whose name ends with it (every label set), all
/// from one scrape: the node keeps sending blocks between two scrapes.
fn metrics(api: &str, suffixes: &[&str]) -> Vec<u64> {
    let text = http().get(format!("{api}/metrics")).send().unwrap().text().unwrap();
    suffixes.iter().map(|s| plexus_node::metrics::sum(&text, s) as u64).collect()
}

fn network_version(api: &str) -> Option<u64> {
    get(&format!("{api}/chain/v1/status"))?["versions"]["network"].as_u64()
}

/// Network v2 (compressed block dissemination) as operators would roll it out: a chain that
/// starts on network v1, where one validator still runs a binary that speaks only v1. Token
/// holders vote v2 in; three quarters of the stake signal support, which is enough, so it
/// activates at its height on every other node; blocks then travel as v2 frames, and the node
/// that cannot speak v2 stops by itself with a message that says what to do, instead of going
/// on beside the others. The chain goes on, transfers finalize, and the nodes agree on state.
#[test]
fn network_v2_is_voted_in_and_a_node_that_cannot_speak_it_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("devnet");
    let (_devnet, info) = start_devnet(&home, 4, &["--chain-only", "--epoch-length", "20", "--network-version", "1"]);
    let nodes: Vec<Value> = info["nodes"].as_array().unwrap().clone();
    let apis: Vec<String> = nodes.iter().map(|n| n["api"].as_str().unwrap().to_string()).collect();
    let api = apis[0].clone();
    assert_eq!(network_version(&api), Some(1));

    // node-3 becomes an old binary: it speaks network v1 only (and signals so).
    let old = &nodes[3];
    // SAFETY: signalling a node process of this test's devnet.
    unsafe { libc::kill(old["pid"].as_u64().unwrap() as libc::pid_t, libc::SIGTERM) };
    wait_for("node-3 to stop", Duration::from_secs(30), || height(&apis[3]).is_none().then_some(()));
    let old_home = old["home"].as_str().unwrap();
    let log_path = Path::new(old_home).join("node.log");
    let log = std::fs::OpenOptions::new().append(true).open(&log_path).unwrap();
    let mut old_node = Guard(
        plexus()
            .args(["node", "run", "--home", old_home])
            .env(plexus_node::NETWORK_VERSION_MAX_ENV, "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let tip = height(&api).unwrap();
    wait_for("node-3 to catch up", Duration::from_secs(60), || (height(&apis[3])? >= tip).then_some(()));
    let old_address = old["address"].as_str().unwrap().to_string();
    wait_for("node-3 to signal that it speaks network v1 only", Duration::from_secs(60), || {
        let s = get(&format!("{api}/chain/v1/signals"))?;
        let mine = s["signals"].as_array()?.iter().find(|s| s["staker"] == old_address.as_str())?.clone();
        (mine["signal"]["versions"]["network"]["max"] == 1).then_some(())
    });
    // Under v1 blocks go out as consensus encodes them.
    let scrape = metrics(&api, &["block_payload_bytes_total", "block_wire_bytes_total"]);
    let (payload_v1, wire_v1) = (scrape[0], scrape[1]);
    assert_eq!(payload_v1, wire_v1);

    let key0 = nodes[0]["key_file"].as_str().unwrap().to_string();
    let p = propose_upgrade(&api, &key0, "network", 2);
    vote_all(&nodes, &api, p);
    let passed = wait_for("the proposal to pass", Duration::from_secs(120), || {
        let v = get(&format!("{api}/chain/v1/proposals/{p}"))?;
        (v["status"] != "voting").then_some(v)
    });
    assert_eq!(passed["status"], "passed", "{passed}");
    wait_for("network v2 to activate", Duration::from_secs(180), || (network_version(&api)? == 2).then_some(()));
    let u = upgrades(&api);
    let up = u["upgrades"].as_array().unwrap().iter().find(|u| u["layer"] == "network").unwrap().clone();
    assert_eq!(up["status"], "active", "{u}");
    let activated = up["activated_height"].as_u64().unwrap();
    // Three of four validators signalled support, enough (two thirds) without node-3.
    let ready = up["ready_bps"].as_u64().unwrap();
    assert!((6_667..10_000).contains(&ready), "{up}");

    // The old binary stops by itself, with an error status and a message that says why.
    let status = wait_for("node-3 to stop by itself", Duration::from_secs(60), || old_node.0.try_wait().unwrap());
    assert!(!status.success(), "node-3 exited successfully after the chain left it behind");
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.contains("the chain activated network version 2") && text.contains("install a newer plexus binary"),
        "node-3's log does not say why it stopped:\n{}",
        &text[text.len().saturating_sub(3000)..]
    );
    // It committed nothing past the first block that runs on v2's state, so nothing to undo.
    let again = plexus()
        .args(["node", "run", "--home", old_home])
        .env(plexus_node::NETWORK_VERSION_MAX_ENV, "1")
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&again.stdout), String::from_utf8_lossy(&again.stderr));
    assert!(!again.status.success() && said.contains("install a newer plexus binary"), "{said}");

    // The others go on, on v2 frames, and a transfer finalizes.
    let client_key = info["client"]["key_file"].as_str().unwrap().to_string();
    let to = nodes[1]["address"].as_str().unwrap().to_string();
    let before = get(&format!("{api}/chain/v1/accounts/{to}")).unwrap()["balance"].clone();
    let out = plexus()
        .args(["tx", "transfer", "--node", &api, "--key", &client_key, "--to", &to, "--amount", "3", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the transfer to land", Duration::from_secs(60), || {
        (get(&format!("{api}/chain/v1/accounts/{to}"))?["balance"] != before).then_some(())
    });
    let h = height(&api).unwrap();
    wait_for("the chain to go on", Duration::from_secs(60), || {
        apis[..3].iter().all(|a| height(a).unwrap_or(0) >= h + 5).then_some(())
    });
    for a in &apis[..3] {
        assert_eq!(network_version(a), Some(2));
    }
    // Framing is in effect on every live validator: what went on the wire differs from the block
    // bytes, and never by more than one byte per block per recipient.
    for a in &apis[..3] {
        let scrape = metrics(a, &["block_payload_bytes_total", "block_wire_bytes_total", "blocks_sent_total"]);
        let (payload, wire, sent) = (scrape[0], scrape[1], scrape[2]);
        assert!(sent > 0, "{a} sent no blocks");
        assert_ne!(payload, wire, "{a} sent no v2 frames");
        assert!(wire <= payload + sent, "{a}: {wire} wire bytes for {payload} block bytes in {sent} sends");
    }
    let scrape = metrics(&api, &["block_payload_bytes_total", "block_wire_bytes_total"]);
    eprintln!(
        "network v2 active from height {activated}; node 0 sent {} block bytes as {} wire bytes",
        scrape[0], scrape[1]
    );
    let common = apis[..3].iter().filter_map(|a| height(a)).min().unwrap();
    let roots: Vec<Value> = apis[..3]
        .iter()
        .map(|a| get(&format!("{a}/chain/v1/blocks/{common}")).unwrap()["header"]["state_root"].clone())
        .collect();
    assert!(roots.windows(2).all(|w| w[0] == w[1]), "state roots differ at {common}: {roots:?}");
}
