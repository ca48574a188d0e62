//! TLS on the caller-facing listener (rustls with ring), optionally mutual:
//! the server certificate and key, and the CAs that sign callers'
//! certificates, are PEM files named by the config and read at start. With
//! a client CA, every caller must present a certificate it signed; the
//! certificate's identities ([`ClientCertificate`]: DNS and URI subject
//! alternative names, then the subject common name) go with each of the
//! connection's calls, and `authn` may name the caller by them.

use std::path::Path;
use std::sync::Arc;

use mesh_kit::ConfigProblem;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::GatewayConfig;

/// Why the TLS settings cannot be used; each names its setting's field.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("cannot read PEM from the file: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    #[error("the file holds no certificate")]
    NoCertificate,
    #[error("the CA certificates are not usable: {0}")]
    ClientCa(rustls::Error),
    #[error("the client certificate verifier cannot be built: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the certificate and key are not usable together: {0}")]
    Certificate(rustls::Error),
}

/// The identities a caller's client certificate carries, in the order a
/// configured `subject` is matched against them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClientCertificate {
    pub(crate) identities: Arc<[Box<str>]>,
}

impl ClientCertificate {
    /// The identities of the DER certificate `der`: DNS and URI subject
    /// alternative names, then the subject's common names. `None` when the
    /// certificate cannot be parsed (rustls has verified it already).
    pub(crate) fn from_der(der: &[u8]) -> Option<Self> {
        let (_rest, certificate) = X509Certificate::from_der(der).ok()?;
        let mut identities: Vec<Box<str>> = Vec::new();
        if let Ok(Some(alternative_names)) = certificate.subject_alternative_name() {
            for name in &alternative_names.value.general_names {
                match name {
                    GeneralName::DNSName(name) | GeneralName::URI(name) => identities.push((*name).into()),
                    _ => {}
                }
            }
        }
        for common_name in certificate.subject().iter_common_name() {
            if let Ok(common_name) = common_name.as_str() {
                identities.push(common_name.into());
            }
        }
        Some(Self { identities: identities.into() })
    }
}

/// The acceptor of `config`'s TLS settings; `None` when TLS is off.
pub(crate) fn acceptor(config: &GatewayConfig) -> Result<Option<TlsAcceptor>, (&'static str, TlsError)> {
    let (Some(cert_file), Some(key_file)) = (&config.tls_cert_file, &config.tls_key_file) else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| ("tls_cert_file", TlsError::Certificate(error)))?;
    let builder = match &config.tls_client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let roots = read_roots(ca_file).map_err(|error| ("tls_client_ca_file", error))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| ("tls_client_ca_file", TlsError::from(error)))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let chain = read_certificates(cert_file).map_err(|error| ("tls_cert_file", error))?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|error| ("tls_key_file", TlsError::from(error)))?;
    let mut server_config =
        builder.with_single_cert(chain, key).map_err(|error| ("tls_key_file", TlsError::Certificate(error)))?;
    // gRPC is HTTP/2 only; a caller that cannot speak it fails the handshake rather than the first call.
    server_config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server_config))))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)?.collect::<Result<Vec<_>, _>>()?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certificates)
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path)? {
        roots.add(certificate).map_err(TlsError::ClientCa)?;
    }
    Ok(roots)
}

/// The problems of the TLS settings and of `client_certificates`, each
/// naming its setting; the files are read, so a bad one stops the gateway
/// before it binds.
pub(crate) fn validate(config: &GatewayConfig) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(_), None) => problems.push(ConfigProblem::new("tls_key_file", "must be set with tls_cert_file")),
        (None, Some(_)) => problems.push(ConfigProblem::new("tls_cert_file", "must be set with tls_key_file")),
        _ => {}
    }
    if config.tls_client_ca_file.is_some() && config.tls_cert_file.is_none() {
        problems.push(ConfigProblem::new("tls_client_ca_file", "needs tls_cert_file and tls_key_file (mutual TLS)"));
    }
    if problems.is_empty()
        && let Err((field, error)) = acceptor(config)
    {
        problems.push(ConfigProblem::new(field, error.to_string()));
    }
    if !config.client_certificates.is_empty() && config.tls_client_ca_file.is_none() {
        problems.push(ConfigProblem::new(
            "client_certificates",
            "need tls_client_ca_file: without mutual TLS no caller presents a certificate",
        ));
    }
    for (index, entry) in config.client_certificates.iter().enumerate() {
        let field = format!("client_certificates[{index}] ({})", entry.name);
        if entry.name.is_empty() {
            problems.push(ConfigProblem::new(format!("client_certificates[{index}]"), "name must not be empty"));
        }
        if entry.subject.is_empty() {
            problems.push(ConfigProblem::new(field.clone(), "subject must not be empty"));
        }
        for pattern in &entry.allow {
            if crate::authn::MethodPattern::parse(pattern).is_none() {
                problems.push(ConfigProblem::new(
                    field.clone(),
                    format!("allow entry `{pattern}` must be `*`, `pkg.Service/*` or `pkg.Service/Method`"),
                ));
            }
        }
        let is_taken = config.tokens.iter().any(|token| token.name == entry.name)
            || config.client_certificates[..index].iter().any(|earlier| earlier.name == entry.name);
        if is_taken {
            problems.push(ConfigProblem::new(field.clone(), "name is used by a token or another certificate"));
        }
        if config.client_certificates[..index].iter().any(|earlier| earlier.subject == entry.subject) {
            problems.push(ConfigProblem::new(field, "subject is used by another certificate"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientCertificateConfig;

    #[test]
    fn identities_are_the_alternative_names_then_the_common_name() {
        let mut params =
            rcgen::CertificateParams::new(vec!["billing.mesh.internal".to_owned()]).expect("a valid DNS name");
        params.subject_alt_names.push(rcgen::SanType::URI("spiffe://mesh/billing".try_into().unwrap()));
        params.distinguished_name.push(rcgen::DnType::CommonName, "billing-job");
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();

        let identities = ClientCertificate::from_der(certificate.der()).expect("parses").identities;
        let identities: Vec<&str> = identities.iter().map(|identity| &**identity).collect();
        assert_eq!(identities, ["billing.mesh.internal", "spiffe://mesh/billing", "billing-job"]);
        assert_eq!(ClientCertificate::from_der(b"not a certificate"), None);
    }

    #[test]
    fn tls_settings_come_in_pairs_and_name_the_setting() {
        let only_cert =
            GatewayConfig { tls_cert_file: Some("/nonexistent/cert.pem".into()), ..GatewayConfig::default() };
        let problems = validate(&only_cert);
        assert_eq!(problems[0].field, "tls_key_file", "{problems:?}");

        let missing_files = GatewayConfig {
            tls_cert_file: Some("/nonexistent/cert.pem".into()),
            tls_key_file: Some("/nonexistent/key.pem".into()),
            ..GatewayConfig::default()
        };
        let problems = validate(&missing_files);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "tls_cert_file");
        assert!(problems[0].message.contains("cannot read PEM"), "{}", problems[0].message);

        let certificates_without_mtls = GatewayConfig {
            client_certificates: vec![ClientCertificateConfig {
                name: "billing".into(),
                subject: "billing.mesh.internal".into(),
                allow: vec!["nope".into()],
                rate_limit_per_second: 0,
                rate_limit_burst: 0,
            }],
            ..GatewayConfig::default()
        };
        let problems = validate(&certificates_without_mtls);
        let fields: Vec<&str> = problems.iter().map(|problem| problem.field.as_str()).collect();
        assert_eq!(fields, ["client_certificates", "client_certificates[0] (billing)"], "{problems:?}");
    }
}
