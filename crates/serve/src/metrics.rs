//! Prometheus metrics of the provider server, served as text on `/metrics`.

use std::sync::Arc;

use plexus_inference::Engine;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ModelLabel {
    pub(crate) model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrorLabel {
    pub(crate) kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabel {
    pub(crate) endpoint: String,
}

fn seconds_histogram() -> Histogram {
    // 1 ms to ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn fast_seconds_histogram() -> Histogram {
    // 50 µs to ~1.6 s: tensor models answer in well under a millisecond.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Everything `/metrics` reports.
pub(crate) struct Metrics {
    registry: Registry,
    /// Seconds from request arrival to the first generated token.
    pub(crate) time_to_first_token: Family<ModelLabel, Histogram>,
    /// Seconds between consecutive generated tokens of one request.
    pub(crate) inter_token_latency: Family<ModelLabel, Histogram>,
    /// Prompt (input) tokens processed.
    pub(crate) prompt_tokens: Family<ModelLabel, Counter>,
    /// Tokens generated.
    pub(crate) completion_tokens: Family<ModelLabel, Counter>,
    /// Tensor-model inferences (rows) computed.
    pub(crate) inferences: Family<ModelLabel, Counter>,
    /// Seconds per tensor-model request, from arrival to answer.
    pub(crate) infer_latency: Family<ModelLabel, Histogram>,
    /// Streams open now.
    pub(crate) streams_open: Family<ModelLabel, Gauge>,
    /// Windows computed on streams.
    pub(crate) stream_windows: Family<ModelLabel, Counter>,
    /// Requests received, by endpoint.
    pub(crate) requests: Family<RequestLabel, Counter>,
    /// Failed or refused requests, by kind.
    pub(crate) errors: Family<ErrorLabel, Counter>,
    /// Requests waiting for a slot.
    queue_depth: Family<ModelLabel, Gauge>,
    /// Requests being processed.
    active: Family<ModelLabel, Gauge>,
    /// Sequences in the last decode step.
    batch_sequences: Family<ModelLabel, Gauge>,
    /// Tokens in the last decode step.
    batch_tokens: Family<ModelLabel, Gauge>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("plexus");
        let histograms =
            || Family::<ModelLabel, Histogram>::new_with_constructor(seconds_histogram as fn() -> Histogram);
        let m = Metrics {
            registry: Registry::default(),
            time_to_first_token: histograms(),
            inter_token_latency: histograms(),
            prompt_tokens: Family::default(),
            completion_tokens: Family::default(),
            inferences: Family::default(),
            infer_latency: Family::<ModelLabel, Histogram>::new_with_constructor(
                fast_seconds_histogram as fn() -> Histogram,
            ),
            streams_open: Family::default(),
            stream_windows: Family::default(),
            requests: Family::default(),
            errors: Family::default(),
            queue_depth: Family::default(),
            active: Family::default(),
            batch_sequences: Family::default(),
            batch_tokens: Family::default(),
        };
        registry.register(
            "inference_time_to_first_token_seconds",
            "Seconds from request arrival to the first generated token",
            m.time_to_first_token.clone(),
        );
        registry.register(
            "inference_inter_token_latency_seconds",
            "Seconds between consecutive generated tokens of one request",
            m.inter_token_latency.clone(),
        );
        registry.register("inference_prompt_tokens", "Prompt (input) tokens processed", m.prompt_tokens.clone());
        registry.register("inference_completion_tokens", "Tokens generated", m.completion_tokens.clone());
        registry.register(
            "inference_tensor_inferences",
            "Tensor-model inferences (rows) computed",
            m.inferences.clone(),
        );
        registry.register(
            "inference_tensor_request_seconds",
            "Seconds per tensor-model request, from arrival to answer",
            m.infer_latency.clone(),
        );
        registry.register("serve_streams_open", "Streams open now", m.streams_open.clone());
        registry.register("serve_stream_windows", "Windows computed on streams", m.stream_windows.clone());
        registry.register("serve_requests", "Requests received, by endpoint", m.requests.clone());
        registry.register("serve_errors", "Failed or refused requests, by kind", m.errors.clone());
        registry.register("inference_queue_depth", "Requests waiting for a slot", m.queue_depth.clone());
        registry.register("inference_active_requests", "Requests being processed", m.active.clone());
        registry.register("inference_batch_sequences", "Sequences in the last decode step", m.batch_sequences.clone());
        registry.register("inference_batch_tokens", "Tokens in the last decode step", m.batch_tokens.clone());
        Metrics { registry, ..m }
    }

    pub(crate) fn model(name: &str) -> ModelLabel {
        ModelLabel { model: name.to_owned() }
    }

    pub(crate) fn error(&self, kind: &str) {
        self.errors.get_or_create(&ErrorLabel { kind: kind.to_owned() }).inc();
    }

    /// The text exposition, with the gauges read from the engines now.
    pub(crate) fn render(&self, engines: &[Arc<dyn Engine>]) -> String {
        for e in engines {
            let label = Metrics::model(&e.info().name);
            let load = e.load();
            self.queue_depth.get_or_create(&label).set(load.queued as i64);
            self.active.get_or_create(&label).set(load.active as i64);
            self.batch_sequences.get_or_create(&label).set(load.batch_sequences as i64);
            self.batch_tokens.get_or_create(&label).set(load.batch_tokens as i64);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
