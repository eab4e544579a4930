//! The chain REST API (`/chain/v1/...`), the finalized-block stream (server-sent events),
//! `/metrics` and `/health`. Every error is JSON `{"error": {"code", "message"}}` with a 4xx
//! status for bad input; nothing a client sends can panic the node or change state unless it
//! is an admissible transaction.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use commonware_runtime::{Clock, Metrics, Spawner, Storage};
use futures::Stream;
use plexus_execution::state::{self as st, Session, Stake, UnbondingBucket};
use plexus_types::{Address, Amount, Hash, ModelManifest, SignedTx};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::chain::{ChainState, SubmitError};

/// What the API handlers share.
pub struct ApiState<E: Storage + Clock + Metrics + Spawner> {
    pub chain: ChainState<E>,
    /// Renders the runtime's metrics in Prometheus text format.
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
    /// Facts about this node for `/chain/v1/status`.
    pub node: NodeInfo,
    /// The network protocol version negotiated with each peer.
    pub peer_versions: plexus_network::hello::PeerVersions,
    /// Places for `/chain/v1/stream` readers ([`STREAM_SUBSCRIBERS_MAX`]).
    pub stream_slots: Arc<tokio::sync::Semaphore>,
    /// The genesis this node runs, for `/chain/v1/genesis` (how a new node joins).
    pub genesis: Arc<plexus_types::Genesis>,
    /// Providers' settlements and addresses' transactions, caught up from finalized blocks on
    /// each query.
    pub history: tokio::sync::Mutex<History>,
}

/// What is read from archived blocks on demand (node-local, never part of the state).
#[derive(Default)]
pub struct History {
    pub earnings: crate::earnings::Earnings,
    pub activity: crate::activity::Activity,
}

/// Most blocks one query reads to catch the history up (a long-idle index catches up over
/// several queries instead of holding one for minutes).
const HISTORY_BLOCKS_PER_QUERY: u64 = 100_000;

/// The archived block at `height`, which must be there (it is at or below the tip).
async fn archived<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    s: &ApiState<E>,
    height: u64,
) -> ApiResult<plexus_store::BlockRecord> {
    s.chain
        .blocks()
        .by_height(height)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::internal(format!("block {height} is not archived")))
}

/// Locks the history and reads the blocks finalized since the last query.
async fn history<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    s: &ApiState<E>,
) -> ApiResult<tokio::sync::MutexGuard<'_, History>> {
    let mut history = s.history.lock().await;
    let tip = s.chain.tip().0.min(history.earnings.height.saturating_add(HISTORY_BLOCKS_PER_QUERY));
    while history.earnings.height < tip {
        let h = history.earnings.height + 1;
        let record = archived(s, h).await?;
        history.earnings.add_block(h, &record.results_json).map_err(ApiError::internal)?;
        history.activity.add_block(h, &record.block.txs);
    }
    Ok(history)
}

/// Facts about the serving node.
#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    pub address: Address,
    /// Hash of the genesis file (`plexus node init --join --genesis-hash` checks it).
    pub genesis_hash: Hash,
    pub p2p_listen: String,
    pub version: &'static str,
}

/// An API error: a status and a stable code.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, code, message: message.into() }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: message.into() }
    }

    fn internal(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: message.into() }
    }
}

#[derive(Serialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorEnvelope { error: ErrorBody { code: self.code, message: self.message } }))
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn parse<T: std::str::FromStr<Err = String>>(what: &'static str, s: &str) -> ApiResult<T> {
    s.parse().map_err(|e: String| ApiError::bad_request("bad_argument", format!("{what}: {e}")))
}

/// Most entries in one page of any listing.
pub const PAGE_MAX: usize = 100;

/// `?limit=&after=`: a page of a listing. `after` is the `next` cursor of the previous page.
#[derive(Deserialize, Default)]
struct Page {
    limit: Option<usize>,
    after: Option<String>,
}

impl Page {
    fn limit(&self) -> ApiResult<usize> {
        match self.limit {
            None => Ok(PAGE_MAX),
            Some(0) => Err(ApiError::bad_request("bad_argument", "limit must be at least 1")),
            Some(n) if n > PAGE_MAX => {
                Err(ApiError::bad_request("bad_argument", format!("limit must be at most {PAGE_MAX}")))
            }
            Some(n) => Ok(n),
        }
    }

    fn after<T: std::str::FromStr<Err = String>>(&self) -> ApiResult<Option<T>> {
        self.after.as_deref().map(|a| parse("after", a)).transpose()
    }
}

/// The cursor of the next page: the last entry's, when the page is full.
fn next_cursor<T: ToString>(len: usize, limit: usize, last: Option<T>) -> Option<String> {
    (len == limit).then_some(last).flatten().map(|l| l.to_string())
}

/// The keys of `table` after `after` (a record key body), in order, at most `limit`.
fn table_page<'m>(
    map: &'m std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    table: u8,
    after: Option<&[u8]>,
    limit: usize,
) -> Vec<(&'m Vec<u8>, &'m Vec<u8>)> {
    use std::ops::Bound;
    let start = match after {
        Some(body) => {
            let mut k = vec![table];
            k.extend_from_slice(body);
            Bound::Excluded(k)
        }
        None => Bound::Included(vec![table]),
    };
    let end = if table == u8::MAX { Bound::Unbounded } else { Bound::Excluded(vec![table + 1]) };
    map.range((start, end)).take(limit).collect()
}

/// Most `/chain/v1/stream` readers at once; more get 503.
pub const STREAM_SUBSCRIBERS_MAX: usize = 64;

