//! The pool of transactions waiting to be ordered: bounded in count, bytes and per sender;
//! ordered by fee across senders and by nonce within a sender; replace-by-fee for the same
//! nonce; lowest-fee eviction when full.
//!
//! Under adversarial fees:
//! - Replacing a transaction drops every later one of the same sender: they were admitted
//!   against what the replaced one would spend, and may no longer be payable.
//! - A transaction the block builder finds unable to pay its fee is evicted with its followers
//!   ([`Mempool::evict_with_followers`]), so junk cannot keep taking candidate slots.
//! - A quarter of every block's candidates go to the oldest ready transactions whatever their
//!   fees ([`AGE_LANE_DIVISOR`]): a minimum-fee transaction with `k` older transactions ahead of
//!   it is offered within `ceil((k + 1) / (max / 4))` proposals, however much others pay.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use commonware_codec::EncodeSize;
use plexus_types::{Address, Amount, Hash, SignedTx};

/// Mempool bounds.
#[derive(Clone, Debug)]
pub struct MempoolConfig {
    /// Most transactions held.
    pub txs_max: usize,
    /// Most encoded bytes held.
    pub bytes_max: usize,
    /// Most transactions held per sender (and how far past its account nonce it may queue).
    pub per_sender_max: usize,
}

impl Default for MempoolConfig {
    fn default() -> Self {
        MempoolConfig { txs_max: 100_000, bytes_max: 64 * 1024 * 1024, per_sender_max: 256 }
    }
}

/// One in this many block candidates is taken by age (oldest ready transaction first) instead
/// of by fee.
pub const AGE_LANE_DIVISOR: usize = 4;

/// Why a transaction was not added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MempoolError {
    #[error("transaction is already in the mempool")]
    AlreadyKnown,
    #[error("nonce {got} was already used (account nonce is {expected})")]
    StaleNonce { expected: u64, got: u64 },
    #[error("nonce {got} is too far ahead of the account nonce {expected} (limit {limit})")]
    NonceTooFarAhead { expected: u64, got: u64, limit: usize },
    #[error("a transaction with nonce {nonce} is already pending with fee {existing}; pay more to replace it")]
    ReplacementUnderpriced { nonce: u64, existing: Amount },
    #[error("mempool is full and fee {fee} does not beat the lowest pending fee")]
    Full { fee: Amount },
}

/// What happened on a successful insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// Replaced a lower-fee transaction with the same nonce.
    Replaced {
        old: Hash,
        /// The sender's later transactions, dropped with it.
        dropped: usize,
    },
}

#[derive(Default)]
pub struct Mempool {
    config: MempoolConfig,
    by_sender: BTreeMap<Address, BTreeMap<u64, Entry>>,
    by_hash: HashMap<Hash, (Address, u64)>,
    /// (fee, insertion sequence, hash): the eviction order, lowest first.
    by_fee: BTreeSet<(Amount, u64, Hash)>,
    bytes: usize,
    seq: u64,
}

struct Entry {
    tx: Arc<SignedTx>,
    hash: Hash,
    seq: u64,
    size: usize,
}

