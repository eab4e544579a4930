//! Audits: the gateway re-runs a random sample of the generations it paid for, and challenges
//! on chain the ones its model would not have produced.
//!
//! A response is chosen for audit after its receipt is signed (a coin flip at the configured
//! rate, from this machine's randomness), so a provider cannot tell which responses will be
//! checked. The audit is one teacher-forced prefill of the transcript on the gateway's own copy
//! of the model ([`plexus_inference::audit`]): every output position is scored against the
//! seeded sampler's pick, with the gateway's own logits. A faulty verdict shuns the provider at
//! once and sends a `Challenge` transaction with the provider's signed attestation and the
//! transcript; validators drawn from block randomness re-run it and vote, and a conviction
//! slashes the provider, refunds the request and pays the gateway's account a reward.
//!
//! Tensor inferences (ONNX models, requests and stream windows) are audited by re-running the
//! request and comparing every output within a tolerance ([`audit_tensor`]); a faulty one is
//! challenged with `ChallengeTensor`, its inputs and attested outputs as the evidence.
//!
//! Audits run one at a time on a background thread pool, from a bounded queue: when audits
//! fall behind serving, new ones are dropped (and counted), never the app's requests. The
//! model is loaded on the first audit.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexus_inference::audit::{AuditRules, Verdict, audit, audit_tensor};
use plexus_inference::models::ModelCache;
use plexus_inference::tensor::{Tensor, TensorRequest};
use plexus_inference::{Engine, EngineConfig, LlamaConfig};
use plexus_types::receipt::Transcript;
use plexus_types::tensor::EVIDENCE_VALUES_MAX;
use plexus_types::tx::Payload;
use plexus_types::{Address, Attestation, Hash, ModelId, Sig};
use rand::RngExt as _;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::proxy::App;

/// Audits waiting at most; beyond, new ones are dropped.
pub const AUDIT_QUEUE_MAX: usize = 32;
/// Findings kept for `/status`.
const FINDINGS_KEPT: usize = 32;
/// The default share of generations audited.
pub const AUDIT_RATE_DEFAULT: f64 = 0.05;

/// A paid response, with what it takes to audit (and challenge) it.
pub(crate) struct Job {
    pub provider: Address,
    pub session: Hash,
    pub attestation: Attestation,
    pub signature: Sig,
    pub work: Work,
}

/// What is re-run.
pub(crate) enum Work {
    /// A generation, re-scored token by token (and challenged on chain when faulty).
    Generation(Transcript),
    /// A tensor model's inference, re-run and compared value by value.
    Tensor { model: ModelId, request: TensorRequest, outputs: Vec<Tensor> },
}

impl Work {
    fn model(&self) -> ModelId {
        match self {
            Work::Generation(t) => t.model,
            Work::Tensor { model, .. } => *model,
        }
    }
}

/// What the auditor counted, for `/status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditCounts {
    pub passed: u64,
    pub faulty: u64,
    pub inconclusive: u64,
    /// Chosen for audit but dropped: the queue was full.
    pub dropped: u64,
    /// Could not be audited (no model here, or the audit failed).
    pub errors: u64,
    /// Challenges accepted on chain.
    pub challenged: u64,
}

/// One audit's outcome, for `/status`.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub provider: Address,
    pub session: Hash,
    pub attestation: Hash,
    pub verdict: &'static str,
    pub positions: usize,
    pub failed: usize,
    pub worst_margin: f32,
    pub audit_ms: u64,
    /// The challenge transaction, when one was sent.
    pub challenge_tx: Option<Hash>,
    pub note: String,
}

/// The gateway's auditor: which generations to audit, and what came of it.
pub struct Auditor {
    /// Parts per million of generations audited.
    rate_ppm: u32,
    queue: mpsc::Sender<Job>,
    counts: Mutex<AuditCounts>,
    findings: Mutex<VecDeque<Finding>>,
}

