//! Prometheus metrics of the gateway, served as text on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointLabel {
    pub(crate) endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabel {
    pub(crate) route: String,
    pub(crate) status: u16,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~65 s: tensor answers take a millisecond, long generations a minute.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabel {
    pub(crate) direction: &'static str,
}

pub(crate) struct Metrics {
    registry: Registry,
    /// Requests from the app, by endpoint.
    requests: Family<EndpointLabel, Counter>,
    /// Times a request or stream moved to another provider.
    pub(crate) failovers: Counter,
    /// Receipts signed.
    pub(crate) receipts_signed: Counter,
    /// Responses whose attestation did not verify.
    pub(crate) attestation_failures: Counter,
    /// Tokens acknowledged, input and output.
    tokens: Family<DirectionLabel, Counter>,
    /// Streams open now.
    pub(crate) streams_open: prometheus_client::metrics::gauge::Gauge,
    /// Stream windows checked and paid.
    pub(crate) stream_windows: Counter,
    /// Seconds from a request's arrival to its response headers (a stream's first byte), by
    /// route and status.
    latency: Family<RouteLabel, Histogram>,
    /// What receipts signed since start promise providers (base units).
    spent: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Escrow the gateway has deposited into its sessions (base units).
    deposited: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("plexus_gateway");
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            failovers: Counter::default(),
            receipts_signed: Counter::default(),
            attestation_failures: Counter::default(),
            tokens: Family::default(),
            streams_open: Default::default(),
            stream_windows: Counter::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            spent: Gauge::default(),
            deposited: Gauge::default(),
        };
        registry.register("requests", "Requests from the app, by endpoint", m.requests.clone());
        registry.register("failovers", "Times a request or stream moved to another provider", m.failovers.clone());
        registry.register("receipts_signed", "Receipts signed", m.receipts_signed.clone());
        registry.register(
            "attestation_failures",
            "Responses whose attestation did not verify",
            m.attestation_failures.clone(),
        );
        registry.register("tokens", "Tokens acknowledged, by direction", m.tokens.clone());
        registry.register("streams_open", "Streams open now", m.streams_open.clone());
        registry.register("stream_windows", "Stream windows checked and paid", m.stream_windows.clone());
        registry.register(
            "request_seconds",
            "Seconds from a request's arrival to its response headers, by route and status",
            m.latency.clone(),
        );
        registry.register("spent_base_units", "What receipts signed since start promise providers", m.spent.clone());
        registry.register(
            "deposited_base_units",
            "Escrow committed to sessions: deposits and top-ups",
            m.deposited.clone(),
        );
        Metrics { registry, ..m }
    }

    pub(crate) fn request(&self, endpoint: &str) {
        self.requests.get_or_create(&EndpointLabel { endpoint: endpoint.to_owned() }).inc();
    }

    pub(crate) fn tokens(&self, input: u64, output: u64) {
        self.tokens.get_or_create(&DirectionLabel { direction: "input" }).inc_by(input);
        self.tokens.get_or_create(&DirectionLabel { direction: "output" }).inc_by(output);
    }

    pub(crate) fn observe(&self, route: &str, status: u16, seconds: f64) {
        self.latency.get_or_create(&RouteLabel { route: route.to_owned(), status }).observe(seconds);
    }

    /// Sets the spend gauges (summed over the gateway's sessions) before a render.
    pub(crate) fn set_spend(&self, spent: u128, deposited: u128) {
        self.spent.set(spent as f64);
        self.deposited.set(deposited as f64);
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
