//! The deterministic state machine: bank, staking, provider and model registries, sessions and
//! escrow, settlement of usage receipts, consensus evidence, and the version dispatch that lets a
//! new module version run beside the old one.
//!
//! Execution is a synchronous, pure function of (state, block): it reads through
//! [`state::StateRead`], returns a sorted [`state::ChangeSet`] and never reads a clock, a random
//! source or the network. Money is integer base units; amounts round toward zero and the
//! remainder is named. After every block, under every version, conservation is checked from what
//! the block actually wrote ([`state::check_conservation`]): each changed record's amounts move
//! its supply bucket by exactly as much, only burning lowers the total, and balances, bonded and
//! unbonding stake, session escrow, treasury and governance deposits add up to it. A version
//! that breaks it (or panics) on a block is rolled back for that block by every node alike.
//!
//! This crate does not persist anything (the data layer commits change sets), does not order
//! transactions (consensus does) and does not know how inference runs: receipts arrive as signed
//! bytes and are verified like any other signature.

pub mod data;
#[cfg(feature = "faulty-version")]
pub mod faulty;
pub mod genesis;
pub mod gov;
pub mod state;
#[cfg(test)]
mod tests;
pub mod v1;
pub mod v2;
pub mod v3;
pub mod v4;
pub mod v5;
pub mod v6;
pub mod v7;
pub mod v8;

use std::fmt;

use plexus_types::{Address, Amount, Block, Hash, Height, SignedTx};
use serde::Serialize;

pub use state::{ChangeSet, Layered, Overlay, StateRead};
pub use v1::{max_cost, price_of, session_id};

/// Why a transaction's payload failed (the fee is still charged and the nonce still advances).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error("insufficient balance: needs {needed}, has {available}")]
    InsufficientBalance { needed: Amount, available: Amount },
    #[error("amount overflows")]
    Overflow,
    #[error("internal: supply bucket {0:?} would go negative")]
    SupplyUnderflow(state::Bucket),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("not allowed: {0}")]
    Forbidden(String),
    #[error("{0} is not supported by execution v{1}")]
    Unsupported(&'static str, u16),
}

/// Why a transaction cannot be included at all. A block containing one is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("bad signature (signed for another chain, or tampered with)")]
    BadSignature,
    #[error("wrong nonce: account expects {expected}, transaction has {got}")]
    WrongNonce { expected: u64, got: u64 },
    #[error("fee {got} is below the minimum {min}")]
    FeeTooLow { min: Amount, got: Amount },
    #[error("cannot pay the fee: needs {fee}, balance is {balance}")]
    CannotPayFee { fee: Amount, balance: Amount },
    /// Only from [`Executor::check_tx`]: the payload would fail against current state.
    #[error("{0}")]
    WouldFail(ExecError),
    /// The payload exists only from a later execution version (older binaries cannot even
    /// decode it), so no block before that version may carry it.
    #[error("{kind} needs execution version {needs}; the chain runs version {version}")]
    TooNew { kind: &'static str, needs: u16, version: u16 },
}

/// Why a block is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("transaction {index} ({hash}) is invalid: {error}")]
    Tx { index: usize, hash: Hash, error: TxError },
    #[error("execution version {0} is not supported by this binary")]
    UnsupportedVersion(u16),
    #[error("block height {got} does not follow state height {state}")]
    Height { state: Height, got: Height },
    #[error("invariant broken: {0}")]
    Invariant(String),
    #[error("{0}")]
    Malformed(String),
}

