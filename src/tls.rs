//! TLS with rustls: the server side for clients (SNI, ALPN, reload on
//! SIGHUP) and the client side for backends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use thiserror::Error;
use tokio_rustls::TlsAcceptor;

use crate::config::BackendTlsMode;

/// The ALPN protocol id PostgreSQL 17 uses for direct TLS.
pub(crate) const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// A TLS file that could not be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the certificate/key pair.
    #[error("certificate and key do not make a TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client-facing TLS configuration, swapped whole on reload so that
/// handshakes in flight keep the configuration they started with.
pub(crate) struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<TlsState>,
}

/// A loaded certificate: the rustls config and the SCRAM channel-binding
/// data (`tls-server-end-point`) of its leaf certificate.
struct TlsState {
    config: Arc<ServerConfig>,
    end_point: Option<Arc<Vec<u8>>>,
}

impl ServerTls {
    /// Loads the certificate chain and key.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        Ok(ServerTls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(load_state(cert, key)?),
        })
    }

    /// Reads the certificate and key again; on error the old ones stay.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        self.current
            .store(Arc::new(load_state(&self.cert, &self.key)?));
        Ok(())
    }

    /// An acceptor and the channel-binding data of the certificate it
    /// presents, taken together so a reload cannot split them.
    pub(crate) fn accept_parts(&self) -> (TlsAcceptor, Option<Arc<Vec<u8>>>) {
        let state = self.current.load();
        (
            TlsAcceptor::from(state.config.clone()),
            state.end_point.clone(),
        )
    }
}

fn load_state(cert: &Path, key: &Path) -> Result<TlsState, TlsError> {
    let config = server_config(cert, key)?;
    let end_point = read_certs(cert)?
        .first()
        .and_then(|leaf| crate::channel_binding::tls_server_end_point(leaf))
        .map(Arc::new);
    Ok(TlsState { config, end_point })
}

/// Builds a server configuration from PEM files, offering ALPN `postgresql`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        path: key.to_owned(),
        message: format!("no usable private key: {e}"),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |message: String| TlsError::File {
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error("no certificates found".into()));
    }
    Ok(certs)
}

/// Builds the client configuration pgcell uses towards a tenant's backends.
pub fn backend_client_config(
    mode: BackendTlsMode,
    ca: Option<&Path>,
) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = match mode {
        BackendTlsMode::Disable => return Ok(None),
        BackendTlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth(),
        BackendTlsMode::VerifyFull => {
            let mut roots = RootCertStore::empty();
            if let Some(ca) = ca {
                for cert in read_certs(ca)? {
                    roots.add(cert).map_err(|e| TlsError::File {
                        path: ca.to_owned(),
                        message: format!("unusable CA certificate: {e}"),
                    })?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

/// `backend_tls = "require"`: encrypt without authenticating the server, as
/// libpq's `sslmode=require` does. Signatures are still checked so the
/// handshake itself is sound.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A self-signed certificate and key (PEM) for `names`; used by the demo
/// and by tests.
pub(crate) fn self_signed(names: &[&str]) -> Result<(String, String), rcgen::Error> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let cert = rcgen::generate_simple_self_signed(names)?;
    Ok((cert.cert.pem(), cert.key_pair.serialize_pem()))
}