impl Auditor {
    /// An auditor of `rate` (0 to 1) of generations, and the queue its worker reads.
    pub(crate) fn new(rate: f64) -> (Arc<Auditor>, mpsc::Receiver<Job>) {
        let (queue, jobs) = mpsc::channel(AUDIT_QUEUE_MAX);
        let rate_ppm = (rate.clamp(0.0, 1.0) * 1e6).round() as u32;
        let a = Auditor {
            rate_ppm,
            queue,
            counts: Mutex::new(AuditCounts::default()),
            findings: Mutex::new(VecDeque::new()),
        };
        (Arc::new(a), jobs)
    }

    /// Called once a generation's receipt is signed: audits it with the configured
    /// probability. `job` is built only when it is chosen.
    pub(crate) fn offer(&self, job: impl FnOnce() -> Option<Job>) {
        if self.rate_ppm == 0 || rand::rng().random_range(0..1_000_000u32) >= self.rate_ppm {
            return;
        }
        let Some(job) = job() else { return };
        if self.queue.try_send(job).is_err() {
            self.counts.lock().expect("audit lock").dropped += 1;
        }
    }

    pub fn counts(&self) -> AuditCounts {
        self.counts.lock().expect("audit lock").clone()
    }

    pub fn findings(&self) -> Vec<Finding> {
        self.findings.lock().expect("audit lock").iter().cloned().collect()
    }

    fn record(&self, f: Finding, count: impl FnOnce(&mut AuditCounts)) {
        count(&mut self.counts.lock().expect("audit lock"));
        let mut findings = self.findings.lock().expect("audit lock");
        if findings.len() >= FINDINGS_KEPT {
            findings.pop_front();
        }
        findings.push_back(f);
    }
}

/// How audits run on this machine.
#[derive(Clone, Copy, Debug)]
pub struct AuditSettings {
    /// Share of generations audited, 0 to 1.
    pub rate: f64,
    /// CPU threads an audit uses.
    pub threads: u32,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings { rate: AUDIT_RATE_DEFAULT, threads: 1 }
    }
}

/// Runs the queued audits, one at a time, for as long as the gateway runs.
pub(crate) async fn work(app: Arc<App>, mut jobs: mpsc::Receiver<Job>) {
    let mut engines: BTreeMap<ModelId, Arc<dyn Engine>> = BTreeMap::new();
    let cache = ModelCache::from_env();
    while let Some(job) = jobs.recv().await {
        let model = job.work.model();
        let engine = match engines.get(&model) {
            Some(e) => e.clone(),
            None => match load(&cache, model, app.config.audit.threads).await {
                Ok(e) => {
                    engines.insert(model, e.clone());
                    e
                }
                Err(e) => {
                    warn!(target: "gateway::audit", %model, "cannot audit: {e}");
                    app.auditor.record(finding(&job, "error", None, 0, e), |c| c.errors += 1);
                    continue;
                }
            },
        };
        let started = Instant::now();
        let judged = match &job.work {
            Work::Generation(t) => {
                let transcript = t.clone();
                tokio::task::spawn_blocking(move || audit(engine.as_ref(), &transcript, &AuditRules::default())).await
            }
            Work::Tensor { request, outputs, .. } => {
                let (request, outputs) = (request.clone(), outputs.clone());
                tokio::task::spawn_blocking(move || audit_tensor(engine.as_ref(), &request, &outputs)).await
            }
        };
        let ms = started.elapsed().as_millis() as u64;
        let report = match judged {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                app.auditor.record(finding(&job, "error", None, ms, e.to_string()), |c| c.errors += 1);
                continue;
            }
            Err(e) => {
                app.auditor.record(finding(&job, "error", None, ms, e.to_string()), |c| c.errors += 1);
                continue;
            }
        };
        let mut f = finding(&job, "", Some(&report), ms, String::new());
        match report.verdict {
            Verdict::Honest => {
                f.verdict = "honest";
                app.auditor.record(f, |c| c.passed += 1);
            }
            Verdict::Inconclusive => {
                f.verdict = "inconclusive";
                app.auditor.record(f, |c| c.inconclusive += 1);
            }
            Verdict::Faulty => {
                f.verdict = "faulty";
                warn!(
                    target: "gateway::audit", provider = %job.provider, failed = report.failed,
                    positions = report.positions, worst = report.worst_margin(),
                    "a response is not what the model produces: shunning the provider and challenging it"
                );
                let why = format!("an audit found {} of {} positions off", report.failed, report.positions);
                app.directory.caught_lying(&job.provider, &model, &why);
                match challenge(&app, &job).await {
                    Ok(tx) => {
                        f.challenge_tx = Some(tx);
                        app.auditor.record(f, |c| {
                            c.faulty += 1;
                            c.challenged += 1;
                        });
                    }
                    Err(e) => {
                        warn!(target: "gateway::audit", provider = %job.provider, "cannot challenge: {e}");
                        f.note = format!("not challenged: {e}");
                        app.auditor.record(f, |c| c.faulty += 1);
                    }
                }
            }
        }
    }
}

