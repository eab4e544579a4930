//! `plexus devnet up`: a whole local network in one command — the models pulled, genesis, one
//! home per validator, real `plexus node run` processes on loopback that are validators and
//! providers at once, a funded client and its gateway — supervised until Ctrl-C or SIGTERM.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use plexus_inference::models::{ModelCache, Progress};
use plexus_node::{NodeConfig, keyfile};
use plexus_types::genesis::{GenesisAccount, GenesisValidator};
use plexus_types::{Genesis, Params, PrivateKey, UNITS_PER_PLX};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The models every devnet provider serves: two LLMs of different architectures (SmolLM2, a
/// llama, and Gemma 3), sentence embeddings, and the three edge tensor models (trained here from
/// public data on first use; served by KServe v2 routes).
pub const DEVNET_MODELS: [&str; 6] =
    ["smollm2-135m-instruct", "gemma3-270m", "all-minilm-l6-v2", "ecg-heartbeat", "demand-forecast", "traffic-anomaly"];

#[derive(Subcommand)]
pub enum DevnetCmd {
    /// Create (or resume) a local network and run it in the foreground.
    #[command(long_about = "Create (or resume) a local network and run it in the foreground.\n\n\
Pulls the models (once, into the shared cache), writes genesis and one home per validator, and \
starts every validator as a real `plexus node run` process that also serves SmolLM2, Gemma 3 270M, MiniLM and \
the three edge tensor models (heartbeats, electricity demand, traffic anomalies) as a provider. Then it starts `plexus gateway` with a funded client key and prints its OpenAI base URL. \
Everything is described in DIR/devnet.json. Ctrl-C stops it all; running it again resumes.\n\n\
Ports: node i uses BASE+10i (p2p), BASE+10i+1 (chain API) and BASE+10i+2 (inference); the gateway \
uses BASE+10N.")]
    Up {
        /// Number of validators (each also a provider).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=16))]
        validators: u16,
        /// Directory for the network (homes, logs, devnet.json; default ~/.plexus/devnet).
        #[arg(long)]
        home: Option<PathBuf>,
        /// First port (see above).
        #[arg(long, default_value_t = 26600)]
        base_port: u16,
        /// The address every node and the gateway listen on and advertise (genesis p2p
        /// addresses, provider endpoints, devnet.json). The default keeps the network on this
        /// machine; give this machine's LAN or public IP so machines elsewhere can join it
        /// (`plexus node init --join http://HOST:BASE+1`). Fixed when the network is created.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Blocks per epoch.
        #[arg(long, default_value_t = 100)]
        epoch_length: u64,
        /// Delete an existing network in this directory and start a new one.
        #[arg(long)]
        reset: bool,
        /// Seconds to wait for the network to be ready.
        #[arg(long, default_value_t = 300)]
        startup_timeout: u64,
        /// Only the chain: no models, providers or gateway (for chain benchmarks and tests).
        #[arg(long)]
        chain_only: bool,
        /// Threads for each provider's text model (0 = every core).
        #[arg(long, default_value_t = 0)]
        threads: u32,
        /// Seconds between each provider's batches of receipt claims.
        #[arg(long, default_value_t = 5)]
        claim_interval: u64,
        /// Tokens a provider delivers beyond a client's last receipt before it stops serving it.
        #[arg(long, default_value_t = 512)]
        credit_tokens: u64,
        /// The execution version the chain starts at (8: generations constrained by a grammar
        /// (structured outputs) can be challenged on chain; 7: generations with penalties or logit
        /// biases can be challenged on chain; 6: validators register BLS consensus keys,
        /// which consensus v2 needs; 5: challenges of tensor inferences on chain; 4: tensor models
        /// paid per inference and sessions restricted to regions; 3: verified inference with
        /// challenges and slashing; lower ones to rehearse the upgrades).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=8))]
        execution_version: u16,
        /// The network version the chain starts at (2: proposed blocks travel compressed; 1 to
        /// rehearse voting v2 in, or to compare).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=2))]
        network_version: u16,
        /// Share of paid generations the devnet's gateway re-runs to check them (0 to 1).
        #[arg(long, default_value_t = plexus_gateway::audit::AUDIT_RATE_DEFAULT)]
        audit_rate: f64,
    },
}

/// What `devnet.json` records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevnetInfo {
    pub chain_id: String,
    pub home: PathBuf,
    pub nodes: Vec<NodeInfo>,
    pub client: ClientInfo,
    /// Absent for `--chain-only` networks.
    #[serde(default)]
    pub gateway: Option<GatewayInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub address: String,
    pub api: String,
    pub p2p: String,
    /// The node's OpenAI-compatible inference endpoint (absent for `--chain-only`).
    #[serde(default)]
    pub inference: Option<String>,
    pub home: PathBuf,
    pub key_file: PathBuf,
    pub log: PathBuf,
    #[serde(default)]
    pub pid: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientInfo {
    pub address: String,
    pub key_file: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GatewayInfo {
    /// The OpenAI base URL, e.g. `http://127.0.0.1:26640/v1`.
    pub url: String,
    pub home: PathBuf,
    pub log: PathBuf,
    #[serde(default)]
    pub pid: Option<u32>,
    /// The key apps send as `Authorization: Bearer` (the OpenAI SDKs' `api_key`).
    #[serde(default)]
    pub api_key: String,
    /// Share of paid generations it re-runs to check them.
    #[serde(default = "default_audit_rate")]
    pub audit_rate: f64,
}

fn default_audit_rate() -> f64 {
    plexus_gateway::audit::AUDIT_RATE_DEFAULT
}

struct Options {
    validators: u16,
    base_port: u16,
    host: std::net::IpAddr,
    epoch_length: u64,
    chain_only: bool,
    threads: u32,
    claim_interval: u64,
    credit_tokens: u64,
    execution_version: u16,
    network_version: u16,
    audit_rate: f64,
}

pub fn run(cmd: DevnetCmd) -> anyhow::Result<()> {
    match cmd {
        DevnetCmd::Up {
            validators,
            home,
            base_port,
            host,
            epoch_length,
            reset,
            startup_timeout,
            chain_only,
            threads,
            claim_interval,
            credit_tokens,
            execution_version,
            network_version,
            audit_rate,
        } => {
            if host.is_unspecified() {
                bail!("--host {host} cannot be dialed: give the address other machines reach this one at");
            }
            if !(0.0..=1.0).contains(&audit_rate) {
                bail!("--audit-rate {audit_rate} is not between 0 and 1");
            }
            let home = home.unwrap_or_else(|| super::default_home().join("devnet"));
            let options = Options {
                validators,
                base_port,
                host,
                epoch_length,
                chain_only,
                threads,
                claim_interval,
                credit_tokens,
                execution_version,
                network_version,
                audit_rate,
            };
            up(&home, &options, reset, Duration::from_secs(startup_timeout))
        }
    }
}

/// The processes of a running devnet; stopped (gateway first) when dropped.
struct Children {
    nodes: Vec<Child>,
    gateway: Option<Child>,
}

impl Drop for Children {
    fn drop(&mut self) {
        // The gateway closes its sessions on the way out, which needs the chain still up.
        if let Some(g) = self.gateway.as_mut() {
            stop_all(std::slice::from_mut(g), Duration::from_secs(20));
        }
        stop_all(&mut self.nodes, Duration::from_secs(10));
    }
}

fn up(home: &Path, options: &Options, reset: bool, timeout: Duration) -> anyhow::Result<()> {
    let manifest = home.join("devnet.json");
    if reset && home.exists() {
        std::fs::remove_dir_all(home).with_context(|| format!("cannot remove {}", home.display()))?;
    }
    let mut info = if manifest.exists() {
        let text = std::fs::read_to_string(&manifest)?;
        let info: DevnetInfo =
            serde_json::from_str(&text).with_context(|| format!("{} is corrupt; use --reset", manifest.display()))?;
        eprintln!(
            "resuming the devnet in {} ({} validators); use --reset for a new one",
            home.display(),
            info.nodes.len()
        );
        info
    } else {
        create(home, options)?
    };
    let with_models = info.gateway.is_some();
    if with_models {
        pull_models()?;
    }

    let exe = std::env::current_exe().context("cannot find the plexus binary")?;
    let mut children = Children { nodes: Vec::new(), gateway: None };
    spawn_nodes(&exe, &mut info, &mut children.nodes)?;
    std::fs::write(&manifest, serde_json::to_string_pretty(&info)?)?;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(supervise(&exe, &manifest, &mut info, &mut children, timeout))
}

/// Fetches the devnet's models into the shared cache, with a progress bar.
fn pull_models() -> anyhow::Result<()> {
    let cache = ModelCache::from_env();
    for name in DEVNET_MODELS {
        if cache.find(name)?.is_none() {
            eprintln!("pulling {name} into {} (once)…", cache.root().display());
        }
        cache.pull(name, Progress::Show).with_context(|| format!("pulling {name}"))?;
    }
    Ok(())
}

fn create(home: &Path, options: &Options) -> anyhow::Result<DevnetInfo> {
    let validators = options.validators;
    if options.base_port as u32 + 10 * validators as u32 + 2 > u16::MAX as u32 {
        bail!("--base-port {} leaves no room for {validators} nodes", options.base_port);
    }
    std::fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
    let chain_id = "plexus-devnet".to_string();
    let mut params = Params::default();
    params.set("epoch_length_blocks", options.epoch_length as u128)?;
    // A short grace period (30 s of blocks), so a closed session's refund shows within a minute.
    params.set("session_grace_blocks", 150)?;
    // Votes of 10 s (50 blocks), so a proposal can be tried out in a minute.
    params.set("voting_period_blocks", 50)?;
    let stake = 10 * params.min_stake;
    let balance = 1_000_000 * UNITS_PER_PLX;
    let base = options.base_port;

    let mut nodes = Vec::new();
    let mut genesis_validators = Vec::new();
    let mut accounts = Vec::new();
    // Every node of a chain-only devnet shares this machine's cores: a runtime per node with
    // a thread per core would have them preempt each other (measured on 2 cores, 4
    // validators: ~20% more finalized transfers per second with one worker each). Nodes that
    // also serve models keep a thread per core: their runtime streams responses too, and one
    // worker did not shorten the rolling-upgrade test's finality gaps (1.1 and 4.8 s, against
    // 2.0 and 3.3 s with the default).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = match options.chain_only {
        true => format!("worker_threads = {}", (cpus / usize::from(validators)).max(1)),
        false => "worker_threads = 0".to_string(),
    };
    for i in 0..validators {
        let name = format!("node-{i}");
        let dir = home.join(&name);
        std::fs::create_dir_all(dir.join("data"))?;
        let key = PrivateKey::generate();
        keyfile::save(&dir.join("key.json"), &key)?;
        let host = options.host;
        let p2p = std::net::SocketAddr::new(host, base + 10 * i).to_string();
        let api = std::net::SocketAddr::new(host, base + 10 * i + 1).to_string();
        let inference = std::net::SocketAddr::new(host, base + 10 * i + 2).to_string();
        let config = if options.chain_only {
            NodeConfig::template(p2p.parse()?, api.parse()?)
        } else {
            NodeConfig::template_provider(p2p.parse()?, api.parse()?, inference.parse()?, options.threads)
                .replace(
                    "claim_interval_secs = 15",
                    &format!("claim_interval_secs = {}", options.claim_interval.max(1)),
                )
                .replace("credit_tokens = 512", &format!("credit_tokens = {}", options.credit_tokens))
                .replace("region = \"local\"", &format!("region = \"devnet-{}\"", i % 2))
                .replace(
                    "models = [\"smollm2-135m-instruct\", \"all-minilm-l6-v2\"]",
                    &format!("models = {DEVNET_MODELS:?}"),
                )
        }
        .replace("worker_threads = 0", &workers);
        std::fs::write(dir.join("config.toml"), config)?;
        genesis_validators.push(GenesisValidator { address: key.address(), stake, p2p_address: p2p.clone() });
        accounts.push(GenesisAccount { address: key.address(), balance });
        nodes.push(NodeInfo {
            name,
            address: key.address().to_string(),
            api: format!("http://{api}"),
            p2p,
            inference: (!options.chain_only).then(|| format!("https://{inference}")),
            key_file: dir.join("key.json"),
            log: dir.join("node.log"),
            home: dir,
            pid: None,
        });
    }
    let client_dir = home.join("client");
    std::fs::create_dir_all(&client_dir)?;
    let client = PrivateKey::generate();
    keyfile::save(&client_dir.join("key.json"), &client)?;
    accounts.push(GenesisAccount { address: client.address(), balance });

    let versions = plexus_types::VersionVector {
        execution: options.execution_version,
        network: options.network_version,
        ..plexus_types::VersionVector::V1
    };
    let genesis = Genesis { chain_id: chain_id.clone(), accounts, validators: genesis_validators, params, versions };
    genesis.validate()?;
    for node in &nodes {
        std::fs::write(node.home.join("genesis.json"), genesis.to_json())?;
    }
    std::fs::write(home.join("genesis.json"), genesis.to_json())?;
    let gateway = (!options.chain_only).then(|| GatewayInfo {
        url: format!("http://{}/v1", std::net::SocketAddr::new(options.host, base + 10 * validators)),
        home: home.join("gateway"),
        log: home.join("gateway").join("gateway.log"),
        pid: None,
        api_key: hex::encode(PrivateKey::generate().secret_bytes())[..32].to_string(),
        audit_rate: options.audit_rate,
    });
    Ok(DevnetInfo {
        chain_id,
        home: home.to_path_buf(),
        nodes,
        client: ClientInfo { address: client.address().to_string(), key_file: client_dir.join("key.json") },
        gateway,
    })
}

fn log_filter() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| super::DEFAULT_LOG_FILTER.into())
}

