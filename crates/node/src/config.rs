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
# Accept a known peer's connection from an IP other than its registered address's (peers behind
# NAT or a relay); peers are still authenticated by their key in the handshake.
any_source_ip = false
# Most peers in one epoch's peer set: room for every validator there can be (100), the rest
# for followers (non-validators with at least min_provider_stake bonded and a p2p address,
# the most bonded first).
peers_max = 164

[api]
# Where the chain REST API and /metrics listen.
listen = "127.0.0.1:8545"
# Largest request body accepted, in bytes.
body_bytes_max = 1048576
# Serve the API over TLS 1.3 with a certificate for this node's key (no CA needed): clients
# reach it as https://<this node's address>@host:port and accept only this key.
tls = false

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

[provider]
# Serve models over an OpenAI-compatible API and earn from client sessions. Needs bonded stake
# of at least the chain's min_provider_stake (`plexus tx stake`); the node registers its models
# and itself on-chain when it starts, and settles client receipts automatically.
enabled = false
# Where the OpenAI-compatible API listens.
listen = "127.0.0.1:8080"
# Serve over TLS 1.3 with a certificate for the node key; gateways accept the connection only
# if the handshake is signed by this provider's on-chain key. Turn off only for local tests.
tls = true
# The URL clients use to reach it, published on-chain (empty = https://<listen>, or http://
# without TLS). Its scheme must match `tls`.
endpoint = ""
# Free-form region label clients can route by, e.g. "eu-west".
region = "local"
# Free-form hardware description (empty = detected CPU count and memory).
hardware = ""
# Models to serve: cached names, model ids, GGUF files or BERT directories
# (`plexus model pull <name>` fetches the known ones).
models = ["smollm2-135m-instruct", "all-minilm-l6-v2"]
# Prices in base units (one millionth of a PLX) per 1,000 tokens, for every model served.
input_price_per_1k = 10000
output_price_per_1k = 40000
# Price per 1,000 inferences (rows of a request) of a tensor model (ONNX), in base units.
inference_price_per_1k = 2000
# Threads for each text model (0 = number of CPUs).
threads = 0
# Requests a text model decodes together, and the KV cache tokens they share.
parallel = 4
ctx_tokens = 8192
# Delivered tokens a client may leave unacknowledged (no newer signed receipt) before its
# requests are refused or cut off: the most this node can lose to a client that stops paying.
credit_tokens = 512
# Seconds between batches of receipt claims (urgent ones go at once).
claim_interval_secs = 15
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
    #[serde(default)]
    pub provider: ProviderSection,
}

/// Serving models for pay. See the template for what each field means.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    /// Serve models and earn from sessions.
    pub enabled: bool,
    /// Listen address of the OpenAI-compatible API.
    pub listen: SocketAddr,
    /// Serve over TLS bound to the node key (gateways pin it); off only for local experiments.
    #[serde(default = "tls_default")]
    pub tls: bool,
    /// The URL registered on-chain; empty means `https://<listen>` (`http://` without TLS).
    #[serde(default)]
    pub endpoint: String,
    /// Region label clients route by.
    pub region: String,
    /// Hardware description; empty means detected.
    #[serde(default)]
    pub hardware: String,
    /// Models to serve (names, ids or paths).
    pub models: Vec<String>,
    /// Base units per 1,000 input tokens.
    pub input_price_per_1k: u64,
    /// Base units per 1,000 output tokens.
    pub output_price_per_1k: u64,
    /// Base units per 1,000 inferences of a tensor model.
    #[serde(default = "inference_price_default")]
    pub inference_price_per_1k: u64,
    /// Threads per text model (0 = number of CPUs).
    #[serde(default)]
    pub threads: u32,
    /// Requests decoded together per text model.
    pub parallel: u32,
    /// KV cache tokens per text model.
    pub ctx_tokens: u32,
    /// Unacknowledged tokens allowed per session.
    pub credit_tokens: u64,
    /// Seconds between claim batches.
    pub claim_interval_secs: u64,
}

fn tls_default() -> bool {
    true
}

fn inference_price_default() -> u64 {
    2_000
}

impl Default for ProviderSection {
    fn default() -> Self {
        ProviderSection {
            enabled: false,
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            tls: tls_default(),
            endpoint: String::new(),
            region: "local".into(),
            hardware: String::new(),
            models: vec!["smollm2-135m-instruct".into(), "all-minilm-l6-v2".into()],
            input_price_per_1k: 10_000,
            output_price_per_1k: 40_000,
            inference_price_per_1k: inference_price_default(),
            threads: 0,
            parallel: 4,
            ctx_tokens: 8192,
            credit_tokens: 512,
            claim_interval_secs: 15,
        }
    }
}

