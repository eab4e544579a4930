//! The tract engine behind [`crate::Engine::infer`].

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use plexus_types::EngineKind;
use tract_onnx::prelude::Tensor as TractTensor;
use tract_onnx::prelude::*;

use super::{TENSOR_NAME_BYTES_MAX, TensorRequest, TensorResponse, TensorSpec};
use crate::models::ModelFiles;
use crate::{CachedModel, Engine, Error, Load, ModelInfo};

/// `infer` calls that may run at once before new ones are refused as busy.
pub const CONCURRENT_MAX: usize = 16;

pub(crate) struct TensorEngine {
    info: ModelInfo,
    spec: TensorSpec,
    /// One plan per batch bucket, smallest first (see [`buckets`]).
    plans: Vec<Plan>,
    running: AtomicUsize,
}

/// A model compiled for one batch size, with the run states of finished calls kept for the
/// next ones: a state holds the plan's intermediate buffers and matrix-product scratch space, so
/// reusing one saves allocating them on every call (at most [`CONCURRENT_MAX`] are kept).
pub(crate) struct Plan {
    rows: usize,
    plan: Arc<TypedRunnableModel>,
    idle: std::sync::Mutex<Vec<TypedSimpleState>>,
}

impl Plan {
    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let state = self.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
        let mut state = match state {
            Some(s) => s,
            None => self.plan.spawn()?,
        };
        let out = state.run(inputs)?;
        // A state whose run failed is dropped, not reused.
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < CONCURRENT_MAX
        {
            idle.push(state);
        }
        Ok(out)
    }
}

/// The batch sizes a model is compiled for: the powers of two below `batch_max`, and `batch_max`.
///
/// tract optimises a graph far better when every dimension is known: with a symbolic batch its
/// matrix products pick generic kernels and pack their operands on every call, which made batch
/// 32 two to three times slower than onnxruntime (`docs/benchmarks.md`). A request of `rows` rows
/// runs on the smallest bucket that holds it, padded with copies of its first row whose outputs
/// are dropped; rows never influence each other in these graphs (each output row is a function
/// of its input row), so padding changes no result. Eleven plans at most (`batch_max` <= 1024),
/// all compiled at load, so no request pays for a compilation and no caller can make the engine
/// compile more.
fn buckets(batch_max: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> =
        std::iter::successors(Some(1usize), |b| Some(b * 2)).take_while(|&b| b < batch_max).collect();
    sizes.push(batch_max);
    sizes
}

/// Decrements the running-call counter however `infer` returns.
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn load_err(path: &Path) -> impl Fn(TractError) -> Error + '_ {
    move |e| Error::Load { path: path.into(), reason: format!("{e:#}") }
}

impl TensorEngine {
    pub(crate) fn load(cached: &CachedModel) -> Result<Self, Error> {
        let ModelFiles::TractOnnx { graph, spec } = &cached.files else {
            return Err(Error::BadModelDir { path: cached.dir.clone(), reason: "not a tensor model".into() });
        };
        let spec = TensorSpec::read(&cached.dir.join(spec))?;
        let path = cached.dir.join(graph);
        let plans = compile(&path, &spec)?;
        check_rows_independent(&path, &plans, &spec)?;
        let info = ModelInfo {
            name: cached.manifest.name.clone(),
            id: cached.id,
            manifest: cached.manifest.clone(),
            kind: EngineKind::TractOnnx,
            request_tokens_max: spec.batch_max,
            embedding_dims: None,
        };
        tracing::info!(target: "inference::tensor", model = %info.name, id = %info.id, task = %spec.task, "tensor engine ready");
        Ok(TensorEngine { info, spec, plans, running: AtomicUsize::new(0) })
    }

