//! Finalized blocks with their execution results, by height and by hash, and an index from
//! transaction hash to the height that included it.

use std::num::{NonZeroU16, NonZeroU64, NonZeroUsize};

use bytes::BufMut;
use commonware_codec::{Buf, EncodeSize, Error as CodecError, RangeCfg, Read, ReadExt, Write};
use commonware_runtime::buffer::paged::CacheRef;
use commonware_runtime::{Clock, Metrics, Spawner, Storage};
use commonware_storage::archive::{Archive as _, Identifier, immutable};
use futures::lock::Mutex;
use plexus_types::{Block, Hash, Height};

use crate::{StoreConfig, StoreError};

/// A finalized block as the API serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRecord {
    pub block: Block,
    /// Execution results and events, JSON-encoded by the node.
    pub results_json: Vec<u8>,
    /// The consensus certificate that finalized it, in the engine's encoding (empty for genesis).
    pub finalization: Vec<u8>,
    /// Transactions in all blocks before this one (the tx index position of its first tx).
    pub txs_before: u64,
}

/// Largest encoded results of one block, in bytes.
const RESULTS_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest encoded finalization certificate, in bytes.
const FINALIZATION_BYTES_MAX: usize = 64 * 1024;

impl Write for BlockRecord {
    fn write(&self, buf: &mut impl BufMut) {
        self.block.write(buf);
        self.results_json.write(buf);
        self.finalization.write(buf);
        self.txs_before.write(buf);
    }
}

impl EncodeSize for BlockRecord {
    fn encode_size(&self) -> usize {
        self.block.encode_size() + self.results_json.encode_size() + self.finalization.encode_size() + 8
    }
}

impl Read for BlockRecord {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(BlockRecord {
            block: Block::read(buf)?,
            results_json: Vec::<u8>::read_cfg(buf, &(RangeCfg::new(0..=RESULTS_BYTES_MAX), ()))?,
            finalization: Vec::<u8>::read_cfg(buf, &(RangeCfg::new(0..=FINALIZATION_BYTES_MAX), ()))?,
            txs_before: u64::read(buf)?,
        })
    }
}

type Archive<E, V> = immutable::Archive<E, commonware_cryptography::sha256::Digest, V>;

struct Inner<E: Storage + Clock + Metrics + Spawner> {
    blocks: Archive<E, BlockRecord>,
    /// Transaction hash → height, at index = the transaction's position in the chain.
    txs: Archive<E, u64>,
}

/// The archive of finalized blocks.
pub struct BlockStore<E: Storage + Clock + Metrics + Spawner> {
    inner: Mutex<Option<Inner<E>>>,
}

fn archive_config<C>(prefix: &str, name: &str, page_cache: CacheRef, codec_config: C) -> immutable::Config<C> {
    let buffer = NonZeroUsize::new(1 << 16).expect("non-zero");
    immutable::Config {
        metadata_partition: format!("{prefix}-{name}-metadata"),
        freezer_table_partition: format!("{prefix}-{name}-table"),
        freezer_table_initial_size: 65_536,
        freezer_table_resize_frequency: 4,
        freezer_table_resize_chunk_size: 16_384,
        freezer_key_partition: format!("{prefix}-{name}-keys"),
        freezer_key_page_cache: page_cache,
        freezer_value_partition: format!("{prefix}-{name}-values"),
        freezer_value_target_size: 1 << 26,
        freezer_value_compression: None,
        ordinal_partition: format!("{prefix}-{name}-ordinal"),
        items_per_section: NonZeroU64::new(4096).expect("non-zero"),
        freezer_key_write_buffer: buffer,
        freezer_value_write_buffer: buffer,
        ordinal_write_buffer: buffer,
        replay_buffer: buffer,
        codec_config,
    }
}

impl<E: Storage + Clock + Metrics + Spawner> BlockStore<E> {
    pub async fn open(context: E, cfg: &StoreConfig) -> Result<Self, StoreError> {
        let page_cache = CacheRef::new(NonZeroU16::new(16 * 1024).expect("non-zero"), cfg.page_cache_pages);
        let err = |e: commonware_storage::archive::Error| StoreError::Archive(e.to_string());
        let blocks = Archive::init(
            context.child("blocks"),
            archive_config(&cfg.partition_prefix, "blocks", page_cache.clone(), ()),
        )
        .await
        .map_err(err)?;
        let txs = Archive::init(context.child("txs"), archive_config(&cfg.partition_prefix, "txs", page_cache, ()))
            .await
            .map_err(err)?;
        Ok(BlockStore { inner: Mutex::new(Some(Inner { blocks, txs })) })
    }

