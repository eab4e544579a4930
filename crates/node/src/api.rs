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
use plexus_execution::state::{self as st, Session, SessionStatus, Stake, UnbondingBucket, scan_table};
use plexus_types::tx::ProviderInfo;
use plexus_types::{Address, Amount, Hash, ModelManifest, SignedTx};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::chain::{ChainState, SubmitError};

/// What the API handlers share.
pub struct ApiState<E: Storage + Clock + Metrics + Spawner> {
    pub chain: ChainState<E>,
    /// Renders the runtime's metrics in Prometheus text format.
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
    /// Facts about this node for `/chain/v1/status`.
    pub node: NodeInfo,
}

/// Facts about the serving node.
#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    pub address: Address,
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn parse<T: std::str::FromStr<Err = String>>(what: &'static str, s: &str) -> ApiResult<T> {
    s.parse().map_err(|e: String| ApiError::bad_request("bad_argument", format!("{what}: {e}")))
}

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
        .route("/chain/v1/supply", get(supply::<E>))
        .route("/chain/v1/validators", get(validators::<E>))
        .route("/chain/v1/blocks/latest", get(latest_block::<E>))
        .route("/chain/v1/blocks/{id}", get(block::<E>))
        .route("/chain/v1/txs", post(submit::<E>))
        .route("/chain/v1/txs/batch", post(submit_batch::<E>))
        .route("/chain/v1/txs/{hash}", get(tx::<E>))
        .route("/chain/v1/accounts/{address}", get(account::<E>))
        .route("/chain/v1/providers", get(providers::<E>))
        .route("/chain/v1/providers/{address}", get(provider::<E>))
        .route("/chain/v1/models", get(models::<E>))
        .route("/chain/v1/models/{id}", get(model::<E>))
        .route("/chain/v1/sessions", get(sessions::<E>))
        .route("/chain/v1/sessions/{id}", get(session::<E>))
        .route("/chain/v1/stream", get(stream::<E>))
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .with_state(state)
}

async fn metrics<E: Storage + Clock + Metrics + Spawner>(State(s): State<Arc<ApiState<E>>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], (s.metrics)())
}

async fn status<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    State(s): State<Arc<ApiState<E>>>,
) -> ApiResult<Json<Value>> {
    let (height, hash) = s.chain.tip();
    let (state_height, root) = s.chain.state().committed();
    let (versions, chain, validators) = s.chain.read(|store| {
        let chain = store.chain();
        let validators = store.validators(chain.epoch).unwrap_or_default();
        (store.versions(), chain, validators)
    });
    let latest = s.chain.blocks().by_height(height).await.map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(json!({
        "chain_id": s.chain.chain_id(),
        "height": height,
        "finalized_height": height,
        "state_height": state_height,
        "latest_block_hash": hash,
        "latest_block_time_ms": latest.map(|r| r.block.header.timestamp_ms),
        "state_root": root,
        "epoch": chain.epoch,
        "validators": validators.0.iter().map(|v| json!({"address": v.address, "stake": v.stake, "p2p_address": v.p2p_address})).collect::<Vec<_>>(),
        "versions": versions,
        "mempool_txs": s.chain.mempool_len(),
        "node": s.node,
    })))
}

async fn params<E: Storage + Clock + Metrics + Spawner>(State(s): State<Arc<ApiState<E>>>) -> Json<Value> {
    Json(serde_json::to_value(s.chain.params()).expect("params serialize"))
}

async fn supply<E: Storage + Clock + Metrics + Spawner>(State(s): State<Arc<ApiState<E>>>) -> Json<Value> {
    let supply = s.chain.read(|store| store.supply());
    Json(json!({
        "total": supply.total,
        "balances": supply.balances,
        "bonded": supply.bonded,
        "unbonding": supply.unbonding,
        "escrow": supply.escrow,
        "treasury": supply.treasury,
        "deposits": supply.deposits,
        "burned": supply.burned,
        "conserved": supply.is_conserved(),
    }))
}