/// Something that happened, for the event stream and the explorer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Transfer {
        from: Address,
        to: Address,
        amount: Amount,
    },
    Staked {
        staker: Address,
        amount: Amount,
        bonded: Amount,
    },
    Unbonding {
        staker: Address,
        amount: Amount,
        release_height: Height,
    },
    Unbonded {
        staker: Address,
        amount: Amount,
    },
    ProviderRegistered {
        provider: Address,
        endpoint: String,
    },
    ProviderDeregistered {
        provider: Address,
        reason: String,
    },
    ModelRegistered {
        model: Hash,
        name: String,
    },
    SessionOpened {
        session: Hash,
        client: Address,
        provider: Address,
        model: Hash,
        deposit: Amount,
        expiry_height: Height,
    },
    /// Execution v4: the session just opened is restricted to providers in these regions.
    SessionRestricted {
        session: Hash,
        regions: Vec<String>,
    },
    SessionToppedUp {
        session: Hash,
        amount: Amount,
        deposit: Amount,
    },
    SessionSettled {
        session: Hash,
        provider: Address,
        seq: u64,
        input_tokens: u64,
        output_tokens: u64,
        /// Newly paid out of escrow by this receipt (provider share plus fee).
        amount: Amount,
        /// Of which to the treasury.
        fee: Amount,
    },
    ReceiptRejected {
        session: Hash,
        seq: u64,
        reason: String,
    },
    SessionClosing {
        session: Hash,
        refund_height: Height,
    },
    SessionClosed {
        session: Hash,
        paid: Amount,
        refunded: Amount,
    },
    EvidenceRecorded {
        offender: Address,
        epoch: u64,
        view: u64,
        kind: String,
    },
    ValidatorSetChosen {
        epoch: u64,
        validators: Vec<Address>,
        total_stake: Amount,
    },
    ProposalSubmitted {
        proposal: u64,
        proposer: Address,
        voting_end: Height,
    },
    Voted {
        proposal: u64,
        voter: Address,
        option: plexus_types::tx::VoteOption,
    },
    ProposalDecided {
        proposal: u64,
        status: gov::ProposalStatus,
        yes: Amount,
        no: Amount,
        abstain: Amount,
        veto: Amount,
        /// Paid to the voters from the treasury.
        voter_rewards: Amount,
    },
    ParamChanged {
        name: String,
        value: u128,
    },
    /// A passed parameter change that would have left the parameters out of range or
    /// inconsistent when it was due, so it was not applied.
    ParamChangeRejected {
        name: String,
        value: u128,
        reason: String,
    },
    TreasurySpent {
        to: Address,
        amount: Amount,
    },
    VersionsSignalled {
        staker: Address,
        shadow_ok: bool,
    },
    UpgradeScheduled {
        upgrade: u64,
        layer: plexus_types::Layer,
        version: u16,
        activation_height: Height,
    },
    UpgradeActivated {
        upgrade: u64,
        layer: plexus_types::Layer,
        version: u16,
        height: Height,
    },
    UpgradeExpired {
        upgrade: u64,
        layer: plexus_types::Layer,
        version: u16,
    },
    /// A block failed under a newly activated version and was executed under the previous one.
    UpgradeAborted {
        layer: plexus_types::Layer,
        version: u16,
        previous: u16,
        height: Height,
        reason: String,
    },
    /// Execution v2: the proposer's share of the block's fees.
    ProposerRewarded {
        proposer: Address,
        amount: Amount,
    },
    /// Execution v3: a provider's response is challenged; `committee` re-runs it and votes.
    ChallengeOpened {
        challenge: u64,
        provider: Address,
        challenger: Address,
        committee: Vec<Address>,
        deadline_height: Height,
    },
    ChallengeVoted {
        challenge: u64,
        voter: Address,
        guilty: bool,
    },
    ChallengeResolved {
        challenge: u64,
        provider: Address,
        guilty: bool,
        slashed: Amount,
        refunded: Amount,
        reward: Amount,
    },
    /// Stake taken for a proven fault.
    Slashed {
        offender: Address,
        amount: Amount,
        reason: String,
    },
    /// A BLS consensus key was registered (execution v6): it counts from the next epoch.
    ConsensusKeyRegistered {
        validator: Address,
        height: Height,
    },
}

/// The outcome of one transaction in a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TxResult {
    pub hash: Hash,
    pub kind: &'static str,
    pub signer: Address,
    pub fee: Amount,
    /// `None` when the payload applied; the reason when it failed (fee still charged).
    pub error: Option<String>,
    pub events: Vec<Event>,
}

/// The result of executing a block.
#[derive(Debug, Clone, Default)]
pub struct BlockOutcome {
    /// All writes, sorted by key: what the data layer commits.
    pub changes: ChangeSet,
    pub results: Vec<TxResult>,
    /// Events not caused by a transaction (unbonding, refunds, validator sets).
    pub block_events: Vec<Event>,
}

/// Facts about the block being executed that do not come from state.
#[derive(Debug, Clone)]
pub struct BlockEnv {
    pub height: Height,
    pub proposer: Address,
}

// Evidence checks are the consensus layer's; execution asks through this trait.
pub use plexus_types::evidence::{EvidenceVerifier, NoEvidence, VerifiedEvidence};

/// Executes blocks and checks transactions for one chain.
#[derive(Clone)]
pub struct Executor {
    chain_id: String,
    evidence: std::sync::Arc<dyn EvidenceVerifier>,
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor").field("chain_id", &self.chain_id).finish()
    }
}

