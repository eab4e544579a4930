//! Which providers serve which models, from the chain, refreshed in the background; and how
//! each provider has been doing for this gateway (latency, load, failures), for routing.
//!
//! Routing is power-of-two-choices: two random eligible providers, and the one with the lower
//! score — measured latency times requests in flight, weighted by price — wins.
//!
//! A provider's standing is kept per model, and only what it provably did moves it
//! (see "Whose fault is it" in the README):
//! - a request the client got wrong (the provider answered 4xx, or the gateway refused it
//!   first) touches nothing;
//! - an undetermined failure (no connection, a 5xx, a stream that broke) retries elsewhere, and
//!   the provider is tried last for that model for [`COOLDOWN`] — never excluded;
//! - a proven lie (a response the gateway could not verify, or one its audit found the model
//!   would not have produced) is a strike against that provider *for that model*: it is not
//!   used for that model for [`SHUN_BASE`], doubling with every strike not yet worked off (at
//!   most [`SHUN_MAX`]); [`GOOD_PER_STRIKE`] verified responses work one strike off. Its other
//!   models are served as before.
//!
//! A provider the chain convicted of serving a response its model would not produce (a
//! committee re-ran it) is never used again, by any gateway: that record is on chain and no
//! provider can write it for itself. When nothing is left to pick, [`Directory::unavailable`]
//! says which providers were considered and why each cannot serve, never an empty list.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use plexus_types::tx::ModelPrice;
use plexus_types::{Address, Amount, ModelId, ModelManifest};
use rand::RngExt as _;

use crate::chain::{ChainClient, ProviderRecord};

/// How long a provider whose request failed for an undetermined reason is tried only as a last
/// resort, for that model.
pub const COOLDOWN: Duration = Duration::from_secs(10);
/// How long a provider caught lying is not used for that model, at its first strike.
pub const SHUN_BASE: Duration = Duration::from_secs(120);
/// The longest a run of strikes keeps a provider out of a model.
pub const SHUN_MAX: Duration = Duration::from_secs(3600);
/// Verified responses of a model that work one strike off.
pub const GOOD_PER_STRIKE: u32 = 20;
/// Weight of a new latency sample in the moving average.
const EWMA_ALPHA: f64 = 0.3;
/// Latency assumed for a provider not measured yet, in ms (tried early, not first).
const UNMEASURED_MS: f64 = 200.0;
/// Longest reason kept for why a provider was shunned.
const REASON_BYTES_MAX: usize = 200;

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
    /// The chain's execution version when the listing was read.
    execution_version: u16,
}

/// How a provider is doing for this gateway, whatever the model: the machine's latency, load
/// and probes.
#[derive(Default, Clone)]
struct Stats {
    ewma_ms: Option<f64>,
    inflight: u32,
    /// When a request (an app's or a probe) last went to it.
    last_used: Option<Instant>,
    probes: u64,
    probes_failed: u64,
}

/// How a provider stands with this gateway for one model: only what it did with that model.
#[derive(Default, Clone, Debug)]
struct Standing {
    /// Until when it is tried only when nothing else is left: an undetermined failure.
    cooldown_until: Option<Instant>,
    /// Until when it is not used at all: caught lying.
    shunned_until: Option<Instant>,
    /// Proven lies not yet worked off by verified responses.
    strikes: u32,
    /// Verified responses since the last strike was worked off (or made).
    good: u32,
    /// Proven lies in all.
    lies: u64,
    /// What the last one was.
    last_lie: Option<String>,
}

impl Standing {
    fn shunned(&self, now: Instant) -> bool {
        self.shunned_until.is_some_and(|t| t > now)
    }

    fn cooling(&self, now: Instant) -> bool {
        self.cooldown_until.is_some_and(|t| t > now)
    }
}

/// How a request sent to a provider ended, as far as its standing goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (and, where it is checked, verified) in this time.
    Served(Duration),
    /// Refused because of the request itself (a 4xx the client must act on): no mark.
    Refused,
    /// Failed for a reason nobody can pin on it yet (no connection, a 5xx, a broken stream).
    Failed,
}

/// How long `strikes` unworked-off strikes keep a provider out of a model.
pub fn shun_for(strikes: u32) -> Duration {
    let doublings = strikes.saturating_sub(1).min(16);
    SHUN_BASE.saturating_mul(1u32 << doublings).min(SHUN_MAX)
}

