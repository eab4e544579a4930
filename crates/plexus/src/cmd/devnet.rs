//! `plexus devnet up`: a whole local network in one command — genesis, one home per validator,
//! real `plexus node run` processes on loopback — supervised until Ctrl-C or SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use plexus_node::{NodeConfig, keyfile};
use plexus_types::genesis::{GenesisAccount, GenesisValidator};
use plexus_types::{Genesis, Params, PrivateKey, UNITS_PER_PLX};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Subcommand)]
pub enum DevnetCmd {
    /// Create (or resume) a local network and run it in the foreground.
    Up {
        /// Number of validators.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=16))]
        validators: u16,
        /// Directory for the network (homes, logs, devnet.json).
        #[arg(long)]
        home: Option<PathBuf>,
        /// First port; node i uses base+10i (p2p) and base+10i+1 (API).
        #[arg(long, default_value_t = 26600)]
        base_port: u16,
        /// Blocks per epoch.
        #[arg(long, default_value_t = 100)]
        epoch_length: u64,
        /// Delete an existing network in this directory and start a new one.
        #[arg(long)]
        reset: bool,
        /// Seconds to wait for the first finalized blocks.
        #[arg(long, default_value_t = 180)]
        startup_timeout: u64,
        /// Only the chain: no models, providers or gateway (for chain benchmarks and tests).
        #[arg(long)]
        chain_only: bool,
    },
}

/// What `devnet.json` records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevnetInfo {
    pub chain_id: String,
    pub home: PathBuf,
    pub nodes: Vec<NodeInfo>,
    pub client: ClientInfo,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub address: String,
    pub api: String,
    pub p2p: String,
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

pub fn run(cmd: DevnetCmd) -> anyhow::Result<()> {
    match cmd {
        DevnetCmd::Up { validators, home, base_port, epoch_length, reset, startup_timeout, chain_only: _ } => {
            let home = home.unwrap_or_else(|| super::default_home().join("devnet"));
            up(&home, validators, base_port, epoch_length, reset, Duration::from_secs(startup_timeout))
        }
    }
}

fn up(home: &Path, validators: u16, base_port: u16, epoch_length: u64, reset: bool, timeout: Duration) -> anyhow::Result<()> {
    let manifest = home.join("devnet.json");
    if reset && home.exists() {
        std::fs::remove_dir_all(home).with_context(|| format!("cannot remove {}", home.display()))?;
    }
    let mut info = if manifest.exists() {
        let text = std::fs::read_to_string(&manifest)?;
        let info: DevnetInfo = serde_json::from_str(&text).with_context(|| format!("{} is corrupt; use --reset", manifest.display()))?;
        eprintln!("resuming the devnet in {} ({} validators); use --reset for a new one", home.display(), info.nodes.len());
        info
    } else {
        create(home, validators, base_port, epoch_length)?
    };

    let exe = std::env::current_exe().context("cannot find the plexus binary")?;
    let mut children: Vec<Child> = Vec::new();
    let spawned = spawn_nodes(&exe, &mut info, &mut children);
    if let Err(e) = spawned {
        stop_all(&mut children);
        return Err(e);
    }
    std::fs::write(&manifest, serde_json::to_string_pretty(&info)?)?;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(supervise(&info, &mut children, timeout));
    stop_all(&mut children);
    result
}

fn spawn_nodes(exe: &Path, info: &mut DevnetInfo, children: &mut Vec<Child>) -> anyhow::Result<()> {
    for node in &mut info.nodes {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        let child = Command::new(exe)
            .args(["node", "run", "--home"])
            .arg(&node.home)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| super::DEFAULT_LOG_FILTER.into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", node.name))?;
        node.pid = Some(child.id());
        children.push(child);
    }
    Ok(())
}

