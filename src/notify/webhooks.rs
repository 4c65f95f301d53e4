//! Webhooks (CONTRACT §8): each entry of `JOBSTATS_WEBHOOKS_FILE` gets every matching health
//! change POSTed, signed with its secret. Such an entry is an alert channel of kind `webhook`
//! (CONTRACT §11), delivered like every channel ([`super::channels::delivery`]): its own
//! durable consumer `jobstats-webhook-<name>`, dead letters on `jobstats.webhook-dead.<name>`.

use std::path::Path;

use hmac::{KeyInit, Mac};
use serde::Deserialize;

use super::channels::{self, Channel, Filters, Kind};

/// `JOBSTATS_WEBHOOKS_FILE` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhooksFile {
    #[serde(default)]
    webhooks: Vec<WebhookEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookEntry {
    name: Option<String>,
    url: String,
    secret: String,
    tenants: Option<Vec<String>>,
    states: Option<Vec<String>>,
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    retry_initial_ms: Option<u64>,
    retry_max_ms: Option<u64>,
}

/// Reads and validates the webhooks file; every problem names the entry and the key.
pub fn load(path: &Path, public_url: Option<&reqwest::Url>) -> Result<Vec<Channel>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("JOBSTATS_WEBHOOKS_FILE {}: {e}", path.display()))?;
    let mut webhooks =
        parse(&text).map_err(|e| format!("JOBSTATS_WEBHOOKS_FILE {}: {e}", path.display()))?;
    for webhook in &mut webhooks {
        webhook.public_url = public_url.cloned();
    }
    Ok(webhooks)
}

/// Parses the file's text (see [`load`]).
pub fn parse(text: &str) -> Result<Vec<Channel>, String> {
    let file: WebhooksFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut names = std::collections::HashSet::new();
    let mut webhooks = Vec::new();
    for (index, entry) in file.webhooks.into_iter().enumerate() {
        let webhook = validate(entry).map_err(|e| format!("webhooks[{index}]: {e}"))?;
        if !names.insert(webhook.name.clone()) {
            return Err(format!(
                "webhooks[{index}]: name {:?} is used twice (set `name` to tell them apart)",
                webhook.name
            ));
        }
        webhooks.push(webhook);
    }
    Ok(webhooks)
}

fn validate(entry: WebhookEntry) -> Result<Channel, String> {
    let url = reqwest::Url::parse(&entry.url).map_err(|e| format!("url {:?}: {e}", entry.url))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "url {:?}: must be an http or https URL with a host",
            entry.url
        ));
    }
    if entry.secret.is_empty() {
        return Err("secret: must not be empty".into());
    }
    let name = match entry.name {
        Some(name) => name,
        None => default_name(&url),
    };
    channels::check_name(&name)?;
    Ok(Channel {
        name,
        kind: Kind::Webhook {
            url,
            secret: entry.secret,
        },
        filters: Filters {
            tenants: entry
                .tenants
                .as_deref()
                .map(channels::parse_tenants)
                .transpose()?,
            states: entry
                .states
                .as_deref()
                .map(channels::parse_states)
                .transpose()?,
            labels: Default::default(),
        },
        retry: channels::retry_policy(
            entry.timeout_ms,
            entry.max_attempts,
            entry.retry_initial_ms,
            entry.retry_max_ms,
        )?,
        repeat: None,
        public_url: None,
    })
}

/// A name that stays the same when entries are reordered: host and a hash of the URL.
fn default_name(url: &reqwest::Url) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(url.as_str().as_bytes());
    let host: String = url
        .host_str()
        .unwrap_or("host")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!("{host}-{}", hex(&digest[..4]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `X-Jobstats-Signature`: `sha256=` and the hex HMAC-SHA256 of the body with the secret.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::HealthState;
    use std::time::Duration;

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_file_is_validated_with_errors_naming_the_entry_and_key() {
        let ok = parse(
            r#"
            [[webhooks]]
            url = "https://hooks.example.com/jobstats"
            secret = "s3cret"
            states = ["missed", "failing"]

            [[webhooks]]
            name = "ops"
            url = "http://127.0.0.1:9000/"
            secret = "x"
            tenants = ["3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e11"]
            retry_initial_ms = 50
            "#,
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert!(
            ok[0].name.starts_with("hooks-example-com-"),
            "{}",
            ok[0].name
        );
        assert_eq!(
            ok[0].filters.states,
            Some(vec![HealthState::Missed, HealthState::Failing])
        );
        assert_eq!(
            (ok[1].retry.max_attempts, ok[1].retry.retry_initial),
            (12, Duration::from_millis(50))
        );
        for (text, fragment) in [
            ("[[webhooks]]\nurl = \"ftp://x/\"\nsecret = \"s\"", "webhooks[0]: url"),
            ("[[webhooks]]\nurl = \"http://x/\"\nsecret = \"\"", "secret"),
            ("[[webhooks]]\nurl = \"http://x/\"\nsecret = \"s\"\nstates = [\"late\"]", "states: \"late\""),
            ("[[webhooks]]\nurl = \"http://x/\"\nsecret = \"s\"\ntenants = [\"acme\"]", "tenants"),
            ("[[webhooks]]\nurl = \"http://x/\"\nsecret = \"s\"\nretries = 3", "unknown field `retries`"),
            ("[[webhooks]]\nurl = \"http://x/\"\nsecret = \"s\"\n[[webhooks]]\nurl = \"http://x/\"\nsecret = \"t\"", "used twice"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(fragment), "{text:?}: {error}");
        }
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_the_cap() {
        let webhook = &parse("[[webhooks]]\nurl = \"http://x/\"\nsecret = \"s\"\nretry_initial_ms = 1000\nretry_max_ms = 5000").unwrap()[0];
        for (attempt, full) in [(1, 1_000), (2, 2_000), (3, 4_000), (4, 5_000), (30, 5_000)] {
            let pause = webhook.retry.backoff(attempt).as_millis() as u64;
            assert!(
                (full / 2..=full).contains(&pause),
                "attempt {attempt}: {pause} ms"
            );
        }
    }
}
