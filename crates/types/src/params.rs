//! Chain parameters. Every one is governable: stored in state by name, changed by a passed
//! proposal at a defined height. Each has documented bounds so that no vote can set a value that
//! would stall the chain (e.g. an epoch of zero blocks).
//!
//! The golden test at the bottom pins the genesis defaults: changing one is a protocol change and
//! belongs in a new version, never in an edit of this table.

use serde::{Deserialize, Serialize};

use crate::Amount;

/// Hard protocol limits that decoding relies on; not governable because they bound memory.
pub mod limits {
    /// Largest encoded transaction, in bytes.
    pub const TX_BYTES_MAX: usize = 64 * 1024;
    /// Largest encoded block, in bytes.
    pub const BLOCK_BYTES_MAX: usize = 8 * 1024 * 1024;
    /// Most transactions in one block.
    pub const BLOCK_TXS_MAX: usize = 20_000;
    /// Longest provider endpoint URL, in bytes.
    pub const ENDPOINT_BYTES_MAX: usize = 256;
    /// Longest region label, in bytes.
    pub const REGION_BYTES_MAX: usize = 32;
    /// Most regions a session may be restricted to.
    pub const SESSION_REGIONS_MAX: usize = 8;
    /// Longest hardware profile, in bytes.
    pub const HARDWARE_BYTES_MAX: usize = 128;
    /// Most model prices one provider registers.
    pub const PROVIDER_MODELS_MAX: usize = 32;
    /// Longest chain id, in bytes.
    pub const CHAIN_ID_BYTES_MAX: usize = 32;
    /// Most receipts in one claim transaction.
    pub const CLAIM_RECEIPTS_MAX: usize = 256;
    /// Largest encoded consensus evidence, in bytes.
    pub const EVIDENCE_BYTES_MAX: usize = 4 * 1024;
    /// Most stakers tracked for validator selection (bounds the per-epoch sort).
    pub const STAKERS_MAX: usize = 1_000;
    /// Largest validator set any parameter may ask for.
    pub const VALIDATORS_MAX: u128 = 100;
    /// Most entries scheduled at one height (unbondings maturing, session refunds). A full
    /// height pushes new entries to the next height with room, so each block's scheduled work
    /// and each stored record stay bounded however many accounts pick the same height.
    pub const SCHEDULE_BUCKET_MAX: usize = 1_024;
    /// Longest p2p address string, in bytes.
    pub const P2P_ADDRESS_BYTES_MAX: usize = 64;
}

