//! Provider links over TLS bound to the provider's on-chain key. A provider's registered
//! endpoint is answered by someone else (here another `plexus serve --tls`, with a key of its
//! own: what a man in the middle who terminates TLS looks like): the gateway refuses it with a
//! reason naming the provider, never falls back to plain HTTP, and is served again once the
//! provider's endpoint is its own.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

fn registered_endpoint(api: &str, provider: &str) -> Option<String> {
    Some(get(&format!("{api}/chain/v1/providers/{provider}"))?["endpoint"].as_str()?.to_string())
}

#[test]
fn a_provider_endpoint_answered_by_another_key_is_refused_not_downgraded() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("devnet");
    let (_devnet, info) = start_devnet(&home, 1, &["--threads", "1"]);
    let node = &info["nodes"][0];
    let api = node["api"].as_str().unwrap().to_string();
    let provider = node["address"].as_str().unwrap().to_string();
    let own = node["inference"].as_str().unwrap().to_string();
    assert!(own.starts_with("https://"), "providers serve TLS by default: {own}");
    assert_eq!(registered_endpoint(&api, &provider).as_deref(), Some(own.as_str()));

    // The impostor: a real provider server with a key that is not the provider's.
    let port = free_port_block(1);
    let _impostor = Guard(
        plexus()
            .args(["serve", "--tls", "-m", "ecg-heartbeat", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("impostor.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let impostor = format!("https://127.0.0.1:{port}");
    let unpinned = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    wait_for("the impostor serves", Duration::from_secs(60), || unpinned.get(format!("{impostor}/health")).send().ok());
    // Pinned to the provider, the impostor's handshake fails with the reason.
    let err = provider_http(node).get(format!("{impostor}/health")).send().unwrap_err();
    let mut why = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        why.push_str(&format!(": {s}"));
        source = s.source();
    }
    assert!(why.contains(&format!("is not {provider}")), "{why}");

    // The provider's endpoint on chain now leads to the impostor.
    stop(node["pid"].as_u64().unwrap());
    let moved = restart_with(node, "PLEXUS_PROVIDER_ENDPOINT", &impostor);
    wait_for("the endpoint to change on chain", Duration::from_secs(60), || {
        (registered_endpoint(&api, &provider)? == impostor).then_some(())
    });
    let gw = gateway(dir.path(), "gw", &info, &api, &[], &[]);
    let (code, text) = gw.post("/v2/models/ecg-heartbeat/infer", &beat());
    assert_eq!(code, 502, "{text}");
    assert!(text.contains(&format!("is not {provider}")), "the refusal says why: {text}");
    let spent = gw.status();
    let sessions = spent["sessions"].as_array().unwrap();
    assert!(sessions.iter().all(|s| s["seq"].as_u64().unwrap_or(0) == 0), "nothing was acknowledged: {spent}");

    // Back on its own endpoint, the same gateway (and its open session) is served.
    drop(moved);
    let _back = restart_with(node, "PLEXUS_PROVIDER_ENDPOINT", &own);
    wait_for("the endpoint to be the provider's again", Duration::from_secs(60), || {
        (registered_endpoint(&api, &provider)? == own).then_some(())
    });
    let served = wait_for("the gateway to be served again", Duration::from_secs(60), || {
        let (code, text) = gw.post("/v2/models/ecg-heartbeat/infer", &beat());
        (code == 200).then_some(text)
    });
    let answer: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(answer["parameters"]["plexus_inferences"], 1, "{answer}");
}

/// A node serving its chain API over TLS (`node init --api-tls`): the CLI, a gateway and a
/// joining node reach it through `https://<node address>@host:port`; without the address, with
/// another key's address, or in clear they get a refusal that says why, and nothing else.
#[test]
fn the_chain_api_over_tls_answers_only_clients_that_pin_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("devnet");
    let (_devnet, info) = start_devnet(&home, 1, &["--chain-only", "--epoch-length", "20"]);
    let api = info["nodes"][0]["api"].as_str().unwrap().to_string();
    let run = |args: &[&str]| {
        let out = plexus().args(args).stdin(Stdio::null()).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // A second node on this machine, its API over TLS (it need not stake to answer its API).
    let port = free_port_block(2);
    let node = dir.path().join("tls-node");
    let (ok, out, err) = run(&[
        "node",
        "init",
        "--home",
        node.to_str().unwrap(),
        "--join",
        &api,
        "--p2p-listen",
        &format!("127.0.0.1:{port}"),
        "--api-listen",
        &format!("127.0.0.1:{}", port + 1),
        "--api-tls",
        "--json",
    ]);
    assert!(ok, "{err}");
    let init: Value = serde_json::from_str(&out).unwrap();
    let address = init["address"].as_str().unwrap().to_string();
    let url = init["api"].as_str().unwrap().to_string();
    assert_eq!(url, format!("https://{address}@127.0.0.1:{}", port + 1));
    let log = std::fs::File::create(node.join("node.log")).unwrap();
    let _node = Guard(
        plexus()
            .args(["node", "run", "--home", node.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let status = wait_for("the node's API over TLS", Duration::from_secs(60), || {
        let (ok, out, _) = run(&["node", "status", "--node", &url, "--json"]);
        ok.then(|| serde_json::from_str::<Value>(&out).ok()).flatten()
    });
    assert_eq!(status["address"], address.as_str(), "{status}");

    // Refused: TLS without the address, another key's address, plain HTTP to the TLS port.
    let bare = format!("https://127.0.0.1:{}", port + 1);
    let (ok, _, err) = run(&["query", "status", "--node", &bare]);
    assert!(!ok && err.contains("https://<node address>@host:port"), "{err}");
    let other = info["nodes"][0]["address"].as_str().unwrap();
    let (ok, _, err) = run(&["query", "status", "--node", &format!("https://{other}@127.0.0.1:{}", port + 1)]);
    assert!(!ok && err.contains(&format!("is not {other}")), "a key it is not is refused, with why: {err}");
    assert!(get(&format!("http://127.0.0.1:{}/chain/v1/status", port + 1)).is_none(), "nothing in clear");

    // A third machine joins through it: the genesis comes over TLS, byte for byte the network's.
    let third = dir.path().join("third");
    let genesis_hash =
        get(&format!("{api}/chain/v1/status")).unwrap()["node"]["genesis_hash"].as_str().unwrap().to_string();
    let (ok, _, err) = run(&[
        "node",
        "init",
        "--home",
        third.to_str().unwrap(),
        "--join",
        &url,
        "--genesis-hash",
        &genesis_hash,
        "--p2p-listen",
        "127.0.0.1:1",
        "--api-listen",
        "127.0.0.1:2",
    ]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(third.join("genesis.json")).unwrap(), std::fs::read(node.join("genesis.json")).unwrap());

    // A gateway reads the chain through it, and one pinned to the wrong key does not start.
    let gw = gateway(dir.path(), "gw", &info, &url, &[], &[]);
    assert!(gw.status()["sessions"].is_array());
    let wrong = plexus()
        .args(["gateway", "--listen", "127.0.0.1:0", "--home"])
        .arg(dir.path().join("gw-wrong"))
        .arg("--key")
        .arg(info["client"]["key_file"].as_str().unwrap())
        .args(["--node", &format!("https://{other}@127.0.0.1:{}", port + 1)])
        .env("PLEXUS_GATEWAY_API_KEY", "test-key-wrong-0123456789")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let why = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && why.contains(&format!("is not {other}")), "{why}");
}
