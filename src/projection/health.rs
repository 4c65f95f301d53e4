//! Job health (CONTRACT §5): a pure function of a job's read model, its schedule and the
//! instant judged. No I/O and no clock: the caller says which instant (`asOf`) the projection
//! can vouch for, so a lagging projector never raises a false `missed` or `stuck`.
//!
//! What it needs beyond the aggregates is bounded by time, never by history: the start times
//! in the matching window (at most 8 days plus grace) and the oldest processing executions.

use super::{EpochMillis, JobStats};
use crate::schedule::CronSchedule;

/// How far back fires are matched to starts (the contract's 8 days).
pub const MATCHING_WINDOW_MS: i64 = 8 * DAY_MS;
const DAY_MS: i64 = 86_400_000;
/// Default grace bounds: 10% of the cron period, clamped to 1 min … 1 h.
const MIN_DEFAULT_GRACE_MS: i64 = 60_000;
const MAX_DEFAULT_GRACE_MS: i64 = 3_600_000;
/// At most this many stuck execution ids are listed.
pub const MAX_STUCK_IDS: usize = 20;
/// More fires than 8 days of a once-a-minute cron (11,520) can hold.
const MAX_FIRES: usize = 12_000;

/// A job's health state, in the contract's order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthState {
    Unknown,
    Stuck,
    Missed,
    Failing,
    Healthy,
    New,
}

impl HealthState {
    pub const ALL: [HealthState; 6] = [
        HealthState::Unknown,
        HealthState::Stuck,
        HealthState::Missed,
        HealthState::Failing,
        HealthState::Healthy,
        HealthState::New,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Stuck => "stuck",
            HealthState::Missed => "missed",
            HealthState::Failing => "failing",
            HealthState::Healthy => "healthy",
            HealthState::New => "new",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Which instant the projection can vouch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// Judge at this instant: the request time while caught up, else the stream publish time
    /// of the last applied event.
    At(EpochMillis),
    /// The stream has been unreachable too long to judge time-based states: the state is
    /// `unknown` since `since`; the other fields are as of `as_of` (the last applied event).
    Unknown {
        as_of: EpochMillis,
        since: EpochMillis,
    },
}

impl Judgement {
    pub fn as_of(self) -> EpochMillis {
        match self {
            Judgement::At(at) | Judgement::Unknown { as_of: at, .. } => at,
        }
    }
}

/// A cron's fire times over a span, listed once and searched many times: judging a
/// once-a-minute job over 8 days walks 11,520 fires, which croner computes at about a
/// microsecond each. Cheap to clone (shared), so one list can serve every job with the same
/// cron. Questions outside the span go to the cron itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Fires(std::sync::Arc<FireList>);

#[derive(Debug, PartialEq)]
struct FireList {
    cron: CronSchedule,
    /// Exclusive.
    from: EpochMillis,
    /// Inclusive.
    until: EpochMillis,
    times: Vec<EpochMillis>,
}

impl Fires {
    /// Lists the fires in `(from, until]`.
    pub fn new(cron: CronSchedule, from: EpochMillis, until: EpochMillis) -> Self {
        let times = cron.fires_between(from, until, usize::MAX);
        Fires(std::sync::Arc::new(FireList {
            cron,
            from,
            until,
            times,
        }))
    }

    /// The span [`Fires::for_judging`] lists: what health may ask at any instant from
    /// `earliest_as_of` to a day after `latest_as_of`.
    pub fn judging_span(
        earliest_as_of: EpochMillis,
        latest_as_of: EpochMillis,
    ) -> (EpochMillis, EpochMillis) {
        (
            earliest_as_of - MATCHING_WINDOW_MS - 2 * DAY_MS,
            latest_as_of + DAY_MS,
        )
    }

    /// Fires covering [`Fires::judging_span`].
    pub fn for_judging(
        cron: CronSchedule,
        earliest_as_of: EpochMillis,
        latest_as_of: EpochMillis,
    ) -> Self {
        let (from, until) = Fires::judging_span(earliest_as_of, latest_as_of);
        Fires::new(cron, from, until)
    }

