//! `plexus query`: read chain state from a node's API.

use clap::{Args, Subcommand};
use serde_json::Value;

use super::{Client, amount_of, format_amount};

#[derive(Args, Clone)]
pub struct QueryOpts {
    /// Chain API of a node.
    #[arg(long, default_value = super::DEFAULT_NODE, env = "PLEXUS_NODE")]
    pub node: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// For listings: continue after this cursor (the `next` a previous page printed).
    #[arg(long)]
    pub after: Option<String>,
}

#[derive(Subcommand)]
pub enum QueryCmd {
    /// Chain id, heights, state root, epoch, validators, versions.
    Status(QueryOpts),
    /// A block by height or hash (default: the latest).
    Block {
        #[command(flatten)]
        opts: QueryOpts,
        id: Option<String>,
    },
    /// A transaction and its result.
    Tx {
        #[command(flatten)]
        opts: QueryOpts,
        hash: String,
    },
    /// Balance, nonce and stake of an account.
    Account {
        #[command(flatten)]
        opts: QueryOpts,
        address: String,
    },
    /// The current validator set (and the next, once chosen).
    Validators(QueryOpts),
    /// Registered providers, or one provider.
    Providers {
        #[command(flatten)]
        opts: QueryOpts,
        address: Option<String>,
    },
    /// One provider and its record: audits its committees passed or failed, what was slashed,
    /// its latest challenges (also after it left the registry).
    Provider {
        #[command(flatten)]
        opts: QueryOpts,
        address: String,
    },
    /// Challenges of provider responses, newest first (filter by provider or challenger).
    Challenges {
        #[command(flatten)]
        opts: QueryOpts,
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        challenger: Option<String>,
    },
    /// One challenge, with its evidence (attestation, transcript) and the committee's votes.
    Challenge {
        #[command(flatten)]
        opts: QueryOpts,
        id: u64,
    },
    /// Registered models, or one model.
    Models {
        #[command(flatten)]
        opts: QueryOpts,
        id: Option<String>,
    },
    /// Sessions (filter by client or provider), or one session.
    Sessions {
        #[command(flatten)]
        opts: QueryOpts,
        id: Option<String>,
        #[arg(long)]
        client: Option<String>,
        #[arg(long)]
        provider: Option<String>,
    },
    /// What a provider earned and why: per session the tokens at its prices, less the protocol
    /// fee, is what it was paid; totals per UTC day; settled (closed sessions) and pending (open).
    Earnings {
        #[command(flatten)]
        opts: QueryOpts,
        /// The provider's address.
        #[arg(long)]
        provider: String,
    },
    /// Chain parameters in force.
    Params(QueryOpts),
    /// Where every base unit is: balances, stake, escrow, treasury.
    Supply(QueryOpts),
}

pub fn run(cmd: QueryCmd) -> anyhow::Result<()> {
    let (opts, path, human): (QueryOpts, String, fn(&Value)) = match cmd {
        QueryCmd::Status(o) => (o, "/chain/v1/status".into(), show_status),
        QueryCmd::Block { opts, id } => {
            let path = match id {
                Some(id) => format!("/chain/v1/blocks/{id}"),
                None => "/chain/v1/blocks/latest".into(),
            };
            (opts, path, show_block)
        }
        QueryCmd::Tx { opts, hash } => (opts, format!("/chain/v1/txs/{hash}"), show_pretty),
        QueryCmd::Account { opts, address } => (opts, format!("/chain/v1/accounts/{address}"), show_account),
        QueryCmd::Validators(o) => (o, "/chain/v1/validators".into(), show_validators),
        QueryCmd::Providers { opts, address } => match address {
            Some(a) => (opts, format!("/chain/v1/providers/{a}"), show_provider),
            None => (opts, "/chain/v1/providers".into(), show_providers),
        },
        QueryCmd::Provider { opts, address } => (opts, format!("/chain/v1/providers/{address}"), show_provider),
        QueryCmd::Challenges { opts, provider, challenger } => {
            let mut q = Vec::new();
            if let Some(p) = provider {
                q.push(format!("provider={p}"));
            }
            if let Some(c) = challenger {
                q.push(format!("challenger={c}"));
            }
            (opts, format!("/chain/v1/challenges?{}", q.join("&")), show_challenges)
        }
        QueryCmd::Challenge { opts, id } => (opts, format!("/chain/v1/challenges/{id}"), show_challenge),
        QueryCmd::Models { opts, id } => match id {
            Some(id) => (opts, format!("/chain/v1/models/{id}"), show_pretty),
            None => (opts, "/chain/v1/models".into(), show_models),
        },
        QueryCmd::Sessions { opts, id, client, provider } => match id {
            Some(id) => (opts, format!("/chain/v1/sessions/{id}"), show_pretty),
            None => {
                let mut q = Vec::new();
                if let Some(c) = client {
                    q.push(format!("client={c}"));
                }
                if let Some(p) = provider {
                    q.push(format!("provider={p}"));
                }
                (opts, format!("/chain/v1/sessions?{}", q.join("&")), show_sessions)
            }
        },
        QueryCmd::Earnings { opts, provider } => {
            (opts, format!("/chain/v1/providers/{provider}/earnings"), show_earnings)
        }
        QueryCmd::Params(o) => (o, "/chain/v1/params".into(), show_pretty),
        QueryCmd::Supply(o) => (o, "/chain/v1/supply".into(), show_supply),
    };
    let path = match &opts.after {
        Some(after) => format!("{path}{}after={after}", if path.contains('?') { '&' } else { '?' }),
        None => path,
    };
    let v = Client::new(&opts.node)?.get(&path)?;
    if opts.json {
        super::print_json(&v);
    } else {
        human(&v);
        if let Some(next) = v["next"].as_str() {
            println!("(more: add --after {next})");
        }
    }
    Ok(())
}