    /// Checks a request against the spec; returns the batch size and each input's values, in
    /// the spec's order (the request's inputs are matched by name, in any order).
    fn check<'r>(&self, request: &'r TensorRequest) -> Result<(usize, Vec<&'r [f32]>), Error> {
        let names = || self.spec.inputs.iter().map(|t| format!("`{}`", t.name)).collect::<Vec<_>>().join(", ");
        if let Some(extra) = request.inputs.iter().find(|t| !self.spec.inputs.iter().any(|w| w.name == t.name)) {
            let reason = match self.spec.inputs.as_slice() {
                [one] => format!("this model's input is `{}`", one.name),
                _ => format!("this model's inputs are {}", names()),
            };
            return Err(Error::BadTensor { input: extra.name.chars().take(TENSOR_NAME_BYTES_MAX).collect(), reason });
        }
        if request.inputs.len() != self.spec.inputs.len() {
            let want = &self.spec.inputs[0];
            return Err(Error::BadTensor {
                input: want.name.clone(),
                reason: format!(
                    "expected {} input{} ({}), got {}",
                    self.spec.inputs.len(),
                    if self.spec.inputs.len() == 1 { "" } else { "s" },
                    names(),
                    request.inputs.len()
                ),
            });
        }
        let mut rows = None;
        let mut values = Vec::with_capacity(self.spec.inputs.len());
        for want in &self.spec.inputs {
            let bad = |reason: String| Error::BadTensor { input: want.name.clone(), reason };
            // Present (every request input is one of the spec's, and as many): found.
            let input = request
                .inputs
                .iter()
                .find(|t| t.name == want.name)
                .ok_or_else(|| bad(format!("missing; this model's inputs are {}", names())))?;
            let dims = want.row_dims();
            if input.shape.len() != dims.len() + 1 || input.shape[1..] != dims[..] {
                return Err(bad(format!(
                    "shape {:?} does not match {:?} (-1 = any batch size)",
                    input.shape, want.shape
                )));
            }
            let n = input.shape[0];
            if n == 0 || n > self.spec.batch_max as usize {
                return Err(bad(format!("batch of {n} rows; this model takes 1 to {}", self.spec.batch_max)));
            }
            if *rows.get_or_insert(n) != n {
                return Err(bad(format!("{n} rows, where the other inputs have {}", rows.unwrap_or(0))));
            }
            if input.data.len() != n * want.row_elements() {
                return Err(bad(format!(
                    "{} values for shape {:?} ({} expected)",
                    input.data.len(),
                    input.shape,
                    n * want.row_elements()
                )));
            }
            // A scan without an early exit vectorises; the position is looked for only when needed.
            let [lo, hi] = want.range.unwrap_or([f32::MIN, f32::MAX]);
            if !input.data.iter().fold(true, |ok, &v| ok & (v >= lo) & (v <= hi)) {
                let i = input.data.iter().position(|&v| !(v >= lo && v <= hi)).unwrap_or(0);
                let v = input.data[i];
                if !v.is_finite() {
                    return Err(bad(format!("value {i} is {v} (only finite numbers are accepted)")));
                }
                return Err(bad(format!(
                    "value {i} is {v}, outside the range this model takes, {lo} to {hi} (see its preprocessing \
                     for the units)"
                )));
            }
            values.push(&input.data[..]);
        }
        Ok((rows.unwrap_or(0), values))
    }
}

