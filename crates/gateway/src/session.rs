//! The client's side of its payment channels: one on-chain session per (provider, model),
//! opened on first use, topped up before it runs dry, replaced before it expires, and closed
//! when the gateway stops. Every delivered token is acknowledged with a cumulative receipt
//! signed here; the latest receipt of each session is also kept in an outbox and re-sent until
//! the provider has it, so a provider that was down is still paid for what it delivered.
//!
//! The table of sessions is saved to `sessions.json` in the gateway's home (atomically, a
//! moment after each change) so a restarted gateway continues every session's sequence.
//!
//! Spending is bounded: every deposit and top-up counts against the budget the user set
//! (`--budget`), kept with the table, and nothing is locked in escrow beyond it.
//!
//! Requests never wait on the chain once a session is open: the chain's height is followed in
//! the background ([`Sessions::follow_chain`]), so a chain API that is briefly unreachable
//! does not fail inference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plexus_types::receipt::{SessionAuth, extend_outputs_root};
use plexus_types::tx::{ModelPrice, Payload};
use plexus_types::{Address, Amount, Hash, Height, ModelId, PrivateKey, Receipt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::chain::ChainClient;
use crate::directory::Candidate;
use crate::{GatewayConfig, GatewayError};

/// Blocks before expiry at which a session stops being used and a new one is opened.
const EXPIRY_MARGIN_BLOCKS: Height = 50;

/// One session's state. Amounts and counts are cumulative over the session's life.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionState {
    pub id: Hash,
    pub provider: Address,
    pub endpoint: String,
    pub model: ModelId,
    pub price: ModelPrice,
    pub deposit: Amount,
    pub expiry_height: Height,
    pub seq: u64,
    pub cum_input_tokens: u64,
    pub cum_output_tokens: u64,
    pub cum_amount: Amount,
    pub outputs_root: Hash,
    /// Hex of the latest signed receipt.
    pub latest: Option<String>,
    /// Whether the provider confirmed it has `latest`.
    pub delivered: bool,
    pub auth_nonce: u64,
    #[serde(skip)]
    pub token: Option<String>,
    #[serde(skip)]
    pub topping_up: bool,
    /// Set once the gateway stopped using it (expiring or closed).
    #[serde(default)]
    pub retired: bool,
}

impl SessionState {
    /// A session just opened on-chain: nothing delivered, nothing acknowledged yet.
    pub fn opened(
        id: Hash,
        provider: Address,
        endpoint: String,
        price: ModelPrice,
        deposit: Amount,
        expiry_height: Height,
    ) -> Self {
        SessionState {
            id,
            provider,
            endpoint,
            model: price.model,
            price,
            deposit,
            expiry_height,
            seq: 0,
            cum_input_tokens: 0,
            cum_output_tokens: 0,
            cum_amount: 0,
            outputs_root: Hash::ZERO,
            latest: None,
            delivered: true,
            auth_nonce: 0,
            token: None,
            topping_up: false,
            retired: false,
        }
    }

    /// Escrow not yet owed.
    pub fn remaining(&self) -> Amount {
        self.deposit.saturating_sub(self.cum_amount)
    }
}

/// A session shared by the requests using it.
pub type Shared = Arc<Mutex<SessionState>>;

#[derive(Serialize, Deserialize, Default)]
struct Saved {
    sessions: Vec<SessionState>,
    /// Put into escrow so far (deposits and top-ups), against the budget.
    #[serde(default)]
    committed: Amount,
}

