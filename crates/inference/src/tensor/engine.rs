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
    plan: Arc<TypedRunnableModel>,
    running: AtomicUsize,
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
        let plan = compile(&path, &spec)?;
        let info = ModelInfo {
            name: cached.manifest.name.clone(),
            id: cached.id,
            manifest: cached.manifest.clone(),
            kind: EngineKind::TractOnnx,
            request_tokens_max: spec.batch_max,
            embedding_dims: None,
        };
        tracing::info!(target: "inference::tensor", model = %info.name, id = %info.id, task = %spec.task, "tensor engine ready");
        Ok(TensorEngine { info, spec, plan, running: AtomicUsize::new(0) })
    }

    /// Checks a request against the spec; returns the batch size.
    fn check(&self, request: &TensorRequest) -> Result<usize, Error> {
        let want = &self.spec.inputs[0];
        let bad = |reason: String| Error::BadTensor { input: want.name.clone(), reason };
        let [input] = request.inputs.as_slice() else {
            return Err(bad(format!("expected exactly one input, got {}", request.inputs.len())));
        };
        if input.name != want.name {
            return Err(Error::BadTensor {
                input: input.name.chars().take(TENSOR_NAME_BYTES_MAX).collect(),
                reason: format!("this model's input is `{}`", want.name),
            });
        }
        let dims = want.row_dims();
        if input.shape.len() != dims.len() + 1 || input.shape[1..] != dims[..] {
            return Err(bad(format!("shape {:?} does not match {:?} (-1 = any batch size)", input.shape, want.shape)));
        }
        let rows = input.shape[0];
        if rows == 0 || rows > self.spec.batch_max as usize {
            return Err(bad(format!("batch of {rows} rows; this model takes 1 to {}", self.spec.batch_max)));
        }
        if input.data.len() != rows * want.row_elements() {
            return Err(bad(format!(
                "{} values for shape {:?} ({} expected)",
                input.data.len(),
                input.shape,
                rows * want.row_elements()
            )));
        }
        if let Some(i) = input.data.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("value {i} is {} (only finite numbers are accepted)", input.data[i])));
        }
        Ok(rows)
    }
}

/// Loads the graph, fixes every input dimension but the batch, and optimises it.
fn compile(path: &Path, spec: &TensorSpec) -> Result<Arc<TypedRunnableModel>, Error> {
    let err = load_err(path);
    let mut model = tract_onnx::onnx().model_for_path(path).map_err(&err)?;
    let n_inputs = model.input_outlets().map_err(&err)?.len();
    if n_inputs != 1 {
        return Err(Error::Load {
            path: path.into(),
            reason: format!("the graph has {n_inputs} inputs, the spec one"),
        });
    }
    let batch = model.sym("N");
    let mut shape: TVec<TDim> = tvec![batch.into()];
    shape.extend(spec.inputs[0].row_dims().iter().map(|&d| TDim::from(d as i64)));
    model = model.with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape)).map_err(&err)?;
    let typed = model.into_optimized().map_err(&err)?;
    let outputs = typed.output_outlets().map_err(&err)?.len();
    if outputs != spec.outputs.len() {
        return Err(Error::Load {
            path: path.into(),
            reason: format!("the graph has {outputs} outputs, the spec {}", spec.outputs.len()),
        });
    }
    typed.into_runnable().map_err(&err)
}

impl Engine for TensorEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn tensor_spec(&self) -> Option<&TensorSpec> {
        Some(&self.spec)
    }

    fn infer(&self, request: &TensorRequest) -> Result<TensorResponse, Error> {
        let rows = self.check(request)?;
        if self.running.fetch_add(1, Ordering::SeqCst) >= CONCURRENT_MAX {
            self.running.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Busy { queued: CONCURRENT_MAX, queue_max: CONCURRENT_MAX });
        }
        let _running = Running(&self.running);
        let input = &request.inputs[0];
        let tensor = tract_ndarray::ArrayD::from_shape_vec(input.shape.clone(), input.data.clone())
            .map_err(|e| Error::Engine(format!("input tensor: {e}")))?;
        let out = self
            .plan
            .run(tvec![TractTensor::from(tensor).into()])
            .map_err(|e| Error::Engine(format!("tract: {e:#}")))?;
        let mut outputs = Vec::with_capacity(out.len());
        for (value, meta) in out.iter().zip(&self.spec.outputs) {
            let view = value
                .to_plain_array_view::<f32>()
                .map_err(|e| Error::Engine(format!("output `{}`: {e}", meta.name)))?;
            let shape = view.shape().to_vec();
            if shape.first() != Some(&rows) || shape[1..] != meta.row_dims()[..] {
                return Err(Error::Engine(format!(
                    "output `{}` has shape {shape:?}, the spec says {:?}",
                    meta.name, meta.shape
                )));
            }
            outputs.push(super::Tensor { name: meta.name.clone(), shape, data: view.iter().copied().collect() });
        }
        Ok(TensorResponse { outputs, rows: rows as u32 })
    }

    fn load(&self) -> Load {
        Load { active: self.running.load(Ordering::SeqCst), queue_max: CONCURRENT_MAX, ..Load::default() }
    }
}
