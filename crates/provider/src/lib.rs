//! Paid inference on the provider's side: admits requests against on-chain sessions, keeps
//! every client's work within a bounded credit beyond its last signed receipt, stores receipts
//! durably, and settles them on-chain in batches, automatically.
//!
//! The flow for one session (see `../shared/DESIGN.md`, "Core protocol"):
//! 1. The client opened the session on-chain (escrow locked). Its gateway proves it holds the
//!    client key ([`plexus_types::receipt::SessionAuth`]) and gets a bearer token
//!    (`POST /plexus/v1/sessions/{id}/token`), so nobody else can spend the session's credit.
//! 2. Every request names the session and token ([`HEADER_SESSION`], [`HEADER_TOKEN`]).
//!    [`Provider`]'s [`Metering`] admits it only if the session is open, is this provider's,
//!    is for the requested model, has escrow left for the request's worst case, and no more
//!    than [`ProviderConfig::credit_tokens`] delivered tokens are unacknowledged.
//! 3. The gateway signs cumulative receipts after each response and during long streams
//!    (`POST /plexus/v1/receipts`, or [`HEADER_RECEIPT`] on the next request). A receipt is
//!    accepted only if the client signed it, it supersedes the last one, and it pays at least
//!    the session's price for the tokens it acknowledges. A generation whose client stops
//!    acknowledging is cut off once the credit is used.
//! 4. [`claims`] posts the latest receipt of each session in `Claim` transactions, and closes
//!    sessions the client has ended, so the client's refund does not wait for the grace period.
//!
//! This crate holds no keys and reads no chain database: it sees the chain through the small
//! [`ChainView`] trait the node implements, and it knows nothing of engines (the server calls
//! it through [`Metering`]).

pub mod claims;
mod http;
mod ledger;
mod metering;
mod metrics;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_serve::Metering;
use plexus_types::tx::{ModelPrice, Payload};
use plexus_types::{Address, Amount, Hash, Height, ModelId};

pub use http::router;
pub use ledger::{LedgerError, SessionLedger};

/// Request header: the session (hex id) a request is paid from.
pub const HEADER_SESSION: &str = "x-plexus-session";
/// Request header: the bearer token this provider issued for the session.
pub const HEADER_TOKEN: &str = "x-plexus-token";
/// Request header (optional): hex of the client's latest signed receipt for the session.
pub const HEADER_RECEIPT: &str = "x-plexus-receipt";

/// A session as the chain has it, as much as a provider needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionView {
    pub client: Address,
    pub provider: Address,
    pub model: ModelId,
    /// Escrow deposited so far (including top-ups).
    pub deposit: Amount,
    /// The prices locked in when the session opened.
    pub price: ModelPrice,
    /// No new work after this height.
    pub expiry_height: Height,
    /// The last height at which a claim is accepted; the rest is refunded after it.
    pub refund_height: Height,
    /// The highest receipt already settled on-chain.
    pub settled_seq: u64,
    /// False once settled and refunded.
    pub open: bool,
    /// The regions the session is restricted to (data residency); empty for any region.
    pub regions: Vec<String>,
}

/// What a provider needs from the chain. Implemented by the node over its committed state.
pub trait ChainView: Send + Sync + 'static {
    /// The chain's id: receipts and session proofs are valid for it only.
    fn chain_id(&self) -> &str;
    /// The session, if it exists.
    fn session(&self, id: &Hash) -> Option<SessionView>;
    /// Height of the last finalized block.
    fn height(&self) -> Height;
    /// Signs `payload` with the node's key and submits it; returns the transaction hash.
    fn submit(&self, payload: Payload) -> Result<Hash, String>;
}

/// Provider settings; none has to match across the network.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// Delivered tokens a client may leave unacknowledged beyond its last receipt (plus the
    /// prompts of its requests in flight). The most a provider can lose to a client that stops
    /// paying, per session.
    pub credit_tokens: u64,
    /// How often the latest receipts are claimed on-chain.
    pub claim_interval: Duration,
    /// Claim at once, whatever the interval, when a session's last claim height is this close.
    pub claim_urgent_blocks: u64,
    /// A claim not settled after this many blocks is sent again.
    pub claim_retry_blocks: u64,
    /// Most sessions tracked at once (older closed ones are forgotten first).
    pub sessions_max: usize,
    /// Where receipts are stored (an append-only log, compacted as it grows).
    pub ledger_path: PathBuf,
    /// The region this provider serves from: a session restricted to other regions is refused.
    pub region: String,
}

impl ProviderConfig {
    pub fn new(ledger_path: PathBuf) -> Self {
        ProviderConfig {
            credit_tokens: 512,
            claim_interval: Duration::from_secs(15),
            claim_urgent_blocks: 30,
            claim_retry_blocks: 30,
            sessions_max: 100_000,
            ledger_path,
            region: String::new(),
        }
    }
}

/// The provider's paid-inference state: cheap to clone, shared by the server's metering, the
/// receipt endpoints and the claimer.
pub struct Provider<C: ChainView> {
    inner: Arc<Inner<C>>,
}

impl<C: ChainView> Clone for Provider<C> {
    fn clone(&self) -> Self {
        Provider { inner: self.inner.clone() }
    }
}

struct Inner<C: ChainView> {
    chain: C,
    address: Address,
    config: ProviderConfig,
    ledger: Mutex<SessionLedger>,
    metrics: metrics::Metrics,
}

impl<C: ChainView> Provider<C> {
    /// Opens (or creates) the receipt ledger at `config.ledger_path`.
    pub fn open(chain: C, address: Address, config: ProviderConfig) -> Result<Self, LedgerError> {
        let ledger = SessionLedger::open(&config.ledger_path, config.sessions_max)?;
        Ok(Provider {
            inner: Arc::new(Inner {
                chain,
                address,
                config,
                ledger: Mutex::new(ledger),
                metrics: metrics::Metrics::new(),
            }),
        })
    }

    /// The [`Metering`] the provider's server admits and accounts requests with.
    pub fn metering(&self) -> Arc<dyn Metering> {
        Arc::new(metering::ChainMetering { provider: self.clone() })
    }

    pub fn address(&self) -> &Address {
        &self.inner.address
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.inner.config
    }

    pub(crate) fn chain(&self) -> &C {
        &self.inner.chain
    }

    pub(crate) fn ledger(&self) -> std::sync::MutexGuard<'_, SessionLedger> {
        self.inner.ledger.lock().expect("ledger lock")
    }

    pub(crate) fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    /// The payment metrics as OpenMetrics text (without `# EOF`), with the ledger's gauges
    /// brought up to date.
    pub fn render_metrics(&self) -> String {
        let (sessions, exposure, value) = {
            let ledger = self.ledger();
            let ids = ledger.ids();
            let mut exposure: u64 = 0;
            let mut value: u128 = 0;
            for id in &ids {
                if let Some(e) = ledger.get(id) {
                    exposure = exposure.saturating_add(e.unacknowledged());
                    value = value.saturating_add(e.receipt.as_ref().map_or(0, |r| r.receipt.cum_amount));
                }
            }
            (ids.len(), exposure, value)
        };
        let m = self.metrics();
        m.sessions.set(sessions as i64);
        m.credit_exposure_tokens.set(exposure.min(i64::MAX as u64) as i64);
        m.receipts_value.set(value as f64);
        m.render()
    }

    /// Totals for a session: delivered and acknowledged tokens, latest receipt.
    pub fn session_state(&self, id: &Hash) -> Option<ledger::SessionState> {
        self.ledger().state(id)
    }
}