macro_rules! params {
    ($( $(#[doc = $doc:literal])* $name:ident : $default:expr, $min:expr, $max:expr; )*) => {
        /// The governable chain parameters, with their genesis defaults.
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Params {
            $( $(#[doc = $doc])* pub $name: u128, )*
        }

        impl Default for Params {
            fn default() -> Self {
                Params { $( $name: $default, )* }
            }
        }

        impl Params {
            /// Every parameter name with its doc, in a fixed order.
            pub const NAMES: &'static [(&'static str, &'static str)] = &[
                $( (stringify!($name), concat!($($doc),*)), )*
            ];

            /// The value of a parameter by name.
            pub fn get(&self, name: &str) -> Option<u128> {
                match name {
                    $( stringify!($name) => Some(self.$name), )*
                    _ => None,
                }
            }

            /// Sets a parameter by name, checking its bounds.
            pub fn set(&mut self, name: &str, value: u128) -> Result<(), ParamError> {
                match name {
                    $( stringify!($name) => {
                        #[allow(unused_comparisons)]
                        let out_of_bounds = !($min..=$max).contains(&value);
                        if out_of_bounds {
                            return Err(ParamError::OutOfBounds { name: name.to_string(), value, min: $min, max: $max });
                        }
                        self.$name = value;
                        Ok(())
                    } )*
                    _ => Err(ParamError::Unknown(name.to_string())),
                }
            }

            /// Checks every parameter is within its bounds and consistent (for genesis files).
            pub fn validate(&self) -> Result<(), ParamError> {
                let mut copy = Params::default();
                $( copy.set(stringify!($name), self.$name)?; )*
                copy.check_consistent()
            }

            /// Every parameter's (name, min, max), in the fixed order of [`Params::NAMES`].
            pub const RANGES: &'static [(&'static str, u128, u128)] = &[
                $( (stringify!($name), $min, $max), )*
            ];
        }
    };
}

// Every range is chosen so that no single vote can stop the chain or end governance: fees stay
// payable, timeouts stay above what building and checking a block takes, blocks always fit the
// largest transaction, and thresholds stay reachable, so a later vote can always undo an earlier
// one. Relations between parameters are checked by [`Params::check_consistent`].
params! {
    /// Smallest fee a transaction may pay, in base units. Fees go to the treasury. At most 1 PLX,
    /// so no vote can price everyone out of transacting (and of voting it back).
    min_tx_fee: 1_000, 1, 1_000_000;
    /// Smallest bonded stake that makes an account a validator candidate (and a voter), in base
    /// units.
    min_stake: 1_000_000_000, 1_000_000, 1_000_000_000_000_000;
    /// Smallest bonded stake that lets an account register as a provider, in base units.
    min_provider_stake: 100_000_000, 1_000_000, 1_000_000_000_000_000;
    /// Most validators: the top stakers, up to this many, validate the next epoch.
    max_validators: 32, 1, limits::VALIDATORS_MAX;
    /// Blocks an unstaked amount stays locked (and slashable) before it returns to the balance.
    unbonding_delay_blocks: 600, 1, 10_000_000;
    /// Blocks per epoch; the validator set and consensus parameters change only at epoch boundaries.
    epoch_length_blocks: 100, 10, 1_000_000;
    /// Most transactions a proposer puts in one block.
    max_block_txs: 10_000, 100, limits::BLOCK_TXS_MAX as u128;
    /// Largest encoded block a proposer builds, in bytes (room for at least two of the largest
    /// transactions).
    max_block_bytes: 4 * 1024 * 1024, 2 * limits::TX_BYTES_MAX as u128, limits::BLOCK_BYTES_MAX as u128;
    /// Smallest deposit that opens a session, in base units.
    min_session_deposit: 1_000, 1, 1_000_000_000_000;
    /// Longest a session may stay open, in blocks from the one that opens it.
    max_session_blocks: 1_000_000, 10, 100_000_000;
    /// Blocks after a session's expiry during which its provider can still settle receipts;
    /// the remaining escrow is refunded to the client at the end of them.
    session_grace_blocks: 100, 1, 1_000_000;
    /// Share of every settled amount paid to the treasury, in basis points (1/10,000).
    protocol_fee_bps: 200, 0, 5_000;
    /// Consensus: shortest time between a block and its child, in ms (the proposer waits). Keeps
    /// an idle chain from writing hundreds of empty blocks a second. At most half the leader
    /// timeout.
    block_interval_ms: 200, 0, 10_000;
    /// Consensus: how long a leader has to propose before validators vote to skip it, in ms. At
    /// least 500: building a block may take 150 ms and checking it as long again.
    leader_timeout_ms: 1_000, 500, 60_000;
    /// Consensus: how long to wait for a notarization before voting to skip the view, in ms. At
    /// least the leader timeout.
    notarization_timeout_ms: 2_000, 500, 120_000;
    /// Consensus: how often to re-broadcast a vote to skip a view that is stuck, in ms.
    nullify_retry_ms: 10_000, 1_000, 600_000;
    /// Consensus: views of activity kept before old votes are pruned. Above the skip timeout.
    activity_timeout_views: 256, 16, 100_000;
    /// Consensus: views a validator may miss before it is skipped as a leader.
    skip_timeout_views: 32, 1, 10_000;
    /// Governance: smallest deposit that submits a proposal, in base units (1 to 100,000 PLX).
    /// Refunded unless the proposal is vetoed.
    proposal_deposit_min: 100_000_000, 1_000_000, 100_000_000_000;
    /// Governance: blocks a proposal stays open for votes.
    voting_period_blocks: 300, 10, 1_000_000;
    /// Governance: share of all bonded stake that must vote for a tally to count, in basis
    /// points. At most half, so validators that stopped voting cannot freeze governance.
    quorum_bps: 3_340, 1_000, 5_000;
    /// Governance: share of yes among yes, no and veto needed to pass, in basis points.
    threshold_bps: 5_000, 5_000, 8_000;
    /// Governance: share of veto among all votes that rejects a proposal and burns its deposit,
    /// in basis points. At least a third, so a small minority cannot veto everything.
    veto_bps: 3_340, 3_340, 5_000;
    /// Governance: paid from the treasury (collected fees) to each voter of a decided proposal,
    /// in base units; less when the treasury holds less. Never above `min_tx_fee`, so a vote
    /// cannot earn more than it costs: voting is refunded, not farmed.
    voter_reward: 1_000, 0, 1_000_000;
    /// Upgrades: share of validator-candidate stake that must have signalled support before an
    /// approved upgrade activates, in basis points. At least two thirds.
    upgrade_readiness_bps: 6_667, 6_667, 10_000;
    /// Verification (execution v3): smallest bond that opens a challenge, in base units; lost to
    /// the provider if the committee acquits.
    challenge_bond_min: 10_000_000, 1_000_000, 10_000_000_000;
    /// Verification: blocks a challenge's committee has to vote before it is decided.
    challenge_window_blocks: 100, 10, 100_000;
    /// Verification: validators drawn to re-run a challenged request and vote.
    challenge_committee_size: 3, 1, 15;
    /// Verification: share of a convicted provider's stake (bonded and unbonding) slashed, in
    /// basis points.
    fault_slash_bps: 1_000, 100, 5_000;
    /// Verification: share of a validator's stake slashed for signing conflicting votes, in
    /// basis points.
    equivocation_slash_bps: 500, 100, 5_000;
    /// Verification: share of a slash paid to whoever proved the fault, in basis points (the
    /// client's refund comes first; the rest goes to the treasury).
    challenger_reward_bps: 1_000, 0, 5_000;
}

/// Parameters that execution version 3 introduced. Genesis states of earlier chains do not hold
/// them, so the states they replay to never change; until governance sets one, it has its
/// default.
pub const SINCE_V3: &[&str] = &[
    "challenge_bond_min",
    "challenge_window_blocks",
    "challenge_committee_size",
    "fault_slash_bps",
    "equivocation_slash_bps",
    "challenger_reward_bps",
];

/// A rejected parameter change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("unknown parameter {0:?}")]
    Unknown(String),
    #[error("parameter {name} = {value} is outside [{min}, {max}]")]
    OutOfBounds { name: String, value: u128, min: u128, max: u128 },
    #[error("parameters are inconsistent: {0}")]
    Inconsistent(String),
}

