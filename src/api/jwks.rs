//! Signing keys fetched from the identity provider's JSON Web Key Set (CONTRACT §9).
//!
//! The URL comes only from configuration (`JOBSTATS_JWT_JWKS_URL`); with `{realm}` in it, one URL
//! per configured realm is built at start-up and a request can only choose among them. A realm's
//! set is fetched at start-up, again when a token names a `kid` the set lacks, and every
//! [`REFRESH_EVERY`] — never more than once per [`FETCH_GAP`], whatever asks, so a flood of
//! tokens with made-up key ids costs the provider one request per realm per 30 s. Requests that
//! need a fetch while one is running wait for it instead of starting their own. A failed fetch
//! (unreachable, slow, too large, not a key set) keeps the last good set.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::metrics::{JwksMetrics, OutcomeLabel};

/// The least time between two fetches of one realm's set.
pub const FETCH_GAP: Duration = Duration::from_secs(30);
/// How often a good set is fetched again anyway, so a key the provider withdrew stops verifying.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10 * 60);
/// A fetch slower than this has failed.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set read (Keycloak's are 2–4 KiB).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys kept from one set.
const MAX_KEYS: usize = 100;

/// The placeholder a realm name replaces.
const REALM_PLACEHOLDER: &str = "{realm}";

/// Why `JOBSTATS_JWT_JWKS_URL` was refused at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksUrlError {
    #[error("JOBSTATS_JWT_JWKS_URL {0:?} is not a URL")]
    NotAUrl(String),
    #[error(
        "JOBSTATS_JWT_JWKS_URL must be https:// (or http:// to a loopback address), not {0:?}"
    )]
    NotSecure(String),
    #[error("JOBSTATS_JWT_JWKS_URL must not carry a user name, password or fragment")]
    Credentials,
    #[error(
        "JOBSTATS_JWT_JWKS_URL contains {{realm}}: set JOBSTATS_JWT_REALMS to the realms whose keys are fetched"
    )]
    RealmsRequired,
}

/// Why one fetch of a key set failed. Each is logged as a warning and counted as
/// `outcome="error"`; the set held before stays in use.
#[derive(Debug, thiserror::Error)]
pub enum JwksFetchError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("the provider answered HTTP {0}")]
    Status(u16),
    #[error("the key set is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("not a JSON Web Key Set: {0}")]
    Malformed(String),
    #[error("the key set holds no usable signing key")]
    NoSigningKey,
}

/// The configured URL, checked: one URL per realm, or one for all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrl {
    template: String,
}

impl JwksUrl {
    /// Accepts `https://…`, or `http://` to 127.0.0.0/8, `[::1]` or `localhost`.
    pub fn parse(value: &str) -> Result<Self, JwksUrlError> {
        let template = value.trim().to_owned();
        check_url(&template.replace(REALM_PLACEHOLDER, "realm"))?;
        Ok(JwksUrl { template })
    }

    /// Does the URL name a realm?
    pub fn per_realm(&self) -> bool {
        self.template.contains(REALM_PLACEHOLDER)
    }

    /// The URL of `realm`'s set (realm names are letters, digits, `-` and `_`).
    fn for_realm(&self, realm: &str) -> String {
        self.template.replace(REALM_PLACEHOLDER, realm)
    }

    pub fn as_str(&self) -> &str {
        &self.template
    }
}

fn check_url(url: &str) -> Result<(), JwksUrlError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| JwksUrlError::NotAUrl(url.to_owned()))?;
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.fragment().is_some() {
        return Err(JwksUrlError::Credentials);
    }
    let secure = match parsed.scheme() {
        "https" => true,
        "http" => parsed.host_str().is_some_and(is_loopback_host),
        _ => false,
    };
    if secure && parsed.host_str().is_some_and(|h| !h.is_empty()) {
        Ok(())
    } else {
        Err(JwksUrlError::NotSecure(url.to_owned()))
    }
}

/// Loopback only: plain HTTP is accepted where nothing leaves the machine.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// One verification key of a set, with the algorithms it may verify.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

/// A realm's keys as last fetched.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<SigningKey>,
}