    /// Stores a finalized block durably. Idempotent: storing a height again changes nothing.
    pub async fn put(&self, record: &BlockRecord) -> Result<(), StoreError> {
        let err = |e: commonware_storage::archive::Error| StoreError::Archive(e.to_string());
        let mut guard = self.inner.lock().await;
        let Inner { blocks, mut txs } = guard.take().expect("archives are present between operations");
        let height = record.block.height();
        if blocks.has(Identifier::Index(height)).await.map_err(err)? {
            *guard = Some(Inner { blocks, txs });
            return Ok(());
        }
        for (i, tx) in record.block.txs.iter().enumerate() {
            txs = txs.put(record.txs_before + i as u64, tx.hash().0, &height).await.map_err(err)?;
        }
        let txs = txs.sync().await.map_err(err)?;
        let blocks = blocks.put_sync(height, record.block.hash().0, record).await.map_err(err)?;
        *guard = Some(Inner { blocks, txs });
        Ok(())
    }

    pub async fn by_height(&self, height: Height) -> Result<Option<BlockRecord>, StoreError> {
        let guard = self.inner.lock().await;
        let inner = guard.as_ref().expect("archives are present between operations");
        inner.blocks.get(Identifier::Index(height)).await.map_err(|e| StoreError::Archive(e.to_string()))
    }

    pub async fn by_hash(&self, hash: &Hash) -> Result<Option<BlockRecord>, StoreError> {
        let guard = self.inner.lock().await;
        let inner = guard.as_ref().expect("archives are present between operations");
        inner.blocks.get(Identifier::Key(&hash.0)).await.map_err(|e| StoreError::Archive(e.to_string()))
    }

    /// The height of the block that included a transaction.
    pub async fn tx_height(&self, tx: &Hash) -> Result<Option<Height>, StoreError> {
        let guard = self.inner.lock().await;
        let inner = guard.as_ref().expect("archives are present between operations");
        inner.txs.get(Identifier::Key(&tx.0)).await.map_err(|e| StoreError::Archive(e.to_string()))
    }

    /// The highest stored height.
    pub async fn last_height(&self) -> Option<Height> {
        let guard = self.inner.lock().await;
        guard.as_ref().expect("archives are present between operations").blocks.last_index()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commonware_runtime::{Runner, Supervisor as _, deterministic};
    use plexus_types::tx::{Payload, Transaction};
    use plexus_types::{Header, PrivateKey, VersionVector};

    fn record(height: Height, txs_before: u64) -> BlockRecord {
        let key = PrivateKey::from_seed(1);
        let txs = vec![
            Transaction { signer: key.address(), nonce: height, fee: 1, payload: Payload::Unstake { amount: 1 } }
                .sign(&key, "c"),
        ];
        BlockRecord {
            block: Block {
                header: Header {
                    height,
                    parent: Hash::ZERO,
                    parent_view: 0,
                    epoch: 0,
                    view: height,
                    proposer: key.address(),
                    timestamp_ms: 0,
                    versions: VersionVector::V1,
                    txs_root: plexus_types::block::txs_root(&txs),
                    state_root: Hash::ZERO,
                },
                txs,
            },
            results_json: b"[]".to_vec(),
            finalization: vec![1, 2, 3],
            txs_before,
        }
    }

    #[test]
    fn blocks_by_height_hash_and_tx() {
        deterministic::Runner::default().start(|context| async move {
            let store = BlockStore::open(context.child("b"), &StoreConfig::default()).await.unwrap();
            let r1 = record(1, 0);
            let r2 = record(2, 1);
            store.put(&r1).await.unwrap();
            store.put(&r2).await.unwrap();
            store.put(&r2).await.unwrap();
            assert_eq!(store.by_height(2).await.unwrap(), Some(r2.clone()));
            assert_eq!(store.by_hash(&r1.block.hash()).await.unwrap(), Some(r1.clone()));
            assert_eq!(store.tx_height(&r2.block.txs[0].hash()).await.unwrap(), Some(2));
            assert_eq!(store.last_height().await, Some(2));
            assert_eq!(store.by_height(3).await.unwrap(), None);
        });
    }
}
