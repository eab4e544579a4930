//! The tract engine with the three real edge models, built into the shared cache by their
//! training script (`plexus model pull ecg-heartbeat` builds all three).
//!
//! Floats: tract and onnxruntime sum in different orders and with different SIMD kernels, so
//! outputs are compared with the tolerance the training script records (1e-3 absolute plus 1e-4
//! relative; the outputs are probabilities, MW and vehicles per hour), never bit for bit. The
//! model card figures are counts (beats classified, days flagged) or means over hundreds of
//! windows, and are checked to the 4 decimals the card prints: a difference at 1e-5 cannot move
//! them unless a value sits exactly on a decision boundary, which the assertion would show.

use std::sync::{Arc, OnceLock};

use plexus_inference::models::{ModelCache, Progress};
use plexus_inference::tensor::{Tensor, TensorRequest};
use plexus_inference::{Engine, EngineConfig, Error, ErrorKind, load_engine};
use serde_json::Value;

struct Loaded {
    engine: Arc<dyn Engine>,
    heldout: Value,
}

fn model(name: &str) -> &'static Loaded {
    static MODELS: OnceLock<Vec<(String, Loaded)>> = OnceLock::new();
    let all = MODELS.get_or_init(|| {
        let cache = ModelCache::from_env();
        ["ecg-heartbeat", "demand-forecast", "traffic-anomaly"]
            .into_iter()
            .map(|n| {
                let m = cache.pull(n, Progress::Hide).unwrap_or_else(|e| panic!("pull {n}: {e}"));
                let heldout: Value =
                    serde_json::from_slice(&std::fs::read(m.dir.join("heldout.json")).expect("heldout.json")).unwrap();
                let engine = load_engine(&m, &EngineConfig::default()).unwrap_or_else(|e| panic!("load {n}: {e}"));
                (n.to_owned(), Loaded { engine, heldout })
            })
            .collect()
    });
    &all.iter().find(|(n, _)| n == name).expect("known model").1
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

fn request(name: &str, rows: &[Vec<f32>]) -> TensorRequest {
    let width = rows[0].len();
    TensorRequest {
        inputs: vec![Tensor {
            name: name.to_owned(),
            shape: vec![rows.len(), width],
            data: rows.iter().flatten().copied().collect(),
        }],
    }
}

/// Runs `rows` in batches of at most 64 (the spec's limit) and returns each output, row-wise.
fn run(m: &Loaded, input: &[Vec<f32>]) -> Vec<(String, Vec<Vec<f32>>)> {
    let spec = m.engine.tensor_spec().expect("a tensor model");
    let mut out: Vec<(String, Vec<Vec<f32>>)> = spec.outputs.iter().map(|o| (o.name.clone(), Vec::new())).collect();
    for chunk in input.chunks(spec.batch_max as usize) {
        let r = m.engine.infer(&request(&spec.inputs[0].name, chunk)).expect("infer");
        assert_eq!(r.rows as usize, chunk.len());
        for (t, (name, acc)) in r.outputs.iter().zip(out.iter_mut()) {
            assert_eq!(&t.name, name);
            let w = t.shape[1..].iter().product::<usize>();
            acc.extend(t.data.chunks(w).map(<[f32]>::to_vec));
        }
    }
    out
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-3 + 1e-4 * b.abs()
}

#[test]
fn outputs_match_onnxruntime_on_the_recorded_samples_in_any_batch_shape() {
    for name in ["ecg-heartbeat", "demand-forecast", "traffic-anomaly"] {
        let m = model(name);
        let samples = &m.heldout["samples"];
        let inputs = rows(&samples["inputs"]);
        let whole = run(m, &inputs);
        let one_by_one: Vec<_> = inputs.iter().map(|r| run(m, std::slice::from_ref(r))).collect();
        for (out_name, got) in &whole {
            let want = rows(&samples["expected"][out_name]);
            assert_eq!(got.len(), want.len(), "{name}/{out_name}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                for (j, (a, b)) in g.iter().zip(w).enumerate() {
                    assert!(close(*a, *b), "{name}/{out_name}[{i}][{j}]: tract {a}, onnxruntime {b}");
                }
            }
            for (i, single) in one_by_one.iter().enumerate() {
                let s = &single.iter().find(|(n, _)| n == out_name).unwrap().1[0];
                for (a, b) in s.iter().zip(&got[i]) {
                    assert!(close(*a, *b), "{name}/{out_name}[{i}]: batch of 1 {a}, batch of 32 {b}");
                }
            }
        }
    }
}

