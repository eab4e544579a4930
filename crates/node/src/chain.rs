//! The chain as consensus sees it: builds blocks from the mempool, executes proposals
//! speculatively on their parent's state, and applies finalized blocks durably.
//!
//! Post-states of blocks that are not final yet are kept as change sets layered over the
//! committed state, one per block, keyed by block hash; each also holds its merkleized
//! (unapplied) state batch so the state root in its header can be checked before anything is
//! written. Finalizing a block applies exactly that batch, then forgets every pending block at
//! or below its height.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use commonware_runtime::{Clock, Metrics, Spawner, Storage};
use plexus_consensus::{Chain, EpochPeers, Round};
use plexus_execution::state::{self as st, Layered, Stake, Store, ValidatorSet, scan_table};
use plexus_execution::{BlockEnv, BlockOutcome, ChangeSet, Executor, Overlay, TxResult};
use plexus_store::{BlockRecord, BlockStore, Speculative, StateStore};
use plexus_types::block::txs_root;
use plexus_types::tx::Payload;
use plexus_types::{Address, Block, Hash, Header, Height, Params, PrivateKey, SignedTx, Transaction, VersionVector};
use serde::Serialize;
use tokio::sync::broadcast;
use tracing::{debug, error, info, warn};

use crate::mempool::{Inserted, Mempool, MempoolConfig, MempoolError};
use crate::metrics::NodeMetrics;

/// How long building a proposal may take: verifiers spend about as long, and all of it must fit
/// well inside the leader and notarization timeouts or views time out under load.
const BUILD_BUDGET: std::time::Duration = std::time::Duration::from_millis(150);
/// Fewest transactions a proposal may hold whatever the measured cost.
const BLOCK_TXS_FLOOR: usize = 200;

/// Shadow runs of a pending execution version: how many blocks passed, the first failure.
#[derive(Default)]
struct Shadow {
    layer: Option<plexus_types::Layer>,
    version: u16,
    passed: u64,
    failure: Option<String>,
}

/// Blocks a pending execution version must pass in shadow before this node signals readiness.
pub const SHADOW_BLOCKS_MIN: u64 = 3;

/// A block body executed on its parent's state.
struct Executed {
    txs: Vec<SignedTx>,
    outcome: BlockOutcome,
    spec: Arc<Speculative>,
    /// The versions it ran under (its parent's post-state).
    versions: VersionVector,
}

/// A block executed on top of its parent but not final yet.
struct Pending {
    header: Header,
    changes: ChangeSet,
    outcome: BlockOutcome,
    spec: Arc<Speculative>,
}

/// A finalized block and what it did, as published to subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct FinalizedBlock {
    pub height: Height,
    pub hash: Hash,
    pub header: Header,
    pub txs: Vec<TxResult>,
    pub events: Vec<plexus_execution::Event>,
}

/// Why a submitted transaction was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Tx(#[from] plexus_execution::TxError),
    #[error("{0}")]
    Mempool(#[from] MempoolError),
    /// Checking the transaction hit a bug (a panic, caught): refused, and the node goes on.
    #[error("internal error while checking the transaction: {0}")]
    Internal(String),
}

/// Something to send to peers.
pub type Gossip = tokio::sync::mpsc::Sender<Arc<SignedTx>>;

/// Shared chain state. Cheap to clone.
pub struct ChainState<E: Storage + Clock + Metrics + Spawner> {
    inner: Arc<Inner<E>>,
}

impl<E: Storage + Clock + Metrics + Spawner> Clone for ChainState<E> {
    fn clone(&self) -> Self {
        ChainState { inner: self.inner.clone() }
    }
}

struct Inner<E: Storage + Clock + Metrics + Spawner> {
    key: PrivateKey,
    executor: Executor,
    genesis: Block,
    state: StateStore<E>,
    blocks: BlockStore<E>,
    pending: Mutex<HashMap<Hash, Arc<Pending>>>,
    epoch_length: u64,
    txs_committed: AtomicU64,
    /// Moving average of the time to build a proposal, per transaction, in ns.
    tx_cost_ns: AtomicU64,
    shadow: Mutex<Shadow>,
    mempool: Mutex<Mempool>,
    /// The API's indexes over the committed state (sessions by party, unbonding by staker).
    indexes: std::sync::RwLock<crate::index::Indexes>,
    finalized_tx: broadcast::Sender<Arc<FinalizedBlock>>,
    gossip: Mutex<Option<Gossip>>,
    /// Most non-validators admitted to a peer set (see [`crate::followers`]).
    followers_max: std::sync::atomic::AtomicUsize,
    now_ms: Box<dyn Fn() -> u64 + Send + Sync>,
    metrics: NodeMetrics,
    /// Set, with the reason, when the chain activated a version this binary cannot run.
    halt: tokio::sync::watch::Sender<Option<String>>,
}

