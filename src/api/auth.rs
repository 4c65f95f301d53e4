//! Bearer-token authentication (CONTRACT §3, §9). Keys come only from configuration — a
//! secret, PEM files, or the key sets at the configured JWKS URL ([`super::jwks`]), never from a
//! URL found in a request or a token — and the accepted algorithms follow from those keys, so
//! `none` and HMAC-with-a-public-key can never verify.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::jwks::{JwksKeys, JwksUrl, JwksUrlError, Refresh};
use crate::cache::{byte_bounded, ByteBounded};
use crate::events::TenantId;
use crate::metrics::JwksMetrics;

/// Longest token accepted before any decoding (Keycloak tokens are 1–3 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;
pub const ROLE_SYSTEM_ADMIN: &str = "system_admin";
pub const ROLE_SUPER_ADMIN: &str = "super_admin";

/// Authentication settings, as configured.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    pub hs256_secret: Option<String>,
    pub public_key_file: Option<std::path::PathBuf>,
    /// Expected `iss`; may contain `{realm}`.
    pub issuer: Option<String>,
    /// Allowed realm names; `None` allows any well-formed name.
    pub realms: Option<Vec<String>>,
    pub audience: Option<String>,
    /// Where the identity provider publishes its signing keys; may contain `{realm}`.
    pub jwks_url: Option<String>,
}

/// Why the authenticator could not be built (start-up error naming the variable).
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("no token key configured: set JOBSTATS_JWT_HS256_SECRET, JOBSTATS_JWT_PUBLIC_KEY_FILE and/or JOBSTATS_JWT_JWKS_URL")]
    NoKeys,
    #[error("JOBSTATS_JWT_HS256_SECRET must be at least 32 bytes")]
    WeakSecret,
    #[error("JOBSTATS_JWT_PUBLIC_KEY_FILE {path}: {reason}")]
    PublicKeys { path: String, reason: String },
    #[error(
        "JOBSTATS_JWT_REALMS: invalid realm name {0:?} (letters, digits, - and _, at most 64)"
    )]
    Realm(String),
    #[error("the JWT crypto provider is not available: {0}")]
    Crypto(String),
    #[error(transparent)]
    Jwks(#[from] JwksUrlError),
}

/// Why a token was refused. Every variant is a 401; the text is safe to return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Authentication required: send an Authorization: Bearer <token> header")]
    Missing,
    #[error("Authentication failed: the Authorization header must appear once")]
    RepeatedHeader,
    #[error("Authentication failed: the Authorization header is not a Bearer token")]
    Malformed,
    #[error("Authentication failed: the token is too large")]
    TooLarge,
    #[error("Authentication failed: the token has expired")]
    Expired,
    #[error("Authentication failed: the token is not valid yet")]
    NotYetValid,
    #[error("Authentication failed: the token's signing algorithm is not accepted")]
    AlgorithmNotAllowed,
    #[error("Authentication failed: unknown realm")]
    UnknownRealm,
    #[error("Authentication failed: the token was not issued for this realm or issuer")]
    WrongIssuer,
    #[error("Authentication failed: the token is not meant for this service")]
    WrongAudience,
    /// The token names a key (`kid`) that no configured key set holds, even after the set was
    /// fetched again (or could not be, so soon after the last fetch).
    #[error("Authentication failed: the token's signing key is not known")]
    UnknownKey,
    #[error("Authentication failed: the token is invalid")]
    Invalid,
}

/// The claims the service reads. Unknown claims are ignored.
#[derive(Debug, Clone, Deserialize)]
struct Claims {
    exp: i64,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    realm_access: Option<RealmAccess>,
    #[serde(default)]
    tenant_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct RealmAccess {
    #[serde(default)]
    roles: Vec<String>,
}

/// Who is calling, once the token is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: Option<String>,
    pub roles: HashSet<String>,
    /// The `tenant_id` claim, when it is a UUID.
    pub tenant: Option<TenantId>,
}

