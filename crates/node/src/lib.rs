//! A Plexus node: the chain application (mempool, speculative execution of proposals,
//! durable application of finalized blocks), the chain REST API and transaction gossip, wired to
//! consensus and the data layer.
//!
//! The chain logic ([`chain::ChainState`]) is generic over the runtime so the deterministic
//! simulator runs exactly the code production runs; [`run`] is the production wiring (tokio
//! runtime, TCP p2p, HTTP). This crate does not implement consensus, storage or execution rules —
//! it connects them — and it does not serve inference (that is the serving layer).

pub mod activity;
pub mod api;
pub mod chain;
#[cfg(feature = "provider")]
pub mod committee;
pub mod config;
pub mod console;
pub mod drill;
pub mod earnings;
pub mod followers;
pub mod gossip;
pub mod index;
pub mod keyfile;
pub mod mempool;
pub mod metrics;
#[cfg(feature = "provider")]
pub mod provider;
pub mod run;
pub mod upgrade;

pub use chain::ChainState;

use plexus_types::version::{SupportedVersions, VersionRange};

/// The versions of every layer this binary can run. A node refuses to open a chain whose active
/// versions are outside these ranges (it would compute different state), and providers signal
/// them on-chain so upgrades wait until enough stake runs a binary that supports them.
pub const SUPPORTED_VERSIONS: SupportedVersions = SupportedVersions {
    consensus: VersionRange {
        min: *plexus_consensus::SUPPORTED_VERSIONS.start(),
        max: *plexus_consensus::SUPPORTED_VERSIONS.end(),
    },
    data: VersionRange {
        min: *plexus_execution::data::SUPPORTED.start(),
        max: *plexus_execution::data::SUPPORTED.end(),
    },
    execution: VersionRange {
        min: *plexus_execution::SUPPORTED_EXECUTION_VERSIONS.start(),
        max: *plexus_execution::SUPPORTED_EXECUTION_VERSIONS.end(),
    },
    network: VersionRange { min: 1, max: plexus_network::blocks::V2 },
};

/// Environment variable capping the highest execution version this node will run and signal,
/// so one binary can stand in for an older one (rolling-upgrade tests and rehearsals).
pub const EXECUTION_VERSION_MAX_ENV: &str = "PLEXUS_EXECUTION_VERSION_MAX";

/// Environment variable capping the highest network version this node will speak and signal,
/// as [`EXECUTION_VERSION_MAX_ENV`] does for execution.
pub const NETWORK_VERSION_MAX_ENV: &str = "PLEXUS_NETWORK_VERSION_MAX";

/// Environment variable capping the highest consensus version this node will run and signal,
/// as [`EXECUTION_VERSION_MAX_ENV`] does for execution.
pub const CONSENSUS_VERSION_MAX_ENV: &str = "PLEXUS_CONSENSUS_VERSION_MAX";

/// [`SUPPORTED_VERSIONS`], capped by [`EXECUTION_VERSION_MAX_ENV`], [`NETWORK_VERSION_MAX_ENV`]
/// and [`CONSENSUS_VERSION_MAX_ENV`] when they are set.
pub fn supported_versions() -> SupportedVersions {
    let mut v = SUPPORTED_VERSIONS;
    let cap = |name: &str| std::env::var(name).ok().and_then(|s| s.trim().parse::<u16>().ok());
    if let Some(cap) = cap(EXECUTION_VERSION_MAX_ENV) {
        v.execution.max = v.execution.max.min(cap).max(v.execution.min);
    }
    if let Some(cap) = cap(NETWORK_VERSION_MAX_ENV) {
        v.network.max = v.network.max.min(cap).max(v.network.min);
    }
    if let Some(cap) = cap(CONSENSUS_VERSION_MAX_ENV) {
        v.consensus.max = v.consensus.max.min(cap).max(v.consensus.min);
    }
    v
}
pub use config::NodeConfig;
