//! The chain benchmark: a real devnet (`plexus devnet up --chain-only`) on loopback.
//!
//! - **Finality latency**: for every finalized block on a node's stream, the time from the
//!   proposer stamping the block (`timestamp_ms`, same machine, same clock) to this client
//!   receiving it finalized. Measured idle and under load.
//! - **Submit → finalized**: a transfer submitted to the API until it is seen finalized.
//! - **Throughput**: transfers from many funded accounts, kept a bounded window ahead of their
//!   finalized nonces, submitted in batches to every validator; finalized transfers per second
//!   over the steady part of the run.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use plexus_types::tx::{Payload, Transaction};
use plexus_types::{Address, Amount, Hash, PrivateKey, SignedTx, UNITS_PER_PLX};
use serde::Deserialize;
use serde_json::Value;

use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// The `plexus` binary to run.
    #[arg(long)]
    plexus: PathBuf,
    /// Validators in the devnet.
    #[arg(long, default_value_t = 4)]
    validators: u16,
    /// Funded accounts sending transfers in the throughput phase.
    #[arg(long, default_value_t = 400)]
    accounts: usize,
    /// Length of the throughput phase, in seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Length of the idle latency phase, in seconds.
    #[arg(long, default_value_t = 20)]
    idle_seconds: u64,
    /// Most unfinalized transfers per account (the mempool holds 256 per sender).
    #[arg(long, default_value_t = 200)]
    window: u64,
    /// The network version the devnet starts at (2: blocks travel compressed).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=2))]
    network_version: u16,
    /// Write the results to this file's "## Chain" section.
    #[arg(long)]
    docs: Option<PathBuf>,
    /// Keep the devnet's directory (logs, data) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

/// Kills the devnet (and so its nodes) when the benchmark ends, however it ends.
struct Devnet {
    child: Child,
    home: PathBuf,
    keep: bool,
}

impl Drop for Devnet {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; `devnet up` stops its nodes on SIGTERM.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.keep {
            eprintln!("kept the devnet in {}", self.home.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.home);
        }
    }
}

fn free_port_block(count: u16) -> anyhow::Result<u16> {
    for attempt in 0..500u32 {
        let base = 30_000 + ((std::process::id() * 7 + attempt * 131) % 20_000) as u16;
        if (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return Ok(base);
        }
    }
    bail!("no free block of {count} ports on 127.0.0.1")
}

