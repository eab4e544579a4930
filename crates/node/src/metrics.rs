//! Node metrics, registered with the runtime's Prometheus registry and served on `/metrics`
//! together with the consensus, p2p and storage metrics of the runtime.

use commonware_runtime::Metrics;
use commonware_runtime::telemetry::metrics::{Counter, Gauge, Histogram, MetricsExt as _};

/// Seconds buckets for block building and verification.
const SECONDS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0];

/// What a node operator watches.
#[derive(Clone)]
pub struct NodeMetrics {
    /// Height of the last finalized block.
    pub height: std::sync::Arc<Gauge>,
    /// Blocks finalized since start.
    pub blocks_finalized: std::sync::Arc<Counter>,
    /// Transactions finalized since start.
    pub txs_finalized: std::sync::Arc<Counter>,
    /// Transactions waiting in the mempool.
    pub mempool_txs: std::sync::Arc<Gauge>,
    /// Time to build a proposal, in seconds.
    pub build_seconds: std::sync::Arc<Histogram>,
    /// Time to execute and check a proposal from a peer, in seconds.
    pub verify_seconds: std::sync::Arc<Histogram>,
    /// Transactions refused by the API or gossip.
    pub txs_rejected: std::sync::Arc<Counter>,
    /// Panics caught while checking a transaction from outside (a bug, reported and contained).
    pub admission_panics: std::sync::Arc<Counter>,
}

impl NodeMetrics {
    pub fn new(context: &impl Metrics) -> Self {
        use std::sync::Arc;
        NodeMetrics {
            height: Arc::new(context.gauge("chain_height", "Height of the last finalized block")),
            blocks_finalized: Arc::new(context.counter("blocks_finalized", "Blocks finalized since start")),
            txs_finalized: Arc::new(context.counter("txs_finalized", "Transactions finalized since start")),
            mempool_txs: Arc::new(context.gauge("mempool_txs", "Transactions waiting in the mempool")),
            build_seconds: Arc::new(context.histogram("block_build_seconds", "Time to build a proposal", SECONDS)),
            verify_seconds: Arc::new(context.histogram("block_verify_seconds", "Time to verify a proposal", SECONDS)),
            txs_rejected: Arc::new(context.counter("txs_rejected", "Transactions refused by the API or gossip")),
            admission_panics: Arc::new(
                context.counter("admission_panics", "Panics caught while checking a transaction from outside"),
            ),
        }
    }
}

/// The sum, over every label set, of the samples in Prometheus text `text` whose metric name ends
/// with `suffix` (e.g. `block_wire_bytes_total`, whatever prefix the runtime gave it).
pub fn sum(text: &str, suffix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            name.split('{').next()?.ends_with(suffix).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_a_counter_over_label_sets_and_ignores_others() {
        let text = "# HELP x_block_wire_bytes_total Bytes\n# TYPE x_block_wire_bytes_total counter\n\
                    x_block_wire_bytes_total{peer=\"a\"} 10\nx_block_wire_bytes_total{peer=\"b\"} 5\n\
                    x_block_payload_bytes_total 99\n";
        assert_eq!(super::sum(text, "block_wire_bytes_total"), 15.0);
        assert_eq!(super::sum(text, "block_payload_bytes_total"), 99.0);
        assert_eq!(super::sum(text, "missing_total"), 0.0);
    }
}
