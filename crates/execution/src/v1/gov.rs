//! Governance of execution version 1: proposals, stake-weighted votes, tallies, parameter
//! changes and upgrade activation. Frozen with the rest of version 1 (see `super`); the records
//! it reads and writes are defined in [`crate::gov`].
//!
//! Who votes: accounts whose bonded stake is at least `min_stake` (the validator candidates),
//! and the validators of the current epoch whatever `min_stake` became, so that raising it can
//! always be voted back. A vote weighs the voter's bonded stake when the vote closes, if the
//! voter is still eligible then; dust stake neither votes nor fills the voter list (a full list
//! takes a larger staker in place of its smallest one). Each counted voter of a decided proposal
//! is paid `voter_reward` (never above `min_tx_fee`, so a vote refunds its fee and earns
//! nothing more) from the treasury while it lasts.
//!
//! A passed parameter change is checked again when it takes effect, against the parameters in
//! force then; one that would leave them out of range or inconsistent is skipped and recorded.

use plexus_types::params::FIXED_AT_GENESIS;
use plexus_types::tx::{ProposalKind, VoteOption};
use plexus_types::version::{Layer, SupportedVersions};
use plexus_types::{Address, Amount, Height, Params};

use crate::gov::{
    GovMeta, OPEN_PROPOSALS_MAX, PARAM_CHANGES_PER_HEIGHT_MAX, PENDING_UPGRADES_MAX, ParamChanges, Proposal,
    ProposalStatus, Signal, Upgrade, UpgradeStatus, VOTERS_MAX, clip, layer_index, meta, proposal, readiness, share,
    upgrade,
};
use crate::state::{Bucket, Store, keys};
use crate::{BlockEnv, BlockError, Event, ExecError};

fn invalid(msg: impl Into<String>) -> ExecError {
    ExecError::Invalid(msg.into())
}

/// The stake `a` votes with now: its bonded stake if it is a validator candidate or a validator
/// of the current epoch, otherwise nothing.
fn voting_weight(store: &Store<'_, '_>, params: &Params, a: &Address) -> Amount {
    let bonded = store.stake(a).bonded;
    if bonded == 0 {
        return 0;
    }
    if bonded >= params.min_stake {
        return bonded;
    }
    let epoch = store.chain().epoch;
    if store.validators(epoch).is_some_and(|set| set.contains(a)) { bonded } else { 0 }
}

// ---- transactions ----

pub(crate) fn submit(
    store: &mut Store<'_, '_>,
    params: &Params,
    env: &BlockEnv,
    signer: &Address,
    kind: &ProposalKind,
    deposit: Amount,
    events: &mut Vec<Event>,
) -> Result<(), ExecError> {
    if deposit < params.proposal_deposit_min {
        return Err(invalid(format!(
            "deposit {deposit} is below proposal_deposit_min {}",
            params.proposal_deposit_min
        )));
    }
    let voting_end = env.height + params.voting_period_blocks as u64;
    match kind {
        ProposalKind::ParamChange { name, value, effective_height } => {
            if FIXED_AT_GENESIS.contains(&name.as_str()) {
                return Err(invalid(format!("{name} is fixed at genesis in consensus version 1")));
            }
            params.with(name, *value).map_err(|e| invalid(e.to_string()))?;
            if *effective_height <= voting_end {
                return Err(invalid(format!("effective_height must be after the vote closes at {voting_end}")));
            }
        }
        ProposalKind::Upgrade { layer, version, activation_height, deadline_height } => {
            let current = store.versions().get(*layer);
            if !crate::gov::may_move_to(*layer, current, *version, store.versions().execution) {
                return Err(invalid(format!(
                    "{} is at version {current}; an upgrade goes to {}{}",
                    layer.name(),
                    current + 1,
                    match crate::gov::downgrades_allowed(*layer, current, store.versions().execution) {
                        true => format!(" (or back to {})", current - 1),
                        false => String::new(),
                    }
                )));
            }
            if *activation_height <= voting_end {
                return Err(invalid(format!("activation_height must be after the vote closes at {voting_end}")));
            }
            if deadline_height <= activation_height {
                return Err(invalid("deadline_height must be after activation_height"));
            }
        }
        ProposalKind::TreasurySpend { amount, .. } => {
            if *amount == 0 {
                return Err(invalid("a treasury spend must be positive"));
            }
        }
        ProposalKind::Text { text } => {
            if text.trim().is_empty() {
                return Err(invalid("a text proposal needs text"));
            }
        }
    }
    let mut meta = meta(store);
    if meta.open.len() >= OPEN_PROPOSALS_MAX {
        return Err(ExecError::Forbidden(format!(
            "{OPEN_PROPOSALS_MAX} proposals are already open; wait for one to close"
        )));
    }
    store.debit(signer, deposit, Bucket::Deposits)?;
    let id = meta.next_proposal;
    meta.next_proposal += 1;
    meta.open.push(id);
    store.write(keys::GOVERNANCE.to_vec(), &meta);
    store.write(
        keys::proposal(id),
        &Proposal {
            proposer: signer.clone(),
            kind: kind.clone(),
            deposit,
            submit_height: env.height,
            voting_end,
            status: ProposalStatus::Voting,
            voters: Vec::new(),
            yes: 0,
            no: 0,
            abstain: 0,
            veto: 0,
            outcome: String::new(),
        },
    );
    events.push(Event::ProposalSubmitted { proposal: id, proposer: signer.clone(), voting_end });
    Ok(())
}

