//! Deterministic simulation of a Plexus network: real nodes (the same chain, consensus, storage
//! and gossip code production runs) on Commonware's deterministic runtime and simulated
//! network, where one seed drives message latency, loss, partitions, crashes and a Byzantine
//! validator. A failing run prints its seed; running again with that seed replays it exactly.
//!
//! This crate only drives and inspects nodes; it adds no protocol behaviour.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commonware_cryptography::Signer as _;
use commonware_p2p::simulated::{self, Link, Oracle};
use commonware_runtime::deterministic::Context;
use commonware_runtime::{Clock, Handle, Quota, Spawner, Supervisor as _};
use commonware_utils::NZU32;
use plexus_execution::state::audit;
use plexus_node::chain::ChainState;
use plexus_node::mempool::MempoolConfig;
use plexus_types::genesis::{GenesisAccount, GenesisValidator};
use plexus_types::tx::Payload;
use plexus_types::{Genesis, Hash, Height, Params, PrivateKey, Transaction, UNITS_PER_PLX};
use rand::RngExt as _;

/// The chain id of simulated networks.
pub const CHAIN_ID: &str = "plexus-sim";

/// Channel ids, as in production (votes, certificates, resolver, backfill, blocks, transactions,
/// blocks as network v2 frames them; the version announcements of production are not run).
const CHANNELS: [u64; 7] = [0, 1, 2, 3, 4, 5, 7];

/// A simulated validator.
pub struct SimNode {
    pub key: PrivateKey,
    pub index: usize,
    /// The running node (`None` while crashed).
    pub handle: Option<Handle<()>>,
    /// Its chain state, published by the node task once open (`None` while crashed).
    pub chain: Arc<Mutex<Option<ChainState<Context>>>>,
    /// A Byzantine node sends conflicting votes instead of running the protocol.
    pub byzantine: bool,
}

/// A simulated network.
pub struct Sim {
    pub genesis: Genesis,
    pub nodes: Vec<SimNode>,
    pub oracle: Oracle<plexus_consensus::PublicKey, Context>,
    /// Funded accounts that the workload sends from.
    pub accounts: Vec<PrivateKey>,
    nonces: BTreeMap<usize, u64>,
    pending_nonce: BTreeMap<plexus_types::Address, u64>,
}

/// The genesis of a simulated network with `validators` validators.
pub fn genesis(validators: usize, epoch_length: u64) -> (Genesis, Vec<PrivateKey>, Vec<PrivateKey>) {
    genesis_at(validators, epoch_length, plexus_types::VersionVector::V1)
}

/// [`genesis`], starting at `versions`.
pub fn genesis_at(
    validators: usize,
    epoch_length: u64,
    versions: plexus_types::VersionVector,
) -> (Genesis, Vec<PrivateKey>, Vec<PrivateKey>) {
    let keys: Vec<PrivateKey> = (0..validators as u64).map(PrivateKey::from_seed).collect();
    let accounts: Vec<PrivateKey> = (1000..1008).map(PrivateKey::from_seed).collect();
    let mut params = Params::default();
    params.set("epoch_length_blocks", epoch_length as u128).expect("valid epoch length");
    // Short votes, so governance scenarios run in a few simulated seconds.
    params.set("voting_period_blocks", 10).expect("valid voting period");
    let genesis = Genesis {
        chain_id: CHAIN_ID.into(),
        accounts: keys
            .iter()
            .chain(accounts.iter())
            .map(|k| GenesisAccount { address: k.address(), balance: 1_000_000 * UNITS_PER_PLX })
            .collect(),
        validators: keys
            .iter()
            .enumerate()
            .map(|(i, k)| GenesisValidator {
                address: k.address(),
                stake: params.min_stake * 10,
                p2p_address: format!("10.0.0.{}:9000", i + 1),
            })
            .collect(),
        params,
        versions,
    };
    genesis.validate().expect("simulated genesis is valid");
    (genesis, keys, accounts)
}

/// Links every pair of nodes with random latency, jitter and loss drawn from `context`.
pub async fn link_all(
    context: &mut Context,
    oracle: &Oracle<plexus_consensus::PublicKey, Context>,
    keys: &[PrivateKey],
    lossy: bool,
) {
    for a in keys {
        for b in keys {
            if a.address() == b.address() {
                continue;
            }
            let link = random_link(context, lossy);
            let _ = oracle.remove_link(a.0.public_key(), b.0.public_key()).await;
            oracle.add_link(a.0.public_key(), b.0.public_key(), link).await.expect("link");
        }
    }
}

fn random_link(context: &mut Context, lossy: bool) -> Link {
    let latency = context.random_range(5..80u64);
    let jitter = context.random_range(0..=latency / 4);
    let success: f64 = if lossy { context.random_range(0.85..1.0) } else { 1.0 };
    Link {
        latency: Duration::from_millis(latency),
        jitter: Duration::from_millis(jitter),
        success_rate: commonware_utils::Probability::try_from(success).expect("probability in range"),
    }
}