impl<E: Storage + Clock + Metrics + Spawner> ChainState<E> {
    /// Opens the chain's state and blocks, writing genesis on first start.
    pub async fn open(
        context: E,
        key: PrivateKey,
        genesis: &plexus_types::Genesis,
        store_cfg: &plexus_store::StoreConfig,
        mempool: MempoolConfig,
        evidence: Arc<dyn plexus_execution::EvidenceVerifier>,
        metrics: NodeMetrics,
    ) -> Result<Self, plexus_store::StoreError> {
        let state = StateStore::open(context.child("state"), store_cfg).await?;
        let blocks = BlockStore::open(context.child("blocks"), store_cfg).await?;
        let executor = Executor::new(genesis.chain_id.clone(), evidence);
        let genesis_block = match state.committed().0 {
            None => {
                let genesis_changes = plexus_execution::genesis::genesis_changes(genesis);
                let genesis_spec = state.speculate(None, 0, &genesis_changes).await?;
                let block = genesis_block(genesis, genesis_spec.root);
                info!(root = %genesis_spec.root, "writing genesis state");
                blocks
                    .put(&BlockRecord {
                        block: block.clone(),
                        results_json: b"[]".to_vec(),
                        finalization: Vec::new(),
                        txs_before: 0,
                    })
                    .await?;
                state.commit(&genesis_spec, &genesis_changes, block.hash()).await?;
                block
            }
            Some(_) => {
                let stored_genesis: Option<Hash> = {
                    let view = state.view();
                    let mut o = Overlay::new(&*view);
                    Store::new(&mut o).read(st::keys::GENESIS)
                };
                if stored_genesis != Some(genesis.hash()) {
                    return Err(plexus_store::StoreError::Corrupt(format!(
                        "this node's data was created from a different genesis file (stored {}, given {})",
                        stored_genesis.map(|h| h.to_string()).unwrap_or_default(),
                        genesis.hash()
                    )));
                }
                blocks.by_height(0).await?.ok_or(plexus_store::StoreError::NoGenesis)?.block
            }
        };
        let versions = {
            let view = state.view();
            let mut o = Overlay::new(&*view);
            Store::new(&mut o).versions()
        };
        let supported = crate::supported_versions();
        if !supported.supports(&versions) {
            return Err(plexus_store::StoreError::Unsupported(format!(
                "this chain runs versions {versions:?}, outside what this binary supports ({supported:?}); \
                 install a newer plexus binary"
            )));
        }
        let height = state.committed().0.expect("genesis is committed");
        let record = blocks.by_height(height).await?.ok_or_else(|| {
            plexus_store::StoreError::Corrupt(format!("committed block {height} is missing from the archive"))
        })?;
        let txs_committed = record.txs_before + record.block.txs.len() as u64;
        state.set_block(record.block.hash());
        metrics.height.set(height as i64);
        let indexes = crate::index::Indexes::build(state.view().map());
        let (finalized_tx, _) = broadcast::channel(256);
        let clock = context.child("clock");
        let now_ms = Box::new(move || {
            clock.current().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
        });
        Ok(ChainState {
            inner: Arc::new(Inner {
                key,
                executor,
                genesis: genesis_block,
                state,
                blocks,
                pending: Mutex::new(HashMap::new()),
                epoch_length: genesis.params.epoch_length_blocks as u64,
                txs_committed: AtomicU64::new(txs_committed),
                // A conservative first guess (a signature check and a few writes) until measured.
                tx_cost_ns: AtomicU64::new(50_000),
                shadow: Mutex::new(Shadow::default()),
                mempool: Mutex::new(Mempool::new(mempool)),
                indexes: std::sync::RwLock::new(indexes),
                finalized_tx,
                gossip: Mutex::new(None),
                followers_max: std::sync::atomic::AtomicUsize::new(crate::followers::FOLLOWERS_MAX_DEFAULT),
                now_ms,
                metrics,
                halt: tokio::sync::watch::Sender::new(None),
            }),
        })
    }

