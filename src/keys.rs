//! Ingest keys (CONTRACT §10): secrets a job presents to report its runs over HTTP (events,
//! ping URLs, Sentry check-ins), one tenant each and good for nothing else.
//!
//! A key is shown once, when it is made; only its SHA-256 is kept, in the NATS KV bucket
//! `JOBSTATS_KEYS` (one entry per key, named by its id), so every replica and the CLI share
//! one set. Each `serve` follows the bucket ([`follow`]) into a [`KeyRing`] it looks keys up
//! in: a revoke (the entry deleted) reaches every replica as fast as NATS delivers it.
//! A key is random (256 bits), so a plain hash is enough: there is nothing to guess.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::{self, kv};
use base64::Engine;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::events::TenantId;
use crate::stream::NatsError;

/// The KV bucket holding every key's record.
pub const KEYS_BUCKET: &str = "JOBSTATS_KEYS";
/// What every ingest key starts with (so a key is told from a JWT at a glance).
pub const KEY_PREFIX: &str = "jsk_";
/// A key's name: free text a person reads in `keys list`.
pub const MAX_NAME_CHARS: usize = 128;

/// What is kept of a key: everything but the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    /// `key_` + 16 hex characters: what `keys revoke` and `DELETE …/keys/{id}` take.
    pub id: String,
    pub name: Option<String>,
    pub tenant_id: TenantId,
    /// RFC 3339, UTC, milliseconds.
    pub created_at: String,
    /// The key's last four characters, to tell keys apart.
    pub last4: String,
    /// Pings and check-ins for a job never seen create it (as `?create=1` does).
    pub auto_create: bool,
    /// Lowercase hex SHA-256 of the key.
    pub sha256: String,
}

/// A key just made: the secret (shown once) and what is stored.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub secret: String,
    pub record: KeyRecord,
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A bad name; nothing was stored.
    #[error("{0}")]
    Invalid(String),
    /// No key has this id (or it was revoked already).
    #[error("no ingest key with id {0}")]
    NotFound(String),
    #[error(transparent)]
    Nats(#[from] NatsError),
}

fn kv_error(error: impl std::fmt::Display) -> KeyError {
    KeyError::Nats(NatsError::Stream {
        stream: format!("KV_{KEYS_BUCKET}"),
        message: error.to_string(),
    })
}

/// Makes a new key for `tenant` (nothing stored yet: see [`KeyStore::insert`]).
pub fn generate(
    tenant: TenantId,
    name: Option<&str>,
    auto_create: bool,
    now: DateTime<Utc>,
) -> Result<NewKey, KeyError> {
    let name = match name.map(str::trim) {
        None | Some("") => None,
        Some(name) if name.chars().count() > MAX_NAME_CHARS => {
            return Err(KeyError::Invalid(format!(
                "the key's name must be at most {MAX_NAME_CHARS} characters"
            )))
        }
        Some(name) if name.chars().any(char::is_control) => {
            return Err(KeyError::Invalid(
                "the key's name must not hold control characters".into(),
            ))
        }
        Some(name) => Some(name.to_owned()),
    };
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).expect("the operating system's random source works");
    let secret = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    );
    let mut id_bytes = [0u8; 8];
    getrandom::fill(&mut id_bytes).expect("the operating system's random source works");
    let id = format!(
        "key_{}",
        id_bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let last4 = secret[secret.len() - 4..].to_owned();
    Ok(NewKey {
        record: KeyRecord {
            id,
            name,
            tenant_id: tenant,
            created_at: crate::projection::format::rfc3339_millis(now.timestamp_millis()),
            last4,
            auto_create,
            sha256: hash(&secret),
        },
        secret,
    })
}