/// How a provider stands with this gateway for one model, for `/status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StandingView {
    pub provider: Address,
    pub model: ModelId,
    /// Proven lies with this model, all told.
    pub lies: u64,
    /// Those not yet worked off by verified responses.
    pub strikes: u32,
    /// Seconds it is still not used for this model (0: it is).
    pub shunned_for_s: u64,
    /// Tried last for this model after an undetermined failure.
    pub cooling: bool,
    pub last_lie: Option<String>,
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
    /// Per provider and model. Bounded by the providers and models the chain lists: an entry is
    /// made only for a candidate a request went to.
    standing: Mutex<HashMap<(Address, ModelId), Standing>>,
}

impl Directory {
    /// Reads providers and models from the chain.
    pub async fn refresh(&self, chain: &ChainClient) -> Result<(), crate::GatewayError> {
        let (providers, models) = (chain.providers().await?, chain.models().await?);
        let execution_version = chain.execution_version().await?;
        let models = models.into_iter().map(|m| (m.id, m.manifest)).collect();
        *self.snapshot.write().expect("directory lock") = Snapshot { providers, models, execution_version };
        Ok(())
    }

    /// The chain's execution version at the last refresh (0 before the first).
    pub fn execution_version(&self) -> u16 {
        self.snapshot.read().expect("directory lock").execution_version
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

    /// Picks one of `candidates`, skipping `exclude`d providers and those shunned for the
    /// candidate's model: two at random, the better scored wins; providers cooling down after an
    /// undetermined failure only when nothing else is left.
    pub fn pick(&self, candidates: &[Candidate], exclude: &[Address]) -> Option<Candidate> {
        let stats = self.stats.lock().expect("stats lock");
        let standing = self.standing.lock().expect("standing lock");
        let now = Instant::now();
        let of = |c: &Candidate| standing.get(&(c.provider.clone(), c.model));
        let open: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| !exclude.contains(&c.provider) && !of(c).is_some_and(|s| s.shunned(now)))
            .collect();
        let healthy: Vec<&Candidate> =
            open.iter().copied().filter(|c| !of(c).is_some_and(|s| s.cooling(now))).collect();
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

    /// Why the `candidates` a request did not try (all but `tried`) were not: a line per
    /// provider, and the soonest a shunned one is usable again, if one is.
    pub fn unavailable(&self, candidates: &[Candidate], tried: &[Address]) -> (Vec<String>, Option<Duration>) {
        let standing = self.standing.lock().expect("standing lock");
        let now = Instant::now();
        let mut why = Vec::new();
        let mut soonest: Option<Duration> = None;
        for c in candidates.iter().filter(|c| !tried.contains(&c.provider)) {
            let s = standing.get(&(c.provider.clone(), c.model));
            match s.and_then(|s| s.shunned_until.filter(|&t| t > now).map(|t| (s, t - now))) {
                Some((s, left)) => {
                    soonest = Some(soonest.map_or(left, |d| d.min(left)));
                    why.push(format!(
                        "{} is not used for `{}` for {} s more: {} proven lie(s) with this model, the last: {}",
                        c.provider,
                        c.model_name,
                        left.as_secs().max(1),
                        s.strikes,
                        s.last_lie.as_deref().unwrap_or("unknown")
                    ));
                }
                None => why.push(format!("{} was not tried: the request's attempts ran out", c.provider)),
            }
        }
        (why, soonest)
    }

    /// Whether any of `candidates` may be sent a request now (none shunned for its model).
    pub fn can_serve(&self, candidates: &[Candidate]) -> bool {
        let standing = self.standing.lock().expect("standing lock");
        let now = Instant::now();
        candidates.iter().any(|c| !standing.get(&(c.provider.clone(), c.model)).is_some_and(|s| s.shunned(now)))
    }

    /// A response from `provider` for `model` did not verify (`why`): a strike, and it is not
    /// used for that model for [`shun_for`] its strikes. Returns how long.
    pub fn caught_lying(&self, provider: &Address, model: &ModelId, why: &str) -> Duration {
        let mut standing = self.standing.lock().expect("standing lock");
        let s = standing.entry((provider.clone(), *model)).or_default();
        s.lies += 1;
        s.strikes = s.strikes.saturating_add(1);
        s.good = 0;
        s.last_lie = Some(why[..why.floor_char_boundary(REASON_BYTES_MAX)].to_string());
        let left = shun_for(s.strikes);
        s.shunned_until = Some(Instant::now() + left);
        left
    }

    /// A response from `provider` for `model` verified and was paid: good work, which wears its
    /// strikes for that model down, one per [`GOOD_PER_STRIKE`].
    pub fn verified(&self, provider: &Address, model: &ModelId) {
        let mut standing = self.standing.lock().expect("standing lock");
        let Some(s) = standing.get_mut(&(provider.clone(), *model)) else { return };
        if s.strikes == 0 {
            return;
        }
        s.good += 1;
        if s.good >= GOOD_PER_STRIKE {
            s.good = 0;
            s.strikes -= 1;
        }
    }

    /// Whether `provider` is shunned for `model` now (caught lying or failed an audit with it,
    /// not long ago).
    pub fn shunned(&self, provider: &Address, model: &ModelId) -> bool {
        let standing = self.standing.lock().expect("standing lock");
        standing.get(&(provider.clone(), *model)).is_some_and(|s| s.shunned(Instant::now()))
    }

    /// Responses from `provider` that did not verify, all models together.
    pub fn lies(&self, provider: &Address) -> u64 {
        let standing = self.standing.lock().expect("standing lock");
        standing.iter().filter(|((p, _), _)| p == provider).map(|(_, s)| s.lies).sum()
    }

    /// Every provider's standing per model, for `/status`: only pairs that ever failed or lied.
    pub fn standing_view(&self) -> Vec<StandingView> {
        let standing = self.standing.lock().expect("standing lock");
        let now = Instant::now();
        let mut view: Vec<StandingView> = standing
            .iter()
            .filter(|(_, s)| s.lies > 0 || s.strikes > 0 || s.cooling(now) || s.shunned(now))
            .map(|((provider, model), s)| StandingView {
                provider: provider.clone(),
                model: *model,
                lies: s.lies,
                strikes: s.strikes,
                shunned_for_s: s.shunned_until.filter(|&t| t > now).map_or(0, |t| (t - now).as_secs().max(1)),
                cooling: s.cooling(now),
                last_lie: s.last_lie.clone(),
            })
            .collect();
        view.sort_by(|a, b| (&a.provider, a.model).cmp(&(&b.provider, b.model)));
        view
    }

    /// Strikes not yet worked off by `provider` for `model`.
    #[cfg(test)]
    pub fn strikes(&self, provider: &Address, model: &ModelId) -> u32 {
        let standing = self.standing.lock().expect("standing lock");
        standing.get(&(provider.clone(), *model)).map_or(0, |s| s.strikes)
    }

    pub fn started(&self, provider: &Address) {
        let mut stats = self.stats.lock().expect("stats lock");
        let s = stats.entry(provider.clone()).or_default();
        s.inflight += 1;
        s.last_used = Some(Instant::now());
    }

    /// Whether `provider` is due a probe for `model`: no request went to it for `idle`, and it is
    /// not shunned for that model.
    pub fn due_probe(&self, provider: &Address, model: &ModelId, idle: Duration) -> bool {
        if self.shunned(provider, model) {
            return false;
        }
        let stats = self.stats.lock().expect("stats lock");
        let Some(s) = stats.get(provider) else { return true };
        s.last_used.is_none_or(|t| Instant::now().duration_since(t) >= idle)
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

    /// Records how a request to `provider` for `model` went (one that [`Directory::started`]).
    pub fn finished(&self, provider: &Address, model: &ModelId, outcome: Outcome) {
        {
            let mut stats = self.stats.lock().expect("stats lock");
            let s = stats.entry(provider.clone()).or_default();
            s.inflight = s.inflight.saturating_sub(1);
            if let Outcome::Served(l) = outcome {
                let ms = l.as_secs_f64() * 1e3;
                s.ewma_ms = Some(s.ewma_ms.map_or(ms, |old| (1.0 - EWMA_ALPHA) * old + EWMA_ALPHA * ms));
            }
        }
        match outcome {
            Outcome::Served(_) => {
                if let Some(s) = self.standing.lock().expect("standing lock").get_mut(&(provider.clone(), *model)) {
                    s.cooldown_until = None;
                }
            }
            Outcome::Refused => {}
            Outcome::Failed => self.failed(provider, model),
        }
    }

    /// A request for `model` could not be carried to `provider` for an undetermined reason (no
    /// session, no connection): it is tried last for that model for [`COOLDOWN`].
    pub fn failed(&self, provider: &Address, model: &ModelId) {
        let mut standing = self.standing.lock().expect("standing lock");
        standing.entry((provider.clone(), *model)).or_default().cooldown_until = Some(Instant::now() + COOLDOWN);
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
        *d.snapshot.write().unwrap() = Snapshot {
            providers: vec![record(1, 0), record(2, 1)],
            models: [(model, manifest)].into_iter().collect(),
            execution_version: 7,
        };
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
        let model = pool[0].model;
        d.caught_lying(&pool[0].provider, &model, "the ids spell different text");
        for _ in 0..32 {
            assert_eq!(d.pick(&pool, &[]).unwrap().provider, pool[1].provider);
        }
        assert_eq!(d.lies(&pool[0].provider), 1);
        // Nobody else: it is not used at all, and the gateway can say why.
        assert!(d.pick(&pool[..1], &[]).is_none());
        assert!(!d.can_serve(&pool[..1]));
        let (why, soonest) = d.unavailable(&pool[..1], &[]);
        assert_eq!(why.len(), 1);
        assert!(why[0].contains(&pool[0].provider.to_string()) && why[0].contains("spell different text"), "{why:?}");
        assert!(soonest.is_some_and(|t| t <= SHUN_BASE && t > SHUN_BASE - Duration::from_secs(5)), "{soonest:?}");
    }

    /// The same provider offering another model.
    fn other_model(c: &Candidate) -> Candidate {
        let model = plexus_types::hash(b"another model");
        Candidate { model, model_name: "other".into(), price: ModelPrice { model, ..c.price }, ..c.clone() }
    }

    #[test]
    fn a_lie_with_one_model_leaves_the_providers_other_models_in_service() {
        let d = Directory::default();
        let liar = candidate(1, 1, 1);
        let other = other_model(&liar);
        d.caught_lying(&liar.provider, &liar.model, "outputs that are not the ones attested");
        assert!(d.shunned(&liar.provider, &liar.model));
        assert!(!d.shunned(&liar.provider, &other.model));
        assert!(d.pick(std::slice::from_ref(&liar), &[]).is_none());
        assert_eq!(d.pick(std::slice::from_ref(&other), &[]).unwrap().model, other.model);
        assert!(d.can_serve(std::slice::from_ref(&other)));
    }

    #[test]
    fn undetermined_failures_and_client_errors_never_exclude_a_provider() {
        let d = Directory::default();
        let c = candidate(1, 1, 1);
        let pool = std::slice::from_ref(&c);
        for _ in 0..100 {
            d.started(&c.provider);
            d.finished(&c.provider, &c.model, Outcome::Failed);
            d.started(&c.provider);
            d.finished(&c.provider, &c.model, Outcome::Refused);
        }
        // Cooling down after failures: still picked when it is the only one, never shunned.
        assert_eq!(d.pick(pool, &[]).unwrap().provider, c.provider);
        assert!(!d.shunned(&c.provider, &c.model));
        assert_eq!((d.lies(&c.provider), d.strikes(&c.provider, &c.model)), (0, 0));
        // A healthy provider is preferred meanwhile.
        let fresh = candidate(2, 1, 1);
        let both = vec![c.clone(), fresh.clone()];
        assert!((0..32).all(|_| d.pick(&both, &[]).unwrap().provider == fresh.provider));
        // A client's refusal leaves a provider exactly as it was.
        let e = Directory::default();
        e.started(&c.provider);
        e.finished(&c.provider, &c.model, Outcome::Refused);
        assert!(e.standing.lock().unwrap().get(&(c.provider.clone(), c.model)).is_none());
    }

    #[test]
    fn repeated_lies_shun_longer_and_verified_work_wears_strikes_down() {
        assert_eq!(shun_for(1), SHUN_BASE);
        assert_eq!(shun_for(2), SHUN_BASE * 2);
        assert_eq!(shun_for(3), SHUN_BASE * 4);
        assert_eq!(shun_for(40), SHUN_MAX);
        assert_eq!(shun_for(u32::MAX), SHUN_MAX);
        let d = Directory::default();
        let c = candidate(1, 1, 1);
        let lie = |n: u32| (0..n).map(|_| d.caught_lying(&c.provider, &c.model, "x")).last().unwrap();
        assert_eq!(lie(1), SHUN_BASE);
        assert_eq!(lie(2), SHUN_BASE * 4, "the third strike");
        assert_eq!(d.strikes(&c.provider, &c.model), 3);
        // Verified work (after the shun) wears strikes down: one per GOOD_PER_STRIKE.
        for _ in 0..GOOD_PER_STRIKE * 2 - 1 {
            d.verified(&c.provider, &c.model);
        }
        assert_eq!(d.strikes(&c.provider, &c.model), 2);
        d.verified(&c.provider, &c.model);
        assert_eq!(d.strikes(&c.provider, &c.model), 1);
        // The next lie counts from there: two strikes, twice the base.
        assert_eq!(lie(1), SHUN_BASE * 2);
        assert_eq!(d.lies(&c.provider), 4, "every lie stays counted");
    }

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary() {
        let d = Directory::default();
        let c = candidate(1, 1, 1);
        d.caught_lying(&c.provider, &c.model, &"é".repeat(500));
        let (why, _) = d.unavailable(std::slice::from_ref(&c), &[]);
        assert!(why[0].len() < 400, "{}", why[0].len());
    }
}
