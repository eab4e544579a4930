//! Authenticated application state on QMDB with an in-memory mirror of the committed state.

use std::collections::BTreeMap;
use std::num::{NonZeroU16, NonZeroU64, NonZeroUsize};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use bytes::BufMut;
use commonware_codec::{Buf, EncodeSize, Error as CodecError, RangeCfg, Read, Write};
use commonware_cryptography::{Hasher, Sha256, sha256};
use commonware_parallel::Sequential;
use commonware_runtime::buffer::paged::CacheRef;
use commonware_runtime::{Clock, Metrics, Spawner, Storage};
use commonware_storage::journal::contiguous::variable::Config as JournalConfig;
use commonware_storage::mmr;
use commonware_storage::qmdb::{self, floor::Proportional};
use commonware_storage::translator::EightCap;
use commonware_utils::bitmap::Readable as _;
use futures::lock::Mutex;
use plexus_types::state::{ChangeSet, StateRead};
use plexus_types::{Hash, Height};

use crate::{StoreConfig, StoreError};

/// Bytes of the activity bitmap chunk QMDB grafts into the root. Fixed forever: it changes roots.
const CHUNK_BYTES: usize = 32;

type Db<E> = qmdb::current::unordered::variable::Db<
    mmr::Family,
    E,
    sha256::Digest,
    Vec<u8>,
    Sha256,
    EightCap,
    CHUNK_BYTES,
    Sequential,
>;

type Batch = qmdb::current::batch::MerkleizedBatch<
    mmr::Family,
    sha256::Digest,
    qmdb::any::unordered::variable::Update<sha256::Digest, Vec<u8>>,
    CHUNK_BYTES,
    Sequential,
>;

/// The committed state, readable synchronously by execution.
pub type StateView<'a> = RwLockReadGuard<'a, Mirror>;

/// A copy of every committed key-value pair.
#[derive(Default)]
pub struct Mirror {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    height: Option<Height>,
    root: Hash,
    block: Hash,
}

impl Mirror {
    /// Height of the last committed block (`None` before genesis).
    pub fn height(&self) -> Option<Height> {
        self.height
    }

    /// State root after the last committed block.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// Hash of the last committed block, as given to [`StateStore::commit`] (or
    /// [`StateStore::set_block`] after a restart). Read under the same lock as the state, so
    /// a reader never sees a state and a block hash from different heights.
    pub fn block(&self) -> Hash {
        self.block
    }

    /// Every committed pair (for audits and tests).
    pub fn map(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.map
    }
}

impl StateRead for Mirror {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map.get(key).cloned()
    }

    fn scan(&self, table: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.map.scan(table)
    }
}

/// A block's writes merkleized on top of its parent, not yet applied.
pub struct Speculative {
    batch: Arc<Batch>,
    pub height: Height,
    /// The post-state root this block's header must carry.
    pub root: Hash,
}

/// The value stored under a key's hash: the key itself (so the state can be enumerated on
/// restart) and its value.
struct Entry {
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Write for Entry {
    fn write(&self, buf: &mut impl BufMut) {
        self.key.write(buf);
        self.value.write(buf);
    }
}

impl EncodeSize for Entry {
    fn encode_size(&self) -> usize {
        self.key.encode_size() + self.value.encode_size()
    }
}

impl Read for Entry {
    type Cfg = usize;
    fn read_cfg(buf: &mut impl Buf, max: &usize) -> Result<Self, CodecError> {
        Ok(Entry {
            key: Vec::<u8>::read_cfg(buf, &(RangeCfg::new(0..=1024), ()))?,
            value: Vec::<u8>::read_cfg(buf, &(RangeCfg::new(0..=*max), ()))?,
        })
    }
}

fn encode_entry(key: &[u8], value: &[u8]) -> Vec<u8> {
    let entry = Entry { key: key.to_vec(), value: value.to_vec() };
    let mut out = Vec::with_capacity(entry.encode_size());
    entry.write(&mut out);
    out
}

fn key_hash(key: &[u8]) -> sha256::Digest {
    Sha256::hash(&[key])
}

fn height_metadata(height: Height) -> Vec<u8> {
    height.to_be_bytes().to_vec()
}

/// Application state: QMDB for roots and durability, a mirror for synchronous reads.
pub struct StateStore<E: Storage + Clock + Metrics + Spawner> {
    db: Mutex<Option<Db<E>>>,
    mirror: RwLock<Mirror>,
    value_bytes_max: usize,
}

impl<E: Storage + Clock + Metrics + Spawner> StateStore<E> {
    /// Opens (or creates) the state in `context`'s storage and loads the committed state into
    /// memory. Recovers to the last commit after a crash.
    pub async fn open(context: E, cfg: &StoreConfig) -> Result<Self, StoreError> {
        let page_cache = CacheRef::new(NonZeroU16::new(16 * 1024).expect("non-zero"), cfg.page_cache_pages);
        let p = &cfg.partition_prefix;
        let buffer = NonZeroUsize::new(1 << 16).expect("non-zero");
        let db_cfg = qmdb::current::VariableConfig {
            merkle_config: mmr::full::Config {
                journal_partition: format!("{p}-state-mmr-journal"),
                metadata_partition: format!("{p}-state-mmr-metadata"),
                items_per_blob: NonZeroU64::new(4096).expect("non-zero"),
                write_buffer: buffer,
                replay_buffer: buffer,
                strategy: Sequential,
                page_cache: page_cache.clone(),
            },
            journal_config: JournalConfig {
                partition: format!("{p}-state-log"),
                items_per_section: NonZeroU64::new(4096).expect("non-zero"),
                compression: None,
                codec_config: ((), (RangeCfg::new(0..=cfg.value_bytes_max + 1024 + 16), ())),
                page_cache,
                write_buffer: buffer,
                replay_buffer: buffer,
            },
            grafted_metadata_partition: format!("{p}-state-grafted"),
            translator: EightCap,
            init_cache: Some(NonZeroUsize::new(1024).expect("non-zero")),
            init_buffer: NonZeroUsize::new(1 << 20).expect("non-zero"),
            init_concurrency: (),
        };
        let db =
            Db::<E>::init(context.child("state"), db_cfg, None).await.map_err(|e| StoreError::State(e.to_string()))?;
        let mirror = load_mirror(&db, cfg.value_bytes_max).await?;
        Ok(StateStore { db: Mutex::new(Some(db)), mirror: RwLock::new(mirror), value_bytes_max: cfg.value_bytes_max })
    }

