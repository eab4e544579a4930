//! `plexus gateway`: the client-side OpenAI-compatible gateway.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use plexus_gateway::{Constraints, Gateway, GatewayConfig};
use plexus_node::keyfile;
use plexus_types::Amount;

#[derive(clap::Args)]
#[command(long_about = "Run a local OpenAI-compatible gateway to the Plexus network.\n\n\
Point any OpenAI SDK at it (base URL http://<listen>/v1, api_key = the gateway's API key). The \
gateway holds your client key, opens prepaid sessions with providers on-chain within a budget, \
counts every request and response itself with its own copy of the model's tokenizer, signs a \
cumulative receipt for exactly the tokens it verified (a provider whose response does not verify \
gets nothing and is shunned), routes by price, latency and load, and fails over to another \
provider when one fails, in the middle of a stream too. It re-runs a random share of the \
generations it paid for on its own copy of the model (--audit-rate) and challenges on chain a \
response the model would not have produced; a provider convicted by the chain's committee is \
slashed and never used again. Providers it has not used lately are probed with ordinary requests, \
so routing knows their latency and availability. When it stops (Ctrl-C) it closes its \
sessions, so providers settle and the unused escrow is refunded.\n\n\
Without --api-key it serves only on loopback and checks no key; with one, every route but /health \
needs it. Browser origins are refused unless allowed with --allow-origin.\n\n\
Example:\n  plexus gateway --key client.json --node http://127.0.0.1:8545 --api-key \"$(openssl rand -hex 16)\"\n  \
export OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=<that key>")]
pub struct GatewayArgs {
    /// The client key file paying for sessions (as written by `plexus keys new`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Chain API URL; repeat to give fallbacks.
    #[arg(long = "node", value_name = "URL", default_value = super::DEFAULT_NODE)]
    nodes: Vec<String>,
    /// Where the OpenAI-compatible API listens.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Directory for the gateway's session table (default ~/.plexus/gateway).
    #[arg(long)]
    home: Option<PathBuf>,
    /// Escrow per new session and per top-up (base units, or e.g. 5plx).
    #[arg(long, default_value = "5plx", value_parser = super::parse_amount)]
    deposit: Amount,
    /// Blocks a session stays open.
    #[arg(long, default_value_t = 36_000)]
    session_blocks: u64,
    /// Only use providers in this region (repeat for several). Sessions are then restricted to
    /// these regions on chain (data residency; needs execution version 4): the chain refuses
    /// a provider elsewhere, and providers elsewhere refuse the session.
    #[arg(long = "region", value_name = "REGION")]
    regions: Vec<String>,
    /// Highest price accepted per 1,000 input tokens, in base units.
    #[arg(long)]
    max_input_price: Option<Amount>,
    /// Highest price accepted per 1,000 output tokens, in base units.
    #[arg(long)]
    max_output_price: Option<Amount>,
    /// Output tokens between receipts during a stream.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    receipt_every: u64,
    /// The API key apps must send as `Authorization: Bearer <key>` (at least 16 characters);
    /// required to listen beyond loopback.
    #[arg(long, env = "PLEXUS_GATEWAY_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A web origin (e.g. http://localhost:3000) allowed to call the gateway from a browser.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// The most the gateway commits to sessions in total, deposits and top-ups (base units,
    /// or e.g. 50plx); requests beyond it get an insufficient_quota error.
    #[arg(long, default_value = "50plx", value_parser = super::parse_amount)]
    budget: Amount,
    /// Pin a model name to a model id (NAME=ID), over what the network says; repeatable.
    #[arg(long = "model", value_name = "NAME=ID", value_parser = parse_pin)]
    pins: Vec<(String, plexus_types::ModelId)>,
    /// Only use this provider (an address); repeat for several. Default: any.
    #[arg(long = "provider", value_name = "ADDRESS")]
    providers: Vec<plexus_types::Address>,
    /// max_tokens for requests that set none.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens_default: u32,
    /// Share of paid generations re-run on this machine's copy of the model to check them
    /// (0 to 1; 0 audits nothing). A response the model would not have produced is challenged
    /// on chain, and a convicted provider is slashed; the gateway's account posts the challenge
    /// bond and is paid a reward.
    #[arg(long, default_value_t = plexus_gateway::audit::AUDIT_RATE_DEFAULT, value_parser = parse_rate)]
    audit_rate: f64,
    /// CPU threads an audit uses (audits run one at a time, beside serving).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    audit_threads: u32,
    /// Seconds a provider may go unused before the gateway probes it with an ordinary request
    /// (paid like any other), so routing knows its latency and availability; 0 never probes.
    #[arg(long, default_value_t = 60)]
    probe_interval: u64,
    /// Also reach providers on other machines that registered a plain `http://` endpoint
    /// (prompts and answers then cross the network unencrypted). Without it the gateway talks
    /// to remote providers only over TLS pinned to their on-chain keys, and to `http://` ones
    /// only on loopback.
    #[arg(long)]
    plain_http_providers: bool,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&r) {
        return Err(format!("{r} is not between 0 and 1"));
    }
    Ok(r)
}

fn parse_pin(s: &str) -> Result<(String, plexus_types::ModelId), String> {
    let (name, id) = s.split_once('=').ok_or_else(|| format!("{s:?} is not NAME=ID"))?;
    Ok((name.trim().to_string(), id.trim().parse()?))
}

pub fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let key = keyfile::load(&args.key).with_context(|| format!("reading key file {}", args.key.display()))?;
    let config = GatewayConfig {
        nodes: args.nodes,
        home: args.home.unwrap_or_else(plexus_gateway::default_home),
        listen: args.listen,
        deposit: args.deposit,
        session_blocks: args.session_blocks,
        constraints: Constraints {
            regions: args.regions,
            max_input_per_1k: args.max_input_price,
            max_output_per_1k: args.max_output_price,
            pins: args.pins.into_iter().collect(),
            providers: args.providers,
        },
        receipt_every_tokens: args.receipt_every,
        api_key: args.api_key.filter(|k| !k.is_empty()),
        allowed_origins: args.allowed_origins,
        budget: args.budget,
        max_tokens_default: args.max_tokens_default,
        audit: plexus_gateway::audit::AuditSettings { rate: args.audit_rate, threads: args.audit_threads },
        probe_interval: std::time::Duration::from_secs(args.probe_interval),
        plain_http_providers: args.plain_http_providers,
        ..GatewayConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async move {
        let listen = config.listen;
        let gateway = Gateway::start(config, key).await.context("starting the gateway")?;
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(target: "gateway", "OpenAI-compatible API on http://{}/v1", listener.local_addr()?);
        gateway.serve(listener, plexus_node::run::shutdown_signal()).await.context("serving")
    })
}
