//! The provider's OpenAI-compatible HTTP server, as a library: `/v1/chat/completions` (SSE
//! streaming or not), `/v1/completions`, `/v1/embeddings`, `/v1/models`, `/health` and
//! `/metrics`, over any set of [`plexus_inference::Engine`]s.
//!
//! Every response names the model id and carries the provider's ed25519 signature over a
//! [`plexus_types::Attestation`] (request hash, output hash, model id, token counts, logits
//! fingerprint): in `x-plexus-*` headers, or in a `plexus` object of a stream's final chunk.
//! Every admitted request goes through a [`Metering`] implementation, the hook paid inference
//! uses to check credit and record usage.
//!
//! [`Server::router`] returns an axum `Router`, so a node can merge its own routes and serve
//! both on one port; `plexus serve` is a thin shell over it.
//!
//! It does not talk to the chain, hold client keys or pick providers (that is the gateway).
//! Bodies are size-limited (413), bad input gets an OpenAI-style JSON error with a 4xx status,
//! and a full engine queue gets 429 with `Retry-After`.

mod api;
mod dishonest;
mod error;
pub mod kserve;
mod metering;
mod metrics;
pub mod openai;
pub mod stream;
/// Key-bound TLS (its own crate, so a chain-only node has it without the inference engines).
pub use plexus_tls as tls;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use plexus_inference::Engine;
use plexus_types::{Address, PrivateKey};

pub use error::ServeError;
pub use metering::{AnyDebug, Endpoint, MeterRequest, MeterTicket, Metering, NoMetering, Usage};

/// Response header: the model id (hex) that answered.
pub const HEADER_MODEL_ID: &str = "x-plexus-model-id";
/// Response header: the provider's address (hex ed25519 public key).
pub const HEADER_PROVIDER: &str = "x-plexus-provider";
/// Response header: hex of the attestation's canonical encoding.
pub const HEADER_ATTESTATION: &str = "x-plexus-attestation";
/// Response header: hex of the provider's signature over the attestation.
pub const HEADER_SIGNATURE: &str = "x-plexus-signature";

/// The chain id attestations of a server without a chain are signed for.
pub const STANDALONE_CHAIN_ID: &str = "plexus-standalone";

/// Request header: when present (any value), every streamed chunk carries `plexus_usage`
/// with the running prompt and completion token counts.
pub const HEADER_PROGRESS: &str = "x-plexus-progress";

/// Server settings. None of these has to match across the network.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The chain whose sessions pay for requests: every attestation is signed for it and is
    /// valid there only. `plexus serve` (no chain) uses [`STANDALONE_CHAIN_ID`].
    pub chain_id: String,
    /// Largest request body accepted, in bytes (larger gets 413).
    pub request_bytes_max: usize,
    /// [`Metering::progress`] is called after every this many generated tokens.
    pub meter_every_tokens: NonZeroU32,
    /// `Retry-After` sent with 429, in seconds.
    pub retry_after_secs: u32,
    /// Seconds between SSE keep-alive comments on idle streams.
    pub keep_alive_secs: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            chain_id: STANDALONE_CHAIN_ID.to_string(),
            request_bytes_max: 4 << 20,
            meter_every_tokens: NonZeroU32::new(16).expect("non-zero"),
            retry_after_secs: 1,
            keep_alive_secs: 15,
        }
    }
}

/// Builds the provider's router.
pub struct Server {
    engines: Vec<Arc<dyn Engine>>,
    key: PrivateKey,
    metering: Arc<dyn Metering>,
    config: ServeConfig,
}

impl Server {
    /// A server for `engines`, signing with the provider's `key`, metering nothing.
    pub fn new(key: PrivateKey, engines: Vec<Arc<dyn Engine>>) -> Self {
        Server { engines, key, metering: Arc::new(NoMetering), config: ServeConfig::default() }
    }

    /// Meters requests through `metering`.
    pub fn with_metering(mut self, metering: Arc<dyn Metering>) -> Self {
        self.metering = metering;
        self
    }

    pub fn with_config(mut self, config: ServeConfig) -> Self {
        self.config = config;
        self
    }

    /// The provider's address, as sent in `x-plexus-provider`.
    pub fn provider(&self) -> Address {
        self.key.address()
    }

    /// The routes. Merge others with `Router::merge`; unknown paths get a JSON 404.
    pub fn router(self) -> Router {
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let state = api::AppState {
            provider: self.key.address(),
            key: self.key,
            engines: self.engines,
            metering: self.metering,
            config: self.config,
            metrics: metrics::Metrics::new(),
            next_request: AtomicU64::new(1),
            started: created,
            lie: dishonest::Lie::from_env(),
            streams: Arc::new(tokio::sync::Semaphore::new(stream::STREAMS_MAX)),
        };
        api::router(Arc::new(state))
    }
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve<L>(
    listener: L,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
