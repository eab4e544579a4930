//! BFT ordering and finality for the chain, from Commonware's simplex engine (ed25519
//! signatures) with its marshal for ordered delivery of finalized blocks, block broadcast and
//! backfill — behind one small trait, [`Chain`], that the node implements.
//!
//! Epochs have a fixed length. The validator set of epoch `e + 1` is read from the chain's
//! state after the last block of epoch `e` is finalized, and a fresh engine is started for it;
//! the previous engine is stopped. The epoch's consensus version comes with it ([`Signing`]):
//! version 1 signs with ed25519 identity keys, version 2 with BLS keys whose certificates are one
//! aggregated signature ([`scheme`]), so a consensus upgrade takes effect at an epoch boundary. Nodes outside an epoch's validator set run the same stack
//! with a verify-only scheme: they follow finalized blocks and never vote. Conflicting votes
//! that the engine observes are verified and handed to the chain as evidence bytes, which
//! [`evidence::Verifier`] re-verifies deterministically inside execution.
//!
//! This crate does not execute transactions, keep application state or pick transactions; it
//! asks the [`Chain`] to build, check and apply blocks. It does not open sockets either: the
//! caller passes the p2p channels (authenticated TCP in production, a simulated network in
//! tests).

mod app;
mod block;
pub mod committee;
pub mod evidence;
mod finalizer;
mod reach;
pub mod scheme;
mod schemes;

use std::future::Future;
use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

use commonware_consensus::simplex;
use commonware_cryptography::{ed25519, sha256};
use plexus_types::{Address, Block, Hash};

pub use block::ConsensusBlock;
pub use finalizer::{Channels, start};
pub use schemes::EpochSchemes;

/// Validator identity on the wire.
pub type PublicKey = ed25519::PublicKey;
/// Block digest.
pub type Digest = sha256::Digest;
/// The consensus versions this build can run.
pub use scheme::SUPPORTED as SUPPORTED_VERSIONS;
pub use scheme::{
    BLS_PUBLIC_KEY_BYTES, BLS_SIGNATURE_BYTES, BlsPrivateKey, BlsPublicKey, BlsSignature, Certificate, Scheme,
    bls_public, derive_bls_key, key_registration, prove_possession, verify_possession,
};

/// The round a block is proposed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round {
    pub epoch: u64,
    pub view: u64,
    /// View of the parent block.
    pub parent_view: u64,
    /// Who proposes (this node, when asked to propose).
    pub leader: Address,
}

/// Who is connected during an epoch, and how the epoch's engine is timed.
#[derive(Clone, Debug)]
pub struct EpochPeers {
    /// The epoch's validators and their p2p addresses. Never empty.
    pub validators: Vec<(Address, SocketAddr)>,
    /// Other nodes (providers, full nodes) allowed to connect and follow.
    pub others: Vec<(Address, SocketAddr)>,
    /// The epoch's consensus timing, from chain parameters when the epoch starts (so a
    /// parameter change takes effect at the next epoch boundary).
    pub timeouts: Timeouts,
    /// How the epoch's votes are signed (its consensus version). Every node must derive the same
    /// value for an epoch, whenever it asks.
    pub signing: Signing,
}

/// How an epoch's votes and certificates are signed: its consensus version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signing {
    /// Version 1: every validator signs with its ed25519 identity key.
    Ed25519,
    /// Version 2: every validator of the epoch signs with the BLS key it registered (proof of
    /// possession checked on chain) before the epoch began; certificates aggregate them. The
    /// list is the whole validator set, never a subset (a quorum over a subset would favour the
    /// faulty), and never empty.
    Bls(Vec<(Address, BlsPublicKey)>),
}

impl Signing {
    /// The consensus version this signing belongs to.
    pub fn version(&self) -> u16 {
        match self {
            Signing::Ed25519 => 1,
            Signing::Bls(_) => 2,
        }
    }
}

/// What consensus needs from the chain. Implemented by the node; every method must be
/// deterministic in its verdicts (`verify`) across honest nodes.
pub trait Chain: Clone + Send + Sync + 'static {
    /// Whether the post-state of this block is known (committed, or executed speculatively).
    fn has_state(&self, block: &Hash) -> bool;

    /// Whether this binary can run a child of `parent` (whose state is known), and if not why:
    /// the parent activated a version it does not have. A leader that cannot lets its view go
    /// at once (peers skip a view whose leader nullified it) instead of after the leader timeout.
    fn can_extend(&self, parent: &Hash) -> Result<(), String>;

    /// Builds a child of `parent`, whose state is known. `None` skips this proposal.
    fn propose(&self, parent: &Block, round: Round) -> impl Future<Output = Option<Block>> + Send;

    /// Executes `block` on its parent's state (known) and checks its header: `false` only when
    /// the block is permanently invalid.
    fn verify(&self, block: &Block) -> impl Future<Output = bool> + Send;

    /// Applies a finalized block durably. Called in height order, at least once per height;
    /// must be idempotent. `finalization` is the certificate in the engine's encoding.
    fn finalized(&self, block: &Block, finalization: Vec<u8>) -> impl Future<Output = ()> + Send;

    /// The peers of an epoch, from committed state. `None` if that state is not committed yet.
    fn epoch_peers(&self, epoch: u64) -> Option<EpochPeers>;

    /// Verified conflicting-vote evidence, encoded for [`evidence::Verifier`].
    fn report_evidence(&self, evidence: Vec<u8>);
}

