//! A client of the chain REST API: what the gateway reads (providers, models, sessions,
//! accounts) and the transactions it sends (open, top up and close sessions). Several node URLs
//! may be given; a request goes to the first that answers.

use std::time::Duration;

use plexus_types::tx::{ModelPrice, Payload, Transaction};
use plexus_types::version::SupportedVersions;
use plexus_types::{Address, Amount, Hash, Height, ModelId, ModelManifest, PrivateKey};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::GatewayError;

/// A provider as listed by `GET /chain/v1/providers`.
#[derive(Clone, Debug, Deserialize)]
pub struct ProviderRecord {
    pub address: Address,
    pub endpoint: String,
    pub region: String,
    pub hardware: String,
    pub prices: Vec<ModelPrice>,
    pub versions: SupportedVersions,
    pub bonded: Amount,
    /// What the chain's committees established about it (absent before execution v3).
    #[serde(default)]
    pub stats: ProviderStats,
}

/// A provider's verified record: challenges its committees convicted or acquitted it of.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ProviderStats {
    #[serde(default)]
    pub convicted: u64,
    #[serde(default)]
    pub acquitted: u64,
    #[serde(default)]
    pub slashed: Amount,
}

#[derive(Deserialize)]
struct Providers {
    providers: Vec<ProviderRecord>,
    next: Option<String>,
}

/// Most pages of a listing the gateway reads in one refresh (100 entries each).
const LIST_PAGES_MAX: usize = 100;

/// A model as listed by `GET /chain/v1/models`.
#[derive(Clone, Debug, Deserialize)]
pub struct ModelRecord {
    pub id: ModelId,
    pub manifest: ModelManifest,
}

#[derive(Deserialize)]
struct Models {
    models: Vec<ModelRecord>,
    next: Option<String>,
}

/// A session as `GET /chain/v1/sessions/{id}` returns it.
#[derive(Clone, Debug, Deserialize)]
pub struct SessionRecord {
    pub id: Hash,
    pub client: Address,
    pub provider: Address,
    pub model: ModelId,
    pub deposit: Amount,
    pub price: ModelPrice,
    pub expiry_height: Height,
    pub settled_seq: u64,
    pub settled_amount: Amount,
    pub status: String,
}

#[derive(Deserialize)]
struct Account {
    nonce: u64,
    /// The nonce after the account's transactions waiting in the node's mempool.
    next_nonce: u64,
    balance: Amount,
}

#[derive(Deserialize)]
struct Status {
    chain_id: String,
    height: Height,
    versions: StatusVersions,
}

#[derive(Deserialize)]
struct StatusVersions {
    execution: u16,
}

#[derive(Deserialize)]
struct Submitted {
    hash: Hash,
}

/// The result of a finalized transaction, as much as the gateway reads.
#[derive(Deserialize)]
struct TxLookup {
    result: Option<TxOutcome>,
}

#[derive(Deserialize)]
struct TxOutcome {
    error: Option<String>,
}

#[derive(Deserialize)]
struct ApiError {
    error: ApiErrorBody,
}

#[derive(Deserialize)]
struct ApiErrorBody {
    code: String,
    message: String,
}

/// Chain parameters the gateway needs.
#[derive(Clone, Debug, Deserialize)]
pub struct ChainParams {
    pub min_tx_fee: Amount,
    pub min_session_deposit: Amount,
    pub max_session_blocks: u64,
    /// The least bond of a challenge (execution v3; absent before).
    #[serde(default)]
    pub challenge_bond_min: Option<Amount>,
}

pub struct ChainClient {
    /// Each node's base URL and the client that reaches it (pinned to its key over TLS).
    nodes: Vec<(String, reqwest::Client)>,
}

impl ChainClient {
    /// `nodes`: `http://host:port`, or `https://<node address>@host:port` for a node serving its
    /// API over TLS (only that node's key is accepted).
    pub fn new(nodes: Vec<String>) -> Result<Self, GatewayError> {
        if nodes.is_empty() {
            return Err(GatewayError::Config("at least one chain node URL is needed".into()));
        }
        let nodes = nodes
            .iter()
            .map(|url| {
                let (base, pin) = plexus_serve::tls::chain_url(url).map_err(GatewayError::Config)?;
                let mut builder =
                    reqwest::Client::builder().timeout(Duration::from_secs(10)).connect_timeout(Duration::from_secs(2));
                if let Some(node) = &pin {
                    builder =
                        builder.tls_backend_preconfigured((*plexus_serve::tls::pinned_client_config(node)).clone());
                }
                let http = builder.build().map_err(|e| GatewayError::Config(format!("HTTP client: {e}")))?;
                Ok((base, http))
            })
            .collect::<Result<_, GatewayError>>()?;
        Ok(ChainClient { nodes })
    }