/// Lowercase hex SHA-256 of `secret`.
pub fn hash(secret: &str) -> String {
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Does `text` look like an ingest key (rather than a JWT)?
pub fn looks_like_key(text: &str) -> bool {
    text.starts_with(KEY_PREFIX)
}

/// The keys in `JOBSTATS_KEYS`.
#[derive(Clone)]
pub struct KeyStore {
    kv: kv::Store,
}

impl KeyStore {
    /// Opens the bucket, creating it when missing (`replicas` copies in a cluster).
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, KeyError> {
        let kv = match js.get_key_value(KEYS_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: KEYS_BUCKET.to_owned(),
                    description: "jobstats ingest keys (SHA-256 only)".to_owned(),
                    history: 1,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(kv_error)?,
        };
        Ok(KeyStore { kv })
    }

    /// Stores a new key's record.
    pub async fn insert(&self, record: &KeyRecord) -> Result<(), KeyError> {
        let value = serde_json::to_vec(record).expect("a key record serializes");
        self.kv
            .create(&record.id, value.into())
            .await
            .map_err(kv_error)?;
        Ok(())
    }

    /// Every key (of `tenant`, when given), oldest first.
    pub async fn list(&self, tenant: Option<&TenantId>) -> Result<Vec<KeyRecord>, KeyError> {
        let mut records = Vec::new();
        let mut keys = match self.kv.keys().await {
            Ok(keys) => keys.boxed(),
            Err(error) => return Err(kv_error(error)),
        };
        while let Some(id) = keys.next().await {
            let id = id.map_err(kv_error)?;
            if let Some(record) = self.get(&id).await? {
                if tenant.is_none_or(|tenant| &record.tenant_id == tenant) {
                    records.push(record);
                }
            }
        }
        records.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(records)
    }

    /// One key's record, when it exists.
    pub async fn get(&self, id: &str) -> Result<Option<KeyRecord>, KeyError> {
        if !valid_id(id) {
            return Ok(None);
        }
        let Some(value) = self.kv.get(id).await.map_err(kv_error)? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&value).ok())
    }

    /// Revokes a key: its entry is purged, and every replica following the bucket drops it.
    pub async fn revoke(&self, id: &str) -> Result<KeyRecord, KeyError> {
        let record = self
            .get(id)
            .await?
            .ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
        self.kv.purge(id).await.map_err(kv_error)?;
        Ok(record)
    }
}

