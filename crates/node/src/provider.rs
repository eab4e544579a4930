//! The node as an inference provider: loads its models, serves them over the OpenAI-compatible
//! API with paid-session metering, registers its models and itself on-chain, and settles
//! receipts — all from the `[provider]` section of its config.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use commonware_runtime::{Clock, Metrics, Spawner, Storage};
use plexus_execution::state::{self as st, Session, SessionStatus};
use plexus_inference::models::{ModelCache, Progress, resolve};
use plexus_inference::{Engine, EngineConfig, LlamaConfig, load_engine};
use plexus_provider::{ChainView, Provider, ProviderConfig, SessionView};
use plexus_types::tx::{ModelPrice, Payload, ProviderInfo};
use plexus_types::{Hash, Height, ModelManifest, PrivateKey};
use tracing::{info, warn};

use crate::chain::ChainState;
use crate::config::ProviderSection;

impl<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static> ChainView for ChainState<E> {
    fn chain_id(&self) -> &str {
        ChainState::chain_id(self)
    }

    fn session(&self, id: &Hash) -> Option<SessionView> {
        self.read(|store| {
            let s: Session = store.read(&st::keys::session(id))?;
            let grace = store.params().session_grace_blocks as u64;
            Some(SessionView {
                client: s.client,
                provider: s.provider,
                model: s.model,
                deposit: s.deposit,
                price: s.price,
                expiry_height: s.expiry_height,
                refund_height: s.expiry_height.saturating_add(grace),
                settled_seq: s.settled_seq,
                open: s.status == SessionStatus::Open,
                regions: store.read::<st::Regions>(&st::keys::session_regions(id)).map(|r| r.0).unwrap_or_default(),
            })
        })
    }

    fn height(&self) -> Height {
        self.tip().0
    }

    fn submit(&self, payload: Payload) -> Result<Hash, String> {
        self.submit_own(payload).map_err(|e| e.to_string())
    }
}

/// Loads the configured models (blocking: reads and checks model files).
pub fn load_engines(cfg: &ProviderSection) -> anyhow::Result<Vec<Arc<dyn Engine>>> {
    let defaults = LlamaConfig::default();
    let threads = NonZeroU32::new(cfg.threads).unwrap_or(defaults.threads);
    let config = EngineConfig {
        llama: LlamaConfig {
            threads,
            threads_batch: threads,
            parallel: NonZeroU32::new(cfg.parallel).context("provider.parallel must be at least 1")?,
            ctx_tokens: NonZeroU32::new(cfg.ctx_tokens).context("provider.ctx_tokens must be at least 1")?,
            queue_max: NonZeroUsize::new(64).expect("non-zero"),
            ..defaults
        },
        ..EngineConfig::default()
    };
    if cfg.models.is_empty() {
        anyhow::bail!("provider.models is empty: name at least one model to serve");
    }
    let cache = ModelCache::from_env();
    let mut engines = Vec::new();
    for spec in &cfg.models {
        let model = resolve(&cache, spec, true, Progress::Hide).with_context(|| format!("resolving model `{spec}`"))?;
        #[cfg(feature = "faulty-version")]
        let model = substitute(model)?;
        let engine = load_engine(&model, &config).with_context(|| format!("loading model `{spec}`"))?;
        info!(target: "provider", name = %model.manifest.name, id = %model.id, "model loaded");
        engines.push(engine);
    }
    Ok(engines)
}

/// Test builds only: a provider that serves another GGUF (`PLEXUS_SUBSTITUTE=<path>`, e.g. a
/// layer-dropped copy made by `scripts/make-substitute.py`) under the real model's id and
/// manifest, the way a cheating provider would, so tests can show that audits catch it.
#[cfg(feature = "faulty-version")]
fn substitute(model: plexus_inference::models::CachedModel) -> anyhow::Result<plexus_inference::models::CachedModel> {
    let Some(path) = std::env::var_os("PLEXUS_SUBSTITUTE") else { return Ok(model) };
    if model.manifest.engine != plexus_types::EngineKind::LlamaCpp {
        return Ok(model);
    }
    let path = std::path::PathBuf::from(path);
    let other = plexus_inference::models::describe(&path).with_context(|| format!("substitute {}", path.display()))?;
    tracing::warn!(
        target: "provider", name = %model.manifest.name, substitute = %path.display(),
        "this provider serves another model under this one's id (PLEXUS_SUBSTITUTE, a test build)"
    );
    Ok(plexus_inference::models::CachedModel { id: model.id, manifest: model.manifest, ..other })
}

fn hardware() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb >> 20);
    format!("{cpus} vCPU {}, {mem_gib} GiB", std::env::consts::ARCH)
}

/// What this node publishes on-chain about itself. A tensor model is priced per 1,000
/// inferences: one row is one output "token", and it has no input tokens.
pub fn provider_info(cfg: &ProviderSection, manifests: &[ModelManifest]) -> ProviderInfo {
    ProviderInfo {
        endpoint: cfg.public_endpoint(),
        region: cfg.region.clone(),
        hardware: if cfg.hardware.is_empty() { hardware() } else { cfg.hardware.clone() },
        prices: manifests
            .iter()
            .map(|m| match m.engine.is_tensor() {
                true => {
                    ModelPrice { model: m.id(), input_per_1k: 0, output_per_1k: u128::from(cfg.inference_price_per_1k) }
                }
                false => ModelPrice {
                    model: m.id(),
                    input_per_1k: u128::from(cfg.input_price_per_1k),
                    output_per_1k: u128::from(cfg.output_price_per_1k),
                },
            })
            .collect(),
        versions: crate::supported_versions(),
    }
}

