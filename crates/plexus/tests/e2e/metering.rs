//! Honest metering as a user runs it: a devnet with real models where one provider lies —
//! inflated counts, stripped or forged attestations, padded token ids, a stream that never ends
//! — and a client that races requests past its credit without paying. The liars get nothing
//! they did not verifiably deliver, every app request is still answered (by an honest
//! provider), and the honest provider's exposure to the client that stops paying stays within
//! its credit whatever the concurrency. Also: a look-alike model cannot take a popular name,
//! and the gateway refuses anyone without its API key, non-JSON bodies and foreign origins.

use std::path::Path;
use std::time::Duration;

use plexus_types::Amount;
use plexus_types::tx::{Payload, Transaction};
use serde_json::{Value, json};

use crate::util::*;

#[test]
fn lying_providers_are_never_paid_and_apps_are_still_answered() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("devnet");
    let (_devnet, info) = start_devnet(&home, 2, &["--claim-interval", "2", "--threads", "1"]);
    let nodes = info["nodes"].as_array().unwrap().clone();
    let (honest, liar) = (&nodes[0], &nodes[1]);
    let honest_addr = honest["address"].as_str().unwrap().to_string();
    let liar_addr = liar["address"].as_str().unwrap().to_string();
    let chat = |stream: bool| {
        json!({"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 16, "stream": stream,
               "messages": [{"role": "user", "content": "Name three colors."}]})
    };

    // The devnet's own gateway: no key, no service; JSON only; no foreign web page.
    let devnet_gw = info["gateway"]["url"].as_str().unwrap().trim_end_matches("/v1").to_string();
    let r = http().post(format!("{devnet_gw}/v1/chat/completions")).json(&chat(false)).send().unwrap();
    assert_eq!(r.status().as_u16(), 401, "no API key");
    let key = info["gateway"]["api_key"].as_str().unwrap();
    let r = http()
        .post(format!("{devnet_gw}/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "text/plain")
        .body(chat(false).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 415, "a form post from any web page would be text/plain");
    let r = http()
        .post(format!("{devnet_gw}/plexus/v1/close"))
        .bearer_auth(key)
        .header("origin", "https://evil.example")
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "a foreign origin");
    let r = http().post(format!("{devnet_gw}/plexus/v1/close")).json(&json!({})).send().unwrap();
    assert_eq!(r.status().as_u16(), 401, "closing sessions needs the key too");

    // A look-alike model cannot take the popular name.
    let api = info["nodes"][0]["api"].as_str().unwrap().to_string();
    let chain_id = get(&format!("{api}/chain/v1/status")).unwrap()["chain_id"].as_str().unwrap().to_string();
    let models = get(&format!("{api}/chain/v1/models")).unwrap();
    let real: plexus_types::ModelManifest = serde_json::from_value(
        models["models"].as_array().unwrap().iter().find(|m| m["manifest"]["name"] == "smollm2-135m-instruct").unwrap()
            ["manifest"]
            .clone(),
    )
    .unwrap();
    let mut lookalike = real.clone();
    lookalike.weights_sha256 = plexus_types::hash(b"a cheaper model");
    let liar_key = plexus_node::keyfile::load(&Path::new(liar["home"].as_str().unwrap()).join("key.json")).unwrap();
    let nonce = get(&format!("{api}/chain/v1/accounts/{liar_addr}")).unwrap()["next_nonce"].as_u64().unwrap();
    let tx = Transaction { signer: liar_key.address(), nonce, fee: 1_000, payload: Payload::RegisterModel(lookalike) }
        .sign(&liar_key, &chain_id);
    let r = http()
        .post(format!("{api}/chain/v1/txs"))
        .json(&json!({ "tx": hex::encode(plexus_types::codec::to_vec(&tx)) }))
        .send()
        .unwrap();
    let body: Value = r.json().unwrap();
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("belongs to"), "{body}");

    // Each lie in turn: the liar is caught, gets no receipt for what it could not prove, and
    // the app's request is answered by the honest provider.
    let mut liar_pid = liar["pid"].as_u64().unwrap();
    // A constrained chat (structured output): what the provider that ignores grammars is sent.
    let json_chat = |stream: bool| {
        let mut body = chat(stream);
        // Room for the whole object: an answer cut by max_tokens is honest, but not JSON.
        body["max_tokens"] = json!(48);
        body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "colors", "strict": true,
            "schema": {"type": "object", "properties": {"colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3}},
                       "required": ["colors"], "additionalProperties": false}}});
        body
    };
    for (lie, stream) in [
        ("inflate", false),
        ("strip", false),
        ("forge", false),
        ("pad", false),
        ("unconstrained", false),
        ("strip", true),
        ("endless", true),
    ] {
        let chat = |stream: bool| if lie == "unconstrained" { json_chat(stream) } else { chat(stream) };
        stop(liar_pid);
        let guard = restart_with(liar, "PLEXUS_DISHONEST", lie);
        liar_pid = u64::from(guard.0.id());
        let gw = gateway(dir.path(), &format!("gw-{lie}-{stream}"), &info, &api, &[&honest_addr, &liar_addr], &[]);
        let mut caught = false;
        for attempt in 0..20 {
            let (code, text) = gw.post("/v1/chat/completions", &chat(stream));
            assert_eq!(code, 200, "{lie}: the app is answered anyway: {text}");
            if lie == "unconstrained" {
                // Answered by the honest provider, in the schema.
                let v: Value = serde_json::from_str(&text).unwrap();
                let content: Value = serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap())
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {v}"));
                assert!(content["colors"].is_array(), "{content}");
            }
            if stream {
                assert!(text.contains("[DONE]"), "{lie}: the stream completes: {text}");
            } else {
                let v: Value = serde_json::from_str(&text).unwrap();
                let usage = &v["usage"];
                let max_tokens = chat(stream)["max_tokens"].as_u64().unwrap();
                assert!(
                    usage["completion_tokens"].as_u64().unwrap() <= max_tokens,
                    "{lie}: counted by the gateway: {v}"
                );
                assert!(usage["prompt_tokens"].as_u64().unwrap() < 100, "{lie}: counted by the gateway: {v}");
            }
            let status = gw.status();
            let lies: u64 = status["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["provider"] == liar_addr.as_str())
                .map(|s| s["provider_lies"].as_u64().unwrap_or(0))
                .max()
                .unwrap_or(0);
            if lies > 0 {
                eprintln!("{lie} (stream {stream}): caught at request {attempt}");
                caught = true;
                break;
            }
        }
        assert!(caught, "{lie}: the liar was never tried (or never caught)");
        if lie == "inflate" {
            only_the_liar(&dir, &info, &api, &liar_addr, &chat(false));
        }
        // What the liar got: receipts only for tokens the gateway verified.
        let status = gw.status();
        let signed_to_liar: Amount = status["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["provider"] == liar_addr.as_str())
            .map(|s| amount(&s["cum_amount"]))
            .sum();
        if lie == "endless" {
            // Real tokens repeated until max_tokens: paid for at most the request's bound.
            let prices = get(&format!("{api}/chain/v1/providers/{liar_addr}")).unwrap();
            let p = &prices["prices"][0];
            let bound =
                plexus_execution::max_cost(100, 16, amount(&p["input_per_1k"]), amount(&p["output_per_1k"])).unwrap();
            assert!(signed_to_liar <= bound, "endless: {signed_to_liar} > {bound}");
        } else {
            assert_eq!(signed_to_liar, 0, "{lie}: the liar was paid {signed_to_liar}");
        }
        eprintln!("{lie} (stream {stream}): receipts signed to the liar: {signed_to_liar} base units");
        std::mem::forget(guard); // stopped by pid at the next round
    }

    // Off the chain's critical path: once a session is open, requests need no chain API. A
    // gateway reading the chain from the (now paused) second node keeps serving through the first.
    let liar_api = liar["api"].as_str().unwrap().to_string();
    let gw = gateway(dir.path(), "gw-chain-down", &info, &liar_api, &[&honest_addr], &[]);
    let (code, text) = gw.post("/v1/chat/completions", &chat(false));
    assert_eq!(code, 200, "{text}");
    unsafe {
        libc::kill(liar_pid as libc::pid_t, libc::SIGSTOP);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(http().get(format!("{liar_api}/chain/v1/status")).timeout(Duration::from_secs(2)).send().is_err());
    for stream in [false, true, false] {
        let (code, text) = gw.post("/v1/chat/completions", &chat(stream));
        assert_eq!(code, 200, "served while the chain API is unreachable: {text}");
        assert!(!stream || text.contains("[DONE]"), "{text}");
    }
    unsafe {
        libc::kill(liar_pid as libc::pid_t, libc::SIGCONT);
    }
    drop(gw);
    stop(liar_pid);
}

/// A gateway with the lying provider alone: caught lying with the chat model, it is out of that
/// model (a 503 that names it, its lie and when to retry) and of nothing else: its ECG model
/// is served, and the gateway stays ready.
fn only_the_liar(dir: &tempfile::TempDir, info: &Value, api: &str, liar_addr: &str, chat: &Value) {
    let only = gateway(dir.path(), "gw-only-liar", info, api, &[liar_addr], &["--probe-interval", "0"]);
    let (code, text) = only.post("/v1/chat/completions", chat);
    assert_eq!(code, 502, "caught, and nobody else to ask: {text}");
    assert!(text.contains(liar_addr) && text.contains("not"), "names the provider and what did not verify: {text}");
    let r = http().post(format!("{}/v1/chat/completions", only.base)).bearer_auth(&only.key).json(chat).send().unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=120).contains(&retry), "retry after its first strike's two minutes at most: {retry}");
    let body: Value = r.json().unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(liar_addr) && message.contains("not used for"), "{body}");
    assert_eq!(body["error"]["code"], "no_provider_available", "{body}");
    let ready = |path: &str| {
        http().get(format!("{}{path}", only.base)).bearer_auth(&only.key).send().unwrap().status().as_u16()
    };
    assert_eq!(ready("/v2/models/smollm2-135m-instruct/ready"), 503, "nobody may serve chat here now");
    assert_eq!(ready("/v2/models/ecg-heartbeat/ready"), 200);
    assert_eq!(ready("/v2/health/ready"), 200, "the gateway still serves other models");
    let (code, text) = only.post("/v2/models/ecg-heartbeat/infer", &beat());
    assert_eq!(code, 200, "the liar's other models are served as before: {text}");
    let standing = only.status()["standing"].clone();
    let entries = standing.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{standing}");
    assert_eq!(
        (entries[0]["provider"].as_str(), entries[0]["lies"].as_u64()),
        (Some(liar_addr), Some(1)),
        "{standing}"
    );
    assert!(entries[0]["shunned_for_s"].as_u64().unwrap() > 0, "{standing}");
}