fn start_devnet(args: &Args) -> anyhow::Result<(Devnet, Value)> {
    let home = std::env::temp_dir().join(format!("plexus-bench-chain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let base = free_port_block(10 * args.validators + 10)?;
    let mut child = Command::new(&args.plexus)
        .args(["devnet", "up", "--chain-only", "--validators", &args.validators.to_string()])
        .args(["--network-version", &args.network_version.to_string()])
        .args(["--base-port", &base.to_string(), "--home"])
        .arg(&home)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {}", args.plexus.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let devnet = Devnet { child, home: home.clone(), keep: args.keep };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("devnet is running") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(300)).context("the devnet did not start within 5 minutes")?;
    let info: Value = serde_json::from_str(&std::fs::read_to_string(home.join("devnet.json"))?)?;
    Ok((devnet, info))
}

/// A finalized block as the stream sends it (only what the benchmark reads).
#[derive(Deserialize)]
struct StreamBlock {
    height: u64,
    header: StreamHeader,
    txs: Vec<StreamTx>,
}

#[derive(Deserialize)]
struct StreamHeader {
    timestamp_ms: u64,
}

#[derive(Deserialize)]
struct StreamTx {
    hash: Hash,
    signer: Address,
}

/// A finalized block with when this client saw it.
struct Seen {
    at: Instant,
    latency_ms: f64,
    txs: usize,
}

#[derive(Default)]
struct Observed {
    blocks: Vec<Seen>,
    /// Finalized transactions per signer (= its nonce, since every included tx advances it).
    finalized: HashMap<Address, u64>,
    /// When each watched transaction was seen finalized.
    watched: HashMap<Hash, Instant>,
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Follows `api`'s finalized-block stream into `observed`.
async fn follow(api: String, observed: Arc<Mutex<Observed>>) -> anyhow::Result<()> {
    let response = reqwest::Client::new().get(format!("{api}/chain/v1/stream")).send().await?;
    let mut body = response.bytes_stream();
    let mut buffer = Vec::<u8>::new();
    while let Some(chunk) = body.next().await {
        buffer.extend_from_slice(&chunk?);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
            if !text.lines().any(|l| l == "event: block") {
                continue;
            }
            let Ok(block) = serde_json::from_str::<StreamBlock>(data) else { continue };
            let at = Instant::now();
            let latency_ms = now_unix_ms().saturating_sub(block.header.timestamp_ms) as f64;
            let mut o = observed.lock().expect("observed lock");
            for tx in &block.txs {
                *o.finalized.entry(tx.signer.clone()).or_default() += 1;
                o.watched.entry(tx.hash).or_insert(at);
            }
            o.blocks.push(Seen { at, latency_ms, txs: block.txs.len() });
            let _ = block.height;
        }
    }
    Ok(())
}

struct Chain {
    http: reqwest::Client,
    apis: Vec<String>,
    chain_id: String,
    fee: Amount,
}

impl Chain {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.http.get(format!("{}{path}", self.apis[0])).send().await?.error_for_status()?.json().await?)
    }

    async fn nonce(&self, address: &Address) -> anyhow::Result<u64> {
        let v = self.get(&format!("/chain/v1/accounts/{address}")).await?;
        v["nonce"].as_u64().context("account nonce")
    }

    fn transfer(&self, key: &PrivateKey, nonce: u64, to: &Address, amount: Amount) -> SignedTx {
        Transaction {
            signer: key.address(),
            nonce,
            fee: self.fee,
            payload: Payload::Transfer { to: to.clone(), amount },
        }
        .sign(key, &self.chain_id)
    }

    /// Submits a batch to one node; returns how many were refused.
    async fn submit(&self, node: usize, txs: &[SignedTx]) -> anyhow::Result<usize> {
        let hex: Vec<String> = txs.iter().map(|t| hex::encode(plexus_types::codec::to_vec(t))).collect();
        let url = format!("{}/chain/v1/txs/batch", self.apis[node % self.apis.len()]);
        let v: Value = self.http.post(url).json(&serde_json::json!({ "txs": hex })).send().await?.json().await?;
        let results = v["results"].as_array().context("batch results")?;
        Ok(results.iter().filter(|r| r.get("error").is_some()).count())
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    eprintln!("starting a {}-validator devnet…", args.validators);
    let (devnet, info) = start_devnet(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = rt.block_on(measure(&args, &info));
    drop(devnet);
    let results = result?;
    let body = results.markdown(&args);
    println!("{body}");
    if let Some(docs) = &args.docs {
        report::write_section(docs, "Chain", &body)?;
        eprintln!("wrote the \"Chain\" section of {}", docs.display());
    }
    Ok(())
}

struct Results {
    idle_block_ms: Vec<f64>,
    idle_tx_ms: Vec<f64>,
    load_block_ms: Vec<f64>,
    idle_blocks_per_s: f64,
    sustained_tx_s: f64,
    peak_block_txs: usize,
    window_s: f64,
    submitted: u64,
    refused: usize,
    /// What the validators sent for blocks during the load phase, summed over validators.
    load_traffic: Traffic,
    /// Blocks finalized during the load phase.
    load_blocks_n: usize,
    validators: u16,
}

/// Block bytes the validators sent, summed over them (their `/metrics`).
#[derive(Clone, Copy, Default)]
struct Traffic {
    payload: f64,
    wire: f64,
}

impl std::ops::Sub for Traffic {
    type Output = Traffic;
    fn sub(self, o: Traffic) -> Traffic {
        Traffic { payload: self.payload - o.payload, wire: self.wire - o.wire }
    }
}

/// Sums every validator's block traffic counters.
async fn traffic(http: &reqwest::Client, apis: &[String]) -> anyhow::Result<Traffic> {
    let mut t = Traffic::default();
    for api in apis {
        let text = http.get(format!("{api}/metrics")).send().await?.text().await?;
        t.payload += plexus_node::metrics::sum(&text, "block_payload_bytes_total");
        t.wire += plexus_node::metrics::sum(&text, "block_wire_bytes_total");
    }
    Ok(t)
}

async fn measure(args: &Args, info: &Value) -> anyhow::Result<Results> {
    let apis: Vec<String> = info["nodes"]
        .as_array()
        .context("devnet.json nodes")?
        .iter()
        .filter_map(|n| n["api"].as_str().map(String::from))
        .collect();
    let client = plexus_node::keyfile::load(Path::new(info["client"]["key_file"].as_str().context("client key")?))?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let params: Value = http.get(format!("{}/chain/v1/params", apis[0])).send().await?.json().await?;
    let fee = params["min_tx_fee"].as_u64().context("min_tx_fee")? as Amount;
    let chain =
        Chain { http, apis: apis.clone(), chain_id: info["chain_id"].as_str().context("chain id")?.into(), fee };

    let observed = Arc::new(Mutex::new(Observed::default()));
    let follower = tokio::spawn(follow(apis[0].clone(), observed.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Fund the senders from the devnet's client, a mempool window at a time.
    let keys: Vec<PrivateKey> = (0..args.accounts as u64).map(|i| PrivateKey::from_seed(1_000_000 + i)).collect();
    eprintln!("funding {} accounts…", keys.len());
    let mut nonce = chain.nonce(&client.address()).await?;
    for chunk in keys.chunks(200) {
        let txs: Vec<SignedTx> = chunk
            .iter()
            .enumerate()
            .map(|(i, k)| chain.transfer(&client, nonce + i as u64, &k.address(), 100 * UNITS_PER_PLX))
            .collect();
        let refused = chain.submit(0, &txs).await?;
        if refused > 0 {
            bail!("{refused} funding transfers were refused");
        }
        nonce += txs.len() as u64;
        wait_until(Duration::from_secs(60), || async { chain.nonce(&client.address()).await.ok() == Some(nonce) })
            .await?;
    }

    // Idle: one transfer every 250 ms.
    eprintln!("idle phase: {} s…", args.idle_seconds);
    let idle_start = Instant::now();
    let blocks_before = observed.lock().expect("observed").blocks.len();
    let mut sent = Vec::new();
    let sender = &keys[0];
    let mut n = 0;
    while idle_start.elapsed() < Duration::from_secs(args.idle_seconds) {
        let tx = chain.transfer(sender, n, &client.address(), 1);
        let hash = tx.hash();
        let at = Instant::now();
        if chain.submit(0, &[tx]).await? == 0 {
            sent.push((hash, at));
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_block_ms, idle_tx_ms, idle_blocks) = {
        let o = observed.lock().expect("observed");
        let idle: Vec<&Seen> = o.blocks[blocks_before..]
            .iter()
            .filter(|b| b.at <= idle_start + Duration::from_secs(args.idle_seconds))
            .collect();
        let tx_ms: Vec<f64> =
            sent.iter().filter_map(|(h, at)| o.watched.get(h).map(|seen| (*seen - *at).as_secs_f64() * 1e3)).collect();
        (sorted(idle.iter().map(|b| b.latency_ms).collect()), sorted(tx_ms), idle.len())
    };

    // Load: every account keeps `window` transfers in flight.
    eprintln!("load phase: {} accounts, {} s…", keys.len(), args.seconds);
    let mut next: Vec<u64> = Vec::with_capacity(keys.len());
    for k in &keys {
        next.push(chain.nonce(&k.address()).await?);
    }
    let traffic_before = traffic(&chain.http, &apis).await?;
    let load_start = Instant::now();
    let blocks_at_load = observed.lock().expect("observed").blocks.len();
    let (mut submitted, mut refused) = (0u64, 0usize);
    let mut round = 0usize;
    while load_start.elapsed() < Duration::from_secs(args.seconds) {
        let finalized: Vec<u64> = {
            let o = observed.lock().expect("observed");
            keys.iter().map(|k| o.finalized.get(&k.address()).copied().unwrap_or(0)).collect()
        };
        let mut batch = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            next[i] = next[i].max(finalized[i]);
            while next[i] < finalized[i] + args.window {
                batch.push(chain.transfer(k, next[i], &client.address(), 1));
                next[i] += 1;
            }
        }
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        submitted += batch.len() as u64;
        let sends = batch.chunks(2048).enumerate().map(|(j, c)| chain.submit(round + j, c));
        for r in futures::future::join_all(sends).await {
            refused += r.unwrap_or(0);
        }
        round += 1;
    }
    let load_end = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let load_traffic = traffic(&chain.http, &apis).await? - traffic_before;
    follower.abort();

    let o = observed.lock().expect("observed");
    let warmup = Duration::from_secs((args.seconds / 6).max(2));
    let steady: Vec<&Seen> =
        o.blocks[blocks_at_load..].iter().filter(|b| b.at >= load_start + warmup && b.at <= load_end).collect();
    let window_s = (load_end - (load_start + warmup)).as_secs_f64();
    let steady_txs: usize = steady.iter().map(|b| b.txs).sum();
    let load_blocks: Vec<f64> =
        o.blocks[blocks_at_load..].iter().filter(|b| b.at <= load_end).map(|b| b.latency_ms).collect();
    Ok(Results {
        idle_block_ms,
        idle_tx_ms,
        load_block_ms: sorted(load_blocks),
        idle_blocks_per_s: idle_blocks as f64 / args.idle_seconds as f64,
        sustained_tx_s: steady_txs as f64 / window_s,
        peak_block_txs: steady.iter().map(|b| b.txs).max().unwrap_or(0),
        window_s,
        submitted,
        refused,
        load_traffic,
        load_blocks_n: o.blocks.len() - blocks_at_load,
        validators: args.validators,
    })
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

async fn wait_until<F, Fut>(limit: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        if start.elapsed() > limit {
            bail!("timed out after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

impl Results {
    fn markdown(&self, args: &Args) -> String {
        let q = |v: &[f64], p: f64| report::quantile(v, p);
        let date = Command::new("date")
            .args(["-u", "+%F"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let goal = |ok: bool| if ok { "met" } else { "NOT met" };
        format!(
            "`bench/chain/run.sh` (`plexus-bench chain --validators {v} --accounts {a} --seconds {s}`): a {v}-validator\n\
             `plexus devnet up --chain-only` on loopback, all validators on this one machine, default parameters\n\
             (200 ms block interval). Finality latency is from the proposer stamping a block to a client\n\
             receiving it finalized on `/chain/v1/stream` (same clock). Throughput: {a} funded accounts, each\n\
             keeping {w} transfers in flight, batches to every validator; finalized transfers per second over\n\
             the last {win:.0} s of the run (the first {warm} s are warm-up).\n\n\
             Machine: {machine}. Commit {commit}, {date}.\n\n\
             | measure | p50 | p99 | goal |\n|---|---|---|---|\n\
             | finality latency, idle ({ib} blocks) | {i50:.0} ms | {i99:.0} ms | p50 <= 300 ms: {g1} |\n\
             | transfer submit -> seen finalized, idle ({it} txs) | {t50:.0} ms | {t99:.0} ms | |\n\
             | finality latency under load ({lb} blocks) | {l50:.0} ms | {l99:.0} ms | |\n\n\
             | measure | value | goal |\n|---|---|---|\n\
             | sustained finalized transfers | {tps:.0} tx/s | >= 10,000 tx/s: {g2} |\n\
             | largest block in the steady window | {peak} txs | |\n\
             | blocks per second, idle | {bps:.1} | >= 1 |\n\
             | transfers submitted / refused by the API | {sub} / {refused} | |\n\
             | block bytes each validator sent per finalized block under load, network v{nv} | {bpb:.0} on the wire ({ppb:.0} before framing) | |\n",
            v = args.validators,
            a = args.accounts,
            s = args.seconds,
            w = args.window,
            win = self.window_s,
            warm = (args.seconds / 6).max(2),
            machine = report::machine(),
            commit = report::commit(),
            ib = self.idle_block_ms.len(),
            i50 = q(&self.idle_block_ms, 0.5),
            i99 = q(&self.idle_block_ms, 0.99),
            g1 = goal(q(&self.idle_block_ms, 0.5) <= 300.0),
            it = self.idle_tx_ms.len(),
            t50 = q(&self.idle_tx_ms, 0.5),
            t99 = q(&self.idle_tx_ms, 0.99),
            lb = self.load_block_ms.len(),
            l50 = q(&self.load_block_ms, 0.5),
            l99 = q(&self.load_block_ms, 0.99),
            tps = self.sustained_tx_s,
            g2 = goal(self.sustained_tx_s >= 10_000.0),
            peak = self.peak_block_txs,
            bps = self.idle_blocks_per_s,
            sub = self.submitted,
            refused = self.refused,
            nv = args.network_version,
            bpb = self.per_validator_block().1,
            ppb = self.per_validator_block().0,
        )
    }

    /// Block bytes each validator sent per finalized block during the load phase: before
    /// framing, and on the wire.
    fn per_validator_block(&self) -> (f64, f64) {
        let per = |bytes: f64| bytes / self.validators as f64 / self.load_blocks_n.max(1) as f64;
        (per(self.load_traffic.payload), per(self.load_traffic.wire))
    }
}

/// Network v1 against v2: the same load on two fresh devnets, one per version; block bytes
/// each validator sends per finalized block, and finality, side by side.
pub fn run_network(mut args: Args) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for version in [1, 2] {
        args.network_version = version;
        eprintln!("network v{version}: starting a {}-validator devnet…", args.validators);
        let (devnet, info) = start_devnet(&args)?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let result = rt.block_on(measure(&args, &info));
        drop(devnet);
        runs.push((version, result?));
    }
    let q = |v: &[f64], p: f64| report::quantile(v, p);
    let mut body = format!(
        "`bench/network/run.sh` (`plexus-bench network --validators {v} --accounts {a} --seconds {s}`): the\n\
         load of the Chain benchmark (every account keeping {w} transfers in flight) on two fresh\n\
         {v}-validator devnets on loopback, one started at network v1 (blocks sent as consensus encodes\n\
         them) and one at v2 (blocks sent as zstd frames). Bytes are what the validators' block senders\n\
         counted (`block_payload_bytes`, `block_wire_bytes` on `/metrics`), summed over validators and\n\
         divided by validators and by the blocks finalized in the same window; votes, certificates and\n\
         transaction gossip are not included. v1 is the anchor, measured in the same run.\n\n\
         Machine: {machine}. Commit {commit}.\n\n\
         | network | blocks | block bytes / validator / block (before framing) | on the wire | saved | finality p50 / p99 under load | transfers/s |\n\
         |---|---|---|---|---|---|---|\n",
        v = args.validators,
        a = args.accounts,
        s = args.seconds,
        w = args.window,
        machine = report::machine(),
        commit = report::commit(),
    );
    for (version, r) in &runs {
        let (payload, wire) = r.per_validator_block();
        let saved = if payload > 0.0 { 100.0 * (1.0 - wire / payload) } else { 0.0 };
        body.push_str(&format!(
            "| v{version} | {n} | {payload:.0} | {wire:.0} | {saved:.1}% | {p50:.0} / {p99:.0} ms | {tps:.0} |\n",
            n = r.load_blocks_n,
            p50 = q(&r.load_block_ms, 0.5),
            p99 = q(&r.load_block_ms, 0.99),
            tps = r.sustained_tx_s,
        ));
    }
    println!("{body}");
    if let Some(docs) = &args.docs {
        report::write_section(docs, "Network versions", &body)?;
        eprintln!("wrote the \"Network versions\" section of {}", docs.display());
    }
    Ok(())
}
