//! Unit and property tests of execution v1 on an in-memory state.

use std::collections::BTreeMap;
use std::sync::Arc;

use plexus_types::genesis::{Genesis, GenesisAccount, GenesisValidator};
use plexus_types::model::EngineKind;
use plexus_types::tx::{ModelPrice, Payload, ProviderInfo, Transaction};
use plexus_types::version::SupportedVersions;
use plexus_types::{Address, Amount, Hash, ModelManifest, Params, PrivateKey, Receipt, SignedTx, hash};
use proptest::prelude::*;

use crate::state::{Session, SessionStatus, Store, audit, keys};
use crate::*;

const CHAIN: &str = "plexus-test";
const PLX: Amount = plexus_types::UNITS_PER_PLX;

struct Chain {
    state: BTreeMap<Vec<u8>, Vec<u8>>,
    exec: Executor,
    height: u64,
    keys: Vec<PrivateKey>,
    nonces: BTreeMap<Address, u64>,
}

fn params() -> Params {
    Params { epoch_length_blocks: 10, unbonding_delay_blocks: 5, session_grace_blocks: 3, ..Params::default() }
}

impl Chain {
    fn new(accounts: usize) -> Chain {
        let keys: Vec<PrivateKey> = (0..accounts as u64).map(PrivateKey::from_seed).collect();
        let params = params();
        let genesis = Genesis {
            chain_id: CHAIN.into(),
            accounts: keys.iter().map(|k| GenesisAccount { address: k.address(), balance: 1_000_000 * PLX }).collect(),
            validators: keys[..2]
                .iter()
                .enumerate()
                .map(|(i, k)| GenesisValidator {
                    address: k.address(),
                    stake: params.min_stake * (i as u128 + 1),
                    p2p_address: format!("127.0.0.1:{}", 9000 + i),
                })
                .collect(),
            params,
        };
        genesis.validate().unwrap();
        let mut state = BTreeMap::new();
        commit(&mut state, genesis::genesis_changes(&genesis));
        Chain { state, exec: Executor::new(CHAIN, Arc::new(NoEvidence)), height: 0, keys, nonces: BTreeMap::new() }
    }

    fn tx(&mut self, who: usize, payload: Payload) -> SignedTx {
        let key = &self.keys[who];
        let nonce = self.nonces.entry(key.address()).or_insert(0);
        let tx = Transaction { signer: key.address(), nonce: *nonce, fee: 1_000, payload }.sign(key, CHAIN);
        *nonce += 1;
        tx
    }

    fn block(&mut self, txs: Vec<SignedTx>) -> BlockOutcome {
        let env = BlockEnv { height: self.height + 1, proposer: self.keys[0].address() };
        let outcome = self.exec.execute_block(&self.state, &env, &txs, true).expect("block is valid");
        commit(&mut self.state, outcome.changes.clone());
        self.height += 1;
        audit(&self.state).expect("supply audit");
        outcome
    }

    fn try_block(&mut self, txs: Vec<SignedTx>) -> Result<BlockOutcome, BlockError> {
        let env = BlockEnv { height: self.height + 1, proposer: self.keys[0].address() };
        self.exec.execute_block(&self.state, &env, &txs, true)
    }

    fn addr(&self, i: usize) -> Address {
        self.keys[i].address()
    }

    fn balance(&self, i: usize) -> Amount {
        let mut o = Overlay::new(&self.state);
        Store::new(&mut o).account(&self.addr(i)).balance
    }

    fn session(&self, id: &Hash) -> Session {
        let mut o = Overlay::new(&self.state);
        Store::new(&mut o).read(&keys::session(id)).unwrap()
    }
}

fn commit(state: &mut BTreeMap<Vec<u8>, Vec<u8>>, changes: ChangeSet) {
    for (k, v) in changes {
        match v {
            Some(v) => state.insert(k, v),
            None => state.remove(&k),
        };
    }
}

fn model() -> ModelManifest {
    ModelManifest {
        name: "tiny-llm".into(),
        engine: EngineKind::LlamaCpp,
        weights_sha256: hash(b"w"),
        tokenizer_sha256: hash(b"t"),
        template_sha256: hash(b"c"),
        quantization: "Q4_1".into(),
        context_length: 2048,
    }
}

