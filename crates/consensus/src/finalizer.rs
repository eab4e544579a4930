//! Wiring and lifecycle: marshal (ordered finalized blocks, broadcast, backfill) runs for the
//! life of the node; one simplex engine runs per epoch. Finalized blocks are handed to the
//! chain in height order, and the last block of an epoch starts the next epoch's engine with
//! the validator set the chain read from its committed state.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU64, NonZeroUsize};
use std::time::Duration;

use commonware_broadcast::buffered;
use commonware_codec::Encode;
use commonware_consensus::marshal::core::{Actor as Marshal, Processed};
use commonware_consensus::marshal::standard::Deferred;
use commonware_consensus::marshal::{self, Start, Update};
use commonware_consensus::simplex::types::Activity;
use commonware_consensus::simplex::{self, Floor, ForwardPolicy, SkipBudget, SkipPolicy, elector::RoundRobin};
use commonware_consensus::types::{Epoch, Epocher, FixedEpocher, Height, ViewDelta};
use commonware_consensus::{Heightable, Reporter, Reporters};
use commonware_cryptography::certificate::Verifier as _;
use commonware_cryptography::{Digested, Sha256, Signer as _};
use commonware_p2p::utils::mux::{Builder as _, MuxHandle, Muxer};
use commonware_p2p::{
    Address as PeerAddress, AddressableManager, AddressableTrackedPeers, Blocker, Message, Receiver, Sender,
};
use commonware_parallel::Sequential;
use commonware_runtime::buffer::paged::CacheRef;
use commonware_runtime::{Clock, Handle, IoBuf, Metrics, Spawner, Storage};
use commonware_storage::archive::immutable;
use commonware_utils::acknowledgement::Acknowledgement as _;
use commonware_utils::ordered::{BiMap, Map, Set};
use commonware_utils::vec::NonEmptyVec;
use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use plexus_types::Hash;
use tracing::{error, info, warn};

use crate::app::Adapter;
use crate::block::ConsensusBlock;
use crate::evidence;
use crate::reach::{LateEntry, Reach, Watched};
use crate::{Chain, Config, Digest, EpochPeers, EpochSchemes, PublicKey, Scheme, Signing};

/// The p2p channels consensus runs on, each an authenticated (sender, receiver) pair.
///
/// Blocks may travel on a sender/receiver of their own type: the network frames them by its
/// version (`plexus_network::blocks`).
pub struct Channels<S, R, BS = S, BR = R> {
    /// Votes (notarize, nullify, finalize), multiplexed by epoch.
    pub votes: (S, R),
    /// Certificates, multiplexed by epoch.
    pub certificates: (S, R),
    /// Certificate fetches between engines, multiplexed by epoch.
    pub resolver: (S, R),
    /// Backfill of finalized blocks and certificates.
    pub backfill: (S, R),
    /// Broadcast of proposed blocks.
    pub blocks: (BS, BR),
}

/// Views of notarized/verified blocks marshal keeps behind the processed round.
const MARSHAL_VIEW_RETENTION: u64 = 16;

type Wrapper<E, C> = Deferred<E, Scheme, Adapter<C>, ConsensusBlock, FixedEpocher>;

/// Starts consensus on `context`. Returns when the node stops (the handle of the whole tree).
pub fn start<E, C, S, R, BS, BR, M, B>(
    context: E,
    cfg: Config<C>,
    channels: Channels<S, R, BS, BR>,
    manager: M,
    blocker: B,
) -> Handle<()>
where
    E: Spawner + Clock + Metrics + Storage + rand::CryptoRng + rand::Rng + Send + 'static,
    C: Chain,
    S: Sender<PublicKey = PublicKey>,
    R: Receiver<PublicKey = PublicKey>,
    BS: Sender<PublicKey = PublicKey>,
    BR: Receiver<PublicKey = PublicKey>,
    M: AddressableManager<PublicKey = PublicKey> + Clone + Send + 'static,
    B: Blocker<PublicKey = PublicKey> + Clone + Send + 'static,
{
    context.child("consensus").spawn(move |context| async move { run(context, cfg, channels, manager, blocker).await })
}