    /// Whether this list answers every question about `(from, until]` itself.
    pub fn covers(&self, from: EpochMillis, until: EpochMillis) -> bool {
        self.0.from <= from && until <= self.0.until
    }

    /// How many fires are listed (what this value costs in memory).
    pub fn len(&self) -> usize {
        self.0.times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.times.is_empty()
    }

    pub fn cron(&self) -> &CronSchedule {
        &self.0.cron
    }

    pub fn latest_at_or_before(&self, at: EpochMillis) -> Option<EpochMillis> {
        let list = &*self.0;
        let count = list.times.partition_point(|f| *f <= at);
        if at <= list.until && count > 0 {
            return Some(list.times[count - 1]);
        }
        list.cron.latest_at_or_before(at)
    }

    pub fn next_after(&self, at: EpochMillis) -> Option<EpochMillis> {
        let list = &*self.0;
        let count = list.times.partition_point(|f| *f <= at);
        if at >= list.from && count < list.times.len() {
            return Some(list.times[count]);
        }
        chrono::DateTime::from_timestamp_millis(at)
            .and_then(|t| list.cron.next_after(t))
            .map(|t| t.timestamp_millis())
    }

    /// The fires in `(after, until]`.
    pub fn between(&self, after: EpochMillis, until: EpochMillis) -> std::borrow::Cow<'_, [i64]> {
        let list = &*self.0;
        if after >= list.from && until <= list.until {
            let start = list.times.partition_point(|f| *f <= after);
            let end = list.times.partition_point(|f| *f <= until);
            return std::borrow::Cow::Borrowed(&list.times[start..end.max(start)]);
        }
        std::borrow::Cow::Owned(list.cron.fires_between(after, until, MAX_FIRES))
    }
}

/// After this long without the stream, time-based states are not judged (`unknown`).
pub const UNREACHABLE_AFTER_MS: i64 = 60_000;

/// Where the projection stands, as the projector reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Everything the stream held when last asked has been applied, and the stream is there.
    pub caught_up: bool,
    /// Since when the stream has been unreachable, if it is.
    pub unreachable_since: Option<EpochMillis>,
    /// Stream publish time of the last applied message.
    pub last_published_at: Option<EpochMillis>,
}

impl Position {
    /// The instant the projection can vouch for at `now` (CONTRACT §5): `now` while caught
    /// up, else the publish time of the last applied event, and `unknown` after
    /// [`UNREACHABLE_AFTER_MS`] without the stream.
    pub fn judgement(&self, now: EpochMillis) -> Judgement {
        let seen = self.last_published_at.unwrap_or(now).min(now);
        match self.unreachable_since {
            Some(since) if now - since > UNREACHABLE_AFTER_MS => Judgement::Unknown {
                as_of: seen,
                since: since + UNREACHABLE_AFTER_MS,
            },
            _ if self.caught_up => Judgement::At(now),
            _ => Judgement::At(seen),
        }
    }
}

/// What health needs beyond the job's aggregates.
#[derive(Debug, Clone, Copy)]
pub struct HealthInput<'a> {
    pub stats: &'a JobStats,
    /// The current schedule's fires (`None`: no schedule, never `missed`).
    pub fires: Option<&'a Fires>,
    /// Execution start times, ascending, covering at least
    /// [`HealthInput::starts_needed_from`] onwards.
    pub starts: &'a [EpochMillis],
    /// The oldest processing executions (start time, id), oldest first: at least
    /// [`MAX_STUCK_IDS`] + 1 of them when there are that many.
    pub processing: &'a [(EpochMillis, String)],
    /// `JOBSTATS_MAX_RUNTIME`, for jobs whose schedule does not set one.
    pub default_max_runtime_ms: i64,
}

