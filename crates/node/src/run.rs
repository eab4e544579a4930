//! Runs a node in production: Commonware's tokio runtime, authenticated p2p over TCP, consensus,
//! transaction gossip and the HTTP API, until SIGINT or SIGTERM.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use commonware_runtime::{Metrics as _, Runner as _, Spawner as _, Supervisor as _, tokio as cw_tokio};
use plexus_consensus::{Channels, Timeouts};
use plexus_types::Genesis;
use tracing::{error, info, warn};

use crate::api::{ApiState, NodeInfo};
use crate::chain::ChainState;
use crate::config::NodeConfig;
use crate::mempool::MempoolConfig;
use crate::metrics::NodeMetrics;

/// p2p channel ids. Fixed for the life of a network version.
pub mod channel {
    pub const VOTES: u64 = 0;
    pub const CERTIFICATES: u64 = 1;
    pub const RESOLVER: u64 = 2;
    pub const BACKFILL: u64 = 3;
    pub const BLOCKS: u64 = 4;
    pub const TXS: u64 = 5;
    pub const HELLO: u64 = 6;
    /// Blocks as network v2 frames them (compressed).
    pub const BLOCKS_V2: u64 = 7;
}

/// Loads the genesis file of a node home.
pub fn load_genesis(path: &Path) -> anyhow::Result<Genesis> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read genesis file {}", path.display()))?;
    Genesis::from_json(&text).with_context(|| format!("genesis file {}", path.display()))
}

/// Runs the node described by `config_path` until it is told to stop.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = NodeConfig::load(config_path)?;
    if cfg.provider.enabled && !cfg!(feature = "provider") {
        anyhow::bail!(
            "{}: [provider] enabled = true, but this node was built without the provider role (the `provider` feature)",
            config_path.display()
        );
    }
    let home = config_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let key = crate::keyfile::load(&home.join(&cfg.key))?;
    let genesis = load_genesis(&home.join(&cfg.genesis))?;
    let data_dir = home.join(&cfg.data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    info!(
        address = %key.address(),
        chain_id = %genesis.chain_id,
        genesis_hash = %genesis.hash(),
        p2p = %cfg.p2p.listen,
        api = %cfg.api.listen,
        data = %data_dir.display(),
        "starting node with effective config {}",
        toml::to_string(&cfg).unwrap_or_default().replace('\n', "; ")
    );
    let workers = match cfg.runtime.worker_threads {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        n => n,
    };
    let runtime_cfg = cw_tokio::Config::new().with_storage_directory(&data_dir).with_worker_threads(workers);
    let runner = cw_tokio::Runner::new(runtime_cfg);
    runner.start(|context| async move { node(context, cfg, key, genesis, data_dir).await })
}

