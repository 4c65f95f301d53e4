//! The stats response serialized once per read-model snapshot.
//!
//! A snapshot stays valid until its job changes, and every answer from it is the same bytes
//! except the request time (`generatedAt`, `timestamp`) and what is judged at it: the
//! `schedule` (`nextRun`, `expectedAt`, …) and `health` objects. Serializing the whole
//! envelope per request (poem-openapi's `ToJSON` → `serde_json::Value` → bytes) was a fifth of
//! the endpoint's CPU; here it happens once per snapshot, and a request serializes only those
//! small objects (with serde, straight from the structs) and copies the parts around them.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use poem_openapi::{
    payload::Payload,
    registry::{MetaSchemaRef, Registry},
    types::{ToJSON, Type},
};

use super::rfc3339_millis;
use super::stats::{
    health_stats, render, schedule_stats, JobStatsEnvelope, UptimeStats, WindowStats,
    SUCCESS_MESSAGE,
};
use crate::cache::{byte_bounded, ByteBounded};
use crate::events::{JobName, TenantId};
use crate::projection::health::{Health, Judgement};
use crate::store::JobSnapshot;

/// Stand-ins for the per-request values while the template is serialized. Control characters
/// cannot occur in job names, cron expressions or the formatted fields before them; an error
/// text (free text from a publisher) could hold them, which the occurrence count catches.
const NOW_MARK: &str = "\u{1}jobstats:now\u{1}";
const SCHEDULE_MARK: &str = "\u{1}jobstats:schedule\u{1}";
const HEALTH_MARK: &str = "\u{1}jobstats:health\u{1}";
const WINDOW_MARK: &str = "\u{1}jobstats:window\u{1}";
const UPTIME_MARK: &str = "\u{1}jobstats:uptime\u{1}";
/// What precedes the window in the serialized data object (its last key: object keys are
/// serialized in order). Dropped with the window when the request has none.
const WINDOW_KEY: &str = ",\"window\":";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// The request time, as an RFC 3339 JSON string.
    Now,
    /// The `schedule` object at the request time.
    Schedule,
    /// The `health` object at the request's judgement.
    Health,
    /// `,"window":{…}` when the request asks for a window, else nothing.
    Window,
    /// The `uptime` object at the request time.
    Uptime,
}

/// One snapshot's response body, minus the request-time values.
pub struct StatsBody {
    snapshot: Arc<JobSnapshot>,
    /// `None` when the snapshot's text defeats the template (see [`NOW_MARK`]): such answers
    /// are serialized whole, per request.
    parts: Option<Vec<Part>>,
    job: JobName,
    /// The last computed next fire time (ms) and its JSON: valid until that instant passes.
    next_run: Mutex<Option<(i64, String)>>,
    /// The last `schedule` and `health` objects made, for reuse while the verdict holds.
    judged: Mutex<Option<Arc<Judged>>>,
}

/// The per-request objects of one verdict. A verdict changes at a few instants (a fire, a
/// grace running out, a run passing its maximum runtime) while `asOf` moves with every
/// request: the objects are kept whole but for `asOf`, which comes first in the health object.
struct Judged {
    /// The health they were made from, `as_of` set to 0.
    verdict: Health,
    next_run: Option<String>,
    schedule_json: String,
    /// The health object after its `asOf` member: `,"consecutiveFailures":…}`.
    health_after_as_of: String,
}

/// The start of a health object serialized with an empty `asOf`.
const HEALTH_EMPTY_AS_OF: &str = "{\"asOf\":\"\"";

impl StatsBody {
    pub fn new(job: &JobName, snapshot: Arc<JobSnapshot>) -> Self {
        let parts = template(job, &snapshot);
        StatsBody {
            snapshot,
            parts,
            job: job.clone(),
            next_run: Mutex::new(None),
            judged: Mutex::new(None),
        }
    }

