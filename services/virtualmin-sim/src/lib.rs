//! A Virtualmin remote API simulator, faithful to `virtualmin-remote-api.md`:
//! miniserv's framing (`HTTP/1.0 200 Document follows`, no `Content-Length`,
//! the body ends when the connection closes), Basic auth with its HTML 401
//! and lockout, remote.cgi's program check and argv conversion (LF in a value
//! becomes extra arguments), the programs themselves over a seeded data set
//! that changes as they run, json-lib.pl's converter and `JSON::PP`'s random key
//! order. Fault injection and a call log make it a test double. It serves
//! plain HTTP ([`Simulator::serve`]) or HTTPS with the caller's certificate
//! ([`Simulator::serve_tls`]), as miniserv does with `ssl=1`.
//!
//! # Layout
//! - [`Simulator`]: the state, the call log, fault rules, and `serve`.
//! - `remote`: parameters → argv, the converter, the JSON encoder.
//! - `programs`: list-domains, create-domain, ... as command-line programs.
//! - `dataset`: the domains and the text Virtualmin prints about them.

#![forbid(unsafe_code)]

mod dataset;
mod programs;
mod remote;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mesh_kit::CancellationToken;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

/// Longest request line and headers miniserv reads.
const MAX_HEAD_BYTES: usize = 100_000;
/// Largest request body the simulator reads.
const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// miniserv's default `blockhost_failures` and `blockhost_time`.
const LOCKOUT_FAILURES: u32 = 5;
const LOCKOUT_TIME: Duration = Duration::from_secs(60);
const LOGIN_PAGE_401: &str = "<html>\n<head><title>401 &mdash; Unauthorized</title></head>\n<body><h2 class=\"err-head\">401 &mdash; Unauthorized</h2>\n<p class=\"err-content\">A password is required to access this web server. Please try again.</p> <p>\n</body></html>\n";

/// How the simulator is set up.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// The Webmin user accepted by Basic auth.
    pub username: String,
    /// Its password.
    pub password: String,
    /// Domains in the seeded data set (at least the four sample domains).
    pub domain_count: usize,
    /// Seed of the data set and of the JSON key order.
    pub seed: u64,
    /// The host name `info` reports.
    pub hostname: String,
    /// False makes remote.cgi answer `ERROR: You are not allowed to run remote commands`.
    pub remote_api_allowed: bool,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            username: "root".to_owned(),
            password: "simulator".to_owned(),
            domain_count: 50,
            seed: 20_251_123,
            hostname: "vm1.hosting.example".to_owned(),
            remote_api_allowed: true,
        }
    }
}

/// A misbehaviour to inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long before answering (then answer normally, unless another rule applies).
    Latency(Duration),
    /// Answer HTTP 500 (miniserv's "Perl execution failed").
    Http500,
    /// Answer HTTP 503, as a proxy in front of miniserv would.
    Http503,
    /// Answer miniserv's 401 as if the password were wrong.
    Unauthorized,
    /// Answer 200 with the HTML login page (remote.cgi missing from `sessiononly`).
    LoginPage,
    /// Answer a JSON content type with a body that is not JSON.
    MalformedJson,
    /// Send the first half of the real reply, then close.
    TruncatedBody,
    /// Stream a syntactically valid JSON reply of about this many bytes.
    HugeBody(usize),
    /// Close the connection with a TCP reset before answering.
    ConnectionReset,
    /// Make the program fail (exit 1) when its argv names one of these domains.
    FailForDomains(Vec<String>),
    /// Stop reading the request after its head for this long, so the client's
    /// body backs up. Applies only to rules for every program: the program
    /// name is in the body, not yet read.
    StallRequestBody(Duration),
}

/// When a fault applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRule {
    /// The fault.
    pub fault: Fault,
    /// Only for this program; `None` for every program.
    pub program: Option<String>,
    /// Only this many more times; `None` for ever.
    pub remaining: Option<u32>,
}