async fn run<E, C, S, R, BS, BR, M, B>(
    context: E,
    cfg: Config<C>,
    channels: Channels<S, R, BS, BR>,
    mut manager: M,
    blocker: B,
) where
    E: Spawner + Clock + Metrics + Storage + rand::CryptoRng + rand::Rng + Send + 'static,
    C: Chain,
    S: Sender<PublicKey = PublicKey>,
    R: Receiver<PublicKey = PublicKey>,
    BS: Sender<PublicKey = PublicKey>,
    BR: Receiver<PublicKey = PublicKey>,
    M: AddressableManager<PublicKey = PublicKey> + Clone + Send + 'static,
    B: Blocker<PublicKey = PublicKey> + Clone + Send + 'static,
{
    let me = cfg.signer.public_key();
    let namespace = crate::namespace(&cfg.chain_id);
    let epocher = FixedEpocher::new(cfg.epoch_length);
    let schemes = EpochSchemes::default();
    let page_cache =
        CacheRef::new(NonZeroU16::new(4096).expect("non-zero"), NonZeroUsize::new(1024).expect("non-zero"));
    let prefix = cfg.partition_prefix.clone();

    // Every epoch whose validator set is already committed gets its scheme, so marshal can
    // verify certificates of blocks it backfills.
    let mut epoch = 0;
    while let Some(peers) = cfg.chain.epoch_peers(epoch) {
        register_scheme(&schemes, &namespace, &cfg.signer, epoch, &peers);
        epoch += 1;
    }
    assert!(epoch > 0, "the genesis validator set is committed before consensus starts");

    // Marshal: ordered finalized blocks, block broadcast and backfill.
    let (resolver_rx, resolver) = marshal::resolver::p2p::init(
        context.child("marshal_resolver"),
        marshal::resolver::p2p::Config {
            public_key: me.clone(),
            peer_provider: manager.clone(),
            blocker: blocker.clone(),
            mailbox_size: cfg.mailbox_size,
            fetch_timeout: commonware_utils::NZDuration!(Duration::from_secs(2)),
            fetch_retry_delay: Duration::from_millis(100),
            priority_requests: false,
            priority_responses: false,
        },
        channels.backfill,
    );
    let (broadcast, buffer) = buffered::Engine::new(
        context.child("broadcast"),
        buffered::Config {
            public_key: me.clone(),
            mailbox_size: cfg.mailbox_size,
            deque_size: 16,
            priority: false,
            codec_config: (),
            peer_provider: manager.clone(),
            strategy: Sequential,
        },
    );
    broadcast.start(channels.blocks);
    let finalizations = immutable::Archive::init(
        context.child("finalizations"),
        archive_config(
            &format!("{prefix}-finalizations"),
            page_cache.clone(),
            Scheme::certificate_codec_config_unbounded(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot open the finalization archive: {e}"));
    let blocks = immutable::Archive::init(
        context.child("finalized_blocks"),
        archive_config(&format!("{prefix}-finalized-blocks"), page_cache.clone(), ()),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot open the block archive: {e}"));
    let genesis = ConsensusBlock::new(cfg.genesis.clone());
    let genesis_digest = commonware_cryptography::Digestible::digest(&genesis);
    let (marshal_actor, mailbox, floor) = Marshal::init(
        context.child("marshal"),
        finalizations,
        blocks,
        marshal::Config {
            provider: schemes.clone(),
            epocher: epocher.clone(),
            start: Start::Genesis(Digested::precomputed(genesis, genesis_digest)),
            partition_prefix: format!("{prefix}-marshal"),
            mailbox_size: cfg.mailbox_size,
            // Marshal keeps whole epochs of caches within this many views; a short window lets it
            // destroy the caches of finished epochs.
            view_retention: ViewDelta::new(MARSHAL_VIEW_RETENTION),
            prunable_items_per_section: NonZeroU64::new(64).expect("non-zero"),
            page_cache: page_cache.clone(),
            replay_buffer: NonZeroUsize::new(1 << 16).expect("non-zero"),
            key_write_buffer: NonZeroUsize::new(1 << 16).expect("non-zero"),
            value_write_buffer: NonZeroUsize::new(1 << 16).expect("non-zero"),
            block_codec_config: (),
            max_repair: NonZeroUsize::new(16).expect("non-zero"),
            max_pending_acks: NonZeroUsize::new(16).expect("non-zero"),
            strategy: Sequential,
        },
    )
    .await;

    // Whom this node's votes reach: a leader that reaches too few lets its view go (crate::reach).
    let reach = Reach::default();
    let late = LateEntry::default();
    let wrapper: Wrapper<E, C> = Deferred::new(
        context.child("deferred"),
        Adapter {
            chain: cfg.chain.clone(),
            block_interval: cfg.timeouts.block_interval,
            me: me.clone(),
            reach: reach.clone(),
            late: late.clone(),
        },
        mailbox.clone(),
        epocher.clone(),
    );

    // Finalized blocks flow from marshal to the finalizer task; marshal keeps at most
    // `max_pending_acks` blocks unacknowledged, which bounds this channel.
    let (updates_tx, mut updates_rx) = mpsc::unbounded();
    marshal_actor.start(UpdateForwarder { tx: updates_tx }, buffer, (resolver_rx, resolver));

    // One muxer per engine channel: each epoch's engine gets its own subchannel, and a message
    // for an epoch we have not reached tells us we are behind.
    let votes = Watched { inner: channels.votes.0, reach: Some(reach) };
    let (vote_mux, vote_handle, mut vote_backup) =
        Muxer::builder(context.child("vote_mux"), votes, channels.votes.1).with_backup().build();
    vote_mux.start();
    let certificates = Watched { inner: channels.certificates.0, reach: None };
    let (cert_mux, cert_handle) = Muxer::new(context.child("cert_mux"), certificates, channels.certificates.1);
    cert_mux.start();
    let fetches = Watched { inner: channels.resolver.0, reach: None };
    let (res_mux, res_handle) = Muxer::new(context.child("resolver_mux"), fetches, channels.resolver.1);
    res_mux.start();

    let mut orchestrator = Orchestrator {
        context: context.child("orchestrator"),
        chain: cfg.chain.clone(),
        signer: cfg.signer.clone(),
        namespace,
        schemes,
        page_cache,
        prefix,
        mailbox_size: cfg.mailbox_size,
        wrapper,
        blocker,
        muxes: (vote_handle, cert_handle, res_handle),
        late,
        engine: None,
        epoch: 0,
    };

    // Resume in the epoch after the last block marshal handed us.
    let (start_epoch, start_floor) = match floor.processed() {
        None => (0, genesis_digest),
        Some(processed) => {
            let height = match processed {
                Processed::Block(h) | Processed::Absent(h) => h.get(),
            };
            let epoch = epocher.containing(Height::new(height + 1)).expect("epochs cover all heights").epoch().get();
            let floor =
                if epoch == 0 {
                    genesis_digest
                } else {
                    let boundary = epocher.last(Epoch::new(epoch - 1)).expect("epochs cover all heights");
                    mailbox.get_info(boundary).await.map(|(_, digest)| digest).unwrap_or_else(|| {
                        panic!("the boundary block {} is stored before its epoch ends", boundary.get())
                    })
                };
            (epoch, floor)
        }
    };
    orchestrator.enter(start_epoch, start_floor, &mut manager, VecDeque::new()).await;
    let mut early = EarlyVotes::default();

    loop {
        futures::select! {
            update = updates_rx.next() => {
                let Some((block, ack)) = update else { break };
                let height = block.height().get();
                let finalization = mailbox.get_finalization(block.height()).await.map(|f| f.encode().to_vec()).unwrap_or_default();
                cfg.chain.finalized(&block.inner().block, finalization).await;
                if Some(Height::new(height)) == epocher.last(Epoch::new(orchestrator.epoch)) {
                    let next = orchestrator.epoch + 1;
                    let digest = commonware_cryptography::Digestible::digest(block.inner());
                    orchestrator.enter(next, digest, &mut manager, early.take(next)).await;
                }
                ack.acknowledge();
            },
            backup = vote_backup.recv().fuse() => {
                let Some((sub, (from, message))) = backup else { continue };
                if sub == orchestrator.epoch + 1 {
                    early.keep(sub, from.clone(), message);
                }
                if sub > orchestrator.epoch {
                    // Peers are voting in a later epoch: fetch the block that ends ours from them.
                    if let Some(last) = epocher.last(Epoch::new(orchestrator.epoch)) {
                        mailbox.hint_finalized(last, NonEmptyVec::new(from));
                    }
                }
            },
        }
    }
    error!("marshal stopped delivering finalized blocks; consensus is shutting down");
}

fn archive_config<C>(prefix: &str, page_cache: CacheRef, codec_config: C) -> immutable::Config<C> {
    let buffer = NonZeroUsize::new(1 << 16).expect("non-zero");
    immutable::Config {
        metadata_partition: format!("{prefix}-metadata"),
        freezer_table_partition: format!("{prefix}-table"),
        freezer_table_initial_size: 65_536,
        freezer_table_resize_frequency: 4,
        freezer_table_resize_chunk_size: 16_384,
        freezer_key_partition: format!("{prefix}-keys"),
        freezer_key_page_cache: page_cache,
        freezer_value_partition: format!("{prefix}-values"),
        freezer_value_target_size: 1 << 26,
        freezer_value_compression: None,
        ordinal_partition: format!("{prefix}-ordinal"),
        items_per_section: NonZeroU64::new(4096).expect("non-zero"),
        freezer_key_write_buffer: buffer,
        freezer_value_write_buffer: buffer,
        ordinal_write_buffer: buffer,
        replay_buffer: buffer,
        codec_config,
    }
}

fn validator_set(peers: &EpochPeers) -> Set<PublicKey> {
    Set::from_iter_dedup(peers.validators.iter().map(|(a, _)| a.0.clone()))
}

fn register_scheme(
    schemes: &EpochSchemes,
    namespace: &[u8],
    signer: &commonware_cryptography::ed25519::PrivateKey,
    epoch: u64,
    peers: &EpochPeers,
) {
    let (scheme, can_sign) = match &peers.signing {
        Signing::Ed25519 => {
            let set = validator_set(peers);
            match Scheme::ed25519_signer(namespace, set.clone(), signer.clone()) {
                Some(scheme) => (scheme, true),
                None => (Scheme::ed25519_verifier(namespace, set), false),
            }
        }
        Signing::Bls(keys) => {
            let pairs: Vec<_> = keys.iter().map(|(a, k)| (a.0.clone(), *k)).collect();
            let committee = BiMap::try_from(pairs).unwrap_or_else(|e| {
                panic!("the chain keeps one BLS key per validator and one validator per key: {e:?}")
            });
            match Scheme::bls_signer(namespace, committee.clone(), crate::derive_bls_key(signer)) {
                Some(scheme) => (scheme, true),
                None => (Scheme::bls_verifier(namespace, committee), false),
            }
        }
    };
    schemes.register(epoch, scheme, can_sign);
}

/// Hands marshal's finalized blocks to the finalizer loop. Tips are ignored: a block is only
/// applied once marshal has stored it.
#[derive(Clone)]
struct UpdateForwarder {
    tx: mpsc::UnboundedSender<(Digested<ConsensusBlock>, commonware_utils::acknowledgement::Exact)>,
}

impl Reporter for UpdateForwarder {
    type Activity = Update<ConsensusBlock>;

    fn report(&mut self, update: Update<ConsensusBlock>) -> commonware_actor::Feedback {
        match update {
            Update::Tip(..) => commonware_actor::Feedback::Ok,
            Update::Block(block, ack) => match self.tx.unbounded_send((block, ack)) {
                Ok(()) => commonware_actor::Feedback::Ok,
                Err(_) => commonware_actor::Feedback::Closed,
            },
        }
    }
}

/// Receives every activity of the engine and reports verified conflicting votes as evidence.
#[derive(Clone)]
struct EvidenceReporter<C: Chain> {
    chain: C,
    scheme: std::sync::Arc<Scheme>,
}

impl<C: Chain> Reporter for EvidenceReporter<C> {
    type Activity = Activity<Scheme, Digest>;

    fn report(&mut self, activity: Activity<Scheme, Digest>) -> commonware_actor::Feedback {
        if let Some(bytes) = evidence::encode(&activity) {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
            if activity.verify(&mut rng, self.scheme.as_ref(), &Sequential) {
                warn!(kind = ?std::mem::discriminant(&activity), "conflicting votes observed; reporting evidence");
                self.chain.report_evidence(bytes);
            }
        }
        commonware_actor::Feedback::Ok
    }
}

/// Starts and stops the per-epoch engines.
struct Orchestrator<E, C, S, B>
where
    E: Spawner + Clock + Metrics + Storage + rand::CryptoRng + rand::Rng + Send + 'static,
    C: Chain,
    S: Sender<PublicKey = PublicKey>,
    B: Blocker<PublicKey = PublicKey> + Clone + Send + 'static,
{
    context: E,
    chain: C,
    signer: commonware_cryptography::ed25519::PrivateKey,
    namespace: Vec<u8>,
    schemes: EpochSchemes,
    page_cache: CacheRef,
    prefix: String,
    mailbox_size: NonZeroUsize,
    wrapper: Wrapper<E, C>,
    blocker: B,
    muxes: (MuxHandle<Watched<S>>, MuxHandle<Watched<S>>, MuxHandle<Watched<S>>),
    /// Set when this node begins an epoch after its peers (see [`LateEntry`]).
    late: LateEntry,
    engine: Option<Handle<()>>,
    epoch: u64,
}

impl<E, C, S, B> Orchestrator<E, C, S, B>
where
    E: Spawner + Clock + Metrics + Storage + rand::CryptoRng + rand::Rng + Send + 'static,
    C: Chain,
    S: Sender<PublicKey = PublicKey>,
    B: Blocker<PublicKey = PublicKey> + Clone + Send + 'static,
{
    async fn enter<M: AddressableManager<PublicKey = PublicKey>>(
        &mut self,
        epoch: u64,
        floor: Digest,
        manager: &mut M,
        early: VecDeque<Message<PublicKey>>,
    ) {
        let peers = self
            .chain
            .epoch_peers(epoch)
            .unwrap_or_else(|| panic!("the validator set of epoch {epoch} is committed before the epoch starts"));
        register_scheme(&self.schemes, &self.namespace, &self.signer, epoch, &peers);
        let primary = peer_map(&peers.validators);
        let secondary = peer_map(
            &peers
                .others
                .iter()
                .filter(|(a, _)| !peers.validators.iter().any(|(v, _)| v == a))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let _ = manager.track(epoch, AddressableTrackedPeers::new(primary, secondary));
        let scheme = self.schemes.get(epoch).expect("registered above");
        let voting = self.schemes.scoped_can_sign(epoch);
        info!(epoch, validators = peers.validators.len(), consensus_version = peers.signing.version(), voting, floor = %Hash(floor), leader_timeout = ?peers.timeouts.leader, "entering epoch");

        if let Some(old) = self.engine.take() {
            old.abort();
        }
        let evidence = EvidenceReporter { chain: self.chain.clone(), scheme: scheme.clone() };
        let engine = simplex::Engine::new(
            self.context.child("simplex").with_attribute("epoch", epoch),
            simplex::Config {
                scheme: scheme.as_ref().clone(),
                elector: RoundRobin::<Sha256>::default(),
                blocker: self.blocker.clone(),
                automaton: self.wrapper.clone(),
                relay: self.wrapper.clone(),
                reporter: Reporters::from((self.wrapper.clone(), evidence)),
                track_historical_votes: true,
                strategy: Sequential,
                partition: format!("{}-simplex-{epoch}", self.prefix),
                mailbox_size: self.mailbox_size,
                epoch: Epoch::new(epoch),
                floor: Floor::Genesis(floor),
                replay_buffer: NonZeroUsize::new(1 << 20).expect("non-zero"),
                write_buffer: NonZeroUsize::new(1 << 20).expect("non-zero"),
                page_cache: self.page_cache.clone(),
                leader_timeout: peers.timeouts.leader,
                certification_timeout: peers.timeouts.certification,
                timeout_retry: peers.timeouts.retry,
                view_retention: ViewDelta::new(peers.timeouts.view_retention),
                skip: match peers.timeouts.skip {
                    Some(timeout) => SkipPolicy::Enabled { timeout, budget: SkipBudget::Participants },
                    None => SkipPolicy::Disabled,
                },
                fetch_timeout: commonware_utils::NZDuration!(Duration::from_secs(1)),
                fetch_retry_delay: Duration::from_millis(100),
                forward: ForwardPolicy::SilentVoters,
            },
        );
        let (votes, certs, resolver) = &mut self.muxes;
        let (vote_sender, vote_receiver) = votes.register(epoch).await.expect("vote muxer is running");
        if !early.is_empty() {
            info!(epoch, votes = early.len(), "votes of the new epoch that came before it began, handed to its engine");
            self.late.mark(epoch, self.context.current() + 2 * peers.timeouts.leader);
        }
        let votes = (vote_sender, EarlyFirst { early, inner: vote_receiver });
        let certs = certs.register(epoch).await.expect("certificate muxer is running");
        let resolver = resolver.register(epoch).await.expect("resolver muxer is running");
        self.engine = Some(engine.start(votes, certs, resolver));
        self.epoch = epoch;
        // The journal of an epoch two back can no longer be needed: its last block is final
        // and the next epoch's engine has finalized past it.
        if epoch >= 2 {
            let old = format!("{}-simplex-{}", self.prefix, epoch - 2);
            let _ = self.context.remove(&old, None).await;
        }
    }
}

/// Votes of the next epoch that arrive before this node enters it (its peers finalized and
/// processed the epoch's last block first). The muxer has no subchannel for them yet; dropped,
/// the first leader's proposal would be lost to a node that enters a few milliseconds late, and
/// the peers that did vote for it would hold the view until the certification timeout while
/// this one waits out the leader timeout. So they are kept (bounded: the first
/// [`EARLY_VOTES_PER_PEER`] of each peer, [`EARLY_VOTES_MAX`] in all) and handed to the next
/// epoch's engine, which checks them like any vote.
#[derive(Default)]
struct EarlyVotes {
    epoch: u64,
    messages: VecDeque<Message<PublicKey>>,
    per_peer: BTreeMap<PublicKey, usize>,
}

const EARLY_VOTES_MAX: usize = 4_096;
const EARLY_VOTES_PER_PEER: usize = 64;

impl EarlyVotes {
    fn keep(&mut self, epoch: u64, from: PublicKey, message: IoBuf) {
        if epoch != self.epoch {
            self.messages.clear();
            self.per_peer.clear();
            self.epoch = epoch;
        }
        let count = self.per_peer.entry(from.clone()).or_default();
        if *count >= EARLY_VOTES_PER_PEER || self.messages.len() >= EARLY_VOTES_MAX {
            return;
        }
        *count += 1;
        self.messages.push_back((from, message));
    }

    /// The votes kept for `epoch` (none if they were for another), leaving nothing behind.
    fn take(&mut self, epoch: u64) -> VecDeque<Message<PublicKey>> {
        self.per_peer.clear();
        let messages = std::mem::take(&mut self.messages);
        if self.epoch == epoch { messages } else { VecDeque::new() }
    }
}

/// An epoch's vote receiver that first yields the votes that came before the epoch began.
struct EarlyFirst<R> {
    early: VecDeque<Message<PublicKey>>,
    inner: R,
}

impl<R> std::fmt::Debug for EarlyFirst<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarlyFirst").field("early", &self.early.len()).finish_non_exhaustive()
    }
}

impl<R: Receiver<PublicKey = PublicKey>> Receiver for EarlyFirst<R> {
    type Error = R::Error;
    type PublicKey = PublicKey;

    async fn recv(&mut self) -> Result<Message<PublicKey>, R::Error> {
        match self.early.pop_front() {
            Some(message) => Ok(message),
            None => self.inner.recv().await,
        }
    }

    fn capacity(&self) -> NonZeroUsize {
        self.inner.capacity()
    }
}

fn peer_map(peers: &[(plexus_types::Address, SocketAddr)]) -> Map<PublicKey, PeerAddress> {
    let mut pairs: Vec<(PublicKey, PeerAddress)> =
        peers.iter().map(|(a, addr)| (a.0.clone(), PeerAddress::Symmetric(*addr))).collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs.dedup_by(|a, b| a.0 == b.0);
    Map::try_from(pairs).expect("deduplicated above")
}

impl EpochSchemes {
    fn scoped_can_sign(&self, epoch: u64) -> bool {
        use commonware_cryptography::certificate::Provider as _;
        self.scheme(Epoch::new(epoch)).is_some()
    }
}

#[cfg(test)]
mod tests {
    use commonware_cryptography::{Signer as _, ed25519};

    use super::*;

    fn peer(i: u64) -> PublicKey {
        ed25519::PrivateKey::from_seed(i).public_key()
    }

    #[test]
    fn early_votes_are_bounded_per_peer_and_kept_only_for_their_epoch() {
        let mut early = EarlyVotes::default();
        for i in 0..(EARLY_VOTES_PER_PEER as u64 + 10) {
            early.keep(5, peer(1), IoBuf::from(i.to_be_bytes().to_vec()));
        }
        early.keep(5, peer(2), IoBuf::from(b"two".to_vec()));
        // One peer cannot fill the buffer: its first votes are kept, the others' still fit.
        let kept = early.take(5);
        assert_eq!(kept.len(), EARLY_VOTES_PER_PEER + 1);
        assert_eq!(kept[0].1.as_ref(), &0u64.to_be_bytes());
        assert_eq!(kept.back().unwrap().0, peer(2));
        // Taken once: nothing is handed over twice.
        assert!(early.take(5).is_empty());
        // Votes for an epoch the node skipped past are not handed to another epoch.
        early.keep(6, peer(1), IoBuf::from(b"six".to_vec()));
        assert!(early.take(7).is_empty());
        // A new epoch's votes replace an old epoch's.
        early.keep(8, peer(1), IoBuf::from(b"eight".to_vec()));
        early.keep(9, peer(1), IoBuf::from(b"nine".to_vec()));
        let kept = early.take(9);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].1.as_ref(), b"nine");
    }

    #[test]
    fn early_votes_stop_at_the_total_bound() {
        let mut early = EarlyVotes::default();
        for i in 0..(EARLY_VOTES_MAX as u64 / EARLY_VOTES_PER_PEER as u64 + 5) {
            for _ in 0..EARLY_VOTES_PER_PEER {
                early.keep(1, peer(i), IoBuf::from(b"v".to_vec()));
            }
        }
        assert_eq!(early.take(1).len(), EARLY_VOTES_MAX);
    }

    #[test]
    fn the_engine_reads_early_votes_first() {
        use commonware_runtime::{Runner as _, deterministic};
        deterministic::Runner::default().start(|context| async move {
            let (_sender, receiver) = crate::reach::tests::simulated_channel(&context, &[peer(1), peer(2)], 0).await;
            let early: VecDeque<Message<PublicKey>> =
                [(peer(1), IoBuf::from(b"a".to_vec())), (peer(2), IoBuf::from(b"b".to_vec()))].into();
            let mut votes = EarlyFirst { early, inner: receiver };
            assert_eq!(votes.recv().await.unwrap().1.as_ref(), b"a");
            assert_eq!(votes.recv().await.unwrap().0, peer(2));
            assert_eq!(votes.capacity(), votes.inner.capacity());
        });
    }
}