async fn validators<E: Storage + Clock + Metrics + Spawner>(State(s): State<Arc<ApiState<E>>>) -> Json<Value> {
    let (epoch, set, next) = s.chain.read(|store| {
        let epoch = store.chain().epoch;
        (epoch, store.validators(epoch).unwrap_or_default(), store.validators(epoch + 1))
    });
    let show = |set: &st::ValidatorSet| {
        set.0.iter().map(|v| json!({"address": v.address, "stake": v.stake, "p2p_address": v.p2p_address})).collect::<Vec<_>>()
    };
    Json(json!({"epoch": epoch, "validators": show(&set), "next": next.as_ref().map(show)}))
}

async fn block_json<E: Storage + Clock + Metrics + Spawner>(s: &ApiState<E>, record: plexus_store::BlockRecord) -> Value {
    let results: Value = serde_json::from_slice(&record.results_json).unwrap_or(Value::Null);
    json!({
        "hash": record.block.hash(),
        "header": record.block.header,
        "txs": record.block.txs.iter().map(|t| json!({"hash": t.hash(), "tx": t})).collect::<Vec<_>>(),
        "results": results,
        "finalization": hex::encode(&record.finalization),
        "chain_id": s.chain.chain_id(),
    })
}

async fn latest_block<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    State(s): State<Arc<ApiState<E>>>,
) -> ApiResult<Json<Value>> {
    let (height, _) = s.chain.tip();
    let record = s.chain.blocks().by_height(height).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let record = record.ok_or_else(|| ApiError::not_found(format!("block {height}")))?;
    Ok(Json(block_json(&s, record).await))
}

async fn block<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    State(s): State<Arc<ApiState<E>>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let record = if let Ok(height) = id.parse::<u64>() {
        s.chain.blocks().by_height(height).await
    } else {
        let hash: Hash = parse("block hash", &id)?;
        s.chain.blocks().by_hash(&hash).await
    }
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let record = record.ok_or_else(|| ApiError::not_found(format!("block {id}")))?;
    Ok(Json(block_json(&s, record).await))
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
        SubmitError::Tx(TxError::WouldFail(plexus_execution::ExecError::InsufficientBalance { .. })) => "insufficient_balance",
        SubmitError::Tx(TxError::WouldFail(_)) => "tx_would_fail",
        SubmitError::Mempool(MempoolError::AlreadyKnown) => "already_known",
        SubmitError::Mempool(MempoolError::StaleNonce { .. } | MempoolError::NonceTooFarAhead { .. }) => "wrong_nonce",
        SubmitError::Mempool(MempoolError::ReplacementUnderpriced { .. }) => "replacement_underpriced",
        SubmitError::Mempool(MempoolError::Full { .. }) => "mempool_full",
    };
    let status = match &e {
        SubmitError::Mempool(MempoolError::Full { .. }) => StatusCode::SERVICE_UNAVAILABLE,
        SubmitError::Mempool(MempoolError::AlreadyKnown) => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError { status, code, message: e.to_string() }
}

/// `POST /chain/v1/txs` with JSON `{"tx": "<hex>"}` or the raw bytes
/// (`Content-Type: application/octet-stream`).
async fn submit<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    State(s): State<Arc<ApiState<E>>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let is_binary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/octet-stream"));
    let tx = if is_binary {
        SignedTx::decode(&body).map_err(|e| ApiError::bad_request("bad_encoding", format!("tx does not decode: {e}")))?
    } else {
        let parsed: SubmitBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("bad_json", format!("expected {{\"tx\": \"<hex>\"}}: {e}")))?;
        decode_tx(&parsed.tx)?
    };
    let hash = s.chain.submit(tx, true).map_err(|e| {
        s.chain.metrics().txs_rejected.inc();
        submit_error(e)
    })?;
    Ok((StatusCode::ACCEPTED, Json(json!({"hash": hash}))))
}

#[derive(Deserialize)]
struct BatchBody {
    txs: Vec<String>,
}

/// Most transactions in one batch submission.
const BATCH_TXS_MAX: usize = 4096;

