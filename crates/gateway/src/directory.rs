//! Which providers serve which models, from the chain, refreshed in the background; and how
//! each provider has been doing for this gateway (latency, load, failures), for routing.
//!
//! Routing is power-of-two-choices: two random eligible providers, and the one with the lower
//! score — measured latency times requests in flight, weighted by price — wins. A provider
//! that fails is cooled down for a while and tried last; one caught lying (a response the
//! gateway could not verify, or one its audit found the model would not have produced) is
//! shunned much longer. A provider the chain convicted of serving a response its model would
//! not produce (a committee re-ran it) is never used again, by any gateway: that record is on
//! chain and no provider can write it for itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use plexus_types::tx::ModelPrice;
use plexus_types::{Address, Amount, ModelId, ModelManifest};
use rand::RngExt as _;

use crate::chain::{ChainClient, ProviderRecord};

/// How long a failed provider is tried only as a last resort.
const COOLDOWN: Duration = Duration::from_secs(10);
/// How long a provider caught lying is not used at all.
const SHUNNED: Duration = Duration::from_secs(600);
/// Weight of a new latency sample in the moving average.
const EWMA_ALPHA: f64 = 0.3;
/// Latency assumed for a provider not measured yet, in ms (tried early, not first).
const UNMEASURED_MS: f64 = 200.0;

/// Limits on which providers the gateway uses.
#[derive(Clone, Debug, Default)]
pub struct Constraints {
    /// Only providers whose region label is one of these (any region when empty). Sessions are
    /// then opened restricted to them on chain (data residency, execution version 4): the
    /// chain refuses a provider outside them and the provider refuses the session.
    pub regions: Vec<String>,
    /// Highest price per 1k input tokens accepted.
    pub max_input_per_1k: Option<Amount>,
    /// Highest price per 1k output tokens accepted.
    pub max_output_per_1k: Option<Amount>,
    /// Model names pinned to ids (`--model NAME=ID`), over what the chain says.
    pub pins: BTreeMap<String, ModelId>,
    /// Only these providers, when not empty (`--provider ADDR`).
    pub providers: Vec<Address>,
}

impl Constraints {
    /// Whether a provider in `region` may be used.
    pub fn allows_region(&self, region: &str) -> bool {
        self.regions.is_empty() || self.regions.iter().any(|r| r == region)
    }
}

/// A provider able to serve one model.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub provider: Address,
    pub endpoint: String,
    pub region: String,
    pub model: ModelId,
    pub model_name: String,
    pub price: ModelPrice,
}

/// A model the network serves, for `/v1/models`.
#[derive(Clone, Debug)]
pub struct NetworkModel {
    pub id: ModelId,
    pub manifest: ModelManifest,
    pub providers: usize,
    pub cheapest_output_per_1k: Amount,
}

#[derive(Default)]
struct Snapshot {
    providers: Vec<ProviderRecord>,
    models: BTreeMap<ModelId, ModelManifest>,
}

#[derive(Default, Clone)]
struct Stats {
    ewma_ms: Option<f64>,
    inflight: u32,
    cooldown_until: Option<Instant>,
    /// Until when it is not used at all: caught lying.
    shunned_until: Option<Instant>,
    /// Responses it sent that did not verify.
    lies: u64,
    /// When a request (an app's or a probe) last went to it.
    last_used: Option<Instant>,
    probes: u64,
    probes_failed: u64,
}

/// What probes found about a provider, for `/status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProbeView {
    pub provider: Address,
    pub probes: u64,
    pub failed: u64,
    /// The moving average of its latency (app requests and probes), in ms.
    pub latency_ms: Option<f64>,
}

#[derive(Default)]
pub struct Directory {
    snapshot: RwLock<Snapshot>,
    stats: Mutex<HashMap<Address, Stats>>,
}

impl Directory {
    /// Reads providers and models from the chain.
    pub async fn refresh(&self, chain: &ChainClient) -> Result<(), crate::GatewayError> {
        let (providers, models) = (chain.providers().await?, chain.models().await?);
        let models = models.into_iter().map(|m| (m.id, m.manifest)).collect();
        *self.snapshot.write().expect("directory lock") = Snapshot { providers, models };
        Ok(())
    }

    /// The model `requested` (a name, a pinned name or an id) means on this network.
    pub fn resolve(
        &self,
        requested: &str,
        constraints: &Constraints,
    ) -> Result<(ModelId, ModelManifest), crate::GatewayError> {
        let snap = self.snapshot.read().expect("directory lock");
        crate::models::resolve(requested, &constraints.pins, &snap.models)
    }

