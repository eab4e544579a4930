//! The paid-inference benchmark.
//!
//! 1. **Protocol overhead** on the real model (SmolLM2, greedy, 32 output tokens, the same
//!    request every time): the engine called in-process, then `plexus serve` over HTTP, then
//!    `plexus gateway` in front of a devnet provider (sessions, attestations, receipts). p50
//!    latency one request at a time, and throughput with 4 clients at once.
//! 2. **Metered requests per second** through one provider with a trivial workload: the
//!    provider's server, metering and receipt checks in this process, over loopback HTTP, with
//!    an engine that answers at once (this benchmark's own fixture) and the session held in
//!    memory instead of read from a chain. Against the same server unmetered.
//! 3. **Chain bytes per settled session**: every transaction of one session from the gateway
//!    run, encoded, after it is settled and closed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::future::BoxFuture;
use plexus_inference::models::{ModelCache, Progress};
use plexus_inference::{
    ChatMessage, Embeddings, Engine, EngineConfig, Error as EngineError, Event, GenerateRequest, LlamaConfig, Load,
    ModelInfo, Prompt, Sampling, load_engine,
};
use plexus_provider::{ChainView, Provider, ProviderConfig, SessionView};
use plexus_types::tx::{ModelPrice, Payload, SignedTx};
use plexus_types::{Address, EngineKind, Hash, Height, ModelManifest, PrivateKey, Receipt};
use serde_json::{Value, json};

use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// The `plexus` binary to run.
    #[arg(long)]
    plexus: PathBuf,
    /// Threads for the model everywhere.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Requests timed one at a time, per setup.
    #[arg(long, default_value_t = 40)]
    sequential: usize,
    /// Requests per client in the 4-client throughput run, per setup.
    #[arg(long, default_value_t = 8)]
    per_client: usize,
    /// Seconds of the trivial-workload run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Write the results to this file's "## Paid inference" section.
    #[arg(long)]
    docs: Option<PathBuf>,
}

const CHAT: &str = "smollm2-135m-instruct";
const PROMPT: &str = "Write one sentence about the sea.";
const MAX_TOKENS: u32 = 32;

#[derive(Clone, Copy, Default)]
struct Timing {
    p50_ms: f64,
    /// Requests per second with 4 clients.
    rps: f64,
    completion_tokens: u64,
    /// How far apart two measurements of this same setup came out in this run: p50 of the
    /// first half of the one-at-a-time requests against the second half, in ms...
    p50_spread_ms: f64,
    /// ...and the two throughput rounds, in % of their mean.
    rps_spread_pct: f64,
}

// ---- 1. engine, server, gateway ----

/// One timed request: its latency and completion tokens.
type Request = Box<dyn Fn() -> BoxFuture<'static, anyhow::Result<(Duration, u64)>> + Send + Sync>;

/// Times the setups interleaved, so that a noisy neighbour or a warming CPU weighs on all of
/// them alike: request `i` of every setup runs before request `i + 1` of any, and the 4-client
/// throughput runs alternate by setup over `ROUNDS` rounds.
async fn measure_interleaved(args: &Args, setups: &[&Request]) -> anyhow::Result<Vec<Timing>> {
    const ROUNDS: usize = 2;
    for setup in setups {
        for _ in 0..3 {
            setup().await?; // warm-up: caches, connections, sessions
        }
    }
    let mut latencies = vec![Vec::new(); setups.len()];
    let mut tokens = vec![0; setups.len()];
    for _ in 0..args.sequential {
        for (k, setup) in setups.iter().enumerate() {
            let (d, t) = setup().await?;
            latencies[k].push(d.as_secs_f64() * 1e3);
            tokens[k] = t;
        }
    }
    let mut busy = vec![Duration::ZERO; setups.len()];
    let mut round_rps = vec![Vec::new(); setups.len()];
    for _ in 0..ROUNDS {
        for (k, setup) in setups.iter().enumerate() {
            let started = Instant::now();
            let clients = (0..4).map(|_| async {
                for _ in 0..args.per_client {
                    setup().await?;
                }
                Ok::<_, anyhow::Error>(())
            });
            futures::future::try_join_all(clients).await?;
            busy[k] += started.elapsed();
            round_rps[k].push((4 * args.per_client) as f64 / started.elapsed().as_secs_f64());
        }
    }
    let requests = (ROUNDS * 4 * args.per_client) as f64;
    Ok((0..setups.len())
        .map(|k| {
            let p50 = |l: &[f64]| {
                let mut l = l.to_vec();
                l.sort_by(f64::total_cmp);
                report::quantile(&l, 0.5)
            };
            let (first, second) = latencies[k].split_at(latencies[k].len() / 2);
            let r = &round_rps[k];
            let (lo, hi) = r.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            Timing {
                p50_ms: p50(&latencies[k]),
                rps: requests / busy[k].as_secs_f64(),
                completion_tokens: tokens[k],
                p50_spread_ms: (p50(first) - p50(second)).abs(),
                rps_spread_pct: (hi - lo) / (r.iter().sum::<f64>() / r.len() as f64) * 100.0,
            }
        })
        .collect())
}