/// `POST /chain/v1/txs/batch` with `{"txs": ["<hex>", ...]}`: one result per transaction.
async fn submit_batch<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    State(s): State<Arc<ApiState<E>>>,
    Json(body): Json<BatchBody>,
) -> ApiResult<Json<Value>> {
    if body.txs.len() > BATCH_TXS_MAX {
        return Err(ApiError::bad_request("batch_too_large", format!("at most {BATCH_TXS_MAX} transactions per batch")));
    }
    let results: Vec<Value> = body
        .txs
        .iter()
        .map(|hex_tx| match decode_tx(hex_tx).and_then(|tx| s.chain.submit(tx, true).map_err(submit_error)) {
            Ok(hash) => json!({"hash": hash}),
            Err(e) => {
                s.chain.metrics().txs_rejected.inc();
                json!({"error": {"code": e.code, "message": e.message}})
            }
        })
        .collect();
    Ok(Json(json!({"results": results})))
}

async fn tx<E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static>(
    State(s): State<Arc<ApiState<E>>>,
    Path(hash): Path<String>,
) -> ApiResult<Json<Value>> {
    let hash: Hash = parse("tx hash", &hash)?;
    let height = s.chain.blocks().tx_height(&hash).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let Some(height) = height else {
        return Err(ApiError::not_found(format!("transaction {hash} is not in a finalized block")));
    };
    let record = s
        .chain
        .blocks()
        .by_height(height)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::internal(format!("block {height} is indexed but missing")))?;
    let index = record.block.txs.iter().position(|t| t.hash() == hash).ok_or_else(|| ApiError::internal("index mismatch"))?;
    let results: Value = serde_json::from_slice(&record.results_json).unwrap_or(Value::Null);
    Ok(Json(json!({
        "hash": hash,
        "height": height,
        "index": index,
        "tx": record.block.txs[index],
        "result": results["txs"][index],
    })))
}

async fn account<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
    Path(address): Path<String>,
) -> ApiResult<Json<Value>> {
    let address: Address = parse("address", &address)?;
    let view = s.chain.state().view();
    let unbonding: Amount = scan_table(view.map(), st::table::UNBONDING)
        .flat_map(|(k, v)| st::decode_record::<UnbondingBucket>(k, v).0)
        .filter(|(a, _)| a == &address)
        .map(|(_, amount)| amount)
        .sum();
    let mut overlay = plexus_execution::Overlay::new(&*view);
    let store = st::Store::new(&mut overlay);
    let (account, stake) = (store.account(&address), store.stake(&address));
    let Stake { bonded, p2p_address } = stake;
    Ok(Json(json!({
        "address": address,
        "balance": account.balance,
        "nonce": account.nonce,
        "bonded": bonded,
        "unbonding": unbonding,
        "p2p_address": p2p_address,
    })))
}

fn provider_json(address: &Address, info: &ProviderInfo, registered_height: u64, bonded: Amount) -> Value {
    json!({
        "address": address,
        "endpoint": info.endpoint,
        "region": info.region,
        "hardware": info.hardware,
        "prices": info.prices,
        "versions": info.versions,
        "registered_height": registered_height,
        "bonded": bonded,
    })
}

async fn providers<E: Storage + Clock + Metrics + Spawner>(State(s): State<Arc<ApiState<E>>>) -> Json<Value> {
    let view = s.chain.state().view();
    let list: Vec<Value> = scan_table(view.map(), st::table::PROVIDER)
        .filter_map(|(k, v)| {
            let address = Address(commonware_codec::DecodeExt::decode(commonware_codec::Copying(&k[1..])).ok()?);
            let p: st::Provider = st::decode_record(k, v);
            let bonded = view.map().get(&st::keys::stake(&address)).map(|b| st::decode_record::<Stake>(k, b).bonded).unwrap_or(0);
            Some(provider_json(&address, &p.info, p.registered_height, bonded))
        })
        .collect();
    Json(json!({"providers": list}))
}

