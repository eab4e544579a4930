//! `plexus keys`: create and show ed25519 keys.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use plexus_node::keyfile;
use plexus_types::PrivateKey;

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Create a new random key and write it to a key file (never overwrites).
    New {
        /// Where to write the key.
        #[arg(long, default_value = "key.json")]
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the address (public key) of a key file.
    Show {
        /// The key file.
        #[arg(long, default_value = "key.json")]
        key: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: KeysCmd) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::New { out, json } => {
            let key = PrivateKey::generate();
            keyfile::save(&out, &key)?;
            if json {
                super::print_json(&serde_json::json!({"address": key.address(), "key_file": out}));
            } else {
                println!("address  {}\nkey file {} (keep it private)", key.address(), out.display());
            }
        }
        KeysCmd::Show { key, json } => {
            let k = keyfile::load(&key).with_context(|| format!("reading {}", key.display()))?;
            if json {
                super::print_json(&serde_json::json!({"address": k.address()}));
            } else {
                println!("{}", k.address());
            }
        }
    }
    Ok(())
}