    /// Every provider serving exactly `model` within `constraints`.
    pub fn candidates(&self, model: &ModelId, constraints: &Constraints) -> Vec<Candidate> {
        let snap = self.snapshot.read().expect("directory lock");
        let mut out = Vec::new();
        for p in &snap.providers {
            if !constraints.allows_region(&p.region) {
                continue;
            }
            if !constraints.providers.is_empty() && !constraints.providers.contains(&p.address) {
                continue;
            }
            if p.stats.convicted > 0 {
                continue;
            }
            for price in &p.prices {
                if &price.model != model {
                    continue;
                }
                let Some(manifest) = snap.models.get(&price.model) else { continue };
                if constraints.max_input_per_1k.is_some_and(|m| price.input_per_1k > m)
                    || constraints.max_output_per_1k.is_some_and(|m| price.output_per_1k > m)
                {
                    continue;
                }
                out.push(Candidate {
                    provider: p.address.clone(),
                    endpoint: p.endpoint.trim_end_matches('/').to_string(),
                    region: p.region.clone(),
                    model: price.model,
                    model_name: manifest.name.clone(),
                    price: *price,
                });
            }
        }
        out
    }

    /// The models on offer, by name.
    pub fn models(&self, constraints: &Constraints) -> Vec<NetworkModel> {
        let snap = self.snapshot.read().expect("directory lock");
        let mut by_id: BTreeMap<ModelId, NetworkModel> = BTreeMap::new();
        for p in &snap.providers {
            if !constraints.allows_region(&p.region) {
                continue;
            }
            for price in &p.prices {
                let Some(manifest) = snap.models.get(&price.model) else { continue };
                let m = by_id.entry(price.model).or_insert_with(|| NetworkModel {
                    id: price.model,
                    manifest: manifest.clone(),
                    providers: 0,
                    cheapest_output_per_1k: price.output_per_1k,
                });
                m.providers += 1;
                m.cheapest_output_per_1k = m.cheapest_output_per_1k.min(price.output_per_1k);
            }
        }
        by_id.into_values().collect()
    }

    pub fn provider_count(&self) -> usize {
        self.snapshot.read().expect("directory lock").providers.len()
    }

    /// Picks one of `candidates`, skipping `exclude`d providers: two at random, the better
    /// scored wins; providers cooling down after a failure only when nothing else is left.
    pub fn pick(&self, candidates: &[Candidate], exclude: &[Address]) -> Option<Candidate> {
        let stats = self.stats.lock().expect("stats lock");
        let now = Instant::now();
        let shunned = |c: &Candidate| stats.get(&c.provider).and_then(|s| s.shunned_until).is_some_and(|t| t > now);
        let open: Vec<&Candidate> =
            candidates.iter().filter(|c| !exclude.contains(&c.provider) && !shunned(c)).collect();
        let healthy: Vec<&Candidate> = open
            .iter()
            .copied()
            .filter(|c| stats.get(&c.provider).and_then(|s| s.cooldown_until).is_none_or(|t| t <= now))
            .collect();
        let pool = if healthy.is_empty() { open } else { healthy };
        if pool.is_empty() {
            return None;
        }
        let cheapest =
            pool.iter().map(|c| c.price.output_per_1k.saturating_add(c.price.input_per_1k)).min().unwrap_or(0);
        let score = |c: &Candidate| {
            let s = stats.get(&c.provider).cloned().unwrap_or_default();
            let price = c.price.output_per_1k.saturating_add(c.price.input_per_1k) as f64;
            let price_factor = if cheapest == 0 { 1.0 + price } else { price / cheapest as f64 };
            s.ewma_ms.unwrap_or(UNMEASURED_MS) * f64::from(1 + s.inflight) * price_factor.max(1.0)
        };
        let mut rng = rand::rng();
        let a = pool[rng.random_range(0..pool.len())];
        let b = pool[rng.random_range(0..pool.len())];
        Some(if score(a) <= score(b) { a.clone() } else { b.clone() })
    }

    /// A response from `provider` did not verify: it is not used for a while, and counted.
    pub fn caught_lying(&self, provider: &Address) {
        let mut stats = self.stats.lock().expect("stats lock");
        let s = stats.entry(provider.clone()).or_default();
        s.lies += 1;
        s.shunned_until = Some(Instant::now() + SHUNNED);
    }

    /// Whether `provider` is shunned now (caught lying or failed an audit, not long ago).
    pub fn shunned(&self, provider: &Address) -> bool {
        let stats = self.stats.lock().expect("stats lock");
        stats.get(provider).and_then(|s| s.shunned_until).is_some_and(|t| t > Instant::now())
    }

    /// Responses from `provider` that did not verify.
    pub fn lies(&self, provider: &Address) -> u64 {
        self.stats.lock().expect("stats lock").get(provider).map_or(0, |s| s.lies)
    }

    pub fn started(&self, provider: &Address) {
        let mut stats = self.stats.lock().expect("stats lock");
        let s = stats.entry(provider.clone()).or_default();
        s.inflight += 1;
        s.last_used = Some(Instant::now());
    }

