//! Typed access to the key-value state that execution reads and writes.
//!
//! Execution never touches storage directly: it reads through [`StateRead`] and writes into an
//! [`Overlay`], whose sorted change set the data layer commits (and authenticates) once the block
//! is final. Keys are a one-byte table prefix followed by the record's key; values use the same
//! canonical codec as transactions, so the state root is a function of the records alone.
//!
//! Money moves only through the helpers here, each of which keeps the per-bucket aggregates in
//! [`Supply`] up to date. That is what lets every block check conservation cheaply:
//! `balances + bonded + unbonding + escrow + treasury + deposits == total` — a handler that
//! credits without debiting breaks the equation and the block is rejected.

use std::collections::BTreeMap;

use bytes::BufMut;
use commonware_codec::{Buf, Copying, Decode, EncodeSize, Error as CodecError, FixedSize, Read, ReadExt, Write};
use plexus_types::codec::{read_str, read_vec, str_size, to_vec, write_str};
use plexus_types::params::limits;
use plexus_types::tx::{ModelPrice, ProviderInfo};
use plexus_types::version::VersionVector;
use plexus_types::{Address, Amount, Hash, Height, ModelId, ModelManifest, Params};

use crate::ExecError;

pub use plexus_types::state::{ChangeSet, StateRead};

/// A base table scan with writes layered on top, in key order.
fn merge_scan(base: &dyn StateRead, writes: &ChangeSet, table: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = base.scan(table).into_iter().collect();
    let end = if table == u8::MAX { None } else { Some(vec![table + 1]) };
    let range = match &end {
        Some(end) => writes.range(vec![table]..end.clone()),
        None => writes.range(vec![table]..),
    };
    for (k, v) in range {
        match v {
            Some(v) => merged.insert(k.clone(), v.clone()),
            None => merged.remove(k),
        };
    }
    merged.into_iter().collect()
}

/// Uncommitted writes layered over a read-only base (which may itself be an overlay).
pub struct Overlay<'a> {
    base: &'a dyn StateRead,
    writes: ChangeSet,
}

impl<'a> Overlay<'a> {
    pub fn new(base: &'a dyn StateRead) -> Self {
        Overlay { base, writes: ChangeSet::new() }
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// The writes so far, to commit or to layer further blocks on.
    pub fn into_changes(self) -> ChangeSet {
        self.writes
    }

    pub fn changes(&self) -> &ChangeSet {
        &self.writes
    }

    /// Takes a copy of the writes, to restore with [`Overlay::restore`] if a payload fails.
    pub fn checkpoint(&self) -> ChangeSet {
        self.writes.clone()
    }

    pub fn restore(&mut self, checkpoint: ChangeSet) {
        self.writes = checkpoint;
    }
}

impl StateRead for Overlay<'_> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.writes.get(key) {
            Some(value) => value.clone(),
            None => self.base.get(key),
        }
    }

    fn scan(&self, table: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
        merge_scan(self.base, &self.writes, table)
    }
}

/// A read view of a base with a change set on top, without copying either.
pub struct Layered<'a> {
    pub base: &'a dyn StateRead,
    pub changes: &'a ChangeSet,
}

impl StateRead for Layered<'_> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.changes.get(key) {
            Some(value) => value.clone(),
            None => self.base.get(key),
        }
    }

    fn scan(&self, table: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
        merge_scan(self.base, self.changes, table)
    }
}

/// Table prefixes. Never reuse a retired prefix.
pub mod table {
    pub const META: u8 = 0x00;
    pub const ACCOUNT: u8 = 0x01;
    pub const STAKE: u8 = 0x02;
    pub const UNBONDING: u8 = 0x03;
    pub const PROVIDER: u8 = 0x04;
    pub const MODEL: u8 = 0x05;
    pub const SESSION: u8 = 0x06;
    pub const SESSION_EXPIRY: u8 = 0x07;
    pub const EVIDENCE: u8 = 0x08;
    pub const PARAM: u8 = 0x09;
    pub const VALIDATORS: u8 = 0x0a;
    pub const PROPOSAL: u8 = 0x0b;
    pub const VOTE: u8 = 0x0c;
    pub const SIGNAL: u8 = 0x0d;
    pub const UPGRADE: u8 = 0x0e;
    pub const PARAM_CHANGES: u8 = 0x0f;
    /// Data v2: sessions by client (key = client ‖ session, empty value).
    pub const SESSION_BY_CLIENT: u8 = 0x10;
    /// Model names: the name → the one model registered under it, and who registered it.
    pub const MODEL_NAME: u8 = 0x11;
    /// Execution v3: challenges by id.
    pub const CHALLENGE: u8 = 0x12;
    /// Execution v3: challenges whose voting ends at a height.
    pub const CHALLENGE_DEADLINE: u8 = 0x13;
    /// Execution v3: a provider's record of challenges and slashes.
    pub const PROVIDER_STATS: u8 = 0x14;
    /// Execution v3: the challenge of an attestation (one per attestation).
    pub const CHALLENGE_BY_ATTESTATION: u8 = 0x15;
    /// Execution v3: release heights at which a staker has stake unbonding (so a slash can
    /// reach it).
    pub const UNBONDING_OF: u8 = 0x16;
    /// Execution v4: the regions a session is restricted to (data residency).
    pub const SESSION_REGIONS: u8 = 0x17;
    /// Execution v5: the evidence of a challenge of a tensor inference, by challenge id (the
    /// challenge record's transcript then names the model and nothing else).
    pub const CHALLENGE_EVIDENCE: u8 = 0x18;
    /// Execution v6: an address's BLS consensus key and the height it was registered at
    /// ([`ConsensusKey`]); never changed once written.
    pub const CONSENSUS_KEY: u8 = 0x19;
    /// Execution v6: SHA-256 of a registered consensus key → the address that registered it
    /// (a key belongs to one address).
    pub const CONSENSUS_KEY_OWNER: u8 = 0x1a;
}

