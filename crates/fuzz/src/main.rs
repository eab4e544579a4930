//! `plexus-fuzz`: throws mutated bytes at every decoder that reads from outside (transactions,
//! blocks, v2 block frames, receipts, attestations, gossip batches, version announcements, consensus evidence,
//! consensus certificates and votes of both versions, consensus key registrations,
//! node config, genesis files) and at transaction admission, for a given time, and reports the
//! executions and any panic. A panic reachable from outside input is a remote crash.
//!
//! Coverage-blind but structure-aware: every target starts from valid encodings (a corpus built
//! here) and applies random edits to them — bit flips, byte overwrites with boundary values,
//! insertions, deletions, truncations, length-field corruption, splices of two inputs — so most
//! inputs get deep into a decoder before they go wrong. Any input that panics is written to
//! `--findings` with the target's name, so it can be replayed (`--replay FILE`).
//!
//! Run it with `scripts/fuzz` (all targets, a time each). Not part of CI: it runs for minutes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use plexus_execution::{Executor, NoEvidence};
use plexus_types::genesis::{Genesis, GenesisAccount, GenesisValidator};
use plexus_types::model::EngineKind;
use plexus_types::tx::{ModelPrice, Payload, ProposalKind, ProviderInfo, Transaction, VoteOption};
use plexus_types::version::{Layer, SupportedVersions, VersionRange};
use plexus_types::{
    Attestation, Block, Hash, Header, ModelManifest, Params, PrivateKey, Receipt, SignedReceipt, SignedTx,
};

const CHAIN: &str = "plexus-fuzz";

#[derive(Parser)]
#[command(about = "Fuzz Plexus's decoders and transaction admission with mutated inputs")]
struct Args {
    /// Targets to run (default: all). One of: tx, block, block_frame, receipt, attestation, gossip, hello,
    /// evidence, config, genesis, admission.
    targets: Vec<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seed of the mutation generator (a run is reproducible for the same seed and time).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where inputs that panicked are written.
    #[arg(long, default_value = "fuzz-findings")]
    findings: PathBuf,
    /// Replays one saved input against `targets[0]` instead of fuzzing.
    #[arg(long)]
    replay: Option<PathBuf>,
}

/// A small, fast generator (SplitMix64): mutation needs speed, not cryptographic quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// Values that sit on boundaries decoders check.
const INTERESTING: [u8; 10] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0x40, 0x20, 0x10, 0x02];

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(9) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(out.len() + 1);
                let n = 1 + rng.below(16);
                let fill = rng.next() as u8;
                out.splice(i..i, std::iter::repeat_n(fill, n));
            }
            3 if !out.is_empty() => {
                let i = rng.below(out.len());
                let n = (1 + rng.below(16)).min(out.len() - i);
                out.drain(i..i + n);
            }
            4 if !out.is_empty() => out.truncate(rng.below(out.len())),
            5 if out.len() >= 4 => {
                // A length prefix or integer made huge or zero.
                let i = rng.below(out.len() - 3);
                let v: [u8; 4] = if rng.below(2) == 0 { [0xff; 4] } else { [0; 4] };
                out[i..i + 4].copy_from_slice(&v);
            }
            6 if !other.is_empty() => {
                let cut = rng.below(out.len() + 1);
                let from = rng.below(other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            7 if !out.is_empty() => {
                let i = rng.below(out.len());
                let n = (1 + rng.below(32)).min(out.len() - i);
                let chunk = out[i..i + n].to_vec();
                let at = rng.below(out.len() + 1);
                out.splice(at..at, chunk);
            }
            _ => {
                let i = rng.below(out.len() + 1);
                out.insert(i, rng.next() as u8);
            }
        }
    }
    out
}

/// One fuzz target: a corpus of valid inputs and the function that consumes one.
struct Target {
    name: &'static str,
    corpus: Vec<Vec<u8>>,
    run: Box<dyn Fn(&[u8])>,
}

