//! `plexus-bench edge`: the tract engine against onnxruntime on the same ONNX files and the same
//! inputs (the edge models' held-out rows), one thread each, batch 1 and batch 32, in
//! alternating passes (tract, onnxruntime, onnxruntime, tract) so drift in the machine's speed
//! weighs on both alike. Also compares the outputs of the first batch.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use plexus_inference::models::{ModelCache, Progress};
use plexus_inference::tensor::{Tensor, TensorRequest};
use plexus_inference::{EngineConfig, load_engine};
use serde_json::Value;

use crate::report::{commit, machine, quantile, write_section};

#[derive(clap::Args)]
pub struct Args {
    /// Calls per pass at batch 1 (batch 32 makes a tenth as many).
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Python with onnxruntime (default: the edge models' training environment in the cache).
    #[arg(long)]
    python: Option<PathBuf>,
    /// The onnxruntime side's script.
    #[arg(long, default_value = "bench/edge/ort_bench.py")]
    script: PathBuf,
    /// Write the results into this file's "## Edge tensor models" section (and, with
    /// `--plexus`, its "## Edge tensor models end to end" section).
    #[arg(long)]
    docs: Option<PathBuf>,
    /// Also measure end to end with this `plexus` binary: one ECG heartbeat per request to
    /// `plexus serve` over HTTP (no payment), and through the gateway of a 1-validator devnet
    /// (session, attestation checked, receipt signed), interleaved with the engine in-process.
    #[arg(long)]
    plexus: Option<PathBuf>,
    /// Requests per setup end to end.
    #[arg(long, default_value_t = 500)]
    requests: usize,
    /// Devices streaming at once, in real time, end to end (repeat for several runs).
    #[arg(long = "stream-connections", default_values_t = vec![1, 16, 64])]
    stream_connections: Vec<usize>,
}

const MODELS: [&str; 3] = ["ecg-heartbeat", "demand-forecast", "traffic-anomaly"];

struct Side {
    times: Vec<f64>,
}

impl Side {
    fn p(&self, q: f64) -> f64 {
        let mut t = self.times.clone();
        t.sort_by(f64::total_cmp);
        quantile(&t, q)
    }
}

fn rows_of(heldout: &Value) -> Vec<Vec<f32>> {
    let src =
        if heldout["eval"]["inputs"].is_array() { &heldout["eval"]["inputs"] } else { &heldout["samples"]["inputs"] };
    src.as_array()
        .into_iter()
        .flatten()
        .map(|r| r.as_array().into_iter().flatten().filter_map(Value::as_f64).map(|x| x as f32).collect())
        .collect()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cache = ModelCache::from_env();
    let python = args.python.clone().unwrap_or_else(|| cache.root().join(".edge-train/venv/bin/python"));
    let tmp = std::env::temp_dir().join(format!("plexus-bench-edge-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let mut table = String::new();
    let mut agreement = String::new();
    let mut ort_version = String::new();
    for name in MODELS {
        let model = cache.pull(name, Progress::Show).with_context(|| format!("pulling {name}"))?;
        let heldout: Value = serde_json::from_slice(&std::fs::read(model.dir.join("heldout.json"))?)?;
        let rows = rows_of(&heldout);
        if rows.len() < 32 {
            bail!("{name}: fewer than 32 held-out rows");
        }
        let engine = load_engine(&model, &EngineConfig::default())?;
        let input = engine.tensor_spec().context("not a tensor model")?.inputs[0].name.clone();
        let inputs_path = tmp.join(format!("{name}.json"));
        std::fs::write(&inputs_path, serde_json::to_vec(&serde_json::json!({ "rows": rows }))?)?;
        for batch in [1usize, 32] {
            let calls = if batch == 1 { args.calls } else { (args.calls / 10).max(20) };
            let batches: Vec<TensorRequest> = (0..(rows.len() / batch).max(1))
                .map(|i| {
                    let chunk = &rows[i * batch..i * batch + batch];
                    TensorRequest {
                        inputs: vec![Tensor {
                            name: input.clone(),
                            shape: vec![batch, chunk[0].len()],
                            data: chunk.iter().flatten().copied().collect(),
                        }],
                    }
                })
                .collect();
            let tract_pass = || -> anyhow::Result<Side> {
                for i in 0..50.min(calls) {
                    engine.infer(&batches[i % batches.len()])?;
                }
                let mut times = Vec::with_capacity(calls);
                for i in 0..calls {
                    let t0 = Instant::now();
                    engine.infer(&batches[i % batches.len()])?;
                    times.push(t0.elapsed().as_secs_f64());
                }
                Ok(Side { times })
            };
            let ort_pass = || -> anyhow::Result<(Side, Value)> {
                let out = Command::new(&python)
                    .arg(&args.script)
                    .arg(model.dir.join("model.onnx"))
                    .arg(&inputs_path)
                    .arg(batch.to_string())
                    .arg(calls.to_string())
                    .env("OMP_NUM_THREADS", "1")
                    .output()
                    .with_context(|| format!("running {}", python.display()))?;
                if !out.status.success() {
                    bail!("onnxruntime side failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                let v: Value = serde_json::from_slice(&out.stdout)?;
                let times = v["times"].as_array().context("times")?.iter().filter_map(Value::as_f64).collect();
                Ok((Side { times }, v))
            };
            // A-B-B-A.
            let t1 = tract_pass()?;
            let (o1, ort_out) = ort_pass()?;
            let (o2, _) = ort_pass()?;
            let t2 = tract_pass()?;
            ort_version = ort_out["version"].as_str().unwrap_or("?").to_owned();
            let tract = Side { times: [t1.times, t2.times].concat() };
            let ort = Side { times: [o1.times, o2.times].concat() };
            let (tp50, tp99, op50, op99) = (tract.p(0.5), tract.p(0.99), ort.p(0.5), ort.p(0.99));
            let (tput_t, tput_o) = (batch as f64 / tp50, batch as f64 / op50);
            table.push_str(&format!(
                "| {name} | {batch} | {:.1} / {:.1} µs | {:.1} / {:.1} µs | {:.0} / {:.0} | {:.2}x |\n",
                tp50 * 1e6,
                tp99 * 1e6,
                op50 * 1e6,
                op99 * 1e6,
                tput_t,
                tput_o,
                tp50 / op50,
            ));
            println!(
                "{name} batch {batch}: tract p50 {:.1} µs p99 {:.1} µs; onnxruntime p50 {:.1} µs p99 {:.1} µs",
                tp50 * 1e6,
                tp99 * 1e6,
                op50 * 1e6,
                op99 * 1e6
            );
            if batch == 32 {
                let ours = engine.infer(&batches[0])?;
                let mut worst = 0f64;
                for t in &ours.outputs {
                    let theirs = ort_out["outputs"][&t.name].as_array().context("ort output")?;
                    for (a, b) in t.data.iter().zip(theirs) {
                        let b = b.as_f64().unwrap_or(f64::NAN);
                        let rel = (f64::from(*a) - b).abs() / b.abs().max(1.0);
                        worst = worst.max(rel);
                    }
                }
                agreement.push_str(&format!("{name}: {worst:.1e}; "));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let body = format!(
        "`bench/edge/run.sh` (`plexus-bench edge --calls {calls}`). The three edge models (built by\n\
         `models/edge/train.py`), the same ONNX file and the same held-out input rows for both engines, one\n\
         thread each (onnxruntime {ort_version}, `intra_op_num_threads=1`, sequential), in-process\n\
         calls timed one by one; passes in A-B-B-A order (tract, onnxruntime, onnxruntime, tract), pooled.\n\
         Throughput = batch / p50 latency. Ratio = tract p50 / onnxruntime p50 (lower is better).\n\n\
         Machine: {machine}. Commit {commit}.\n\n\
         | model | batch | tract p50 / p99 | onnxruntime p50 / p99 | inferences/s tract / onnxruntime | ratio |\n\
         |---|---|---|---|---|---|\n{table}\n\
         Largest difference between the engines' outputs on the first batch of 32, relative to\n\
         max(1, |value|): {agreement}\n\n\
         Goal (issue 12): p50 and throughput within 1.25x of onnxruntime, outputs equal to 1e-5.\n",
        calls = args.calls,
        machine = machine(),
        commit = commit(),
    );
    println!("\n{body}");
    if let Some(docs) = &args.docs {
        write_section(docs, "Edge tensor models", &body)?;
    }
    if let Some(plexus) = &args.plexus {
        let body = tokio::runtime::Runtime::new()?.block_on(end_to_end(&args, plexus))?;
        println!("\n{body}");
        if let Some(docs) = &args.docs {
            write_section(docs, "Edge tensor models end to end", &body)?;
        }
    }
    Ok(())
}

/// One timed request of a setup.
type Call<'a> = Box<dyn FnMut() -> anyhow::Result<std::time::Duration> + 'a>;

/// An inference request to `url` (with `key` as the bearer API key, if any), timed.
fn over_http<'a>(http: &'a reqwest::blocking::Client, url: String, key: Option<String>, body: Value) -> Call<'a> {
    Box::new(move || {
        let t0 = Instant::now();
        let mut r = http.post(&url).json(&body);
        if let Some(key) = &key {
            r = r.bearer_auth(key);
        }
        let r = r.send()?;
        let status = r.status();
        let text = r.text()?;
        if !status.is_success() {
            bail!("{url}: HTTP {status}: {text}");
        }
        Ok(t0.elapsed())
    })
}

/// The ECG model end to end: the engine in-process, `plexus serve`, and a devnet's gateway,
/// one request at a time, interleaved.
async fn end_to_end(args: &Args, plexus: &std::path::Path) -> anyhow::Result<String> {
    use crate::paid::{Process, free_port, start_devnet_with, wait_http};
    const NAME: &str = "ecg-heartbeat";
    let model = ModelCache::from_env().pull(NAME, Progress::Hide)?;
    let heldout: Value = serde_json::from_slice(&std::fs::read(model.dir.join("heldout.json"))?)?;
    let rows = rows_of(&heldout);
    let engine = load_engine(&model, &EngineConfig::default())?;
    let input = engine.tensor_spec().context("not a tensor model")?.inputs[0].name.clone();
    let port = free_port()?;
    let _serve = Process(
        Command::new(plexus)
            .args(["serve", "-m", NAME, "--port", &port.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    let serve = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{serve}/health")).await?;
    let devnet = start_devnet_with(plexus, 1, "edge").await?;
    let gateway = devnet.url.trim_end_matches("/v1").to_string();
    let key = Some(devnet.key.clone());
    let n = args.requests;
    let recording: Value = serde_json::from_slice(&std::fs::read(model.dir.join("stream.json"))?)?;
    let ecg: Vec<f32> = recording["samples"]
        .as_array()
        .context("stream.json")?
        .iter()
        .filter_map(Value::as_f64)
        .map(|v| v as f32)
        .collect();
    let streams_body = streams(&gateway, &devnet.key, &ecg, args.stream_connections.clone()).await?;
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Vec<f64>>> {
        let http = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(60)).build()?;
        let body = |i: usize| {
            let row = &rows[i % rows.len()];
            serde_json::json!({"inputs": [{"name": input, "shape": [1, row.len()], "datatype": "FP32", "data": row}]})
        };
        let request = |i: usize| TensorRequest {
            inputs: vec![Tensor {
                name: input.clone(),
                shape: vec![1, rows[i % rows.len()].len()],
                data: rows[i % rows.len()].clone(),
            }],
        };
        let mut setups: Vec<(Call<'_>, Vec<f64>)> = vec![
            (
                Box::new(|| {
                    let r = request(0);
                    let t0 = Instant::now();
                    engine.infer(&r)?;
                    Ok(t0.elapsed())
                }),
                Vec::new(),
            ),
            (over_http(&http, format!("{serve}/v2/models/{NAME}/infer"), None, body(0)), Vec::new()),
            (over_http(&http, format!("{gateway}/v2/models/{NAME}/infer"), key, body(0)), Vec::new()),
        ];
        for (call, _) in setups.iter_mut() {
            for _ in 0..20 {
                call()?; // warm-up: connections, the gateway's session
            }
        }
        for _ in 0..n {
            for (call, times) in setups.iter_mut() {
                times.push(call()?.as_secs_f64() * 1e3);
            }
        }
        Ok(setups.into_iter().map(|(_, t)| t).collect())
    })
    .await??;
    drop(devnet);
    let p = |t: &[f64], q: f64| {
        let mut t = t.to_vec();
        t.sort_by(f64::total_cmp);
        quantile(&t, q)
    };
    let names = ["engine in-process (tract)", "`plexus serve` over HTTP, no payment", "devnet gateway, paid"];
    let mut table = String::new();
    for (name, t) in names.iter().zip(&result) {
        table.push_str(&format!("| {name} | {:.3} ms | {:.3} ms |\n", p(t, 0.5), p(t, 0.99)));
    }
    let (engine_p50, serve_p50, gateway_p50) = (p(&result[0], 0.5), p(&result[1], 0.5), p(&result[2], 0.5));
    Ok(format!(
        "`bench/edge/run.sh --plexus` (`plexus-bench edge --plexus <release binary> --requests {n}`).\n\
         One held-out ECG heartbeat (batch 1) per request, one request at a time, the three setups\n\
         interleaved request by request: the engine called in-process; `plexus serve -m ecg-heartbeat`\n\
         over loopback HTTP (no session); the gateway of a 1-validator devnet (`plexus devnet up`), which\n\
         counts the row, forwards on its session, checks the provider's signed attestation and output\n\
         hash, and signs a receipt before answering. Client: a keep-alive HTTP connection.\n\n\
         Machine: {machine}. Commit {commit}.\n\n\
         | setup | p50 | p99 |\n|---|---|---|\n{table}\n\
         Gap: HTTP and KServe JSON {:.3} ms over the engine; the gateway and payment {:.3} ms over that.\n\
         Goal (issue 12): p50 through the gateway <= 2 ms.\n\n{streams_body}",
        serve_p50 - engine_p50,
        gateway_p50 - serve_p50,
        machine = machine(),
        commit = commit(),
    ))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A stream through the gateway, past its hello.
async fn open_stream(gateway: &str, key: &str, query: &str) -> anyhow::Result<Ws> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/v2/models/ecg-heartbeat/stream?{query}", gateway.replacen("http://", "ws://", 1));
    let mut request = url.as_str().into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer {key}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    ws.next().await.context("no hello")??;
    Ok(ws)
}

fn frame(samples: &[f32]) -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::Binary(
        samples.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
    )
}

/// Sends `samples` as fast as the stream takes them (frames of `frame_len`) while reading its
/// results; returns the seconds from the first frame to the last result, and the windows.
async fn flat_out(ws: Ws, samples: Vec<f32>, frame_len: usize) -> anyhow::Result<(f64, u64)> {
    use futures::{SinkExt, StreamExt};
    let (mut sink, mut source) = ws.split();
    let t0 = Instant::now();
    let sender = tokio::spawn(async move {
        for chunk in samples.chunks(frame_len) {
            sink.send(frame(chunk)).await?;
        }
        anyhow::Ok(sink)
    });
    let mut windows = 0u64;
    let mut last = t0;
    // Results stop coming a little after the last frame.
    while let Ok(Some(m)) = tokio::time::timeout(std::time::Duration::from_secs(3), source.next()).await {
        match m? {
            tokio_tungstenite::tungstenite::Message::Text(_) => {
                windows += 1;
                last = Instant::now();
            }
            tokio_tungstenite::tungstenite::Message::Close(f) => bail!("the stream closed: {f:?}"),
            _ => {}
        }
    }
    let mut sink = sender.await??;
    let _ = sink.close().await;
    Ok((last.duration_since(t0).as_secs_f64(), windows))
}

/// One device at 360 Hz in frames of 100 ms for `seconds`: each result's lag is the time from
/// sending the frame that completed its window to receiving the result.
async fn real_time(ws: Ws, samples: Vec<f32>, seconds: usize) -> anyhow::Result<Vec<f64>> {
    use futures::{SinkExt, StreamExt};
    let (mut sink, mut source) = ws.split();
    let frames: Vec<Vec<f32>> = samples.chunks(36).take(seconds * 10).map(<[f32]>::to_vec).collect();
    let count = frames.len();
    let sent = std::sync::Arc::new(std::sync::Mutex::new(vec![None::<Instant>; count]));
    let marks = sent.clone();
    let t0 = tokio::time::Instant::now();
    let sender = tokio::spawn(async move {
        for (i, f) in frames.into_iter().enumerate() {
            tokio::time::sleep_until(t0 + std::time::Duration::from_millis(100 * i as u64)).await;
            marks.lock().expect("marks")[i] = Some(Instant::now());
            sink.send(frame(&f)).await?;
        }
        anyhow::Ok(sink)
    });
    let mut lags = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(std::time::Duration::from_secs(3), source.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m? {
            let now = Instant::now();
            let r: Value = serde_json::from_str(&t)?;
            let end = r["end"].as_u64().context("a result without its end")? as usize;
            let at = sent.lock().expect("marks")[(end - 1) / 36];
            lags.push(now.duration_since(at.context("a result before its samples were sent")?).as_secs_f64() * 1e3);
        }
    }
    let mut sink = sender.await??;
    let _ = sink.close().await;
    Ok(lags)
}

/// Streams through the gateway: one device as fast as it can send, and many devices at 360 Hz.
async fn streams(gateway: &str, key: &str, ecg: &[f32], connections: Vec<usize>) -> anyhow::Result<String> {
    let mut repeated = Vec::new();
    for _ in 0..10 {
        repeated.extend_from_slice(ecg);
    }
    let mut flat = String::new();
    for (what, query) in
        [("one window per beat (R-peak trigger)", "trigger=r-peak"), ("a window every 32 samples", "hop=32")]
    {
        let ws = open_stream(gateway, key, query).await?;
        let (secs, windows) = flat_out(ws, repeated.clone(), 360).await?;
        flat.push_str(&format!(
            "| {what} | {} | {:.0} | {windows} | {:.0} |\n",
            repeated.len(),
            repeated.len() as f64 / secs,
            windows as f64 / secs
        ));
    }
    let mut table = String::new();
    const SECONDS: usize = 20;
    for n in connections {
        let mut tasks = Vec::new();
        for i in 0..n {
            let ws = open_stream(gateway, key, "trigger=r-peak").await?;
            // Each device starts at another beat of the recording.
            let offset = (i * 977) % (ecg.len() - SECONDS * 360);
            tasks.push(tokio::spawn(real_time(ws, ecg[offset..].to_vec(), SECONDS)));
        }
        let mut lags = Vec::new();
        for t in tasks {
            lags.extend(t.await??);
        }
        lags.sort_by(f64::total_cmp);
        table.push_str(&format!(
            "| {n} | {} | {:.2} ms | {:.2} ms | {:.2} ms |\n",
            lags.len(),
            quantile(&lags, 0.5),
            quantile(&lags, 0.99),
            lags.last().copied().unwrap_or(0.0)
        ));
    }
    Ok(format!(
        "### Streams (WebSocket, through the same devnet's gateway, paid per window)\n\n\
         One device sending the ECG recording ten times over ({} samples) as fast as the stream takes\n\
         it, frames of 360 samples; every window checked by the gateway and paid with a receipt:\n\n\
         | stream | samples | samples/s | windows | windows/s |\n|---|---|---|---|---|\n{flat}\n\
         Devices at real time (360 Hz, a frame every 100 ms, {SECONDS} s each, one window per beat), all\n\
         on the devnet's one provider; lag = from sending the frame that completes a window to\n\
         receiving its result:\n\n\
         | devices | windows | lag p50 | lag p99 | lag max |\n|---|---|---|---|---|\n{table}",
        repeated.len(),
    ))
}