/// A chain where account 2 is a provider of `model()` at 10/20 per 1k tokens.
fn with_provider() -> Chain {
    let mut c = Chain::new(4);
    let stake = params().min_provider_stake;
    let t1 = c.tx(2, Payload::RegisterModel(model()));
    let t2 = c.tx(2, Payload::Stake { amount: stake, p2p_address: String::new() });
    let t3 = c.tx(
        2,
        Payload::RegisterProvider(ProviderInfo {
            endpoint: "http://127.0.0.1:8080".into(),
            region: "eu".into(),
            hardware: "2 vCPU".into(),
            prices: vec![ModelPrice { model: model().id(), input_per_1k: 10, output_per_1k: 20 }],
            versions: SupportedVersions::V1_ONLY,
        }),
    );
    let out = c.block(vec![t1, t2, t3]);
    assert!(out.results.iter().all(|r| r.error.is_none()), "{:?}", out.results);
    c
}

fn open(c: &mut Chain, client: usize, deposit: Amount) -> Hash {
    let nonce = *c.nonces.get(&c.addr(client)).unwrap_or(&0);
    let expiry = c.height + 20;
    let tx = c.tx(
        client,
        Payload::OpenSession {
            provider: c.addr(2),
            model: model().id(),
            deposit,
            max_input_per_1k: 10,
            max_output_per_1k: 20,
            expiry_height: expiry,
        },
    );
    let out = c.block(vec![tx]);
    assert_eq!(out.results[0].error, None);
    session_id(&c.addr(client), nonce)
}

#[test]
fn transfer_moves_money_and_charges_fee() {
    let mut c = Chain::new(3);
    let before = (c.balance(0), c.balance(1));
    let tx = c.tx(0, Payload::Transfer { to: c.addr(1), amount: 5 * PLX });
    let out = c.block(vec![tx]);
    assert_eq!(out.results[0].error, None);
    assert_eq!(c.balance(0), before.0 - 5 * PLX - 1_000);
    assert_eq!(c.balance(1), before.1 + 5 * PLX);
    let supply = audit(&c.state).unwrap();
    assert_eq!(supply.treasury, 1_000);
}

#[test]
fn overdraft_fails_payload_but_charges_fee_and_bumps_nonce() {
    let mut c = Chain::new(3);
    let before = c.balance(0);
    let tx = c.tx(0, Payload::Transfer { to: c.addr(1), amount: 10_000_000 * PLX });
    // The API rejects it up front...
    let err = c.exec.check_tx(&c.state, 1, &tx).unwrap_err();
    assert!(matches!(err, TxError::WouldFail(ExecError::InsufficientBalance { .. })), "{err}");
    // ...and if it is ordered anyway, the payload fails with the fee charged.
    let out = c.block(vec![tx]);
    assert!(out.results[0].error.as_ref().unwrap().contains("insufficient balance"));
    assert_eq!(c.balance(0), before - 1_000);
    let next = c.tx(0, Payload::Transfer { to: c.addr(1), amount: 1 });
    assert_eq!(next.tx.nonce, 1);
    assert_eq!(c.block(vec![next]).results[0].error, None);
}

#[test]
fn invalid_transactions_invalidate_the_block() {
    let mut c = Chain::new(3);
    // Wrong nonce.
    let mut tx = c.tx(0, Payload::Transfer { to: c.addr(1), amount: 1 });
    tx.tx.nonce = 7;
    let tx = tx.tx.sign(&c.keys[0], CHAIN);
    assert!(matches!(c.try_block(vec![tx.clone()]), Err(BlockError::Tx { error: TxError::WrongNonce { expected: 0, got: 7 }, .. })));
    assert!(matches!(c.exec.check_tx(&c.state, 1, &tx), Err(TxError::WrongNonce { .. })));
    // Signed for another chain.
    let other = Transaction { signer: c.addr(0), nonce: 0, fee: 1_000, payload: Payload::Unstake { amount: 1 } }
        .sign(&c.keys[0], "other-chain");
    assert!(matches!(c.try_block(vec![other.clone()]), Err(BlockError::Tx { error: TxError::BadSignature, .. })));
    assert_eq!(c.exec.check_tx(&c.state, 1, &other), Err(TxError::BadSignature));
    // Fee too low.
    let cheap = Transaction { signer: c.addr(0), nonce: 0, fee: 1, payload: Payload::Unstake { amount: 1 } }
        .sign(&c.keys[0], CHAIN);
    assert!(matches!(c.exec.check_tx(&c.state, 1, &cheap), Err(TxError::FeeTooLow { .. })));
    // None of it changed state.
    assert_eq!(c.balance(0), 1_000_000 * PLX);
}

