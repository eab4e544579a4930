//! What a provider's operator watches about being paid: receipts claimed on chain, claims and
//! closes that could not be sent, the credit it extends (tokens delivered that no receipt covers
//! yet), and what clients' newest receipts are worth. Served on the provider's `/metrics` with
//! the server's own families (refused requests by reason are there, as `plexus_errors`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub(crate) struct Metrics {
    registry: Registry,
    /// Receipts sent in claim transactions the chain accepted into its mempool.
    pub(crate) receipts_claimed: Counter,
    /// Claim transactions that could not be submitted.
    pub(crate) claim_failures: Counter,
    /// Close transactions sent for fully settled sessions.
    pub(crate) closes_sent: Counter,
    /// Sessions tracked in the receipt ledger.
    pub(crate) sessions: Gauge,
    /// Tokens delivered that no receipt acknowledges yet, over all sessions: the provider's
    /// exposure to clients that stop paying.
    pub(crate) credit_exposure_tokens: Gauge,
    /// What the newest receipt of every tracked session is worth, in base units (settled or
    /// about to be; the chain pays it less the protocol fee).
    pub(crate) receipts_value: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("plexus_provider");
        let m = Metrics {
            registry: Registry::default(),
            receipts_claimed: Counter::default(),
            claim_failures: Counter::default(),
            closes_sent: Counter::default(),
            sessions: Gauge::default(),
            credit_exposure_tokens: Gauge::default(),
            receipts_value: Gauge::default(),
        };
        registry.register(
            "receipts_claimed",
            "Receipts sent in accepted claim transactions",
            m.receipts_claimed.clone(),
        );
        registry.register("claim_failures", "Claim transactions that could not be submitted", m.claim_failures.clone());
        registry.register("closes_sent", "Close transactions sent for settled sessions", m.closes_sent.clone());
        registry.register("sessions", "Sessions tracked in the receipt ledger", m.sessions.clone());
        registry.register(
            "credit_exposure_tokens",
            "Delivered tokens no receipt acknowledges yet, over all sessions",
            m.credit_exposure_tokens.clone(),
        );
        registry.register(
            "receipts_value_base_units",
            "What the newest receipt of every tracked session is worth, in base units",
            m.receipts_value.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The families as OpenMetrics text, without the closing `# EOF`.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out.strip_suffix("# EOF\n").map(str::to_string).unwrap_or(out)
    }
}