impl FaultRule {
    /// A fault for every call.
    #[must_use]
    pub fn always(fault: Fault) -> Self {
        Self { fault, program: None, remaining: None }
    }

    /// Restricts the rule to one program.
    #[must_use]
    pub fn for_program(mut self, program: &str) -> Self {
        self.program = Some(program.to_owned());
        self
    }

    /// Restricts the rule to the next `count` matching calls.
    #[must_use]
    pub fn times(mut self, count: u32) -> Self {
        self.remaining = Some(count);
        self
    }
}

/// Calls the call log keeps: the most recent ones. Tests look at the calls of
/// one scenario; `mesh up` runs the simulator for as long as the mesh runs,
/// and an unbounded log was the mesh's only memory growth under a soak.
pub const CALL_LOG_CAPACITY: usize = 10_000;

/// One call that passed authentication, as the program would have seen it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    /// The `program` parameter.
    pub program: String,
    /// The argv remote.cgi built.
    pub argv: Vec<String>,
    /// `GET` or `POST`.
    pub method: String,
    /// Whether the parameters came in the URL's query string (where miniserv logs them).
    pub used_query_string: bool,
    /// When it arrived.
    pub received_at: SystemTime,
}

/// The simulated server. Clones share state.
#[derive(Clone, Debug)]
pub struct Simulator {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: SimulatorConfig,
    /// A std `Mutex`: programs run synchronously under it and never await.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    data: dataset::Dataset,
    key_order: fastrand::Rng,
    /// At most [`CALL_LOG_CAPACITY`] records, oldest first.
    call_log: VecDeque<CallRecord>,
    faults: Vec<FaultRule>,
    consecutive_auth_failures: u32,
    blocked_until: Option<Instant>,
}

