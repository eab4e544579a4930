//! The golden history: a recorded chain of a few hundred blocks with every transaction kind, a
//! governance vote, parameter changes, a treasury spend and two upgrades (execution v2, data v2),
//! replayed on every commit. Each block must leave the state with the digest it had when the
//! history was recorded, so an edit that changes what a released version computes fails here,
//! at the first block it touches. (A new behaviour is a new version, never an edit of an old
//! one.)
//!
//! The fixture is `tests/golden/history.json`. To record it again after a deliberate protocol
//! change (a new network, never a running one):
//! `PLEXUS_WRITE_GOLDEN=1 cargo test -p plexus-execution --test golden`.

use std::collections::BTreeMap;
use std::sync::Arc;

use plexus_execution::{BlockEnv, Executor, NoEvidence, genesis::genesis_changes, session_id};
use plexus_types::genesis::{Genesis, GenesisAccount, GenesisValidator};
use plexus_types::model::EngineKind;
use plexus_types::tx::{ModelPrice, Payload, ProposalKind, ProviderInfo, Transaction, VoteOption};
use plexus_types::version::{Layer, SupportedVersions, VersionRange};
use plexus_types::{Address, Amount, Hash, ModelManifest, Params, PrivateKey, Receipt, SignedTx, UNITS_PER_PLX};
use serde::{Deserialize, Serialize};

const CHAIN: &str = "plexus-golden";
/// The fixture in the checkout being tested (read at run time: a build cache shared between
/// checkouts may hold a test binary compiled in another).
fn fixture() -> String {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    format!("{dir}/tests/golden/history.json")
}

#[derive(Serialize, Deserialize)]
struct History {
    genesis: Genesis,
    blocks: Vec<BlockRecord>,
}

#[derive(Serialize, Deserialize)]
struct BlockRecord {
    height: u64,
    proposer: Address,
    /// Hex of each signed transaction's canonical encoding.
    txs: Vec<String>,
    /// SHA-256 over every (key, value) of the state after the block, in key order.
    state: Hash,
}

type State = BTreeMap<Vec<u8>, Vec<u8>>;

fn digest(state: &State) -> Hash {
    let mut buf = Vec::new();
    for (k, v) in state {
        buf.extend((k.len() as u32).to_be_bytes());
        buf.extend(k);
        buf.extend((v.len() as u32).to_be_bytes());
        buf.extend(v);
    }
    plexus_types::hash(&buf)
}

fn commit(state: &mut State, changes: plexus_execution::ChangeSet) {
    for (k, v) in changes {
        match v {
            Some(v) => state.insert(k, v),
            None => state.remove(&k),
        };
    }
}

#[test]
fn every_version_replays_the_golden_history_to_the_same_states() {
    if std::env::var_os("PLEXUS_WRITE_GOLDEN").is_some() {
        let history = record();
        std::fs::create_dir_all(std::path::Path::new(&fixture()).parent().unwrap()).unwrap();
        std::fs::write(fixture(), serde_json::to_string_pretty(&history).unwrap() + "\n").unwrap();
        eprintln!("wrote {} blocks to {}", history.blocks.len(), fixture());
    }
    let history: History = serde_json::from_str(&std::fs::read_to_string(fixture()).unwrap()).unwrap();
    assert!(history.blocks.len() >= 200, "the history is a few hundred blocks");
    let exec = Executor::new(CHAIN, Arc::new(NoEvidence));
    let mut state = State::new();
    commit(&mut state, genesis_changes(&history.genesis));
    let mut kinds = std::collections::BTreeSet::new();
    for b in &history.blocks {
        let txs: Vec<SignedTx> = b.txs.iter().map(|t| SignedTx::decode(&hex::decode(t).unwrap()).unwrap()).collect();
        kinds.extend(txs.iter().map(|t| t.tx.payload.kind()));
        let env = BlockEnv { height: b.height, proposer: b.proposer.clone() };
        let outcome = exec
            .execute_block(&state, &env, &txs, true)
            .unwrap_or_else(|e| panic!("block {} no longer executes: {e}", b.height));
        commit(&mut state, outcome.changes);
        assert_eq!(
            digest(&state),
            b.state,
            "block {} leaves a different state than when the history was recorded: a released \
             version's behaviour changed (make it a new version instead)",
            b.height
        );
    }
    plexus_execution::state::audit(&state).unwrap();
    // The history covers every transaction kind and both upgrades.
    assert_eq!(kinds.len(), 13, "{kinds:?}");
    let mut o = plexus_execution::Overlay::new(&state);
    let versions = plexus_execution::state::Store::new(&mut o).versions();
    assert_eq!((versions.execution, versions.data), (2, 2));
}

