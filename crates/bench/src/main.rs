//! `plexus-bench`: benchmarks that drive real `plexus` processes and write what they measured,
//! with the command and the machine, to `docs/benchmarks.md`.
//!
//! `plexus-bench chain` starts a devnet on loopback and measures finality latency (idle and
//! under load) and sustained transfer throughput; `plexus-bench network` runs the same load on network
//! v1 and v2 and compares the block bytes each validator sends. `plexus-bench paid` measures what paying per
//! token costs: the gateway and receipts against the provider and the engine alone, metered
//! requests per second, and chain bytes per settled session. `plexus-bench certificates` compares
//! consensus v1 and v2 certificates (bytes, verification time) at 4, 16 and 64 validators. `plexus-bench grammar` measures what structured outputs cost per token. Nothing here is asserted: a benchmark
//! reports numbers, it does not pass or fail.

mod certificates;
mod chain;
mod edge;
mod grammar;
mod paid;
mod report;
mod verify;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "plexus-bench", about = "Benchmarks of Plexus on this machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Finality latency and transfer throughput of a local devnet.
    Chain(chain::Args),
    /// Block bytes each validator sends per block, network v1 against v2, under the same load.
    Network(chain::Args),
    /// Protocol overhead of paid inference, metered requests per second, chain bytes per session.
    Paid(paid::Args),
    /// Audits: false challenges among honest providers, detection of a substitute model, cost.
    Verify(verify::Args),
    /// Edge tensor models: tract against onnxruntime on the same ONNX files and inputs.
    Edge(edge::Args),
    /// Consensus certificates, v1 (ed25519) against v2 (aggregated BLS): bytes and verify time.
    Certificates(certificates::Args),
    /// Structured outputs: the grammar's mask cost per token against the decode time.
    Grammar(grammar::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Chain(args) => chain::run(args),
        Command::Network(args) => chain::run_network(args),
        Command::Paid(args) => paid::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Edge(args) => edge::run(args),
        Command::Certificates(args) => certificates::run(args),
        Command::Grammar(args) => grammar::run(args),
    }
}
