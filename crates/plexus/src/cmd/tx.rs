//! `plexus tx`: build, sign and submit transactions to a node.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use plexus_node::keyfile;
use plexus_types::codec::to_vec;
use plexus_types::tx::{ModelPrice, Payload, ProviderInfo};
use plexus_types::version::SupportedVersions;
use plexus_types::{Address, Amount, Hash, ModelManifest, Transaction};
use serde_json::{Value, json};

use super::{Client, parse_amount};

/// Options every transaction takes.
#[derive(Args, Clone)]
pub struct TxOpts {
    /// Chain API of a node.
    #[arg(long, default_value = super::DEFAULT_NODE, env = "PLEXUS_NODE")]
    pub node: String,
    /// Key file that signs.
    #[arg(long, default_value = "key.json", env = "PLEXUS_KEY")]
    pub key: PathBuf,
    /// Fee in base units (default: the chain's minimum).
    #[arg(long, value_parser = parse_amount)]
    pub fee: Option<Amount>,
    /// Nonce (default: the account's next nonce).
    #[arg(long)]
    pub nonce: Option<u64>,
    /// Return right after submitting instead of waiting until the transaction is final.
    #[arg(long)]
    pub no_wait: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum TxCmd {
    /// Send tokens.
    Transfer {
        #[command(flatten)]
        opts: TxOpts,
        #[arg(long)]
        to: Address,
        /// Base units, or PLX with a suffix (e.g. 2.5plx).
        #[arg(long, value_parser = parse_amount)]
        amount: Amount,
    },
    /// Bond stake (to validate, or as a provider's collateral).
    Stake {
        #[command(flatten)]
        opts: TxOpts,
        #[arg(long, value_parser = parse_amount)]
        amount: Amount,
        /// host:port where your node listens for peers (needed to validate).
        #[arg(long, default_value = "")]
        p2p_address: String,
    },
    /// Start unbonding stake; it returns to your balance after the unbonding delay.
    Unstake {
        #[command(flatten)]
        opts: TxOpts,
        #[arg(long, value_parser = parse_amount)]
        amount: Amount,
    },
    /// Register (or update) yourself as an inference provider.
    RegisterProvider {
        #[command(flatten)]
        opts: TxOpts,
        /// Base URL of your OpenAI-compatible server.
        #[arg(long)]
        endpoint: String,
        #[arg(long, default_value = "unspecified")]
        region: String,
        #[arg(long, default_value = "unspecified")]
        hardware: String,
        /// MODEL_ID:INPUT_PER_1K:OUTPUT_PER_1K (base units per 1,000 tokens); repeat per model.
        #[arg(long = "price", required = true)]
        prices: Vec<String>,
    },
    /// Register a model manifest (JSON file as printed by `plexus model list --json`).
    RegisterModel {
        #[command(flatten)]
        opts: TxOpts,
        #[arg(long)]
        manifest: PathBuf,
    },
    /// Open a prepaid session with a provider.
    OpenSession {
        #[command(flatten)]
        opts: TxOpts,
        #[arg(long)]
        provider: Address,
        #[arg(long)]
        model: Hash,
        #[arg(long, value_parser = parse_amount)]
        deposit: Amount,
        /// Highest input price you accept, per 1,000 tokens.
        #[arg(long, value_parser = parse_amount)]
        max_input_per_1k: Amount,
        /// Highest output price you accept, per 1,000 tokens.
        #[arg(long, value_parser = parse_amount)]
        max_output_per_1k: Amount,
        /// Blocks from now until the session expires.
        #[arg(long, default_value_t = 10_000)]
        expiry_blocks: u64,
        /// Restrict the session to providers in this region (repeat for several; data
        /// residency, execution version 4): the chain refuses a provider elsewhere.
        #[arg(long = "region", value_name = "REGION")]
        regions: Vec<String>,
    },
    /// Add to a session's escrow.
    TopUpSession {
        #[command(flatten)]
        opts: TxOpts,
        #[arg(long)]
        session: Hash,
        #[arg(long, value_parser = parse_amount)]
        amount: Amount,
    },
    /// Close a session (provider: now; client: after the provider's grace period).
    CloseSession {
        #[command(flatten)]
        opts: TxOpts,
        #[arg(long)]
        session: Hash,
    },
}

fn parse_price(s: &str) -> anyhow::Result<ModelPrice> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 3 {
        bail!("price {s:?} must be MODEL_ID:INPUT_PER_1K:OUTPUT_PER_1K");
    }
    Ok(ModelPrice {
        model: parts[0].parse().map_err(anyhow::Error::msg)?,
        input_per_1k: parse_amount(parts[1]).map_err(anyhow::Error::msg)?,
        output_per_1k: parse_amount(parts[2]).map_err(anyhow::Error::msg)?,
    })
}