/// The served models the chain can take at `execution_version`: tensor models only from the
/// version that introduced them (until then the node serves them off-chain only).
fn registrable(manifests: &[ModelManifest], execution_version: u16) -> Vec<ModelManifest> {
    manifests
        .iter()
        .filter(|m| !m.engine.is_tensor() || execution_version >= plexus_execution::TENSOR_MODELS_SINCE)
        .cloned()
        .collect()
}

/// Starts serving: the OpenAI-compatible API with metering and payment routes on
/// `cfg.listen`, the claimer, and on-chain registration. Returns when the listener is bound.
pub async fn start<E>(
    chain: ChainState<E>,
    key: PrivateKey,
    cfg: ProviderSection,
    ledger_path: &Path,
    engines: Vec<Arc<dyn Engine>>,
) -> anyhow::Result<()>
where
    E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static,
{
    let config = ProviderConfig {
        region: cfg.region.clone(),
        credit_tokens: cfg.credit_tokens,
        claim_interval: Duration::from_secs(cfg.claim_interval_secs.max(1)),
        ..ProviderConfig::new(ledger_path.to_path_buf())
    };
    let provider = Provider::open(chain.clone(), key.address(), config).context("opening the receipt ledger")?;
    let manifests: Vec<ModelManifest> = engines.iter().map(|e| e.info().manifest.clone()).collect();
    tokio::spawn(crate::committee::serve(chain.clone(), engines.clone()));
    let tls = match cfg.tls {
        true => Some(plexus_serve::tls::server_config(&key).map_err(anyhow::Error::msg)?),
        false => None,
    };
    let serve_config = plexus_serve::ServeConfig { chain_id: chain.chain_id().to_string(), ..Default::default() };
    let server = plexus_serve::Server::new(key, engines).with_metering(provider.metering()).with_config(serve_config);
    let router = server.router().merge(plexus_provider::router(provider.clone()));
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen for inference on {}", cfg.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    info!(target: "provider", %addr, endpoint = %cfg.public_endpoint(), "serving models");
    let served = match tls {
        Some(config) => {
            let listener = plexus_serve::tls::TlsListener::new(listener, config)?;
            tokio::spawn(async move { axum::serve(listener, router).await })
        }
        None => tokio::spawn(async move { axum::serve(listener, router).await }),
    };
    tokio::spawn(async move {
        if let Ok(Err(e)) = served.await {
            warn!(target: "provider", "inference server stopped: {e}");
        }
    });
    tokio::spawn(provider.run_claims());
    tokio::spawn(register(chain, cfg, manifests));
    Ok(())
}

/// How far behind wall-clock time the newest final block may be for this node to count as
/// caught up (blocks come every `block_interval_ms`, well under a second).
const SYNCED_LAG_MS: u64 = 30_000;

/// Registers the served models and this provider on-chain, and keeps the registration equal
/// to what `cfg` says (re-registering if it changes, e.g. after a restart with new prices, or
/// after an upgrade lets the chain take the tensor models it serves).
async fn register<E>(chain: ChainState<E>, cfg: ProviderSection, all: Vec<ModelManifest>)
where
    E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static,
{
    let me = chain.address();
    let mut warned_stake = false;
    let mut warned_tensor = false;
    let mut sent_at: Option<Height> = None;
    let mut warned_sync = false;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let height = chain.tip().0;
        // A node still catching up (just joined, or back from a long stop) would sign with a
        // stale nonce and compare against stale records: register once the tip is recent.
        let tip_ms = match chain.blocks().by_height(height).await {
            Ok(Some(record)) => record.block.header.timestamp_ms,
            _ => 0,
        };
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        if now_ms.saturating_sub(tip_ms) > SYNCED_LAG_MS {
            if !warned_sync {
                info!(target: "provider", height, behind_ms = now_ms.saturating_sub(tip_ms), "catching up with the chain before registering");
                warned_sync = true;
            }
            continue;
        }
        if sent_at.is_some_and(|h| height < h + 10) {
            continue; // let what we sent finalize first
        }
        let execution = chain.read(|store| store.versions().execution);
        let manifests = registrable(&all, execution);
        if manifests.len() < all.len() && !warned_tensor {
            warn!(target: "provider", execution, "the chain takes tensor models from execution version {}: they are served but not registered until then", plexus_execution::TENSOR_MODELS_SINCE);
            warned_tensor = true;
        }
        let info = provider_info(&cfg, &manifests);
        let (missing, current, bonded, min_stake) = chain.read(|store| {
            let missing: Vec<ModelManifest> = manifests
                .iter()
                .filter(|m| store.read::<ModelManifest>(&st::keys::model(&m.id())).is_none())
                .cloned()
                .collect();
            let current = store.read::<st::Provider>(&st::keys::provider(&me)).map(|p| p.info);
            (missing, current, store.stake(&me).bonded, store.params().min_provider_stake)
        });
        if missing.is_empty() && current.as_ref() == Some(&info) {
            if sent_at.take().is_some() {
                info!(target: "provider", endpoint = %info.endpoint, models = info.prices.len(), "registered on-chain");
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
            continue;
        }
        if bonded < min_stake {
            if !warned_stake {
                warn!(target: "provider", bonded, min_stake, "cannot register as a provider: bond at least min_provider_stake (`plexus tx stake`)");
                warned_stake = true;
            }
            continue;
        }
        for m in missing {
            if let Err(e) = chain.submit_own(Payload::RegisterModel(m.clone())) {
                warn!(target: "provider", model = %m.name, "cannot register the model: {e}");
            }
        }
        match chain.submit_own(Payload::RegisterProvider(info.clone())) {
            Ok(hash) => info!(target: "provider", %hash, "registering as a provider"),
            Err(e) => warn!(target: "provider", "cannot register as a provider: {e}"),
        }
        sent_at = Some(height);
    }
}
