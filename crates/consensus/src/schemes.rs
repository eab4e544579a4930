//! Which signing scheme (validator set) verifies each epoch's certificates.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use commonware_consensus::types::Epoch;
use commonware_cryptography::certificate::{Provider, Scoped};

use crate::Scheme;

/// Schemes by epoch, registered as each epoch starts. Kept for every epoch this node has seen
/// so it can verify certificates while backfilling old blocks.
#[derive(Clone, Default)]
pub struct EpochSchemes {
    inner: Arc<Mutex<BTreeMap<u64, (Arc<Scheme>, bool)>>>,
}

impl EpochSchemes {
    /// Registers the scheme of an epoch; `can_sign` is false on nodes outside its validator set.
    pub fn register(&self, epoch: u64, scheme: Scheme, can_sign: bool) {
        self.inner.lock().expect("schemes lock").insert(epoch, (Arc::new(scheme), can_sign));
    }

    pub fn get(&self, epoch: u64) -> Option<Arc<Scheme>> {
        self.inner.lock().expect("schemes lock").get(&epoch).map(|(s, _)| s.clone())
    }
}

impl Provider for EpochSchemes {
    type Scope = Epoch;
    type Scheme = Scheme;

    fn scoped(&self, scope: Epoch) -> Option<Scoped<Scheme>> {
        let guard = self.inner.lock().expect("schemes lock");
        let (scheme, can_sign) = guard.get(&scope.get())?;
        Some(if *can_sign { Scoped::scheme(scheme.clone()) } else { Scoped::verifier(scheme.clone()) })
    }
}
