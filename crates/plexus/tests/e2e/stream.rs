//! Real-time streams as a device runs them: `plexus stream` sends a real ECG recording through
//! the devnet's gateway at full speed, the provider finds the heartbeats itself and classifies
//! each one, the gateway checks and pays every window, and the chain settles exactly what was
//! paid. Bad frames and slow consumers are dropped with their reasons; a provider that sends a
//! result twice is caught and paid once; one whose outputs are off is caught by an audit, its
//! stream cut, and convicted on chain by a committee re-running the window.

use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use plexus_inference::models::{ModelCache, Progress};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::util::*;

/// The R peaks and labels of the recording's held-out beats.
fn recording_beats() -> (Vec<u64>, Vec<u64>) {
    let m = ModelCache::from_env().pull("ecg-heartbeat", Progress::Hide).unwrap();
    let rec: Value = serde_json::from_slice(&std::fs::read(m.dir.join("stream.json")).unwrap()).unwrap();
    let list = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect::<Vec<_>>();
    (list(&rec["beats"]["r_peak"]), list(&rec["beats"]["labels"]))
}

/// The first beat window of the recording (256 samples).
fn recording_window() -> Vec<f32> {
    let m = ModelCache::from_env().pull("ecg-heartbeat", Progress::Hide).unwrap();
    let rec: Value = serde_json::from_slice(&std::fs::read(m.dir.join("stream.json")).unwrap()).unwrap();
    let r = rec["beats"]["r_peak"][0].as_u64().unwrap() as usize;
    rec["samples"].as_array().unwrap()[r - 90..r + 166].iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

/// Runs `plexus stream` on the recording; returns its results, stderr and whether it succeeded.
fn stream_recording(gw: &Gw, extra: &[&str]) -> (Vec<Value>, String, bool) {
    let out = plexus()
        .args(["stream", "ecg-heartbeat", "--gateway", &gw.base, "--recording", "--beats", "--speed", "0", "--json"])
        .args(extra)
        .env("PLEXUS_GATEWAY_API_KEY", &gw.key)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (results, String::from_utf8_lossy(&out.stderr).to_string(), out.status.success())
}

/// Opens a stream directly, as any WebSocket client would.
pub(crate) async fn open(
    gw: &Gw,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("{}{path}", gw.base.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {}", gw.key).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let hello = ws.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("\"stream\""), "{hello:?}");
    ws
}

