//! An HTTPS front for the fake hub (issue 19): TLS terminated here, each connection then
//! forwarded as plain bytes to the fake's HTTP listener. hubee-sync accepts plain http only
//! for localhost, so a hub on another host (a network namespace) is reached through this, with
//! the test's CA in `[hub] ca_file`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn bad(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Listens on `listen` (TLS with the PEM certificate chain and key given), forwards every
/// connection to `upstream`; serves on the current tokio runtime. Returns the bound address.
pub async fn start_tls_front(
    listen: SocketAddr,
    upstream: SocketAddr,
    cert_pem: &Path,
    key_pem: &Path,
) -> std::io::Result<SocketAddr> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
        .map_err(|e| bad(format!("{}: {e}", cert_pem.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("{}: {e}", cert_pem.display())))?;
    let key = PrivateKeyDer::from_pem_file(key_pem)
        .map_err(|e| bad(format!("{}: {e}", key_pem.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(format!("certificate and key: {e}")))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    Ok(addr)
}
