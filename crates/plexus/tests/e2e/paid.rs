//! Paid inference as users run it: `plexus devnet up` with real models, the official OpenAI
//! Python SDK through `plexus gateway`, and then the chain: providers paid exactly the
//! receipts' amounts, the client refunded the rest, supply conserved — also when a provider is
//! killed in the middle of a stream. And what the protocol refuses: a client that stops
//! signing receipts, and forged, replayed and over-amount claims.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use plexus_types::tx::{ModelPrice, Payload, Transaction};
use plexus_types::{Address, Amount, Hash, PrivateKey, Receipt};
use serde_json::{Value, json};

use crate::util::*;

/// Runs a script from `tests/python` and returns the JSON it prints last.
fn python(script: &str, args: &[&str]) -> Value {
    let path = manifest_dir().join("tests/python").join(script);
    let py = std::env::var_os("PLEXUS_PYTHON").unwrap_or_else(|| "python3".into());
    let out = Command::new(&py).arg(&path).args(args).output().expect("run python3 (with `pip install openai`)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {stdout}"))
}

fn account(api: &str, address: &str) -> (Amount, u64) {
    let v = get(&format!("{api}/chain/v1/accounts/{address}")).unwrap();
    (amount(&v["balance"]), v["nonce"].as_u64().unwrap())
}

/// The nonce the account's next transaction must use: past its transactions still in the
/// node's mempool too (the committed `nonce` lags while the devnet's own set-up ones are pending).
fn next_nonce(api: &str, address: &str) -> u64 {
    get(&format!("{api}/chain/v1/accounts/{address}")).unwrap()["next_nonce"].as_u64().unwrap()
}

fn session(api: &str, id: &str) -> Value {
    get(&format!("{api}/chain/v1/sessions/{id}")).unwrap()
}

fn min_fee(api: &str) -> Amount {
    amount(&get(&format!("{api}/chain/v1/params")).unwrap()["min_tx_fee"])
}

/// Every `session_settled` event in blocks `from..=to`.
fn settlements(api: &str, from: u64, to: u64) -> Vec<Value> {
    let mut out = Vec::new();
    for h in from..=to {
        let block = get(&format!("{api}/chain/v1/blocks/{h}")).unwrap();
        for tx in block["results"]["txs"].as_array().into_iter().flatten() {
            for e in tx["events"].as_array().into_iter().flatten() {
                if e["type"] == "session_settled" {
                    out.push(e.clone());
                }
            }
        }
    }
    out
}

/// Block rewards (execution v2 and later) paid to each proposer in `from..=to`.
fn proposer_rewards(api: &str, from: u64, to: u64) -> BTreeMap<String, Amount> {
    let mut out: BTreeMap<String, Amount> = BTreeMap::new();
    for h in from..=to {
        let block = get(&format!("{api}/chain/v1/blocks/{h}")).unwrap();
        for e in block["results"]["events"].as_array().into_iter().flatten() {
            if e["type"] == "proposer_rewarded" {
                *out.entry(e["proposer"].as_str().unwrap().to_string()).or_default() += amount(&e["amount"]);
            }
        }
    }
    out
}