pub struct Sessions {
    key: PrivateKey,
    chain: Arc<ChainClient>,
    chain_id: String,
    config: GatewayConfig,
    fee: Amount,
    http: crate::link::Links,
    /// Live sessions by provider and model.
    table: Mutex<BTreeMap<(Address, ModelId), Shared>>,
    /// Sessions no longer used for new work but maybe still owed a receipt delivery.
    retired: Mutex<Vec<Shared>>,
    /// Serializes every transaction (one nonce sequence), holding the next nonce.
    tx_lock: tokio::sync::Mutex<Option<u64>>,
    /// Serializes opening sessions, so concurrent first requests open one, not several.
    open_lock: tokio::sync::Mutex<()>,
    path: PathBuf,
    dirty: Mutex<bool>,
    /// Escrow committed so far, deposits and top-ups.
    committed: Mutex<Amount>,
    /// The chain's height as last seen (0: never).
    height: std::sync::atomic::AtomicU64,
    /// What receipts signed since this process started promise providers, in base units.
    promised: Mutex<Amount>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Sessions {
    pub fn new(
        key: PrivateKey,
        chain: Arc<ChainClient>,
        chain_id: String,
        fee: Amount,
        config: GatewayConfig,
    ) -> Result<Self, GatewayError> {
        let path = config.home.join("sessions.json");
        let saved: Saved = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| GatewayError::Config(format!("{} is corrupt: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(GatewayError::Config(format!("cannot read {}: {e}", path.display()))),
        };
        let committed = saved.committed;
        let mut table = BTreeMap::new();
        let mut retired = Vec::new();
        for s in saved.sessions {
            let shared = Arc::new(Mutex::new(s.clone()));
            if s.retired {
                retired.push(shared);
            } else {
                table.insert((s.provider.clone(), s.model), shared);
            }
        }
        let http = crate::link::Links::new(
            |b| b.timeout(Duration::from_secs(10)).connect_timeout(Duration::from_secs(2)),
            config.plain_http_providers,
        )
        .map_err(GatewayError::Config)?;
        Ok(Sessions {
            key,
            chain,
            chain_id,
            config,
            fee,
            http,
            table: Mutex::new(table),
            retired: Mutex::new(retired),
            tx_lock: tokio::sync::Mutex::new(None),
            open_lock: tokio::sync::Mutex::new(()),
            path,
            dirty: Mutex::new(false),
            committed: Mutex::new(committed),
            height: std::sync::atomic::AtomicU64::new(0),
            promised: Mutex::new(0),
        })
    }

    /// Keeps the chain's height current, forever (run it in the background).
    pub async fn follow_chain(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            match self.chain.height().await {
                Ok(h) => self.height.store(h, std::sync::atomic::Ordering::Relaxed),
                Err(e) => tracing::debug!(target: "gateway::sessions", "chain height unavailable: {e}"),
            }
        }
    }

    /// The chain's height as last seen; asks the chain only if it never answered yet.
    async fn height(&self) -> Result<Height, GatewayError> {
        match self.height.load(std::sync::atomic::Ordering::Relaxed) {
            0 => {
                let h = self.chain.height().await?;
                self.height.store(h, std::sync::atomic::Ordering::Relaxed);
                Ok(h)
            }
            h => Ok(h),
        }
    }

    /// Reserves `amount` of the budget for a deposit or top-up, or says why not.
    fn spend(&self, amount: Amount) -> Result<(), GatewayError> {
        let mut committed = self.committed.lock().expect("budget lock");
        let after = committed.saturating_add(amount);
        if after > self.config.budget {
            return Err(GatewayError::Funds(format!(
                "the gateway's budget is used up: {} of {} committed to sessions, {amount} more needed (raise --budget)",
                *committed, self.config.budget
            )));
        }
        *committed = after;
        drop(committed);
        self.mark_dirty();
        Ok(())
    }

    /// Gives back budget reserved for a deposit or top-up that did not happen.
    fn unspend(&self, amount: Amount) {
        let mut committed = self.committed.lock().expect("budget lock");
        *committed = committed.saturating_sub(amount);
        drop(committed);
        self.mark_dirty();
    }

    /// The budget and how much of it is committed, for the status route.
    pub fn budget_view(&self) -> serde_json::Value {
        let committed = *self.committed.lock().expect("budget lock");
        serde_json::json!({ "budget": self.config.budget.to_string(), "committed": committed.to_string() })
    }

    pub fn client(&self) -> Address {
        self.key.address()
    }

    /// The chain this gateway's sessions are on.
    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// Every session the gateway knows, live and retired.
    /// Base units promised by receipts signed since start, and escrow committed (deposits and
    /// top-ups, kept across restarts).
    pub fn spending(&self) -> (Amount, Amount) {
        (*self.promised.lock().expect("spend lock"), *self.committed.lock().expect("budget lock"))
    }

    pub fn all(&self) -> Vec<SessionState> {
        let live: Vec<Shared> = self.table.lock().expect("table lock").values().cloned().collect();
        let retired: Vec<Shared> = self.retired.lock().expect("retired lock").clone();
        live.iter().chain(retired.iter()).map(|s| s.lock().expect("session lock").clone()).collect()
    }

    fn mark_dirty(&self) {
        *self.dirty.lock().expect("dirty lock") = true;
    }

    /// Writes the session table if it changed (atomically: temporary file, then rename).
    pub fn save(&self) -> Result<(), GatewayError> {
        {
            let mut dirty = self.dirty.lock().expect("dirty lock");
            if !*dirty {
                return Ok(());
            }
            *dirty = false;
        }
        let saved = Saved { sessions: self.all(), committed: *self.committed.lock().expect("budget lock") };
        let text = serde_json::to_string_pretty(&saved).map_err(|e| GatewayError::Internal(e.to_string()))?;
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| GatewayError::Internal(format!("cannot save {}: {e}", self.path.display())))
    }