/// Parameters a proposal may not change: the consensus layer of version 1 fixes them at genesis.
pub const FIXED_AT_GENESIS: &[&str] = &["epoch_length_blocks"];

impl Params {
    /// Checks the relations between parameters that each range alone cannot: what keeps
    /// consensus able to make progress and governance unable to pay more than voting costs.
    pub fn check_consistent(&self) -> Result<(), ParamError> {
        let fail = |m: String| Err(ParamError::Inconsistent(m));
        if self.notarization_timeout_ms < self.leader_timeout_ms {
            return fail(format!(
                "notarization_timeout_ms ({}) must be at least leader_timeout_ms ({})",
                self.notarization_timeout_ms, self.leader_timeout_ms
            ));
        }
        if self.block_interval_ms.saturating_mul(2) > self.leader_timeout_ms {
            return fail(format!(
                "block_interval_ms ({}) must be at most half of leader_timeout_ms ({})",
                self.block_interval_ms, self.leader_timeout_ms
            ));
        }
        if self.skip_timeout_views >= self.activity_timeout_views {
            return fail(format!(
                "skip_timeout_views ({}) must be below activity_timeout_views ({})",
                self.skip_timeout_views, self.activity_timeout_views
            ));
        }
        if self.voter_reward > self.min_tx_fee {
            return fail(format!(
                "voter_reward ({}) must not exceed min_tx_fee ({}): a vote must not earn more than it costs",
                self.voter_reward, self.min_tx_fee
            ));
        }
        Ok(())
    }

    /// `self` with `name` set to `value`, if the result is within every range and consistent.
    pub fn with(&self, name: &str, value: u128) -> Result<Params, ParamError> {
        let mut next = self.clone();
        next.set(name, value)?;
        next.check_consistent()?;
        Ok(next)
    }

    /// The epoch containing `height`. Epoch `e` is heights `[e·L, (e+1)·L − 1]`, so epoch 0
    /// holds genesis (height 0) and one block fewer than the others.
    pub fn epoch_of(&self, height: u64) -> u64 {
        height / self.epoch_length_blocks as u64
    }

    /// True for the last block of an epoch: the one whose post-state chooses the next
    /// epoch's validators.
    pub fn is_epoch_last(&self, height: u64) -> bool {
        (height + 1).is_multiple_of(self.epoch_length_blocks as u64)
    }