async fn node(
    context: cw_tokio::Context,
    cfg: NodeConfig,
    key: plexus_types::PrivateKey,
    genesis: Genesis,
    // The provider's ledger lives there (a build without the provider role has no use for it).
    #[cfg_attr(not(feature = "provider"), allow(unused_variables))] data_dir: std::path::PathBuf,
) -> anyhow::Result<()> {
    let metrics = NodeMetrics::new(&context.child("plexus"));
    let evidence = Arc::new(plexus_consensus::evidence::Verifier::new(&genesis.chain_id));
    let mempool = MempoolConfig {
        txs_max: cfg.mempool.txs_max,
        bytes_max: cfg.mempool.bytes_max,
        per_sender_max: cfg.mempool.per_sender_max,
    };
    let chain = ChainState::open(
        context.child("chain"),
        key.clone(),
        &genesis,
        &plexus_store::StoreConfig::default(),
        mempool,
        evidence,
        metrics,
    )
    .await
    .context("cannot open the chain's data")?;
    let (height, hash) = chain.tip();
    info!(height, %hash, "chain state loaded");

    // Authenticated p2p: validators dial each other; followers dial validators.
    let max_message = plexus_consensus::max_message_size(plexus_types::params::limits::VALIDATORS_MAX as u32)
        .max(crate::gossip::MESSAGE_BYTES_MAX as u32 + 64);
    // A peer set holds every validator there can be plus the followers (non-validators admitted
    // by stake, `crate::followers`): the network refuses a larger set, so followers get the rest.
    let validators_max = plexus_types::params::limits::VALIDATORS_MAX as usize;
    let peers_max = cfg.p2p.peers_max.max(validators_max + 1);
    chain.set_followers_max(peers_max - validators_max);
    let network_cfg = plexus_network::Config {
        listen: cfg.p2p.listen,
        chain_id: genesis.chain_id.clone(),
        peers_max: NonZeroUsize::new(peers_max).expect("non-zero"),
        allow_private_ips: cfg.p2p.allow_private_ips,
        any_source_ip: cfg.p2p.any_source_ip,
        message_bytes_max: max_message,
        mailbox_messages: NonZeroUsize::new(4096).expect("non-zero"),
    };
    // Per-peer inbound quotas. The p2p layer sizes each channel's mailbox for every peer of the
    // peer sets it keeps at that rate, so these set the node's memory: at 4,096 votes,
    // certificates and transaction batches per second a chain-only node held 5 GB. A validator
    // sends a few votes and certificates per view (views last 200 ms and up) and gossips
    // transactions in batches, so 1,024 a second is still two orders of magnitude of headroom.
    let rate = |per_second: u32| NonZeroU32::new(per_second).expect("non-zero");
    let channel = |id: u64, per_second: u32| plexus_network::Channel { id, messages_per_second: rate(per_second) };
    let plexus_network::Network { channels, oracle } = plexus_network::start(
        context.child("p2p"),
        key.0.clone(),
        &network_cfg,
        &[
            channel(channel::VOTES, 1024),
            channel(channel::CERTIFICATES, 1024),
            channel(channel::RESOLVER, 1024),
            channel(channel::BACKFILL, 1024),
            channel(channel::BLOCKS, 256),
            channel(channel::TXS, 1024),
            channel(channel::HELLO, 4),
            channel(channel::BLOCKS_V2, 256),
        ],
    );
    let mut channels = channels.into_iter();
    let mut next = || channels.next().expect("one pair per registered channel");
    let (votes, certificates, resolver, backfill, blocks_v1) = (next(), next(), next(), next(), next());
    let txs = next();
    let hello = next();
    let blocks_v2 = next();
    let blocks = framed_blocks(&context, &chain, blocks_v1, blocks_v2, max_message as usize);
    let consensus_channels = Channels { votes, certificates, resolver, backfill, blocks };

    let peer_versions = plexus_network::hello::PeerVersions::default();
    {
        let chain = chain.clone();
        let ours = crate::supported_versions().network;
        tokio::spawn(plexus_network::hello::run(
            ours,
            move || chain.read(|s| s.versions().network),
            hello,
            oracle.clone(),
            peer_versions.clone(),
        ));
    }
    let gossip = crate::gossip::start(&context, chain.clone(), txs);
    chain.set_gossip(gossip);

    let params = chain.params();
    let consensus_cfg = plexus_consensus::Config {
        chain: chain.clone(),
        signer: key.0.clone(),
        chain_id: genesis.chain_id.clone(),
        genesis: chain.genesis().clone(),
        epoch_length: std::num::NonZeroU64::new(genesis.params.epoch_length_blocks as u64).expect("validated genesis"),
        partition_prefix: "plexus-consensus".into(),
        timeouts: Timeouts::from_params(&params),
        mailbox_size: NonZeroUsize::new(1024).expect("non-zero"),
    };
    let consensus =
        plexus_consensus::start(context.child("consensus"), consensus_cfg, consensus_channels, oracle.clone(), oracle);

    // HTTP API on the same runtime.
    let metrics_context = context.child("metrics");
    let api_state = Arc::new(ApiState {
        chain: chain.clone(),
        metrics: Box::new(move || metrics_context.encode()),
        node: NodeInfo {
            address: key.address(),
            genesis_hash: genesis.hash(),
            p2p_listen: cfg.p2p.listen.to_string(),
            version: env!("CARGO_PKG_VERSION"),
        },
        peer_versions,
        stream_slots: Arc::new(tokio::sync::Semaphore::new(crate::api::STREAM_SUBSCRIBERS_MAX)),
        genesis: Arc::new(genesis.clone()),
        history: Default::default(),
    });
    let router = crate::api::router(api_state, cfg.api.body_bytes_max);
    let listener = tokio::net::TcpListener::bind(cfg.api.listen)
        .await
        .with_context(|| format!("cannot listen for the API on {}", cfg.api.listen))?;
    let api = if cfg.api.tls {
        let tls = plexus_tls::server_config(&key).map_err(anyhow::Error::msg)?;
        let listener = plexus_tls::TlsListener::new(listener, tls)?;
        info!(api = %format!("https://{}@{}", key.address(), cfg.api.listen), "chain API listening over TLS");
        tokio::spawn(async move { axum::serve(listener, router).await })
    } else {
        info!(api = %cfg.api.listen, "chain API listening");
        tokio::spawn(async move { axum::serve(listener, router).await })
    };

    tokio::spawn(crate::upgrade::signal_loop(chain.clone()));

    #[cfg(feature = "provider")]
    if cfg.provider.enabled {
        let provider_cfg = cfg.provider.clone();
        let engines = tokio::task::spawn_blocking(move || crate::provider::load_engines(&provider_cfg))
            .await
            .context("the model loading task failed")??;
        crate::provider::start(
            chain.clone(),
            key.clone(),
            cfg.provider.clone(),
            &data_dir.join("provider-ledger.log"),
            engines,
        )
        .await?;
    }

    let mut halted = None;
    let reason = tokio::select! {
        _ = shutdown_signal() => "signal",
        r = consensus => { error!("consensus stopped: {r:?}"); "consensus stopped" },
        r = api => { error!("API server stopped: {r:?}"); "API stopped" },
        why = chain.halted() => { halted = Some(why); "this binary cannot run the chain's active versions" },
    };
    if reason == "signal" {
        hand_off(&chain).await;
    }
    info!(reason, "stopping node");
    // Everything durable was synced when written; stopping aborts the remaining tasks.
    let _ = context.stop(0, Some(Duration::from_secs(5))).await;
    match halted {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}

/// The block channel consensus runs on: blocks go out framed by the chain's active network
/// version (`v1` or `v2` channel), and both versions are taken in. `max` bounds a decoded block.
pub fn framed_blocks<E, S, R>(
    context: &impl commonware_runtime::Metrics,
    chain: &ChainState<E>,
    v1: (S, R),
    v2: (S, R),
    max: usize,
) -> (plexus_network::blocks::BlockSender<S>, plexus_network::blocks::BlockReceiver<R>)
where
    E: commonware_runtime::Storage
        + commonware_runtime::Clock
        + commonware_runtime::Metrics
        + commonware_runtime::Spawner
        + Send
        + Sync
        + 'static,
{
    let traffic = plexus_network::blocks::Traffic::new(&context.child("blocks"));
    let active = {
        let chain = chain.clone();
        move || chain.read(|s| s.versions().network)
    };
    (
        plexus_network::blocks::BlockSender::new(v1.0, v2.0, active, traffic.clone()),
        plexus_network::blocks::BlockReceiver::new(v1.1, v2.1, max, &traffic),
    )
}

/// Longest a stopping validator waits to hand leadership off (a second signal stops it at once).
const HAND_OFF_WAIT: Duration = Duration::from_secs(4);

/// A planned stop of a validator: wait until a block this node proposed is finalized, then stop.
/// Leaders rotate, so the views right after this node's own go to others, and the chain does not
/// stall on a leader that stopped halfway through its view (nor on one that would be leader
/// next). Bounded by [`HAND_OFF_WAIT`]; not a validator, or a second signal: no wait.
async fn hand_off<E>(chain: &ChainState<E>)
where
    E: commonware_runtime::Storage
        + commonware_runtime::Clock
        + commonware_runtime::Metrics
        + commonware_runtime::Spawner,
{
    let me = chain.address();
    let validator =
        chain.read(|s| s.validators(s.chain().epoch).is_some_and(|set| set.0.iter().any(|v| v.address == me)));
    if !validator {
        return;
    }
    info!("handing leadership off: stopping once a block this node proposed is final (a second signal stops now)");
    // Subscribed now, so only blocks finalized after the signal count.
    let mut finalized = chain.subscribe();
    let own_block = async {
        loop {
            match finalized.recv().await {
                Ok(block) if block.header.proposer == me => return Some(block.height),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    };
    tokio::select! {
        height = own_block => match height {
            Some(height) => info!(height, "this node's block is final; the next views are others'"),
            None => warn!("no more finalized blocks; stopping"),
        },
        _ = tokio::time::sleep(HAND_OFF_WAIT) => warn!("no block of this node's became final in {HAND_OFF_WAIT:?}; stopping anyway"),
        _ = shutdown_signal() => info!("second signal: stopping now"),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
