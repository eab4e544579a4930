//! The pool of transactions waiting to be ordered: bounded in count, bytes and per sender;
//! ordered by fee across senders and by nonce within a sender; replace-by-fee for the same
//! nonce; lowest-fee eviction when full.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
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
    Replaced(Hash),
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
        self.seq += 1;
        let entry = Entry { tx: Arc::new(tx), hash, seq: self.seq, size };
        self.by_fee.insert((fee, self.seq, hash));
        self.by_hash.insert(hash, (sender.clone(), nonce));
        self.bytes += size;
        self.by_sender.entry(sender).or_default().insert(nonce, entry);
        Ok(match replaced {
            Some(old) => Inserted::Replaced(old),
            None => Inserted::New,
        })
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

    /// Block candidates: the highest-fee ready transaction first, where a sender's transaction
    /// is ready once all its lower nonces are taken. At most `max` transactions.
    pub fn candidates(&self, account_nonce: impl Fn(&Address) -> u64, max: usize) -> Vec<SignedTx> {
        // Heap of each sender's next ready transaction, by (fee, earliest insertion).
        let mut heap = BinaryHeap::new();
        for (sender, txs) in &self.by_sender {
            let next = account_nonce(sender);
            if let Some(e) = txs.get(&next) {
                heap.push((e.tx.tx.fee, std::cmp::Reverse(e.seq), sender, next));
            }
        }
        let mut out = Vec::new();
        while let Some((_, _, sender, nonce)) = heap.pop() {
            if out.len() >= max {
                break;
            }
            let txs = &self.by_sender[sender];
            out.push(txs[&nonce].tx.as_ref().clone());
            if let Some(e) = txs.get(&(nonce + 1)) {
                heap.push((e.tx.tx.fee, std::cmp::Reverse(e.seq), sender, nonce + 1));
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
            m.candidates(|_| 0, 10).into_iter().map(|t| (t.tx.signer.clone(), t.tx.nonce)).collect();
        // b0 (50) beats a0 (10); a1 (100) is only ready after a0.
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
        assert!(matches!(m.insert(tx(&a, 0, 20), 0), Ok(Inserted::Replaced(_))));
        assert_eq!(m.len(), 1);
        assert!(matches!(m.insert(tx(&a, 3, 20), 5), Err(MempoolError::StaleNonce { .. })));
        m.prune(|_| 1);
        assert!(m.is_empty());
        assert_eq!(m.bytes(), 0);
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
        let fees: Vec<Amount> = m.candidates(|_| 0, 10).iter().map(|t| t.tx.fee).collect();
        assert_eq!(fees, vec![50, 12, 11]);
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
        assert!(matches!(m.insert(tx(&a, 1, 20), 0), Ok(Inserted::Replaced(h)) if h == original));
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
