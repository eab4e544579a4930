//! Settlement: the latest receipt of every session goes on-chain in `Claim` transactions,
//! batched, on an interval — and at once when a session's last claim height is near. Sessions
//! the client has ended (or that expired) are closed as soon as everything is settled, so the
//! client's refund arrives without waiting for the grace period.

use std::time::{Duration, Instant};

use plexus_types::params::limits::CLAIM_RECEIPTS_MAX;
use plexus_types::tx::Payload;
use plexus_types::{Hash, SignedReceipt};
use tracing::{debug, info, warn};

use crate::{ChainView, Provider};

/// What one pass decided to send.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub claims: Vec<Vec<SignedReceipt>>,
    pub closes: Vec<Hash>,
    pub forgotten: usize,
}

impl<C: ChainView> Provider<C> {
    /// Decides what to claim and close now. `due` is whether the claim interval has passed;
    /// urgent sessions are claimed either way.
    pub fn plan(&self, due: bool) -> Pass {
        let height = self.chain().height();
        let config = self.config().clone();
        let mut pass = Pass::default();
        let mut receipts = Vec::new();
        let mut ledger = self.ledger();
        for id in ledger.ids() {
            let Some(view) = self.chain().session(&id) else { continue };
            let entry = ledger.entry(&id).expect("listed entry exists");
            let settled_all = entry.receipt.as_ref().is_none_or(|r| r.receipt.seq <= view.settled_seq);
            if !view.open {
                if entry.inflight == 0 {
                    ledger.remove(&id);
                    pass.forgotten += 1;
                }
                continue;
            }
            if let Some(r) = &entry.receipt {
                let unsettled = r.receipt.seq > view.settled_seq;
                let stale = entry.claimed_seq >= r.receipt.seq && height > entry.claimed_at + config.claim_retry_blocks;
                let fresh = entry.claimed_seq < r.receipt.seq;
                let urgent = view.refund_height.saturating_sub(height) <= config.claim_urgent_blocks
                    || view.expiry_height <= height;
                if unsettled && (stale || (fresh && (due || urgent))) {
                    entry.claimed_seq = r.receipt.seq;
                    entry.claimed_at = height;
                    receipts.push(r.clone());
                }
            }
            // Ended (client close or expiry), nothing in flight, everything settled: close now.
            if view.expiry_height <= height && entry.inflight == 0 && settled_all && !entry.close_sent {
                entry.close_sent = true;
                pass.closes.push(id);
            }
        }
        pass.claims = receipts.chunks(CLAIM_RECEIPTS_MAX).map(<[SignedReceipt]>::to_vec).collect();
        pass
    }

    /// Sends what [`Provider::plan`] decided.
    pub fn execute(&self, pass: &Pass) {
        for batch in &pass.claims {
            match self.chain().submit(Payload::Claim { receipts: batch.clone() }) {
                Ok(hash) => {
                    self.metrics().receipts_claimed.inc_by(batch.len() as u64);
                    info!(target: "provider::claims", %hash, receipts = batch.len(), "claimed")
                }
                Err(e) => {
                    self.metrics().claim_failures.inc();
                    warn!(target: "provider::claims", receipts = batch.len(), "claim not submitted: {e}")
                }
            }
        }
        for id in &pass.closes {
            match self.chain().submit(Payload::CloseSession { session: *id }) {
                Ok(hash) => {
                    self.metrics().closes_sent.inc();
                    info!(target: "provider::claims", %hash, session = %id, "closing a settled session")
                }
                Err(e) => {
                    warn!(target: "provider::claims", session = %id, "close not submitted: {e}");
                    if let Some(entry) = self.ledger().entry(id) {
                        entry.close_sent = false;
                    }
                }
            }
        }
    }

    /// Runs the claimer until the process stops: checks every second, claims every
    /// `claim_interval`, and syncs the receipt log to disk.
    pub async fn run_claims(self) {
        let mut last_due = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let due = last_due.elapsed() >= self.config().claim_interval;
            if due {
                last_due = Instant::now();
            }
            let pass = self.plan(due);
            if pass != Pass::default() {
                debug!(target: "provider::claims", claims = pass.claims.len(), closes = pass.closes.len(), "settlement pass");
            }
            self.execute(&pass);
            if let Err(e) = self.ledger().sync() {
                // Receipts are money: a ledger that cannot be written must not keep serving.
                panic!("cannot sync the receipt ledger: {e}; halting");
            }
        }
    }
}
