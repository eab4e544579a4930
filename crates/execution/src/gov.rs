//! Governance and upgrades: the records (proposals, votes, upgrades, readiness signals) and how
//! to read them. The rules that change them belong to an execution version (`v1::gov`), so a new
//! version can change the rules without editing the old ones. The rules of version 1:
//!
//! Rules, all in integers:
//! - A proposal locks `deposit >= proposal_deposit_min` in the Deposits bucket and is open for
//!   `voting_period_blocks`. Any account with bonded stake votes yes / no / abstain / veto; a
//!   later vote replaces an earlier one. Weights are bonded stake when the vote closes. Only
//!   validator candidates (at least `min_stake` bonded) and current validators vote.
//! - At the close: turnout below `quorum_bps` of all bonded stake → no quorum (deposit
//!   refunded); veto at or above `veto_bps` of the votes → vetoed (deposit burned); yes above
//!   `threshold_bps` of yes+no+veto → passed (refunded); otherwise rejected (refunded). Voters of
//!   a decided proposal are paid `voter_reward` (at most `min_tx_fee`) each from the treasury
//!   while it lasts.
//! - A passed parameter change applies at the start of its `effective_height` (the next block
//!   if that has passed). A passed upgrade activates at its `activation_height` or the first
//!   block after it at which stakers holding `upgrade_readiness_bps` of validator-candidate stake
//!   have signalled support (for execution: with a passing shadow run); consensus upgrades only
//!   at an epoch boundary. If it is not ready by `deadline_height` it expires: never a halt.
//!
//! Invariant: deposits of open proposals equal the Deposits bucket of the supply.

use bytes::BufMut;
use commonware_codec::{Buf, EncodeSize, Error as CodecError, Read, ReadExt, Write};
use plexus_types::codec::{read_str, read_vec, str_size, write_str};
use plexus_types::params::limits;
use plexus_types::tx::ProposalKind;
use plexus_types::version::{Layer, SupportedVersions};
use plexus_types::{Address, Amount, Height};
use serde::Serialize;

use crate::Event;
use crate::state::{AddressList, Store, keys};

/// Most proposals open for votes at once (bounds the work of every block).
pub const OPEN_PROPOSALS_MAX: usize = 64;
/// Most approved upgrades waiting for activation at once.
pub const PENDING_UPGRADES_MAX: usize = 16;
/// Most distinct voters on one proposal (every staker can vote).
pub const VOTERS_MAX: usize = limits::STAKERS_MAX;
/// Most parameter changes taking effect at one height.
pub const PARAM_CHANGES_PER_HEIGHT_MAX: usize = 64;

/// Where a proposal stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalStatus {
    Voting,
    Passed,
    Rejected,
    Vetoed,
    NoQuorum,
}

/// Where an approved upgrade stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeStatus {
    /// Waiting for its height and for readiness.
    Pending,
    Active,
    /// Not ready by its deadline.
    Expired,
    /// Activated, then failed under the new version and rolled back.
    Aborted,
}

/// Counters and indexes of the governance module.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GovMeta {
    pub next_proposal: u64,
    pub next_upgrade: u64,
    /// Proposals open for votes, oldest first.
    pub open: Vec<u64>,
    /// Upgrades approved and not yet active or expired.
    pub pending: Vec<u64>,
    /// The last activated upgrade of each layer (0 = none), in [`Layer::ALL`] order.
    pub last_activated: [u64; 4],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Proposal {
    pub proposer: Address,
    pub kind: ProposalKind,
    pub deposit: Amount,
    pub submit_height: Height,
    pub voting_end: Height,
    pub status: ProposalStatus,
    pub voters: Vec<Address>,
    pub yes: Amount,
    pub no: Amount,
    pub abstain: Amount,
    pub veto: Amount,
    /// What happened when it was decided (effects applied, or why not).
    pub outcome: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Upgrade {
    pub proposal: u64,
    pub layer: Layer,
    pub version: u16,
    pub activation_height: Height,
    pub deadline_height: Height,
    pub status: UpgradeStatus,
    /// The first height executed under the new version (0 until active).
    pub activated_height: Height,
    /// Readiness last measured, in basis points of candidate stake.
    pub ready_bps: u64,
    pub note: String,
}

/// What a staker's binary supports, as it last signalled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Signal {
    pub versions: SupportedVersions,
    /// Its shadow run of the pending execution version passed.
    pub shadow_ok: bool,
    pub height: Height,
}

/// Parameter changes that take effect at one height.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParamChanges(pub Vec<(String, u128)>);

// ---- encoding ----

fn write_u64s(v: &[u64], buf: &mut impl BufMut) {
    v.to_vec().write(buf)
}