/// Builds the API router.
pub fn router<E>(state: Arc<ApiState<E>>, body_bytes_max: usize) -> Router
where
    E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static,
{
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics::<E>))
        .route("/chain/v1/status", get(status::<E>))
        .route("/chain/v1/params", get(params::<E>))
        .route("/chain/v1/genesis", get(genesis::<E>))
        .route("/chain/v1/supply", get(supply::<E>))
        .route("/chain/v1/validators", get(validators::<E>))
        .route("/chain/v1/blocks/latest", get(latest_block::<E>))
        .route("/chain/v1/blocks/{id}", get(block::<E>))
        .route("/chain/v1/txs", post(submit::<E>))
        .route("/chain/v1/txs/batch", post(submit_batch::<E>))
        .route("/chain/v1/txs/{hash}", get(tx::<E>))
        .route("/chain/v1/accounts/{address}", get(account::<E>))
        .route("/chain/v1/accounts/{address}/txs", get(account_txs::<E>))
        .route("/chain/v1/providers", get(providers::<E>))
        .route("/chain/v1/providers/{address}", get(provider::<E>))
        .route("/chain/v1/providers/{address}/earnings", get(earnings::<E>))
        .route("/chain/v1/models", get(models::<E>))
        .route("/chain/v1/models/{id}", get(model::<E>))
        .route("/chain/v1/sessions", get(sessions::<E>))
        .route("/chain/v1/sessions/{id}", get(session::<E>))
        .route("/chain/v1/evidence", get(evidence::<E>))
        .route("/chain/v1/challenges", get(challenges::<E>))
        .route("/chain/v1/challenges/{id}", get(challenge::<E>))
        .route("/chain/v1/proposals", get(proposals::<E>))
        .route("/chain/v1/proposals/{id}", get(proposal::<E>))
        .route("/chain/v1/upgrades", get(upgrades::<E>))
        .route("/chain/v1/signals", get(signals::<E>))
        .route("/chain/v1/peers", get(peers::<E>))
        .route("/chain/v1/stream", get(stream::<E>))
        .route("/openapi.json", get(openapi))
        .merge(crate::console::routes())
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .with_state(state)
}

/// This API described in OpenAPI 3 (checked against the live server in the tests).
async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
}

async fn metrics<E: Storage + Clock + Metrics + Spawner>(State(s): State<Arc<ApiState<E>>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], (s.metrics)())
}

// ---- response bodies ----
//
// Amounts are u128 and may exceed what a `serde_json::Value` number holds, so every response is
// a typed struct serialized straight to text (JSON numbers of any size), never built with `json!`.

#[derive(Serialize)]
struct ValidatorBody<'a> {
    address: &'a Address,
    stake: Amount,
    p2p_address: &'a str,
}

fn validator_bodies(set: &st::ValidatorSet) -> Vec<ValidatorBody<'_>> {
    set.0.iter().map(|v| ValidatorBody { address: &v.address, stake: v.stake, p2p_address: &v.p2p_address }).collect()
}

#[derive(Serialize)]
struct StatusBody<'a> {
    chain_id: &'a str,
    height: u64,
    finalized_height: u64,
    state_height: Option<u64>,
    latest_block_hash: Hash,
    latest_block_time_ms: Option<u64>,
    state_root: Hash,
    epoch: u64,
    validators: Vec<ValidatorBody<'a>>,
    versions: plexus_types::VersionVector,
    mempool_txs: usize,
    node: &'a NodeInfo,
    /// Upgrades approved and not yet active, with their readiness now.
    pending_upgrades: Vec<UpgradeBody>,
    /// What this node's binary supports, and its shadow runs.
    upgrade_node: NodeUpgradeState,
}

async fn status<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    State(s): State<Arc<ApiState<E>>>,
) -> ApiResult<Response> {
    let (height, hash) = s.chain.tip();
    let (state_height, root) = s.chain.state().committed();
    let (versions, chain, validators) = s.chain.read(|store| {
        let chain = store.chain();
        let validators = store.validators(chain.epoch).unwrap_or_default();
        (store.versions(), chain, validators)
    });
    let latest = s.chain.blocks().by_height(height).await.map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(StatusBody {
        chain_id: s.chain.chain_id(),
        height,
        finalized_height: height,
        state_height,
        latest_block_hash: hash,
        latest_block_time_ms: latest.map(|r| r.block.header.timestamp_ms),
        state_root: root,
        epoch: chain.epoch,
        validators: validator_bodies(&validators),
        versions,
        mempool_txs: s.chain.mempool_len(),
        node: &s.node,
        pending_upgrades: upgrades_body(&s)
            .upgrades
            .into_iter()
            .filter(|u| u.upgrade.status == plexus_execution::gov::UpgradeStatus::Pending)
            .collect(),
        upgrade_node: node_upgrade_state(&s),
    })
    .into_response())
}

/// The genesis file this node runs, as JSON: what `plexus node init --join` fetches. Its hash
/// (of the canonical JSON) is in `/chain/v1/status` under `node.genesis_hash`.
async fn genesis<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
) -> Json<plexus_types::Genesis> {
    Json((*s.genesis).clone())
}

async fn params<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
) -> Json<plexus_types::Params> {
    Json(s.chain.params())
}

#[derive(Serialize)]
struct SupplyBody {
    #[serde(flatten)]
    supply: st::Supply,
    conserved: bool,
}

async fn supply<E: Storage + Clock + Metrics + Spawner>(State(s): State<Arc<ApiState<E>>>) -> Json<SupplyBody> {
    let supply = s.chain.read(|store| store.supply());
    let conserved = supply.is_conserved();
    Json(SupplyBody { supply, conserved })
}

#[derive(Serialize)]
struct ValidatorsBody<'a> {
    epoch: u64,
    validators: Vec<ValidatorBody<'a>>,
    next: Option<Vec<ValidatorBody<'a>>>,
}

async fn validators<E: Storage + Clock + Metrics + Spawner>(State(s): State<Arc<ApiState<E>>>) -> Response {
    let (epoch, set, next) = s.chain.read(|store| {
        let epoch = store.chain().epoch;
        (epoch, store.validators(epoch).unwrap_or_default(), store.validators(epoch + 1))
    });
    Json(ValidatorsBody { epoch, validators: validator_bodies(&set), next: next.as_ref().map(validator_bodies) })
        .into_response()
}

#[derive(Serialize)]
struct TxBody<'a> {
    hash: Hash,
    tx: &'a SignedTx,
}

#[derive(Serialize)]
struct BlockBody<'a> {
    hash: Hash,
    header: &'a plexus_types::Header,
    txs: Vec<TxBody<'a>>,
    /// The stored execution results, verbatim.
    results: Option<&'a RawValue>,
    finalization: String,
    chain_id: &'a str,
}

fn block_response<E: Storage + Clock + Metrics + Spawner>(
    s: &ApiState<E>,
    record: &plexus_store::BlockRecord,
) -> Response {
    let results: Option<&RawValue> = serde_json::from_slice(&record.results_json).ok();
    Json(BlockBody {
        hash: record.block.hash(),
        header: &record.block.header,
        txs: record.block.txs.iter().map(|t| TxBody { hash: t.hash(), tx: t }).collect(),
        results,
        finalization: hex::encode(&record.finalization),
        chain_id: s.chain.chain_id(),
    })
    .into_response()
}

