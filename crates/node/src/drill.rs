//! Drills: what a misbehaving peer would do, for operators and tests to check that a network
//! shrugs it off. [`gossip_raw`] sends transactions straight to a node's peers over the
//! transaction gossip channel, as that node, skipping every check the node would run first —
//! exactly what a peer with a modified binary can do. The receiving nodes must refuse what is
//! bad and stay up.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use commonware_p2p::{Address as PeerAddress, AddressableManager as _, Recipients, Sender as _};
use commonware_runtime::{Clock as _, Runner as _, Supervisor as _, tokio as cw_tokio};
use commonware_utils::ordered::Map;
use plexus_types::SignedTx;

use crate::config::NodeConfig;
use crate::gossip::Batch;
use crate::run::channel;

/// Sends `txs` in one gossip message to every validator of the node's genesis that connects
/// within `wait`, using the key and p2p address of the node whose `config.toml` is given (the
/// node itself must be stopped: one key, one connection). Returns how many peers it was sent to.
pub fn gossip_raw(config_path: &Path, txs: Vec<SignedTx>, wait: Duration) -> anyhow::Result<usize> {
    anyhow::ensure!(!txs.is_empty(), "nothing to send");
    anyhow::ensure!(txs.len() <= crate::gossip::BATCH_TXS_MAX, "at most {} transactions", crate::gossip::BATCH_TXS_MAX);
    let cfg = NodeConfig::load(config_path)?;
    let home = config_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let key = crate::keyfile::load(&home.join(&cfg.key))?;
    let genesis = crate::run::load_genesis(&home.join(&cfg.genesis))?;
    let peers: Vec<(plexus_types::Address, std::net::SocketAddr)> = genesis
        .validators
        .iter()
        .filter(|v| v.address != key.address())
        .filter_map(|v| Some((v.address.clone(), v.p2p_address.parse().ok()?)))
        .collect();
    anyhow::ensure!(!peers.is_empty(), "the genesis names no other validator to send to");
    let scratch = tempdir_in(&home)?;
    let runner = cw_tokio::Runner::new(cw_tokio::Config::new().with_storage_directory(&scratch).with_worker_threads(1));
    let message = commonware_codec::Encode::encode(&Batch(txs));
    let sent = runner.start(|context| async move {
        let network_cfg = plexus_network::Config {
            listen: cfg.p2p.listen,
            chain_id: genesis.chain_id.clone(),
            peers_max: NonZeroUsize::new(cfg.p2p.peers_max.max(2)).expect("non-zero"),
            allow_private_ips: cfg.p2p.allow_private_ips,
            any_source_ip: cfg.p2p.any_source_ip,
            message_bytes_max: crate::gossip::MESSAGE_BYTES_MAX as u32 + 64,
            mailbox_messages: NonZeroUsize::new(64).expect("non-zero"),
        };
        let rate = NonZeroU32::new(64).expect("non-zero");
        let plexus_network::Network { channels, mut oracle } = plexus_network::start(
            context.child("p2p"),
            key.0.clone(),
            &network_cfg,
            &[plexus_network::Channel { id: channel::TXS, messages_per_second: rate }],
        );
        let mut pairs: Vec<_> = peers.iter().map(|(a, addr)| (a.0.clone(), PeerAddress::Symmetric(*addr))).collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let _ = oracle.track(0, Map::try_from(pairs).expect("validators are distinct"));
        let (mut sender, _receiver) = channels.into_iter().next().expect("one channel");
        let deadline = context.current() + wait;
        let mut reached = Vec::new();
        while context.current() < deadline && reached.len() < peers.len() {
            context.sleep(Duration::from_millis(250)).await;
            let recipients: Vec<_> = peers.iter().map(|(a, _)| a.0.clone()).filter(|p| !reached.contains(p)).collect();
            reached.extend(sender.send(Recipients::Some(recipients), message.clone(), false));
        }
        // Let the last sends leave before the runtime stops.
        context.sleep(Duration::from_millis(500)).await;
        reached.len()
    });
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(sent)
}

fn tempdir_in(home: &Path) -> anyhow::Result<std::path::PathBuf> {
    let dir = home.join(format!("drill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
