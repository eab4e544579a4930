//! The genesis file: the chain id, initial balances, initial validators and parameters. Every
//! node of a network must start from byte-identical genesis; its hash is logged at start.

use serde::{Deserialize, Serialize};

use crate::Amount;
use crate::crypto::{Address, Hash, hash};
use crate::params::{Params, limits};
use crate::version::VersionVector;

/// An initial account balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisAccount {
    pub address: Address,
    pub balance: Amount,
}

/// An initial validator: its stake is locked at genesis (and counted in the supply).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisValidator {
    pub address: Address,
    pub stake: Amount,
    /// Where its node listens for peers, `host:port`.
    pub p2p_address: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    pub chain_id: String,
    pub accounts: Vec<GenesisAccount>,
    pub validators: Vec<GenesisValidator>,
    /// Parameters that later execution versions introduced are written only when they differ
    /// from their defaults, so an older genesis file keeps its bytes, and its hash.
    #[serde(default, serialize_with = "params_compat")]
    pub params: Params,
    /// The version of each layer the chain starts at (a new network may start at the latest
    /// execution version; omitted, every layer starts at 1).
    #[serde(default = "VersionVector::v1", skip_serializing_if = "VersionVector::is_v1")]
    pub versions: VersionVector,
}

fn params_compat<S: serde::Serializer>(params: &Params, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let defaults = Params::default();
    let mut map = s.serialize_map(None)?;
    for (name, _) in Params::NAMES {
        let value = params.get(name).unwrap_or_default();
        if crate::params::SINCE_V3.contains(name) && Some(value) == defaults.get(name) {
            continue;
        }
        map.serialize_entry(name, &value)?;
    }
    map.end()
}

/// A genesis file that cannot start a chain.
#[derive(Debug, thiserror::Error)]
pub enum GenesisError {
    #[error("genesis is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid genesis: {0}")]
    Invalid(String),
}

impl Genesis {
    pub fn from_json(text: &str) -> Result<Genesis, GenesisError> {
        let genesis: Genesis = serde_json::from_str(text)?;
        genesis.validate()?;
        Ok(genesis)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("genesis serializes")
    }

    /// SHA-256 of the canonical JSON, to compare genesis files across nodes.
    pub fn hash(&self) -> Hash {
        hash(serde_json::to_string(self).expect("genesis serializes").as_bytes())
    }

    /// Total supply at genesis: balances plus stakes.
    pub fn total_supply(&self) -> Option<Amount> {
        let mut total: Amount = 0;
        for a in &self.accounts {
            total = total.checked_add(a.balance)?;
        }
        for v in &self.validators {
            total = total.checked_add(v.stake)?;
        }
        Some(total)
    }

    pub fn validate(&self) -> Result<(), GenesisError> {
        let bad = |m: String| Err(GenesisError::Invalid(m));
        if self.chain_id.is_empty() || self.chain_id.len() > limits::CHAIN_ID_BYTES_MAX {
            return bad(format!("chain_id must be 1..={} bytes", limits::CHAIN_ID_BYTES_MAX));
        }
        self.params.validate().map_err(|e| GenesisError::Invalid(e.to_string()))?;
        if self.validators.is_empty() {
            return bad("at least one validator is required".into());
        }
        if self.validators.len() as u128 > self.params.max_validators {
            return bad(format!(
                "{} validators exceed max_validators = {}",
                self.validators.len(),
                self.params.max_validators
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for v in &self.validators {
            if !seen.insert(v.address.clone()) {
                return bad(format!("validator {} is listed twice", v.address));
            }
            if v.stake < self.params.min_stake {
                return bad(format!(
                    "validator {} stakes {} < min_stake {}",
                    v.address, v.stake, self.params.min_stake
                ));
            }
            if v.p2p_address.parse::<std::net::SocketAddr>().is_err() {
                return bad(format!("validator {} p2p_address {:?} is not ip:port", v.address, v.p2p_address));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for a in &self.accounts {
            if !seen.insert(a.address.clone()) {
                return bad(format!("account {} is listed twice", a.address));
            }
        }
        if self.total_supply().is_none() {
            return bad("total supply overflows u128".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::PrivateKey;

    fn sample() -> Genesis {
        Genesis {
            chain_id: "plexus-test".into(),
            accounts: vec![GenesisAccount { address: PrivateKey::from_seed(1).address(), balance: 10 }],
            validators: vec![GenesisValidator {
                address: PrivateKey::from_seed(2).address(),
                stake: Params::default().min_stake,
                p2p_address: "127.0.0.1:9000".into(),
            }],
            params: Params::default(),
            versions: VersionVector::V1,
        }
    }

    #[test]
    fn json_roundtrip_and_validation() {
        let g = sample();
        let back = Genesis::from_json(&g.to_json()).unwrap();
        assert_eq!(back, g);
        assert_eq!(back.hash(), g.hash());
        assert_eq!(g.total_supply(), Some(10 + Params::default().min_stake));

        let mut dup = g.clone();
        dup.validators.push(dup.validators[0].clone());
        assert!(dup.validate().unwrap_err().to_string().contains("twice"));

        let mut low = g.clone();
        low.validators[0].stake = 1;
        assert!(low.validate().unwrap_err().to_string().contains("min_stake"));

        assert!(Genesis::from_json("{").is_err());
        assert!(Genesis::from_json(r#"{"chain_id":"x","accounts":[],"validators":[],"bogus":1}"#).is_err());
    }
}