#[test]
fn a_client_racing_past_its_credit_gets_no_more_than_the_credit() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("devnet");
    let credit = 200u64;
    let (_devnet, info) =
        start_devnet(&home, 1, &["--claim-interval", "2", "--threads", "1", "--credit-tokens", &credit.to_string()]);
    let api = info["nodes"][0]["api"].as_str().unwrap().to_string();
    let inference = info["nodes"][0]["inference"].as_str().unwrap().to_string();
    let provider: plexus_types::Address = info["nodes"][0]["address"].as_str().unwrap().parse().unwrap();
    let chain_id = get(&format!("{api}/chain/v1/status")).unwrap()["chain_id"].as_str().unwrap().to_string();
    let client = plexus_node::keyfile::load(Path::new(info["client"]["key_file"].as_str().unwrap())).unwrap();
    let record = get(&format!("{api}/chain/v1/providers/{provider}")).unwrap();
    let models = get(&format!("{api}/chain/v1/models")).unwrap();
    let chat_id =
        models["models"].as_array().unwrap().iter().find(|m| m["manifest"]["name"] == "smollm2-135m-instruct").unwrap()
            ["id"]
            .as_str()
            .unwrap()
            .to_string();
    let price: plexus_types::tx::ModelPrice = serde_json::from_value(
        record["prices"].as_array().unwrap().iter().find(|p| p["model"] == chat_id.as_str()).unwrap().clone(),
    )
    .unwrap();
    // Open a session and get a token, as a client that means not to pay.
    let nonce = get(&format!("{api}/chain/v1/accounts/{}", client.address())).unwrap()["next_nonce"].as_u64().unwrap();
    let height = height(&api).unwrap();
    let open = Transaction {
        signer: client.address(),
        nonce,
        fee: 1_000,
        payload: Payload::OpenSession {
            provider: provider.clone(),
            model: price.model,
            deposit: 5_000_000,
            max_input_per_1k: price.input_per_1k,
            max_output_per_1k: price.output_per_1k,
            expiry_height: height + 1_000,
        },
    }
    .sign(&client, &chain_id);
    let r = http()
        .post(format!("{api}/chain/v1/txs"))
        .json(&json!({ "tx": hex::encode(plexus_types::codec::to_vec(&open)) }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let session = plexus_execution::session_id(&client.address(), nonce);
    wait_for("the session opens", Duration::from_secs(30), || {
        get(&format!("{api}/chain/v1/sessions/{session}")).filter(|s| s["status"] == "open")
    });
    let proof =
        plexus_types::receipt::SessionAuth { session, provider: provider.clone(), nonce: 1 }.sign(&client, &chain_id);
    let to_provider = provider_http(&info["nodes"][0]);
    let token: Value = to_provider
        .post(format!("{inference}/plexus/v1/sessions/{session}/token"))
        .json(&json!({"nonce": 1, "signature": proof.to_string()}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = token["token"].as_str().unwrap_or_else(|| panic!("no token: {token}")).to_string();
    // Eight requests at once, each up to ~30 prompt + 64 output tokens, and no receipt ever.
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (inference, token, to_provider) = (inference.clone(), token.clone(), to_provider.clone());
            std::thread::spawn(move || {
                let body = json!({"model": "smollm2-135m-instruct", "max_tokens": 64, "temperature": 0.8, "seed": i,
                                   "messages": [{"role": "user", "content": "Tell me a long story."}]});
                let r = to_provider
                    .post(format!("{inference}/v1/chat/completions"))
                    .header("x-plexus-session", session.to_string())
                    .header("x-plexus-token", token)
                    .timeout(Duration::from_secs(180))
                    .json(&body)
                    .send()
                    .unwrap();
                r.status().as_u16()
            })
        })
        .collect();
    let codes: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let served = codes.iter().filter(|c| **c == 200).count();
    assert!(served >= 1 && codes.iter().all(|c| *c == 200 || *c == 402), "{codes:?}");
    assert!(served < 8, "a client that never pays cannot have eight requests served at once: {codes:?}");
    // What the provider delivered without a receipt: within the credit, or one request alone.
    let state = get_provider(&info["nodes"][0], &format!("/plexus/v1/sessions/{session}")).unwrap();
    let delivered =
        state["delivered_input_tokens"].as_u64().unwrap() + state["delivered_output_tokens"].as_u64().unwrap();
    let one_request = 64 + 64; // a generous bound on one request's prompt plus max_tokens
    assert!(delivered <= credit.max(one_request), "delivered {delivered} unpaid tokens, credit {credit}: {codes:?}");
    eprintln!("racing client: {served} of 8 served, {delivered} tokens delivered unpaid (credit {credit})");
}
