//! Execution version 3: version 2 with verified inference — challenges, committees and
//! slashing. Everything else is version 2 (and so version 1), called unchanged.
//!
//! A client that finds (by re-running it) that a provider's attested response is not what the
//! provider's model produces submits a `Challenge` with the evidence: the provider's signed
//! attestation and the transcript it names (prompt tokens, sampling with its seed, output ids).
//! The chain checks that the evidence is what the provider signed, for a session of this client
//! with that provider, and locks the challenger's bond; then it draws a committee of validators
//! (not the accused) from a beacon that every block stirs, each of which re-runs the transcript
//! with its own copy of the model and votes. A majority for guilty convicts at once; otherwise
//! the challenge is decided at its deadline. Conviction slashes `fault_slash_bps` of the
//! provider's stake (bonded first, then stake it is unbonding under this version), refunds the
//! client the request's cost, pays the challenger `challenger_reward_bps` of the slash, and puts
//! the rest in the treasury; an acquittal gives the challenger's bond to the provider.
//!
//! Conflicting-vote evidence, recorded as in version 1, now also slashes the offender
//! `equivocation_slash_bps`, with the reporter paid the same share as a challenger.
//!
//! Money: bonds of open challenges are in the deposits bucket; every slash moves stake out of
//! the bonded (or unbonding) bucket into balances and the treasury, so supply is conserved.
//!
//! Randomness: the beacon is a hash chain over every block's height, proposer and transactions;
//! a proposer can shape it only by choosing which transactions to include.

use plexus_types::params::limits;
use plexus_types::tx::Payload;
use plexus_types::{Address, Amount, Hash, Height, Params, SignedTx, hash_parts};

use crate::state::{
    AddressList, Bucket, Challenge, ChallengeStatus, IdList, Overlay, Provider, ProviderStats, Session, StateRead,
    Store, UnbondingBucket, keys,
};

/// A staker's tracked release heights.
type HeightList = IdList;
use crate::v1::{self, Rules};
use crate::{BlockEnv, BlockError, BlockOutcome, Event, ExecError, Executor, v2};

/// Version 3's rules on top of version 1's block structure.
pub(crate) const RULES: Rules = Rules { payload: apply_payload, before_end };

pub(crate) fn execute_block(
    exec: &Executor,
    state: &dyn StateRead,
    env: &BlockEnv,
    txs: &[SignedTx],
) -> Result<BlockOutcome, BlockError> {
    execute_with(exec, state, env, txs, &RULES)
}

pub(crate) fn build_block(
    exec: &Executor,
    state: &dyn StateRead,
    env: &BlockEnv,
    candidates: impl IntoIterator<Item = SignedTx>,
    max_txs: usize,
    max_bytes: usize,
) -> Result<crate::BuiltBlock, BlockError> {
    build_with(exec, state, env, candidates, max_txs, max_bytes, &RULES)
}

/// A block under `rules` with version 1's structure and version 2's proposer reward: this
/// version's, and later ones' that change only the rules.
pub(crate) fn execute_with(
    exec: &Executor,
    state: &dyn StateRead,
    env: &BlockEnv,
    txs: &[SignedTx],
    rules: &Rules,
) -> Result<BlockOutcome, BlockError> {
    let mut outcome = v1::execute_with(exec, state, env, txs, rules)?;
    v2::reward(state, env, &mut outcome)?;
    Ok(outcome)
}

/// [`execute_with`]'s block builder.
pub(crate) fn build_with(
    exec: &Executor,
    state: &dyn StateRead,
    env: &BlockEnv,
    candidates: impl IntoIterator<Item = SignedTx>,
    max_txs: usize,
    max_bytes: usize,
    rules: &Rules,
) -> Result<crate::BuiltBlock, BlockError> {
    let (included, mut outcome, dropped) = v1::build_with(exec, state, env, candidates, max_txs, max_bytes, rules);
    v2::reward(state, env, &mut outcome)?;
    Ok((included, outcome, dropped))
}

fn invalid(msg: impl Into<String>) -> ExecError {
    ExecError::Invalid(msg.into())
}

