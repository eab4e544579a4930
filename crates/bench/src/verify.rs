//! `plexus-bench verify`: how well audits tell honest providers from cheating ones, and what
//! they cost.
//!
//! 1. **False challenges**: honest transcripts generated under different thread counts, batch
//!    sizes and concurrent load (greedy and seeded sampling), each audited by a reference engine
//!    with yet another configuration. Every faulty verdict there would be a false challenge.
//! 2. **Detection**: transcripts from a substitute model (SmolLM2 with its last blocks dropped,
//!    made by `scripts/make-substitute.py`, served under the real model's id), and outputs the
//!    model did not generate at all (another question's answer), audited the same way; the
//!    share judged faulty is the per-request detection rate `d`, and with audit rate `a` a
//!    cheating provider is caught within `n` requests with probability `1 - (1 - a·d)^n`.
//! 3. **Cost**: audit time (one prefill) against generation time, at the default audit rate.
//!
//! Also reported: the distribution of honest margins, which is what the audit rules' tolerance
//! must stay above.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use plexus_inference::audit::{AuditRules, Verdict, judge};
use plexus_inference::models::{ModelCache, Progress};
use plexus_inference::{
    ChatMessage, Engine, EngineConfig, Finish, GenerateRequest, LlamaConfig, Prompt, Sampling, ScoreRequest,
};
use plexus_types::receipt::Transcript;

#[derive(clap::Args)]
pub struct Args {
    /// Honest transcripts to audit (the false-challenge count is over these).
    #[arg(long, default_value_t = 1000)]
    honest: usize,
    /// Transcripts from the substitute model, and from no model, to audit.
    #[arg(long, default_value_t = 200)]
    cheating: usize,
    /// Output tokens per request.
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
    /// The substitute GGUF (made by scripts/make-substitute.py).
    #[arg(long)]
    substitute: PathBuf,
    /// Audit rate the detection and cost figures are given for.
    #[arg(long, default_value_t = 0.05)]
    audit_rate: f64,
    /// Write the results into this file's "## Verified inference" section.
    #[arg(long)]
    docs: Option<PathBuf>,
}

const QUESTIONS: &[&str] = &[
    "Name three colors.",
    "What is 2 plus 2?",
    "Write a haiku about the sea.",
    "Who wrote Hamlet?",
    "Give me a synonym for happy.",
    "What is the boiling point of water?",
    "Tell me about dogs.",
    "Explain rain.",
    "Describe a city at night.",
    "Why is the sky blue?",
    "List four fruits.",
    "What do bees make?",
];

fn nz(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).expect("non-zero")
}

fn engine(model: &plexus_inference::CachedModel, threads: u32, parallel: u32) -> anyhow::Result<Arc<dyn Engine>> {
    let config = EngineConfig {
        llama: LlamaConfig {
            threads: nz(threads),
            threads_batch: nz(threads),
            parallel: nz(parallel),
            ..LlamaConfig::default()
        },
        ..EngineConfig::default()
    };
    Ok(plexus_inference::load_engine(model, &config)?)
}

fn request(i: usize, max_tokens: u32) -> GenerateRequest {
    // A third greedy, the rest seeded at two temperatures.
    let sampling = match i % 3 {
        0 => Sampling::Greedy,
        1 => Sampling::Random { temperature: 0.7, top_k: 40, top_p: 0.95, min_p: 0.05, seed: i as u32 },
        _ => Sampling::Random { temperature: 1.0, top_k: 40, top_p: 1.0, min_p: 0.0, seed: 7 * i as u32 },
    };
    GenerateRequest {
        grammar: None,
        prompt: Prompt::Chat {
            messages: vec![ChatMessage::new("user", QUESTIONS[i % QUESTIONS.len()])],
            continue_final_message: false,
        },
        max_tokens: Some(max_tokens),
        sampling,
        adjust: Default::default(),
        stop: vec![],
        logprobs: None,
    }
}

struct Generated {
    transcript: Transcript,
    seconds: f64,
}

