//! Tensor models (ONNX) on tract: the small classifiers and forecasters that edge devices run
//! next to their data (a heartbeat classifier beside a patient monitor, a demand forecaster in a
//! grid box, an anomaly detector at a roadside).
//!
//! Why tract: it is pure Rust (nothing downloaded or compiled from C++ at build time, so a node
//! builds the same everywhere), runs the standard ONNX operators these models use (Gemm, MatMul,
//! Relu, Softmax, int8 quantized ops) on the CPU with its own SIMD kernels, and can turn a model
//! into a streaming "pulsed" network later without changing the file format. onnxruntime is
//! faster on large graphs but is a C++ binary fetched at build time; for models of a few thousand
//! parameters the difference is the benchmark's to show (`docs/benchmarks.md`).
//!
//! A tensor model is a directory with `model.onnx` and `tensor.json`, its [`TensorSpec`]: the
//! input and output names, shapes and types, what the input means and how it is prepared. The
//! model id covers both files, so a provider cannot serve another graph or a graph with another
//! meaning under the same id.
//!
//! Every request is checked before tract sees it: one input of the declared name, type and
//! shape, between 1 and `batch_max` rows, finite values only, inside the input's declared
//! [`TensorMeta::range`] when the spec gives one. Anything else is an [`Error::BadTensor`] (a 4xx
//! for the caller), never a panic inside the engine. An output that is still not a finite number
//! is the input's doing too (the model honestly computes NaN or infinity for it, e.g. a division
//! by a window mean of 0): it is [`Error::OutputNotFinite`], also a 4xx, and nothing is sent or
//! billed for it; a provider never attests a value JSON cannot carry.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;

#[cfg(feature = "tensor")]
pub(crate) mod engine;

/// Most rows one request may carry, whatever a spec says.
pub const BATCH_MAX_LIMIT: u32 = 1024;
/// Most values in one row of the input.
pub const ROW_ELEMENTS_MAX: usize = 1 << 16;
/// Longest tensor name, in bytes.
pub const TENSOR_NAME_BYTES_MAX: usize = 64;
/// Most dimensions of a tensor, the batch included.
pub const RANK_MAX: usize = 4;

/// The Open Inference Protocol's name for the one element type served today.
pub const FP32: &str = "FP32";

/// Most inputs a tensor model may have (each is matched by name).
pub const INPUTS_MAX: usize = 8;

/// One input or output of a tensor model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorMeta {
    pub name: String,
    /// Element type in the Open Inference Protocol's words (`FP32`).
    pub datatype: String,
    /// Shape with `-1` for the batch (first) dimension, e.g. `[-1, 720]`.
    pub shape: Vec<i64>,
    /// Inputs only: the lowest and highest value the model is made for, in the units its
    /// preprocessing names (e.g. `[-100, 100]` mV). Values outside are refused before the model
    /// runs: they are another unit or scale, or large enough to overflow its sums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[f32; 2]>,
}

impl TensorMeta {
    /// The fixed dimensions after the batch one.
    pub fn row_dims(&self) -> Vec<usize> {
        self.shape.iter().skip(1).map(|&d| d as usize).collect()
    }

    /// Values per row.
    pub fn row_elements(&self) -> usize {
        self.row_dims().iter().product()
    }
}

/// What a tensor model computes and how to call it: `tensor.json` beside `model.onnx`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// What the model does, in one line (shown by `GET /v2/models/{name}`).
    pub task: String,
    pub inputs: Vec<TensorMeta>,
    pub outputs: Vec<TensorMeta>,
    /// Class names, in output order, for classifiers.
    #[serde(default)]
    pub labels: Vec<String>,
    /// How raw samples become the input row (units, window, scaling), so callers can prepare
    /// them the way the model was trained.
    pub preprocessing: String,
    /// The ONNX opset the graph was exported with.
    pub opset: u32,
    /// Most rows in one request.
    pub batch_max: u32,
}

impl TensorSpec {
    /// Reads and checks `tensor.json`.
    pub fn read(path: &Path) -> Result<TensorSpec, Error> {
        let bytes = crate::models::read_small(path)?;
        let spec: TensorSpec = serde_json::from_slice(&bytes)
            .map_err(|e| Error::BadModelDir { path: path.into(), reason: format!("not a tensor spec: {e}") })?;
        spec.check().map_err(|reason| Error::BadModelDir { path: path.into(), reason })?;
        Ok(spec)
    }

    /// The limits every spec must keep: one FP32 input, batch-first shapes, bounded sizes.
    pub fn check(&self) -> Result<(), String> {
        if self.inputs.is_empty() || self.inputs.len() > INPUTS_MAX {
            return Err(format!("1 to {INPUTS_MAX} inputs are supported, the spec has {}", self.inputs.len()));
        }
        for (i, t) in self.inputs.iter().enumerate() {
            if self.inputs[..i].iter().any(|u| u.name == t.name) {
                return Err(format!("input `{}` is named twice", t.name));
            }
        }
        if self.outputs.is_empty() || self.outputs.len() > 8 {
            return Err(format!("1 to 8 outputs are supported, the spec has {}", self.outputs.len()));
        }
        if self.batch_max == 0 || self.batch_max > BATCH_MAX_LIMIT {
            return Err(format!("batch_max must be 1..={BATCH_MAX_LIMIT}, not {}", self.batch_max));
        }
        for t in self.inputs.iter().chain(&self.outputs) {
            if t.name.is_empty() || t.name.len() > TENSOR_NAME_BYTES_MAX {
                return Err(format!("tensor names must be 1..={TENSOR_NAME_BYTES_MAX} bytes"));
            }
            if t.datatype != FP32 {
                return Err(format!("`{}`: only {FP32} tensors are supported, not {}", t.name, t.datatype));
            }
            if t.shape.len() < 2 || t.shape.len() > RANK_MAX || t.shape[0] != -1 {
                return Err(format!("`{}`: the shape must be [-1, d1, ...] with at most {RANK_MAX} dims", t.name));
            }
            if t.shape[1..].iter().any(|&d| d <= 0 || d as usize > ROW_ELEMENTS_MAX) {
                return Err(format!("`{}`: every dimension after the batch must be positive", t.name));
            }
            if t.row_elements() > ROW_ELEMENTS_MAX {
                return Err(format!("`{}`: more than {ROW_ELEMENTS_MAX} values per row", t.name));
            }
            if let Some([lo, hi]) = t.range
                && !(lo.is_finite() && hi.is_finite() && lo <= hi)
            {
                return Err(format!("`{}`: the range must be two finite numbers, lowest first", t.name));
            }
        }
        if !self.labels.is_empty() && self.labels.len() != self.outputs[0].row_elements() {
            return Err(format!(
                "{} labels for {} values in the first output",
                self.labels.len(),
                self.outputs[0].row_elements()
            ));
        }
        Ok(())
    }
}

/// A row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// One inference call: a batch of rows.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRequest {
    pub inputs: Vec<Tensor>,
}

/// Its answer. `rows` is the number of inferences made, what a caller pays for.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorResponse {
    pub outputs: Vec<Tensor>,
    pub rows: u32,
}
