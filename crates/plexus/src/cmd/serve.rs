//! `plexus serve`: the provider's OpenAI-compatible server alone, without a chain (like
//! llama-server).

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;

use anyhow::Context as _;
use plexus_inference::models::{ModelCache, Progress, resolve};
use plexus_inference::{EngineConfig, LlamaConfig, load_engine};
use plexus_node::keyfile;
use plexus_serve::{ServeConfig, Server};
use plexus_types::PrivateKey;

#[derive(clap::Args)]
#[command(long_about = "Serve models over an OpenAI-compatible API without a chain (like llama-server).\n\n\
Endpoints: /v1/chat/completions (streaming or not), /v1/completions, /v1/embeddings, /v1/models, \
/health and /metrics (Prometheus). Every response is signed by the provider key: headers \
x-plexus-model-id, x-plexus-provider, x-plexus-attestation and x-plexus-signature, or a `plexus` \
object in a stream's final chunk.\n\n\
Models come from the cache ($PLEXUS_MODELS, else ~/.cache/plexus/models); known names \
(smollm2-135m-instruct, all-minilm-l6-v2) are pulled when missing.\n\n\
Example:\n  plexus serve -m smollm2-135m-instruct -m all-minilm-l6-v2 --port 8080")]
pub struct ServeArgs {
    /// Model to serve: a cached name, a model id, a GGUF file or a BERT directory. Repeat to
    /// serve several.
    #[arg(short, long = "model", value_name = "NAME|PATH|ID", required = true)]
    model: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Threads for decoding (default: every core).
    #[arg(short, long)]
    threads: Option<NonZeroU32>,
    /// Threads for prompt processing (default: --threads).
    #[arg(long)]
    threads_batch: Option<NonZeroU32>,
    /// Requests a text model decodes together.
    #[arg(long, default_value_t = NonZeroU32::new(4).expect("non-zero"))]
    parallel: NonZeroU32,
    /// KV cache tokens per text model, shared by the parallel requests; each request may use
    /// ctx / parallel tokens (prompt plus output).
    #[arg(long, default_value_t = NonZeroU32::new(8192).expect("non-zero"))]
    ctx: NonZeroU32,
    /// Most tokens per decode call.
    #[arg(long, default_value_t = NonZeroU32::new(2048).expect("non-zero"))]
    batch: NonZeroU32,
    /// Most tokens per physical compute step.
    #[arg(long, default_value_t = NonZeroU32::new(512).expect("non-zero"))]
    ubatch: NonZeroU32,
    /// Requests that may wait per text model before new ones get 429.
    #[arg(long, default_value_t = NonZeroUsize::new(64).expect("non-zero"))]
    queue: NonZeroUsize,
    /// Do not keep the default system prompt's KV cache or reuse prompt prefixes across requests.
    #[arg(long)]
    no_prefix_cache: bool,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    request_bytes_max: usize,
    /// Provider key file, as written by `plexus keys new`. Without it a fresh key is generated
    /// for this run (and its address logged).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Serve HTTPS (TLS 1.3) with a self-signed certificate for the provider key; clients pin
    /// the key (gateways do it from the provider's on-chain address), or use `curl -k` to look.
    #[arg(long)]
    tls: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let key = match &args.key {
        Some(path) => keyfile::load(path).with_context(|| format!("reading key file {}", path.display()))?,
        None => {
            let key = PrivateKey::generate();
            tracing::warn!(target: "serve", provider = %key.address(), "no --key given; using an ephemeral provider key");
            key
        }
    };
    let defaults = LlamaConfig::default();
    let threads = args.threads.unwrap_or(defaults.threads);
    let config = EngineConfig {
        llama: LlamaConfig {
            ctx_tokens: args.ctx,
            parallel: args.parallel,
            threads,
            threads_batch: args.threads_batch.unwrap_or(threads),
            batch_tokens: args.batch,
            ubatch_tokens: args.ubatch,
            queue_max: args.queue,
            prefix_cache: !args.no_prefix_cache,
            ..defaults
        },
        ..EngineConfig::default()
    };
    tracing::info!(target: "serve", ?config, "engine settings");

    let cache = ModelCache::from_env();
    let mut engines = Vec::new();
    for spec in &args.model {
        let model = resolve(&cache, spec, true, Progress::Show).with_context(|| format!("resolving model `{spec}`"))?;
        let engine = load_engine(&model, &config).with_context(|| format!("loading model `{spec}`"))?;
        tracing::info!(target: "serve", name = %model.manifest.name, id = %model.id, "model loaded");
        engines.push(engine);
    }
    let mut names: Vec<&str> = engines.iter().map(|e| e.info().name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        anyhow::bail!("two models are named `{}`; import one under another name", w[0]);
    }

    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("invalid listen address {}:{}", args.host, args.port))?;
    let tls = match args.tls {
        true => Some(plexus_serve::tls::server_config(&key).map_err(anyhow::Error::msg)?),
        false => None,
    };
    let server = Server::new(key, engines.clone())
        .with_config(ServeConfig { request_bytes_max: args.request_bytes_max, ..ServeConfig::default() });
    let provider = server.provider();
    let router = server.router();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!(target: "serve", "shutting down");
        };
        match tls {
            Some(config) => {
                tracing::info!(target: "serve", %provider, "listening on https://{local} (TLS bound to the provider key)");
                let listener = plexus_serve::tls::TlsListener::new(listener, config)?;
                plexus_serve::serve(listener, router, shutdown).await.context("serving")
            }
            None => {
                tracing::info!(target: "serve", %provider, "listening on http://{local}");
                plexus_serve::serve(listener, router, shutdown).await.context("serving")
            }
        }
    })?;
    // Engines stop their threads when dropped, after the server is gone.
    drop(engines);
    Ok(())
}