async fn latest_block<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    State(s): State<Arc<ApiState<E>>>,
) -> ApiResult<Response> {
    let (height, _) = s.chain.tip();
    let record = s.chain.blocks().by_height(height).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let record = record.ok_or_else(|| ApiError::not_found(format!("block {height}")))?;
    Ok(block_response(&s, &record))
}

async fn block<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    State(s): State<Arc<ApiState<E>>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let record = if let Ok(height) = id.parse::<u64>() {
        s.chain.blocks().by_height(height).await
    } else {
        let hash: Hash = parse("block hash", &id)?;
        s.chain.blocks().by_hash(&hash).await
    }
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let record = record.ok_or_else(|| ApiError::not_found(format!("block {id}")))?;
    Ok(block_response(&s, &record))
}

/// A transaction to submit: hex of its canonical encoding.
#[derive(Deserialize)]
struct SubmitBody {
    tx: String,
}

fn decode_tx(hex_tx: &str) -> ApiResult<SignedTx> {
    let bytes = hex::decode(hex_tx.trim().trim_start_matches("0x"))
        .map_err(|e| ApiError::bad_request("bad_encoding", format!("tx is not hex: {e}")))?;
    SignedTx::decode(&bytes).map_err(|e| ApiError::bad_request("bad_encoding", format!("tx does not decode: {e}")))
}

fn submit_error(e: SubmitError) -> ApiError {
    use crate::mempool::MempoolError;
    use plexus_execution::TxError;
    let code = match &e {
        SubmitError::Tx(TxError::BadSignature) => "bad_signature",
        SubmitError::Tx(TxError::WrongNonce { .. }) => "wrong_nonce",
        SubmitError::Tx(TxError::FeeTooLow { .. }) => "fee_too_low",
        SubmitError::Tx(TxError::CannotPayFee { .. }) => "insufficient_balance",
        SubmitError::Tx(TxError::WouldFail(plexus_execution::ExecError::InsufficientBalance { .. })) => {
            "insufficient_balance"
        }
        SubmitError::Tx(TxError::WouldFail(_)) => "tx_would_fail",
        SubmitError::Tx(TxError::TooNew { .. }) => "unsupported_by_version",
        SubmitError::Mempool(MempoolError::AlreadyKnown) => "already_known",
        SubmitError::Mempool(MempoolError::StaleNonce { .. } | MempoolError::NonceTooFarAhead { .. }) => "wrong_nonce",
        SubmitError::Mempool(MempoolError::ReplacementUnderpriced { .. }) => "replacement_underpriced",
        SubmitError::Mempool(MempoolError::Full { .. }) => "mempool_full",
        SubmitError::Internal(_) => "internal",
    };
    let status = match &e {
        SubmitError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        SubmitError::Mempool(MempoolError::Full { .. }) => StatusCode::SERVICE_UNAVAILABLE,
        SubmitError::Mempool(MempoolError::AlreadyKnown) => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError { status, code, message: e.to_string() }
}

#[derive(Serialize)]
struct HashBody {
    hash: Hash,
}

/// `POST /chain/v1/txs` with JSON `{"tx": "<hex>"}` or the raw bytes
/// (`Content-Type: application/octet-stream`).
async fn submit<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    State(s): State<Arc<ApiState<E>>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<HashBody>)> {
    let is_binary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/octet-stream"));
    let tx = if is_binary {
        SignedTx::decode(&body)
            .map_err(|e| ApiError::bad_request("bad_encoding", format!("tx does not decode: {e}")))?
    } else {
        let parsed: SubmitBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("bad_json", format!("expected {{\"tx\": \"<hex>\"}}: {e}")))?;
        decode_tx(&parsed.tx)?
    };
    // Admission checks a signature and simulates the sender's queue: off the async workers,
    // which also run consensus.
    let chain = s.chain.clone();
    let submitted = tokio::task::spawn_blocking(move || chain.submit(tx, true))
        .await
        .map_err(|e| ApiError::internal(format!("admission task: {e}")))?;
    let hash = submitted.map_err(|e| {
        s.chain.metrics().txs_rejected.inc();
        submit_error(e)
    })?;
    Ok((StatusCode::ACCEPTED, Json(HashBody { hash })))
}

#[derive(Deserialize)]
struct BatchBody {
    txs: Vec<String>,
}

/// Most transactions in one batch submission.
const BATCH_TXS_MAX: usize = 4096;

#[derive(Serialize)]
#[serde(untagged)]
enum BatchResult {
    Ok { hash: Hash },
    Err { error: ErrorBody },
}

#[derive(Serialize)]
struct ErrorBody {
    code: &'static str,
    message: String,
}

#[derive(Serialize)]
struct BatchResults {
    results: Vec<BatchResult>,
}

/// `POST /chain/v1/txs/batch` with `{"txs": ["<hex>", ...]}`: one result per transaction.
async fn submit_batch<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    State(s): State<Arc<ApiState<E>>>,
    body: Bytes,
) -> ApiResult<Json<BatchResults>> {
    let body: BatchBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("expected {{\"txs\": [\"<hex>\", ...]}}: {e}")))?;
    if body.txs.len() > BATCH_TXS_MAX {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!("at most {BATCH_TXS_MAX} transactions per batch"),
        ));
    }
    let chain = s.chain.clone();
    let results = tokio::task::spawn_blocking(move || {
        let decoded: Vec<Result<SignedTx, ApiError>> = body.txs.iter().map(|hex_tx| decode_tx(hex_tx)).collect();
        // All signatures in one batch check; if any is bad, each is checked on its own below,
        // so that every transaction gets its own answer.
        let well_formed: Vec<&SignedTx> = decoded.iter().filter_map(|d| d.as_ref().ok()).collect();
        let all_signed = SignedTx::verify_all(&well_formed, chain.chain_id());
        decoded
            .into_iter()
            .map(|d| match d.and_then(|tx| chain.submit_signed(tx, true, all_signed).map_err(submit_error)) {
                Ok(hash) => BatchResult::Ok { hash },
                Err(e) => {
                    chain.metrics().txs_rejected.inc();
                    BatchResult::Err { error: ErrorBody { code: e.code, message: e.message } }
                }
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::internal(format!("admission task: {e}")))?;
    Ok(Json(BatchResults { results }))
}

#[derive(Deserialize)]
struct StoredResults<'a> {
    #[serde(borrow)]
    txs: Vec<&'a RawValue>,
}

#[derive(Serialize)]
struct TxLookupBody<'a> {
    hash: Hash,
    height: u64,
    index: usize,
    tx: &'a SignedTx,
    result: Option<&'a RawValue>,
}

