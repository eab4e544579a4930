//! End to end: the real `plexus serve` binary with the real models on a free loopback port,
//! driven over HTTP by hand and by the official OpenAI Python SDK
//! (`tests/python/openai_e2e.py`; needs `pip install openai`).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plexus_inference::models::{ModelCache, Progress};
use plexus_types::{Address, Attestation, PrivateKey, Sig};
use serde_json::{Value, json};

const CHAT: &str = "smollm2-135m-instruct";
const EMBED: &str = "all-minilm-l6-v2";

/// Model tests in other processes take the same lock: two llama.cpp engines spinning at once on
/// a small machine slow each other down many times over.
fn serial() -> std::fs::File {
    let dir = ModelCache::from_env().root().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(".test-lock")).unwrap();
    f.lock().unwrap();
    f
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `plexus serve`, killed on drop.
struct Serve {
    child: Child,
    base: String,
    _key_dir: tempfile::TempDir,
    provider: Address,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Serve {
    // The binary would pull missing models itself; pulling here first keeps the timeout below
    // about starting, not downloading.
    let cache = ModelCache::from_env();
    cache.pull(CHAT, Progress::Hide).unwrap();
    cache.pull(EMBED, Progress::Hide).unwrap();
    let key_dir = tempfile::tempdir().unwrap();
    let key = PrivateKey::from_seed(7);
    let key_path = key_dir.path().join("provider.key");
    plexus_node::keyfile::save(&key_path, &key).unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args(["serve", "-m", CHAT, "-m", EMBED, "--port", &port.to_string(), "--threads", "2", "--key"])
        .arg(&key_path)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Keep draining the log so the child never blocks on a full pipe; echo it for failures.
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[plexus serve] {line}");
        }
    });
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if reqwest::blocking::get(format!("{base}/health")).is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("plexus serve exited early with {status}");
        }
        assert!(Instant::now() < deadline, "plexus serve did not become healthy");
        std::thread::sleep(Duration::from_millis(200));
    }
    Serve { child, base, _key_dir: key_dir, provider: key.address() }
}

fn post(base: &str, path: &str, body: &Value) -> reqwest::blocking::Response {
    reqwest::blocking::Client::new()
        .post(format!("{base}{path}"))
        .json(body)
        .timeout(Duration::from_secs(120))
        .send()
        .unwrap()
}

fn assert_openai_error(r: reqwest::blocking::Response, status: u16, param: Option<&str>) -> Value {
    assert_eq!(r.status().as_u16(), status);
    let body: Value = r.json().unwrap();
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(e["type"].is_string(), "{body}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{body}");
    }
    body
}

fn check_attestation(att: &Attestation, sig: &Sig, provider: &Address, output: &str, completion_tokens: u32) {
    assert!(att.verify(provider, sig, plexus_serve::STANDALONE_CHAIN_ID), "the attestation signature must verify");
    assert_eq!(att.output_hash, plexus_types::hash(output.as_bytes()));
    assert_eq!(att.output_tokens, completion_tokens);
}