fn restart_node(home: &str) -> Guard {
    let log = std::fs::OpenOptions::new().append(true).open(Path::new(home).join("node.log")).unwrap();
    Guard(
        plexus()
            .args(["node", "run", "--home", home])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

#[test]
fn paid_inference_settles_exactly_even_when_a_provider_dies_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("devnet");
    let (devnet, info) = start_devnet(&home, 4, &["--claim-interval", "2", "--threads", "1"]);
    let api = info["nodes"][0]["api"].as_str().unwrap().to_string();
    let gateway = info["gateway"]["url"].as_str().unwrap().trim_end_matches("/v1").to_string();
    let key = info["gateway"]["api_key"].as_str().unwrap().to_string();
    let gw_get = |path: &str| -> Option<Value> {
        http().get(format!("{gateway}{path}")).bearer_auth(&key).send().ok()?.json().ok()
    };
    let client = info["client"]["address"].as_str().unwrap().to_string();
    let fee = min_fee(&api);
    let start = height(&api).unwrap();
    let (client_balance, client_nonce) = account(&api, &client);
    let providers: Vec<(String, Amount, u64)> = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let a = n["address"].as_str().unwrap().to_string();
            let (b, nonce) = account(&api, &a);
            (a, b, nonce)
        })
        .collect();

    // The app: streaming and plain chat, embeddings, and a stream whose provider is killed.
    let result = python("gateway_e2e.py", &[home.join("devnet.json").to_str().unwrap(), "--kill-mid-stream"]);
    let failover = &result["failover"];
    let killed = failover["killed"].as_str().unwrap();
    let killed_home = info["nodes"].as_array().unwrap().iter().find(|n| n["name"] == killed).unwrap()["home"]
        .as_str()
        .unwrap()
        .to_string();
    // The killed provider comes back, and the gateway's outbox delivers it the receipt for what
    // it streamed before it died.
    let _restarted = restart_node(&killed_home);
    let killed_node = info["nodes"].as_array().unwrap().iter().find(|n| n["name"] == killed).unwrap();
    let killed_session = failover["segments"][0]["session"].as_str().unwrap().to_string();
    wait_for("the restarted provider to hold its receipt", Duration::from_secs(180), || {
        let gw: Value = gw_get("/plexus/v1/status")?;
        let seq = gw["sessions"].as_array()?.iter().find(|s| s["id"] == killed_session.as_str())?["seq"].as_u64()?;
        let held =
            get_provider(killed_node, &format!("/plexus/v1/sessions/{killed_session}"))?["receipt_seq"].as_u64()?;
        (held == seq).then_some(())
    });

    // The app is done: the gateway closes its sessions; providers settle and close them.
    let closed = http()
        .post(format!("{gateway}/plexus/v1/close"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(60))
        .send()
        .unwrap();
    assert!(closed.status().is_success());
    let gw: Value = gw_get("/plexus/v1/status").unwrap();
    let sessions = gw["sessions"].as_array().unwrap().clone();
    assert!(sessions.len() >= 3, "chat, embeddings and the failover each used a session: {gw}");
    wait_for("every session settled, closed and refunded", Duration::from_secs(180), || {
        sessions.iter().all(|s| session(&api, s["id"].as_str().unwrap())["status"] == "closed").then_some(())
    });

    // Each session: paid exactly its latest receipt, the rest refunded.
    let mut settled_total = 0;
    for s in &sessions {
        let id = s["id"].as_str().unwrap();
        let chain = session(&api, id);
        assert_eq!(amount(&chain["settled_amount"]), amount(&s["cum_amount"]), "session {id}: {chain} vs {s}");
        assert_eq!(chain["settled_input_tokens"], s["cum_input_tokens"], "{chain} vs {s}");
        assert_eq!(chain["settled_output_tokens"], s["cum_output_tokens"], "{chain} vs {s}");
        assert_eq!(amount(&chain["refunded"]), amount(&chain["deposit"]) - amount(&chain["settled_amount"]));
        settled_total += amount(&chain["settled_amount"]);
    }
    assert!(settled_total > 0);
    // Gemma 3, the second architecture, was paid through its own session like SmolLM2.
    let gemma = result["gemma"]["model_id"].as_str().unwrap();
    let gemma_sessions: Vec<Value> = sessions
        .iter()
        .map(|s| session(&api, s["id"].as_str().unwrap()))
        .filter(|chain| chain["model"].as_str() == Some(gemma))
        .collect();
    assert!(
        gemma_sessions.iter().any(|chain| chain["settled_output_tokens"].as_u64().unwrap() >= 3),
        "a settled session for gemma3-270m ({gemma}): {gemma_sessions:?}"
    );

    // Each provider of the failover was acknowledged exactly for its part.
    for seg in failover["segments"].as_array().unwrap() {
        let chain = session(&api, seg["session"].as_str().unwrap());
        assert_eq!(chain["provider"], seg["provider"]);
        let gw_session = sessions.iter().find(|s| s["id"] == seg["session"]).unwrap();
        assert!(chain["settled_output_tokens"].as_u64().unwrap() >= seg["completion_tokens"].as_u64().unwrap());
        assert_eq!(chain["settled_output_tokens"], gw_session["cum_output_tokens"]);
    }
    let first = &failover["segments"][0];
    assert!(first["completion_tokens"].as_u64().unwrap() > 0, "the killed provider delivered part of the stream");

    // Money: the client paid exactly the settlements plus its transaction fees...
    let end = height(&api).unwrap();
    let (client_after, client_nonce_after) = account(&api, &client);
    let client_fees = Amount::from(client_nonce_after - client_nonce) * fee;
    assert_eq!(client_after, client_balance - settled_total - client_fees);
    // ...each provider received its settlements minus the protocol fee, plus its block rewards
    // as a proposer, less its own fees...
    let events = settlements(&api, start, end);
    let rewards = proposer_rewards(&api, start + 1, end);
    let mut earned: BTreeMap<String, Amount> = BTreeMap::new();
    for e in &events {
        *earned.entry(e["provider"].as_str().unwrap().to_string()).or_default() +=
            amount(&e["amount"]) - amount(&e["fee"]);
    }
    assert_eq!(events.iter().map(|e| amount(&e["amount"])).sum::<Amount>(), settled_total);
    for (address, before, nonce) in &providers {
        let (after, nonce_after) = account(&api, address);
        let fees = Amount::from(nonce_after - nonce) * fee;
        let rewarded = rewards.get(address).copied().unwrap_or(0);
        assert_eq!(after + fees, before + earned.get(address).copied().unwrap_or(0) + rewarded, "provider {address}");
    }
    // ...and no unit was created or lost.
    assert_eq!(get(&format!("{api}/chain/v1/supply")).unwrap()["conserved"], true);
    drop(devnet);
}