    /// The JSON body of an answer at `now`, with health judged as `judgement` says.
    pub fn at(
        &self,
        now: DateTime<Utc>,
        judgement: Judgement,
        default_max_runtime_ms: i64,
        uptime: &UptimeStats,
        window: Option<&WindowStats>,
    ) -> Vec<u8> {
        let health = self.snapshot.judge(judgement, default_max_runtime_ms);
        let Some(parts) = &self.parts else {
            let uptime = uptime.clone();
            return whole_body(
                &self.job,
                &self.snapshot,
                now,
                &health,
                uptime,
                window.cloned(),
            );
        };
        let uptime_json = to_json_text(uptime);
        let window_json = window.map_or_else(String::new, |w| {
            format!("{WINDOW_KEY}{}", to_json_text(&WindowJson::of(w)))
        });
        let now_json = json_string(&rfc3339_millis(now.timestamp_millis()));
        let as_of_json = if health.as_of == now.timestamp_millis() {
            now_json.clone()
        } else {
            json_string(&rfc3339_millis(health.as_of))
        };
        let judged = self.judged(health, self.next_run(now));
        let schedule_json = &judged.schedule_json;
        let health_json = format!("{{\"asOf\":{as_of_json}{}", judged.health_after_as_of);
        let size: usize = parts
            .iter()
            .map(|p| match p {
                Part::Literal(text) => text.len(),
                Part::Now => now_json.len(),
                Part::Schedule => schedule_json.len(),
                Part::Health => health_json.len(),
                Part::Window => window_json.len(),
                Part::Uptime => uptime_json.len(),
            })
            .sum();
        let mut body = Vec::with_capacity(size);
        for part in parts {
            body.extend_from_slice(match part {
                Part::Literal(text) => text.as_bytes(),
                Part::Now => now_json.as_bytes(),
                Part::Schedule => schedule_json.as_bytes(),
                Part::Health => health_json.as_bytes(),
                Part::Window => window_json.as_bytes(),
                Part::Uptime => uptime_json.as_bytes(),
            });
        }
        body
    }

    /// The `schedule` and `health` objects of a verdict: the last ones made when the verdict
    /// and next run are the same, else new ones (kept for the next request).
    fn judged(&self, mut health: Health, next_run: Option<String>) -> Arc<Judged> {
        // Nothing in either object but `asOf` reads the instant judged.
        health.as_of = 0;
        let mut last = self.judged.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(judged) = last
            .as_ref()
            .filter(|j| j.verdict == health && j.next_run == next_run)
        {
            return judged.clone();
        }
        let schedule = schedule_stats(&self.snapshot, next_run.clone(), &health);
        let mut health_stats = health_stats(&health, &self.snapshot.stats);
        health_stats.summary.as_of = String::new();
        let health_text = to_json_text(&HealthJson::of(&health_stats));
        let judged = Arc::new(Judged {
            verdict: health,
            next_run,
            schedule_json: to_json_text(&ScheduleJson::of(&schedule)),
            health_after_as_of: health_text
                .strip_prefix(HEALTH_EMPTY_AS_OF)
                .unwrap_or_default()
                .to_owned(),
        });
        *last = Some(judged.clone());
        judged
    }

    /// The schedule's first fire after `now`, cached until that instant passes.
    fn next_run(&self, now: DateTime<Utc>) -> Option<String> {
        let cron = self.snapshot.cron.as_ref()?;
        let now_ms = now.timestamp_millis();
        let mut cached = self.next_run.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, text)) = cached.as_ref().filter(|(fire_ms, _)| now_ms < *fire_ms) {
            return Some(text.clone());
        }
        let Some(fire) = cron.next_after(now) else {
            *cached = None;
            return None;
        };
        let text = rfc3339_millis(fire.timestamp_millis());
        *cached = Some((fire.timestamp_millis(), text.clone()));
        Some(text)
    }

    /// Heap bytes of the template.
    fn template_bytes(&self) -> usize {
        self.parts.as_ref().map_or(0, |parts| {
            parts
                .iter()
                .map(|p| match p {
                    Part::Literal(text) => text.len(),
                    Part::Now | Part::Schedule | Part::Health | Part::Window | Part::Uptime => 0,
                })
                .sum::<usize>()
                + parts.len() * std::mem::size_of::<Part>()
        })
    }

    pub fn is_for(&self, snapshot: &Arc<JobSnapshot>) -> bool {
        Arc::ptr_eq(&self.snapshot, snapshot)
    }
}

fn to_json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

// The per-request objects, serialized with serde straight from the API's structs instead of
// through poem-openapi's `ToJSON` (a `serde_json::Value` tree, then its text: two thirds of
// the body's per-request cost). The fields are declared in the order poem-openapi's map
// writes them (serde_json's sorted keys), so the bytes are the same; the template test
// compares them with the whole serialization.

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ScheduleJson<'a> {
    cron: &'a Option<String>,
    expected_at: &'a Option<String>,
    failure_threshold: i64,
    grace_ms: Option<i64>,
    labels: &'a std::collections::BTreeMap<String, String>,
    last_outcome: &'a Option<String>,
    last_run: &'a Option<String>,
    max_runtime_ms: i64,
    next_run: &'a Option<String>,
    recovery_threshold: i64,
    timezone: &'a str,
}

