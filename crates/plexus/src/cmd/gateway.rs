//! `plexus gateway`: the client-side OpenAI-compatible gateway.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use plexus_gateway::{Constraints, Gateway, GatewayConfig};
use plexus_node::keyfile;
use plexus_types::Amount;

#[derive(clap::Args)]
#[command(long_about = "Run a local OpenAI-compatible gateway to the Plexus network.\n\n\
Point any OpenAI SDK at it (base URL http://<listen>/v1; the API key is not checked). The gateway \
holds your client key, opens prepaid sessions with providers on-chain, signs a cumulative receipt \
for exactly the tokens each provider delivered, routes by price, latency and load, and fails over \
to another provider when one fails, in the middle of a stream too. When it stops (Ctrl-C) it closes \
its sessions, so providers settle and the unused escrow is refunded.\n\n\
Example:\n  plexus gateway --key client.json --node http://127.0.0.1:8545 --listen 127.0.0.1:8000\n  \
export OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=unused")]
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
    /// Only use providers in this region.
    #[arg(long)]
    region: Option<String>,
    /// Highest price accepted per 1,000 input tokens, in base units.
    #[arg(long)]
    max_input_price: Option<Amount>,
    /// Highest price accepted per 1,000 output tokens, in base units.
    #[arg(long)]
    max_output_price: Option<Amount>,
    /// Output tokens between receipts during a stream.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    receipt_every: u64,
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
            region: args.region,
            max_input_per_1k: args.max_input_price,
            max_output_per_1k: args.max_output_price,
        },
        receipt_every_tokens: args.receipt_every,
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