impl Write for GovMeta {
    fn write(&self, buf: &mut impl BufMut) {
        self.next_proposal.write(buf);
        self.next_upgrade.write(buf);
        write_u64s(&self.open, buf);
        write_u64s(&self.pending, buf);
        for x in self.last_activated {
            x.write(buf);
        }
    }
}
impl EncodeSize for GovMeta {
    fn encode_size(&self) -> usize {
        16 + self.open.encode_size() + self.pending.encode_size() + 32
    }
}
impl Read for GovMeta {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let next_proposal = u64::read(buf)?;
        let next_upgrade = u64::read(buf)?;
        let open = read_vec(buf, OPEN_PROPOSALS_MAX, &())?;
        let pending = read_vec(buf, PENDING_UPGRADES_MAX, &())?;
        let mut last_activated = [0u64; 4];
        for x in &mut last_activated {
            *x = u64::read(buf)?;
        }
        Ok(GovMeta { next_proposal, next_upgrade, open, pending, last_activated })
    }
}

fn status_tag(s: ProposalStatus) -> u8 {
    match s {
        ProposalStatus::Voting => 0,
        ProposalStatus::Passed => 1,
        ProposalStatus::Rejected => 2,
        ProposalStatus::Vetoed => 3,
        ProposalStatus::NoQuorum => 4,
    }
}

fn upgrade_tag(s: UpgradeStatus) -> u8 {
    match s {
        UpgradeStatus::Pending => 0,
        UpgradeStatus::Active => 1,
        UpgradeStatus::Expired => 2,
        UpgradeStatus::Aborted => 3,
    }
}

/// Longest outcome or note text stored, in bytes.
const NOTE_BYTES_MAX: usize = 512;

pub(crate) fn clip(mut s: String) -> String {
    if s.len() > NOTE_BYTES_MAX {
        let mut end = NOTE_BYTES_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Write for Proposal {
    fn write(&self, buf: &mut impl BufMut) {
        self.proposer.write(buf);
        self.kind.write(buf);
        self.deposit.write(buf);
        self.submit_height.write(buf);
        self.voting_end.write(buf);
        status_tag(self.status).write(buf);
        self.voters.write(buf);
        self.yes.write(buf);
        self.no.write(buf);
        self.abstain.write(buf);
        self.veto.write(buf);
        write_str(&self.outcome, buf);
    }
}
impl EncodeSize for Proposal {
    fn encode_size(&self) -> usize {
        32 + self.kind.encode_size() + 16 + 8 + 8 + 1 + self.voters.encode_size() + 64 + str_size(&self.outcome)
    }
}
impl Read for Proposal {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(Proposal {
            proposer: Address::read(buf)?,
            kind: ProposalKind::read(buf)?,
            deposit: u128::read(buf)?,
            submit_height: u64::read(buf)?,
            voting_end: u64::read(buf)?,
            status: match u8::read(buf)? {
                0 => ProposalStatus::Voting,
                1 => ProposalStatus::Passed,
                2 => ProposalStatus::Rejected,
                3 => ProposalStatus::Vetoed,
                4 => ProposalStatus::NoQuorum,
                t => return Err(CodecError::InvalidEnum(t)),
            },
            voters: read_vec(buf, VOTERS_MAX, &())?,
            yes: u128::read(buf)?,
            no: u128::read(buf)?,
            abstain: u128::read(buf)?,
            veto: u128::read(buf)?,
            outcome: read_str(buf, NOTE_BYTES_MAX)?,
        })
    }
}

impl Write for Upgrade {
    fn write(&self, buf: &mut impl BufMut) {
        self.proposal.write(buf);
        self.layer.write(buf);
        self.version.write(buf);
        self.activation_height.write(buf);
        self.deadline_height.write(buf);
        upgrade_tag(self.status).write(buf);
        self.activated_height.write(buf);
        self.ready_bps.write(buf);
        write_str(&self.note, buf);
    }
}
impl EncodeSize for Upgrade {
    fn encode_size(&self) -> usize {
        8 + 1 + 2 + 8 + 8 + 1 + 8 + 8 + str_size(&self.note)
    }
}
impl Read for Upgrade {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(Upgrade {
            proposal: u64::read(buf)?,
            layer: Layer::read(buf)?,
            version: u16::read(buf)?,
            activation_height: u64::read(buf)?,
            deadline_height: u64::read(buf)?,
            status: match u8::read(buf)? {
                0 => UpgradeStatus::Pending,
                1 => UpgradeStatus::Active,
                2 => UpgradeStatus::Expired,
                3 => UpgradeStatus::Aborted,
                t => return Err(CodecError::InvalidEnum(t)),
            },
            activated_height: u64::read(buf)?,
            ready_bps: u64::read(buf)?,
            note: read_str(buf, NOTE_BYTES_MAX)?,
        })
    }
}