fn create(home: &Path, validators: u16, base_port: u16, epoch_length: u64) -> anyhow::Result<DevnetInfo> {
    if base_port as u32 + 10 * validators as u32 + 2 > u16::MAX as u32 {
        bail!("--base-port {base_port} leaves no room for {validators} nodes");
    }
    std::fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
    let chain_id = "plexus-devnet".to_string();
    let mut params = Params::default();
    params.set("epoch_length_blocks", epoch_length as u128)?;
    let stake = 10 * params.min_stake;
    let balance = 1_000_000 * UNITS_PER_PLX;

    let mut nodes = Vec::new();
    let mut genesis_validators = Vec::new();
    let mut accounts = Vec::new();
    for i in 0..validators {
        let name = format!("node-{i}");
        let dir = home.join(&name);
        std::fs::create_dir_all(dir.join("data"))?;
        let key = PrivateKey::generate();
        keyfile::save(&dir.join("key.json"), &key)?;
        let p2p = format!("127.0.0.1:{}", base_port + 10 * i);
        let api = format!("127.0.0.1:{}", base_port + 10 * i + 1);
        std::fs::write(dir.join("config.toml"), NodeConfig::template(p2p.parse()?, api.parse()?))?;
        genesis_validators.push(GenesisValidator { address: key.address(), stake, p2p_address: p2p.clone() });
        accounts.push(GenesisAccount { address: key.address(), balance });
        nodes.push(NodeInfo {
            name,
            address: key.address().to_string(),
            api: format!("http://{api}"),
            p2p,
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

    let genesis = Genesis { chain_id: chain_id.clone(), accounts, validators: genesis_validators, params };
    genesis.validate()?;
    for node in &nodes {
        std::fs::write(node.home.join("genesis.json"), genesis.to_json())?;
    }
    std::fs::write(home.join("genesis.json"), genesis.to_json())?;
    Ok(DevnetInfo {
        chain_id,
        home: home.to_path_buf(),
        nodes,
        client: ClientInfo { address: client.address().to_string(), key_file: client_dir.join("key.json") },
    })
}

async fn height_of(http: &reqwest::Client, api: &str) -> Option<(u64, String)> {
    let v: Value = http.get(format!("{api}/chain/v1/status")).send().await.ok()?.json().await.ok()?;
    Some((v["height"].as_u64()?, v["state_root"].as_str()?.to_string()))
}

async fn supervise(info: &DevnetInfo, children: &mut [Child], timeout: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message("starting validators and waiting for finalized blocks");
    bar.enable_steady_tick(Duration::from_millis(120));
    let started = Instant::now();
    // One signal listener for the whole run, so a Ctrl-C during start-up is not lost either.
    let shutdown = plexus_node::run::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        for (node, child) in info.nodes.iter().zip(children.iter_mut()) {
            if let Some(status) = child.try_wait()? {
                bar.finish_and_clear();
                bail!("{} exited during startup ({status}); last log lines:\n{}", node.name, tail(&node.log, 20));
            }
        }
        let mut heights = Vec::new();
        for node in &info.nodes {
            heights.push(height_of(&http, &node.api).await.map(|(h, _)| h).unwrap_or(0));
        }
        bar.set_message(format!("waiting for finalized blocks: heights {heights:?}"));
        if heights.iter().all(|&h| h >= 2) {
            break;
        }
        if started.elapsed() > timeout {
            bar.finish_and_clear();
            bail!("no finalized blocks after {:?}; see the logs in {}", timeout, info.home.display());
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
    bar.finish_and_clear();
    print_summary(info);

    let mut reported = vec![false; children.len()];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                eprintln!("\nstopping the devnet…");
                return Ok(());
            }
            _ = tick.tick() => {
                for (i, child) in children.iter_mut().enumerate() {
                    if !reported[i] {
                        if let Some(status) = child.try_wait()? {
                            reported[i] = true;
                            eprintln!("{} exited ({status}); the other validators continue. Log: {}", info.nodes[i].name, info.nodes[i].log.display());
                        }
                    }
                }
            }
        }
    }
}

fn print_summary(info: &DevnetInfo) {
    println!("Plexus devnet is running: chain {} with {} validators", info.chain_id, info.nodes.len());
    println!();
    for n in &info.nodes {
        println!("  {}  api {}  p2p {}  address {}", n.name, n.api, n.p2p, &n.address[..16]);
    }
    println!();
    println!("  funded client key   {}", info.client.key_file.display());
    println!("  network description {}", info.home.join("devnet.json").display());
    println!();
    println!("Try:");
    println!("  plexus query status --node {}", info.nodes[0].api);
    println!(
        "  plexus tx transfer --node {} --key {} --to {} --amount 5plx",
        info.nodes[0].api,
        info.client.key_file.display(),
        info.nodes[1 % info.nodes.len()].address
    );
    println!("  curl -N {}/chain/v1/stream", info.nodes[0].api);
    println!();
    println!("Press Ctrl-C to stop all nodes (data stays in {}; run again to resume).", info.home.display());
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SIGTERM every child, wait up to 10 s, then SIGKILL what is left.
fn stop_all(children: &mut [Child]) {
    for child in children.iter_mut() {
        if child.try_wait().ok().flatten().is_none() {
            // SAFETY: sending a signal to a child process we spawned.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
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