fn key(i: u64) -> PrivateKey {
    PrivateKey::from_seed(i)
}

fn manifest() -> ModelManifest {
    ModelManifest {
        name: "fuzz-model".into(),
        engine: EngineKind::LlamaCpp,
        weights_sha256: plexus_types::hash(b"w"),
        tokenizer_sha256: plexus_types::hash(b"t"),
        template_sha256: plexus_types::hash(b"c"),
        quantization: "Q4_1".into(),
        context_length: 2048,
    }
}

fn receipt() -> SignedReceipt {
    Receipt {
        session: plexus_types::hash(b"s"),
        seq: 3,
        cum_input_tokens: 100,
        cum_output_tokens: 40,
        cum_amount: 9,
        outputs_root: Hash::ZERO,
    }
    .sign(&key(2), CHAIN)
}

/// A challenge of a seeded, penalised generation, with the provider's (account 2's) signed
/// attestation: the seed covers every tag of the sampling's decoder.
fn challenge() -> Payload {
    use plexus_types::receipt::{LogitAdjustSpec, SamplingSpec};
    let transcript = plexus_types::receipt::Transcript {
        model: manifest().id(),
        prompt: vec![1, 2, 3, 4],
        max_tokens: 8,
        sampling: SamplingSpec::Adjusted {
            base: Box::new(SamplingSpec::Random {
                temperature_bits: 0.7f32.to_bits(),
                top_k: 40,
                top_p_bits: 0.95f32.to_bits(),
                min_p_bits: 0.05f32.to_bits(),
                seed: 7,
            }),
            adjust: LogitAdjustSpec {
                presence_bits: 0.5f32.to_bits(),
                frequency_bits: 1.0f32.to_bits(),
                bias: vec![(3, (-100.0f32).to_bits())],
            },
        },
        stop: vec!["\n\n".into()],
        output: vec![5, 6, 7, 8, 9, 10, 11, 12],
    };
    let attestation = Attestation {
        request_hash: transcript.request_hash(),
        output_hash: plexus_types::hash(b"o"),
        model: transcript.model,
        input_tokens: 4,
        output_tokens: 8,
        output_ids_hash: plexus_types::receipt::output_ids_hash(&transcript.output),
        logits_fingerprint: Hash::ZERO,
    };
    let signature = attestation.sign(&key(2), CHAIN);
    Payload::Challenge { session: plexus_types::hash(b"s"), attestation, signature, transcript, bond: 10_000_000 }
}

/// A challenge of a tensor inference (two rows of four inputs, one output each), with the
/// provider's (account 2's) signed attestation.
fn tensor_challenge() -> Payload {
    use plexus_types::tensor::{EvidenceTensor, TensorEvidence};
    let evidence = TensorEvidence {
        model: manifest().id(),
        inputs: vec![EvidenceTensor::from_f32("x", &[2, 4], &[0.5, 1.0, -1.0, 2.0, 0.0, 3.5, 1e-3, 7.0])],
        outputs: vec![EvidenceTensor::from_f32("y", &[2, 1], &[0.25, 0.75])],
    };
    let attestation = Attestation {
        request_hash: evidence.request_hash(),
        output_hash: evidence.output_hash(),
        model: evidence.model,
        input_tokens: 0,
        output_tokens: 2,
        output_ids_hash: Hash::ZERO,
        logits_fingerprint: Hash::ZERO,
    };
    let signature = attestation.sign(&key(2), CHAIN);
    Payload::ChallengeTensor { session: plexus_types::hash(b"s"), attestation, signature, evidence, bond: 10_000_000 }
}