async fn tx<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    State(s): State<Arc<ApiState<E>>>,
    Path(hash): Path<String>,
) -> ApiResult<Response> {
    let hash: Hash = parse("tx hash", &hash)?;
    let height = s.chain.blocks().tx_height(&hash).await.map_err(|e| ApiError::internal(e.to_string()))?;
    // A block is archived a moment before its state is committed: report the transaction only
    // once its effects can be read, so a client that saw it finalized also sees what it did.
    let Some(height) = height.filter(|h| *h <= s.chain.tip().0) else {
        return Err(ApiError::not_found(format!("transaction {hash} is not in a finalized block")));
    };
    let record = archived(&s, height).await?;
    let index =
        record.block.txs.iter().position(|t| t.hash() == hash).ok_or_else(|| ApiError::internal("index mismatch"))?;
    let results: Option<StoredResults<'_>> = serde_json::from_slice(&record.results_json).ok();
    let result = results.and_then(|r| r.txs.get(index).copied());
    Ok(Json(TxLookupBody { hash, height, index, tx: &record.block.txs[index], result }).into_response())
}

#[derive(Serialize)]
struct AccountBody {
    address: Address,
    balance: Amount,
    /// The nonce of the account's next transaction to be executed.
    nonce: u64,
    /// The nonce a new transaction should use: `nonce` plus the account's transactions already
    /// waiting in this node's mempool.
    next_nonce: u64,
    bonded: Amount,
    unbonding: Amount,
    p2p_address: String,
}

async fn account<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
    Path(address): Path<String>,
) -> ApiResult<Json<AccountBody>> {
    let address: Address = parse("address", &address)?;
    let heights = s.chain.indexes().unbonding_heights(&address);
    let view = s.chain.state().view();
    // Only the buckets the index says hold this account's stake.
    let unbonding: Amount = heights
        .into_iter()
        .filter_map(|h| {
            let key = st::keys::unbonding(h);
            view.map().get(&key).map(|v| st::decode_record::<UnbondingBucket>(&key, v).0)
        })
        .flatten()
        .filter(|(a, _)| a == &address)
        .fold(0, |acc: Amount, (_, amount)| acc.saturating_add(amount));
    let mut overlay = plexus_execution::Overlay::new(&*view);
    let store = st::Store::new(&mut overlay);
    let (account, stake) = (store.account(&address), store.stake(&address));
    let Stake { bonded, p2p_address } = stake;
    let next_nonce = s.chain.next_nonce(&address, account.nonce);
    Ok(Json(AccountBody {
        address,
        balance: account.balance,
        nonce: account.nonce,
        next_nonce,
        bonded,
        unbonding,
        p2p_address,
    }))
}

#[derive(Serialize)]
struct AccountTxsBody<'a> {
    address: &'a Address,
    /// The newest block read.
    height: u64,
    /// Sent or received, newest first (at most [`crate::activity::TXS_PER_ADDRESS`]).
    txs: Vec<&'a crate::activity::TxRef>,
}

/// The finalized transactions `address` signed or was named in (a transfer's recipient, a
/// session's provider), newest first: the explorer's search by address.
async fn account_txs<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    State(s): State<Arc<ApiState<E>>>,
    Path(address): Path<String>,
) -> ApiResult<Response> {
    let address: Address = parse("address", &address)?;
    let history = history(&s).await?;
    let body = AccountTxsBody {
        address: &address,
        height: history.earnings.height,
        txs: history.activity.txs(&address).collect(),
    };
    Ok(Json(body).into_response())
}

/// What a provider published when it registered.
#[derive(Serialize)]
struct ProviderRecordBody<'a> {
    endpoint: &'a str,
    region: &'a str,
    hardware: &'a str,
    prices: &'a [plexus_types::tx::ModelPrice],
    versions: &'a plexus_types::version::SupportedVersions,
    registered_height: u64,
}

fn provider_record(p: &st::Provider) -> ProviderRecordBody<'_> {
    let info = &p.info;
    ProviderRecordBody {
        endpoint: &info.endpoint,
        region: &info.region,
        hardware: &info.hardware,
        prices: &info.prices,
        versions: &info.versions,
        registered_height: p.registered_height,
    }
}

#[derive(Serialize)]
struct ProviderBody<'a> {
    address: &'a Address,
    #[serde(flatten)]
    record: ProviderRecordBody<'a>,
    bonded: Amount,
    /// What verification established about it (execution v3): committee convictions and
    /// acquittals, and what was slashed.
    stats: st::ProviderStats,
}

#[derive(Serialize)]
struct ProvidersBody<'a> {
    providers: Vec<ProviderBody<'a>>,
    next: Option<String>,
}

async fn providers<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
    Query(page): Query<Page>,
) -> ApiResult<Response> {
    let (limit, after) = (page.limit()?, page.after::<Address>()?);
    let view = s.chain.state().view();
    let found: Vec<(Address, st::Provider, Amount, st::ProviderStats)> =
        table_page(view.map(), st::table::PROVIDER, after.as_ref().map(Address::as_bytes), limit)
            .into_iter()
            .filter_map(|(k, v)| {
                let address = Address(commonware_codec::DecodeExt::decode(commonware_codec::Copying(&k[1..])).ok()?);
                let p: st::Provider = st::decode_record(k, v);
                let stake_key = st::keys::stake(&address);
                let bonded =
                    view.map().get(&stake_key).map(|b| st::decode_record::<Stake>(&stake_key, b).bonded).unwrap_or(0);
                let stats_key = st::keys::provider_stats(&address);
                let stats = view.map().get(&stats_key).map(|b| st::decode_record(&stats_key, b)).unwrap_or_default();
                Some((address, p, bonded, stats))
            })
            .collect();
    drop(view);
    let next = next_cursor(found.len(), limit, found.last().map(|f| &f.0));
    let providers = found
        .iter()
        .map(|(a, p, bonded, stats)| ProviderBody {
            address: a,
            record: provider_record(p),
            bonded: *bonded,
            stats: stats.clone(),
        })
        .collect();
    Ok(Json(ProvidersBody { providers, next }).into_response())
}

