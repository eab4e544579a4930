//! The gateway's links to providers: TLS pinned to each provider's on-chain key.
//!
//! A provider whose registered endpoint is `https://` is reached only over TLS 1.3, and only if
//! the server's handshake is signed by the key of the provider record the endpoint came from
//! (see `plexus_serve::tls`). A server that cannot sign as that provider (a man in the middle,
//! another provider, a stale DNS entry) is refused with a reason naming the provider; nothing
//! is sent to it and the gateway never retries in clear. An `http://` endpoint is used only on
//! a loopback address (a provider on the gateway's own machine, where no path can be tapped);
//! a remote plain-HTTP endpoint is refused unless the operator allowed it
//! (`plain_http_providers`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use plexus_types::Address;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Most providers with a pinned client kept at once; beyond it the cache starts over.
const PINNED_MAX: usize = 4096;

/// How a provider's endpoint is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Plain,
    Tls,
}

/// How the gateway may reach `endpoint`, or why it may not.
pub(crate) fn scheme(endpoint: &str, plain_allowed: bool) -> Result<Scheme, String> {
    let url = reqwest::Url::parse(endpoint).map_err(|e| format!("endpoint `{endpoint}`: {e}"))?;
    match url.scheme() {
        "https" => Ok(Scheme::Tls),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
                Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                None => false,
            };
            if loopback || plain_allowed {
                Ok(Scheme::Plain)
            } else {
                Err(format!(
                    "endpoint `{endpoint}` is plain HTTP on another machine; the gateway reaches remote providers \
                     only over TLS (set plain_http_providers = true to allow it)"
                ))
            }
        }
        other => Err(format!("endpoint `{endpoint}`: unsupported scheme `{other}`")),
    }
}

/// HTTP clients for one kind of call (one set of timeouts): one for loopback providers in
/// clear, one per TLS provider pinned to its key.
pub(crate) struct Links {
    configure: fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
    plain_allowed: bool,
    plain: reqwest::Client,
    pinned: Mutex<BTreeMap<Address, reqwest::Client>>,
}

impl Links {
    pub(crate) fn new(
        configure: fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
        plain_allowed: bool,
    ) -> Result<Links, String> {
        let plain = configure(reqwest::Client::builder()).build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Links { configure, plain_allowed, plain, pinned: Mutex::new(BTreeMap::new()) })
    }

    /// The client that reaches `provider` at `endpoint`, or why it cannot be reached.
    pub(crate) fn to(&self, provider: &Address, endpoint: &str) -> Result<reqwest::Client, String> {
        match scheme(endpoint, self.plain_allowed)? {
            Scheme::Plain => Ok(self.plain.clone()),
            Scheme::Tls => {
                let mut pinned = self.pinned.lock().expect("links lock");
                if let Some(c) = pinned.get(provider) {
                    return Ok(c.clone());
                }
                if pinned.len() >= PINNED_MAX {
                    pinned.clear();
                }
                let tls = plexus_serve::tls::pinned_client_config(provider);
                let client = (self.configure)(reqwest::Client::builder())
                    .tls_backend_preconfigured((*tls).clone())
                    .build()
                    .map_err(|e| format!("TLS client for {provider}: {e}"))?;
                pinned.insert(provider.clone(), client.clone());
                Ok(client)
            }
        }
    }

    pub(crate) fn plain_allowed(&self) -> bool {
        self.plain_allowed
    }
}

/// A reqwest error with its causes: a refused TLS handshake says why only in its sources.
pub(crate) fn why(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// A byte stream to a provider, in clear or over TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Opens a connection to the host of `url` (a `ws://` or `wss://` URL of `provider`'s
/// endpoint), TLS pinned to `provider` for `wss://`.
pub(crate) async fn connect(
    provider: &Address,
    url: &reqwest::Url,
    plain_allowed: bool,
    timeout: Duration,
) -> Result<Pin<Box<dyn Io>>, String> {
    let host = url.host_str().ok_or_else(|| format!("{url}: no host"))?.to_owned();
    let tls = match url.scheme() {
        "wss" => true,
        "ws" => {
            let as_http = format!("http://{}", url.authority());
            scheme(&as_http, plain_allowed)?;
            false
        }
        other => return Err(format!("{url}: unsupported scheme `{other}`")),
    };
    let port = url.port_or_known_default().ok_or_else(|| format!("{url}: no port"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let work = async move {
        let tcp = TcpStream::connect((bare.as_str(), port)).await.map_err(|e| format!("{url}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if !tls {
            return Ok(Box::pin(tcp) as Pin<Box<dyn Io>>);
        }
        let connector = tokio_rustls::TlsConnector::from(plexus_serve::tls::pinned_client_config(provider));
        // The name is not checked (the key is); it only has to be well-formed.
        let name = rustls::pki_types::ServerName::try_from(bare.clone())
            .unwrap_or_else(|_| rustls::pki_types::ServerName::try_from("plexus-provider").expect("a valid name"));
        let stream = connector.connect(name.to_owned(), tcp).await.map_err(|e| format!("{url}: {e}"))?;
        Ok(Box::pin(stream) as Pin<Box<dyn Io>>)
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| "no answer".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_plain_http_is_refused_unless_allowed() {
        assert_eq!(scheme("https://203.0.113.7:8080", false), Ok(Scheme::Tls));
        assert_eq!(scheme("http://127.0.0.1:8080", false), Ok(Scheme::Plain));
        assert_eq!(scheme("http://[::1]:8080", false), Ok(Scheme::Plain));
        assert_eq!(scheme("http://localhost:8080", false), Ok(Scheme::Plain));
        let refused = scheme("http://203.0.113.7:8080", false).unwrap_err();
        assert!(refused.contains("only over TLS"), "{refused}");
        assert_eq!(scheme("http://203.0.113.7:8080", true), Ok(Scheme::Plain));
        assert!(scheme("ftp://203.0.113.7", true).is_err());
        assert!(scheme("not a url", true).is_err());
    }
}
