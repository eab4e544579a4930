//! Seeded sampling that anyone can replay, position by position.
//!
//! llama.cpp's `dist` sampler draws from one sequential random stream, so checking position 100
//! means replaying the 99 before it with identical logits. Here the randomness of every
//! position is a pure function of (seed, position, token): Gumbel-max sampling. The chosen
//! token is the argmax over the allowed tokens of `logit / temperature + g`, where
//! `g = -ln(-ln u)` and `u` comes from a counter-based hash of (seed, position, token). That
//! draws exactly from the softmax of `logit / temperature` (restricted by top-k, top-p and
//! min-p, in llama-server's order), and a verifier holding the logits of a single prefill can
//! recompute every position's choice at once and measure how far the committed token is from it
//! ([`margin`]). Temperature 0 is greedy: the largest logit, ties to the lower id.
//!
//! Everything but the logits is integer arithmetic plus `ln`, so provider and verifier derive the
//! same noise on every CPU; the logits themselves differ in their last bits between machines and
//! batch shapes, which is why an audit compares with a tolerance, never for equality.

use std::collections::BTreeMap;

use crate::grammar::TokenMask;
use crate::{LogitAdjust, Sampling, TokenId};

/// A counter-based hash (SplitMix64's finalizer): a bijection of 64-bit integers with good
/// avalanche, fast enough to draw a vocabulary's worth of numbers per token.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key of one position's noise.
fn position_key(seed: u32, position: u32) -> u64 {
    mix(mix(u64::from(seed) ^ 0x706c_6578_7573_5f73) ^ (u64::from(position) << 1 | 1))
}