fn post(
    client: &reqwest::blocking::Client,
    url: &str,
    body: &Value,
    headers: &[(&str, String)],
) -> reqwest::blocking::Response {
    let mut r = client.post(url).timeout(Duration::from_secs(120)).json(body);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.send().unwrap()
}

/// Signs `payload` from `key` with its next nonce and waits until it is finalized; returns the
/// transaction's result (its `error` is null when the payload applied). A transaction the node
/// refuses at the door (its payload would fail) gives `{"error": <the API's message>}`.
fn send_tx(api: &str, chain_id: &str, key: &PrivateKey, payload: Payload) -> Value {
    let nonce = next_nonce(api, &key.address().to_string());
    let tx = Transaction { signer: key.address(), nonce, fee: min_fee(api), payload }.sign(key, chain_id);
    let r = post(
        &http(),
        &format!("{api}/chain/v1/txs"),
        &json!({"tx": hex::encode(plexus_types::codec::to_vec(&tx))}),
        &[],
    );
    let status = r.status().as_u16();
    if status == 400 {
        let body: Value = r.json().unwrap();
        assert_eq!(body["error"]["code"], "tx_would_fail", "{body}");
        return json!({"error": body["error"]["message"], "refused": true});
    }
    assert_eq!(status, 202, "{}", r.text().unwrap());
    let hash = tx.hash();
    wait_for("the transaction to finalize", Duration::from_secs(60), || {
        get(&format!("{api}/chain/v1/txs/{hash}")).filter(|v| v.get("result").is_some())
    })["result"]
        .clone()
}

fn open_session(
    api: &str,
    chain_id: &str,
    client: &PrivateKey,
    provider: &Address,
    price: &ModelPrice,
    deposit: Amount,
) -> Hash {
    let nonce = next_nonce(api, &client.address().to_string());
    let expiry = height(api).unwrap() + 2_000;
    let payload = Payload::OpenSession {
        provider: provider.clone(),
        model: price.model,
        deposit,
        max_input_per_1k: price.input_per_1k,
        max_output_per_1k: price.output_per_1k,
        expiry_height: expiry,
    };
    let result = send_tx(api, chain_id, client, payload);
    assert!(result["error"].is_null(), "{result}");
    plexus_execution::session_id(&client.address(), nonce)
}