impl Sim {
    /// Starts a network of `validators` nodes; node `byzantine` (if any) equivocates.
    pub async fn start(
        context: &mut Context,
        validators: usize,
        epoch_length: u64,
        byzantine: Option<usize>,
        lossy: bool,
    ) -> Sim {
        Sim::start_at(context, validators, epoch_length, byzantine, lossy, plexus_types::VersionVector::V1).await
    }

    /// [`Sim::start`], with the chain starting at `versions`.
    pub async fn start_at(
        context: &mut Context,
        validators: usize,
        epoch_length: u64,
        byzantine: Option<usize>,
        lossy: bool,
        versions: plexus_types::VersionVector,
    ) -> Sim {
        let (genesis, keys, accounts) = genesis_at(validators, epoch_length, versions);
        let peers: Vec<plexus_consensus::PublicKey> = keys.iter().map(|k| k.0.public_key()).collect();
        let (network, oracle) = simulated::Network::new_with_peers(
            context.child("network"),
            simulated::Config {
                max_size: plexus_consensus::max_message_size(validators as u32).max(1 << 20),
                max_peers_per_set: NonZeroUsize::new(validators + 4).expect("non-zero"),
                disconnect_on_block: false,
                tracked_peer_sets: NonZeroUsize::new(4).expect("non-zero"),
            },
            peers,
        )
        .await;
        network.start();
        link_all(context, &oracle, &keys, lossy).await;
        let mut sim = Sim {
            genesis,
            nodes: Vec::new(),
            oracle,
            accounts,
            nonces: BTreeMap::new(),
            pending_nonce: BTreeMap::new(),
        };
        for (index, key) in keys.into_iter().enumerate() {
            sim.nodes.push(SimNode {
                key,
                index,
                handle: None,
                chain: Arc::new(Mutex::new(None)),
                byzantine: byzantine == Some(index),
            });
        }
        for i in 0..validators {
            sim.boot(context, i).await;
        }
        sim
    }

    /// Starts (or restarts) node `i` on its existing storage.
    pub async fn boot(&mut self, context: &Context, i: usize) {
        let node = &self.nodes[i];
        let control = self.oracle.control(node.key.0.public_key());
        let quota = Quota::per_second(NZU32!(100_000));
        let mut channels = Vec::new();
        for c in CHANNELS {
            channels.push(control.register(c, quota).await.expect("register channel"));
        }
        let mut channels = channels.into_iter();
        let mut next = || channels.next().expect("seven channels");
        let (votes, certificates, resolver, backfill, blocks_v1) = (next(), next(), next(), next(), next());
        let txs = next();
        let blocks_v2 = next();
        let genesis = self.genesis.clone();
        let key = node.key.clone();
        let slot = node.chain.clone();
        let manager = self.oracle.socket_manager();
        let byzantine = node.byzantine;
        let max_message = plexus_consensus::max_message_size(self.genesis.validators.len() as u32) as usize;
        let ctx = context.child("node").with_attribute("index", i);
        let handle = ctx.spawn(move |ctx| async move {
            if byzantine {
                run_byzantine(ctx, key, &genesis, votes).await;
                return;
            }
            let metrics = plexus_node::metrics::NodeMetrics::new(&ctx.child("plexus"));
            let store = plexus_store::StoreConfig { partition_prefix: format!("node{i}"), ..Default::default() };
            let chain = ChainState::open(
                ctx.child("chain"),
                key.clone(),
                &genesis,
                &store,
                MempoolConfig::default(),
                Arc::new(plexus_consensus::evidence::Verifier::new(&genesis.chain_id)),
                metrics,
            )
            .await
            .expect("open chain state");
            let gossip = plexus_node::gossip::start(&ctx, chain.clone(), txs);
            chain.set_gossip(gossip);
            *slot.lock().expect("slot") = Some(chain.clone());
            // Blocks framed by the active network version, as production sends them.
            let blocks = plexus_node::run::framed_blocks(&ctx, &chain, blocks_v1, blocks_v2, max_message);
            let consensus_channels = plexus_consensus::Channels { votes, certificates, resolver, backfill, blocks };
            let cfg = plexus_consensus::Config {
                chain: chain.clone(),
                signer: key.0.clone(),
                chain_id: genesis.chain_id.clone(),
                genesis: chain.genesis().clone(),
                epoch_length: std::num::NonZeroU64::new(genesis.params.epoch_length_blocks as u64).expect("non-zero"),
                partition_prefix: format!("node{i}-consensus"),
                timeouts: plexus_consensus::Timeouts::from_params(&genesis.params),
                mailbox_size: NonZeroUsize::new(1024).expect("non-zero"),
            };
            let handle = plexus_consensus::start(ctx.child("consensus"), cfg, consensus_channels, manager, control);
            let _ = handle.await;
        });
        self.nodes[i].handle = Some(handle);
    }