impl Mempool {
    pub fn new(config: MempoolConfig) -> Self {
        Mempool { config, ..Mempool::default() }
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn contains(&self, hash: &Hash) -> bool {
        self.by_hash.contains_key(hash)
    }

    /// The next nonce a sender should use, counting its contiguous pending transactions.
    pub fn next_nonce(&self, sender: &Address, account_nonce: u64) -> u64 {
        let mut next = account_nonce;
        if let Some(txs) = self.by_sender.get(sender) {
            while txs.contains_key(&next) {
                next += 1;
            }
        }
        next
    }

    /// The sender's pending transactions from `account_nonce` on, contiguous, in nonce order.
    pub fn pending_of(&self, sender: &Address, account_nonce: u64) -> Vec<Arc<SignedTx>> {
        let mut out = Vec::new();
        if let Some(txs) = self.by_sender.get(sender) {
            let mut next = account_nonce;
            while let Some(e) = txs.get(&next) {
                out.push(e.tx.clone());
                next += 1;
            }
        }
        out
    }

    /// Adds a transaction whose signature and admissibility the caller already checked.
    pub fn insert(&mut self, tx: SignedTx, account_nonce: u64) -> Result<Inserted, MempoolError> {
        let hash = tx.hash();
        if self.by_hash.contains_key(&hash) {
            return Err(MempoolError::AlreadyKnown);
        }
        let sender = tx.tx.signer.clone();
        let nonce = tx.tx.nonce;
        let fee = tx.tx.fee;
        if nonce < account_nonce {
            return Err(MempoolError::StaleNonce { expected: account_nonce, got: nonce });
        }
        if nonce >= account_nonce + self.config.per_sender_max as u64 {
            return Err(MempoolError::NonceTooFarAhead {
                expected: account_nonce,
                got: nonce,
                limit: self.config.per_sender_max,
            });
        }
        let mut replaced = None;
        if let Some(existing) = self.by_sender.get(&sender).and_then(|m| m.get(&nonce)) {
            if existing.tx.tx.fee >= fee {
                return Err(MempoolError::ReplacementUnderpriced { nonce, existing: existing.tx.tx.fee });
            }
            replaced = Some(existing.hash);
        }
        let size = tx.encode_size();
        // Decide every eviction before changing anything, so a refused transaction leaves the
        // pool exactly as it was (including the one it would have replaced).
        let mut count = self.by_hash.len() - usize::from(replaced.is_some());
        let mut bytes = self.bytes - replaced.map_or(0, |h| self.size_of(&h));
        let mut evict = Vec::new();
        let mut lowest = self.by_fee.iter().filter(|(_, _, h)| Some(*h) != replaced);
        while count >= self.config.txs_max || bytes + size > self.config.bytes_max {
            let Some(&(lowest_fee, _, hash)) = lowest.next() else { return Err(MempoolError::Full { fee }) };
            if lowest_fee >= fee {
                return Err(MempoolError::Full { fee });
            }
            count -= 1;
            bytes -= self.size_of(&hash);
            evict.push(hash);
        }
        for hash in replaced.iter().chain(&evict) {
            self.remove(hash);
        }
        // Whatever was queued behind a replaced transaction was admitted against what the old
        // one would spend; the new one may spend more. Drop it: the sender re-submits.
        let dropped = match replaced {
            Some(_) => self.remove_from(&sender, nonce + 1),
            None => 0,
        };
        self.seq += 1;
        let entry = Entry { tx: Arc::new(tx), hash, seq: self.seq, size };
        self.by_fee.insert((fee, self.seq, hash));
        self.by_hash.insert(hash, (sender.clone(), nonce));
        self.bytes += size;
        self.by_sender.entry(sender).or_default().insert(nonce, entry);
        Ok(match replaced {
            Some(old) => Inserted::Replaced { old, dropped },
            None => Inserted::New,
        })
    }

    /// Removes `sender`'s transactions with nonces from `nonce` on; returns how many.
    fn remove_from(&mut self, sender: &Address, nonce: u64) -> usize {
        let later: Vec<Hash> =
            self.by_sender.get(sender).map(|txs| txs.range(nonce..).map(|(_, e)| e.hash).collect()).unwrap_or_default();
        for hash in &later {
            self.remove(hash);
        }
        later.len()
    }

    /// Removes a transaction that can never apply (it cannot pay its fee) and the same sender's
    /// later ones, which could only follow it. Returns how many were removed.
    pub fn evict_with_followers(&mut self, hash: &Hash) -> usize {
        let Some((sender, nonce)) = self.by_hash.get(hash).cloned() else { return 0 };
        self.remove_from(&sender, nonce)
    }

    /// Evicts, for each of `senders`, its next ready transaction and its followers when
    /// `can_pay(tx)` says the sender's balance no longer covers that transaction's fee (a
    /// balance only falls through the sender's own transactions, so after a block only its
    /// senders need a look). Returns how many were removed.
    pub fn evict_unpayable<'a>(
        &mut self,
        senders: impl IntoIterator<Item = &'a Address>,
        account_nonce: impl Fn(&Address) -> u64,
        can_pay: impl Fn(&SignedTx) -> bool,
    ) -> usize {
        let mut removed = 0;
        for sender in senders {
            let next = account_nonce(sender);
            let head = self.by_sender.get(sender).and_then(|txs| txs.get(&next)).map(|e| (e.hash, e.tx.clone()));
            if let Some((hash, tx)) = head
                && !can_pay(&tx)
            {
                removed += self.evict_with_followers(&hash);
            }
        }
        removed
    }

