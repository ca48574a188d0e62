//! Authentication and authorization: a caller presents a bearer token or an
//! API key, the gateway finds its holder by the token's SHA-256, and lets the
//! call through only to the services and methods that holder may call.
//!
//! Tokens are configured as digests ([`crate::config::TokenConfig`]), so
//! neither the config file nor memory holds a usable credential for longer
//! than one call; the presented credential is removed from the request before
//! it goes upstream, and no error or log line ever carries it. With no token
//! configured, authentication is off and every call passes.
//!
//! Behind mutual TLS a caller may instead be named by its client
//! certificate: an entry of `client_certificates` whose `subject` is one of
//! the certificate's identities. A token, when sent, names the caller first,
//! so one certificate can carry calls on behalf of several token holders.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, Request, Response};
use mesh_kit::RpcError;
use mesh_kit::rpc_span::split_grpc_path;
use pin_project_lite::pin_project;
use sha2::{Digest, Sha256};
use tonic::Code;
use tower::{BoxError, Layer, Service};

use crate::config::GatewayConfig;
use crate::refusal::RefusalOr;
use crate::reload::Live;
use crate::tls::ClientCertificate;

/// The header of `Bearer` tokens.
const AUTHORIZATION_HEADER: HeaderName = http::header::AUTHORIZATION;
/// The header of API keys.
const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// A SHA-256 digest.
type TokenDigest = [u8; 32];

/// Who is calling: the `name` of the matched token. Put in the request
/// extensions for the layers below (rate limits), and in the response's
/// for the layers above (access log).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Identity(pub(crate) Arc<str>);

/// Why a call was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// Neither `authorization: Bearer` nor `x-api-key` was sent, nor a
    /// client certificate a `client_certificates` entry knows.
    #[error("credentials required: send `authorization: Bearer <token>` or `x-api-key`, or a known client certificate")]
    MissingCredentials,
    /// A credential was sent, but no configured token matches it.
    #[error("the credentials are not valid")]
    UnknownCredentials,
    /// The holder may not call this method.
    #[error("`{identity}` may not call `{service}/{method}`")]
    NotAllowed { identity: Arc<str>, service: String, method: String },
}

impl RpcError for AuthError {
    fn code(&self) -> Code {
        match self {
            Self::MissingCredentials | Self::UnknownCredentials => Code::Unauthenticated,
            Self::NotAllowed { .. } => Code::PermissionDenied,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::MissingCredentials => "CREDENTIALS_MISSING",
            Self::UnknownCredentials => "CREDENTIALS_INVALID",
            Self::NotAllowed { .. } => "METHOD_NOT_ALLOWED",
        }
    }

    fn domain(&self) -> &'static str {
        "mesh.gateway"
    }
}

/// One entry of a token's `allow` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MethodPattern {
    /// `*`: every method of every service.
    Everything,
    /// `pkg.Service/*`: every method of one service.
    Service(String),
    /// `pkg.Service/Method`.
    Method { service: String, method: String },
}

impl MethodPattern {
    /// Reads an `allow` entry; `None` when it is none of the three forms.
    pub(crate) fn parse(raw: &str) -> Option<Self> {
        if raw == "*" {
            return Some(Self::Everything);
        }
        let (service, method) = raw.split_once('/')?;
        let is_name =
            |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
        if !is_name(service) {
            return None;
        }
        if method == "*" {
            return Some(Self::Service(service.to_owned()));
        }
        is_name(method).then(|| Self::Method { service: service.to_owned(), method: method.to_owned() })
    }

    fn allows(&self, service: &str, method: &str) -> bool {
        match self {
            Self::Everything => true,
            Self::Service(allowed) => allowed == service,
            Self::Method { service: allowed_service, method: allowed_method } => {
                allowed_service == service && allowed_method == method
            }
        }
    }
}

/// Reads 64 hex digits (either case) as a digest.
pub(crate) fn parse_sha256_hex(hex: &str) -> Option<TokenDigest> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(digest)
}

/// The holder of one token and what it may call.
#[derive(Debug)]
struct TokenHolder {
    identity: Identity,
    allow: Vec<MethodPattern>,
}

/// The credentials in force, rebuilt on every reload.
#[derive(Debug, Default)]
pub(crate) struct AuthPolicy {
    /// Token holders by the SHA-256 of their token. Looking the digest up in
    /// a hash map does not leak the token through timing: an attacker does
    /// not control the digest of what it sends.
    holders: HashMap<TokenDigest, TokenHolder>,
    /// Callers known by their client certificate, by the identity that matches.
    certificate_holders: HashMap<Box<str>, TokenHolder>,
    public_services: HashSet<String>,
}