/// A built block: the transactions it includes, its outcome, and the candidates left out with
/// why.
pub type BuiltBlock = (Vec<SignedTx>, BlockOutcome, Vec<(Hash, TxError)>);

/// The execution version from which tensor models and region-restricted sessions exist.
pub const TENSOR_MODELS_SINCE: u16 = v4::VERSION;

/// The execution version from which inferences of tensor models can be challenged on chain.
pub const TENSOR_CHALLENGES_SINCE: u16 = v5::VERSION;

/// The execution version from which validators register BLS consensus keys (consensus v2).
pub const CONSENSUS_KEYS_SINCE: u16 = v6::VERSION;

/// The execution version from which generations with penalties or logit biases can be
/// challenged on chain.
pub const ADJUSTED_SAMPLING_SINCE: u16 = v7::VERSION;
const _: () = assert!(ADJUSTED_SAMPLING_SINCE == plexus_types::receipt::ADJUSTED_SAMPLING_SINCE);

/// The execution version from which generations constrained by a grammar (structured outputs)
/// can be challenged on chain.
pub const CONSTRAINED_SAMPLING_SINCE: u16 = v8::VERSION;
const _: () = assert!(CONSTRAINED_SAMPLING_SINCE == plexus_types::receipt::CONSTRAINED_SAMPLING_SINCE);

/// The latest execution version of this release.
pub const LATEST_EXECUTION_VERSION: u16 = 8;

/// Execution versions this binary can run.
#[cfg(not(feature = "faulty-version"))]
pub const SUPPORTED_EXECUTION_VERSIONS: std::ops::RangeInclusive<u16> = 1..=LATEST_EXECUTION_VERSION;
/// Execution versions this binary can run (with the test-only faulty version after the latest).
#[cfg(feature = "faulty-version")]
pub const SUPPORTED_EXECUTION_VERSIONS: std::ops::RangeInclusive<u16> = 1..=LATEST_EXECUTION_VERSION + 1;

/// How running a block under one version went wrong.
enum Failure {
    /// The block is invalid (bad transaction, wrong height, malformed): the same under any version.
    Block(BlockError),
    /// The version broke an invariant or panicked: the version is at fault, not the block.
    Version(String),
}

fn classify(result: std::thread::Result<Result<BlockOutcome, BlockError>>) -> Result<BlockOutcome, Failure> {
    match result {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(BlockError::Invariant(reason))) => Err(Failure::Version(reason)),
        Ok(Err(e)) => Err(Failure::Block(e)),
        Err(panic) => Err(Failure::Version(panic_message(&panic))),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into());
    format!("panicked: {text}")
}

