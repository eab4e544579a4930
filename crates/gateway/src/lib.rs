//! The client-side gateway: a local OpenAI-compatible server that unmodified SDKs point at.
//! It holds the client's key, finds providers and models on the chain, opens and tops up
//! prepaid sessions within a budget, meters every request itself and signs cumulative receipts
//! for exactly the tokens it counted and verified ([`billing`]), routes by price, measured
//! latency and load, and fails over — mid-stream too.
//!
//! What it does not do: it never sends a request's content anywhere but to the provider that
//! serves it, never pays for a provider's word (usage numbers are replaced by the gateway's own
//! counts; a response whose attestation or token ids do not verify gets no receipt and its
//! provider is shunned), never signs a receipt for more than the escrow holds, and never serves
//! anyone without the API key when one is set (it must be, to listen beyond loopback).
//! Then it checks the work itself: a random share of generations is re-run on its own copy of
//! the model, and one the model would not have produced is challenged on chain ([`audit`]).
//!
//! The app sees plain OpenAI responses. Extra headers (`x-plexus-provider`,
//! `x-plexus-session`, the provider's attestation) say who answered; a stream's usage chunk
//! lists each provider's part under `plexus.segments`.

pub mod audit;
pub mod billing;
mod chain;
mod directory;
mod error;
mod kserve;
mod link;
mod metrics;
mod models;
pub mod probe;
mod proxy;
mod session;
mod sse;
mod stream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use plexus_types::{Amount, PrivateKey, UNITS_PER_PLX};
use tracing::{info, warn};

pub use chain::ChainClient;
pub use directory::Constraints;
pub use error::GatewayError;
pub use session::default_home;

/// Gateway settings. Nothing here has to match anyone else's.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Chain API URLs, tried in order.
    pub nodes: Vec<String>,
    /// Where the session table is kept.
    pub home: PathBuf,
    /// Where the OpenAI-compatible API listens.
    pub listen: SocketAddr,
    /// Escrow put into each new session, and into each top-up, in base units.
    pub deposit: Amount,
    /// Blocks a session stays open.
    pub session_blocks: u64,
    /// Which providers to use.
    pub constraints: Constraints,
    /// Output tokens between receipts during a stream.
    pub receipt_every_tokens: u64,
    /// Providers tried per request before giving up.
    pub attempts_max: u32,
    /// Largest request body from the app, in bytes.
    pub request_bytes_max: usize,
    /// The key apps must send (`Authorization: Bearer`); required to listen beyond loopback.
    /// Never logged or saved by the gateway.
    pub api_key: Option<String>,
    /// Web origins allowed to call the gateway from a browser (none by default).
    pub allowed_origins: Vec<String>,
    /// Most escrow the gateway commits to sessions in total (deposits and top-ups), in base
    /// units: the most it can spend.
    pub budget: Amount,
    /// `max_tokens` when the app sets none (within what the model's context leaves).
    pub max_tokens_default: u32,
    /// The longest a stream may take, all providers together.
    pub stream_deadline: Duration,
    /// Which generations the gateway re-runs to check them, and how.
    pub audit: audit::AuditSettings,
    /// A provider nothing was sent to for this long is probed (zero: never).
    pub probe_interval: Duration,
    /// Reach providers on other machines over plain HTTP when they register an `http://`
    /// endpoint (prompts and answers then cross the network in clear). Off by default.
    pub plain_http_providers: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            nodes: vec!["http://127.0.0.1:8545".into()],
            home: default_home(),
            listen: "127.0.0.1:8000".parse().expect("valid address"),
            deposit: 5 * UNITS_PER_PLX,
            session_blocks: 36_000,
            constraints: Constraints::default(),
            receipt_every_tokens: 64,
            attempts_max: 4,
            request_bytes_max: 4 << 20,
            api_key: None,
            allowed_origins: Vec::new(),
            budget: 50 * UNITS_PER_PLX,
            max_tokens_default: 512,
            stream_deadline: Duration::from_secs(600),
            audit: audit::AuditSettings::default(),
            probe_interval: probe::PROBE_INTERVAL_DEFAULT,
            plain_http_providers: false,
        }
    }
}