/// A job's health at one instant (CONTRACT §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub state: HealthState,
    pub as_of: EpochMillis,
    pub since: Option<EpochMillis>,
    pub consecutive_failures: i64,
    pub missed_last_24h: u32,
    pub missed_last_7d: u32,
    pub stuck_execution_ids: Vec<String>,
    /// The latest fire at or before `as_of`.
    pub expected_at: Option<EpochMillis>,
    /// The grace in force (null without a cron).
    pub grace_ms: Option<i64>,
    pub max_runtime_ms: i64,
    /// `true` when the last finished execution failed; `None` before any finished.
    pub last_failed: Option<bool>,
    /// The silence in force at `as_of` (CONTRACT §11): until when, why, by whom.
    pub silence: Option<ActiveSilence>,
}

/// A silence in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSilence {
    pub until: EpochMillis,
    pub reason: Option<String>,
    pub by: Option<String>,
}

/// The grace in force at `as_of`: the schedule's, else 10% of the cron period around `as_of`.
pub fn grace_ms(stats: &JobStats, fires: Option<&Fires>, as_of: EpochMillis) -> Option<i64> {
    let fires = fires?;
    if let Some(grace) = stats.schedule.as_ref().and_then(|s| s.grace_ms) {
        return Some(grace);
    }
    let previous = fires.latest_at_or_before(as_of);
    let next = fires.next_after(as_of);
    let period = match (previous, next) {
        (Some(p), Some(n)) => n - p,
        _ => MAX_DEFAULT_GRACE_MS * 10,
    };
    Some((period / 10).clamp(MIN_DEFAULT_GRACE_MS, MAX_DEFAULT_GRACE_MS))
}

/// The earliest start time health at `as_of` may look at: the caller must supply every start
/// from here on.
pub fn starts_needed_from(
    stats: &JobStats,
    cron: Option<&CronSchedule>,
    as_of: EpochMillis,
) -> Option<EpochMillis> {
    let cron = cron?;
    let grace = stats
        .schedule
        .as_ref()
        .and_then(|s| s.grace_ms)
        .unwrap_or(MAX_DEFAULT_GRACE_MS);
    let latest_due = cron.latest_at_or_before(as_of - grace).unwrap_or(as_of);
    Some((as_of - MATCHING_WINDOW_MS).min(latest_due) - grace)
}

