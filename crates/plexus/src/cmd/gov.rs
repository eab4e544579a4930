//! `plexus gov`: propose, vote, and see where proposals and upgrades stand.

use anyhow::{Context as _, bail};
use clap::Subcommand;
use plexus_types::tx::{Payload, ProposalKind, VoteOption};
use plexus_types::{Address, Amount, Layer};
use serde_json::Value;

use super::tx::{TxOpts, submit};
use super::{Client, format_amount, parse_amount};

#[derive(Subcommand)]
pub enum GovCmd {
    /// Submit a proposal (locks a deposit until it is decided; burned only on a veto).
    #[command(subcommand)]
    Propose(ProposeCmd),
    /// Vote on an open proposal with your bonded stake (a later vote replaces an earlier one).
    Vote {
        #[command(flatten)]
        opts: TxOpts,
        #[arg(long)]
        proposal: u64,
        /// yes, no, abstain or veto.
        #[arg(long, value_parser = parse_option)]
        option: VoteOption,
    },
    /// Active versions, upgrades waiting for readiness, and open proposals.
    Status {
        #[arg(long, default_value = super::DEFAULT_NODE, env = "PLEXUS_NODE")]
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Every proposal, newest first, or one with its votes.
    Proposals {
        #[arg(long, default_value = super::DEFAULT_NODE, env = "PLEXUS_NODE")]
        node: String,
        /// Show this proposal and its votes.
        #[arg(long)]
        id: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ProposeCmd {
    /// Change a chain parameter from a height on (`plexus query params` lists them).
    Param {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        name: String,
        #[arg(long)]
        value: u128,
        /// First height with the new value (default: 10 blocks after the vote closes).
        #[arg(long)]
        effective_height: Option<u64>,
    },
    /// Upgrade one layer to its next version, once enough stake runs a binary that supports it.
    Upgrade {
        #[command(flatten)]
        common: Common,
        /// consensus, data, execution or network.
        #[arg(long)]
        layer: Layer,
        /// The version to go to (default: the layer's current version plus one).
        #[arg(long)]
        to_version: Option<u16>,
        /// Earliest activation height (default: 10 blocks after the vote closes).
        #[arg(long)]
        activation_height: Option<u64>,
        /// Give up if not ready by this height (default: activation plus 10 voting periods).
        #[arg(long)]
        deadline_height: Option<u64>,
    },
    /// Pay from the treasury.
    Spend {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        to: Address,
        #[arg(long, value_parser = parse_amount)]
        amount: Amount,
    },
    /// A signal with no on-chain effect.
    Text {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        text: String,
    },
}

#[derive(clap::Args, Clone)]
pub struct Common {
    #[command(flatten)]
    opts: TxOpts,
    /// Deposit (default: the chain's proposal_deposit_min).
    #[arg(long, value_parser = parse_amount)]
    deposit: Option<Amount>,
}

fn parse_option(s: &str) -> Result<VoteOption, String> {
    match s.to_ascii_lowercase().as_str() {
        "yes" => Ok(VoteOption::Yes),
        "no" => Ok(VoteOption::No),
        "abstain" => Ok(VoteOption::Abstain),
        "veto" | "no_with_veto" | "nowithveto" => Ok(VoteOption::NoWithVeto),
        _ => Err(format!("{s:?} is not yes, no, abstain or veto")),
    }
}

struct Chain {
    height: u64,
    voting_period: u64,
    deposit_min: Amount,
    versions: Value,
}

fn chain(node: &str) -> anyhow::Result<Chain> {
    let client = Client::new(node)?;
    let status = client.get("/chain/v1/status")?;
    let params = client.get("/chain/v1/params")?;
    Ok(Chain {
        height: status["height"].as_u64().context("status height")?,
        voting_period: params["voting_period_blocks"].as_u64().context("voting_period_blocks")?,
        deposit_min: super::amount_of(&params["proposal_deposit_min"]),
        versions: status["versions"].clone(),
    })
}

pub fn run(cmd: GovCmd) -> anyhow::Result<()> {
    match cmd {
        GovCmd::Propose(p) => propose(p),
        GovCmd::Vote { opts, proposal, option } => {
            let result = submit(&opts, Payload::Vote { proposal, option })?;
            report(&opts, &result, &format!("voted {option:?} on proposal {proposal}"))
        }
        GovCmd::Status { node, json } => status(&node, json),
        GovCmd::Proposals { node, id, json } => proposals(&node, id, json),
    }
}

fn propose(cmd: ProposeCmd) -> anyhow::Result<()> {
    let (common, kind) = match cmd {
        ProposeCmd::Param { common, name, value, effective_height } => {
            let c = chain(&common.opts.node)?;
            let at = effective_height.unwrap_or(c.height + c.voting_period + 10);
            (common, ProposalKind::ParamChange { name, value, effective_height: at })
        }
        ProposeCmd::Upgrade { common, layer, to_version, activation_height, deadline_height } => {
            let c = chain(&common.opts.node)?;
            let current = c.versions[layer.name()].as_u64().context("status versions")? as u16;
            let version = to_version.unwrap_or(current + 1);
            let activation = activation_height.unwrap_or(c.height + c.voting_period + 10);
            let deadline = deadline_height.unwrap_or(activation + 10 * c.voting_period);
            (common, ProposalKind::Upgrade { layer, version, activation_height: activation, deadline_height: deadline })
        }
        ProposeCmd::Spend { common, to, amount } => (common, ProposalKind::TreasurySpend { to, amount }),
        ProposeCmd::Text { common, text } => (common, ProposalKind::Text { text }),
    };
    let deposit = match common.deposit {
        Some(d) => d,
        None => chain(&common.opts.node)?.deposit_min,
    };
    let result = submit(&common.opts, Payload::SubmitProposal { kind, deposit })?;
    let id = result["result"]["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["type"] == "proposal_submitted"))
        .and_then(|e| e["proposal"].as_u64());
    let message = match id {
        Some(id) => format!("proposal {id} submitted; vote with `plexus gov vote --proposal {id} --option yes`"),
        None => "proposal submitted".into(),
    };
    report(&common.opts, &result, &message)
}

fn report(opts: &TxOpts, result: &Value, ok: &str) -> anyhow::Result<()> {
    if opts.json {
        super::print_json(result);
        return Ok(());
    }
    if let Some(err) = result["result"]["error"].as_str() {
        bail!("the transaction failed: {err} (the fee was charged)");
    }
    println!("{ok}");
    Ok(())
}

fn status(node: &str, json: bool) -> anyhow::Result<()> {
    let client = Client::new(node)?;
    let upgrades = client.get("/chain/v1/upgrades")?;
    let proposals = client.get("/chain/v1/proposals")?;
    let height = client.get("/chain/v1/status")?["height"].as_u64().unwrap_or(0);
    if json {
        super::print_json(&serde_json::json!({"height": height, "upgrades": upgrades, "proposals": proposals}));
        return Ok(());
    }
    let v = &upgrades["versions"];
    println!(
        "height {height}  active versions: consensus {} data {} execution {} network {}",
        v["consensus"], v["data"], v["execution"], v["network"]
    );
    let n = &upgrades["node"];
    let shadow = match n["shadow_version"].as_u64() {
        Some(version) if version > 0 => format!(
            "shadow runs of v{version}: {} blocks passed{}",
            n["shadow_blocks_passed"],
            n["shadow_failure"].as_str().map(|f| format!(", failed: {f}")).unwrap_or_default()
        ),
        _ => "no execution upgrade pending, so no shadow runs".into(),
    };
    println!(
        "this node supports execution {}..={}; {shadow}",
        n["supported"]["execution"]["min"], n["supported"]["execution"]["max"],
    );
    let needed = upgrades["readiness_needed_bps"].as_u64().unwrap_or(0);
    for u in upgrades["upgrades"].as_array().into_iter().flatten() {
        let ready = u["ready_bps_now"].as_u64().or_else(|| u["ready_bps"].as_u64()).unwrap_or(0);
        println!(
            "upgrade {}: {} -> v{}  {}  activation >= {}  deadline {}  ready {:.2}% (needs {:.2}%){}{}",
            u["id"],
            u["layer"].as_str().unwrap_or("?"),
            u["version"],
            u["status"].as_str().unwrap_or("?"),
            u["activation_height"],
            u["deadline_height"],
            ready as f64 / 100.0,
            needed as f64 / 100.0,
            if u["activated_height"].as_u64().unwrap_or(0) > 0 {
                format!("  active from {}", u["activated_height"])
            } else {
                String::new()
            },
            u["note"].as_str().filter(|n| !n.is_empty()).map(|n| format!("  ({n})")).unwrap_or_default(),
        );
    }
    let open: Vec<&Value> =
        proposals["proposals"].as_array().into_iter().flatten().filter(|p| p["status"] == "voting").collect();
    if open.is_empty() {
        println!("no proposal is open for votes");
    }
    for p in open {
        println!("proposal {} open until height {}: {}", p["id"], p["voting_end"], describe(&p["kind"]));
    }
    Ok(())
}

fn describe(kind: &Value) -> String {
    if let Some(p) = kind.get("param_change") {
        return format!(
            "set {} = {} from height {}",
            p["name"].as_str().unwrap_or("?"),
            p["value"],
            p["effective_height"]
        );
    }
    if let Some(u) = kind.get("upgrade") {
        return format!(
            "upgrade {} to v{} from height {}",
            u["layer"].as_str().unwrap_or("?"),
            u["version"],
            u["activation_height"]
        );
    }
    if let Some(t) = kind.get("treasury_spend") {
        return format!("pay {} to {}", format_amount(super::amount_of(&t["amount"])), t["to"].as_str().unwrap_or("?"));
    }
    if let Some(t) = kind.get("text") {
        return format!("text: {}", t["text"].as_str().unwrap_or(""));
    }
    kind.to_string()
}

fn proposals(node: &str, id: Option<u64>, json: bool) -> anyhow::Result<()> {
    let client = Client::new(node)?;
    let v = match id {
        Some(id) => client.get(&format!("/chain/v1/proposals/{id}"))?,
        None => client.get("/chain/v1/proposals")?,
    };
    if json {
        super::print_json(&v);
        return Ok(());
    }
    let list: Vec<Value> = match id {
        Some(_) => vec![v.clone()],
        None => v["proposals"].as_array().cloned().unwrap_or_default(),
    };
    if list.is_empty() {
        println!("no proposals yet");
    }
    for p in &list {
        println!(
            "proposal {}  {}  {}  deposit {}  yes {} no {} abstain {} veto {}{}",
            p["id"],
            p["status"].as_str().unwrap_or("?"),
            describe(&p["kind"]),
            format_amount(super::amount_of(&p["deposit"])),
            format_amount(super::amount_of(&p["yes"])),
            format_amount(super::amount_of(&p["no"])),
            format_amount(super::amount_of(&p["abstain"])),
            format_amount(super::amount_of(&p["veto"])),
            p["outcome"].as_str().filter(|o| !o.is_empty()).map(|o| format!("  -> {o}")).unwrap_or_default(),
        );
    }
    if let Some(votes) = v["votes"].as_array() {
        for vote in votes {
            println!(
                "  {}  {}  stake {}",
                vote["voter"].as_str().unwrap_or("?"),
                vote["option"].as_str().unwrap_or("?"),
                format_amount(super::amount_of(&vote["stake"]))
            );
        }
    }
    Ok(())
}