/// Slashes the offender of evidence recorded among `events[before..]` (if any) and pays the
/// reporter its share, the rest to the treasury.
pub(crate) fn slash_recorded_offence(
    store: &mut Store<'_, '_>,
    params: &Params,
    env: &BlockEnv,
    reporter: &Address,
    events: &mut Vec<Event>,
    before: usize,
) -> Result<(), ExecError> {
    let offender = events[before..].iter().find_map(|e| match e {
        Event::EvidenceRecorded { offender, .. } => Some(offender.clone()),
        _ => None,
    });
    if let Some(offender) = offender {
        let slashed = slash(store, params, env, &offender, params.equivocation_slash_bps)?;
        let reward = crate::gov::share(slashed, params.challenger_reward_bps);
        pay_out(store, reporter, reward, slashed - reward)?;
        events.push(Event::Slashed { offender, amount: slashed, reason: "conflicting votes".into() });
    }
    Ok(())
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
        Payload::Challenge { session, attestation, signature, transcript, bond } => {
            open_challenge(exec, store, params, env, signer, session, attestation, signature, transcript, *bond, events)
        }
        Payload::ChallengeVote { challenge, guilty } => vote(store, params, env, signer, *challenge, *guilty, events),
        Payload::ReportEvidence { .. } => {
            let before = events.len();
            v1::apply_payload(exec, store, params, env, tx, events)?;
            slash_recorded_offence(store, params, env, signer, events, before)
        }
        Payload::Unstake { .. } => {
            // As version 1, and remember where the stake waits, so a slash can still reach it.
            let before = events.len();
            v1::apply_payload(exec, store, params, env, tx, events)?;
            if let Some(Event::Unbonding { release_height, .. }) = events[before..].last() {
                let key = keys::unbonding_of(signer);
                let mut heights: HeightList = store.read(&key).unwrap_or_default();
                heights.0.retain(|h| *h > env.height && h != release_height);
                if heights.0.len() >= UNBONDING_TRACKED_MAX {
                    heights.0.remove(0);
                }
                heights.0.push(*release_height);
                store.write(key, &heights);
            }
            Ok(())
        }
        _ => v1::apply_payload(exec, store, params, env, tx, events),
    }
}

#[allow(clippy::too_many_arguments)]
fn open_challenge(
    exec: &Executor,
    store: &mut Store<'_, '_>,
    params: &Params,
    env: &BlockEnv,
    challenger: &Address,
    session_id: &Hash,
    attestation: &plexus_types::Attestation,
    signature: &plexus_types::Sig,
    transcript: &plexus_types::receipt::Transcript,
    bond: Amount,
    events: &mut Vec<Event>,
) -> Result<(), ExecError> {
    let session = accused_session(exec, store, params, challenger, session_id, attestation, signature, bond)?;
    transcript.matches(attestation).map_err(invalid)?;
    if transcript.output.is_empty() {
        return Err(invalid("a response without output cannot be challenged"));
    }
    open(store, params, env, challenger, session_id, session, attestation, transcript.clone(), bond, events)?;
    Ok(())
}

/// The first checks of every challenge: the bond, the session, that its client challenges and
/// that its provider signed the attestation, for the session's model. Returns the session.
#[allow(clippy::too_many_arguments)]
pub(crate) fn accused_session(
    exec: &Executor,
    store: &mut Store<'_, '_>,
    params: &Params,
    challenger: &Address,
    session_id: &Hash,
    attestation: &plexus_types::Attestation,
    signature: &plexus_types::Sig,
    bond: Amount,
) -> Result<Session, ExecError> {
    if bond < params.challenge_bond_min {
        return Err(invalid(format!("bond {bond} is below challenge_bond_min {}", params.challenge_bond_min)));
    }
    let session: Session =
        store.read(&keys::session(session_id)).ok_or_else(|| ExecError::NotFound(format!("session {session_id}")))?;
    if &session.client != challenger {
        return Err(ExecError::Forbidden("only the session's client challenges its responses".into()));
    }
    if !attestation.verify(&session.provider, signature, exec.chain_id()) {
        return Err(invalid("the attestation is not signed by the session's provider"));
    }
    if attestation.model != session.model {
        return Err(invalid("the attestation is for another model than the session's"));
    }
    Ok(session)
}

