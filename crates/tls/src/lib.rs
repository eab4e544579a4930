//! TLS for the links between gateways and providers, bound to the provider's on-chain key.
//!
//! A provider serves TLS 1.3 with a self-signed certificate for its own ed25519 key, the key
//! whose public half is its on-chain address. There is no certificate authority: a gateway
//! knows which provider it means to reach (the address of the provider record whose endpoint
//! it dials), so it pins that key. Its verifier ignores the certificate's contents and accepts
//! the connection only if the server's handshake signature (TLS 1.3 `CertificateVerify`, which
//! covers the whole handshake, key exchange included) verifies under the provider's address.
//! Anyone else on the path, including another provider, cannot produce that signature: the
//! handshake fails with an error naming the provider it was not, and nothing is sent. An
//! endpoint registered as `https://` is never dialled in clear.
//!
//! The certificate is still a real X.509 certificate (for the same key), so `curl -k` or a
//! browser can talk to a provider for debugging.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plexus_types::{Address, PrivateKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// TLS handshakes in progress at once; more connections wait in the kernel's backlog.
pub const HANDSHAKES_MAX: usize = 64;
/// How long a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The PKCS#8 v1 encoding of an ed25519 key (RFC 8410): a fixed prefix, then the 32-byte seed.
fn pkcs8(key: &PrivateKey) -> Vec<u8> {
    const PREFIX: [u8; 16] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(&key.secret_bytes());
    der
}

/// The SubjectPublicKeyInfo of an ed25519 public key (RFC 8410).
fn spki(address: &Address) -> Vec<u8> {
    const PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(address.as_bytes());
    der
}