/// Most of a provider's latest challenges shown with it.
const PROVIDER_CHALLENGES_SHOWN: usize = 20;

#[derive(Serialize)]
struct ProviderDetail<'a> {
    address: &'a Address,
    /// False once it left the registry (deregistered, or slashed below the provider stake):
    /// its record of faults stays.
    registered: bool,
    /// What it published, while registered.
    #[serde(flatten)]
    record: Option<ProviderRecordBody<'a>>,
    bonded: Amount,
    stats: st::ProviderStats,
    /// Its latest challenges, newest first.
    challenges: Vec<ChallengeSummary>,
}

/// `GET /chain/v1/providers/{address}`: a provider, with what verification established about it
/// (also after it left the registry).
async fn provider<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
    Path(address): Path<String>,
) -> ApiResult<Response> {
    let address: Address = parse("address", &address)?;
    let ids = s.chain.indexes().challenges_of_provider(&address, None, PROVIDER_CHALLENGES_SHOWN);
    let (record, bonded, stats, challenges) = s.chain.read(|store| {
        let record = store.read::<st::Provider>(&st::keys::provider(&address));
        let stats = store.read::<st::ProviderStats>(&st::keys::provider_stats(&address));
        let challenges: Vec<ChallengeSummary> = ids
            .iter()
            .filter_map(|id| store.read::<st::Challenge>(&st::keys::challenge(*id)).map(|c| summary(*id, &c)))
            .collect();
        (record, store.stake(&address).bonded, stats, challenges)
    });
    if record.is_none() && stats.is_none() {
        return Err(ApiError::not_found(format!("provider {address}")));
    }
    let stats = stats.unwrap_or_default();
    Ok(Json(ProviderDetail {
        address: &address,
        registered: record.is_some(),
        record: record.as_ref().map(provider_record),
        bonded,
        stats,
        challenges,
    })
    .into_response())
}

/// Sums of settlements: paid out of escrow (`gross`), the protocol fee, and the provider's `net`.
#[derive(Default, Serialize)]
struct EarningsTotals {
    sessions: u64,
    claims: u64,
    gross: Amount,
    fee: Amount,
    net: Amount,
}

impl EarningsTotals {
    fn add(&mut self, claims: u64, gross: Amount, fee: Amount) {
        self.sessions += 1;
        self.claims += claims;
        self.gross += gross;
        self.fee += fee;
        self.net += gross - fee;
    }
}

#[derive(Serialize)]
struct SessionEarningsBody {
    id: Hash,
    client: Option<Address>,
    model: Option<plexus_types::ModelId>,
    /// `open` (more may settle), `closed` (final), `unknown` (its record is gone).
    status: &'static str,
    input_tokens: u64,
    output_tokens: u64,
    input_per_1k: Amount,
    output_per_1k: Amount,
    /// The tokens at the session's prices: equals `gross`.
    tokens_cost: Option<Amount>,
    gross: Amount,
    fee: Amount,
    net: Amount,
    claims: u64,
    first_height: u64,
    last_height: u64,
    /// Escrow still locked in the session.
    escrow_remaining: Amount,
}

#[derive(Serialize)]
struct DayBody {
    date: String,
    claims: u64,
    gross: Amount,
    fee: Amount,
    net: Amount,
}

#[derive(Serialize)]
struct EarningsBody<'a> {
    provider: &'a Address,
    /// The newest block counted.
    height: u64,
    total: EarningsTotals,
    /// Sessions that are closed: nothing more will be paid.
    settled: EarningsTotals,
    /// Sessions still open: settled so far, and what may still be claimed from their escrow.
    pending: EarningsTotals,
    pending_escrow: Amount,
    days: Vec<DayBody>,
    /// The most recently paid sessions (at most [`EARNINGS_SESSIONS_SHOWN`]), newest first.
    sessions: Vec<SessionEarningsBody>,
}

/// Most sessions listed in one earnings report (the totals count them all).
pub const EARNINGS_SESSIONS_SHOWN: usize = 1000;

/// What a provider earned, explained: per session the tokens at its prices (`gross`), less the
/// protocol fee, is what the provider was paid (`net`); per UTC day; settled (closed sessions)
/// and pending (open ones). Counted from the chain's `session_settled` events, to the base unit.
async fn earnings<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    State(s): State<Arc<ApiState<E>>>,
    Path(address): Path<String>,
) -> ApiResult<Response> {
    let address: Address = parse("address", &address)?;
    let history = history(&s).await?;
    let index = &history.earnings;
    let mut rows: Vec<SessionEarningsBody> = s.chain.read(|store| {
        index
            .sessions(&address)
            .map(|(id, e)| {
                let record = store.read::<st::Session>(&st::keys::session(id));
                let price = record.as_ref().map(|r| r.price);
                SessionEarningsBody {
                    id: *id,
                    client: record.as_ref().map(|r| r.client.clone()),
                    model: record.as_ref().map(|r| r.model),
                    status: match record.as_ref().map(|r| r.status) {
                        Some(st::SessionStatus::Open) => "open",
                        Some(st::SessionStatus::Closed) => "closed",
                        None => "unknown",
                    },
                    input_tokens: e.input_tokens,
                    output_tokens: e.output_tokens,
                    input_per_1k: price.as_ref().map_or(0, |p| p.input_per_1k),
                    output_per_1k: price.as_ref().map_or(0, |p| p.output_per_1k),
                    tokens_cost: price
                        .as_ref()
                        .and_then(|p| plexus_execution::v1::price_of(p, e.input_tokens, e.output_tokens)),
                    gross: e.gross,
                    fee: e.fee,
                    net: e.gross - e.fee,
                    claims: e.claims,
                    first_height: e.first_height,
                    last_height: e.last_height,
                    escrow_remaining: record.as_ref().map_or(0, |r| r.remaining()),
                }
            })
            .collect()
    });
    let (mut total, mut settled, mut pending) = Default::default();
    let mut pending_escrow: Amount = 0;
    for r in &rows {
        EarningsTotals::add(&mut total, r.claims, r.gross, r.fee);
        match r.status {
            "open" => {
                EarningsTotals::add(&mut pending, r.claims, r.gross, r.fee);
                pending_escrow += r.escrow_remaining;
            }
            _ => EarningsTotals::add(&mut settled, r.claims, r.gross, r.fee),
        }
    }
    let days = index
        .days(&address)
        .into_iter()
        .map(|(date, d)| DayBody { date, claims: d.claims, gross: d.gross, fee: d.fee, net: d.gross - d.fee })
        .collect();
    rows.sort_by(|a, b| b.last_height.cmp(&a.last_height).then_with(|| a.id.cmp(&b.id)));
    rows.truncate(EARNINGS_SESSIONS_SHOWN);
    let body = EarningsBody {
        provider: &address,
        height: index.height,
        total,
        settled,
        pending,
        pending_escrow,
        days,
        sessions: rows,
    };
    Ok(Json(body).into_response())
}

