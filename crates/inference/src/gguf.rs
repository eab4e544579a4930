//! A bounded reader for GGUF headers: checks a file before llama.cpp sees it and pulls out
//! what a manifest needs (architecture, context length, quantisation, chat template and a hash
//! of the tokenizer).
//!
//! llama.cpp trusts the sizes in a GGUF header and aborts the process on some malformed files;
//! this reader gives a clear error instead. Every count and length read from the file is checked
//! against a limit before anything is allocated, and every tensor must lie inside the file.
//!
//! It does not read tensor data and does not interpret architecture-specific keys beyond
//! `<arch>.context_length`.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;

use commonware_cryptography::{Hasher as _, Sha256};
use plexus_types::Hash;

/// `GGUF` read as a little-endian u32.
const MAGIC: [u8; 4] = *b"GGUF";
/// Most metadata entries in one file.
pub const METADATA_ENTRIES_MAX: u64 = 1 << 16;
/// Most tensors in one file.
pub const TENSORS_MAX: u64 = 1 << 20;
/// Longest key or string value, in bytes (chat templates are the longest strings seen, ~10 KiB).
pub const STRING_BYTES_MAX: u64 = 1 << 24;
/// Most elements in one metadata array (vocabularies and merges are the largest, ~300k).
pub const ARRAY_ITEMS_MAX: u64 = 1 << 24;
/// Most bytes of metadata kept in memory, all entries together.
pub const METADATA_BYTES_MAX: u64 = 1 << 28;
/// Most dimensions of one tensor.
const TENSOR_DIMS_MAX: u32 = 4;

/// What is wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file (magic is {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (expected 2 or 3)")]
    Version(u32),
    #[error("{what} is {value}, above the limit of {max}")]
    TooLarge { what: &'static str, value: u64, max: u64 },
    #[error("metadata value type {0} is unknown")]
    ValueType(u32),
    #[error("metadata key `{0}` is not UTF-8")]
    KeyUtf8(String),
    #[error("metadata key `{0}` appears twice")]
    DuplicateKey(String),
    #[error("metadata `{key}` should be {expected}")]
    WrongType { key: String, expected: &'static str },
    #[error("metadata `{0}` is missing")]
    Missing(String),
    #[error("tensor `{name}` has unknown type {ty}")]
    TensorType { name: String, ty: u32 },
    #[error("tensor `{name}` is malformed: {reason}")]
    Tensor { name: String, reason: String },
    #[error("the file is truncated: tensor `{name}` ends at byte {end} but the file has {len}")]
    Truncated { name: String, end: u64, len: u64 },
    #[error("the file ended inside the header")]
    Eof,
    #[error("reading the file failed")]
    Io(#[source] std::io::Error),
}

/// One metadata value, mirroring GGUF's value types.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    /// ggml type id (e.g. 3 = Q4_1).
    pub ggml_type: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Size in bytes, from the type's block layout.
    pub bytes: u64,
}

/// A parsed GGUF header: the raw metadata and tensor table.
#[derive(Clone, Debug)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
    /// File length in bytes.
    pub file_bytes: u64,
    /// SHA-256 over the raw bytes of every `tokenizer.*` entry except the chat template, in
    /// file order: the identity of the tokenizer for the model manifest.
    pub tokenizer_sha256: Hash,
}

/// The facts about a GGUF model that Plexus uses, taken from [`GgufFile::metadata`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelMetadata {
    /// `general.architecture`, e.g. `llama`.
    pub architecture: String,
    /// `general.name`, if present.
    pub name: Option<String>,
    /// `<arch>.context_length`: the context the model was trained for.
    pub context_length: u32,
    /// `general.file_type` (llama_ftype), if present.
    pub file_type: Option<u32>,
    /// A label for the quantisation, e.g. `Q4_1`.
    pub quantization: String,
    /// `tokenizer.chat_template`, if present.
    pub chat_template: Option<String>,
    /// `tokenizer.ggml.model`, e.g. `gpt2` or `llama`.
    pub tokenizer_model: String,
    /// Number of entries in `tokenizer.ggml.tokens`.
    pub vocab_size: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub tokenizer_sha256: Hash,
}

