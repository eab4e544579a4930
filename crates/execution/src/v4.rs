//! Execution version 4: version 3 with edge tensor models and data residency.
//!
//! - **Tensor models** (ONNX graphs served on tract, [`EngineKind::TractOnnx`]) may be
//!   registered. Nothing else about them is new on chain: a provider prices them per 1,000
//!   inferences in its `output_per_1k` (one row of a request is one inference, attested and
//!   receipted as one output "token"), so sessions, receipts, the credit bound, claims and
//!   settlement are version 1's, unchanged.
//! - **Sessions restricted to regions** ([`Payload::OpenSessionIn`]): the session opens only if
//!   the provider's registered region is one of the listed ones, and the list is kept with the
//!   session (`table::SESSION_REGIONS`) for the provider and any gateway to honour; a provider
//!   that re-registers in a region outside the list cannot settle the session any more (the
//!   client's escrow comes back at expiry as for any unsettled session).
//!
//! Before this version, a block carrying either is invalid ([`crate::too_new`]), exactly as it is
//! to older binaries, which cannot decode it.
//!
//! [`EngineKind::TractOnnx`]: plexus_types::EngineKind::TractOnnx

use plexus_types::params::limits;
use plexus_types::tx::Payload;
use plexus_types::{Hash, Params, SignedTx};

use crate::state::{Provider, Regions, Session, Store, keys};
use crate::v1::{self, Rules};
use crate::{BlockEnv, BlockError, BlockOutcome, Event, ExecError, Executor, v3};

/// The version that introduced what this module adds.
pub(crate) const VERSION: u16 = 4;

/// Version 4's rules on top of version 1's block structure (and version 3's end of block).
pub(crate) const RULES: Rules = Rules { payload: apply_payload, before_end: v3::before_end };

pub(crate) fn execute_block(
    exec: &Executor,
    state: &dyn crate::StateRead,
    env: &BlockEnv,
    txs: &[SignedTx],
) -> Result<BlockOutcome, BlockError> {
    v3::execute_with(exec, state, env, txs, &RULES)
}

pub(crate) fn build_block(
    exec: &Executor,
    state: &dyn crate::StateRead,
    env: &BlockEnv,
    candidates: impl IntoIterator<Item = SignedTx>,
    max_txs: usize,
    max_bytes: usize,
) -> Result<crate::BuiltBlock, BlockError> {
    v3::build_with(exec, state, env, candidates, max_txs, max_bytes, &RULES)
}

fn invalid(msg: impl Into<String>) -> ExecError {
    ExecError::Invalid(msg.into())
}

pub(crate) fn apply_payload(
    exec: &Executor,
    store: &mut Store<'_, '_>,
    params: &Params,
    env: &BlockEnv,
    tx: &SignedTx,
    events: &mut Vec<Event>,
) -> Result<(), ExecError> {
    match &tx.tx.payload {
        Payload::OpenSessionIn {
            provider,
            model,
            deposit,
            max_input_per_1k,
            max_output_per_1k,
            expiry_height,
            regions,
        } => {
            check_regions(regions)?;
            let record: Provider = store
                .read(&keys::provider(provider))
                .ok_or_else(|| ExecError::NotFound(format!("provider {provider}")))?;
            if !regions.contains(&record.info.region) {
                return Err(ExecError::Forbidden(format!(
                    "provider {provider} is in region {:?}, outside the session's regions {regions:?}",
                    record.info.region
                )));
            }
            // Version 1's session, opened by the same signer and nonce (so with the same id).
            let mut plain = tx.clone();
            plain.tx.payload = Payload::open_session(
                provider.clone(),
                *model,
                *deposit,
                *max_input_per_1k,
                *max_output_per_1k,
                *expiry_height,
                Vec::new(),
            );
            v3::apply_payload(exec, store, params, env, &plain, events)?;
            let id = v1::session_id(&tx.tx.signer, tx.tx.nonce);
            store.write(keys::session_regions(&id), &Regions(regions.clone()));
            events.push(Event::SessionRestricted { session: id, regions: regions.clone() });
            Ok(())
        }
        Payload::Claim { receipts } => {
            // A restricted session is settled only while its provider is inside it; the other
            // receipts of the claim settle as in version 1.
            let mut kept = Vec::with_capacity(receipts.len());
            let mut first_rejection = None;
            for signed in receipts {
                match outside_regions(store, &signed.receipt.session) {
                    None => kept.push(signed.clone()),
                    Some(reason) => {
                        events.push(Event::ReceiptRejected {
                            session: signed.receipt.session,
                            seq: signed.receipt.seq,
                            reason: reason.clone(),
                        });
                        first_rejection.get_or_insert(reason);
                    }
                }
            }
            if let Some(reason) = first_rejection {
                if kept.is_empty() {
                    return Err(invalid(format!("no receipt settled: {reason}")));
                }
                let mut rest = tx.clone();
                rest.tx.payload = Payload::Claim { receipts: kept };
                return v3::apply_payload(exec, store, params, env, &rest, events);
            }
            v3::apply_payload(exec, store, params, env, tx, events)
        }
        // Tensor models register as any model (the codec and `too_new` admit them from here on).
        _ => v3::apply_payload(exec, store, params, env, tx, events),
    }
}

/// Why a receipt of `session` cannot settle: the session is restricted to regions and its
/// provider is registered outside them now. `None` for every other session.
fn outside_regions(store: &Store<'_, '_>, session: &Hash) -> Option<String> {
    let regions = store.read::<Regions>(&keys::session_regions(session))?;
    let s = store.read::<Session>(&keys::session(session))?;
    let region = store.read::<Provider>(&keys::provider(&s.provider)).map(|p| p.info.region).unwrap_or_default();
    (!regions.0.contains(&region)).then(|| {
        format!("session {session} is restricted to regions {:?}; its provider is now in {region:?}", regions.0)
    })
}

/// A region list: 1 to [`limits::SESSION_REGIONS_MAX`] distinct printable labels.
fn check_regions(regions: &[String]) -> Result<(), ExecError> {
    if regions.is_empty() || regions.len() > limits::SESSION_REGIONS_MAX {
        return Err(invalid(format!("a session names 1 to {} regions", limits::SESSION_REGIONS_MAX)));
    }
    for (i, r) in regions.iter().enumerate() {
        if r.is_empty() || r.len() > limits::REGION_BYTES_MAX || !r.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(format!("region {r:?} is not a printable label of 1 to 32 bytes")));
        }
        if regions[..i].contains(r) {
            return Err(invalid(format!("region {r:?} is listed twice")));
        }
    }
    Ok(())
}