fn key(prefix: u8, body: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + body.len());
    k.push(prefix);
    k.extend_from_slice(body);
    k
}

pub mod keys {
    use super::*;

    pub fn account(a: &Address) -> Vec<u8> {
        key(table::ACCOUNT, a.as_bytes())
    }
    pub fn stake(a: &Address) -> Vec<u8> {
        key(table::STAKE, a.as_bytes())
    }
    pub fn unbonding(h: Height) -> Vec<u8> {
        key(table::UNBONDING, &h.to_be_bytes())
    }
    pub fn provider(a: &Address) -> Vec<u8> {
        key(table::PROVIDER, a.as_bytes())
    }
    pub fn model(id: &ModelId) -> Vec<u8> {
        key(table::MODEL, id.as_bytes())
    }
    pub fn session(id: &Hash) -> Vec<u8> {
        key(table::SESSION, id.as_bytes())
    }
    pub fn session_expiry(h: Height) -> Vec<u8> {
        key(table::SESSION_EXPIRY, &h.to_be_bytes())
    }
    pub fn evidence(id: &Hash) -> Vec<u8> {
        key(table::EVIDENCE, id.as_bytes())
    }
    pub fn param(name: &str) -> Vec<u8> {
        key(table::PARAM, name.as_bytes())
    }
    pub fn validators(epoch: u64) -> Vec<u8> {
        key(table::VALIDATORS, &epoch.to_be_bytes())
    }
    pub fn proposal(id: u64) -> Vec<u8> {
        key(table::PROPOSAL, &id.to_be_bytes())
    }
    pub fn vote(proposal: u64, voter: &Address) -> Vec<u8> {
        let mut body = proposal.to_be_bytes().to_vec();
        body.extend_from_slice(voter.as_bytes());
        key(table::VOTE, &body)
    }
    pub fn signal(a: &Address) -> Vec<u8> {
        key(table::SIGNAL, a.as_bytes())
    }
    pub fn upgrade(id: u64) -> Vec<u8> {
        key(table::UPGRADE, &id.to_be_bytes())
    }
    pub fn param_changes(h: Height) -> Vec<u8> {
        key(table::PARAM_CHANGES, &h.to_be_bytes())
    }
    pub fn model_name(name: &str) -> Vec<u8> {
        key(table::MODEL_NAME, name.as_bytes())
    }
    pub fn challenge(id: u64) -> Vec<u8> {
        key(table::CHALLENGE, &id.to_be_bytes())
    }
    pub fn challenge_deadline(h: Height) -> Vec<u8> {
        key(table::CHALLENGE_DEADLINE, &h.to_be_bytes())
    }
    pub fn provider_stats(a: &Address) -> Vec<u8> {
        key(table::PROVIDER_STATS, a.as_bytes())
    }
    pub fn challenge_by_attestation(attestation: &Hash) -> Vec<u8> {
        key(table::CHALLENGE_BY_ATTESTATION, attestation.as_bytes())
    }
    pub fn unbonding_of(staker: &Address) -> Vec<u8> {
        key(table::UNBONDING_OF, staker.as_bytes())
    }
    pub fn session_regions(session: &Hash) -> Vec<u8> {
        key(table::SESSION_REGIONS, session.as_bytes())
    }
    pub fn challenge_evidence(id: u64) -> Vec<u8> {
        key(table::CHALLENGE_EVIDENCE, &id.to_be_bytes())
    }
    pub fn consensus_key(a: &Address) -> Vec<u8> {
        key(table::CONSENSUS_KEY, a.as_bytes())
    }
    pub fn consensus_key_owner(key_hash: &Hash) -> Vec<u8> {
        key(table::CONSENSUS_KEY_OWNER, key_hash.as_bytes())
    }
    pub fn session_by_client(client: &Address, session: &Hash) -> Vec<u8> {
        let mut body = client.as_bytes().to_vec();
        body.extend_from_slice(session.as_bytes());
        key(table::SESSION_BY_CLIENT, &body)
    }
    pub const SUPPLY: &[u8] = b"\x00supply";
    pub const VERSIONS: &[u8] = b"\x00versions";
    pub const CHAIN: &[u8] = b"\x00chain";
    pub const STAKERS: &[u8] = b"\x00stakers";
    pub const GOVERNANCE: &[u8] = b"\x00governance";
    /// SHA-256 of the genesis file this state was created from.
    pub const GENESIS: &[u8] = b"\x00genesis";
    /// Execution v3: the next challenge id.
    pub const CHALLENGES: &[u8] = b"\x00challenges";
    /// Execution v3: randomness from every block so far (committees are drawn from it).
    pub const BEACON: &[u8] = b"\x00beacon";
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// A validator's BLS consensus key (consensus version 2), with the height of the block that
/// registered it: an epoch counts the key only if it was registered before the epoch began, so
/// every node builds the same committee for that epoch whenever it reads the table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConsensusKey {
    #[serde(with = "hex_bytes")]
    pub key: Vec<u8>,
    pub registered_height: Height,
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }
}