/// A challenge without its evidence (the transcript can be long).
#[derive(Serialize)]
struct ChallengeSummary {
    id: u64,
    provider: Address,
    challenger: Address,
    session: Hash,
    model: plexus_types::ModelId,
    /// Output tokens of the challenged response.
    output_tokens: u32,
    status: st::ChallengeStatus,
    bond: Amount,
    opened_height: u64,
    deadline_height: u64,
    committee: Vec<Address>,
    votes: Vec<(Address, bool)>,
    slashed: Amount,
    refunded: Amount,
    reward: Amount,
}

fn summary(id: u64, c: &st::Challenge) -> ChallengeSummary {
    ChallengeSummary {
        id,
        provider: c.provider.clone(),
        challenger: c.challenger.clone(),
        session: c.session,
        model: c.attestation.model,
        output_tokens: c.attestation.output_tokens,
        status: c.status,
        bond: c.bond,
        opened_height: c.opened_height,
        deadline_height: c.deadline_height,
        committee: c.committee.clone(),
        votes: c.votes.clone(),
        slashed: c.slashed,
        refunded: c.refunded,
        reward: c.reward,
    }
}

#[derive(Deserialize)]
struct ChallengeFilter {
    provider: Option<String>,
    challenger: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

#[derive(Serialize)]
struct ChallengesBody {
    challenges: Vec<ChallengeSummary>,
    next: Option<String>,
}

/// `GET /chain/v1/challenges[?provider=|?challenger=][&limit=][&after=]`: challenges newest
/// first, a page at a time (`after` is the last id of the previous page).
async fn challenges<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
    Query(filter): Query<ChallengeFilter>,
) -> ApiResult<Json<ChallengesBody>> {
    let provider: Option<Address> = filter.provider.as_deref().map(|p| parse("provider", p)).transpose()?;
    let challenger: Option<Address> = filter.challenger.as_deref().map(|p| parse("challenger", p)).transpose()?;
    let limit = Page { limit: filter.limit, after: None }.limit()?;
    let before: Option<u64> = filter
        .after
        .as_deref()
        .map(|a| a.parse().map_err(|_| ApiError::bad_request("bad_argument", "after: a challenge id is a number")))
        .transpose()?;
    let ids: Vec<u64> = match (&provider, &challenger) {
        (Some(p), _) => s.chain.indexes().challenges_of_provider(p, before, limit),
        (None, Some(c)) => s.chain.indexes().challenges_by(c, before, limit),
        (None, None) => {
            let count: u64 = s.chain.read(|store| store.read(st::keys::CHALLENGES).unwrap_or(0));
            let end = before.unwrap_or(count).min(count);
            (0..end).rev().take(limit).collect()
        }
    };
    let found: Vec<ChallengeSummary> = s.chain.read(|store| {
        ids.iter()
            .filter_map(|id| store.read::<st::Challenge>(&st::keys::challenge(*id)).map(|c| summary(*id, &c)))
            .collect()
    });
    let next = next_cursor(ids.len(), limit, ids.last());
    let challenges = found.into_iter().filter(|c| challenger.as_ref().is_none_or(|x| &c.challenger == x)).collect();
    Ok(Json(ChallengesBody { challenges, next }))
}

#[derive(Serialize)]
struct ChallengeBody {
    id: u64,
    #[serde(flatten)]
    challenge: st::Challenge,
}

/// `GET /chain/v1/challenges/{id}`: a challenge with its evidence.
async fn challenge<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
    Path(id): Path<String>,
) -> ApiResult<Json<ChallengeBody>> {
    let id: u64 = id.parse().map_err(|_| ApiError::bad_request("bad_argument", "a challenge id is a number"))?;
    let found = s.chain.read(|store| store.read::<st::Challenge>(&st::keys::challenge(id)));
    Ok(Json(ChallengeBody { id, challenge: found.ok_or_else(|| ApiError::not_found(format!("challenge {id}")))? }))
}

#[derive(Serialize)]
struct ModelBody {
    id: Hash,
    manifest: ModelManifest,
    /// The account that registered it, and so owns its name.
    owner: Option<Address>,
}

fn model_body(map: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>, manifest: ModelManifest) -> ModelBody {
    let key = st::keys::model_name(&manifest.name);
    let owner = map
        .get(&key)
        .map(|v| st::decode_record::<st::ModelName>(&key, v))
        .filter(|n| n.id == manifest.id())
        .map(|n| n.owner);
    ModelBody { id: manifest.id(), manifest, owner }
}

#[derive(Serialize)]
struct ModelsBody {
    models: Vec<ModelBody>,
    next: Option<String>,
}

async fn models<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
    Query(page): Query<Page>,
) -> ApiResult<Json<ModelsBody>> {
    let (limit, after) = (page.limit()?, page.after::<Hash>()?);
    let view = s.chain.state().view();
    let models: Vec<ModelBody> =
        table_page(view.map(), st::table::MODEL, after.as_ref().map(|h| &h.as_bytes()[..]), limit)
            .into_iter()
            .map(|(k, v)| model_body(view.map(), st::decode_record::<ModelManifest>(k, v)))
            .collect();
    let next = next_cursor(models.len(), limit, models.last().map(|m| m.id));
    Ok(Json(ModelsBody { models, next }))
}

async fn model<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
    Path(id): Path<String>,
) -> ApiResult<Json<ModelBody>> {
    let id: Hash = parse("model id", &id)?;
    let view = s.chain.state().view();
    let key = st::keys::model(&id);
    let m = view.map().get(&key).map(|v| st::decode_record::<ModelManifest>(&key, v));
    Ok(Json(model_body(view.map(), m.ok_or_else(|| ApiError::not_found(format!("model {id}")))?)))
}

