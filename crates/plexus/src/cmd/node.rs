//! `plexus node`: initialise a node home and run the node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use plexus_node::{NodeConfig, keyfile};
use plexus_types::PrivateKey;

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Create a node home: a commented config.toml, a new key and a data directory. To start a
    /// new network, put its genesis.json next to config.toml before running; to join a running
    /// network from this machine, pass --join with the chain API of any of its nodes.
    #[command(after_help = "Joining a network from a second machine:\n  \
plexus node init --join http://<node>:8545 --genesis-hash <hash from the operator> \\\n    \
--p2p-listen 0.0.0.0:26656 --p2p-advertise <this machine's IP>:26656 --provider \\\n    \
--provider-listen 0.0.0.0:8080 --provider-endpoint https://<this machine's IP>:8080\n\
then fund the printed address, stake with the printed `plexus tx stake` command (at least the \
chain's min_provider_stake: the node is then admitted as a follower at the next epoch, and it \
becomes a validator only if it bonds min_stake and is among the max_validators most bonded), and \
run `plexus node run`. The node syncs from the validators, verifying every block's certificate.")]
    Init {
        /// Home directory (default $PLEXUS_HOME or ~/.plexus).
        #[arg(long)]
        home: Option<PathBuf>,
        /// Where to listen for peers.
        #[arg(long, default_value = "127.0.0.1:26656")]
        p2p_listen: SocketAddr,
        /// The p2p address other nodes dial, the one to stake with (default: --p2p-listen).
        /// Needed when listening on 0.0.0.0 or behind a port forward.
        #[arg(long)]
        p2p_advertise: Option<SocketAddr>,
        /// Where the chain API listens.
        #[arg(long, default_value = "127.0.0.1:8545")]
        api_listen: SocketAddr,
        /// Serve the chain API over TLS 1.3 with a certificate for this node's key; clients
        /// reach it as https://<node address>@host:port and accept no other key.
        #[arg(long)]
        api_tls: bool,
        /// Join a running network: fetch its genesis from this chain API URL (any node's).
        #[arg(long, value_name = "URL")]
        join: Option<String>,
        /// With --join: the genesis hash you were given out of band; the fetched genesis must
        /// have it. Without it the hash is printed for you to compare.
        #[arg(long, requires = "join")]
        genesis_hash: Option<plexus_types::Hash>,
        /// Serve models as a provider (the `[provider]` section, enabled).
        #[arg(long)]
        provider: bool,
        /// With --provider: where the inference API listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        provider_listen: SocketAddr,
        /// With --provider: the https URL gateways use, published on-chain (default:
        /// https://<provider-listen>).
        #[arg(long)]
        provider_endpoint: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// How this node is doing: sync (its newest block and how old it is), peers, role
    /// (validator, follower, provider), epoch and versions, from its chain API.
    Status {
        /// The node's chain API.
        #[arg(long, default_value = super::DEFAULT_NODE, env = "PLEXUS_NODE")]
        node: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the node in the foreground until Ctrl-C or SIGTERM.
    Run {
        /// Home directory (default $PLEXUS_HOME or ~/.plexus).
        #[arg(long)]
        home: Option<PathBuf>,
    },
    /// Drill: send signed transactions straight to the network's validators over p2p gossip, as
    /// the (stopped) node at --home, skipping every local check — what a peer with a modified
    /// binary can do. The receiving nodes must refuse what is bad and keep running.
    GossipRaw {
        /// Home of a stopped node whose key and p2p address to use.
        #[arg(long)]
        home: PathBuf,
        /// Hex of a signed transaction (repeat for several).
        #[arg(long = "tx", required = true)]
        txs: Vec<String>,
        /// Seconds to wait for peers to connect.
        #[arg(long, default_value_t = 10)]
        wait_secs: u64,
    },
}

/// Fetches a running network's genesis from `url`, checks it is valid, that the node there runs
/// it, and that it has `expected` hash when one is given. Returns it and the normalised URL.
fn fetch_genesis(url: &str, expected: Option<plexus_types::Hash>) -> anyhow::Result<(plexus_types::Genesis, String)> {
    let url = url.trim_end_matches('/').to_string();
    let client = super::Client::new(&url)?;
    // The body as text, not through a JSON value: amounts are u128 and must not pass through
    // floating point on their way to the hash.
    let text = client
        .get_text("/chain/v1/genesis")
        .with_context(|| format!("cannot fetch the genesis from {url} (is it a node's chain API?)"))?;
    let genesis = plexus_types::Genesis::from_json(&text)
        .with_context(|| format!("{url} answered with a genesis this binary cannot use"))?;
    let hash = genesis.hash();
    let status = client.get("/chain/v1/status")?;
    let claimed = status["node"]["genesis_hash"].as_str().unwrap_or_default();
    if claimed != hash.to_string() || status["chain_id"].as_str() != Some(genesis.chain_id.as_str()) {
        bail!(
            "{url} is inconsistent: it serves genesis {hash} of chain {} but says it runs {claimed} of chain {}",
            genesis.chain_id,
            status["chain_id"]
        );
    }
    match expected {
        Some(expected) if expected != hash => bail!(
            "the genesis at {url} has hash {hash}, not the {expected} you expected: that node runs another network (or lies); nothing was written"
        ),
        Some(_) => {}
        None => eprintln!(
            "note: trusting {url} for the genesis (hash {hash}); compare it with the network's published hash, or pass --genesis-hash"
        ),
    }
    Ok((genesis, url))
}

/// `plexus node status`: one summary from the node's status, peers, stake and provider record.
fn status(node: &str, json: bool) -> anyhow::Result<()> {
    let client = super::Client::new(node)?;
    let status = client.get("/chain/v1/status")?;
    let peers = client.get("/chain/v1/peers")?;
    let address = status["node"]["address"].as_str().unwrap_or_default().to_string();
    let account = client.get(&format!("/chain/v1/accounts/{address}"))?;
    let provider = client.get(&format!("/chain/v1/providers/{address}")).ok();
    let params = client.get("/chain/v1/params")?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let behind_ms = status["latest_block_time_ms"].as_u64().map(|t| now_ms.saturating_sub(t));
    let synced = behind_ms.is_some_and(|b| b < 30_000);
    let validator = status["validators"].as_array().into_iter().flatten().any(|v| v["address"] == address.as_str());
    let bonded = super::amount_of(&account["bonded"]);
    let follower = !validator && bonded >= super::amount_of(&params["min_provider_stake"]);
    let registered = provider.as_ref().is_some_and(|p| p["registered"] == true);
    let role = match (validator, follower, registered) {
        (true, _, true) => "validator and provider",
        (true, _, false) => "validator",
        (false, true, true) => "follower and provider",
        (false, true, false) => "follower (staked, not validating)",
        (false, false, true) => "provider below the follower stake (cannot connect to peers)",
        (false, false, false) => "not admitted: stake at least min_provider_stake with a p2p address to connect",
    };
    let peer_list = peers["peers"].as_array().cloned().unwrap_or_default();
    if json {
        super::print_json(&serde_json::json!({
            "address": address,
            "chain_id": status["chain_id"],
            "height": status["height"],
            "behind_ms": behind_ms,
            "synced": synced,
            "peers": peer_list.len(),
            "role": role,
            "validator": validator,
            "provider": registered,
            "bonded": account["bonded"],
            "epoch": status["epoch"],
            "versions": status["versions"],
            "genesis_hash": status["node"]["genesis_hash"],
        }));
        return Ok(());
    }
    println!("node      {address} ({})", status["chain_id"].as_str().unwrap_or("?"));
    match behind_ms {
        Some(b) if synced => {
            println!("sync      height {}, newest block {:.1} s old (synced)", status["height"], b as f64 / 1000.0)
        }
        Some(b) => {
            println!("sync      height {}, newest block {:.0} s old (catching up)", status["height"], b as f64 / 1000.0)
        }
        None => println!("sync      height {} (no block time)", status["height"]),
    }
    println!(
        "peers     {} connected{}",
        peer_list.len(),
        if peer_list.is_empty() { " (none: is its stake's p2p address reachable?)" } else { "" }
    );
    println!("role      {role}");
    println!("bonded    {}", super::format_amount(bonded));
    println!("epoch     {}", status["epoch"]);
    println!("versions  {}", status["versions"]);
    Ok(())
}

pub fn run(cmd: NodeCmd) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::Init {
            home,
            p2p_listen,
            p2p_advertise,
            api_listen,
            api_tls,
            join,
            genesis_hash,
            provider,
            provider_listen,
            provider_endpoint,
            json,
        } => {
            let home = home.unwrap_or_else(super::default_home);
            let config = home.join("config.toml");
            if config.exists() {
                bail!("{} already exists; refusing to overwrite a node home", config.display());
            }
            if let Some(endpoint) = &provider_endpoint {
                let url = url::Url::parse(endpoint).with_context(|| format!("--provider-endpoint {endpoint:?}"))?;
                if url.scheme() != "https" {
                    bail!("--provider-endpoint must be an https:// URL (providers serve TLS bound to their key)");
                }
            }
            // Fetch and check the network's genesis before writing anything.
            let joined = match &join {
                Some(url) => Some(fetch_genesis(url, genesis_hash)?),
                None => None,
            };
            std::fs::create_dir_all(home.join("data")).with_context(|| format!("cannot create {}", home.display()))?;
            let key = PrivateKey::generate();
            keyfile::save(&home.join("key.json"), &key)?;
            let mut text = match provider {
                true => NodeConfig::template_provider(p2p_listen, api_listen, provider_listen, 0),
                false => NodeConfig::template(p2p_listen, api_listen),
            };
            if let Some(endpoint) = &provider_endpoint {
                text = text.replace("\nendpoint = \"\"\n", &format!("\nendpoint = {endpoint:?}\n"));
            }
            if api_tls {
                // The [api] section's switch (the line after its comment; [provider] has its own).
                let line = "@host:port and accept only this key.\ntls = false\n";
                text = text.replace(line, &line.replace("tls = false", "tls = true"));
            }
            let api_url = match api_tls {
                true => format!("https://{}@{api_listen}", key.address()),
                false => format!("http://{api_listen}"),
            };
            // Check what was written parses, before anyone runs it.
            NodeConfig::parse(&text, &config).context("the generated config does not parse (a bug)")?;
            std::fs::write(&config, text).with_context(|| format!("cannot write {}", config.display()))?;
            let advertise = p2p_advertise.unwrap_or(p2p_listen);
            if let Some((genesis, _)) = &joined {
                std::fs::write(home.join("genesis.json"), genesis.to_json())
                    .with_context(|| format!("cannot write {}", home.join("genesis.json").display()))?;
            }
            // An unspecified listen address cannot be dialed: leave a placeholder to fill in.
            let stake_at = match advertise.ip().is_unspecified() {
                true => format!("<this machine's IP>:{}", advertise.port()),
                false => advertise.to_string(),
            };
            let stake_cmd = joined.as_ref().map(|(genesis, url)| {
                format!(
                    "plexus tx stake --key {} --amount {} --p2p-address {stake_at} --node {url}",
                    home.join("key.json").display(),
                    genesis.params.min_provider_stake,
                )
            });
            if advertise.ip().is_unspecified() && joined.is_some() {
                eprintln!(
                    "warning: --p2p-listen {p2p_listen} is not an address peers can dial; pass --p2p-advertise <public IP>:<port>"
                );
            }
            if json {
                super::print_json(&serde_json::json!({
                    "home": home,
                    "address": key.address(),
                    "config": config,
                    "genesis_hash": joined.as_ref().map(|(g, _)| g.hash().to_string()),
                    "chain_id": joined.as_ref().map(|(g, _)| g.chain_id.clone()),
                    "p2p_advertise": advertise.to_string(),
                    "api": api_url,
                    "stake_command": stake_cmd,
                }));
            } else {
                println!("initialised node home {}", home.display());
                println!("  address  {}", key.address());
                println!("  config   {}", config.display());
                println!("  API      {api_url}");
                match (&joined, &stake_cmd) {
                    (Some((genesis, url)), Some(stake_cmd)) => {
                        println!("  chain    {} (genesis {}, from {url})", genesis.chain_id, genesis.hash());
                        println!("next:");
                        println!("  1. fund {} (at least the stake below plus fees)", key.address());
                        println!("  2. {stake_cmd}");
                        println!("     (admitted as a follower at the next epoch boundary)");
                        println!("  3. plexus node run --home {}", home.display());
                    }
                    _ => println!(
                        "next: put the network's genesis.json in {} and run `plexus node run --home {}`",
                        home.display(),
                        home.display()
                    ),
                }
            }
            Ok(())
        }
        NodeCmd::Status { node, json } => status(&node, json),
        NodeCmd::Run { home } => {
            let home = home.unwrap_or_else(super::default_home);
            let config = home.join("config.toml");
            if !config.exists() {
                bail!("no node home at {} (run `plexus node init --home {}` first)", home.display(), home.display());
            }
            plexus_node::run::run(&config)
        }
        NodeCmd::GossipRaw { home, txs, wait_secs } => {
            let txs = txs
                .iter()
                .map(|t| {
                    let bytes = hex::decode(t.trim()).context("--tx is not hex")?;
                    plexus_types::SignedTx::decode(&bytes).map_err(|e| anyhow::anyhow!("--tx does not decode: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let config = home.join("config.toml");
            let sent = plexus_node::drill::gossip_raw(&config, txs, std::time::Duration::from_secs(wait_secs))?;
            println!("sent to {sent} peers");
            anyhow::ensure!(sent > 0, "no peer connected within {wait_secs} s");
            Ok(())
        }
    }
}