/// The engine called in-process.
async fn engine_direct(args: &Args) -> anyhow::Result<Request> {
    let model = ModelCache::from_env().pull(CHAT, Progress::Hide)?;
    let threads = std::num::NonZeroU32::new(args.threads).context("--threads")?;
    let config = EngineConfig {
        llama: LlamaConfig { threads, threads_batch: threads, ..LlamaConfig::default() },
        ..EngineConfig::default()
    };
    let engine: Arc<dyn Engine> = tokio::task::spawn_blocking(move || load_engine(&model, &config)).await??;
    Ok(Box::new(move || {
        let engine = engine.clone();
        Box::pin(async move {
            let request = GenerateRequest {
                grammar: None,
                prompt: Prompt::Chat {
                    messages: vec![ChatMessage::new("user", PROMPT)],
                    continue_final_message: false,
                },
                max_tokens: Some(MAX_TOKENS),
                sampling: Sampling::Greedy,
                adjust: Default::default(),
                stop: Vec::new(),
                logprobs: None,
            };
            let started = Instant::now();
            let prepared = engine.prepare(request)?;
            let mut generation = engine.submit(prepared)?;
            loop {
                match generation.next().await {
                    Some(Event::Done(finish)) => return Ok((started.elapsed(), u64::from(finish.completion_tokens))),
                    Some(Event::Failed(e)) => return Err(e.into()),
                    Some(Event::Text { .. }) => {}
                    None => bail!("the engine stopped"),
                }
            }
        })
    }))
}

/// A non-streaming chat completion to `url` (with `key` as the bearer API key, if any).
fn over_http(url: String, key: Option<String>) -> anyhow::Result<Request> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
    let body = json!({"model": CHAT, "temperature": 0, "max_tokens": MAX_TOKENS,
                      "messages": [{"role": "user", "content": PROMPT}]});
    Ok(Box::new(move || {
        let (http, url, body, key) = (http.clone(), url.clone(), body.clone(), key.clone());
        Box::pin(async move {
            let started = Instant::now();
            let mut request = http.post(&url).json(&body);
            if let Some(key) = &key {
                request = request.bearer_auth(key);
            }
            let r = request.send().await?;
            let status = r.status();
            let v: Value = r.json().await?;
            if !status.is_success() {
                bail!("{url}: HTTP {status}: {v}");
            }
            Ok((started.elapsed(), v["usage"]["completion_tokens"].as_u64().unwrap_or(0)))
        })
    }))
}

pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) async fn wait_http(url: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    while !reqwest::get(url).await.map(|r| r.status().is_success()).unwrap_or(false) {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("{url} did not come up");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// `plexus serve` on its own, over HTTP.
async fn provider_direct(args: &Args) -> anyhow::Result<(Process, Request)> {
    let port = free_port()?;
    let t = args.threads.to_string();
    let serve = Process(
        Command::new(&args.plexus)
            .args(["serve", "-m", CHAT, "--port", &port.to_string(), "--threads", &t, "--threads-batch", &t])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{base}/health")).await?;
    Ok((serve, over_http(format!("{base}/v1/chat/completions"), None)?))
}

/// A 1-validator devnet (its node serves the models) and its gateway.
pub(crate) struct Devnet {
    pub(crate) process: Process,
    pub(crate) home: PathBuf,
    /// The gateway's OpenAI base URL (`…/v1`).
    pub(crate) url: String,
    /// The gateway's API key.
    pub(crate) key: String,
    pub(crate) api: String,
    pub(crate) start_height: u64,
}

async fn start_devnet(args: &Args) -> anyhow::Result<Devnet> {
    start_devnet_with(&args.plexus, args.threads, "paid").await
}

/// Starts `plexus devnet up` with one validator from the `plexus` binary, its text model on
/// `threads` threads, claiming only when a session ends (so its chain footprint is one claim).
pub(crate) async fn start_devnet_with(plexus: &std::path::Path, threads: u32, name: &str) -> anyhow::Result<Devnet> {
    let home = std::env::temp_dir().join(format!("plexus-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let base = 31_000 + (std::process::id() % 2_000) as u16 * 10;
    let mut process = Process(
        Command::new(plexus)
            .args(["devnet", "up", "--validators", "1", "--threads", &threads.to_string()])
            .args(["--claim-interval", "3600", "--base-port", &base.to_string(), "--home"])
            .arg(&home)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let manifest = home.join("devnet.json");
    let info: Value = loop {
        if let Ok(text) = std::fs::read_to_string(&manifest) {
            let v: Value = serde_json::from_str(&text)?;
            if v["gateway"]["pid"].is_u64() {
                break v;
            }
        }
        if let Some(status) = process.0.try_wait()? {
            bail!("the devnet exited ({status})");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let url = info["gateway"]["url"].as_str().context("gateway url")?.to_string();
    let key = info["gateway"]["api_key"].as_str().unwrap_or_default().to_string();
    wait_http(&format!("{}/health", url.trim_end_matches("/v1"))).await?;
    let api = info["nodes"][0]["api"].as_str().context("api")?.to_string();
    let start_height =
        reqwest::get(format!("{api}/chain/v1/status")).await?.json::<Value>().await?["height"].as_u64().unwrap_or(0);
    Ok(Devnet { process, home, url, key, api, start_height })
}

/// Settles and closes the gateway's session, then lists its transactions' encoded sizes.
async fn session_bytes(devnet: Devnet) -> anyhow::Result<Vec<(&'static str, usize)>> {
    let gateway = devnet.url.trim_end_matches("/v1");
    let api = &devnet.api;
    let status: Value = reqwest::Client::new()
        .post(format!("{gateway}/plexus/v1/close"))
        .bearer_auth(&devnet.key)
        .header("content-type", "application/json")
        .send()
        .await?
        .json()
        .await?;
    let session = status["sessions"].as_array().and_then(|s| s.first()).context("a session")?.clone();
    let id: Hash = session["id"].as_str().context("session id")?.parse().map_err(anyhow::Error::msg)?;
    let client: Address = status["client"].as_str().context("client")?.parse().map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    loop {
        let s: Value = reqwest::get(format!("{api}/chain/v1/sessions/{id}")).await?.json().await?;
        if s["status"] == "closed" {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("session {id} was not closed: {s}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let end: u64 =
        reqwest::get(format!("{api}/chain/v1/status")).await?.json::<Value>().await?["height"].as_u64().unwrap_or(0);
    let mut session_txs = Vec::new();
    for h in devnet.start_height..=end {
        let block: Value = reqwest::get(format!("{api}/chain/v1/blocks/{h}")).await?.json().await?;
        for t in block["txs"].as_array().into_iter().flatten() {
            let tx: SignedTx = serde_json::from_value(t["tx"].clone())?;
            let about = match &tx.tx.payload {
                Payload::OpenSession { .. }
                    if plexus_execution::session_id(&tx.tx.signer, tx.tx.nonce) == id && tx.tx.signer == client =>
                {
                    Some("open_session")
                }
                Payload::Claim { receipts } if receipts.iter().any(|r| r.receipt.session == id) => Some("claim"),
                Payload::CloseSession { session } if *session == id && tx.tx.signer == client => {
                    Some("close_session (client)")
                }
                Payload::CloseSession { session } if *session == id => Some("close_session (provider)"),
                Payload::TopUpSession { session, .. } if *session == id => Some("top_up_session"),
                _ => None,
            };
            if let Some(kind) = about {
                session_txs.push((kind, plexus_types::codec::to_vec(&tx).len()));
            }
        }
    }
    let home = devnet.home.clone();
    drop(devnet.process);
    let _ = std::fs::remove_dir_all(&home);
    Ok(session_txs)
}

struct Overhead {
    engine: Timing,
    provider: Timing,
    gateway: Timing,
    session_txs: Vec<(&'static str, usize)>,
    session_requests: u64,
}

async fn overhead(args: &Args) -> anyhow::Result<Overhead> {
    eprintln!("loading the engine in-process…");
    let engine = engine_direct(args).await?;
    eprintln!("starting plexus serve…");
    let (serve, provider) = provider_direct(args).await?;
    eprintln!("starting a 1-validator devnet and its gateway…");
    let devnet = start_devnet(args).await?;
    let gateway = over_http(format!("{}/chat/completions", devnet.url), Some(devnet.key.clone()))?;
    eprintln!("timing the three setups, interleaved…");
    let timings = measure_interleaved(args, &[&engine, &provider, &gateway]).await?;
    drop(serve);
    drop(engine);
    let session_txs = session_bytes(devnet).await?;
    let session_requests = 3 + args.sequential as u64 + 2 * 4 * args.per_client as u64;
    Ok(Overhead { engine: timings[0], provider: timings[1], gateway: timings[2], session_txs, session_requests })
}

// ---- 2. trivial workload ----

/// Answers every embedding request at once with the same small vector: the benchmark's own
/// fixture, so what is measured is HTTP, metering, receipts and signatures.
struct Instant0 {
    info: ModelInfo,
}

impl Instant0 {
    fn new() -> Self {
        let manifest = ModelManifest {
            name: "instant".into(),
            engine: EngineKind::CandleBert,
            weights_sha256: Hash::ZERO,
            tokenizer_sha256: Hash::ZERO,
            template_sha256: Hash::ZERO,
            quantization: "none".into(),
            context_length: 16,
        };
        let info = ModelInfo {
            name: manifest.name.clone(),
            id: manifest.id(),
            kind: EngineKind::CandleBert,
            request_tokens_max: 16,
            embedding_dims: Some(4),
            manifest,
        };
        Instant0 { info }
    }
}

impl Engine for Instant0 {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self, inputs: &[String]) -> Result<Embeddings, EngineError> {
        Ok(Embeddings {
            vectors: vec![vec![0.5, 0.5, 0.5, 0.5]; inputs.len()],
            prompt_tokens: inputs.len() as u32,
            request_hash: plexus_types::hash(inputs.concat().as_bytes()),
            output_hash: Hash::ZERO,
        })
    }

    fn load(&self) -> Load {
        Load::default()
    }
}

/// One session, held in memory.
struct OneSession {
    id: Hash,
    view: SessionView,
}

/// The chain id the trivial benchmark's receipts are signed for.
const BENCH_CHAIN: &str = "plexus-bench";

impl ChainView for OneSession {
    fn chain_id(&self) -> &str {
        BENCH_CHAIN
    }
    fn session(&self, id: &Hash) -> Option<SessionView> {
        (id == &self.id).then(|| self.view.clone())
    }
    fn height(&self) -> Height {
        1
    }
    fn submit(&self, _: Payload) -> Result<Hash, String> {
        Err("no chain in this benchmark".into())
    }
}

struct Trivial {
    metered_rps: f64,
    /// Metered, with the client's receipts signed before the timed window.
    presigned_rps: f64,
    unmetered_rps: f64,
    failures: u64,
    receipts: u64,
}

async fn trivial(args: &Args) -> anyhow::Result<Trivial> {
    let provider_key = PrivateKey::from_seed(11);
    let client = PrivateKey::from_seed(12);
    let engine: Arc<dyn Engine> = Arc::new(Instant0::new());
    let model = engine.info().id;
    let id = plexus_types::hash(b"bench session");
    let price = ModelPrice { model, input_per_1k: 10_000, output_per_1k: 40_000 };
    let view = SessionView {
        client: client.address(),
        provider: provider_key.address(),
        model,
        deposit: u128::MAX / 4,
        price,
        expiry_height: u64::MAX,
        refund_height: u64::MAX,
        settled_seq: 0,
        open: true,
        regions: Vec::new(),
    };
    let dir = std::env::temp_dir().join(format!("plexus-bench-ledger-{}", std::process::id()));
    let provider =
        Provider::open(OneSession { id, view }, provider_key.address(), ProviderConfig::new(dir.join("ledger.log")))?;
    let metered = plexus_serve::Server::new(provider_key.clone(), vec![engine.clone()])
        .with_metering(provider.metering())
        .with_config(plexus_serve::ServeConfig { chain_id: BENCH_CHAIN.into(), ..Default::default() })
        .router()
        .merge(plexus_provider::router(provider.clone()));
    let unmetered = plexus_serve::Server::new(provider_key.clone(), vec![engine]).router();
    let serve = |router: axum::Router| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok::<_, anyhow::Error>(format!("http://{addr}"))
    };
    let metered_url = serve(metered).await?;
    let unmetered_url = serve(unmetered).await?;

    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    let sig = plexus_types::receipt::SessionAuth { session: id, provider: provider_key.address(), nonce: 1 }
        .sign(&client, BENCH_CHAIN);
    let token: Value = http
        .post(format!("{metered_url}/plexus/v1/sessions/{id}/token"))
        .json(&json!({"nonce": 1, "signature": sig.to_string()}))
        .send()
        .await?
        .json()
        .await?;
    let token = token["token"].as_str().context("token")?.to_string();

    // The client side: a receipt after every response, sent with the next request.
    struct Acks {
        seq: u64,
        input: u64,
        latest: Option<String>,
        /// Receipts signed ahead, the one for seq `seq + 1` first.
        ahead: std::collections::VecDeque<String>,
    }
    let acks = Arc::new(Mutex::new(Acks { seq: 0, input: 0, latest: None, ahead: Default::default() }));
    let receipt_for = move |seq: u64, input: u64| {
        let owed = plexus_execution::price_of(&price, input, 0).unwrap_or(0);
        Receipt {
            session: id,
            seq,
            cum_input_tokens: input,
            cum_output_tokens: 0,
            cum_amount: owed,
            outputs_root: Hash::ZERO,
        }
    };
    let run = |url: String, metered: bool| {
        let (http, acks, client, token) = (http.clone(), acks.clone(), client.clone(), token.clone());
        let seconds = args.seconds;
        async move {
            let done = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut tasks = Vec::new();
            for _ in 0..32 {
                let (http, acks, client, token, url) =
                    (http.clone(), acks.clone(), client.clone(), token.clone(), url.clone());
                let (done, failed) = (done.clone(), failed.clone());
                tasks.push(tokio::spawn(async move {
                    let body = json!({"model": "instant", "input": "hi"});
                    while Instant::now() < deadline {
                        let mut r = http.post(format!("{url}/v1/embeddings")).json(&body);
                        if metered {
                            r = r.header("x-plexus-session", id.to_string()).header("x-plexus-token", &token);
                            if let Some(latest) = acks.lock().expect("acks").latest.clone() {
                                r = r.header("x-plexus-receipt", latest);
                            }
                        }
                        match r.send().await {
                            Ok(resp) if resp.status().is_success() => {
                                let _ = resp.bytes().await;
                                done.fetch_add(1, Ordering::Relaxed);
                                if metered {
                                    let mut a = acks.lock().expect("acks");
                                    a.seq += 1;
                                    a.input += 1;
                                    let next = match a.ahead.pop_front() {
                                        Some(signed) => signed,
                                        None => receipt_for(a.seq, a.input).sign(&client, BENCH_CHAIN).to_hex(),
                                    };
                                    a.latest = Some(next);
                                }
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            (done.load(Ordering::Relaxed) as f64 / seconds as f64, failed.load(Ordering::Relaxed))
        }
    };
    let (unmetered_rps, f1) = run(unmetered_url, false).await;
    let (metered_rps, f2) = run(metered_url.clone(), true).await;
    // Again with the client's signing done beforehand: in a real network the clients are other
    // machines, and here they would take CPU from the provider under test. The provider's work
    // per request is the same: every request brings a new receipt to verify and store.
    let (seq, input) = {
        let a = acks.lock().expect("acks");
        (a.seq, a.input)
    };
    let count = (metered_rps.max(1_000.0) * 2.5 * args.seconds as f64) as u64;
    let ahead = tokio::task::spawn_blocking({
        let client = client.clone();
        move || {
            (1..=count).map(|i| receipt_for(seq + i, input + i).sign(&client, BENCH_CHAIN).to_hex()).collect::<Vec<_>>()
        }
    })
    .await?;
    acks.lock().expect("acks").ahead = ahead.into();
    let (presigned_rps, f3) = run(metered_url, true).await;
    let receipts = acks.lock().expect("acks").seq;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Trivial { metered_rps, presigned_rps, unmetered_rps, failures: f1 + f2 + f3, receipts })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (overhead, trivial) = rt.block_on(async {
        let overhead = overhead(&args).await?;
        eprintln!("trivial workload, metered and not…");
        let trivial = trivial(&args).await?;
        Ok::<_, anyhow::Error>((overhead, trivial))
    })?;
    let body = markdown(&args, &overhead, &trivial);
    println!("{body}");
    if let Some(docs) = &args.docs {
        report::write_section(docs, "Paid inference", &body)?;
        eprintln!("wrote the \"Paid inference\" section of {}", docs.display());
    }
    Ok(())
}

fn markdown(args: &Args, o: &Overhead, t: &Trivial) -> String {
    let (engine, provider, gateway) = (o.engine, o.provider, o.gateway);
    let date = Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let lat_overhead = gateway.p50_ms - provider.p50_ms;
    // Throughput lost going through the gateway, in % of the provider's own (negative: gained).
    let tput_overhead = (provider.rps - gateway.rps) / provider.rps * 100.0;
    let goal = |ok: bool| if ok { "met" } else { "NOT met" };
    let bytes: usize = o.session_txs.iter().map(|(_, b)| b).sum();
    let txs: Vec<String> = o.session_txs.iter().map(|(k, b)| format!("{k} {b} B")).collect();
    format!(
        "`bench/paid/run.sh` (`plexus-bench paid --threads {threads}`). The same chat request every time (SmolLM2-135M\n\
         Q4_1, greedy, {max} output tokens), {threads} model threads, in three setups running side by side on this\n\
         machine: the engine called in-process; `plexus serve` over loopback HTTP; and `plexus gateway` in front\n\
         of a 1-validator devnet whose node serves the model (session, provider token, attestation check, one\n\
         signed receipt per response). Interleaved, so that machine noise weighs on all three alike: p50 of {seq}\n\
         requests one at a time, request i of every setup before request i+1 of any; throughput with 4 clients x\n\
         {pc} requests, setups taking turns over 2 rounds. The devnet's validator keeps producing blocks\n\
         meanwhile, on the same 2 cores.\n\n\
         Machine: {machine}. Commit {commit}, {date}.\n\n\
         | setup | p50 latency | throughput (4 clients) | output tokens |\n|---|---|---|---|\n\
         | engine in-process | {e50:.1} ms | {erps:.2} req/s | {et} |\n\
         | `plexus serve` (HTTP, no metering) | {p50:.1} ms | {prps:.2} req/s | {pt} |\n\
         | `plexus gateway` -> provider (metered, receipts) | {g50:.1} ms | {grps:.2} req/s | {gt} |\n\n\
         Protocol overhead (gateway vs provider directly): {lat:+.1} ms p50 (goal <= 1 ms: {g1}), {tput:.1}% less throughput\n\
         (goal <= 2%: {g2}). Server overhead (provider vs engine): {slat:+.1} ms p50. The noise floor of this run: the\n\
         same setup measured twice (first half against second half of its requests; its two throughput rounds)\n\
         differed by up to {nlat:.1} ms p50 and {ntput:.1}% throughput, so smaller differences are not resolved here.\n\n\
         Metered requests per second through one provider, trivial workload (an embedding fixture that answers\n\
         at once; the session held in memory instead of read from the chain; 32 concurrent clients in the same\n\
         process, each response acknowledged by a new signed receipt sent with the next request): **{prps2:.0} req/s**\n\
         metered with the clients' receipts signed before the timed window (the provider still verifies and stores\n\
         a new receipt per request), {mrps:.0} req/s metered with the clients signing on the same 2 cores, and\n\
         {urps:.0} req/s for the same server unmetered; {receipts} receipts verified and stored, {fails} failed\n\
         requests. Goal >= 20,000/s: {g3}.\n\n\
         Chain bytes for the gateway run's session ({reqs} requests): {bytes} B in {ntx} transactions ({txs}). The\n\
         claim carries only the latest cumulative receipt, so this does not grow with the number of requests.\n",
        threads = args.threads,
        max = MAX_TOKENS,
        seq = args.sequential,
        pc = args.per_client,
        machine = report::machine(),
        commit = report::commit(),
        e50 = engine.p50_ms,
        erps = engine.rps,
        et = engine.completion_tokens,
        p50 = provider.p50_ms,
        prps = provider.rps,
        pt = provider.completion_tokens,
        g50 = gateway.p50_ms,
        grps = gateway.rps,
        gt = gateway.completion_tokens,
        lat = lat_overhead,
        g1 = goal(lat_overhead <= 1.0),
        tput = tput_overhead,
        g2 = goal(tput_overhead <= 2.0),
        slat = provider.p50_ms - engine.p50_ms,
        nlat = [engine, provider, gateway].iter().map(|t| t.p50_spread_ms).fold(0.0, f64::max),
        ntput = [engine, provider, gateway].iter().map(|t| t.rps_spread_pct).fold(0.0, f64::max),
        mrps = t.metered_rps,
        receipts = t.receipts,
        urps = t.unmetered_rps,
        fails = t.failures,
        g3 = goal(t.presigned_rps >= 20_000.0),
        prps2 = t.presigned_rps,
        reqs = o.session_requests,
        bytes = bytes,
        ntx = o.session_txs.len(),
        txs = txs.join(", "),
    )
}