    /// Crashes node `i`: its tasks stop mid-flight; only what it synced to storage survives.
    pub async fn crash(&mut self, i: usize) {
        if let Some(h) = self.nodes[i].handle.take() {
            h.abort();
            let _ = h.await;
        }
        *self.nodes[i].chain.lock().expect("slot") = None;
    }

    /// Finalized height of node `i` (`None` while crashed or Byzantine).
    pub fn height(&self, i: usize) -> Option<Height> {
        self.nodes[i].chain.lock().expect("slot").as_ref().map(|c| c.tip().0)
    }

    /// Heights of the honest running nodes.
    pub fn heights(&self) -> Vec<Option<Height>> {
        (0..self.nodes.len()).map(|i| self.height(i)).collect()
    }

    /// Waits (in simulated time) until every honest running node reaches `height`.
    pub async fn wait_for(&self, context: &Context, height: Height, limit: Duration) -> Result<(), String> {
        let started = context.current();
        loop {
            let heights = self.heights();
            let running: Vec<Height> =
                heights.iter().zip(&self.nodes).filter(|(_, n)| !n.byzantine).filter_map(|(h, _)| *h).collect();
            if !running.is_empty() && running.iter().all(|&h| h >= height) {
                return Ok(());
            }
            if context.current().duration_since(started).unwrap_or_default() > limit {
                return Err(format!("not every node reached height {height} within {limit:?}: {heights:?}"));
            }
            context.sleep(Duration::from_millis(250)).await;
        }
    }

    /// Submits a transfer from a workload account to one random running node.
    pub fn submit_transfer(&mut self, context: &mut Context) {
        let from = context.random_range(0..self.accounts.len());
        let to = context.random_range(0..self.accounts.len());
        let live: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.height(i).is_some()).collect();
        if live.is_empty() {
            return;
        }
        let target = live[context.random_range(0..live.len())];
        let chain = self.nodes[target].chain.lock().expect("slot").clone().expect("live node");
        let key = &self.accounts[from];
        let state_nonce = chain.read(|s| s.account(&key.address()).nonce);
        let nonce = self.nonces.entry(from).or_insert(0);
        *nonce = (*nonce).max(state_nonce);
        let tx = Transaction {
            signer: key.address(),
            nonce: *nonce,
            fee: self.genesis.params.min_tx_fee,
            payload: Payload::Transfer {
                to: self.accounts[to].address(),
                amount: 1 + context.random_range(0..1000u128),
            },
        }
        .sign(key, CHAIN_ID);
        if chain.submit(tx, true).is_ok() {
            *nonce += 1;
        }
    }

    /// Signs `payload` with `signer` (its next nonce) and submits it to a running node.
    pub fn submit_as(&mut self, signer: &PrivateKey, payload: Payload) -> Result<Hash, String> {
        let chain = self.any_chain().ok_or("no node is running")?;
        let state_nonce = chain.read(|s| s.account(&signer.address()).nonce);
        let pending = self.pending_nonce.entry(signer.address()).or_insert(0);
        *pending = (*pending).max(state_nonce);
        let tx =
            Transaction { signer: signer.address(), nonce: *pending, fee: self.genesis.params.min_tx_fee, payload }
                .sign(signer, CHAIN_ID);
        let hash = chain.submit(tx, true).map_err(|e| e.to_string())?;
        *pending += 1;
        Ok(hash)
    }

    /// The chain state of the first honest running node.
    pub fn any_chain(&self) -> Option<ChainState<Context>> {
        self.nodes.iter().filter(|n| !n.byzantine).find_map(|n| n.chain.lock().expect("slot").clone())
    }

    /// Reads the same value from every honest running node.
    pub fn read_all<T>(&self, f: impl Fn(&plexus_execution::state::Store<'_, '_>) -> T) -> Vec<T> {
        self.nodes
            .iter()
            .filter(|n| !n.byzantine)
            .filter_map(|n| n.chain.lock().expect("slot").clone())
            .map(|c| c.read(&f))
            .collect()
    }

    /// Safety: every pair of honest running nodes agrees on every finalized block both have,
    /// each node's committed state root is the one its block header commits to, and every node's
    /// supply audit passes.
    pub async fn check_safety(&self) -> Result<Height, String> {
        let chains: Vec<(usize, ChainState<Context>)> =
            self.nodes.iter().filter_map(|n| n.chain.lock().expect("slot").clone().map(|c| (n.index, c))).collect();
        let common = chains.iter().map(|(_, c)| c.tip().0).min().unwrap_or(0);
        let mut reference: Vec<Hash> = Vec::new();
        for (i, chain) in &chains {
            let (height, _) = chain.tip();
            let record =
                chain.blocks().by_height(height).await.map_err(|e| e.to_string())?.ok_or("tip block missing")?;
            let skip = {
                let view = chain.state().view();
                if view.height() != Some(height) {
                    // Committed a block in between; compare on the next check.
                    true
                } else {
                    if record.block.header.state_root != view.root() {
                        return Err(format!(
                            "node {i}: committed root {} differs from block {height}'s header",
                            view.root()
                        ));
                    }
                    audit(view.map()).map_err(|e| format!("node {i}: {e}"))?;
                    false
                }
            };
            if skip {
                continue;
            }
            let mut hashes = Vec::new();
            for h in 0..=common {
                let r = chain
                    .blocks()
                    .by_height(h)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or(format!("node {i} lacks block {h}"))?;
                hashes.push(r.block.hash());
            }
            if reference.is_empty() {
                reference = hashes;
            } else if let Some(h) = (0..=common as usize).find(|&h| reference[h] != hashes[h]) {
                return Err(format!("conflicting finalized blocks at height {h}: node {i} has {}", hashes[h]));
            }
        }
        Ok(common)
    }

    /// Transactions finalized in blocks `1..=height`, as seen by the first running honest node.
    pub async fn txs_through(&self, height: Height) -> usize {
        let Some(chain) =
            self.nodes.iter().filter(|n| !n.byzantine).find_map(|n| n.chain.lock().expect("slot").clone())
        else {
            return 0;
        };
        let mut total = 0;
        for h in 1..=height {
            if let Ok(Some(r)) = chain.blocks().by_height(h).await {
                total += r.block.txs.len();
            }
        }
        total
    }

    /// Offenders recorded on-chain, as seen by node `i`.
    pub fn recorded_offenders(&self, i: usize) -> Vec<plexus_types::Address> {
        let Some(chain) = self.nodes[i].chain.lock().expect("slot").clone() else { return Vec::new() };
        let view = chain.state().view();
        plexus_execution::state::scan_table(view.map(), plexus_execution::state::table::EVIDENCE)
            .map(|(k, v)| {
                plexus_execution::state::decode_record::<plexus_execution::state::EvidenceRecord>(k, v).offender
            })
            .collect()
    }
}