fn finding(
    job: &Job,
    verdict: &'static str,
    report: Option<&plexus_inference::audit::AuditReport>,
    audit_ms: u64,
    note: String,
) -> Finding {
    Finding {
        provider: job.provider.clone(),
        session: job.session,
        attestation: job.attestation.hash(),
        verdict,
        positions: report.map_or(0, |r| r.positions),
        failed: report.map_or(0, |r| r.failed),
        worst_margin: report.map_or(0.0, |r| r.worst_margin()),
        audit_ms,
        challenge_tx: None,
        note,
    }
}

/// Loads `model` from the local cache for auditing (the gateway already holds its tokenizer
/// files; the weights come with them).
async fn load(cache: &ModelCache, model: ModelId, threads: u32) -> Result<Arc<dyn Engine>, String> {
    let cache = cache.clone();
    tokio::task::spawn_blocking(move || {
        let cached = cache
            .find(&model.to_string())
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no local copy of model {model} to re-run its responses with"))?;
        let threads = std::num::NonZeroU32::new(threads.max(1)).expect("non-zero");
        let defaults = LlamaConfig::default();
        let config = EngineConfig {
            llama: LlamaConfig {
                threads,
                threads_batch: threads,
                parallel: std::num::NonZeroU32::new(1).expect("non-zero"),
                ..defaults
            },
            ..EngineConfig::default()
        };
        info!(target: "gateway::audit", %model, "loading the model to audit with (once)");
        plexus_inference::load_engine(&cached, &config).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("loading task: {e}"))?
}

/// Sends the challenge and waits for the chain to accept it; returns its transaction hash.
/// A generation is challenged with its transcript (execution v3 and later), a tensor inference
/// with its inputs and attested outputs (v5 and later; a chain before that refuses it, and the
/// finding says so), when they fit one transaction.
async fn challenge(app: &Arc<App>, job: &Job) -> Result<Hash, String> {
    let params = app.chain.params().await.map_err(|e| e.to_string())?;
    let bond = params.challenge_bond_min.ok_or("the chain does not take challenges (execution before v3)")?;
    let (session, attestation, signature) = (job.session, job.attestation.clone(), job.signature.clone());
    let payload = match &job.work {
        Work::Generation(transcript) => {
            Payload::Challenge { session, attestation, signature, transcript: transcript.clone(), bond }
        }
        Work::Tensor { model, request, outputs } => {
            let evidence = plexus_serve::kserve::evidence(model, request, outputs);
            let values: usize = evidence.inputs.iter().chain(&evidence.outputs).map(|t| t.bits.len()).sum();
            if values > EVIDENCE_VALUES_MAX {
                return Err(format!(
                    "the request and its outputs hold {values} values, more than a challenge carries \
                     ({EVIDENCE_VALUES_MAX}); the provider is shunned here only"
                ));
            }
            Payload::ChallengeTensor { session, attestation, signature, evidence, bond }
        }
    };
    let (hash, _) = app.sessions.send_tx(payload).await.map_err(|e| e.to_string())?;
    app.chain.wait_tx(&hash, Duration::from_secs(60)).await.map_err(|e| e.to_string())?;
    info!(target: "gateway::audit", provider = %job.provider, tx = %hash, bond, "challenge opened");
    Ok(hash)
}