/// Judges one job.
pub fn evaluate(input: &HealthInput<'_>, judgement: Judgement) -> Health {
    let as_of = judgement.as_of();
    let stats = input.stats;
    let schedule = stats.schedule.as_ref();
    let max_runtime_ms = schedule
        .and_then(|s| s.max_runtime_ms)
        .unwrap_or(input.default_max_runtime_ms);
    let fires = input
        .fires
        .filter(|_| schedule.is_some_and(|s| s.cron.is_some()));
    let grace = grace_ms(stats, fires, as_of);

    let stuck: Vec<&(EpochMillis, String)> = input
        .processing
        .iter()
        .filter(|(started, _)| as_of - started > max_runtime_ms)
        .collect();
    let missed = match (fires, grace, schedule) {
        (Some(fires), Some(grace), Some(schedule)) => {
            missed(fires, schedule.since, grace, as_of, input.starts)
        }
        _ => Missed::default(),
    };
    let run = stats.outcome_run.as_ref();
    let last_failed = stats.last_finished.as_ref().map(|l| l.failed);
    let consecutive_failures = run.filter(|r| r.failed).map_or(0, |r| r.length);
    // `failing` and `healthy` hold since their run of outcomes began, unless a `missed` or
    // `stuck` episode interrupted it: then since that episode ended. Otherwise a job going
    // healthy → missed → healthy would announce the same (state, since) twice, and the
    // second change would share the first one's Nats-Msg-Id (CONTRACT §8).
    let stuck_ended = stats
        .last_finished
        .as_ref()
        .filter(|l| l.duration_ms.is_some_and(|d| d > max_runtime_ms) && l.finished_at <= as_of)
        .map(|l| l.finished_at);
    let outcome_since = |run: Option<&super::job_stats::OutcomeRun>| {
        run.map(|r| r.first.0)
            .into_iter()
            .chain(missed.cleared_at)
            .chain(stuck_ended)
            .max()
    };

    // With thresholds (CONTRACT §11) the verdict, not the last outcome, says failing or
    // healthy, since the run that crossed the threshold; with both at 1 they are the same.
    let verdict = stats.verdict();
    let verdict_since = |since: EpochMillis| {
        std::iter::once(since)
            .chain(missed.cleared_at)
            .chain(stuck_ended)
            .max()
    };
    let (state, since) = if let Judgement::Unknown { since, .. } = judgement {
        (HealthState::Unknown, Some(since))
    } else if let Some((started, _)) = stuck.first() {
        (HealthState::Stuck, Some(started + max_runtime_ms))
    } else if let Some(since) = missed.since {
        (HealthState::Missed, Some(since))
    } else if let (true, Some(v)) = (stats.has_thresholds(), verdict) {
        let state = if v.failing {
            HealthState::Failing
        } else {
            HealthState::Healthy
        };
        (state, verdict_since(v.since))
    } else if last_failed == Some(true) {
        (HealthState::Failing, outcome_since(run))
    } else if last_failed == Some(false) {
        (HealthState::Healthy, outcome_since(run))
    } else {
        (HealthState::New, None)
    };
    let silence = stats
        .silence
        .as_ref()
        .filter(|s| s.active_at(as_of))
        .map(|s| ActiveSilence {
            until: s.until.unwrap_or(as_of),
            reason: s.reason.clone(),
            by: s.by.clone(),
        });
    Health {
        state,
        as_of,
        since,
        consecutive_failures,
        missed_last_24h: missed.last_24h,
        missed_last_7d: missed.last_7d,
        stuck_execution_ids: stuck
            .iter()
            .take(MAX_STUCK_IDS)
            .map(|(_, id)| id.clone())
            .collect(),
        expected_at: fires.and_then(|f| f.latest_at_or_before(as_of)),
        grace_ms: grace,
        max_runtime_ms,
        last_failed,
        silence,
    }
}

/// The next instant after `health.as_of` at which the clock alone can change the job's state:
/// a fire becoming due (fire + grace) or a processing execution passing its maximum run time.
/// Events change it too; those are seen as they are applied. `processing` is the oldest
/// processing executions (start, id), oldest first.
pub fn next_clock_change(
    health: &Health,
    fires: Option<&Fires>,
    processing: &[(EpochMillis, String)],
) -> Option<EpochMillis> {
    let as_of = health.as_of;
    let due = match (fires, health.grace_ms) {
        (Some(fires), Some(grace)) => fires.next_after(as_of - grace).map(|fire| fire + grace),
        _ => None,
    };
    // Stuck once `as_of − start > maxRuntime`.
    let overrun = processing
        .iter()
        .map(|(started, _)| started + health.max_runtime_ms + 1)
        .find(|at| *at > as_of);
    let silence_ends = health.silence.as_ref().map(|s| s.until);
    due.into_iter()
        .chain(overrun)
        .chain(silence_ends)
        .filter(|at| *at > as_of)
        .min()
}

/// A job's state judged at one instant, and the instants it holds for: until the clock alone
/// could change it. A list filtered or sorted by health reads this instead of judging every job
/// of the tenant again; an event makes a new snapshot of the job, and with it a new memo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateMemo {
    pub state: HealthState,
    /// The instant it was judged at.
    pub from: EpochMillis,
    /// The first instant it may no longer hold.
    pub until: EpochMillis,
}

