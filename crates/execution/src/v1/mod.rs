//! Execution version 1. Never edited once a network has run it: a change of behaviour is a new
//! module beside this one, selected by the execution version in state.
//!
//! Version 1 is this module and [`gov`] (its governance rules), plus the state helpers they
//! call (`crate::state`'s typed store and money movements, `crate::gov`'s readers). It was
//! redefined once, before any network ran it, to close the holes found in review (typed
//! admission errors, voter eligibility, checked parameter changes, a staker index that dust
//! cannot fill); from then on the golden history in `tests/golden` pins it: every commit must
//! replay that history to the same state digests.
//!
//! Block order: parameter changes due at this height, mature unbondings and session refunds,
//! then the transactions in order, then governance (votes closing here, upgrades activating or
//! expiring), then (at the last block of an epoch) the next epoch's validator set.

pub(crate) mod gov;

use plexus_types::params::limits;
use plexus_types::tx::Payload;
use plexus_types::{Address, Amount, Hash, Height, Params, SignedTx, hash_parts};
// Shared with clients and providers (they must agree with the chain to the base unit).
pub use plexus_types::session::{max_cost, price_of, session_id};

use crate::state::{
    AddressList, Bucket, EvidenceRecord, HashList, Overlay, Provider, Session, SessionStatus, Stake, StateRead, Store,
    UnbondingBucket, ValidatorEntry, ValidatorSet, keys,
};
use crate::{BlockEnv, BlockError, BlockOutcome, Event, ExecError, Executor, TxError, TxResult};

/// How a payload changes state.
pub(crate) type PayloadFn =
    fn(&Executor, &mut Store<'_, '_>, &Params, &BlockEnv, &SignedTx, &mut Vec<Event>) -> Result<(), ExecError>;