#[test]
fn build_block_skips_inadmissible_transactions() {
    let mut c = Chain::new(3);
    let good = c.tx(0, Payload::Transfer { to: c.addr(1), amount: 1 });
    let mut gap = c.tx(0, Payload::Transfer { to: c.addr(1), amount: 1 });
    gap.tx.nonce = 5;
    let gap = gap.tx.sign(&c.keys[0], CHAIN);
    let env = BlockEnv { height: 1, proposer: c.addr(0) };
    let (included, outcome, dropped) = c.exec.build_block(&c.state, &env, vec![good.clone(), gap], 100, 1 << 20).unwrap();
    assert_eq!(included, vec![good]);
    assert_eq!(outcome.results.len(), 1);
    assert_eq!(dropped.len(), 1);
}

#[test]
fn unstake_unbonds_after_the_delay() {
    let mut c = Chain::new(3);
    let stake = params().min_stake;
    let t = c.tx(0, Payload::Unstake { amount: stake });
    let before = c.balance(0);
    c.block(vec![t]); // height 1: release at 6
    for _ in 0..4 {
        c.block(vec![]);
    }
    assert_eq!(c.balance(0), before - 1_000, "still unbonding at height 5");
    let out = c.block(vec![]); // height 6
    assert!(out.block_events.iter().any(|e| matches!(e, Event::Unbonded { amount, .. } if *amount == stake)));
    assert_eq!(c.balance(0), before - 1_000 + stake);
}

#[test]
fn validator_set_follows_stake_at_epoch_end() {
    let mut c = Chain::new(4);
    let big = params().min_stake * 5;
    let t = c.tx(3, Payload::Stake { amount: big, p2p_address: "127.0.0.1:9100".into() });
    c.block(vec![t]);
    while c.height < 8 {
        c.block(vec![]);
    }
    let out = c.block(vec![]); // height 9: last block of epoch 0 (epoch length 10)
    let Some(Event::ValidatorSetChosen { epoch, validators, .. }) = out.block_events.last().cloned() else {
        panic!("no validator set chosen: {:?}", out.block_events)
    };
    assert_eq!(epoch, 1);
    assert_eq!(validators, vec![c.addr(3), c.addr(1), c.addr(0)], "sorted by stake");
}

#[test]
fn provider_needs_stake_and_registered_models() {
    let mut c = Chain::new(4);
    let info = ProviderInfo {
        endpoint: "http://x:1".into(),
        region: "eu".into(),
        hardware: "cpu".into(),
        prices: vec![ModelPrice { model: model().id(), input_per_1k: 1, output_per_1k: 1 }],
        versions: SupportedVersions::V1_ONLY,
    };
    let t = c.tx(3, Payload::RegisterProvider(info.clone()));
    assert!(c.block(vec![t]).results[0].error.as_ref().unwrap().contains("min_provider_stake"));
    let t = c.tx(3, Payload::Stake { amount: params().min_provider_stake, p2p_address: String::new() });
    c.block(vec![t]);
    let t = c.tx(3, Payload::RegisterProvider(info));
    assert!(c.block(vec![t]).results[0].error.as_ref().unwrap().contains("not found"));
}