fn spawn_nodes(exe: &Path, info: &mut DevnetInfo, children: &mut Vec<Child>) -> anyhow::Result<()> {
    for node in &mut info.nodes {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        let child = Command::new(exe)
            .args(["node", "run", "--home"])
            .arg(&node.home)
            .env("RUST_LOG", log_filter())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C in the terminal reaches only the supervisor,
            // which stops the gateway before the nodes it needs.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", node.name))?;
        node.pid = Some(child.id());
        children.push(child);
    }
    Ok(())
}

fn spawn_gateway(exe: &Path, info: &mut DevnetInfo) -> anyhow::Result<Option<Child>> {
    let Some(g) = info.gateway.as_mut() else { return Ok(None) };
    std::fs::create_dir_all(&g.home)?;
    let listen = g.url.trim_start_matches("http://").trim_end_matches("/v1").to_string();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&g.log)?;
    let mut cmd = Command::new(exe);
    cmd.args(["gateway", "--listen", &listen, "--budget", "10000plx", "--home"])
        .arg(&g.home)
        .arg("--key")
        .arg(&info.client.key_file)
        .args(["--audit-rate", &g.audit_rate.to_string()]);
    for n in &info.nodes {
        cmd.args(["--node", &n.api]);
    }
    let child = cmd
        .env("RUST_LOG", log_filter())
        // Not on the command line, where every local user could read it.
        .env("PLEXUS_GATEWAY_API_KEY", &g.api_key)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start the gateway")?;
    g.pid = Some(child.id());
    Ok(Some(child))
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// Whether every node has finalized a few blocks, and (with models) registered as a provider.
async fn readiness(http: &reqwest::Client, info: &DevnetInfo) -> (bool, String) {
    let mut heights = Vec::new();
    for node in &info.nodes {
        let h = get_json(http, &format!("{}/chain/v1/status", node.api)).await.and_then(|v| v["height"].as_u64());
        heights.push(h.unwrap_or(0));
    }
    let chain_ready = heights.iter().all(|&h| h >= 2);
    if info.gateway.is_none() {
        return (chain_ready, format!("waiting for finalized blocks: heights {heights:?}"));
    }
    let providers = get_json(http, &format!("{}/chain/v1/providers", info.nodes[0].api))
        .await
        .and_then(|v| v["providers"].as_array().map(Vec::len))
        .unwrap_or(0);
    let ready = chain_ready && providers >= info.nodes.len();
    (ready, format!("heights {heights:?}; providers registered {providers}/{} (loading models)", info.nodes.len()))
}