/// Work done after a block's transactions, before version 1's end of block (governance,
/// validator sets, the supply check); gets the block's transactions.
pub(crate) type BeforeEndFn =
    fn(&mut Overlay<'_>, &Params, &BlockEnv, &[SignedTx], &mut Vec<Event>) -> Result<(), BlockError>;

/// What a later version changes of version 1's block structure. Version 1 itself is
/// [`RULES`]; a later version passes its own to [`execute_with`], [`build_with`] and
/// [`check_tx_with`] and keeps everything else as it is here.
pub(crate) struct Rules {
    pub(crate) payload: PayloadFn,
    pub(crate) before_end: BeforeEndFn,
}

/// Version 1's own rules.
pub(crate) const RULES: Rules = Rules { payload: apply_payload, before_end: nothing_before_end };

fn nothing_before_end(
    _: &mut Overlay<'_>,
    _: &Params,
    _: &BlockEnv,
    _: &[SignedTx],
    _: &mut Vec<Event>,
) -> Result<(), BlockError> {
    Ok(())
}

pub(crate) fn execute_block(
    exec: &Executor,
    state: &dyn StateRead,
    env: &BlockEnv,
    txs: &[SignedTx],
) -> Result<BlockOutcome, BlockError> {
    execute_with(exec, state, env, txs, &RULES)
}

pub(crate) fn execute_with(
    exec: &Executor,
    state: &dyn StateRead,
    env: &BlockEnv,
    txs: &[SignedTx],
    rules: &Rules,
) -> Result<BlockOutcome, BlockError> {
    let mut overlay = Overlay::new(state);
    let (params, block_events) = begin_block(&mut overlay, env)?;
    let mut results = Vec::with_capacity(txs.len());
    for (index, tx) in txs.iter().enumerate() {
        let result = apply_tx(exec, &mut overlay, &params, env, tx, rules.payload).map_err(|error| BlockError::Tx {
            index,
            hash: tx.hash(),
            error,
        })?;
        results.push(result);
    }
    let mut block_events = block_events;
    (rules.before_end)(&mut overlay, &params, env, txs, &mut block_events)?;
    end_block(&mut overlay, &params, env, &mut block_events)?;
    Ok(BlockOutcome { changes: overlay.into_changes(), results, block_events })
}

pub(crate) fn build_block(
    exec: &Executor,
    state: &dyn StateRead,
    env: &BlockEnv,
    candidates: impl IntoIterator<Item = SignedTx>,
    max_txs: usize,
    max_bytes: usize,
) -> crate::BuiltBlock {
    build_with(exec, state, env, candidates, max_txs, max_bytes, &RULES)
}

pub(crate) fn build_with(
    exec: &Executor,
    state: &dyn StateRead,
    env: &BlockEnv,
    candidates: impl IntoIterator<Item = SignedTx>,
    max_txs: usize,
    max_bytes: usize,
    rules: &Rules,
) -> crate::BuiltBlock {
    let mut overlay = Overlay::new(state);
    let (params, mut block_events) = begin_block(&mut overlay, env).expect("begin_block of a valid parent state");
    let max_txs = max_txs.min(params.max_block_txs as usize);
    let max_bytes = max_bytes.min(params.max_block_bytes as usize);
    let mut included = Vec::new();
    let mut results = Vec::new();
    let mut dropped = Vec::new();
    let mut bytes = 0usize;
    for tx in candidates {
        if included.len() >= max_txs {
            break;
        }
        let size = commonware_codec::EncodeSize::encode_size(&tx);
        if bytes + size > max_bytes {
            continue;
        }
        match apply_tx(exec, &mut overlay, &params, env, &tx, rules.payload) {
            Ok(result) => {
                bytes += size;
                results.push(result);
                included.push(tx);
            }
            Err(error) => dropped.push((tx.hash(), error)),
        }
    }
    (rules.before_end)(&mut overlay, &params, env, &included, &mut block_events)
        .expect("the end of a block built from admissible transactions keeps the invariants");
    end_block(&mut overlay, &params, env, &mut block_events)
        .expect("a block built from admissible transactions keeps the invariants");
    (included, BlockOutcome { changes: overlay.into_changes(), results, block_events }, dropped)
}

pub(crate) fn check_tx(exec: &Executor, state: &dyn StateRead, height: Height, tx: &SignedTx) -> Result<(), TxError> {
    check_tx_with(exec, state, height, tx, &RULES)
}

pub(crate) fn check_tx_with(
    exec: &Executor,
    state: &dyn StateRead,
    height: Height,
    tx: &SignedTx,
    rules: &Rules,
) -> Result<(), TxError> {
    let mut overlay = Overlay::new(state);
    let params = Store::new(&mut overlay).params();
    let env = BlockEnv { height, proposer: tx.tx.signer.clone() };
    // The payload's own error, from the very run that failed (after the fee was taken), so what
    // admission reports is exactly what the block would record.
    match applied(exec, &mut overlay, &params, &env, tx, rules.payload)?.1 {
        None => Ok(()),
        Some(err) => Err(TxError::WouldFail(err)),
    }
}

pub(crate) fn simulate_tx(
    exec: &Executor,
    state: &dyn StateRead,
    height: Height,
    tx: &SignedTx,
) -> Result<crate::ChangeSet, TxError> {
    let mut overlay = Overlay::new(state);
    let params = Store::new(&mut overlay).params();
    let env = BlockEnv { height, proposer: tx.tx.signer.clone() };
    apply_tx(exec, &mut overlay, &params, &env, tx, apply_payload)?;
    Ok(overlay.into_changes())
}

// ---------------------------------------------------------------------------------------------

fn begin_block(overlay: &mut Overlay<'_>, env: &BlockEnv) -> Result<(Params, Vec<Event>), BlockError> {
    let mut store = Store::new(overlay);
    let chain = store.chain();
    if env.height != chain.height + 1 {
        return Err(BlockError::Height { state: chain.height, got: env.height });
    }
    // Parameter changes due at this height apply to this block.
    let mut events = Vec::new();
    gov::begin_block(&mut store, env.height, &mut events)?;
    let params = store.params();
    mature_unbonding(&mut store, env.height, &mut events)?;
    refund_expired_sessions(&mut store, env.height, &mut events)?;
    Ok((params, events))
}

fn end_block(
    overlay: &mut Overlay<'_>,
    params: &Params,
    env: &BlockEnv,
    events: &mut Vec<Event>,
) -> Result<(), BlockError> {
    let mut store = Store::new(overlay);
    gov::end_block(&mut store, params, env, events)?;
    let mut chain = store.chain();
    chain.height = env.height;
    if params.is_epoch_last(env.height) {
        let next_epoch = params.epoch_of(env.height) + 1;
        let set = choose_validators(&store, params, next_epoch)?;
        events.push(Event::ValidatorSetChosen {
            epoch: next_epoch,
            validators: set.0.iter().map(|v| v.address.clone()).collect(),
            total_stake: set.total_stake(),
        });
        store.write(keys::validators(next_epoch), &set);
    }
    chain.epoch = params.epoch_of(env.height + 1);
    store.write(keys::CHAIN.to_vec(), &chain);
    let supply = store.supply();
    if !supply.is_conserved() {
        return Err(BlockError::Invariant(format!("supply not conserved after block {}: {supply:?}", env.height)));
    }
    Ok(())
}

fn mature_unbonding(store: &mut Store<'_, '_>, height: Height, events: &mut Vec<Event>) -> Result<(), BlockError> {
    let key = keys::unbonding(height);
    let Some(bucket) = store.read::<UnbondingBucket>(&key) else { return Ok(()) };
    store.overlay.delete(key);
    for (staker, amount) in bucket.0 {
        store.credit(&staker, amount, Bucket::Unbonding).map_err(internal)?;
        events.push(Event::Unbonded { staker, amount });
    }
    Ok(())
}

fn refund_expired_sessions(
    store: &mut Store<'_, '_>,
    height: Height,
    events: &mut Vec<Event>,
) -> Result<(), BlockError> {
    let key = keys::session_expiry(height);
    let Some(list) = store.read::<HashList>(&key) else { return Ok(()) };
    store.overlay.delete(key);
    for id in list.0 {
        let Some(session) = store.read::<Session>(&keys::session(&id)) else { continue };
        if session.status == SessionStatus::Open {
            close_session(store, &id, session, events).map_err(internal)?;
        }
    }
    Ok(())
}

fn internal(e: ExecError) -> BlockError {
    BlockError::Invariant(e.to_string())
}

/// Top stakers with at least `min_stake` and a p2p address, by stake (descending) then address.
/// An empty result keeps the current set, so the chain can never lose all its validators.
fn choose_validators(store: &Store<'_, '_>, params: &Params, next_epoch: u64) -> Result<ValidatorSet, BlockError> {
    let stakers: AddressList = store.read(keys::STAKERS).unwrap_or_default();
    let mut candidates: Vec<ValidatorEntry> = stakers
        .0
        .iter()
        .filter_map(|a| {
            let stake = store.stake(a);
            (stake.bonded >= params.min_stake && !stake.p2p_address.is_empty()).then(|| ValidatorEntry {
                address: a.clone(),
                stake: stake.bonded,
                p2p_address: stake.p2p_address,
            })
        })
        .collect();
    // From execution v6, once consensus v2 is active, only candidates with a registered BLS key
    // can sign, so only they are elected (unless none has one: then the set is elected as before
    // and its epoch runs consensus v1, see `gov::epoch_consensus`). Earlier versions: unchanged.
    let versions = store.versions();
    if versions.execution >= crate::CONSENSUS_KEYS_SINCE && versions.consensus >= 2 {
        let keyed: Vec<ValidatorEntry> =
            candidates.iter().filter(|c| store.consensus_key(&c.address).is_some()).cloned().collect();
        if !keyed.is_empty() {
            candidates = keyed;
        }
    }
    candidates.sort_by(|a, b| b.stake.cmp(&a.stake).then_with(|| a.address.cmp(&b.address)));
    candidates.truncate(params.max_validators as usize);
    if candidates.is_empty() {
        let current = store
            .validators(next_epoch - 1)
            .ok_or_else(|| BlockError::Invariant(format!("no validator set for epoch {}", next_epoch - 1)))?;
        return Ok(current);
    }
    Ok(ValidatorSet(candidates))
}

// ---------------------------------------------------------------------------------------------

/// Admission (nonce, fee) then the payload. Admission failures are [`TxError`]s (the block is
/// invalid); payload failures are recorded in the result and their writes discarded.
fn apply_tx(
    exec: &Executor,
    overlay: &mut Overlay<'_>,
    params: &Params,
    env: &BlockEnv,
    tx: &SignedTx,
    payload: PayloadFn,
) -> Result<TxResult, TxError> {
    applied(exec, overlay, params, env, tx, payload).map(|(result, _)| result)
}

/// [`apply_tx`], also returning the payload's typed error when it failed.
fn applied(
    exec: &Executor,
    overlay: &mut Overlay<'_>,
    params: &Params,
    env: &BlockEnv,
    tx: &SignedTx,
    payload: PayloadFn,
) -> Result<(TxResult, Option<ExecError>), TxError> {
    let signer = &tx.tx.signer;
    let mut store = Store::new(overlay);
    let mut account = store.account(signer);
    if tx.tx.nonce != account.nonce {
        return Err(TxError::WrongNonce { expected: account.nonce, got: tx.tx.nonce });
    }
    if tx.tx.fee < params.min_tx_fee {
        return Err(TxError::FeeTooLow { min: params.min_tx_fee, got: tx.tx.fee });
    }
    if account.balance < tx.tx.fee {
        return Err(TxError::CannotPayFee { fee: tx.tx.fee, balance: account.balance });
    }
    account.nonce =
        account.nonce.checked_add(1).ok_or(TxError::WrongNonce { expected: account.nonce, got: tx.tx.nonce })?;
    store.set_account(signer, &account);
    store
        .debit(signer, tx.tx.fee, Bucket::Treasury)
        .map_err(|_| TxError::CannotPayFee { fee: tx.tx.fee, balance: account.balance })?;

    let checkpoint = store.overlay.checkpoint();
    let mut events = Vec::new();
    let error = match payload(exec, &mut store, params, env, tx, &mut events) {
        Ok(()) => None,
        Err(e) => {
            store.overlay.restore(checkpoint);
            events.clear();
            Some(e)
        }
    };
    let result = TxResult {
        hash: tx.hash(),
        kind: tx.tx.payload.kind(),
        signer: signer.clone(),
        fee: tx.tx.fee,
        error: error.as_ref().map(ToString::to_string),
        events,
    };
    Ok((result, error))
}

fn invalid(msg: impl Into<String>) -> ExecError {
    ExecError::Invalid(msg.into())
}

pub(crate) fn apply_payload(
    exec: &Executor,
    store: &mut Store<'_, '_>,
    params: &Params,
    env: &BlockEnv,
    tx: &SignedTx,
    events: &mut Vec<Event>,
) -> Result<(), ExecError> {
    let signer = &tx.tx.signer;
    match &tx.tx.payload {
        Payload::Transfer { to, amount } => {
            if *amount == 0 {
                return Err(invalid("transfer amount must be positive"));
            }
            store.transfer(signer, to, *amount)?;
            events.push(Event::Transfer { from: signer.clone(), to: to.clone(), amount: *amount });
        }
        Payload::Stake { amount, p2p_address } => stake(store, params, signer, *amount, p2p_address, events)?,
        Payload::Unstake { amount } => unstake(store, params, env, signer, *amount, events)?,
        Payload::RegisterProvider(info) => {
            let bonded = store.stake(signer).bonded;
            if bonded < params.min_provider_stake {
                return Err(ExecError::Forbidden(format!(
                    "a provider must bond at least {} (min_provider_stake); {signer} has {bonded}",
                    params.min_provider_stake
                )));
            }
            if !(info.endpoint.starts_with("http://") || info.endpoint.starts_with("https://")) {
                return Err(invalid("provider endpoint must be an http:// or https:// URL"));
            }
            if info.prices.is_empty() {
                return Err(invalid("a provider must price at least one model"));
            }
            for (i, price) in info.prices.iter().enumerate() {
                if info.prices[..i].iter().any(|p| p.model == price.model) {
                    return Err(invalid(format!("model {} is priced twice", price.model)));
                }
                if store.read::<plexus_types::ModelManifest>(&keys::model(&price.model)).is_none() {
                    return Err(ExecError::NotFound(format!("model {}", price.model)));
                }
            }
            store.write(keys::provider(signer), &Provider { info: info.clone(), registered_height: env.height });
            events.push(Event::ProviderRegistered { provider: signer.clone(), endpoint: info.endpoint.clone() });
        }
        Payload::RegisterModel(manifest) => {
            if manifest.name.is_empty() || !manifest.name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid("model name must be non-empty printable ASCII without spaces"));
            }
            if manifest.context_length == 0 {
                return Err(invalid("model context_length must be positive"));
            }
            let id = manifest.id();
            if store.read::<plexus_types::ModelManifest>(&keys::model(&id)).is_some() {
                return Err(invalid(format!("model {id} is already registered")));
            }
            // One model per name, owned by whoever registered it first: a client asking for a
            // name gets the weights registered under it, never a look-alike.
            if let Some(taken) = store.read::<crate::state::ModelName>(&keys::model_name(&manifest.name)) {
                return Err(ExecError::Forbidden(format!(
                    "the model name {:?} belongs to {} (model {}); register yours under another name",
                    manifest.name, taken.owner, taken.id
                )));
            }
            store.write(keys::model_name(&manifest.name), &crate::state::ModelName { id, owner: signer.clone() });
            store.write(keys::model(&id), manifest);
            events.push(Event::ModelRegistered { model: id, name: manifest.name.clone() });
        }
        Payload::OpenSession { provider, model, deposit, max_input_per_1k, max_output_per_1k, expiry_height } => {
            let record: Provider = store
                .read(&keys::provider(provider))
                .ok_or_else(|| ExecError::NotFound(format!("provider {provider}")))?;
            let price = *record
                .info
                .prices
                .iter()
                .find(|p| &p.model == model)
                .ok_or_else(|| ExecError::NotFound(format!("model {model} at provider {provider}")))?;
            if price.input_per_1k > *max_input_per_1k || price.output_per_1k > *max_output_per_1k {
                return Err(invalid(format!(
                    "provider asks {}/{} per 1k input/output tokens, above your maximum {}/{}",
                    price.input_per_1k, price.output_per_1k, max_input_per_1k, max_output_per_1k
                )));
            }
            if *deposit < params.min_session_deposit {
                return Err(invalid(format!(
                    "deposit {deposit} is below min_session_deposit {}",
                    params.min_session_deposit
                )));
            }
            let latest = env.height.saturating_add(params.max_session_blocks as u64);
            if *expiry_height <= env.height || *expiry_height > latest {
                return Err(invalid(format!(
                    "expiry_height must be in ({}, {latest}], got {expiry_height}",
                    env.height
                )));
            }
            let id = session_id(signer, tx.tx.nonce);
            store.debit(signer, *deposit, Bucket::Escrow)?;
            let session = Session {
                client: signer.clone(),
                provider: provider.clone(),
                model: *model,
                deposit: *deposit,
                price,
                max_input_per_1k: *max_input_per_1k,
                max_output_per_1k: *max_output_per_1k,
                opened_height: env.height,
                expiry_height: *expiry_height,
                settled_seq: 0,
                settled_input_tokens: 0,
                settled_output_tokens: 0,
                settled_amount: 0,
                status: SessionStatus::Open,
                refunded: 0,
            };
            store.write(keys::session(&id), &session);
            if store.versions().data >= 2 {
                // Data v2 indexes sessions by client.
                store.overlay.put(keys::session_by_client(signer, &id), Vec::new());
            }
            schedule_refund(store, &id, expiry_height + params.session_grace_blocks as u64);
            events.push(Event::SessionOpened {
                session: id,
                client: signer.clone(),
                provider: provider.clone(),
                model: *model,
                deposit: *deposit,
                expiry_height: *expiry_height,
            });
        }
        Payload::TopUpSession { session: id, amount } => {
            let mut session = open_session(store, id)?;
            if &session.client != signer {
                return Err(ExecError::Forbidden("only the session's client can top it up".into()));
            }
            if env.height > session.expiry_height {
                return Err(invalid(format!("session expired at height {}", session.expiry_height)));
            }
            if *amount == 0 {
                return Err(invalid("top-up amount must be positive"));
            }
            store.debit(signer, *amount, Bucket::Escrow)?;
            session.deposit = session.deposit.checked_add(*amount).ok_or(ExecError::Overflow)?;
            store.write(keys::session(id), &session);
            events.push(Event::SessionToppedUp { session: *id, amount: *amount, deposit: session.deposit });
        }
        Payload::Claim { receipts } => {
            if receipts.is_empty() {
                return Err(invalid("a claim needs at least one receipt"));
            }
            let mut settled = 0;
            let mut first_rejection = None;
            for signed in receipts {
                match settle(store, params, exec.chain_id(), signer, signed, events) {
                    Ok(()) => settled += 1,
                    Err(reason) => {
                        let reason = reason.to_string();
                        events.push(Event::ReceiptRejected {
                            session: signed.receipt.session,
                            seq: signed.receipt.seq,
                            reason: reason.clone(),
                        });
                        first_rejection.get_or_insert(reason);
                    }
                }
            }
            if settled == 0 {
                return Err(invalid(format!("no receipt settled: {}", first_rejection.unwrap_or_default())));
            }
        }
        Payload::CloseSession { session: id } => {
            let mut session = open_session(store, id)?;
            if &session.provider == signer {
                close_session(store, id, session, events)?;
            } else if &session.client == signer {
                // The client ends the work window now; the provider keeps the grace period to
                // settle what it delivered, then the rest is refunded.
                let refund_height = env.height + params.session_grace_blocks as u64;
                let old_refund = session.expiry_height + params.session_grace_blocks as u64;
                if refund_height < old_refund {
                    unschedule_refund(store, id, old_refund);
                    schedule_refund(store, id, refund_height);
                    session.expiry_height = env.height;
                    store.write(keys::session(id), &session);
                }
                events.push(Event::SessionClosing { session: *id, refund_height: refund_height.min(old_refund) });
            } else {
                return Err(ExecError::Forbidden("only the session's client or provider can close it".into()));
            }
        }
        Payload::ReportEvidence { evidence } => {
            let validators_of = |epoch: u64| {
                store.validators(epoch).map(|set| set.0.into_iter().map(|v| v.address).collect::<Vec<_>>())
            };
            let proof =
                exec.evidence().verify(evidence, &validators_of).map_err(|e| invalid(format!("evidence: {e}")))?;
            record_evidence(store, env, signer, proof, events)?;
        }
        Payload::SubmitProposal { kind, deposit } => gov::submit(store, params, env, signer, kind, *deposit, events)?,
        Payload::Vote { proposal, option } => gov::vote(store, params, env, signer, *proposal, *option, events)?,
        Payload::SignalVersions { versions, shadow_ok } => {
            gov::signal_versions(store, env, signer, *versions, *shadow_ok, events)?
        }
        // Added by later versions (challenges are version 3, restricted sessions version 4,
        // challenges of tensor inferences version 5, consensus keys version 6).
        Payload::Challenge { .. }
        | Payload::ChallengeVote { .. }
        | Payload::OpenSessionIn { .. }
        | Payload::ChallengeTensor { .. }
        | Payload::RegisterConsensusKey { .. } => {
            return Err(ExecError::Unsupported(tx.tx.payload.kind(), store.versions().execution));
        }
    }
    Ok(())
}