impl Executor {
    pub fn new(chain_id: impl Into<String>, evidence: std::sync::Arc<dyn EvidenceVerifier>) -> Self {
        Executor { chain_id: chain_id.into(), evidence }
    }

    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// Executes a block's transactions on `state` (the parent's post-state). With
    /// `check_signatures` false the caller vouches that every signature was already verified
    /// (e.g. by the mempool on admission).
    ///
    /// If the active execution version (above 1) breaks an invariant or panics on this block,
    /// the block is executed under the previous version instead, and the outcome records the
    /// upgrade as aborted and sets the previous version active: every node does the same, so the
    /// chain goes on instead of halting.
    pub fn execute_block(
        &self,
        state: &dyn StateRead,
        env: &BlockEnv,
        txs: &[SignedTx],
        check_signatures: bool,
    ) -> Result<BlockOutcome, BlockError> {
        if check_signatures && let Some(index) = first_bad_signature(&self.chain_id, txs) {
            return Err(BlockError::Tx { index, hash: txs[index].hash(), error: TxError::BadSignature });
        }
        let version = read_execution_version(state);
        if let Some((index, error)) = txs.iter().enumerate().find_map(|(i, tx)| too_new(version, tx).map(|e| (i, e))) {
            return Err(BlockError::Tx { index, hash: txs[index].hash(), error });
        }
        let run = |v: u16| {
            classify(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_version(v, state, env, txs))))
        };
        match run(version) {
            Ok(outcome) => Ok(outcome),
            Err(Failure::Block(e)) => Err(e),
            Err(Failure::Version(reason)) if version > 1 => match run(version - 1) {
                Ok(outcome) => Ok(self.aborted(state, env, outcome, version, &reason)),
                Err(Failure::Block(e)) => Err(e),
                Err(Failure::Version(again)) => Err(BlockError::Invariant(format!(
                    "version {version} failed ({reason}) and so did version {} ({again})",
                    version - 1
                ))),
            },
            Err(Failure::Version(reason)) => Err(BlockError::Invariant(reason)),
        }
    }

    /// Runs one version, with no fallback: what [`Executor::execute_block`] and shadow runs use.
    fn run_version(
        &self,
        version: u16,
        state: &dyn StateRead,
        env: &BlockEnv,
        txs: &[SignedTx],
    ) -> Result<BlockOutcome, BlockError> {
        let outcome = match version {
            1 => v1::execute_block(self, state, env, txs),
            2 => v2::execute_block(self, state, env, txs),
            3 => v3::execute_block(self, state, env, txs),
            4 => v4::execute_block(self, state, env, txs),
            5 => v5::execute_block(self, state, env, txs),
            6 => v6::execute_block(self, state, env, txs),
            7 => v7::execute_block(self, state, env, txs),
            8 => v8::execute_block(self, state, env, txs),
            #[cfg(feature = "faulty-version")]
            faulty::VERSION => faulty::execute_block(self, state, env, txs),
            v => Err(BlockError::UnsupportedVersion(v)),
        }?;
        state::check_conservation(state, &outcome.changes).map_err(BlockError::Invariant)?;
        Ok(outcome)
    }

    /// Adds the record of an aborted upgrade to an outcome computed under the previous version.
    fn aborted(
        &self,
        state: &dyn StateRead,
        env: &BlockEnv,
        mut outcome: BlockOutcome,
        version: u16,
        reason: &str,
    ) -> BlockOutcome {
        tracing::warn!(target: "execution", height = env.height, version, "execution version failed ({reason}); running the block under the previous version");
        let after = Layered { base: state, changes: &outcome.changes };
        let mut overlay = Overlay::new(&after);
        let mut store = state::Store::new(&mut overlay);
        gov::record_abort(&mut store, version, version - 1, env.height, reason, &mut outcome.block_events);
        let changes = overlay.into_changes();
        outcome.changes.extend(changes);
        outcome
    }

    /// Runs `version` on a block in shadow: nothing is kept; `Err` says how it failed (an
    /// invariant, a panic, or an invalid block). Nodes run a pending execution version this way
    /// before signalling that they are ready for it.
    pub fn shadow(&self, version: u16, state: &dyn StateRead, env: &BlockEnv, txs: &[SignedTx]) -> Result<(), String> {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run_version_shadow(version, state, env, txs)
        }));
        match classify(run) {
            Ok(_) => Ok(()),
            Err(Failure::Version(reason)) => Err(reason),
            Err(Failure::Block(e)) => Err(e.to_string()),
        }
    }

    /// Dry-runs the migration to data `version` on `state` and checks its result; nothing is kept.
    pub fn shadow_migration(&self, version: u16, state: &dyn StateRead) -> Result<(), String> {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut overlay = Overlay::new(state);
            let mut store = state::Store::new(&mut overlay);
            data::migrate(&mut store, version)?;
            data::check(&overlay, version)
        }));
        run.unwrap_or_else(|panic| Err(panic_message(&panic)))
    }

    /// A shadow run executes a block under a version its state does not have yet.
    fn run_version_shadow(
        &self,
        version: u16,
        state: &dyn StateRead,
        env: &BlockEnv,
        txs: &[SignedTx],
    ) -> Result<BlockOutcome, BlockError> {
        let mut versions: plexus_types::VersionVector = read_versions(state);
        versions.execution = version;
        let mut changes = ChangeSet::new();
        changes.insert(state::keys::VERSIONS.to_vec(), Some(plexus_types::codec::to_vec(&versions)));
        let view = Layered { base: state, changes: &changes };
        self.run_version(version, &view, env, txs)
    }

    /// Builds a block body from candidate transactions (best first): each is included if it is
    /// admissible on the state left by the ones before it. Returns the included transactions,
    /// the outcome, and the candidates left out with the reason. Falls back to the previous
    /// execution version exactly as [`Executor::execute_block`] does.
    pub fn build_block(
        &self,
        state: &dyn StateRead,
        env: &BlockEnv,
        candidates: Vec<SignedTx>,
        max_txs: usize,
        max_bytes: usize,
    ) -> Result<crate::BuiltBlock, BlockError> {
        let version = read_execution_version(state);
        let mut too_new_dropped = Vec::new();
        let candidates: Vec<SignedTx> = candidates
            .into_iter()
            .filter(|tx| match too_new(version, tx) {
                Some(e) => {
                    too_new_dropped.push((tx.hash(), e));
                    false
                }
                None => true,
            })
            .collect();
        let build = |v: u16| {
            let candidates = candidates.clone();
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let built = match v {
                    1 => Ok(v1::build_block(self, state, env, candidates, max_txs, max_bytes)),
                    2 => v2::build_block(self, state, env, candidates, max_txs, max_bytes),
                    3 => v3::build_block(self, state, env, candidates, max_txs, max_bytes),
                    4 => v4::build_block(self, state, env, candidates, max_txs, max_bytes),
                    5 => v5::build_block(self, state, env, candidates, max_txs, max_bytes),
                    6 => v6::build_block(self, state, env, candidates, max_txs, max_bytes),
                    7 => v7::build_block(self, state, env, candidates, max_txs, max_bytes),
                    8 => v8::build_block(self, state, env, candidates, max_txs, max_bytes),
                    #[cfg(feature = "faulty-version")]
                    faulty::VERSION => faulty::build_block(self, state, env, candidates, max_txs, max_bytes),
                    v => Err(BlockError::UnsupportedVersion(v)),
                }?;
                state::check_conservation(state, &built.1.changes).map_err(BlockError::Invariant)?;
                Ok(built)
            }));
            match run {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(BlockError::Invariant(reason))) => Err(Failure::Version(reason)),
                Ok(Err(e)) => Err(Failure::Block(e)),
                Err(panic) => Err(Failure::Version(panic_message(&panic))),
            }
        };
        let built = match build(version) {
            Ok(r) => Ok(r),
            Err(Failure::Block(e)) => Err(e),
            Err(Failure::Version(reason)) if version > 1 => match build(version - 1) {
                Ok((included, outcome, dropped)) => {
                    Ok((included, self.aborted(state, env, outcome, version, &reason), dropped))
                }
                Err(Failure::Block(e)) => Err(e),
                Err(Failure::Version(again)) => Err(BlockError::Invariant(again)),
            },
            Err(Failure::Version(reason)) => Err(BlockError::Invariant(reason)),
        };
        built.map(|(included, outcome, mut dropped)| {
            dropped.extend(too_new_dropped);
            (included, outcome, dropped)
        })
    }

    /// Checks a transaction against `state` as if it were the next one executed at `height`:
    /// signature, nonce, fee and payload. Used by the mempool and the API so that bad
    /// transactions get a clear error before they are gossiped.
    pub fn check_tx(&self, state: &dyn StateRead, height: Height, tx: &SignedTx) -> Result<(), TxError> {
        self.check_tx_signed(state, height, tx, false)
    }

    /// [`Executor::check_tx`], skipping the signature when `signature_verified` (the caller
    /// checked it already, e.g. in a batch with [`SignedTx::verify_all`]).
    pub fn check_tx_signed(
        &self,
        state: &dyn StateRead,
        height: Height,
        tx: &SignedTx,
        signature_verified: bool,
    ) -> Result<(), TxError> {
        if !signature_verified && !tx.verify(&self.chain_id) {
            return Err(TxError::BadSignature);
        }
        // Admission (nonce, fee) is version 1's in every version; the payload is the active one's.
        let version = read_execution_version(state);
        if let Some(e) = too_new(version, tx) {
            return Err(e);
        }
        match version {
            v if v >= 6 => v1::check_tx_with(self, state, height, tx, &v6::RULES),
            5 => v1::check_tx_with(self, state, height, tx, &v5::RULES),
            4 => v1::check_tx_with(self, state, height, tx, &v4::RULES),
            3 => v1::check_tx_with(self, state, height, tx, &v3::RULES),
            _ => v1::check_tx(self, state, height, tx),
        }
    }

    /// Admission of a transaction queued behind the sender's pending ones (which would move up to
    /// `prior_spend` out of its balance): signature, fee, and whether the balance still covers
    /// the fee and what the payload can spend. Constant time, unlike simulating the queue; the
    /// block builder re-executes everything exactly and leaves out what no longer applies.
    /// `signature_verified`: the caller checked the signature already (in a batch).
    pub fn check_queued(
        &self,
        state: &dyn StateRead,
        tx: &SignedTx,
        prior_spend: Amount,
        signature_verified: bool,
    ) -> Result<(), TxError> {
        if !signature_verified && !tx.verify(&self.chain_id) {
            return Err(TxError::BadSignature);
        }
        if let Some(e) = too_new(read_execution_version(state), tx) {
            return Err(e);
        }
        let min = params(state).min_tx_fee;
        if tx.tx.fee < min {
            return Err(TxError::FeeTooLow { min, got: tx.tx.fee });
        }
        let mut overlay = Overlay::new(state);
        let balance = state::Store::new(&mut overlay).account(&tx.tx.signer).balance;
        let left = balance.saturating_sub(prior_spend);
        if left < tx.tx.fee {
            return Err(TxError::CannotPayFee { fee: tx.tx.fee, balance: left });
        }
        let needed = tx.tx.fee.saturating_add(max_spend(&tx.tx.payload));
        if left < needed {
            return Err(TxError::WouldFail(ExecError::InsufficientBalance { needed, available: left }));
        }
        Ok(())
    }

    /// Applies one transaction (admission and payload, no block begin/end) to `state` and
    /// returns its writes. For simulating a sender's queued transactions.
    pub fn simulate_tx(&self, state: &dyn StateRead, height: Height, tx: &SignedTx) -> Result<ChangeSet, TxError> {
        v1::simulate_tx(self, state, height, tx)
    }

    pub(crate) fn evidence(&self) -> &dyn EvidenceVerifier {
        self.evidence.as_ref()
    }
}