    /// Sends a transaction from the client account with the next nonce.
    pub async fn send_tx(&self, payload: Payload) -> Result<(Hash, u64), GatewayError> {
        let mut next = self.tx_lock.lock().await;
        for attempt in 0..2 {
            let nonce = match *next {
                Some(n) if attempt == 0 => n,
                _ => self.chain.next_nonce(&self.key.address()).await?,
            };
            match self.chain.submit(&self.key, &self.chain_id, nonce, self.fee, payload.clone()).await {
                Ok(hash) => {
                    *next = Some(nonce + 1);
                    return Ok((hash, nonce));
                }
                // Our idea of the nonce is stale (another process used the key): ask again.
                Err(GatewayError::Rejected { code, .. })
                    if (code == "wrong_nonce" || code == "replacement_underpriced") && attempt == 0 =>
                {
                    *next = None
                }
                Err(GatewayError::Rejected { code, message, .. }) if code == "insufficient_balance" => {
                    return Err(GatewayError::Funds(format!(
                        "the gateway's account {} cannot pay: {message}",
                        self.key.address()
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        Err(GatewayError::Chain("could not find the account's nonce".into()))
    }

    /// The session to use for `c`, opening one (and authenticating with the provider) when
    /// there is none or it is about to expire.
    pub async fn for_candidate(&self, c: &Candidate) -> Result<Shared, GatewayError> {
        let key = (c.provider.clone(), c.model);
        let height = self.height().await?;
        if let Some(s) = self.usable(&key, height) {
            self.follow_endpoint(&s, &c.endpoint);
            self.ensure_token(&s).await?;
            return Ok(s);
        }
        // One opening at a time; another request may have opened it meanwhile.
        let _opening = self.open_lock.lock().await;
        if let Some(s) = self.usable(&key, height) {
            self.follow_endpoint(&s, &c.endpoint);
            self.ensure_token(&s).await?;
            return Ok(s);
        }
        let s = self.open(c, height).await?;
        self.ensure_token(&s).await?;
        Ok(s)
    }

    /// A provider that registered a new endpoint (it moved, or turned TLS on) is reached there
    /// from now on, with a new token: the endpoint comes from its own signed registration.
    fn follow_endpoint(&self, s: &Shared, endpoint: &str) {
        let mut st = s.lock().expect("session lock");
        if st.endpoint != endpoint {
            info!(target: "gateway::sessions", provider = %st.provider, from = %st.endpoint, to = %endpoint, "the provider moved");
            st.endpoint = endpoint.to_owned();
            st.token = None;
            st.delivered = false;
            drop(st);
            self.mark_dirty();
        }
    }

    fn usable(&self, key: &(Address, ModelId), height: Height) -> Option<Shared> {
        let mut table = self.table.lock().expect("table lock");
        let s = table.get(key)?.clone();
        let expired = s.lock().expect("session lock").expiry_height <= height + EXPIRY_MARGIN_BLOCKS;
        if expired {
            table.remove(key);
            s.lock().expect("session lock").retired = true;
            self.retired.lock().expect("retired lock").push(s);
            self.mark_dirty();
            return None;
        }
        Some(s)
    }

    async fn open(&self, c: &Candidate, height: Height) -> Result<Shared, GatewayError> {
        let params = self.chain.params().await?;
        let blocks = self.config.session_blocks.min(params.max_session_blocks);
        let deposit = self.config.deposit.max(params.min_session_deposit);
        self.spend(deposit)?;
        let opened = self.open_with(c, height, deposit, blocks).await;
        if opened.is_err() {
            self.unspend(deposit);
        }
        opened
    }

    async fn open_with(
        &self,
        c: &Candidate,
        height: Height,
        deposit: Amount,
        blocks: u64,
    ) -> Result<Shared, GatewayError> {
        let max_input_per_1k = self.config.constraints.max_input_per_1k.unwrap_or(c.price.input_per_1k);
        let max_output_per_1k = self.config.constraints.max_output_per_1k.unwrap_or(c.price.output_per_1k);
        // Data residency: the gateway's regions go on chain with the session.
        let payload = Payload::open_session(
            c.provider.clone(),
            c.model,
            deposit,
            max_input_per_1k,
            max_output_per_1k,
            height + blocks,
            self.config.constraints.regions.clone(),
        );
        let (hash, nonce) = self.send_tx(payload).await?;
        self.chain.wait_tx(&hash, Duration::from_secs(30)).await?;
        let id = plexus_types::session::session_id(&self.key.address(), nonce);
        let record = self
            .chain
            .session(&id)
            .await?
            .ok_or_else(|| GatewayError::Chain(format!("session {id} not found after opening")))?;
        info!(target: "gateway::sessions", session = %id, provider = %c.provider, model = %c.model_name, deposit, "opened a session");
        let state = SessionState::opened(
            id,
            c.provider.clone(),
            c.endpoint.clone(),
            record.price,
            record.deposit,
            record.expiry_height,
        );
        let shared = Arc::new(Mutex::new(state));
        self.table.lock().expect("table lock").insert((c.provider.clone(), c.model), shared.clone());
        self.mark_dirty();
        Ok(shared)
    }

    /// Gets a bearer token from the provider if the session has none (first use, or after
    /// either side restarted).
    pub async fn ensure_token(&self, s: &Shared) -> Result<(), GatewayError> {
        let (id, provider, endpoint, nonce) = {
            let st = s.lock().expect("session lock");
            if st.token.is_some() {
                return Ok(());
            }
            (st.id, st.provider.clone(), st.endpoint.clone(), st.auth_nonce.max(now_ms().saturating_sub(1)) + 1)
        };
        let signature = SessionAuth { session: id, provider: provider.clone(), nonce }.sign(&self.key, &self.chain_id);
        let url = format!("{endpoint}/plexus/v1/sessions/{id}/token");
        let link = self.http.to(&provider, &endpoint).map_err(GatewayError::Upstream)?;
        let response = link
            .post(&url)
            .json(&serde_json::json!({ "nonce": nonce, "signature": signature.to_string() }))
            .send()
            .await
            .map_err(|e| GatewayError::Upstream(format!("{url}: {}", crate::link::why(&e))))?;
        let status = response.status();
        let body: serde_json::Value =
            response.json().await.map_err(|e| GatewayError::Upstream(format!("{url}: {e}")))?;
        if !status.is_success() {
            return Err(GatewayError::Upstream(format!("{url}: HTTP {status}: {}", body["error"]["message"])));
        }
        let token =
            body["token"].as_str().ok_or_else(|| GatewayError::Upstream(format!("{url}: no token")))?.to_string();
        let mut st = s.lock().expect("session lock");
        st.auth_nonce = nonce;
        st.token = Some(token);
        drop(st);
        self.mark_dirty();
        Ok(())
    }

    /// Acknowledges `input`/`output` more tokens (and, when the response finished, its
    /// attestation) with a new cumulative receipt. Returns it, hex-encoded.
    pub fn acknowledge(&self, s: &Shared, input: u64, output: u64, attestation: Option<Hash>) -> Option<String> {
        let mut st = s.lock().expect("session lock");
        if input == 0 && output == 0 && attestation.is_none() {
            return None;
        }
        st.cum_input_tokens += input;
        st.cum_output_tokens += output;
        if let Some(a) = attestation {
            st.outputs_root = extend_outputs_root(&st.outputs_root, &a);
        }
        let owed = plexus_types::session::price_of(&st.price, st.cum_input_tokens, st.cum_output_tokens)
            .unwrap_or(Amount::MAX);
        // Never more than the escrow: a receipt above it could not be settled anyway.
        let before = st.cum_amount;
        st.cum_amount = owed.min(st.deposit).max(st.cum_amount);
        {
            let mut promised = self.promised.lock().expect("spend lock");
            *promised = promised.saturating_add(st.cum_amount - before);
        }
        st.seq += 1;
        let receipt = Receipt {
            session: st.id,
            seq: st.seq,
            cum_input_tokens: st.cum_input_tokens,
            cum_output_tokens: st.cum_output_tokens,
            cum_amount: st.cum_amount,
            outputs_root: st.outputs_root,
        }
        .sign(&self.key, &self.chain_id);
        let hex = receipt.to_hex();
        st.latest = Some(hex.clone());
        st.delivered = false;
        drop(st);
        self.mark_dirty();
        Some(hex)
    }

    /// Sends the session's latest receipt to its provider; true when the provider has it.
    pub async fn deliver(&self, s: &Shared) -> bool {
        let (provider, endpoint, latest, seq) = {
            let st = s.lock().expect("session lock");
            let Some(latest) = st.latest.clone() else { return true };
            if st.delivered {
                return true;
            }
            (st.provider.clone(), st.endpoint.clone(), latest, st.seq)
        };
        let url = format!("{endpoint}/plexus/v1/receipts");
        let link = match self.http.to(&provider, &endpoint) {
            Ok(link) => link,
            Err(e) => {
                warn!(target: "gateway::receipts", %url, "cannot reach the provider: {e}");
                return false;
            }
        };
        let ok = match link.post(&url).json(&serde_json::json!({ "receipt": latest })).send().await {
            Ok(r) if r.status().is_success() => true,
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                warn!(target: "gateway::receipts", %url, %status, "receipt refused: {body}");
                // A refused receipt will not be accepted later either; a newer one replaces it.
                status.is_client_error()
            }
            Err(_) => false,
        };
        if ok {
            let mut st = s.lock().expect("session lock");
            if st.seq == seq {
                st.delivered = true;
            }
            drop(st);
            self.mark_dirty();
        }
        ok
    }

    /// Re-sends every undelivered receipt (sessions whose provider was unreachable).
    pub async fn deliver_outbox(&self) {
        let pending: Vec<Shared> = {
            let live: Vec<Shared> = self.table.lock().expect("table lock").values().cloned().collect();
            let retired = self.retired.lock().expect("retired lock").clone();
            live.into_iter().chain(retired).filter(|s| !s.lock().expect("session lock").delivered).collect()
        };
        for s in pending {
            self.deliver(&s).await;
        }
    }

    /// Tops the session up (in the background) once less than a quarter of its deposit is
    /// left, so requests never wait on the chain for it.
    pub fn maybe_top_up(self: &Arc<Self>, s: &Shared) {
        let (id, amount) = {
            let mut st = s.lock().expect("session lock");
            if st.topping_up || st.remaining() * 4 >= st.deposit {
                return;
            }
            st.topping_up = true;
            (st.id, self.config.deposit)
        };
        if let Err(e) = self.spend(amount) {
            warn!(target: "gateway::sessions", session = %id, "not topping up: {e}");
            s.lock().expect("session lock").topping_up = false;
            return;
        }
        let me = self.clone();
        let s = s.clone();
        tokio::spawn(async move {
            let result = async {
                let (hash, _) = me.send_tx(Payload::TopUpSession { session: id, amount }).await?;
                me.chain.wait_tx(&hash, Duration::from_secs(30)).await
            }
            .await;
            let mut st = s.lock().expect("session lock");
            st.topping_up = false;
            match result {
                Ok(()) => {
                    st.deposit += amount;
                    info!(target: "gateway::sessions", session = %id, amount, deposit = st.deposit, "topped up");
                }
                Err(e) => {
                    me.unspend(amount);
                    warn!(target: "gateway::sessions", session = %id, "top-up failed: {e}")
                }
            }
            drop(st);
            me.mark_dirty();
        });
    }

    /// Forgets the bearer token (the provider no longer knows it, e.g. it restarted).
    pub fn drop_token(&self, s: &Shared) {
        s.lock().expect("session lock").token = None;
    }

    /// Closes every live session on-chain (the gateway is stopping): providers settle what
    /// they delivered and the rest of the escrow comes back.
    pub async fn close_all(&self) {
        self.deliver_outbox().await;
        let live: Vec<(Address, ModelId)> = self.table.lock().expect("table lock").keys().cloned().collect();
        for key in live {
            let Some(s) = self.table.lock().expect("table lock").remove(&key) else { continue };
            let id = s.lock().expect("session lock").id;
            match self.send_tx(Payload::CloseSession { session: id }).await {
                Ok((hash, _)) => info!(target: "gateway::sessions", session = %id, %hash, "closing the session"),
                Err(e) => warn!(target: "gateway::sessions", session = %id, "cannot close the session: {e}"),
            }
            s.lock().expect("session lock").retired = true;
            self.retired.lock().expect("retired lock").push(s);
            self.mark_dirty();
        }
        if let Err(e) = self.save() {
            warn!(target: "gateway::sessions", "{e}");
        }
    }

    /// Forgets retired sessions that are settled or closed on-chain and have nothing to deliver.
    pub async fn prune(&self) {
        let retired = self.retired.lock().expect("retired lock").clone();
        for s in retired {
            let (id, delivered) = {
                let st = s.lock().expect("session lock");
                (st.id, st.delivered)
            };
            if !delivered {
                continue;
            }
            if let Ok(Some(record)) = self.chain.session(&id).await
                && record.status == "closed"
            {
                self.retired.lock().expect("retired lock").retain(|x| !Arc::ptr_eq(x, &s));
                self.mark_dirty();
            }
        }
    }
}

/// Where the gateway keeps its state by default.
pub fn default_home() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    Path::new(&home).join(".plexus").join("gateway")
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_types::SignedReceipt;

    fn state() -> SessionState {
        let price = ModelPrice { model: plexus_types::hash(b"m"), input_per_1k: 50, output_per_1k: 200 };
        let provider = PrivateKey::from_seed(2).address();
        SessionState::opened(plexus_types::hash(b"s"), provider, "http://127.0.0.1:1".into(), price, 1_000, 100)
    }

    #[test]
    fn receipts_are_cumulative_signed_and_capped_by_escrow() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::from_seed(1);
        let config = GatewayConfig { home: dir.path().to_path_buf(), ..GatewayConfig::default() };
        let chain = Arc::new(ChainClient::new(vec!["http://127.0.0.1:1".into()]).unwrap());
        let sessions = Sessions::new(key.clone(), chain, "c".into(), 1000, config).unwrap();
        let s: Shared = Arc::new(Mutex::new(state()));
        assert_eq!(sessions.acknowledge(&s, 0, 0, None), None, "nothing new, nothing signed");
        let r1 = SignedReceipt::from_hex(&sessions.acknowledge(&s, 1000, 500, None).unwrap()).unwrap();
        assert!(r1.verify(&key.address(), "c"));
        // 1000 in at 50/1k + 500 out at 200/1k = 50 + 100.
        assert_eq!((r1.receipt.seq, r1.receipt.cum_amount), (1, 150));
        let att = plexus_types::hash(b"attestation");
        let r2 = SignedReceipt::from_hex(&sessions.acknowledge(&s, 10, 3, Some(att)).unwrap()).unwrap();
        assert_eq!((r2.receipt.seq, r2.receipt.cum_input_tokens, r2.receipt.cum_output_tokens), (2, 1010, 503));
        assert_eq!(r2.receipt.cum_amount, plexus_types::session::price_of(&state().price, 1010, 503).unwrap());
        assert_eq!(r2.receipt.outputs_root, extend_outputs_root(&Hash::ZERO, &att));
        // Far more work than the escrow covers: the receipt stops at the deposit.
        let r3 = SignedReceipt::from_hex(&sessions.acknowledge(&s, 0, 1_000_000, None).unwrap()).unwrap();
        assert_eq!(r3.receipt.cum_amount, 1_000);
        assert!(!s.lock().unwrap().delivered);
    }

    #[test]
    fn the_session_table_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::from_seed(1);
        let config = GatewayConfig { home: dir.path().to_path_buf(), ..GatewayConfig::default() };
        let chain = Arc::new(ChainClient::new(vec!["http://127.0.0.1:1".into()]).unwrap());
        let sessions = Sessions::new(key.clone(), chain.clone(), "c".into(), 1000, config.clone()).unwrap();
        let st = state();
        let s: Shared = Arc::new(Mutex::new(st.clone()));
        sessions.table.lock().unwrap().insert((st.provider.clone(), st.model), s.clone());
        sessions.acknowledge(&s, 100, 100, None);
        sessions.save().unwrap();
        let again = Sessions::new(key, chain, "c".into(), 1000, config).unwrap();
        let all = again.all();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].seq, all[0].cum_input_tokens, all[0].cum_output_tokens), (1, 100, 100));
        assert!(all[0].token.is_none(), "tokens are not persisted");
    }
}