/// Records verified evidence once per offence (kind, offender, epoch, view).
pub(crate) fn record_evidence(
    store: &mut Store<'_, '_>,
    env: &BlockEnv,
    reporter: &Address,
    proof: crate::VerifiedEvidence,
    events: &mut Vec<Event>,
) -> Result<(), ExecError> {
    let id = hash_parts(&[
        proof.kind.as_bytes(),
        proof.offender.as_bytes(),
        &proof.epoch.to_be_bytes(),
        &proof.view.to_be_bytes(),
    ]);
    if store.read::<EvidenceRecord>(&keys::evidence(&id)).is_some() {
        return Err(invalid("this offence is already recorded"));
    }
    store.write(
        keys::evidence(&id),
        &EvidenceRecord {
            offender: proof.offender.clone(),
            epoch: proof.epoch,
            view: proof.view,
            kind: proof.kind.to_string(),
            reporter: reporter.clone(),
            height: env.height,
        },
    );
    events.push(Event::EvidenceRecorded {
        offender: proof.offender,
        epoch: proof.epoch,
        view: proof.view,
        kind: proof.kind.to_string(),
    });
    Ok(())
}

/// The staker index holds validator candidates only (bonded at least `min_stake`), so dust
/// stakes cannot fill it and lock real candidates out.
fn stake(
    store: &mut Store<'_, '_>,
    params: &Params,
    signer: &Address,
    amount: Amount,
    p2p_address: &str,
    events: &mut Vec<Event>,
) -> Result<(), ExecError> {
    if amount == 0 {
        return Err(invalid("stake amount must be positive"));
    }
    if !p2p_address.is_empty() && p2p_address.parse::<std::net::SocketAddr>().is_err() {
        return Err(invalid(format!("p2p address {p2p_address:?} is not ip:port")));
    }
    let mut record = store.stake(signer);
    let bonded = record.bonded.checked_add(amount).ok_or(ExecError::Overflow)?;
    if bonded >= params.min_stake {
        let mut stakers: AddressList = store.read(keys::STAKERS).unwrap_or_default();
        if stakers.0.binary_search(signer).is_err() {
            if stakers.0.len() >= limits::STAKERS_MAX {
                // Full: the smallest candidate makes room for a larger one (its stake stays
                // bonded; it is a candidate again once it out-stakes the smallest). Candidates
                // at the minimum cannot lock better-staked ones out.
                let (smallest, least) = stakers
                    .0
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (i, store.stake(a).bonded))
                    .min_by_key(|&(i, b)| (b, std::cmp::Reverse(i)))
                    .ok_or_else(|| ExecError::Invalid("the staker set is full and empty".into()))?;
                if least >= bonded {
                    return Err(ExecError::Forbidden(format!(
                        "the staker set is full ({} stakers) and none has less than {bonded} bonded",
                        limits::STAKERS_MAX
                    )));
                }
                stakers.0.remove(smallest);
            }
            let at = stakers.0.binary_search(signer).unwrap_or_else(|at| at);
            stakers.0.insert(at, signer.clone());
            store.write(keys::STAKERS.to_vec(), &stakers);
        }
    }
    store.debit(signer, amount, Bucket::Bonded)?;
    record.bonded = bonded;
    if !p2p_address.is_empty() {
        record.p2p_address = p2p_address.to_string();
    }
    store.write(keys::stake(signer), &record);
    events.push(Event::Staked { staker: signer.clone(), amount, bonded: record.bonded });
    Ok(())
}

