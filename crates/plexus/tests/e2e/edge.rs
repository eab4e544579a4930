//! Edge tensor models as users run them: `plexus devnet up` serves the three edge models, and
//! a client calls them through `plexus gateway` with the Open Inference Protocol (KServe v2).
//! The gateway counts the rows itself and pays per inference; the chain settles exactly its
//! receipts. A gateway restricted to a region opens sessions restricted to it on chain and is
//! answered only from inside it.

use std::time::Duration;

use plexus_inference::models::{ModelCache, Progress};
use serde_json::{Value, json};

use crate::util::*;

/// `rows` of `v` (a JSON array of arrays of numbers).
fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

/// The held-out samples the model's training script recorded, with onnxruntime's outputs.
fn samples(name: &str) -> Value {
    let m = ModelCache::from_env().pull(name, Progress::Hide).unwrap_or_else(|e| panic!("pull {name}: {e}"));
    let heldout: Value = serde_json::from_slice(&std::fs::read(m.dir.join("heldout.json")).unwrap()).unwrap();
    heldout["samples"].clone()
}

fn infer_body(input: &str, batch: &[Vec<f32>], outputs: Option<&[&str]>) -> Value {
    let width = batch[0].len();
    let mut body = json!({
        "id": "e2e",
        "inputs": [{ "name": input, "shape": [batch.len(), width], "datatype": "FP32", "data": batch }],
    });
    if let Some(names) = outputs {
        body["outputs"] = names.iter().map(|n| json!({ "name": n })).collect();
    }
    body
}

/// Within the tolerance the training script records: tract and onnxruntime order float
/// operations differently (and by SIMD width), so equal to rounding, not bit for bit.
fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-3 + 1e-4 * b.abs()
}