/// A running gateway's state.
pub struct Gateway {
    app: Arc<proxy::App>,
}

impl Gateway {
    /// Connects to the chain and loads the session table.
    pub async fn start(config: GatewayConfig, key: PrivateKey) -> Result<Gateway, GatewayError> {
        if !config.listen.ip().is_loopback() && config.api_key.as_deref().is_none_or(str::is_empty) {
            return Err(GatewayError::Config(format!(
                "listening on {} (beyond loopback) needs an API key: anyone who can reach it could spend this \
                 account's money (set --api-key or PLEXUS_GATEWAY_API_KEY)",
                config.listen
            )));
        }
        if config.api_key.as_deref().is_some_and(|k| k.len() < 16) {
            return Err(GatewayError::Config("the API key must be at least 16 characters".into()));
        }
        std::fs::create_dir_all(&config.home)
            .map_err(|e| GatewayError::Config(format!("cannot create {}: {e}", config.home.display())))?;
        let chain = Arc::new(ChainClient::new(config.nodes.clone())?);
        let (chain_id, height) = chain.chain_id_and_height().await?;
        let params = chain.params().await?;
        let (_, balance) = chain.account(&key.address()).await?;
        info!(target: "gateway", %chain_id, height, client = %key.address(), balance, "connected to the chain");
        if balance < config.deposit {
            warn!(target: "gateway", balance, deposit = config.deposit, "the client account holds less than one session deposit");
        }
        let sessions =
            Arc::new(session::Sessions::new(key, chain.clone(), chain_id, params.min_tx_fee, config.clone())?);
        let directory = Arc::new(directory::Directory::default());
        if let Err(e) = directory.refresh(&chain).await {
            warn!(target: "gateway", "cannot read providers yet: {e}");
        }
        let plain = config.plain_http_providers;
        let http =
            link::Links::new(|b| b.connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(600)), plain)
                .map_err(GatewayError::Config)?;
        let stream_http = link::Links::new(
            |b| b.connect_timeout(Duration::from_secs(2)).read_timeout(Duration::from_secs(60)),
            plain,
        )
        .map_err(GatewayError::Config)?;
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        tokio::spawn(sessions.clone().follow_chain());
        let (auditor, audit_jobs) = audit::Auditor::new(config.audit.rate);
        let app = Arc::new(proxy::App {
            config,
            chain,
            directory,
            sessions,
            tokenizers: models::Tokenizers::new(plexus_inference::models::ModelCache::from_env()),
            http,
            stream_http,
            metrics: metrics::Metrics::new(),
            started,
            next_id: AtomicU64::new(1),
            auditor,
            asked: Default::default(),
            streams: Arc::new(tokio::sync::Semaphore::new(plexus_serve::stream::STREAMS_MAX)),
        });
        tokio::spawn(audit::work(app.clone(), audit_jobs));
        tokio::spawn(probe::work(app.clone()));
        spawn_background(&app);
        Ok(Gateway { app })
    }

    pub fn router(&self) -> axum::Router {
        proxy::router(self.app.clone())
    }

    /// Serves until `shutdown`, then closes every session on-chain so the unused escrow
    /// comes back once providers have settled.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let result = axum::serve(listener, self.router()).with_graceful_shutdown(shutdown).await;
        info!(target: "gateway", "closing sessions");
        self.app.sessions.close_all().await;
        result
    }
}

fn spawn_background(app: &Arc<proxy::App>) {
    let a = app.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            if let Err(e) = a.directory.refresh(&a.chain).await {
                warn!(target: "gateway", "cannot refresh providers: {e}");
            }
        }
    });
    let a = app.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n = 0u64;
        loop {
            tick.tick().await;
            n += 1;
            if let Err(e) = a.sessions.save() {
                warn!(target: "gateway", "{e}");
            }
            if n.is_multiple_of(2) {
                a.sessions.deliver_outbox().await;
            }
            if n.is_multiple_of(30) {
                a.sessions.prune().await;
            }
        }
    });
}