/// Loads the graph once and optimises it for every batch bucket, with every dimension fixed.
fn compile(path: &Path, spec: &TensorSpec) -> Result<Vec<Plan>, Error> {
    let err = load_err(path);
    let mut model = tract_onnx::onnx().model_for_path(path).map_err(&err)?;
    let graph_inputs = model.input_outlets().map_err(&err)?.to_vec();
    if graph_inputs.len() != spec.inputs.len() {
        return Err(Error::Load {
            path: path.into(),
            reason: format!("the graph has {} inputs, the spec {}", graph_inputs.len(), spec.inputs.len()),
        });
    }
    if spec.inputs.len() > 1 {
        // The graph's inputs in the spec's order, found by name among its inputs only (a name
        // of an inner node must not cut the graph there).
        let name_of = |o: &OutletId| model.node(o.node).name.clone();
        let mut ordered = Vec::with_capacity(spec.inputs.len());
        for want in &spec.inputs {
            let found = graph_inputs.iter().find(|o| name_of(o) == want.name).ok_or_else(|| Error::Load {
                path: path.into(),
                reason: format!(
                    "the spec names input `{}`; the graph's inputs are {:?}",
                    want.name,
                    graph_inputs.iter().map(name_of).collect::<Vec<_>>()
                ),
            })?;
            ordered.push(*found);
        }
        model.set_input_outlets(&ordered).map_err(&err)?;
    }
    let mut plans = Vec::new();
    for rows in buckets(spec.batch_max as usize) {
        let mut typed = model.clone();
        for (i, input) in spec.inputs.iter().enumerate() {
            let mut shape: TVec<usize> = tvec![rows];
            shape.extend(input.row_dims());
            typed = typed.with_input_fact(i, InferenceFact::dt_shape(f32::datum_type(), shape)).map_err(&err)?;
        }
        let typed = typed.into_optimized().map_err(&err)?;
        let outputs = typed.output_outlets().map_err(&err)?.len();
        if outputs != spec.outputs.len() {
            return Err(Error::Load {
                path: path.into(),
                reason: format!("the graph has {outputs} outputs, the spec {}", spec.outputs.len()),
            });
        }
        let plan = typed.into_runnable().map_err(&err)?;
        plans.push(Plan { rows, plan, idle: std::sync::Mutex::new(Vec::new()) });
    }
    Ok(plans)
}

/// Runs `rows` rows (each input's values row-major, in the spec's order) on the smallest bucket
/// that holds them, padding with copies of the first row and dropping their outputs.
fn run(plans: &[Plan], spec: &TensorSpec, rows: usize, inputs: &[&[f32]]) -> Result<Vec<super::Tensor>, Error> {
    let plan =
        plans.iter().find(|p| p.rows >= rows).ok_or_else(|| Error::Engine(format!("no plan for {rows} rows")))?;
    let bucket = &plan.rows;
    let engine_err = |e: TractError| Error::Engine(format!("tract: {e:#}"));
    let mut values: TVec<TValue> = TVec::with_capacity(inputs.len());
    for (meta, data) in spec.inputs.iter().zip(inputs) {
        let row_len = meta.row_elements();
        let mut shape = vec![*bucket];
        shape.extend(meta.row_dims());
        // One copy into tract's aligned storage; padding rows repeat the first.
        let tensor = if rows == *bucket {
            TractTensor::from_shape(&shape, data).map_err(engine_err)?
        } else {
            let mut t = TractTensor::zero::<f32>(&shape).map_err(engine_err)?;
            let mut view = t.try_as_plain_ram_mut().map_err(engine_err)?;
            let slots = view.as_slice_mut::<f32>().map_err(engine_err)?;
            slots[..data.len()].copy_from_slice(data);
            for pad in slots[data.len()..].chunks_exact_mut(row_len) {
                pad.copy_from_slice(&data[..row_len]);
            }
            t
        };
        values.push(tensor.into());
    }
    let out = plan.run(values).map_err(engine_err)?;
    let mut outputs = Vec::with_capacity(out.len());
    for (value, meta) in out.iter().zip(&spec.outputs) {
        let plain = value.try_as_plain_ram().map_err(engine_err)?;
        let mut shape = plain.shape().to_vec();
        if shape.first() != Some(bucket) || shape[1..] != meta.row_dims()[..] {
            return Err(Error::Engine(format!(
                "output `{}` has shape {shape:?}, the spec says {:?}",
                meta.name, meta.shape
            )));
        }
        shape[0] = rows;
        let values = plain.as_slice::<f32>().map_err(|e| Error::Engine(format!("output `{}`: {e}", meta.name)))?;
        let data = values[..rows * meta.row_elements()].to_vec();
        outputs.push(super::Tensor { name: meta.name.clone(), shape, data });
    }
    Ok(outputs)
}

