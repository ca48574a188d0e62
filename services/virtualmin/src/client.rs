//! `VirtualminClient`: one remote call, done safely. Per call it reads the live
//! settings (so a reload applies to the next call), looks the server up by id
//! (only configured hosts are contacted), takes a slot of the server's rate
//! limit and a concurrency permit, posts the form body with Basic auth over
//! verified TLS, reads at most `max_response_bytes`, checks miniserv's framing,
//! and retries only what is safe to send again. Three clocks run: the
//! operation's timeout over everything, `write_timeout` until the request
//! body has been taken for sending, `read_timeout` between reply chunks.
//! Retried:
//! - a connection that never opened (nothing was sent): any program;
//! - timeouts, 429/502/503/504, a connection dropped mid-reply: read-only programs only.
//!
//! Mutating programs are never retried: create-domain is not idempotent and a
//! repeated backup writes again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mesh_kit::{ConfigSource, ConfigWatch};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::{Scheme, ServerEntry, TimeoutClass, VirtualminConfig};
use crate::error::{CallError, ErrorContext, VirtualminError};
use crate::metrics::Metrics;
use crate::params::{Program, RemoteParams};
use crate::request_body::ProgressBody;
use crate::wire;

/// Virtualmin's remote API path on miniserv.
const REMOTE_PATH: &str = "/virtual-server/remote.cgi";
/// Bytes read of an error page; its text is never shown, only its status.
const MAX_ERROR_BODY_BYTES: u64 = 64 * 1024;

/// The gateway's HTTP client for every configured server.
#[derive(Clone, Debug)]
pub struct VirtualminClient {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    config: ConfigWatch<VirtualminConfig>,
    config_source: ConfigSource,
    /// The transports, rebuilt when the settings change; a std `Mutex` because
    /// it is held only to compare and swap an `Arc`, never across an await.
    transports: Mutex<Transports>,
    /// Rate-limit windows by server id; kept across reloads so a reload does not reset the budget.
    rate_limits: Mutex<HashMap<String, FixedWindow>>,
    metrics: Metrics,
}

#[derive(Debug)]
struct Transports {
    built_from: Arc<VirtualminConfig>,
    servers: HashMap<String, Arc<ServerTransport>>,
}

/// How one server is reached.
struct ServerTransport {
    entry: ServerEntry,
    url: String,
    password: SecretString,
    http: reqwest::Client,
    /// At most `connection_pool_size` requests in flight to this server.
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for ServerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTransport").field("id", &self.entry.id).field("url", &self.url).finish_non_exhaustive()
    }
}

/// A fixed window of `max_calls` per `window`.
#[derive(Debug)]
struct FixedWindow {
    started: Instant,
    used: u32,
}

impl FixedWindow {
    /// Takes one call, or says how long until the window resets.
    fn try_take(&mut self, now: Instant, window: Duration, max_calls: u32) -> Result<(), Duration> {
        if now.duration_since(self.started) >= window {
            self.started = now;
            self.used = 0;
        }
        if self.used >= max_calls {
            return Err(window.saturating_sub(now.duration_since(self.started)));
        }
        self.used += 1;
        Ok(())
    }
}

/// How an attempt failed, which decides whether it may be retried.
enum AttemptError {
    /// The request never left: retrying cannot apply it twice.
    NotSent(VirtualminError),
    /// The request may have been applied: retry only read-only programs.
    Ambiguous(VirtualminError),
    /// Retrying cannot help.
    Final(VirtualminError),
}

impl VirtualminClient {
    /// A client over the live settings; `config_source` resolves `password_env`.
    /// Fails with one message per server whose password cannot be read.
    pub fn new(config: ConfigWatch<VirtualminConfig>, config_source: ConfigSource) -> Result<Self, Vec<String>> {
        let settings = config.borrow().clone();
        let servers = build_transports(&settings, &config_source)?;
        Ok(Self {
            inner: Arc::new(ClientInner {
                config,
                config_source,
                transports: Mutex::new(Transports { built_from: settings, servers }),
                rate_limits: Mutex::new(HashMap::new()),
                metrics: Metrics::default(),
            }),
        })
    }

    /// The settings in force now.
    #[must_use]
    pub fn settings(&self) -> Arc<VirtualminConfig> {
        self.inner.config.borrow().clone()
    }

    /// Latency and error counters.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The context of a call, for errors raised outside the transport (parsing).
    #[must_use]
    pub fn context(&self, server_id: &str, operation: &'static str, params: &RemoteParams) -> Box<ErrorContext> {
        let settings = self.settings();
        let hostname = settings.server(server_id).map(|s| s.hostname.as_str()).unwrap_or_default();
        Box::new(ErrorContext::now(operation, server_id, hostname, params.sanitized()))
    }