fn show_pretty(v: &Value) {
    super::print_json(v);
}

fn short(v: &Value) -> String {
    let s = v.as_str().unwrap_or("");
    if s.len() > 16 { format!("{}…", &s[..16]) } else { s.to_string() }
}

fn show_status(v: &Value) {
    println!("chain        {}", v["chain_id"].as_str().unwrap_or("?"));
    println!("height       {} (finalized)", v["height"]);
    println!("block        {}", v["latest_block_hash"].as_str().unwrap_or("?"));
    println!("state root   {}", v["state_root"].as_str().unwrap_or("?"));
    println!("epoch        {}", v["epoch"]);
    println!("versions     {}", v["versions"]);
    println!("mempool      {} txs", v["mempool_txs"]);
    if let Some(vals) = v["validators"].as_array() {
        println!("validators   {}", vals.len());
        for val in vals {
            println!(
                "  {}  stake {}  {}",
                short(&val["address"]),
                format_amount(amount_of(&val["stake"])),
                val["p2p_address"].as_str().unwrap_or("")
            );
        }
    }
}

fn show_block(v: &Value) {
    let h = &v["header"];
    println!("height {}  hash {}", h["height"], v["hash"].as_str().unwrap_or("?"));
    println!("epoch {}  view {}  proposer {}", h["epoch"], h["view"], short(&h["proposer"]));
    println!("state root {}", h["state_root"].as_str().unwrap_or("?"));
    let txs = v["results"]["txs"].as_array().cloned().unwrap_or_default();
    println!("{} transactions", txs.len());
    for t in txs {
        let status = t["error"].as_str().map(|e| format!("failed: {e}")).unwrap_or_else(|| "ok".into());
        println!("  {} {} from {}: {status}", short(&t["hash"]), t["kind"].as_str().unwrap_or(""), short(&t["signer"]));
    }
}

fn show_account(v: &Value) {
    println!("address   {}", v["address"].as_str().unwrap_or("?"));
    println!("balance   {}", format_amount(amount_of(&v["balance"])));
    println!("nonce     {}", v["nonce"]);
    println!("bonded    {}", format_amount(amount_of(&v["bonded"])));
    println!("unbonding {}", format_amount(amount_of(&v["unbonding"])));
}

fn show_validators(v: &Value) {
    println!("epoch {}", v["epoch"]);
    for val in v["validators"].as_array().cloned().unwrap_or_default() {
        println!(
            "  {}  stake {}  {}",
            val["address"].as_str().unwrap_or(""),
            format_amount(amount_of(&val["stake"])),
            val["p2p_address"].as_str().unwrap_or("")
        );
    }
}

fn show_providers(v: &Value) {
    let list = v["providers"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no providers registered");
    }
    for p in list {
        println!(
            "{}  {}  region {}  bonded {}",
            p["address"].as_str().unwrap_or(""),
            p["endpoint"].as_str().unwrap_or(""),
            p["region"].as_str().unwrap_or(""),
            format_amount(amount_of(&p["bonded"]))
        );
        for price in p["prices"].as_array().cloned().unwrap_or_default() {
            println!(
                "    model {}  in {}/1k  out {}/1k",
                short(&price["model"]),
                price["input_per_1k"],
                price["output_per_1k"]
            );
        }
    }
}

fn show_earnings(v: &Value) {
    let plx = |x: &Value| format_amount(amount_of(x));
    println!("provider  {}  (counted to block {})", v["provider"].as_str().unwrap_or("?"), v["height"]);
    for (label, t) in [("settled", &v["settled"]), ("pending", &v["pending"]), ("total", &v["total"])] {
        println!(
            "{label:<9} {} sessions, {} claims: {} paid - {} protocol fee = {} earned",
            t["sessions"],
            t["claims"],
            plx(&t["gross"]),
            plx(&t["fee"]),
            plx(&t["net"])
        );
    }
    println!("          (open sessions still hold {} of escrow that later claims may take)", plx(&v["pending_escrow"]));
    let days = v["days"].as_array().cloned().unwrap_or_default();
    if !days.is_empty() {
        println!("per day (UTC)");
        for d in &days {
            println!(
                "  {}  {:>5} claims  {} - {} = {}",
                d["date"].as_str().unwrap_or("?"),
                d["claims"],
                plx(&d["gross"]),
                plx(&d["fee"]),
                plx(&d["net"])
            );
        }
    }
    let sessions = v["sessions"].as_array().cloned().unwrap_or_default();
    if !sessions.is_empty() {
        println!("sessions, newest first: tokens (in/out) x price per 1k (in/out) = paid - fee = earned");
        for s in &sessions {
            println!(
                "  {} {:<7} {}/{} tokens x {}/{} = {} - {} = {}",
                short(&s["id"]),
                s["status"].as_str().unwrap_or("?"),
                s["input_tokens"],
                s["output_tokens"],
                s["input_per_1k"],
                s["output_per_1k"],
                plx(&s["gross"]),
                plx(&s["fee"]),
                plx(&s["net"])
            );
        }
    }
}