async fn provider<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
    Path(address): Path<String>,
) -> ApiResult<Json<Value>> {
    let address: Address = parse("address", &address)?;
    let found = s.chain.read(|store| {
        store.read::<st::Provider>(&st::keys::provider(&address)).map(|p| (p, store.stake(&address).bonded))
    });
    let (p, bonded) = found.ok_or_else(|| ApiError::not_found(format!("provider {address}")))?;
    Ok(Json(provider_json(&address, &p.info, p.registered_height, bonded)))
}

fn model_json(m: &ModelManifest) -> Value {
    json!({"id": m.id(), "manifest": m})
}

async fn models<E: Storage + Clock + Metrics + Spawner>(State(s): State<Arc<ApiState<E>>>) -> Json<Value> {
    let view = s.chain.state().view();
    let list: Vec<Value> = scan_table(view.map(), st::table::MODEL)
        .map(|(k, v)| model_json(&st::decode_record::<ModelManifest>(k, v)))
        .collect();
    Json(json!({"models": list}))
}

async fn model<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: Hash = parse("model id", &id)?;
    let m = s.chain.read(|store| store.read::<ModelManifest>(&st::keys::model(&id)));
    Ok(Json(model_json(&m.ok_or_else(|| ApiError::not_found(format!("model {id}")))?)))
}

fn session_json(id: &Hash, s: &Session) -> Value {
    json!({
        "id": id,
        "client": s.client,
        "provider": s.provider,
        "model": s.model,
        "deposit": s.deposit,
        "price": s.price,
        "max_input_per_1k": s.max_input_per_1k,
        "max_output_per_1k": s.max_output_per_1k,
        "opened_height": s.opened_height,
        "expiry_height": s.expiry_height,
        "settled_seq": s.settled_seq,
        "settled_input_tokens": s.settled_input_tokens,
        "settled_output_tokens": s.settled_output_tokens,
        "settled_amount": s.settled_amount,
        "remaining": s.remaining(),
        "refunded": s.refunded,
        "status": match s.status { SessionStatus::Open => "open", SessionStatus::Closed => "closed" },
    })
}

#[derive(Deserialize)]
struct SessionFilter {
    client: Option<String>,
    provider: Option<String>,
}

/// Most sessions listed at once.
const SESSIONS_LIST_MAX: usize = 1_000;

async fn sessions<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
    Query(filter): Query<SessionFilter>,
) -> ApiResult<Json<Value>> {
    let client: Option<Address> = filter.client.as_deref().map(|c| parse("client", c)).transpose()?;
    let provider: Option<Address> = filter.provider.as_deref().map(|p| parse("provider", p)).transpose()?;
    let view = s.chain.state().view();
    let list: Vec<Value> = scan_table(view.map(), st::table::SESSION)
        .map(|(k, v)| (Hash::from_bytes(k[1..33].try_into().expect("session keys hold a hash")), st::decode_record::<Session>(k, v)))
        .filter(|(_, sess)| client.as_ref().is_none_or(|c| &sess.client == c))
        .filter(|(_, sess)| provider.as_ref().is_none_or(|p| &sess.provider == p))
        .take(SESSIONS_LIST_MAX)
        .map(|(id, sess)| session_json(&id, &sess))
        .collect();
    Ok(Json(json!({"sessions": list})))
}

async fn session<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: Hash = parse("session id", &id)?;
    let found = s.chain.read(|store| store.read::<Session>(&st::keys::session(&id)));
    Ok(Json(session_json(&id, &found.ok_or_else(|| ApiError::not_found(format!("session {id}")))?)))
}

/// `GET /chain/v1/stream`: every finalized block with its transaction results and events, as
/// server-sent events (`event: block`). A slow reader that falls behind gets `event: lagged`
/// with the number of blocks it missed, and can fetch them by height.
async fn stream<E: Storage + Clock + Metrics + Spawner>(
    State(s): State<Arc<ApiState<E>>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let mut rx = s.chain.subscribe();
    let stream = async_stream::stream! {
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
    Sse::new(stream).keep_alive(KeepAlive::default())
}
