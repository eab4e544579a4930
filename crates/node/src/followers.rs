//! Which non-validators may connect: the followers of an epoch's peer set.
//!
//! A node that is not a validator (a provider, a full node) connects to the validators as a
//! *secondary* peer: it receives blocks and certificates and gossips transactions, but does
//! not vote. Admission costs stake, so strangers cannot fill the peer set for free: an account
//! is a follower when it has bonded at least `min_provider_stake` and staked with a p2p address.
//! When there are more than the peer set can hold, the most bonded win (ties by address), so
//! the choice is the same on every node. A follower is admitted at the first epoch boundary
//! after its stake is final, like a validator; the per-peer channel quotas of the network
//! bound what each one can send.

use std::net::SocketAddr;

use plexus_types::{Address, Amount};

/// A staker that may follow: its address, bonded stake and p2p address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub address: Address,
    pub bonded: Amount,
    pub p2p: SocketAddr,
}

/// Most followers admitted when the node's configuration does not say.
pub const FOLLOWERS_MAX_DEFAULT: usize = 64;

/// The followers of a peer set: candidates with at least `min_stake` bonded that are not
/// validators, the `max` most bonded of them (ties by address), in address order.
pub fn select(
    candidates: impl IntoIterator<Item = Candidate>,
    validators: &[(Address, SocketAddr)],
    min_stake: Amount,
    max: usize,
) -> Vec<(Address, SocketAddr)> {
    let mut eligible: Vec<Candidate> = candidates
        .into_iter()
        .filter(|c| c.bonded >= min_stake && !validators.iter().any(|(v, _)| *v == c.address))
        .collect();
    eligible.sort_by(|a, b| b.bonded.cmp(&a.bonded).then_with(|| a.address.cmp(&b.address)));
    eligible.dedup_by(|a, b| a.address == b.address);
    eligible.truncate(max);
    let mut chosen: Vec<(Address, SocketAddr)> = eligible.into_iter().map(|c| (c.address, c.p2p)).collect();
    chosen.sort_by(|a, b| a.0.cmp(&b.0));
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_types::PrivateKey;

    fn candidate(seed: u64, bonded: Amount) -> Candidate {
        Candidate {
            address: PrivateKey::from_seed(seed).address(),
            bonded,
            p2p: format!("10.0.0.{}:26656", seed % 250).parse().unwrap(),
        }
    }

    #[test]
    fn followers_need_stake_are_not_validators_and_are_capped_by_stake() {
        let validator = candidate(1, 1_000);
        let validators = vec![(validator.address.clone(), validator.p2p)];
        let dust = candidate(2, 99);
        let (a, b, c) = (candidate(3, 100), candidate(4, 500), candidate(5, 300));
        let all = vec![validator.clone(), dust.clone(), a.clone(), b.clone(), c.clone()];

        let chosen = select(all.clone(), &validators, 100, 10);
        let addresses: Vec<&Address> = chosen.iter().map(|(a, _)| a).collect();
        assert_eq!(chosen.len(), 3, "{chosen:?}");
        assert!(!addresses.contains(&&validator.address), "a validator is primary, not a follower");
        assert!(!addresses.contains(&&dust.address), "below the minimum stake is not admitted");
        assert!(addresses.windows(2).all(|w| w[0] < w[1]), "address order");

        // Over the cap the most bonded win, whatever order the candidates came in.
        let mut reversed = all.clone();
        reversed.reverse();
        for input in [all, reversed] {
            let two: Vec<Address> = select(input, &validators, 100, 2).into_iter().map(|(a, _)| a).collect();
            let mut expected = vec![b.address.clone(), c.address.clone()];
            expected.sort();
            assert_eq!(two, expected);
        }
        assert!(select(vec![a], &validators, 100, 0).is_empty());
    }

    #[test]
    fn equal_stakes_are_broken_by_address_and_duplicates_count_once() {
        let (x, y) = (candidate(7, 200), candidate(8, 200));
        let first = std::cmp::min(x.address.clone(), y.address.clone());
        let chosen = select(vec![y.clone(), x.clone(), x.clone()], &[], 1, 1);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].0, first);
        assert_eq!(select(vec![x.clone(), x], &[], 1, 5).len(), 1);
    }
}