#[test]
fn ecg_model_card_figures_hold_on_the_held_out_beats() {
    let m = model("ecg-heartbeat");
    let eval = &m.heldout["eval"];
    let labels: Vec<u64> = eval["labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let out = run(m, &rows(&eval["inputs"]));
    let probs = &out.iter().find(|(n, _)| n == "probs").unwrap().1;
    let (mut tp, mut fp, mut fn_, mut correct) = (0, 0, 0, 0);
    for (p, &y) in probs.iter().zip(&labels) {
        let pred = u64::from(p[1] > p[0]);
        correct += u64::from(pred == y);
        match (pred, y) {
            (1, 1) => tp += 1,
            (1, 0) => fp += 1,
            (0, 1) => fn_ += 1,
            _ => {}
        }
    }
    let accuracy = correct as f64 / labels.len() as f64;
    let f1 = 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64;
    let want = &eval["expected_metrics"];
    assert_eq!(labels.len(), 93);
    assert!((accuracy - want["accuracy"].as_f64().unwrap()).abs() < 1e-4, "accuracy {accuracy}");
    assert!((f1 - want["f1_abnormal"].as_f64().unwrap()).abs() < 1e-4, "F1 {f1}");
    // Better than always answering "normal" (the majority class): 67/93.
    assert!(accuracy > 67.0 / 93.0 + 0.2);
}

#[test]
fn demand_model_card_figures_hold_on_the_held_out_weeks() {
    let m = model("demand-forecast");
    let eval = &m.heldout["eval"];
    let series: Vec<f32> = eval["series"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let (len, horizon) = (eval["input_length"].as_u64().unwrap() as usize, eval["horizon"].as_u64().unwrap() as usize);
    let n = eval["n_windows"].as_u64().unwrap() as usize;
    let inputs: Vec<Vec<f32>> = (0..n).map(|k| series[k..k + len].to_vec()).collect();
    let out = run(m, &inputs);
    let forecast = &out[0].1;
    let (mut abs, mut pct, mut naive) = (0f64, 0f64, 0f64);
    for k in 0..n {
        for h in 0..horizon {
            let actual = series[k + len + h] as f64;
            abs += (forecast[k][h] as f64 - actual).abs();
            pct += (forecast[k][h] as f64 - actual).abs() / actual;
            // Seasonal naive: the same half-hour one week (336 half-hours) earlier.
            naive += (series[k + len + h - 336] as f64 - actual).abs();
        }
    }
    let count = (n * horizon) as f64;
    let (mae, mape, naive_mae) = (abs / count, 100.0 * pct / count, naive / count);
    let want = &eval["expected_metrics"];
    assert!((mae - want["MAE_MW"].as_f64().unwrap()).abs() < 1e-2, "MAE {mae}");
    assert!((mape - want["MAPE_pct"].as_f64().unwrap()).abs() < 1e-3, "MAPE {mape}");
    let naive_want = eval["expected_baseline_seasonal_naive_week"]["MAE_MW"].as_f64().unwrap();
    assert!((naive_mae - naive_want).abs() < 1e-2, "seasonal naive MAE {naive_mae}");
    assert!(mae < naive_mae, "the model must beat last week's value: {mae} vs {naive_mae}");
}

#[test]
fn traffic_model_card_figures_hold_on_the_held_out_days() {
    let m = model("traffic-anomaly");
    let eval = &m.heldout["eval"];
    let labels: Vec<u64> = eval["labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let out = run(m, &rows(&eval["inputs"]));
    let flags = &out.iter().find(|(n, _)| n == "is_anomaly").unwrap().1;
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    for (f, &y) in flags.iter().zip(&labels) {
        match (f[0] > 0.5, y == 1) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            _ => {}
        }
    }
    let want = &eval["expected_metrics"];
    assert_eq!((tp + fp) as u64, want["n_flagged"].as_u64().unwrap());
    let precision = tp as f64 / (tp + fp) as f64;
    let recall = tp as f64 / (tp + fn_) as f64;
    assert!((precision - want["precision"].as_f64().unwrap()).abs() < 1e-4, "precision {precision}");
    assert!((recall - want["recall"].as_f64().unwrap()).abs() < 1e-4, "recall {recall}");
}

#[test]
fn bad_tensors_are_refused_with_a_reason_and_never_reach_the_engine() {
    let m = model("ecg-heartbeat");
    let good = rows(&m.heldout["samples"]["inputs"]);
    let name = "ecg_window";
    let refused = |r: TensorRequest, what: &str| {
        let e = m.engine.infer(&r).expect_err(what);
        assert!(matches!(e, Error::BadTensor { .. }), "{what}: {e}");
        assert_eq!(e.kind(), ErrorKind::BadRequest, "{what}");
        e.to_string()
    };
    // Wrong width.
    let mut r = request(name, &good[..2]);
    r.inputs[0].shape = vec![4, 128];
    assert!(refused(r, "wrong shape").contains("does not match"));
    // Wrong name.
    assert!(refused(request("x", &good[..1]), "wrong name").contains("ecg_window"));
    // NaN and infinity.
    for bad in [f32::NAN, f32::INFINITY] {
        let mut r = request(name, &good[..1]);
        r.inputs[0].data[7] = bad;
        assert!(refused(r, "non-finite").contains("value 7"));
    }
    // More rows than the spec allows.
    let many: Vec<Vec<f32>> = (0..65).map(|i| good[i % good.len()].clone()).collect();
    assert!(refused(request(name, &many), "oversized").contains("1 to 64"));
    // Data shorter than the shape says, and an empty batch.
    let mut r = request(name, &good[..2]);
    r.inputs[0].data.pop();
    refused(r, "short data");
    let mut r = request(name, &good[..1]);
    r.inputs[0].shape = vec![0, 256];
    r.inputs[0].data.clear();
    refused(r, "empty batch");
    // Two inputs.
    let mut r = request(name, &good[..1]);
    r.inputs.push(r.inputs[0].clone());
    refused(r, "two inputs");
    // After all that, the engine still answers.
    assert_eq!(m.engine.infer(&request(name, &good[..3])).unwrap().rows, 3);
}