/// Refuses outputs that are not finite numbers: the model computed NaN or an infinity for this
/// input (a division by a zero mean, an overflow), which no caller can use, JSON cannot carry
/// and nobody should pay for. The caller's request caused it, so it is a 4xx.
fn finite(outputs: &[super::Tensor]) -> Result<(), Error> {
    for t in outputs {
        if t.data.iter().fold(true, |ok, v| ok & v.is_finite()) {
            continue;
        }
        let i = t.data.iter().position(|v| !v.is_finite()).unwrap_or(0);
        let per_row = t.shape.get(1..).map_or(1, |d| d.iter().product::<usize>().max(1));
        return Err(Error::OutputNotFinite { output: t.name.clone(), row: i / per_row, value: t.data[i] });
    }
    Ok(())
}

/// Padding a batch is only sound when rows do not influence each other. A graph that mixes
/// them (a reduction over the batch axis, say) is refused at load: two different rows run
/// together must give what each gives alone, to a float tolerance (kernels for one row and for
/// two may sum in different orders).
fn check_rows_independent(path: &Path, plans: &[Plan], spec: &TensorSpec) -> Result<(), Error> {
    if spec.batch_max < 2 {
        return Ok(());
    }
    // Row `k` of input `i`: values that differ by row and by input.
    let row = |i: usize, k: usize| {
        (0..spec.inputs[i].row_elements()).map(move |j| 1.0 + ((j * 7 + k * 3 + i * 5) % 11) as f32 / 11.0)
    };
    let both: Vec<Vec<f32>> = (0..spec.inputs.len()).map(|i| row(i, 0).chain(row(i, 1)).collect()).collect();
    let together = run(plans, spec, 2, &both.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
    for k in 0..2 {
        let one: Vec<Vec<f32>> = (0..spec.inputs.len()).map(|i| row(i, k).collect()).collect();
        let alone = run(plans, spec, 1, &one.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
        for (t, a) in together.iter().zip(&alone) {
            let n = a.data.len();
            let mixed =
                t.data[k * n..(k + 1) * n].iter().zip(&a.data).any(|(x, y)| !((x - y).abs() <= 1e-4 * (1.0 + y.abs())));
            if mixed {
                return Err(Error::Load {
                    path: path.into(),
                    reason: format!(
                        "output `{}` of a row depends on the other rows of its batch; tensor models must \
                         compute each output row from its input row alone",
                        t.name
                    ),
                });
            }
        }
    }
    Ok(())
}

impl Engine for TensorEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn tensor_spec(&self) -> Option<&TensorSpec> {
        Some(&self.spec)
    }

    fn infer(&self, request: &TensorRequest) -> Result<TensorResponse, Error> {
        let (rows, inputs) = self.check(request)?;
        if self.running.fetch_add(1, Ordering::SeqCst) >= CONCURRENT_MAX {
            self.running.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Busy { queued: CONCURRENT_MAX, queue_max: CONCURRENT_MAX });
        }
        let _running = Running(&self.running);
        let outputs = run(&self.plans, &self.spec, rows, &inputs)?;
        finite(&outputs)?;
        Ok(TensorResponse { outputs, rows: rows as u32 })
    }

    fn load(&self) -> Load {
        Load { active: self.running.load(Ordering::SeqCst), queue_max: CONCURRENT_MAX, ..Load::default() }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use tract_onnx::pb;

    use super::*;

    fn spec(batch_max: u32) -> TensorSpec {
        let meta = |name: &str| super::super::TensorMeta {
            name: name.into(),
            datatype: "FP32".into(),
            shape: vec![-1, 4],
            range: None,
        };
        TensorSpec {
            task: "test".into(),
            inputs: vec![meta("x")],
            outputs: vec![meta("y")],
            labels: vec![],
            preprocessing: "none".into(),
            opset: 11,
            batch_max,
        }
    }

    /// A one-input graph `y = x - ReduceMean(x, axes) ` (opset 11, axes as an attribute), or
    /// `y = Relu(x)` when `axes` is empty.
    fn graph(dir: &Path, axes: &[i64]) -> std::path::PathBuf {
        graph_of(dir, axes, "Sub")
    }

    /// `y = x <op> ReduceMean(x, axes)`, or `y = Relu(x)` when `axes` is empty.
    fn graph_of(dir: &Path, axes: &[i64], op: &str) -> std::path::PathBuf {
        let dim = |v: tract_onnx::pb::tensor_shape_proto::dimension::Value| pb::tensor_shape_proto::Dimension {
            value: Some(v),
            ..Default::default()
        };
        use pb::tensor_shape_proto::dimension::Value::{DimParam, DimValue};
        let value = |name: &str| pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto { dim: vec![dim(DimParam("N".into())), dim(DimValue(4))] }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let node = |op: &str, input: &[&str], output: &str, attribute: Vec<pb::AttributeProto>| pb::NodeProto {
            op_type: op.into(),
            input: input.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        };
        let nodes = if axes.is_empty() {
            vec![node("Relu", &["x"], "y", vec![])]
        } else {
            let axes = pb::AttributeProto {
                name: "axes".into(),
                r#type: pb::attribute_proto::AttributeType::Ints as i32,
                ints: axes.to_vec(),
                ..Default::default()
            };
            vec![node("ReduceMean", &["x"], "m", vec![axes]), node(op, &["x", "m"], "y", vec![])]
        };
        let model = pb::ModelProto {
            ir_version: 6,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 11 }],
            graph: Some(pb::GraphProto {
                node: nodes,
                name: "g".into(),
                input: vec![value("x")],
                output: vec![value("y")],
                ..Default::default()
            }),
            ..Default::default()
        };
        let path = dir.join("model.onnx");
        std::fs::write(&path, model.encode_to_vec()).unwrap();
        path
    }

    /// `y = a - b`, a graph whose inputs are listed `b` first.
    fn two_input_graph(dir: &Path) -> std::path::PathBuf {
        use pb::tensor_shape_proto::dimension::Value::{DimParam, DimValue};
        let dim = |v| pb::tensor_shape_proto::Dimension { value: Some(v), ..Default::default() };
        let value = |name: &str| pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto { dim: vec![dim(DimParam("N".into())), dim(DimValue(4))] }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sub = pb::NodeProto {
            op_type: "Sub".into(),
            input: vec!["a".into(), "b".into()],
            output: vec!["y".into()],
            ..Default::default()
        };
        let model = pb::ModelProto {
            ir_version: 6,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 11 }],
            graph: Some(pb::GraphProto {
                node: vec![sub],
                name: "g".into(),
                input: vec![value("b"), value("a")],
                output: vec![value("y")],
                ..Default::default()
            }),
            ..Default::default()
        };
        let path = dir.join("two.onnx");
        std::fs::write(&path, model.encode_to_vec()).unwrap();
        path
    }

    #[test]
    fn a_model_of_two_inputs_takes_them_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = two_input_graph(dir.path());
        let mut spec = spec(4);
        let mut b = spec.inputs[0].clone();
        b.name = "b".into();
        spec.inputs[0].name = "a".into();
        spec.inputs.push(b);
        spec.check().unwrap();
        let plans = compile(&path, &spec).unwrap();
        check_rows_independent(&path, &plans, &spec).unwrap();
        let mut engine = dividing_engine(dir.path(), None);
        engine.spec = spec.clone();
        engine.plans = plans;
        let t = |name: &str, rows: usize, v: f32| super::super::Tensor {
            name: name.into(),
            shape: vec![rows, 4],
            data: (0..rows * 4).map(|i| v + i as f32).collect(),
        };
        // Listed either way, `a` is a and `b` is b: y = a - b exactly (a subtraction of small
        // integers has one answer on every CPU).
        for inputs in [vec![t("a", 3, 10.0), t("b", 3, 1.0)], vec![t("b", 3, 1.0), t("a", 3, 10.0)]] {
            let out = engine.infer(&TensorRequest { inputs }).unwrap();
            assert_eq!(out.outputs[0].shape, vec![3, 4]);
            assert!(out.outputs[0].data.iter().all(|&v| v == 9.0), "{:?}", out.outputs[0].data);
        }
        for (inputs, want) in [
            (vec![t("a", 3, 1.0)], "expected 2 inputs"),
            (vec![t("a", 3, 1.0), t("c", 3, 1.0)], "inputs are `a`, `b`"),
            (vec![t("a", 3, 1.0), t("b", 2, 1.0)], "other inputs have 3"),
        ] {
            let e = engine.infer(&TensorRequest { inputs }).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        // A spec naming an input the graph does not have, or one named twice, is refused.
        spec.inputs[1].name = "z".into();
        let e = compile(&path, &spec).err().expect("no input z").to_string();
        assert!(e.contains("the spec names input `z`"), "{e}");
        spec.inputs[1].name = "a".into();
        assert!(spec.check().unwrap_err().contains("named twice"));
    }

    #[test]
    fn buckets_are_powers_of_two_then_the_limit() {
        assert_eq!(buckets(1), vec![1]);
        assert_eq!(buckets(2), vec![1, 2]);
        assert_eq!(buckets(64), vec![1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(buckets(100), vec![1, 2, 4, 8, 16, 32, 64, 100]);
        assert_eq!(buckets(1024).len(), 11);
    }

    #[test]
    fn padded_batches_give_every_row_its_own_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = graph(dir.path(), &[]);
        let spec = spec(8);
        let plans = compile(&path, &spec).unwrap();
        check_rows_independent(&path, &plans, &spec).unwrap();
        // 5 rows run on the bucket of 8; Relu is exact, so the answer is too.
        let data: Vec<f32> = (0..20).map(|i| i as f32 - 10.0).collect();
        let out = run(&plans, &spec, 5, &[&data]).unwrap();
        assert_eq!(out[0].shape, vec![5, 4]);
        assert_eq!(out[0].data, data.iter().map(|v| v.max(0.0)).collect::<Vec<_>>());
    }

    #[test]
    fn a_graph_that_mixes_the_rows_of_a_batch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(8);
        let path = graph(dir.path(), &[0]);
        let plans = compile(&path, &spec).unwrap();
        let err = check_rows_independent(&path, &plans, &spec).unwrap_err().to_string();
        assert!(err.contains("depends on the other rows"), "{err}");
        // The same reduction over a row's own values is fine.
        let path = graph(dir.path(), &[1]);
        let plans = compile(&path, &spec).unwrap();
        check_rows_independent(&path, &plans, &spec).unwrap();
    }

    /// An engine over `y = x / mean(x)` (per row), with `range` on its input: the shape of a
    /// level-normalising forecaster whose graph does not guard its division.
    fn dividing_engine(dir: &Path, range: Option<[f32; 2]>) -> TensorEngine {
        let path = graph_of(dir, &[1], "Div");
        let mut spec = spec(8);
        spec.inputs[0].range = range;
        let plans = compile(&path, &spec).unwrap();
        let info = ModelInfo {
            name: "div".into(),
            id: plexus_types::hash(b"div"),
            manifest: plexus_types::ModelManifest {
                name: "div".into(),
                engine: EngineKind::TractOnnx,
                weights_sha256: plexus_types::Hash::ZERO,
                tokenizer_sha256: plexus_types::Hash::ZERO,
                template_sha256: plexus_types::Hash::ZERO,
                quantization: "f32".into(),
                context_length: 0,
            },
            kind: EngineKind::TractOnnx,
            request_tokens_max: 8,
            embedding_dims: None,
        };
        TensorEngine { info, spec, plans, running: AtomicUsize::new(0) }
    }

    fn rows_of(data: Vec<f32>) -> TensorRequest {
        let rows = data.len() / 4;
        TensorRequest { inputs: vec![super::super::Tensor { name: "x".into(), shape: vec![rows, 4], data }] }
    }

    #[test]
    fn an_output_that_is_not_finite_is_the_inputs_fault_and_names_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let engine = dividing_engine(dir.path(), None);
        let ok = engine.infer(&rows_of(vec![1.0, 2.0, 3.0, 2.0])).unwrap();
        assert!((ok.outputs[0].data[1] - 1.0).abs() < 1e-6);
        // Row 1 is all zeros: 0 / 0 is NaN there. The caller's input did it: a 4xx, and the
        // message says which output and row, and what to check.
        let err = engine.infer(&rows_of(vec![1.0, 2.0, 3.0, 2.0, 0.0, 0.0, 0.0, 0.0])).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::BadRequest, "{err}");
        assert!(matches!(err, Error::OutputNotFinite { row: 1, .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("`y`") && text.contains("row 1") && text.contains("preprocessing"), "{text}");
        // The engine serves the next good request as before.
        assert!(engine.infer(&rows_of(vec![4.0; 4])).is_ok());
    }

    #[test]
    fn an_audit_of_a_request_the_model_cannot_answer_is_inconclusive() {
        use crate::audit::{Verdict, audit_tensor};
        let dir = tempfile::tempdir().unwrap();
        let engine = dividing_engine(dir.path(), None);
        let claimed = |data: Vec<f32>| vec![super::super::Tensor { name: "y".into(), shape: vec![1, 4], data }];
        // The model has no finite answer for zeros: nothing to compare, nobody to accuse.
        let report = audit_tensor(&engine, &rows_of(vec![0.0; 4]), &claimed(vec![0.5; 4])).unwrap();
        assert_eq!(report.verdict, Verdict::Inconclusive);
        // It has one for this row: the right outputs pass, made-up ones are faulty.
        let good = rows_of(vec![1.0, 2.0, 3.0, 2.0]);
        assert_eq!(audit_tensor(&engine, &good, &claimed(vec![0.5, 1.0, 1.5, 1.0])).unwrap().verdict, Verdict::Honest);
        assert_eq!(audit_tensor(&engine, &good, &claimed(vec![0.5; 4])).unwrap().verdict, Verdict::Faulty);
    }

    #[test]
    fn values_outside_the_declared_range_are_refused_before_the_model_runs() {
        let dir = tempfile::tempdir().unwrap();
        let engine = dividing_engine(dir.path(), Some([0.0, 100.0]));
        assert!(engine.infer(&rows_of(vec![0.0, 50.0, 100.0, 1.0])).is_ok());
        for (bad, want) in [(-1.0, "outside the range"), (1e30, "outside the range"), (f32::NAN, "finite")] {
            let err = engine.infer(&rows_of(vec![1.0, bad, 1.0, 1.0])).unwrap_err();
            assert!(matches!(err, Error::BadTensor { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(want) && err.to_string().contains("value 1"), "{bad}: {err}");
        }
        // A spec whose range is not two ordered finite numbers does not load.
        let mut spec = spec(8);
        spec.inputs[0].range = Some([5.0, 1.0]);
        assert!(spec.check().unwrap_err().contains("range"));
        spec.inputs[0].range = Some([f32::NEG_INFINITY, 1.0]);
        assert!(spec.check().is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Whatever the values (zeros, constants, huge, tiny, signed, non-finite), a request
        /// either gets finite outputs for every row or a 4xx error: never a non-finite value
        /// handed to the caller, a panic, or an error blamed on the engine.
        #[test]
        fn every_input_gets_finite_outputs_or_a_client_error(
            values in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::Just(0.0f32),
                    proptest::prelude::Just(f32::NAN),
                    proptest::prelude::Just(f32::INFINITY),
                    proptest::prelude::Just(f32::MAX),
                    proptest::prelude::Just(f32::MIN_POSITIVE),
                    proptest::prelude::Just(1e-45f32),
                    -1e6f32..1e6f32,
                    proptest::num::f32::ANY,
                ],
                4..=32,
            ),
        ) {
            static ENGINE: std::sync::LazyLock<(tempfile::TempDir, TensorEngine)> = std::sync::LazyLock::new(|| {
                let dir = tempfile::tempdir().unwrap();
                let engine = dividing_engine(dir.path(), None);
                (dir, engine)
            });
            let engine = &ENGINE.1;
            let n = values.len() / 4 * 4;
            match engine.infer(&rows_of(values[..n].to_vec())) {
                Ok(r) => proptest::prop_assert!(r.outputs.iter().all(|t| t.data.iter().all(|v| v.is_finite()))),
                Err(e) => proptest::prop_assert_eq!(e.kind(), crate::ErrorKind::BadRequest, "{}", e),
            }
        }
    }
}