pub(crate) fn vote(
    store: &mut Store<'_, '_>,
    params: &Params,
    env: &BlockEnv,
    signer: &Address,
    id: u64,
    option: VoteOption,
    events: &mut Vec<Event>,
) -> Result<(), ExecError> {
    let mut p = proposal(store, id).ok_or_else(|| ExecError::NotFound(format!("proposal {id}")))?;
    if p.status != ProposalStatus::Voting || env.height > p.voting_end {
        return Err(invalid(format!("proposal {id} is not open for votes")));
    }
    let weight = voting_weight(store, params, signer);
    if weight == 0 {
        return Err(ExecError::Forbidden(format!(
            "only validators and accounts with at least min_stake ({}) bonded vote",
            params.min_stake
        )));
    }
    if p.voters.binary_search(signer).is_err() {
        if p.voters.len() >= VOTERS_MAX {
            // Full: the new voter takes the place of the smallest one, if it weighs more.
            let (smallest, least) = p
                .voters
                .iter()
                .enumerate()
                .map(|(i, v)| (i, voting_weight(store, params, v)))
                .min_by_key(|&(i, w)| (w, std::cmp::Reverse(i)))
                .expect("a full voter list is not empty");
            if least >= weight {
                return Err(ExecError::Forbidden(format!(
                    "proposal {id} has {VOTERS_MAX} voters, none with less stake than {weight}"
                )));
            }
            let displaced = p.voters.remove(smallest);
            store.overlay.delete(keys::vote(id, &displaced));
        }
        let at = p.voters.binary_search(signer).unwrap_or_else(|at| at);
        p.voters.insert(at, signer.clone());
        store.write(keys::proposal(id), &p);
    }
    store.write(keys::vote(id, signer), &option);
    events.push(Event::Voted { proposal: id, voter: signer.clone(), option });
    Ok(())
}

pub(crate) fn signal_versions(
    store: &mut Store<'_, '_>,
    env: &BlockEnv,
    signer: &Address,
    versions: SupportedVersions,
    shadow_ok: bool,
    events: &mut Vec<Event>,
) -> Result<(), ExecError> {
    if store.stake(signer).bonded == 0 {
        return Err(ExecError::Forbidden("only stakers signal readiness".into()));
    }
    store.write(keys::signal(signer), &Signal { versions, shadow_ok, height: env.height });
    events.push(Event::VersionsSignalled { staker: signer.clone(), shadow_ok });
    Ok(())
}

// ---- block boundaries ----

/// Start of a block: parameter changes that take effect at this height.
pub(crate) fn begin_block(
    store: &mut Store<'_, '_>,
    height: Height,
    events: &mut Vec<Event>,
) -> Result<(), BlockError> {
    let key = keys::param_changes(height);
    let Some(changes) = store.read::<ParamChanges>(&key) else { return Ok(()) };
    store.overlay.delete(key);
    for (name, value) in changes.0 {
        // Checked again against what is in force now: other changes may have landed since the
        // vote, and together they must still leave the chain able to run and to vote.
        match store.params().with(&name, value) {
            Ok(_) => {
                store.set_param(&name, value);
                events.push(Event::ParamChanged { name, value });
            }
            Err(e) => events.push(Event::ParamChangeRejected { name, value, reason: clip(e.to_string()) }),
        }
    }
    Ok(())
}