#[test]
fn session_claim_and_refund() {
    let mut c = with_provider();
    let client_before = c.balance(3);
    let provider_before = c.balance(2);
    let id = open(&mut c, 3, 10_000);
    // 1000 input + 500 output tokens at 10/20 per 1k = 10 + 10 = 20.
    let r1 = Receipt { session: id, seq: 1, cum_input_tokens: 1000, cum_output_tokens: 500, cum_amount: 20, outputs_root: hash(b"a") }
        .sign(&c.keys[3]);
    let r2 = Receipt { session: id, seq: 2, cum_input_tokens: 3000, cum_output_tokens: 5000, cum_amount: 130, outputs_root: hash(b"b") }
        .sign(&c.keys[3]);
    let t = c.tx(2, Payload::Claim { receipts: vec![r1.clone(), r2.clone()] });
    let out = c.block(vec![t]);
    assert_eq!(out.results[0].error, None);
    let s = c.session(&id);
    assert_eq!((s.settled_seq, s.settled_amount), (2, 130));
    let fee = params().protocol_fee(20) + params().protocol_fee(110);
    assert_eq!(c.balance(2), provider_before - 1_000 + 130 - fee);

    // Replays and reorders are rejected.
    let t = c.tx(2, Payload::Claim { receipts: vec![r1.clone()] });
    assert!(c.block(vec![t]).results[0].error.as_ref().unwrap().contains("not above settled seq"));
    // Forged: signed by someone else.
    let forged = Receipt { session: id, seq: 3, cum_input_tokens: 3000, cum_output_tokens: 5000, cum_amount: 140, outputs_root: hash(b"c") }
        .sign(&c.keys[1]);
    let t = c.tx(2, Payload::Claim { receipts: vec![forged] });
    assert!(c.block(vec![t]).results[0].error.as_ref().unwrap().contains("not signed by the session's client"));
    // Over the price cap.
    let greedy = Receipt { session: id, seq: 3, cum_input_tokens: 3000, cum_output_tokens: 5000, cum_amount: 1000, outputs_root: hash(b"c") }
        .sign(&c.keys[3]);
    let t = c.tx(2, Payload::Claim { receipts: vec![greedy] });
    assert!(c.block(vec![t]).results[0].error.as_ref().unwrap().contains("maximum prices"));
    // Over escrow.
    let huge = Receipt { session: id, seq: 3, cum_input_tokens: u32::MAX as u64, cum_output_tokens: 5000, cum_amount: 10_001, outputs_root: hash(b"c") }
        .sign(&c.keys[3]);
    let t = c.tx(2, Payload::Claim { receipts: vec![huge] });
    let err = c.block(vec![t]).results[0].error.clone().unwrap();
    assert!(err.contains("exceeds the escrow"), "{err}");
    // Someone else claiming.
    let t = c.tx(1, Payload::Claim { receipts: vec![r2] });
    assert!(c.block(vec![t]).results[0].error.as_ref().unwrap().contains("another provider"));

    // Expiry + grace refunds the rest to the client, automatically.
    let s = c.session(&id);
    while c.height < s.expiry_height + params().session_grace_blocks as u64 {
        c.block(vec![]);
    }
    let s = c.session(&id);
    assert_eq!(s.status, SessionStatus::Closed);
    assert_eq!(s.refunded, 10_000 - 130);
    assert_eq!(c.balance(3), client_before - 1_000 - 130, "one fee, the settled amount, the rest refunded");
}

#[test]
fn provider_close_refunds_immediately_and_blocks_later_claims() {
    let mut c = with_provider();
    let id = open(&mut c, 3, 5_000);
    let r = Receipt { session: id, seq: 1, cum_input_tokens: 1000, cum_output_tokens: 0, cum_amount: 10, outputs_root: Hash::ZERO }
        .sign(&c.keys[3]);
    let claim = c.tx(2, Payload::Claim { receipts: vec![r] });
    let close = c.tx(2, Payload::CloseSession { session: id });
    let out = c.block(vec![claim, close]);
    assert!(out.results.iter().all(|r| r.error.is_none()), "{:?}", out.results);
    let s = c.session(&id);
    assert_eq!((s.status, s.refunded, s.settled_amount), (SessionStatus::Closed, 4_990, 10));
}

