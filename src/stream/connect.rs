//! Connecting to NATS: the seed URLs, the credentials and TLS settings every command shares,
//! and the sentences a refused connection is reported with. Credentials never reach a log
//! line, an error, `/readyz` or `/metrics`: URLs are shown without their user part, secrets
//! are [`Secret`]s, and a refusal names the variable that supplied the credentials instead.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::ConnectErrorKind as Kind;

use super::NatsError;

/// A secret value (password, token): printed as `***` by `Debug`, so no struct holding one
/// can leak it through a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// How this client proves who it is. Each variant remembers the variable that supplied it, so
/// a refusal can say which one to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    Anonymous,
    UserPassword {
        user: String,
        password: Secret,
        source: &'static str,
    },
    Token {
        token: Secret,
        source: &'static str,
    },
    /// An nkey seed (`SU…`) read from `JOBSTATS_NATS_NKEY_SEED_FILE`.
    NkeySeed {
        seed: Secret,
    },
    /// A `.creds` file (user JWT + seed); read again at each connect, so a rotated file is
    /// picked up on the next reconnect.
    CredsFile {
        path: PathBuf,
    },
}

impl NatsAuth {
    /// The variable a refusal of these credentials points at.
    pub fn source(&self) -> Option<&'static str> {
        match self {
            NatsAuth::Anonymous => None,
            NatsAuth::UserPassword { source, .. } | NatsAuth::Token { source, .. } => Some(source),
            NatsAuth::NkeySeed { .. } => Some("JOBSTATS_NATS_NKEY_SEED_FILE"),
            NatsAuth::CredsFile { .. } => Some("JOBSTATS_NATS_CREDS_FILE"),
        }
    }
}

/// TLS towards NATS. Required when any field is set or a URL says `tls://`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// PEM bundle the server's certificate must chain to (instead of the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Everything needed to reach NATS, resolved from flags, environment and files at start-up.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// Seed URLs with any `user:password@` taken out (it is in `auth`).
    urls: Vec<String>,
    pub auth: NatsAuth,
    pub tls: NatsTls,
    /// Why the server last refused this client (credentials, TLS), shared by clones: `serve`
    /// keeps retrying and `/readyz` says the reason. `None` once connected.
    refusal: Arc<Mutex<Option<String>>>,
}

impl NatsSettings {
    /// Anonymous, cleartext unless a URL says `tls://`; a `user:password@` inside a URL is
    /// used as the user and password.
    pub fn from_url(url: &str) -> Result<Self, String> {
        Self::new(url, NatsAuth::Anonymous, NatsTls::default())
    }

    /// The settings for `url` (one URL or comma-separated seeds of one cluster). Credentials
    /// in the URL count as `JOBSTATS_NATS_URL`'s user and password; together with `auth`
    /// they are an error, as are different credentials in different seed URLs.
    pub fn new(url: &str, auth: NatsAuth, tls: NatsTls) -> Result<Self, String> {
        let mut urls = Vec::new();
        let mut in_url: Option<(String, String)> = None;
        for seed in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let (bare, userinfo) = split_userinfo(seed);
            if let Some(userinfo) = userinfo {
                if in_url.as_ref().is_some_and(|known| *known != userinfo) {
                    return Err(
                        "JOBSTATS_NATS_URL: the seed URLs carry different credentials".into(),
                    );
                }
                in_url = Some(userinfo);
            }
            urls.push(bare);
        }
        if urls.is_empty() {
            return Err("JOBSTATS_NATS_URL: no server URL given".into());
        }
        let auth = match (in_url, auth) {
            (None, auth) => auth,
            (Some((user, password)), NatsAuth::Anonymous) => NatsAuth::UserPassword {
                user,
                password: Secret(password),
                source: "JOBSTATS_NATS_URL",
            },
            (Some(_), other) => {
                return Err(format!(
                    "JOBSTATS_NATS_URL carries a user and password and {} is set too: use one",
                    other.source().unwrap_or("another credential")
                ))
            }
        };
        Ok(NatsSettings {
            urls,
            auth,
            tls,
            refusal: Arc::default(),
        })
    }

    /// The seed URLs as they may be shown (no credentials).
    pub fn shown_url(&self) -> String {
        self.urls.join(",")
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Whether the connection must be TLS.
    pub fn tls_required(&self) -> bool {
        self.tls != NatsTls::default() || self.urls.iter().any(|u| u.starts_with("tls://"))
    }

    /// Why the server refuses this client right now (`None`: it does not, or not yet tried).
    pub fn refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The sentence for a failed connection attempt whose kind is `kind` and whose detail
    /// (the client library's error chain, never holding a credential) is `detail`.
    fn explain(&self, kind: async_nats::ConnectErrorKind, detail: &str) -> String {
        use async_nats::ConnectErrorKind as Kind;
        match kind {
            Kind::AuthorizationViolation | Kind::Authentication => match self.auth.source() {
                Some(source) => format!("NATS refused the credentials from {source} ({detail})"),
                None => format!(
                    "NATS requires credentials and none are set: set JOBSTATS_NATS_USER and \
                     JOBSTATS_NATS_PASSWORD, JOBSTATS_NATS_TOKEN, JOBSTATS_NATS_NKEY_SEED_FILE \
                     or JOBSTATS_NATS_CREDS_FILE ({detail})"
                ),
            },
            Kind::Tls => {
                let trusted = match &self.tls.ca_file {
                    Some(_) => "the CA in JOBSTATS_NATS_TLS_CA_FILE",
                    None => "the system's roots (set JOBSTATS_NATS_TLS_CA_FILE for a private CA)",
                };
                format!(
                    "TLS with NATS failed; the server's certificate must chain to {trusted} \
                     ({detail})"
                )
            }
            _ => detail.to_owned(),
        }
    }

    /// Remembers a refusal; true when it is new (so it is logged once, not per retry).
    fn note_refusal(&self, reason: Option<String>) -> bool {
        let mut held = self.refusal.lock().unwrap_or_else(|p| p.into_inner());
        let changed = *held != reason;
        *held = reason;
        changed
    }
}

