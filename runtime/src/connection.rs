//! How to reach NATS: servers, credentials, TLS and the connection timeout, in one
//! [`NatsConfig`] shared by everything that talks to NATS — a cluster node
//! ([`ClusterConfig`](crate::ClusterConfig)), a cluster client, the JetStream store, a NATS bus
//! and a cluster view. This module is the only place that opens a NATS connection.
//!
//! A plain URL converts into a `NatsConfig`, so code that needs no security passes a string:
//!
//! ```no_run
//! # use aether_runtime::{ClusterConfig, NatsConfig};
//! let open = ClusterConfig::new("nats://127.0.0.1:4222", "bank");
//! let secured = ClusterConfig::new(
//!     NatsConfig::new("tls://nats-1:4222,tls://nats-2:4222")
//!         .credentials_file("/etc/aether/node.creds")
//!         .tls_ca_file("/etc/aether/ca.pem"),
//!     "bank",
//! );
//! ```
//!
//! | setting | environment (binaries, [`NatsConfig::from_env`]) |
//! |---|---|
//! | servers, comma-separated | `AETHER_NATS_URL` |
//! | [`user_password`](NatsConfig::user_password) | `AETHER_NATS_USER`, `AETHER_NATS_PASSWORD` |
//! | [`token`](NatsConfig::token) | `AETHER_NATS_TOKEN` |
//! | [`nkey_seed_file`](NatsConfig::nkey_seed_file) | `AETHER_NATS_NKEY_SEED_FILE` |
//! | [`credentials_file`](NatsConfig::credentials_file) (JWT + NKey, `.creds`) | `AETHER_NATS_CREDS` |
//! | [`require_tls`](NatsConfig::require_tls) | `AETHER_NATS_TLS_REQUIRED` (0/1) |
//! | [`tls_ca_file`](NatsConfig::tls_ca_file) | `AETHER_NATS_TLS_CA` |
//! | [`tls_client_cert`](NatsConfig::tls_client_cert) | `AETHER_NATS_TLS_CERT`, `AETHER_NATS_TLS_KEY` |
//! | [`connect_timeout`](NatsConfig::connect_timeout) (5 s) | `AETHER_CONNECT_TIMEOUT_MS` |
//!
//! One way of authenticating at a time: setting a second one is refused when connecting
//! ([`ConnectError::Invalid`]). Secrets (passwords, tokens) never appear in `Debug` output,
//! logs or errors; credentials written into a URL (`nats://user:pass@host`) are cut from every
//! message that shows the servers.
//!
//! Wrong credentials and untrusted certificates fail at once with
//! [`ConnectError::Auth`] or [`ConnectError::Tls`]: unlike an unreachable server, retrying will
//! not help.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{ConfigError, InvalidConfig, duration};

/// The default [`NatsConfig::connect_timeout`].
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A secret string: shown as `***` by `Debug`, never logged.
#[derive(Clone, PartialEq, Eq)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// How this connection proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    User { user: String, password: Secret },
    Token(Secret),
    NKeySeedFile(PathBuf),
    CredentialsFile(PathBuf),
}