/// Valid transactions of every kind, signed by account 1 with consecutive nonces from 0.
fn sample_txs() -> Vec<SignedTx> {
    let k = key(1);
    let to = key(2).address();
    let m = manifest();
    let payloads = vec![
        Payload::Transfer { to: to.clone(), amount: 5 },
        Payload::Stake { amount: 7, p2p_address: "127.0.0.1:9000".into() },
        Payload::Unstake { amount: 1 },
        Payload::RegisterProvider(ProviderInfo {
            endpoint: "https://127.0.0.1:8080".into(),
            region: "eu".into(),
            hardware: "2 vCPU".into(),
            prices: vec![ModelPrice { model: m.id(), input_per_1k: 1, output_per_1k: 2 }],
            versions: SupportedVersions::V1_ONLY,
        }),
        Payload::RegisterModel(m.clone()),
        Payload::OpenSession {
            provider: to.clone(),
            model: m.id(),
            deposit: 100_000,
            max_input_per_1k: 3,
            max_output_per_1k: 4,
            expiry_height: 99,
        },
        Payload::TopUpSession { session: plexus_types::hash(b"s"), amount: 3 },
        Payload::Claim { receipts: vec![receipt(), receipt()] },
        Payload::CloseSession { session: plexus_types::hash(b"s") },
        Payload::ReportEvidence { evidence: vec![1, 2, 3, 4] },
        Payload::SubmitProposal {
            kind: ProposalKind::Upgrade {
                layer: Layer::Execution,
                version: 2,
                activation_height: 10,
                deadline_height: 20,
            },
            deposit: 100_000_000,
        },
        Payload::SubmitProposal {
            kind: ProposalKind::ParamChange { name: "min_tx_fee".into(), value: 5, effective_height: 3 },
            deposit: 100_000_000,
        },
        Payload::SubmitProposal { kind: ProposalKind::TreasurySpend { to: to.clone(), amount: 1 }, deposit: 1 },
        Payload::SubmitProposal { kind: ProposalKind::Text { text: "hi".into() }, deposit: 1 },
        Payload::Vote { proposal: 0, option: VoteOption::NoWithVeto },
        Payload::SignalVersions { versions: SupportedVersions::V1_ONLY, shadow_ok: true },
        challenge(),
        Payload::ChallengeVote { challenge: 0, guilty: true },
        Payload::OpenSessionIn {
            provider: to.clone(),
            model: m.id(),
            deposit: 100_000,
            max_input_per_1k: 0,
            max_output_per_1k: 4,
            expiry_height: 99,
            regions: vec!["eu-west".into(), "eu-central".into()],
        },
        Payload::RegisterModel(ModelManifest { engine: EngineKind::TractOnnx, ..m.clone() }),
        tensor_challenge(),
        plexus_consensus::key_registration(CHAIN, &key(3).0, &key(3).address().0),
    ];
    payloads
        .into_iter()
        .enumerate()
        .map(|(n, payload)| Transaction { signer: k.address(), nonce: n as u64, fee: 1_000, payload }.sign(&k, CHAIN))
        .collect()
}

fn enc<T: commonware_codec::Encode>(v: &T) -> Vec<u8> {
    v.encode().to_vec()
}

fn genesis() -> Genesis {
    Genesis {
        chain_id: CHAIN.into(),
        accounts: (0..4).map(|i| GenesisAccount { address: key(i).address(), balance: 1_000_000_000_000 }).collect(),
        validators: vec![GenesisValidator {
            address: key(0).address(),
            stake: Params::default().min_stake,
            p2p_address: "127.0.0.1:9000".into(),
        }],
        params: Params::default(),
        // The newest execution version, so admission runs its checks (challenges included).
        versions: plexus_types::VersionVector {
            execution: plexus_execution::LATEST_EXECUTION_VERSION,
            ..plexus_types::VersionVector::V1
        },
    }
}

