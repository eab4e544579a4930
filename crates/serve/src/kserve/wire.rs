//! The bytes of an Open Inference Protocol request and answer: JSON tensors, and the binary
//! tensor extension that Triton's clients (`tritonclient`) use by default.
//!
//! With the extension, the `Inference-Header-Content-Length` header says how many bytes of the
//! body are the JSON header; the rest is the raw data of each input whose `parameters` give a
//! `binary_data_size`, in the order the inputs are listed (little-endian, row-major). An answer
//! carries an output the same way when the request asks for it (`binary_data: true` on the
//! output, or `binary_data_output: true` on the request).
//!
//! Every datatype of the protocol is read; the tensor models here compute in FP32, so a value
//! becomes an FP32 when that is honest: an integer only when FP32 holds it exactly (any INT8,
//! UINT8, INT16, UINT16; larger types up to 2^24 or when exact), an FP64 rounded to the nearest
//! FP32 (it must be finite there), an FP16 always. BOOL and BYTES are refused: no model here
//! takes them. Inputs are put in name order, so the request the provider hashes does not depend
//! on how the client listed them. Parameters the server does not honour are refused by name,
//! never ignored.

use axum::http::HeaderMap;
use plexus_inference::tensor::{FP32, INPUTS_MAX, RANK_MAX, Tensor, TensorRequest};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The header that gives the length of the JSON part of a binary request or answer.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Longest request id echoed back, in bytes.
const ID_BYTES_MAX: usize = 128;
/// Most values of one tensor.
const VALUES_MAX: u64 = 1 << 24;

/// The JSON header's length from a request's (or answer's) headers: `None` when the body is all
/// JSON.
pub fn header_length(headers: &HeaderMap) -> Result<Option<usize>, String> {
    let Some(v) = headers.get(HEADER_LENGTH) else { return Ok(None) };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| format!("`{HEADER_LENGTH}` must be a byte count"))
}

/// A datatype of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datatype {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    F32,
    F64,
    Bytes,
}

