//! Verified inference as a user runs it: a devnet where one provider serves a cheaper model (the
//! real SmolLM2 with its last blocks dropped, made by `scripts/make-substitute.py`) under the
//! real model's id. A gateway auditing every generation re-runs them on its own copy, challenges
//! the substitute's on chain, the committee (the honest validator, re-running the transcript)
//! convicts, the cheater's stake is slashed to the base unit, the client is refunded and
//! rewarded, and no gateway routes to the cheater again; the honest provider, audited under the
//! same load, is never challenged. The same holds for a provider that serves the real model but
//! ignores a request's penalties and logit biases (cheaper sampling, under the asked request's
//! hash): the audit applies them, the challenge's transcript carries them (execution v7), and
//! the committee convicts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::*;

/// The cached SmolLM2 GGUF, as `plexus model list` reports it.
fn smollm2_gguf() -> PathBuf {
    let out = plexus().args(["model", "list", "--json"]).output().unwrap();
    assert!(out.status.success(), "plexus model list: {}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = list.as_array().unwrap().iter().find(|m| m["name"] == "smollm2-135m-instruct").expect("smollm2 pulled");
    Path::new(m["dir"].as_str().unwrap()).join(m["files"]["gguf"].as_str().unwrap())
}

/// A layer-dropped copy of `gguf` in `dir`, made by the repo's script.
fn substitute(gguf: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("substitute.gguf");
    let python = std::env::var_os("PLEXUS_PYTHON").unwrap_or_else(|| "python3".into());
    let script = manifest_dir().join("../../scripts/make-substitute.py");
    let status = Command::new(python).arg(script).arg(gguf).arg(&out).status().unwrap();
    assert!(status.success(), "make-substitute.py failed (needs the gguf package; ./scripts/test installs it)");
    out
}

fn audits(gw: &Gw) -> Value {
    gw.status()["audits"].clone()
}

#[test]
fn a_provider_serving_a_substitute_model_is_convicted_slashed_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let cheap = substitute(&smollm2_gguf(), dir.path());
    let cheap = cheap.to_str().unwrap().to_string();
    cheater_is_convicted(dir, ("PLEXUS_SUBSTITUTE", &cheap), json!({}));
}

#[test]
fn a_provider_ignoring_penalties_and_logit_biases_is_convicted() {
    // The bias bans SmolLM2's commonest English tokens (".", ",", " the", " a", " and", " to",
    // " of"), about a quarter of a story's: every one the unpenalised sampler writes is a
    // position the honest one could not have picked. Penalties on top change more.
    let banned: serde_json::Map<String, Value> =
        [30, 28, 260, 253, 284, 288, 282].iter().map(|t: &u32| (t.to_string(), json!(-100))).collect();
    let adjust = json!({"presence_penalty": 1.5, "frequency_penalty": 1.0, "logit_bias": banned});
    cheater_is_convicted(tempfile::tempdir().unwrap(), ("PLEXUS_DISHONEST", "unpenalised"), adjust);
}