impl Principal {
    /// May this principal read `tenant`'s stats?
    pub fn authorize(&self, tenant: &TenantId) -> Result<(), String> {
        if self.roles.contains(ROLE_SUPER_ADMIN) {
            return Ok(());
        }
        if !self.roles.contains(ROLE_SYSTEM_ADMIN) {
            return Err(
                "Insufficient permissions: requires the system_admin or super_admin role".into(),
            );
        }
        if self.tenant.as_ref() != Some(tenant) {
            return Err(
                "Insufficient permissions: the token's tenant does not match x-tenantid".into(),
            );
        }
        Ok(())
    }
}

/// A verification key and the algorithms it may verify.
struct VerificationKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens against the configured keys.
pub struct Authenticator {
    keys: Vec<VerificationKey>,
    /// The identity provider's key sets, when `JOBSTATS_JWT_JWKS_URL` is set.
    jwks: Option<Arc<JwksKeys>>,
    settings: AuthSettings,
    /// Tokens already verified, by (token, realm header), with the unix time they expire at:
    /// a dashboard polling with one token pays for the signature check once.
    verified: ByteBounded<(String, Option<String>), (Principal, i64)>,
}

/// Bytes of verified tokens remembered (keys included: a token may be 8 KiB).
const VERIFIED_TOKEN_CACHE_BYTES: u64 = 8 << 20;

fn verified_token_bytes(key: &(String, Option<String>), value: &(Principal, i64)) -> u64 {
    let principal = &value.0;
    let strings = key.0.len()
        + key.1.as_ref().map_or(0, String::len)
        + principal.subject.as_ref().map_or(0, String::len)
        + principal.roles.iter().map(|r| r.len() + 32).sum::<usize>();
    (strings + std::mem::size_of::<((String, Option<String>), (Principal, i64))>() + 64) as u64
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.algorithms())
            .field("issuer", &self.settings.issuer)
            .field("realms", &self.settings.realms)
            .field("audience", &self.settings.audience)
            .field("jwks", &self.jwks)
            .finish()
    }
}

