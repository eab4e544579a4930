//! Blocks. The header commits to the transactions (a Merkle root) and to the state after
//! executing them (the state root of the authenticated store), so a header alone proves what
//! the chain agreed on. A block's identity is the SHA-256 of its header.

use bytes::BufMut;
use commonware_codec::{Buf, EncodeSize, Error, FixedSize, Read, ReadExt, Write};
use serde::{Deserialize, Serialize};

use crate::Height;
use crate::codec::{read_vec, to_vec};
use crate::crypto::{Address, Hash, hash, hash_parts};
use crate::params::limits;
use crate::tx::SignedTx;
use crate::version::VersionVector;

/// The part of a block that is hashed and agreed on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Header {
    pub height: Height,
    /// Hash of the parent header ([`Hash::ZERO`] for genesis).
    pub parent: Hash,
    /// The consensus view the parent was proposed in (committed to so the consensus context of
    /// a block can be recovered from the block alone).
    pub parent_view: u64,
    /// The consensus epoch this block was proposed in.
    pub epoch: u64,
    /// The consensus view this block was proposed in.
    pub view: u64,
    /// Who proposed it.
    pub proposer: Address,
    /// The proposer's clock in milliseconds since the Unix epoch. Informational only: execution
    /// never reads it, so a wrong clock cannot change state.
    pub timestamp_ms: u64,
    /// Versions of every layer this block was executed under.
    pub versions: VersionVector,
    /// Merkle root of the transaction hashes, in block order.
    pub txs_root: Hash,
    /// Root of the authenticated state after executing this block.
    pub state_root: Hash,
}

impl Header {
    pub fn hash(&self) -> Hash {
        hash(&to_vec(self))
    }
}

impl Write for Header {
    fn write(&self, buf: &mut impl BufMut) {
        self.height.write(buf);
        self.parent.write(buf);
        self.parent_view.write(buf);
        self.epoch.write(buf);
        self.view.write(buf);
        self.proposer.write(buf);
        self.timestamp_ms.write(buf);
        self.versions.write(buf);
        self.txs_root.write(buf);
        self.state_root.write(buf);
    }
}
impl FixedSize for Header {
    const SIZE: usize = 8 + 32 + 8 + 8 + 8 + Address::SIZE + 8 + VersionVector::SIZE + 32 + 32;
}
impl Read for Header {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        Ok(Header {
            height: u64::read(buf)?,
            parent: Hash::read(buf)?,
            parent_view: u64::read(buf)?,
            epoch: u64::read(buf)?,
            view: u64::read(buf)?,
            proposer: Address::read(buf)?,
            timestamp_ms: u64::read(buf)?,
            versions: VersionVector::read(buf)?,
            txs_root: Hash::read(buf)?,
            state_root: Hash::read(buf)?,
        })
    }
}

/// A header and its transactions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub header: Header,
    pub txs: Vec<SignedTx>,
}

impl Block {
    /// The block id: the hash of its header.
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }

    pub fn height(&self) -> Height {
        self.header.height
    }

    /// True when the header's transaction root matches the transactions.
    pub fn txs_root_matches(&self) -> bool {
        txs_root(&self.txs) == self.header.txs_root
    }

    /// Decodes a block from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Block, Error> {
        crate::codec::decode_bounded(bytes, limits::BLOCK_BYTES_MAX, &())
    }
}

impl Write for Block {
    fn write(&self, buf: &mut impl BufMut) {
        self.header.write(buf);
        self.txs.write(buf);
    }
}
impl EncodeSize for Block {
    fn encode_size(&self) -> usize {
        Header::SIZE + self.txs.encode_size()
    }
}
impl Read for Block {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        Ok(Block { header: Header::read(buf)?, txs: read_vec(buf, limits::BLOCK_TXS_MAX, &())? })
    }
}

/// Merkle root of the transactions' hashes.
pub fn txs_root(txs: &[SignedTx]) -> Hash {
    let leaves: Vec<Hash> = txs.iter().map(SignedTx::hash).collect();
    merkle_root(&leaves)
}

/// Binary Merkle root over leaf hashes. Inner nodes are `H(0x01 || left || right)`; an odd node
/// is promoted unchanged; the empty tree is [`Hash::ZERO`]. Leaves are expected to be hashes
/// already (domain-separated by their own encodings).
pub fn merkle_root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return Hash::ZERO;
    }
    let mut level: Vec<Hash> = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => hash_parts(&[&[1u8], l.as_bytes(), r.as_bytes()]),
                [single] => *single,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    level[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::PrivateKey;
    use crate::tx::{Payload, Transaction};

    #[test]
    fn block_roundtrip_and_root() {
        let key = PrivateKey::from_seed(1);
        let txs: Vec<SignedTx> = (0..3)
            .map(|n| {
                Transaction { signer: key.address(), nonce: n, fee: 1, payload: Payload::Unstake { amount: n as u128 } }
                    .sign(&key, "c")
            })
            .collect();
        let header = Header {
            height: 5,
            parent: hash(b"p"),
            parent_view: 8,
            epoch: 0,
            view: 9,
            proposer: key.address(),
            timestamp_ms: 1,
            versions: VersionVector::V1,
            txs_root: txs_root(&txs),
            state_root: hash(b"s"),
        };
        let block = Block { header, txs };
        assert!(block.txs_root_matches());
        let bytes = to_vec(&block);
        assert_eq!(bytes.len(), block.encode_size());
        let back = Block::decode(&bytes).unwrap();
        assert_eq!(back, block);
        assert_eq!(back.hash(), block.hash());
        let mut reordered = block.clone();
        reordered.txs.swap(0, 1);
        assert!(!reordered.txs_root_matches());
    }

    #[test]
    fn merkle_root_shape() {
        let a = hash(b"a");
        let b = hash(b"b");
        let c = hash(b"c");
        assert_eq!(merkle_root(&[]), Hash::ZERO);
        assert_eq!(merkle_root(&[a]), a);
        let ab = hash_parts(&[&[1], a.as_bytes(), b.as_bytes()]);
        assert_eq!(merkle_root(&[a, b]), ab);
        assert_eq!(merkle_root(&[a, b, c]), hash_parts(&[&[1], ab.as_bytes(), c.as_bytes()]));
    }
}
