//! Bearer-token authentication (CONTRACT §3). Keys come only from configuration — never from a
//! URL found in a request or a token — and the accepted algorithms follow from those keys, so
//! `none` and HMAC-with-a-public-key can never verify.

use std::collections::HashSet;
use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::events::TenantId;

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
}

/// Why the authenticator could not be built (start-up error naming the variable).
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("no token key configured: set JOBSTATS_JWT_HS256_SECRET and/or JOBSTATS_JWT_PUBLIC_KEY_FILE")]
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
    settings: AuthSettings,
    /// Tokens already verified, by (token, realm header), with the unix time they expire at:
    /// a dashboard polling with one token pays for the signature check once.
    verified: std::sync::Mutex<VerifiedTokens>,
}

/// Verified tokens by (token, realm header): the principal and the unix time it expires at.
type VerifiedTokens = std::collections::HashMap<(String, Option<String>), (Principal, i64)>;

/// Most verified tokens remembered; past it the cache starts over.
const VERIFIED_TOKEN_CACHE_ENTRIES: usize = 10_000;

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.algorithms())
            .field("issuer", &self.settings.issuer)
            .field("realms", &self.settings.realms)
            .field("audience", &self.settings.audience)
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

impl Authenticator {
    pub fn new(settings: AuthSettings) -> Result<Self, AuthConfigError> {
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
        if keys.is_empty() {
            return Err(AuthConfigError::NoKeys);
        }
        if let Some(realms) = &settings.realms {
            if let Some(bad) = realms.iter().find(|r| !valid_realm_name(r)) {
                return Err(AuthConfigError::Realm(bad.clone()));
            }
        }
        Ok(Authenticator {
            keys,
            settings,
            verified: Default::default(),
        })
    }

    /// The algorithms a token may be signed with.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        let mut algorithms: Vec<Algorithm> = Vec::new();
        for key in &self.keys {
            if !algorithms.contains(&key.algorithm) {
                algorithms.push(key.algorithm);
            }
        }
        algorithms
    }

    /// Reads the `Authorization` and `realmname` headers and verifies the token.
    pub fn authenticate_headers(
        &self,
        headers: &poem::http::HeaderMap,
    ) -> Result<Principal, AuthError> {
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
        self.authenticate(token.trim(), realm)
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
        {
            let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((principal, expires_at)) = cache.get(&cache_key) {
                if now <= *expires_at {
                    return Ok(principal.clone());
                }
            }
        }
        let (principal, expires_at) = self.verify(token, realm)?;
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= VERIFIED_TOKEN_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(cache_key, (principal.clone(), expires_at));
        Ok(principal)
    }

    /// Checks signature and claims; returns the principal and when the token stops being valid.
    fn verify(&self, token: &str, realm: Option<&str>) -> Result<(Principal, i64), AuthError> {
        // `alg: none` and unknown algorithms fail here: jsonwebtoken has no such variant.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let candidates: Vec<&VerificationKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let mut validation = Validation::new(header.alg);
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
            match jsonwebtoken::decode::<Claims>(token, &candidate.key, &validation) {
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
    /// token presented with a `realmname` must come from that realm.
    fn check_issuer(&self, issuer: Option<&str>, realm: Option<&str>) -> Result<(), AuthError> {
        let Some(template) = &self.settings.issuer else {
            // No issuer configured: only the realm binding is checked (Keycloak's `/realms/<r>`).
            return match realm {
                None => Ok(()),
                Some(realm) => match issuer {
                    Some(iss)
                        if iss
                            .trim_end_matches('/')
                            .ends_with(&format!("/realms/{realm}")) =>
                    {
                        Ok(())
                    }
                    _ => Err(AuthError::WrongIssuer),
                },
            };
        };
        let issuer = issuer.ok_or(AuthError::WrongIssuer)?;
        if !template.contains("{realm}") {
            return if issuer == template {
                Ok(())
            } else {
                Err(AuthError::WrongIssuer)
            };
        }
        let (prefix, suffix) = template.split_once("{realm}").expect("checked above");
        let token_realm = issuer
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .ok_or(AuthError::WrongIssuer)?;
        let allowed = match &self.settings.realms {
            Some(realms) => realms.iter().any(|r| r == token_realm),
            None => valid_realm_name(token_realm),
        };
        if !allowed || realm.is_some_and(|r| r != token_realm) {
            return Err(AuthError::WrongIssuer);
        }
        Ok(())
    }
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

/// Mints an HS256 token (`jobstats token`, the demo, tests).
pub fn mint_hs256(secret: &str, claims: &DevClaims) -> Result<String, String> {
    let key =
        jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), claims, &key)
        .map_err(|e| e.to_string())
}