/// End of a block: close the votes that end here, then activate or expire upgrades.
pub(crate) fn end_block(
    store: &mut Store<'_, '_>,
    params: &Params,
    env: &BlockEnv,
    events: &mut Vec<Event>,
) -> Result<(), BlockError> {
    let mut meta = meta(store);
    let closing: Vec<u64> = meta
        .open
        .iter()
        .copied()
        .filter(|id| proposal(store, *id).is_some_and(|p| p.voting_end <= env.height))
        .collect();
    if !closing.is_empty() {
        meta.open.retain(|id| !closing.contains(id));
        for id in closing {
            tally(store, params, env, &mut meta, id, events)?;
        }
    }
    let mut still = Vec::new();
    for id in meta.pending.clone() {
        let Some(mut u) = upgrade(store, id) else { continue };
        if env.height + 1 < u.activation_height {
            still.push(id);
            continue;
        }
        u.ready_bps = readiness(store, u.layer, u.version);
        let ready = u128::from(u.ready_bps) >= params.upgrade_readiness_bps;
        let boundary = u.layer != Layer::Consensus || params.is_epoch_last(env.height);
        let current = store.versions().get(u.layer);
        if !crate::gov::may_move_to(u.layer, current, u.version, store.versions().execution) {
            u.status = UpgradeStatus::Expired;
            u.note = clip(format!("{} moved to version {current} meanwhile", u.layer.name()));
            events.push(Event::UpgradeExpired { upgrade: id, layer: u.layer, version: u.version });
        } else if ready && boundary {
            // A schema upgrade migrates the state in this block; one that fails is aborted.
            let migrated = if u.layer == Layer::Data {
                let checkpoint = store.overlay.checkpoint();
                let result = crate::data::migrate(store, u.version)
                    .and_then(|n| crate::data::check(&*store.overlay, u.version).map(|()| n));
                if result.is_err() {
                    store.overlay.restore(checkpoint);
                }
                result.map(Some)
            } else {
                Ok(None)
            };
            match migrated {
                Ok(records) => {
                    let mut versions = store.versions();
                    versions.set(u.layer, u.version);
                    store.write(keys::VERSIONS.to_vec(), &versions);
                    u.status = UpgradeStatus::Active;
                    u.activated_height = env.height + 1;
                    if let Some(n) = records {
                        u.note = clip(format!("migrated {n} records"));
                    }
                    meta.last_activated[layer_index(u.layer)] = id;
                    events.push(Event::UpgradeActivated {
                        upgrade: id,
                        layer: u.layer,
                        version: u.version,
                        height: env.height + 1,
                    });
                }
                Err(reason) => {
                    u.status = UpgradeStatus::Aborted;
                    u.note = clip(format!("migration failed: {reason}"));
                    events.push(Event::UpgradeAborted {
                        layer: u.layer,
                        version: u.version,
                        previous: current,
                        height: env.height,
                        reason: u.note.clone(),
                    });
                }
            }
        } else if env.height >= u.deadline_height {
            u.status = UpgradeStatus::Expired;
            u.note =
                clip(format!("readiness {} bps at the deadline, {} needed", u.ready_bps, params.upgrade_readiness_bps));
            events.push(Event::UpgradeExpired { upgrade: id, layer: u.layer, version: u.version });
        } else {
            still.push(id);
        }
        store.write(keys::upgrade(id), &u);
    }
    meta.pending = still;
    store.write(keys::GOVERNANCE.to_vec(), &meta);
    Ok(())
}

