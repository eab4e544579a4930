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
    assert!(why.contains(&format!("not provider {provider}")), "{why}");

    // The provider's endpoint on chain now leads to the impostor.
    stop(node["pid"].as_u64().unwrap());
    let moved = restart_with(node, "PLEXUS_PROVIDER_ENDPOINT", &impostor);
    wait_for("the endpoint to change on chain", Duration::from_secs(60), || {
        (registered_endpoint(&api, &provider)? == impostor).then_some(())
    });
    let gw = gateway(dir.path(), "gw", &info, &api, &[], &[]);
    let (code, text) = gw.post("/v2/models/ecg-heartbeat/infer", &beat());
    assert_eq!(code, 502, "{text}");
    assert!(text.contains(&format!("is not provider {provider}")), "the refusal says why: {text}");
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