#[derive(Serialize)]
struct SessionBody {
    id: Hash,
    #[serde(flatten)]
    session: Session,
    remaining: Amount,
    /// The regions a restricted session's provider must be in (data residency).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    regions: Vec<String>,
}

fn session_body(id: Hash, session: Session, regions: Option<st::Regions>) -> SessionBody {
    SessionBody { id, remaining: session.remaining(), session, regions: regions.map(|r| r.0).unwrap_or_default() }
}

#[derive(Deserialize)]
struct SessionFilter {
    client: Option<String>,
    provider: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

#[derive(Serialize)]
struct SessionsBody {
    sessions: Vec<SessionBody>,
    next: Option<String>,
}

/// `GET /chain/v1/sessions[?client=][&provider=][&limit=][&after=]`: sessions in id order, a
/// page at a time. A client's or a provider's are read from the node's index of that party.
async fn sessions<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
    Query(filter): Query<SessionFilter>,
) -> ApiResult<Json<SessionsBody>> {
    let client: Option<Address> = filter.client.as_deref().map(|c| parse("client", c)).transpose()?;
    let provider: Option<Address> = filter.provider.as_deref().map(|p| parse("provider", p)).transpose()?;
    let page = Page { limit: filter.limit, after: filter.after };
    let (limit, after) = (page.limit()?, page.after::<Hash>()?);
    let ids: Option<Vec<Hash>> = match (&client, &provider) {
        (Some(c), _) => Some(s.chain.indexes().sessions_of_client(c, after.as_ref(), limit)),
        (None, Some(p)) => Some(s.chain.indexes().sessions_of_provider(p, after.as_ref(), limit)),
        (None, None) => None,
    };
    let view = s.chain.state().view();
    let read = |id: Hash| {
        let key = st::keys::session(&id);
        view.map().get(&key).map(|bytes| (id, st::decode_record::<Session>(&key, bytes)))
    };
    let found: Vec<(Hash, Session)> = match ids {
        Some(ids) => ids.into_iter().filter_map(read).collect(),
        None => table_page(view.map(), st::table::SESSION, after.as_ref().map(|h| &h.as_bytes()[..]), limit)
            .into_iter()
            .filter_map(|(k, v)| Some((Hash::from_bytes(k.get(1..33)?.try_into().ok()?), st::decode_record(k, v))))
            .collect(),
    };
    let regions = |id: &Hash| {
        let key = st::keys::session_regions(id);
        view.map().get(&key).map(|bytes| st::decode_record::<st::Regions>(&key, bytes))
    };
    let found: Vec<(Hash, Session, Option<st::Regions>)> =
        found.into_iter().map(|(id, sess)| (id, sess, regions(&id))).collect();
    drop(view);
    let next = next_cursor(found.len(), limit, found.last().map(|f| f.0));
    // With both filters, the page is the client's, narrowed to the provider.
    let sessions = found
        .into_iter()
        .filter(|(_, sess, _)| provider.as_ref().is_none_or(|p| &sess.provider == p))
        .map(|(id, sess, regions)| session_body(id, sess, regions))
        .collect();
    Ok(Json(SessionsBody { sessions, next }))
}

async fn session<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionBody>> {
    let id: Hash = parse("session id", &id)?;
    let (found, regions) = s.chain.read(|store| {
        (store.read::<Session>(&st::keys::session(&id)), store.read::<st::Regions>(&st::keys::session_regions(&id)))
    });
    Ok(Json(session_body(id, found.ok_or_else(|| ApiError::not_found(format!("session {id}")))?, regions)))
}

#[derive(Serialize)]
struct EvidenceEntry {
    id: Hash,
    #[serde(flatten)]
    record: st::EvidenceRecord,
}

#[derive(Serialize)]
struct EvidenceBody {
    evidence: Vec<EvidenceEntry>,
    next: Option<String>,
}

/// Conflicting-vote offences recorded on-chain, a page at a time.
async fn evidence<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
    Query(page): Query<Page>,
) -> ApiResult<Json<EvidenceBody>> {
    let (limit, after) = (page.limit()?, page.after::<Hash>()?);
    let view = s.chain.state().view();
    let evidence: Vec<EvidenceEntry> =
        table_page(view.map(), st::table::EVIDENCE, after.as_ref().map(|h| &h.as_bytes()[..]), limit)
            .into_iter()
            .filter_map(|(k, v)| {
                Some(EvidenceEntry {
                    id: Hash::from_bytes(k.get(1..33)?.try_into().ok()?),
                    record: st::decode_record(k, v),
                })
            })
            .collect();
    let next = next_cursor(evidence.len(), limit, evidence.last().map(|e| e.id));
    Ok(Json(EvidenceBody { evidence, next }))
}

// ---- governance ----

#[derive(Serialize)]
struct ProposalBody {
    id: u64,
    #[serde(flatten)]
    proposal: plexus_execution::gov::Proposal,
}

#[derive(Serialize)]
struct ProposalsBody {
    proposals: Vec<ProposalBody>,
    next: Option<String>,
}

/// Proposals newest first, a page at a time (`after` = the last id seen).
async fn proposals<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
    Query(page): Query<Page>,
) -> ApiResult<Json<ProposalsBody>> {
    let limit = page.limit()?;
    let after: Option<u64> = page
        .after
        .as_deref()
        .map(|a| a.parse().map_err(|e| ApiError::bad_request("bad_argument", format!("after: {e}"))))
        .transpose()?;
    let list: Vec<ProposalBody> = s.chain.read(|store| {
        let next_id = plexus_execution::gov::meta(store).next_proposal;
        let below = after.map_or(next_id, |a| a.min(next_id));
        (0..below)
            .rev()
            .take(limit)
            .filter_map(|id| plexus_execution::gov::proposal(store, id).map(|proposal| ProposalBody { id, proposal }))
            .collect()
    });
    let next = next_cursor(list.len(), limit, list.last().map(|p| p.id)).filter(|id| id != "0");
    Ok(Json(ProposalsBody { proposals: list, next }))
}

#[derive(Serialize)]
struct VoteBody {
    voter: Address,
    option: Option<plexus_types::tx::VoteOption>,
    stake: Amount,
}

#[derive(Serialize)]
struct ProposalDetail {
    id: u64,
    #[serde(flatten)]
    proposal: plexus_execution::gov::Proposal,
    /// Votes cast so far (while voting), with the voters' current stake.
    votes: Vec<VoteBody>,
    voting_blocks_left: u64,
}