impl Write for ConsensusKey {
    fn write(&self, buf: &mut impl BufMut) {
        self.key.write(buf);
        self.registered_height.write(buf);
    }
}

impl EncodeSize for ConsensusKey {
    fn encode_size(&self) -> usize {
        self.key.encode_size() + self.registered_height.encode_size()
    }
}

impl Read for ConsensusKey {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(ConsensusKey {
            key: plexus_types::codec::read_bytes(buf, plexus_types::tx::CONSENSUS_KEY_BYTES)?,
            registered_height: u64::read(buf)?,
        })
    }
}

/// An account's spendable balance and next nonce.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Account {
    pub balance: Amount,
    pub nonce: u64,
}

/// An account's bonded stake and where its node listens for peers.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stake {
    pub bonded: Amount,
    pub p2p_address: String,
}

/// A registered provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    pub info: ProviderInfo,
    pub registered_height: Height,
}

/// Lifecycle of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Open,
    /// Settled and refunded: no further claims.
    Closed,
}

/// An escrowed payment channel between a client and a provider.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Session {
    pub client: Address,
    pub provider: Address,
    pub model: ModelId,
    /// Total ever deposited (initial deposit plus top-ups).
    pub deposit: Amount,
    /// Prices the provider listed when the session opened, per 1k tokens.
    pub price: ModelPrice,
    pub max_input_per_1k: Amount,
    pub max_output_per_1k: Amount,
    pub opened_height: Height,
    /// No new work after this height; claims are accepted until the refund at
    /// `expiry_height + session_grace_blocks`.
    pub expiry_height: Height,
    /// The highest receipt settled so far.
    pub settled_seq: u64,
    pub settled_input_tokens: u64,
    pub settled_output_tokens: u64,
    /// Paid out of escrow so far (to the provider and the protocol fee).
    pub settled_amount: Amount,
    pub status: SessionStatus,
    /// What was refunded to the client when it closed.
    pub refunded: Amount,
}

impl Session {
    /// Escrow still locked for this session.
    pub fn remaining(&self) -> Amount {
        if self.status == SessionStatus::Closed { 0 } else { self.deposit - self.settled_amount }
    }
}

/// Who owns a model name: the account that registered the first (and only) manifest under it.
/// Names are identities clients ask for, so nobody else can put another model behind one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ModelName {
    pub id: ModelId,
    pub owner: Address,
}

/// Where a challenge stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChallengeStatus {
    /// Waiting for the committee's votes.
    Open,
    /// The committee found the provider's response was not its model's: slashed.
    Convicted,
    /// No majority for guilty by the deadline: the challenger's bond went to the provider.
    Acquitted,
}

/// An accusation that a provider's attested response was not produced by its model, with the
/// evidence and the committee that re-runs it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Challenge {
    pub challenger: Address,
    pub provider: Address,
    pub session: Hash,
    pub attestation: plexus_types::Attestation,
    pub transcript: plexus_types::receipt::Transcript,
    /// Held in the deposits bucket while open.
    pub bond: Amount,
    pub opened_height: Height,
    pub deadline_height: Height,
    pub committee: Vec<Address>,
    /// (voter, guilty), in voting order.
    pub votes: Vec<(Address, bool)>,
    pub status: ChallengeStatus,
    /// Taken from the provider's stake when convicted.
    pub slashed: Amount,
    /// Of which back to the client for the request.
    pub refunded: Amount,
    /// Of which to the challenger.
    pub reward: Amount,
}

/// A provider's record: what verification found about it. Only facts the chain established
/// count (convictions and acquittals by committees, slashes), never what a provider reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProviderStats {
    pub convicted: u64,
    pub acquitted: u64,
    pub slashed: Amount,
}

