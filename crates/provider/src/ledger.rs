//! Per-session accounting and the durable receipt log.
//!
//! In memory: for each session, the tokens delivered (finished requests and the running part
//! of requests in flight), the tokens reserved by requests in flight, the latest accepted
//! receipt, bearer tokens and what was last claimed. On disk: an append-only log of accepted
//! receipts and authentication nonces, one JSON object per line, replayed on start and
//! rewritten (atomically, through a temporary file) when it grows. Receipts are money: each is
//! written before it is acknowledged. Delivered counts are not persisted; after a restart the
//! provider counts from the last receipt, which can only favour the client.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};

use plexus_types::{Hash, Height, SignedReceipt};
use serde::{Deserialize, Serialize};

/// Rewrite the log when it is this many times larger than its live contents (and > 1 MiB).
const COMPACT_FACTOR: u64 = 4;
const COMPACT_BYTES_MIN: u64 = 1 << 20;
/// Bearer tokens kept per session (several gateways or restarts may hold one each).
const TOKENS_PER_SESSION_MAX: usize = 4;
/// Longest line read back from the log, in bytes.
const LINE_BYTES_MAX: usize = 4096;

/// A ledger that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("receipt ledger {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("receipt ledger {path} line {line}: {reason}")]
    Corrupt { path: PathBuf, line: usize, reason: String },
}

/// One session's accounting.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub delivered_input: u64,
    pub delivered_output: u64,
    /// Upper bounds still reserved by requests in flight.
    pub reserved_input: u64,
    pub reserved_output: u64,
    pub inflight: u32,
    pub receipt: Option<SignedReceipt>,
    pub auth_nonce: u64,
    pub tokens: Vec<[u8; 32]>,
    /// Highest seq sent in a claim, and the height it was sent at.
    pub claimed_seq: u64,
    pub claimed_at: Height,
    pub close_sent: bool,
}

impl Entry {
    pub fn acked_input(&self) -> u64 {
        self.receipt.as_ref().map_or(0, |r| r.receipt.cum_input_tokens)
    }

    pub fn acked_output(&self) -> u64 {
        self.receipt.as_ref().map_or(0, |r| r.receipt.cum_output_tokens)
    }

    /// Delivered tokens the client has not acknowledged yet.
    pub fn unacknowledged(&self) -> u64 {
        (self.delivered_input + self.delivered_output).saturating_sub(self.acked_input() + self.acked_output())
    }
}