/// Refuses a transaction whose payload a later execution version than `version` introduced:
/// binaries older than that version cannot decode it, so a block carrying it must be invalid
/// to every node until the version is active (not merely a failed transaction).
pub fn too_new(version: u16, tx: &SignedTx) -> Option<TxError> {
    use plexus_types::Payload;
    let needs = match &tx.tx.payload {
        Payload::OpenSessionIn { .. } => v4::VERSION,
        Payload::RegisterModel(m) if m.engine.is_tensor() => v4::VERSION,
        Payload::ChallengeTensor { .. } => v5::VERSION,
        Payload::RegisterConsensusKey { .. } => v6::VERSION,
        Payload::Challenge { transcript, .. } if transcript.sampling.is_constrained() => v8::VERSION,
        Payload::Challenge { transcript, .. } if transcript.sampling.is_adjusted() => v7::VERSION,
        _ => return None,
    };
    (version < needs).then(|| TxError::TooNew { kind: tx.tx.payload.kind(), needs, version })
}

/// The most a payload can move out of its signer's balance, besides the fee.
pub fn max_spend(payload: &plexus_types::Payload) -> Amount {
    use plexus_types::Payload;
    match payload {
        Payload::Transfer { amount, .. } | Payload::Stake { amount, .. } | Payload::TopUpSession { amount, .. } => {
            *amount
        }
        Payload::OpenSession { deposit, .. }
        | Payload::OpenSessionIn { deposit, .. }
        | Payload::SubmitProposal { deposit, .. } => *deposit,
        Payload::Challenge { bond, .. } | Payload::ChallengeTensor { bond, .. } => *bond,
        _ => 0,
    }
}

