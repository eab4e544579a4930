//! Fingerprints of the logits: the top-k tokens and their logits at a few output positions,
//! so a verifier re-running a request can tell the same weights from different ones (another
//! quantisation keeps most greedy tokens but moves the logits).
//!
//! The hash uses the token ids and the logits rounded to 1/16, so tiny numeric differences
//! between batch schedules rarely change it; [`LogitsProbe`] keeps the exact values for a
//! comparison with a tolerance.

use plexus_types::Hash;
use serde::{Deserialize, Serialize};

use crate::TokenId;

/// Tokens kept per probe.
pub const TOP_K: usize = 8;
/// Output positions probed: the first few, then spread out (0-based, so position 0 is the
/// logits that chose the first generated token).
pub const POSITIONS: [u32; 8] = [0, 1, 2, 4, 8, 16, 32, 64];

/// The top-k logits at one output position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogitsProbe {
    pub position: u32,
    /// (token, logit), highest logit first; ties broken by the lower token id.
    pub top: Vec<(TokenId, f32)>,
}

/// True when output position `pos` should be probed.
pub fn is_probe_position(pos: u32) -> bool {
    POSITIONS.contains(&pos)
}

/// The top [`TOP_K`] entries of `logits`.
pub fn probe(position: u32, logits: &[f32]) -> LogitsProbe {
    LogitsProbe { position, top: top_k(logits, TOP_K) }
}

/// The `k` highest entries of `logits` as (token, logit), highest first, ties broken by the
/// lower token id. NaN never enters: it compares false.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(TokenId, f32)> {
    let mut top: Vec<(TokenId, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return top;
    }
    for (i, &l) in logits.iter().enumerate() {
        if top.len() == k && l.partial_cmp(&top[k - 1].1) != Some(std::cmp::Ordering::Greater) {
            continue;
        }
        if l.is_nan() {
            continue;
        }
        let at = top.partition_point(|&(_, x)| x >= l);
        top.insert(at, (i as TokenId, l));
        top.truncate(k);
    }
    top
}

/// The hash that goes into the attestation ([`Hash::ZERO`] when there are no probes).
pub fn fingerprint(probes: &[LogitsProbe]) -> Hash {
    if probes.is_empty() {
        return Hash::ZERO;
    }
    let mut canon = Vec::with_capacity(32 + probes.len() * (4 + TOP_K * 8));
    canon.extend(b"plexus/logits/v1");
    for p in probes {
        canon.extend(p.position.to_be_bytes());
        for &(tok, logit) in &p.top {
            canon.extend(tok.to_be_bytes());
            let q = (logit * 16.0).round();
            let q = if q.is_finite() { q.clamp(i32::MIN as f32, i32::MAX as f32) as i32 } else { i32::MIN };
            canon.extend(q.to_be_bytes());
        }
    }
    plexus_types::hash(&canon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_keeps_the_top_k_in_order() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 100) as f32).collect();
        let p = probe(3, &logits);
        assert_eq!(p.top.len(), TOP_K);
        let values: Vec<f32> = p.top.iter().map(|t| t.1).collect();
        assert_eq!(values, vec![99.0, 98.0, 97.0, 96.0, 95.0, 94.0, 93.0, 92.0]);
        for (tok, l) in &p.top {
            assert_eq!(logits[*tok as usize], *l);
        }
        // Ties: the lower token id comes first.
        let p = probe(0, &[1.0, 5.0, 5.0, 0.0]);
        assert_eq!(p.top[..2], [(1, 5.0), (2, 5.0)]);
        assert_eq!(p.top.len(), 4);
    }

    #[test]
    fn fingerprint_tolerates_tiny_noise_but_not_real_change() {
        let a = vec![probe(0, &[1.0, 2.0, 3.0])];
        let noisy = vec![probe(0, &[1.0001, 2.0, 2.9999])];
        let other = vec![probe(0, &[1.0, 2.5, 3.0])];
        assert_eq!(fingerprint(&a), fingerprint(&noisy));
        assert_ne!(fingerprint(&a), fingerprint(&other));
        assert_eq!(fingerprint(&[]), Hash::ZERO);
        assert_ne!(fingerprint(&[probe(1, &[1.0, 2.0, 3.0])]), fingerprint(&a));
    }
}