impl KeySet {
    /// Reads a key set, keeping the signature keys this service can use: RSA (RS*, PS*), EC P-256
    /// and P-384 (ES256, ES384) and Ed25519 (EdDSA). Keys with `use` other than `sig`, with
    /// `key_ops` without `verify`, symmetric keys and keys of other types are skipped; a document
    /// that is not a key set is an error.
    pub fn parse(body: &[u8]) -> Result<KeySet, JwksFetchError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document =
            serde_json::from_slice(body).map_err(|e| JwksFetchError::Malformed(e.to_string()))?;
        let keys: Vec<SigningKey> = document
            .keys
            .into_iter()
            // One key this library cannot read (another key type, a newer algorithm) must not
            // cost the others.
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter_map(|jwk| signing_key(&jwk))
            .take(MAX_KEYS)
            .collect();
        if keys.is_empty() {
            return Err(JwksFetchError::NoSigningKey);
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys that may verify a token with this header: its `kid` (when it names one) and
    /// its `alg`.
    pub fn candidates(&self, kid: Option<&str>, algorithm: Algorithm) -> Vec<SigningKey> {
        self.keys
            .iter()
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .filter(|k| k.algorithms.contains(&algorithm))
            .cloned()
            .collect()
    }
}

/// The algorithms a JWK may verify, or `None` when it is not a usable signature key.
fn signing_key(jwk: &Jwk) -> Option<SigningKey> {
    let common = &jwk.common;
    if common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    if common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return None;
    }
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        // A symmetric key in a published set would be a shared secret anyone can read: never
        // a verification key.
        _ => return None,
    };
    let algorithms: Vec<Algorithm> = match common.key_algorithm {
        None => family.to_vec(),
        Some(named) => {
            let named = Algorithm::try_from(named).ok()?;
            if !family.contains(&named) {
                return None;
            }
            vec![named]
        }
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(SigningKey {
        kid: common.key_id.clone(),
        algorithms,
        key,
    })
}

/// An error and its causes in one line ("error sending request: … connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What a request for a fetch came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// This call fetched the set, or waited for a fetch that brought the wanted key.
    Fetched,
    /// The set was fetched less than [`FETCH_GAP`] ago: nothing was done.
    TooSoon,
    /// The fetch failed; the set held before stays.
    Failed,
}

