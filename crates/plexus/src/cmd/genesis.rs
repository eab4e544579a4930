//! `plexus genesis`: write the genesis file of a new network.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use plexus_types::genesis::{GenesisAccount, GenesisValidator};
use plexus_types::{Address, Amount, Genesis, Params};

#[derive(Subcommand)]
pub enum GenesisCmd {
    /// Start a genesis file with a chain id and default parameters.
    New {
        #[arg(long)]
        chain_id: String,
        #[arg(long, default_value = "genesis.json")]
        out: PathBuf,
        /// Blocks per epoch (validator set changes only at epoch boundaries).
        #[arg(long)]
        epoch_length: Option<u64>,
    },
    /// Give an account an initial balance.
    AddAccount {
        #[arg(long, default_value = "genesis.json")]
        file: PathBuf,
        #[arg(long)]
        address: Address,
        /// Base units, or PLX with a suffix (e.g. 1000plx).
        #[arg(long, value_parser = super::parse_amount)]
        balance: Amount,
    },
    /// Add an initial validator with its stake and p2p address.
    AddValidator {
        #[arg(long, default_value = "genesis.json")]
        file: PathBuf,
        #[arg(long)]
        address: Address,
        #[arg(long, value_parser = super::parse_amount)]
        stake: Amount,
        /// host:port where the validator listens for peers.
        #[arg(long)]
        p2p_address: String,
    },
    /// Check a genesis file and print its hash (every node must have the same).
    Validate {
        #[arg(long, default_value = "genesis.json")]
        file: PathBuf,
    },
}

fn read(file: &PathBuf) -> anyhow::Result<Genesis> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a genesis file", file.display()))
}

fn write(file: &PathBuf, g: &Genesis) -> anyhow::Result<()> {
    std::fs::write(file, g.to_json()).with_context(|| format!("cannot write {}", file.display()))
}

pub fn run(cmd: GenesisCmd) -> anyhow::Result<()> {
    match cmd {
        GenesisCmd::New { chain_id, out, epoch_length } => {
            let mut params = Params::default();
            if let Some(l) = epoch_length {
                params.set("epoch_length_blocks", l as u128)?;
            }
            let g = Genesis {
                chain_id,
                accounts: vec![],
                validators: vec![],
                params,
                versions: plexus_types::VersionVector::V1,
            };
            write(&out, &g)?;
            println!("wrote {}; add validators and accounts, then `plexus genesis validate`", out.display());
        }
        GenesisCmd::AddAccount { file, address, balance } => {
            let mut g = read(&file)?;
            g.accounts.retain(|a| a.address != address);
            g.accounts.push(GenesisAccount { address, balance });
            write(&file, &g)?;
        }
        GenesisCmd::AddValidator { file, address, stake, p2p_address } => {
            let mut g = read(&file)?;
            g.validators.retain(|v| v.address != address);
            g.validators.push(GenesisValidator { address, stake, p2p_address });
            write(&file, &g)?;
        }
        GenesisCmd::Validate { file } => {
            let g = read(&file)?;
            g.validate()?;
            println!(
                "valid genesis for chain {} ({} validators, {} accounts, supply {})",
                g.chain_id,
                g.validators.len(),
                g.accounts.len(),
                super::format_amount(g.total_supply().unwrap_or(0))
            );
            println!("genesis hash {}", g.hash());
        }
    }
    Ok(())
}