    /// The committed state, for synchronous reads. Hold the guard only while executing.
    pub fn view(&self) -> StateView<'_> {
        self.mirror.read().expect("state lock poisoned")
    }

    /// Height and root of the last committed block.
    pub fn committed(&self) -> (Option<Height>, Hash) {
        let m = self.view();
        (m.height, m.root)
    }

    /// Merkleizes `changes` on top of `parent` (or on the committed state) without writing
    /// anything, returning the root the state will have once this block is committed. The
    /// caller keeps every unapplied ancestor alive until this returns.
    pub async fn speculate(
        &self,
        parent: Option<Arc<Speculative>>,
        height: Height,
        changes: &ChangeSet,
    ) -> Result<Arc<Speculative>, StoreError> {
        let guard = self.db.lock().await;
        let db = guard.as_ref().expect("state database is present between operations");
        let mut batch = match &parent {
            Some(p) => p.batch.new_batch::<Sha256>(),
            None => db.new_batch(),
        };
        for (key, value) in changes {
            batch = batch.write(key_hash(key), value.as_ref().map(|v| encode_entry(key, v)));
        }
        let merkleized = batch
            .merkleize(db, Some(height_metadata(height)), &mut Proportional)
            .await
            .map_err(|e| StoreError::State(format!("merkleize block {height}: {e}")))?;
        let root = Hash(merkleized.root());
        Ok(Arc::new(Speculative { batch: merkleized, height, root }))
    }

    /// Applies and durably commits a speculative block, then publishes its writes to the
    /// mirror. Idempotent by height: a block at or below the committed height is ignored.
    pub async fn commit(&self, spec: &Speculative, changes: &ChangeSet, block: Hash) -> Result<bool, StoreError> {
        let mut guard = self.db.lock().await;
        if let Some(h) = self.view().height {
            if spec.height <= h {
                return Ok(false);
            }
            assert_eq!(spec.height, h + 1, "blocks are committed in height order");
        }
        let db = guard.take().expect("state database is present between operations");
        let db = db
            .apply_batch(Arc::clone(&spec.batch))
            .await
            .map_err(|e| StoreError::State(format!("apply block {}: {e}", spec.height)))?;
        let db = db.commit().await.map_err(|e| StoreError::State(format!("commit block {}: {e}", spec.height)))?;
        let root = Hash(db.root());
        assert_eq!(root, spec.root, "committed root differs from the speculative root");
        *guard = Some(db);
        let mut mirror = self.mirror.write().expect("state lock poisoned");
        for (key, value) in changes {
            match value {
                Some(v) => mirror.map.insert(key.clone(), v.clone()),
                None => mirror.map.remove(key),
            };
        }
        mirror.height = Some(spec.height);
        mirror.root = root;
        mirror.block = block;
        Ok(true)
    }

    /// Records the hash of the committed block after a restart (the state does not store it).
    pub fn set_block(&self, block: Hash) {
        self.mirror.write().expect("state lock poisoned").block = block;
    }

    /// Largest value this store accepts.
    pub fn value_bytes_max(&self) -> usize {
        self.value_bytes_max
    }
}