/// Conflicting-vote evidence, recorded once per offence.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EvidenceRecord {
    pub offender: Address,
    pub epoch: u64,
    pub view: u64,
    pub kind: String,
    pub reporter: Address,
    pub height: Height,
}

/// A validator of one epoch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ValidatorEntry {
    pub address: Address,
    pub stake: Amount,
    pub p2p_address: String,
}

/// Money in each bucket. The sum of the buckets always equals `total`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Supply {
    pub total: Amount,
    pub balances: Amount,
    pub bonded: Amount,
    pub unbonding: Amount,
    pub escrow: Amount,
    pub treasury: Amount,
    /// Governance deposits held until a proposal is decided.
    pub deposits: Amount,
    /// Burned so far (removed from `total`), e.g. vetoed proposal deposits.
    pub burned: Amount,
}

impl Supply {
    /// Conservation: every base unit is in exactly one bucket.
    pub fn is_conserved(&self) -> bool {
        [self.balances, self.bonded, self.unbonding, self.escrow, self.treasury, self.deposits]
            .iter()
            .try_fold(0u128, |acc, x| acc.checked_add(*x))
            == Some(self.total)
    }
}

/// Chain-level facts set at genesis and updated per block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainMeta {
    pub chain_id: String,
    /// Height of the last executed block.
    pub height: Height,
    /// The epoch the next block belongs to.
    pub epoch: u64,
}

macro_rules! codec_struct {
    ($name:ident { $($field:ident : $kind:tt),* $(,)? }) => {
        impl Write for $name {
            fn write(&self, buf: &mut impl BufMut) {
                $( codec_struct!(@write self.$field, $kind, buf); )*
            }
        }
        impl EncodeSize for $name {
            fn encode_size(&self) -> usize {
                0 $( + codec_struct!(@size self.$field, $kind) )*
            }
        }
        impl Read for $name {
            type Cfg = ();
            fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
                Ok($name { $( $field: codec_struct!(@read buf, $kind), )* })
            }
        }
    };
    (@write $v:expr, str, $buf:ident) => { write_str(&$v, $buf) };
    (@write $v:expr, $t:ty, $buf:ident) => { $v.write($buf) };
    (@size $v:expr, str) => { str_size(&$v) };
    (@size $v:expr, $t:ty) => { $v.encode_size() };
    (@read $buf:ident, str) => { read_str($buf, 256)? };
    (@read $buf:ident, $t:ty) => { <$t>::read($buf)? };
}

codec_struct!(Account { balance: u128, nonce: u64 });
codec_struct!(ModelName { id: Hash, owner: Address });
codec_struct!(ProviderStats { convicted: u64, acquitted: u64, slashed: u128 });

/// Most members of a challenge committee (bounds the record).
pub const COMMITTEE_MAX: usize = 15;

impl Write for ChallengeStatus {
    fn write(&self, buf: &mut impl BufMut) {
        (*self as u8).write(buf)
    }
}
impl FixedSize for ChallengeStatus {
    const SIZE: usize = 1;
}
impl Read for ChallengeStatus {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        match u8::read(buf)? {
            0 => Ok(ChallengeStatus::Open),
            1 => Ok(ChallengeStatus::Convicted),
            2 => Ok(ChallengeStatus::Acquitted),
            t => Err(CodecError::InvalidEnum(t)),
        }
    }
}

impl Write for Challenge {
    fn write(&self, buf: &mut impl BufMut) {
        self.challenger.write(buf);
        self.provider.write(buf);
        self.session.write(buf);
        self.attestation.write(buf);
        self.transcript.write(buf);
        self.bond.write(buf);
        self.opened_height.write(buf);
        self.deadline_height.write(buf);
        self.committee.write(buf);
        self.votes.write(buf);
        self.status.write(buf);
        self.slashed.write(buf);
        self.refunded.write(buf);
        self.reward.write(buf);
    }
}
impl EncodeSize for Challenge {
    fn encode_size(&self) -> usize {
        32 * 3
            + plexus_types::Attestation::SIZE
            + self.transcript.encode_size()
            + 16
            + 16
            + self.committee.encode_size()
            + self.votes.encode_size()
            + 1
            + 48
    }
}
impl Read for Challenge {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(Challenge {
            challenger: Address::read(buf)?,
            provider: Address::read(buf)?,
            session: Hash::read(buf)?,
            attestation: plexus_types::Attestation::read(buf)?,
            transcript: plexus_types::receipt::Transcript::read(buf)?,
            bond: u128::read(buf)?,
            opened_height: u64::read(buf)?,
            deadline_height: u64::read(buf)?,
            committee: read_vec(buf, COMMITTEE_MAX, &())?,
            votes: read_vec(buf, COMMITTEE_MAX, &((), ()))?,
            status: ChallengeStatus::read(buf)?,
            slashed: u128::read(buf)?,
            refunded: u128::read(buf)?,
            reward: u128::read(buf)?,
        })
    }
}