#[test]
fn tensor_models_are_paid_per_inference_through_the_gateway_and_stay_in_their_region() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("devnet");
    let (devnet, info) = start_devnet(&home, 2, &["--claim-interval", "2", "--threads", "1"]);
    let api = info["nodes"][0]["api"].as_str().unwrap().to_string();
    let gw = Gw::running(info["gateway"]["url"].as_str().unwrap(), info["gateway"]["api_key"].as_str().unwrap());

    // Metadata through the gateway: the model's inputs, from one of its providers.
    let meta: Value = http()
        .get(format!("{}/v2/models/ecg-heartbeat", gw.base))
        .bearer_auth(&gw.key)
        .timeout(Duration::from_secs(60))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(meta["inputs"][0]["name"], "ecg_window", "{meta}");
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 256]), "{meta}");
    let output = meta["outputs"][0]["name"].as_str().unwrap().to_string();

    // Eight held-out heartbeats, one output asked for: the answer is onnxruntime's, and the
    // gateway says what it paid for.
    let ecg = samples("ecg-heartbeat");
    let beats = rows(&ecg["inputs"]);
    let (code, provider, text) = gw
        .post_full("/v2/models/ecg-heartbeat/infer", &infer_body("ecg_window", &beats[..8], Some(&[output.as_str()])));
    assert_eq!(code, 200, "{text}");
    assert!(!provider.is_empty(), "the answer names its provider");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["id"], "e2e");
    assert_eq!(answer["outputs"].as_array().unwrap().len(), 1, "only the output asked for: {answer}");
    assert_eq!(answer["parameters"]["plexus_inferences"], 8);
    let got = &answer["outputs"][0];
    assert_eq!(got["name"], output.as_str());
    let width = got["shape"][1].as_u64().unwrap() as usize;
    assert_eq!(got["shape"], json!([8, width]));
    let want = rows(&ecg["expected"][&output]);
    let data: Vec<f32> = got["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    for (i, row) in data.chunks(width).enumerate() {
        for (a, b) in row.iter().zip(&want[i]) {
            assert!(close(*a, *b), "row {i}: {a} through the gateway, {b} from onnxruntime");
        }
    }

    // A bad tensor is refused with the protocol's error and costs nothing.
    let paid_before = gw.status()["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["cum_output_tokens"].as_u64().unwrap())
        .sum::<u64>();
    let short: Vec<Vec<f32>> = vec![beats[0][..255].to_vec()];
    let (code, _, text) = gw.post_full("/v2/models/ecg-heartbeat/infer", &infer_body("ecg_window", &short, None));
    assert_eq!(code, 400, "{text}");
    assert!(serde_json::from_str::<Value>(&text).unwrap()["error"].is_string(), "{text}");
    let (code, _, text) = gw.post_full("/v2/models/smollm2-135m-instruct/infer", &infer_body("x", &short, None));
    assert_eq!(code, 400, "a text model is not a tensor model: {text}");
    let paid_after = gw.status()["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["cum_output_tokens"].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(paid_before, paid_after, "nothing is paid for refused requests");

    // The two other models, a batch each.
    for (name, input, n) in [("demand-forecast", "demand_history", 5), ("traffic-anomaly", "traffic_window", 3)] {
        let s = samples(name);
        let input_name = s["input_name"].as_str().unwrap_or(input).to_string();
        let (code, _, text) =
            gw.post_full(&format!("/v2/models/{name}/infer"), &infer_body(&input_name, &rows(&s["inputs"])[..n], None));
        assert_eq!(code, 200, "{name}: {text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["parameters"]["plexus_inferences"], n, "{name}: {answer}");
    }

    // Data residency: a gateway restricted to devnet-1 opens its session restricted to it on
    // chain, and only node-1 (in devnet-1) answers.
    let node1 = info["nodes"][1]["address"].as_str().unwrap().to_string();
    let eu = gateway(dir.path(), "gw-devnet-1", &info, &api, &[], &["--region", "devnet-1"]);
    for _ in 0..3 {
        let (code, provider, text) =
            eu.post_full("/v2/models/ecg-heartbeat/infer", &infer_body("ecg_window", &beats[8..12], None));
        assert_eq!(code, 200, "{text}");
        assert_eq!(provider, node1, "only the provider in devnet-1 may answer");
    }
    let nowhere = gateway(dir.path(), "gw-mars", &info, &api, &[], &["--region", "mars"]);
    let (code, _, text) =
        nowhere.post_full("/v2/models/ecg-heartbeat/infer", &infer_body("ecg_window", &beats[..1], None));
    assert_eq!(code, 404, "no provider in that region: {text}");

    // Triton's own client through the gateway: binary tensors in and out, verified and paid
    // like JSON ones.
    let ecg_dir = ModelCache::from_env().pull("ecg-heartbeat", Progress::Hide).unwrap().dir;
    let triton = kserve_python(&gw.base, "ecg-heartbeat", &ecg_dir.join("heldout.json"), &gw.key);

    // Both gateways close their sessions; the chain settles exactly their receipts.
    let mut sessions = Vec::new();
    for g in [&gw, &eu] {
        g.close();
        sessions.extend(g.status()["sessions"].as_array().unwrap().iter().map(|s| (g.base.clone(), s.clone())));
    }
    assert!(sessions.len() >= 4, "a session per model, and the restricted one: {sessions:?}");
    wait_for("every session settled, closed and refunded", Duration::from_secs(180), || {
        sessions
            .iter()
            .all(|(_, s)| {
                get(&format!("{api}/chain/v1/sessions/{}", s["id"].as_str().unwrap())).unwrap()["status"] == "closed"
            })
            .then_some(())
    });
    let mut inferences = 0;
    for (base, s) in &sessions {
        let id = s["id"].as_str().unwrap();
        let chain = get(&format!("{api}/chain/v1/sessions/{id}")).unwrap();
        assert_eq!(chain["settled_input_tokens"], 0, "tensor models have no input tokens: {chain}");
        assert_eq!(chain["settled_output_tokens"], s["cum_output_tokens"], "{chain} vs {s}");
        assert_eq!(amount(&chain["settled_amount"]), amount(&s["cum_amount"]), "{chain} vs {s}");
        // 2,000 base units per 1,000 inferences (the devnet's price), rounded up per session.
        let rows = chain["settled_output_tokens"].as_u64().unwrap();
        assert_eq!(amount(&chain["settled_amount"]), (u128::from(rows) * 2_000).div_ceil(1_000), "{chain}");
        assert_eq!(amount(&chain["refunded"]), amount(&chain["deposit"]) - amount(&chain["settled_amount"]));
        if base == &eu.base {
            assert_eq!(chain["regions"], json!(["devnet-1"]), "the restriction is on chain: {chain}");
            assert_eq!(chain["provider"], node1.as_str());
        } else {
            assert!(chain.get("regions").is_none(), "{chain}");
        }
        inferences += rows;
    }
    assert_eq!(inferences, 8 + 5 + 3 + 3 * 4 + triton, "every inference made was paid, and nothing else");
    assert_eq!(get(&format!("{api}/chain/v1/supply")).unwrap()["conserved"], true);
    drop(devnet);
}