    /// Whether `provider` is due a probe: no request went to it for `idle`, and it is not shunned.
    pub fn due_probe(&self, provider: &Address, idle: Duration) -> bool {
        let stats = self.stats.lock().expect("stats lock");
        let Some(s) = stats.get(provider) else { return true };
        let now = Instant::now();
        s.shunned_until.is_none_or(|t| t <= now) && s.last_used.is_none_or(|t| now.duration_since(t) >= idle)
    }

    /// Counts a probe of `provider` (its latency was recorded like any request's).
    pub fn probed(&self, provider: &Address, ok: bool) {
        let mut stats = self.stats.lock().expect("stats lock");
        let s = stats.entry(provider.clone()).or_default();
        s.probes += 1;
        if !ok {
            s.probes_failed += 1;
        }
    }

    pub fn probe_view(&self) -> Vec<ProbeView> {
        let stats = self.stats.lock().expect("stats lock");
        let mut view: Vec<ProbeView> = stats
            .iter()
            .filter(|(_, s)| s.probes > 0)
            .map(|(a, s)| ProbeView {
                provider: a.clone(),
                probes: s.probes,
                failed: s.probes_failed,
                latency_ms: s.ewma_ms,
            })
            .collect();
        view.sort_by(|a, b| a.provider.cmp(&b.provider));
        view
    }

    /// Records how a request to `provider` went: `Some(latency)` on success.
    pub fn finished(&self, provider: &Address, latency: Option<Duration>) {
        let mut stats = self.stats.lock().expect("stats lock");
        let s = stats.entry(provider.clone()).or_default();
        s.inflight = s.inflight.saturating_sub(1);
        match latency {
            Some(l) => {
                let ms = l.as_secs_f64() * 1e3;
                s.ewma_ms = Some(s.ewma_ms.map_or(ms, |old| (1.0 - EWMA_ALPHA) * old + EWMA_ALPHA * ms));
                s.cooldown_until = None;
            }
            None => s.cooldown_until = Some(Instant::now() + COOLDOWN),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_types::PrivateKey;

    fn candidate(seed: u64, input_per_1k: Amount, output_per_1k: Amount) -> Candidate {
        let model = plexus_types::hash(b"m");
        Candidate {
            provider: PrivateKey::from_seed(seed).address(),
            endpoint: format!("http://127.0.0.1:{}", 9000 + seed),
            region: "eu".into(),
            model,
            model_name: "m".into(),
            price: ModelPrice { model, input_per_1k, output_per_1k },
        }
    }

    #[test]
    fn a_provider_convicted_on_chain_is_never_a_candidate() {
        let model = plexus_types::hash(b"m");
        let record = |seed: u64, convicted: u64| ProviderRecord {
            address: PrivateKey::from_seed(seed).address(),
            endpoint: "http://127.0.0.1:9000".into(),
            region: "eu".into(),
            hardware: String::new(),
            prices: vec![ModelPrice { model, input_per_1k: 1, output_per_1k: 1 }],
            versions: plexus_types::version::SupportedVersions::V1_ONLY,
            bonded: 1,
            stats: crate::chain::ProviderStats { convicted, acquitted: 0, slashed: 0 },
        };
        let manifest = ModelManifest {
            name: "m".into(),
            engine: plexus_types::EngineKind::LlamaCpp,
            weights_sha256: plexus_types::hash(b"w"),
            tokenizer_sha256: plexus_types::hash(b"t"),
            template_sha256: plexus_types::Hash::ZERO,
            quantization: "Q4_1".into(),
            context_length: 512,
        };
        let d = Directory::default();
        *d.snapshot.write().unwrap() =
            Snapshot { providers: vec![record(1, 0), record(2, 1)], models: [(model, manifest)].into_iter().collect() };
        let convicted = PrivateKey::from_seed(2).address();
        let found = d.candidates(&model, &Constraints::default());
        assert_eq!(
            found.iter().map(|c| c.provider.clone()).collect::<Vec<_>>(),
            vec![PrivateKey::from_seed(1).address()]
        );
        // Not even when the user lists it explicitly.
        let only = Constraints { providers: vec![convicted], ..Constraints::default() };
        assert!(d.candidates(&model, &only).is_empty());
    }

    #[test]
    fn prices_at_the_top_of_the_range_do_not_overflow_routing() {
        let d = Directory::default();
        let pool = vec![candidate(1, u128::MAX, u128::MAX), candidate(2, u128::MAX - 1, 5)];
        for _ in 0..32 {
            assert!(d.pick(&pool, &[]).is_some());
        }
    }

    #[test]
    fn a_provider_caught_lying_is_not_picked_while_others_are_left() {
        let d = Directory::default();
        let pool = vec![candidate(1, 1, 1), candidate(2, 1, 1)];
        d.caught_lying(&pool[0].provider);
        for _ in 0..32 {
            assert_eq!(d.pick(&pool, &[]).unwrap().provider, pool[1].provider);
        }
        assert_eq!(d.lies(&pool[0].provider), 1);
        // Nobody else: it is not used at all.
        assert!(d.pick(&pool[..1], &[]).is_none());
    }
}