/// Reads until the stream (or its reading half) closes; returns the results received and the
/// close code and reason.
pub(crate) async fn drain(
    ws: &mut (impl futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> (u64, u16, String) {
    let mut results = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(150), ws.next()).await.expect("the stream ends") {
            Some(Ok(Message::Text(_))) => results += 1,
            Some(Ok(Message::Close(Some(f)))) => return (results, u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None => return (results, 1005, String::new()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return (results, 1006, e.to_string()),
        }
    }
}

pub(crate) fn paid_total(gw: &Gw) -> u64 {
    gw.status()["sessions"].as_array().unwrap().iter().map(|s| s["cum_output_tokens"].as_u64().unwrap()).sum()
}

pub(crate) fn binary(samples: &[f32]) -> Message {
    Message::Binary(samples.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into())
}

#[test]
fn an_ecg_stream_alerts_on_abnormal_beats_is_paid_per_window_and_liars_and_slow_readers_lose() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("devnet");
    let (devnet, info) = start_devnet(&home, 2, &["--claim-interval", "2", "--threads", "1"]);
    let api = info["nodes"][0]["api"].as_str().unwrap().to_string();
    let gw = Gw::running(info["gateway"]["url"].as_str().unwrap(), info["gateway"]["api_key"].as_str().unwrap());

    // The recording, as fast as the stream takes it: one window per beat, found by the provider.
    let (results, stderr, ok) = stream_recording(&gw, &[]);
    assert!(ok, "{stderr}");
    let (peaks, labels) = recording_beats();
    assert!(results.len() >= peaks.len(), "{} windows for {} labelled beats: {stderr}", results.len(), peaks.len());
    let (mut matched, mut agree, mut abnormal, mut alerted) = (0u64, 0u64, 0u64, 0u64);
    for (&r, &label) in peaks.iter().zip(&labels) {
        // The stream's beats are the training script's to within two samples (the detector
        // differs: causal here, zero-phase filtered there).
        let Some(w) = results.iter().find(|w| (w["start"].as_u64().unwrap() + 90).abs_diff(r) <= 2) else { continue };
        matched += 1;
        let alert = w["alert"].as_bool().unwrap();
        agree += u64::from(alert == (label == 1));
        abnormal += u64::from(label == 1);
        alerted += u64::from(label == 1 && alert);
    }
    eprintln!(
        "stream: {} windows, {matched}/{} labelled beats found, {agree} agree, {alerted}/{abnormal} abnormal alerted",
        results.len(),
        peaks.len()
    );
    assert_eq!(matched as usize, peaks.len(), "every labelled beat is found");
    // The model card's held-out accuracy is for the training detector's windows; the stream's
    // windows are the same beats within two samples, so the figure holds to a few beats.
    assert!(agree * 100 >= matched * 90, "alerts agree with the labels on {agree} of {matched} beats");
    assert!(abnormal > 0 && alerted * 10 >= abnormal * 8, "{alerted} of {abnormal} abnormal beats alerted");
    for (i, w) in results.iter().enumerate() {
        assert_eq!(w["window"], i as u64);
        assert_eq!(w["end"].as_u64().unwrap() - w["start"].as_u64().unwrap(), 256);
        assert_eq!(w["paid_inferences"], i as u64 + 1, "the gateway paid each window once: {w}");
    }
    assert!(stderr.contains(&format!("paid {} inferences", results.len())), "{stderr}");

    // Bad input: refused with a reason, nothing paid.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let paid_before = paid_total(&gw);
    runtime.block_on(async {
        let mut ws = open(&gw, "/v2/models/ecg-heartbeat/stream?trigger=r-peak").await;
        ws.send(binary(&[0.1, f32::NAN])).await.unwrap();
        let (results, code, reason) = drain(&mut ws).await;
        assert_eq!((results, code), (0, 1007), "{reason}");
        assert!(reason.contains("finite"), "{reason}");

        let mut ws = open(&gw, "/v2/models/ecg-heartbeat/stream").await;
        ws.send(Message::Text(r#"{"receipt":"00"}"#.into())).await.unwrap();
        let (_, code, reason) = drain(&mut ws).await;
        assert_eq!(code, 1003, "{reason}");
        assert!(reason.contains("gateway pays"), "{reason}");
    });
    for (path, status) in [
        ("/v2/models/ecg-heartbeat/stream?hop=0", 400),
        ("/v2/models/ecg-heartbeat/stream?hop=300", 400),
        ("/v2/models/no-such-model/stream", 404),
        ("/v2/models/smollm2-135m-instruct/stream", 400),
    ] {
        let url = format!("{}{path}", gw.base.replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {}", gw.key).parse().unwrap());
        match runtime.block_on(tokio_tungstenite::connect_async(request)) {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), status, "{path}"),
            other => panic!("{path}: {:?}", other.map(|_| "connected")),
        }
    }
    assert_eq!(paid_total(&gw), paid_before, "nothing is paid for refused streams");

    // A consumer that stops reading is dropped with the reason, and memory stays bounded: a
    // window every sample (a frame every two seconds, within what the model keeps up with),
    // never read until the stream is over.
    runtime.block_on(async {
        let mut ws = open(&gw, "/v2/models/ecg-heartbeat/stream?hop=1").await;
        let wave: Vec<f32> = (0..8192).map(|i| (i as f32 * 0.05).sin()).collect();
        for _ in 0..6 {
            if ws.send(binary(&wave)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let (results, code, reason) = drain(&mut ws).await;
        eprintln!("slow consumer: {results} results, then {code} {reason}");
        assert_eq!(code, 1008, "{reason}");
        assert!(reason.contains("slow consumer"), "{reason}");
        assert!(results < 6 * 8192, "dropped before everything was sent");
    });

    // The devnet gateway closes its sessions: the chain settles exactly what it paid.
    gw.close();
    let sessions = gw.status()["sessions"].as_array().unwrap().clone();
    wait_for("the sessions settled", Duration::from_secs(180), || {
        sessions
            .iter()
            .all(|s| {
                get(&format!("{api}/chain/v1/sessions/{}", s["id"].as_str().unwrap())).unwrap()["status"] == "closed"
            })
            .then_some(())
    });
    let mut settled = 0;
    for s in &sessions {
        let chain = get(&format!("{api}/chain/v1/sessions/{}", s["id"].as_str().unwrap())).unwrap();
        assert_eq!(chain["settled_output_tokens"], s["cum_output_tokens"], "{chain} vs {s}");
        assert_eq!(amount(&chain["settled_amount"]), amount(&s["cum_amount"]), "{chain} vs {s}");
        settled += chain["settled_output_tokens"].as_u64().unwrap();
    }
    assert!(settled >= results.len() as u64, "every window streamed was paid on chain ({settled})");

    // A provider that sends every result twice is paid for the first and caught at the second.
    let liar = &info["nodes"][1];
    let liar_addr = liar["address"].as_str().unwrap().to_string();
    stop(liar["pid"].as_u64().unwrap());
    let inflating = restart_with(liar, "PLEXUS_DISHONEST", "inflate");
    let only_liar = gateway(dir.path(), "gw-liar", &info, &api, &[&liar_addr], &[]);
    let (results, stderr, ok) = stream_recording(&only_liar, &[]);
    assert!(!ok, "the stream ends in an error: {stderr}");
    assert!(stderr.contains("1011") && stderr.contains("caught lying"), "{stderr}");
    assert_eq!(results.len(), 1, "the first result, then its copy: {results:?}");
    let status = only_liar.status();
    let with_liar: Vec<&Value> =
        status["sessions"].as_array().unwrap().iter().filter(|s| s["provider"] == liar_addr.as_str()).collect();
    assert_eq!(with_liar.len(), 1, "{status}");
    assert_eq!(with_liar[0]["cum_output_tokens"], 1, "paid for one window, not two: {status}");

    // A provider whose tensor outputs are off (by 0.01, attested as sent): the attestation
    // checks, so it is paid, but an audit re-runs the model on the gateway's own copy, finds
    // the difference, and the provider is shunned: its stream is cut, no request goes to it.
    drop(inflating);
    let _perturbing = restart_with(liar, "PLEXUS_DISHONEST", "perturb");
    let audited = gateway(dir.path(), "gw-audit", &info, &api, &[&liar_addr], &["--audit-rate", "1"]);
    // A stream to it: each window passes the gateway's checks and is paid, and each is audited
    // in the background; the first result after an audit fails ends the stream.
    let (streamed, code, reason) = runtime.block_on(async {
        let ws = open(&audited, "/v2/models/ecg-heartbeat/stream?hop=128").await;
        let wave: Vec<f32> = (0..256).map(|i| (i as f32 * 0.05).sin()).collect();
        let (mut tx, mut rx) = ws.split();
        let results = tokio::spawn(async move { drain(&mut rx).await });
        // Two windows a second until the gateway ends it (bounded: two minutes).
        for _ in 0..240 {
            if tx.send(binary(&wave)).await.is_err() || results.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        results.await.unwrap()
    });
    eprintln!("audited stream: {streamed} results, then {code} {reason}");
    assert_eq!(code, 1011, "{reason}");
    assert!(reason.contains("failed an audit"), "{reason}");
    assert!(streamed >= 1, "windows before the audit's verdict are paid: {reason}");
    let beat = recording_window();
    let body = serde_json::json!({ "inputs": [{ "name": "ecg_window", "shape": [1, 256], "datatype": "FP32", "data": beat }] });
    let finding = wait_for("the audit", Duration::from_secs(120), || {
        let s = audited.status();
        s["audits"]["recent"].as_array().unwrap().first().cloned()
    });
    assert_eq!(finding["verdict"], "faulty", "{finding}");
    assert_eq!(finding["provider"], liar_addr.as_str(), "{finding}");
    assert!(finding["failed"].as_u64().unwrap() > 0 && finding["worst_margin"].as_f64().unwrap() > 1.0, "{finding}");
    // Challenged on chain with the window's samples and the attested outputs as the evidence;
    // the committee (the honest validator) re-runs them and convicts.
    assert!(finding["challenge_tx"].is_string(), "the faulty window is challenged on chain: {finding}");
    let challenges = wait_for("the committee's verdicts", Duration::from_secs(180), || {
        let list = get(&format!("{api}/chain/v1/challenges?provider={liar_addr}"))?;
        let all = list["challenges"].as_array()?.clone();
        (!all.is_empty() && all.iter().all(|c| c["status"] != "open")).then_some(all)
    });
    for c in &challenges {
        assert_eq!(c["status"], "convicted", "{c}");
        assert!(amount(&c["slashed"]) > 0 && amount(&c["refunded"]) > 0, "slashed, the window refunded: {c}");
    }
    let record = get(&format!("{api}/chain/v1/providers/{liar_addr}")).unwrap();
    assert_eq!(record["stats"]["convicted"], challenges.len(), "{record}");
    eprintln!("tensor challenges: {} convicted, first: {}", challenges.len(), challenges[0]);
    let (code, text) = audited.post("/v2/models/ecg-heartbeat/infer", &body);
    assert_ne!(code, 200, "a shunned provider is not used again: {text}");
    drop(devnet);
}