#[test]
fn openai_api_end_to_end() {
    let _serial = serial();
    let s = start(&[]);
    let chat_model = ModelCache::from_env().find(CHAT).unwrap().unwrap();

    // Non-streaming chat: golden text, signed attestation in headers.
    let r = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"model": CHAT, "messages": [{"role": "user", "content": "What is 2 plus 2?"}], "temperature": 0, "max_tokens": 24}),
    );
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let body: Value = r.json().unwrap();
    let text = body["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    assert_eq!(text, "The answer to this classic math problem is 4.");
    assert_eq!(h["x-plexus-model-id"].to_str().unwrap(), chat_model.id.to_string());
    assert_eq!(h["x-plexus-provider"].to_str().unwrap(), s.provider.to_string());
    let att_bytes = hex::decode(h["x-plexus-attestation"].to_str().unwrap()).unwrap();
    let att: Attestation = plexus_types::codec::decode_bounded(&att_bytes, 1024, &()).unwrap();
    let sig: Sig = h["x-plexus-signature"].to_str().unwrap().parse().unwrap();
    check_attestation(&att, &sig, &s.provider, &text, 12);
    assert_eq!(att.model, chat_model.id);
    assert_eq!(att.input_tokens as u64, body["usage"]["prompt_tokens"].as_u64().unwrap());
    assert_ne!(att.logits_fingerprint, plexus_types::Hash::ZERO);

    // Streaming: the attestation is in the final chunk and covers the streamed text.
    let r = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"model": CHAT, "messages": [{"role": "user", "content": "What is 2 plus 2?"}], "temperature": 0,
                "max_tokens": 24, "stream": true}),
    );
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut streamed = String::new();
    let mut plexus = Value::Null;
    let mut done = false;
    for line in r.text().unwrap().lines() {
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        if let Some(c) = chunk["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(c);
        }
        if !chunk["plexus"].is_null() {
            plexus = chunk["plexus"].clone();
        }
    }
    assert!(done);
    assert_eq!(streamed, text);
    let att: Attestation = serde_json::from_value(plexus["attestation"].clone()).unwrap();
    let sig: Sig = plexus["signature"].as_str().unwrap().parse().unwrap();
    check_attestation(&att, &sig, &s.provider, &streamed, 12);
    assert_eq!(plexus["attestation_hex"].as_str().unwrap(), hex::encode(plexus_types::codec::to_vec(&att)));

    // Continuing a delivered prefix (how a gateway resumes a stream elsewhere).
    let r = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"model": CHAT, "temperature": 0, "max_tokens": 24, "continue_final_message": true,
                "messages": [{"role": "user", "content": "What is 2 plus 2?"},
                             {"role": "assistant", "content": "The answer to this classic"}]}),
    );
    let body: Value = r.json().unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], " math problem is 4.");

    // Embeddings carry an attestation too.
    let r = post(&s.base, "/v1/embeddings", &json!({"model": EMBED, "input": ["hello world"]}));
    assert_eq!(r.status(), 200);
    let att_bytes = hex::decode(r.headers()["x-plexus-attestation"].to_str().unwrap()).unwrap();
    let att: Attestation = plexus_types::codec::decode_bounded(&att_bytes, 1024, &()).unwrap();
    let sig: Sig = r.headers()["x-plexus-signature"].to_str().unwrap().parse().unwrap();
    assert!(att.verify(&s.provider, &sig, plexus_serve::STANDALONE_CHAIN_ID));
    let body: Value = r.json().unwrap();
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 384);
    assert_eq!(att.input_tokens, 4, "[CLS] hello world [SEP]");

    // Bad input: OpenAI-style JSON errors with 4xx, and the server keeps serving.
    let client = reqwest::blocking::Client::new();
    let r = client.post(format!("{}/v1/chat/completions", s.base)).body("{not json").send().unwrap();
    assert_openai_error(r, 400, None);
    let r = post(&s.base, "/v1/chat/completions", &json!({"model": CHAT, "messages": []}));
    assert_openai_error(r, 400, Some("messages"));
    let r = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100_000_000u64}),
    );
    let body = assert_openai_error(r, 400, Some("max_tokens"));
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    let r = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}]}),
    );
    let body = assert_openai_error(r, 404, Some("model"));
    assert_eq!(body["error"]["code"], "model_not_found");
    let r = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"model": CHAT, "messages": [{"role": "wizard", "content": "hi"}]}),
    );
    assert_openai_error(r, 400, Some("messages"));
    let r = post(
        &s.base,
        "/v1/chat/completions",
        &json!({"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "n": 9}),
    );
    assert_openai_error(r, 400, Some("n"));
    let r = post(&s.base, "/v1/embeddings", &json!({"model": CHAT, "input": "hi"}));
    assert_openai_error(r, 400, Some("model"));
    let r = post(&s.base, "/v1/embeddings", &json!({"model": EMBED, "input": [[1, 2, 3]]}));
    assert_openai_error(r, 400, Some("input"));
    let huge = "a".repeat(5 << 20);
    let r =
        post(&s.base, "/v1/chat/completions", &json!({"model": CHAT, "messages": [{"role": "user", "content": huge}]}));
    assert_openai_error(r, 413, None);
    let r = client.get(format!("{}/v2/nothing", s.base)).send().unwrap();
    assert_openai_error(r, 404, None);

    // Models and metrics.
    let models: Value = client.get(format!("{}/v1/models", s.base)).send().unwrap().json().unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![CHAT, EMBED]);
    assert_eq!(models["data"][0]["plexus"]["model_id"], chat_model.id.to_string());
    let metrics = client.get(format!("{}/metrics", s.base)).send().unwrap().text().unwrap();
    for name in [
        "plexus_inference_time_to_first_token_seconds_count",
        "plexus_inference_inter_token_latency_seconds_bucket",
        "plexus_inference_completion_tokens_total",
        "plexus_inference_queue_depth",
        "plexus_inference_batch_sequences",
        "plexus_serve_errors_total{kind=\"bad_request\"}",
        "plexus_serve_errors_total{kind=\"too_large\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }

    // The official SDK.
    run_python(&s.base);
}

fn run_python(base: &str) {
    let script = crate::util::manifest_dir().join("tests/python/openai_e2e.py");
    let python = std::env::var_os("PLEXUS_PYTHON").map(PathBuf::from).unwrap_or_else(|| "python3".into());
    let out = Command::new(&python)
        .arg(&script)
        .args([format!("{base}/v1"), CHAT.to_owned(), EMBED.to_owned()])
        .output()
        .expect("run python3 (install Python 3 and `pip install openai`)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openai_e2e.py failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("openai e2e: OK"), "{stdout}");
}

#[test]
fn full_queue_answers_429_with_retry_after() {
    let _serial = serial();
    let s = start(&["--parallel", "1", "--queue", "1", "--ctx", "1024"]);
    let body = json!({"model": CHAT, "messages": [{"role": "user", "content": "Write a very long essay about Rome."}],
                      "temperature": 0, "max_tokens": 300});
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let base = s.base.clone();
            let body = body.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150 * i));
                let r = post(&base, "/v1/chat/completions", &body);
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                (r.status().as_u16(), retry, r.text().unwrap())
            })
        })
        .collect();
    let results: Vec<(u16, Option<String>, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert!(ok >= 2, "one running and one queued succeed: {results:?}");
    assert!(!busy.is_empty(), "{results:?}");
    for (_, retry, text) in busy {
        assert_eq!(retry.as_deref(), Some("1"));
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
    }
}