/// The Gumbel noise of `token` at the position whose key is `key`.
fn gumbel(key: u64, token: u32) -> f64 {
    let bits = mix(key.wrapping_add(u64::from(token).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    // A uniform in (0, 1), never 0 or 1: 53 random bits, offset by half a step.
    let u = ((bits >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(-u.ln()).ln()
}

/// Relative weight below which a token is left out of the first, partial sort of a top-p cut
/// (the cut is computed exactly; this only saves sorting a whole vocabulary).
const TOP_P_PARTIAL: f64 = 1e-6;

/// The tokens `sampling` allows at one position (top-k, then top-p, then min-p, as llama-server
/// applies them), as (token, logit); best first whenever a top-k or top-p cut was made.
fn allowed(logits: &[f32], sampling: &Sampling) -> Vec<(TokenId, f32)> {
    let Sampling::Random { temperature, top_k, top_p, min_p, .. } = *sampling else {
        return Vec::new();
    };
    let finite = |(i, &l): (usize, &f32)| l.is_finite().then_some((i as TokenId, l));
    let mut top: Vec<(TokenId, f32)> = if top_k == 0 || top_k as usize >= logits.len() {
        logits.iter().enumerate().filter_map(finite).collect()
    } else {
        crate::fingerprint::top_k(logits, top_k as usize)
    };
    let Some(max) = top.iter().map(|t| t.1).reduce(f32::max) else { return top };
    let t = f64::from(temperature.max(1e-6));
    let max = f64::from(max);
    let weight = |l: f32| ((f64::from(l) - max) / t).exp();
    if top_p < 1.0 {
        let total: f64 = top.iter().map(|&(_, l)| weight(l)).sum();
        let by_weight = |a: &(TokenId, f32), b: &(TokenId, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        // Sort only the tokens that can matter; if their mass falls short of top_p (a flat
        // distribution), sort everything.
        let mut head: Vec<(TokenId, f32)> = top.iter().copied().filter(|&(_, l)| weight(l) >= TOP_P_PARTIAL).collect();
        let head_mass: f64 = head.iter().map(|&(_, l)| weight(l)).sum();
        if head_mass < f64::from(top_p) * total {
            head = top;
        }
        head.sort_unstable_by(by_weight);
        let mut cumulative = 0.0;
        let mut keep = head.len();
        for (i, &(_, l)) in head.iter().enumerate() {
            cumulative += weight(l) / total;
            if cumulative >= f64::from(top_p) {
                keep = i + 1;
                break;
            }
        }
        head.truncate(keep.max(1));
        top = head;
    }
    if min_p > 0.0 {
        // Relative to the best token's probability: exp((l - max) / t) >= min_p.
        let floor = f64::from(min_p).ln() * t + max;
        top.retain(|&(_, l)| f64::from(l) >= floor);
    }
    top
}

/// How often each token was generated before a position: what penalties count.
pub type TokenCounts = BTreeMap<TokenId, u32>;

/// The logits the sampler picks from at a position: `logits` with `adjust` applied, given the
/// tokens generated before it (`counts`), and every token a grammar's `mask` does not allow set
/// to -inf, written into `scratch`; `logits` themselves when nothing is adjusted or masked.
/// Each changed logit is computed in f64 from the model's and rounded once; a bias on a token
/// outside the vocabulary changes nothing (requests are checked against the vocabulary before
/// they run). A masked logit (-inf) stays masked.
pub fn adjusted<'a>(
    logits: &'a [f32],
    adjust: &LogitAdjust,
    counts: &TokenCounts,
    mask: Option<&TokenMask>,
    scratch: &'a mut Vec<f32>,
) -> &'a [f32] {
    if adjust.is_identity() && mask.is_none() {
        return logits;
    }
    scratch.clear();
    scratch.extend_from_slice(logits);
    if let Some(mask) = mask {
        mask.apply(scratch);
    }
    if adjust.is_identity() {
        return scratch;
    }
    let mut change = |token: TokenId, by: f64| {
        if let Some(l) = usize::try_from(token).ok().and_then(|i| scratch.get_mut(i)) {
            *l = (f64::from(*l) + by) as f32;
        }
    };
    for &(token, bias) in &adjust.bias {
        change(token, f64::from(bias));
    }
    if adjust.penalises() {
        for (&token, &count) in counts {
            change(token, -(f64::from(count) * f64::from(adjust.frequency) + f64::from(adjust.presence)));
        }
    }
    scratch
}

/// The token `sampling` picks at `position` from `logits`.
pub fn choose(logits: &[f32], sampling: &Sampling, position: u32) -> TokenId {
    match *sampling {
        Sampling::Greedy => argmax(logits),
        Sampling::Random { temperature, seed, .. } => {
            let key = position_key(seed, position);
            let t = f64::from(temperature.max(1e-6));
            allowed(logits, sampling)
                .into_iter()
                .map(|(tok, l)| (tok, f64::from(l) / t + gumbel(key, tok as u32)))
                .fold((0, f64::NEG_INFINITY), |best, x| if x.1 > best.1 { x } else { best })
                .0
        }
    }
}

fn argmax(logits: &[f32]) -> TokenId {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best.1 {
            best = (i, l);
        }
    }
    best.0 as TokenId
}

/// How far, in logits, `committed` falls short of the token `sampling` would pick at `position`
/// from a verifier's `logits`: 0 when it is the pick. Greedy: the best logit minus the
/// committed one. Seeded: `temperature` times the gap in `logit / temperature + noise` between
/// the pick and the committed token, so the measure stays in logit units at any temperature
/// and a tolerance on it means the same everywhere. A committed token outside the verifier's
/// allowed set is measured the same way, as if it were allowed. A committed token outside the
/// vocabulary is infinitely far ([`f32::INFINITY`]). When the verifier's own logits hold a NaN
/// or a +infinity the position cannot be scored at all, and the margin is NaN: the model, not
/// the provider, failed there (an audit of such a generation proves nothing either way).
pub fn margin(logits: &[f32], sampling: &Sampling, position: u32, committed: TokenId) -> f32 {
    if !logits.iter().fold(true, |ok, &l| ok & !(l.is_nan() || l == f32::INFINITY)) {
        return f32::NAN;
    }
    let Some(&c) = usize::try_from(committed).ok().and_then(|i| logits.get(i)) else {
        return f32::INFINITY;
    };
    match *sampling {
        Sampling::Greedy => (logits[argmax(logits) as usize] - c).max(0.0),
        Sampling::Random { temperature, seed, .. } => {
            let key = position_key(seed, position);
            let t = f64::from(temperature.max(1e-6));
            let score = |tok: TokenId, l: f32| f64::from(l) / t + gumbel(key, tok as u32);
            let best = allowed(logits, sampling)
                .into_iter()
                .map(|(tok, l)| score(tok, l))
                .fold(f64::NEG_INFINITY, f64::max)
                .max(score(committed, c));
            ((best - score(committed, c)) * t).max(0.0) as f32
        }
    }
}

/// The log-probability reported for a token the model gives no chance (a masked, `-inf`
/// logit), and the floor of every reported one: JSON has no infinity, and OpenAI's API uses
/// this value for "never".
pub const LOGPROB_FLOOR: f32 = -9999.0;

/// The log-probability of `token` under the softmax of `logits` (the model's own distribution:
/// temperature 1, no top-k, top-p or min-p cut, as OpenAI and llama-server report it) and the
/// `top` most likely tokens with theirs, best first (ties to the lower id). One pass for the
/// normaliser (in f64) and one partial selection over the logits the sampler read; nothing is
/// computed twice. Values below [`LOGPROB_FLOOR`] (or not finite) are reported as the floor.
pub fn logprobs(logits: &[f32], token: TokenId, top: usize) -> (f32, Vec<(TokenId, f32)>) {
    let max = logits.iter().copied().filter(|l| l.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().filter(|l| l.is_finite()).map(|&l| (f64::from(l) - f64::from(max)).exp()).sum();
    let normaliser = f64::from(max) + sum.ln();
    let logprob = |l: f32| {
        let v = (f64::from(l) - normaliser) as f32;
        if v.is_finite() { v.max(LOGPROB_FLOOR) } else { LOGPROB_FLOOR }
    };
    let own = usize::try_from(token).ok().and_then(|i| logits.get(i)).map_or(LOGPROB_FLOOR, |&l| logprob(l));
    let best = crate::fingerprint::top_k(logits, top).into_iter().map(|(t, l)| (t, logprob(l))).collect();
    (own, best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(temperature: f32, seed: u32) -> Sampling {
        Sampling::Random { temperature, top_k: 0, top_p: 1.0, min_p: 0.0, seed }
    }

    #[test]
    fn draws_follow_the_softmax() {
        // Three tokens with probabilities 0.5, 0.3, 0.2 at temperature 1.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let mut counts = [0u32; 3];
        for position in 0..20_000 {
            counts[choose(&logits, &random(1.0, 7), position) as usize] += 1;
        }
        let freq: Vec<f64> = counts.iter().map(|c| f64::from(*c) / 20_000.0).collect();
        // 20,000 draws: each frequency within 0.02 of its probability (> 4 standard deviations).
        for (f, p) in freq.iter().zip([0.5, 0.3, 0.2]) {
            assert!((f - p).abs() < 0.02, "{freq:?}");
        }
    }

    #[test]
    fn replay_is_exact_and_seeds_differ() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
        let a: Vec<TokenId> = (0..64).map(|p| choose(&logits, &random(0.8, 42), p)).collect();
        let b: Vec<TokenId> = (0..64).map(|p| choose(&logits, &random(0.8, 42), p)).collect();
        let c: Vec<TokenId> = (0..64).map(|p| choose(&logits, &random(0.8, 43), p)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Each position on its own: no sequential state.
        assert_eq!(choose(&logits, &random(0.8, 42), 37), a[37]);
    }

    #[test]
    fn margins_are_zero_for_the_pick_and_grow_with_the_lie() {
        let logits: Vec<f32> = (0..500).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        for s in [
            Sampling::Greedy,
            random(0.7, 9),
            Sampling::Random { temperature: 1.0, top_k: 40, top_p: 0.9, min_p: 0.05, seed: 3 },
        ] {
            for position in 0..32 {
                let pick = choose(&logits, &s, position);
                assert_eq!(margin(&logits, &s, position, pick), 0.0, "{s:?} at {position}");
                // Noise in the last bits of a verifier's logits moves the margin by as much.
                let noisy: Vec<f32> = logits.iter().map(|l| l + 1e-4).collect();
                assert!(margin(&noisy, &s, position, pick) < 1e-3);
            }
        }
        // A token far below the best is far from what any seed picks.
        let worst = logits.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as TokenId;
        assert!(margin(&logits, &Sampling::Greedy, 0, worst) > 9.0);
        assert!((0..32).all(|p| margin(&logits, &random(0.7, 9), p, worst) > 1.0));
        assert_eq!(margin(&logits, &Sampling::Greedy, 0, 10_000), f32::INFINITY);
        // The verifier's own logits broke (NaN, +inf): nothing can be scored there.
        let mut broken = logits.clone();
        broken[3] = f32::NAN;
        assert!(margin(&broken, &Sampling::Greedy, 0, choose(&logits, &Sampling::Greedy, 0)).is_nan());
        broken[3] = f32::INFINITY;
        assert!(margin(&broken, &random(0.7, 9), 0, 0).is_nan());
        // A masked logit (-inf) is an ordinary one.
        broken[3] = f32::NEG_INFINITY;
        assert!(margin(&broken, &Sampling::Greedy, 0, choose(&broken, &Sampling::Greedy, 0)) == 0.0);
    }

    #[test]
    fn filters_apply_in_llama_servers_order() {
        let logits = [5.0f32, 4.0, 3.0, 2.0, 1.0];
        let s = Sampling::Random { temperature: 1.0, top_k: 3, top_p: 1.0, min_p: 0.0, seed: 1 };
        assert_eq!(allowed(&logits, &s).len(), 3);
        let s = Sampling::Random { temperature: 1.0, top_k: 0, top_p: 0.5, min_p: 0.0, seed: 1 };
        assert_eq!(allowed(&logits, &s).len(), 1, "the best token alone has more than half the mass");
        let s = Sampling::Random { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.3, seed: 1 };
        // exp(-1) = 0.37 >= 0.3 stays; exp(-2) = 0.14 does not.
        assert_eq!(allowed(&logits, &s).len(), 2);
        for position in 0..100 {
            assert!(choose(&logits, &s, position) <= 1);
        }
    }

    #[test]
    fn adjustments_are_openais_formula() {
        let logits = [1.0f32, 2.0, 3.0, f32::NEG_INFINITY];
        let mut scratch = Vec::new();
        let none = LogitAdjust::default();
        let counts: TokenCounts = [(1, 2), (3, 1)].into_iter().collect();
        assert!(
            std::ptr::eq(adjusted(&logits, &none, &counts, None, &mut scratch), &logits[..]),
            "no copy for nothing"
        );
        let adjust = LogitAdjust { presence: 0.5, frequency: 0.25, bias: vec![(0, 10.0), (2, -100.0), (7, 1.0)] };
        let out = adjusted(&logits, &adjust, &counts, None, &mut scratch).to_vec();
        // Token 0: +10 bias, never generated; 1: two times, 2 x 0.25 + 0.5; 2: banned; 3 stays masked.
        assert_eq!(out, vec![11.0, 1.0, -97.0, f32::NEG_INFINITY]);
        // The pick follows: greedy takes the biased token, and a repeated one loses.
        assert_eq!(choose(&out, &Sampling::Greedy, 0), 0);
        let repeat = LogitAdjust { presence: 2.0, frequency: 0.0, bias: vec![] };
        let counts: TokenCounts = [(2, 1)].into_iter().collect();
        assert_eq!(choose(adjusted(&logits, &repeat, &counts, None, &mut scratch), &Sampling::Greedy, 0), 1);
        // An empty history: penalties change nothing, the adjusted logits equal the model's.
        assert_eq!(adjusted(&logits[..3], &repeat, &TokenCounts::new(), None, &mut scratch), &logits[..3]);
    }

    #[test]
    fn logprobs_are_the_models_softmax() {
        // Probabilities 0.5, 0.3, 0.2, shifted by a constant (the softmax does not see it).
        let logits = [0.5f32.ln() + 3.0, 0.3f32.ln() + 3.0, 0.2f32.ln() + 3.0];
        let (own, top) = logprobs(&logits, 1, 2);
        // f32 logits and an f64 normaliser: a few ulps of the exact value.
        assert!((own - 0.3f32.ln()).abs() < 1e-5, "{own}");
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!((top[0].1 - 0.5f32.ln()).abs() < 1e-5 && (top[1].1 - own).abs() < 1e-6, "{top:?}");
        let total: f32 = logits.iter().enumerate().map(|(i, _)| logprobs(&logits, i as TokenId, 0).0.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        // A masked token has no chance; none is reported below the floor or as a non-number.
        let masked = [1.0f32, f32::NEG_INFINITY, -30_000.0, f32::NAN];
        let (own, top) = logprobs(&masked, 1, 4);
        assert_eq!(own, LOGPROB_FLOOR);
        assert_eq!(logprobs(&masked, 2, 0).0, LOGPROB_FLOOR);
        assert!(top.iter().all(|t| t.1.is_finite() && t.1 >= LOGPROB_FLOOR && t.1 <= 0.0), "{top:?}");
        assert_eq!(top[0], (0, 0.0));
        // A token outside the vocabulary, or logits with nothing finite, give the floor.
        assert_eq!(logprobs(&logits, 7, 0).0, LOGPROB_FLOOR);
        assert_eq!(logprobs(&[f32::NAN, f32::NEG_INFINITY], 0, 1).0, LOGPROB_FLOOR);
    }
}
