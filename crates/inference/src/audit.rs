//! Auditing a generation: was this output produced by this model, with this seed?
//!
//! One teacher-forced prefill of the prompt plus the committed output ([`Engine::score`])
//! gives this machine's logits at every output position; at each, the [`crate::sampler`]
//! margin measures (in logits) how far the committed token falls short of what the seeded
//! sampler picks. An honest provider's tokens are the picks, up to the noise of another CPU,
//! thread count or batch shape (hundredths of a logit, and a near-tie now and then). A cheaper
//! model, another quantisation or text from elsewhere misses by whole logits at many positions.
//!
//! The verdict uses only the auditor's own numbers: a position fails when its margin exceeds
//! [`AuditRules::margin_logits`]; a generation is faulty when at least
//! [`AuditRules::failed_min`] positions and [`AuditRules::failed_fraction`] of them fail. Too
//! short an output is inconclusive (a few positions prove nothing either way), and so is one the
//! auditor's model cannot score: where its own logits are NaN or infinite (margin NaN), the
//! model failed on that request, not the provider, and nobody is accused for it. The same holds
//! for a tensor model whose re-run gives no finite answer for the request.

use plexus_types::receipt::Transcript;

use crate::{Engine, Error, Sampling, ScoreRequest};

/// When a generation counts as faulty.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AuditRules {
    /// A position fails when the committed token misses the seeded pick by more than this many
    /// logits.
    pub margin_logits: f32,
    /// Fewest failed positions for a faulty verdict.
    pub failed_min: usize,
    /// Smallest share of positions failed for a faulty verdict.
    pub failed_fraction: f32,
    /// Outputs shorter than this are inconclusive.
    pub positions_min: usize,
}

impl Default for AuditRules {
    fn default() -> Self {
        // Measured (docs/benchmarks.md, "Verified inference"): honest margins stay below 0.5
        // logit; a substitute model misses by more than 2 at a third of positions and more.
        AuditRules { margin_logits: 2.0, failed_min: 3, failed_fraction: 0.15, positions_min: 8 }
    }
}

/// What an audit found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every position (but noise) is what the model picks.
    Honest,
    /// Too many positions are not.
    Faulty,
    /// Too short to tell, or the model cannot score the request (non-finite logits or outputs).
    Inconclusive,
}

/// An audit's findings.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditReport {
    pub verdict: Verdict,
    /// Output positions scored.
    pub positions: usize,
    /// Positions whose margin exceeded the rule.
    pub failed: usize,
    /// Every position's margin, in logits.
    pub margins: Vec<f32>,
}

impl AuditReport {
    pub fn worst_margin(&self) -> f32 {
        self.margins.iter().copied().fold(0.0, f32::max)
    }
}

/// Re-runs `transcript` on `engine` (blocking) and judges it.
pub fn audit(engine: &dyn Engine, transcript: &Transcript, rules: &AuditRules) -> Result<AuditReport, Error> {
    if transcript.model != engine.info().id {
        return Err(Error::invalid("model", "the transcript is for another model than this engine's"));
    }
    let (sampling, adjust) = Sampling::from_spec(&transcript.sampling);
    let grammar = transcript.sampling.grammar().cloned();
    // A token the grammar refuses is proof on its own, with no float in it: the output could
    // not have come from the request, whatever the model's logits.
    if let Some(g) = &grammar
        && let Err(at) = engine.grammar(g)?.check(&transcript.output)
    {
        let mut margins = vec![0.0; transcript.output.len()];
        if let Some(m) = margins.get_mut(at) {
            *m = f32::INFINITY;
        }
        return Ok(AuditReport { verdict: Verdict::Faulty, positions: margins.len(), failed: 1, margins });
    }
    let scores = engine.score(&ScoreRequest {
        prompt: transcript.prompt.clone(),
        output: transcript.output.clone(),
        top_k: 1,
        sampling: Some(sampling),
        adjust,
        grammar,
    })?;
    let margins: Vec<f32> = scores.iter().map(|s| s.margin.unwrap_or(f32::INFINITY)).collect();
    Ok(judge(margins, rules))
}