    async fn send<T: DeserializeOwned>(&self, path: &str, body: Option<&serde_json::Value>) -> Result<T, GatewayError> {
        let mut last = String::new();
        for (node, http) in &self.nodes {
            let url = format!("{node}{path}");
            let request = match body {
                Some(b) => http.post(&url).json(b),
                None => http.get(&url),
            };
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{url}: {}", crate::link::why(&e));
                    continue;
                }
            };
            let status = response.status();
            let bytes = response.bytes().await.map_err(|e| GatewayError::Chain(format!("{url}: {e}")))?;
            if status.is_success() {
                return serde_json::from_slice(&bytes)
                    .map_err(|e| GatewayError::Chain(format!("{url}: unexpected answer: {e}")));
            }
            if let Ok(err) = serde_json::from_slice::<ApiError>(&bytes) {
                return Err(GatewayError::Rejected {
                    code: err.error.code,
                    message: err.error.message,
                    status: status.as_u16(),
                });
            }
            return Err(GatewayError::Chain(format!("{url}: HTTP {status}")));
        }
        Err(GatewayError::Chain(format!("no chain node answered (last: {last})")))
    }

    pub async fn chain_id_and_height(&self) -> Result<(String, Height), GatewayError> {
        let s: Status = self.send("/chain/v1/status", None).await?;
        Ok((s.chain_id, s.height))
    }

    /// The execution version the chain runs now.
    pub async fn execution_version(&self) -> Result<u16, GatewayError> {
        let s: Status = self.send("/chain/v1/status", None).await?;
        Ok(s.versions.execution)
    }

    pub async fn height(&self) -> Result<Height, GatewayError> {
        Ok(self.chain_id_and_height().await?.1)
    }

    pub async fn params(&self) -> Result<ChainParams, GatewayError> {
        self.send("/chain/v1/params", None).await
    }

    /// Every registered provider, following the listing's pages.
    pub async fn providers(&self) -> Result<Vec<ProviderRecord>, GatewayError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..LIST_PAGES_MAX {
            let path = match &after {
                Some(a) => format!("/chain/v1/providers?after={a}"),
                None => "/chain/v1/providers".to_string(),
            };
            let page: Providers = self.send(&path, None).await?;
            all.extend(page.providers);
            after = page.next;
            if after.is_none() {
                break;
            }
        }
        Ok(all)
    }

    /// Every registered model, following the listing's pages.
    pub async fn models(&self) -> Result<Vec<ModelRecord>, GatewayError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..LIST_PAGES_MAX {
            let path = match &after {
                Some(a) => format!("/chain/v1/models?after={a}"),
                None => "/chain/v1/models".to_string(),
            };
            let page: Models = self.send(&path, None).await?;
            all.extend(page.models);
            after = page.next;
            if after.is_none() {
                break;
            }
        }
        Ok(all)
    }

    pub async fn session(&self, id: &Hash) -> Result<Option<SessionRecord>, GatewayError> {
        match self.send(&format!("/chain/v1/sessions/{id}"), None).await {
            Ok(s) => Ok(Some(s)),
            Err(GatewayError::Rejected { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Nonce and balance of an account.
    pub async fn account(&self, address: &Address) -> Result<(u64, Amount), GatewayError> {
        let a: Account = self.send(&format!("/chain/v1/accounts/{address}"), None).await?;
        Ok((a.nonce, a.balance))
    }

    /// The nonce a new transaction from `address` should use: after its pending ones (another
    /// process with the same key, e.g. a gateway that stopped a moment ago, may have some).
    pub async fn next_nonce(&self, address: &Address) -> Result<u64, GatewayError> {
        let a: Account = self.send(&format!("/chain/v1/accounts/{address}"), None).await?;
        Ok(a.next_nonce.max(a.nonce))
    }

    /// Signs and submits a transaction; returns its hash once accepted into a mempool.
    pub async fn submit(
        &self,
        key: &PrivateKey,
        chain_id: &str,
        nonce: u64,
        fee: Amount,
        payload: Payload,
    ) -> Result<Hash, GatewayError> {
        let tx = Transaction { signer: key.address(), nonce, fee, payload }.sign(key, chain_id);
        let body = serde_json::json!({ "tx": hex::encode(plexus_types::codec::to_vec(&tx)) });
        let s: Submitted = self.send("/chain/v1/txs", Some(&body)).await?;
        Ok(s.hash)
    }

    /// Waits until `hash` is finalized; `Err` if its payload failed or it never lands.
    pub async fn wait_tx(&self, hash: &Hash, limit: Duration) -> Result<(), GatewayError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.send::<TxLookup>(&format!("/chain/v1/txs/{hash}"), None).await {
                Ok(found) => {
                    return match found.result.and_then(|r| r.error) {
                        None => Ok(()),
                        Some(error) => {
                            Err(GatewayError::Rejected { code: "tx_failed".into(), message: error, status: 400 })
                        }
                    };
                }
                Err(GatewayError::Rejected { status: 404, .. }) => {}
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() > deadline {
                return Err(GatewayError::Chain(format!("transaction {hash} was not finalized within {limit:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