fn read_versions(state: &dyn StateRead) -> plexus_types::VersionVector {
    let bytes = state.get(state::keys::VERSIONS).expect("versions are written at genesis");
    state::decode_record::<plexus_types::VersionVector>(state::keys::VERSIONS, &bytes)
}

fn read_execution_version(state: &dyn StateRead) -> u16 {
    read_versions(state).execution
}

/// Verifies all signatures of a block at once; returns the index of the first bad one.
fn first_bad_signature(chain_id: &str, txs: &[SignedTx]) -> Option<usize> {
    txs.iter().position(|tx| !tx.verify(chain_id))
}

/// Checks a block's structure that does not need state: transaction root and size limits.
pub fn check_block_shape(block: &Block, params: &plexus_types::Params) -> Result<(), BlockError> {
    if block.txs.len() as u128 > params.max_block_txs {
        return Err(BlockError::Malformed(format!(
            "{} transactions exceed max_block_txs = {}",
            block.txs.len(),
            params.max_block_txs
        )));
    }
    if !block.txs_root_matches() {
        return Err(BlockError::Malformed("transaction root does not match the transactions".into()));
    }
    Ok(())
}

/// The parameters in force in `state`.
pub fn params(state: &dyn StateRead) -> plexus_types::Params {
    let mut overlay = Overlay::new(state);
    state::Store::new(&mut overlay).params()
}
