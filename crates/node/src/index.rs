//! Secondary indexes the node keeps for its API, beside (not in) the consensus state: sessions
//! by client and by provider, challenges by accused provider and by challenger, and unbonding
//! amounts by staker. Listing a provider's sessions or
//! an account's unbonding stake then reads only that party's entries instead of scanning a whole
//! table on every request.
//!
//! Built once from the committed state when the node opens, then kept up to date from each
//! finalized block's writes. They change nothing that any other node computes.

use std::collections::{BTreeMap, BTreeSet};

use plexus_execution::ChangeSet;
use plexus_execution::state::{self as st, Challenge, Session, UnbondingBucket};
use plexus_types::{Address, Hash, Height};

/// The API's indexes over the committed state.
#[derive(Default)]
pub struct Indexes {
    by_client: BTreeSet<(Address, Hash)>,
    by_provider: BTreeSet<(Address, Hash)>,
    parties: BTreeMap<Hash, (Address, Address)>,
    unbonding: BTreeSet<(Address, Height)>,
    unbonding_at: BTreeMap<Height, Vec<Address>>,
    /// Challenges by (provider, id) and (challenger, id); a challenge's parties never change.
    challenges_of_provider: BTreeSet<(Address, u64)>,
    challenges_by: BTreeSet<(Address, u64)>,
}