fn tally(
    store: &mut Store<'_, '_>,
    params: &Params,
    env: &BlockEnv,
    meta: &mut GovMeta,
    id: u64,
    events: &mut Vec<Event>,
) -> Result<(), BlockError> {
    let internal = |e: ExecError| BlockError::Invariant(format!("governance: {e}"));
    let mut p = proposal(store, id).expect("open proposals exist");
    let (mut yes, mut no, mut abstain, mut veto) = (0u128, 0u128, 0u128, 0u128);
    let mut counted = Vec::with_capacity(p.voters.len());
    for voter in &p.voters {
        let weight = voting_weight(store, params, voter);
        if weight > 0 {
            counted.push(voter.clone());
        }
        let option: VoteOption = store.read(&keys::vote(id, voter)).expect("every listed voter voted");
        store.overlay.delete(keys::vote(id, voter));
        let slot = match option {
            VoteOption::Yes => &mut yes,
            VoteOption::No => &mut no,
            VoteOption::Abstain => &mut abstain,
            VoteOption::NoWithVeto => &mut veto,
        };
        *slot = slot.saturating_add(weight);
    }
    let voted = yes.saturating_add(no).saturating_add(abstain).saturating_add(veto);
    let bonded = store.supply().bonded;
    (p.yes, p.no, p.abstain, p.veto) = (yes, no, abstain, veto);
    p.status = if voted == 0 || voted < share(bonded, params.quorum_bps) {
        ProposalStatus::NoQuorum
    } else if veto >= share(voted, params.veto_bps) {
        ProposalStatus::Vetoed
    } else if yes > share(yes.saturating_add(no).saturating_add(veto), params.threshold_bps) {
        ProposalStatus::Passed
    } else {
        ProposalStatus::Rejected
    };
    // The deposit: burned on a veto, refunded otherwise.
    if p.status == ProposalStatus::Vetoed {
        store.shift(p.deposit, Bucket::Deposits, Bucket::Burn).map_err(internal)?;
    } else {
        store.credit(&p.proposer, p.deposit, Bucket::Deposits).map_err(internal)?;
    }
    // Voters still eligible at the close are paid from collected fees while they last; never
    // more than a vote's fee, so voting cannot be farmed.
    let mut rewarded = 0;
    let per_voter = params.voter_reward.min(params.min_tx_fee);
    if p.status != ProposalStatus::NoQuorum && per_voter > 0 {
        for voter in &counted {
            let reward = per_voter.min(store.supply().treasury);
            if reward == 0 {
                break;
            }
            store.credit(voter, reward, Bucket::Treasury).map_err(internal)?;
            rewarded += reward;
        }
    }
    p.outcome =
        if p.status == ProposalStatus::Passed { enact(store, env, meta, id, &p.kind, events)? } else { String::new() };
    p.outcome = clip(p.outcome);
    events.push(Event::ProposalDecided {
        proposal: id,
        status: p.status,
        yes,
        no,
        abstain,
        veto,
        voter_rewards: rewarded,
    });
    store.write(keys::proposal(id), &p);
    Ok(())
}

/// Carries out a passed proposal; returns what was done.
fn enact(
    store: &mut Store<'_, '_>,
    env: &BlockEnv,
    meta: &mut GovMeta,
    id: u64,
    kind: &ProposalKind,
    events: &mut Vec<Event>,
) -> Result<String, BlockError> {
    Ok(match kind {
        ProposalKind::ParamChange { name, value, effective_height } => {
            let mut at = (*effective_height).max(env.height + 1);
            loop {
                let key = keys::param_changes(at);
                let mut list: ParamChanges = store.read(&key).unwrap_or_default();
                if list.0.len() < PARAM_CHANGES_PER_HEIGHT_MAX {
                    list.0.push((name.clone(), *value));
                    store.write(key, &list);
                    break;
                }
                at += 1;
            }
            format!("{name} = {value} from height {at}")
        }
        ProposalKind::Upgrade { layer, version, activation_height, deadline_height } => {
            if meta.pending.len() >= PENDING_UPGRADES_MAX {
                return Ok(format!("not scheduled: {PENDING_UPGRADES_MAX} upgrades are already pending"));
            }
            let uid = meta.next_upgrade;
            meta.next_upgrade += 1;
            meta.pending.push(uid);
            store.write(
                keys::upgrade(uid),
                &Upgrade {
                    proposal: id,
                    layer: *layer,
                    version: *version,
                    activation_height: *activation_height,
                    deadline_height: *deadline_height,
                    status: UpgradeStatus::Pending,
                    activated_height: 0,
                    ready_bps: 0,
                    note: String::new(),
                },
            );
            events.push(Event::UpgradeScheduled {
                upgrade: uid,
                layer: *layer,
                version: *version,
                activation_height: *activation_height,
            });
            format!("upgrade {uid}: {} to version {version} from height {activation_height} once ready", layer.name())
        }
        ProposalKind::TreasurySpend { to, amount } => {
            let treasury = store.supply().treasury;
            if treasury < *amount {
                format!("not paid: the treasury holds {treasury}, less than {amount}")
            } else {
                store
                    .credit(to, *amount, Bucket::Treasury)
                    .map_err(|e| BlockError::Invariant(format!("treasury spend: {e}")))?;
                events.push(Event::TreasurySpent { to: to.clone(), amount: *amount });
                format!("paid {amount} to {to}")
            }
        }
        ProposalKind::Text { .. } => "noted".into(),
    })
}