impl Write for Signal {
    fn write(&self, buf: &mut impl BufMut) {
        self.versions.write(buf);
        self.shadow_ok.write(buf);
        self.height.write(buf);
    }
}
impl EncodeSize for Signal {
    fn encode_size(&self) -> usize {
        16 + 1 + 8
    }
}
impl Read for Signal {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(Signal { versions: SupportedVersions::read(buf)?, shadow_ok: bool::read(buf)?, height: u64::read(buf)? })
    }
}

impl Write for ParamChanges {
    fn write(&self, buf: &mut impl BufMut) {
        (self.0.len() as u32).write(buf);
        for (name, value) in &self.0 {
            write_str(name, buf);
            value.write(buf);
        }
    }
}
impl EncodeSize for ParamChanges {
    fn encode_size(&self) -> usize {
        4 + self.0.iter().map(|(n, _)| str_size(n) + 16).sum::<usize>()
    }
}
impl Read for ParamChanges {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let n = u32::read(buf)? as usize;
        if n > PARAM_CHANGES_PER_HEIGHT_MAX {
            return Err(CodecError::Invalid("param changes", "too many"));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((read_str(buf, plexus_types::tx::PARAM_NAME_BYTES_MAX)?, u128::read(buf)?));
        }
        Ok(ParamChanges(out))
    }
}

// ---- reading ----

pub fn meta(store: &Store<'_, '_>) -> GovMeta {
    store.read(keys::GOVERNANCE).unwrap_or_default()
}

pub fn proposal(store: &Store<'_, '_>, id: u64) -> Option<Proposal> {
    store.read(&keys::proposal(id))
}

pub fn upgrade(store: &Store<'_, '_>, id: u64) -> Option<Upgrade> {
    store.read(&keys::upgrade(id))
}

pub fn signal(store: &Store<'_, '_>, a: &Address) -> Option<Signal> {
    store.read(&keys::signal(a))
}

pub(crate) fn layer_index(layer: Layer) -> usize {
    Layer::ALL.iter().position(|l| *l == layer).expect("every layer is in ALL")
}

/// `a * bps / 10_000`, rounded down, without overflow.
pub(crate) fn share(a: Amount, bps: u128) -> Amount {
    a / 10_000 * bps + a % 10_000 * bps / 10_000
}

/// Readiness for `layer` at `version`, in basis points of validator-candidate stake.
pub fn readiness(store: &Store<'_, '_>, layer: Layer, version: u16) -> u64 {
    let stakers: AddressList = store.read(keys::STAKERS).unwrap_or_default();
    let (mut ready, mut total) = (0u128, 0u128);
    for a in &stakers.0 {
        let bonded = store.stake(a).bonded;
        total = total.saturating_add(bonded);
        // Execution versions and data migrations are dry-run by nodes before they signal.
        let shadowed = matches!(layer, Layer::Execution | Layer::Data);
        let supports =
            signal(store, a).is_some_and(|s| s.versions.get(layer).contains(version) && (!shadowed || s.shadow_ok));
        if supports {
            ready = ready.saturating_add(bonded);
        }
    }
    if total == 0 {
        return 0;
    }
    // ready <= total, so the quotient is at most 10_000.
    (ready.saturating_mul(10_000) / total) as u64
}

/// Whether governance may move `layer` from version `current` to `version`: one version up, or,
/// from execution v6, consensus and network one version back down. Those two have no automatic
/// rollback (a misbehaving consensus or network version is seen by people, not by a check every
/// node runs on every block), so the way back is a downgrade that token holders can always vote:
/// every binary that runs the newer version runs the older one too, so it is ready as soon as the
/// stake that signalled anything is. Execution rolls back by itself; data migrations are not
/// reversible.
pub fn may_move_to(layer: Layer, current: u16, version: u16, execution: u16) -> bool {
    version == current + 1 || (downgrades_allowed(layer, current, execution) && version + 1 == current)
}

/// Whether `layer` at `current` may be voted one version back down under `execution`.
pub fn downgrades_allowed(layer: Layer, current: u16, execution: u16) -> bool {
    execution >= crate::CONSENSUS_KEYS_SINCE && matches!(layer, Layer::Consensus | Layer::Network) && current > 1
}

/// Who signs consensus votes in an epoch, and how: a pure function of committed state, the same
/// whenever a node reads it (after the epoch's validator set is chosen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochConsensus {
    /// The consensus version the epoch runs.
    pub version: u16,
    /// Version 2 and later: every validator of the epoch with the BLS key it registered before the
    /// epoch's first block, in validator-set order. Empty for version 1.
    pub keys: Vec<(Address, Vec<u8>)>,
}