pub fn valid_realm_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The signature algorithms a key set may verify: never HMAC, never `none`.
const JWKS_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Authenticator {
    /// An authenticator whose key-set metrics go nowhere (tests, tools).
    pub fn new(settings: AuthSettings) -> Result<Self, AuthConfigError> {
        Self::with_metrics(settings, JwksMetrics::default())
    }

    /// An authenticator that counts its key-set fetches in `metrics`. Key sets are fetched by
    /// the task [`Authenticator::key_sets`] hands out, and on demand.
    pub fn with_metrics(
        settings: AuthSettings,
        metrics: JwksMetrics,
    ) -> Result<Self, AuthConfigError> {
        jsonwebtoken::crypto::CryptoProvider::try_get_default()
            .ok_or_else(|| AuthConfigError::Crypto("no provider compiled in".into()))?;
        let mut keys = Vec::new();
        if let Some(secret) = &settings.hs256_secret {
            if secret.len() < 32 {
                return Err(AuthConfigError::WeakSecret);
            }
            keys.push(VerificationKey {
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| AuthConfigError::Crypto(e.to_string()))?,
            });
        }
        if let Some(path) = &settings.public_key_file {
            keys.extend(load_public_keys(path)?);
        }
        if let Some(realms) = &settings.realms {
            if let Some(bad) = realms.iter().find(|r| !valid_realm_name(r)) {
                return Err(AuthConfigError::Realm(bad.clone()));
            }
        }
        let jwks = match &settings.jwks_url {
            Some(url) => Some(Arc::new(JwksKeys::new(
                &JwksUrl::parse(url)?,
                settings.realms.as_deref(),
                metrics,
            )?)),
            None => None,
        };
        if keys.is_empty() && jwks.is_none() {
            return Err(AuthConfigError::NoKeys);
        }
        Ok(Authenticator {
            keys,
            jwks,
            settings,
            verified: byte_bounded(VERIFIED_TOKEN_CACHE_BYTES, 1_024, verified_token_bytes),
        })
    }

    /// The identity provider's key sets, for the task that keeps them fresh
    /// ([`JwksKeys::keep_fresh`]); `None` without `JOBSTATS_JWT_JWKS_URL`.
    pub fn key_sets(&self) -> Option<Arc<JwksKeys>> {
        self.jwks.clone()
    }

    /// The algorithms a token may be signed with.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        let mut algorithms: Vec<Algorithm> = Vec::new();
        let from_jwks = self.jwks.as_ref().map_or(&[][..], |_| &JWKS_ALGORITHMS[..]);
        for algorithm in self.keys.iter().map(|k| &k.algorithm).chain(from_jwks) {
            if !algorithms.contains(algorithm) {
                algorithms.push(*algorithm);
            }
        }
        algorithms
    }

    /// Reads the `Authorization` and `realmname` headers and verifies the token, fetching the
    /// identity provider's keys again when the token names one they lack.
    pub async fn authenticate_headers(
        &self,
        headers: &poem::http::HeaderMap,
    ) -> Result<Principal, AuthError> {
        let (token, realm) = bearer_and_realm(headers)?;
        self.authenticate_fetching(token, realm).await
    }

    /// [`Authenticator::authenticate`], and when the token names a key (`kid`) that its realm's
    /// key set lacks, that set fetched again (at most once per 30 s; callers meanwhile wait for
    /// the running fetch) and the token verified once more.
    pub async fn authenticate_fetching(
        &self,
        token: &str,
        realm: Option<&str>,
    ) -> Result<Principal, AuthError> {
        match self.authenticate(token, realm) {
            Err(AuthError::UnknownKey) => {
                let Some(jwks) = &self.jwks else {
                    return Err(AuthError::UnknownKey);
                };
                let kid = jsonwebtoken::decode_header(token)
                    .map_err(|_| AuthError::Invalid)?
                    .kid;
                let key_realm = self.key_realm(token, realm);
                match jwks.refresh(key_realm.as_deref(), kid.as_deref()).await {
                    Refresh::Fetched => self.authenticate(token, realm),
                    Refresh::TooSoon | Refresh::Failed => Err(AuthError::UnknownKey),
                }
            }
            other => other,
        }
    }

    /// Verifies a token; `realm` is the `realmname` header, when sent.
    pub fn authenticate(&self, token: &str, realm: Option<&str>) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        if token.is_empty() {
            return Err(AuthError::Malformed);
        }
        if let Some(realm) = realm {
            let known = match &self.settings.realms {
                Some(allowed) => allowed.iter().any(|r| r == realm),
                None => valid_realm_name(realm),
            };
            if !known {
                return Err(AuthError::UnknownRealm);
            }
        }
        let cache_key = (token.to_owned(), realm.map(str::to_owned));
        let now = chrono::Utc::now().timestamp();
        if let Some((principal, expires_at)) = self.verified.get(&cache_key) {
            if now <= expires_at {
                return Ok(principal);
            }
        }
        let (principal, expires_at) = self.verify(token, realm)?;
        self.verified
            .insert(cache_key, (principal.clone(), expires_at));
        Ok(principal)
    }

    /// Checks signature and claims; returns the principal and when the token stops being valid.
    fn verify(&self, token: &str, realm: Option<&str>) -> Result<(Principal, i64), AuthError> {
        // `alg: none` and unknown algorithms fail here: jsonwebtoken has no such variant.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let mut candidates: Vec<DecodingKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .map(|k| k.key.clone())
            .collect();
        let mut key_unknown = false;
        if let Some(jwks) = self
            .jwks
            .as_ref()
            .filter(|_| JWKS_ALGORITHMS.contains(&header.alg))
        {
            // A realm that is not configured has no set: only the static keys may verify.
            let set = jwks.set_of(self.key_realm(token, realm).as_deref());
            key_unknown = match (&set, &header.kid) {
                (None, _) => true,
                (Some(set), Some(kid)) => !set.has_kid(kid),
                (Some(set), None) => set.is_empty(),
            };
            if let Some(set) = set {
                candidates.extend(
                    set.candidates(header.kid.as_deref(), header.alg)
                        .into_iter()
                        .map(|k| k.key),
                );
            }
        }
        match self.verify_with(token, realm, header.alg, &candidates) {
            // A static key may not verify it, but the set fetched again may.
            Err(AuthError::AlgorithmNotAllowed | AuthError::Invalid) if key_unknown => {
                Err(AuthError::UnknownKey)
            }
            other => other,
        }
    }

    /// Checks the signature against each candidate key, then the claims.
    fn verify_with(
        &self,
        token: &str,
        realm: Option<&str>,
        algorithm: Algorithm,
        candidates: &[DecodingKey],
    ) -> Result<(Principal, i64), AuthError> {
        if candidates.is_empty() {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.settings.audience {
            Some(audience) => validation.set_audience(&[audience]),
            // Keycloak puts `account` in `aud`; without a configured audience it is not checked.
            None => validation.validate_aud = false,
        }
        let mut last_error = AuthError::Invalid;
        for candidate in candidates {
            match jsonwebtoken::decode::<Claims>(token, candidate, &validation) {
                Ok(data) => {
                    let expires_at = data.claims.exp + LEEWAY_SECONDS as i64;
                    return Ok((self.principal(data.claims, realm)?, expires_at));
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last_error = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                        ErrorKind::ImmatureSignature => return Err(AuthError::NotYetValid),
                        ErrorKind::InvalidAudience => return Err(AuthError::WrongAudience),
                        ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
                        _ => AuthError::Invalid,
                    };
                }
            }
        }
        Err(last_error)
    }

    fn principal(&self, claims: Claims, realm: Option<&str>) -> Result<Principal, AuthError> {
        self.check_issuer(claims.iss.as_deref(), realm)?;
        let mut roles: HashSet<String> = claims.roles.unwrap_or_default().into_iter().collect();
        if let Some(access) = claims.realm_access {
            roles.extend(access.roles);
        }
        Ok(Principal {
            subject: claims.sub,
            roles,
            tenant: claims
                .tenant_id
                .as_deref()
                .and_then(|t| TenantId::parse(t).ok()),
        })
    }

    /// The issuer must match the configured one (with `{realm}` bound to the realm), and a
    /// token presented with a `realmname` must have been issued by that realm (CONTRACT §3),
    /// whatever the issuer setting: a realm is read from the issuer the Keycloak way,
    /// `…/realms/<realm>`. Without `realmname`, a token whose issuer names a realm must name an
    /// allowed one.
    fn check_issuer(&self, issuer: Option<&str>, realm: Option<&str>) -> Result<(), AuthError> {
        let issuer_realm = self.issuer_realm(issuer)?;
        match (realm, issuer_realm) {
            // The realm named must be the realm that issued the token.
            (Some(named), Some(issued)) if named == issued => Ok(()),
            (Some(_), _) => Err(AuthError::WrongIssuer),
            (None, Some(issued)) if !self.realm_allowed(issued) => Err(AuthError::WrongIssuer),
            (None, _) => Ok(()),
        }
    }

    /// The realm an issuer names, once it matches the issuer setting (`Err` when it does not).
    fn issuer_realm<'a>(&self, issuer: Option<&'a str>) -> Result<Option<&'a str>, AuthError> {
        Ok(match &self.settings.issuer {
            None => issuer.and_then(keycloak_realm),
            Some(template) => {
                let issuer = issuer.ok_or(AuthError::WrongIssuer)?;
                match template.split_once("{realm}") {
                    None if issuer == template => keycloak_realm(issuer),
                    None => return Err(AuthError::WrongIssuer),
                    Some((prefix, suffix)) => Some(
                        issuer
                            .strip_prefix(prefix)
                            .and_then(|rest| rest.strip_suffix(suffix))
                            .filter(|r| valid_realm_name(r))
                            .ok_or(AuthError::WrongIssuer)?,
                    ),
                }
            }
        })
    }

    /// The realm whose key set may verify `token`: the `realmname` header (already checked
    /// against the allow-list), else the realm its issuer names. The issuer is read before
    /// the signature is checked, which is safe: it only chooses among the configured realms'
    /// sets, and the verified issuer is checked again afterwards.
    fn key_realm(&self, token: &str, named: Option<&str>) -> Option<String> {
        if let Some(named) = named {
            return Some(named.to_owned());
        }
        let issuer = unverified_issuer(token)?;
        self.issuer_realm(Some(&issuer))
            .ok()
            .flatten()
            .map(str::to_owned)
    }

    fn realm_allowed(&self, realm: &str) -> bool {
        match &self.settings.realms {
            Some(allowed) => allowed.iter().any(|r| r == realm),
            None => valid_realm_name(realm),
        }
    }
}