/// What the API reports about a session.
#[derive(Clone, Debug, Serialize)]
pub struct SessionState {
    pub delivered_input_tokens: u64,
    pub delivered_output_tokens: u64,
    pub acknowledged_input_tokens: u64,
    pub acknowledged_output_tokens: u64,
    pub receipt_seq: u64,
    pub receipt_amount: plexus_types::Amount,
    pub claimed_seq: u64,
    pub requests_in_flight: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Record {
    Receipt { r: String },
    Auth { s: Hash, nonce: u64 },
}

/// All sessions' accounting plus the log that makes receipts durable.
pub struct SessionLedger {
    entries: BTreeMap<Hash, Entry>,
    sessions_max: usize,
    path: PathBuf,
    log: File,
    log_bytes: u64,
}

impl SessionLedger {
    /// Replays the log at `path` (creating it if missing).
    pub fn open(path: &Path, sessions_max: usize) -> Result<Self, LedgerError> {
        let io = |source| LedgerError::Io { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut entries: BTreeMap<Hash, Entry> = BTreeMap::new();
        if path.exists() {
            let file = File::open(path).map_err(io)?;
            for (i, line) in BufReader::new(file).lines().enumerate() {
                let line = line.map_err(io)?;
                if line.trim().is_empty() {
                    continue;
                }
                let corrupt = |reason: String| LedgerError::Corrupt { path: path.to_path_buf(), line: i + 1, reason };
                if line.len() > LINE_BYTES_MAX {
                    return Err(corrupt("line too long".into()));
                }
                // A crash can cut the last line short; everything before it is intact.
                let Ok(record) = serde_json::from_str::<Record>(&line) else {
                    tracing::warn!(target: "provider::ledger", line = i + 1, "ignoring a torn line at the end of the receipt log");
                    continue;
                };
                match record {
                    Record::Receipt { r } => {
                        let receipt = decode_receipt(&r).map_err(corrupt)?;
                        let e = entries.entry(receipt.receipt.session).or_default();
                        if e.receipt.as_ref().is_none_or(|old| old.receipt.seq < receipt.receipt.seq) {
                            e.delivered_input = e.delivered_input.max(receipt.receipt.cum_input_tokens);
                            e.delivered_output = e.delivered_output.max(receipt.receipt.cum_output_tokens);
                            e.receipt = Some(receipt);
                        }
                    }
                    Record::Auth { s, nonce } => {
                        let e = entries.entry(s).or_default();
                        e.auth_nonce = e.auth_nonce.max(nonce);
                    }
                }
            }
        }
        let log = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        let log_bytes = log.metadata().map_err(io)?.len();
        let mut ledger = SessionLedger { entries, sessions_max, path: path.to_path_buf(), log, log_bytes };
        ledger.maybe_compact()?;
        Ok(ledger)
    }

    pub fn get(&self, id: &Hash) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// The entry of a session, created if new. `None` when the ledger is full of live sessions.
    pub fn entry(&mut self, id: &Hash) -> Option<&mut Entry> {
        if !self.entries.contains_key(id) && self.entries.len() >= self.sessions_max {
            // Forget a session with nothing in flight and nothing left to claim.
            let idle = self
                .entries
                .iter()
                .find(|(_, e)| e.inflight == 0 && e.receipt.as_ref().is_none_or(|r| r.receipt.seq <= e.claimed_seq))
                .map(|(k, _)| *k);
            self.entries.remove(&idle?);
        }
        Some(self.entries.entry(*id).or_default())
    }

    pub fn remove(&mut self, id: &Hash) {
        self.entries.remove(id);
    }

    pub fn ids(&self) -> Vec<Hash> {
        self.entries.keys().copied().collect()
    }

    pub fn state(&self, id: &Hash) -> Option<SessionState> {
        let e = self.entries.get(id)?;
        Some(SessionState {
            delivered_input_tokens: e.delivered_input,
            delivered_output_tokens: e.delivered_output,
            acknowledged_input_tokens: e.acked_input(),
            acknowledged_output_tokens: e.acked_output(),
            receipt_seq: e.receipt.as_ref().map_or(0, |r| r.receipt.seq),
            receipt_amount: e.receipt.as_ref().map_or(0, |r| r.receipt.cum_amount),
            claimed_seq: e.claimed_seq,
            requests_in_flight: e.inflight,
        })
    }

    /// Makes an accepted receipt durable, then records it.
    pub fn store_receipt(&mut self, receipt: SignedReceipt) -> Result<(), LedgerError> {
        let line = serde_json::to_string(&Record::Receipt { r: receipt.to_hex() }).expect("records serialize");
        self.append(&line)?;
        let e = self.entries.entry(receipt.receipt.session).or_default();
        e.delivered_input = e.delivered_input.max(receipt.receipt.cum_input_tokens);
        e.delivered_output = e.delivered_output.max(receipt.receipt.cum_output_tokens);
        e.receipt = Some(receipt);
        self.maybe_compact()
    }

    /// Makes an authentication nonce durable, so the proof cannot be replayed after a restart.
    pub fn store_auth(&mut self, session: &Hash, nonce: u64, token: [u8; 32]) -> Result<(), LedgerError> {
        let line = serde_json::to_string(&Record::Auth { s: *session, nonce }).expect("records serialize");
        self.append(&line)?;
        let e = self.entries.entry(*session).or_default();
        e.auth_nonce = nonce;
        if e.tokens.len() >= TOKENS_PER_SESSION_MAX {
            e.tokens.remove(0);
        }
        e.tokens.push(token);
        Ok(())
    }

    /// Flushes the log to the disk (the claimer calls this periodically).
    pub fn sync(&mut self) -> Result<(), LedgerError> {
        self.log.sync_data().map_err(|source| LedgerError::Io { path: self.path.clone(), source })
    }

    fn append(&mut self, line: &str) -> Result<(), LedgerError> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.log.write_all(&bytes).map_err(|source| LedgerError::Io { path: self.path.clone(), source })?;
        self.log_bytes += bytes.len() as u64;
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<(), LedgerError> {
        let live = (self.entries.len() as u64 * 2).max(1) * 400;
        if self.log_bytes < COMPACT_BYTES_MIN || self.log_bytes < COMPACT_FACTOR * live {
            return Ok(());
        }
        let io = |source| LedgerError::Io { path: self.path.clone(), source };
        let tmp = self.path.with_extension("compact");
        let mut out = File::create(&tmp).map_err(io)?;
        let mut written = 0u64;
        for (id, e) in &self.entries {
            let mut lines = Vec::new();
            if e.auth_nonce > 0 {
                lines.push(Record::Auth { s: *id, nonce: e.auth_nonce });
            }
            if let Some(r) = &e.receipt {
                lines.push(Record::Receipt { r: r.to_hex() });
            }
            for record in lines {
                let mut line = serde_json::to_string(&record).expect("records serialize");
                line.push('\n');
                out.write_all(line.as_bytes()).map_err(io)?;
                written += line.len() as u64;
            }
        }
        out.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        self.log = OpenOptions::new().append(true).open(&self.path).map_err(io)?;
        self.log_bytes = written;
        Ok(())
    }
}

fn decode_receipt(hex_receipt: &str) -> Result<SignedReceipt, String> {
    SignedReceipt::from_hex(hex_receipt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_types::{PrivateKey, Receipt};

    fn receipt(key: &PrivateKey, session: Hash, seq: u64) -> SignedReceipt {
        Receipt {
            session,
            seq,
            cum_input_tokens: 10 * seq,
            cum_output_tokens: 20 * seq,
            cum_amount: seq as u128,
            outputs_root: Hash::ZERO,
        }
        .sign(key, "c")
    }

    #[test]
    fn receipts_and_nonces_survive_a_restart_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.log");
        let key = PrivateKey::from_seed(1);
        let (a, b) = (plexus_types::hash(b"a"), plexus_types::hash(b"b"));
        {
            let mut l = SessionLedger::open(&path, 10).unwrap();
            l.store_receipt(receipt(&key, a, 1)).unwrap();
            l.store_receipt(receipt(&key, a, 3)).unwrap();
            l.store_receipt(receipt(&key, b, 2)).unwrap();
            l.store_auth(&a, 7, [1; 32]).unwrap();
        }
        // A crash in the middle of a write leaves half a line.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"t\":\"rece").unwrap();
        let l = SessionLedger::open(&path, 10).unwrap();
        let ea = l.get(&a).unwrap();
        assert_eq!(ea.receipt.as_ref().unwrap().receipt.seq, 3);
        assert_eq!(ea.auth_nonce, 7);
        assert!(ea.tokens.is_empty(), "bearer tokens are not persisted: clients authenticate again");
        assert_eq!((ea.delivered_input, ea.delivered_output), (30, 60));
        assert_eq!(l.get(&b).unwrap().receipt.as_ref().unwrap().receipt.seq, 2);
    }

    #[test]
    fn compaction_keeps_only_the_latest_receipt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.log");
        let key = PrivateKey::from_seed(1);
        let a = plexus_types::hash(b"a");
        let mut l = SessionLedger::open(&path, 10).unwrap();
        for seq in 1..=6_000 {
            l.store_receipt(receipt(&key, a, seq)).unwrap();
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < COMPACT_BYTES_MIN + 1024, "the log was compacted ({size} bytes)");
        drop(l);
        let l = SessionLedger::open(&path, 10).unwrap();
        assert_eq!(l.get(&a).unwrap().receipt.as_ref().unwrap().receipt.seq, 6_000);
    }

    #[test]
    fn bounded_number_of_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = SessionLedger::open(&dir.path().join("l"), 2).unwrap();
        let ids: Vec<Hash> = (0..3u8).map(|i| plexus_types::hash(&[i])).collect();
        l.entry(&ids[0]).unwrap().inflight = 1;
        l.entry(&ids[1]).unwrap().inflight = 1;
        assert!(l.entry(&ids[2]).is_none(), "full of sessions with work in flight");
        l.entry(&ids[1]).unwrap().inflight = 0;
        assert!(l.entry(&ids[2]).is_some());
        assert!(l.get(&ids[1]).is_none(), "the idle one was forgotten");
    }
}
