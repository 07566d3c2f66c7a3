//! TLS client configuration: rustls with the webpki roots, the system's roots and an optional
//! CA bundle, as an operator would expect from curl or the AWS SDK.
//!
//! A proxy that intercepts HTTPS (Dragonfly's dfdaemon) answers a `CONNECT` tunnel with
//! certificates of its own CA. That CA can sign a certificate for any host, so it is trusted
//! only on connections that go through the proxy: a client holds two configurations
//! ([`Trust`]), and a direct connection never sees the proxy's CA.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::proxy::ProxyConfig;

/// Extra CA certificates to trust: a PEM file, or PEM text held in memory (the agent reads a
/// bundle from a ConfigMap and has no writable disk to put it on).
#[derive(Clone, PartialEq, Eq)]
pub enum CaBundle {
    /// A PEM file, read when the TLS configuration is built.
    File(PathBuf),
    /// PEM text.
    Pem {
        /// Where the text came from, for messages (`ConfigMap ns/name key cabundle.crt`).
        origin: String,
        /// The certificates.
        pem: Arc<str>,
    },
}

impl CaBundle {
    /// The PEM text.
    fn load(&self) -> Result<Vec<u8>, TlsConfigError> {
        match self {
            CaBundle::File(path) => std::fs::read(path).map_err(|source| TlsConfigError::Read {
                path: path.display().to_string(),
                source,
            }),
            CaBundle::Pem { pem, .. } => Ok(pem.as_bytes().to_vec()),
        }
    }

    /// The certificates, read and parsed: a bundle that cannot be read, does not parse or
    /// holds none is an error. Checking a bundle when it is given tells the operator at once
    /// rather than at the first connection that needs it.
    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
        let pem = self.load()?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsConfigError::Invalid {
                path: self.to_string(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsConfigError::Empty {
                path: self.to_string(),
            });
        }
        Ok(certs)
    }
}

impl std::fmt::Display for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaBundle::File(path) => write!(f, "{}", path.display()),
            CaBundle::Pem { origin, .. } => f.write_str(origin),
        }
    }
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaBundle::File(path) => f.debug_tuple("File").field(path).finish(),
            CaBundle::Pem { origin, pem } => f
                .debug_struct("Pem")
                .field("origin", origin)
                .field("bytes", &pem.len())
                .finish(),
        }
    }
}

impl From<PathBuf> for CaBundle {
    fn from(path: PathBuf) -> Self {
        CaBundle::File(path)
    }
}

impl From<&std::path::Path> for CaBundle {
    fn from(path: &std::path::Path) -> Self {
        CaBundle::File(path.to_owned())
    }
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read CA bundle {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CA bundle {path} holds no usable PEM certificate")]
    Empty { path: String },
    #[error("CA bundle {path}: {message}")]
    Invalid { path: String, message: String },
}

/// Builds the client configuration used by every engine core, trusting `ca_bundle` in
/// addition to the usual roots. Certificates of `insecure_hosts` are not verified at all
/// (`S3_VERIFY_SSL=0`); every other host is verified as usual.
pub fn client_config(
    ca_bundle: Option<&CaBundle>,
    insecure_hosts: &[String],
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    build(ca_bundle.into_iter().collect(), insecure_hosts)
}

/// The TLS configurations of one client: one for direct connections, one for connections
/// tunnelled through the HTTPS proxy. They differ only when the proxy intercepts HTTPS and
/// its CA is given ([`crate::ProxyConfig::ca_bundle`]).
#[derive(Debug, Clone)]
pub struct Trust {
    /// For connections straight to the origin.
    pub direct: Arc<rustls::ClientConfig>,
    /// For connections through the proxy: the direct roots and the proxy's CA.
    pub proxied: Arc<rustls::ClientConfig>,
}

impl From<Arc<rustls::ClientConfig>> for Trust {
    /// The same trust whichever way a connection goes.
    fn from(config: Arc<rustls::ClientConfig>) -> Self {
        Self {
            direct: config.clone(),
            proxied: config,
        }
    }
}

/// Builds both configurations of a client: [`client_config`] for direct connections, and the
/// same with the proxy's CA added for proxied ones.
pub fn trust(
    ca_bundle: Option<&CaBundle>,
    insecure_hosts: &[String],
    proxy: Option<&ProxyConfig>,
) -> Result<Trust, TlsConfigError> {
    let direct = client_config(ca_bundle, insecure_hosts)?;
    let Some(proxy_ca) = proxy.and_then(|p| p.ca_bundle.as_ref()) else {
        return Ok(direct.into());
    };
    let proxied = build(
        ca_bundle.into_iter().chain([proxy_ca]).collect(),
        insecure_hosts,
    )?;
    Ok(Trust { direct, proxied })
}

fn build(
    bundles: Vec<&CaBundle>,
    insecure_hosts: &[String],
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A broken system certificate must not stop the others from loading.
        let _ = roots.add(cert);
    }
    for bundle in bundles {
        for cert in bundle.certificates()? {
            roots.add(cert).map_err(|e| TlsConfigError::Invalid {
                path: bundle.to_string(),
                message: e.to_string(),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    if insecure_hosts.is_empty() {
        return Ok(Arc::new(
            builder.with_root_certificates(roots).with_no_client_auth(),
        ));
    }
    let verified = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsConfigError::Invalid {
        path: "(roots)".into(),
        message: e.to_string(),
    })?;
    let verifier = SkipFor {
        hosts: insecure_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        verified,
        schemes: provider.signature_verification_algorithms,
    };
    Ok(Arc::new(
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth(),
    ))
}

/// Verifies certificates as usual except for the hosts the operator opted out for.
#[derive(Debug)]
struct SkipFor {
    hosts: Vec<String>,
    verified: Arc<rustls::client::WebPkiServerVerifier>,
    schemes: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl SkipFor {
    fn skips(&self, name: &ServerName<'_>) -> bool {
        let name = match name {
            ServerName::DnsName(d) => d.as_ref().to_ascii_lowercase(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
            _ => return false,
        };
        self.hosts.contains(&name)
    }
}

impl ServerCertVerifier for SkipFor {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.skips(server_name) {
            return Ok(ServerCertVerified::assertion());
        }
        self.verified
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.schemes)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.schemes)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.supported_schemes()
    }
}
