//! TLS to the server, with rustls (the `ring` provider; no OpenSSL).
//!
//! The connection string's `sslmode` and `sslrootcert` are read here (the
//! driver's parser knows neither `verify-ca`, `verify-full` nor
//! `sslrootcert`) and taken out of it before the driver parses the rest:
//!
//! | `sslmode` | TLS | the server's certificate |
//! | --- | --- | --- |
//! | absent or `disable` | never | - |
//! | `prefer` | if the server offers it | not checked |
//! | `require` | always | not checked; checked as `verify-ca` when `sslrootcert` is given (as libpq does) |
//! | `verify-ca` | always | signed by a trusted CA |
//! | `verify-full` | always | signed by a trusted CA and issued for the host name |
//!
//! The trusted CAs are those of `sslrootcert=FILE` (PEM), else (or with
//! `sslrootcert=system`) the system's root certificates.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use outbox_core::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Config;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// What the connection string asks of TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// No TLS (also when `sslmode` is absent).
    Disable,
    /// TLS if the server offers it, its certificate not checked.
    Prefer,
    /// TLS, its certificate not checked.
    Require,
    /// TLS, the certificate signed by a trusted CA.
    VerifyCa,
    /// TLS, the certificate signed by a trusted CA, for the host name.
    VerifyFull,
}

impl Mode {
    fn parse(value: &str) -> Result<Mode> {
        Ok(match value {
            "disable" => Mode::Disable,
            "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => {
                return Err(Error::invalid_input(format!(
                    "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
                )));
            }
        })
    }
}

/// The TLS settings taken out of a connection string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `sslmode`, if given.
    pub(crate) mode: Option<String>,
    /// `sslrootcert`, if given.
    pub(crate) root_cert: Option<String>,
}

/// Parses `url` (a libpq connection string or a `postgresql://` URL) into
/// the driver's configuration, its TLS mode set, and the connector that
/// does the TLS it asks for.
pub(crate) fn parse(url: &str) -> Result<(Config, MakeTls)> {
    let (rest, settings) = split(url)?;
    let mut config = Config::from_str(&rest)
        .map_err(|e| Error::invalid_input(format!("not a PostgreSQL connection string: {e}")))?;
    let mode = settings.mode.as_deref().map_or(Ok(Mode::Disable), Mode::parse)?;
    // libpq: a CA file given with `require` is checked as `verify-ca`.
    let mode = if mode == Mode::Require && settings.root_cert.is_some() { Mode::VerifyCa } else { mode };
    config.ssl_mode(match mode {
        Mode::Disable => SslMode::Disable,
        Mode::Prefer => SslMode::Prefer,
        Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
    });
    let tls = match mode {
        Mode::Disable => MakeTls { config: None },
        Mode::Prefer | Mode::Require => MakeTls::new(Verify::Nothing)?,
        Mode::VerifyCa => MakeTls::new(Verify::Ca(roots(settings.root_cert.as_deref())?))?,
        Mode::VerifyFull => MakeTls::new(Verify::Full(roots(settings.root_cert.as_deref())?))?,
    };
    Ok((config, tls))
}

/// Takes `sslmode` and `sslrootcert` out of `url`: the rest of the
/// connection string, and the two values.
pub(crate) fn split(url: &str) -> Result<(String, Settings)> {
    let mut settings = Settings::default();
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            settings.mode = Some(value);
            true
        }
        "sslrootcert" => {
            settings.root_cert = Some(value);
            true
        }
        _ => false,
    };
    let rest =
        if let Some(tail) = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")) {
            let head = &url[..url.len() - tail.len()];
            match tail.split_once('?') {
                None => url.to_owned(),
                Some((before, query)) => {
                    let mut kept = Vec::new();
                    for pair in query.split('&').filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        if !take(&percent_decode(k)?, percent_decode(v)?) {
                            kept.push(pair);
                        }
                    }
                    if kept.is_empty() {
                        format!("{head}{before}")
                    } else {
                        format!("{head}{before}?{}", kept.join("&"))
                    }
                }
            }
        } else {
            let mut kept = Vec::new();
            for (k, v) in key_values(url)? {
                if !take(&k, v.clone()) {
                    kept.push(format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")));
                }
            }
            kept.join(" ")
        };
    Ok((rest, settings))
}