#[test]
fn client_close_keeps_grace_for_provider() {
    let mut c = with_provider();
    let id = open(&mut c, 3, 5_000);
    let t = c.tx(3, Payload::CloseSession { session: id });
    c.block(vec![t]);
    let closing_at = c.height;
    let r = Receipt { session: id, seq: 1, cum_input_tokens: 1000, cum_output_tokens: 0, cum_amount: 10, outputs_root: Hash::ZERO }
        .sign(&c.keys[3]);
    let t = c.tx(2, Payload::Claim { receipts: vec![r] });
    assert_eq!(c.block(vec![t]).results[0].error, None, "provider can still settle in the grace period");
    while c.height < closing_at + params().session_grace_blocks as u64 {
        c.block(vec![]);
    }
    let s = c.session(&id);
    assert_eq!((s.status, s.refunded), (SessionStatus::Closed, 4_990));
}

#[test]
fn supply_is_conserved_and_roots_are_deterministic() {
    // Two executions of the same blocks give byte-identical change sets.
    let run = || {
        let mut c = with_provider();
        let id = open(&mut c, 3, 9_000);
        let r = Receipt { session: id, seq: 1, cum_input_tokens: 10, cum_output_tokens: 10, cum_amount: 1, outputs_root: Hash::ZERO }
            .sign(&c.keys[3]);
        let t = c.tx(2, Payload::Claim { receipts: vec![r] });
        c.block(vec![t]);
        c.state
    };
    assert_eq!(run(), run());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random sequences of money-moving transactions never break conservation, and the
    /// independent audit (a full scan of every record) agrees with the running aggregates.
    #[test]
    fn conservation_under_random_transactions(ops in proptest::collection::vec((0usize..4, 0usize..4, 0u8..7, 1u64..2_000_000), 1..40)) {
        let mut c = with_provider();
        let mut sessions: Vec<(Hash, usize)> = Vec::new();
        for chunk in ops.chunks(5) {
            let mut txs = Vec::new();
            for &(who, other, op, amount) in chunk {
                let amount = amount as u128 * 1_000;
                let payload = match op {
                    0 => Payload::Transfer { to: c.addr(other), amount },
                    1 => Payload::Stake { amount, p2p_address: String::new() },
                    2 => Payload::Unstake { amount },
                    3 => {
                        let nonce = *c.nonces.get(&c.addr(who)).unwrap_or(&0);
                        sessions.push((session_id(&c.addr(who), nonce), who));
                        Payload::OpenSession { provider: c.addr(2), model: model().id(), deposit: amount, max_input_per_1k: 10, max_output_per_1k: 20, expiry_height: c.height + 3 }
                    }
                    4 if !sessions.is_empty() => {
                        let (id, client) = sessions[amount as usize % sessions.len()];
                        let tokens = amount as u64 / 7;
                        let r = Receipt { session: id, seq: amount as u64, cum_input_tokens: tokens, cum_output_tokens: tokens, cum_amount: (tokens as u128 * 30).div_ceil(1000), outputs_root: Hash::ZERO }
                            .sign(&c.keys[client]);
                        let claim = c.tx(2, Payload::Claim { receipts: vec![r] });
                        txs.push(claim);
                        continue;
                    }
                    5 if !sessions.is_empty() => Payload::TopUpSession { session: sessions[0].0, amount },
                    _ => Payload::Transfer { to: c.addr(who), amount: 1 },
                };
                txs.push(c.tx(who, payload));
            }
            // Only admissible transactions make a block; nonces of dropped ones are reused.
            let env = BlockEnv { height: c.height + 1, proposer: c.addr(0) };
            let (included, outcome, _) = c.exec.build_block(&c.state, &env, txs, 100, 1 << 20).unwrap();
            // The block a proposer builds verifies to the same changes.
            let verified = c.exec.execute_block(&c.state, &env, &included, true).unwrap();
            prop_assert_eq!(&verified.changes, &outcome.changes);
            commit(&mut c.state, outcome.changes);
            c.height += 1;
            let mut o = Overlay::new(&c.state);
            let store = Store::new(&mut o);
            for key in &c.keys { c.nonces.insert(key.address(), store.account(&key.address()).nonce); }
            prop_assert!(audit(&c.state).is_ok(), "{:?}", audit(&c.state));
        }
        for _ in 0..8 { c.block(vec![]); }
    }
}