impl Datatype {
    pub fn parse(name: &str) -> Option<Datatype> {
        Some(match name {
            "BOOL" => Datatype::Bool,
            "UINT8" => Datatype::U8,
            "UINT16" => Datatype::U16,
            "UINT32" => Datatype::U32,
            "UINT64" => Datatype::U64,
            "INT8" => Datatype::I8,
            "INT16" => Datatype::I16,
            "INT32" => Datatype::I32,
            "INT64" => Datatype::I64,
            "FP16" => Datatype::F16,
            "FP32" => Datatype::F32,
            "FP64" => Datatype::F64,
            "BYTES" => Datatype::Bytes,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::U8 => "UINT8",
            Datatype::U16 => "UINT16",
            Datatype::U32 => "UINT32",
            Datatype::U64 => "UINT64",
            Datatype::I8 => "INT8",
            Datatype::I16 => "INT16",
            Datatype::I32 => "INT32",
            Datatype::I64 => "INT64",
            Datatype::F16 => "FP16",
            Datatype::F32 => "FP32",
            Datatype::F64 => "FP64",
            Datatype::Bytes => "BYTES",
        }
    }

    /// Bytes per value in binary data (BYTES has none: each element carries its length).
    fn size(self) -> usize {
        match self {
            Datatype::Bool | Datatype::U8 | Datatype::I8 | Datatype::Bytes => 1,
            Datatype::U16 | Datatype::I16 | Datatype::F16 => 2,
            Datatype::U32 | Datatype::I32 | Datatype::F32 => 4,
            Datatype::U64 | Datatype::I64 | Datatype::F64 => 8,
        }
    }

    /// The integer range of an integer type.
    fn range(self) -> Option<(i128, i128)> {
        Some(match self {
            Datatype::U8 => (0, u8::MAX.into()),
            Datatype::U16 => (0, u16::MAX.into()),
            Datatype::U32 => (0, u32::MAX.into()),
            Datatype::U64 => (0, u64::MAX.into()),
            Datatype::I8 => (i8::MIN.into(), i8::MAX.into()),
            Datatype::I16 => (i16::MIN.into(), i16::MAX.into()),
            Datatype::I32 => (i32::MIN.into(), i32::MAX.into()),
            Datatype::I64 => (i64::MIN.into(), i64::MAX.into()),
            _ => return None,
        })
    }

    /// One integer as the FP32 the model computes with, when FP32 holds it exactly.
    fn integer(self, v: i128) -> Result<f32, String> {
        let (lo, hi) = self.range().ok_or("not an integer type")?;
        if !(lo..=hi).contains(&v) {
            return Err(format!("{v} is outside {}", self.name()));
        }
        let f = v as f32;
        if f as i128 != v {
            return Err(format!("{} value {v} is not exactly an FP32, which the model computes with", self.name()));
        }
        Ok(f)
    }

    /// One float as an FP32: rounded to the nearest, and finite there.
    fn float(self, x: f64) -> Result<f32, String> {
        let f = match self {
            Datatype::F16 => half::f16::from_f64(x).to_f32(),
            _ => x as f32,
        };
        if !f.is_finite() {
            return Err(format!("{x} is not a finite {}", self.name()));
        }
        Ok(f)
    }

    /// The values of binary data of this type as FP32.
    fn decode(self, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), String> {
        let size = self.size();
        for chunk in bytes.chunks_exact(size) {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(chunk);
            let v = match self {
                Datatype::U8 => self.integer(chunk[0].into())?,
                Datatype::I8 => self.integer((chunk[0] as i8).into())?,
                Datatype::U16 => self.integer(u16::from_le_bytes([b[0], b[1]]).into())?,
                Datatype::I16 => self.integer(i16::from_le_bytes([b[0], b[1]]).into())?,
                Datatype::U32 => self.integer(u32::from_le_bytes([b[0], b[1], b[2], b[3]]).into())?,
                Datatype::I32 => self.integer(i32::from_le_bytes([b[0], b[1], b[2], b[3]]).into())?,
                Datatype::U64 => self.integer(u64::from_le_bytes(b).into())?,
                Datatype::I64 => self.integer(i64::from_le_bytes(b).into())?,
                Datatype::F16 => {
                    let f = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                    if !f.is_finite() {
                        return Err("an FP16 value is not finite".into());
                    }
                    f
                }
                Datatype::F32 => {
                    let f = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    if !f.is_finite() {
                        return Err("an FP32 value is not finite (NaN and infinities are not accepted)".into());
                    }
                    f
                }
                Datatype::F64 => self.float(f64::from_le_bytes(b))?,
                Datatype::Bool | Datatype::Bytes => return Err(format!("{} is not served", self.name())),
            };
            out.push(v);
        }
        Ok(())
    }

    /// One JSON number of this type as FP32.
    fn json_value(self, n: &serde_json::Number) -> Result<f32, String> {
        match self {
            Datatype::F16 | Datatype::F32 | Datatype::F64 => self.float(n.as_f64().ok_or("a number out of range")?),
            _ => {
                let v = n
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from))
                    .ok_or_else(|| format!("{n} is not an integer, which {} data must be", self.name()))?;
                self.integer(v)
            }
        }
    }
}

