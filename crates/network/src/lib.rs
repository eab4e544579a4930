//! Communicate with the chain's registered nodes over authenticated, encrypted TCP: consensus
//! votes and certificates, block broadcast and backfill, and transaction gossip, each on its
//! own rate-limited channel.
//!
//! Peers are identified by their ed25519 keys; the node tells the [`Oracle`] which keys (and
//! addresses) make up each epoch's peer set, and connections from anyone else are refused. The
//! handshake is Commonware's authenticated key exchange over the chain's own namespace, so a
//! node of one chain can never talk to a node of another.
//!
//! [`hello`] negotiates the network protocol version with each peer and keeps out peers that
//! cannot speak the chain's active version; [`blocks`] sends proposed blocks as that version
//! frames them (v2: compressed).
//!
//! This crate does not decide who the peers are (the chain's staking state does), does not
//! interpret messages (consensus and gossip do), and does not discover peers on its own.

pub mod blocks;
pub mod hello;

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use commonware_cryptography::{ChaCha20Poly1305, ed25519};
use commonware_p2p::authenticated::lookup;
use commonware_runtime::{Clock, Metrics, Network as RNetwork, Quota, Resolver, Spawner};
use commonware_stream::{cups, sake};
use rand_core::CryptoRng;

/// A peer's identity on the wire.
pub type PublicKey = ed25519::PublicKey;
/// Sends to peers on one channel.
pub type Sender<E> = lookup::Sender<PublicKey, E>;
/// Receives from peers on one channel.
pub type Receiver = lookup::Receiver<PublicKey>;
/// Tells the network which peers make up each peer set.
pub type Oracle = lookup::Oracle<PublicKey>;

/// Where and how this node talks to peers. None of these has to match across the network,
/// except `chain_id`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where this node listens; must equal the p2p address it staked with.
    pub listen: SocketAddr,
    /// The chain id: part of the handshake namespace, so it must match every peer's.
    pub chain_id: String,
    /// Most peers in one peer set.
    pub peers_max: NonZeroUsize,
    /// Accept peers on private and loopback addresses (local networks).
    pub allow_private_ips: bool,
    /// Accept a known peer's connection from an IP other than the one it registered (a peer
    /// behind NAT or a relay). Peers are still authenticated by key in the handshake.
    pub any_source_ip: bool,
    /// Largest application message, in bytes. Sending a larger one is a bug (it panics).
    pub message_bytes_max: u32,
    /// Capacity of each channel's inbound mailbox, in messages.
    pub mailbox_messages: NonZeroUsize,
}

/// One logical channel and its inbound rate limit per peer.
#[derive(Clone, Copy, Debug)]
pub struct Channel {
    pub id: u64,
    pub messages_per_second: NonZeroU32,
}

/// How far apart two nodes' clocks may be when they shake hands.
pub const HANDSHAKE_SYNCHRONY_BOUND: Duration = Duration::from_secs(5);
/// Oldest handshake message accepted.
pub const HANDSHAKE_AGE_MAX: Duration = Duration::from_secs(10);

/// Shortest time between two connection attempts with one peer (either side's dial counts).
///
/// When a peer restarts, both sides dial each other, and an attempt that arrives within the
/// other side's cooldown of its own last attempt is refused. With the p2p layer's defaults (1 s on
/// private networks, 60 s on public ones) each side's retry, due about one cooldown after its
/// own attempt, kept landing inside the other's: a restarted validator and one of its peers
/// stayed apart for 4 s in the rolling-upgrade test, long enough for the next planned stop to
/// leave the network one vote short of a quorum. Shorter than the dialer's tick (500 ms / 1 s),
/// a refusal is rare and the next tick connects. Handshakes stay rate-limited per IP.
pub const PEER_RECONNECT_COOLDOWN: Duration = Duration::from_millis(200);

/// The handshake namespace of a chain.
pub fn namespace(chain_id: &str) -> Vec<u8> {
    let mut ns = plexus_types::namespace::P2P.to_vec();
    ns.push(b'/');
    ns.extend_from_slice(chain_id.as_bytes());
    ns
}

/// A started network: one sender/receiver pair per requested channel, in the order asked for,
/// and the oracle that sets the peer sets.
pub struct Network<E: Spawner + Clock + Metrics + RNetwork> {
    pub channels: Vec<(Sender<E>, Receiver)>,
    pub oracle: Oracle,
}

/// Binds `config.listen` and starts dialing and accepting peers. The network runs until the
/// runtime stops.
pub fn start<E>(context: E, key: ed25519::PrivateKey, config: &Config, channels: &[Channel]) -> Network<E>
where
    E: Spawner + Clock + CryptoRng + RNetwork + Resolver + Metrics,
{
    let handshake = cups::Cups::<_, ChaCha20Poly1305>::new(
        sake::Sake {
            signer: key,
            synchrony_bound: HANDSHAKE_SYNCHRONY_BOUND,
            max_handshake_age: HANDSHAKE_AGE_MAX,
            version: sake::Version::V1,
        },
        cups::Version::V1,
    );
    let namespace = namespace(&config.chain_id);
    let build = if config.allow_private_ips { lookup::Config::local } else { lookup::Config::recommended };
    let mut p2p = build(
        handshake,
        &namespace,
        config.listen,
        config.peers_max,
        config.message_bytes_max,
        config.mailbox_messages,
    );
    // Peer sets are per epoch and a node only needs the current and the previous one (an epoch's
    // engine finishes the previous epoch's last block); each retained set costs mailbox space
    // for every peer in it.
    p2p.tracked_peer_sets = NonZeroUsize::new(2).expect("non-zero");
    p2p.bypass_ip_check = config.any_source_ip;
    p2p.peer_connection_cooldown = PEER_RECONNECT_COOLDOWN;
    let (mut network, oracle) = lookup::Network::new(context, p2p);
    let channels = channels.iter().map(|c| network.register(c.id, Quota::per_second(c.messages_per_second))).collect();
    network.start();
    Network { channels, oracle }
}
