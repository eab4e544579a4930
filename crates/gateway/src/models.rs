//! Which model a request means, and the gateway's own copy of its tokenizer.
//!
//! A name is an identity: on chain, a model name belongs to the account that registered the one
//! manifest under it, so the gateway maps a name to exactly one model id (or to the id the user
//! pinned with `--model NAME=ID`) and routes only to providers pricing that id. A client never
//! gets a different model than it asked for; responses name the id that answered.
//!
//! The tokenizer comes from the local model cache (the files whose hashes are in the manifest,
//! so the same tokenizer the provider must use), pulled once if it is a known model. Without it
//! the gateway cannot count what it would pay for, and refuses the model.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use plexus_inference::Tokenizer;
use plexus_inference::models::{ModelCache, Progress};
use plexus_types::{ModelId, ModelManifest};
use tracing::info;

use crate::GatewayError;

/// Loaded tokenizers by model id, loading each once.
pub struct Tokenizers {
    cache: ModelCache,
    loaded: Mutex<BTreeMap<ModelId, Arc<Tokenizer>>>,
    /// Serializes loading, so concurrent first requests load (or pull) once.
    loading: tokio::sync::Mutex<()>,
}

impl Tokenizers {
    pub fn new(cache: ModelCache) -> Self {
        Tokenizers { cache, loaded: Mutex::new(BTreeMap::new()), loading: tokio::sync::Mutex::new(()) }
    }

    /// The tokenizer of `manifest`'s model, from the local cache (pulled if it is a known
    /// model not cached yet).
    pub async fn get(&self, id: ModelId, manifest: &ModelManifest) -> Result<Arc<Tokenizer>, GatewayError> {
        if let Some(t) = self.loaded.lock().expect("tokenizers lock").get(&id) {
            return Ok(t.clone());
        }
        let _one = self.loading.lock().await;
        if let Some(t) = self.loaded.lock().expect("tokenizers lock").get(&id) {
            return Ok(t.clone());
        }
        let cache = self.cache.clone();
        let name = manifest.name.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<Tokenizer, String> {
            let cached = match cache.find(&id.to_string()).map_err(|e| e.to_string())? {
                Some(m) => m,
                None => {
                    info!(target: "gateway::models", model = %name, %id, "fetching the model's tokenizer files (once)");
                    let pulled = cache.pull(&name, Progress::Hide).map_err(|e| {
                        format!("no local copy of model {name} ({id}) to count its tokens with, and it cannot be pulled: {e}; import it with `plexus model import`")
                    })?;
                    if pulled.id != id {
                        return Err(format!(
                            "the network's {name} is model {id}, but the known {name} is {}; import the network's files with `plexus model import`",
                            pulled.id
                        ));
                    }
                    pulled
                }
            };
            Tokenizer::load(&cached).map_err(|e| format!("loading the tokenizer of {name}: {e}"))
        })
        .await
        .map_err(|e| GatewayError::Internal(format!("tokenizer task: {e}")))?
        .map_err(GatewayError::Unverifiable)?;
        let t = Arc::new(loaded);
        self.loaded.lock().expect("tokenizers lock").insert(id, t.clone());
        Ok(t)
    }
}

/// The model a request names: a pinned name, a registered name (one model per name on chain),
/// or a model id in hex.
pub fn resolve(
    requested: &str,
    pins: &BTreeMap<String, ModelId>,
    registered: &BTreeMap<ModelId, ModelManifest>,
) -> Result<(ModelId, ModelManifest), GatewayError> {
    let not_found = || GatewayError::NoProvider(format!("no model `{requested}` is registered on the network"));
    if let Some(id) = pins.get(requested) {
        let manifest = registered.get(id).ok_or_else(|| {
            GatewayError::NoProvider(format!("`{requested}` is pinned to model {id}, which the network does not have"))
        })?;
        return Ok((*id, manifest.clone()));
    }
    if let Ok(id) = requested.parse::<ModelId>() {
        return registered.get(&id).map(|m| (id, m.clone())).ok_or_else(not_found);
    }
    let mut named = registered.iter().filter(|(_, m)| m.name == requested);
    match (named.next(), named.next()) {
        (Some((id, m)), None) => Ok((*id, m.clone())),
        (None, _) => Err(not_found()),
        (Some(_), Some(_)) => Err(GatewayError::NoProvider(format!(
            "several models are named `{requested}`; pin the one you mean with --model {requested}=<id>"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_types::EngineKind;

    fn manifest(name: &str, weights: &[u8]) -> ModelManifest {
        ModelManifest {
            name: name.into(),
            engine: EngineKind::LlamaCpp,
            weights_sha256: plexus_types::hash(weights),
            tokenizer_sha256: plexus_types::hash(b"t"),
            template_sha256: plexus_types::hash(b"c"),
            quantization: "Q4_1".into(),
            context_length: 2048,
        }
    }

    #[test]
    fn names_map_to_exactly_one_model() {
        let real = manifest("smollm2", b"real");
        let cheap = manifest("smollm2-cheap", b"cheap");
        let registered: BTreeMap<ModelId, ModelManifest> =
            [(real.id(), real.clone()), (cheap.id(), cheap.clone())].into_iter().collect();
        let none = BTreeMap::new();
        assert_eq!(resolve("smollm2", &none, &registered).unwrap().0, real.id());
        assert_eq!(resolve(&cheap.id().to_string(), &none, &registered).unwrap().0, cheap.id());
        assert!(resolve("gpt-4", &none, &registered).is_err());
        // A pin wins over the name.
        let pins: BTreeMap<String, ModelId> = [("smollm2".to_string(), cheap.id())].into_iter().collect();
        assert_eq!(resolve("smollm2", &pins, &registered).unwrap().0, cheap.id());
        // Two manifests under one name (a chain that allowed it) are refused, not guessed.
        let twin = manifest("smollm2", b"twin");
        let mut both = registered.clone();
        both.insert(twin.id(), twin);
        assert!(resolve("smollm2", &none, &both).unwrap_err().to_string().contains("pin"));
    }
}
