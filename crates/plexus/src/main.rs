//! `plexus`: one binary for validators, providers, clients and operators. A thin shell over the
//! library crates: argument parsing, output formatting and process management live here; the
//! protocol does not.

mod cmd;

use std::path::PathBuf;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

/// Plexus: a decentralized network where edge machines serve AI inference and are paid per
/// token through an upgradeable application-specific chain.
#[derive(Parser)]
#[command(name = "plexus", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// How logs are written to stderr: `text` for people, `json` (one object per line) for log
    /// collectors. `RUST_LOG` filters them either way.
    #[arg(long, global = true, value_enum, default_value = "text", env = "PLEXUS_LOG_FORMAT")]
    log_format: cmd::LogFormat,
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
    /// Print a shell completion script to stdout (e.g. `plexus completions bash >
    /// /usr/share/bash-completion/completions/plexus`).
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Write man pages for plexus and every subcommand (plexus.1, plexus-node-run.1, ...).
    Man {
        /// The directory to write them into (made if missing).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// What `--version` prints: the release, then what this binary is built for and runs.
fn long_version() -> String {
    let v = plexus_node::SUPPORTED_VERSIONS;
    let range = |r: plexus_types::version::VersionRange| {
        if r.min == r.max { format!("{}", r.min) } else { format!("{}-{}", r.min, r.max) }
    };
    // The CPU features the compiler was allowed to assume everywhere; the inference kernels
    // (llama.cpp's, tract's) pick wider ones at run time when the CPU has them.
    let assumed: Vec<&str> = [
        ("sse4.2", cfg!(target_feature = "sse4.2")),
        ("popcnt", cfg!(target_feature = "popcnt")),
        ("avx", cfg!(target_feature = "avx")),
        ("avx2", cfg!(target_feature = "avx2")),
        ("fma", cfg!(target_feature = "fma")),
        ("f16c", cfg!(target_feature = "f16c")),
        ("avx512f", cfg!(target_feature = "avx512f")),
        ("neon", cfg!(target_feature = "neon")),
        ("dotprod", cfg!(target_feature = "dotprod")),
        ("i8mm", cfg!(target_feature = "i8mm")),
        ("sve", cfg!(target_feature = "sve")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let features: Vec<&str> =
        [("faulty-version (test build: never run it on a network)", cfg!(feature = "faulty-version"))]
            .into_iter()
            .filter_map(|(name, on)| on.then_some(name))
            .collect();
    format!(
        "{}\ntarget: {}-{} (CPU features assumed: {})\nfeatures: {}\nlayers: consensus {}, data {}, execution {}, network {}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS,
        if assumed.is_empty() { "the architecture's baseline".to_string() } else { assumed.join(" ") },
        if features.is_empty() { "none".to_string() } else { features.join(", ") },
        range(v.consensus),
        range(v.data),
        range(v.execution),
        range(v.network),
    )
}

/// The command line, with the long version filled in (clap keeps it as a `&'static str`; it is
/// made at most twice a run).
fn command() -> clap::Command {
    Cli::command().long_version(&*Box::leak(long_version().into_boxed_str()))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    cmd::init_tracing(cli.log_format);
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
        Command::Completions { shell } => {
            // Into a buffer first: the library panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command(), "plexus", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)
                .or_else(|e| if e.kind() == std::io::ErrorKind::BrokenPipe { Ok(()) } else { Err(e) })
                .map_err(|e| anyhow::anyhow!("cannot write the completion script: {e}"))
        }
        Command::Man { dir } => std::fs::create_dir_all(&dir)
            .and_then(|()| clap_mangen::generate_to(command(), &dir))
            .map_err(|e| anyhow::anyhow!("cannot write man pages to {}: {e}", dir.display())),
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
        super::command().debug_assert();
    }

    #[test]
    fn the_long_version_names_the_target_and_every_layer() {
        let v = super::long_version();
        assert!(v.starts_with(env!("CARGO_PKG_VERSION")), "{v}");
        assert!(v.contains(&format!("target: {}-{}", std::env::consts::ARCH, std::env::consts::OS)), "{v}");
        let exec = plexus_node::SUPPORTED_VERSIONS.execution;
        assert!(v.contains(&format!("execution {}-{}", exec.min, exec.max)), "{v}");
        for layer in ["consensus", "data", "network"] {
            assert!(v.contains(layer), "{v}");
        }
    }
}