/// A Byzantine validator: answers every vote it sees with a conflicting pair (epoch 0 only).
async fn run_byzantine<S, R>(ctx: Context, key: PrivateKey, genesis: &Genesis, (sender, receiver): (S, R))
where
    S: commonware_p2p::Sender<PublicKey = plexus_consensus::PublicKey>,
    R: commonware_p2p::Receiver<PublicKey = plexus_consensus::PublicKey>,
{
    use commonware_consensus::simplex::mocks::conflicter::{Config, Conflicter};
    use commonware_p2p::utils::mux::Muxer;
    let set = commonware_utils::ordered::Set::from_iter_dedup(genesis.validators.iter().map(|v| v.address.0.clone()));
    let scheme =
        plexus_consensus::Scheme::ed25519_signer(&plexus_consensus::namespace(&genesis.chain_id), set, key.0.clone())
            .expect("byzantine node is a validator");
    let (mux, mut handle) = Muxer::new(ctx.child("byz_mux"), sender, receiver);
    mux.start();
    let votes = handle.register(0).await.expect("epoch 0 subchannel");
    let conflicter =
        Conflicter::<_, _, commonware_cryptography::Sha256>::new(ctx.child("conflicter"), Config { scheme });
    let _ = conflicter.start(votes).await;
}

/// Runs `f` for `seed` on a fresh deterministic runtime; a panic reports the seed.
pub fn run_seeded<F, Fut>(seed: u64, f: F)
where
    F: FnOnce(Context) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let runner = commonware_runtime::deterministic::Runner::new(
        commonware_runtime::deterministic::Config::new().with_seed(seed).with_timeout(Some(Duration::from_secs(3600))),
    );
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commonware_runtime::Runner::start(runner, f)));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            panic!("simulation failed with seed {seed}: {e}\nreplay: PLEXUS_SIM_SEED={seed} cargo test -p plexus-sim")
        }
        Err(_) => {
            panic!("simulation panicked with seed {seed}\nreplay: PLEXUS_SIM_SEED={seed} cargo test -p plexus-sim")
        }
    }
}

/// The seeds to run: `PLEXUS_SIM_SEED` alone if set, else `PLEXUS_SIM_SEEDS` (default `n`)
/// consecutive seeds from `base`.
pub fn seeds(base: u64, n: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("PLEXUS_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let n = std::env::var("PLEXUS_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(n);
    (base..base + n).collect()
}