/// Challenge ids (those whose vote ends at one height), or heights (a staker's unbonding).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdList(pub Vec<u64>);

impl Write for IdList {
    fn write(&self, buf: &mut impl BufMut) {
        self.0.write(buf)
    }
}
impl EncodeSize for IdList {
    fn encode_size(&self) -> usize {
        self.0.encode_size()
    }
}
impl Read for IdList {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(IdList(read_vec(buf, limits::SCHEDULE_BUCKET_MAX, &())?))
    }
}
codec_struct!(Stake { bonded: u128, p2p_address: str });
codec_struct!(Provider { info: ProviderInfo, registered_height: u64 });
codec_struct!(EvidenceRecord { offender: Address, epoch: u64, view: u64, kind: str, reporter: Address, height: u64 });
codec_struct!(ValidatorEntry { address: Address, stake: u128, p2p_address: str });
codec_struct!(Supply {
    total: u128,
    balances: u128,
    bonded: u128,
    unbonding: u128,
    escrow: u128,
    treasury: u128,
    deposits: u128,
    burned: u128,
});
codec_struct!(ChainMeta { chain_id: str, height: u64, epoch: u64 });

impl Write for SessionStatus {
    fn write(&self, buf: &mut impl BufMut) {
        (*self as u8).write(buf)
    }
}
impl FixedSize for SessionStatus {
    const SIZE: usize = 1;
}
impl Read for SessionStatus {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        match u8::read(buf)? {
            0 => Ok(SessionStatus::Open),
            1 => Ok(SessionStatus::Closed),
            t => Err(CodecError::InvalidEnum(t)),
        }
    }
}

codec_struct!(Session {
    client: Address,
    provider: Address,
    model: Hash,
    deposit: u128,
    price: ModelPrice,
    max_input_per_1k: u128,
    max_output_per_1k: u128,
    opened_height: u64,
    expiry_height: u64,
    settled_seq: u64,
    settled_input_tokens: u64,
    settled_output_tokens: u64,
    settled_amount: u128,
    status: SessionStatus,
    refunded: u128,
});

/// A list of addresses (the staker index).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressList(pub Vec<Address>);

impl Write for AddressList {
    fn write(&self, buf: &mut impl BufMut) {
        self.0.write(buf)
    }
}
impl EncodeSize for AddressList {
    fn encode_size(&self) -> usize {
        self.0.encode_size()
    }
}
impl Read for AddressList {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(AddressList(read_vec(buf, limits::STAKERS_MAX, &())?))
    }
}

/// The regions a session is restricted to (at most [`limits::SESSION_REGIONS_MAX`] labels).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Regions(pub Vec<String>);

impl Write for Regions {
    fn write(&self, buf: &mut impl BufMut) {
        (self.0.len() as u32).write(buf);
        for r in &self.0 {
            plexus_types::codec::write_str(r, buf);
        }
    }
}
impl EncodeSize for Regions {
    fn encode_size(&self) -> usize {
        4 + self.0.iter().map(|r| plexus_types::codec::str_size(r)).sum::<usize>()
    }
}
impl Read for Regions {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let count = u32::read(buf)? as usize;
        if count > limits::SESSION_REGIONS_MAX {
            return Err(CodecError::Invalid("regions", "too many"));
        }
        let regions = (0..count).map(|_| plexus_types::codec::read_str(buf, limits::REGION_BYTES_MAX));
        Ok(Regions(regions.collect::<Result<_, _>>()?))
    }
}

/// Unbonding amounts that mature at one height (at most [`limits::SCHEDULE_BUCKET_MAX`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnbondingBucket(pub Vec<(Address, Amount)>);

impl Write for UnbondingBucket {
    fn write(&self, buf: &mut impl BufMut) {
        self.0.write(buf)
    }
}
impl EncodeSize for UnbondingBucket {
    fn encode_size(&self) -> usize {
        self.0.encode_size()
    }
}
impl Read for UnbondingBucket {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(UnbondingBucket(read_vec(buf, limits::SCHEDULE_BUCKET_MAX, &((), ()))?))
    }
}

/// Sessions whose refund falls at one height (at most [`limits::SCHEDULE_BUCKET_MAX`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HashList(pub Vec<Hash>);

impl Write for HashList {
    fn write(&self, buf: &mut impl BufMut) {
        self.0.write(buf)
    }
}
impl EncodeSize for HashList {
    fn encode_size(&self) -> usize {
        self.0.encode_size()
    }
}
impl Read for HashList {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(HashList(read_vec(buf, limits::SCHEDULE_BUCKET_MAX, &())?))
    }
}

/// The validator set of one epoch, sorted by stake (descending) then address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidatorSet(pub Vec<ValidatorEntry>);