// ---- recording ----

struct Recorder {
    exec: Executor,
    state: State,
    keys: Vec<PrivateKey>,
    nonces: BTreeMap<Address, u64>,
    blocks: Vec<BlockRecord>,
}

impl Recorder {
    fn addr(&self, i: usize) -> Address {
        self.keys[i].address()
    }

    fn block(&mut self, txs: Vec<SignedTx>) -> plexus_execution::BlockOutcome {
        let height = self.blocks.len() as u64 + 1;
        let proposer = self.addr((height % 4) as usize);
        let env = BlockEnv { height, proposer: proposer.clone() };
        let outcome = self.exec.execute_block(&self.state, &env, &txs, true).expect("recorded blocks are valid");
        commit(&mut self.state, outcome.changes.clone());
        self.blocks.push(BlockRecord {
            height,
            proposer,
            txs: txs.iter().map(|t| hex::encode(plexus_types::codec::to_vec(t))).collect(),
            state: digest(&self.state),
        });
        outcome
    }

    fn until(&mut self, height: u64) {
        while (self.blocks.len() as u64) < height {
            self.block(vec![]);
        }
    }

    fn height(&self) -> u64 {
        self.blocks.len() as u64
    }
}

impl Recorder {
    /// The fee in force: the history raises `min_tx_fee` half way.
    fn fee_now(&self) -> Amount {
        plexus_execution::params(&self.state).min_tx_fee
    }
}

fn ok(out: &plexus_execution::BlockOutcome) {
    for r in &out.results {
        assert_eq!(r.error, None, "{} failed while recording", r.kind);
    }
}