fn unstake(
    store: &mut Store<'_, '_>,
    params: &Params,
    env: &BlockEnv,
    signer: &Address,
    amount: Amount,
    events: &mut Vec<Event>,
) -> Result<(), ExecError> {
    let mut record: Stake = store.stake(signer);
    if amount == 0 || amount > record.bonded {
        return Err(invalid(format!("can unstake between 1 and {} (bonded)", record.bonded)));
    }
    record.bonded -= amount;
    store.shift(amount, Bucket::Bonded, Bucket::Unbonding)?;
    let mut release = env.height + params.unbonding_delay_blocks as u64;
    let mut bucket: UnbondingBucket = loop {
        let bucket: UnbondingBucket = store.read(&keys::unbonding(release)).unwrap_or_default();
        if bucket.0.len() < limits::SCHEDULE_BUCKET_MAX {
            break bucket;
        }
        release += 1;
    };
    bucket.0.push((signer.clone(), amount));
    store.write(keys::unbonding(release), &bucket);
    if record.bonded < params.min_stake {
        let mut stakers: AddressList = store.read(keys::STAKERS).unwrap_or_default();
        if let Ok(pos) = stakers.0.binary_search(signer) {
            stakers.0.remove(pos);
            store.write(keys::STAKERS.to_vec(), &stakers);
        }
    }
    if record.bonded == 0 {
        store.overlay.delete(keys::stake(signer));
    } else {
        store.write(keys::stake(signer), &record);
    }
    if record.bonded < params.min_provider_stake && store.read::<Provider>(&keys::provider(signer)).is_some() {
        store.overlay.delete(keys::provider(signer));
        events.push(Event::ProviderDeregistered {
            provider: signer.clone(),
            reason: "bonded stake fell below min_provider_stake".into(),
        });
    }
    events.push(Event::Unbonding { staker: signer.clone(), amount, release_height: release });
    Ok(())
}

