//! `plexus-bench grammar`: what constrained decoding (structured outputs) costs per token.
//!
//! For each schema, the same requests are generated with and without it (one stream, the
//! model's real decode), and the constrained answers' ids are replayed through a fresh
//! compiled grammar, timing the mask computation and the advance at every position: the mask
//! cost per token, against the decode time per token measured in the same run. Also the
//! grammar's compile time (paid once per request, at prepare) and the end-to-end decode rate
//! with and without the grammar.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use plexus_inference::models::{ModelCache, Progress};
use plexus_inference::{ChatMessage, Engine, EngineConfig, GenerateRequest, LlamaConfig, Prompt, Sampling};
use plexus_types::receipt::{GrammarKind, GrammarSpec};

#[derive(clap::Args)]
pub struct Args {
    /// Requests per schema (each run constrained and unconstrained).
    #[arg(long, default_value_t = 8)]
    requests: usize,
    /// Output tokens per request at most.
    #[arg(long, default_value_t = 96)]
    max_tokens: u32,
    /// The model (a known name or a cached one).
    #[arg(long, default_value = "smollm2-135m-instruct")]
    model: String,
    /// Decode threads (one stream).
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Write the results into this file's "## Structured outputs" section.
    #[arg(long)]
    docs: Option<PathBuf>,
}

const SCHEMAS: &[(&str, &str, &str)] = &[
    ("json_object", r#"{"type":"object"}"#, "Describe the planet Mars as JSON."),
    (
        "person (strings, bounded integer, enum array)",
        r#"{"type":"object","properties":{"name":{"type":"string","maxLength":24},"age":{"type":"integer","minimum":0,"maximum":150},"pets":{"type":"array","items":{"enum":["cat","dog","fish"]},"maxItems":3}},"required":["name","age","pets"],"additionalProperties":false}"#,
        "Describe a person called Ada: her name, age and pets.",
    ),
    (
        "order ($ref, nested objects, numbers)",
        r##"{"$defs":{"item":{"type":"object","properties":{"sku":{"type":"string","maxLength":12},"quantity":{"type":"integer","minimum":1,"maximum":99},"price":{"type":"number"}},"required":["sku","quantity","price"],"additionalProperties":false}},"type":"object","properties":{"customer":{"type":"string","maxLength":30},"items":{"type":"array","items":{"$ref":"#/$defs/item"},"maxItems":4},"express":{"type":"boolean"}},"required":["customer","items","express"],"additionalProperties":false}"##,
        "Write an order for two items from a shop, as JSON.",
    ),
];

fn nz(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).expect("non-zero")
}

fn request(question: &str, i: usize, max_tokens: u32, grammar: Option<GrammarSpec>) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Chat { messages: vec![ChatMessage::new("user", question)], continue_final_message: false },
        max_tokens: Some(max_tokens),
        sampling: if i == 0 {
            Sampling::Greedy
        } else {
            Sampling::Random { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.0, seed: i as u32 }
        },
        adjust: Default::default(),
        stop: vec![],
        logprobs: None,
        grammar,
    }
}

/// Decode seconds per token of one generation (after its first token), and its ids.
fn decode(engine: &Arc<dyn Engine>, r: GenerateRequest) -> anyhow::Result<(f64, usize, Vec<i32>)> {
    let prepared = engine.prepare(r)?;
    let started = Instant::now();
    let finish = engine.submit(prepared)?.blocking_collect()?;
    let total = started.elapsed().as_secs_f64();
    let n = finish.tokens.len();
    let per_token = (total - finish.time_to_first_token).max(0.0) / (n.max(2) - 1) as f64;
    Ok((per_token, n, finish.tokens))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    crate::report::quantile(&v, 0.5)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cached = ModelCache::from_env().pull(&args.model, Progress::Show)?;
    let config = EngineConfig {
        llama: LlamaConfig {
            threads: nz(args.threads),
            threads_batch: nz(args.threads),
            parallel: nz(1),
            ..LlamaConfig::default()
        },
        ..EngineConfig::default()
    };
    let engine = plexus_inference::load_engine(&cached, &config)?;
    // The vocabulary index is built once per model, on the first grammar: measured on its own.
    let started = Instant::now();
    engine.grammar(&GrammarSpec { kind: GrammarKind::JsonSchema, source: SCHEMAS[0].1.into() })?;
    let vocabulary_ms = started.elapsed().as_secs_f64() * 1e3;

    let mut rows = Vec::new();
    for &(name, schema, question) in SCHEMAS {
        let spec = GrammarSpec { kind: GrammarKind::JsonSchema, source: schema.into() };
        let (mut free_tok, mut constrained_tok, mut mask_us, mut compile_ms, mut tokens) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0);
        for i in 0..args.requests {
            let (free, _, _) = decode(&engine, request(question, i, args.max_tokens, None))?;
            free_tok.push(free);
            let (per_token, n, ids) = decode(&engine, request(question, i, args.max_tokens, Some(spec.clone())))?;
            constrained_tok.push(per_token);
            tokens += n;
            let started = Instant::now();
            let mut constraint = engine.grammar(&spec)?;
            compile_ms.push(started.elapsed().as_secs_f64() * 1e3);
            for &t in &ids {
                let started = Instant::now();
                let mask = constraint.mask()?;
                anyhow::ensure!(mask.allows(t), "the replayed answer leaves its grammar at {t}");
                constraint.advance(t)?;
                mask_us.push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
        let decode_ms = median(free_tok.clone()) * 1e3;
        let mut sorted = mask_us.clone();
        sorted.sort_by(f64::total_cmp);
        let (p50, p99) = (crate::report::quantile(&sorted, 0.5), crate::report::quantile(&sorted, 0.99));
        let mean = mask_us.iter().sum::<f64>() / mask_us.len().max(1) as f64;
        let row = format!(
            "| {name} | {tokens} | {p50:.0} | {p99:.0} | {mean:.0} | {decode_ms:.2} | {:.1}% | {:.2} | {:.2} |",
            mean / (decode_ms * 1e3) * 100.0,
            median(constrained_tok) * 1e3,
            median(compile_ms),
        );
        println!("{row}");
        rows.push(row);
    }
    let body = format!(
        "`bench/grammar/run.sh` (`plexus-bench grammar --requests {} --max-tokens {} --threads {}`), commit {}, on {}.\n\n\
         {model}, one stream, {threads} decode threads. For each JSON schema, {requests} requests (one greedy, the rest seeded)\n\
         were generated with and without the schema; the constrained answers' ids were then replayed\n\
         through a fresh compiled grammar, timing llguidance's mask and advance at every position.\n\
         The goal is a mask cost of at most 5% of the decode time per token. The first grammar of a\n\
         model also builds its vocabulary index: {vocabulary_ms:.0} ms, once per model and process.\n\n\
         | schema | tokens | mask p50 (us) | mask p99 (us) | mask mean (us) | decode per token, free (ms) | mask / decode | decode per token, constrained (ms) | compile (ms) |\n\
         |---|---|---|---|---|---|---|---|---|\n{}\n\n\
         Not measured here yet: the same schemas through llama-server's `json_schema` (its own\n\
         grammar engine) on the same model, side by side.\n",
        args.requests,
        args.max_tokens,
        args.threads,
        crate::report::commit(),
        crate::report::machine(),
        rows.join("\n"),
        model = args.model,
        threads = args.threads,
        requests = args.requests,
    );
    println!("\n{body}");
    if let Some(docs) = &args.docs {
        crate::report::write_section(docs, "Structured outputs", &body)?;
    }
    Ok(())
}
