//! State schema versions — the data layer's version — and the migrations between them.
//!
//! - v1: the schema of genesis.
//! - v2: adds an index of sessions by client (`table::SESSION_BY_CLIENT`, key client ‖ session,
//!   empty value), so a client's sessions are found by reading its own entries instead of every
//!   session on the chain. Activating v2 runs the migration that indexes every existing session
//!   (in that block, on every node); from then on, opening a session writes its entry.
//!
//! Nodes dry-run a pending migration on their committed state (and check it) before they
//! signal readiness for it, so a migration that would fail never activates.

use std::ops::RangeInclusive;

use plexus_types::Hash;

use crate::state::{Session, StateRead, Store, decode_record, keys, table};

/// Data versions this binary can run.
pub const SUPPORTED: RangeInclusive<u16> = 1..=2;

/// Migrates the state to data version `to` (from `to - 1`). Returns how many records it wrote.
pub fn migrate(store: &mut Store<'_, '_>, to: u16) -> Result<usize, String> {
    match to {
        2 => Ok(index_sessions(store)),
        v => Err(format!("no migration to data version {v}")),
    }
}

fn index_sessions(store: &mut Store<'_, '_>) -> usize {
    let sessions = store.overlay.scan(table::SESSION);
    for (k, v) in &sessions {
        let session: Session = decode_record(k, v);
        let id = Hash::from_bytes(k[1..33].try_into().expect("session keys hold a hash"));
        store.overlay.put(keys::session_by_client(&session.client, &id), Vec::new());
    }
    sessions.len()
}

/// Checks what a schema version promises about `state`.
pub fn check(state: &dyn StateRead, version: u16) -> Result<(), String> {
    if version < 2 {
        return Ok(());
    }
    let sessions = state.scan(table::SESSION);
    let index = state.scan(table::SESSION_BY_CLIENT);
    if sessions.len() != index.len() {
        return Err(format!("{} sessions but {} index entries", sessions.len(), index.len()));
    }
    for (k, v) in &sessions {
        let session: Session = decode_record(k, v);
        let id = Hash::from_bytes(k[1..33].try_into().expect("session keys hold a hash"));
        if state.get(&keys::session_by_client(&session.client, &id)).is_none() {
            return Err(format!("session {id} is not indexed under its client"));
        }
    }
    Ok(())
}