/// The Open Inference Protocol (KServe v2) on `plexus serve` with the real ECG model: metadata,
/// a batch inference whose answer matches the held-out reference and is attested, flat and
/// nested data alike, and a 4xx with a reason for every bad tensor.
#[test]
fn kserve_v2_end_to_end_with_the_ecg_model() {
    const ECG: &str = "ecg-heartbeat";
    let cache = ModelCache::from_env();
    let model = cache.pull(ECG, Progress::Hide).unwrap();
    let heldout: Value = serde_json::from_slice(&std::fs::read(model.dir.join("heldout.json")).unwrap()).unwrap();
    let key_dir = tempfile::tempdir().unwrap();
    let key = PrivateKey::from_seed(8);
    let key_path = key_dir.path().join("provider.key");
    plexus_node::keyfile::save(&key_path, &key).unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args(["serve", "-m", ECG, "--port", &port.to_string(), "--key"])
        .arg(&key_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Serve { child, base: format!("http://127.0.0.1:{port}"), _key_dir: key_dir, provider: key.address() };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::blocking::get(format!("{}/v2/health/ready", s.base)).is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "plexus serve did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    let meta: Value = reqwest::blocking::get(format!("{}/v2/models/{ECG}", s.base)).unwrap().json().unwrap();
    assert_eq!(meta["name"], ECG);
    assert_eq!(meta["versions"][0], model.id.to_string());
    assert_eq!(meta["inputs"][0]["name"], "ecg_window");
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 256]));
    assert_eq!(meta["parameters"]["labels"], json!(["normal", "abnormal_morphology"]));
    let ready: Value = reqwest::blocking::get(format!("{}/v2/models/{ECG}/ready", s.base)).unwrap().json().unwrap();
    assert_eq!(ready["ready"], true);

    // A batch of 8 held-out beats, nested as the shape, asking for `probs` only.
    let rows: Vec<Value> = heldout["samples"]["inputs"].as_array().unwrap()[..8].to_vec();
    let body = json!({"id": "beat-1", "inputs": [{"name": "ecg_window", "shape": [8, 256], "datatype": "FP32", "data": rows}],
                      "outputs": [{"name": "probs"}]});
    let r = post(&s.base, &format!("/v2/models/{ECG}/infer"), &body);
    assert_eq!(r.status(), 200);
    let att_hex = r.headers()["x-plexus-attestation"].to_str().unwrap().to_owned();
    let sig: Sig = r.headers()["x-plexus-signature"].to_str().unwrap().parse().unwrap();
    let out: Value = r.json().unwrap();
    assert_eq!(out["id"], "beat-1");
    assert_eq!(out["model_version"], model.id.to_string());
    assert_eq!(out["outputs"].as_array().unwrap().len(), 1, "only the requested output");
    assert_eq!(out["outputs"][0]["name"], "probs");
    assert_eq!(out["outputs"][0]["shape"], json!([8, 2]));
    let got: Vec<f64> = out["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let want: Vec<f64> = heldout["samples"]["expected"]["probs"].as_array().unwrap()[..8]
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    // tract vs onnxruntime: different summation order, so a tolerance, not equality.
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-3, "probs {g} vs onnxruntime {w}");
    }
    let att: Attestation =
        plexus_types::codec::decode_bounded(&hex::decode(att_hex).unwrap(), 1024, &()).expect("attestation decodes");
    assert!(att.verify(&s.provider, &sig, plexus_serve::STANDALONE_CHAIN_ID));
    assert_eq!((att.model, att.input_tokens, att.output_tokens), (model.id, 0, 8), "one inference per row");

    // The same rows flat give the same answer.
    let flat: Vec<Value> = rows.iter().flat_map(|r| r.as_array().unwrap().clone()).collect();
    let body = json!({"inputs": [{"name": "ecg_window", "shape": [8, 256], "datatype": "FP32", "data": flat}]});
    let out: Value = post(&s.base, &format!("/v2/models/{ECG}/infer"), &body).json().unwrap();
    let probs = out["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "probs").unwrap();
    let again: Vec<f64> = probs["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(again, got, "same process, same batch: the same numbers");

    // Bad tensors: a 4xx with the protocol's {"error": ...}, nothing computed.
    let one: Vec<Value> = rows[0].as_array().unwrap().clone();
    let mut nan = one.clone();
    nan[3] = Value::Null;
    let many: Vec<Value> = (0..65).flat_map(|_| one.clone()).collect();
    for (body, status, want) in [
        (
            json!({"inputs": [{"name": "ecg_window", "shape": [1, 128], "datatype": "FP32", "data": one[..128]}]}),
            400,
            "does not match",
        ),
        (
            json!({"inputs": [{"name": "ecg_window", "shape": [1, 256], "datatype": "INT32", "data": one}]}),
            400,
            "not an integer",
        ),
        (json!({"inputs": [{"name": "ecg_window", "shape": [1, 256], "datatype": "FP32", "data": nan}]}), 400, "null"),
        (
            json!({"inputs": [{"name": "ecg_window", "shape": [65, 256], "datatype": "FP32", "data": many}]}),
            400,
            "1 to 64",
        ),
        (
            json!({"inputs": [{"name": "lead_ii", "shape": [1, 256], "datatype": "FP32", "data": one}]}),
            400,
            "ecg_window",
        ),
        (
            json!({"inputs": [{"name": "ecg_window", "shape": [1, 256], "datatype": "FP32", "data": one}], "outputs": [{"name": "nope"}]}),
            400,
            "no output",
        ),
    ] {
        let r = post(&s.base, &format!("/v2/models/{ECG}/infer"), &body);
        assert_eq!(r.status().as_u16(), status, "{want}");
        let e: Value = r.json().unwrap();
        assert!(e["error"].as_str().is_some_and(|m| m.contains(want)), "{want}: {e}");
    }
    let r = post(&s.base, "/v2/models/no-such-model/infer", &json!({"inputs": []}));
    assert_eq!(r.status(), 404);

    // Metrics count the inferences per model: 8 + 8 rows, none from the refused requests.
    let text = reqwest::blocking::get(format!("{}/metrics", s.base)).unwrap().text().unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("plexus_inference_tensor_inferences_total{model=\"ecg-heartbeat\"}"))
        .unwrap();
    assert!(line.ends_with(" 16"), "{line}");

    // Triton's own client, binary tensors and all: the same answers as JSON requests.
    let triton = crate::util::kserve_python(&s.base, ECG, &model.dir.join("heldout.json"), "");
    let text = reqwest::blocking::get(format!("{}/metrics", s.base)).unwrap().text().unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("plexus_inference_tensor_inferences_total{model=\"ecg-heartbeat\"}"))
        .unwrap();
    assert!(line.ends_with(&format!(" {}", 16 + triton)), "refused requests infer nothing: {line}");
}