fn crypto() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A provider's server configuration: TLS 1.3 only, a self-signed certificate for its key.
pub fn server_config(key: &PrivateKey) -> Result<Arc<ServerConfig>, String> {
    let der = pkcs8(key);
    let pkcs8 = PrivatePkcs8KeyDer::from(der.clone());
    let pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
        .map_err(|e| format!("the provider key as a certificate key: {e}"))?;
    let mut params =
        rcgen::CertificateParams::new(vec!["plexus-provider".to_string()]).map_err(|e| format!("certificate: {e}"))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("plexus provider {}", key.address()));
    let cert = params.self_signed(&pair).map_err(|e| format!("self-signing the certificate: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(crypto())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)))
        .map_err(|e| format!("TLS certificate: {e}"))?;
    // HTTP/1.1: WebSocket streams upgrade from it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration that reaches only the provider with on-chain address `provider`.
pub fn pinned_client_config(provider: &Address) -> Arc<ClientConfig> {
    let verifier = Arc::new(Pinned { provider: provider.clone(), spki: spki(provider), crypto: crypto() });
    let mut config = ClientConfig::builder_with_provider(crypto())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("aws-lc-rs supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A chain API URL split into the base to request and the node key to pin: `http://host:port`
/// (no pin), or `https://<node address>@host:port` for a node serving its API over TLS with a
/// certificate for its key. An `https` URL without the address is refused rather than trusted
/// blindly: there is no certificate authority to fall back on.
pub fn chain_url(url: &str) -> Result<(String, Option<Address>), String> {
    let mut parsed = reqwest::Url::parse(url.trim()).map_err(|e| format!("chain API URL `{url}`: {e}"))?;
    let pin = match (parsed.scheme(), parsed.username()) {
        ("http", "") => None,
        ("http", _) => {
            return Err(format!("chain API URL `{url}`: a node address pins TLS; use https://<address>@host:port"));
        }
        ("https", "") => {
            return Err(format!(
                "chain API URL `{url}`: a chain API over TLS is reached by the node's address, \
                 https://<node address>@host:port (the node logs it when it starts)"
            ));
        }
        ("https", user) => {
            Some(user.parse::<Address>().map_err(|e| format!("chain API URL `{url}`: node address: {e}"))?)
        }
        (other, _) => return Err(format!("chain API URL `{url}`: unsupported scheme `{other}` (http or https)")),
    };
    parsed.set_username("").ok();
    parsed.set_password(None).ok();
    Ok((parsed.as_str().trim_end_matches('/').to_string(), pin))
}

/// Accepts a server whose TLS 1.3 handshake is signed by one ed25519 key.
#[derive(Debug)]
struct Pinned {
    provider: Address,
    spki: Vec<u8>,
    crypto: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Who the server is is decided by the handshake signature below, not by what its
        // certificate says.
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("providers speak TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        _cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let spki = SubjectPublicKeyInfoDer::from(self.spki.as_slice());
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &spki,
            dss,
            &self.crypto.signature_verification_algorithms,
        )
        .map_err(|_| {
            rustls::Error::General(format!(
                "the server is not {}: its TLS handshake is not signed with that on-chain key (the provider or node dialled)",
                self.provider
            ))
        })
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// A TLS listener for `axum::serve`: TCP connections are accepted and their handshakes run in
/// the background (at most [`HANDSHAKES_MAX`] at once, each within [`HANDSHAKE_TIMEOUT`]), so a
/// client that stalls its handshake holds up nobody else.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(HANDSHAKES_MAX);
        let acceptor = TlsAcceptor::from(config);
        let permits = Arc::new(Semaphore::new(HANDSHAKES_MAX));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(target: "tls", "accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, handed) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = handed.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(target: "tls", %peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(target: "tls", %peer, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop ended (the runtime is shutting down): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve(key: &PrivateKey) -> SocketAddr {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = TlsListener::new(tcp, server_config(key).unwrap()).unwrap();
        let addr = axum::serve::Listener::local_addr(&listener).unwrap();
        let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn client(pin: &Address) -> reqwest::Client {
        let config = pinned_client_config(pin);
        reqwest::Client::builder().tls_backend_preconfigured((*config).clone()).build().unwrap()
    }

    #[tokio::test]
    async fn a_pinned_client_reaches_its_provider_and_nobody_else() {
        let (provider, other) = (PrivateKey::from_seed(1), PrivateKey::from_seed(2));
        let addr = serve(&provider).await;
        let url = format!("https://{addr}/health");
        let body = client(&provider.address()).get(&url).send().await.unwrap().text().await.unwrap();
        assert_eq!(body, "ok");
        // Pinned to another provider: the handshake fails, with the reason.
        let err = client(&other.address()).get(&url).send().await.unwrap_err();
        let chain = format!("{:?}", err);
        assert!(chain.contains(&format!("is not {}", other.address())), "{chain}");
        // Plain HTTP to a TLS port gets nothing.
        let plain = reqwest::Client::new().get(format!("http://{addr}/health")).send().await;
        assert!(plain.is_err() || !plain.unwrap().status().is_success());
    }

    #[test]
    fn chain_urls_carry_the_node_key_to_pin_or_are_plain() {
        let node = PrivateKey::from_seed(4).address();
        assert_eq!(chain_url("http://10.0.0.1:8545/").unwrap(), ("http://10.0.0.1:8545".to_string(), None));
        let (base, pin) = chain_url(&format!("https://{node}@node.example:8545")).unwrap();
        assert_eq!((base.as_str(), pin), ("https://node.example:8545", Some(node.clone())));
        // TLS without knowing whom to expect, a pin on plain HTTP, a bad address, other schemes.
        for bad in [
            "https://node.example:8545".to_string(),
            format!("http://{node}@node.example:8545"),
            "https://nothex@node.example:8545".to_string(),
            "ftp://node.example".to_string(),
            "not a url".to_string(),
        ] {
            assert!(chain_url(&bad).is_err(), "{bad}");
        }
        assert!(chain_url("https://node.example:8545").unwrap_err().contains("https://<node address>@host:port"));
    }

    #[tokio::test]
    async fn a_stalled_handshake_holds_up_nobody() {
        let provider = PrivateKey::from_seed(3);
        let addr = serve(&provider).await;
        // Connections that never send a ClientHello.
        let mut idle = Vec::new();
        for _ in 0..8 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let body = client(&provider.address())
            .get(format!("https://{addr}/health"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "ok");
    }

    #[test]
    fn the_certificate_carries_the_providers_key() {
        let key = PrivateKey::from_seed(4);
        assert!(server_config(&key).is_ok());
        // The SubjectPublicKeyInfo of the address appears in the certificate.
        let der = rcgen_cert_der(&key);
        let needle = spki(&key.address());
        assert!(der.windows(needle.len()).any(|w| w == needle.as_slice()));
    }

    fn rcgen_cert_der(key: &PrivateKey) -> Vec<u8> {
        let der = pkcs8(key);
        let pair =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der), &rcgen::PKCS_ED25519).unwrap();
        let params = rcgen::CertificateParams::new(vec!["plexus-provider".to_string()]).unwrap();
        params.self_signed(&pair).unwrap().der().to_vec()
    }
}