fn show_provider(v: &Value) {
    println!("address     {}", v["address"].as_str().unwrap_or("?"));
    if v["registered"].as_bool() == Some(true) {
        println!("endpoint    {}", v["endpoint"].as_str().unwrap_or(""));
        println!("region      {}", v["region"].as_str().unwrap_or(""));
        println!("hardware    {}", v["hardware"].as_str().unwrap_or(""));
    } else {
        println!("registered  no (left the registry, or was slashed below the provider stake)");
    }
    println!("bonded      {}", format_amount(amount_of(&v["bonded"])));
    let stats = &v["stats"];
    println!(
        "audits      {} passed, {} failed (committee verdicts on challenged responses)",
        stats["acquitted"].as_u64().unwrap_or(0),
        stats["convicted"].as_u64().unwrap_or(0)
    );
    println!("slashed     {}", format_amount(amount_of(&stats["slashed"])));
    let list = v["challenges"].as_array().cloned().unwrap_or_default();
    if !list.is_empty() {
        println!("latest challenges");
        for c in &list {
            print_challenge_line(c);
        }
    }
}

fn print_challenge_line(c: &Value) {
    let votes = c["votes"].as_array().map_or(0, Vec::len);
    let guilty = c["votes"].as_array().map_or(0, |v| v.iter().filter(|x| x[1].as_bool() == Some(true)).count());
    println!(
        "  #{}  {}  provider {}  challenger {}  {} output tokens  {guilty} of {votes} votes guilty (committee of {})  \
         opened {}, deadline {}  slashed {}",
        c["id"],
        c["status"].as_str().unwrap_or("?"),
        short(&c["provider"]),
        short(&c["challenger"]),
        c["output_tokens"],
        c["committee"].as_array().map_or(0, Vec::len),
        c["opened_height"],
        c["deadline_height"],
        format_amount(amount_of(&c["slashed"])),
    );
}

fn show_challenges(v: &Value) {
    let list = v["challenges"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no challenges");
    }
    for c in &list {
        print_challenge_line(c);
    }
}

fn show_challenge(v: &Value) {
    let c = &v["challenge"];
    println!("challenge   #{}", v["id"]);
    println!("status      {}", c["status"].as_str().unwrap_or("?"));
    println!("provider    {}", c["provider"].as_str().unwrap_or("?"));
    println!("challenger  {}  bond {}", c["challenger"].as_str().unwrap_or("?"), format_amount(amount_of(&c["bond"])));
    println!("session     {}", c["session"].as_str().unwrap_or("?"));
    println!("heights     opened {}, deadline {}", c["opened_height"], c["deadline_height"]);
    for vote in c["votes"].as_array().cloned().unwrap_or_default() {
        let verdict = if vote[1].as_bool() == Some(true) { "guilty" } else { "not guilty" };
        println!("  vote      {}  {verdict}", vote[0].as_str().unwrap_or("?"));
    }
    println!(
        "outcome     slashed {}, refunded to the client {}, reward to the challenger {}",
        format_amount(amount_of(&c["slashed"])),
        format_amount(amount_of(&c["refunded"])),
        format_amount(amount_of(&c["reward"]))
    );
    println!("(evidence: add --json)");
}

fn show_models(v: &Value) {
    for m in v["models"].as_array().cloned().unwrap_or_default() {
        let man = &m["manifest"];
        println!(
            "{}  {}  {} {}",
            m["id"].as_str().unwrap_or(""),
            man["name"].as_str().unwrap_or(""),
            man["engine"].as_str().unwrap_or(""),
            man["quantization"].as_str().unwrap_or("")
        );
    }
}

fn show_sessions(v: &Value) {
    let list = v["sessions"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no sessions");
    }
    for s in list {
        println!(
            "{}  {}  client {}  provider {}  deposit {}  paid {}  refunded {}",
            s["id"].as_str().unwrap_or(""),
            s["status"].as_str().unwrap_or(""),
            short(&s["client"]),
            short(&s["provider"]),
            amount_of(&s["deposit"]),
            amount_of(&s["settled_amount"]),
            amount_of(&s["refunded"]),
        );
    }
}

fn show_supply(v: &Value) {
    for k in ["total", "balances", "bonded", "unbonding", "escrow", "treasury", "deposits", "burned"] {
        println!("{k:<10} {}", format_amount(amount_of(&v[k])));
    }
    println!("conserved  {}", v["conserved"]);
}
