//! `plexus`: one binary for validators, providers, clients and operators. A thin shell over the
//! library crates: argument parsing, output formatting and process management live here; the
//! protocol does not.

mod cmd;

use clap::{Parser, Subcommand};

/// Plexus: a decentralized network where edge machines serve AI inference and are paid per
/// token through an upgradeable application-specific chain.
#[derive(Parser)]
#[command(name = "plexus", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or show ed25519 keys.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCmd),
    /// Initialise and run a node (validator, provider or full node).
    #[command(subcommand)]
    Node(cmd::node::NodeCmd),
    /// Create and edit genesis files for a new network.
    #[command(subcommand)]
    Genesis(cmd::genesis::GenesisCmd),
    /// Sign and submit transactions.
    #[command(subcommand)]
    Tx(cmd::tx::TxCmd),
    /// Read chain state from a node's API.
    #[command(subcommand)]
    Query(cmd::query::QueryCmd),
    /// Run a local multi-validator network in one command.
    #[command(subcommand)]
    Devnet(cmd::devnet::DevnetCmd),
    /// Fetch, import and list content-addressed models.
    #[command(subcommand)]
    Model(cmd::model::ModelCmd),
    /// Serve models over an OpenAI-compatible API without a chain (like llama-server).
    Serve(cmd::serve::ServeArgs),
    /// Run a local OpenAI-compatible gateway that pays providers per token.
    Gateway(cmd::gateway::GatewayArgs),
    /// Stream samples to a tensor model through a gateway; print its alerts.
    Stream(cmd::stream::StreamArgs),
    /// Propose and vote on parameter changes and upgrades; see their status.
    #[command(subcommand)]
    Gov(cmd::gov::GovCmd),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cmd::init_tracing();
    let result = match cli.command {
        Command::Keys(c) => cmd::keys::run(c),
        Command::Node(c) => cmd::node::run(c),
        Command::Genesis(c) => cmd::genesis::run(c),
        Command::Tx(c) => cmd::tx::run(c),
        Command::Query(c) => cmd::query::run(c),
        Command::Devnet(c) => cmd::devnet::run(c),
        Command::Model(c) => cmd::model::run(c),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Gateway(a) => cmd::gateway::run(a),
        Command::Stream(a) => cmd::stream::run(a),
        Command::Gov(c) => cmd::gov::run(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_line_is_well_formed() {
        // Clap checks names, conflicts and defaults of every subcommand here, not at run time.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