impl Auth {
    /// For `Debug`: secrets hidden, and a seed given instead of a path not echoed.
    fn shown(&self) -> Auth {
        match self {
            Auth::NKeySeedFile(path) => Auth::NKeySeedFile(shown_path(path)),
            Auth::CredentialsFile(path) => Auth::CredentialsFile(shown_path(path)),
            other => other.clone(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Auth::User { .. } => "user_password",
            Auth::Token(_) => "token",
            Auth::NKeySeedFile(_) => "nkey_seed_file",
            Auth::CredentialsFile(_) => "credentials_file",
        }
    }
}

/// How to reach NATS: servers, credentials, TLS and the connection timeout. See the
/// [module docs](self).
#[derive(Clone, PartialEq, Eq)]
pub struct NatsConfig {
    servers: String,
    auth: Option<Auth>,
    /// A second way of authenticating, refused at connect.
    auth_conflict: Option<(&'static str, &'static str)>,
    require_tls: bool,
    tls_ca: Option<PathBuf>,
    tls_client: Option<(PathBuf, PathBuf)>,
    pub(crate) connect_timeout: Duration,
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("servers", &redact_urls(&self.servers))
            .field("auth", &self.auth.as_ref().map(Auth::shown))
            .field("require_tls", &self.require_tls)
            .field("tls_ca", &self.tls_ca)
            .field("tls_client", &self.tls_client)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl From<&str> for NatsConfig {
    fn from(urls: &str) -> Self {
        NatsConfig::new(urls)
    }
}

impl From<String> for NatsConfig {
    fn from(urls: String) -> Self {
        NatsConfig::new(urls)
    }
}

impl From<&String> for NatsConfig {
    fn from(urls: &String) -> Self {
        NatsConfig::new(urls.as_str())
    }
}

impl NatsConfig {
    /// The NATS servers at `urls` (comma-separated). Credentials written into a URL
    /// (`nats://user:password@host`, `nats://token@host`) are taken out of it and used as
    /// [`user_password`](Self::user_password) or [`token`](Self::token): the connection
    /// never sees them in a URL, so no URL it logs carries a secret.
    pub fn new(urls: impl Into<String>) -> Self {
        let mut config = NatsConfig {
            servers: String::new(),
            auth: None,
            auth_conflict: None,
            require_tls: false,
            tls_ca: None,
            tls_client: None,
            connect_timeout: CONNECT_TIMEOUT,
        };
        let mut servers = Vec::new();
        for url in urls
            .into()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            let (scheme, rest) = match url.split_once("://") {
                Some((scheme, rest)) => (format!("{scheme}://"), rest),
                None => (String::new(), url),
            };
            match rest.rsplit_once('@') {
                Some((userinfo, host)) => {
                    servers.push(format!("{scheme}{host}"));
                    config = match userinfo.split_once(':') {
                        Some((user, password)) => config.user_password(user, password),
                        None => config.token(userinfo),
                    };
                }
                None => servers.push(url.to_owned()),
            }
        }
        config.servers = servers.join(",");
        config
    }

    fn authenticate(mut self, auth: Auth) -> Self {
        if let Some(earlier) = &self.auth
            && earlier.name() != auth.name()
            && self.auth_conflict.is_none()
        {
            self.auth_conflict = Some((earlier.name(), auth.name()));
        }
        self.auth = Some(auth);
        self
    }

    /// Authenticates with a user name and password.
    pub fn user_password(self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.authenticate(Auth::User {
            user: user.into(),
            password: Secret(password.into()),
        })
    }

    /// Authenticates with a token.
    pub fn token(self, token: impl Into<String>) -> Self {
        self.authenticate(Auth::Token(Secret(token.into())))
    }

    /// Authenticates as an NKey user whose seed (`SU...`) is in the file at `path`.
    pub fn nkey_seed_file(self, path: impl Into<PathBuf>) -> Self {
        self.authenticate(Auth::NKeySeedFile(path.into()))
    }

    /// Authenticates with a `.creds` file (a user JWT and its NKey seed), as issued by an
    /// operator-managed or hosted NATS.
    pub fn credentials_file(self, path: impl Into<PathBuf>) -> Self {
        self.authenticate(Auth::CredentialsFile(path.into()))
    }

    /// Refuses to talk to a server that does not offer TLS (a `tls://` URL requires it too).
    pub fn require_tls(mut self, required: bool) -> Self {
        self.require_tls = required;
        self
    }

    /// Trusts the certificate authorities in the PEM file at `path` (a private CA), besides
    /// the system's.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(path.into());
        self
    }

