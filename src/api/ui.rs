//! The dashboard (`/ui/`): static files embedded in the binary (rust-embed; a debug build
//! reads them from `src/api/ui/` on disk, so the page can be edited without rebuilding). The
//! page talks to the same API with the same bearer token; it loads nothing from elsewhere,
//! which the Content-Security-Policy enforces.

use poem::http::{header, Method, StatusCode};
use poem::{Endpoint, Request, Response};
use sha2::Digest;

#[derive(rust_embed::RustEmbed)]
#[folder = "src/api/ui/"]
struct UiFiles;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// Everything under `/ui`: `/ui` redirects to `/ui/`, which is `index.html`.
pub fn assets() -> impl Endpoint<Output = Response> {
    poem::endpoint::make_sync(|request: Request| file(&request))
}

fn file(request: &Request) -> Response {
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
        .header("content-security-policy", CSP)
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