/// Opens a challenge whose evidence checked: once per attestation, with a committee drawn
/// without the accused, the bond locked until the verdict. Returns the challenge's id.
#[allow(clippy::too_many_arguments)]
pub(crate) fn open(
    store: &mut Store<'_, '_>,
    params: &Params,
    env: &BlockEnv,
    challenger: &Address,
    session_id: &Hash,
    session: Session,
    attestation: &plexus_types::Attestation,
    transcript: plexus_types::receipt::Transcript,
    bond: Amount,
    events: &mut Vec<Event>,
) -> Result<u64, ExecError> {
    let att_hash = attestation.hash();
    if store.overlay.get(&keys::challenge_by_attestation(&att_hash)).is_some() {
        return Err(invalid("this response was challenged already"));
    }
    let id: u64 = store.read(keys::CHALLENGES).unwrap_or(0);
    let committee = draw_committee(store, params, &session.provider, id);
    if committee.is_empty() {
        return Err(invalid("no validator other than the accused can judge"));
    }
    store.debit(challenger, bond, Bucket::Deposits)?;
    let deadline = env.height.saturating_add(params.challenge_window_blocks as u64);
    let challenge = Challenge {
        challenger: challenger.clone(),
        provider: session.provider.clone(),
        session: *session_id,
        attestation: attestation.clone(),
        transcript,
        bond,
        opened_height: env.height,
        deadline_height: deadline,
        committee: committee.clone(),
        votes: Vec::new(),
        status: ChallengeStatus::Open,
        slashed: 0,
        refunded: 0,
        reward: 0,
    };
    store.write(keys::challenge(id), &challenge);
    store.write(keys::CHALLENGES.to_vec(), &(id + 1));
    store.write(keys::challenge_by_attestation(&att_hash), &id);
    schedule_deadline(store, id, deadline);
    events.push(Event::ChallengeOpened {
        challenge: id,
        provider: session.provider,
        challenger: challenger.clone(),
        committee,
        deadline_height: deadline,
    });
    Ok(id)
}

/// `challenge_committee_size` validators of the current epoch, not `accused`, ranked by a hash
/// of the beacon, the challenge and their address.
fn draw_committee(store: &Store<'_, '_>, params: &Params, accused: &Address, id: u64) -> Vec<Address> {
    let beacon: Hash = store.read(keys::BEACON).unwrap_or(Hash::ZERO);
    let epoch = store.chain().epoch;
    let set = store.validators(epoch).unwrap_or_default();
    let mut ranked: Vec<(Hash, Address)> = set
        .0
        .iter()
        .filter(|v| &v.address != accused)
        .map(|v| {
            (
                hash_parts(&[b"plexus/committee/v1", beacon.as_bytes(), &id.to_be_bytes(), v.address.as_bytes()]),
                v.address.clone(),
            )
        })
        .collect();
    ranked.sort();
    let size = (params.challenge_committee_size as usize).min(crate::state::COMMITTEE_MAX);
    ranked.into_iter().take(size).map(|(_, a)| a).collect()
}

fn schedule_deadline(store: &mut Store<'_, '_>, id: u64, mut height: Height) {
    loop {
        let key = keys::challenge_deadline(height);
        let mut list: IdList = store.read(&key).unwrap_or_default();
        if list.0.len() < limits::SCHEDULE_BUCKET_MAX {
            list.0.push(id);
            store.write(key, &list);
            return;
        }
        height += 1;
    }
}

fn vote(
    store: &mut Store<'_, '_>,
    params: &Params,
    env: &BlockEnv,
    voter: &Address,
    id: u64,
    guilty: bool,
    events: &mut Vec<Event>,
) -> Result<(), ExecError> {
    let mut c: Challenge =
        store.read(&keys::challenge(id)).ok_or_else(|| ExecError::NotFound(format!("challenge {id}")))?;
    if c.status != ChallengeStatus::Open || env.height > c.deadline_height {
        return Err(invalid(format!("challenge {id} is decided")));
    }
    if !c.committee.contains(voter) {
        return Err(ExecError::Forbidden(format!("{voter} is not on challenge {id}'s committee")));
    }
    if c.votes.iter().any(|(v, _)| v == voter) {
        return Err(invalid(format!("{voter} voted on challenge {id} already")));
    }
    c.votes.push((voter.clone(), guilty));
    events.push(Event::ChallengeVoted { challenge: id, voter: voter.clone(), guilty });
    let majority = c.committee.len() / 2 + 1;
    let guilty_votes = c.votes.iter().filter(|(_, g)| *g).count();
    let innocent_votes = c.votes.len() - guilty_votes;
    if guilty_votes >= majority || innocent_votes >= majority {
        resolve(store, params, env, id, &mut c, events)?;
    }
    store.write(keys::challenge(id), &c);
    Ok(())
}

