//! The chain foundation as a user runs it: a 4-validator devnet finalizes, transactions work and
//! bad ones are refused without changing state, a SIGKILLed validator does not stop the others
//! and catches up to the same state after a restart.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::*;

fn status(api: &str) -> Value {
    get(&format!("{api}/chain/v1/status")).expect("status")
}

fn account(api: &str, address: &str) -> Value {
    get(&format!("{api}/chain/v1/accounts/{address}")).expect("account")
}

fn block_at(api: &str, height: u64) -> Option<Value> {
    let v = get(&format!("{api}/chain/v1/blocks/{height}"))?;
    v.get("hash").is_some().then_some(v)
}

fn post_tx(api: &str, body: Value) -> (u16, Value) {
    let r = http().post(format!("{api}/chain/v1/txs")).json(&body).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

#[test]
fn devnet_finalizes_survives_sigkill_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("devnet");
    let (devnet, info) = start_devnet(&home, 4, &["--chain-only", "--epoch-length", "30"]);
    let nodes: Vec<Value> = info["nodes"].as_array().unwrap().clone();
    let apis: Vec<String> = nodes.iter().map(|n| n["api"].as_str().unwrap().to_string()).collect();
    assert_eq!(apis.len(), 4);

    // At least one finalized block per second on every validator.
    let h0: Vec<u64> = apis.iter().map(|a| height(a).unwrap()).collect();
    std::thread::sleep(Duration::from_secs(5));
    let h1: Vec<u64> = apis.iter().map(|a| height(a).unwrap()).collect();
    for (a, b) in h0.iter().zip(&h1) {
        assert!(b - a >= 5, "fewer than 1 block/s: {h0:?} -> {h1:?}");
    }
    assert_eq!(status(&apis[0])["validators"].as_array().unwrap().len(), 4);

    // A transfer through the CLI, as a user would.
    let client_key = info["client"]["key_file"].as_str().unwrap().to_string();
    let client = info["client"]["address"].as_str().unwrap().to_string();
    // Not a validator: a proposer's block reward would land in a validator's balance too.
    let to = plexus_types::PrivateKey::from_seed(4243).address().to_string();
    let before_to = account(&apis[2], &to)["balance"].as_u64().unwrap_or(0);
    let out = plexus()
        .args(["tx", "transfer", "--node", &apis[0], "--key", &client_key, "--to", &to, "--amount", "2.5plx", "--json"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "transfer failed: {}", String::from_utf8_lossy(&out.stdout));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["result"]["error"], Value::Null, "{result}");
    let final_height = result["height"].as_u64().unwrap();
    // Any node (not the one it was sent to) sees the new balance once it has that height.
    wait_for("transfer visible on node-2", Duration::from_secs(30), || {
        (height(&apis[2])? >= final_height).then_some(())
    });
    assert_eq!(account(&apis[2], &to)["balance"].as_u64().unwrap(), before_to + 2_500_000);

    // Bad transactions: clear 4xx errors, nothing changes.
    let before = account(&apis[0], &client);
    let (code, body) = post_tx(&apis[0], json!({"tx": "zz"}));
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("bad_encoding")), "{body}");
    let (code, body) = post_tx(&apis[0], json!({"tx": "00112233"}));
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("bad_encoding")), "{body}");
    let r = http().post(format!("{}/chain/v1/txs", apis[0])).body("{not json").send().unwrap();
    assert_eq!(r.status().as_u16(), 400);
    for (args, expected) in [
        (vec!["--nonce", "9999", "--amount", "1"], "wrong_nonce"),
        (vec!["--amount", "99999999plx"], "insufficient_balance"),
        (vec!["--amount", "1", "--fee", "1"], "fee_too_low"),
    ] {
        let out = plexus()
            .args(["tx", "transfer", "--node", &apis[0], "--key", &client_key, "--to", &to, "--no-wait"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "expected {expected}, got: {err}");
    }
    let after = account(&apis[0], &client);
    assert_eq!(
        (before["balance"].clone(), before["nonce"].clone()),
        (after["balance"].clone(), after["nonce"].clone())
    );

    // A batch is checked in one signature batch; one forged signature in it is refused on its
    // own, and the rest of the batch is admitted as usual.
    let stranger = plexus_types::PrivateKey::from_seed(4242);
    let stranger_addr = stranger.address().to_string();
    let out = plexus()
        .args([
            "tx",
            "transfer",
            "--node",
            &apis[0],
            "--key",
            &client_key,
            "--to",
            &stranger_addr,
            "--amount",
            "1plx",
            "--json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let funded = account(&apis[0], &stranger_addr)["balance"].as_u64().unwrap();
    assert!(funded > 0);
    let chain_id = status(&apis[0])["chain_id"].as_str().unwrap().to_string();
    let to_addr: plexus_types::Address = to.parse().unwrap();
    let fee = 1_000u128;
    let signed: Vec<plexus_types::SignedTx> = (0..3)
        .map(|nonce| {
            let payload = plexus_types::tx::Payload::Transfer { to: to_addr.clone(), amount: 1 };
            plexus_types::tx::Transaction { signer: stranger.address(), nonce, fee, payload }.sign(&stranger, &chain_id)
        })
        .collect();
    let hex_of = |t: &plexus_types::SignedTx| hex::encode(plexus_types::codec::to_vec(t));
    let mut forged = signed[1].clone();
    forged.signature = signed[0].signature.clone();
    let batch = |txs: Vec<String>| -> Vec<Value> {
        let r = http().post(format!("{}/chain/v1/txs/batch", apis[0])).json(&json!({ "txs": txs })).send().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json::<Value>().unwrap()["results"].as_array().unwrap().clone()
    };
    let first = batch(vec![hex_of(&signed[0]), hex_of(&forged)]);
    assert!(first[0]["hash"].is_string(), "{first:?}");
    assert_eq!(first[1]["error"]["code"], "bad_signature", "{first:?}");
    let second = batch(vec![hex_of(&signed[1]), hex_of(&signed[2])]);
    assert!(second.iter().all(|r| r["hash"].is_string()), "{second:?}");
    wait_for("the batch applied", Duration::from_secs(30), || {
        (account(&apis[0], &stranger_addr)["nonce"].as_u64()? == 3).then_some(())
    });
    let spent = funded - account(&apis[0], &stranger_addr)["balance"].as_u64().unwrap();
    assert_eq!(spent as u128, 3 * (fee + 1), "three transfers of 1 with their fees, the forged one not applied");

    // SIGKILL one validator: the others keep finalizing.
    let pid = nodes[3]["pid"].as_u64().unwrap() as libc::pid_t;
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let at_kill = height(&apis[0]).unwrap();
    wait_for("progress without node-3", Duration::from_secs(60), || (height(&apis[0])? >= at_kill + 10).then_some(()));
    assert!(height(&apis[3]).is_none(), "node-3 should be down");

    // Restart it: it catches up and agrees on blocks and state roots.
    let node3_home = nodes[3]["home"].as_str().unwrap().to_string();
    let log = std::fs::OpenOptions::new().append(true).open(nodes[3]["log"].as_str().unwrap()).unwrap();
    let _node3 = Guard(
        plexus()
            .args(["node", "run", "--home", &node3_home])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let target = height(&apis[0]).unwrap();
    let started = Instant::now();
    wait_for("node-3 catches up", Duration::from_secs(120), || (height(&apis[3])? >= target).then_some(()));
    eprintln!("node-3 caught up {target} blocks' worth in {:?}", started.elapsed());
    let common = apis.iter().map(|a| height(a).unwrap()).min().unwrap();
    let reference = block_at(&apis[0], common).unwrap();
    for api in &apis {
        let b = block_at(api, common).unwrap();
        assert_eq!(b["hash"], reference["hash"], "block {common} differs on {api}");
        assert_eq!(b["header"]["state_root"], reference["header"]["state_root"]);
    }
    // And its state at its tip is the state every other node had at that height.
    let s3 = status(&apis[3]);
    let h3 = s3["height"].as_u64().unwrap();
    let b = wait_for("block on node-0", Duration::from_secs(10), || block_at(&apis[0], h3));
    assert_eq!(s3["state_root"], b["header"]["state_root"]);
    // No validator signed conflicting votes across the crash.
    assert_eq!(get(&format!("{}/chain/v1/evidence", apis[0])).unwrap()["evidence"], json!([]));
    // The supply is conserved.
    assert_eq!(get(&format!("{}/chain/v1/supply", apis[3])).unwrap()["conserved"], json!(true));

    // Ctrl-C/SIGTERM stops the whole devnet cleanly.
    let mut devnet = devnet;
    unsafe {
        libc::kill(devnet.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = wait_for("devnet exits", Duration::from_secs(30), || devnet.0.try_wait().unwrap());
    assert!(status.success(), "devnet exited with {status}");
    for api in &apis[..3] {
        assert!(height(api).is_none(), "{api} still running after the devnet stopped");
    }
}