    fn size_of(&self, hash: &Hash) -> usize {
        let (sender, nonce) = &self.by_hash[hash];
        self.by_sender[sender][nonce].size
    }

    pub fn remove(&mut self, hash: &Hash) -> Option<Arc<SignedTx>> {
        let (sender, nonce) = self.by_hash.remove(hash)?;
        let txs = self.by_sender.get_mut(&sender).expect("indexed sender");
        let entry = txs.remove(&nonce).expect("indexed nonce");
        if txs.is_empty() {
            self.by_sender.remove(&sender);
        }
        self.by_fee.remove(&(entry.tx.tx.fee, entry.seq, entry.hash));
        self.bytes -= entry.size;
        Some(entry.tx)
    }

    /// Drops every transaction whose nonce the chain has passed.
    pub fn prune(&mut self, account_nonce: impl Fn(&Address) -> u64) {
        let stale: Vec<Hash> = self
            .by_sender
            .iter()
            .flat_map(|(sender, txs)| {
                let next = account_nonce(sender);
                txs.range(..next).map(|(_, e)| e.hash).collect::<Vec<_>>()
            })
            .collect();
        for hash in stale {
            self.remove(&hash);
        }
    }

    /// Block candidates, at most `max`: a sender's transaction is ready once all its lower
    /// nonces are taken. The first quarter ([`AGE_LANE_DIVISOR`]) are the oldest ready
    /// transactions, the rest the highest-fee ones (earliest first among equal fees); so
    /// paying more gets a transaction in sooner, but never keeps a cheaper one out for long.
    pub fn candidates(&self, account_nonce: impl Fn(&Address) -> u64, max: usize) -> Vec<SignedTx> {
        // Each sender's next ready transaction, indexed by fee and by age.
        let mut by_fee: BTreeSet<(Amount, std::cmp::Reverse<u64>, &Address, u64)> = BTreeSet::new();
        let mut by_age: BTreeSet<(u64, &Address, u64)> = BTreeSet::new();
        for (sender, txs) in &self.by_sender {
            let next = account_nonce(sender);
            if let Some(e) = txs.get(&next) {
                by_fee.insert((e.tx.tx.fee, std::cmp::Reverse(e.seq), sender, next));
                by_age.insert((e.seq, sender, next));
            }
        }
        let lane = max / AGE_LANE_DIVISOR;
        let mut out = Vec::with_capacity(max.min(self.len()));
        while out.len() < max {
            let take_oldest = out.len() < lane;
            let (sender, nonce) = if take_oldest {
                match by_age.pop_first() {
                    Some((_, sender, nonce)) => (sender, nonce),
                    None => break,
                }
            } else {
                match by_fee.pop_last() {
                    Some((_, _, sender, nonce)) => (sender, nonce),
                    None => break,
                }
            };
            let txs = &self.by_sender[sender];
            let e = &txs[&nonce];
            if take_oldest {
                by_fee.remove(&(e.tx.tx.fee, std::cmp::Reverse(e.seq), sender, nonce));
            } else {
                by_age.remove(&(e.seq, sender, nonce));
            }
            out.push(e.tx.as_ref().clone());
            if let Some(n) = txs.get(&(nonce + 1)) {
                by_fee.insert((n.tx.tx.fee, std::cmp::Reverse(n.seq), sender, nonce + 1));
                by_age.insert((n.seq, sender, nonce + 1));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_types::PrivateKey;
    use plexus_types::tx::{Payload, Transaction};

    fn tx(key: &PrivateKey, nonce: u64, fee: Amount) -> SignedTx {
        Transaction { signer: key.address(), nonce, fee, payload: Payload::Unstake { amount: 1 } }.sign(key, "c")
    }

    #[test]
    fn orders_by_fee_across_senders_and_nonce_within() {
        let a = PrivateKey::from_seed(1);
        let b = PrivateKey::from_seed(2);
        let mut m = Mempool::new(MempoolConfig::default());
        m.insert(tx(&a, 0, 10), 0).unwrap();
        m.insert(tx(&a, 1, 100), 0).unwrap();
        m.insert(tx(&b, 0, 50), 0).unwrap();
        let order: Vec<(Address, u64)> =
            m.candidates(|_| 0, 3).into_iter().map(|t| (t.tx.signer.clone(), t.tx.nonce)).collect();
        // b0 (50) beats a0 (10); a1 (100) is only ready after a0. (Three candidates leave no
        // room for the age lane.)
        assert_eq!(order, vec![(b.address(), 0), (a.address(), 0), (a.address(), 1)]);
        assert_eq!(m.next_nonce(&a.address(), 0), 2);
    }

    #[test]
    fn replace_by_fee_and_stale_nonces() {
        let a = PrivateKey::from_seed(1);
        let mut m = Mempool::new(MempoolConfig::default());
        m.insert(tx(&a, 0, 10), 0).unwrap();
        assert!(matches!(m.insert(tx(&a, 0, 10), 0), Err(MempoolError::AlreadyKnown)));
        assert!(matches!(m.insert(tx(&a, 0, 5), 0), Err(MempoolError::ReplacementUnderpriced { .. })));
        assert!(matches!(m.insert(tx(&a, 0, 20), 0), Ok(Inserted::Replaced { .. })));
        assert_eq!(m.len(), 1);
        assert!(matches!(m.insert(tx(&a, 3, 20), 5), Err(MempoolError::StaleNonce { .. })));
        m.prune(|_| 1);
        assert!(m.is_empty());
        assert_eq!(m.bytes(), 0);
    }

    #[test]
    fn replacing_a_transaction_drops_what_was_queued_behind_it() {
        let a = PrivateKey::from_seed(1);
        let b = PrivateKey::from_seed(2);
        let mut m = Mempool::new(MempoolConfig::default());
        for nonce in 0..4 {
            m.insert(tx(&a, nonce, 10), 0).unwrap();
        }
        m.insert(tx(&b, 0, 10), 0).unwrap();
        // Replacing nonce 1 (say, with a transfer of everything) strands nonces 2 and 3.
        assert!(matches!(m.insert(tx(&a, 1, 20), 0), Ok(Inserted::Replaced { dropped: 2, .. })));
        assert_eq!(m.next_nonce(&a.address(), 0), 2);
        assert_eq!(m.len(), 3, "a0, the new a1 and b0");
        // Unpayable transactions leave with their followers.
        m.insert(tx(&a, 2, 10), 0).unwrap();
        let removed = m.evict_unpayable([&a.address(), &b.address()], |_| 1, |t| t.tx.signer != a.address());
        assert_eq!(removed, 2, "a1 and a2");
        assert_eq!(m.len(), 2);
        assert_eq!(m.evict_with_followers(&tx(&b, 0, 10).hash()), 1);
        assert_eq!(m.evict_with_followers(&tx(&b, 0, 10).hash()), 0);
    }

    #[test]
    fn a_minimum_fee_transaction_gets_in_while_others_outbid_it() {
        // An attacker keeps the pool full of higher fees, more every block than a block holds.
        // The honest minimum-fee transaction is still offered within the age lane's bound.
        let mut m = Mempool::new(MempoolConfig { txs_max: 1_000_000, bytes_max: usize::MAX, per_sender_max: 4 });
        let per_block = 200;
        let mut next_key = 1_000u64;
        let mut flood = |m: &mut Mempool, n: usize| {
            for _ in 0..n {
                let k = PrivateKey::from_seed(next_key);
                next_key += 1;
                m.insert(tx(&k, 0, 1_000_000 + next_key as u128), 0).unwrap();
            }
        };
        flood(&mut m, 1_000);
        let honest = PrivateKey::from_seed(7);
        m.insert(tx(&honest, 0, 1), 0).unwrap();
        let older = 1_000;
        let lane = per_block / AGE_LANE_DIVISOR;
        let bound = (older + 1usize).div_ceil(lane);
        let mut blocks = 0;
        loop {
            flood(&mut m, 2 * per_block);
            let picked = m.candidates(|_| 0, per_block);
            blocks += 1;
            let got = picked.iter().any(|t| t.tx.signer == honest.address());
            for t in picked {
                m.remove(&t.hash());
            }
            if got {
                break;
            }
            assert!(blocks <= bound, "not offered within {bound} blocks");
        }
        assert!(blocks <= bound);
        // Without the age lane it would never be: every block's fee order is all attacker.
        let mut by_fee_only = m.candidates(|_| 0, per_block);
        by_fee_only.drain(..lane);
        assert!(by_fee_only.iter().all(|t| t.tx.fee > 1));
    }

    #[test]
    fn bounded_with_lowest_fee_eviction() {
        let mut m = Mempool::new(MempoolConfig { txs_max: 3, bytes_max: usize::MAX, per_sender_max: 4 });
        let keys: Vec<PrivateKey> = (0..5).map(PrivateKey::from_seed).collect();
        for (i, k) in keys[..3].iter().enumerate() {
            m.insert(tx(k, 0, 10 + i as u128), 0).unwrap();
        }
        assert!(matches!(m.insert(tx(&keys[3], 0, 5), 0), Err(MempoolError::Full { .. })));
        m.insert(tx(&keys[4], 0, 50), 0).unwrap();
        assert_eq!(m.len(), 3);
        let fees: Vec<Amount> = m.candidates(|_| 0, 3).iter().map(|t| t.tx.fee).collect();
        assert_eq!(fees, vec![50, 12, 11]);
        // With room for an age lane, the oldest come first.
        let fees: Vec<Amount> = m.candidates(|_| 0, 8).iter().map(|t| t.tx.fee).collect();
        assert_eq!(fees, vec![11, 12, 50]);
        assert!(matches!(m.insert(tx(&keys[0], 9, 50), 0), Err(MempoolError::NonceTooFarAhead { .. })));
    }

    #[test]
    fn refused_replacement_keeps_the_original() {
        // Full pool, every fee above the replacement's: the replacement is refused and the
        // transaction it would have replaced stays.
        let mut m = Mempool::new(MempoolConfig { txs_max: 2, bytes_max: usize::MAX, per_sender_max: 4 });
        let a = PrivateKey::from_seed(1);
        let b = PrivateKey::from_seed(2);
        m.insert(tx(&a, 0, 100), 0).unwrap();
        m.insert(tx(&a, 1, 10), 0).unwrap();
        let original = tx(&a, 1, 10).hash();
        // Replacing a1 frees its own slot, so it fits without evicting anything.
        assert!(matches!(m.insert(tx(&a, 1, 20), 0), Ok(Inserted::Replaced { old, .. }) if old == original));
        // A new sender with a low fee cannot evict the higher fees.
        assert!(matches!(m.insert(tx(&b, 0, 15), 0), Err(MempoolError::Full { .. })));
        assert_eq!(m.len(), 2);
        let bytes_before = m.bytes();
        let mut small = Mempool::new(MempoolConfig { txs_max: 10, bytes_max: bytes_before, per_sender_max: 4 });
        small.insert(tx(&a, 0, 100), 0).unwrap();
        small.insert(tx(&b, 0, 300), 0).unwrap();
        // A bigger replacement that needs room the pool cannot free is refused, original kept.
        let bigger = Transaction {
            signer: a.address(),
            nonce: 0,
            fee: 200,
            payload: Payload::Stake { amount: 1, p2p_address: "127.0.0.1:1".into() },
        }
        .sign(&a, "c");
        let kept = tx(&a, 0, 100).hash();
        assert!(matches!(small.insert(bigger, 0), Err(MempoolError::Full { .. })));
        assert!(small.contains(&kept));
        assert_eq!(small.len(), 2);
    }
}
