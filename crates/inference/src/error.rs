//! The one error type of this crate, classified so a server can map it to a status code
//! without matching every variant.

use std::path::PathBuf;

use plexus_types::Hash;

use crate::gguf::GgufError;

/// How a caller should treat an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong (too long, empty, bad parameter): the client must change it.
    BadRequest,
    /// The engine's queue is full: try again shortly.
    Busy,
    /// A model, file or feature does not exist here.
    NotFound,
    /// The model or engine failed: not the client's fault.
    Internal,
}

/// Everything that can go wrong while resolving, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- bad requests ----
    #[error("messages must not be empty")]
    EmptyMessages,
    #[error("input must not be empty")]
    EmptyInput,
    #[error("the prompt has {tokens} tokens but this model serves at most {max} per request")]
    PromptTooLong { tokens: usize, max: usize },
    #[error(
        "max_tokens is {requested} but at most {available} fit: this model's context is {context} \
         tokens per request and the prompt uses {prompt}"
    )]
    MaxTokensTooLarge { requested: u32, available: u32, context: u32, prompt: u32 },
    #[error("input {index} has {tokens} tokens but this model reads at most {max}: shorten or split it")]
    InputTooLong { index: usize, tokens: usize, max: usize },
    #[error("invalid parameter `{param}`: {reason}")]
    InvalidParam { param: &'static str, reason: String },
    #[error("the chat template failed to render: {0}")]
    Template(String),
    #[error("{what} is not supported by model `{model}`")]
    Unsupported { what: &'static str, model: String },
    #[error("input `{input}`: {reason}")]
    BadTensor { input: String, reason: String },
    /// The model computed NaN or an infinity for this input: the input is outside what the
    /// model can answer (not the engine's fault, and nothing to bill).
    #[error(
        "the model's output `{output}` is {value} for row {row}: this input is outside what the model \
         computes (check its units and scale against the preprocessing in the model's metadata, \
         GET /v2/models/<model>)"
    )]
    OutputNotFinite { output: String, row: usize, value: f32 },

    // ---- back-pressure ----
    #[error("the engine is busy: {queued} requests are already queued (limit {queue_max})")]
    Busy { queued: usize, queue_max: usize },

    // ---- models and files ----
    #[error("model `{0}` is not in the cache, not a known name and not a file")]
    ModelNotFound(String),
    #[error("no engine for {what}: plexus-inference was built without the `{feature}` feature")]
    BackendDisabled { what: &'static str, feature: &'static str },
    #[error("invalid GGUF file {path}")]
    Gguf {
        path: PathBuf,
        #[source]
        source: GgufError,
    },
    #[error("invalid model directory {path}: {reason}")]
    BadModelDir { path: PathBuf, reason: String },
    #[error("{path}: SHA-256 is {actual}, expected {expected}")]
    HashMismatch { path: PathBuf, expected: Hash, actual: Hash },
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fetching `{package}` failed: {reason}")]
    Fetch { package: String, reason: String },
    #[error("invalid manifest {path}: {reason}")]
    BadManifest { path: PathBuf, reason: String },

    // ---- engine ----
    #[error("loading model {path} failed: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("inference failed: {0}")]
    Engine(String),
    #[error("the context is full: no room for this sequence's next tokens")]
    ContextFull,
    #[error("the engine has stopped")]
    EngineStopped,
}

impl Error {
    /// How a server should answer this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::EmptyMessages
            | Error::EmptyInput
            | Error::PromptTooLong { .. }
            | Error::MaxTokensTooLarge { .. }
            | Error::InputTooLong { .. }
            | Error::InvalidParam { .. }
            | Error::Template(_)
            | Error::Unsupported { .. }
            | Error::BadTensor { .. }
            | Error::OutputNotFinite { .. } => ErrorKind::BadRequest,
            Error::Busy { .. } => ErrorKind::Busy,
            Error::ModelNotFound(_) | Error::BackendDisabled { .. } => ErrorKind::NotFound,
            Error::Gguf { .. }
            | Error::BadModelDir { .. }
            | Error::HashMismatch { .. }
            | Error::Io { .. }
            | Error::Fetch { .. }
            | Error::BadManifest { .. }
            | Error::Load { .. }
            | Error::Engine(_)
            | Error::ContextFull
            | Error::EngineStopped => ErrorKind::Internal,
        }
    }

    /// The request parameter at fault, if one is (OpenAI's `param` field).
    pub fn param(&self) -> Option<&'static str> {
        match self {
            Error::EmptyMessages => Some("messages"),
            Error::EmptyInput => Some("input"),
            Error::PromptTooLong { .. } => Some("messages"),
            Error::MaxTokensTooLarge { .. } => Some("max_tokens"),
            Error::InputTooLong { .. } => Some("input"),
            Error::InvalidParam { param, .. } => Some(param),
            Error::BadTensor { .. } | Error::OutputNotFinite { .. } => Some("inputs"),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn invalid(param: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidParam { param, reason: reason.into() }
    }
}
