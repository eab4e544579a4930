//! One module per top-level subcommand, plus what they share: the chain API client, amount
//! parsing and output helpers.

pub mod devnet;
pub mod gateway;
pub mod genesis;
pub mod gov;
pub mod keys;
pub mod model;
pub mod node;
pub mod query;
pub mod serve;
pub mod stream;
pub mod tx;

use std::time::Duration;

use anyhow::{Context as _, bail};
use plexus_types::{Amount, UNITS_PER_PLX};
use serde_json::Value;

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people (coloured on a terminal).
    Text,
    /// One JSON object per line (time, level, target, fields, span), for journald, Loki, Vector
    /// and the like.
    Json,
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`), so stdout stays clean for
/// `--json` output and scripts.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        // Colours only on a terminal: devnet nodes log to files.
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
}

/// Our own logs at info; the engine's internals only when something is wrong.
pub const DEFAULT_LOG_FILTER: &str = "info,commonware_consensus=warn,commonware_storage=warn,commonware_p2p=warn,commonware_broadcast=warn,commonware_resolver=warn";

/// Default chain API a command talks to.
pub const DEFAULT_NODE: &str = "http://127.0.0.1:8545";

/// A small blocking client of the chain REST API.
pub struct Client {
    base: String,
    http: reqwest::blocking::Client,
}

impl Client {
    /// A client of the node at `url`: `http://host:port`, or `https://<node address>@host:port`
    /// for a node serving its API over TLS (only that node's key is accepted).
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let (base, pin) = plexus_serve::tls::chain_url(url).map_err(anyhow::Error::msg)?;
        let mut builder = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30));
        if let Some(node) = &pin {
            builder = builder.tls_backend_preconfigured((*plexus_serve::tls::pinned_client_config(node)).clone());
        }
        let http = builder.build().context("cannot build an HTTP client")?;
        Ok(Client { base, http })
    }

    /// The body of `path` as text, unparsed (a genesis must reach its hash byte for byte).
    pub fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let response = self.http.get(&url).send().with_context(|| format!("cannot reach the node at {}", self.base))?;
        if !response.status().is_success() {
            bail!("{url} answered HTTP {}", response.status().as_u16());
        }
        response.text().with_context(|| format!("cannot read {url}"))
    }

    fn handle(&self, url: &str, response: reqwest::Result<reqwest::blocking::Response>) -> anyhow::Result<Value> {
        let response = response.with_context(|| format!("cannot reach the node at {} (is it running?)", self.base))?;
        let status = response.status();
        let body: Value = response.json().with_context(|| format!("{url} did not return JSON"))?;
        if !status.is_success() {
            let message = body["error"]["message"].as_str().unwrap_or("unknown error");
            let code = body["error"]["code"].as_str().unwrap_or("error");
            bail!("{code}: {message} (HTTP {})", status.as_u16());
        }
        Ok(body)
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.handle(&url, self.http.get(&url).send())
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.handle(&url, self.http.post(&url).json(body).send())
    }
}

/// Parses an amount: base units (`1500`) or PLX with up to 6 decimals (`1.5plx`, `2 PLX`).
pub fn parse_amount(s: &str) -> Result<Amount, String> {
    let t = s.trim().to_ascii_lowercase();
    let Some(plx) = t.strip_suffix("plx") else {
        return t.parse::<Amount>().map_err(|e| format!("amount {s:?}: {e} (use base units, or e.g. 1.5plx)"));
    };
    let plx = plx.trim();
    let (whole, frac) = plx.split_once('.').unwrap_or((plx, ""));
    if frac.len() > 6 || !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("amount {s:?}: at most 6 decimals of PLX"));
    }
    let whole: Amount = if whole.is_empty() { 0 } else { whole.parse().map_err(|e| format!("amount {s:?}: {e}"))? };
    let frac: Amount = format!("{frac:0<6}").parse().map_err(|e| format!("amount {s:?}: {e}"))?;
    whole
        .checked_mul(UNITS_PER_PLX)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(|| format!("amount {s:?} is too large"))
}

/// Formats base units as PLX with six decimals, trailing zeros trimmed.
pub fn format_amount(units: Amount) -> String {
    let whole = units / UNITS_PER_PLX;
    let frac = units % UNITS_PER_PLX;
    if frac == 0 {
        format!("{whole} PLX")
    } else {
        let f = format!("{frac:06}");
        format!("{whole}.{} PLX", f.trim_end_matches('0'))
    }
}

/// Reads an amount field from API JSON (a number).
pub fn amount_of(v: &Value) -> Amount {
    match v {
        Value::Number(n) => n.as_u64().map(Amount::from).or_else(|| n.to_string().parse().ok()).unwrap_or(0),
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// Prints JSON prettily.
pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// The default home directory of a node (`$PLEXUS_HOME` or `~/.plexus`).
pub fn default_home() -> std::path::PathBuf {
    if let Ok(h) = std::env::var("PLEXUS_HOME") {
        return h.into();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    std::path::Path::new(&home).join(".plexus")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts() {
        assert_eq!(parse_amount("1500"), Ok(1500));
        assert_eq!(parse_amount("1.5plx"), Ok(1_500_000));
        assert_eq!(parse_amount("2 PLX"), Ok(2_000_000));
        assert_eq!(parse_amount(".000001plx"), Ok(1));
        assert!(parse_amount("1.0000001plx").is_err());
        assert!(parse_amount("-1").is_err());
        assert!(parse_amount("abc").is_err());
        assert_eq!(format_amount(1_500_000), "1.5 PLX");
        assert_eq!(format_amount(3_000_000), "3 PLX");
        assert_eq!(format_amount(1), "0.000001 PLX");
    }
}
