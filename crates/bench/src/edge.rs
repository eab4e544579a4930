//! `plexus-bench edge`: the tract engine against onnxruntime on the same ONNX files and the same
//! inputs (the edge models' held-out rows), one thread each, batch 1 and batch 32, in
//! alternating passes (tract, onnxruntime, onnxruntime, tract) so drift in the machine's speed
//! weighs on both alike. Also compares the outputs of the first batch.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use plexus_inference::models::{ModelCache, Progress};
use plexus_inference::tensor::{Tensor, TensorRequest};
use plexus_inference::{EngineConfig, load_engine};
use serde_json::Value;

use crate::report::{commit, machine, quantile, write_section};

#[derive(clap::Args)]
pub struct Args {
    /// Calls per pass at batch 1 (batch 32 makes a tenth as many).
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Python with onnxruntime (default: the edge models' training environment in the cache).
    #[arg(long)]
    python: Option<PathBuf>,
    /// The onnxruntime side's script.
    #[arg(long, default_value = "bench/edge/ort_bench.py")]
    script: PathBuf,
    /// Write the results into this file's "## Edge tensor models" section.
    #[arg(long)]
    docs: Option<PathBuf>,
}

const MODELS: [&str; 3] = ["ecg-heartbeat", "demand-forecast", "traffic-anomaly"];

struct Side {
    times: Vec<f64>,
}

impl Side {
    fn p(&self, q: f64) -> f64 {
        let mut t = self.times.clone();
        t.sort_by(f64::total_cmp);
        quantile(&t, q)
    }
}

fn rows_of(heldout: &Value) -> Vec<Vec<f32>> {
    let src =
        if heldout["eval"]["inputs"].is_array() { &heldout["eval"]["inputs"] } else { &heldout["samples"]["inputs"] };
    src.as_array()
        .into_iter()
        .flatten()
        .map(|r| r.as_array().into_iter().flatten().filter_map(Value::as_f64).map(|x| x as f32).collect())
        .collect()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cache = ModelCache::from_env();
    let python = args.python.clone().unwrap_or_else(|| cache.root().join(".edge-train/venv/bin/python"));
    let tmp = std::env::temp_dir().join(format!("plexus-bench-edge-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let mut table = String::new();
    let mut agreement = String::new();
    let mut ort_version = String::new();
    for name in MODELS {
        let model = cache.pull(name, Progress::Show).with_context(|| format!("pulling {name}"))?;
        let heldout: Value = serde_json::from_slice(&std::fs::read(model.dir.join("heldout.json"))?)?;
        let rows = rows_of(&heldout);
        if rows.len() < 32 {
            bail!("{name}: fewer than 32 held-out rows");
        }
        let engine = load_engine(&model, &EngineConfig::default())?;
        let input = engine.tensor_spec().context("not a tensor model")?.inputs[0].name.clone();
        let inputs_path = tmp.join(format!("{name}.json"));
        std::fs::write(&inputs_path, serde_json::to_vec(&serde_json::json!({ "rows": rows }))?)?;
        for batch in [1usize, 32] {
            let calls = if batch == 1 { args.calls } else { (args.calls / 10).max(20) };
            let batches: Vec<TensorRequest> = (0..(rows.len() / batch).max(1))
                .map(|i| {
                    let chunk = &rows[i * batch..i * batch + batch];
                    TensorRequest {
                        inputs: vec![Tensor {
                            name: input.clone(),
                            shape: vec![batch, chunk[0].len()],
                            data: chunk.iter().flatten().copied().collect(),
                        }],
                    }
                })
                .collect();
            let tract_pass = || -> anyhow::Result<Side> {
                for i in 0..50.min(calls) {
                    engine.infer(&batches[i % batches.len()])?;
                }
                let mut times = Vec::with_capacity(calls);
                for i in 0..calls {
                    let t0 = Instant::now();
                    engine.infer(&batches[i % batches.len()])?;
                    times.push(t0.elapsed().as_secs_f64());
                }
                Ok(Side { times })
            };
            let ort_pass = || -> anyhow::Result<(Side, Value)> {
                let out = Command::new(&python)
                    .arg(&args.script)
                    .arg(model.dir.join("model.onnx"))
                    .arg(&inputs_path)
                    .arg(batch.to_string())
                    .arg(calls.to_string())
                    .env("OMP_NUM_THREADS", "1")
                    .output()
                    .with_context(|| format!("running {}", python.display()))?;
                if !out.status.success() {
                    bail!("onnxruntime side failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                let v: Value = serde_json::from_slice(&out.stdout)?;
                let times = v["times"].as_array().context("times")?.iter().filter_map(Value::as_f64).collect();
                Ok((Side { times }, v))
            };
            // A-B-B-A.
            let t1 = tract_pass()?;
            let (o1, ort_out) = ort_pass()?;
            let (o2, _) = ort_pass()?;
            let t2 = tract_pass()?;
            ort_version = ort_out["version"].as_str().unwrap_or("?").to_owned();
            let tract = Side { times: [t1.times, t2.times].concat() };
            let ort = Side { times: [o1.times, o2.times].concat() };
            let (tp50, tp99, op50, op99) = (tract.p(0.5), tract.p(0.99), ort.p(0.5), ort.p(0.99));
            let (tput_t, tput_o) = (batch as f64 / tp50, batch as f64 / op50);
            table.push_str(&format!(
                "| {name} | {batch} | {:.1} / {:.1} µs | {:.1} / {:.1} µs | {:.0} / {:.0} | {:.2}x |\n",
                tp50 * 1e6,
                tp99 * 1e6,
                op50 * 1e6,
                op99 * 1e6,
                tput_t,
                tput_o,
                tp50 / op50,
            ));
            println!(
                "{name} batch {batch}: tract p50 {:.1} µs p99 {:.1} µs; onnxruntime p50 {:.1} µs p99 {:.1} µs",
                tp50 * 1e6,
                tp99 * 1e6,
                op50 * 1e6,
                op99 * 1e6
            );
            if batch == 32 {
                let ours = engine.infer(&batches[0])?;
                let mut worst = 0f64;
                for t in &ours.outputs {
                    let theirs = ort_out["outputs"][&t.name].as_array().context("ort output")?;
                    for (a, b) in t.data.iter().zip(theirs) {
                        let b = b.as_f64().unwrap_or(f64::NAN);
                        let rel = (f64::from(*a) - b).abs() / b.abs().max(1.0);
                        worst = worst.max(rel);
                    }
                }
                agreement.push_str(&format!("{name}: {worst:.1e}; "));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let body = format!(
        "`bench/edge/run.sh` (`plexus-bench edge --calls {calls}`). The three edge models (built by\n\
         `models/edge/train.py`), the same ONNX file and the same held-out input rows for both engines, one\n\
         thread each (onnxruntime {ort_version}, `intra_op_num_threads=1`, sequential), in-process\n\
         calls timed one by one; passes in A-B-B-A order (tract, onnxruntime, onnxruntime, tract), pooled.\n\
         Throughput = batch / p50 latency. Ratio = tract p50 / onnxruntime p50 (lower is better).\n\n\
         Machine: {machine}. Commit {commit}.\n\n\
         | model | batch | tract p50 / p99 | onnxruntime p50 / p99 | inferences/s tract / onnxruntime | ratio |\n\
         |---|---|---|---|---|---|\n{table}\n\
         Largest difference between the engines' outputs on the first batch of 32, relative to\n\
         max(1, |value|): {agreement}\n\n\
         Goal (issue 12): p50 and throughput within 1.25x of onnxruntime, outputs equal to 1e-5.\n",
        calls = args.calls,
        machine = machine(),
        commit = commit(),
    );
    println!("\n{body}");
    if let Some(docs) = &args.docs {
        write_section(docs, "Edge tensor models", &body)?;
    }
    Ok(())
}