impl Write for ValidatorSet {
    fn write(&self, buf: &mut impl BufMut) {
        self.0.write(buf)
    }
}
impl EncodeSize for ValidatorSet {
    fn encode_size(&self) -> usize {
        self.0.encode_size()
    }
}
impl Read for ValidatorSet {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(ValidatorSet(read_vec(buf, limits::VALIDATORS_MAX as usize, &())?))
    }
}

impl ValidatorSet {
    pub fn total_stake(&self) -> Amount {
        self.0.iter().map(|v| v.stake).sum()
    }

    pub fn contains(&self, a: &Address) -> bool {
        self.0.iter().any(|v| &v.address == a)
    }
}

/// Decodes a stored record. State is written only by execution, so a record that does not
/// decode means the store is corrupt: the node must stop rather than execute on it.
pub fn decode_record<T: Decode<Cfg = ()>>(key: &[u8], bytes: &[u8]) -> T {
    T::decode_cfg(Copying(bytes), &())
        .unwrap_or_else(|e| panic!("state is corrupt: record under key {} does not decode: {e}", hex::encode(key)))
}

/// Typed reads and writes over an [`Overlay`]: the only way execution touches state.
pub struct Store<'a, 'b> {
    pub overlay: &'b mut Overlay<'a>,
}

impl<'a, 'b> Store<'a, 'b> {
    pub fn new(overlay: &'b mut Overlay<'a>) -> Self {
        Store { overlay }
    }

    pub fn read<T: Decode<Cfg = ()>>(&self, key: &[u8]) -> Option<T> {
        self.overlay.get(key).map(|bytes| decode_record(key, &bytes))
    }

    pub fn write<T: commonware_codec::Encode>(&mut self, key: Vec<u8>, value: &T) {
        self.overlay.put(key, to_vec(value));
    }

    pub fn account(&self, a: &Address) -> Account {
        self.read(&keys::account(a)).unwrap_or_default()
    }

    pub fn set_account(&mut self, a: &Address, account: &Account) {
        if account == &Account::default() {
            self.overlay.delete(keys::account(a));
        } else {
            self.write(keys::account(a), account);
        }
    }

    pub fn stake(&self, a: &Address) -> Stake {
        self.read(&keys::stake(a)).unwrap_or_default()
    }

    pub fn supply(&self) -> Supply {
        self.read(keys::SUPPLY).expect("supply is written at genesis")
    }

    pub fn set_supply(&mut self, s: &Supply) {
        self.write(keys::SUPPLY.to_vec(), s);
    }

    pub fn chain(&self) -> ChainMeta {
        self.read(keys::CHAIN).expect("chain meta is written at genesis")
    }

    pub fn versions(&self) -> VersionVector {
        self.read(keys::VERSIONS).expect("versions are written at genesis")
    }

    pub fn params(&self) -> Params {
        let mut params = Params::default();
        for (name, _) in Params::NAMES {
            if let Some(bytes) = self.overlay.get(&keys::param(name)) {
                let value: u128 = decode_record(&keys::param(name), &bytes);
                params.set(name, value).expect("stored parameters were checked when set");
            }
        }
        params
    }

    pub fn set_param(&mut self, name: &str, value: u128) {
        self.write(keys::param(name), &value);
    }

    pub fn validators(&self, epoch: u64) -> Option<ValidatorSet> {
        self.read(&keys::validators(epoch))
    }

    /// The BLS consensus key `a` registered (execution v6 and later), if any.
    pub fn consensus_key(&self, a: &Address) -> Option<ConsensusKey> {
        self.read(&keys::consensus_key(a))
    }

    // ---- money movements: each keeps the supply buckets balanced ----

    /// Adds to a balance from the `from` bucket of the supply.
    pub fn credit(&mut self, a: &Address, amount: Amount, from: Bucket) -> Result<(), ExecError> {
        let mut supply = self.supply();
        from.take(&mut supply, amount)?;
        supply.balances = supply.balances.checked_add(amount).ok_or(ExecError::Overflow)?;
        let mut account = self.account(a);
        account.balance = account.balance.checked_add(amount).ok_or(ExecError::Overflow)?;
        self.set_account(a, &account);
        self.set_supply(&supply);
        Ok(())
    }

    /// Takes from a balance into the `to` bucket of the supply.
    pub fn debit(&mut self, a: &Address, amount: Amount, to: Bucket) -> Result<(), ExecError> {
        let mut account = self.account(a);
        if account.balance < amount {
            return Err(ExecError::InsufficientBalance { needed: amount, available: account.balance });
        }
        account.balance -= amount;
        let mut supply = self.supply();
        supply.balances -= amount;
        to.give(&mut supply, amount)?;
        self.set_account(a, &account);
        self.set_supply(&supply);
        Ok(())
    }

    /// Moves money between two non-balance buckets.
    pub fn shift(&mut self, amount: Amount, from: Bucket, to: Bucket) -> Result<(), ExecError> {
        let mut supply = self.supply();
        from.take(&mut supply, amount)?;
        to.give(&mut supply, amount)?;
        self.set_supply(&supply);
        Ok(())
    }