/// A two-provider devnet whose second provider is restarted with `lie` set; a gateway auditing
/// every response sends chats (with `extra` in each body) to both until it challenges one. The
/// cheater is convicted, slashed to the base unit and dropped; the honest one never.
fn cheater_is_convicted(dir: tempfile::TempDir, lie: (&str, &str), extra: Value) {
    let home = dir.path().join("devnet");
    let (_devnet, info) = start_devnet(&home, 2, &["--claim-interval", "2", "--threads", "1"]);
    let nodes = info["nodes"].as_array().unwrap().clone();
    let (honest, cheater) = (&nodes[0], &nodes[1]);
    let honest_addr = honest["address"].as_str().unwrap().to_string();
    let cheater_addr = cheater["address"].as_str().unwrap().to_string();
    let api = honest["api"].as_str().unwrap().to_string();
    let client_addr = info["client"]["address"].as_str().unwrap().to_string();

    stop(cheater["pid"].as_u64().unwrap());
    let _cheater = restart_with(cheater, lie.0, lie.1);
    let bonded_before = amount(&get(&format!("{api}/chain/v1/accounts/{cheater_addr}")).unwrap()["bonded"]);

    // A gateway that audits everything, sending each request to either provider.
    let gw = gateway(dir.path(), "gw-audit", &info, &api, &[&honest_addr, &cheater_addr], &["--audit-rate", "1"]);
    let prompts = [
        "Write a short story about a robot who learns to paint.",
        "Describe a walk through a forest in autumn.",
        "Explain why the sky is blue to a child.",
        "Write a letter to a friend about your holiday by the sea.",
        "Tell me about the history of bread.",
    ];
    let chat = |i: usize, stream: bool| {
        let mut body = json!({"model": "smollm2-135m-instruct", "temperature": 0.7, "max_tokens": 40, "stream": stream,
               "messages": [{"role": "user", "content": prompts[i % prompts.len()]}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let mut challenged = false;
    for i in 0..40 {
        let (code, text) = gw.post("/v1/chat/completions", &chat(i, i % 3 == 2));
        assert_eq!(code, 200, "request {i}: {text}");
        // Audits run beside serving; give the queue a moment, then look.
        let a = wait_for("the audit of the last request", Duration::from_secs(60), || {
            let a = audits(&gw);
            let c = &a["counts"];
            let done = ["passed", "faulty", "inconclusive", "errors", "dropped"]
                .iter()
                .map(|k| c[k].as_u64().unwrap_or(0))
                .sum::<u64>();
            (done > i as u64).then_some(a)
        });
        assert_eq!(a["counts"]["errors"], 0, "audits run: {a}");
        if a["counts"]["challenged"].as_u64().unwrap_or(0) > 0 {
            eprintln!("challenged after {} requests: {}", i + 1, a["counts"]);
            challenged = true;
            break;
        }
    }
    assert!(challenged, "the substitute was never challenged: {}", audits(&gw));
    let a = audits(&gw);
    for f in a["recent"].as_array().unwrap() {
        if f["provider"] == honest_addr.as_str() {
            assert_ne!(f["verdict"], "faulty", "an honest response judged faulty: {f}");
        }
    }

    // The committee (the honest validator) re-runs it and convicts.
    let challenge = wait_for("the committee's verdict", Duration::from_secs(180), || {
        let list = get(&format!("{api}/chain/v1/challenges?provider={cheater_addr}"))?;
        let all = list["challenges"].as_array()?;
        assert!(all.len() <= 1, "one audit, one challenge: {list}");
        let c = all.first()?.clone();
        (c["status"] != "open").then_some(c)
    });
    assert_eq!(challenge["status"], "convicted", "{challenge}");
    assert_eq!(challenge["challenger"], client_addr.as_str());
    assert_eq!(challenge["votes"], json!([[honest_addr, true]]), "{challenge}");
    let (slashed, refunded, reward) =
        (amount(&challenge["slashed"]), amount(&challenge["refunded"]), amount(&challenge["reward"]));
    let params = get(&format!("{api}/chain/v1/params")).unwrap();
    let slash_bps = amount(&params["fault_slash_bps"]);
    let reward_bps = amount(&params["challenger_reward_bps"]);
    assert_eq!(slashed, bonded_before / 10_000 * slash_bps + bonded_before % 10_000 * slash_bps / 10_000);
    assert!(refunded > 0, "the client is refunded the faulty request: {challenge}");
    let rest = slashed - refunded;
    assert_eq!(reward, rest / 10_000 * reward_bps + rest % 10_000 * reward_bps / 10_000);

    // The cheater's record: its stake less exactly what was slashed, one failed audit.
    let record = get(&format!("{api}/chain/v1/providers/{cheater_addr}")).unwrap();
    assert_eq!(amount(&record["bonded"]), bonded_before - slashed, "{record}");
    assert_eq!(record["stats"]["convicted"], 1, "{record}");
    assert_eq!(amount(&record["stats"]["slashed"]), slashed);
    let out = plexus().args(["query", "provider", &cheater_addr, "--node", &api]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("0 passed, 1 failed"), "{shown}");
    assert!(shown.contains("convicted"), "{shown}");
    eprintln!("plexus query provider {cheater_addr}:\n{shown}");
    let supply = get(&format!("{api}/chain/v1/supply")).unwrap();
    assert_eq!(supply["conserved"], true, "{supply}");

    // No gateway routes to it again: this one shunned it at the audit, and a new one, with no
    // memory of its own, reads the conviction on chain.
    let fresh = gateway(dir.path(), "gw-fresh", &info, &api, &[], &[]);
    for (g, name) in [(&gw, "the auditing gateway"), (&fresh, "a new gateway")] {
        for i in 0..6 {
            let (code, provider, text) = g.post_full("/v1/chat/completions", &chat(i, false));
            assert_eq!(code, 200, "{name}: {text}");
            assert_eq!(provider, honest_addr, "{name} routed to the convicted provider");
        }
    }

    // The honest provider, audited all along by the first gateway (every response since the
    // conviction was its): never found faulty, never challenged.
    let a = wait_for("the last audits", Duration::from_secs(120), || {
        let a = audits(&gw);
        (a["counts"]["passed"].as_u64().unwrap_or(0) + a["counts"]["inconclusive"].as_u64().unwrap_or(0) >= 7)
            .then_some(a)
    });
    eprintln!("audits: {}", a["counts"]);
    assert_eq!(a["counts"]["faulty"], 1, "{a}");
    for f in a["recent"].as_array().unwrap() {
        if f["provider"] == honest_addr.as_str() {
            assert_ne!(f["verdict"], "faulty", "an honest response judged faulty: {f}");
        }
    }
    // The honest provider: never challenged.
    let honest_challenges = get(&format!("{api}/chain/v1/challenges?provider={honest_addr}")).unwrap();
    assert_eq!(honest_challenges["challenges"], json!([]), "{honest_challenges}");
    assert_eq!(get(&format!("{api}/chain/v1/providers/{honest_addr}")).unwrap()["stats"]["convicted"], 0);
}