    /// Presents the client certificate `cert` (PEM) with its private key `key` (PEM), for
    /// servers that verify clients.
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_client = Some((cert.into(), key.into()));
        self
    }

    /// How long one attempt to connect, and one request on the connection, may take
    /// (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The servers, comma-separated, with any credentials written into them cut out.
    pub fn servers(&self) -> String {
        redact_urls(&self.servers)
    }

    /// The configuration from the `AETHER_NATS_*` variables of the [module table](self);
    /// `AETHER_NATS_URL` is required.
    pub fn from_env() -> Result<Self, ConfigError> {
        let get = |name: &str| std::env::var(name).ok();
        let urls = get("AETHER_NATS_URL")
            .filter(|v| !v.trim().is_empty())
            .ok_or(ConfigError {
                name: "AETHER_NATS_URL",
                value: String::new(),
                expected: "NATS URL (the variable is required)",
            })?;
        NatsConfig::new(urls).overridden_by(get)
    }

    /// Applies every variable of the [module table](self) except `AETHER_NATS_URL`: the
    /// credentials, TLS and timeout of the environment, on servers chosen otherwise (a tool's
    /// `--server` flag).
    pub fn with_env_settings(self) -> Result<Self, ConfigError> {
        self.overridden_by(|name| {
            (name != "AETHER_NATS_URL")
                .then(|| std::env::var(name).ok())
                .flatten()
        })
    }

    /// Applies the `AETHER_NATS_*` variables (and `AETHER_CONNECT_TIMEOUT_MS`) that `get` finds.
    pub(crate) fn overridden_by(
        mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let get = |n: &str| get(n).filter(|v| !v.trim().is_empty());
        if let Some(urls) = get("AETHER_NATS_URL") {
            self.servers = urls;
        }
        match (get("AETHER_NATS_USER"), get("AETHER_NATS_PASSWORD")) {
            (Some(user), Some(password)) => self = self.user_password(user, password),
            (None, None) => {}
            (Some(_), None) => {
                return Err(ConfigError {
                    name: "AETHER_NATS_PASSWORD",
                    value: String::new(),
                    expected: "password (AETHER_NATS_USER is set)",
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError {
                    name: "AETHER_NATS_USER",
                    value: String::new(),
                    expected: "user name (AETHER_NATS_PASSWORD is set)",
                });
            }
        }
        if let Some(token) = get("AETHER_NATS_TOKEN") {
            self = self.token(token);
        }
        if let Some(path) = get("AETHER_NATS_NKEY_SEED_FILE") {
            self = self.nkey_seed_file(path);
        }
        if let Some(path) = get("AETHER_NATS_CREDS") {
            self = self.credentials_file(path);
        }
        if let Some(value) = get("AETHER_NATS_TLS_REQUIRED") {
            self.require_tls = match value.trim() {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => {
                    return Err(ConfigError {
                        name: "AETHER_NATS_TLS_REQUIRED",
                        value,
                        expected: "0 or 1",
                    });
                }
            };
        }
        if let Some(path) = get("AETHER_NATS_TLS_CA") {
            self.tls_ca = Some(path.into());
        }
        match (get("AETHER_NATS_TLS_CERT"), get("AETHER_NATS_TLS_KEY")) {
            (Some(cert), Some(key)) => self.tls_client = Some((cert.into(), key.into())),
            (None, None) => {}
            (cert, _) => {
                return Err(ConfigError {
                    name: if cert.is_some() {
                        "AETHER_NATS_TLS_KEY"
                    } else {
                        "AETHER_NATS_TLS_CERT"
                    },
                    value: String::new(),
                    expected: "path (a client certificate needs both the certificate and its key)",
                });
            }
        }
        if let Some(value) = get("AETHER_CONNECT_TIMEOUT_MS") {
            let ms = value.trim().parse::<u64>().map_err(|_| ConfigError {
                name: "AETHER_CONNECT_TIMEOUT_MS",
                value: value.clone(),
                expected: "number of milliseconds",
            })?;
            self.connect_timeout = Duration::from_millis(ms);
        }
        Ok(self)
    }

    /// Checks the settings that can be checked without connecting.
    pub(crate) fn validate(&self) -> Result<(), InvalidConfig> {
        if self.server_list().is_empty() {
            return Err(InvalidConfig::new(
                "urls",
                redact_urls(&self.servers),
                "at least one NATS URL",
            ));
        }
        duration("connect_timeout", self.connect_timeout)?;
        Ok(())
    }

    fn server_list(&self) -> Vec<&str> {
        self.servers
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// Connects once, as `name`, with requests timing out after `request_timeout`.
    pub(crate) async fn connect_once(
        &self,
        name: &str,
        request_timeout: Duration,
    ) -> Result<async_nats::Client, ConnectError> {
        self.open(name, request_timeout, None).await
    }

    /// [`NatsConfig::connect_once`], reporting every loss and recovery of the connection to
    /// `link` when given.
    async fn open(
        &self,
        name: &str,
        request_timeout: Duration,
        link: Option<&Link>,
    ) -> Result<async_nats::Client, ConnectError> {
        if let Some((first, second)) = self.auth_conflict {
            return Err(ConnectError::Invalid {
                reason: format!("two ways of authenticating: {first} and {second}; choose one"),
            });
        }
        self.validate().map_err(|e| ConnectError::Invalid {
            reason: e.to_string(),
        })?;
        let servers = self.server_list();
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(self.connect_timeout)
            .request_timeout(Some(request_timeout))
            .require_tls(self.require_tls)
            .event_callback({
                let link = link.cloned();
                move |event| {
                    // Noted as the event is delivered, ahead of the logging below.
                    if let Some(link) = &link {
                        link.note(&event);
                    }
                    async move {
                        // After the first connection the client reconnects on its own; say why
                        // it cannot (refused credentials after a rotation, an expired
                        // certificate).
                        use async_nats::Event;
                        match event {
                            Event::ClientError(e) => {
                                tracing::warn!(error = %e, "NATS client error")
                            }
                            Event::ServerError(e) => {
                                tracing::warn!(error = %e, "NATS server error")
                            }
                            Event::Disconnected => tracing::info!("disconnected from NATS"),
                            Event::Connected => tracing::info!("connected to NATS"),
                            other => tracing::debug!(event = %other, "NATS connection event"),
                        }
                    }
                }
            });
        match &self.auth {
            None => {}
            Some(Auth::User { user, password }) => {
                options = options.user_and_password(user.clone(), password.0.clone());
            }
            Some(Auth::Token(token)) => options = options.token(token.0.clone()),
            Some(Auth::NKeySeedFile(path)) => {
                let seed = read("NKey seed file", path)?;
                options = options.nkey(seed.trim().to_owned());
            }
            Some(Auth::CredentialsFile(path)) => {
                let creds = read("credentials file", path)?;
                options = options
                    .credentials(&creds)
                    .map_err(|e| ConnectError::File {
                        what: "credentials file",
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
            }
        }
        if let Some(ca) = &self.tls_ca {
            readable("TLS CA file", ca)?;
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls_client {
            readable("TLS client certificate", cert)?;
            readable("TLS client key", key)?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        options
            .connect(servers.as_slice())
            .await
            .map_err(|e| ConnectError::from_nats(&self.servers, &e))
    }

    /// Connects, trying again until `patience` has passed while no server accepts connections
    /// (a node may start before its servers do). Refused credentials, a failed TLS handshake
    /// and unreadable files fail at once: retrying would not help.
    ///
    /// Every loss and recovery of the connection afterwards is reported to `link`.
    pub(crate) async fn connect(
        &self,
        name: &str,
        request_timeout: Duration,
        patience: Duration,
        link: &Link,
    ) -> Result<async_nats::Client, ConnectError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.open(name, request_timeout, Some(link)).await {
                Ok(client) => return Ok(client),
                Err(e @ ConnectError::Unreachable { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(error = %e, "NATS not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The state of one client's connection, as its events report it: how many times it was lost,
/// and since when it is up. A cluster node fences itself on every loss (its actors may be
/// given away while it cannot be heard), and trusts what the server says of *other*
/// connections only for nodes it heard since its own came up (see `cluster/liveness.rs`).
#[derive(Debug, Clone)]
pub(crate) struct Link(Arc<watch::Sender<LinkState>>);

/// See [`Link`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkState {
    /// Connections lost so far.
    pub losses: u64,
    /// When the current connection came up; `None` while disconnected.
    pub up_since: Option<Instant>,
}

impl Link {
    /// A link that is up from now (it is made just before the first connection).
    pub(crate) fn new() -> Link {
        Link(Arc::new(
            watch::channel(LinkState {
                losses: 0,
                up_since: Some(Instant::now()),
            })
            .0,
        ))
    }

    fn note(&self, event: &async_nats::Event) {
        match event {
            async_nats::Event::Disconnected | async_nats::Event::Closed => {
                self.0.send_modify(|s| {
                    s.losses += 1;
                    s.up_since = None;
                })
            }
            async_nats::Event::Connected => self.0.send_modify(|s| {
                s.up_since.get_or_insert_with(Instant::now);
            }),
            _ => {}
        }
    }

    /// The state now.
    pub(crate) fn state(&self) -> LinkState {
        *self.0.borrow()
    }

    /// Wakes on every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.0.subscribe()
    }
}

impl Default for Link {
    fn default() -> Self {
        Link::new()
    }
}

fn readable(what: &'static str, path: &Path) -> Result<(), ConnectError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| unreadable(what, path, e))
}

fn read(what: &'static str, path: &Path) -> Result<String, ConnectError> {
    std::fs::read_to_string(path).map_err(|e| unreadable(what, path, e))
}

fn unreadable(what: &'static str, path: &Path, e: std::io::Error) -> ConnectError {
    ConnectError::File {
        what,
        path: shown_path(path),
        reason: e.to_string(),
    }
}

/// `path` as it may be shown: an NKey seed given where a path belongs (a common mistake with
/// `AETHER_NATS_NKEY_SEED_FILE`) is not echoed.
fn shown_path(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    let looks_like_seed = text.len() >= 50
        && text.starts_with('S')
        && text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if looks_like_seed {
        PathBuf::from("<a value that looks like an NKey seed, not a path>")
    } else {
        path.to_owned()
    }
}

/// `urls` with any `user:password@` (or `token@`) cut out of each URL.
pub(crate) fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            let (scheme, rest) = match url.split_once("://") {
                Some((scheme, rest)) => (Some(scheme), rest),
                None => (None, url),
            };
            let rest = match rest.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => rest.to_owned(),
            };
            match scheme {
                Some(scheme) => format!("{scheme}://{rest}"),
                None => rest,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Why a NATS connection could not be made. The message names the servers (without
/// credentials) and the problem; it never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// No server answered in time (or the address does not resolve). Retrying may help.
    #[error("NATS at {servers} is not reachable: {reason}")]
    Unreachable {
        /// The servers, without credentials.
        servers: String,
        /// Why.
        reason: String,
    },
    /// The server refused the credentials (wrong or missing user, password, token, NKey or
    /// JWT), or they could not be used.
    #[error("NATS at {servers} refused the credentials: {reason}")]
    Auth {
        /// The servers, without credentials.
        servers: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed: an untrusted or expired server certificate, a client
    /// certificate the server does not accept, TLS required by one side only.
    #[error("TLS with NATS at {servers} failed: {reason}")]
    Tls {
        /// The servers, without credentials.
        servers: String,
        /// Why.
        reason: String,
    },
    /// A credentials, key or certificate file could not be read.
    #[error("cannot read the {what} {path:?}: {reason}")]
    File {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The configuration contradicts itself (two ways of authenticating, no server).
    #[error("invalid NATS configuration: {reason}")]
    Invalid {
        /// Why.
        reason: String,
    },
}

impl ConnectError {
    fn from_nats(urls: &str, e: &async_nats::ConnectError) -> Self {
        use async_nats::ConnectErrorKind as Kind;
        let servers = redact_urls(urls);
        let reason = redact_urls(&e.to_string());
        match e.kind() {
            Kind::Authentication | Kind::AuthorizationViolation => {
                ConnectError::Auth { servers, reason }
            }
            Kind::Tls => ConnectError::Tls { servers, reason },
            Kind::Io => match io_cause(e) {
                Cause::Tls => ConnectError::Tls { servers, reason },
                Cause::Auth => ConnectError::Auth { servers, reason },
                Cause::Other => ConnectError::Unreachable { servers, reason },
            },
            Kind::ServerParse => ConnectError::Invalid {
                reason: format!("cannot parse the NATS URLs {servers}: {reason}"),
            },
            Kind::Dns | Kind::TimedOut | Kind::MaxReconnects => {
                ConnectError::Unreachable { servers, reason }
            }
        }
    }
}

/// What an I/O-kind connection error really is.
enum Cause {
    /// rustls refused the handshake (an unknown issuer, an expired or mismatched certificate,
    /// a TLS alert from the server, a server that does not speak TLS): a configuration problem.
    Tls,
    /// The server refused the credentials after accepting them once (expired or revoked).
    Auth,
    /// Anything else (a connection reset or closed mid-handshake, a server restarting):
    /// retrying may help.
    Other,
}

fn io_cause(e: &async_nats::ConnectError) -> Cause {
    use std::error::Error;
    let Some(source) = e.source() else {
        return Cause::Other;
    };
    if let Some(server) = source.downcast_ref::<async_nats::ServerError>() {
        let text = server.to_string().to_ascii_lowercase();
        return if text.contains("authorization") || text.contains("authentication") {
            Cause::Auth
        } else {
            Cause::Other
        };
    }
    let rustls_error = source
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<async_nats::rustls::Error>());
    match rustls_error {
        Some(async_nats::rustls::Error::General(_)) | None => Cause::Other,
        Some(_) => Cause::Tls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_and_server_lists() {
        let config = NatsConfig::new("nats://alice:hunter2@127.0.0.1:4222, nats://tok3n@h:1")
            .user_password("bob", "correct-horse");
        let shown = format!("{config:?} {}", config.servers());
        for secret in ["hunter2", "correct-horse", "tok3n"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("127.0.0.1:4222") && shown.contains("bob"),
            "{shown}"
        );
        let token = format!("{:?}", NatsConfig::new("h").token("s3cr3t"));
        assert!(!token.contains("s3cr3t"), "{token}");
    }

    #[test]
    fn credentials_in_urls_are_taken_out_and_used() {
        let config = NatsConfig::new("nats://u:p4ss@h:1, tls://h2:2");
        assert_eq!(config.servers, "nats://h:1,tls://h2:2");
        assert_eq!(
            config,
            NatsConfig::new("nats://h:1,tls://h2:2").user_password("u", "p4ss")
        );
        let token = NatsConfig::new("t0ken@127.0.0.1:4222");
        assert_eq!(token, NatsConfig::new("127.0.0.1:4222").token("t0ken"));
    }

    #[test]
    fn a_seed_given_as_a_path_is_not_echoed() {
        let seed = "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4";
        let config = NatsConfig::new("h").nkey_seed_file(seed);
        assert!(!format!("{config:?}").contains(seed));
        let shown = unreadable(
            "NKey seed file",
            Path::new(seed),
            std::io::Error::other("x"),
        );
        assert!(!shown.to_string().contains(seed), "{shown}");
    }

    #[test]
    fn the_environment_sets_every_field_and_refuses_half_pairs() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let config = NatsConfig::new("nats://a:1")
            .overridden_by(vars(&[
                ("AETHER_NATS_URL", "tls://b:2"),
                ("AETHER_NATS_CREDS", "/x.creds"),
                ("AETHER_NATS_TLS_REQUIRED", "1"),
                ("AETHER_NATS_TLS_CA", "/ca.pem"),
                ("AETHER_NATS_TLS_CERT", "/c.pem"),
                ("AETHER_NATS_TLS_KEY", "/k.pem"),
                ("AETHER_CONNECT_TIMEOUT_MS", "1500"),
            ]))
            .expect("parses");
        assert_eq!(
            config,
            NatsConfig::new("tls://b:2")
                .credentials_file("/x.creds")
                .require_tls(true)
                .tls_ca_file("/ca.pem")
                .tls_client_cert("/c.pem", "/k.pem")
                .connect_timeout(Duration::from_millis(1500))
        );
        let half = NatsConfig::new("h").overridden_by(vars(&[("AETHER_NATS_USER", "u")]));
        assert_eq!(half.expect_err("refused").name, "AETHER_NATS_PASSWORD");
        let half = NatsConfig::new("h").overridden_by(vars(&[("AETHER_NATS_TLS_KEY", "/k")]));
        assert_eq!(half.expect_err("refused").name, "AETHER_NATS_TLS_CERT");
    }

    #[tokio::test]
    async fn two_ways_of_authenticating_are_refused_before_connecting() {
        let config = NatsConfig::new("nats://127.0.0.1:1")
            .token("t")
            .user_password("u", "p");
        match config.connect_once("test", CONNECT_TIMEOUT).await {
            Err(ConnectError::Invalid { reason }) => {
                assert!(reason.contains("token and user_password"), "{reason}")
            }
            other => panic!("expected Invalid, got {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn an_unreadable_key_file_is_named() {
        let config = NatsConfig::new("nats://127.0.0.1:1").nkey_seed_file("/nonexistent/seed");
        match config.connect_once("test", CONNECT_TIMEOUT).await {
            Err(ConnectError::File { what, path, .. }) => {
                assert_eq!(what, "NKey seed file");
                assert_eq!(path, Path::new("/nonexistent/seed"));
            }
            other => panic!("expected File, got {:?}", other.map(|_| ())),
        }
    }
}