impl<'a> ScheduleJson<'a> {
    fn of(schedule: &'a super::stats::ScheduleStats) -> Self {
        ScheduleJson {
            cron: &schedule.cron,
            expected_at: &schedule.expected_at,
            failure_threshold: schedule.failure_threshold,
            grace_ms: schedule.grace_ms,
            labels: &schedule.labels,
            recovery_threshold: schedule.recovery_threshold,
            last_outcome: &schedule.last_outcome,
            last_run: &schedule.last_run,
            max_runtime_ms: schedule.max_runtime_ms,
            next_run: &schedule.next_run,
            timezone: &schedule.timezone,
        }
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthJson<'a> {
    as_of: &'a str,
    consecutive_failures: i64,
    missed_runs: MissedRunsJson,
    reason: &'a str,
    silence_reason: &'a Option<String>,
    silenced_by: &'a Option<String>,
    silenced_until: &'a Option<String>,
    since: &'a Option<String>,
    state: &'a str,
    stuck_execution_ids: &'a [String],
}

#[derive(serde::Serialize)]
struct MissedRunsJson {
    #[serde(rename = "last24h")]
    last_24h: u32,
    #[serde(rename = "last7d")]
    last_7d: u32,
}

impl<'a> HealthJson<'a> {
    fn of(health: &'a super::stats::HealthStats) -> Self {
        let summary = &health.summary;
        HealthJson {
            as_of: &summary.as_of,
            consecutive_failures: summary.consecutive_failures,
            missed_runs: MissedRunsJson {
                last_24h: summary.missed_runs.last_24h,
                last_7d: summary.missed_runs.last_7d,
            },
            reason: &health.reason,
            silence_reason: &summary.silence_reason,
            silenced_by: &summary.silenced_by,
            silenced_until: &summary.silenced_until,
            since: &summary.since,
            state: &summary.state,
            stuck_execution_ids: &health.stuck_execution_ids,
        }
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WindowJson<'a> {
    average_execution_time_ms: Option<i64>,
    completed: i64,
    failed: i64,
    from: &'a str,
    granularity: &'a str,
    name: &'a str,
    percentiles: PercentilesJson,
    success_rate: &'a Option<String>,
    success_rate_percent: Option<f64>,
    to: &'a str,
}

#[derive(serde::Serialize)]
struct PercentilesJson {
    #[serde(rename = "p50Ms")]
    p50: Option<i64>,
    #[serde(rename = "p90Ms")]
    p90: Option<i64>,
    #[serde(rename = "p95Ms")]
    p95: Option<i64>,
    #[serde(rename = "p99Ms")]
    p99: Option<i64>,
}

impl<'a> WindowJson<'a> {
    fn of(window: &'a WindowStats) -> Self {
        let p = &window.percentiles;
        WindowJson {
            average_execution_time_ms: window.average_execution_time_ms,
            completed: window.completed,
            failed: window.failed,
            from: &window.from,
            granularity: &window.granularity,
            name: &window.name,
            percentiles: PercentilesJson {
                p50: p.p50_ms,
                p90: p.p90_ms,
                p95: p.p95_ms,
                p99: p.p99_ms,
            },
            success_rate: &window.success_rate,
            success_rate_percent: window.success_rate_percent,
            to: &window.to,
        }
    }
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serializes")
}

fn envelope(
    job: &JobName,
    snapshot: &JobSnapshot,
    now: DateTime<Utc>,
    health: &Health,
    uptime: UptimeStats,
    window: Option<WindowStats>,
) -> JobStatsEnvelope {
    JobStatsEnvelope {
        success: true,
        message: SUCCESS_MESSAGE.to_owned(),
        data: render(job, snapshot, now, health, uptime, window),
        timestamp: rfc3339_millis(now.timestamp_millis()),
    }
}

/// The body as poem-openapi serializes the envelope: the reference the template must equal.
pub fn whole_body(
    job: &JobName,
    snapshot: &JobSnapshot,
    now: DateTime<Utc>,
    health: &Health,
    uptime: UptimeStats,
    window: Option<WindowStats>,
) -> Vec<u8> {
    serde_json::to_vec(&envelope(job, snapshot, now, health, uptime, window).to_json())
        .unwrap_or_default()
}

/// Serializes the envelope with marks in place of the request-time values and splits it there.
fn template(job: &JobName, snapshot: &JobSnapshot) -> Option<Vec<Part>> {
    let now = Utc::now();
    let health = snapshot.judge(Judgement::At(now.timestamp_millis()), 0);
    let mut marked =
        envelope(job, snapshot, now, &health, UptimeStats::default(), None).to_json()?;
    let data = marked.get_mut("data")?.as_object_mut()?;
    data.insert("generatedAt".into(), NOW_MARK.into());
    data.insert("schedule".into(), SCHEDULE_MARK.into());
    data.insert("health".into(), HEALTH_MARK.into());
    data.insert("window".into(), WINDOW_MARK.into());
    data.insert("uptime".into(), UPTIME_MARK.into());
    marked
        .as_object_mut()?
        .insert("timestamp".into(), NOW_MARK.into());
    let text = serde_json::to_string(&marked).ok()?;
    let now_mark = json_string(NOW_MARK);
    let schedule_mark = json_string(SCHEDULE_MARK);
    let health_mark = json_string(HEALTH_MARK);
    let window_mark = format!("{WINDOW_KEY}{}", json_string(WINDOW_MARK));
    let uptime_mark = json_string(UPTIME_MARK);
    if text.matches(&now_mark).count() != 2
        || text.matches(&schedule_mark).count() != 1
        || text.matches(&health_mark).count() != 1
        || text.matches(&window_mark).count() != 1
        || text.matches(&uptime_mark).count() != 1
    {
        return None;
    }
    let mut parts = Vec::new();
    let mut rest = text.as_str();
    loop {
        let next = [
            (&now_mark, Part::Now),
            (&schedule_mark, Part::Schedule),
            (&health_mark, Part::Health),
            (&window_mark, Part::Window),
            (&uptime_mark, Part::Uptime),
        ]
        .into_iter()
        .filter_map(|(mark, part)| rest.find(mark.as_str()).map(|at| (at, mark.len(), part)))
        .min_by_key(|(at, _, _)| *at);
        let Some((at, len, part)) = next else {
            parts.push(Part::Literal(rest.to_owned()));
            break;
        };
        parts.push(Part::Literal(rest[..at].to_owned()));
        parts.push(part);
        rest = &rest[at + len..];
    }
    Some(parts)
}

/// Bodies by (tenant, job, recent), each for the snapshot it was made from.
pub struct BodyCache {
    bodies: ByteBounded<(TenantId, JobName, u32), Arc<StatsBody>>,
}

/// Most template bytes kept (an answer with 100 recent executions is ~20 KB).
const BODY_CACHE_BYTES: u64 = 32 << 20;

impl Default for BodyCache {
    fn default() -> Self {
        BodyCache {
            bodies: byte_bounded(BODY_CACHE_BYTES, 4_096, |(_, job, _), body| {
                (body.template_bytes() + job.as_str().len() + 128) as u64
            }),
        }
    }
}

impl BodyCache {
    /// The body for `snapshot`, made on first use.
    pub fn body(
        &self,
        tenant: &TenantId,
        job: &JobName,
        recent: u32,
        snapshot: Arc<JobSnapshot>,
    ) -> Arc<StatsBody> {
        let key = (*tenant, job.clone(), recent);
        if let Some(body) = self.bodies.get(&key).filter(|body| body.is_for(&snapshot)) {
            return body;
        }
        // Made outside any lock: concurrent requests for a fresh snapshot may each make one,
        // and the last stored wins; all are equal.
        let body = Arc::new(StatsBody::new(job, snapshot));
        self.bodies.insert(key, body.clone());
        body
    }
}

/// A serialized stats envelope: documented with the envelope's schema, sent as it is.
pub struct StatsJson(pub Vec<u8>);

impl Payload for StatsJson {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        <JobStatsEnvelope as Type>::schema_ref()
    }