/// `nats://user:pass@host:4222` → (`nats://host:4222`, Some((user, pass))), percent-decoded.
/// A URL without a user part comes back as it is.
fn split_userinfo(url: &str) -> (String, Option<(String, String)>) {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_owned(), None);
    };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let bare = match scheme {
        Some(scheme) => format!("{scheme}://{host}"),
        None => host.to_owned(),
    };
    (bare, Some((decode(user), decode(password))))
}

/// The error chain of a connect error, for the detail in parentheses. async-nats' errors
/// carry kinds and I/O causes, never the credentials sent.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Connects to NATS. With `wait` false the connection is established in the background and
/// retried forever (the server keeps answering from SQLite meanwhile); a refusal is logged
/// once and kept for `/readyz`. With `wait` true a failure is returned as its sentence.
pub async fn connect(
    settings: &NatsSettings,
    name: &str,
    wait: bool,
) -> Result<async_nats::Client, NatsError> {
    let how = if wait {
        Attempt::OneShot
    } else {
        Attempt::Background
    };
    let client = attempt(settings, name, how).await?;
    if !wait {
        tokio::spawn(diagnose(
            client.clone(),
            settings.clone(),
            format!("{name}-probe"),
        ));
    }
    Ok(client)
}

/// While a background client is not connected, tries a connection of its own now and then:
/// the background client's failed attempts carry only an error kind, and a TLS refusal shows
/// there as a bare "IO error"; this attempt has the whole reason.
async fn diagnose(client: async_nats::Client, settings: NatsSettings, name: String) {
    use async_nats::connection::State;
    loop {
        if client.connection_state() == State::Connected {
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        if let Ok(probe) = attempt(&settings, &name, Attempt::Probe).await {
            drop(probe);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// How a connection is made and who reports its failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// `serve`: returned at once, connected and reconnected in the background.
    Background,
    /// A one-shot command: waits, and prints the returned error itself.
    OneShot,
    /// [`diagnose`]'s own try: logs a new refusal; its own comings and goings are not news.
    Probe,
}

async fn attempt(
    settings: &NatsSettings,
    name: &str,
    how: Attempt,
) -> Result<async_nats::Client, NatsError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((100 * attempt as u64).clamp(100, 2_000))
        });
    if how != Attempt::Probe {
        let watched = settings.clone();
        options = options.event_callback(move |event| {
            let watched = watched.clone();
            async move { on_event(&watched, event) }
        });
    }
    options = with_credentials(options, settings).await?;
    options = match how {
        Attempt::Background => options.retry_on_initial_connect(),
        Attempt::OneShot | Attempt::Probe => options.connection_timeout(Duration::from_secs(5)),
    };
    let result = options.connect(settings.urls.clone()).await;
    result.map_err(|error| {
        let kind = effective_kind(&error);
        let detail = match kind {
            // The same words as a background attempt reports, so a refusal seen both ways
            // is logged once.
            Kind::AuthorizationViolation | Kind::Authentication => kind.to_string(),
            _ => chain(&error),
        };
        let reason = settings.explain(kind, &detail);
        if is_refusal(kind) && settings.note_refusal(Some(reason.clone())) && how == Attempt::Probe
        {
            tracing::error!(url = %settings.shown_url(), "{reason}; retrying");
        }
        NatsError::Connect {
            url: settings.shown_url(),
            reason,
        }
    })
}

/// The error's kind, with an I/O error that is really a TLS failure (the certificate did not
/// verify, the server wants a client certificate) counted as TLS.
fn effective_kind(error: &async_nats::ConnectError) -> Kind {
    let kind = error.kind();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(current) = cause {
        let inner = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if current.is::<rustls::Error>() || inner.is_some_and(|i| i.is::<rustls::Error>()) {
            return Kind::Tls;
        }
        cause = current.source();
    }
    kind
}