/// Valid bodies of each kind `api_body` reads, behind the byte that picks the parser.
fn api_corpus() -> Vec<Vec<u8>> {
    let bodies: [(u8, &str); 7] = [
        (0, r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stop":["x"],"seed":1}"#),
        (0, r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"stream":true}"#),
        (1, r#"{"model":"m","prompt":"Once","max_tokens":3,"temperature":0.7,"top_p":0.9}"#),
        (2, r#"{"model":"m","input":["a","b"],"encoding_format":"base64"}"#),
        (3, r#"{"id":"1","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}]}"#),
        (4, r#"{"outputs":[{"name":"y","shape":[2,1],"datatype":"FP32","data":[0.5,null]}]}"#),
        (3, r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"INT16","data":[1,-2]}],"outputs":[{"name":"y"}]}"#),
    ];
    let mut corpus: Vec<Vec<u8>> = bodies.iter().map(|(kind, body)| [&[*kind][..], body.as_bytes()].concat()).collect();
    // The binary tensor extension: the JSON header's length (u16, little-endian), then the body.
    let header = br#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP16","parameters":{"binary_data_size":6}}],"parameters":{"binary_data_output":true}}"#;
    let mut binary = vec![5];
    binary.extend_from_slice(&(header.len() as u16).to_le_bytes());
    binary.extend_from_slice(header);
    binary.extend_from_slice(&[0x00, 0x3c, 0x00, 0xc0, 0x00, 0x7c]);
    corpus.push(binary);
    corpus
}

fn stream_corpus() -> Vec<Vec<u8>> {
    let with = |kind: u8, bytes: &[u8]| [&[kind][..], bytes].concat();
    let wave: Vec<u8> =
        (0..400).flat_map(|i| ((i as f32 * 0.3).sin() * if i % 50 == 0 { 5.0 } else { 1.0 }).to_le_bytes()).collect();
    vec![
        with(0, &wave),
        with(1, br#"{"samples":[0.1,-0.2,3.5,1e3,0,0,0,0,0,0,0,0]}"#),
        with(1, br#"{"receipt":"00ff"}"#),
        with(2, b"trigger=r-peak&rate=360&before=90&alert=0.9"),
        with(2, b"hop=32"),
        with(
            3,
            br#"{"window":0,"start":0,"end":2,"outputs":[{"name":"probs","shape":[1,2],"datatype":"FP32","data":[0.1,0.9]}],"alert":true,"attestation":"00","signature":"00"}"#,
        ),
    ]
}

fn targets() -> Vec<Target> {
    let txs = sample_txs();
    let tx_corpus: Vec<Vec<u8>> = txs.iter().map(enc).collect();
    let block = Block {
        header: Header {
            height: 1,
            parent: Hash::ZERO,
            parent_view: 0,
            epoch: 0,
            view: 1,
            proposer: key(0).address(),
            timestamp_ms: 1,
            versions: plexus_types::VersionVector::V1,
            txs_root: plexus_types::block::txs_root(&txs[..4]),
            state_root: Hash::ZERO,
        },
        txs: txs[..4].to_vec(),
    };
    let att = Attestation {
        request_hash: plexus_types::hash(b"r"),
        output_hash: plexus_types::hash(b"o"),
        model: manifest().id(),
        input_tokens: 10,
        output_tokens: 20,
        output_ids_hash: plexus_types::receipt::output_ids_hash(&[1, 2, 3]),
        logits_fingerprint: Hash::ZERO,
    };
    let config_text =
        plexus_node::NodeConfig::template("127.0.0.1:26656".parse().unwrap(), "127.0.0.1:8545".parse().unwrap())
            .into_bytes();
    let genesis_json = genesis().to_json().into_bytes();

    // Admission: a genesis state where account 1 is funded, and the node's own checks.
    let g = genesis();
    let mut state: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (k, v) in plexus_execution::genesis::genesis_changes(&g) {
        if let Some(v) = v {
            state.insert(k, v);
        }
    }
    let exec = Executor::new(CHAIN, Arc::new(NoEvidence));
    let evidence = plexus_consensus::evidence::Verifier::new(CHAIN);
    let validators = vec![key(0).address(), key(1).address()];
    // Consensus certificates and votes of both versions (4 validators), and a key registration's
    // key and proof of possession, as a peer or a transaction would carry them.
    let (v1, v2) =
        (plexus_consensus::committee::Committee::new(1, 4), plexus_consensus::committee::Committee::new(2, 4));
    let certificate_corpus = vec![v1.finalization(), v2.finalization(), v1.votes()[0].clone(), v2.votes()[0].clone()];
    let possession = plexus_consensus::evidence::Verifier::new(CHAIN);
    let possession_corpus = match plexus_consensus::key_registration(CHAIN, &key(3).0, &key(3).address().0) {
        Payload::RegisterConsensusKey { key, proof } => vec![[key, proof].concat()],
        _ => unreachable!("key_registration builds a RegisterConsensusKey"),
    };

    vec![
        Target {
            name: "tx",
            corpus: tx_corpus.clone(),
            run: Box::new(|b| {
                if let Ok(tx) = SignedTx::decode(b) {
                    // What decodes re-encodes to the same bytes (canonical encoding).
                    assert_eq!(enc(&tx), b, "a transaction decoded from bytes it does not encode to");
                    let _ = tx.verify(CHAIN);
                }
            }),
        },
        Target {
            name: "block",
            corpus: vec![enc(&block)],
            run: Box::new(|b| {
                if let Ok(block) = Block::decode(b) {
                    let _ = block.txs_root_matches();
                    let _ = block.hash();
                }
            }),
        },
        Target {
            name: "block_frame",
            corpus: vec![plexus_network::blocks::encode(&enc(&block)), plexus_network::blocks::encode(&[7; 300])],
            run: Box::new(|b| {
                // Whatever decodes stays within the bound and is then a block to decode.
                const MAX: usize = 1 << 16;
                if let Ok(bytes) = plexus_network::blocks::decode(b, MAX) {
                    assert!(bytes.len() <= MAX, "a frame decoded to more than the bound");
                    let _ = Block::decode(&bytes[..]);
                }
            }),
        },
        Target {
            name: "receipt",
            corpus: vec![enc(&receipt()), receipt().to_hex().into_bytes()],
            run: Box::new(|b| {
                let _ = SignedReceipt::decode(b).map(|r| r.verify(&key(2).address(), CHAIN));
                if let Ok(text) = std::str::from_utf8(b) {
                    let _ = SignedReceipt::from_hex(text);
                }
            }),
        },
        Target {
            name: "attestation",
            corpus: vec![enc(&att), hex::encode(enc(&att)).into_bytes()],
            run: Box::new(|b| {
                let _ = Attestation::decode(b).map(|a| a.hash());
                if let Ok(text) = std::str::from_utf8(b) {
                    let _ = Attestation::from_hex(text);
                }
            }),
        },
        Target {
            name: "gossip",
            corpus: vec![
                enc(&plexus_node::gossip::Batch(txs.clone())),
                enc(&plexus_node::gossip::Batch(txs[..1].to_vec())),
            ],
            run: Box::new(|b| {
                use commonware_codec::DecodeExt as _;
                let _ = plexus_node::gossip::Batch::decode(commonware_codec::Copying(b));
            }),
        },
        Target {
            name: "hello",
            corpus: vec![enc(&VersionRange { min: 1, max: 2 })],
            run: Box::new(|b| {
                use commonware_codec::DecodeExt as _;
                let _ = VersionRange::decode(commonware_codec::Copying(b));
            }),
        },
        Target {
            name: "evidence",
            corpus: vec![vec![0, 1, 2, 3], vec![1; 200], vec![2; 400]],
            run: Box::new(move |b| {
                use plexus_execution::EvidenceVerifier as _;
                let _ = evidence.verify(b, &|_| Some(validators.clone()));
            }),
        },
        Target {
            name: "certificate",
            corpus: certificate_corpus,
            run: Box::new(move |b| {
                // Refused or accepted, never a panic; what verifies under one version never
                // verifies under the other, and its version reads back.
                let version = plexus_consensus::finalization_version(b);
                let (ok1, ok2) = (v1.verify_finalization(b), v2.verify_finalization(b));
                assert!(!(ok1 && ok2), "a certificate verified under both consensus versions");
                if ok1 || ok2 {
                    assert_eq!(
                        version,
                        Some(if ok1 { 1 } else { 2 }),
                        "a verified certificate read back as another version"
                    );
                }
                let _ = v1.verify_votes(&[b.to_vec()]);
                let _ = v2.verify_votes(&[b.to_vec()]);
            }),
        },
        Target {
            name: "consensus_key",
            corpus: possession_corpus,
            run: Box::new(move |b| {
                use plexus_execution::EvidenceVerifier as _;
                // A registration's key (96 bytes on G2) and proof (48 bytes on G1), split where
                // the valid encoding splits them.
                let (key_bytes, proof) = b.split_at(b.len().min(96));
                let _ = possession.verify_possession(&key(3).address(), key_bytes, proof);
            }),
        },
        Target {
            name: "config",
            corpus: vec![config_text],
            run: Box::new(|b| {
                if let Ok(text) = std::str::from_utf8(b) {
                    let _ = plexus_node::NodeConfig::parse(text, std::path::Path::new("fuzz.toml"));
                }
            }),
        },
        Target {
            name: "genesis",
            corpus: vec![genesis_json],
            run: Box::new(|b| {
                if let Ok(text) = std::str::from_utf8(b) {
                    let _ = Genesis::from_json(text);
                }
            }),
        },
        Target {
            // A device's stream: frames, parameters, and (at a gateway) a provider's results.
            // The first byte picks which; the rest is the input.
            name: "stream",
            corpus: stream_corpus(),
            run: Box::new(|b| {
                use plexus_serve::stream::*;
                let Some((&kind, rest)) = b.split_first() else { return };
                let text = std::str::from_utf8(rest).unwrap_or("");
                let samples = match kind % 4 {
                    0 => decode_binary(rest).ok(),
                    1 => match decode_text(text) {
                        Ok(Upstream::Samples(s)) => Some(s),
                        _ => None,
                    },
                    2 => {
                        if let Ok(p) = StreamParams::parse(text) {
                            for window in [1, 2, 256, WINDOW_MAX, WINDOW_MAX + 1] {
                                let _ = p.for_window(window);
                            }
                        }
                        None
                    }
                    _ => {
                        if let Ok(r) = serde_json::from_str::<WindowResult>(text) {
                            let _ = r.tensors();
                        }
                        None
                    }
                };
                // Whatever decodes goes through both kinds of windows.
                if let Some(samples) = samples {
                    for trigger in [Trigger::Hop(3), Trigger::RPeak { rate: 100, before: 2 }] {
                        let mut ring = Ring::default();
                        let mut w = Windower::new(8, trigger);
                        ring.push(&samples);
                        for start in w.push(&samples, ring.end()) {
                            assert!(ring.window(start, 8).is_some(), "a window announced outside the ring");
                        }
                    }
                }
            }),
        },
        Target {
            // API bodies as apps send them: the OpenAI routes' parsers (chat, completions,
            // embeddings) and the Open Inference Protocol's (a request, and the outputs a gateway
            // reads back from a provider). The first byte picks which; the rest is the body.
            name: "api_body",
            corpus: api_corpus(),
            run: Box::new(|b| {
                let Some((&kind, body)) = b.split_first() else { return };
                match kind % 6 {
                    0 => drop(plexus_serve::openai::parse_chat(body)),
                    1 => drop(plexus_serve::openai::parse_completion(body)),
                    2 => drop(plexus_serve::openai::parse_embeddings(body)),
                    3 | 5 => {
                        // Kind 5: the binary tensor extension, the JSON header's length first.
                        let (body, header_len) = match (kind % 6, body) {
                            (5, [a, b, rest @ ..]) => (rest, Some(usize::from(u16::from_le_bytes([*a, *b])))),
                            (5, _) => return,
                            _ => (body, None),
                        };
                        if let Ok((sent, len)) = plexus_serve::kserve::wire::for_provider(body, header_len)
                            && let Ok(parsed) = plexus_serve::kserve::parse(body, header_len)
                        {
                            // A gateway asks the provider for the very request the app sent.
                            assert_eq!(plexus_serve::kserve::parse(&sent, len).map(|p| p.request), Ok(parsed.request));
                        }
                        if let Ok(plexus_serve::kserve::Parsed { request, .. }) =
                            plexus_serve::kserve::parse(body, header_len)
                        {
                            // What parses is finite: nothing else reaches an engine.
                            assert!(request.inputs.iter().all(|t| t.data.iter().all(|v| v.is_finite())));
                            let _ = plexus_serve::kserve::rows(&request);
                            let _ = plexus_serve::kserve::request_hash(&plexus_types::Hash::ZERO, &request);
                        }
                    }
                    _ => {
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                            for rows in [0, 1, 2, 64] {
                                let _ = plexus_serve::kserve::parse_outputs(&v, rows);
                            }
                        }
                    }
                }
            }),
        },
        Target {
            name: "admission",
            corpus: tx_corpus,
            run: Box::new(move |b| {
                if let Ok(tx) = SignedTx::decode(b) {
                    // Past the signature (mutated ones rarely verify), straight into payloads.
                    let _ = exec.check_tx_signed(&state, 1, &tx, true);
                    let _ = exec.check_queued(&state, &tx, 12_345, true);
                    let _ = exec.simulate_tx(&state, 1, &tx);
                }
            }),
        },
    ]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let all = targets();
    let names: Vec<&str> = all.iter().map(|t| t.name).collect();
    for t in &args.targets {
        anyhow::ensure!(names.contains(&t.as_str()), "unknown target {t:?} (known: {})", names.join(", "));
    }
    let chosen: Vec<&Target> =
        all.iter().filter(|t| args.targets.is_empty() || args.targets.iter().any(|n| n == t.name)).collect();
    if let Some(path) = &args.replay {
        let input = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let t = chosen.first().context("name the target to replay against")?;
        (t.run)(&input);
        println!("{}: no panic on {}", t.name, path.display());
        return Ok(());
    }
    // Panics are expected to be caught and counted; keep their messages short.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let mut rng = Rng(args.seed);
    let mut total = 0u64;
    let mut findings = 0u64;
    println!("{:<12} {:>12} {:>12} {:>9}", "target", "executions", "per second", "panics");
    for t in chosen {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(args.seconds);
        let (mut runs, mut panics) = (0u64, 0u64);
        // The corpus itself first: valid inputs must never panic.
        for input in &t.corpus {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.run)(input))).is_err() {
                panics += 1;
                save(&args.findings, t.name, input)?;
            }
        }
        while Instant::now() < deadline {
            for _ in 0..256 {
                let a = &t.corpus[rng.below(t.corpus.len())];
                let b = &t.corpus[rng.below(t.corpus.len())];
                let input = mutate(&mut rng, a, b);
                runs += 1;
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.run)(&input))).is_err() {
                    panics += 1;
                    save(&args.findings, t.name, &input)?;
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!("{:<12} {:>12} {:>12.0} {:>9}", t.name, runs, runs as f64 / secs, panics);
        total += runs;
        findings += panics;
    }
    println!("{:<12} {:>12} {:>12} {:>9}", "total", total, "", findings);
    anyhow::ensure!(findings == 0, "{findings} inputs panicked; see {}", args.findings.display());
    Ok(())
}

fn save(dir: &std::path::Path, target: &str, input: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{target}-{}.bin", plexus_types::hash(input)));
    std::fs::write(&path, input)?;
    eprintln!("saved {}", path.display());
    Ok(())
}