impl GgufFile {
    /// Reads and checks the header of the GGUF file at `path`.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let file = std::fs::File::open(path).map_err(GgufError::Io)?;
        let file_bytes = file.metadata().map_err(GgufError::Io)?.len();
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let parsed = Self::read(&mut reader, file_bytes)?;
        Ok(parsed)
    }

    /// Parses a GGUF header from `reader`, whose total length is `file_bytes`.
    pub fn read(reader: &mut impl Read, file_bytes: u64) -> Result<GgufFile, GgufError> {
        let mut r = Reader { inner: reader, pos: 0, budget: METADATA_BYTES_MAX, record: None };
        let magic: [u8; 4] = r.array()?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let tensor_count = limit("tensor count", r.u64()?, TENSORS_MAX)?;
        let kv_count = limit("metadata entry count", r.u64()?, METADATA_ENTRIES_MAX)?;

        let mut metadata = BTreeMap::new();
        let mut tokenizer = Sha256::default();
        for _ in 0..kv_count {
            let key_start = r.pos;
            r.record = Some(Vec::new());
            let key = r.string("metadata key")?;
            let ty = r.u32()?;
            let value = r.value(ty, 0)?;
            let raw = r.record.take().unwrap_or_default();
            debug_assert_eq!(raw.len() as u64, r.pos - key_start);
            if key.starts_with("tokenizer.") && key != "tokenizer.chat_template" {
                tokenizer.update(&raw);
            }
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::DuplicateKey(key));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(GgufError::WrongType {
                        key: "general.alignment".into(),
                        expected: "a power of two up to 1 MiB",
                    });
                }
            },
        };

        let mut tensors = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = r.string("tensor name")?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > TENSOR_DIMS_MAX {
                return Err(GgufError::Tensor { name, reason: format!("{n_dims} dimensions") });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64()?);
            }
            let ggml_type = r.u32()?;
            let offset = r.u64()?;
            let bytes = tensor_bytes(&name, &dims, ggml_type)?;
            if offset % alignment != 0 {
                return Err(GgufError::Tensor { name, reason: format!("offset {offset} is not aligned") });
            }
            tensors.push(TensorInfo { name, dims, ggml_type, offset, bytes });
        }

        let data_offset = r.pos.div_ceil(alignment) * alignment;
        for t in &tensors {
            let end = data_offset.checked_add(t.offset).and_then(|s| s.checked_add(t.bytes));
            match end {
                Some(end) if end <= file_bytes => {}
                end => {
                    return Err(GgufError::Truncated {
                        name: t.name.clone(),
                        end: end.unwrap_or(u64::MAX),
                        len: file_bytes,
                    });
                }
            }
        }

        let (_, digest) = tokenizer.finalize();
        Ok(GgufFile { version, metadata, tensors, data_offset, file_bytes, tokenizer_sha256: Hash(digest) })
    }

    fn str_key(&self, key: &str) -> Result<Option<String>, GgufError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(GgufError::WrongType { key: key.into(), expected: "a string" }),
        }
    }

    fn u32_key(&self, key: &str) -> Result<Option<u32>, GgufError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| GgufError::WrongType { key: key.into(), expected: "an integer" }),
        }
    }

    /// The facts Plexus needs, with clear errors when one is missing or mistyped.
    pub fn model_metadata(&self) -> Result<ModelMetadata, GgufError> {
        let architecture =
            self.str_key("general.architecture")?.ok_or_else(|| GgufError::Missing("general.architecture".into()))?;
        let ctx_key = format!("{architecture}.context_length");
        let context_length = self.u32_key(&ctx_key)?.ok_or(GgufError::Missing(ctx_key))?;
        let file_type = self.u32_key("general.file_type")?;
        let quantization = match file_type {
            Some(ft) => ftype_name(ft).map(str::to_owned).unwrap_or_else(|| format!("ftype{ft}")),
            None => self.dominant_tensor_type(),
        };
        let vocab_size = match self.metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(items)) => items.len(),
            Some(_) => {
                return Err(GgufError::WrongType {
                    key: "tokenizer.ggml.tokens".into(),
                    expected: "an array of strings",
                });
            }
            None => return Err(GgufError::Missing("tokenizer.ggml.tokens".into())),
        };
        let tokenizer_model =
            self.str_key("tokenizer.ggml.model")?.ok_or_else(|| GgufError::Missing("tokenizer.ggml.model".into()))?;
        Ok(ModelMetadata {
            architecture,
            name: self.str_key("general.name")?,
            context_length,
            file_type,
            quantization,
            chat_template: self.str_key("tokenizer.chat_template")?,
            tokenizer_model,
            vocab_size,
            bos_token_id: self.u32_key("tokenizer.ggml.bos_token_id")?,
            eos_token_id: self.u32_key("tokenizer.ggml.eos_token_id")?,
            tokenizer_sha256: self.tokenizer_sha256,
        })
    }

    /// The quantisation label of the type holding most weight bytes (for files without
    /// `general.file_type`).
    fn dominant_tensor_type(&self) -> String {
        let mut bytes_by_type: BTreeMap<u32, u64> = BTreeMap::new();
        for t in &self.tensors {
            *bytes_by_type.entry(t.ggml_type).or_default() += t.bytes;
        }
        bytes_by_type
            .into_iter()
            .max_by_key(|&(_, b)| b)
            .and_then(|(ty, _)| GGML_TYPES.get(ty as usize).map(|t| t.0.to_owned()))
            .unwrap_or_else(|| "unknown".to_owned())
    }
}

