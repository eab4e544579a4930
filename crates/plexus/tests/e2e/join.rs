//! Joining a running network as a new operator would: `plexus node init --join` fetches and
//! checks the genesis, the operator funds and stakes the new key through any node's API, and
//! the node (not a validator: it bonded only the provider minimum) is admitted as a follower,
//! syncs from the validators, registers as a provider over TLS and is paid for a request a
//! gateway sends it — exactly its settlements minus the protocol fee, less its own fees.

use std::process::Stdio;
use std::time::Duration;

use plexus_types::Amount;
use serde_json::Value;

use crate::util::*;

fn account(api: &str, address: &str) -> (Amount, u64) {
    let a = get(&format!("{api}/chain/v1/accounts/{address}")).unwrap();
    (amount(&a["balance"]), a["nonce"].as_u64().unwrap_or(0))
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = plexus().args(args).stdin(Stdio::null()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn a_provider_on_a_new_machine_joins_syncs_registers_and_is_paid_without_validating() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("devnet");
    let (_devnet, info) = start_devnet(&home, 1, &["--threads", "1", "--epoch-length", "20"]);
    let api = info["nodes"][0]["api"].as_str().unwrap().to_string();
    let status = get(&format!("{api}/chain/v1/status")).unwrap();
    let genesis_hash = status["node"]["genesis_hash"].as_str().unwrap().to_string();
    // Let the network run a few epochs first, so the new node has history to verify.
    wait_for("three epochs", Duration::from_secs(120), || (height(&api)? > 60).then_some(()));

    // A genesis hash that is not the network's is refused, and nothing is written.
    let wrong = dir.path().join("wrong");
    let (ok, _, err) =
        run(&["node", "init", "--home", wrong.to_str().unwrap(), "--join", &api, "--genesis-hash", &"ab".repeat(32)]);
    assert!(!ok && err.contains("not the") && err.contains(&genesis_hash), "{err}");
    assert!(!wrong.join("config.toml").exists(), "nothing written for a wrong genesis");

    // The new machine: its own ports, joined by the API URL and the published hash.
    let late = dir.path().join("late");
    let port = free_port_block(3);
    let (p2p, node_api, inference) =
        (format!("127.0.0.1:{port}"), format!("127.0.0.1:{}", port + 1), format!("127.0.0.1:{}", port + 2));
    let (ok, out, err) = run(&[
        "node",
        "init",
        "--home",
        late.to_str().unwrap(),
        "--join",
        &api,
        "--genesis-hash",
        &genesis_hash,
        "--p2p-listen",
        &p2p,
        "--api-listen",
        &node_api,
        "--provider",
        "--provider-listen",
        &inference,
        "--json",
    ]);
    assert!(ok, "{err}");
    let init: Value = serde_json::from_str(&out).unwrap();
    let address = init["address"].as_str().unwrap().to_string();
    assert_eq!(init["genesis_hash"], genesis_hash.as_str());
    assert_eq!(
        std::fs::read_to_string(late.join("genesis.json")).unwrap(),
        std::fs::read_to_string(home.join("genesis.json")).unwrap(),
        "the fetched genesis is the network's, byte for byte"
    );
    let config = std::fs::read_to_string(late.join("config.toml")).unwrap();
    let config = config
        .replace("models = [\"smollm2-135m-instruct\", \"all-minilm-l6-v2\"]", "models = [\"ecg-heartbeat\"]")
        .replace("region = \"local\"", "region = \"joined\"")
        .replace("claim_interval_secs = 15", "claim_interval_secs = 2")
        .replace("\nthreads = 0\n", "\nthreads = 1\n");
    std::fs::write(late.join("config.toml"), config).unwrap();

    // Fund it from the devnet's client account, then run the stake command init printed.
    let client_key = info["client"]["key_file"].as_str().unwrap();
    let (ok, _, err) =
        run(&["tx", "transfer", "--node", &api, "--key", client_key, "--to", &address, "--amount", "1000plx"]);
    assert!(ok, "{err}");
    let stake_cmd = init["stake_command"].as_str().unwrap().to_string();
    let stake_args: Vec<&str> = stake_cmd.split_whitespace().skip(1).collect();
    assert!(stake_cmd.contains(&format!("--p2p-address {p2p}")) && stake_cmd.contains(&api), "{stake_cmd}");
    let (ok, _, err) = run(&stake_args);
    assert!(ok, "{stake_cmd}: {err}");
    let params = get(&format!("{api}/chain/v1/params")).unwrap();
    let (min_provider_stake, min_stake) = (amount(&params["min_provider_stake"]), amount(&params["min_stake"]));
    assert!(min_provider_stake < min_stake, "the new node bonds too little to validate");

    let log = std::fs::File::create(late.join("node.log")).unwrap();
    let _late_node = Guard(
        plexus()
            .args(["node", "run", "--home", late.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let late_api = format!("http://{node_api}");
    // Admitted at the next epoch boundary, it replays every block from genesis and catches up.
    wait_for("the new node to catch up", Duration::from_secs(240), || {
        let (ours, theirs) = (height(&late_api)?, height(&api)?);
        (ours + 5 >= theirs && ours > 60).then_some(())
    });
    let ours = get(&format!("{late_api}/chain/v1/status")).unwrap();
    let theirs = get(&format!("{api}/chain/v1/blocks/{}", ours["height"])).unwrap();
    assert_eq!(ours["latest_block_hash"], theirs["hash"], "the same chain: {ours} vs {theirs}");
    assert_eq!(ours["node"]["genesis_hash"], genesis_hash.as_str());

    // It registers as a provider from its own synced state, serving TLS on its own key...
    let endpoint = format!("https://{inference}");
    wait_for("the new provider registered on chain", Duration::from_secs(120), || {
        let p = get(&format!("{api}/chain/v1/providers/{address}"))?;
        (p["endpoint"] == endpoint.as_str()).then_some(())
    });
    let validators = get(&format!("{api}/chain/v1/validators")).unwrap().to_string();
    assert!(!validators.contains(&address), "a follower, not a validator: {validators}");

    // ...and a gateway that uses only it gets answered and pays it.
    let (before, nonce_before) = account(&api, &address);
    let start = height(&api).unwrap();
    let gw = gateway(dir.path(), "gw", &info, &api, &[&address], &[]);
    for _ in 0..3 {
        let (code, provider, text) = gw.post_full("/v2/models/ecg-heartbeat/infer", &beat());
        assert_eq!(code, 200, "{text}");
        assert_eq!(provider, address, "the new provider answered");
    }
    let sessions: Vec<String> =
        gw.status()["sessions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    gw.close();
    wait_for("the session settled and closed", Duration::from_secs(180), || {
        sessions
            .iter()
            .all(|id| get(&format!("{api}/chain/v1/sessions/{id}")).unwrap()["status"] == "closed")
            .then_some(())
    });
    let end = height(&api).unwrap();
    let (settled, earned) = settled_to(|url| get(&url), &api, &address, start, end);
    // Three inferences at the devnet's price of 2,000 base units per 1,000, rounded up.
    assert_eq!(settled, 6, "what the gateway owed for three inferences");
    let (after, nonce_after) = account(&api, &address);
    let fees = Amount::from(nonce_after - nonce_before) * amount(&params["min_tx_fee"]);
    assert_eq!(after + fees, before + earned, "paid its settlements minus the protocol fee, less its own fees");
    assert_eq!(get(&format!("{api}/chain/v1/supply")).unwrap()["conserved"], true);

    // The operator's view adds up to the chain's settlements, to the base unit: per session
    // the tokens at its prices are what was paid, less the fee is what the provider earned.
    let (ok, out, err) = run(&["query", "earnings", "--provider", &address, "--node", &api, "--json"]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(amount(&report["total"]["gross"]), settled, "{report}");
    assert_eq!(amount(&report["total"]["net"]), earned, "{report}");
    assert_eq!(amount(&report["settled"]["net"]), earned, "every session is closed: {report}");
    assert_eq!(amount(&report["pending"]["gross"]), 0, "{report}");
    let rows = report["sessions"].as_array().unwrap();
    assert_eq!(rows.len(), sessions.len(), "{report}");
    for r in rows {
        assert_eq!(amount(&r["tokens_cost"]), amount(&r["gross"]), "tokens x price = paid: {r}");
        assert_eq!(amount(&r["gross"]) - amount(&r["fee"]), amount(&r["net"]), "{r}");
        assert_eq!(r["status"], "closed");
    }
    assert_eq!(rows.iter().map(|r| amount(&r["net"])).sum::<Amount>(), earned);
    let days = report["days"].as_array().unwrap();
    assert_eq!(days.iter().map(|d| amount(&d["net"])).sum::<Amount>(), earned, "{report}");
    let (ok, out, err) = run(&["query", "earnings", "--provider", &address, "--node", &late_api]);
    assert!(ok && out.contains("earned") && out.contains("per day (UTC)"), "{out}{err}");

    // Every /metrics endpoint parses with the reference Prometheus parser, and the provider's
    // payment metrics say what happened.
    let script = manifest_dir().join("tests/python/metrics_parse.py");
    let py = std::env::var_os("PLEXUS_PYTHON").unwrap_or_else(|| "python3".into());
    let urls = [format!("{late_api}/metrics"), format!("{endpoint}/metrics"), format!("{}/metrics", gw.base)];
    let out = std::process::Command::new(&py)
        .arg(&script)
        .args(&urls)
        .env("PLEXUS_METRICS_KEY", &gw.key)
        .output()
        .expect("run python3 with prometheus_client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let parsed: Value = serde_json::from_str(stdout.trim()).unwrap();
    for url in &urls {
        assert!(parsed[url].as_object().is_some_and(|f| f.len() > 3), "{url}: {}", parsed[url]);
    }
    let sample = |url: &str, family: &str| -> f64 {
        let samples = parsed[url][family].as_array().unwrap_or_else(|| panic!("{url} has no {family}"));
        samples.iter().map(|s| s[2].as_f64().unwrap()).sum()
    };
    let provider_metrics = &urls[1];
    assert!(sample(provider_metrics, "plexus_provider_receipts_claimed") >= 1.0, "{}", parsed[provider_metrics]);
    assert_eq!(sample(provider_metrics, "plexus_provider_claim_failures"), 0.0);
    assert!(parsed[provider_metrics]["plexus_provider_credit_exposure_tokens"].is_array());
    assert!(sample(provider_metrics, "plexus_provider_receipts_value_base_units") >= settled as f64);
    assert!(sample(&urls[2], "plexus_gateway_receipts_signed") >= 3.0, "{}", parsed[&urls[2]]);
    assert_eq!(sample(&urls[2], "plexus_gateway_spent_base_units"), settled as f64, "what its receipts promised");
    let latency = parsed[&urls[2]]["plexus_gateway_request_seconds"].as_array().unwrap();
    let infers = latency
        .iter()
        .filter(|s| s[0] == "plexus_gateway_request_seconds_count" && s[1]["route"] == "/v2/models/{name}/infer")
        .map(|s| s[2].as_f64().unwrap())
        .sum::<f64>();
    assert_eq!(infers, 3.0, "three timed inference requests: {latency:?}");

    // And the node says what it is (peers count once their version announcements arrived).
    let status = wait_for("the node's status with its peer", Duration::from_secs(30), || {
        let (ok, out, _) = run(&["node", "status", "--node", &late_api, "--json"]);
        let status: Value = serde_json::from_str(&out).ok()?;
        (ok && status["peers"].as_u64()? >= 1).then_some(status)
    });
    assert_eq!(status["role"], "follower and provider", "{status}");
    assert_eq!(status["synced"], true, "{status}");

    // The console the node serves, rendered by a real browser: the same earnings, adding up to
    // the chain's settlements to the base unit, and the network, account and provider pages.
    let shots = crate::console::screenshot_dir();
    let page = |route: &str, name: &str| {
        let dom = crate::console::render(&format!("{late_api}/console#/{route}"), &shots.join(format!("{name}.png")));
        assert!(dom.contains("data-ready="), "the page finished rendering: {dom}");
        assert!(!dom.contains(r#"id="error""#), "{route}: {dom}");
        dom
    };
    let dom = page(&format!("earnings/{address}"), "earnings");
    assert!(dom.contains(r#"id="adds-up" data-ok="true""#), "{dom}");
    assert!(dom.contains(&format!(r#"id="net-total" data-units="{earned}""#)), "{dom}");
    assert!(dom.contains(&format!(r#"id="net-settled" data-units="{earned}""#)), "{dom}");
    assert!(dom.contains(r#"id="net-pending" data-units="0""#), "{dom}");
    let dom = page("", "overview");
    assert!(dom.contains(r#"id="height""#) && dom.contains("execution v"), "{dom}");
    let dom = page(&format!("account/{address}"), "account");
    for kind in ["stake", "register_provider", "claim"] {
        assert!(dom.contains(&format!("<td>{kind}</td>")), "its {kind} transaction is listed: {dom}");
    }
    let dom = page("providers", "providers");
    assert!(dom.contains(&address[..8]) && dom.contains("ecg-heartbeat"), "{dom}");
    page("sessions", "sessions");
    page("blocks", "blocks");
    page("proposals", "proposals");
    eprintln!("console screenshots in {}", shots.display());

    // Each server's OpenAPI document holds against the live server (schemathesis: no 5xx,
    // statuses, content types and bodies as documented). Last: it fuzzes the gateway's close.
    for (base, headers) in [
        (late_api.clone(), vec![]),
        (endpoint.clone(), vec![]),
        (gw.base.clone(), vec![format!("Authorization: Bearer {}", gw.key)]),
    ] {
        if let Err(out) = crate::console::schemathesis(&base, &headers) {
            panic!("schemathesis against {base}:\n{out}");
        }
    }
}