impl AuthPolicy {
    /// The policy of `config`. Entries `validate` refuses are skipped, so a
    /// bad token can only fail closed.
    pub(crate) fn from_config(config: &GatewayConfig) -> Self {
        let holders = config
            .tokens
            .iter()
            .filter_map(|token| {
                let digest = parse_sha256_hex(&token.sha256)?;
                let allow = token.allow.iter().filter_map(|raw| MethodPattern::parse(raw)).collect();
                Some((digest, TokenHolder { identity: Identity(token.name.as_str().into()), allow }))
            })
            .collect();
        let certificate_holders = config
            .client_certificates
            .iter()
            .map(|entry| {
                let allow = entry.allow.iter().filter_map(|raw| MethodPattern::parse(raw)).collect();
                let holder = TokenHolder { identity: Identity(entry.name.as_str().into()), allow };
                (entry.subject.as_str().into(), holder)
            })
            .collect();
        Self { holders, certificate_holders, public_services: config.public_services.iter().cloned().collect() }
    }

    /// Whether any token or client certificate is configured; without one,
    /// authentication is off.
    pub(crate) fn is_enabled(&self) -> bool {
        !self.holders.is_empty() || !self.certificate_holders.is_empty()
    }

    /// The holder named by the first identity of `certificate` that an
    /// entry of `client_certificates` knows.
    fn certificate_holder(&self, certificate: Option<&ClientCertificate>) -> Option<&TokenHolder> {
        let identities = &certificate?.identities;
        identities.iter().find_map(|identity| self.certificate_holders.get(identity))
    }

    /// Decides a call to `path` carrying `headers`, on a connection whose
    /// caller presented `certificate`: `Ok(None)` when it needs no
    /// credentials, `Ok(Some(identity))` when its holder may make it.
    fn authorize(
        &self,
        path: &str,
        headers: &HeaderMap,
        certificate: Option<&ClientCertificate>,
    ) -> Result<Option<Identity>, AuthError> {
        if !self.is_enabled() {
            return Ok(None);
        }
        // A path that is not a gRPC method reaches nothing; the router answers it.
        let Some((service, method)) = split_grpc_path(path) else {
            return Ok(None);
        };
        if self.public_services.contains(service) {
            return Ok(None);
        }
        let holder = match presented_credential(headers) {
            Some(credential) => {
                let digest: TokenDigest = Sha256::digest(credential).into();
                self.holders.get(&digest).ok_or(AuthError::UnknownCredentials)?
            }
            None => self.certificate_holder(certificate).ok_or(AuthError::MissingCredentials)?,
        };
        if holder.allow.iter().any(|pattern| pattern.allows(service, method)) {
            Ok(Some(holder.identity.clone()))
        } else {
            Err(AuthError::NotAllowed {
                identity: Arc::clone(&holder.identity.0),
                service: service.to_owned(),
                method: method.to_owned(),
            })
        }
    }
}

/// The token of `authorization: Bearer <token>` (scheme in any case), else
/// of `x-api-key`.
fn presented_credential(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(AUTHORIZATION_HEADER) {
        let value = value.as_bytes();
        let scheme_len = "bearer ".len();
        if value.len() > scheme_len && value[..scheme_len].eq_ignore_ascii_case(b"bearer ") {
            return Some(value[scheme_len..].trim_ascii());
        }
    }
    headers.get(API_KEY_HEADER).map(|value| value.as_bytes().trim_ascii()).filter(|key| !key.is_empty())
}

/// Authenticates and authorizes every call; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct AuthnLayer {
    policy: Live<AuthPolicy>,
}

impl AuthnLayer {
    pub(crate) fn new(policy: Live<AuthPolicy>) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for AuthnLayer {
    type Service = Authn<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authn { inner, policy: self.policy.clone() }
    }
}

/// The service made by [`AuthnLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Authn<S> {
    inner: S,
    policy: Live<AuthPolicy>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Authn<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = RefusalOr<IdentifiedFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let certificate = request.extensions().get::<ClientCertificate>();
        let decision = self.policy.load().authorize(request.uri().path(), request.headers(), certificate);
        match decision {
            Ok(identity) => {
                // The gateway's credentials mean nothing upstream; they must not travel further.
                request.headers_mut().remove(AUTHORIZATION_HEADER);
                request.headers_mut().remove(API_KEY_HEADER);
                if let Some(identity) = &identity {
                    request.extensions_mut().insert(identity.clone());
                }
                RefusalOr::call(IdentifiedFuture { inner: self.inner.call(request), identity })
            }
            Err(error) => RefusalOr::refuse(error),
        }
    }
}