/// Rebuilds the mirror from the active operations of the log.
async fn load_mirror<E: Storage + Clock + Metrics + Spawner>(db: &Db<E>, max: usize) -> Result<Mirror, StoreError> {
    let height = match db.get_metadata().await.map_err(|e| StoreError::State(e.to_string()))? {
        None => None,
        Some(bytes) => {
            let bytes: [u8; 8] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt("commit metadata is not a height".into()))?;
            Some(u64::from_be_bytes(bytes))
        }
    };
    let mut map = BTreeMap::new();
    let bounds = db.bounds();
    let bitmap = db.bitmap();
    let step = NonZeroU64::new(4096).expect("non-zero");
    let mut loc = bounds.start;
    while loc < bounds.end {
        let (_, ops, _) = db.range_proof(loc, step).await.map_err(|e| StoreError::State(e.to_string()))?;
        if ops.is_empty() {
            break;
        }
        for (i, op) in ops.iter().enumerate() {
            let at = *loc + i as u64;
            if at < bitmap.pruned_bits() || !bitmap.get_bit(at) {
                continue;
            }
            if let qmdb::any::operation::Operation::Update(update) = op {
                let entry =
                    <Entry as commonware_codec::Decode>::decode_cfg(commonware_codec::Copying(&update.1[..]), &max)
                        .map_err(|e| StoreError::Corrupt(format!("state entry at {at}: {e}")))?;
                if key_hash(&entry.key) != update.0 {
                    return Err(StoreError::Corrupt(format!("state entry at {at} is stored under the wrong key")));
                }
                map.insert(entry.key, entry.value);
            }
        }
        loc = mmr::Location::new(*loc + ops.len() as u64);
    }
    Ok(Mirror { map, height, root: Hash(db.root()), block: Hash::ZERO })
}

#[cfg(test)]
mod tests {
    use super::*;
    use commonware_runtime::{Runner, Supervisor as _, deterministic};

    fn changes(pairs: &[(&[u8], Option<&[u8]>)]) -> ChangeSet {
        pairs.iter().map(|(k, v)| (k.to_vec(), v.map(|v| v.to_vec()))).collect()
    }

    #[test]
    fn speculative_roots_match_commits_and_survive_restart() {
        let (root_after_two, checkpoint) = deterministic::Runner::default().start_and_recover(|context| async move {
            let store = StateStore::open(context.child("a"), &StoreConfig::default()).await.unwrap();
            assert_eq!(store.committed().0, None);
            let c0 = changes(&[(b"a", Some(b"1")), (b"b", Some(b"2"))]);
            let s0 = store.speculate(None, 0, &c0).await.unwrap();
            // A child built on the unapplied parent.
            let c1 = changes(&[(b"a", None), (b"c", Some(b"3"))]);
            let s1 = store.speculate(Some(s0.clone()), 1, &c1).await.unwrap();
            // A fork sibling of s1 has a different root.
            let fork = store.speculate(Some(s0.clone()), 1, &changes(&[(b"d", Some(b"4"))])).await.unwrap();
            assert_ne!(fork.root, s1.root);
            assert!(store.commit(&s0, &c0, Hash::ZERO).await.unwrap());
            assert!(store.commit(&s1, &c1, Hash::ZERO).await.unwrap());
            assert!(!store.commit(&s1, &c1, Hash::ZERO).await.unwrap(), "idempotent by height");
            let view = store.view();
            assert_eq!(view.height(), Some(1));
            assert_eq!(view.root(), s1.root);
            assert_eq!(view.get(b"a"), None);
            assert_eq!(view.get(b"c"), Some(b"3".to_vec()));
            view.root()
        });
        deterministic::Runner::from(checkpoint).start(|context| async move {
            let store = StateStore::open(context.child("a"), &StoreConfig::default()).await.unwrap();
            let view = store.view();
            assert_eq!(view.height(), Some(1));
            assert_eq!(view.root(), root_after_two);
            let expected: BTreeMap<Vec<u8>, Vec<u8>> =
                [(b"b".to_vec(), b"2".to_vec()), (b"c".to_vec(), b"3".to_vec())].into_iter().collect();
            assert_eq!(view.map(), &expected, "mirror rebuilt from the log");
        });
    }

    #[test]
    fn same_blocks_give_same_roots_on_two_stores() {
        deterministic::Runner::default().start(|context| async move {
            let a = StateStore::open(
                context.child("a"),
                &StoreConfig { partition_prefix: "a".into(), ..Default::default() },
            )
            .await
            .unwrap();
            let b = StateStore::open(
                context.child("b"),
                &StoreConfig { partition_prefix: "b".into(), ..Default::default() },
            )
            .await
            .unwrap();
            for h in 0..20u64 {
                let c = changes(&[(&h.to_be_bytes(), Some(b"v")), (b"counter", Some(&h.to_be_bytes()))]);
                let sa = a.speculate(None, h, &c).await.unwrap();
                let sb = b.speculate(None, h, &c).await.unwrap();
                assert_eq!(sa.root, sb.root);
                a.commit(&sa, &c, Hash::ZERO).await.unwrap();
                b.commit(&sb, &c, Hash::ZERO).await.unwrap();
            }
            assert_eq!(a.committed(), b.committed());
        });
    }
}