fn challenge_id(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

fn session_id(key: &[u8]) -> Option<Hash> {
    Some(Hash::from_bytes(key.get(1..33)?.try_into().ok()?))
}

fn height_of(key: &[u8]) -> Option<Height> {
    Some(Height::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

impl Indexes {
    /// Indexes every session and unbonding bucket of `state`.
    pub fn build(state: &BTreeMap<Vec<u8>, Vec<u8>>) -> Self {
        let mut ix = Indexes::default();
        for (k, v) in st::scan_table(state, st::table::SESSION) {
            ix.put_session(k, Some(v));
        }
        for (k, v) in st::scan_table(state, st::table::UNBONDING) {
            ix.put_unbonding(k, Some(v));
        }
        for (k, v) in st::scan_table(state, st::table::CHALLENGE) {
            ix.put_challenge(k, Some(v));
        }
        ix
    }

    /// Follows one block's writes.
    pub fn apply(&mut self, changes: &ChangeSet) {
        for (k, v) in changes {
            match k.first() {
                Some(&st::table::SESSION) => self.put_session(k, v.as_ref()),
                Some(&st::table::UNBONDING) => self.put_unbonding(k, v.as_ref()),
                Some(&st::table::CHALLENGE) => self.put_challenge(k, v.as_ref()),
                _ => {}
            }
        }
    }

    fn put_session(&mut self, key: &[u8], value: Option<&Vec<u8>>) {
        let Some(id) = session_id(key) else { return };
        if let Some((client, provider)) = self.parties.remove(&id) {
            self.by_client.remove(&(client, id));
            self.by_provider.remove(&(provider, id));
        }
        if let Some(bytes) = value {
            let s: Session = st::decode_record(key, bytes);
            self.by_client.insert((s.client.clone(), id));
            self.by_provider.insert((s.provider.clone(), id));
            self.parties.insert(id, (s.client, s.provider));
        }
    }

    fn put_unbonding(&mut self, key: &[u8], value: Option<&Vec<u8>>) {
        let Some(height) = height_of(key) else { return };
        for staker in self.unbonding_at.remove(&height).unwrap_or_default() {
            self.unbonding.remove(&(staker, height));
        }
        if let Some(bytes) = value {
            let bucket: UnbondingBucket = st::decode_record(key, bytes);
            let stakers: Vec<Address> = bucket.0.into_iter().map(|(a, _)| a).collect();
            for a in &stakers {
                self.unbonding.insert((a.clone(), height));
            }
            self.unbonding_at.insert(height, stakers);
        }
    }

    fn put_challenge(&mut self, key: &[u8], value: Option<&Vec<u8>>) {
        let (Some(id), Some(bytes)) = (challenge_id(key), value) else { return };
        let c: Challenge = st::decode_record(key, bytes);
        self.challenges_of_provider.insert((c.provider, id));
        self.challenges_by.insert((c.challenger, id));
    }

    /// Up to `limit` challenges of `provider` (accused), newest first, before `before`.
    pub fn challenges_of_provider(&self, provider: &Address, before: Option<u64>, limit: usize) -> Vec<u64> {
        newest(&self.challenges_of_provider, provider, before, limit)
    }

    /// Up to `limit` challenges `challenger` opened, newest first, before `before`.
    pub fn challenges_by(&self, challenger: &Address, before: Option<u64>, limit: usize) -> Vec<u64> {
        newest(&self.challenges_by, challenger, before, limit)
    }

    /// Up to `limit` sessions of `client`, in id order, after `after`.
    pub fn sessions_of_client(&self, client: &Address, after: Option<&Hash>, limit: usize) -> Vec<Hash> {
        page(&self.by_client, client, after, limit)
    }

    /// Up to `limit` sessions served by `provider`, in id order, after `after`.
    pub fn sessions_of_provider(&self, provider: &Address, after: Option<&Hash>, limit: usize) -> Vec<Hash> {
        page(&self.by_provider, provider, after, limit)
    }

    /// The heights at which `staker` has stake maturing.
    pub fn unbonding_heights(&self, staker: &Address) -> Vec<Height> {
        self.unbonding.range((staker.clone(), 0)..=(staker.clone(), Height::MAX)).map(|(_, h)| *h).collect()
    }
}

fn page(set: &BTreeSet<(Address, Hash)>, party: &Address, after: Option<&Hash>, limit: usize) -> Vec<Hash> {
    use std::ops::Bound;
    let start = match after {
        Some(h) => Bound::Excluded((party.clone(), *h)),
        None => Bound::Included((party.clone(), Hash::ZERO)),
    };
    let end = Bound::Included((party.clone(), Hash::from_bytes([0xff; 32])));
    set.range((start, end)).take(limit).map(|(_, h)| *h).collect()
}

fn newest(set: &BTreeSet<(Address, u64)>, party: &Address, before: Option<u64>, limit: usize) -> Vec<u64> {
    let end = before.unwrap_or(u64::MAX);
    set.range((party.clone(), 0)..(party.clone(), end)).rev().take(limit).map(|(_, id)| *id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_types::PrivateKey;
    use plexus_types::codec::to_vec;
    use plexus_types::tx::ModelPrice;

    fn session(client: &Address, provider: &Address) -> Session {
        Session {
            client: client.clone(),
            provider: provider.clone(),
            model: Hash::ZERO,
            deposit: 10,
            price: ModelPrice { model: Hash::ZERO, input_per_1k: 1, output_per_1k: 1 },
            max_input_per_1k: 1,
            max_output_per_1k: 1,
            opened_height: 1,
            expiry_height: 9,
            settled_seq: 0,
            settled_input_tokens: 0,
            settled_output_tokens: 0,
            settled_amount: 0,
            status: st::SessionStatus::Open,
            refunded: 0,
        }
    }

    #[test]
    fn follows_blocks_and_pages_by_party() {
        let (c, p, q) = (
            PrivateKey::from_seed(1).address(),
            PrivateKey::from_seed(2).address(),
            PrivateKey::from_seed(3).address(),
        );
        let mut state = BTreeMap::new();
        let ids: Vec<Hash> = (0..5u8).map(|i| plexus_types::hash(&[i])).collect();
        for (i, id) in ids.iter().enumerate() {
            let provider = if i % 2 == 0 { &p } else { &q };
            state.insert(st::keys::session(id), to_vec(&session(&c, provider)));
        }
        let mut ix = Indexes::build(&state);
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ix.sessions_of_client(&c, None, 100), sorted);
        assert_eq!(ix.sessions_of_client(&c, None, 2), sorted[..2]);
        assert_eq!(ix.sessions_of_client(&c, Some(&sorted[1]), 2), sorted[2..4]);
        assert_eq!(ix.sessions_of_provider(&p, None, 100).len(), 3);
        assert!(ix.sessions_of_provider(&c, None, 100).is_empty());
        // A new session and an unbonding bucket arrive with a block.
        let mut changes = ChangeSet::new();
        let new = plexus_types::hash(b"new");
        changes.insert(st::keys::session(&new), Some(to_vec(&session(&q, &p))));
        changes.insert(st::keys::unbonding(40), Some(to_vec(&UnbondingBucket(vec![(c.clone(), 5), (q.clone(), 1)]))));
        ix.apply(&changes);
        assert_eq!(ix.sessions_of_provider(&p, None, 100).len(), 4);
        assert_eq!(ix.sessions_of_client(&q, None, 100), vec![new]);
        assert_eq!(ix.unbonding_heights(&c), vec![40]);
        // The bucket matures (deleted): the index forgets it.
        let mut changes = ChangeSet::new();
        changes.insert(st::keys::unbonding(40), None);
        ix.apply(&changes);
        assert!(ix.unbonding_heights(&c).is_empty());
    }
}