impl State {
    fn log_call(&mut self, record: CallRecord) {
        if self.call_log.len() == CALL_LOG_CAPACITY {
            self.call_log.pop_front();
        }
        self.call_log.push_back(record);
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

impl Simulator {
    /// A simulator with a data set seeded from `config`.
    #[must_use]
    pub fn new(config: SimulatorConfig) -> Self {
        let data = dataset::Dataset::seeded(config.seed, config.domain_count.max(4), unix_now());
        let key_order = fastrand::Rng::with_seed(config.seed ^ 0x5eed);
        Self {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State {
                    data,
                    key_order,
                    call_log: VecDeque::new(),
                    faults: Vec::new(),
                    consecutive_auth_failures: 0,
                    blocked_until: None,
                }),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The authenticated calls so far, oldest first: the last
    /// [`CALL_LOG_CAPACITY`] of them.
    #[must_use]
    pub fn call_log(&self) -> Vec<CallRecord> {
        self.state().call_log.iter().cloned().collect()
    }

    /// Forgets the call log.
    pub fn clear_call_log(&self) {
        self.state().call_log.clear();
    }

    /// Adds a fault rule; rules are tried in the order added.
    pub fn inject(&self, rule: FaultRule) {
        self.state().faults.push(rule);
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Names of the domains now hosted, in list-domains order.
    #[must_use]
    pub fn domain_names(&self) -> Vec<String> {
        let state = self.state();
        state.data.sorted().into_iter().map(|index| state.data.domains[index].name.clone()).collect()
    }

    /// The exact reply body for `query` (e.g. `program=list-domains&multiline=&json=minified`),
    /// as remote.cgi would send it; for benchmarks and fixtures. Not logged.
    #[must_use]
    pub fn render(&self, query: &str) -> String {
        let pairs = remote::parse_pairs(query);
        let mut state = self.state();
        let state = &mut *state;
        self.remote_cgi(&pairs, state).body
    }

    /// Serves HTTP on `listener` until `shutdown` is cancelled.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
        self.accept(listener, None, shutdown).await
    }

    /// Serves HTTPS on `listener` with `tls` (its certificate and key) until `shutdown` is cancelled.
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        tls: Arc<tokio_rustls::rustls::ServerConfig>,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        self.accept(listener, Some(TlsAcceptor::from(tls)), shutdown).await
    }

    async fn accept(
        self,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        info!(address = %listener.local_addr()?, scheme, domains = self.domain_names().len(), "virtualmin simulator listening");
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                accepted = listener.accept() => accepted?,
            };
            let simulator = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let served = match tls {
                    None => simulator.handle(stream, peer).await,
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => simulator.handle(stream, peer).await,
                        Err(error) => Err(error),
                    },
                };
                if let Err(error) = served {
                    debug!(%error, %peer, "simulator connection ended");
                }
            });
        }
    }

    /// Takes the `StallRequestBody` faults due now; they match before the program is known.
    fn take_request_stall(&self) -> Option<Duration> {
        let mut state = self.state();
        let mut stall = None;
        for rule in &mut state.faults {
            if let (Fault::StallRequestBody(delay), None) = (&rule.fault, &rule.program)
                && rule.remaining != Some(0)
            {
                stall = Some(stall.unwrap_or_default() + *delay);
                if let Some(remaining) = rule.remaining.as_mut() {
                    *remaining -= 1;
                }
            }
        }
        state.faults.retain(|rule| rule.remaining != Some(0));
        stall
    }

    #[allow(clippy::too_many_lines)] // miniserv, then remote.cgi, then the fault that replaces the reply: one readable sequence
    async fn handle<S: Connection>(&self, mut stream: S, peer: SocketAddr) -> std::io::Result<()> {
        let stall = self.take_request_stall();
        let Some(request) = read_request(&mut stream, stall).await? else {
            return write_status(
                &mut stream,
                "414 Request-URI Too Long",
                "text/html",
                "<h1>Error - Request too long</h1>\n",
            )
            .await;
        };
        if matches!(request.method.as_str(), "CONNECT" | "TRACE") || !matches!(request.method.as_str(), "GET" | "POST")
        {
            return write_status(
                &mut stream,
                "405 Method Not Allowed",
                "text/html",
                "<h1>Error - Method not allowed</h1>\n",
            )
            .await;
        }
        let (path, query) = request.target.split_once('?').unwrap_or((&request.target, ""));
        if path != "/virtual-server/remote.cgi" {
            return write_status(&mut stream, "404 File not found", "text/html", "<h1>Error - File not found</h1>\n")
                .await;
        }
        let blocked = self.state().blocked_until.is_some_and(|until| Instant::now() < until);
        if blocked {
            return write_status(&mut stream, "403 Access denied for IP", "text/html", "<h1>Error - Access denied for IP. The host has been blocked because of too many authentication failures.</h1>\n").await;
        }
        if !self.authenticated(request.authorization.as_deref()) {
            debug!(%peer, "simulator refused credentials");
            return write_unauthorized(&mut stream).await;
        }
        // ReadParse: the POST body's pairs first, then the query string's.
        let mut pairs = Vec::new();
        if request.method == "POST" {
            pairs.extend(remote::parse_pairs(&String::from_utf8_lossy(&request.body)));
        }
        pairs.extend(remote::parse_pairs(query));

        let (reply, faults) = {
            let mut guard = self.state();
            let state = &mut *guard;
            let program =
                pairs.iter().find(|(name, _)| name == "program").map(|(_, value)| value.clone()).unwrap_or_default();
            let faults = take_faults(&mut state.faults, &program);
            if let Some(domains) =
                faults.iter().find_map(|f| if let Fault::FailForDomains(d) = f { Some(d.clone()) } else { None })
            {
                let format = pairs.iter().any(|(name, _)| name == "json").then_some("json");
                let argv = remote::argv(&pairs, format);
                if let Some(domain) = argv.iter().find(|arg| domains.contains(arg)) {
                    let output = format!("Failed to process virtual server {domain} : simulated failure\n");
                    state.log_call(CallRecord {
                        program: program.clone(),
                        argv,
                        method: request.method.clone(),
                        used_query_string: !query.is_empty(),
                        received_at: SystemTime::now(),
                    });
                    let node = remote::convert(&output, 256, &program, &["multiline"]);
                    let body = remote::encode(&node, &mut state.key_order, true);
                    (Reply { content_type: "application/json", body }, faults)
                } else {
                    (self.logged_remote_cgi(&pairs, &request.method, !query.is_empty(), state), faults)
                }
            } else {
                (self.logged_remote_cgi(&pairs, &request.method, !query.is_empty(), state), faults)
            }
        };
        for fault in &faults {
            if let Fault::Latency(delay) = fault {
                tokio::time::sleep(*delay).await;
            }
        }
        let replacing = faults
            .iter()
            .find(|fault| !matches!(fault, Fault::Latency(_) | Fault::FailForDomains(_) | Fault::StallRequestBody(_)));
        match replacing {
            None => write_reply(&mut stream, reply.content_type, reply.body.as_bytes()).await,
            Some(Fault::Http500) => {
                write_status(
                    &mut stream,
                    "500 Perl execution failed",
                    "text/html",
                    "<h1>Error - Perl execution failed</h1>\n",
                )
                .await
            }
            Some(Fault::Http503) => {
                write_status(&mut stream, "503 Service Unavailable", "text/html", "<h1>503 Service Unavailable</h1>\n")
                    .await
            }
            Some(Fault::Unauthorized) => write_unauthorized(&mut stream).await,
            Some(Fault::LoginPage) => {
                write_reply(
                    &mut stream,
                    "text/html; Charset=utf-8",
                    b"<html><body><form action=\"/session_login.cgi\">Login to Webmin</form></body></html>\n",
                )
                .await
            }
            Some(Fault::MalformedJson) => {
                write_reply(
                    &mut stream,
                    "application/json",
                    b"{\"status\" : \"success\", \"data\" : [ {\"name\" : oops} ]}\n",
                )
                .await
            }
            Some(Fault::TruncatedBody) => {
                let half = &reply.body.as_bytes()[..reply.body.len() / 2];
                write_reply(&mut stream, reply.content_type, half).await
            }
            Some(Fault::HugeBody(bytes)) => write_huge(&mut stream, *bytes).await,
            Some(Fault::ConnectionReset) => {
                // A zero linger turns the close into a TCP reset.
                stream.tcp().set_zero_linger()?;
                drop(stream);
                Ok(())
            }
            Some(Fault::Latency(_) | Fault::FailForDomains(_) | Fault::StallRequestBody(_)) => Ok(()),
        }
    }

    fn authenticated(&self, authorization: Option<&str>) -> bool {
        let expected = format!("{}:{}", self.shared.config.username, self.shared.config.password);
        let given = authorization
            .and_then(|value| value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic ")))
            .and_then(|encoded| STANDARD.decode(encoded.trim()).ok());
        let ok = given.as_deref() == Some(expected.as_bytes());
        let mut state = self.state();
        if ok {
            state.consecutive_auth_failures = 0;
        } else {
            state.consecutive_auth_failures += 1;
            if state.consecutive_auth_failures >= LOCKOUT_FAILURES {
                state.blocked_until = Some(Instant::now() + LOCKOUT_TIME);
                state.consecutive_auth_failures = 0;
            }
        }
        ok
    }

    fn logged_remote_cgi(
        &self,
        pairs: &[remote::Pair],
        method: &str,
        used_query_string: bool,
        state: &mut State,
    ) -> Reply {
        let program = pairs.iter().find(|(name, _)| name == "program").map(|(_, value)| value.clone());
        if let Some(program) = program.filter(|p| programs::PROGRAMS.contains(&p.as_str())) {
            let format =
                ["json", "xml", "perl"].into_iter().find(|format| pairs.iter().any(|(name, _)| name == format));
            state.log_call(CallRecord {
                program,
                argv: remote::argv(pairs, format),
                method: method.to_owned(),
                used_query_string,
                received_at: SystemTime::now(),
            });
        }
        self.remote_cgi(pairs, state)
    }

    /// remote.cgi, steps 1 to 7 of reference §1.
    fn remote_cgi(&self, pairs: &[remote::Pair], state: &mut State) -> Reply {
        if pairs.iter().any(|(name, value)| name.contains('\0') || value.contains('\0')) {
            return Reply {
                content_type: "text/html",
                body: "<h1>Error</h1>\n<pre>Invalid character in input</pre>\n".to_owned(),
            };
        }
        if !self.shared.config.remote_api_allowed {
            return Reply {
                content_type: "text/plain",
                body: "ERROR: You are not allowed to run remote commands\n".to_owned(),
            };
        }
        let Some(program) = pairs.iter().find(|(name, _)| name == "program").map(|(_, value)| value.as_str()) else {
            return Reply {
                content_type: "text/plain",
                body: "Virtualmin remote API: pass program=NAME and its parameters.\n".to_owned(),
            };
        };
        let format = ["json", "xml", "perl"].into_iter().find(|format| pairs.iter().any(|(name, _)| name == format));
        let minified = pairs.iter().any(|(name, value)| name == "json" && value == "minified");
        let valid_name =
            !program.is_empty() && program.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !valid_name || !programs::PROGRAMS.contains(&program) {
            let message = if valid_name {
                format!("Remote program {program} does not exist")
            } else {
                "Invalid remote program name".to_owned()
            };
            let node = remote::Node::Object(vec![
                ("status".to_owned(), remote::Node::Str(Some("error".to_owned()))),
                ("error".to_owned(), remote::Node::Str(Some(message))),
            ]);
            // api_error: always pretty, served as text/plain.
            return Reply { content_type: "text/plain", body: remote::encode(&node, &mut state.key_order, false) };
        }
        let args = remote::argv(pairs, format);
        let run = programs::run(program, &args, &mut state.data, &self.shared.config.hostname);
        if format != Some("json") {
            return Reply {
                content_type: "text/plain",
                body: format!("{}\nExit status: {}\n", run.output, run.exit_status),
            };
        }
        // The converter sees `multiline` forced unless `simple-multiline` was sent.
        let mut seen: Vec<&str> = pairs.iter().map(|(name, _)| name.as_str()).collect();
        if !seen.contains(&"simple-multiline") {
            seen.push("multiline");
        }
        let node = remote::convert(&run.output, run.exit_status, program, &seen);
        Reply { content_type: "application/json", body: remote::encode(&node, &mut state.key_order, minified) }
    }
}