impl StateMemo {
    /// The memo of `health`, judged from `input`. Besides the instants of
    /// [`next_clock_change`], the state is re-read at the next fire (a grace left to the
    /// default is a tenth of the period around the instant, so it can change there), when
    /// the matching window (the last 8 days) lets go of its oldest fire, and at the next start
    /// the read model holds after the instant (a runner's clock ahead of this one: a late
    /// start ends `missed` at its own time). Ending a memo too early costs one judgement; too
    /// late would be a wrong answer, which the differential test looks for.
    pub fn of(health: &Health, input: &HealthInput<'_>) -> Self {
        let as_of = health.as_of;
        let fires = input.fires.filter(|_| {
            input
                .stats
                .schedule
                .as_ref()
                .is_some_and(|s| s.cron.is_some())
        });
        let next_fire = fires.and_then(|f| f.next_after(as_of));
        let window_lets_go = fires
            .and_then(|f| f.next_after(as_of - MATCHING_WINDOW_MS))
            .map(|fire| fire + MATCHING_WINDOW_MS);
        let next_start = input
            .starts
            .get(input.starts.partition_point(|start| *start <= as_of))
            .copied();
        let until = next_clock_change(health, fires, input.processing)
            .into_iter()
            .chain(next_fire)
            .chain(window_lets_go)
            .chain(next_start)
            .filter(|at| *at > as_of)
            .min()
            .unwrap_or(EpochMillis::MAX);
        StateMemo {
            state: health.state,
            from: as_of,
            until,
        }
    }

    /// The state at `judgement`, when this memo knows it.
    pub fn state_at(&self, judgement: Judgement) -> Option<HealthState> {
        match judgement {
            Judgement::Unknown { .. } => Some(HealthState::Unknown),
            Judgement::At(at) => (self.from <= at && at < self.until).then_some(self.state),
        }
    }
}

/// What matching fires to starts found.
#[derive(Debug, Default)]
struct Missed {
    last_24h: u32,
    last_7d: u32,
    /// The latest due fire has no start: the job is `missed` since the first fire of the
    /// unbroken run of unmatched fires it ends, + grace.
    since: Option<EpochMillis>,
    /// The latest due fire's run started late (after fire + grace): the job was `missed`
    /// until that start.
    cleared_at: Option<EpochMillis>,
}

/// Missed fires in the last 24 h and 7 d, and whether the latest due fire is missed (or was,
/// until a late start).
///
/// Matching (CONTRACT §5): in time order, fire `f` takes the earliest start not yet taken in
/// `[f − grace, f + grace)`; it begins with the first fire after the later of the schedule's
/// `since` and `as_of − 8 days`.
fn missed(
    fires: &Fires,
    schedule_since: EpochMillis,
    grace: i64,
    as_of: EpochMillis,
    starts: &[EpochMillis],
) -> Missed {
    let due_until = as_of - grace;
    let begin = schedule_since.max(as_of - MATCHING_WINDOW_MS);
    let (mut last_24h, mut last_7d) = (0, 0);
    let mut next_start = 0;
    // The first fire of the current unbroken run of unmatched fires: a job down for hours
    // is missed since its first missed fire, not since the latest one.
    let mut unmatched_since = None;
    for &fire in fires.between(begin, due_until).iter() {
        while next_start < starts.len() && starts[next_start] < fire - grace {
            next_start += 1;
        }
        if next_start < starts.len() && starts[next_start] < fire + grace {
            next_start += 1;
            unmatched_since = None;
            continue;
        }
        unmatched_since.get_or_insert(fire);
        if fire > as_of - DAY_MS {
            last_24h += 1;
        }
        if fire > as_of - 7 * DAY_MS {
            last_7d += 1;
        }
    }
    // The state looks at the latest due fire only: a late run (up to `as_of`) clears it.
    let mut found = Missed {
        last_24h,
        last_7d,
        ..Missed::default()
    };
    if let Some(fire) = fires
        .latest_at_or_before(due_until)
        .filter(|fire| *fire > schedule_since)
    {
        let from = starts.partition_point(|s| *s < fire - grace);
        match starts.get(from).filter(|s| **s <= as_of) {
            // Missed: no start since `fire − grace`, so `fire` ended the run above unmatched.
            None => found.since = Some(unmatched_since.unwrap_or(fire) + grace),
            Some(&start) if start >= fire + grace => found.cleared_at = Some(start),
            Some(_) => {}
        }
    }
    found
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