async fn proposal<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    State(s): State<Arc<ApiState<E>>>,
    Path(id): Path<String>,
) -> ApiResult<Json<ProposalDetail>> {
    let id: u64 = id.parse().map_err(|e| ApiError::bad_request("bad_argument", format!("proposal id: {e}")))?;
    let height = s.chain.tip().0;
    let found = s.chain.read(|store| {
        let p = plexus_execution::gov::proposal(store, id)?;
        let votes = p
            .voters
            .iter()
            .map(|v| VoteBody {
                voter: v.clone(),
                option: store.read(&st::keys::vote(id, v)),
                stake: store.stake(v).bonded,
            })
            .collect();
        Some((p, votes))
    });
    let (proposal, votes) = found.ok_or_else(|| ApiError::not_found(format!("proposal {id}")))?;
    let voting_blocks_left = if proposal.status == plexus_execution::gov::ProposalStatus::Voting {
        proposal.voting_end.saturating_sub(height)
    } else {
        0
    };
    Ok(Json(ProposalDetail { id, proposal, votes, voting_blocks_left }))
}

#[derive(Serialize)]
struct UpgradeBody {
    id: u64,
    #[serde(flatten)]
    upgrade: plexus_execution::gov::Upgrade,
    /// For pending upgrades: readiness now, in basis points of candidate stake.
    ready_bps_now: Option<u64>,
}

#[derive(Serialize)]
struct UpgradesBody {
    versions: plexus_types::VersionVector,
    readiness_needed_bps: u128,
    upgrades: Vec<UpgradeBody>,
    /// This node's binary and shadow runs.
    node: NodeUpgradeState,
}

#[derive(Serialize)]
struct NodeUpgradeState {
    supported: plexus_types::version::SupportedVersions,
    shadow_version: u16,
    shadow_blocks_passed: u64,
    shadow_failure: Option<String>,
}

fn node_upgrade_state<E: Storage + Clock + Metrics + Spawner>(s: &ApiState<E>) -> NodeUpgradeState {
    let (shadow_version, shadow_blocks_passed, shadow_failure) = s.chain.shadow_state();
    NodeUpgradeState { supported: crate::supported_versions(), shadow_version, shadow_blocks_passed, shadow_failure }
}

fn upgrades_body<E: Storage + Clock + Metrics + Spawner>(s: &ApiState<E>) -> UpgradesBody {
    let (versions, readiness_needed_bps, upgrades) = s.chain.read(|store| {
        let mut list = Vec::new();
        let meta = plexus_execution::gov::meta(store);
        // The latest ones only: each needs a passed proposal, so a page covers months.
        for id in meta.next_upgrade.saturating_sub(PAGE_MAX as u64)..meta.next_upgrade {
            if let Some(u) = plexus_execution::gov::upgrade(store, id) {
                let now = (u.status == plexus_execution::gov::UpgradeStatus::Pending)
                    .then(|| plexus_execution::gov::readiness(store, u.layer, u.version));
                list.push(UpgradeBody { id, upgrade: u, ready_bps_now: now });
            }
        }
        (store.versions(), store.params().upgrade_readiness_bps, list)
    });
    UpgradesBody { versions, readiness_needed_bps, upgrades, node: node_upgrade_state(s) }
}

async fn upgrades<E: Storage + Clock + Metrics + Spawner>(State(s): State<Arc<ApiState<E>>>) -> Json<UpgradesBody> {
    Json(upgrades_body(&s))
}

#[derive(Serialize)]
struct SignalBody {
    staker: Address,
    stake: Amount,
    signal: Option<plexus_execution::gov::Signal>,
}

#[derive(Serialize)]
struct SignalsBody {
    signals: Vec<SignalBody>,
}

async fn signals<E: Storage + Clock + Metrics + Spawner>(State(s): State<Arc<ApiState<E>>>) -> Json<SignalsBody> {
    let signals = s.chain.read(|store| {
        let stakers: st::AddressList = store.read(st::keys::STAKERS).unwrap_or_default();
        stakers
            .0
            .iter()
            .map(|a| SignalBody {
                staker: a.clone(),
                stake: store.stake(a).bonded,
                signal: plexus_execution::gov::signal(store, a),
            })
            .collect()
    });
    Json(SignalsBody { signals })
}

#[derive(Serialize)]
struct PeerBody {
    address: Address,
    min: u16,
    max: u16,
    negotiated: Option<u16>,
    seen_ms_ago: u64,
}

#[derive(Serialize)]
struct PeersBody {
    /// This binary's network protocol range, and the chain's active version.
    supported: plexus_types::VersionRange,
    active: u16,
    peers: Vec<PeerBody>,
}

/// The network protocol version negotiated with each peer that announced itself.
async fn peers<E: Storage + Clock + Metrics + Spawner>(State(s): State<Arc<ApiState<E>>>) -> Json<PeersBody> {
    let active = s.chain.read(|store| store.versions().network);
    let peers = s
        .peer_versions
        .snapshot()
        .into_iter()
        .map(|(k, v)| PeerBody {
            address: Address(k),
            min: v.range.min,
            max: v.range.max,
            negotiated: v.negotiated,
            seen_ms_ago: v.last_seen.elapsed().as_millis() as u64,
        })
        .collect();
    Json(PeersBody { supported: crate::supported_versions().network, active, peers })
}

/// `GET /chain/v1/stream`: every finalized block with its transaction results and events, as
/// server-sent events (`event: block`). A slow reader that falls behind gets `event: lagged`
/// with the number of blocks it missed, and can fetch them by height.
async fn stream<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let Ok(permit) = s.stream_slots.clone().try_acquire_owned() else {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "too_many_subscribers",
            message: format!("this node serves at most {STREAM_SUBSCRIBERS_MAX} block streams at once; try later"),
        });
    };
    let mut rx = s.chain.subscribe();
    let stream = async_stream::stream! {
        // Held while the reader is connected; dropped with the stream.
        let _permit = permit;
        loop {
            match rx.recv().await {
                Ok(block) => {
                    let data = serde_json::to_string(&*block).expect("finalized blocks serialize");
                    yield Ok(SseEvent::default().event("block").data(data));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    yield Ok(SseEvent::default().event("lagged").data(n.to_string()));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
