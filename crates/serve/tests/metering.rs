//! The metering hook with the real SmolLM2 engine behind the router: refusal before any work,
//! credit running out mid-generation, and a signed record of what was delivered.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_inference::models::{ModelCache, Progress};
use plexus_inference::{EngineConfig, LlamaConfig, load_engine};
use plexus_serve::{Endpoint, MeterRequest, MeterTicket, Metering, ServeError, Server, Usage};
use plexus_types::{Attestation, PrivateKey, Sig};
use serde_json::{Value, json};

fn serial() -> std::fs::File {
    let dir = ModelCache::from_env().root().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(".test-lock")).unwrap();
    f.lock().unwrap();
    f
}

/// Refuses requests without `x-session`, and allows at most `credit` output tokens.
struct Credit {
    credit: u32,
    seen: Mutex<Vec<(Endpoint, u32, u32)>>,
    finished: Mutex<Vec<(Usage, Attestation, Sig)>>,
}

impl Metering for Credit {
    fn begin(&self, req: &MeterRequest<'_>) -> Result<MeterTicket, ServeError> {
        if !req.headers.contains_key("x-session") {
            return Err(ServeError::PaymentRequired("open a session first".into()));
        }
        self.seen.lock().unwrap().push((req.endpoint, req.prompt_tokens, req.max_tokens));
        Ok(MeterTicket { request_id: req.request_id, data: Some(Box::new(String::from("session-1"))) })
    }

    fn progress(&self, ticket: &MeterTicket, _input: u32, output: u32) -> Result<(), ServeError> {
        let session = ticket.data.as_ref().and_then(|d| d.as_any().downcast_ref::<String>());
        assert_eq!(session.map(String::as_str), Some("session-1"));
        if output > self.credit {
            return Err(ServeError::PaymentRequired(format!("credit of {} tokens used up", self.credit)));
        }
        Ok(())
    }

    fn finish(&self, _ticket: MeterTicket, usage: &Usage, attestation: &Attestation, signature: &Sig) {
        self.finished.lock().unwrap().push((*usage, attestation.clone(), signature.clone()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metering_admits_stops_and_records_signed_usage() {
    let _serial = serial();
    let model = ModelCache::from_env().pull("smollm2-135m-instruct", Progress::Hide).unwrap();
    let config = EngineConfig {
        llama: LlamaConfig {
            threads: std::num::NonZeroU32::new(2).unwrap(),
            threads_batch: std::num::NonZeroU32::new(2).unwrap(),
            ..LlamaConfig::default()
        },
        ..EngineConfig::default()
    };
    let engine = tokio::task::spawn_blocking(move || load_engine(&model, &config).unwrap()).await.unwrap();
    let metering = Arc::new(Credit { credit: 20, seen: Mutex::default(), finished: Mutex::default() });
    let key = PrivateKey::from_seed(9);
    let router = Server::new(key.clone(), vec![engine]).with_metering(metering.clone()).router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(plexus_serve::serve(listener, router, async {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    let ask = |max_tokens: u32, session: bool, stream: bool| {
        let mut r = client.post(format!("{base}/v1/chat/completions")).json(&json!({
            "model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": "Write a long story about a dragon."}]}));
        if session {
            r = r.header("x-session", "1");
        }
        r.send()
    };

    // No session: 402 before any work, and no usage recorded.
    let r = ask(8, false, false).await.unwrap();
    assert_eq!(r.status(), 402);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert!(metering.finished.lock().unwrap().is_empty());

    // Within credit: complete, signed usage.
    let r = ask(8, true, false).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let text = body["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    {
        let finished = metering.finished.lock().unwrap();
        let (usage, att, sig) = finished.last().unwrap();
        assert!(usage.complete);
        assert_eq!(usage.completion_tokens, 8);
        assert!(att.verify(&key.address(), sig, plexus_serve::STANDALONE_CHAIN_ID));
        assert_eq!(att.output_hash, plexus_types::hash(text.as_bytes()));
        let seen = metering.seen.lock().unwrap();
        assert_eq!(seen.last().map(|s| (s.0, s.2)), Some((Endpoint::ChatCompletions, 8)));
        assert_eq!(seen.last().unwrap().1, usage.prompt_tokens);
    }

    // Credit runs out mid-stream: the stream ends with an error event, and metering records a
    // partial, signed usage of what was delivered.
    let r = ask(200, true, true).await.unwrap();
    assert_eq!(r.status(), 200);
    let sse = r.text().await.unwrap();
    assert!(sse.contains("credit of 20 tokens used up"), "{sse}");
    assert!(!sse.contains("[DONE]"));
    let mut delivered = String::new();
    for line in sse.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            delivered.push_str(c);
        }
    }
    // The finish call happens when the stream is dropped; give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    {
        let finished = metering.finished.lock().unwrap();
        let (usage, att, sig) = finished.last().unwrap();
        assert!(!usage.complete);
        assert!(usage.completion_tokens > 20 && usage.completion_tokens < 40, "{usage:?}");
        assert!(att.verify(&key.address(), sig, plexus_serve::STANDALONE_CHAIN_ID));
        assert_eq!(att.output_tokens, usage.completion_tokens);
        assert_eq!(att.output_hash, plexus_types::hash(delivered.as_bytes()));
    }

    // Non-streaming past the credit: 402, and the engine is free again afterwards.
    let r = ask(200, true, false).await.unwrap();
    assert_eq!(r.status(), 402);
    let r = ask(4, true, false).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(metering.finished.lock().unwrap().len(), 4);

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}