    /// Resolves, with the reason, once the chain has activated a version of some layer that
    /// this binary cannot run: the node must stop (and be replaced by a newer binary) rather
    /// than go on computing something else than its peers.
    pub async fn halted(&self) -> String {
        let mut rx = self.inner.halt.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The sender lives as long as `self`.
            Err(_) => std::future::pending().await,
        }
    }

    /// Why this binary cannot follow the committed state's active versions, if it cannot.
    fn cannot_follow(&self, height: Height) -> Option<String> {
        let (layer, active, range) = unsupported(&self.read(|s| s.versions()))?;
        Some(format!(
            "the chain activated {} version {active} at height {height}; this binary runs {} versions {} to {}: \
             stopping before the next block; install a newer plexus binary and start the node again",
            layer.name(),
            layer.name(),
            range.min,
            range.max,
        ))
    }

    pub fn genesis(&self) -> &Block {
        &self.inner.genesis
    }

    pub fn chain_id(&self) -> &str {
        self.inner.executor.chain_id()
    }

    pub fn address(&self) -> Address {
        self.inner.key.address()
    }

    /// Height and hash of the last committed (finalized) block.
    pub fn tip(&self) -> (Height, Hash) {
        let view = self.inner.state.view();
        (view.height().expect("genesis is committed"), view.block())
    }

    pub fn state(&self) -> &StateStore<E> {
        &self.inner.state
    }

    pub fn blocks(&self) -> &BlockStore<E> {
        &self.inner.blocks
    }

    pub fn metrics(&self) -> &NodeMetrics {
        &self.inner.metrics
    }

    /// The API's indexes over the committed state.
    pub fn indexes(&self) -> std::sync::RwLockReadGuard<'_, crate::index::Indexes> {
        self.inner.indexes.read().expect("index lock")
    }

    /// A receiver of every block finalized from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FinalizedBlock>> {
        self.inner.finalized_tx.subscribe()
    }

    /// Caps the followers (non-validators) admitted to each epoch's peer set from the next epoch.
    pub fn set_followers_max(&self, max: usize) {
        self.inner.followers_max.store(max, Ordering::Relaxed);
    }

    /// Sends newly admitted transactions to peers through `gossip`.
    pub fn set_gossip(&self, gossip: Gossip) {
        *self.inner.gossip.lock().expect("gossip lock") = Some(gossip);
    }

    /// The nonce a new transaction from `sender` should use, counting its pending ones.
    pub fn next_nonce(&self, sender: &Address, account_nonce: u64) -> u64 {
        self.inner.mempool.lock().expect("mempool lock").next_nonce(sender, account_nonce)
    }

    pub fn mempool_len(&self) -> usize {
        self.inner.mempool.lock().expect("mempool lock").len()
    }

    /// The parameters in force after the last committed block.
    pub fn params(&self) -> Params {
        plexus_execution::params(&*self.inner.state.view())
    }

    /// Reads with the typed store over the committed state.
    pub fn read<T>(&self, f: impl FnOnce(&Store<'_, '_>) -> T) -> T {
        let view = self.inner.state.view();
        let mut overlay = Overlay::new(&*view);
        let store = Store::new(&mut overlay);
        f(&store)
    }

    /// Checks a transaction against the committed state plus the sender's pending transactions
    /// and, if admissible, adds it to the mempool and gossips it. Returns its hash.
    pub fn submit(&self, tx: SignedTx, gossip: bool) -> Result<Hash, SubmitError> {
        self.submit_signed(tx, gossip, false)
    }

    /// [`ChainState::submit`] for a transaction whose signature the caller verified already
    /// (`signature_verified`), e.g. with the rest of its batch.
    pub fn submit_signed(&self, tx: SignedTx, gossip: bool, signature_verified: bool) -> Result<Hash, SubmitError> {
        let hash = tx.hash();
        {
            let mempool = self.inner.mempool.lock().expect("mempool lock");
            if mempool.contains(&hash) {
                return Err(MempoolError::AlreadyKnown.into());
            }
        }
        let (height, _) = self.tip();
        let view = self.inner.state.view();
        let account_nonce = {
            let mut o = Overlay::new(&*view);
            Store::new(&mut o).account(&tx.tx.signer).nonce
        };
        let pending = self.inner.mempool.lock().expect("mempool lock").pending_of(&tx.tx.signer, account_nonce);
        let prior: Vec<&Arc<SignedTx>> = pending.iter().take_while(|p| p.tx.nonce < tx.tx.nonce).collect();
        // Bytes from anyone reach execution here: a panic in the check (a bug) must refuse this
        // transaction, never take the node down. No lock is held across the check.
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if prior.is_empty() {
                // The sender's next transaction: check it fully, for a precise error now.
                self.inner.executor.check_tx_signed(&*view, height + 1, &tx, signature_verified)
            } else {
                // Queued behind others: a constant-time check of signature, fee and balance
                // (simulating the whole queue on every admission is quadratic in its length).
                let spend = prior.iter().fold(0u128, |acc, p| {
                    acc.saturating_add(p.tx.fee).saturating_add(plexus_execution::max_spend(&p.tx.payload))
                });
                self.inner.executor.check_queued(&*view, &tx, spend, signature_verified)
            }
        }));
        match checked {
            Ok(result) => result?,
            Err(panic) => {
                let message = panic_text(&panic);
                self.inner.metrics.admission_panics.inc();
                tracing::error!(%hash, kind = tx.tx.payload.kind(), "checking a transaction panicked: {message}");
                return Err(SubmitError::Internal(message));
            }
        }
        drop(view);
        let inserted = self.inner.mempool.lock().expect("mempool lock").insert(tx.clone(), account_nonce)?;
        if let Inserted::Replaced { old, dropped } = inserted {
            debug!(%old, new = %hash, dropped, "replaced by fee; the sender's later transactions were dropped");
        }
        self.inner.metrics.mempool_txs.set(self.mempool_len() as i64);
        if gossip && let Some(g) = self.inner.gossip.lock().expect("gossip lock").as_ref() {
            // Gossip is best effort: a full queue drops it, the tx still reaches our blocks.
            let _ = g.try_send(Arc::new(tx));
        }
        Ok(hash)
    }

    /// This node's consensus-key registration: the BLS key derived from its identity key, with a
    /// proof of possession naming this node on this chain (consensus version 2 signs with it).
    pub fn consensus_key_registration(&self) -> Payload {
        plexus_consensus::key_registration(self.chain_id(), &self.inner.key.0, &self.address().0)
    }

    /// Builds, signs and submits a transaction from this node's own key with the next nonce.
    pub fn submit_own(&self, payload: Payload) -> Result<Hash, SubmitError> {
        let me = self.address();
        let account_nonce = self.read(|s| s.account(&me).nonce);
        let nonce = self.inner.mempool.lock().expect("mempool lock").next_nonce(&me, account_nonce);
        let fee = self.params().min_tx_fee;
        let tx = Transaction { signer: me, nonce, fee, payload }.sign(&self.inner.key, self.chain_id());
        self.submit(tx, true)
    }

    /// The change sets of pending blocks from the committed tip up to `head` (oldest first), or
    /// `None` if `head` does not descend from the committed tip.
    fn pending_chain(&self, head: &Hash, committed: (Height, Hash)) -> Option<Vec<Arc<Pending>>> {
        let pending = self.inner.pending.lock().expect("pending lock");
        let mut chain = Vec::new();
        let mut cursor = *head;
        while cursor != committed.1 {
            let p = pending.get(&cursor)?;
            if p.header.height <= committed.0 {
                return None;
            }
            cursor = p.header.parent;
            chain.push(p.clone());
        }
        chain.reverse();
        Some(chain)
    }

    /// The versions a child of `parent` (whose state is known) runs under: those of the parent's
    /// post-state. `None` if the parent is not on the committed chain.
    fn versions_after(&self, parent: &Hash) -> Option<VersionVector> {
        let view = self.inner.state.view();
        let committed = (view.height().expect("genesis is committed"), view.block());
        let (_, merged) = self.pending_changes(parent, committed)?;
        let base = Layered { base: &*view, changes: &merged };
        let mut o = Overlay::new(&base);
        Some(Store::new(&mut o).versions())
    }

    /// [`Self::pending_chain`] and the change sets of its blocks merged oldest first: what
    /// `head`'s post-state adds to the committed state.
    fn pending_changes(&self, head: &Hash, committed: (Height, Hash)) -> Option<(Vec<Arc<Pending>>, ChangeSet)> {
        let ancestors = self.pending_chain(head, committed)?;
        let mut merged = ChangeSet::new();
        for p in &ancestors {
            merged.extend(p.changes.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Some((ancestors, merged))
    }

    /// Executes `txs` as the child of `parent` (whose state is known); returns the outcome and
    /// the speculative post-state, or `None` if the parent is not on the committed chain.
    async fn execute_on(
        &self,
        parent: &Hash,
        env: &BlockEnv,
        build: Option<Vec<SignedTx>>,
        txs: &[SignedTx],
        check_signatures: bool,
    ) -> Option<Result<Executed, plexus_execution::BlockError>> {
        let (ancestors, result, versions) = {
            let view = self.inner.state.view();
            let committed = (view.height().expect("genesis is committed"), view.block());
            let (ancestors, merged) = self.pending_changes(parent, committed)?;
            let base = Layered { base: &*view, changes: &merged };
            // The versions the block runs under: those of its parent's post-state.
            let versions = {
                let mut o = Overlay::new(&base);
                Store::new(&mut o).versions()
            };
            let result = match build {
                Some(candidates) => {
                    let params = plexus_execution::params(&base);
                    self.inner
                        .executor
                        .build_block(
                            &base,
                            env,
                            candidates,
                            params.max_block_txs as usize,
                            params.max_block_bytes as usize,
                        )
                        .map(|(included, outcome, dropped)| {
                            self.evict_dropped(&dropped);
                            (included, outcome)
                        })
                }
                None => self.inner.executor.execute_block(&base, env, txs, check_signatures).map(|o| (txs.to_vec(), o)),
            };
            (ancestors, result, versions)
        };
        let (included, outcome) = match result {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let parent_spec = ancestors.last().map(|p| p.spec.clone());
        let spec = self
            .inner
            .state
            .speculate(parent_spec, env.height, &outcome.changes)
            .await
            .unwrap_or_else(|e| panic!("state store failed; halting: {e}"));
        drop(ancestors);
        Some(Ok(Executed { txs: included, outcome, spec, versions }))
    }

    /// Forgets candidates the builder found unable ever to apply: they cannot pay their fee
    /// (nor can the sender's later transactions, which could only follow them). Candidates left
    /// out for a nonce an unfinalized ancestor already used stay: finalization prunes them.
    fn evict_dropped(&self, dropped: &[(Hash, plexus_execution::TxError)]) {
        use plexus_execution::TxError;
        if dropped.is_empty() {
            return;
        }
        let mut mempool = self.inner.mempool.lock().expect("mempool lock");
        let mut evicted = 0;
        for (hash, error) in dropped {
            if matches!(error, TxError::CannotPayFee { .. } | TxError::FeeTooLow { .. } | TxError::BadSignature) {
                evicted += mempool.evict_with_followers(hash);
            }
        }
        self.inner.metrics.mempool_txs.set(mempool.len() as i64);
        debug!(dropped = dropped.len(), evicted, "left candidates out of the block");
    }

    /// Most transactions to put in the next proposal so that building it (and so verifying it
    /// elsewhere) stays within [`BUILD_BUDGET`]: from the measured cost per transaction of
    /// recent proposals. Which transactions a proposer includes is its own choice, so this
    /// wall-clock measure never affects what any node computes.
    fn block_txs_budget(&self) -> usize {
        let ns = self.inner.tx_cost_ns.load(Ordering::Relaxed).max(1);
        ((BUILD_BUDGET.as_nanos() as u64 / ns) as usize)
            .clamp(BLOCK_TXS_FLOOR, plexus_types::params::limits::BLOCK_TXS_MAX)
    }

    fn record_build_cost(&self, elapsed: std::time::Duration, txs: usize) {
        if txs < BLOCK_TXS_FLOOR / 2 {
            return; // too few to measure the per-transaction cost
        }
        let sample = (elapsed.as_nanos() as u64 / txs as u64).max(1);
        let old = self.inner.tx_cost_ns.load(Ordering::Relaxed);
        let new = (old * 3 + sample) / 4;
        self.inner.tx_cost_ns.store(new, Ordering::Relaxed);
    }

    fn epoch_of(&self, height: Height) -> u64 {
        // Epoch length is fixed at genesis (consensus would need an epoch schedule otherwise).
        height / self.genesis_epoch_length()
    }

    fn genesis_epoch_length(&self) -> u64 {
        self.inner.epoch_length
    }

    /// The approved upgrade waiting to activate that this node must dry-run first (an
    /// execution version or a data migration), if any.
    pub fn pending_shadowed_upgrade(&self) -> Option<(plexus_types::Layer, u16)> {
        use plexus_types::Layer;
        self.read(|store| {
            let meta = plexus_execution::gov::meta(store);
            meta.pending
                .iter()
                .filter_map(|id| plexus_execution::gov::upgrade(store, *id))
                .find(|u| {
                    matches!(u.layer, Layer::Execution | Layer::Data)
                        && u.status == plexus_execution::gov::UpgradeStatus::Pending
                })
                .map(|u| (u.layer, u.version))
        })
    }

    /// Whether this node's shadow runs of `layer` at `version` have passed on recent blocks.
    pub fn shadow_ok(&self, layer: plexus_types::Layer, version: u16) -> bool {
        let s = self.inner.shadow.lock().expect("shadow lock");
        s.layer == Some(layer) && s.version == version && s.failure.is_none() && s.passed >= SHADOW_BLOCKS_MIN
    }

    /// What the last shadow runs found: (version, blocks passed, first failure).
    pub fn shadow_state(&self) -> (u16, u64, Option<String>) {
        let s = self.inner.shadow.lock().expect("shadow lock");
        (s.version, s.passed, s.failure.clone())
    }

    /// Dry-runs a pending execution version (on `block`) or data migration (on the committed
    /// state) that this binary supports, and remembers how it went.
    fn shadow_run(&self, block: &Block) {
        use plexus_types::Layer;
        let Some((layer, version)) = self.pending_shadowed_upgrade() else { return };
        if !crate::supported_versions().get(layer).contains(version) {
            return;
        }
        let result = {
            let view = self.inner.state.view();
            match layer {
                Layer::Execution => {
                    let env = BlockEnv { height: block.header.height, proposer: block.header.proposer.clone() };
                    self.inner.executor.shadow(version, &*view, &env, &block.txs)
                }
                _ => self.inner.executor.shadow_migration(version, &*view),
            }
        };
        let mut s = self.inner.shadow.lock().expect("shadow lock");
        if s.layer != Some(layer) || s.version != version {
            *s = Shadow { layer: Some(layer), version, passed: 0, failure: None };
        }
        match result {
            Ok(()) => s.passed += 1,
            Err(reason) => {
                warn!(
                    height = block.header.height,
                    layer = layer.name(),
                    version,
                    "shadow run of a pending upgrade failed: {reason}"
                );
                s.failure.get_or_insert(format!("height {}: {reason}", block.header.height));
            }
        }
    }

    /// Applies a finalized block: archive, commit state, publish. Idempotent by height.
    async fn apply_finalized(&self, block: &Block, finalization: Vec<u8>) {
        let height = block.header.height;
        let hash = block.hash();
        let (tip_height, tip_hash) = self.tip();
        if height <= tip_height {
            return;
        }
        assert_eq!(height, tip_height + 1, "finalized blocks arrive in height order");
        assert_eq!(block.header.parent, tip_hash, "a finalized block extends the committed chain");
        let pending = self.inner.pending.lock().expect("pending lock").get(&hash).cloned();
        let pending = match pending {
            Some(p) => p,
            None => {
                // Never saw it before (e.g. caught up from peers): execute it now.
                let env = BlockEnv { height, proposer: block.header.proposer.clone() };
                let Executed { outcome, spec, .. } = self
                    .execute_on(&tip_hash, &env, None, &block.txs, true)
                    .await
                    .expect("the parent of a finalized block is the committed tip")
                    .unwrap_or_else(|e| panic!("finalized block {height} ({hash}) does not execute: {e}; halting"));
                assert_eq!(
                    spec.root, block.header.state_root,
                    "finalized block {height} has a state root this node disagrees with; halting"
                );
                Arc::new(Pending { header: block.header.clone(), changes: outcome.changes.clone(), outcome, spec })
            }
        };
        self.shadow_run(block);
        let finalized = Arc::new(FinalizedBlock {
            height,
            hash,
            header: block.header.clone(),
            txs: pending.outcome.results.clone(),
            events: pending.outcome.block_events.clone(),
        });
        let record = BlockRecord {
            block: block.clone(),
            results_json: serde_json::to_vec(&*finalized).expect("results serialize"),
            finalization,
            txs_before: self.inner.txs_committed.load(Ordering::SeqCst),
        };
        self.inner.blocks.put(&record).await.unwrap_or_else(|e| panic!("cannot archive block {height}: {e}; halting"));
        self.inner
            .state
            .commit(&pending.spec, &pending.changes, hash)
            .await
            .unwrap_or_else(|e| panic!("cannot commit block {height}: {e}; halting"));
        self.inner.indexes.write().expect("index lock").apply(&pending.changes);
        self.inner.txs_committed.fetch_add(block.txs.len() as u64, Ordering::SeqCst);
        self.inner.pending.lock().expect("pending lock").retain(|_, p| p.header.height > height);
        {
            let mut mempool = self.inner.mempool.lock().expect("mempool lock");
            for tx in &block.txs {
                mempool.remove(&tx.hash());
            }
            let view = self.inner.state.view();
            let mut o = Overlay::new(&*view);
            let store = Store::new(&mut o);
            mempool.prune(|a| store.account(a).nonce);
            // Only this block's senders can have less than before: check they still pay.
            let min_fee = store.params().min_tx_fee;
            let senders: std::collections::BTreeSet<&Address> = block.txs.iter().map(|t| &t.tx.signer).collect();
            mempool.evict_unpayable(
                senders,
                |a| store.account(a).nonce,
                |t| t.tx.fee >= min_fee && store.account(&t.tx.signer).balance >= t.tx.fee,
            );
            self.inner.metrics.mempool_txs.set(mempool.len() as i64);
        }
        let m = &self.inner.metrics;
        m.height.set(height as i64);
        m.txs_finalized.inc_by(block.txs.len() as u64);
        m.blocks_finalized.inc();
        let _ = self.inner.finalized_tx.send(finalized);
        debug!(height, %hash, txs = block.txs.len(), "finalized");
        if let Some(reason) = self.cannot_follow(height) {
            error!("{reason}");
            self.inner.halt.send_replace(Some(reason));
            // Apply nothing more: the node stops (see `halted`) with this block committed.
            std::future::pending::<()>().await;
        }
    }
}

/// How `epoch`'s votes are signed, from committed state (the same on every node, whenever read).
/// Execution gives version 2 only with a key for every validator; if one did not decode (the
/// chain checked each with its proof of possession, so none should) the epoch runs version 1 on
/// every node alike rather than with a partial committee.
fn epoch_signing(store: &Store<'_, '_>, epoch: u64) -> Option<plexus_consensus::Signing> {
    let consensus = plexus_execution::gov::epoch_consensus(store, epoch)?;
    if consensus.version < 2 {
        return Some(plexus_consensus::Signing::Ed25519);
    }
    let keys: Option<Vec<_>> = consensus
        .keys
        .iter()
        .map(|(a, k)| {
            let key = commonware_codec::DecodeExt::decode(commonware_codec::Copying(&k[..])).ok()?;
            Some((a.clone(), key))
        })
        .collect();
    Some(match keys {
        Some(keys) if !keys.is_empty() => plexus_consensus::Signing::Bls(keys),
        _ => plexus_consensus::Signing::Ed25519,
    })
}

/// The first layer whose version in `versions` this binary cannot run, with that version and
/// the range the binary runs.
fn unsupported(versions: &VersionVector) -> Option<(plexus_types::Layer, u16, plexus_types::VersionRange)> {
    let supported = crate::supported_versions();
    let layer = plexus_types::Layer::ALL.into_iter().find(|&l| !supported.get(l).contains(versions.get(l)))?;
    Some((layer, versions.get(layer), supported.get(layer)))
}

/// The message of a caught panic.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// The genesis block: height 0, committing to the genesis state root.
pub fn genesis_block(genesis: &plexus_types::Genesis, state_root: Hash) -> Block {
    Block {
        header: Header {
            height: 0,
            parent: Hash::ZERO,
            parent_view: 0,
            epoch: 0,
            view: 0,
            proposer: genesis.validators[0].address.clone(),
            timestamp_ms: 0,
            versions: VersionVector::V1,
            txs_root: txs_root(&[]),
            state_root,
        },
        txs: Vec::new(),
    }
}

impl<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static> Chain for ChainState<E> {
    fn has_state(&self, block: &Hash) -> bool {
        // Pending first: a block leaves `pending` only after it became the committed tip.
        self.inner.pending.lock().expect("pending lock").contains_key(block) || self.tip().1 == *block
    }

    fn can_extend(&self, parent: &Hash) -> Result<(), String> {
        let Some(versions) = self.versions_after(parent) else {
            return Err("the parent is not on the committed chain".into());
        };
        match unsupported(&versions) {
            None => Ok(()),
            Some((layer, active, range)) => Err(format!(
                "its parent activates {} version {active} and this binary runs {} versions {} to {}",
                layer.name(),
                layer.name(),
                range.min,
                range.max
            )),
        }
    }

    async fn propose(&self, parent: &Block, round: Round) -> Option<Block> {
        let height = parent.header.height + 1;
        let env = BlockEnv { height, proposer: round.leader.clone() };
        let candidates = {
            let view = self.inner.state.view();
            let mut o = Overlay::new(&*view);
            let store = Store::new(&mut o);
            let params = store.params();
            let cap = (params.max_block_txs as usize).min(self.block_txs_budget());
            self.inner.mempool.lock().expect("mempool lock").candidates(|a| store.account(a).nonce, cap)
        };
        let started = std::time::Instant::now();
        let Executed { txs, outcome, spec, versions } =
            match self.execute_on(&parent.hash(), &env, Some(candidates), &[], false).await? {
                Ok(r) => r,
                Err(e) => {
                    warn!(height, "cannot build on this parent: {e}");
                    return None;
                }
            };
        let header = Header {
            height,
            parent: parent.hash(),
            parent_view: round.parent_view,
            epoch: round.epoch,
            view: round.view,
            proposer: round.leader,
            timestamp_ms: (self.inner.now_ms)(),
            versions,
            txs_root: txs_root(&txs),
            state_root: spec.root,
        };
        let block = Block { header, txs };
        let elapsed = started.elapsed();
        self.inner.metrics.build_seconds.observe(elapsed.as_secs_f64());
        self.record_build_cost(elapsed, block.txs.len());
        let pending = Pending { header: block.header.clone(), changes: outcome.changes.clone(), outcome, spec };
        self.inner.pending.lock().expect("pending lock").insert(block.hash(), Arc::new(pending));
        Some(block)
    }

    async fn verify(&self, block: &Block) -> bool {
        let hash = block.hash();
        if self.has_state(&hash) {
            return true;
        }
        let header = &block.header;
        if header.height <= self.tip().0 {
            // At or below the finalized height, only the finalized block itself is valid.
            return matches!(self.inner.blocks.by_height(header.height).await, Ok(Some(r)) if r.block.hash() == hash);
        }
        let params = self.params();
        if let Err(e) = plexus_execution::check_block_shape(block, &params) {
            warn!(height = header.height, %hash, "rejecting block: {e}");
            return false;
        }
        if header.epoch != self.epoch_of(header.height) {
            warn!(height = header.height, epoch = header.epoch, "rejecting block from the wrong epoch");
            return false;
        }
        let started = std::time::Instant::now();
        // Transactions in our mempool had their signatures checked on admission; check only the
        // others (half the work of a full block for a validator that saw the gossip).
        let unverified: Vec<usize> = {
            let mempool = self.inner.mempool.lock().expect("mempool lock");
            block.txs.iter().enumerate().filter(|(_, t)| !mempool.contains(&t.hash())).map(|(i, _)| i).collect()
        };
        if let Some(i) = unverified.into_iter().find(|&i| !block.txs[i].verify(self.chain_id())) {
            warn!(height = header.height, %hash, index = i, "rejecting block with a bad transaction signature");
            return false;
        }
        let env = BlockEnv { height: header.height, proposer: header.proposer.clone() };
        let Some(result) = self.execute_on(&header.parent, &env, None, &block.txs, false).await else {
            warn!(height = header.height, %hash, "rejecting block that does not extend the finalized chain");
            return false;
        };
        let Executed { outcome, spec, versions, .. } = match result {
            Ok(r) => r,
            Err(e) => {
                warn!(height = header.height, %hash, "rejecting block: {e}");
                return false;
            }
        };
        if header.versions != versions {
            warn!(height = header.height, "rejecting block with the wrong version vector");
            return false;
        }
        if spec.root != header.state_root {
            warn!(height = header.height, %hash, ours = %spec.root, theirs = %header.state_root, "rejecting block with a wrong state root");
            return false;
        }
        self.inner.metrics.verify_seconds.observe(started.elapsed().as_secs_f64());
        let pending = Pending { header: header.clone(), changes: outcome.changes.clone(), outcome, spec };
        self.inner.pending.lock().expect("pending lock").insert(hash, Arc::new(pending));
        true
    }

    async fn finalized(&self, block: &Block, finalization: Vec<u8>) {
        self.apply_finalized(block, finalization).await
    }

    fn epoch_peers(&self, epoch: u64) -> Option<EpochPeers> {
        let view = self.inner.state.view();
        let mut o = Overlay::new(&*view);
        let store = Store::new(&mut o);
        let set: ValidatorSet = store.validators(epoch)?;
        let parse = |a: &Address, s: &str| -> Option<(Address, SocketAddr)> {
            match s.parse() {
                Ok(addr) => Some((a.clone(), addr)),
                Err(_) => {
                    warn!(%a, addr = s, "ignoring a peer with an unusable p2p address");
                    None
                }
            }
        };
        let validators: Vec<_> = set.0.iter().filter_map(|v| parse(&v.address, &v.p2p_address)).collect();
        // Followers: every account that bonded stake with a p2p address (providers among them),
        // admitted by stake and capped; see `followers`. A node-local choice, not state.
        let candidates = scan_table(view.map(), st::table::STAKE).filter_map(|(k, v)| {
            let address = Address(commonware_codec::DecodeExt::decode(commonware_codec::Copying(&k[1..])).ok()?);
            let stake: Stake = st::decode_record(k, v);
            if stake.p2p_address.is_empty() {
                return None;
            }
            let (address, p2p) = parse(&address, &stake.p2p_address)?;
            Some(crate::followers::Candidate { address, bonded: stake.bonded, p2p })
        });
        let max = self.inner.followers_max.load(Ordering::Relaxed);
        let others = crate::followers::select(candidates, &validators, store.params().min_provider_stake, max);
        let signing = epoch_signing(&store, epoch)?;
        Some(EpochPeers {
            validators,
            others,
            timeouts: plexus_consensus::Timeouts::from_params(&store.params()),
            signing,
        })
    }

    fn report_evidence(&self, evidence: Vec<u8>) {
        match self.submit_own(Payload::ReportEvidence { evidence }) {
            Ok(hash) => info!(%hash, "submitted consensus evidence"),
            Err(e) => warn!("could not submit consensus evidence: {e}"),
        }
    }
}