/// The consensus version and committee keys of `epoch` (`None` before its validator set is
/// chosen).
///
/// The version is that of the last consensus upgrade active from the epoch's first height or
/// earlier (consensus upgrades activate only at epoch boundaries and never abort), else the one
/// before the first upgrade, else the version active now. A version-2 epoch runs version 1 unless
/// every one of its validators registered a key before it began (execution v6 elects only keyed
/// candidates under consensus v2, so this is the rare case of nobody having one): its quorum is
/// always counted over the whole validator set. Every node reads the same records.
pub fn epoch_consensus(store: &Store<'_, '_>, epoch: u64) -> Option<EpochConsensus> {
    let set = store.validators(epoch)?;
    let first = epoch.saturating_mul(store.params().epoch_length_blocks as u64);
    let meta = meta(store);
    let mut activations: Vec<(Height, u16)> = (0..meta.next_upgrade)
        .filter_map(|id| upgrade(store, id))
        .filter(|u| u.layer == Layer::Consensus && u.status == UpgradeStatus::Active)
        .map(|u| (u.activated_height, u.version))
        .collect();
    activations.sort();
    let version = match activations.iter().rev().find(|(at, _)| *at <= first) {
        Some((_, v)) => *v,
        None => match activations.first() {
            Some((_, v)) => v.saturating_sub(1).max(1),
            None => store.versions().consensus,
        },
    };
    if version < 2 {
        return Some(EpochConsensus { version, keys: Vec::new() });
    }
    // The committee is the whole validator set or nothing: a quorum counted over a subset would
    // give the faulty validators a larger share of it than of the set.
    let keys: Option<Vec<(Address, Vec<u8>)>> = set
        .0
        .iter()
        .map(|v| {
            let k = store.consensus_key(&v.address)?;
            (k.registered_height < first).then(|| (v.address.clone(), k.key))
        })
        .collect();
    Some(match keys {
        Some(keys) if !keys.is_empty() => EpochConsensus { version, keys },
        _ => EpochConsensus { version: 1, keys: Vec::new() },
    })
}

/// Records that execution `version` failed at `height` and the chain went back to `previous`.
pub(crate) fn record_abort(
    store: &mut Store<'_, '_>,
    version: u16,
    previous: u16,
    height: Height,
    reason: &str,
    events: &mut Vec<Event>,
) {
    let mut versions = store.versions();
    versions.set(Layer::Execution, previous);
    store.write(keys::VERSIONS.to_vec(), &versions);
    let meta = meta(store);
    let id = meta.last_activated[layer_index(Layer::Execution)];
    if let Some(mut u) = upgrade(store, id).filter(|u| u.version == version) {
        u.status = UpgradeStatus::Aborted;
        u.note = clip(format!("failed at height {height}: {reason}; back to version {previous}"));
        store.write(keys::upgrade(id), &u);
    }
    events.push(Event::UpgradeAborted {
        layer: Layer::Execution,
        version,
        previous,
        height,
        reason: clip(reason.to_string()),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_round_down_without_overflow() {
        assert_eq!(share(10_000, 3_340), 3_340);
        assert_eq!(share(3, 5_000), 1);
        assert_eq!(share(u128::MAX, 10_000), u128::MAX);
    }

    #[test]
    fn records_roundtrip() {
        use commonware_codec::{Copying, DecodeExt};
        let a = plexus_types::PrivateKey::from_seed(1).address();
        let p = Proposal {
            proposer: a.clone(),
            kind: ProposalKind::Upgrade {
                layer: Layer::Execution,
                version: 2,
                activation_height: 10,
                deadline_height: 20,
            },
            deposit: 5,
            submit_height: 1,
            voting_end: 3,
            status: ProposalStatus::Passed,
            voters: vec![a],
            yes: 1,
            no: 2,
            abstain: 3,
            veto: 4,
            outcome: "x".into(),
        };
        let bytes = plexus_types::codec::to_vec(&p);
        assert_eq!(bytes.len(), p.encode_size());
        assert_eq!(Proposal::decode(Copying(&bytes[..])).unwrap(), p);
        let m = GovMeta {
            next_proposal: 3,
            next_upgrade: 1,
            open: vec![1, 2],
            pending: vec![0],
            last_activated: [0, 0, 7, 0],
        };
        let bytes = plexus_types::codec::to_vec(&m);
        assert_eq!(bytes.len(), m.encode_size());
        assert_eq!(GovMeta::decode(Copying(&bytes[..])).unwrap(), m);
        assert_eq!(clip("é".repeat(400)).len(), 512);
    }
}