    fn register(registry: &mut Registry) {
        <JobStatsEnvelope as Type>::register(registry);
    }
}

impl poem::IntoResponse for StatsJson {
    fn into_response(self) -> poem::Response {
        poem::Response::builder()
            .content_type(Self::CONTENT_TYPE)
            .body(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Figures that show in the body, so a splice that dropped them would be seen.
    fn test_uptime() -> UptimeStats {
        crate::notify::history::UptimeFigures {
            last24h: Some(75.0),
            last7d: Some(99.95),
            last30d: None,
        }
        .into()
    }
    use crate::projection::{Execution, ExecutionState, JobStats};
    use crate::store::{ExecutionSummary, Freshness};
    use chrono::TimeZone;

    fn snapshot(cron: Option<&str>, error: Option<&str>) -> Arc<JobSnapshot> {
        let mut stats = JobStats {
            completed: 41,
            failed: 2,
            pending: 1,
            processing: 1,
            duration_sum_ms: 41 * 45_000,
            duration_count: 41,
            last_started_at: Some(1_700_000_000_000),
            ..JobStats::default()
        };
        stats.apply_schedule(
            crate::projection::ScheduleSettings {
                cron: cron.map(str::to_owned),
                ..Default::default()
            },
            1_600_000_000_000,
            uuid::Uuid::new_v4(),
        );
        let parsed = cron.map(|c| crate::schedule::CronSchedule::parse(c).unwrap());
        Arc::new(JobSnapshot {
            state_memo: Default::default(),
            job_id: 1,
            job_sequence: 97,
            health: crate::store::HealthData {
                starts: vec![1_700_000_000_000],
                starts_from: 1_600_000_000_000,
                processing: vec![(1_699_000_000_000, "long-one".into())],
                fires: parsed.clone().map(|c| {
                    crate::projection::health::Fires::for_judging(
                        c,
                        1_700_000_000_000,
                        1_700_000_100_000,
                    )
                }),
            },
            cron: parsed,
            stats,
            recent: vec![ExecutionSummary {
                execution_id: "run-\"7\"".into(),
                row: Execution {
                    state: ExecutionState::Failed,
                    enqueued_at: Some(1_699_999_999_000),
                    started_at: Some(1_700_000_000_000),
                    finished_at: Some(1_700_000_012_345),
                    items_processed: Some(12),
                    error: error.map(str::to_owned),
                    exit_code: Some(3),
                    output: None,
                },
            }],
            freshness: Freshness {
                last_sequence: 99,
                events_applied: 98,
                dead_letters: 1,
                committed_at_ms: 1_700_000_100_000,
                last_published_at_ms: Some(1_700_000_099_000),
            },
        })
    }

    fn window() -> WindowStats {
        let mut merged = crate::projection::rollup::RollupBucket::default();
        merged.add(
            &crate::projection::rollup::Contribution {
                finished_at: 1_700_000_000_000,
                failed: false,
                duration_ms: Some(1_234),
            },
            1,
        );
        let window = crate::projection::rollup::Window::Day;
        let range = window.buckets(1_700_000_050_000);
        super::super::stats::window_stats(window, range, 1_700_000_050_000, &merged)
    }

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).unwrap()
    }