/// The `key=value` pairs of a libpq key-value connection string, parsed
/// as the driver parses them (values unquoted or single-quoted, with
/// backslash escapes).
fn key_values(s: &str) -> Result<Vec<(String, String)>> {
    let bad = |why: &str| Error::invalid_input(format!("not a PostgreSQL connection string: {why}"));
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c.is_whitespace() || c == '=' {
                break;
            }
            key.push(c);
            it.next();
        }
        if key.is_empty() {
            if it.peek().is_some() {
                return Err(bad("a parameter without a name"));
            }
            return Ok(out);
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.next() != Some('=') {
            return Err(bad(&format!("`{key}` has no `=`")));
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut value = String::new();
        if it.peek() == Some(&'\'') {
            it.next();
            loop {
                match it.next() {
                    None => return Err(bad("an unterminated quoted value")),
                    Some('\'') => break,
                    Some('\\') => value.extend(it.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                it.next();
                if c == '\\' {
                    value.extend(it.next());
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(bad(&format!("`{key}` has no value")));
            }
        }
        out.push((key, value));
    }
}

/// `%XX` sequences decoded (a URL query's key or value).
fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                return Err(Error::invalid_input(format!("a bad %-escape in the URL: {s}")));
            };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::invalid_input(format!("a URL parameter that is not UTF-8: {s}")))
}

/// The trusted CAs: those of the PEM file `file`, else (or for `system`)
/// the system's.
fn roots(file: Option<&str>) -> Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    match file {
        Some(path) if path != "system" => {
            let path = Path::new(path);
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| bad_root_file(path, &e.to_string()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad_root_file(path, "no certificate in it"));
            }
        }
        _ => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(Error::invalid_input(
                    "sslmode verify-ca or verify-full: no system root certificate found; \
                     give the CA with sslrootcert=FILE",
                ));
            }
        }
    }
    Ok(Arc::new(store))
}

fn bad_root_file(path: &Path, why: &str) -> Error {
    Error::invalid_input(format!("sslrootcert={}: {why}", PathBuf::from(path).display()))
}

/// How the server's certificate is checked.
enum Verify {
    Nothing,
    Ca(Arc<RootCertStore>),
    Full(Arc<RootCertStore>),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes the TLS connections of one store (every connection: the pool's,
/// the listener's and the notifier's).
#[derive(Clone)]
pub(crate) struct MakeTls {
    /// `None` with `sslmode` `disable` (the driver never asks for TLS).
    config: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for MakeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeTls").field("tls", &self.config.is_some()).finish()
    }
}

impl MakeTls {
    fn new(verify: Verify) -> Result<Self> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::invalid_input(format!("TLS: {e}")))?;
        let config = match verify {
            Verify::Full(roots) => {
                let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| Error::invalid_input(format!("TLS: {e}")))?;
                builder.with_webpki_verifier(verifier).with_no_client_auth()
            }
            Verify::Ca(roots) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient {
                    roots: Some(roots),
                    algs: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth(),
            Verify::Nothing => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient {
                    roots: None,
                    algs: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth(),
        };
        Ok(MakeTls { config: Some(Arc::new(config)) })
    }
}

/// `verify-ca` (with `roots`: the chain is checked, the host name is not)
/// and `require` / `prefer` (without: encryption only, any certificate).
/// Either way the handshake's signatures are checked.
#[derive(Debug)]
struct Lenient {
    roots: Option<Arc<RootCertStore>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, self.algs.all)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A TLS handshake that failed.
#[derive(Debug)]
pub(crate) enum TlsError {
    /// The host name cannot be checked against a certificate (not a DNS
    /// name or IP address, e.g. a Unix socket's directory).
    Name(String),
    /// rustls refused the handshake: the server's certificate (unknown
    /// issuer, another host name, expired), or the protocol.
    Refused(rustls::Error),
    /// The connection failed during the handshake.
    Io(io::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Name(host) => {
                write!(f, "TLS: `{host}` is not a host name a certificate can be checked for")
            }
            TlsError::Refused(e) => write!(f, "TLS handshake refused: {e}"),
            TlsError::Io(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

impl StdError for TlsError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            TlsError::Name(_) => None,
            TlsError::Refused(e) => Some(e),
            TlsError::Io(e) => Some(e),
        }
    }
}