/// The verdict on a generation's margins. A NaN margin is a position the auditor's model could
/// not score (see [`crate::sampler::margin`]): any such position makes the verdict inconclusive,
/// since the model's own numbers are no evidence there.
pub fn judge(margins: Vec<f32>, rules: &AuditRules) -> AuditReport {
    let positions = margins.len();
    let unscorable = margins.iter().any(|m| m.is_nan());
    // NaN margins (unscorable positions) count as failed too; they make the verdict inconclusive.
    let failed = margins.iter().filter(|m| m.is_nan() || **m > rules.margin_logits).count();
    let verdict = if positions < rules.positions_min || unscorable {
        Verdict::Inconclusive
    } else if failed >= rules.failed_min && failed as f32 >= rules.failed_fraction * positions as f32 {
        Verdict::Faulty
    } else {
        Verdict::Honest
    };
    AuditReport { verdict, positions, failed, margins }
}

/// How far a tensor model's output may differ from the auditor's own run of it: the outputs
/// of one graph on another CPU, thread count or SIMD width differ in rounding only (the edge
/// models' held-out outputs agree with onnxruntime's to about 1e-6), so anything beyond a
/// thousandth (plus a ten-thousandth of the value) is another computation.
pub const TENSOR_TOLERANCE_ABS: f32 = 1e-3;
pub const TENSOR_TOLERANCE_REL: f32 = 1e-4;

/// Whether a challenge's evidence is a request and outputs the model's spec allows: its one
/// input and any of its outputs (once each), by name, each `[rows, the spec's dimensions]`.
/// Input values must be finite. A committee judges only such evidence; anything else could
/// not have been served, so the
/// accusation fails. (The attested output hash does not cover each output's rank, so only a
/// shape read against the spec is the provider's shape.)
pub fn fits_spec(
    spec: &crate::tensor::TensorSpec,
    request: &crate::tensor::TensorRequest,
    claimed: &[crate::tensor::Tensor],
) -> Result<(), String> {
    let rows = request.inputs.first().and_then(|t| t.shape.first()).copied().unwrap_or(0);
    if rows == 0 || rows > spec.batch_max as usize {
        return Err(format!("{rows} rows; the model takes 1 to {}", spec.batch_max));
    }
    let fits = |t: &crate::tensor::Tensor, meta: &crate::tensor::TensorMeta| {
        t.shape.first() == Some(&rows) && t.shape.get(1..) == Some(&meta.row_dims()[..])
    };
    if request.inputs.len() != spec.inputs.len()
        || request.inputs.iter().zip(&spec.inputs).any(|(t, m)| t.name != m.name || !fits(t, m))
    {
        return Err("the inputs are not the model's".into());
    }
    if request.inputs.iter().any(|t| t.data.iter().any(|v| !v.is_finite())) {
        return Err("an input value is not finite".into());
    }
    for (i, t) in claimed.iter().enumerate() {
        let Some(meta) = spec.outputs.iter().find(|m| m.name == t.name) else {
            return Err(format!("the model has no output `{}`", t.name));
        };
        if !fits(t, meta) || claimed[..i].iter().any(|o| o.name == t.name) {
            return Err(format!("output `{}` is not of the model's shape, or repeated", t.name));
        }
    }
    Ok(())
}

