//! The hook through which paid inference meters requests: admit or refuse before any work,
//! stop a generation whose credit runs out, and record what was delivered with its signed
//! attestation. `plexus serve` runs without a chain and uses [`NoMetering`].

use std::any::Any;

use axum::http::HeaderMap;
use plexus_types::{Attestation, ModelId, Sig};
use serde::Serialize;

use crate::ServeError;

/// Which API a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// A tensor model (Open Inference Protocol): `max_tokens` is the request's row count, and
    /// each row delivered counts as one completion "token" (one inference).
    Infer,
}

/// What a request will cost at most, known before any work is done.
#[derive(Debug)]
pub struct MeterRequest<'a> {
    /// Unique per server process; also in the response id.
    pub request_id: u64,
    pub model: ModelId,
    pub endpoint: Endpoint,
    /// The HTTP request's headers (where a gateway puts its session and signature).
    pub headers: &'a HeaderMap,
    /// Prompt tokens. For embeddings, an upper bound (at most what the model reads per input).
    pub prompt_tokens: u32,
    /// Most tokens the request may generate (0 for embeddings).
    pub max_tokens: u32,
}

/// A metering implementation's handle on one admitted request.
#[derive(Debug)]
pub struct MeterTicket {
    /// The [`MeterRequest::request_id`] it was issued for.
    pub request_id: u64,
    /// Whatever the implementation needs to find its session again.
    pub data: Option<Box<dyn AnyDebug>>,
}

/// `Any + Debug + Send + Sync`, so tickets can carry implementation data and still print.
pub trait AnyDebug: Any + std::fmt::Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any + std::fmt::Debug + Send + Sync> AnyDebug for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Tokens delivered by one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens served from the prefix cache (already counted in `prompt_tokens`).
    pub cached_tokens: u32,
    /// False when the request ended early: client gone, metering refused, or engine error.
    pub complete: bool,
}

/// Admission, credit checks and accounting for paid inference.
pub trait Metering: Send + Sync + 'static {
    /// Called before any work. An error refuses the request with that error.
    fn begin(&self, request: &MeterRequest<'_>) -> Result<MeterTicket, ServeError>;

    /// Called every few output tokens during generation. An error stops generation and is sent
    /// to the client (e.g. credit exhausted).
    fn progress(&self, ticket: &MeterTicket, input_tokens: u32, output_tokens: u32) -> Result<(), ServeError>;

    /// Called exactly once per admitted request, however it ended, with what was delivered and
    /// the provider's signed attestation of it.
    fn finish(&self, ticket: MeterTicket, usage: &Usage, attestation: &Attestation, signature: &Sig);

    /// Metric families of the metering itself (payments, credit), in the OpenMetrics text
    /// format without the closing `# EOF`; `/metrics` serves them with the server's own.
    fn metrics(&self) -> String {
        String::new()
    }
}

/// Meters nothing: every request is admitted and free.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMetering;

impl Metering for NoMetering {
    fn begin(&self, request: &MeterRequest<'_>) -> Result<MeterTicket, ServeError> {
        Ok(MeterTicket { request_id: request.request_id, data: None })
    }

    fn progress(&self, _: &MeterTicket, _: u32, _: u32) -> Result<(), ServeError> {
        Ok(())
    }

    fn finish(&self, _: MeterTicket, _: &Usage, _: &Attestation, _: &Sig) {}
}