    /// Balance-to-balance transfer.
    pub fn transfer(&mut self, from: &Address, to: &Address, amount: Amount) -> Result<(), ExecError> {
        self.debit(from, amount, Bucket::Balances)?;
        self.credit(to, amount, Bucket::Balances)
    }
}

/// A bucket of the supply that money moves in and out of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    /// Account balances (used for balance-to-balance moves).
    Balances,
    Bonded,
    Unbonding,
    Escrow,
    Treasury,
    Deposits,
    /// Out of the supply: money taken here is burned.
    Burn,
}

impl Bucket {
    fn slot(self, s: &mut Supply) -> Option<&mut Amount> {
        match self {
            Bucket::Balances => Some(&mut s.balances),
            Bucket::Bonded => Some(&mut s.bonded),
            Bucket::Unbonding => Some(&mut s.unbonding),
            Bucket::Escrow => Some(&mut s.escrow),
            Bucket::Treasury => Some(&mut s.treasury),
            Bucket::Deposits => Some(&mut s.deposits),
            Bucket::Burn => None,
        }
    }

    fn take(self, s: &mut Supply, amount: Amount) -> Result<(), ExecError> {
        match self.slot(s) {
            Some(slot) => {
                *slot = slot.checked_sub(amount).ok_or(ExecError::SupplyUnderflow(self))?;
                Ok(())
            }
            None => Err(ExecError::SupplyUnderflow(self)),
        }
    }

    fn give(self, s: &mut Supply, amount: Amount) -> Result<(), ExecError> {
        match self.slot(s) {
            Some(slot) => {
                *slot = slot.checked_add(amount).ok_or(ExecError::Overflow)?;
                Ok(())
            }
            None => {
                s.total -= amount;
                s.burned = s.burned.checked_add(amount).ok_or(ExecError::Overflow)?;
                Ok(())
            }
        }
    }
}

/// All records of one table in a plain map (for tests, audits and the simulator).
pub fn scan_table<'m>(
    map: &'m BTreeMap<Vec<u8>, Vec<u8>>,
    prefix: u8,
) -> impl Iterator<Item = (&'m Vec<u8>, &'m Vec<u8>)> + 'm {
    map.range(vec![prefix]..vec![prefix + 1])
}

