//! Upgrades as operators and token holders run them, on a 4-validator devnet with models that
//! starts at execution v4: a proposal to activate v5 (challenges of tensor inferences) passes by
//! vote (`plexus gov`), waits while every node runs a binary that cannot execute v5, and activates
//! on its own once three of the four have been replaced one by one (a rolling restart) — under
//! continuous client load through the gateway, with no failed request. Then the deliberately
//! faulty v6 activates, fails on its first real block, and every node rolls back to v5 by
//! itself; the chain goes on and all nodes agree on every state root.

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

fn propose_upgrade(api: &str, key: &str, version: u16) -> u64 {
    let r = cli(&[
        "gov",
        "propose",
        "upgrade",
        "--node",
        api,
        "--key",
        key,
        "--layer",
        "execution",
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
    // The chain starts at execution v4; every node starts as an "old binary" that cannot run
    // v5 (challenges of tensor inferences).
    // SAFETY: set before any thread of this test starts processes that read it.
    unsafe { std::env::set_var(plexus_node::EXECUTION_VERSION_MAX_ENV, "4") };
    let started = start_devnet(&home, 4, &["--threads", "1", "--claim-interval", "5", "--execution-version", "4"]);
    unsafe { std::env::remove_var(plexus_node::EXECUTION_VERSION_MAX_ENV) };
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

    // Token holders approve execution v5; nobody's binary can run it yet, so it waits.
    let key0 = nodes[0]["key_file"].as_str().unwrap().to_string();
    let p = propose_upgrade(&api, &key0, 5);
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
    assert_eq!(execution_version(&api), Some(4));

    // The rolling restart: one node at a time onto a binary that supports v5.
    let mut restarted = Vec::new();
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
        if i == 2 {
            // Three of four (3/4 of the stake) can run v5 now: it activates by itself.
            wait_for("v5 to activate", Duration::from_secs(120), || (execution_version(&api)? == 5).then_some(()));
        }
    }
    for a in &apis {
        wait_for("every node on v5", Duration::from_secs(60), || (execution_version(a)? == 5).then_some(()));
    }
    let u = upgrades(&api);
    assert_eq!(u["upgrades"][0]["status"], "active", "{u}");
    let activated = u["upgrades"][0]["activated_height"].as_u64().unwrap();
    assert!(activated > activation);

    // The faulty v6: it passes its shadow runs (its bug only shows once active), so nodes signal
    // ready and it activates; its first block with transactions breaks conservation, and every
    // node falls back to v5 on its own.
    let p = propose_upgrade(&api, &key0, 6);
    vote_all(&nodes, &api, p);
    wait_for("v6 to be rolled back", Duration::from_secs(240), || {
        let u = upgrades(&api);
        let v6 = u["upgrades"].as_array()?.iter().find(|u| u["version"] == 6)?.clone();
        (v6["status"] == "aborted").then_some(v6)
    });
    for a in &apis {
        wait_for("every node back on v5", Duration::from_secs(60), || (execution_version(a)? == 5).then_some(()));
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
    eprintln!(
        "rolling upgrade: {ok} client requests served, {} failed, longest finality gap {} ms; v5 active from height {activated}; gov status: {}",
        failed.load(Ordering::Relaxed),
        gap_ms.load(Ordering::Relaxed),
        status["upgrades"]["upgrades"]
    );
    assert!(ok > 0);
    assert!(errors.is_empty(), "client requests failed during the rolling upgrade: {errors:?}");
    assert_eq!(get(&format!("{api}/chain/v1/supply")).unwrap()["conserved"], true);
    // The gateway closes its sessions while the (restarted) nodes still run.
    drop(devnet);
    drop(restarted);
}
