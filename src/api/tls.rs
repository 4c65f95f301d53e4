//! HTTPS on the API and admin listeners: rustls (TLS 1.2 and 1.3, HTTP/2 by ALPN) over the
//! connection limiter, with a certificate that is re-read when its files change or on SIGHUP.
//! A reload swaps the key the next handshake gets; connections already open keep theirs.
//!
//! poem's own `RustlsListener` would do the handshake too, but it installs aws-lc-rs as the
//! process's crypto provider, a second provider beside the ring one async-nats and reqwest
//! use (a C build, and `ClientConfig::builder()` then no longer knows which to pick).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How often the certificate files are checked for a change.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// `JOBSTATS_TLS_CERT_FILE` and `JOBSTATS_TLS_KEY_FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("JOBSTATS_TLS_CERT_FILE {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("JOBSTATS_TLS_KEY_FILE {path}: {reason}")]
    Key { path: String, reason: String },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_error = |reason: String| TlsError::Cert {
        path: files.cert.display().to_string(),
        reason,
    };
    let key_error = |reason: String| TlsError::Key {
        path: files.key.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("holds no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| key_error(e.to_string()))?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| key_error(format!("does not go with the certificate: {e}")))
}

/// The certificate handshakes get, replaced in place when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times when last loaded.
    loaded: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ReloadingCert {
    /// Loads the files; an error here stops start-up.
    pub fn load(files: &TlsFiles) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let stamps = (modified(&files.cert), modified(&files.key));
        let key = load(files, &provider)?;
        Ok(Arc::new(ReloadingCert {
            files: files.clone(),
            provider,
            current: RwLock::new(Arc::new(key)),
            loaded: RwLock::new(stamps),
        }))
    }

    /// Re-reads the files when they changed (or always, with `force`). A bad pair is logged
    /// and the certificate in use stays.
    pub fn reload(&self, force: bool) {
        let stamps = (modified(&self.files.cert), modified(&self.files.key));
        let unchanged = *self.loaded.read().unwrap_or_else(|p| p.into_inner()) == stamps;
        if unchanged && !force {
            return;
        }
        match load(&self.files, &self.provider) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
                *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = stamps;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate loaded");
            }
            // Half-written files (the key replaced before the certificate) are retried at
            // the next check, since their times are not recorded as loaded.
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate not reloaded; keeping the one in use")
            }
        }
    }

    /// The server configuration handshakes use: TLS 1.2+, `h2` then `http/1.1` by ALPN.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&versions)
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Checks the files every second and on SIGHUP, until the process ends.
    pub async fn watch(self: Arc<Self>) {
        let mut hangups =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = hangup => self.reload(true),
                _ = tokio::time::sleep(CHECK_EVERY) => self.reload(false),
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// Wraps an acceptor's connections in TLS. The handshake runs on the connection's own task
/// (in [`TlsIo`]'s first read or write), so a slow client never holds up `accept`.
pub struct TlsAcceptor<A> {
    inner: A,
    tls: tokio_rustls::TlsAcceptor,
}

impl<A> TlsAcceptor<A> {
    pub fn new(inner: A, config: Arc<rustls::ServerConfig>) -> Self {
        TlsAcceptor {
            inner,
            tls: tokio_rustls::TlsAcceptor::from(config),
        }
    }
}

impl<A: Acceptor> Acceptor for TlsAcceptor<A> {
    type Io = TlsIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(
        &mut self,
    ) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        let (io, local, remote, _) = self.inner.accept().await?;
        let io = TlsIo::Handshaking(Box::new(self.tls.accept(io)));
        Ok((io, local, remote, poem::http::uri::Scheme::HTTPS))
    }
}

/// A connection during and after its TLS handshake.
pub enum TlsIo<Io> {
    Handshaking(Box<tokio_rustls::Accept<Io>>),
    Ready(Box<tokio_rustls::server::TlsStream<Io>>),
    Failed,
}

impl<Io: AsyncRead + AsyncWrite + Unpin> TlsIo<Io> {
    /// Drives the handshake; `Ready(Ok)` once the stream can carry data.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self {
                TlsIo::Ready(_) => return Poll::Ready(Ok(())),
                TlsIo::Failed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "TLS handshake failed",
                    )))
                }
                TlsIo::Handshaking(accept) => match Pin::new(accept.as_mut()).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(stream)) => *self = TlsIo::Ready(Box::new(stream)),
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        *self = TlsIo::Failed;
                        return Poll::Ready(Err(e));
                    }
                },
            }
        }
    }

    fn stream(&mut self) -> Pin<&mut tokio_rustls::server::TlsStream<Io>> {
        match self {
            TlsIo::Ready(stream) => Pin::new(stream.as_mut()),
            _ => unreachable!("polled only after the handshake"),
        }
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsIo<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.poll_handshake(cx) {
            Poll::Ready(Ok(())) => self.stream().poll_read(cx, buf),
            other => other,
        }
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsIo<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.poll_handshake(cx) {
            Poll::Ready(Ok(())) => self.stream().poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_handshake(cx) {
            Poll::Ready(Ok(())) => self.stream().poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_handshake(cx) {
            Poll::Ready(Ok(())) => self.stream().poll_shutdown(cx),
            other => other,
        }
    }
}