/// Runs `requests` on `engine`, `concurrency` at a time; each with its transcript.
fn generate(
    engine: &Arc<dyn Engine>,
    requests: Vec<GenerateRequest>,
    concurrency: usize,
) -> anyhow::Result<Vec<Generated>> {
    let mut out = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(concurrency.max(1)) {
        let started = Instant::now();
        let mut running = Vec::new();
        for r in chunk {
            let prepared = engine.prepare(r.clone())?;
            let transcript = Transcript {
                model: prepared.model,
                prompt: prepared.tokens.clone(),
                max_tokens: prepared.max_tokens,
                sampling: prepared.spec(),
                stop: prepared.stop.clone(),
                output: Vec::new(),
            };
            running.push((transcript, engine.submit(prepared)?));
        }
        let finished: Vec<(Transcript, Finish)> = running
            .into_iter()
            .map(|(t, g)| Ok::<_, anyhow::Error>((t, g.blocking_collect()?)))
            .collect::<Result<_, _>>()?;
        let seconds = started.elapsed().as_secs_f64() / finished.len() as f64;
        for (mut transcript, finish) in finished {
            transcript.output = finish.tokens;
            out.push(Generated { transcript, seconds });
        }
    }
    Ok(out)
}

/// Audits with the reference engine; the margins, the verdict and the seconds it took.
fn audit(reference: &Arc<dyn Engine>, t: &Transcript, rules: &AuditRules) -> anyhow::Result<(Vec<f32>, Verdict, f64)> {
    let started = Instant::now();
    let (sampling, adjust) = Sampling::from_spec(&t.sampling);
    let scores = reference.score(&ScoreRequest {
        grammar: None,
        prompt: t.prompt.clone(),
        output: t.output.clone(),
        top_k: 1,
        sampling: Some(sampling),
        adjust,
    })?;
    let margins: Vec<f32> = scores.iter().map(|s| s.margin.unwrap_or(f32::INFINITY)).collect();
    let report = judge(margins.clone(), rules);
    Ok((margins, report.verdict, started.elapsed().as_secs_f64()))
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    crate::report::quantile(sorted, q)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let rules = AuditRules::default();
    let cache = ModelCache::from_env();
    let model = cache.pull("smollm2-135m-instruct", Progress::Hide).context("pulling smollm2-135m-instruct")?;
    let reference = engine(&model, 2, 1)?;

    // 1. Honest transcripts under three configurations.
    let per = args.honest.div_ceil(3);
    let mut honest = Vec::new();
    let configs = [(1u32, 1u32, 1usize), (2, 4, 4), (2, 8, 8)];
    for (k, (threads, parallel, concurrency)) in configs.into_iter().enumerate() {
        let e = engine(&model, threads, parallel)?;
        let requests: Vec<GenerateRequest> = (0..per).map(|i| request(k * per + i, args.max_tokens)).collect();
        eprintln!("generating {per} honest transcripts ({threads} threads, {concurrency} at once)…");
        honest.extend(generate(&e, requests, concurrency)?);
    }
    honest.truncate(args.honest);
    eprintln!("auditing {} honest transcripts…", honest.len());
    let mut margins: Vec<f64> = Vec::new();
    let (mut false_faulty, mut inconclusive) = (0usize, 0usize);
    let (mut audit_seconds, mut gen_seconds) = (0.0, 0.0);
    for g in &honest {
        let (m, verdict, secs) = audit(&reference, &g.transcript, &rules)?;
        margins.extend(m.iter().map(|x| f64::from(*x)));
        false_faulty += usize::from(verdict == Verdict::Faulty);
        inconclusive += usize::from(verdict == Verdict::Inconclusive);
        audit_seconds += secs;
        gen_seconds += g.seconds;
    }
    margins.sort_by(f64::total_cmp);
    let over = margins.iter().filter(|m| **m > f64::from(rules.margin_logits)).count();

    // 2. Cheating: the substitute model, and outputs from no model at all.
    let substitute = plexus_inference::models::describe(&args.substitute)
        .with_context(|| format!("reading {}", args.substitute.display()))?;
    let sub_engine = engine(&substitute, 2, 4)?;
    eprintln!("generating {} transcripts with the substitute model…", args.cheating);
    let requests: Vec<GenerateRequest> = (0..args.cheating).map(|i| request(5000 + i, args.max_tokens)).collect();
    let mut subst = generate(&sub_engine, requests, 4)?;
    for g in &mut subst {
        // Served under the real model's id, as a cheating provider would.
        g.transcript.model = model.id;
    }
    drop(sub_engine);
    let mut caught_sub = 0usize;
    let mut sub_inconclusive = 0usize;
    for g in &subst {
        let (_, verdict, _) = audit(&reference, &g.transcript, &rules)?;
        caught_sub += usize::from(verdict == Verdict::Faulty);
        sub_inconclusive += usize::from(verdict == Verdict::Inconclusive);
    }
    // Another question's honest answer passed off as this one's.
    let mut caught_fake = 0usize;
    let fakes = honest.len().min(args.cheating);
    for i in 0..fakes {
        let mut t = honest[i].transcript.clone();
        t.output = honest[(i + 1) % honest.len()].transcript.output.clone();
        let (_, verdict, _) = audit(&reference, &t, &rules)?;
        caught_fake += usize::from(verdict == Verdict::Faulty);
    }
    let d_sub = caught_sub as f64 / subst.len().max(1) as f64;
    let d_fake = caught_fake as f64 / fakes.max(1) as f64;
    let caught_within = |d: f64, n: i32| 1.0 - (1.0 - args.audit_rate * d).powi(n);
    let cost = args.audit_rate * audit_seconds / gen_seconds.max(1e-9);

    let body = format!(
        "`bench/verify/run.sh` (`plexus-bench verify --honest {} --cheating {} --max-tokens {}`), {} on {}, commit {}, \
         {:.0} s.\n\n\
         Audit rules: a position fails when the committed token misses the seeded sampler's pick from the auditor's own \
         logits by more than {} logits; a response is faulty when at least {} positions and {:.0}% of them fail \
         (outputs under {} tokens are inconclusive). A third of the requests greedy, the rest seeded (temperature 0.7 \
         with top-k 40, top-p 0.95, min-p 0.05; temperature 1.0 with top-k 40).\n\n\
         | measure | result |\n|---|---|\n\
         | honest transcripts audited (1 thread alone; 2 threads, 4 at once; 2 threads, 8 at once), auditor 2 threads alone | {} |\n\
         | **false challenges** (honest judged faulty) | **{}** ({} inconclusive) |\n\
         | honest margins: p50 / p99 / p99.9 / max, logits | {:.4} / {:.4} / {:.4} / {:.4} |\n\
         | honest positions over the tolerance | {} of {} |\n\
         | substitute model (24 of 30 blocks) judged faulty per request | {:.1}% ({} of {}; {} inconclusive) |\n\
         | another question's answer judged faulty per request | {:.1}% ({} of {}) |\n\
         | substitute caught within 50 / 100 / 200 requests at a {:.0}% audit rate | {:.2}% / {:.2}% / **{:.3}%** |\n\
         | fake output caught within 50 / 100 / 200 requests | {:.2}% / {:.2}% / {:.3}% |\n\
         | audit time / generation time per request | {:.1} ms / {:.0} ms |\n\
         | **audit compute at a {:.0}% rate, as a share of serving** | **{:.2}%** |\n",
        args.honest,
        args.cheating,
        args.max_tokens,
        crate::report::machine(),
        chrono_free_date(),
        crate::report::commit(),
        started.elapsed().as_secs_f64(),
        rules.margin_logits,
        rules.failed_min,
        rules.failed_fraction * 100.0,
        rules.positions_min,
        honest.len(),
        false_faulty,
        inconclusive,
        pct(&margins, 0.5),
        pct(&margins, 0.99),
        pct(&margins, 0.999),
        margins.last().copied().unwrap_or(0.0),
        over,
        margins.len(),
        d_sub * 100.0,
        caught_sub,
        subst.len(),
        sub_inconclusive,
        d_fake * 100.0,
        caught_fake,
        fakes,
        args.audit_rate * 100.0,
        caught_within(d_sub, 50) * 100.0,
        caught_within(d_sub, 100) * 100.0,
        caught_within(d_sub, 200) * 100.0,
        caught_within(d_fake, 50) * 100.0,
        caught_within(d_fake, 100) * 100.0,
        caught_within(d_fake, 200) * 100.0,
        audit_seconds / honest.len().max(1) as f64 * 1e3,
        gen_seconds / honest.len().max(1) as f64 * 1e3,
        args.audit_rate * 100.0,
        cost * 100.0,
    );
    println!("{body}");
    if let Some(docs) = &args.docs {
        crate::report::write_section(docs, "Verified inference", &body)?;
    }
    Ok(())
}

/// Today's date from the system clock (UTC), without a date crate.
fn chrono_free_date() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%Y-%m-%d"]).output();
    out.ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}
