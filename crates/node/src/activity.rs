//! Which finalized transactions each address sent or received, for the explorer's search by
//! address (`/chain/v1/accounts/{address}/txs`).
//!
//! Caught up on demand from archived blocks together with [`crate::earnings`]; node-local and
//! changes nothing any other node computes. Each address keeps only its newest
//! [`TXS_PER_ADDRESS`] entries, so the index grows with the number of accounts (as the state
//! does), not with the length of the chain.

use std::collections::{BTreeMap, VecDeque};

use plexus_types::tx::Payload;
use plexus_types::{Address, Hash, Height, SignedTx};
use serde::Serialize;

/// Most transactions remembered per address (the newest).
pub const TXS_PER_ADDRESS: usize = 100;

/// One transaction an address took part in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TxRef {
    pub hash: Hash,
    pub height: Height,
    /// Its position in the block.
    pub index: u32,
    /// The payload's kind (`transfer`, `open_session`, ...).
    pub kind: &'static str,
    pub signer: Address,
    /// The other party named by the payload (a transfer's recipient, a session's provider).
    pub counterparty: Option<Address>,
}

/// Every address's newest transactions.
#[derive(Default)]
pub struct Activity {
    txs: BTreeMap<Address, VecDeque<TxRef>>,
}

impl Activity {
    /// Records the transactions of block `height` (blocks in order).
    pub fn add_block(&mut self, height: Height, txs: &[SignedTx]) {
        for (index, signed) in txs.iter().enumerate() {
            let tx = &signed.tx;
            let counterparty = match &tx.payload {
                Payload::Transfer { to, .. } => Some(to.clone()),
                Payload::OpenSession { provider, .. } | Payload::OpenSessionIn { provider, .. } => {
                    Some(provider.clone())
                }
                _ => None,
            };
            let entry = TxRef {
                hash: signed.hash(),
                height,
                index: u32::try_from(index).unwrap_or(u32::MAX),
                kind: tx.payload.kind(),
                signer: tx.signer.clone(),
                counterparty: counterparty.clone(),
            };
            let mut parties = vec![tx.signer.clone()];
            parties.extend(counterparty.filter(|c| c != &tx.signer));
            for party in parties {
                let list = self.txs.entry(party).or_default();
                if list.len() == TXS_PER_ADDRESS {
                    list.pop_front();
                }
                list.push_back(entry.clone());
            }
        }
    }

    /// `address`'s remembered transactions, newest first.
    pub fn txs(&self, address: &Address) -> impl Iterator<Item = &TxRef> {
        self.txs.get(address).into_iter().flat_map(|l| l.iter().rev())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_types::PrivateKey;
    use plexus_types::tx::Transaction;

    fn transfer(from: &PrivateKey, nonce: u64, to: &Address) -> SignedTx {
        Transaction { signer: from.address(), nonce, fee: 1, payload: Payload::Transfer { to: to.clone(), amount: 5 } }
            .sign(from, "test")
    }

    #[test]
    fn sender_and_recipient_see_a_transfer_and_old_entries_fall_off() {
        let (a, b) = (PrivateKey::from_seed(1), PrivateKey::from_seed(2));
        let mut activity = Activity::default();
        activity.add_block(1, &[transfer(&a, 0, &b.address())]);
        let seen: Vec<_> = activity.txs(&b.address()).collect();
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].kind, seen[0].height, seen[0].index), ("transfer", 1, 0));
        assert_eq!(seen[0].signer, a.address());
        assert_eq!(seen[0].counterparty, Some(b.address()));
        assert_eq!(activity.txs(&a.address()).count(), 1);

        // A transfer to oneself is listed once.
        activity.add_block(2, &[transfer(&a, 1, &a.address())]);
        assert_eq!(activity.txs(&a.address()).count(), 2);

        for n in 0..(TXS_PER_ADDRESS as u64 + 5) {
            activity.add_block(3 + n, &[transfer(&a, 2 + n, &b.address())]);
        }
        let newest: Vec<_> = activity.txs(&b.address()).map(|t| t.height).collect();
        assert_eq!(newest.len(), TXS_PER_ADDRESS);
        assert_eq!(newest[0], 3 + TXS_PER_ADDRESS as u64 + 4, "newest first");
        assert!(newest.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(activity.txs(&PrivateKey::from_seed(3).address()).count(), 0);
    }
}