/// One realm's set (or the only one), and who may fetch it when.
struct RealmKeys {
    /// For logs and metrics only.
    realm: Option<String>,
    url: String,
    keys: RwLock<Arc<KeySet>>,
    /// When the set was last asked for, held during a fetch: callers that need a fetch while
    /// one runs wait here and then share its result.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

impl RealmKeys {
    fn realm_name(&self) -> &str {
        self.realm.as_deref().unwrap_or("-")
    }
}

/// Every configured realm's key set.
pub struct JwksKeys {
    /// By realm name; `None` names the one set of a URL without `{realm}`.
    realms: BTreeMap<Option<String>, RealmKeys>,
    http: reqwest::Client,
    metrics: JwksMetrics,
}

impl std::fmt::Debug for JwksKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksKeys")
            .field("realms", &self.realms.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl JwksKeys {
    /// Builds one set per realm of `realms` when `url` names a realm (then `realms` is
    /// required), else one set. Nothing is fetched yet: see [`JwksKeys::keep_fresh`].
    pub fn new(
        url: &JwksUrl,
        realms: Option<&[String]>,
        metrics: JwksMetrics,
    ) -> Result<Self, JwksUrlError> {
        let names: Vec<Option<String>> = if url.per_realm() {
            match realms {
                Some(realms) if !realms.is_empty() => realms.iter().cloned().map(Some).collect(),
                _ => return Err(JwksUrlError::RealmsRequired),
            }
        } else {
            vec![None]
        };
        let mut sets = BTreeMap::new();
        for name in names {
            let realm_url = match &name {
                Some(realm) => url.for_realm(realm),
                None => url.as_str().to_owned(),
            };
            check_url(&realm_url)?;
            sets.insert(
                name.clone(),
                RealmKeys {
                    realm: name,
                    url: realm_url,
                    keys: RwLock::new(Arc::new(KeySet::default())),
                    last_attempt: tokio::sync::Mutex::new(None),
                },
            );
        }
        let http = reqwest::Client::builder()
            // A redirect could lead anywhere: the configured URL is the only one fetched.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .user_agent(concat!("jobstats/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| JwksUrlError::NotAUrl(e.to_string()))?;
        Ok(JwksKeys {
            realms: sets,
            http,
            metrics,
        })
    }

    /// Does each realm have its own set (the URL has `{realm}`)?
    pub fn per_realm(&self) -> bool {
        !self.realms.contains_key(&None)
    }

    /// The set a token of `realm` verifies under: its realm's when the URL names realms (`None`
    /// for a realm that is not configured), else the only one.
    pub fn set_of(&self, realm: Option<&str>) -> Option<Arc<KeySet>> {
        self.realm(realm).map(|r| {
            r.keys
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone()
        })
    }

    fn realm(&self, realm: Option<&str>) -> Option<&RealmKeys> {
        if self.per_realm() {
            self.realms.get(&realm.map(str::to_owned))
        } else {
            self.realms.get(&None)
        }
    }

    /// Fetches `realm`'s set because a token named `kid`, unless it was fetched less than
    /// [`FETCH_GAP`] ago. A caller arriving during a fetch waits for it; if that fetch brought
    /// `kid`, it does not fetch again.
    pub async fn refresh(&self, realm: Option<&str>, kid: Option<&str>) -> Refresh {
        let Some(keys) = self.realm(realm) else {
            return Refresh::TooSoon;
        };
        self.refresh_realm(keys, kid).await
    }

    async fn refresh_realm(&self, keys: &RealmKeys, kid: Option<&str>) -> Refresh {
        let mut last_attempt = keys.last_attempt.lock().await;
        if let Some(kid) = kid {
            if self
                .set_of(keys.realm.as_deref())
                .is_some_and(|s| s.has_kid(kid))
            {
                return Refresh::Fetched;
            }
        }
        if last_attempt.is_some_and(|at| at.elapsed() < FETCH_GAP) {
            return Refresh::TooSoon;
        }
        *last_attempt = Some(Instant::now());
        match self.fetch(&keys.url).await {
            Ok(set) => {
                tracing::debug!(realm = keys.realm_name(), keys = set.len(), "JWKS fetched");
                *keys.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
                self.count_keys();
                self.count_fetch("ok");
                Refresh::Fetched
            }
            Err(error) => {
                tracing::warn!(
                    realm = keys.realm_name(),
                    url = %keys.url,
                    %error,
                    "JWKS fetch failed; the keys fetched before stay in use, next try in 30 s at the earliest"
                );
                self.count_fetch("error");
                Refresh::Failed
            }
        }
    }

    fn count_fetch(&self, outcome: &str) {
        self.metrics
            .fetches
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    fn count_keys(&self) {
        let held: usize = self
            .realms
            .values()
            .map(|r| r.keys.read().unwrap_or_else(|p| p.into_inner()).len())
            .sum();
        self.metrics.keys.set(held as i64);
    }

    async fn fetch(&self, url: &str) -> Result<KeySet, JwksFetchError> {
        let request = |e: reqwest::Error| JwksFetchError::Request(error_chain(&e.without_url()));
        let mut response = self
            .http
            .get(url)
            .header("accept", "application/jwk-set+json, application/json")
            .send()
            .await
            .map_err(request)?;
        if !response.status().is_success() {
            return Err(JwksFetchError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(JwksFetchError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksFetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        KeySet::parse(&body)
    }

    /// Fetches every realm's set now, then keeps them fresh until `shutdown`: a failed fetch
    /// is retried after [`FETCH_GAP`], a good set is fetched again after [`REFRESH_EVERY`].
    pub async fn keep_fresh(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let realms = self.realms.values().map(|keys| {
            let this = &self;
            async move {
                loop {
                    let wait = match this.refresh_realm(keys, None).await {
                        Refresh::Fetched => REFRESH_EVERY,
                        Refresh::TooSoon | Refresh::Failed => FETCH_GAP,
                    };
                    tokio::time::sleep(wait).await;
                }
            }
        });
        tokio::select! {
            _ = futures::future::join_all(realms) => {}
            _ = shutdown => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The modulus of a 2048-bit RSA key made for this test.
    const N: &str = "ocdREeT6i-v-BgctaNCRahkU-qaN_syY55Zzly7uRacVAkumOR7yn7R9aWytKcVXJiFlUFvHLUvDJXx_G11UBOadSZERm2wi-2jajnH6bMVpqcC2htl-0Bue6F5eP4mEhjmzlHkVElwi4kqZ50n0WPyqmsQKHMlyHstNwpCODejNkUnNjeycUVdqErnKjlgl8Qi9x5fIlttQmqrGKuZrtSO8CZG9FXzRx8VbI5-uUXhTraFDeUUzBHiajwfYxD_tMlYTjhW5oxlv7suBXCWKlbQfq5mQdXSLZVWDH70vyYpLQwG_uLaqxwBy066IjNH7N_2qvbWvTD4iQyC8nQ2rtw";
    const E: &str = "AQAB";

    fn rsa(extra: &str) -> String {
        format!(r#"{{"kty":"RSA","n":"{N}","e":"{E}"{extra}}}"#)
    }

    #[test]
    fn keys_are_chosen_by_kid_and_must_match_the_tokens_algorithm() {
        let body = format!(
            r#"{{"keys":[{},{},{}]}}"#,
            rsa(r#","kid":"a","alg":"RS256","use":"sig""#),
            rsa(r#","kid":"b""#),
            rsa(r#","kid":"c","alg":"PS256""#),
        );
        let set = KeySet::parse(body.as_bytes()).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.candidates(Some("a"), Algorithm::RS256).len(), 1);
        assert!(set.candidates(Some("a"), Algorithm::PS256).is_empty());
        assert!(set.candidates(Some("a"), Algorithm::ES256).is_empty());
        // No `alg` on the key: any RSA signature algorithm.
        assert_eq!(set.candidates(Some("b"), Algorithm::RS512).len(), 1);
        assert!(set.candidates(Some("c"), Algorithm::RS256).is_empty());
        assert!(set.candidates(Some("zzz"), Algorithm::RS256).is_empty());
        assert!(set.has_kid("c") && !set.has_kid("zzz"));
    }

    #[test]
    fn keys_for_another_use_symmetric_keys_and_unreadable_keys_are_skipped() {
        let body = format!(
            r#"{{"keys":[{},{},{},{},{},{}]}}"#,
            rsa(r#","kid":"enc","use":"enc","alg":"RSA-OAEP""#),
            rsa(r#","kid":"ops","key_ops":["encrypt"]"#),
            r#"{"kty":"oct","kid":"hmac","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}"#,
            r#"{"kty":"XYZ","kid":"future"}"#,
            r#"{"kty":"RSA","kid":"broken"}"#,
            rsa(r#","kid":"good","use":"sig""#),
        );
        let set = KeySet::parse(body.as_bytes()).unwrap();
        assert_eq!(set.len(), 1, "only the signature key stays");
        assert!(set.has_kid("good"));
        assert!(set.candidates(Some("hmac"), Algorithm::HS256).is_empty());
    }

    #[test]
    fn a_document_that_is_not_a_key_set_is_a_failed_fetch() {
        for body in [
            &b"<html>"[..],
            b"{}",
            b"{\"keys\": 3}",
            b"[]",
            b"{\"keys\": []}",
            b"{\"keys\": [{\"kty\":\"oct\",\"k\":\"AAAA\"}]}",
        ] {
            assert!(
                KeySet::parse(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn only_https_or_loopback_http_urls_are_accepted() {
        for ok in [
            "https://kc.example/realms/{realm}/protocol/openid-connect/certs",
            "https://kc.example/certs",
            "http://127.0.0.1:8080/realms/{realm}/certs",
            "http://localhost/certs",
            "http://[::1]:9/certs",
        ] {
            assert!(JwksUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://kc.example/certs",
            "http://10.0.0.1/certs",
            "ftp://kc.example/certs",
            "file:///etc/keys.json",
            "kc.example/certs",
            "https://user:pw@kc.example/certs",
            "https://kc.example/certs#x",
            "",
        ] {
            assert!(JwksUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_realm_url_needs_the_realm_list() {
        let url = JwksUrl::parse("https://kc.example/realms/{realm}/certs").unwrap();
        let metrics = JwksMetrics::default();
        assert_eq!(
            JwksKeys::new(&url, None, metrics.clone()).unwrap_err(),
            JwksUrlError::RealmsRequired
        );
        let keys = JwksKeys::new(&url, Some(&["acme".into(), "beta".into()]), metrics).unwrap();
        assert!(keys.per_realm());
        assert!(keys.set_of(Some("acme")).is_some());
        assert!(keys.set_of(Some("other")).is_none());
        assert!(keys.set_of(None).is_none());
        assert_eq!(
            keys.realms[&Some("beta".to_owned())].url,
            "https://kc.example/realms/beta/certs"
        );
    }
}