/// Decides a challenge on the votes it has: a majority of the committee for guilty convicts.
fn resolve(
    store: &mut Store<'_, '_>,
    params: &Params,
    env: &BlockEnv,
    id: u64,
    c: &mut Challenge,
    events: &mut Vec<Event>,
) -> Result<(), ExecError> {
    let guilty = c.votes.iter().filter(|(_, g)| *g).count() > c.committee.len() / 2;
    let mut stats: ProviderStats = store.read(&keys::provider_stats(&c.provider)).unwrap_or_default();
    if guilty {
        // The bond comes back; the provider pays.
        store.credit(&c.challenger, c.bond, Bucket::Deposits)?;
        let slashed = slash(store, params, env, &c.provider, params.fault_slash_bps)?;
        let session: Option<Session> = store.read(&keys::session(&c.session));
        let cost = session
            .and_then(|s| {
                crate::price_of(&s.price, u64::from(c.attestation.input_tokens), u64::from(c.attestation.output_tokens))
            })
            .unwrap_or(0);
        let refund = cost.min(slashed);
        let reward = crate::gov::share(slashed - refund, params.challenger_reward_bps);
        // The client is the challenger: refund and reward both go to it.
        pay_out(store, &c.challenger, refund + reward, slashed - refund - reward)?;
        c.status = ChallengeStatus::Convicted;
        (c.slashed, c.refunded, c.reward) = (slashed, refund, reward);
        stats.convicted += 1;
        stats.slashed = stats.slashed.saturating_add(slashed);
    } else {
        // A false accusation costs the accuser its bond, to the accused.
        store.credit(&c.provider, c.bond, Bucket::Deposits)?;
        c.status = ChallengeStatus::Acquitted;
        stats.acquitted += 1;
    }
    store.write(keys::provider_stats(&c.provider), &stats);
    events.push(Event::ChallengeResolved {
        challenge: id,
        provider: c.provider.clone(),
        guilty,
        slashed: c.slashed,
        refunded: c.refunded,
        reward: c.reward,
    });
    Ok(())
}

/// Takes `bps` of `offender`'s stake: bonded first, then what it unbonds (entries made under
/// this version). The slashed amount leaves the stake buckets for the balances bucket, from
/// which [`pay_out`] hands it on. Returns how much was taken.
fn slash(
    store: &mut Store<'_, '_>,
    params: &Params,
    env: &BlockEnv,
    offender: &Address,
    bps: u128,
) -> Result<Amount, ExecError> {
    let mut stake = store.stake(offender);
    let unbonding = unbonding_entries(store, offender, env.height);
    let unbonding_total: Amount = unbonding.iter().map(|(_, a)| *a).fold(0, Amount::saturating_add);
    let due = crate::gov::share(stake.bonded.saturating_add(unbonding_total), bps);
    let from_bonded = due.min(stake.bonded);
    if from_bonded > 0 {
        stake.bonded -= from_bonded;
        store.shift(from_bonded, Bucket::Bonded, Bucket::Balances)?;
        after_bond_change(store, params, offender, &stake);
    }
    let mut rest = due - from_bonded;
    for (release, _) in unbonding {
        if rest == 0 {
            break;
        }
        let key = keys::unbonding(release);
        let mut bucket: UnbondingBucket = store.read(&key).unwrap_or_default();
        for (staker, amount) in bucket.0.iter_mut() {
            if staker == offender && rest > 0 {
                let take = (*amount).min(rest);
                *amount -= take;
                rest -= take;
                store.shift(take, Bucket::Unbonding, Bucket::Balances)?;
            }
        }
        bucket.0.retain(|(_, a)| *a > 0);
        if bucket.0.is_empty() {
            store.overlay.delete(key);
        } else {
            store.write(key, &bucket);
        }
    }
    Ok(due - rest)
}

