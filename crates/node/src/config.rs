//! Node configuration: a TOML file in the node's home with environment overrides. These are
//! this node's own settings; chain-wide parameters come from genesis and governance.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The commented template `plexus node init` writes. A test parses it, so it stays valid.
pub const TEMPLATE: &str = r#"# Plexus node configuration.
#
# Every value here is this node's own choice and need not match other nodes, except where a
# comment says so. Chain-wide parameters (fees, stake minimums, epoch length, consensus
# timeouts) are in genesis and changed by governance, not here.
# Any value can be overridden by an environment variable, e.g. PLEXUS_API_LISTEN=0.0.0.0:8545.

# Directory (relative to this file) for chain data: state, blocks, consensus journals.
data_dir = "data"

# The network's genesis file. Must be byte-identical on every node of the network.
genesis = "genesis.json"

# This node's ed25519 key file. It signs votes, transactions and inference attestations.
# Keep it private; never copy it to a second running node (that would double-sign).
key = "key.json"

[p2p]
# Where this node listens for peers. Must match the p2p address it staked with on-chain
# (other nodes dial that address).
listen = "127.0.0.1:26656"
# Accept peers on private/loopback addresses (needed for local networks and LANs).
allow_private_ips = true
# Most peers in one epoch's peer set (validators plus followers).
peers_max = 128

[api]
# Where the chain REST API and /metrics listen.
listen = "127.0.0.1:8545"
# Largest request body accepted, in bytes.
body_bytes_max = 1048576

[mempool]
# Most transactions waiting to be ordered.
txs_max = 100000
# Most bytes of transactions waiting to be ordered.
bytes_max = 67108864
# Most queued transactions per sender.
per_sender_max = 256

[runtime]
# Worker threads for networking, consensus and the API (0 = number of CPUs).
worker_threads = 0
"#;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Chain data directory, relative to the config file's directory.
    pub data_dir: PathBuf,
    /// Genesis file, relative to the config file's directory.
    pub genesis: PathBuf,
    /// Key file, relative to the config file's directory. Never serialized elsewhere.
    pub key: PathBuf,
    pub p2p: P2pConfig,
    pub api: ApiConfig,
    pub mempool: MempoolSection,
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct P2pConfig {
    /// Listen address for peers; must equal the address registered on-chain.
    pub listen: SocketAddr,
    /// Accept peers on private and loopback addresses.
    pub allow_private_ips: bool,
    /// Most peers in an epoch's peer set.
    pub peers_max: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address of the chain REST API and /metrics.
    pub listen: SocketAddr,
    /// Largest request body, in bytes.
    pub body_bytes_max: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MempoolSection {
    pub txs_max: usize,
    pub bytes_max: usize,
    pub per_sender_max: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads (0 = number of CPUs).
    #[serde(default)]
    pub worker_threads: usize,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid node config: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("environment override {var}={value:?}: {reason}")]
    Env { var: String, value: String, reason: String },
}

impl NodeConfig {
    /// Parses a config text (no environment overrides).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
    }

    /// Loads the config file and applies `PLEXUS_*` environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut cfg = Self::parse(&text, path)?;
        cfg.apply_env(|k| std::env::var(k).ok())?;
        Ok(cfg)
    }

    /// Applies overrides such as `PLEXUS_API_LISTEN` from `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(var: &str, value: String) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value.parse().map_err(|e: T::Err| ConfigError::Env { var: var.into(), value, reason: e.to_string() })
        }
        if let Some(v) = get("PLEXUS_P2P_LISTEN") {
            self.p2p.listen = parse("PLEXUS_P2P_LISTEN", v)?;
        }
        if let Some(v) = get("PLEXUS_API_LISTEN") {
            self.api.listen = parse("PLEXUS_API_LISTEN", v)?;
        }
        if let Some(v) = get("PLEXUS_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("PLEXUS_RUNTIME_WORKER_THREADS") {
            self.runtime.worker_threads = parse("PLEXUS_RUNTIME_WORKER_THREADS", v)?;
        }
        Ok(())
    }

    /// The template with this node's addresses filled in.
    pub fn template(p2p_listen: SocketAddr, api_listen: SocketAddr) -> String {
        TEMPLATE
            .replace("listen = \"127.0.0.1:26656\"", &format!("listen = \"{p2p_listen}\""))
            .replace("listen = \"127.0.0.1:8545\"", &format!("listen = \"{api_listen}\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_with_documented_defaults() {
        let cfg = NodeConfig::parse(TEMPLATE, Path::new("config.toml")).unwrap();
        assert_eq!(cfg.api.listen, "127.0.0.1:8545".parse().unwrap());
        assert_eq!(cfg.p2p.listen, "127.0.0.1:26656".parse().unwrap());
        assert_eq!(cfg.mempool.per_sender_max, 256);
        assert_eq!(cfg.genesis, PathBuf::from("genesis.json"));
        let filled = NodeConfig::template("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        let cfg = NodeConfig::parse(&filled, Path::new("c")).unwrap();
        assert_eq!((cfg.p2p.listen.port(), cfg.api.listen.port()), (1, 2));
    }

    #[test]
    fn env_overrides_and_errors() {
        let mut cfg = NodeConfig::parse(TEMPLATE, Path::new("c")).unwrap();
        cfg.apply_env(|k| (k == "PLEXUS_API_LISTEN").then(|| "0.0.0.0:9999".to_string())).unwrap();
        assert_eq!(cfg.api.listen.port(), 9999);
        let err = cfg.apply_env(|k| (k == "PLEXUS_P2P_LISTEN").then(|| "nope".to_string())).unwrap_err();
        assert!(err.to_string().contains("PLEXUS_P2P_LISTEN"));
        let bad = NodeConfig::parse("data_dir = 1", Path::new("c")).unwrap_err();
        assert!(bad.to_string().contains("not a valid node config"));
        assert!(NodeConfig::parse(&format!("{TEMPLATE}\nbogus = 1\n"), Path::new("c")).is_err());
    }
}