impl TlsError {
    fn from_io(e: io::Error) -> Self {
        match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(r) => TlsError::Refused(r.clone()),
            None => TlsError::Io(e),
        }
    }

    /// Whether the same connection string will fail the same way again:
    /// the server's certificate is refused (`Some(true)`), or the host
    /// name or the server's TLS cannot work with ours (`Some(false)`);
    /// `None`: a transient failure (the connection broke).
    pub(crate) fn refusal(&self) -> Option<bool> {
        match self {
            TlsError::Name(_) => Some(false),
            TlsError::Refused(
                rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::UnsupportedNameType
                | rustls::Error::InvalidCertRevocationList(_),
            ) => Some(true),
            TlsError::Refused(rustls::Error::PeerIncompatible(_)) => Some(false),
            TlsError::Refused(_) | TlsError::Io(_) => None,
        }
    }
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = TlsError;

    fn make_tls_connect(&mut self, domain: &str) -> std::result::Result<Connect, TlsError> {
        Ok(Connect { config: self.config.clone(), domain: domain.to_owned() })
    }
}

/// One connection's TLS handshake.
#[derive(Debug)]
pub(crate) struct Connect {
    config: Option<Arc<ClientConfig>>,
    domain: String,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Stream<S>, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            // Never without a configuration: the driver asks for TLS only
            // when `sslmode` is not `disable`.
            let config = self.config.ok_or_else(|| TlsError::Name(self.domain.clone()))?;
            let name = ServerName::try_from(self.domain.clone()).map_err(|_| TlsError::Name(self.domain))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(TlsError::from_io)?;
            Ok(Stream(tls))
        })
    }
}

/// A TLS connection to the server.
#[derive(Debug)]
pub(crate) struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding (`channel_binding=prefer`, the
        // default, then authenticates as without TLS).
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_strings_lose_their_tls_settings_only() {
        let (rest, s) =
            split("host=db port = 5433 sslmode=verify-full sslrootcert='/a b/ca.pem' password='x\\'y'")
                .unwrap();
        assert_eq!(s.mode.as_deref(), Some("verify-full"));
        assert_eq!(s.root_cert.as_deref(), Some("/a b/ca.pem"));
        let c = Config::from_str(&rest).unwrap();
        assert_eq!(c.get_ports(), [5433]);
        assert_eq!(c.get_password(), Some(&b"x'y"[..]));
    }

    #[test]
    fn urls_lose_their_tls_settings_only() {
        let (rest, s) = split(
            "postgresql://u:p@db:5433/app?sslmode=verify-ca&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(s.mode.as_deref(), Some("verify-ca"));
        assert_eq!(s.root_cert.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(rest, "postgresql://u:p@db:5433/app?application_name=x");
        let (rest, s) = split("postgres://db/app?sslmode=require").unwrap();
        assert_eq!((rest.as_str(), s.mode.as_deref()), ("postgres://db/app", Some("require")));
    }

    #[test]
    fn modes_set_the_drivers_tls_mode() {
        use outbox_core::ErrorKind;
        for (url, mode) in [
            ("host=db", SslMode::Disable),
            ("host=db sslmode=disable", SslMode::Disable),
            ("host=db sslmode=prefer", SslMode::Prefer),
            ("host=db sslmode=require", SslMode::Require),
        ] {
            assert_eq!(parse(url).unwrap().0.get_ssl_mode(), mode, "{url}");
        }
        let missing = parse("host=db sslmode=verify-full sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::InvalidInput);
        assert_eq!(parse("host=db sslmode=sometimes").unwrap_err().kind(), ErrorKind::InvalidInput);
        assert_eq!(parse("host=db sslmode='unterminated").unwrap_err().kind(), ErrorKind::InvalidInput);
    }
}