/// Runs a simulator with `config` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, config: SimulatorConfig, shutdown: CancellationToken) -> std::io::Result<()> {
    Simulator::new(config).serve(listener, shutdown).await
}

struct Reply {
    content_type: &'static str,
    body: String,
}

fn take_faults(rules: &mut Vec<FaultRule>, program: &str) -> Vec<Fault> {
    let mut faults = Vec::new();
    for rule in rules.iter_mut() {
        let matches = rule.program.as_deref().is_none_or(|p| p == program)
            && rule.remaining != Some(0)
            && !matches!(rule.fault, Fault::StallRequestBody(_));
        if matches {
            faults.push(rule.fault.clone());
            if let Some(remaining) = rule.remaining.as_mut() {
                *remaining -= 1;
            }
        }
    }
    rules.retain(|rule| rule.remaining != Some(0));
    faults
}

struct HttpRequest {
    method: String,
    target: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

/// A connection the simulator serves: plain TCP, or TLS over TCP.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP socket underneath, to reset it.
    fn tcp(&self) -> &TcpStream;
}

impl Connection for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Connection for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Reads one request, pausing for `stall` between its head and its body;
/// `None` when the head is longer than miniserv accepts.
async fn read_request(
    stream: &mut (impl AsyncRead + Unpin),
    stall: Option<Duration>,
) -> std::io::Result<Option<HttpRequest>> {
    let mut buffer = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(position) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break position;
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Ok(None);
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "request ended early"));
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let mut content_length = 0usize;
    let mut authorization = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => content_length = value.trim().parse().unwrap_or(0).min(MAX_BODY_BYTES),
            "authorization" => authorization = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    if let Some(stall) = stall {
        tokio::time::sleep(stall).await;
    }
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < content_length {
        let mut chunk = vec![0u8; (content_length - body.len()).min(64 * 1024)];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    body.truncate(content_length);
    Ok(Some(HttpRequest { method, target, authorization, body }))
}