async fn supervise(
    exe: &Path,
    manifest: &Path,
    info: &mut DevnetInfo,
    children: &mut Children,
    timeout: Duration,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message("starting validators");
    bar.enable_steady_tick(Duration::from_millis(120));
    let started = Instant::now();
    // One signal listener for the whole run, so a Ctrl-C during start-up is not lost either.
    let shutdown = plexus_node::run::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        for (node, child) in info.nodes.iter().zip(children.nodes.iter_mut()) {
            if let Some(status) = child.try_wait()? {
                bar.finish_and_clear();
                bail!("{} exited during startup ({status}); last log lines:\n{}", node.name, tail(&node.log, 20));
            }
        }
        let (ready, message) = readiness(&http, info).await;
        bar.set_message(message);
        if ready {
            break;
        }
        if started.elapsed() > timeout {
            bar.finish_and_clear();
            bail!("the devnet was not ready after {:?}; see the logs in {}", timeout, info.home.display());
        }
        tokio::select! {
            _ = &mut shutdown => {
                bar.finish_and_clear();
                eprintln!("\nstopping the devnet…");
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    children.gateway = spawn_gateway(exe, info)?;
    if let Some(g) = &info.gateway {
        bar.set_message("starting the gateway");
        let health = g.url.trim_end_matches("/v1").to_string() + "/health";
        loop {
            if get_json(&http, &health).await.is_some() {
                break;
            }
            if let Some(status) = children.gateway.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bar.finish_and_clear();
                bail!("the gateway exited during startup ({status}); last log lines:\n{}", tail(&g.log, 20));
            }
            if started.elapsed() > timeout {
                bar.finish_and_clear();
                bail!("the gateway did not start; see {}", g.log.display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    std::fs::write(manifest, serde_json::to_string_pretty(&*info)?)?;
    bar.finish_and_clear();
    print_summary(info);

    let mut reported = vec![false; children.nodes.len() + 1];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                eprintln!("\nstopping the devnet (the gateway closes its sessions first)…");
                return Ok(());
            }
            _ = tick.tick() => {
                for (i, child) in children.nodes.iter_mut().enumerate() {
                    if !reported[i]
                        && let Some(status) = child.try_wait()? {
                            reported[i] = true;
                            eprintln!("{} exited ({status}); the other validators continue. Log: {}", info.nodes[i].name, info.nodes[i].log.display());
                        }
                }
                let last = children.nodes.len();
                if let (Some(child), Some(g), false) = (children.gateway.as_mut(), info.gateway.as_ref(), reported[last])
                    && let Some(status) = child.try_wait()? {
                        reported[last] = true;
                        eprintln!("the gateway exited ({status}). Log: {}", g.log.display());
                    }
            }
        }
    }
}

fn print_summary(info: &DevnetInfo) {
    let plexus = std::env::current_exe().map_or_else(|_| "plexus".into(), |p| p.display().to_string());
    println!("Plexus devnet is running: chain {} with {} validators", info.chain_id, info.nodes.len());
    println!();
    for n in &info.nodes {
        let inference = n.inference.as_deref().map(|u| format!("  inference {u}")).unwrap_or_default();
        println!("  {}  api {}  p2p {}{inference}  address {}", n.name, n.api, n.p2p, &n.address[..16]);
    }
    println!();
    println!("  funded client key   {}", info.client.key_file.display());
    println!("  network description {}", info.home.join("devnet.json").display());
    if let Some(g) = &info.gateway {
        let base = &g.url;
        let key = &g.api_key;
        println!("  gateway (OpenAI)    {base}");
        println!("  gateway API key     {key}   (also in devnet.json)");
        println!(
            "  gateway audits      {:.1}% of generations (re-run on its own model copy; `plexus query challenges`)",
            g.audit_rate * 100.0
        );
        println!();
        println!("Chat through the gateway (any OpenAI SDK works the same way):");
        println!(
            "  curl -N {base}/chat/completions -H 'Content-Type: application/json' -H 'Authorization: Bearer {key}' \\"
        );
        println!(
            "    -d '{{\"model\": \"smollm2-135m-instruct\", \"stream\": true, \"messages\": [{{\"role\": \"user\", \"content\": \"Name three rivers.\"}}]}}'"
        );
        println!();
        println!("  python3 - <<'EOF'");
        println!("  from openai import OpenAI");
        println!("  client = OpenAI(base_url=\"{base}\", api_key=\"{key}\")");
        println!("  for chunk in client.chat.completions.create(model=\"smollm2-135m-instruct\", stream=True,");
        println!("          messages=[{{\"role\": \"user\", \"content\": \"Name three rivers.\"}}]):");
        println!("      print(chunk.choices[0].delta.content or \"\", end=\"\", flush=True)");
        println!(
            "  print(client.completions.create(model=\"gemma3-270m\", prompt=\"France: Paris\\nItaly:\", max_tokens=3).choices[0].text)"
        );
        println!(
            "  print(client.embeddings.create(model=\"all-minilm-l6-v2\", input=\"hello\").data[0].embedding[:4])"
        );
        println!("  EOF");
        println!();
        let root = base.trim_end_matches("/v1");
        println!("Edge tensor models (KServe v2) through the gateway, paid per inference (one row = one):");
        println!(
            "  python3 -c 'import json, math; print(json.dumps({{\"inputs\": [{{\"name\": \"ecg_window\", \"shape\": [1, 256], \"datatype\": \"FP32\", \"data\": [math.exp(-((i - 90) / 6) ** 2) for i in range(256)]}}]}}))' > /tmp/beat.json"
        );
        println!(
            "  curl -s {root}/v2/models/ecg-heartbeat/infer -H 'Content-Type: application/json' -H 'Authorization: Bearer {key}' -d @/tmp/beat.json"
        );
        println!();
        println!("Then see who earned what:");
        println!("  {plexus} query sessions --node {} --client {}", info.nodes[0].api, info.client.address);
        println!("  curl {}/chain/v1/providers", info.nodes[0].api);
    } else {
        println!();
        println!("Try:");
        println!("  {plexus} query status --node {}", info.nodes[0].api);
        println!(
            "  {plexus} tx transfer --node {} --key {} --to {} --amount 5plx",
            info.nodes[0].api,
            info.client.key_file.display(),
            info.nodes[1 % info.nodes.len()].address
        );
    }
    println!("  curl -N {}/chain/v1/stream", info.nodes[0].api);
    println!();
    println!("Press Ctrl-C to stop everything (data stays in {}; run again to resume).", info.home.display());
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SIGTERM every child, wait up to `grace`, then SIGKILL what is left.
fn stop_all(children: &mut [Child], grace: Duration) {
    for child in children.iter_mut() {
        if child.try_wait().ok().flatten().is_none() {
            // SAFETY: sending a signal to a child process we spawned.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + grace;
    for child in children.iter_mut() {
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}
