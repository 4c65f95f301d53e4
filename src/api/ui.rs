//! The dashboard (`/ui/`): static files embedded in the binary (rust-embed; a debug build
//! reads them from `src/api/ui/` on disk, so the page can be edited without rebuilding). The
//! page talks to the same API with the same bearer token; it loads nothing from elsewhere,
//! which the Content-Security-Policy enforces — but for the identity provider of the sign-in
//! (`JOBSTATS_UI_OIDC_*`, CONTRACT §9), whose discovery and token endpoints the page calls.
//! `config.json` tells the page about that provider, and nothing secret.

use std::sync::Arc;

use poem::http::{header, Method, StatusCode};
use poem::{Endpoint, Request, Response};
use sha2::Digest;

/// The dashboard's sign-in with an OpenID provider, when configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UiSettings {
    pub oidc: Option<OidcSignIn>,
}

/// What the page needs to run the authorization code flow itself (a public client).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OidcSignIn {
    /// The provider's issuer, exactly as its tokens name it (`https://kc.example/realms/acme`).
    pub issuer: String,
    pub client_id: String,
    pub scopes: Vec<String>,
}

/// Why the dashboard's sign-in settings were refused at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UiConfigError {
    #[error(
        "JOBSTATS_UI_OIDC_ISSUER and JOBSTATS_UI_OIDC_CLIENT_ID go together: set both, or neither"
    )]
    Incomplete,
    #[error(
        "JOBSTATS_UI_OIDC_ISSUER must be an https:// URL (or http:// to a loopback address) \
         without user, query or fragment, not {0:?}"
    )]
    Issuer(String),
    #[error("JOBSTATS_UI_OIDC_CLIENT_ID {0:?} is not a client id (printable ASCII, at most 255)")]
    ClientId(String),
    #[error("JOBSTATS_UI_OIDC_SCOPES must include openid (the page checks the ID token's nonce), and each scope is printable ASCII")]
    Scopes,
}

impl UiSettings {
    /// Sign-in with `issuer` for `client_id`, asking for `scopes` (space- or comma-separated);
    /// neither issuer nor client id: no sign-in, tokens are pasted.
    pub fn new(
        issuer: Option<&str>,
        client_id: Option<&str>,
        scopes: &str,
    ) -> Result<Self, UiConfigError> {
        let (issuer, client_id) = match (present(issuer), present(client_id)) {
            (None, None) => return Ok(UiSettings::default()),
            (Some(issuer), Some(client_id)) => (issuer, client_id),
            _ => return Err(UiConfigError::Incomplete),
        };
        issuer_origin(issuer).ok_or_else(|| UiConfigError::Issuer(issuer.to_owned()))?;
        if client_id.len() > 255 || !client_id.chars().all(|c| c.is_ascii_graphic()) {
            return Err(UiConfigError::ClientId(client_id.to_owned()));
        }
        let scopes: Vec<String> = scopes
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let printable = scopes.iter().all(|s| {
            s.chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
        });
        if !printable || !scopes.iter().any(|s| s == "openid") {
            return Err(UiConfigError::Scopes);
        }
        Ok(UiSettings {
            oidc: Some(OidcSignIn {
                issuer: issuer.to_owned(),
                client_id: client_id.to_owned(),
                scopes,
            }),
        })
    }
}