fn http_date() -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let now = unix_now();
    let days = now / 86_400;
    let (year, month, day) = dataset::civil_from_days(i64::try_from(days).unwrap_or_default());
    let seconds = now % 86_400;
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60
    )
}

async fn write_head(
    stream: &mut (impl AsyncWrite + Unpin),
    status: &str,
    content_type: &str,
    extra: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.0 {status}\r\nDate: {}\r\nServer: MiniServ\r\n{extra}Connection: close\r\nContent-type: {content_type}\r\n\r\n",
        http_date()
    );
    stream.write_all(head.as_bytes()).await
}

/// A remote.cgi reply: no `Content-Length`; closing the connection ends the body.
async fn write_reply(stream: &mut (impl AsyncWrite + Unpin), content_type: &str, body: &[u8]) -> std::io::Result<()> {
    write_head(stream, "200 Document follows", content_type, "").await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

async fn write_status(
    stream: &mut (impl AsyncWrite + Unpin),
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    write_head(stream, status, content_type, "").await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

async fn write_unauthorized(stream: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<()> {
    write_head(
        stream,
        "401 Unauthorized",
        "text/html; Charset=utf-8",
        "WWW-authenticate: Basic realm=\"Webmin Server\"\r\n",
    )
    .await?;
    stream.write_all(LOGIN_PAGE_401.as_bytes()).await?;
    stream.shutdown().await
}

/// Streams a valid JSON listing of about `bytes` bytes in 64 KiB pieces,
/// never holding it whole; stops when the client hangs up.
async fn write_huge(stream: &mut (impl AsyncWrite + Unpin), bytes: usize) -> std::io::Result<()> {
    write_head(stream, "200 Document follows", "application/json", "").await?;
    stream.write_all(b"{\"command\":\"list-domains\",\"status\":\"success\",\"data\":[").await?;
    let record = b"{\"name\":\"filler.example\",\"values\":{\"id\":[\"1\"]}},";
    let chunk: Vec<u8> = record.iter().copied().cycle().take(record.len() * 1300).collect();
    let mut sent = 0;
    while sent < bytes {
        stream.write_all(&chunk).await?;
        sent += chunk.len();
    }
    stream.write_all(b"{\"name\":\"last.example\",\"values\":{\"id\":[\"2\"]}}]}\n").await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(number: usize) -> CallRecord {
        CallRecord {
            program: "list-domains".to_owned(),
            argv: vec![format!("--call-{number}")],
            method: "POST".to_owned(),
            used_query_string: false,
            received_at: SystemTime::now(),
        }
    }

    #[test]
    fn the_call_log_keeps_the_most_recent_calls_only() {
        let simulator = Simulator::new(SimulatorConfig::default());
        for number in 0..CALL_LOG_CAPACITY + 3 {
            simulator.state().log_call(record(number));
        }
        let log = simulator.call_log();
        assert_eq!(log.len(), CALL_LOG_CAPACITY);
        assert_eq!(log[0].argv, ["--call-3"], "the three oldest calls were dropped");
        assert_eq!(log[CALL_LOG_CAPACITY - 1].argv, [format!("--call-{}", CALL_LOG_CAPACITY + 2)]);
        simulator.clear_call_log();
        assert!(simulator.call_log().is_empty());
    }
}
