//! `plexus node`: initialise a node home and run the node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use plexus_node::{NodeConfig, keyfile};
use plexus_types::PrivateKey;

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Create a node home: a commented config.toml, a new key and a data directory. Put the
    /// network's genesis.json next to config.toml before running.
    Init {
        /// Home directory (default $PLEXUS_HOME or ~/.plexus).
        #[arg(long)]
        home: Option<PathBuf>,
        /// Where to listen for peers (the address you will stake with).
        #[arg(long, default_value = "127.0.0.1:26656")]
        p2p_listen: SocketAddr,
        /// Where the chain API listens.
        #[arg(long, default_value = "127.0.0.1:8545")]
        api_listen: SocketAddr,
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

pub fn run(cmd: NodeCmd) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::Init { home, p2p_listen, api_listen, json } => {
            let home = home.unwrap_or_else(super::default_home);
            let config = home.join("config.toml");
            if config.exists() {
                bail!("{} already exists; refusing to overwrite a node home", config.display());
            }
            std::fs::create_dir_all(home.join("data")).with_context(|| format!("cannot create {}", home.display()))?;
            let key = PrivateKey::generate();
            keyfile::save(&home.join("key.json"), &key)?;
            std::fs::write(&config, NodeConfig::template(p2p_listen, api_listen))
                .with_context(|| format!("cannot write {}", config.display()))?;
            if json {
                super::print_json(&serde_json::json!({"home": home, "address": key.address(), "config": config}));
            } else {
                println!("initialised node home {}", home.display());
                println!("  address  {}", key.address());
                println!("  config   {}", config.display());
                println!(
                    "next: put the network's genesis.json in {} and run `plexus node run --home {}`",
                    home.display(),
                    home.display()
                );
            }
            Ok(())
        }
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