/// Consensus timing and sizing. Every node of a network uses the same values for the timing
/// fields within an epoch (they come from chain parameters).
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// How long to wait for the leader's proposal.
    pub leader: Duration,
    /// How long to wait for a notarization; must exceed `leader`.
    pub certification: Duration,
    /// How often to re-broadcast a vote to skip a stuck view.
    pub retry: Duration,
    /// Views kept behind the finalized tip.
    pub view_retention: u64,
    /// Views without activity after which a leader is skipped early (`None` disables).
    pub skip: Option<Duration>,
    /// Shortest time between a block and its child (the proposer waits).
    pub block_interval: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            leader: Duration::from_millis(1_000),
            certification: Duration::from_millis(2_000),
            retry: Duration::from_millis(5_000),
            view_retention: 256,
            skip: Some(Duration::from_secs(10)),
            block_interval: Duration::from_millis(200),
        }
    }
}

impl Timeouts {
    /// Consensus timing from the chain's parameters (every node derives the same).
    pub fn from_params(params: &plexus_types::Params) -> Timeouts {
        let ms = |v: u128| Duration::from_millis(v as u64);
        let certification =
            ms(params.notarization_timeout_ms).max(ms(params.leader_timeout_ms) + Duration::from_millis(1));
        Timeouts {
            leader: ms(params.leader_timeout_ms),
            certification,
            retry: ms(params.nullify_retry_ms),
            view_retention: params.activity_timeout_views as u64,
            skip: Some((certification + ms(params.nullify_retry_ms)).max(Duration::from_secs(5))),
            block_interval: ms(params.block_interval_ms),
        }
    }
}

/// Everything [`start`] needs besides the runtime and the network.
#[derive(Clone)]
pub struct Config<C: Chain> {
    pub chain: C,
    /// This node's key (validator identity and p2p identity).
    pub signer: ed25519::PrivateKey,
    /// The chain id, used as the signature namespace of votes.
    pub chain_id: String,
    /// The genesis block (height 0).
    pub genesis: Block,
    /// Blocks per epoch (fixed at genesis).
    pub epoch_length: NonZeroU64,
    /// Prefix of every storage partition consensus creates.
    pub partition_prefix: String,
    /// Only `block_interval` is read from here; each epoch's timeouts come with its
    /// [`EpochPeers`].
    pub timeouts: Timeouts,
    /// Capacity of internal mailboxes.
    pub mailbox_size: NonZeroUsize,
}

/// The namespace consensus signatures use on a chain.
pub fn namespace(chain_id: &str) -> Vec<u8> {
    let mut ns = plexus_types::namespace::CONSENSUS.to_vec();
    ns.push(b'/');
    ns.extend_from_slice(chain_id.as_bytes());
    ns
}

/// Largest p2p message any consensus component sends, for sizing the network.
pub fn max_message_size(max_validators: u32) -> u32 {
    let simplex = simplex::max_payload_size::<Scheme, Digest>(max_validators);
    let marshal = commonware_consensus::marshal::max_payload_size::<
        commonware_consensus::marshal::standard::Standard<ConsensusBlock>,
        Scheme,
    >(max_validators, &());
    commonware_p2p::max_message_size(&[
        commonware_p2p::utils::mux::prefixed(simplex),
        marshal,
        plexus_types::params::limits::BLOCK_BYTES_MAX + 64,
    ])
}

/// The consensus version whose certificate finalized a block, from the finalization bytes the
/// chain stores with it (`None` if they do not decode: empty for genesis or an imported block).
pub fn finalization_version(finalization: &[u8]) -> Option<u16> {
    use commonware_codec::Decode as _;
    use commonware_cryptography::certificate::Verifier as _;
    let f = simplex::types::Finalization::<Scheme, Digest>::decode_cfg(
        commonware_codec::Copying(finalization),
        &Scheme::certificate_codec_config_unbounded(),
    )
    .ok()?;
    Some(match f.certificate {
        Certificate::Individual(_) => 1,
        Certificate::Aggregate(_) => 2,
    })
}
