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
    Params {
        epoch_length_blocks: 10,
        unbonding_delay_blocks: 5,
        session_grace_blocks: 3,
        voting_period_blocks: 10,
        ..Params::default()
    }
}

impl Chain {
    fn new(accounts: usize) -> Chain {
        Chain::with(accounts, 2, 1, Arc::new(NoEvidence))
    }

    /// `accounts` funded accounts, the first `validators` of them validators, starting at
    /// `execution` version.
    fn with(accounts: usize, validators: usize, execution: u16, evidence: Arc<dyn EvidenceVerifier>) -> Chain {
        let keys: Vec<PrivateKey> = (0..accounts as u64).map(PrivateKey::from_seed).collect();
        let params = params();
        let genesis = Genesis {
            chain_id: CHAIN.into(),
            accounts: keys.iter().map(|k| GenesisAccount { address: k.address(), balance: 1_000_000 * PLX }).collect(),
            validators: keys[..validators]
                .iter()
                .enumerate()
                .map(|(i, k)| GenesisValidator {
                    address: k.address(),
                    stake: params.min_stake * (i as u128 + 1),
                    p2p_address: format!("127.0.0.1:{}", 9000 + i),
                })
                .collect(),
            params,
            versions: plexus_types::VersionVector { execution, ..plexus_types::VersionVector::V1 },
        };
        genesis.validate().unwrap();
        let mut state = BTreeMap::new();
        commit(&mut state, genesis::genesis_changes(&genesis));
        Chain { state, exec: Executor::new(CHAIN, evidence), height: 0, keys, nonces: BTreeMap::new() }
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
fn a_model_name_belongs_to_its_first_registrant() {
    let mut c = with_provider();
    // Another account cannot put other weights behind the same name...
    let mut lookalike = model();
    lookalike.weights_sha256 = hash(b"cheaper weights");
    let t = c.tx(3, Payload::RegisterModel(lookalike.clone()));
    let out = c.block(vec![t]);
    let error = out.results[0].error.clone().unwrap();
    assert!(error.contains("belongs to") && error.contains(&c.addr(2).to_string()), "{error}");
    // ...nor can the owner: a name is one model. Another name is fine.
    let t = c.tx(2, Payload::RegisterModel(lookalike.clone()));
    assert!(c.block(vec![t]).results[0].error.is_some());
    lookalike.name = "tiny-llm-cheap".into();
    let t = c.tx(3, Payload::RegisterModel(lookalike.clone()));
    assert_eq!(c.block(vec![t]).results[0].error, None);
    let mut o = Overlay::new(&c.state);
    let store = Store::new(&mut o);
    let owned: crate::state::ModelName = store.read(&keys::model_name("tiny-llm")).unwrap();
    assert_eq!((owned.id, owned.owner), (model().id(), c.addr(2)));
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
fn release_builds_check_overflow_in_execution_as_tests_do() {
    // A block whose execution overflows must fail on every node alike (and roll back), not wrap
    // on release builds only: the workspace turns overflow checks on for release here.
    // The checkout being tested (a shared build cache may hold a binary compiled in another).
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let manifest = std::fs::read_to_string(format!("{dir}/../../Cargo.toml")).unwrap();
    for krate in ["plexus-execution", "plexus-types"] {
        let section = format!("[profile.release.package.{krate}]\noverflow-checks = true");
        assert!(manifest.contains(&section), "missing in Cargo.toml: {section}");
    }
    // And this (test) build checks too.
    assert!(std::panic::catch_unwind(|| std::hint::black_box(u64::MAX) + std::hint::black_box(1)).is_err());
}

#[test]
fn admission_of_a_transfer_the_fee_leaves_short_is_an_error_not_a_panic() {
    // Balance b, fee f: a transfer of anything in (b - f, b] passes the fee check and then
    // fails for the amount. Admission must say so, for every such amount.
    let c = Chain::new(3);
    let b = c.balance(0);
    for amount in [b - 1_000 + 1, b - 1, b] {
        let t = Transaction {
            signer: c.addr(0),
            nonce: 0,
            fee: 1_000,
            payload: Payload::Transfer { to: c.addr(1), amount },
        }
        .sign(&c.keys[0], CHAIN);
        let err = c.exec.check_tx(&c.state, 1, &t).unwrap_err();
        assert!(
            matches!(err, TxError::WouldFail(ExecError::InsufficientBalance { needed, available }) if needed == amount && available == b - 1_000),
            "{err:?}"
        );
    }
}

#[test]
fn conservation_is_checked_from_what_the_block_wrote() {
    let c = Chain::new(3);
    let a = c.addr(1);
    let account_key = keys::account(&a);
    let mut o = Overlay::new(&c.state);
    let mut store = Store::new(&mut o);
    // A handler that writes a balance and forgets the aggregate: the counters alone still add up.
    let mut account = store.account(&a);
    account.balance += 1;
    store.set_account(&a, &account);
    assert!(store.supply().is_conserved(), "the counters cannot see it");
    let changes = o.into_changes();
    assert!(changes.contains_key(&account_key));
    let err = crate::state::check_conservation(&c.state, &changes).unwrap_err();
    assert!(err.contains("balances"), "{err}");
    // Moving money through the store's helpers passes; so does a block that writes nothing.
    let mut o = Overlay::new(&c.state);
    Store::new(&mut o).transfer(&c.addr(0), &a, 5).unwrap();
    crate::state::check_conservation(&c.state, &o.into_changes()).unwrap();
    crate::state::check_conservation(&c.state, &ChangeSet::new()).unwrap();
    // Minting into an aggregate and its records alike is caught by the total.
    let mut o = Overlay::new(&c.state);
    let mut store = Store::new(&mut o);
    let mut account = store.account(&a);
    account.balance += 7;
    store.set_account(&a, &account);
    let mut supply = store.supply();
    supply.balances += 7;
    supply.total += 7;
    store.set_supply(&supply);
    let err = crate::state::check_conservation(&c.state, &o.into_changes()).unwrap_err();
    assert!(err.contains("total supply"), "{err}");
}

#[test]
fn a_full_staker_index_makes_room_for_a_larger_stake() {
    let mut c = Chain::new(6);
    let min = params().min_stake;
    let n = plexus_types::params::limits::STAKERS_MAX - 2; // the two genesis validators are in it
    let extra: Vec<PrivateKey> = (500..500 + n as u64).map(PrivateKey::from_seed).collect();
    // A thousand stakers need more than one account holds: fund them from accounts 2 to 5.
    let fund: Vec<SignedTx> = extra
        .iter()
        .enumerate()
        .map(|(i, k)| c.tx(2 + i % 4, Payload::Transfer { to: k.address(), amount: min + PLX }))
        .collect();
    assert!(c.block(fund).results.iter().all(|r| r.error.is_none()));
    let stakes: Vec<SignedTx> = extra
        .iter()
        .map(|k| {
            Transaction {
                signer: k.address(),
                nonce: 0,
                fee: 1_000,
                payload: Payload::Stake { amount: min, p2p_address: String::new() },
            }
            .sign(k, CHAIN)
        })
        .collect();
    let out = c.block(stakes);
    assert!(out.results.iter().all(|r| r.error.is_none()));
    let stakers = |c: &Chain| {
        let mut o = Overlay::new(&c.state);
        Store::new(&mut o).read::<crate::state::AddressList>(keys::STAKERS).unwrap().0
    };
    assert_eq!(stakers(&c).len(), plexus_types::params::limits::STAKERS_MAX);
    // Another minimum stake cannot get in...
    let t = c.tx(1, Payload::Transfer { to: c.addr(2), amount: 1 });
    c.block(vec![t]);
    let late = PrivateKey::from_seed(9_999);
    let fund = c.tx(5, Payload::Transfer { to: late.address(), amount: 3 * min });
    c.block(vec![fund]);
    let stake = |nonce: u64, amount: Amount| {
        Transaction {
            signer: late.address(),
            nonce,
            fee: 1_000,
            payload: Payload::Stake { amount, p2p_address: String::new() },
        }
        .sign(&late, CHAIN)
    };
    let out = c.block(vec![stake(0, min)]);
    assert!(out.results[0].error.as_ref().unwrap().contains("full"), "{:?}", out.results[0].error);
    // ...but a larger one takes the smallest one's place.
    let out = c.block(vec![stake(1, 2 * min)]);
    assert_eq!(out.results[0].error, None);
    let list = stakers(&c);
    assert_eq!(list.len(), plexus_types::params::limits::STAKERS_MAX);
    assert!(list.contains(&late.address()));
    assert!(list.contains(&c.addr(0)) && list.contains(&c.addr(1)), "the validators stay");
}

#[test]
fn invalid_transactions_invalidate_the_block() {
    let mut c = Chain::new(3);
    // Wrong nonce.
    let mut tx = c.tx(0, Payload::Transfer { to: c.addr(1), amount: 1 });
    tx.tx.nonce = 7;
    let tx = tx.tx.sign(&c.keys[0], CHAIN);
    assert!(matches!(
        c.try_block(vec![tx.clone()]),
        Err(BlockError::Tx { error: TxError::WrongNonce { expected: 0, got: 7 }, .. })
    ));
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
    let (included, outcome, dropped) =
        c.exec.build_block(&c.state, &env, vec![good.clone(), gap], 100, 1 << 20).unwrap();
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
    let r1 = Receipt {
        session: id,
        seq: 1,
        cum_input_tokens: 1000,
        cum_output_tokens: 500,
        cum_amount: 20,
        outputs_root: hash(b"a"),
    }
    .sign(&c.keys[3], CHAIN);
    let r2 = Receipt {
        session: id,
        seq: 2,
        cum_input_tokens: 3000,
        cum_output_tokens: 5000,
        cum_amount: 130,
        outputs_root: hash(b"b"),
    }
    .sign(&c.keys[3], CHAIN);
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
    let forged = Receipt {
        session: id,
        seq: 3,
        cum_input_tokens: 3000,
        cum_output_tokens: 5000,
        cum_amount: 140,
        outputs_root: hash(b"c"),
    }
    .sign(&c.keys[1], CHAIN);
    let t = c.tx(2, Payload::Claim { receipts: vec![forged] });
    assert!(c.block(vec![t]).results[0].error.as_ref().unwrap().contains("not signed by the session's client"));
    // Over the price cap.
    let greedy = Receipt {
        session: id,
        seq: 3,
        cum_input_tokens: 3000,
        cum_output_tokens: 5000,
        cum_amount: 1000,
        outputs_root: hash(b"c"),
    }
    .sign(&c.keys[3], CHAIN);
    let t = c.tx(2, Payload::Claim { receipts: vec![greedy] });
    assert!(c.block(vec![t]).results[0].error.as_ref().unwrap().contains("maximum prices"));
    // Over escrow.
    let huge = Receipt {
        session: id,
        seq: 3,
        cum_input_tokens: u32::MAX as u64,
        cum_output_tokens: 5000,
        cum_amount: 10_001,
        outputs_root: hash(b"c"),
    }
    .sign(&c.keys[3], CHAIN);
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
    let r = Receipt {
        session: id,
        seq: 1,
        cum_input_tokens: 1000,
        cum_output_tokens: 0,
        cum_amount: 10,
        outputs_root: Hash::ZERO,
    }
    .sign(&c.keys[3], CHAIN);
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
    let r = Receipt {
        session: id,
        seq: 1,
        cum_input_tokens: 1000,
        cum_output_tokens: 0,
        cum_amount: 10,
        outputs_root: Hash::ZERO,
    }
    .sign(&c.keys[3], CHAIN);
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
        let r = Receipt {
            session: id,
            seq: 1,
            cum_input_tokens: 10,
            cum_output_tokens: 10,
            cum_amount: 1,
            outputs_root: Hash::ZERO,
        }
        .sign(&c.keys[3], CHAIN);
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
                            .sign(&c.keys[client], CHAIN);
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

// ---- governance and upgrades ----

mod governance {
    use super::*;
    use crate::gov::{self, ProposalStatus, UpgradeStatus};
    use plexus_types::Layer;
    use plexus_types::tx::{ProposalKind, VoteOption};
    use plexus_types::version::VersionRange;

    fn read<T>(c: &Chain, f: impl FnOnce(&Store<'_, '_>) -> T) -> T {
        let mut o = Overlay::new(&c.state);
        let s = Store::new(&mut o);
        f(&s)
    }

    fn until(c: &mut Chain, height: u64) {
        while c.height < height {
            c.block(vec![]);
        }
    }

    /// Submits `kind` from account 3 (no stake: anyone may propose) and returns its id.
    fn propose(c: &mut Chain, kind: ProposalKind) -> u64 {
        let deposit = params().proposal_deposit_min;
        let t = c.tx(3, Payload::SubmitProposal { kind, deposit });
        let out = c.block(vec![t]);
        assert_eq!(out.results[0].error, None);
        read(c, |s| gov::meta(s).next_proposal - 1)
    }

    fn vote(c: &mut Chain, who: usize, id: u64, option: VoteOption) {
        let t = c.tx(who, Payload::Vote { proposal: id, option });
        let out = c.block(vec![t]);
        assert_eq!(out.results[0].error, None, "vote by {who}");
    }

    fn proposal(c: &Chain, id: u64) -> gov::Proposal {
        read(c, |s| gov::proposal(s, id).unwrap())
    }

    /// Collects `n` transaction fees into the treasury.
    fn fill_treasury(c: &mut Chain, n: usize) {
        let to = c.addr(3);
        let txs: Vec<SignedTx> = (0..n).map(|_| c.tx(2, Payload::Transfer { to: to.clone(), amount: 1 })).collect();
        c.block(txs);
    }

    fn signal(c: &mut Chain, who: usize, execution_max: u16, shadow_ok: bool) {
        let versions =
            SupportedVersions { execution: VersionRange { min: 1, max: execution_max }, ..SupportedVersions::V1_ONLY };
        let t = c.tx(who, Payload::SignalVersions { versions, shadow_ok });
        let out = c.block(vec![t]);
        assert_eq!(out.results[0].error, None);
    }

    #[test]
    fn passed_parameter_change_applies_at_its_height_and_voters_are_paid() {
        let mut c = Chain::new(4);
        fill_treasury(&mut c, 30);
        let proposer_before = c.balance(3);
        let voting = params().voting_period_blocks as u64;
        let effective = c.height + 1 + voting + 5;
        let id = propose(
            &mut c,
            ProposalKind::ParamChange { name: "min_tx_fee".into(), value: 2_000, effective_height: effective },
        );
        let deposit = params().proposal_deposit_min;
        assert_eq!(c.balance(3), proposer_before - deposit - 1_000, "deposit and fee taken");
        assert_eq!(read(&c, |s| s.supply().deposits), deposit);
        vote(&mut c, 0, id, VoteOption::No);
        vote(&mut c, 1, id, VoteOption::Yes);
        vote(&mut c, 0, id, VoteOption::Yes); // a later vote replaces the earlier one
        let (v0, v1) = (c.balance(0), c.balance(1));
        let end = proposal(&c, id).voting_end;
        until(&mut c, end);
        let p = proposal(&c, id);
        assert_eq!(p.status, ProposalStatus::Passed);
        assert_eq!(p.yes, 3 * params().min_stake);
        assert_eq!((p.no, p.abstain, p.veto), (0, 0, 0));
        assert_eq!(c.balance(3), proposer_before - 1_000, "deposit refunded");
        assert_eq!((c.balance(0), c.balance(1)), (v0 + params().voter_reward, v1 + params().voter_reward));
        assert_eq!(read(&c, |s| s.supply().deposits), 0);
        until(&mut c, effective - 1);
        assert_eq!(read(&c, |s| s.params().min_tx_fee), 1_000, "not before its height");
        c.block(vec![]);
        assert_eq!(read(&c, |s| s.params().min_tx_fee), 2_000);
        // A transaction at the old minimum is now refused.
        let to = c.addr(1);
        let t = c.tx(0, Payload::Transfer { to, amount: 1 });
        assert!(matches!(c.try_block(vec![t]), Err(BlockError::Tx { error: TxError::FeeTooLow { .. }, .. })));
    }

    #[test]
    fn veto_burns_the_deposit_and_no_quorum_refunds_it() {
        let mut c = Chain::new(4);
        let id = propose(&mut c, ProposalKind::Text { text: "rename the token".into() });
        vote(&mut c, 1, id, VoteOption::NoWithVeto); // 2/3 of the stake
        vote(&mut c, 0, id, VoteOption::Yes);
        let end = proposal(&c, id).voting_end;
        until(&mut c, end);
        assert_eq!(proposal(&c, id).status, ProposalStatus::Vetoed);
        let supply = read(&c, |s| s.supply());
        assert_eq!(supply.burned, params().proposal_deposit_min, "a vetoed deposit is burned");

        let before = c.balance(3);
        let id = propose(&mut c, ProposalKind::Text { text: "nobody cares".into() });
        let end = proposal(&c, id).voting_end;
        until(&mut c, end);
        assert_eq!(proposal(&c, id).status, ProposalStatus::NoQuorum);
        assert_eq!(c.balance(3), before - 1_000, "refunded, only the fee is gone");

        // Rejected: more no than yes.
        let id = propose(&mut c, ProposalKind::Text { text: "maybe".into() });
        vote(&mut c, 1, id, VoteOption::No);
        vote(&mut c, 0, id, VoteOption::Yes);
        let end = proposal(&c, id).voting_end;
        until(&mut c, end);
        assert_eq!(proposal(&c, id).status, ProposalStatus::Rejected);
    }

    #[test]
    fn bad_proposals_and_votes_are_refused() {
        let mut c = Chain::new(4);
        let deposit = params().proposal_deposit_min;
        let bad = [
            ProposalKind::ParamChange { name: "epoch_length_blocks".into(), value: 20, effective_height: 1_000 },
            ProposalKind::ParamChange { name: "no_such_param".into(), value: 1, effective_height: 1_000 },
            ProposalKind::ParamChange { name: "quorum_bps".into(), value: 20_000, effective_height: 1_000 },
            ProposalKind::ParamChange { name: "quorum_bps".into(), value: 100, effective_height: 2 },
            ProposalKind::Upgrade {
                layer: Layer::Execution,
                version: 3,
                activation_height: 1_000,
                deadline_height: 2_000,
            },
            ProposalKind::Upgrade {
                layer: Layer::Execution,
                version: 2,
                activation_height: 1_000,
                deadline_height: 900,
            },
            ProposalKind::TreasurySpend { to: PrivateKey::from_seed(0).address(), amount: 0 },
            ProposalKind::Text { text: "  ".into() },
        ];
        for kind in bad {
            let t = c.tx(3, Payload::SubmitProposal { kind: kind.clone(), deposit });
            assert!(c.block(vec![t]).results[0].error.is_some(), "{kind:?} must be refused");
        }
        let t =
            c.tx(3, Payload::SubmitProposal { kind: ProposalKind::Text { text: "x".into() }, deposit: deposit - 1 });
        assert!(c.block(vec![t]).results[0].error.as_ref().unwrap().contains("proposal_deposit_min"));
        let id = propose(&mut c, ProposalKind::Text { text: "x".into() });
        let t = c.tx(3, Payload::Vote { proposal: id, option: VoteOption::Yes });
        assert!(c.block(vec![t]).results[0].error.as_ref().unwrap().contains("min_stake"));
        let t = c.tx(0, Payload::Vote { proposal: id + 7, option: VoteOption::Yes });
        assert!(c.block(vec![t]).results[0].error.as_ref().unwrap().contains("not found"));
        let t = c.tx(3, Payload::SignalVersions { versions: SupportedVersions::V1_ONLY, shadow_ok: true });
        assert!(c.block(vec![t]).results[0].error.as_ref().unwrap().contains("stakers"));
    }

    #[test]
    fn proposals_that_would_brick_the_chain_are_refused_at_submission() {
        let mut c = Chain::new(4);
        let deposit = params().proposal_deposit_min;
        for (name, value) in [
            ("threshold_bps", 10_000),
            ("quorum_bps", 10_000),
            ("proposal_deposit_min", u128::MAX),
            ("min_tx_fee", 1_000_000_000_000),
            ("leader_timeout_ms", 100),
            ("min_stake", u128::MAX),
            ("voter_reward", 10_000),
            ("block_interval_ms", 600),
        ] {
            let kind = ProposalKind::ParamChange { name: name.into(), value, effective_height: 1_000 };
            let t = c.tx(3, Payload::SubmitProposal { kind, deposit });
            let out = c.block(vec![t]);
            let error = out.results[0].error.clone().unwrap_or_default();
            assert!(error.contains(name), "{name} = {value} must be refused: {error:?}");
        }
        assert_eq!(read(&c, |s| gov::meta(s).next_proposal), 0);
    }

    #[test]
    fn changes_that_are_safe_alone_but_not_together_are_skipped_when_due() {
        let mut c = Chain::new(4);
        let voting = params().voting_period_blocks as u64;
        let at = c.height + 1 + voting + 6;
        // Each is fine against today's parameters; together the leader would time out before
        // the block interval let it propose (200 ms * 2 > 300 ms is fine, 400 > 300 is not).
        let a = propose(
            &mut c,
            ProposalKind::ParamChange { name: "block_interval_ms".into(), value: 400, effective_height: at },
        );
        let b = propose(
            &mut c,
            ProposalKind::ParamChange { name: "leader_timeout_ms".into(), value: 700, effective_height: at + 1 },
        );
        for id in [a, b] {
            vote(&mut c, 0, id, VoteOption::Yes);
            vote(&mut c, 1, id, VoteOption::Yes);
        }
        until(&mut c, at - 1);
        assert_eq!(proposal(&c, a).status, ProposalStatus::Passed);
        assert_eq!(proposal(&c, b).status, ProposalStatus::Passed);
        let out = c.block(vec![]);
        assert!(out.block_events.iter().any(|e| matches!(e, Event::ParamChanged { value: 400, .. })));
        let out = c.block(vec![]);
        assert!(
            out.block_events
                .iter()
                .any(|e| matches!(e, Event::ParamChangeRejected { name, .. } if name == "leader_timeout_ms")),
            "{:?}",
            out.block_events
        );
        let p = read(&c, |s| s.params());
        assert_eq!((p.block_interval_ms, p.leader_timeout_ms), (400, 1_000));
        p.validate().unwrap();
    }

    #[test]
    fn dust_stake_neither_votes_nor_fills_the_voter_list() {
        let mut c = Chain::new(4);
        let id = propose(&mut c, ProposalKind::Text { text: "x".into() });
        // 1 base unit bonded (and 1 PLX, below min_stake): no vote.
        for amount in [1, PLX] {
            let t = c.tx(3, Payload::Stake { amount, p2p_address: String::new() });
            c.block(vec![t]);
            let t = c.tx(3, Payload::Vote { proposal: id, option: VoteOption::Yes });
            let out = c.block(vec![t]);
            assert!(out.results[0].error.as_ref().unwrap().contains("min_stake"), "{:?}", out.results[0].error);
        }
        assert!(proposal(&c, id).voters.is_empty());
        // A voter whose stake fell below min_stake by the close (and who is no validator) is
        // neither counted nor paid.
        let min = params().min_stake;
        let t = c.tx(2, Payload::Stake { amount: min, p2p_address: String::new() });
        c.block(vec![t]);
        vote(&mut c, 2, id, VoteOption::Yes);
        vote(&mut c, 1, id, VoteOption::No);
        let t = c.tx(2, Payload::Unstake { amount: min / 2 });
        c.block(vec![t]);
        fill_treasury(&mut c, 10);
        let (before1, before2) = (c.balance(1), c.balance(2));
        let end = proposal(&c, id).voting_end;
        until(&mut c, end);
        let p = proposal(&c, id);
        assert_eq!((p.yes, p.no), (0, 2 * min));
        assert_eq!(c.balance(2), before2, "not counted, not paid");
        assert_eq!(c.balance(1), before1 + params().voter_reward);
    }

    #[test]
    fn validators_can_always_vote_back_a_raised_min_stake() {
        let mut c = Chain::new(4);
        let raise = |c: &mut Chain, value: Amount| {
            let voting = params().voting_period_blocks as u64;
            let at = c.height + 1 + voting + 2;
            let id = propose(c, ProposalKind::ParamChange { name: "min_stake".into(), value, effective_height: at });
            vote(c, 0, id, VoteOption::Yes);
            vote(c, 1, id, VoteOption::Yes);
            until(c, at);
        };
        let max = Params::RANGES.iter().find(|r| r.0 == "min_stake").unwrap().2;
        raise(&mut c, max);
        assert_eq!(read(&c, |s| s.params().min_stake), max);
        // Nobody holds that much, yet the validators of the epoch still vote, and undo it.
        raise(&mut c, params().min_stake);
        assert_eq!(read(&c, |s| s.params().min_stake), params().min_stake);
    }

    #[test]
    fn a_full_voter_list_takes_larger_stakers_first() {
        // The list is bounded; filling it with the smallest eligible stakes does not lock out a
        // larger staker, which takes the smallest one's place.
        let mut c = Chain::new(7);
        let id = propose(&mut c, ProposalKind::Text { text: "crowded".into() });
        let min = params().min_stake;
        // Every place the staker index has left (two genesis validators hold the others).
        let n = crate::gov::VOTERS_MAX - 2;
        let extra: Vec<PrivateKey> = (100..100 + n as u64).map(PrivateKey::from_seed).collect();
        let fund: Vec<SignedTx> = extra
            .iter()
            .enumerate()
            .map(|(i, k)| c.tx(4 + i % 3, Payload::Transfer { to: k.address(), amount: min + PLX }))
            .collect();
        assert!(c.block(fund).results.iter().all(|r| r.error.is_none()));
        let stake_and_vote = |k: &PrivateKey, amount: Amount| {
            [
                Transaction {
                    signer: k.address(),
                    nonce: 0,
                    fee: 1_000,
                    payload: Payload::Stake { amount, p2p_address: String::new() },
                }
                .sign(k, CHAIN),
                Transaction {
                    signer: k.address(),
                    nonce: 1,
                    fee: 1_000,
                    payload: Payload::Vote { proposal: id, option: VoteOption::No },
                }
                .sign(k, CHAIN),
            ]
        };
        let txs: Vec<SignedTx> = extra.iter().flat_map(|k| stake_and_vote(k, min)).collect();
        assert!(c.block(txs).results.iter().all(|r| r.error.is_none()));
        vote(&mut c, 0, id, VoteOption::Yes);
        vote(&mut c, 1, id, VoteOption::Yes);
        assert_eq!(proposal(&c, id).voters.len(), crate::gov::VOTERS_MAX);
        // A larger staker still gets in: one minimum staker makes room, in both lists.
        let big = PrivateKey::from_seed(99_999);
        let t = c.tx(6, Payload::Transfer { to: big.address(), amount: 3 * min + PLX });
        c.block(vec![t]);
        let out = c.block(stake_and_vote(&big, 3 * min).to_vec());
        assert!(out.results.iter().all(|r| r.error.is_none()), "{:?}", out.results);
        let p = proposal(&c, id);
        assert_eq!(p.voters.len(), crate::gov::VOTERS_MAX);
        assert!(p.voters.contains(&big.address()) && p.voters.contains(&c.addr(1)));
        // Another minimum staker cannot push anyone out.
        let small = PrivateKey::from_seed(99_998);
        let t = c.tx(6, Payload::Transfer { to: small.address(), amount: min + PLX });
        c.block(vec![t]);
        let out = c.block(stake_and_vote(&small, min).to_vec());
        assert!(out.results[0].error.as_ref().unwrap().contains("full"), "{:?}", out.results);
    }

    #[test]
    fn treasury_spends_pay_only_what_the_treasury_holds() {
        let mut c = Chain::new(4);
        fill_treasury(&mut c, 30);
        let to = c.addr(2);
        let id = propose(&mut c, ProposalKind::TreasurySpend { to: to.clone(), amount: 1_000_000 * PLX });
        vote(&mut c, 1, id, VoteOption::Yes);
        let before = c.balance(2);
        let end = proposal(&c, id).voting_end;
        until(&mut c, end);
        let p = proposal(&c, id);
        assert_eq!(p.status, ProposalStatus::Passed);
        assert!(p.outcome.contains("not paid"), "{}", p.outcome);
        assert_eq!(c.balance(2), before);
        let treasury = read(&c, |s| s.supply().treasury);
        let id = propose(&mut c, ProposalKind::TreasurySpend { to, amount: treasury / 2 });
        vote(&mut c, 1, id, VoteOption::Yes);
        let end = proposal(&c, id).voting_end;
        until(&mut c, end);
        assert_eq!(c.balance(2), before + treasury / 2);
    }

    fn upgrade_to_v2(c: &mut Chain) -> (u64, u64) {
        let voting = params().voting_period_blocks as u64;
        let activation = c.height + 1 + voting + 3;
        let id = propose(
            c,
            ProposalKind::Upgrade {
                layer: Layer::Execution,
                version: 2,
                activation_height: activation,
                deadline_height: activation + 40,
            },
        );
        vote(c, 0, id, VoteOption::Yes);
        vote(c, 1, id, VoteOption::Yes);
        let end = proposal(c, id).voting_end;
        until(c, end);
        assert_eq!(proposal(c, id).status, ProposalStatus::Passed);
        let upgrade = read(c, |s| gov::meta(s).pending[0]);
        (upgrade, activation)
    }

    #[test]
    fn an_upgrade_waits_for_two_thirds_readiness_then_runs_version_two() {
        let mut c = Chain::new(4);
        let (uid, activation) = upgrade_to_v2(&mut c);
        // Only validator 1 (2/3 of the stake, 6666 bps) is ready: not enough, it waits.
        signal(&mut c, 1, 2, true);
        until(&mut c, activation + 2);
        let u = read(&c, |s| gov::upgrade(s, uid).unwrap());
        assert_eq!((u.status, u.ready_bps), (UpgradeStatus::Pending, 6_666));
        assert_eq!(read(&c, |s| s.versions().execution), 1);
        // A signal without a passing shadow run does not count.
        signal(&mut c, 0, 2, false);
        assert_eq!(read(&c, |s| gov::upgrade(s, uid).unwrap().status), UpgradeStatus::Pending);
        signal(&mut c, 0, 2, true);
        let u = read(&c, |s| gov::upgrade(s, uid).unwrap());
        assert_eq!(u.status, UpgradeStatus::Active);
        assert_eq!(read(&c, |s| s.versions().execution), 2);
        assert_eq!(u.activated_height, c.height + 1);
        // Version 2 pays the proposer (account 0) half of the block's fees.
        let before = c.balance(0);
        let (a2, a3) = (c.addr(2), c.addr(3));
        let txs =
            vec![c.tx(2, Payload::Transfer { to: a3, amount: 1 }), c.tx(3, Payload::Transfer { to: a2, amount: 1 })];
        let out = c.block(txs);
        assert!(
            out.block_events.iter().any(|e| matches!(e, Event::ProposerRewarded { amount: 1_000, .. })),
            "{:?}",
            out.block_events
        );
        assert_eq!(c.balance(0), before + 1_000);
    }

    #[test]
    fn an_upgrade_that_is_never_ready_expires_without_a_halt() {
        let mut c = Chain::new(4);
        let (uid, activation) = upgrade_to_v2(&mut c);
        until(&mut c, activation + 40);
        let u = read(&c, |s| gov::upgrade(s, uid).unwrap());
        assert_eq!(u.status, UpgradeStatus::Expired);
        assert!(u.note.contains("readiness 0 bps"), "{}", u.note);
        assert_eq!(read(&c, |s| s.versions().execution), 1);
        let to = c.addr(3);
        let t = c.tx(2, Payload::Transfer { to, amount: 1 });
        c.block(vec![t]);
    }

    #[test]
    fn shadow_runs_report_failures_without_keeping_anything() {
        let c = Chain::new(4);
        let env = BlockEnv { height: 1, proposer: c.addr(0) };
        assert_eq!(c.exec.shadow(2, &c.state, &env, &[]), Ok(()));
        assert!(c.exec.shadow(99, &c.state, &env, &[]).unwrap_err().contains("not supported"));
    }

    #[cfg(feature = "faulty-version")]
    #[test]
    fn a_faulty_version_rolls_back_by_itself_and_the_chain_goes_on() {
        let faulty = crate::faulty::VERSION;
        let latest = faulty - 1;
        let mut c = Chain::new(4);
        let (_, activation) = upgrade_to_v2(&mut c);
        signal(&mut c, 0, faulty, true);
        signal(&mut c, 1, faulty, true);
        until(&mut c, activation + 1);
        assert_eq!(read(&c, |s| s.versions().execution), 2);
        // Up to the latest real version, then the faulty one after it.
        for version in 3..=faulty {
            let voting = params().voting_period_blocks as u64;
            let at = c.height + 1 + voting + 2;
            let id = propose(
                &mut c,
                ProposalKind::Upgrade {
                    layer: Layer::Execution,
                    version,
                    activation_height: at,
                    deadline_height: at + 20,
                },
            );
            vote(&mut c, 1, id, VoteOption::Yes);
            until(&mut c, at + 1);
            assert_eq!(read(&c, |s| s.versions().execution), version);
        }
        let uid = read(&c, |s| gov::meta(s).last_activated[2]);
        // Empty blocks pass under the faulty version; the first with a transaction breaks
        // conservation.
        c.block(vec![]);
        let before = c.balance(3);
        let to = c.addr(3);
        let t = c.tx(2, Payload::Transfer { to, amount: 5 });
        let out = c.block(vec![t]);
        assert!(
            out.block_events
                .iter()
                .any(|e| matches!(e, Event::UpgradeAborted { version, previous, .. } if *version == faulty && *previous == latest)),
            "{:?}",
            out.block_events
        );
        assert_eq!(out.results[0].error, None, "the block's transactions still applied, under the previous version");
        assert_eq!(c.balance(3), before + 5);
        assert_eq!(read(&c, |s| s.versions().execution), latest);
        let u = read(&c, |s| gov::upgrade(s, uid).unwrap());
        assert_eq!(u.status, UpgradeStatus::Aborted);
        assert!(u.note.contains("balances") && u.note.contains("changed records"), "{}", u.note);
        // And blocks keep coming under the previous version (the audit in `block` checks every one).
        let to = c.addr(2);
        let t = c.tx(3, Payload::Transfer { to, amount: 1 });
        c.block(vec![t]);
    }

    #[test]
    fn data_v2_migration_indexes_sessions_at_activation_and_after() {
        let mut c = with_provider();
        let before = open(&mut c, 3, 5_000);
        // The migration dry-runs on the current state without keeping anything.
        assert_eq!(c.exec.shadow_migration(2, &c.state), Ok(()));
        assert!(c.state.scan(crate::state::table::SESSION_BY_CLIENT).is_empty());
        let voting = params().voting_period_blocks as u64;
        let activation = c.height + 1 + voting + 3;
        let id = propose(
            &mut c,
            ProposalKind::Upgrade {
                layer: Layer::Data,
                version: 2,
                activation_height: activation,
                deadline_height: activation + 30,
            },
        );
        vote(&mut c, 0, id, VoteOption::Yes);
        vote(&mut c, 1, id, VoteOption::Yes);
        let versions = SupportedVersions { data: VersionRange { min: 1, max: 2 }, ..SupportedVersions::V1_ONLY };
        for who in [0, 1] {
            let t = c.tx(who, Payload::SignalVersions { versions, shadow_ok: true });
            c.block(vec![t]);
        }
        until(&mut c, activation + 1);
        assert_eq!(read(&c, |s| s.versions().data), 2);
        let u = read(&c, |s| gov::upgrade(s, 0).unwrap());
        assert_eq!(u.status, UpgradeStatus::Active);
        assert!(u.note.contains("migrated 1 records"), "{}", u.note);
        let client = c.addr(3);
        assert!(c.state.contains_key(&keys::session_by_client(&client, &before)));
        // Sessions opened under v2 are indexed as they open.
        let after = open(&mut c, 3, 5_000);
        assert!(c.state.contains_key(&keys::session_by_client(&client, &after)));
        assert_eq!(crate::data::check(&c.state, 2), Ok(()));
        assert!(
            crate::data::check(&c.state, 2).is_ok()
                && crate::data::migrate(&mut Store::new(&mut Overlay::new(&c.state)), 3).is_err()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
        /// Whatever the votes, deposits are held exactly while voting and leave exactly once
        /// (refunded or burned), the tally follows the rules, and supply is conserved.
        #[test]
        fn tallies_and_deposits_follow_the_rules(votes in proptest::collection::vec((0usize..2, 0u8..5), 0..6), extra in 0u128..3) {
            let mut c = Chain::new(4);
            // Give account 2 some stake so three voters weigh differently.
            let t = c.tx(2, Payload::Stake { amount: params().min_stake * (extra + 1), p2p_address: String::new() });
            c.block(vec![t]);
            let id = propose(&mut c, ProposalKind::Text { text: "p".into() });
            let mut last = BTreeMap::new();
            for (who, choice) in votes {
                let who = if choice == 4 { 2 } else { who };
                let option = [VoteOption::Yes, VoteOption::No, VoteOption::Abstain, VoteOption::NoWithVeto, VoteOption::Yes][choice as usize];
                vote(&mut c, who, id, option);
                last.insert(who, option);
            }
            prop_assert_eq!(read(&c, |s| s.supply().deposits), params().proposal_deposit_min);
            let burned_before = read(&c, |s| s.supply().burned);
            let end = proposal(&c, id).voting_end;
        until(&mut c, end);
            let p = proposal(&c, id);
            let stake = |i: usize| read(&c, |s| s.stake(&c.addr(i)).bonded);
            let weight = |o: VoteOption| last.iter().filter(|(_, v)| **v == o).map(|(w, _)| stake(*w)).sum::<Amount>();
            let (yes, no, abstain, veto) = (weight(VoteOption::Yes), weight(VoteOption::No), weight(VoteOption::Abstain), weight(VoteOption::NoWithVeto));
            prop_assert_eq!((p.yes, p.no, p.abstain, p.veto), (yes, no, abstain, veto));
            let bonded = read(&c, |s| s.supply().bonded);
            let voted = yes + no + abstain + veto;
            let expected = if voted == 0 || voted * 10_000 < bonded * 3_340 {
                ProposalStatus::NoQuorum
            } else if veto * 10_000 >= voted * 3_340 {
                ProposalStatus::Vetoed
            } else if yes * 10_000 > (yes + no + veto) * 5_000 {
                ProposalStatus::Passed
            } else {
                ProposalStatus::Rejected
            };
            prop_assert_eq!(p.status, expected);
            prop_assert_eq!(read(&c, |s| s.supply().deposits), 0);
            let burned = read(&c, |s| s.supply().burned) - burned_before;
            prop_assert_eq!(burned, if expected == ProposalStatus::Vetoed { params().proposal_deposit_min } else { 0 });
        }
    }
}

// ---- execution v3: challenges and slashing ----

mod verification {
    use super::*;
    use crate::state::{Challenge, ChallengeStatus, ProviderStats};
    use plexus_types::receipt::{SamplingSpec, Transcript, output_ids_hash};
    use plexus_types::tensor::{EvidenceTensor, TensorEvidence};
    use plexus_types::{Attestation, Sig};

    /// Accepts evidence b"guilty:<n>" as proof that validator n equivocated.
    struct Accepting;
    impl EvidenceVerifier for Accepting {
        fn verify(
            &self,
            evidence: &[u8],
            validators_of: &dyn Fn(u64) -> Option<Vec<Address>>,
        ) -> Result<VerifiedEvidence, String> {
            let n: usize = std::str::from_utf8(evidence)
                .ok()
                .and_then(|s| s.strip_prefix("guilty:"))
                .and_then(|n| n.parse().ok())
                .ok_or("no")?;
            let offender = validators_of(0).ok_or("no set")?.get(n).cloned().ok_or("no such validator")?;
            Ok(VerifiedEvidence { offender, epoch: 0, view: 1, kind: "conflicting_notarize" })
        }
    }

    /// A v3 chain with four validators (0..4); account 4 provides `model()` at 10/20 per 1k;
    /// account 5 is a client with an open session.
    fn setup() -> (Chain, Hash) {
        setup_at(3)
    }

    /// [`setup`] on a chain at execution `version`.
    fn setup_at(version: u16) -> (Chain, Hash) {
        let mut c = Chain::with(6, 4, version, Arc::new(Accepting));
        let stake = params().min_provider_stake * 5;
        let t1 = c.tx(4, Payload::RegisterModel(model()));
        let t2 = c.tx(4, Payload::Stake { amount: stake, p2p_address: String::new() });
        let t3 = c.tx(
            4,
            Payload::RegisterProvider(ProviderInfo {
                endpoint: "http://127.0.0.1:8080".into(),
                region: "eu".into(),
                hardware: "2 vCPU".into(),
                prices: vec![ModelPrice { model: model().id(), input_per_1k: 10, output_per_1k: 20 }],
                versions: SupportedVersions::V1_ONLY,
            }),
        );
        assert!(c.block(vec![t1, t2, t3]).results.iter().all(|r| r.error.is_none()));
        let nonce = *c.nonces.get(&c.addr(5)).unwrap_or(&0);
        let expiry = c.height + 50;
        let open = c.tx(
            5,
            Payload::OpenSession {
                provider: c.addr(4),
                model: model().id(),
                deposit: 100_000,
                max_input_per_1k: 10,
                max_output_per_1k: 20,
                expiry_height: expiry,
            },
        );
        assert_eq!(c.block(vec![open]).results[0].error, None);
        let id = session_id(&c.addr(5), nonce);
        (c, id)
    }

    fn evidence(c: &Chain, output: Vec<i32>) -> (Attestation, Sig, Transcript) {
        let transcript = Transcript {
            model: model().id(),
            prompt: (0..200).collect(),
            max_tokens: 100,
            sampling: SamplingSpec::Greedy,
            stop: vec![],
            output,
        };
        let att = Attestation {
            request_hash: transcript.request_hash(),
            output_hash: hash(b"text"),
            model: model().id(),
            input_tokens: 200,
            output_tokens: transcript.output.len() as u32,
            output_ids_hash: output_ids_hash(&transcript.output),
            logits_fingerprint: Hash::ZERO,
        };
        let sig = att.sign(&c.keys[4], CHAIN);
        (att, sig, transcript)
    }

    fn challenge(c: &Chain, id: u64) -> Challenge {
        let mut o = Overlay::new(&c.state);
        Store::new(&mut o).read(&keys::challenge(id)).unwrap()
    }

    fn bonded(c: &Chain, who: usize) -> Amount {
        let mut o = Overlay::new(&c.state);
        Store::new(&mut o).stake(&c.addr(who)).bonded
    }

    #[test]
    fn a_convicted_provider_is_slashed_the_client_refunded_and_the_challenger_paid() {
        let (mut c, session) = setup();
        let (att, sig, transcript) = evidence(&c, (0..50).collect());
        let bond = params().challenge_bond_min;
        let (client_before, provider_stake) = (c.balance(5), bonded(&c, 4));
        let t = c.tx(
            5,
            Payload::Challenge {
                session,
                attestation: att.clone(),
                signature: sig.clone(),
                transcript: transcript.clone(),
                bond,
            },
        );
        let out = c.block(vec![t]);
        assert_eq!(out.results[0].error, None);
        let opened = challenge(&c, 0);
        assert_eq!(opened.committee.len(), 3);
        assert!(!opened.committee.contains(&c.addr(4)), "the accused never judges itself");
        assert_eq!(read_deposits(&c), bond, "the bond is held");
        // The same response cannot be challenged twice; a forged or mismatched one not at all.
        let again = c.tx(
            5,
            Payload::Challenge {
                session,
                attestation: att.clone(),
                signature: sig.clone(),
                transcript: transcript.clone(),
                bond,
            },
        );
        assert!(c.block(vec![again]).results[0].error.as_ref().unwrap().contains("already"));
        let mut other = transcript.clone();
        other.output[3] = 999;
        let t = c.tx(
            5,
            Payload::Challenge { session, attestation: att.clone(), signature: sig.clone(), transcript: other, bond },
        );
        assert!(c.block(vec![t]).results[0].error.is_some(), "a transcript the attestation does not name");
        // Only committee members vote; a majority for guilty convicts at once.
        let outsider = c.tx(5, Payload::ChallengeVote { challenge: 0, guilty: true });
        assert!(c.block(vec![outsider]).results[0].error.as_ref().unwrap().contains("committee"));
        let members: Vec<usize> = (0..4).filter(|i| opened.committee.contains(&c.addr(*i))).collect();
        let v1 = c.tx(members[0], Payload::ChallengeVote { challenge: 0, guilty: true });
        c.block(vec![v1]);
        assert_eq!(challenge(&c, 0).status, ChallengeStatus::Open);
        let v2 = c.tx(members[1], Payload::ChallengeVote { challenge: 0, guilty: true });
        let out = c.block(vec![v2]);
        assert!(out.results[0].events.iter().any(|e| matches!(e, Event::ChallengeResolved { guilty: true, .. })));
        let done = challenge(&c, 0);
        assert_eq!(done.status, ChallengeStatus::Convicted);
        // 10% of the provider's stake; the request's cost back to the client, 10% of the rest to
        // the challenger (the same client), the remainder to the treasury; the bond back.
        let slashed = provider_stake / 10;
        let cost = crate::max_cost(200, 50, 10, 20).unwrap();
        let reward = (slashed - cost) / 10;
        assert_eq!((done.slashed, done.refunded, done.reward), (slashed, cost, reward));
        assert_eq!(bonded(&c, 4), provider_stake - slashed);
        // The client paid fees for four transactions (open excluded: before) and got refund + reward.
        assert_eq!(c.balance(5), client_before - 4 * 1_000 + cost + reward);
        assert_eq!(read_deposits(&c), 0);
        let mut o = Overlay::new(&c.state);
        let stats: ProviderStats = Store::new(&mut o).read(&keys::provider_stats(&c.addr(4))).unwrap();
        assert_eq!((stats.convicted, stats.acquitted, stats.slashed), (1, 0, slashed));
    }

    #[test]
    fn a_false_challenge_costs_the_challenger_its_bond() {
        let (mut c, session) = setup();
        let (att, sig, transcript) = evidence(&c, (0..50).collect());
        let bond = params().challenge_bond_min;
        let provider_balance = c.balance(4);
        let t = c.tx(5, Payload::Challenge { session, attestation: att, signature: sig, transcript, bond });
        c.block(vec![t]);
        let opened = challenge(&c, 0);
        let members: Vec<usize> = (0..4).filter(|i| opened.committee.contains(&c.addr(*i))).collect();
        // One votes guilty, two innocent: acquitted.
        for (i, guilty) in [(0, true), (1, false), (2, false)] {
            let t = c.tx(members[i], Payload::ChallengeVote { challenge: 0, guilty });
            c.block(vec![t]);
        }
        assert_eq!(challenge(&c, 0).status, ChallengeStatus::Acquitted);
        assert_eq!(c.balance(4), provider_balance + bond);
        assert_eq!(bonded(&c, 4), params().min_provider_stake * 5, "nothing slashed");
    }

    #[test]
    fn an_undecided_challenge_is_settled_at_its_deadline() {
        let (mut c, session) = setup();
        let (att, sig, transcript) = evidence(&c, (0..50).collect());
        let t = c.tx(
            5,
            Payload::Challenge {
                session,
                attestation: att,
                signature: sig,
                transcript,
                bond: params().challenge_bond_min,
            },
        );
        c.block(vec![t]);
        let deadline = challenge(&c, 0).deadline_height;
        while c.height < deadline {
            c.block(vec![]);
        }
        assert_eq!(challenge(&c, 0).status, ChallengeStatus::Acquitted, "nobody proved anything");
    }

    /// A tensor inference of three rows (four inputs, two outputs each) and the provider's
    /// (account 4's) signed attestation of it.
    fn tensor_evidence(c: &Chain) -> (Attestation, Sig, TensorEvidence) {
        let inputs: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
        let evidence = TensorEvidence {
            model: model().id(),
            inputs: vec![EvidenceTensor::from_f32("x", &[3, 4], &inputs)],
            outputs: vec![EvidenceTensor::from_f32("y", &[3, 2], &[0.1, 0.9, 0.8, 0.2, 0.5, 0.5])],
        };
        let att = Attestation {
            request_hash: evidence.request_hash(),
            output_hash: evidence.output_hash(),
            model: model().id(),
            input_tokens: 0,
            output_tokens: 3,
            output_ids_hash: Hash::ZERO,
            logits_fingerprint: Hash::ZERO,
        };
        let sig = att.sign(&c.keys[4], CHAIN);
        (att, sig, evidence)
    }

    #[test]
    fn a_tensor_inference_is_challenged_with_its_inputs_and_outputs_and_convicted_as_a_generation() {
        let (mut c, session) = setup_at(5);
        let (att, sig, evidence) = tensor_evidence(&c);
        let bond = params().challenge_bond_min;
        let (client_before, provider_stake) = (c.balance(5), bonded(&c, 4));
        let tensor = |evidence: TensorEvidence| Payload::ChallengeTensor {
            session,
            attestation: att.clone(),
            signature: sig.clone(),
            evidence,
            bond,
        };
        // Evidence the attestation does not commit to, to the last bit of one output, is refused.
        let mut forged = evidence.clone();
        forged.outputs[0].bits[5] = 0.25f32.to_bits();
        let t = c.tx(5, tensor(forged));
        assert!(c.block(vec![t]).results[0].error.as_ref().unwrap().contains("outputs"));
        // Only the session's client challenges.
        let t = c.tx(3, tensor(evidence.clone()));
        assert!(c.block(vec![t]).results[0].error.as_ref().unwrap().contains("client"));
        let t = c.tx(5, tensor(evidence.clone()));
        let out = c.block(vec![t]);
        assert_eq!(out.results[0].error, None);
        let opened = challenge(&c, 0);
        assert_eq!(opened.transcript.model, model().id());
        assert!(opened.transcript.output.is_empty(), "the record names the model; the evidence is beside it");
        let mut o = Overlay::new(&c.state);
        let kept: TensorEvidence = Store::new(&mut o).read(&keys::challenge_evidence(0)).unwrap();
        assert_eq!(kept, evidence);
        assert!(!opened.committee.contains(&c.addr(4)));
        let again = c.tx(5, tensor(evidence.clone()));
        assert!(c.block(vec![again]).results[0].error.as_ref().unwrap().contains("already"));
        // The committee's majority convicts: slashed, and the three inferences refunded.
        let members: Vec<usize> = (0..4).filter(|i| opened.committee.contains(&c.addr(*i))).collect();
        for &m in &members[..2] {
            let t = c.tx(m, Payload::ChallengeVote { challenge: 0, guilty: true });
            c.block(vec![t]);
        }
        let done = challenge(&c, 0);
        assert_eq!(done.status, ChallengeStatus::Convicted);
        let slashed = provider_stake / 10;
        let cost = crate::max_cost(0, 3, 10, 20).unwrap();
        let reward = (slashed - cost) / 10;
        assert_eq!((done.slashed, done.refunded, done.reward), (slashed, cost, reward));
        assert_eq!(bonded(&c, 4), provider_stake - slashed);
        // Fees for three transactions of the client's (the forged, the good and the repeat).
        assert_eq!(c.balance(5), client_before - 3 * 1_000 + cost + reward);
        assert_eq!(read_deposits(&c), 0);
    }

    #[test]
    fn before_version_5_a_tensor_challenge_is_too_new() {
        for version in [3, 4] {
            let (mut c, session) = setup_at(version);
            let (attestation, signature, evidence) = tensor_evidence(&c);
            let bond = params().challenge_bond_min;
            let t = c.tx(5, Payload::ChallengeTensor { session, attestation, signature, evidence, bond });
            let err = c.exec.check_tx(&c.state, c.height + 1, &t).unwrap_err();
            assert!(matches!(err, TxError::TooNew { needs: 5, .. }), "v{version}: {err}");
            assert!(matches!(c.try_block(vec![t]).unwrap_err(), BlockError::Tx { error: TxError::TooNew { .. }, .. }));
        }
    }

    #[test]
    fn a_penalised_generation_is_challenged_from_version_7_only() {
        let adjusted = |c: &Chain| {
            let (_, _, mut transcript) = evidence(c, (0..50).collect());
            transcript.sampling = SamplingSpec::Adjusted {
                base: Box::new(SamplingSpec::Greedy),
                adjust: plexus_types::receipt::LogitAdjustSpec {
                    presence_bits: 1.5f32.to_bits(),
                    frequency_bits: 0,
                    bias: vec![(7, (-100.0f32).to_bits())],
                },
            };
            let att = Attestation {
                request_hash: transcript.request_hash(),
                output_hash: hash(b"text"),
                model: model().id(),
                input_tokens: 200,
                output_tokens: 50,
                output_ids_hash: output_ids_hash(&transcript.output),
                logits_fingerprint: Hash::ZERO,
            };
            let sig = att.sign(&c.keys[4], CHAIN);
            (att, sig, transcript)
        };
        let bond = params().challenge_bond_min;
        for version in [3, 6] {
            let (mut c, session) = setup_at(version);
            let (attestation, signature, transcript) = adjusted(&c);
            let t = c.tx(5, Payload::Challenge { session, attestation, signature, transcript, bond });
            let err = c.exec.check_tx(&c.state, c.height + 1, &t).unwrap_err();
            assert!(matches!(err, TxError::TooNew { needs: 7, .. }), "v{version}: {err}");
            assert!(matches!(c.try_block(vec![t]).unwrap_err(), BlockError::Tx { error: TxError::TooNew { .. }, .. }));
            // The refused transaction never ran: its nonce is the next one's.
            let client = c.addr(5);
            *c.nonces.get_mut(&client).unwrap() -= 1;
            // An unadjusted challenge is as before.
            let (attestation, signature, transcript) = evidence(&c, (0..50).collect());
            let t = c.tx(5, Payload::Challenge { session, attestation, signature, transcript, bond });
            assert_eq!(c.block(vec![t]).results[0].error, None, "v{version}");
        }
        // From version 7: opened, with the adjustment in the stored transcript for the committee.
        let (mut c, session) = setup_at(7);
        let (attestation, signature, transcript) = adjusted(&c);
        let t = c.tx(5, Payload::Challenge { session, attestation, signature, transcript: transcript.clone(), bond });
        assert_eq!(c.block(vec![t]).results[0].error, None);
        let opened = challenge(&c, 0);
        assert_eq!(opened.transcript, transcript);
        assert_eq!(opened.status, ChallengeStatus::Open);
    }

    #[test]
    fn a_constrained_generation_is_challenged_from_version_8_only() {
        let constrained = |c: &Chain| {
            let (_, _, mut transcript) = evidence(c, (0..50).collect());
            transcript.sampling = SamplingSpec::Constrained {
                base: Box::new(SamplingSpec::Greedy),
                grammar: plexus_types::receipt::GrammarSpec {
                    kind: plexus_types::receipt::GrammarKind::JsonSchema,
                    source: r#"{"type":"object"}"#.into(),
                },
            };
            let att = Attestation {
                request_hash: transcript.request_hash(),
                output_hash: hash(b"text"),
                model: model().id(),
                input_tokens: 200,
                output_tokens: 50,
                output_ids_hash: output_ids_hash(&transcript.output),
                logits_fingerprint: Hash::ZERO,
            };
            let sig = att.sign(&c.keys[4], CHAIN);
            (att, sig, transcript)
        };
        let bond = params().challenge_bond_min;
        for version in [3, 7] {
            let (mut c, session) = setup_at(version);
            let (attestation, signature, transcript) = constrained(&c);
            let t = c.tx(5, Payload::Challenge { session, attestation, signature, transcript, bond });
            let err = c.exec.check_tx(&c.state, c.height + 1, &t).unwrap_err();
            assert!(matches!(err, TxError::TooNew { needs: 8, .. }), "v{version}: {err}");
            assert!(matches!(c.try_block(vec![t]).unwrap_err(), BlockError::Tx { error: TxError::TooNew { .. }, .. }));
            let client = c.addr(5);
            *c.nonces.get_mut(&client).unwrap() -= 1;
            let (attestation, signature, transcript) = evidence(&c, (0..50).collect());
            let t = c.tx(5, Payload::Challenge { session, attestation, signature, transcript, bond });
            assert_eq!(c.block(vec![t]).results[0].error, None, "v{version}");
        }
        // From version 8: opened, with the grammar in the stored transcript for the committee.
        let (mut c, session) = setup_at(8);
        let (attestation, signature, transcript) = constrained(&c);
        let t = c.tx(5, Payload::Challenge { session, attestation, signature, transcript: transcript.clone(), bond });
        assert_eq!(c.block(vec![t]).results[0].error, None);
        let opened = challenge(&c, 0);
        assert_eq!(opened.transcript, transcript);
        assert_eq!(opened.status, ChallengeStatus::Open);
    }

    #[test]
    fn equivocation_is_slashed_under_version_three() {
        let (mut c, _) = setup();
        // The set is ordered by stake: its second member is account 2 (3 x min_stake).
        let (before, reporter) = (bonded(&c, 2), c.balance(5));
        let t = c.tx(5, Payload::ReportEvidence { evidence: b"guilty:1".to_vec() });
        let out = c.block(vec![t]);
        let slashed = out.results[0]
            .events
            .iter()
            .find_map(|e| match e {
                Event::Slashed { offender, amount, .. } if offender == &c.addr(2) => Some(*amount),
                _ => None,
            })
            .expect("slashed");
        assert_eq!(slashed, before / 20, "5% of its stake");
        assert_eq!(bonded(&c, 2), before - slashed);
        assert_eq!(c.balance(5), reporter - 1_000 + slashed / 10, "the reporter gets its share");
    }

    #[test]
    fn equivocation_is_slashed_under_version_six_too() {
        // v6 checks evidence against the epoch's committee (BLS keys in consensus-v2 epochs);
        // the slash and the reporter's share are version 3's.
        let (mut c, _) = setup_at(6);
        let (before, reporter) = (bonded(&c, 2), c.balance(5));
        let t = c.tx(5, Payload::ReportEvidence { evidence: b"guilty:1".to_vec() });
        let out = c.block(vec![t]);
        assert_eq!(out.results[0].error, None);
        assert!(
            out.results[0]
                .events
                .iter()
                .any(|e| matches!(e, Event::Slashed { offender, .. } if offender == &c.addr(2)))
        );
        assert_eq!(bonded(&c, 2), before - before / 20);
        assert_eq!(c.balance(5), reporter - 1_000 + before / 20 / 10);
    }

    #[test]
    fn versions_before_three_refuse_challenges() {
        let mut c = with_provider();
        let t = c.tx(3, Payload::ChallengeVote { challenge: 0, guilty: true });
        let error = c.block(vec![t]).results[0].error.clone().unwrap();
        assert!(error.contains("not supported"), "{error}");
    }

    fn read_deposits(c: &Chain) -> Amount {
        let mut o = Overlay::new(&c.state);
        Store::new(&mut o).supply().deposits
    }
}

/// Execution version 4: tensor models priced per inference, and sessions restricted to regions.
mod v4_tensor_and_residency {
    use super::*;

    fn tensor_model() -> ModelManifest {
        ModelManifest {
            name: "ecg-heartbeat".into(),
            engine: EngineKind::TractOnnx,
            weights_sha256: hash(b"graph"),
            tokenizer_sha256: hash(b"tensor.json"),
            template_sha256: Hash::ZERO,
            quantization: "F32".into(),
            context_length: 1024,
        }
    }

    fn provider(region: &str, model: &ModelManifest) -> Payload {
        Payload::RegisterProvider(ProviderInfo {
            endpoint: "http://127.0.0.1:8080".into(),
            region: region.into(),
            hardware: "2 vCPU".into(),
            // One row is one inference: 2,000 base units per 1,000 inferences, no input price.
            prices: vec![ModelPrice { model: model.id(), input_per_1k: 0, output_per_1k: 2_000 }],
            versions: SupportedVersions::V1_ONLY,
        })
    }

    fn open_in(c: &mut Chain, client: usize, provider: usize, regions: &[&str]) -> (SignedTx, Hash) {
        let nonce = *c.nonces.get(&c.addr(client)).unwrap_or(&0);
        let payload = Payload::OpenSessionIn {
            provider: c.addr(provider),
            model: tensor_model().id(),
            deposit: 10_000,
            max_input_per_1k: 0,
            max_output_per_1k: 2_000,
            expiry_height: c.height + 50,
            regions: regions.iter().map(|r| r.to_string()).collect(),
        };
        (c.tx(client, payload), session_id(&c.addr(client), nonce))
    }

    /// A v4 chain: accounts 2 (region eu-west) and 3 (us-east) provide the tensor model.
    fn setup() -> Chain {
        let mut c = Chain::with(6, 2, 4, Arc::new(NoEvidence));
        let stake = params().min_provider_stake;
        let mut txs = vec![c.tx(2, Payload::RegisterModel(tensor_model()))];
        for (who, region) in [(2, "eu-west"), (3, "us-east")] {
            txs.push(c.tx(who, Payload::Stake { amount: stake, p2p_address: String::new() }));
            txs.push(c.tx(who, provider(region, &tensor_model())));
        }
        let out = c.block(txs);
        assert!(out.results.iter().all(|r| r.error.is_none()), "{:?}", out.results);
        c
    }

    #[test]
    fn before_version_4_a_block_with_a_tensor_model_or_a_restricted_session_is_invalid() {
        // As it is to older binaries, which cannot decode either: not a failed transaction
        // (which old and new nodes would disagree on), an invalid block.
        for version in 1..=3 {
            let mut c = Chain::with(4, 2, version, Arc::new(NoEvidence));
            let t = c.tx(2, Payload::RegisterModel(tensor_model()));
            let height = c.height + 1;
            let err = c.exec.check_tx(&c.state, height, &t).unwrap_err();
            assert!(matches!(err, TxError::TooNew { needs: 4, .. }), "v{version}: {err}");
            let err = c.try_block(vec![t.clone()]).unwrap_err();
            assert!(matches!(err, BlockError::Tx { index: 0, error: TxError::TooNew { .. }, .. }), "{err}");
            // The block builder leaves it out, with the reason.
            let env = BlockEnv { height, proposer: c.addr(0) };
            let (included, _, dropped) = c.exec.build_block(&c.state, &env, vec![t.clone()], 10, 1 << 20).unwrap();
            assert!(included.is_empty());
            assert_eq!(dropped, vec![(t.hash(), TxError::TooNew { kind: "register_model", needs: 4, version })]);
            let (open, _) = open_in(&mut c, 3, 2, &["eu-west"]);
            assert!(matches!(c.try_block(vec![open]).unwrap_err(), BlockError::Tx { .. }));
            // A text model registers as before (nothing above was applied: nonces start again).
            c.nonces.clear();
            let llm = c.tx(2, Payload::RegisterModel(model()));
            assert_eq!(c.try_block(vec![llm]).unwrap().results[0].error, None);
        }
    }

    #[test]
    fn a_tensor_model_is_paid_per_inference_with_the_same_sessions_and_receipts() {
        let mut c = setup();
        let (client_before, provider_before) = (c.balance(4), c.balance(2));
        let (open, id) = open_in(&mut c, 4, 2, &["eu-west", "eu-central"]);
        let out = c.block(vec![open]);
        assert_eq!(out.results[0].error, None);
        assert!(out.results[0].events.iter().any(
            |e| matches!(e, Event::SessionRestricted { session, regions } if session == &id && regions.len() == 2)
        ));
        // 1,500 inferences at 2,000 per 1,000 = 3,000 base units.
        let r = Receipt {
            session: id,
            seq: 1,
            cum_input_tokens: 0,
            cum_output_tokens: 1_500,
            cum_amount: 3_000,
            outputs_root: hash(b"rows"),
        }
        .sign(&c.keys[4], CHAIN);
        let t = c.tx(2, Payload::Claim { receipts: vec![r] });
        assert_eq!(c.block(vec![t]).results[0].error, None);
        let s = c.session(&id);
        assert_eq!((s.settled_output_tokens, s.settled_amount), (1_500, 3_000));
        let fee = params().protocol_fee(3_000);
        assert_eq!(c.balance(2), provider_before - 1_000 + 3_000 - fee, "paid to the base unit, less the fee");
        assert_eq!(c.balance(4), client_before - 1_000 - 10_000, "the deposit is in escrow");
        // A receipt for more than its inferences cost at the session's price settles nothing:
        // 1,501 inferences cost at most 3,002.
        let r = Receipt {
            session: id,
            seq: 2,
            cum_input_tokens: 0,
            cum_output_tokens: 1_501,
            cum_amount: 3_003,
            outputs_root: hash(b"more"),
        }
        .sign(&c.keys[4], CHAIN);
        let t = c.tx(2, Payload::Claim { receipts: vec![r] });
        assert!(c.block(vec![t]).results[0].error.is_some());
        assert_eq!(c.session(&id).settled_amount, 3_000);
    }

    #[test]
    fn a_restricted_session_opens_only_with_a_provider_inside_and_settles_only_while_inside() {
        let mut c = setup();
        // The us-east provider is outside: refused, the client keeps its deposit.
        let before = c.balance(4);
        let (open, _) = open_in(&mut c, 4, 3, &["eu-west"]);
        let out = c.block(vec![open]);
        let err = out.results[0].error.clone().unwrap();
        assert!(err.contains("outside the session's regions"), "{err}");
        assert_eq!(c.balance(4), before - 1_000, "only the fee");
        // Bad region lists are refused.
        for regions in [vec![], vec!["eu-west", "eu-west"], vec!["has space"]] {
            let (open, _) = open_in(&mut c, 4, 2, &regions);
            assert!(c.block(vec![open]).results[0].error.is_some(), "{regions:?}");
        }
        // Inside: opens. Then the provider re-registers in another region: its receipts for the
        // session no longer settle (the escrow goes back to the client at expiry).
        let (open, id) = open_in(&mut c, 4, 2, &["eu-west"]);
        assert_eq!(c.block(vec![open]).results[0].error, None);
        let moved = c.tx(2, provider("us-west", &tensor_model()));
        assert_eq!(c.block(vec![moved]).results[0].error, None);
        let r = Receipt {
            session: id,
            seq: 1,
            cum_input_tokens: 0,
            cum_output_tokens: 10,
            cum_amount: 20,
            outputs_root: Hash::ZERO,
        }
        .sign(&c.keys[4], CHAIN);
        let t = c.tx(2, Payload::Claim { receipts: vec![r] });
        let out = c.block(vec![t]);
        assert!(out.results[0].error.clone().unwrap().contains("restricted to regions"), "{:?}", out.results[0]);
        assert_eq!(c.session(&id).settled_amount, 0);
    }
}

mod consensus_keys {
    use super::*;

    /// `who`'s registration as its node makes it: the BLS key derived from its identity, with a
    /// proof of possession naming `owner` on `chain`.
    fn registration(c: &Chain, who: usize, owner: usize, chain: &str) -> Payload {
        plexus_consensus::key_registration(chain, &c.keys[who].0, &c.addr(owner).0)
    }

    fn key_of(c: &Chain, who: usize) -> Option<crate::state::ConsensusKey> {
        let mut o = Overlay::new(&c.state);
        Store::new(&mut o).consensus_key(&c.addr(who))
    }

    fn v6() -> Chain {
        Chain::with(4, 2, 6, Arc::new(plexus_consensus::evidence::Verifier::new(CHAIN)))
    }

    #[test]
    fn a_key_needs_its_owners_proof_on_this_chain_and_is_registered_once() {
        let mut c = v6();
        // A proof made for another chain, or naming another address, is refused.
        for bad in [registration(&c, 0, 0, "another-chain"), registration(&c, 0, 1, CHAIN)] {
            let t = c.tx(0, bad);
            let out = c.block(vec![t]);
            assert!(out.results[0].error.as_ref().unwrap().contains("proof of possession"), "{:?}", out.results);
        }
        assert_eq!(key_of(&c, 0), None);
        // Its own proof: registered, with the height.
        let own = registration(&c, 0, 0, CHAIN);
        let t = c.tx(0, own.clone());
        let out = c.block(vec![t]);
        assert_eq!(out.results[0].error, None);
        let stored = key_of(&c, 0).expect("registered");
        assert_eq!(stored.registered_height, c.height);
        // Someone replaying the same bytes from the mempool or the chain gains nothing.
        let t = c.tx(1, own);
        let out = c.block(vec![t]);
        assert!(out.results[0].error.is_some(), "{:?}", out.results);
        assert_eq!(key_of(&c, 1), None);
        // A second key for the same address is refused: the first stays.
        let other = registration(&c, 2, 0, CHAIN);
        let t = c.tx(0, other);
        assert!(c.block(vec![t]).results[0].error.as_ref().unwrap().contains("already registered"));
        assert_eq!(key_of(&c, 0), Some(stored));
        // Wrong lengths and garbage points: errors, never a panic; the fee is still charged.
        let before = c.balance(3);
        for (key, proof) in
            [(vec![0u8; 96], vec![0u8; 48]), (vec![1u8; 95], vec![1u8; 48]), (vec![0xff; 96], vec![0xff; 48])]
        {
            let t = c.tx(3, Payload::RegisterConsensusKey { key, proof });
            assert!(c.block(vec![t]).results[0].error.is_some());
        }
        assert_eq!(c.balance(3), before - 3 * 1_000);
        assert_eq!(key_of(&c, 3), None);
        // Account 3 is no validator candidate: even its own well-formed registration is refused
        // before any pairing is computed.
        let t = c.tx(3, registration(&c, 3, 3, CHAIN));
        assert!(c.block(vec![t]).results[0].error.as_ref().unwrap().contains("only validator candidates"));
    }

    #[test]
    fn before_version_6_a_registration_is_too_new() {
        for version in [4, 5] {
            let mut c = Chain::with(4, 2, version, Arc::new(plexus_consensus::evidence::Verifier::new(CHAIN)));
            let t = c.tx(0, registration(&c, 0, 0, CHAIN));
            let err = c.exec.check_tx(&c.state, 1, &t).unwrap_err();
            assert!(matches!(err, TxError::TooNew { needs: 6, .. }), "v{version}: {err}");
            assert!(matches!(c.try_block(vec![t]).unwrap_err(), BlockError::Tx { error: TxError::TooNew { .. }, .. }));
        }
    }

    #[test]
    fn an_epoch_counts_keys_registered_before_it_began_and_only_from_consensus_v2() {
        let mut c = v6();
        let t = c.tx(0, registration(&c, 0, 0, CHAIN));
        c.block(vec![t]);
        let read = |c: &Chain, epoch| {
            let mut o = Overlay::new(&c.state);
            crate::gov::epoch_consensus(&Store::new(&mut o), epoch)
        };
        // Consensus v1 all along: no keys whatever is registered.
        assert_eq!(read(&c, 0), Some(crate::gov::EpochConsensus { version: 1, keys: vec![] }));
        while c.height < 10 {
            c.block(vec![]);
        }
        assert_eq!(read(&c, 1).map(|e| e.version), Some(1));
        assert_eq!(read(&c, 2), None, "not chosen yet");

        // Consensus v2 active from height 20 (the first of epoch 2), as governance records it.
        let mut o = Overlay::new(&c.state);
        let mut store = Store::new(&mut o);
        let mut meta = crate::gov::meta(&store);
        let id = meta.next_upgrade;
        meta.next_upgrade += 1;
        store.write(keys::GOVERNANCE.to_vec(), &meta);
        let upgrade = crate::gov::Upgrade {
            proposal: 0,
            layer: plexus_types::Layer::Consensus,
            version: 2,
            activation_height: 15,
            deadline_height: 100,
            status: crate::gov::UpgradeStatus::Active,
            activated_height: 20,
            ready_bps: 10_000,
            note: String::new(),
        };
        store.write(keys::upgrade(id), &upgrade);
        let changes = o.into_changes();
        commit(&mut c.state, changes);
        // Validator 1 registers during epoch 1: epoch 2 counts it, epoch 1 never would.
        let t = c.tx(1, registration(&c, 1, 1, CHAIN));
        c.block(vec![t]);
        while c.height < 20 {
            c.block(vec![]);
        }
        assert_eq!(read(&c, 1).map(|e| e.version), Some(1), "the upgrade is active from epoch 2");
        let epoch2 = read(&c, 2).expect("chosen at the end of epoch 1");
        assert_eq!(epoch2.version, 2, "{epoch2:?} {:?} {:?}", key_of(&c, 0), key_of(&c, 1));
        let mut who: Vec<Address> = epoch2.keys.iter().map(|(a, _)| a.clone()).collect();
        who.sort();
        let mut expected = vec![c.addr(0), c.addr(1)];
        expected.sort();
        assert_eq!(who, expected);
        let zero = epoch2.keys.iter().find(|(a, _)| *a == c.addr(0)).unwrap();
        assert_eq!(zero.1, key_of(&c, 0).unwrap().key);
    }
}