    /// The fee owed to the treasury on a settled amount, rounded down (the remainder stays
    /// with the provider).
    pub fn protocol_fee(&self, amount: Amount) -> Amount {
        amount / 10_000 * self.protocol_fee_bps + amount % 10_000 * self.protocol_fee_bps / 10_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_genesis_defaults() {
        // Pinned: a change here is a protocol change and needs a new version, not an edit.
        let json = serde_json::to_string(&Params::default()).unwrap();
        assert_eq!(
            json,
            r#"{"min_tx_fee":1000,"min_stake":1000000000,"min_provider_stake":100000000,"max_validators":32,"unbonding_delay_blocks":600,"epoch_length_blocks":100,"max_block_txs":10000,"max_block_bytes":4194304,"min_session_deposit":1000,"max_session_blocks":1000000,"session_grace_blocks":100,"protocol_fee_bps":200,"block_interval_ms":200,"leader_timeout_ms":1000,"notarization_timeout_ms":2000,"nullify_retry_ms":10000,"activity_timeout_views":256,"skip_timeout_views":32,"proposal_deposit_min":100000000,"voting_period_blocks":300,"quorum_bps":3340,"threshold_bps":5000,"veto_bps":3340,"voter_reward":1000,"upgrade_readiness_bps":6667,"challenge_bond_min":10000000,"challenge_window_blocks":100,"challenge_committee_size":3,"fault_slash_bps":1000,"equivocation_slash_bps":500,"challenger_reward_bps":1000}"#
        );
        Params::default().validate().unwrap();
    }

    #[test]
    fn golden_ranges() {
        // Pinned like the defaults: the safe range of every parameter is part of the protocol.
        let ranges: Vec<String> = Params::RANGES.iter().map(|(n, lo, hi)| format!("{n}:{lo}..={hi}")).collect();
        assert_eq!(
            ranges.join(" "),
            "min_tx_fee:1..=1000000 min_stake:1000000..=1000000000000000 \
             min_provider_stake:1000000..=1000000000000000 max_validators:1..=100 unbonding_delay_blocks:1..=10000000 \
             epoch_length_blocks:10..=1000000 max_block_txs:100..=20000 max_block_bytes:131072..=8388608 \
             min_session_deposit:1..=1000000000000 max_session_blocks:10..=100000000 session_grace_blocks:1..=1000000 \
             protocol_fee_bps:0..=5000 block_interval_ms:0..=10000 leader_timeout_ms:500..=60000 \
             notarization_timeout_ms:500..=120000 nullify_retry_ms:1000..=600000 activity_timeout_views:16..=100000 \
             skip_timeout_views:1..=10000 proposal_deposit_min:1000000..=100000000000 voting_period_blocks:10..=1000000 \
             quorum_bps:1000..=5000 threshold_bps:5000..=8000 veto_bps:3340..=5000 voter_reward:0..=1000000 \
             upgrade_readiness_bps:6667..=10000 challenge_bond_min:1000000..=10000000000 \
             challenge_window_blocks:10..=100000 challenge_committee_size:1..=15 fault_slash_bps:100..=5000 \
             equivocation_slash_bps:100..=5000 challenger_reward_bps:0..=5000"
        );
    }

    #[test]
    fn bricking_values_are_refused() {
        let p = Params::default();
        // Each of these would end governance or block production for good.
        for (name, value) in [
            ("threshold_bps", 10_000),
            ("quorum_bps", 10_000),
            ("proposal_deposit_min", u128::MAX),
            ("min_tx_fee", 1_000_000_000_000),
            ("leader_timeout_ms", 50),
            ("max_block_bytes", 1024),
            ("min_stake", u128::MAX),
            ("upgrade_readiness_bps", 1),
            ("veto_bps", 1),
        ] {
            assert!(matches!(p.with(name, value), Err(ParamError::OutOfBounds { .. })), "{name} = {value}");
        }
        // In range alone, but not together with the others.
        assert!(matches!(p.with("notarization_timeout_ms", 900), Err(ParamError::Inconsistent(_))));
        assert!(matches!(p.with("block_interval_ms", 600), Err(ParamError::Inconsistent(_))));
        assert!(matches!(p.with("skip_timeout_views", 300), Err(ParamError::Inconsistent(_))));
        assert!(matches!(p.with("voter_reward", 10_000), Err(ParamError::Inconsistent(_))));
        assert!(matches!(p.with("min_tx_fee", 999), Err(ParamError::Inconsistent(_))));
        assert_eq!(p.with("min_tx_fee", 2_000).unwrap().min_tx_fee, 2_000);
    }

    #[test]
    fn set_checks_bounds_and_names() {
        let mut p = Params::default();
        assert!(matches!(p.set("epoch_length_blocks", 0), Err(ParamError::OutOfBounds { .. })));
        assert!(matches!(p.set("nope", 1), Err(ParamError::Unknown(_))));
        p.set("epoch_length_blocks", 50).unwrap();
        assert_eq!(p.get("epoch_length_blocks"), Some(50));
        assert_eq!(Params::NAMES.len(), 31);
    }

    #[test]
    fn protocol_fee_rounds_down_without_overflow() {
        let p = Params::default(); // 2%
        assert_eq!(p.protocol_fee(10_000), 200);
        assert_eq!(p.protocol_fee(49), 0);
        assert_eq!(p.protocol_fee(50), 1);
        assert_eq!(p.protocol_fee(u128::MAX), u128::MAX / 10_000 * 200 + (u128::MAX % 10_000) * 200 / 10_000);
    }

    #[test]
    fn epochs() {
        let p = Params::default();
        assert_eq!(p.epoch_of(0), 0);
        assert_eq!(p.epoch_of(99), 0);
        assert_eq!(p.epoch_of(100), 1);
        assert!(p.is_epoch_last(99));
        assert!(!p.is_epoch_last(100));
    }
}
