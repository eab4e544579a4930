//! The stream's windows on the real recording and the real heartbeat model, without a network:
//! the causal beat detector finds the beats the training script labelled, and the model's
//! verdicts on the stream's windows agree with those labels about as well as the model card says.

use plexus_inference::models::{ModelCache, Progress};
use plexus_inference::{EngineConfig, load_engine};
use plexus_serve::stream::{Ring, StreamParams, Windower, judge, window_request};
use serde_json::Value;

#[test]
fn stream_finds_the_training_beats_and_the_model_flags_the_abnormal_ones() {
    let cached = ModelCache::from_env().pull("ecg-heartbeat", Progress::Hide).expect("pull ecg-heartbeat");
    let rec: Value = serde_json::from_slice(&std::fs::read(cached.dir.join("stream.json")).unwrap()).unwrap();
    let samples: Vec<f32> = rec["samples"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let list = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect::<Vec<_>>();
    let (peaks, labels) = (list(&rec["beats"]["r_peak"]), list(&rec["beats"]["labels"]));
    let engine = load_engine(&cached, &EngineConfig::default()).unwrap();
    let spec = engine.tensor_spec().unwrap().clone();

    let trigger = StreamParams::parse("trigger=r-peak").unwrap().for_window(256).unwrap();
    let mut ring = Ring::default();
    let mut windower = Windower::new(256, trigger);
    let mut found = Vec::new();
    // Frames of a tenth of a second, as a device sends them.
    for frame in samples.chunks(36) {
        ring.push(frame);
        for start in windower.push(frame, ring.end()) {
            let window = ring.window(start, 256).expect("the ring holds every window it announces");
            let outputs: Vec<_> = engine
                .infer(&window_request("ecg_window", window))
                .unwrap()
                .outputs
                .into_iter()
                .map(|t| plexus_serve::stream::OutputTensor {
                    name: t.name,
                    shape: t.shape,
                    datatype: "FP32".into(),
                    data: t.data,
                })
                .collect();
            let (_, _, alert) = judge(&spec.labels, &outputs, 0.5);
            found.push((start + 90, alert));
        }
        ring.forget_before(windower.needs_from(ring.end()));
        assert!(ring.len() <= 256 + 360, "the ring keeps only what a coming window needs: {}", ring.len());
    }
    let (mut matched, mut agree, mut abnormal, mut alerted) = (0, 0, 0, 0);
    for (&r, &label) in peaks.iter().zip(&labels) {
        let Some(&(_, alert)) = found.iter().find(|(f, _)| f.abs_diff(r) <= 2) else { continue };
        matched += 1;
        agree += u32::from(alert == (label == 1));
        abnormal += u32::from(label == 1);
        alerted += u32::from(label == 1 && alert);
    }
    eprintln!(
        "{} beats found, {matched} of {} labelled ones, {agree} agree, {alerted}/{abnormal} abnormal alerted",
        found.len(),
        peaks.len()
    );
    assert_eq!(matched as usize, peaks.len(), "every labelled beat is found within two samples");
    // Beats the training script dropped (unreliable rhythm around them) are found too, and
    // nothing else: at most a few more windows than labelled beats in the held-out minute and
    // the five seconds before it.
    assert!(found.len() <= peaks.len() + 15, "{} windows", found.len());
    assert!(agree * 100 >= matched * 90, "{agree} of {matched}");
    assert!(alerted * 10 >= abnormal * 8, "{alerted} of {abnormal}");
}
