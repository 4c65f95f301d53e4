//! `GET /api/v1/admin/jobs/{jobName}/flips`: a job's announced health changes, newest first,
//! in keyset pages on their `JOB_HEALTH` sequence (the same on every replica).

use chrono::Utc;
use poem::Request;
use poem_openapi::Object;

use super::errors::ApiError;
use super::query::{fingerprint, invalid, Cursor, QueryParams};
use super::stats::{refuse_repeated_tenant, BearerAuth};
use super::{rfc3339_millis, AppState};
use crate::events::{JobName, TenantId};
use crate::notify::history::Flip;

pub const FLIPS_MESSAGE: &str = "Health changes retrieved successfully";
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;

/// One change of the job's health state.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct FlipEntry {
    /// When the new state began (UTC).
    pub at: String,
    /// unknown, stuck, missed, failing, healthy or new.
    pub state: String,
    pub previous_state: String,
    /// Why, in words, as the notification said it.
    pub reason: String,
    /// Announced while the job was silenced.
    pub silenced: bool,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct FlipsData {
    pub flips: Vec<FlipEntry>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase", example)]
pub struct FlipsEnvelope {
    pub success: bool,
    pub message: String,
    pub data: FlipsData,
    pub timestamp: String,
}

impl poem_openapi::types::Example for FlipsEnvelope {
    fn example() -> Self {
        let flip = |at: &str, state: &str, previous: &str, reason: &str| FlipEntry {
            at: at.into(),
            state: state.into(),
            previous_state: previous.into(),
            reason: reason.into(),
            silenced: false,
        };
        FlipsEnvelope {
            success: true,
            message: FLIPS_MESSAGE.into(),
            data: FlipsData {
                flips: vec![
                    flip(
                        "2026-12-02T13:40:32.120Z",
                        "healthy",
                        "failing",
                        "The last finished execution completed.",
                    ),
                    flip(
                        "2026-12-02T13:20:31.990Z",
                        "failing",
                        "healthy",
                        "The last finished execution failed (at 2026-12-02T13:20:31.990Z).",
                    ),
                ],
                next_cursor: None,
            },
            timestamp: "2026-12-02T14:05:00.000Z".into(),
        }
    }
}

fn entry(flip: &Flip) -> FlipEntry {
    FlipEntry {
        at: rfc3339_millis(flip.at),
        state: flip.state.as_str().to_owned(),
        previous_state: flip.previous_state.as_str().to_owned(),
        reason: flip.reason.clone(),
        silenced: flip.silenced,
    }
}

/// One page of the job's flips and its `ETag`.
pub fn flips(
    state: &AppState,
    request: &Request,
    tenant: TenantId,
    job: &JobName,
    auth: &BearerAuth,
) -> Result<(FlipsEnvelope, String), ApiError> {
    refuse_repeated_tenant(request)?;
    let params = QueryParams::of(request)?;
    let from = params.time("from")?;
    let to = params.time("to")?;
    if let (Some(from), Some(to)) = (from, to) {
        if from > to {
            return Err(invalid("from", "must not be after to"));
        }
    }
    let limit = params.integer("limit", 1, MAX_LIMIT, DEFAULT_LIMIT)?;
    let query_id = fingerprint(&[
        &tenant.to_string(),
        job.as_str(),
        "flips",
        &format!("{from:?}"),
        &format!("{to:?}"),
    ]);
    let before = match Cursor::decode(&params, &query_id)? {
        None => None,
        Some(cursor) => Some(
            cursor
                .key
                .as_u64()
                .ok_or_else(|| invalid("cursor", "is not a cursor this service issued"))?,
        ),
    };
    state.check_served(&tenant)?;
    auth.0.authorize(&tenant).map_err(ApiError::Forbidden)?;
    state
        .readers
        .get()
        .cached_job_snapshot(&tenant, job, 0)?
        .ok_or(ApiError::JobNotFound)?;
    let page = state.flips.page(
        &tenant.to_string(),
        job.as_str(),
        (from, to),
        before,
        limit as usize,
    );
    let next_cursor = page.flips.last().filter(|_| page.more).map(|last| {
        Cursor {
            query: query_id.clone(),
            key: last.sequence.into(),
            id: String::new(),
            frozen: None,
            as_of: None,
        }
        .encode()
    });
    let newest = page.flips.first().map_or(0, |flip| flip.sequence);
    let shape = fingerprint(&[
        &query_id,
        &limit.to_string(),
        params.get("cursor").unwrap_or(""),
    ]);
    let etag = format!("W/\"flips-{newest}-{}-{shape}\"", page.flips.len());
    Ok((
        FlipsEnvelope {
            success: true,
            message: FLIPS_MESSAGE.to_owned(),
            data: FlipsData {
                flips: page.flips.iter().map(entry).collect(),
                next_cursor,
            },
            timestamp: rfc3339_millis(Utc::now().timestamp_millis()),
        },
        etag,
    ))
}