    #[test]
    fn the_template_gives_exactly_the_bytes_of_the_whole_serialization() {
        let job = JobName::parse("nightly.report").unwrap();
        for (cron, error) in [
            (Some("*/5 * * * *"), Some("disk full: \u{7f} \\ \" é")),
            (None, None),
            (Some("0 3 * * 1-5"), Some("")),
        ] {
            let snapshot = snapshot(cron, error);
            let body = StatsBody::new(&job, snapshot.clone());
            assert!(body.parts.is_some());
            // Across fire times, so the cached next run is both reused and replaced.
            for now in [
                1_700_000_000_123,
                1_700_000_000_999,
                1_700_000_300_000,
                1_700_000_300_001,
                1_800_000_000_000,
            ] {
                for judgement in [
                    Judgement::At(now),
                    Judgement::At(now - 3_600_000),
                    Judgement::Unknown {
                        as_of: now - 90_000,
                        since: now - 30_000,
                    },
                ] {
                    let health = snapshot.judge(judgement, 3_600_000);
                    assert_eq!(
                        String::from_utf8(body.at(
                            at(now),
                            judgement,
                            3_600_000,
                            &test_uptime(),
                            None
                        ))
                        .unwrap(),
                        String::from_utf8(whole_body(
                            &job,
                            &snapshot,
                            at(now),
                            &health,
                            test_uptime(),
                            None
                        ))
                        .unwrap(),
                        "cron {cron:?} at {now}, {judgement:?}"
                    );
                    let window = window();
                    assert_eq!(
                        String::from_utf8(body.at(
                            at(now),
                            judgement,
                            3_600_000,
                            &test_uptime(),
                            Some(&window)
                        ))
                        .unwrap(),
                        String::from_utf8(whole_body(
                            &job,
                            &snapshot,
                            at(now),
                            &health,
                            test_uptime(),
                            Some(window.clone())
                        ))
                        .unwrap(),
                        "with a window: cron {cron:?} at {now}, {judgement:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_verdict_is_serialized_once_while_it_holds() {
        let job = JobName::parse("j").unwrap();
        let snapshot = snapshot(Some("*/5 * * * *"), None);
        let body = StatsBody::new(&job, snapshot.clone());
        let last = || body.judged.lock().unwrap().clone().unwrap();
        let answer = |now: i64, judgement: Judgement| {
            let made = body.at(at(now), judgement, 3_600_000, &test_uptime(), None);
            let health = snapshot.judge(judgement, 3_600_000);
            assert_eq!(
                made,
                whole_body(&job, &snapshot, at(now), &health, test_uptime(), None)
            );
            made
        };
        let first = answer(1_700_000_000_123, Judgement::At(1_700_000_000_123));
        let kept = last();
        // A millisecond later: another asOf and generatedAt, the same verdict.
        let second = answer(1_700_000_000_124, Judgement::At(1_700_000_000_124));
        assert!(Arc::ptr_eq(&kept, &last()));
        assert_ne!(first, second);
        // Another verdict (the stream unreadable) is made anew.
        answer(
            1_700_000_000_125,
            Judgement::Unknown {
                as_of: 1_700_000_000_000,
                since: 1_700_000_000_100,
            },
        );
        assert!(!Arc::ptr_eq(&kept, &last()));
    }

    #[test]
    fn an_error_text_holding_a_mark_falls_back_to_the_whole_serialization() {
        let job = JobName::parse("j").unwrap();
        for error in [NOW_MARK, SCHEDULE_MARK, HEALTH_MARK] {
            let snapshot = snapshot(Some("* * * * *"), Some(error));
            let body = StatsBody::new(&job, snapshot.clone());
            assert!(body.parts.is_none());
            let now = at(1_700_000_000_500);
            let judgement = Judgement::At(now.timestamp_millis());
            let health = snapshot.judge(judgement, 1_000);
            let answer = body.at(now, judgement, 1_000, &test_uptime(), None);
            assert_eq!(
                answer,
                whole_body(&job, &snapshot, now, &health, test_uptime(), None)
            );
            let value: serde_json::Value = serde_json::from_slice(&answer).unwrap();
            assert_eq!(value["data"]["recentExecutions"][0]["error"], error);
            assert_eq!(value["timestamp"], "2023-11-14T22:13:20.500Z");
        }
    }

    #[test]
    fn the_cache_stays_within_its_byte_budget() {
        let cache = BodyCache::default();
        let tenant = TenantId::parse("00000000-0000-4000-8000-000000000001").unwrap();
        let big_error = "x".repeat(60_000);
        for i in 0..1_000 {
            let job = JobName::parse(&format!("job-{i}")).unwrap();
            cache.body(&tenant, &job, 10, snapshot(None, Some(&big_error)));
            assert!(
                cache.bodies.weight() <= BODY_CACHE_BYTES,
                "{} bytes",
                cache.bodies.weight()
            );
        }
        // Full, and still serving: the bodies kept are the ones it counts.
        assert!(cache.bodies.weight() > BODY_CACHE_BYTES / 2);
        assert!(cache.bodies.len() > 100);
    }

    #[test]
    fn the_cache_makes_a_new_body_for_a_new_snapshot_only() {
        let cache = BodyCache::default();
        let tenant = TenantId::parse("00000000-0000-4000-8000-000000000001").unwrap();
        let job = JobName::parse("j").unwrap();
        let first = snapshot(None, None);
        let a = cache.body(&tenant, &job, 10, first.clone());
        let b = cache.body(&tenant, &job, 10, first.clone());
        assert!(Arc::ptr_eq(&a, &b));
        let c = cache.body(&tenant, &job, 5, first);
        assert!(!Arc::ptr_eq(&a, &c));
        let d = cache.body(&tenant, &job, 10, snapshot(None, None));
        assert!(!Arc::ptr_eq(&a, &d));
    }
}