/// Release heights of a staker's unbonding tracked for slashing: the latest this many (older
/// ones have usually matured; stake behind a dropped height can no longer be slashed).
const UNBONDING_TRACKED_MAX: usize = 64;

/// The heights (from now on) at which `staker` has stake unbonding, with the amounts.
fn unbonding_entries(store: &Store<'_, '_>, staker: &Address, now: Height) -> Vec<(Height, Amount)> {
    let mut out = Vec::new();
    let heights: HeightList = store.read(&keys::unbonding_of(staker)).unwrap_or_default();
    for release in heights.0 {
        if release <= now {
            continue;
        }
        let bucket: UnbondingBucket = store.read(&keys::unbonding(release)).unwrap_or_default();
        let amount: Amount = bucket.0.iter().filter(|(a, _)| a == staker).map(|(_, x)| *x).sum();
        if amount > 0 {
            out.push((release, amount));
        }
    }
    out
}

/// Keeps the staker index and the provider registry in line with a stake that just shrank.
fn after_bond_change(store: &mut Store<'_, '_>, params: &Params, staker: &Address, stake: &crate::state::Stake) {
    if stake.bonded < params.min_stake {
        let mut stakers: AddressList = store.read(keys::STAKERS).unwrap_or_default();
        if let Ok(pos) = stakers.0.binary_search(staker) {
            stakers.0.remove(pos);
            store.write(keys::STAKERS.to_vec(), &stakers);
        }
    }
    if stake.bonded == 0 {
        store.overlay.delete(keys::stake(staker));
    } else {
        store.write(keys::stake(staker), stake);
    }
    if stake.bonded < params.min_provider_stake && store.read::<Provider>(&keys::provider(staker)).is_some() {
        store.overlay.delete(keys::provider(staker));
    }
}

/// Hands out a slash that [`slash`] moved into the balances bucket: `to_party` to one account,
/// the rest to the treasury.
fn pay_out(store: &mut Store<'_, '_>, party: &Address, to_party: Amount, to_treasury: Amount) -> Result<(), ExecError> {
    // `slash` added the amount to the balances bucket without crediting anyone: hand it on.
    let mut supply = store.supply();
    supply.balances = supply.balances.checked_sub(to_treasury.saturating_add(to_party)).ok_or(ExecError::Overflow)?;
    supply.treasury = supply.treasury.checked_add(to_treasury).ok_or(ExecError::Overflow)?;
    supply.balances = supply.balances.checked_add(to_party).ok_or(ExecError::Overflow)?;
    store.set_supply(&supply);
    if to_party > 0 {
        let mut account = store.account(party);
        account.balance = account.balance.checked_add(to_party).ok_or(ExecError::Overflow)?;
        store.set_account(party, &account);
    }
    Ok(())
}

/// After the block's transactions: stir the beacon, and decide the challenges whose vote ends
/// here.
pub(crate) fn before_end(
    overlay: &mut Overlay<'_>,
    params: &Params,
    env: &BlockEnv,
    txs: &[SignedTx],
    events: &mut Vec<Event>,
) -> Result<(), BlockError> {
    let mut store = Store::new(overlay);
    let beacon: Hash = store.read(keys::BEACON).unwrap_or(Hash::ZERO);
    let tx_hashes: Vec<u8> = txs.iter().flat_map(|t| t.hash().as_bytes().to_vec()).collect();
    let next = hash_parts(&[
        b"plexus/beacon/v1",
        beacon.as_bytes(),
        &env.height.to_be_bytes(),
        env.proposer.as_bytes(),
        &tx_hashes,
    ]);
    store.write(keys::BEACON.to_vec(), &next);
    let key = keys::challenge_deadline(env.height);
    let Some(due) = store.read::<IdList>(&key) else { return Ok(()) };
    store.overlay.delete(key);
    for id in due.0 {
        let Some(mut c) = store.read::<Challenge>(&keys::challenge(id)) else { continue };
        if c.status != ChallengeStatus::Open {
            continue;
        }
        resolve(&mut store, params, env, id, &mut c, events).map_err(|e| BlockError::Invariant(e.to_string()))?;
        store.write(keys::challenge(id), &c);
    }
    Ok(())
}
