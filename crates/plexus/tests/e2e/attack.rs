//! A chain no peer can crash, censor or capture, as a user would see it: a 4-validator devnet
//! under a dishonest peer (a transaction that used to panic admission, sent through the API and
//! straight over p2p gossip), fee games (replace-by-fee that strands queued transactions) and
//! governance abuse (dust votes, proposals that would brick governance). Every node stays up,
//! the chain keeps finalizing, honest transactions land and honest balances are exact.

use std::process::Stdio;
use std::time::Duration;

use plexus_types::tx::{Payload, Transaction};
use plexus_types::{Amount, PrivateKey, SignedTx};
use serde_json::{Value, json};

use crate::util::*;

fn account(api: &str, address: &str) -> Value {
    get(&format!("{api}/chain/v1/accounts/{address}")).expect("account")
}

fn balance(api: &str, address: &str) -> Amount {
    account(api, address)["balance"]
        .as_str()
        .map_or_else(|| account(api, address)["balance"].as_u64().unwrap() as Amount, |s| s.parse().unwrap())
}

fn post(api: &str, tx: &SignedTx) -> (u16, Value) {
    let body = json!({ "tx": hex::encode(plexus_types::codec::to_vec(tx)) });
    let r = http().post(format!("{api}/chain/v1/txs")).json(&body).send().unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn sign(key: &PrivateKey, chain_id: &str, nonce: u64, fee: Amount, payload: Payload) -> SignedTx {
    Transaction { signer: key.address(), nonce, fee, payload }.sign(key, chain_id)
}

/// Runs a CLI command; its (success, stdout + stderr).
fn cli(args: &[&str]) -> (bool, String) {
    let out = plexus().args(args).stdin(Stdio::null()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn all_alive_and_progressing(apis: &[String]) {
    let before: Vec<u64> = apis.iter().map(|a| height(a).expect("node is up")).collect();
    wait_for("every node finalizes again", Duration::from_secs(60), || {
        apis.iter().zip(&before).all(|(a, b)| height(a).is_some_and(|h| h >= b + 3)).then_some(())
    });
}

#[test]
fn dishonest_peers_fee_games_and_dust_votes_leave_the_chain_running_and_balances_exact() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("devnet");
    let (_devnet, info) = start_devnet(&home, 4, &["--chain-only", "--epoch-length", "30"]);
    let nodes: Vec<Value> = info["nodes"].as_array().unwrap().clone();
    let apis: Vec<String> = nodes.iter().map(|n| n["api"].as_str().unwrap().to_string()).collect();
    let chain_id = get(&format!("{}/chain/v1/status", apis[0])).unwrap()["chain_id"].as_str().unwrap().to_string();
    let client_key = info["client"]["key_file"].as_str().unwrap().to_string();
    let fee: Amount = 1_000;

    // An attacker account with 10 PLX.
    let attacker = PrivateKey::from_seed(6_660);
    let attacker_addr = attacker.address().to_string();
    let (ok, out) =
        cli(&["tx", "transfer", "--node", &apis[0], "--key", &client_key, "--to", &attacker_addr, "--amount", "10plx"]);
    assert!(ok, "{out}");
    let funded = balance(&apis[0], &attacker_addr);
    assert_eq!(funded, 10_000_000);
    let victim = nodes[1]["address"].as_str().unwrap().to_string();
    let victim_addr: plexus_types::Address = victim.parse().unwrap();

    // 1. The transaction that used to panic admission: a transfer the fee leaves short by one.
    let bad =
        sign(&attacker, &chain_id, 0, fee, Payload::Transfer { to: victim_addr.clone(), amount: funded - fee + 1 });
    let (code, body) = post(&apis[0], &bad);
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("insufficient_balance")), "{body}");
    // ...and straight over p2p, as node-3 with a modified binary would: stop node-3, use its key.
    let pid = nodes[3]["pid"].as_u64().unwrap() as libc::pid_t;
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    wait_for("node-3 down", Duration::from_secs(20), || height(&apis[3]).is_none().then_some(()));
    let node3_home = nodes[3]["home"].as_str().unwrap().to_string();
    let junk = sign(&attacker, &chain_id, 0, fee, Payload::Transfer { to: victim_addr.clone(), amount: funded });
    let (ok, out) = cli(&[
        "node",
        "gossip-raw",
        "--home",
        &node3_home,
        "--tx",
        &hex::encode(plexus_types::codec::to_vec(&bad)),
        "--tx",
        &hex::encode(plexus_types::codec::to_vec(&junk)),
    ]);
    assert!(ok && out.contains("sent to"), "{out}");
    assert!(!out.contains("sent to 0 peers"), "{out}");
    all_alive_and_progressing(&apis[..3]);
    assert_eq!(balance(&apis[0], &attacker_addr), funded, "nothing of it applied");
    assert_eq!(account(&apis[0], &attacker_addr)["nonce"], 0);
    for api in &apis[..3] {
        let metrics = http().get(format!("{api}/metrics")).send().unwrap().text().unwrap();
        assert!(
            !metrics.lines().any(|l| l.contains("admission_panics") && !l.starts_with('#') && !l.ends_with(" 0")),
            "{metrics}"
        );
    }
    // node-3 comes back and follows.
    let log = std::fs::OpenOptions::new().append(true).open(nodes[3]["log"].as_str().unwrap()).unwrap();
    let _node3 = Guard(
        plexus()
            .args(["node", "run", "--home", &node3_home])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for("node-3 catches up", Duration::from_secs(120), || {
        (height(&apis[3])? >= height(&apis[0])?.saturating_sub(2)).then_some(())
    });

    // 2. Fee games: queue 20 transfers, then replace the first with one that spends everything at
    // a higher fee. The 20 followers can never pay: they are dropped, not left to clog blocks.
    // One batch, so no block is built between the queue and its replacement.
    let mut batch: Vec<String> = (0..21u64)
        .map(|nonce| sign(&attacker, &chain_id, nonce, fee, Payload::Transfer { to: victim_addr.clone(), amount: 1 }))
        .map(|t| hex::encode(plexus_types::codec::to_vec(&t)))
        .collect();
    let everything =
        sign(&attacker, &chain_id, 0, 5 * fee, Payload::Transfer { to: victim_addr.clone(), amount: funded - 5 * fee });
    batch.push(hex::encode(plexus_types::codec::to_vec(&everything)));
    let r = http().post(format!("{}/chain/v1/txs/batch", apis[0])).json(&json!({ "txs": batch })).send().unwrap();
    let results: Value = r.json().unwrap();
    let results = results["results"].as_array().unwrap();
    assert!(results.iter().all(|r| r["hash"].is_string()), "{results:?}");
    assert_eq!(account(&apis[0], &attacker_addr)["next_nonce"], 1, "the stranded followers are gone");
    // An honest minimum-fee transfer lands within a few blocks meanwhile.
    let (ok, out) =
        cli(&["tx", "transfer", "--node", &apis[1], "--key", &client_key, "--to", &victim, "--amount", "1", "--json"]);
    assert!(ok, "{out}");
    wait_for("the replacement applied", Duration::from_secs(30), || {
        (account(&apis[2], &attacker_addr)["nonce"].as_u64()? == 1).then_some(())
    });
    assert_eq!(balance(&apis[2], &attacker_addr), 0, "the attacker spent exactly its balance, fee included");

    // 3. Governance: dust stake cannot vote; a proposal that would brick governance is refused.
    let voter = PrivateKey::from_seed(6_661);
    let voter_addr = voter.address().to_string();
    let (ok, out) =
        cli(&["tx", "transfer", "--node", &apis[0], "--key", &client_key, "--to", &voter_addr, "--amount", "5plx"]);
    assert!(ok, "{out}");
    let key_file = dir.path().join("voter.json");
    plexus_node::keyfile::save(&key_file, &voter).unwrap();
    let key_path = key_file.to_str().unwrap();
    let (ok, out) = cli(&["tx", "stake", "--node", &apis[0], "--key", key_path, "--amount", "1"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["gov", "propose", "text", "--node", &apis[0], "--key", &client_key, "--text", "hello"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["gov", "vote", "--node", &apis[0], "--key", key_path, "--proposal", "0", "--option", "yes"]);
    assert!(!ok && out.contains("min_stake"), "a dust vote must be refused: {out}");
    for (name, value) in [("threshold_bps", "10000"), ("quorum_bps", "10000"), ("min_tx_fee", "1000000000000")] {
        let (ok, out) = cli(&[
            "gov",
            "propose",
            "param",
            "--node",
            &apis[0],
            "--key",
            &client_key,
            "--name",
            name,
            "--value",
            value,
        ]);
        assert!(!ok && out.contains(name), "{name} = {value} must be refused: {out}");
    }
    let proposals = get(&format!("{}/chain/v1/proposals", apis[0])).unwrap();
    assert_eq!(proposals["proposals"].as_array().unwrap().len(), 1, "only the text proposal exists");

    // 4. Reads are bounded: pages of at most 100, a cursor to go on, and a limit on readers of
    // the block stream.
    let page = get(&format!("{}/chain/v1/proposals?limit=1", apis[0])).unwrap();
    assert_eq!(page["proposals"].as_array().unwrap().len(), 1);
    let r = http().get(format!("{}/chain/v1/sessions?limit=1000", apis[0])).send().unwrap();
    assert_eq!(r.status().as_u16(), 400, "a page of a thousand is refused");
    let validators: Vec<String> = nodes.iter().map(|n| n["address"].as_str().unwrap().to_string()).collect();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let url = match &after {
            Some(a) => format!("{}/chain/v1/evidence?limit=1&after={a}", apis[0]),
            None => format!("{}/chain/v1/evidence?limit=1", apis[0]),
        };
        let page = get(&url).unwrap();
        seen.extend(page["evidence"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert!(seen.is_empty(), "no validator equivocated: {seen:?} ({validators:?})");
    let readers: Vec<_> = (0..crate_stream_max())
        .map(|_| {
            let r = reqwest::blocking::Client::new().get(format!("{}/chain/v1/stream", apis[0])).send().unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r
        })
        .collect();
    let r = http().get(format!("{}/chain/v1/stream", apis[0])).send().unwrap();
    assert_eq!(r.status().as_u16(), 503, "one reader too many");
    drop(readers);
    wait_for("a stream place frees up", Duration::from_secs(10), || {
        let r = http().get(format!("{}/chain/v1/stream", apis[0])).send().ok()?;
        (r.status().as_u16() == 200).then_some(())
    });

    all_alive_and_progressing(&apis);
    let supply = get(&format!("{}/chain/v1/supply", apis[0])).unwrap();
    assert_eq!(supply["conserved"], json!(true));
}

fn crate_stream_max() -> usize {
    plexus_node::api::STREAM_SUBSCRIBERS_MAX
}