fn record() -> History {
    let keys: Vec<PrivateKey> = (0..10u64).map(|i| PrivateKey::from_seed(7_000 + i)).collect();
    let mut params = Params::default();
    params.set("epoch_length_blocks", 20).unwrap();
    params.set("voting_period_blocks", 10).unwrap();
    params.set("unbonding_delay_blocks", 6).unwrap();
    params.set("session_grace_blocks", 4).unwrap();
    let genesis = Genesis {
        chain_id: CHAIN.into(),
        accounts: keys
            .iter()
            .map(|k| GenesisAccount { address: k.address(), balance: 1_000_000 * UNITS_PER_PLX })
            .collect(),
        validators: keys[..4]
            .iter()
            .enumerate()
            .map(|(i, k)| GenesisValidator {
                address: k.address(),
                stake: params.min_stake * (i as u128 + 1),
                p2p_address: format!("10.0.0.{}:9000", i + 1),
            })
            .collect(),
        params,
        versions: plexus_types::VersionVector::V1,
    };
    genesis.validate().unwrap();
    let mut state = State::new();
    commit(&mut state, genesis_changes(&genesis));
    let mut r = Recorder {
        exec: Executor::new(CHAIN, Arc::new(NoEvidence)),
        state,
        keys,
        nonces: BTreeMap::new(),
        blocks: Vec::new(),
    };
    let tx = |r: &mut Recorder, who: usize, payload: Payload| {
        let fee = r.fee_now();
        let key = r.keys[who].clone();
        let nonce = r.nonces.entry(key.address()).or_insert(0);
        let t = Transaction { signer: key.address(), nonce: *nonce, fee, payload }.sign(&key, CHAIN);
        *nonce += 1;
        t
    };
    let min = params_of(&r).min_stake;
    let deposit = params_of(&r).proposal_deposit_min;

    // Transfers, a new staker, a provider with a model.
    let (a5, a6) = (r.addr(5), r.addr(6));
    let t = vec![
        tx(&mut r, 4, Payload::Transfer { to: a5.clone(), amount: 12_345 }),
        tx(&mut r, 5, Payload::Transfer { to: a6.clone(), amount: 7 }),
        tx(&mut r, 6, Payload::Stake { amount: 2 * min, p2p_address: "10.0.0.7:9000".into() }),
    ];
    ok(&r.block(t));
    let manifest = ModelManifest {
        name: "golden-llm".into(),
        engine: EngineKind::LlamaCpp,
        weights_sha256: plexus_types::hash(b"weights"),
        tokenizer_sha256: plexus_types::hash(b"tokenizer"),
        template_sha256: plexus_types::hash(b"template"),
        quantization: "Q4_1".into(),
        context_length: 2048,
    };
    let model = manifest.id();
    let t = vec![
        tx(&mut r, 7, Payload::RegisterModel(manifest)),
        tx(&mut r, 8, Payload::Stake { amount: min / 2, p2p_address: String::new() }),
    ];
    ok(&r.block(t));
    let price = ModelPrice { model, input_per_1k: 40, output_per_1k: 90 };
    let info = ProviderInfo {
        endpoint: "https://provider.example:8443".into(),
        region: "eu-west".into(),
        hardware: "2 vCPU".into(),
        prices: vec![price],
        versions: SupportedVersions::V1_ONLY,
    };
    ok(&{
        let t = tx(&mut r, 8, Payload::RegisterProvider(info));
        r.block(vec![t])
    });

    // Sessions: two clients, top-ups, claims with receipts, closes by client and provider.
    let provider = r.addr(8);
    let mut sessions = Vec::new();
    for client in [4usize, 5] {
        let nonce = *r.nonces.get(&r.addr(client)).unwrap_or(&0);
        sessions.push((session_id(&r.addr(client), nonce), client));
        let expiry = r.height() + 80;
        let open = tx(
            &mut r,
            client,
            Payload::OpenSession {
                provider: provider.clone(),
                model,
                deposit: 50_000,
                max_input_per_1k: 50,
                max_output_per_1k: 100,
                expiry_height: expiry,
            },
        );
        ok(&r.block(vec![open]));
    }
    let top = tx(&mut r, 4, Payload::TopUpSession { session: sessions[0].0, amount: 20_000 });
    ok(&r.block(vec![top]));
    for round in 1..=3u64 {
        let receipts: Vec<_> = sessions
            .iter()
            .map(|(id, client)| {
                let (input, output) = (round * 300, round * 120 + *client as u64);
                Receipt {
                    session: *id,
                    seq: round,
                    cum_input_tokens: input,
                    cum_output_tokens: output,
                    cum_amount: plexus_execution::price_of(&price, input, output).unwrap(),
                    outputs_root: plexus_types::hash(&round.to_be_bytes()),
                }
                .sign(&r.keys[*client], CHAIN)
            })
            .collect();
        ok(&{
            let t = tx(&mut r, 8, Payload::Claim { receipts });
            r.block(vec![t])
        });
        r.block(vec![]);
    }
    ok(&{
        let t = tx(&mut r, 4, Payload::CloseSession { session: sessions[0].0 });
        r.block(vec![t])
    });
    ok(&{
        let t = tx(&mut r, 8, Payload::CloseSession { session: sessions[1].0 });
        r.block(vec![t])
    });
    // Evidence this node cannot verify: the payload fails, the fee is charged (recorded as is).
    let ev = {
        let t = tx(&mut r, 9, Payload::ReportEvidence { evidence: vec![1, 2, 3] });
        r.block(vec![t])
    };
    assert!(ev.results[0].error.is_some());
    // Unstake and let it mature; a validator set changes at an epoch boundary.
    ok(&{
        let t = tx(&mut r, 6, Payload::Unstake { amount: min / 2 });
        r.block(vec![t])
    });
    r.until(40);

    // Governance: a parameter change, a treasury spend, a text, all voted by stake.
    let fill: Vec<_> = (0..40).map(|i| tx(&mut r, 9, Payload::Transfer { to: a5.clone(), amount: i + 1 })).collect();
    ok(&r.block(fill));
    let effective = r.height() + 1 + 10 + 8;
    let proposals = [
        ProposalKind::ParamChange { name: "min_tx_fee".into(), value: 2_000, effective_height: effective },
        ProposalKind::TreasurySpend { to: a6.clone(), amount: 5_000 },
        ProposalKind::Text { text: "the golden history".into() },
    ];
    let submit: Vec<_> =
        proposals.into_iter().map(|kind| tx(&mut r, 9, Payload::SubmitProposal { kind, deposit })).collect();
    ok(&r.block(submit));
    for (voter, option) in [
        (0, VoteOption::Yes),
        (1, VoteOption::Yes),
        (2, VoteOption::No),
        (3, VoteOption::Yes),
        (6, VoteOption::Abstain),
    ] {
        let votes: Vec<_> = (0..3).map(|p| tx(&mut r, voter, Payload::Vote { proposal: p, option })).collect();
        ok(&r.block(votes));
    }
    r.until(effective + 2);
    assert_eq!(params_of(&r).min_tx_fee, 2_000);

    // Upgrades: execution v2 and data v2, voted, signalled with passing shadow runs, activated.
    let at = r.height() + 1 + 10 + 6;
    let upgrades = [
        ProposalKind::Upgrade { layer: Layer::Execution, version: 2, activation_height: at, deadline_height: at + 40 },
        ProposalKind::Upgrade { layer: Layer::Data, version: 2, activation_height: at, deadline_height: at + 40 },
    ];
    let submit: Vec<_> =
        upgrades.into_iter().map(|kind| tx(&mut r, 9, Payload::SubmitProposal { kind, deposit })).collect();
    ok(&r.block(submit));
    for voter in 0..4 {
        let votes: Vec<_> =
            (3..5).map(|p| tx(&mut r, voter, Payload::Vote { proposal: p, option: VoteOption::Yes })).collect();
        ok(&r.block(votes));
    }
    let versions = SupportedVersions {
        execution: VersionRange { min: 1, max: 2 },
        data: VersionRange { min: 1, max: 2 },
        ..SupportedVersions::V1_ONLY
    };
    let signals: Vec<_> =
        (0..4).map(|v| tx(&mut r, v, Payload::SignalVersions { versions, shadow_ok: true })).collect();
    ok(&r.block(signals));
    r.until(at + 2);
    {
        let mut o = plexus_execution::Overlay::new(&r.state);
        let v = plexus_execution::state::Store::new(&mut o).versions();
        assert_eq!((v.execution, v.data), (2, 2), "both upgrades activated while recording");
    }
    // Life under v2: proposer rewards, sessions indexed by client, more of everything.
    for i in 0..60u64 {
        let mut txs =
            vec![tx(&mut r, (i % 4) as usize + 4, Payload::Transfer { to: a6.clone(), amount: 100 + i as u128 })];
        if i % 15 == 0 {
            let nonce = *r.nonces.get(&r.addr(5)).unwrap_or(&0);
            let id = session_id(&r.addr(5), nonce);
            let expiry = r.height() + 30;
            txs.push(tx(
                &mut r,
                5,
                Payload::OpenSession {
                    provider: provider.clone(),
                    model,
                    deposit: 30_000,
                    max_input_per_1k: 50,
                    max_output_per_1k: 100,
                    expiry_height: expiry,
                },
            ));
            ok(&r.block(txs));
            let receipt = Receipt {
                session: id,
                seq: 1,
                cum_input_tokens: 1_000 + i,
                cum_output_tokens: 500,
                cum_amount: plexus_execution::price_of(&price, 1_000 + i, 500).unwrap(),
                outputs_root: Hash::ZERO,
            }
            .sign(&r.keys[5], CHAIN);
            ok(&{
                let t = tx(&mut r, 8, Payload::Claim { receipts: vec![receipt] });
                r.block(vec![t])
            });
            continue;
        }
        ok(&r.block(txs));
    }
    r.until(260);
    History { genesis, blocks: r.blocks }
}

fn params_of(r: &Recorder) -> Params {
    plexus_execution::params(&r.state)
}