#[test]
fn clients_that_stop_paying_and_bad_claims_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("devnet");
    let (devnet, info) = start_devnet(&home, 1, &["--credit-tokens", "64", "--threads", "2"]);
    let node = &info["nodes"][0];
    let api = node["api"].as_str().unwrap().to_string();
    let inference = node["inference"].as_str().unwrap().to_string();
    let to_provider = provider_http(node);
    let chain_id = info["chain_id"].as_str().unwrap().to_string();
    let client = plexus_node::keyfile::load(Path::new(info["client"]["key_file"].as_str().unwrap())).unwrap();
    let provider_key = plexus_node::keyfile::load(Path::new(node["key_file"].as_str().unwrap())).unwrap();
    let provider = provider_key.address();
    let record = get(&format!("{api}/chain/v1/providers/{provider}")).unwrap();
    let models = get(&format!("{api}/chain/v1/models")).unwrap();
    let chat_id =
        models["models"].as_array().unwrap().iter().find(|m| m["manifest"]["name"] == "smollm2-135m-instruct").unwrap()
            ["id"]
            .as_str()
            .unwrap()
            .to_string();
    let price: ModelPrice = serde_json::from_value(
        record["prices"].as_array().unwrap().iter().find(|p| p["model"] == chat_id.as_str()).unwrap().clone(),
    )
    .unwrap();

    // -- A client that stops signing receipts --
    let id = open_session(&api, &chain_id, &client, &provider, &price, 1_000_000);
    let auth = |nonce: u64, key: &PrivateKey| {
        let sig =
            plexus_types::receipt::SessionAuth { session: id, provider: provider.clone(), nonce }.sign(key, &chain_id);
        post(
            &to_provider,
            &format!("{inference}/plexus/v1/sessions/{id}/token"),
            &json!({"nonce": nonce, "signature": sig.to_string()}),
            &[],
        )
    };
    assert_eq!(
        auth(1, &PrivateKey::from_seed(99)).status().as_u16(),
        401,
        "only the session's client can authenticate"
    );
    let r = auth(5, &client);
    assert_eq!(r.status().as_u16(), 200);
    let token = r.json::<Value>().unwrap()["token"].as_str().unwrap().to_string();
    assert_eq!(auth(5, &client).status().as_u16(), 401, "a proof cannot be replayed");
    let chat = |max_tokens: u32, stream: bool| {
        json!({"model": "smollm2-135m-instruct", "max_tokens": max_tokens, "stream": stream, "temperature": 0.9, "seed": 3,
               "messages": [{"role": "user", "content": "Write a very long story about a city under the sea."}]})
    };
    let headers = vec![("x-plexus-session", id.to_string()), ("x-plexus-token", token.clone())];
    let r = post(&to_provider, &format!("{inference}/v1/chat/completions"), &chat(8, false), &[]);
    assert_eq!(r.status().as_u16(), 402, "no session, no service");

    // A long stream with no receipts is cut off once the credit (64 tokens) is used.
    let r = post(&to_provider, &format!("{inference}/v1/chat/completions"), &chat(400, true), &headers);
    assert_eq!(r.status().as_u16(), 200);
    let sse = r.text().unwrap();
    let chunks = sse.lines().filter(|l| l.contains("\"content\":") && !l.contains("\"content\":\"\"")).count();
    assert!(sse.contains("not acknowledged"), "{sse}");
    assert!(!sse.contains("[DONE]"));
    assert!((40..=100).contains(&chunks), "cut off after about the credit window, got {chunks} chunks");
    // The next request is refused before any work.
    let r = post(&to_provider, &format!("{inference}/v1/chat/completions"), &chat(8, false), &headers);
    assert_eq!(r.status().as_u16(), 402);
    assert!(r.text().unwrap().contains("not acknowledged"));

    // -- Claims the chain refuses. The node has no receipt yet, so it sends no transaction of
    // its own while the test signs with its key. --
    let deposit = 500_000;
    let s2 = open_session(&api, &chain_id, &client, &provider, &price, deposit);
    let claim = |r: Receipt, key: &PrivateKey| {
        send_tx(&api, &chain_id, &provider_key, Payload::Claim { receipts: vec![r.sign(key, &chain_id)] })
    };
    let base = Receipt {
        session: s2,
        seq: 1,
        cum_input_tokens: 1_000,
        cum_output_tokens: 1_000,
        cum_amount: 0,
        outputs_root: Hash::ZERO,
    };
    let fair = plexus_execution::price_of(&price, 1_000, 1_000).unwrap();
    let forged = claim(Receipt { cum_amount: fair, ..base.clone() }, &PrivateKey::from_seed(97));
    assert!(forged["error"].as_str().unwrap().contains("not signed by the session's client"), "{forged}");
    let over_escrow = claim(
        Receipt {
            cum_input_tokens: 100_000_000,
            cum_output_tokens: 100_000_000,
            cum_amount: deposit + 1,
            ..base.clone()
        },
        &client,
    );
    assert!(over_escrow["error"].as_str().unwrap().contains("exceeds the escrow"), "{over_escrow}");
    let over_price = claim(Receipt { cum_amount: fair + 1, ..base.clone() }, &client);
    assert!(over_price["error"].as_str().unwrap().contains("maximum prices"), "{over_price}");
    assert_eq!(session(&api, &s2.to_string())["settled_amount"], 0, "refused claims change nothing");
    let ok = claim(Receipt { cum_amount: fair, ..base.clone() }, &client);
    assert!(ok["error"].is_null(), "{ok}");
    let replay = claim(Receipt { cum_amount: fair, ..base.clone() }, &client);
    assert!(replay["error"].as_str().unwrap().contains("not above settled seq"), "{replay}");
    let stale =
        claim(Receipt { seq: 2, cum_input_tokens: 10, cum_output_tokens: 10, cum_amount: 1, ..base.clone() }, &client);
    assert!(stale["error"].as_str().unwrap().contains("go backwards"), "{stale}");
    let s = session(&api, &s2.to_string());
    assert_eq!((amount(&s["settled_amount"]), s["settled_seq"].as_u64().unwrap()), (fair, 1));

    // A receipt that underpays is refused; a forged one too; an honest one restores service.
    let state = get_provider(node, &format!("/plexus/v1/sessions/{id}")).unwrap();
    let (input, output) =
        (state["delivered_input_tokens"].as_u64().unwrap(), state["delivered_output_tokens"].as_u64().unwrap());
    let owed = plexus_execution::price_of(&price, input, output).unwrap();
    let receipt = |seq, amount, key: &PrivateKey| {
        Receipt {
            session: id,
            seq,
            cum_input_tokens: input,
            cum_output_tokens: output,
            cum_amount: amount,
            outputs_root: Hash::ZERO,
        }
        .sign(key, &chain_id)
        .to_hex()
    };
    let send_receipt =
        |hex: String| post(&to_provider, &format!("{inference}/plexus/v1/receipts"), &json!({"receipt": hex}), &[]);
    assert_eq!(send_receipt(receipt(1, owed - 1, &client)).status().as_u16(), 400);
    assert_eq!(send_receipt(receipt(1, owed, &PrivateKey::from_seed(98))).status().as_u16(), 401);
    assert_eq!(send_receipt(receipt(1, owed, &client)).status().as_u16(), 200);
    let r = post(&to_provider, &format!("{inference}/v1/chat/completions"), &chat(8, false), &headers);
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap());

    assert_eq!(get(&format!("{api}/chain/v1/supply")).unwrap()["conserved"], true);
    drop(devnet);
}
