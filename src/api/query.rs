//! Query strings read strictly (CONTRACT §5): each parameter at most once, each value
//! checked, and page cursors that only work for the query that made them.

use std::collections::HashMap;

use base64::Engine;
use poem::Request;

use super::errors::ApiError;

/// The query string's parameters, each present at most once.
pub struct QueryParams(HashMap<String, String>);

impl QueryParams {
    pub fn of(request: &Request) -> Result<Self, ApiError> {
        let raw = request.uri().query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
            .map_err(|_| ApiError::InvalidParameter("The query string is malformed".into()))?;
        let mut params = HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            if params.contains_key(&name) {
                return Err(invalid(&name, "must appear at most once"));
            }
            params.insert(name, value);
        }
        Ok(QueryParams(params))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// An integer in `min..=max`, `default` when absent.
    pub fn integer(&self, name: &str, min: u32, max: u32, default: u32) -> Result<u32, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        text.parse::<u32>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| invalid(name, &format!("must be an integer from {min} to {max}")))
    }

    /// A non-negative integer up to `u64::MAX`, `None` when absent.
    pub fn unsigned(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|text| {
                text.parse::<u64>()
                    .map_err(|_| invalid(name, "must be a non-negative integer"))
            })
            .transpose()
    }

    /// A comma-separated list of values `parse` accepts; empty when absent.
    pub fn list<T>(
        &self,
        name: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Vec<T>, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(Vec::new());
        };
        text.split(',')
            .map(|item| {
                parse(item).ok_or_else(|| {
                    invalid(
                        name,
                        &format!("has {item:?}; expected a comma-separated list of {expected}"),
                    )
                })
            })
            .collect()
    }

    /// One of `choices`, `default` when absent.
    pub fn choice<'c>(
        &self,
        name: &str,
        choices: &[&'c str],
        default: &'c str,
    ) -> Result<&'c str, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        choices
            .iter()
            .find(|c| **c == text)
            .copied()
            .ok_or_else(|| invalid(name, &format!("must be one of {}", choices.join(", "))))
    }

    /// An RFC 3339 time, as ms since the epoch.
    pub fn time(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|text| {
                chrono::DateTime::parse_from_rfc3339(text)
                    .map(|t| t.timestamp_millis())
                    .map_err(|_| {
                        invalid(name, "must be an RFC 3339 time like 2025-07-10T12:00:00Z")
                    })
            })
            .transpose()
    }
}

pub fn invalid(name: &str, reason: &str) -> ApiError {
    ApiError::InvalidParameter(format!("Invalid parameter {name}: {reason}"))
}

/// An opaque keyset position: where the previous page ended, and a fingerprint of the query
/// (tenant, job, filters, order) it belongs to, so a cursor from another query is refused
/// instead of read in the wrong context.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// The query's fingerprint.
    #[serde(rename = "q")]
    pub query: String,
    /// The sort key of the last item (null for items without one).
    #[serde(rename = "k")]
    pub key: serde_json::Value,
    /// The last item's name or id (the tie-breaker).
    #[serde(rename = "i")]
    pub id: String,
    /// A job list's order frozen at its first page, and where the next page starts in it.
    #[serde(rename = "f", default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<(u64, usize)>,
    /// The stream position the first page of executions was read at.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<u64>,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// Reads the `cursor` parameter, which must come from a query with `fingerprint`.
    pub fn decode(params: &QueryParams, fingerprint: &str) -> Result<Option<Cursor>, ApiError> {
        let Some(text) = params.get("cursor") else {
            return Ok(None);
        };
        let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Cursor>(&bytes).ok())
            .ok_or_else(|| invalid("cursor", "is not a cursor this service issued"))?;
        if cursor.query != fingerprint {
            return Err(invalid(
                "cursor",
                "belongs to another query (tenant, job, filters or order)",
            ));
        }
        Ok(Some(cursor))
    }
}

/// FNV-1a, 64 bits: the same on every replica, build and restart, which `std`'s
/// `DefaultHasher` does not promise (ETags and cursors must match across replicas).
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A stable fingerprint of a query's parts (see [`StableHasher`]).
pub fn fingerprint(parts: &[&str]) -> String {
    use std::hash::Hasher;
    let mut hash = StableHasher::default();
    for part in parts {
        hash.write(part.as_bytes());
        hash.write(&[0xff]);
    }
    format!("{:016x}", hash.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_refuses_another_query() {
        let q = fingerprint(&["tenant", "jobs", "name", "asc"]);
        let cursor = Cursor {
            query: q.clone(),
            key: serde_json::json!(12),
            id: "nightly".into(),
            frozen: Some((7, 50)),
            as_of: Some(9),
        };
        let request = Request::builder()
            .uri(format!("/x?cursor={}", cursor.encode()).parse().unwrap())
            .finish();
        let params = QueryParams::of(&request).unwrap();
        assert_eq!(Cursor::decode(&params, &q).unwrap(), Some(cursor));
        let other = fingerprint(&["other-tenant", "jobs", "name", "asc"]);
        assert!(Cursor::decode(&params, &other).is_err());
        let garbage = Request::builder()
            .uri("/x?cursor=bm90LWpzb24".parse().unwrap())
            .finish();
        assert!(QueryParams::of(&garbage)
            .and_then(|p| Cursor::decode(&p, &q))
            .is_err());
    }

    #[test]
    fn a_repeated_parameter_is_refused_by_name() {
        let request = Request::builder()
            .uri("/x?limit=5&limit=6".parse().unwrap())
            .finish();
        let error = QueryParams::of(&request).err().unwrap();
        assert!(error.to_string().contains("limit"), "{error}");
    }
}