impl ProviderSection {
    /// The endpoint published on-chain.
    pub fn public_endpoint(&self) -> String {
        match (self.endpoint.is_empty(), self.tls) {
            (false, _) => self.endpoint.clone(),
            (true, true) => format!("https://{}", self.listen),
            (true, false) => format!("http://{}", self.listen),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct P2pConfig {
    /// Listen address for peers; must equal the address registered on-chain.
    pub listen: SocketAddr,
    /// Accept peers on private and loopback addresses.
    pub allow_private_ips: bool,
    /// Accept a known peer's connection from another IP than its registered address's (peers
    /// behind NAT, or relays); peers are still authenticated by key.
    #[serde(default)]
    pub any_source_ip: bool,
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
    /// Serve over TLS with a certificate for the node's key, pinned by clients to its address
    /// (`https://<address>@host:port`).
    #[serde(default)]
    pub tls: bool,
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
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("environment override {var}={value:?}: {reason}")]
    Env { var: String, value: String, reason: String },
}

impl NodeConfig {
    /// Parses a config text (no environment overrides).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: NodeConfig =
            toml::from_str(text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })?;
        cfg.check(path)?;
        Ok(cfg)
    }

    /// What the types cannot say: the provider's endpoint speaks what it serves.
    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let p = &self.provider;
        let scheme = if p.tls { "https://" } else { "http://" };
        if !p.endpoint.is_empty() && !p.endpoint.starts_with(scheme) {
            let reason = format!(
                "[provider] endpoint = \"{}\" must start with {scheme} because tls = {} (gateways would not reach it)",
                p.endpoint, p.tls
            );
            return Err(ConfigError::Invalid { path: path.to_path_buf(), reason });
        }
        Ok(())
    }

    /// Loads the config file and applies `PLEXUS_*` environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut cfg = Self::parse(&text, path)?;
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.check(path)?;
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
        if let Some(v) = get("PLEXUS_PROVIDER_ENABLED") {
            self.provider.enabled = parse("PLEXUS_PROVIDER_ENABLED", v)?;
        }
        if let Some(v) = get("PLEXUS_PROVIDER_LISTEN") {
            self.provider.listen = parse("PLEXUS_PROVIDER_LISTEN", v)?;
        }
        if let Some(v) = get("PLEXUS_PROVIDER_ENDPOINT") {
            self.provider.endpoint = v;
        }
        Ok(())
    }

    /// The template with this node's addresses filled in.
    pub fn template(p2p_listen: SocketAddr, api_listen: SocketAddr) -> String {
        TEMPLATE
            .replace("listen = \"127.0.0.1:26656\"", &format!("listen = \"{p2p_listen}\""))
            .replace("listen = \"127.0.0.1:8545\"", &format!("listen = \"{api_listen}\""))
    }

    /// The template with this node's addresses filled in and serving models on `provider`.
    pub fn template_provider(
        p2p_listen: SocketAddr,
        api_listen: SocketAddr,
        provider: SocketAddr,
        threads: u32,
    ) -> String {
        Self::template(p2p_listen, api_listen)
            .replace("enabled = false", "enabled = true")
            .replace("listen = \"127.0.0.1:8080\"", &format!("listen = \"{provider}\""))
            .replace("\nthreads = 0\n", &format!("\nthreads = {threads}\n"))
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
        assert_eq!(cfg.provider, ProviderSection::default(), "the template documents the defaults");
        let filled = NodeConfig::template("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        let cfg = NodeConfig::parse(&filled, Path::new("c")).unwrap();
        assert_eq!((cfg.p2p.listen.port(), cfg.api.listen.port()), (1, 2));
        assert!(!cfg.provider.enabled && !cfg.api.tls);
        let filled = NodeConfig::template_provider(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            "127.0.0.1:3".parse().unwrap(),
            1,
        );
        let cfg = NodeConfig::parse(&filled, Path::new("c")).unwrap();
        assert!(cfg.provider.enabled);
        assert_eq!((cfg.p2p.listen.port(), cfg.api.listen.port(), cfg.provider.listen.port()), (1, 2, 3));
        assert_eq!((cfg.provider.threads, cfg.runtime.worker_threads), (1, 0));
        assert_eq!(cfg.provider.public_endpoint(), "https://127.0.0.1:3");
        let plain = filled.replace("tls = true", "tls = false");
        let cfg = NodeConfig::parse(&plain, Path::new("c")).unwrap();
        assert_eq!(cfg.provider.public_endpoint(), "http://127.0.0.1:3");
        // An endpoint whose scheme contradicts `tls` is refused, with the reason.
        let wrong = filled.replace("endpoint = \"\"", "endpoint = \"http://203.0.113.7:8080\"");
        let err = NodeConfig::parse(&wrong, Path::new("c")).unwrap_err().to_string();
        assert!(err.contains("must start with https://"), "{err}");
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
