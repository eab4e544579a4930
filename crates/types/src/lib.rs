//! The words every Plexus layer speaks: keys, hashes, amounts, transactions, blocks, model
//! manifests, receipts and the per-layer version vector, with their canonical binary encoding.
//!
//! Every type that crosses a trust boundary decodes with an explicit size limit and returns a
//! [`commonware_codec::Error`] on bad bytes; nothing here panics on input. Encodings are
//! canonical (fixed-width big-endian integers, length-prefixed bounded byte strings), so a hash of
//! an encoding is a stable identity.
//!
//! This crate does no I/O, holds no state and knows nothing of consensus, storage or inference
//! engines: it is the vocabulary they share.

pub mod block;
pub mod codec;
pub mod crypto;
pub mod evidence;
pub mod genesis;
pub mod model;
pub mod params;
pub mod receipt;
pub mod session;
pub mod state;
pub mod tensor;
pub mod tx;
pub mod version;

pub use block::{Block, Header};
pub use crypto::{Address, Hash, PrivateKey, Sig, hash, hash_parts};
pub use genesis::Genesis;
pub use model::{EngineKind, ModelId, ModelManifest};
pub use params::Params;
pub use receipt::{Attestation, Receipt, SignedReceipt};
pub use tx::{Payload, SignedTx, Transaction};
pub use version::{Layer, VersionRange, VersionVector};

/// Token amounts, in indivisible base units. Never a float.
pub type Amount = u128;

/// Block height. Genesis state is height 0; the first block is height 1.
pub type Height = u64;

/// Base units in one PLX, for display only: the chain counts base units.
pub const UNITS_PER_PLX: Amount = 1_000_000;

/// Signature namespaces. Each kind of signed object has its own, so a signature made for one can
/// never be replayed as another.
pub mod namespace {
    /// Transactions. The signed message is the chain id followed by the transaction body, as
    /// for every kind below ([`crate::receipt::bound`]).
    pub const TX: &[u8] = b"plexus/tx/v1";
    /// Client-signed cumulative usage receipts.
    pub const RECEIPT: &[u8] = b"plexus/receipt/v1";
    /// Provider-signed response attestations.
    pub const ATTESTATION: &[u8] = b"plexus/attestation/v1";
    /// Consensus votes (passed to the consensus engine).
    pub const CONSENSUS: &[u8] = b"plexus/consensus/v1";
    /// Peer-to-peer handshakes (passed to the network layer).
    pub const P2P: &[u8] = b"plexus/p2p/v1";
    /// A session's client proving to a provider that it holds the session's key (the signed
    /// message binds the chain id too).
    pub const SESSION_AUTH: &[u8] = b"plexus/session-auth/v1";
}