    /// Runs `program` on `server_id` within the timeout of `class` and
    /// returns the JSON body, framing already checked.
    pub async fn call(
        &self,
        server_id: &str,
        program: Program,
        params: &RemoteParams,
        class: TimeoutClass,
    ) -> Result<Bytes, CallError> {
        let started = Instant::now();
        let settings = self.settings();
        let result = self.call_with_retries(&settings, server_id, program, params, class).await;
        let elapsed = started.elapsed();
        self.inner.metrics.record(program, elapsed, result.as_ref().err().map(VirtualminError::reason));
        if elapsed > settings.slow_operation_threshold {
            info!(
                program = program.name(),
                server_id,
                elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                threshold_ms = u64::try_from(settings.slow_operation_threshold.as_millis()).unwrap_or(u64::MAX),
                "slow virtualmin operation"
            );
        }
        result.map_err(|error| CallError { error, context: self.context(server_id, program.name(), params) })
    }

    async fn call_with_retries(
        &self,
        settings: &Arc<VirtualminConfig>,
        server_id: &str,
        program: Program,
        params: &RemoteParams,
        class: TimeoutClass,
    ) -> Result<Bytes, VirtualminError> {
        let transport = self.transport(settings, server_id)?;
        let body = Bytes::from(params.form_body(program));
        let secrets: Vec<&str> = params.secret_values().collect();
        // The caller's deadline bounds every attempt and every backoff too.
        let caller_deadline = mesh_kit::correlation::current().and_then(|context| context.deadline);
        let mut attempt = 0u32;
        loop {
            self.take_rate_limit_slot(settings, server_id)?;
            let class_timeout = settings.timeout_for(class);
            let timeout = caller_deadline.map_or(class_timeout, |deadline| {
                deadline.saturating_duration_since(Instant::now()).min(class_timeout)
            });
            let outcome = tokio::time::timeout(timeout, self.attempt(settings, &transport, program, body.clone()))
                .await
                .unwrap_or_else(|_| {
                    Err(AttemptError::Ambiguous(VirtualminError::Timeout {
                        server_id: server_id.to_owned(),
                        program: program.name(),
                        timeout,
                    }))
                });
            let error = match outcome {
                Ok((status, content_type, reply)) => {
                    wire::check_framing(server_id, program, status, &content_type, &reply).inspect_err(|error| {
                        if let VirtualminError::HttpStatus { status, .. } = error {
                            debug!(status, "virtualmin answered an http error");
                        }
                    })?;
                    return Ok(reply);
                }
                Err(AttemptError::NotSent(error)) => (error, true),
                Err(AttemptError::Ambiguous(error)) => (error, program.is_read_only()),
                Err(AttemptError::Final(error)) => (error, false),
            };
            let (error, retry_is_safe) = error;
            let delay = backoff_delay(settings.retry_delay, attempt);
            let out_of_time = caller_deadline.is_some_and(|deadline| Instant::now() + delay >= deadline);
            if !retry_is_safe || attempt >= settings.max_retries || out_of_time {
                return Err(error);
            }
            warn!(
                attempt = attempt + 1,
                program = program.name(),
                server_id,
                error = %scrub_secrets(&error.to_string(), &secrets),
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "virtualmin call failed; retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Retries of 5xx statuses go through here: those arrive as framing errors.
    async fn attempt(
        &self,
        settings: &VirtualminConfig,
        transport: &ServerTransport,
        program: Program,
        body: Bytes,
    ) -> Result<(u16, String, Bytes), AttemptError> {
        let server_id = &transport.entry.id;
        let _permit = transport
            .permits
            .acquire()
            .await
            .map_err(|_| AttemptError::Final(VirtualminError::Internal { reason: "permits closed".to_owned() }))?;
        let (body, mut taken) = ProgressBody::new(body);
        let request = transport
            .http
            .post(&transport.url)
            .basic_auth(&transport.entry.username, Some(transport.password.expose_secret()))
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(reqwest::Body::wrap(body));
        let response_headers = request.send();
        // The write clock runs from the start (connect included) until the body is taken; then
        // only the operation's timeout bounds the wait for the reply, which miniserv sends after
        // the program has run.
        let write_phase = async {
            let all_taken = taken.wait_for(|taken| *taken);
            if tokio::time::timeout(settings.write_timeout, all_taken).await.is_ok() {
                std::future::pending::<()>().await;
            }
        };
        let answered = tokio::select! {
            answered = response_headers => answered,
            () = write_phase => {
                // The server may have read part of the form: treated like a timeout of the whole call.
                return Err(AttemptError::Ambiguous(VirtualminError::WriteTimeout {
                    server_id: server_id.clone(),
                    program: program.name(),
                    timeout: settings.write_timeout,
                }));
            }
        };
        let mut response = answered.map_err(|error| classify_send_error(server_id, &error))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if matches!(status, 429 | 502 | 503 | 504) {
            return Err(AttemptError::Ambiguous(VirtualminError::HttpStatus { server_id: server_id.clone(), status }));
        }
        let limit = if status == 200 { settings.max_response_bytes } else { MAX_ERROR_BODY_BYTES };
        if response.content_length().is_some_and(|length| length > limit) && status == 200 {
            return Err(AttemptError::Final(VirtualminError::ResponseTooLarge { limit_bytes: limit }));
        }
        let mut reply = BytesMut::with_capacity(16 * 1024);
        loop {
            let chunk = tokio::time::timeout(settings.read_timeout, response.chunk()).await.map_err(|_| {
                AttemptError::Ambiguous(VirtualminError::Timeout {
                    server_id: server_id.clone(),
                    program: program.name(),
                    timeout: settings.read_timeout,
                })
            })?;
            match chunk {
                Ok(Some(chunk)) => {
                    if (reply.len() + chunk.len()) as u64 > limit {
                        if status != 200 {
                            // An error page only needs its status; stop reading it.
                            break;
                        }
                        // Dropping the response closes the connection: the rest is never read.
                        return Err(AttemptError::Final(VirtualminError::ResponseTooLarge { limit_bytes: limit }));
                    }
                    reply.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => {
                    return Err(AttemptError::Ambiguous(VirtualminError::TruncatedResponse {
                        received_bytes: reply.len(),
                    }));
                }
            }
        }
        Ok((status, content_type, reply.freeze()))
    }

    fn take_rate_limit_slot(&self, settings: &VirtualminConfig, server_id: &str) -> Result<(), VirtualminError> {
        let mut windows = self.inner.rate_limits.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let window = windows.entry(server_id.to_owned()).or_insert(FixedWindow { started: now, used: 0 });
        window.try_take(now, settings.rate_limit_window, settings.rate_limit_max_calls).map_err(|retry_after| {
            VirtualminError::RateLimited {
                server_id: server_id.to_owned(),
                max_calls: settings.rate_limit_max_calls,
                window_secs: settings.rate_limit_window.as_secs(),
                retry_after: retry_after.max(Duration::from_secs(1)),
            }
        })
    }

    /// The transport of `server_id` under `settings`, rebuilding all of them
    /// when the settings changed since they were built.
    fn transport(
        &self,
        settings: &Arc<VirtualminConfig>,
        server_id: &str,
    ) -> Result<Arc<ServerTransport>, VirtualminError> {
        let mut transports = self.inner.transports.lock().unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&transports.built_from, settings) {
            match build_transports(settings, &self.inner.config_source) {
                Ok(servers) => {
                    *transports = Transports { built_from: settings.clone(), servers };
                    info!(servers = settings.servers.len(), "virtualmin transports rebuilt for new settings");
                }
                Err(problems) => {
                    warn!(
                        ?problems,
                        "virtualmin settings reloaded but a server cannot be used; keeping the previous transports"
                    );
                }
            }
        }
        transports
            .servers
            .get(server_id)
            .cloned()
            .ok_or_else(|| VirtualminError::UnknownServer { server_id: server_id.to_owned() })
    }
}

/// Exponential backoff with jitter: `base · 2^attempt`, scaled by a random
/// factor in [0.5, 1.0) so that callers retrying together spread out.
fn backoff_delay(base: Duration, attempt: u32) -> Duration {
    let exponential = base.saturating_mul(1 << attempt.min(10));
    exponential.mul_f64(0.5 + fastrand::f64() / 2.0)
}

fn scrub_secrets(text: &str, secrets: &[&str]) -> String {
    secrets.iter().filter(|s| !s.is_empty()).fold(text.to_owned(), |text, secret| text.replace(secret, "[redacted]"))
}

/// Sorts a transport error: TLS failures are final, connection failures left
/// nothing on the server, anything later is ambiguous.
fn classify_send_error(server_id: &str, error: &reqwest::Error) -> AttemptError {
    let detail = innermost_message(error);
    let server_id = server_id.to_owned();
    if is_tls_error(error) {
        return AttemptError::Final(VirtualminError::TlsFailed { server_id, detail });
    }
    if error.is_connect() {
        return AttemptError::NotSent(VirtualminError::Unreachable { server_id, detail });
    }
    AttemptError::Ambiguous(VirtualminError::Unreachable { server_id, detail })
}

fn is_tls_error(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<rustls::Error>() {
            return true;
        }
        // `io::Error::source` skips the error it wraps, and the connectors wrap rustls's error in
        // an io::Error, itself wrapped in another: step into the wrapped error instead.
        source = match current.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            Some(wrapped) => Some(wrapped as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
    }
    false
}

/// The deepest cause of an error: says what failed without the URL.
fn innermost_message(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string().chars().take(200).collect()
}

fn build_transports(
    settings: &VirtualminConfig,
    config_source: &ConfigSource,
) -> Result<HashMap<String, Arc<ServerTransport>>, Vec<String>> {
    let mut problems = Vec::new();
    let mut servers = HashMap::new();
    for entry in &settings.servers {
        match build_transport(settings, entry, config_source) {
            Ok(transport) => {
                servers.insert(entry.id.clone(), Arc::new(transport));
            }
            Err(problem) => problems.push(format!("VIRTUALMIN_SERVERS: server `{}`: {problem}", entry.id)),
        }
    }
    if problems.is_empty() { Ok(servers) } else { Err(problems) }
}

fn build_transport(
    settings: &VirtualminConfig,
    entry: &ServerEntry,
    config_source: &ConfigSource,
) -> Result<ServerTransport, String> {
    let password = resolve_password(entry, config_source)?;
    let host = if entry.hostname.contains(':') && !entry.hostname.starts_with('[') {
        format!("[{}]", entry.hostname)
    } else {
        entry.hostname.clone()
    };
    let url = format!("{}://{host}:{}{REMOTE_PATH}", entry.scheme.as_str(), entry.port);
    let mut builder = reqwest::Client::builder()
        .connect_timeout(settings.connection_timeout)
        // A redirect could lead anywhere; only the configured URL is contacted.
        .redirect(reqwest::redirect::Policy::none())
        // Proxy variables are ignored: the configured host is the only peer.
        .no_proxy()
        // miniserv closes every connection after one reply.
        .pool_max_idle_per_host(0)
        .http1_only()
        .user_agent(concat!("mesh-virtualmin/", env!("CARGO_PKG_VERSION")))
        .https_only(entry.scheme == Scheme::Https);
    if entry.scheme == Scheme::Https {
        if let Some(fingerprint) = entry.pinned_fingerprint() {
            builder = builder.use_preconfigured_tls(pinned::client_config(fingerprint)?);
        } else if let Some(ca_file) = &entry.ca_file {
            let pem = std::fs::read(ca_file).map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
            builder = builder.tls_built_in_root_certs(false);
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
    }
    let http = builder.build().map_err(|e| format!("http client: {}", innermost_message(&e)))?;
    Ok(ServerTransport {
        entry: entry.clone(),
        url,
        password,
        http,
        permits: Arc::new(Semaphore::new(settings.connection_pool_size as usize)),
    })
}

fn resolve_password(entry: &ServerEntry, config_source: &ConfigSource) -> Result<SecretString, String> {
    if let Some(secret) = &entry.password {
        return Ok(secret.secret().clone());
    }
    if let Some(path) = &entry.password_file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("password_file {}: {e}", path.display()))?;
        return Ok(SecretString::from(text.trim_end_matches(['\r', '\n']).to_owned()));
    }
    if let Some(name) = &entry.password_env {
        let value = config_source.var(name).ok_or_else(|| format!("password_env {name} is not set"))?;
        return Ok(SecretString::from(value.to_owned()));
    }
    Err("no password configured".to_owned())
}

/// A rustls verifier that accepts exactly one leaf certificate, by SHA-256:
/// for servers with self-signed certificates, pinned out of band.
mod pinned {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct PinnedCertificate {
        fingerprint: [u8; 32],
        provider: Arc<CryptoProvider>,
    }

    impl ServerCertVerifier for PinnedCertificate {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let digest = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
            if digest.as_ref() == self.fingerprint {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General("certificate does not match the pinned sha-256".to_owned()))
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider.signature_verification_algorithms.supported_schemes()
        }
    }

    pub(super) fn client_config(fingerprint: [u8; 32]) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinnedCertificate { fingerprint, provider: provider.clone() });
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_window_refuses_then_resets() {
        let start = Instant::now();
        let mut window = FixedWindow { started: start, used: 0 };
        let minute = Duration::from_secs(60);
        assert!(window.try_take(start, minute, 2).is_ok());
        assert!(window.try_take(start, minute, 2).is_ok());
        let retry_after = window.try_take(start + Duration::from_secs(20), minute, 2).unwrap_err();
        assert_eq!(retry_after, Duration::from_secs(40));
        assert!(window.try_take(start + minute, minute, 2).is_ok());
    }

    #[test]
    fn backoff_doubles_with_jitter_in_range() {
        let base = Duration::from_millis(100);
        for attempt in 0..4 {
            let delay = backoff_delay(base, attempt);
            let full = base * (1 << attempt);
            assert!(delay >= full / 2 && delay < full, "{delay:?} for attempt {attempt}");
        }
    }
}