/// Failures that retrying with the same settings does not cure (credentials, TLS trust).
fn is_refusal(kind: async_nats::ConnectErrorKind) -> bool {
    use async_nats::ConnectErrorKind as Kind;
    matches!(
        kind,
        Kind::AuthorizationViolation | Kind::Authentication | Kind::Tls
    )
}

fn on_event(settings: &NatsSettings, event: async_nats::Event) {
    use async_nats::{ClientError, ConnectErrorKind as Kind, Event};
    match event {
        Event::Connected => {
            settings.note_refusal(None);
            tracing::info!("connected to NATS");
        }
        Event::Disconnected => tracing::warn!("disconnected from NATS"),
        // A background (re)connect attempt failed; the client only passes the kind's text.
        Event::ClientError(ClientError::Other(kind_text)) => {
            let kind = [
                Kind::AuthorizationViolation,
                Kind::Authentication,
                Kind::Tls,
            ]
            .into_iter()
            .find(|k| k.to_string() == kind_text);
            debug_assert!(kind.is_none_or(is_refusal));
            match kind {
                Some(kind) => {
                    let reason = settings.explain(kind, &kind_text);
                    if settings.note_refusal(Some(reason.clone())) {
                        tracing::error!(url = %settings.shown_url(), "{reason}; retrying");
                    }
                }
                None => tracing::debug!(error = %kind_text, "NATS connect attempt failed"),
            }
        }
        other => tracing::debug!(event = %other, "NATS event"),
    }
}

async fn with_credentials(
    options: async_nats::ConnectOptions,
    settings: &NatsSettings,
) -> Result<async_nats::ConnectOptions, NatsError> {
    let mut options = match &settings.auth {
        NatsAuth::Anonymous => options,
        NatsAuth::UserPassword { user, password, .. } => {
            options.user_and_password(user.clone(), password.expose().to_owned())
        }
        NatsAuth::Token { token, .. } => options.token(token.expose().to_owned()),
        NatsAuth::NkeySeed { seed } => options.nkey(seed.expose().to_owned()),
        NatsAuth::CredsFile { path } => {
            options
                .credentials_file(path)
                .await
                .map_err(|e| NatsError::Connect {
                    url: settings.shown_url(),
                    reason: format!(
                        "JOBSTATS_NATS_CREDS_FILE: cannot use {}: {e}",
                        path.display()
                    ),
                })?
        }
    };
    if let Some(ca) = &settings.tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &settings.tls.client_cert {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if settings.tls_required() {
        options = options.require_tls(true);
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_url_become_the_user_and_password_and_are_never_shown() {
        let settings = NatsSettings::from_url("nats://js:s3cr%40t@127.0.0.1:4222,nats://h2:4222")
            .expect("valid");
        assert_eq!(settings.shown_url(), "nats://127.0.0.1:4222,nats://h2:4222");
        assert_eq!(
            settings.auth,
            NatsAuth::UserPassword {
                user: "js".into(),
                password: Secret::new("s3cr@t"),
                source: "JOBSTATS_NATS_URL"
            }
        );
        assert!(!format!("{settings:?}").contains("s3cr"));
    }

    #[test]
    fn conflicting_credentials_are_refused_at_start() {
        let token = NatsAuth::Token {
            token: Secret::new("t"),
            source: "JOBSTATS_NATS_TOKEN",
        };
        let error = NatsSettings::new("nats://a:b@h:4222", token, NatsTls::default())
            .expect_err("two sources");
        assert!(error.contains("JOBSTATS_NATS_TOKEN"), "{error}");
        let error = NatsSettings::from_url("nats://a:b@h:1,nats://c:d@h:2").expect_err("differ");
        assert!(error.contains("different credentials"), "{error}");
        assert!(!error.contains(":b@") && !error.contains(":d@"), "{error}");
    }

    #[test]
    fn tls_is_required_by_a_tls_url_or_any_tls_setting() {
        assert!(!NatsSettings::from_url("nats://h:4222")
            .unwrap()
            .tls_required());
        assert!(NatsSettings::from_url("tls://h:4222")
            .unwrap()
            .tls_required());
        let tls = NatsTls {
            ca_file: Some("ca.pem".into()),
            client_cert: None,
        };
        let settings = NatsSettings::new("nats://h:4222", NatsAuth::Anonymous, tls).unwrap();
        assert!(settings.tls_required());
    }

    #[test]
    fn a_refusal_names_the_variable_not_the_secret() {
        let settings = NatsSettings::from_url("nats://js:s3cret@h:4222").unwrap();
        let reason = settings.explain(
            async_nats::ConnectErrorKind::AuthorizationViolation,
            "authorization violation",
        );
        assert_eq!(
            reason,
            "NATS refused the credentials from JOBSTATS_NATS_URL (authorization violation)"
        );
        assert!(!reason.contains("s3cret"));
    }
}