/// Flattens JSON `data` (flat or nested like the shape) into `out`, refusing anything but
/// numbers of the type and nesting deeper than a tensor can be.
pub(crate) fn flatten(v: &Value, kind: Datatype, depth: usize, out: &mut Vec<f32>, limit: usize) -> Result<(), String> {
    match v {
        Value::Number(n) => {
            if out.len() >= limit {
                return Err(format!("more values than the shape holds ({limit})"));
            }
            out.push(kind.json_value(n)?);
            Ok(())
        }
        Value::Array(items) if depth < RANK_MAX => {
            items.iter().try_for_each(|item| flatten(item, kind, depth + 1, out, limit))
        }
        Value::Array(_) => Err(format!("`data` is nested deeper than {RANK_MAX} levels")),
        Value::Null => Err("`data` holds null (NaN and infinities are not accepted)".into()),
        _ => Err("`data` must hold numbers only".into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InferBody {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<InputBody>,
    #[serde(default)]
    outputs: Option<Vec<OutputRequest>>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputBody {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputRequest {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// Which outputs the answer carries as binary data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BinaryOutputs {
    /// `binary_data_output` on the request: every output not named otherwise.
    pub all: bool,
    /// Outputs with their own `binary_data` flag.
    pub named: Vec<(String, bool)>,
}

impl BinaryOutputs {
    /// Whether output `name` goes out as binary data.
    pub fn of(&self, name: &str) -> bool {
        self.named.iter().find(|(n, _)| n == name).map_or(self.all, |(_, b)| *b)
    }

    pub fn any(&self) -> bool {
        self.all || self.named.iter().any(|(_, b)| *b)
    }
}

/// A parsed inference request.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub id: Option<String>,
    /// The inputs as FP32, in name order.
    pub request: TensorRequest,
    /// The outputs asked for (all when `None`).
    pub outputs: Option<Vec<String>>,
    pub binary: BinaryOutputs,
}

/// Refuses every parameter but those `allowed` (name, and the JSON type it must have).
fn check_parameters(
    params: Option<&Map<String, Value>>,
    whose: &str,
    allowed: &[(&str, fn(&Value) -> bool)],
) -> Result<(), String> {
    for (key, value) in params.into_iter().flatten() {
        match allowed.iter().find(|(name, _)| name == key) {
            Some((_, valid)) if valid(value) => {}
            Some(_) => return Err(format!("{whose}: parameter `{key}` has the wrong type")),
            None => {
                let key = &key[..key.floor_char_boundary(64)];
                let why = match key {
                    "classification" => "classification is not served; the labels are in the model's metadata",
                    "shared_memory_region" | "shared_memory_byte_size" | "shared_memory_offset" => {
                        "shared memory is not served over the network; send the data"
                    }
                    "sequence_id" | "sequence_start" | "sequence_end" => {
                        "sequences are not served (the models here keep no state)"
                    }
                    _ => "it is not served",
                };
                return Err(format!("{whose}: parameter `{key}`: {why}"));
            }
        }
    }
    Ok(())
}

/// Parses and bounds an inference request: `body` with its JSON header's length
/// ([`header_length`]) when it uses the binary tensor extension. A gateway counts rows and
/// hashes the request with this too, so it derives exactly what the provider will.
pub fn parse(body: &[u8], header_len: Option<usize>) -> Result<Parsed, String> {
    let (json_part, mut binary) = match header_len {
        None => (body, &[][..]),
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => return Err(format!("`{HEADER_LENGTH}` is {n}, past the body's {} bytes", body.len())),
    };
    let body: InferBody = serde_json::from_slice(json_part).map_err(|e| format!("invalid inference request: {e}"))?;
    if body.id.as_ref().is_some_and(|id| id.len() > ID_BYTES_MAX) {
        return Err(format!("`id` is longer than {ID_BYTES_MAX} bytes"));
    }
    check_parameters(body.parameters.as_ref(), "the request", &[("binary_data_output", Value::is_boolean)])?;
    if body.inputs.len() > INPUTS_MAX {
        return Err(format!("{} inputs; a tensor model here takes at most {INPUTS_MAX}", body.inputs.len()));
    }
    let mut inputs = Vec::with_capacity(body.inputs.len());
    for input in body.inputs {
        let name = input.name;
        let who = format!("input `{}`", &name[..name.floor_char_boundary(64)]);
        check_parameters(input.parameters.as_ref(), &who, &[("binary_data_size", Value::is_u64)])?;
        let kind = Datatype::parse(&input.datatype)
            .ok_or_else(|| format!("{who}: datatype `{}` is not one of the protocol's", input.datatype))?;
        if matches!(kind, Datatype::Bool | Datatype::Bytes) {
            return Err(format!("{who}: {} data is not served; the models here take numbers ({FP32})", kind.name()));
        }
        if input.shape.is_empty() || input.shape.len() > RANK_MAX {
            return Err(format!("{who}: a shape has 1 to {RANK_MAX} dimensions"));
        }
        let count = input
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&c| c <= VALUES_MAX)
            .ok_or_else(|| format!("{who}: shape {:?} is too large", input.shape))? as usize;
        let mut data = Vec::with_capacity(count);
        let size = input.parameters.as_ref().and_then(|p| p.get("binary_data_size")).and_then(Value::as_u64);
        match (size, &input.data) {
            (Some(_), Some(_)) => return Err(format!("{who}: both `data` and `binary_data_size`")),
            (None, None) => return Err(format!("{who}: no `data`")),
            (None, Some(v)) => {
                flatten(v, kind, 0, &mut data, count).map_err(|e| format!("{who}: {e}"))?;
                if data.len() != count {
                    return Err(format!("{who}: {} values for shape {:?}", data.len(), input.shape));
                }
            }
            (Some(size), None) => {
                let want = count * kind.size();
                if size != want as u64 {
                    return Err(format!(
                        "{who}: `binary_data_size` is {size} bytes; shape {:?} of {} is {want}",
                        input.shape,
                        kind.name()
                    ));
                }
                if binary.len() < want {
                    return Err(format!("{who}: the body ends {} bytes short of its data", want - binary.len()));
                }
                let (mine, rest) = binary.split_at(want);
                binary = rest;
                kind.decode(mine, &mut data).map_err(|e| format!("{who}: {e}"))?;
            }
        }
        let shape = input.shape.iter().map(|&d| d as usize).collect();
        inputs.push(Tensor { name, shape, data });
    }
    if !binary.is_empty() {
        return Err(format!("{} bytes of binary data after the last input's", binary.len()));
    }
    inputs.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = inputs.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(format!("input `{}` is given twice", w[0].name));
    }
    if let Some(t) = inputs.iter().find(|t| t.shape[0] != inputs[0].shape[0]) {
        return Err(format!(
            "input `{}` has {} rows, `{}` has {}",
            t.name, t.shape[0], inputs[0].name, inputs[0].shape[0]
        ));
    }
    let mut binary = BinaryOutputs {
        all: body
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_output"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        named: Vec::new(),
    };
    let outputs = match body.outputs {
        None => None,
        Some(list) => {
            let mut names = Vec::with_capacity(list.len());
            for o in list {
                let who = format!("output `{}`", &o.name[..o.name.floor_char_boundary(64)]);
                check_parameters(o.parameters.as_ref(), &who, &[("binary_data", Value::is_boolean)])?;
                if let Some(b) = o.parameters.as_ref().and_then(|p| p.get("binary_data")).and_then(Value::as_bool) {
                    binary.named.push((o.name.clone(), b));
                }
                names.push(o.name);
            }
            Some(names)
        }
    };
    Ok(Parsed { id: body.id, request: TensorRequest { inputs }, outputs, binary })
}

/// What a gateway sends a provider: a JSON body, or a binary one with its JSON header's length.
#[derive(Clone, Debug, PartialEq)]
pub enum ProviderBody {
    Json(Value),
    Binary { body: Vec<u8>, header_len: usize },
}

/// The request a gateway sends a provider for an app's `body`: the same inputs (binary data
/// passed on as it came), asking for every output as JSON, which the gateway reads to check the
/// attested output hash; the app's binary outputs are the gateway's to encode
/// ([`encode_answer`]). A JSON body stays a parsed value, so it is not read twice.
pub fn provider_request(body: &[u8], header_len: Option<usize>) -> Result<ProviderBody, String> {
    let (json_part, binary) = match header_len {
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => return Err(format!("`{HEADER_LENGTH}` is {n}, past the body's {} bytes", body.len())),
        None => (body, &[][..]),
    };
    let mut header: Value = serde_json::from_slice(json_part).map_err(|e| format!("invalid inference request: {e}"))?;
    // Only what `parse` would read is touched (never by indexing, which panics on a body that
    // is not an object).
    let drop_flag = |holder: &mut Value, key: &str| {
        if let Some(p) = holder.get_mut("parameters").and_then(Value::as_object_mut) {
            p.remove(key);
        }
    };
    drop_flag(&mut header, "binary_data_output");
    if let Some(outputs) = header.get_mut("outputs").and_then(Value::as_array_mut) {
        for o in outputs {
            drop_flag(o, "binary_data");
        }
    }
    if header_len.is_none() {
        return Ok(ProviderBody::Json(header));
    }
    let mut out = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let header_len = out.len();
    out.extend_from_slice(binary);
    Ok(ProviderBody::Binary { body: out, header_len })
}

/// [`provider_request`] as bytes: the body and its JSON header's length when it has binary data.
pub fn for_provider(body: &[u8], header_len: Option<usize>) -> Result<(Vec<u8>, Option<usize>), String> {
    match provider_request(body, header_len)? {
        ProviderBody::Json(v) => serde_json::to_vec(&v).map(|b| (b, None)).map_err(|e| e.to_string()),
        ProviderBody::Binary { body, header_len } => Ok((body, Some(header_len))),
    }
}

/// An answer as the client asked for it: `answer` holds every output as flat FP32 JSON `data`
/// (as this server writes them, and as a gateway has checked them); those that `binary` names
/// move to binary data after the JSON. Returns the body and, when any output is binary, the
/// JSON header's length for [`HEADER_LENGTH`].
pub fn encode_answer(mut answer: Value, binary: &BinaryOutputs) -> Result<(Vec<u8>, Option<usize>), String> {
    if !binary.any() {
        return Ok((answer.to_string().into_bytes(), None));
    }
    let mut data = Vec::new();
    for o in answer.get_mut("outputs").and_then(Value::as_array_mut).into_iter().flatten() {
        if !o["name"].as_str().is_some_and(|n| binary.of(n)) {
            continue;
        }
        let values = o.as_object_mut().and_then(|m| m.remove("data")).unwrap_or(Value::Null);
        let values = values.as_array().ok_or("an output without flat data")?;
        let start = data.len();
        for v in values {
            let x = v.as_f64().ok_or("an output value that is not a number")? as f32;
            data.extend_from_slice(&x.to_le_bytes());
        }
        // `o` is an object (it has a name); its parameters are made one whatever a provider
        // put there, so indexing cannot panic.
        o["datatype"] = json!(FP32);
        if !o["parameters"].is_object() {
            o["parameters"] = json!({});
        }
        o["parameters"]["binary_data_size"] = json!(data.len() - start);
    }
    let mut body = answer.to_string().into_bytes();
    let len = body.len();
    body.extend_from_slice(&data);
    Ok((body, Some(len)))
}

/// The content type and header-length header of an answer [`encode_answer`] made.
pub fn content_headers(header_len: Option<usize>) -> Vec<(&'static str, String)> {
    match header_len {
        None => vec![("content-type", "application/json".into())],
        Some(n) => vec![("content-type", "application/octet-stream".into()), (HEADER_LENGTH, n.to_string())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary_body(header: Value, data: &[u8]) -> (Vec<u8>, Option<usize>) {
        let mut body = header.to_string().into_bytes();
        let len = body.len();
        body.extend_from_slice(data);
        (body, Some(len))
    }

    #[test]
    fn nested_flat_and_binary_data_parse_alike_and_bad_bodies_get_reasons() {
        let flat = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#;
        let nested = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}]}"#;
        let a = parse(flat, None).unwrap();
        assert_eq!(a, parse(nested, None).unwrap());
        assert_eq!(a.request.inputs[0].data, vec![1.0, 2.0, 3.0, 4.0]);
        let bytes: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let (body, len) = binary_body(
            json!({"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","parameters":{"binary_data_size":16}}]}),
            &bytes,
        );
        assert_eq!(parse(&body, len).unwrap().request, a.request);
        for (body, want) in [
            (&br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"INT8","data":[1,300]}]}"#[..], "outside INT8"),
            (br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"INT32","data":[1,2.5]}]}"#, "not an integer"),
            (br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"INT32","data":[1,16777217]}]}"#, "not exactly an FP32"),
            (br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"BOOL","data":[true,false]}]}"#, "BOOL"),
            (br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP8","data":[1,2]}]}"#, "datatype"),
            (br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,null]}]}"#, "null"),
            (br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,"2"]}]}"#, "numbers only"),
            (br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2,3]}]}"#, "more values"),
            (br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1]}]}"#, "1 values"),
            (br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,1e39]}]}"#, "finite FP32"),
            (br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP16","data":[1,70000]}]}"#, "finite FP16"),
            (br#"{"inputs":[{"name":"x","shape":[4294967296,4294967296],"datatype":"FP32","data":[]}]}"#, "too large"),
            (br#"{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[[[[[1]]]]]}]}"#, "deeper"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]},{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#, "twice"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]},{"name":"y","shape":[2],"datatype":"FP32","data":[1,2]}]}"#, "rows"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#, "no `data`"),
            (br#"{"inputs":[],"parameters":{"sequence_id":3}}"#, "sequences"),
            (br#"{"inputs":[],"parameters":{"binary_data_output":1}}"#, "wrong type"),
            (br#"{"inputs":[],"outputs":[{"name":"y","parameters":{"classification":2}}]}"#, "classification"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"parameters":{"shared_memory_region":"r"}}]}"#, "shared memory"),
            (br#"{"inputs":[],"bogus":1}"#, "invalid inference request"),
            (b"not json", "invalid inference request"),
        ] {
            let e = parse(body, None).expect_err(want);
            assert!(e.contains(want), "{want}: {e}");
        }
        // Binary data that does not add up.
        let header = |size: u64| json!({"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":size}}]});
        for (body, want) in [
            (binary_body(header(8), &[0; 4]), "short"),
            (binary_body(header(8), &[0; 12]), "after the last"),
            (binary_body(header(6), &[0; 6]), "binary_data_size"),
            (binary_body(header(8), &[0, 0, 0xc0, 0x7f, 0, 0, 0, 0]), "not finite"),
        ] {
            let e = parse(&body.0, body.1).expect_err(want);
            assert!(e.contains(want), "{want}: {e}");
        }
        assert!(parse(b"{}", Some(3)).unwrap_err().contains("past the body"));
    }

    #[test]
    fn every_numeric_datatype_reads_to_the_same_fp32_when_exact() {
        let want = vec![0.0f32, 1.0, 100.0, 7.0];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("UINT8", vec![0, 1, 100, 7]),
            ("INT8", vec![0, 1, 100, 7]),
            ("UINT16", [0u16, 1, 100, 7].iter().flat_map(|v| v.to_le_bytes()).collect()),
            ("INT16", [0i16, 1, 100, 7].iter().flat_map(|v| v.to_le_bytes()).collect()),
            ("UINT32", [0u32, 1, 100, 7].iter().flat_map(|v| v.to_le_bytes()).collect()),
            ("INT32", [0i32, 1, 100, 7].iter().flat_map(|v| v.to_le_bytes()).collect()),
            ("UINT64", [0u64, 1, 100, 7].iter().flat_map(|v| v.to_le_bytes()).collect()),
            ("INT64", [0i64, 1, 100, 7].iter().flat_map(|v| v.to_le_bytes()).collect()),
            ("FP16", [0.0f32, 1.0, 100.0, 7.0].iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()),
            ("FP32", [0.0f32, 1.0, 100.0, 7.0].iter().flat_map(|v| v.to_le_bytes()).collect()),
            ("FP64", [0.0f64, 1.0, 100.0, 7.0].iter().flat_map(|v| v.to_le_bytes()).collect()),
        ];
        for (datatype, bytes) in cases {
            let size = bytes.len();
            let (body, len) = binary_body(
                json!({"inputs":[{"name":"x","shape":[2,2],"datatype":datatype,"parameters":{"binary_data_size":size}}]}),
                &bytes,
            );
            assert_eq!(parse(&body, len).unwrap().request.inputs[0].data, want, "{datatype} binary");
            let json_body = json!({"inputs":[{"name":"x","shape":[2,2],"datatype":datatype,"data":[0, 1, 100, 7]}]});
            assert_eq!(
                parse(json_body.to_string().as_bytes(), None).unwrap().request.inputs[0].data,
                want,
                "{datatype} JSON"
            );
        }
        // -1 is an INT8 (0xff), never a UINT8 255; FP64 rounds to the nearest FP32.
        let (body, len) = binary_body(
            json!({"inputs":[{"name":"x","shape":[1],"datatype":"INT8","parameters":{"binary_data_size":1}}]}),
            &[0xff],
        );
        assert_eq!(parse(&body, len).unwrap().request.inputs[0].data, vec![-1.0]);
        let (body, len) = binary_body(
            json!({"inputs":[{"name":"x","shape":[1],"datatype":"FP64","parameters":{"binary_data_size":8}}]}),
            &0.1f64.to_le_bytes(),
        );
        assert_eq!(parse(&body, len).unwrap().request.inputs[0].data, vec![0.1f32]);
        // The largest integers FP32 holds exactly, and the first it does not.
        let int64 = |v: i64| {
            binary_body(
                json!({"inputs":[{"name":"x","shape":[1],"datatype":"INT64","parameters":{"binary_data_size":8}}]}),
                &v.to_le_bytes(),
            )
        };
        let (body, len) = int64(1 << 40);
        assert_eq!(parse(&body, len).unwrap().request.inputs[0].data, vec![(1u64 << 40) as f32]);
        let (body, len) = int64((1 << 24) + 1);
        assert!(parse(&body, len).unwrap_err().contains("not exactly an FP32"));
        let (body, len) = int64(i64::MAX);
        assert!(parse(&body, len).unwrap_err().contains("not exactly an FP32"));
    }

    #[test]
    fn inputs_are_taken_in_name_order_and_mixed_json_and_binary() {
        let (body, len) = binary_body(
            json!({"inputs":[
                {"name":"b","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}},
                {"name":"a","shape":[1,1],"datatype":"FP32","data":[5]},
                {"name":"c","shape":[1,1],"datatype":"INT16","parameters":{"binary_data_size":2}}
            ]}),
            &[1.0f32.to_le_bytes(), 2.0f32.to_le_bytes()]
                .concat()
                .into_iter()
                .chain(3i16.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        let p = parse(&body, len).unwrap();
        let got: Vec<(&str, &[f32])> = p.request.inputs.iter().map(|t| (t.name.as_str(), &t.data[..])).collect();
        assert_eq!(got, [("a", &[5.0][..]), ("b", &[1.0, 2.0][..]), ("c", &[3.0][..])]);
    }

    #[test]
    fn binary_outputs_are_what_the_request_asks_and_encode_after_the_json() {
        let p = |b: &str| parse(b.as_bytes(), None).unwrap().binary;
        let input = r#""inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]"#;
        assert!(!p(&format!("{{{input}}}")).any());
        let all = p(&format!(r#"{{{input},"parameters":{{"binary_data_output":true}}}}"#));
        assert!(all.of("y") && all.of("z"));
        let one = p(&format!(
            r#"{{{input},"parameters":{{"binary_data_output":true}},"outputs":[{{"name":"y","parameters":{{"binary_data":false}}}},{{"name":"z"}}]}}"#
        ));
        assert!(!one.of("y") && one.of("z"));
        let answer = json!({"model_name":"m","outputs":[
            {"name":"y","shape":[1,2],"datatype":"FP32","data":[0.25,-1.5]},
            {"name":"z","shape":[1,1],"datatype":"FP32","data":[3.0]}]});
        let (body, len) = encode_answer(answer.clone(), &one).unwrap();
        let len = len.unwrap();
        let header: Value = serde_json::from_slice(&body[..len]).unwrap();
        assert_eq!(header["outputs"][0]["data"], json!([0.25, -1.5]), "y stays JSON");
        assert_eq!(header["outputs"][1]["parameters"]["binary_data_size"], 4);
        assert!(header["outputs"][1].get("data").is_none());
        assert_eq!(&body[len..], &3.0f32.to_le_bytes());
        let odd =
            json!({"outputs":[{"name":"z","shape":[1,1],"datatype":"FP32","data":[3.0],"parameters":5}], "extra": [1]});
        let (body, len) = encode_answer(odd, &one).unwrap();
        assert_eq!(&body[len.unwrap()..], &3.0f32.to_le_bytes());
        assert!(encode_answer(json!([1, 2]), &one).is_ok(), "not an object: nothing to move, no panic");
        let (plain, none) = encode_answer(answer.clone(), &BinaryOutputs::default()).unwrap();
        assert_eq!((serde_json::from_slice::<Value>(&plain).unwrap(), none), (answer, None));
    }

    #[test]
    fn a_gateway_asks_the_provider_for_json_outputs_and_keeps_the_inputs() {
        let (body, len) = binary_body(
            json!({"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}],
                   "parameters":{"binary_data_output":true},"outputs":[{"name":"y","parameters":{"binary_data":true}}]}),
            &[1.0f32.to_le_bytes(), 2.0f32.to_le_bytes()].concat(),
        );
        let app = parse(&body, len).unwrap();
        let (sent, sent_len) = for_provider(&body, len).unwrap();
        let provider = parse(&sent, sent_len).unwrap();
        assert_eq!(provider.request, app.request);
        assert_eq!(provider.outputs, app.outputs);
        assert!(app.binary.any() && !provider.binary.any());
        let (json_only, none) = for_provider(br#"{"inputs":[]}"#, None).unwrap();
        assert_eq!((json_only, none), (br#"{"inputs":[]}"#.to_vec(), None));
    }
}