/// Re-runs a tensor model's `request` on `engine` (blocking) and compares every value of the
/// outputs a provider sent (`claimed`, by name) with this machine's: a value fails when it is
/// further than [`TENSOR_TOLERANCE_ABS`] + [`TENSOR_TOLERANCE_REL`]·|value| from the auditor's.
/// Faulty when any value fails, or an output is missing, renamed or of another shape: unlike a
/// sampled generation, a tensor model has no near-ties, so one wrong value is a wrong answer.
/// `margins` holds each value's distance, in multiples of its tolerance.
pub fn audit_tensor(
    engine: &dyn Engine,
    request: &crate::tensor::TensorRequest,
    claimed: &[crate::tensor::Tensor],
) -> Result<AuditReport, Error> {
    let ours = match engine.infer(request) {
        Ok(ours) => ours,
        // The model cannot answer this request here (it computes no finite output for it, or
        // the input is outside its range): nothing to compare with, nobody to blame.
        Err(e) if e.kind() == crate::ErrorKind::BadRequest => {
            return Ok(AuditReport { verdict: Verdict::Inconclusive, positions: 0, failed: 0, margins: Vec::new() });
        }
        Err(e) => return Err(e),
    };
    let mut margins = Vec::new();
    let mut failed = 0;
    for t in claimed {
        let Some(mine) = ours.outputs.iter().find(|o| o.name == t.name) else {
            failed += 1;
            continue;
        };
        if mine.shape != t.shape || mine.data.len() != t.data.len() {
            failed += 1;
            continue;
        }
        for (&a, &b) in t.data.iter().zip(&mine.data) {
            let tolerance = TENSOR_TOLERANCE_ABS + TENSOR_TOLERANCE_REL * b.abs();
            let margin = if a.is_finite() { (a - b).abs() / tolerance } else { f32::INFINITY };
            failed += usize::from(margin > 1.0);
            margins.push(margin);
        }
    }
    let verdict = if claimed.is_empty() {
        Verdict::Inconclusive
    } else if failed > 0 {
        Verdict::Faulty
    } else {
        Verdict::Honest
    };
    Ok(AuditReport { verdict, positions: margins.len(), failed, margins })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_need_enough_positions_and_enough_misses() {
        let rules = AuditRules::default();
        assert_eq!(judge(vec![0.0; 4], &rules).verdict, Verdict::Inconclusive);
        assert_eq!(judge(vec![0.0; 40], &rules).verdict, Verdict::Honest);
        // A near-tie or two flipped by noise is honest.
        let mut noisy = vec![0.01; 40];
        noisy[7] = 0.4;
        noisy[30] = 3.0;
        assert_eq!(judge(noisy, &rules).verdict, Verdict::Honest);
        // A third of positions far off: faulty.
        let lie: Vec<f32> = (0..40).map(|i| if i % 3 == 0 { 4.0 } else { 0.0 }).collect();
        let report = judge(lie, &rules);
        assert_eq!((report.verdict, report.failed), (Verdict::Faulty, 14));
        // Infinite margins (a token outside the vocabulary) count as failures.
        let outside = vec![f32::INFINITY; 10];
        assert_eq!(judge(outside, &rules).verdict, Verdict::Faulty);
        // NaN margins are positions the auditor's own model could not score (non-finite
        // logits): no verdict, however the other positions look, so no challenge either.
        let mut unscorable = vec![4.0; 40];
        unscorable[17] = f32::NAN;
        assert_eq!(judge(unscorable, &rules).verdict, Verdict::Inconclusive);
    }

    #[test]
    fn challenge_evidence_must_fit_the_models_spec() {
        use crate::tensor::{Tensor, TensorMeta, TensorRequest, TensorSpec};
        let meta = |name: &str, d: i64| TensorMeta {
            name: name.into(),
            datatype: "FP32".into(),
            shape: vec![-1, d],
            range: None,
        };
        let spec = TensorSpec {
            task: "t".into(),
            inputs: vec![meta("x", 3)],
            outputs: vec![meta("logits", 2), meta("probs", 2)],
            labels: vec![],
            preprocessing: "none".into(),
            opset: 13,
            batch_max: 4,
        };
        let t = |name: &str, shape: Vec<usize>| {
            let n = shape.iter().product();
            Tensor { name: name.into(), shape, data: vec![0.5; n] }
        };
        let request = |rows| TensorRequest { inputs: vec![t("x", vec![rows, 3])] };
        assert!(fits_spec(&spec, &request(2), &[t("probs", vec![2, 2])]).is_ok());
        assert!(fits_spec(&spec, &request(2), &[t("logits", vec![2, 2]), t("probs", vec![2, 2])]).is_ok());
        // The rank the output hash does not cover: [2, 2] is the model's, [2, 2, 0] is not.
        assert!(fits_spec(&spec, &request(2), &[t("probs", vec![2, 2, 0])]).is_err());
        assert!(fits_spec(&spec, &request(2), &[t("probs", vec![3, 2])]).is_err());
        assert!(fits_spec(&spec, &request(2), &[t("other", vec![2, 2])]).is_err());
        assert!(fits_spec(&spec, &request(2), &[t("probs", vec![2, 2]), t("probs", vec![2, 2])]).is_err());
        assert!(fits_spec(&spec, &request(5), &[t("probs", vec![5, 2])]).is_err(), "more rows than batch_max");
        assert!(fits_spec(&spec, &request(0), &[t("probs", vec![0, 2])]).is_err());
        let mut nan = request(1);
        nan.inputs[0].data[1] = f32::NAN;
        assert!(fits_spec(&spec, &nan, &[t("probs", vec![1, 2])]).is_err());
    }
}