/// A key id as [`generate`] makes them (and nothing a KV subject could misread).
fn valid_id(id: &str) -> bool {
    id.strip_prefix("key_").is_some_and(|hex| {
        hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

/// The keys this replica accepts, by hash, as read from the bucket.
#[derive(Default)]
pub struct KeyRing {
    inner: RwLock<Ring>,
}

#[derive(Default)]
struct Ring {
    by_hash: HashMap<String, KeyRecord>,
    /// Key id → hash, to drop a key whose entry is deleted.
    hash_of: HashMap<String, String>,
    loaded: bool,
}

impl KeyRing {
    /// The record of the key `secret`, when it is known and not revoked.
    pub fn lookup(&self, secret: &str) -> Option<KeyRecord> {
        if !looks_like_key(secret) {
            return None;
        }
        let ring = self.inner.read().unwrap_or_else(|p| p.into_inner());
        ring.by_hash.get(&hash(secret)).cloned()
    }

    /// Has the bucket been read to its end at least once?
    pub fn loaded(&self) -> bool {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).loaded
    }

    fn put(&self, record: KeyRecord) {
        let mut ring = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = ring
            .hash_of
            .insert(record.id.clone(), record.sha256.clone())
        {
            ring.by_hash.remove(&old);
        }
        ring.by_hash.insert(record.sha256.clone(), record);
    }

    fn remove(&self, id: &str) {
        let mut ring = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(hash) = ring.hash_of.remove(id) {
            ring.by_hash.remove(&hash);
        }
    }

    fn mark_loaded(&self) {
        self.inner.write().unwrap_or_else(|p| p.into_inner()).loaded = true;
    }

    /// Replaces everything (a new watch after a lost connection re-reads the bucket whole).
    fn clear(&self) {
        let mut ring = self.inner.write().unwrap_or_else(|p| p.into_inner());
        ring.by_hash.clear();
        ring.hash_of.clear();
    }
}

/// Follows `JOBSTATS_KEYS` into `ring` until `shutdown`, reconnecting after failures.
pub async fn follow(
    client: async_nats::Client,
    replicas: usize,
    ring: Arc<KeyRing>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let js = jetstream::new(client);
    let mut supervisor = crate::retry::Supervisor::new("ingest keys");
    tokio::pin!(shutdown);
    loop {
        let error = tokio::select! {
            _ = &mut shutdown => return,
            error = watch(&js, replicas, &ring, &mut supervisor) => error,
        };
        let pause = supervisor.failed(&error, "following JOBSTATS_KEYS");
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One watch of the whole bucket: every current entry, then every change; returns why it
/// ended.
async fn watch(
    js: &jetstream::Context,
    replicas: usize,
    ring: &KeyRing,
    supervisor: &mut crate::retry::Supervisor,
) -> KeyError {
    let store = match KeyStore::open(js, replicas).await {
        Ok(store) => store,
        Err(error) => return error,
    };
    let mut entries = match store.kv.watch_with_history(">").await {
        Ok(entries) => entries,
        Err(error) => return kv_error(error),
    };
    // What the bucket holds now, to know when the replay of current entries is done.
    let head = match store.kv.status().await {
        Ok(status) => status.info.state.last_sequence,
        Err(error) => return kv_error(error),
    };
    ring.clear();
    if head == 0 {
        ring.mark_loaded();
    }
    supervisor.succeeded();
    while let Some(entry) = entries.next().await {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => return kv_error(error),
        };
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<KeyRecord>(&entry.value) {
                Ok(record) if record.id == entry.key => ring.put(record),
                _ => {
                    tracing::warn!(id = %entry.key, "an unreadable entry in JOBSTATS_KEYS is ignored")
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => ring.remove(&entry.key),
        }
        if entry.revision >= head || entry.delta == 0 {
            ring.mark_loaded();
        }
    }
    kv_error("the watch of JOBSTATS_KEYS ended")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::parse("6f1c1a52-4b47-4b8e-9d3f-0a6a1f3b2c11").unwrap()
    }

    #[test]
    fn a_key_is_long_random_and_only_its_hash_is_kept() {
        let made = generate(tenant(), Some("nightly"), false, Utc::now()).unwrap();
        let other = generate(tenant(), None, false, Utc::now()).unwrap();
        assert!(made.secret.starts_with(KEY_PREFIX));
        // 32 bytes in unpadded base64url: 43 characters after the prefix.
        assert_eq!(made.secret.len(), KEY_PREFIX.len() + 43);
        assert_ne!(made.secret, other.secret);
        assert_ne!(made.record.id, other.record.id);
        assert!(valid_id(&made.record.id));
        assert_eq!(made.record.sha256, hash(&made.secret));
        assert!(!serde_json::to_string(&made.record)
            .unwrap()
            .contains(&made.secret[4..]));
        assert_eq!(made.record.last4, &made.secret[made.secret.len() - 4..]);
    }

    #[test]
    fn the_ring_finds_a_key_by_its_secret_and_forgets_a_removed_one() {
        let ring = KeyRing::default();
        let made = generate(tenant(), None, true, Utc::now()).unwrap();
        ring.put(made.record.clone());
        assert_eq!(ring.lookup(&made.secret), Some(made.record.clone()));
        assert_eq!(ring.lookup("jsk_not-a-key"), None);
        assert_eq!(ring.lookup(&made.record.sha256), None);
        ring.remove(&made.record.id);
        assert_eq!(ring.lookup(&made.secret), None);
    }

    #[test]
    fn bad_names_and_ids_are_refused() {
        assert!(generate(tenant(), Some(&"x".repeat(129)), false, Utc::now()).is_err());
        assert!(generate(tenant(), Some("a\nb"), false, Utc::now()).is_err());
        assert!(!valid_id("key_../../x"));
        assert!(!valid_id("key_0123456789ABCDEF"));
        assert!(valid_id("key_0123456789abcdef"));
    }
}