fn limit(what: &'static str, value: u64, max: u64) -> Result<u64, GgufError> {
    if value > max {
        return Err(GgufError::TooLarge { what, value, max });
    }
    Ok(value)
}

/// A reader that counts bytes, charges allocations against a budget and can record the raw
/// bytes of the entry being read.
struct Reader<'a, R> {
    inner: &'a mut R,
    pos: u64,
    budget: u64,
    record: Option<Vec<u8>>,
}

impl<R: Read> Reader<'_, R> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => GgufError::Eof,
            _ => GgufError::Io(e),
        })?;
        self.pos += buf.len() as u64;
        if let Some(rec) = &mut self.record {
            rec.extend_from_slice(buf);
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        self.fill(&mut buf)?;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn charge(&mut self, bytes: u64) -> Result<(), GgufError> {
        if bytes > self.budget {
            return Err(GgufError::TooLarge {
                what: "metadata size in bytes",
                value: METADATA_BYTES_MAX - self.budget + bytes,
                max: METADATA_BYTES_MAX,
            });
        }
        self.budget -= bytes;
        Ok(())
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let len = limit(what, self.u64()?, STRING_BYTES_MAX)?;
        self.charge(len)?;
        let mut buf = vec![0u8; len as usize];
        self.fill(&mut buf)?;
        String::from_utf8(buf).map_err(|e| GgufError::KeyUtf8(String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<Value, GgufError> {
        // Fixed-size values are charged a few bytes each so huge arrays of them are bounded too.
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.array()?)),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match u8::from_le_bytes(self.array()?) {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => return Err(GgufError::ValueType(0x100 + u32::from(other))),
            },
            8 => Value::String(self.string("string length")?),
            9 => {
                if depth > 0 {
                    return Err(GgufError::ValueType(9));
                }
                let item_ty = self.u32()?;
                let count = limit("array length", self.u64()?, ARRAY_ITEMS_MAX)?;
                self.charge(count * 16)?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(item_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(GgufError::ValueType(other)),
        })
    }
}

/// ggml tensor types by id: (name, elements per block, bytes per block). Ids without an entry
/// (removed types) are `("", 0, 0)`.
const GGML_TYPES: &[(&str, u64, u64)] = &[
    ("F32", 1, 4),
    ("F16", 1, 2),
    ("Q4_0", 32, 18),
    ("Q4_1", 32, 20),
    ("", 0, 0),
    ("", 0, 0),
    ("Q5_0", 32, 22),
    ("Q5_1", 32, 24),
    ("Q8_0", 32, 34),
    ("Q8_1", 32, 36),
    ("Q2_K", 256, 84),
    ("Q3_K", 256, 110),
    ("Q4_K", 256, 144),
    ("Q5_K", 256, 176),
    ("Q6_K", 256, 210),
    ("Q8_K", 256, 292),
    ("IQ2_XXS", 256, 66),
    ("IQ2_XS", 256, 74),
    ("IQ3_XXS", 256, 98),
    ("IQ1_S", 256, 50),
    ("IQ4_NL", 32, 18),
    ("IQ3_S", 256, 110),
    ("IQ2_S", 256, 82),
    ("IQ4_XS", 256, 136),
    ("I8", 1, 1),
    ("I16", 1, 2),
    ("I32", 1, 4),
    ("I64", 1, 8),
    ("F64", 1, 8),
    ("IQ1_M", 256, 56),
    ("BF16", 1, 2),
    ("", 0, 0),
    ("", 0, 0),
    ("", 0, 0),
    ("TQ1_0", 256, 54),
    ("TQ2_0", 256, 66),
    ("", 0, 0),
    ("", 0, 0),
    ("", 0, 0),
    ("MXFP4", 32, 17),
];

fn tensor_bytes(name: &str, dims: &[u64], ty: u32) -> Result<u64, GgufError> {
    let &(_, block, block_bytes) = GGML_TYPES
        .get(ty as usize)
        .filter(|t| t.1 > 0)
        .ok_or_else(|| GgufError::TensorType { name: name.into(), ty })?;
    let bad = |reason: &str| GgufError::Tensor { name: name.into(), reason: reason.into() };
    let elements =
        dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(|| bad("element count overflows"))?;
    let row = dims[0];
    if !row.is_multiple_of(block) {
        return Err(bad("first dimension is not a multiple of the block size"));
    }
    (elements / block).checked_mul(block_bytes).ok_or_else(|| bad("byte size overflows"))
}

/// Quantisation label of a `general.file_type` (llama_ftype) value.
pub fn ftype_name(ftype: u32) -> Option<&'static str> {
    Some(match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4",
        _ => return None,
    })
}