/// The bearer token and the `realmname` header, read strictly (CONTRACT §3).
fn bearer_and_realm(headers: &poem::http::HeaderMap) -> Result<(&str, Option<&str>), AuthError> {
    let mut values = headers.get_all(poem::http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        return Err(AuthError::RepeatedHeader);
    }
    if value.len() > MAX_TOKEN_BYTES + 7 {
        return Err(AuthError::TooLarge);
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    let mut realms = headers.get_all("realmname").iter();
    let realm = match (realms.next(), realms.next()) {
        (None, _) => None,
        (Some(realm), None) => Some(realm.to_str().map_err(|_| AuthError::UnknownRealm)?),
        (Some(_), Some(_)) => return Err(AuthError::UnknownRealm),
    };
    Ok((token.trim(), realm))
}

/// The `iss` claim of a token whose signature is not checked yet.
fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Issuer {
        iss: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Issuer>(&bytes).ok()?.iss
}

/// The realm a Keycloak issuer (`https://host/realms/<realm>`) names.
fn keycloak_realm(issuer: &str) -> Option<&str> {
    let (_, realm) = issuer.trim_end_matches('/').rsplit_once("/realms/")?;
    valid_realm_name(realm).then_some(realm)
}

/// Reads every `PUBLIC KEY` block of a PEM file as an RS256 or ES256 key.
fn load_public_keys(path: &Path) -> Result<Vec<VerificationKey>, AuthConfigError> {
    let fail = |reason: String| AuthConfigError::PublicKeys {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut keys = Vec::new();
    const BEGIN: &str = "-----BEGIN ";
    let mut rest = text.as_str();
    while let Some(start) = rest.find(BEGIN) {
        let block_start = &rest[start..];
        let end_marker = block_start
            .find("-----END ")
            .ok_or_else(|| fail("unterminated PEM block".into()))?;
        let block_end = block_start[end_marker..]
            .find("\n")
            .map(|n| end_marker + n + 1)
            .unwrap_or(block_start.len());
        let block = &block_start[..block_end];
        rest = &block_start[block_end..];
        if !block.starts_with("-----BEGIN PUBLIC KEY-----")
            && !block.starts_with("-----BEGIN RSA PUBLIC KEY-----")
        {
            return Err(fail(
                "only PUBLIC KEY blocks are accepted (no private keys or certificates)".into(),
            ));
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(block.as_bytes()) {
            keys.push(VerificationKey {
                algorithm: Algorithm::RS256,
                key,
            });
        } else if let Ok(key) = DecodingKey::from_ec_pem(block.as_bytes()) {
            keys.push(VerificationKey {
                algorithm: Algorithm::ES256,
                key,
            });
        } else {
            return Err(fail(
                "a PEM block is neither an RSA nor an EC public key".into(),
            ));
        }
    }
    if keys.is_empty() {
        return Err(fail("no PUBLIC KEY block found".into()));
    }
    Ok(keys)
}

/// Claims of a development token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DevClaims {
    pub sub: String,
    pub roles: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    pub iat: i64,
    pub exp: i64,
}

impl DevClaims {
    /// Claims issued now, valid for `ttl`, without an issuer.
    pub fn new(
        sub: &str,
        roles: &[&str],
        tenant_id: Option<&str>,
        ttl: std::time::Duration,
    ) -> Self {
        let now = chrono::Utc::now().timestamp();
        DevClaims {
            sub: sub.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            tenant_id: tenant_id.map(str::to_owned),
            iss: None,
            iat: now,
            exp: now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
        }
    }
}

/// Mints an HS256 token (`jobstats token`, the demo, tests).
pub fn mint_hs256(secret: &str, claims: &DevClaims) -> Result<String, String> {
    let key =
        jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), claims, &key)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "unit-test-secret-0123456789abcdef0123";

    fn authenticator(issuer: Option<&str>, realms: Option<&[&str]>) -> Authenticator {
        Authenticator::new(AuthSettings {
            hs256_secret: Some(SECRET.into()),
            public_key_file: None,
            issuer: issuer.map(str::to_owned),
            realms: realms.map(|r| r.iter().map(|s| s.to_string()).collect()),
            audience: None,
            jwks_url: None,
        })
        .unwrap()
    }

    fn token(issuer: Option<&str>) -> String {
        let now = chrono::Utc::now().timestamp();
        mint_hs256(
            SECRET,
            &DevClaims {
                sub: "u".into(),
                roles: vec![ROLE_SUPER_ADMIN.into()],
                tenant_id: None,
                iss: issuer.map(str::to_owned),
                iat: now,
                exp: now + 600,
            },
        )
        .unwrap()
    }

    /// (issuer setting × realm list × token issuer × `realmname`) → accepted? The contract:
    /// a `realmname` must be a configured realm and the token must have been issued by it;
    /// without one, a token from any allowed realm is accepted.
    #[test]
    fn the_realm_rule_holds_for_every_issuer_setting() {
        const ALPHA: &str = "https://idp.example/realms/alpha";
        const BETA: &str = "https://idp.example/realms/beta";
        const TEMPLATE: &str = "https://idp.example/realms/{realm}";
        const PLAIN: &str = "https://auth.example";
        let both: &[&str] = &["alpha", "beta"];
        let alpha_only: &[&str] = &["alpha"];
        /// (issuer setting, realm list, token issuer, `realmname`, accepted).
        type Row<'a> = (
            Option<&'a str>,
            Option<&'a [&'a str]>,
            Option<&'a str>,
            Option<&'a str>,
            bool,
        );
        #[rustfmt::skip]
        let table: &[Row] = &[
            // A fixed issuer naming a realm (the finding): only that realm's name is accepted.
            (Some(ALPHA), Some(both), Some(ALPHA), None, true),
            (Some(ALPHA), Some(both), Some(ALPHA), Some("alpha"), true),
            (Some(ALPHA), Some(both), Some(ALPHA), Some("beta"), false),
            (Some(ALPHA), Some(both), Some(BETA), Some("beta"), false),
            (Some(ALPHA), None, Some(ALPHA), Some("beta"), false),
            (Some(ALPHA), Some(alpha_only), Some(ALPHA), Some("gamma"), false),
            // A fixed issuer naming no realm cannot vouch for any realm.
            (Some(PLAIN), None, Some(PLAIN), None, true),
            (Some(PLAIN), None, Some(PLAIN), Some("alpha"), false),
            (Some(PLAIN), None, Some(ALPHA), None, false),
            // A templated issuer binds the realm.
            (Some(TEMPLATE), Some(both), Some(ALPHA), None, true),
            (Some(TEMPLATE), Some(both), Some(BETA), Some("beta"), true),
            (Some(TEMPLATE), Some(both), Some(ALPHA), Some("beta"), false),
            (Some(TEMPLATE), Some(alpha_only), Some(BETA), None, false),
            (Some(TEMPLATE), None, Some("https://idp.example/realms/a b"), None, false),
            (Some(TEMPLATE), None, None, None, false),
            // No issuer setting: the realm comes from a Keycloak issuer, when there is one.
            (None, Some(both), Some(BETA), Some("beta"), true),
            (None, Some(both), Some(ALPHA), Some("beta"), false),
            (None, Some(alpha_only), Some(BETA), None, false),
            (None, Some(both), Some(PLAIN), Some("alpha"), false),
            (None, Some(both), Some(PLAIN), None, true),
            (None, None, None, Some("alpha"), false),
            (None, None, None, None, true),
            // A realm name outside the list is refused before the token is read.
            (None, Some(alpha_only), Some(BETA), Some("beta"), false),
        ];
        for (i, (issuer, realms, token_issuer, realm_header, accepted)) in table.iter().enumerate()
        {
            let result =
                authenticator(*issuer, *realms).authenticate(&token(*token_issuer), *realm_header);
            assert_eq!(
                result.is_ok(),
                *accepted,
                "row {i}: issuer {issuer:?}, realms {realms:?}, token from {token_issuer:?}, \
                 realmname {realm_header:?}: {result:?}"
            );
        }
    }
}