pin_project! {
    /// Names the caller in the response's extensions.
    #[allow(missing_debug_implementations)] // wraps an arbitrary future
    pub(crate) struct IdentifiedFuture<F> {
        #[pin]
        inner: F,
        identity: Option<Identity>,
    }
}

impl<F, ResBody, E> Future for IdentifiedFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(identity) = this.identity.take() {
            response.extensions_mut().insert(identity);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::config::TokenConfig;
    use crate::reload::live;

    fn sha256_hex(token: &str) -> String {
        let digest = Sha256::digest(token.as_bytes());
        digest.iter().fold(String::new(), |mut hex, byte| {
            use std::fmt::Write as _;
            write!(hex, "{byte:02x}").expect("writing to a String cannot fail");
            hex
        })
    }

    fn policy_with(tokens: &[(&str, &str, &[&str])]) -> AuthPolicy {
        let config = GatewayConfig {
            tokens: tokens
                .iter()
                .map(|(name, token, allow)| TokenConfig {
                    name: (*name).to_owned(),
                    sha256: sha256_hex(token),
                    allow: allow.iter().map(|entry| (*entry).to_owned()).collect(),
                    rate_limit_per_second: 0,
                    rate_limit_burst: 0,
                })
                .collect(),
            ..GatewayConfig::default()
        };
        AuthPolicy::from_config(&config)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(name, value)| (http::HeaderName::from_static(name), value.parse().unwrap())).collect()
    }

    fn check(policy: &AuthPolicy, path: &str, sent: &[(&'static str, &str)], expected: Result<Option<&str>, Code>) {
        let outcome = policy.authorize(path, &headers(sent), None);
        let outcome =
            outcome.as_ref().map(|identity| identity.as_ref().map(|Identity(name)| &**name)).map_err(RpcError::code);
        assert_eq!(outcome, expected, "{path} {sent:?}");
    }

    #[test]
    fn the_digest_of_a_token_is_read_from_hex() {
        assert_eq!(parse_sha256_hex(&sha256_hex("x")), Some(Sha256::digest(b"x").into()));
        assert_eq!(parse_sha256_hex(&sha256_hex("x").to_uppercase()), Some(Sha256::digest(b"x").into()));
        assert!(parse_sha256_hex("abc").is_none());
        assert!(parse_sha256_hex(&"g".repeat(64)).is_none());
    }

    #[test]
    fn allow_entries_have_three_forms() {
        assert_eq!(MethodPattern::parse("*"), Some(MethodPattern::Everything));
        assert_eq!(
            MethodPattern::parse("mesh.cache.v1.Cache/*"),
            Some(MethodPattern::Service("mesh.cache.v1.Cache".into()))
        );
        assert!(matches!(MethodPattern::parse("mesh.cache.v1.Cache/Get"), Some(MethodPattern::Method { .. })));
        for bad in ["", "Get", "/Get", "mesh.cache.v1.Cache/", "a b/Get", "*/Get"] {
            assert_eq!(MethodPattern::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn without_tokens_everything_passes_anonymously() {
        let policy = policy_with(&[]);
        assert!(!policy.is_enabled());
        check(&policy, "/mesh.cache.v1.Cache/Set", &[], Ok(None));
    }

    #[test]
    fn the_auth_matrix() {
        let policy = policy_with(&[
            ("reader", "reader-secret", &["mesh.cache.v1.Cache/Get", "mesh.cache.v1.Cache/GetMany"]),
            ("admin", "admin-secret", &["*"]),
            ("cache-ops", "ops-secret", &["mesh.cache.v1.Cache/*"]),
        ]);
        let get = "/mesh.cache.v1.Cache/Get";
        let set = "/mesh.cache.v1.Cache/Set";
        check(&policy, get, &[], Err(Code::Unauthenticated));
        check(&policy, get, &[("authorization", "Bearer wrong")], Err(Code::Unauthenticated));
        check(&policy, get, &[("authorization", "Basic cmVhZGVyLXNlY3JldA==")], Err(Code::Unauthenticated));
        check(&policy, get, &[("authorization", "Bearer reader-secret")], Ok(Some("reader")));
        check(&policy, get, &[("authorization", "bearer  reader-secret ")], Ok(Some("reader")));
        check(&policy, get, &[("x-api-key", "reader-secret")], Ok(Some("reader")));
        check(&policy, set, &[("x-api-key", "reader-secret")], Err(Code::PermissionDenied));
        check(&policy, set, &[("x-api-key", "ops-secret")], Ok(Some("cache-ops")));
        check(&policy, "/mesh.vpn.v1.Vpn/Get", &[("x-api-key", "ops-secret")], Err(Code::PermissionDenied));
        check(&policy, "/mesh.vpn.v1.Vpn/Get", &[("x-api-key", "admin-secret")], Ok(Some("admin")));
        check(&policy, "/grpc.health.v1.Health/Check", &[], Ok(None));
        check(&policy, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &[], Ok(None));
        check(&policy, "/not-grpc", &[], Ok(None));
    }

    #[test]
    fn a_known_client_certificate_names_the_caller_unless_a_token_does() {
        let mut config = GatewayConfig {
            tokens: vec![TokenConfig {
                name: "admin".into(),
                sha256: sha256_hex("admin-secret"),
                allow: vec!["*".into()],
                rate_limit_per_second: 0,
                rate_limit_burst: 0,
            }],
            ..GatewayConfig::default()
        };
        config.client_certificates = vec![crate::config::ClientCertificateConfig {
            name: "billing".into(),
            subject: "spiffe://mesh/billing".into(),
            allow: vec!["mesh.cache.v1.Cache/Get".into()],
            rate_limit_per_second: 0,
            rate_limit_burst: 0,
        }];
        let policy = AuthPolicy::from_config(&config);
        let billing =
            ClientCertificate { identities: ["billing.example".into(), "spiffe://mesh/billing".into()].into() };
        let stranger = ClientCertificate { identities: ["stranger".into()].into() };
        let name = |outcome: Result<Option<Identity>, AuthError>| {
            outcome.map(|identity| identity.map(|Identity(name)| name.to_string()))
        };
        let get = "/mesh.cache.v1.Cache/Get";

        assert_eq!(name(policy.authorize(get, &headers(&[]), Some(&billing))).unwrap(), Some("billing".into()));
        let denied = policy.authorize("/mesh.cache.v1.Cache/Set", &headers(&[]), Some(&billing)).unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        let unknown = policy.authorize(get, &headers(&[]), Some(&stranger)).unwrap_err();
        assert_eq!(unknown.reason(), "CREDENTIALS_MISSING");
        let by_token = policy.authorize(get, &headers(&[("x-api-key", "admin-secret")]), Some(&billing));
        assert_eq!(name(by_token).unwrap(), Some("admin".into()), "the token names the caller first");
    }

    #[test]
    fn refusals_never_carry_the_credential() {
        let policy = policy_with(&[("reader", "reader-secret", &["mesh.cache.v1.Cache/Get"])]);
        for sent in ["reader-secret", "hunter2"] {
            let error =
                policy.authorize("/mesh.cache.v1.Cache/Set", &headers(&[("x-api-key", sent)]), None).unwrap_err();
            assert!(!error.to_string().contains(sent), "{error}");
        }
    }

    #[tokio::test]
    async fn the_layer_strips_credentials_and_names_the_caller() {
        let policy = live(policy_with(&[("reader", "reader-secret", &["*"])]));
        let inner = service_fn(|request: Request<()>| async move {
            assert!(request.headers().get(AUTHORIZATION_HEADER).is_none(), "the token went upstream");
            let identity = request.extensions().get::<Identity>().cloned().expect("the caller is named");
            Ok::<_, Infallible>(Response::new(identity.0.to_string()))
        });
        let mut request = Request::builder().uri("/mesh.cache.v1.Cache/Get").body(()).unwrap();
        request.headers_mut().insert(AUTHORIZATION_HEADER, "Bearer reader-secret".parse().unwrap());
        let response = AuthnLayer::new(policy.clone()).layer(inner).oneshot(request).await.unwrap();
        assert_eq!(response.body(), "reader");
        assert_eq!(
            response.extensions().get::<Identity>(),
            Some(&Identity("reader".into())),
            "named for the access log"
        );

        let refused = AuthnLayer::new(policy)
            .layer(service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) }))
            .oneshot(Request::builder().uri("/mesh.cache.v1.Cache/Get").body(()).unwrap())
            .await
            .unwrap_err();
        assert!(refused.is::<AuthError>());
    }
}