/// Writes GGUF files for tests: a tiny, valid header-and-data layout.
#[cfg(test)]
pub(crate) mod write {
    use super::Value;

    pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    pub(crate) fn value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Value::String(s) => {
                out.extend(8u32.to_le_bytes());
                string(out, s);
            }
            Value::Array(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    string(out, i.as_str().expect("test arrays hold strings"));
                }
            }
            other => panic!("test writer does not handle {other:?}"),
        }
    }

    /// A GGUF v3 file with the given metadata and one F32 tensor of `n` elements.
    pub(crate) fn file(kvs: &[(&str, Value)], n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend(1u64.to_le_bytes());
        out.extend((kvs.len() as u64).to_le_bytes());
        for (k, v) in kvs {
            string(&mut out, k);
            value(&mut out, v);
        }
        string(&mut out, "w");
        out.extend(1u32.to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        while out.len() % 32 != 0 {
            out.push(0);
        }
        out.extend(std::iter::repeat_n(0u8, (n * 4) as usize));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Vec<u8> {
        write::file(
            &[
                ("general.architecture", Value::String("llama".into())),
                ("llama.context_length", Value::U32(2048)),
                ("general.file_type", Value::U32(3)),
                ("tokenizer.ggml.model", Value::String("gpt2".into())),
                ("tokenizer.ggml.tokens", Value::Array(vec![Value::String("a".into()), Value::String("b".into())])),
                ("tokenizer.chat_template", Value::String("{{ x }}".into())),
            ],
            8,
        )
    }

    fn parse(bytes: &[u8]) -> Result<GgufFile, GgufError> {
        GgufFile::read(&mut &bytes[..], bytes.len() as u64)
    }

    #[test]
    fn reads_metadata() {
        let file = parse(&tiny()).unwrap();
        let meta = file.model_metadata().unwrap();
        assert_eq!(meta.architecture, "llama");
        assert_eq!(meta.context_length, 2048);
        assert_eq!(meta.quantization, "Q4_1");
        assert_eq!(meta.vocab_size, 2);
        assert_eq!(meta.chat_template.as_deref(), Some("{{ x }}"));
        assert_eq!(file.tensors.len(), 1);
        assert_eq!(file.tensors[0].bytes, 32);
        assert_eq!(file.data_offset % 32, 0);
    }

    #[test]
    fn tokenizer_hash_ignores_template_and_other_keys_but_not_vocab() {
        let base = parse(&tiny()).unwrap().tokenizer_sha256;
        let mut other_template = tiny();
        let at = other_template.windows(7).position(|w| w == b"{{ x }}").unwrap();
        other_template[at + 3] = b'y';
        assert_eq!(parse(&other_template).unwrap().tokenizer_sha256, base);
        let mut other_vocab = tiny();
        let pos = other_vocab.iter().rposition(|&b| b == b'b').unwrap();
        other_vocab[pos] = b'c';
        assert_ne!(parse(&other_vocab).unwrap().tokenizer_sha256, base);
    }

    #[test]
    fn rejects_bad_files_with_clear_errors() {
        let good = tiny();
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(matches!(parse(&bad_magic), Err(GgufError::BadMagic(_))));

        let mut bad_version = good.clone();
        bad_version[4] = 9;
        assert!(matches!(parse(&bad_version), Err(GgufError::Version(9))));

        let mut huge_count = good.clone();
        huge_count[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse(&huge_count), Err(GgufError::TooLarge { .. })));

        let truncated = &good[..good.len() - 4];
        let err = parse(truncated).unwrap_err();
        assert!(matches!(err, GgufError::Truncated { end, len, .. } if end == len + 4), "{err}");

        assert!(matches!(parse(&good[..30]), Err(GgufError::Eof)));
        assert!(matches!(parse(b""), Err(GgufError::Eof)));

        // A string length beyond the limit is refused before allocating.
        let mut long_key = good.clone();
        long_key[24..32].copy_from_slice(&(STRING_BYTES_MAX + 1).to_le_bytes());
        assert!(matches!(parse(&long_key), Err(GgufError::TooLarge { .. })));
    }

    #[test]
    fn missing_keys_are_named() {
        let bytes = write::file(&[("general.architecture", Value::String("llama".into()))], 8);
        let err = parse(&bytes).unwrap().model_metadata().unwrap_err();
        assert_eq!(err.to_string(), "metadata `llama.context_length` is missing");
    }
}
