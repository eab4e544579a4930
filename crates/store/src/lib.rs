//! The data layer: crash-safe persistent storage of application state and finalized blocks.
//!
//! State lives in a QMDB (Commonware's authenticated key-value database): every block's writes
//! become one batch, whose Merkle root is the state root in that block's header. A proposer or
//! verifier computes that root *before* anything is written ([`StateStore::speculate`]), chaining
//! speculative batches on unfinalized parents; only finalized blocks are applied and committed,
//! with the block height stored atomically in the commit so that applying a block is idempotent
//! by height. A copy of the committed key-value state is kept in memory so that execution, which
//! is synchronous, never waits on disk.
//!
//! Finalized blocks and their execution results are archived by height and hash
//! ([`BlockStore`]), with an index from transaction hash to height, for the chain API.
//!
//! This crate does not decide what to write (execution does) or when a block is final
//! (consensus does). A failed storage write is fatal: callers halt rather than continue on a
//! state that may be wrong.

mod blocks;
mod state;

pub use blocks::{BlockRecord, BlockStore};
pub use state::{Speculative, StateStore, StateView};

use std::num::NonZeroUsize;

/// Where and how the data layer stores its files.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Prefix of every partition (directory) this store creates, e.g. `plexus`.
    pub partition_prefix: String,
    /// Pages of 16 KiB kept in the shared read cache.
    pub page_cache_pages: NonZeroUsize,
    /// Largest encoded state value, in bytes (bounds decoding of stored records).
    pub value_bytes_max: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            partition_prefix: "plexus".into(),
            page_cache_pages: NonZeroUsize::new(1024).expect("non-zero"),
            value_bytes_max: 1 << 20,
        }
    }
}

/// A storage failure. Every variant is fatal to the node.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    State(String),
    #[error("block archive: {0}")]
    Archive(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("state was never initialised with genesis")]
    NoGenesis,
    /// The stored chain needs a binary that runs other versions of its layers.
    #[error("{0}")]
    Unsupported(String),
}