fn open_session(store: &Store<'_, '_>, id: &Hash) -> Result<Session, ExecError> {
    let session: Session =
        store.read(&keys::session(id)).ok_or_else(|| ExecError::NotFound(format!("session {id}")))?;
    if session.status != SessionStatus::Open {
        return Err(invalid(format!("session {id} is closed")));
    }
    Ok(session)
}

/// Schedules a session's refund at `height`, or the first later height with room. An entry
/// left behind at another height is harmless: refunds skip sessions that are already closed.
fn schedule_refund(store: &mut Store<'_, '_>, id: &Hash, mut height: Height) {
    loop {
        let key = keys::session_expiry(height);
        let mut list: HashList = store.read(&key).unwrap_or_default();
        if list.0.len() < limits::SCHEDULE_BUCKET_MAX {
            list.0.push(*id);
            store.write(key, &list);
            return;
        }
        height += 1;
    }
}

fn unschedule_refund(store: &mut Store<'_, '_>, id: &Hash, height: Height) {
    let key = keys::session_expiry(height);
    let mut list: HashList = store.read(&key).unwrap_or_default();
    list.0.retain(|x| x != id);
    if list.0.is_empty() {
        store.overlay.delete(key);
    } else {
        store.write(key, &list);
    }
}

/// Pays nothing more, refunds the rest of the escrow to the client, and closes the session.
fn close_session(
    store: &mut Store<'_, '_>,
    id: &Hash,
    mut session: Session,
    events: &mut Vec<Event>,
) -> Result<(), ExecError> {
    let refund = session.remaining();
    if refund > 0 {
        store.credit(&session.client, refund, Bucket::Escrow)?;
    }
    session.status = SessionStatus::Closed;
    session.refunded = refund;
    store.write(keys::session(id), &session);
    events.push(Event::SessionClosed { session: *id, paid: session.settled_amount, refunded: refund });
    Ok(())
}