/// A setting that is set and not blank.
fn present(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// `scheme://host[:port]` of an https (or loopback http) issuer without user, query or fragment.
fn issuer_origin(issuer: &str) -> Option<String> {
    let url = reqwest::Url::parse(issuer).ok()?;
    let plain = url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none();
    let secure = match url.scheme() {
        "https" => true,
        "http" => url.host_str().is_some_and(super::jwks::is_loopback_host),
        _ => false,
    };
    (plain && secure && url.host_str().is_some()).then(|| url.origin().ascii_serialization())
}

/// What every dashboard answer carries, computed once from the settings.
struct UiPage {
    csp: String,
    /// `config.json`: `{"oidc": {"issuer", "clientId", "scopes"}}`, or `{"oidc": null}`.
    config: bytes::Bytes,
}

impl UiPage {
    fn new(settings: &UiSettings) -> UiPage {
        // The provider's origin may be called (discovery, token endpoint); nothing else.
        let connect = match settings
            .oidc
            .as_ref()
            .and_then(|o| issuer_origin(&o.issuer))
        {
            Some(origin) => format!("'self' {origin}"),
            None => "'self'".to_owned(),
        };
        let config = serde_json::json!({ "oidc": settings.oidc });
        UiPage {
            csp: CSP.replace("connect-src 'self'", &format!("connect-src {connect}")),
            config: bytes::Bytes::from(config.to_string()),
        }
    }
}

#[derive(rust_embed::RustEmbed)]
#[folder = "src/api/ui/"]
struct UiFiles;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// Everything under `/ui`: `/ui` redirects to `/ui/`, which is `index.html`; `/ui/config.json`
/// tells the page how to sign in.
pub fn assets(settings: &UiSettings) -> impl Endpoint<Output = Response> {
    let page = Arc::new(UiPage::new(settings));
    poem::endpoint::make_sync(move |request: Request| file(&request, &page))
}

fn file(request: &Request, page: &UiPage) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return super::errors::ApiError::MethodNotAllowed.into_response();
    }
    let path = request.uri().path().trim_start_matches('/');
    if path.is_empty() && !request.original_uri().path().ends_with('/') {
        return Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, "/ui/")
            .finish();
    }
    if path == "config.json" {
        return Response::builder()
            .header("x-content-type-options", "nosniff")
            .header(header::CACHE_CONTROL, "no-cache")
            .content_type("application/json")
            .body(page.config.clone());
    }
    let path = if path.is_empty() { "index.html" } else { path };
    let Some(content) = UiFiles::get(path) else {
        return super::errors::ApiError::RouteNotFound.into_response();
    };
    // A strong tag of the bytes served (computed, not taken from build metadata, so a file
    // edited on disk in a debug build gets a new one).
    let digest = sha2::Sha256::digest(&content.data);
    let etag: String = std::iter::once("\"".to_owned())
        .chain(digest[..16].iter().map(|b| format!("{b:02x}")))
        .chain(std::iter::once("\"".to_owned()))
        .collect();
    let builder = Response::builder()
        .header(header::ETAG, &etag)
        .header("content-security-policy", page.csp.as_str())
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        // Revalidated every time (a 304 when unchanged): a new version is seen at once.
        .header(header::CACHE_CONTROL, "no-cache");
    if super::stats::if_none_match(request, &etag) {
        return builder.status(StatusCode::NOT_MODIFIED).finish();
    }
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    builder
        .content_type(mime.as_ref())
        .body(content.data.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_settings_are_checked_at_start_up() {
        assert_eq!(
            UiSettings::new(None, None, "openid"),
            Ok(UiSettings::default())
        );
        let kc = "https://kc.example/realms/acme";
        let settings = UiSettings::new(Some(kc), Some("jobstats-ui"), "openid, profile email")
            .unwrap()
            .oidc
            .unwrap();
        assert_eq!(settings.scopes, ["openid", "profile", "email"]);
        assert_eq!(
            UiSettings::new(Some(kc), None, "openid"),
            Err(UiConfigError::Incomplete)
        );
        assert_eq!(
            UiSettings::new(None, Some("x"), "openid"),
            Err(UiConfigError::Incomplete)
        );
        for bad in [
            "http://kc.example/realms/acme",
            "kc.example",
            "https://kc.example/realms/acme?x=1",
            "https://u:p@kc.example/realms/acme",
        ] {
            assert!(matches!(
                UiSettings::new(Some(bad), Some("c"), "openid"),
                Err(UiConfigError::Issuer(_))
            ));
        }
        assert!(
            UiSettings::new(Some("http://127.0.0.1:8081/realms/a"), Some("c"), "openid").is_ok()
        );
        assert_eq!(
            UiSettings::new(Some(kc), Some("c"), "profile"),
            Err(UiConfigError::Scopes)
        );
        assert!(matches!(
            UiSettings::new(Some(kc), Some("a b"), "openid"),
            Err(UiConfigError::ClientId(_))
        ));
    }

    #[test]
    fn the_page_may_call_the_providers_origin_and_no_other() {
        let settings = UiSettings::new(
            Some("https://kc.example:8443/realms/acme"),
            Some("jobstats-ui"),
            "openid",
        )
        .unwrap();
        let page = UiPage::new(&settings);
        assert!(page
            .csp
            .contains("connect-src 'self' https://kc.example:8443;"));
        let config: serde_json::Value = serde_json::from_slice(&page.config).unwrap();
        assert_eq!(
            config,
            serde_json::json!({"oidc": {"issuer": "https://kc.example:8443/realms/acme",
                                        "clientId": "jobstats-ui", "scopes": ["openid"]}})
        );
        let none = UiPage::new(&UiSettings::default());
        assert!(none.csp.contains("connect-src 'self';"));
        assert_eq!(&none.config[..], br#"{"oidc":null}"#);
    }
}