/// Recomputes the supply buckets from every record (independent of the running aggregates) and
/// compares. Used by tests and the simulator on full in-memory copies of state.
pub fn audit(map: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<Supply, String> {
    let recorded: Supply = decode_record(keys::SUPPLY, map.get(keys::SUPPLY).ok_or("no supply record")?);
    let mut s = Supply {
        total: recorded.total,
        treasury: recorded.treasury,
        deposits: recorded.deposits,
        burned: recorded.burned,
        ..Supply::default()
    };
    for (k, v) in scan_table(map, table::ACCOUNT) {
        s.balances += decode_record::<Account>(k, v).balance;
    }
    for (k, v) in scan_table(map, table::STAKE) {
        s.bonded += decode_record::<Stake>(k, v).bonded;
    }
    for (k, v) in scan_table(map, table::UNBONDING) {
        s.unbonding += decode_record::<UnbondingBucket>(k, v).0.iter().map(|(_, a)| a).sum::<Amount>();
    }
    for (k, v) in scan_table(map, table::SESSION) {
        s.escrow += decode_record::<Session>(k, v).remaining();
    }
    let open_deposits: Amount = scan_table(map, table::PROPOSAL)
        .map(|(k, v)| decode_record::<crate::gov::Proposal>(k, v))
        .filter(|p| p.status == crate::gov::ProposalStatus::Voting)
        .map(|p| p.deposit)
        .sum::<Amount>()
        + scan_table(map, table::CHALLENGE)
            .map(|(k, v)| decode_record::<Challenge>(k, v))
            .filter(|c| c.status == ChallengeStatus::Open)
            .map(|c| c.bond)
            .sum::<Amount>();
    if open_deposits != recorded.deposits {
        return Err(format!(
            "open proposals and challenges hold {open_deposits} in deposits, the supply says {}",
            recorded.deposits
        ));
    }
    if s != recorded {
        return Err(format!("aggregates {recorded:?} differ from records {s:?}"));
    }
    if !s.is_conserved() {
        return Err(format!("supply not conserved: {s:?}"));
    }
    Ok(s)
}

/// How much of one supply bucket the changed records hold, before and after a block.
#[derive(Default)]
struct Moved {
    before: Amount,
    after: Amount,
}

impl Moved {
    fn add(&mut self, before: Amount, after: Amount) -> Result<(), String> {
        let overflow = || "a bucket's records overflow".to_string();
        self.before = self.before.checked_add(before).ok_or_else(overflow)?;
        self.after = self.after.checked_add(after).ok_or_else(overflow)?;
        Ok(())
    }

    /// The bucket's aggregate must have moved exactly as its changed records did.
    fn check(&self, name: &str, before: Amount, after: Amount) -> Result<(), String> {
        // after - before == self.after - self.before, without signed arithmetic.
        let lhs = after.checked_add(self.before);
        let rhs = before.checked_add(self.after);
        if lhs.is_none() || lhs != rhs {
            return Err(format!(
                "{name}: the supply moved from {before} to {after} but its changed records from {} to {}",
                self.before, self.after
            ));
        }
        Ok(())
    }
}

/// Conservation checked from what a block actually wrote: for every changed record (accounts,
/// stakes, unbonding buckets, sessions, open proposals) its old and new amounts, summed per
/// supply bucket, must move that bucket's aggregate by exactly as much; the total may only fall
/// by what was burned; and the new aggregates must add up to the total. A version that writes
/// a balance, stake or escrow without moving the matching aggregate (or mints into one) breaks
/// it, whatever counters it keeps. Cost: two decodes per changed record.
pub fn check_conservation(base: &dyn StateRead, changes: &ChangeSet) -> Result<(), String> {
    let old_supply: Supply = decode_record(keys::SUPPLY, &base.get(keys::SUPPLY).ok_or("no supply record")?);
    let new_supply: Supply = match changes.get(keys::SUPPLY) {
        Some(Some(bytes)) => decode_record(keys::SUPPLY, bytes),
        Some(None) => return Err("the supply record was deleted".into()),
        None => old_supply.clone(),
    };
    let (mut balances, mut bonded, mut unbonding, mut escrow, mut deposits) =
        (Moved::default(), Moved::default(), Moved::default(), Moved::default(), Moved::default());
    for (key, new) in changes {
        let Some(&table_id) = key.first() else { continue };
        let old = base.get(key);
        let (old, new) = (old.as_deref(), new.as_deref());
        let amount = |bytes: Option<&[u8]>, f: &dyn Fn(&[u8]) -> Amount| bytes.map_or(0, f);
        match table_id {
            table::ACCOUNT => {
                let f = |b: &[u8]| decode_record::<Account>(key, b).balance;
                balances.add(amount(old, &f), amount(new, &f))?;
            }
            table::STAKE => {
                let f = |b: &[u8]| decode_record::<Stake>(key, b).bonded;
                bonded.add(amount(old, &f), amount(new, &f))?;
            }
            table::UNBONDING => {
                let f = |b: &[u8]| {
                    decode_record::<UnbondingBucket>(key, b).0.iter().fold(0u128, |a, (_, x)| a.saturating_add(*x))
                };
                unbonding.add(amount(old, &f), amount(new, &f))?;
            }
            table::SESSION => {
                let f = |b: &[u8]| decode_record::<Session>(key, b).remaining();
                escrow.add(amount(old, &f), amount(new, &f))?;
            }
            table::PROPOSAL => {
                let f = |b: &[u8]| {
                    let p = decode_record::<crate::gov::Proposal>(key, b);
                    if p.status == crate::gov::ProposalStatus::Voting { p.deposit } else { 0 }
                };
                deposits.add(amount(old, &f), amount(new, &f))?;
            }
            table::CHALLENGE => {
                let f = |b: &[u8]| {
                    let c = decode_record::<Challenge>(key, b);
                    if c.status == ChallengeStatus::Open { c.bond } else { 0 }
                };
                deposits.add(amount(old, &f), amount(new, &f))?;
            }
            _ => {}
        }
    }
    balances.check("balances", old_supply.balances, new_supply.balances)?;
    bonded.check("bonded", old_supply.bonded, new_supply.bonded)?;
    unbonding.check("unbonding", old_supply.unbonding, new_supply.unbonding)?;
    escrow.check("escrow", old_supply.escrow, new_supply.escrow)?;
    deposits.check("deposits", old_supply.deposits, new_supply.deposits)?;
    let burned = new_supply.burned.checked_sub(old_supply.burned).ok_or("the burned amount went down")?;
    if old_supply.total.checked_sub(burned) != Some(new_supply.total) {
        return Err(format!(
            "the total supply moved from {} to {} but only {burned} was burned",
            old_supply.total, new_supply.total
        ));
    }
    if !new_supply.is_conserved() {
        return Err(format!("supply not conserved: {new_supply:?}"));
    }
    Ok(())
}

/// Provider info bounds are checked on decode; re-export for the API.
pub fn provider_info_size_max() -> usize {
    limits::ENDPOINT_BYTES_MAX
        + limits::REGION_BYTES_MAX
        + limits::HARDWARE_BYTES_MAX
        + 64 * limits::PROVIDER_MODELS_MAX
}

/// A model record is just its manifest.
pub fn read_model(store: &Store<'_, '_>, id: &ModelId) -> Option<ModelManifest> {
    store.read(&keys::model(id))
}