/// Settles one receipt: verifies it supersedes what was settled and pays the difference.
fn settle(
    store: &mut Store<'_, '_>,
    params: &Params,
    chain_id: &str,
    provider: &Address,
    signed: &plexus_types::SignedReceipt,
    events: &mut Vec<Event>,
) -> Result<(), ExecError> {
    let r = &signed.receipt;
    let mut session = open_session(store, &r.session)?;
    if &session.provider != provider {
        return Err(ExecError::Forbidden("receipt is for another provider's session".into()));
    }
    if r.seq <= session.settled_seq {
        return Err(invalid(format!("receipt seq {} is not above settled seq {}", r.seq, session.settled_seq)));
    }
    if r.cum_input_tokens < session.settled_input_tokens
        || r.cum_output_tokens < session.settled_output_tokens
        || r.cum_amount < session.settled_amount
    {
        return Err(invalid("receipt totals go backwards"));
    }
    if !signed.verify(&session.client, chain_id) {
        return Err(invalid("receipt is not signed by the session's client"));
    }
    if r.cum_amount > session.deposit {
        return Err(invalid(format!("receipt amount {} exceeds the escrow deposit {}", r.cum_amount, session.deposit)));
    }
    let cap = max_cost(r.cum_input_tokens, r.cum_output_tokens, session.max_input_per_1k, session.max_output_per_1k)
        .ok_or(ExecError::Overflow)?;
    if r.cum_amount > cap {
        return Err(invalid(format!("receipt amount {} exceeds the session's maximum prices ({cap})", r.cum_amount)));
    }
    let delta = r.cum_amount - session.settled_amount;
    let fee = params.protocol_fee(delta);
    store.credit(provider, delta - fee, Bucket::Escrow)?;
    store.shift(fee, Bucket::Escrow, Bucket::Treasury)?;
    session.settled_seq = r.seq;
    session.settled_input_tokens = r.cum_input_tokens;
    session.settled_output_tokens = r.cum_output_tokens;
    session.settled_amount = r.cum_amount;
    store.write(keys::session(&r.session), &session);
    events.push(Event::SessionSettled {
        session: r.session,
        provider: provider.clone(),
        seq: r.seq,
        input_tokens: r.cum_input_tokens,
        output_tokens: r.cum_output_tokens,
        amount: delta,
        fee,
    });
    Ok(())
}