pub fn run(cmd: TxCmd) -> anyhow::Result<()> {
    let (opts, payload) = match cmd {
        TxCmd::Transfer { opts, to, amount } => (opts, Payload::Transfer { to, amount }),
        TxCmd::Stake { opts, amount, p2p_address } => (opts, Payload::Stake { amount, p2p_address }),
        TxCmd::Unstake { opts, amount } => (opts, Payload::Unstake { amount }),
        TxCmd::RegisterProvider { opts, endpoint, region, hardware, prices } => {
            let prices = prices.iter().map(|p| parse_price(p)).collect::<anyhow::Result<Vec<_>>>()?;
            (
                opts,
                Payload::RegisterProvider(ProviderInfo {
                    endpoint,
                    region,
                    hardware,
                    prices,
                    versions: SupportedVersions::V1_ONLY,
                }),
            )
        }
        TxCmd::RegisterModel { opts, manifest } => {
            let text =
                std::fs::read_to_string(&manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
            let v: Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", manifest.display()))?;
            let m: ModelManifest = serde_json::from_value(v.get("manifest").cloned().unwrap_or(v))
                .with_context(|| format!("{} is not a model manifest", manifest.display()))?;
            (opts, Payload::RegisterModel(m))
        }
        TxCmd::OpenSession {
            opts,
            provider,
            model,
            deposit,
            max_input_per_1k,
            max_output_per_1k,
            expiry_blocks,
            regions,
        } => {
            let client = Client::new(&opts.node)?;
            let height = client.get("/chain/v1/status")?["height"].as_u64().unwrap_or(0);
            let payload = Payload::open_session(
                provider,
                model,
                deposit,
                max_input_per_1k,
                max_output_per_1k,
                height + expiry_blocks,
                regions,
            );
            (opts, payload)
        }
        TxCmd::TopUpSession { opts, session, amount } => (opts, Payload::TopUpSession { session, amount }),
        TxCmd::CloseSession { opts, session } => (opts, Payload::CloseSession { session }),
    };
    let result = submit(&opts, payload)?;
    if opts.json {
        super::print_json(&result);
    } else {
        print_result(&result);
    }
    Ok(())
}

/// Signs and submits a payload; waits until final unless `--no-wait`. Returns the API's view.
pub fn submit(opts: &TxOpts, payload: Payload) -> anyhow::Result<Value> {
    let key = keyfile::load(&opts.key)?;
    let client = Client::new(&opts.node)?;
    let status = client.get("/chain/v1/status")?;
    let chain_id = status["chain_id"].as_str().context("status has no chain_id")?.to_string();
    let next_nonce = || -> anyhow::Result<u64> {
        // Past any of the account's transactions still waiting (e.g. a node's own claims).
        let account = client.get(&format!("/chain/v1/accounts/{}", key.address()))?;
        Ok(account["next_nonce"].as_u64().or_else(|| account["nonce"].as_u64()).unwrap_or(0))
    };
    let mut nonce = match opts.nonce {
        Some(n) => n,
        None => next_nonce()?,
    };
    let fee = match opts.fee {
        Some(f) => f,
        None => super::amount_of(&client.get("/chain/v1/params")?["min_tx_fee"]),
    };
    let kind = payload.kind();
    let sign =
        |nonce: u64| Transaction { signer: key.address(), nonce, fee, payload: payload.clone() }.sign(&key, &chain_id);
    let mut tx = sign(nonce);
    let mut hash = tx.hash();
    client.post("/chain/v1/txs", &json!({"tx": hex::encode(to_vec(&tx))}))?;
    if opts.no_wait {
        return Ok(json!({"hash": hash, "kind": kind, "status": "submitted"}));
    }
    let mut started = Instant::now();
    let mut resubmitted = 0;
    loop {
        match client.get(&format!("/chain/v1/txs/{hash}")) {
            Ok(v) => return Ok(v),
            Err(e) if e.to_string().starts_with("not_found") => {}
            Err(e) => return Err(e),
        }
        // Another transaction from this key (say, the node's own, sent through another node)
        // took our nonce: ours can never be final. Sign again with the next free nonce.
        let account = client.get(&format!("/chain/v1/accounts/{}", key.address()))?;
        let taken = account["nonce"].as_u64().is_some_and(|n| n > nonce);
        // Look once more a little later, so that a lookup index lagging the account state can
        // never make us send the same payload twice.
        let still_missing = || {
            std::thread::sleep(Duration::from_millis(500));
            client.get(&format!("/chain/v1/txs/{hash}")).is_err()
        };
        if taken && still_missing() {
            if opts.nonce.is_some() || resubmitted == NONCE_RETRIES_MAX {
                bail!(
                    "nonce {nonce} was used by another transaction from {}; transaction {hash} will not be final",
                    key.address()
                );
            }
            resubmitted += 1;
            nonce = next_nonce()?;
            tx = sign(nonce);
            hash = tx.hash();
            eprintln!("nonce taken by another transaction from this key; sending again with nonce {nonce} as {hash}");
            client.post("/chain/v1/txs", &json!({"tx": hex::encode(to_vec(&tx))}))?;
            started = Instant::now();
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("transaction {hash} was accepted but not finalized within 60 s; check `plexus query tx {hash}`");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Times a transaction is signed again when another one from the same key took its nonce.
const NONCE_RETRIES_MAX: u32 = 5;

fn print_result(v: &Value) {
    let hash = v["hash"].as_str().unwrap_or("?");
    if v.get("status").and_then(Value::as_str) == Some("submitted") {
        println!("submitted {} {hash}", v["kind"].as_str().unwrap_or(""));
        return;
    }
    let result = &v["result"];
    let height = v["height"].as_u64().unwrap_or(0);
    match result["error"].as_str() {
        None => println!("ok: {} {hash} final at height {height}", result["kind"].as_str().unwrap_or("tx")),
        Some(err) => println!(
            "failed: {} {hash} at height {height}: {err} (fee charged)",
            result["kind"].as_str().unwrap_or("tx")
        ),
    }
    if let Some(events) = result["events"].as_array() {
        for e in events {
            println!("  event {}", serde_json::to_string(e).unwrap_or_default());
        }
    }
}
