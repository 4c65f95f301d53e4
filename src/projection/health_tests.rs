//! Health: each state from a small history, and a property test against a brute-force
//! reading of the contract over the full execution list.

use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::projection::{ExecutionEvent, ExecutionState, FinishKey, MemoryJob};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
/// 2025-07-10T12:00:00Z, a whole hour.
const T0: i64 = 1_752_148_800_000;

/// A job's rows and aggregates, folded the way the writer folds them.
#[derive(Default)]
struct Job(MemoryJob);

impl std::ops::Deref for Job {
    type Target = MemoryJob;
    fn deref(&self) -> &MemoryJob {
        &self.0
    }
}

impl std::ops::DerefMut for Job {
    fn deref_mut(&mut self) -> &mut MemoryJob {
        &mut self.0
    }
}

impl Job {
    fn apply(&mut self, id: &str, event: ExecutionEvent) {
        self.0.step(id, &event);
    }

    fn run(&mut self, id: &str, start: i64, duration: Option<i64>, ok: bool) {
        self.apply(id, ExecutionEvent::Started { at: start });
        if let Some(duration) = duration {
            let at = start + duration;
            self.apply(
                id,
                if ok {
                    ExecutionEvent::Completed {
                        at,
                        items_processed: None,
                        result: Default::default(),
                    }
                } else {
                    ExecutionEvent::Failed {
                        at,
                        items_processed: None,
                        error: None,
                        result: Default::default(),
                    }
                },
            );
        }
    }

    fn schedule(&mut self, cron: &str, at: i64, grace: Option<i64>, max_runtime: Option<i64>) {
        self.stats.apply_schedule(
            crate::projection::ScheduleSettings {
                cron: Some(cron.to_owned()),
                grace_ms: grace,
                max_runtime_ms: max_runtime,
                ..Default::default()
            },
            at,
            Uuid::new_v4(),
        );
    }

    /// Health as the API computes it: inputs read the way the store reads them.
    fn health(&self, judgement: Judgement) -> Health {
        self.with_input(judgement.as_of(), |input| evaluate(input, judgement))
    }

    /// Health and the state memo a snapshot read at `judgement` would keep.
    fn judged(&self, judgement: Judgement) -> (Health, StateMemo) {
        self.with_input(judgement.as_of(), |input| {
            let health = evaluate(input, judgement);
            let memo = StateMemo::of(&health, input);
            (health, memo)
        })
    }

    /// The inputs of a judgement at `as_of`, read the way the store reads them.
    fn with_input<R>(&self, as_of: i64, judge: impl FnOnce(&HealthInput<'_>) -> R) -> R {
        let cron = self
            .stats
            .schedule
            .as_ref()
            .and_then(|s| s.cron.as_deref())
            .map(|c| CronSchedule::parse(c).unwrap());
        let starts_from = starts_needed_from(&self.stats, cron.as_ref(), as_of).map(|f| f - HOUR);
        let mut starts: Vec<i64> = self
            .rows
            .values()
            .filter_map(|r| r.started_at)
            .filter(|s| starts_from.is_some_and(|from| *s >= from))
            .collect();
        starts.sort_unstable();
        let mut processing: Vec<(i64, String)> = self
            .rows
            .iter()
            .filter(|(_, r)| r.state == ExecutionState::Processing)
            .map(|(id, r)| (r.started_at.unwrap(), id.clone()))
            .collect();
        processing.sort();
        processing.truncate(MAX_STUCK_IDS + 1);
        let fires = cron.map(|c| Fires::for_judging(c, as_of, as_of));
        judge(&HealthInput {
            stats: &self.stats,
            fires: fires.as_ref(),
            starts: &starts,
            processing: &processing,
            default_max_runtime_ms: HOUR,
        })
    }
}

#[test]
fn a_job_whose_last_start_is_five_minutes_old_is_missed_since_the_first_unmatched_fire() {
    let mut job = Job::default();
    job.schedule("* * * * *", T0 - HOUR - 30_000, Some(10_000), None);
    for i in 0..60 {
        job.run(
            &format!("r{i}"),
            T0 - HOUR + i * MIN + 1_000,
            Some(500),
            true,
        );
    }
    // Last start at T0 − 1 min + 1 s; at T0 + 4 min the fires T0 … T0+3m are past their grace,
    // and the job is missed since the first of them (CONTRACT §5: F₀ + grace).
    let health = job.health(Judgement::At(T0 + 4 * MIN));
    assert_eq!(health.state, HealthState::Missed);
    assert_eq!(health.since, Some(T0 + 10_000));
    // Another missed fire later, the trouble still dates from the first.
    let later = job.health(Judgement::At(T0 + 9 * MIN));
    assert_eq!(
        (later.state, later.since),
        (HealthState::Missed, Some(T0 + 10_000))
    );
    assert_eq!((health.missed_last_24h, health.missed_last_7d), (4, 4));
    assert_eq!(health.expected_at, Some(T0 + 4 * MIN));
    // With 10 minutes of grace the same job is not yet due.
    let mut patient = Job::default();
    patient.schedule("* * * * *", T0 - HOUR - 30_000, Some(10 * MIN), None);
    for i in 0..60 {
        patient.run(
            &format!("r{i}"),
            T0 - HOUR + i * MIN + 1_000,
            Some(500),
            true,
        );
    }
    let health = patient.health(Judgement::At(T0 + 4 * MIN));
    assert_eq!(health.state, HealthState::Healthy);
    assert_eq!(health.missed_last_24h, 0);
    // A late run clears the state, but it is outside every fire's grace: the fires stay
    // missed.
    job.run("late", T0 + 4 * MIN - 1, Some(100), true);
    let health = job.health(Judgement::At(T0 + 4 * MIN));
    assert_eq!(health.state, HealthState::Healthy);
    assert_eq!(health.missed_last_24h, 4);
    // Healthy again since that late start, not since its run of successes began: the change
    // back is a new one (its own notification id).
    assert_eq!(health.since, Some(T0 + 4 * MIN - 1));
}

#[test]
fn a_stuck_run_that_finishes_makes_the_job_healthy_since_its_finish() {
    let mut job = Job::default();
    job.schedule("0 0 1 1 *", T0 - 10 * HOUR, None, Some(30 * MIN));
    job.run("early", T0 - 3 * HOUR, Some(1_000), true);
    job.run("hung", T0 - 2 * HOUR, Some(HOUR), true);
    let health = job.health(Judgement::At(T0));
    assert_eq!(
        (health.state, health.since),
        (HealthState::Healthy, Some(T0 - HOUR))
    );
}

#[test]
fn one_start_never_covers_two_fires() {
    let mut job = Job::default();
    job.schedule("* * * * *", T0, Some(1_000), None);
    // Runs every other minute.
    for i in 0..30 {
        job.run(&format!("r{i}"), T0 + (2 * i + 1) * MIN, Some(100), true);
    }
    let health = job.health(Judgement::At(T0 + 60 * MIN + 30_000));
    assert_eq!(health.missed_last_24h, 30);
}

#[test]
fn a_run_processing_past_max_runtime_makes_the_job_stuck_before_anything_else() {
    let mut job = Job::default();
    job.schedule("0 * * * *", T0 - 10 * HOUR, None, Some(30 * MIN));
    job.run("old", T0 - 2 * HOUR, Some(1_000), false);
    job.run("hung", T0 - HOUR, None, true);
    job.run("fresh", T0 - 10 * MIN, None, true);
    let health = job.health(Judgement::At(T0));
    assert_eq!(health.state, HealthState::Stuck);
    assert_eq!(health.since, Some(T0 - HOUR + 30 * MIN));
    assert_eq!(health.stuck_execution_ids, vec!["hung".to_owned()]);
    assert_eq!(health.max_runtime_ms, 30 * MIN);
    // Unknown wins over everything, and says since when.
    let unknown = job.health(Judgement::Unknown {
        as_of: T0,
        since: T0 + 5 * MIN,
    });
    assert_eq!(
        (unknown.state, unknown.since),
        (HealthState::Unknown, Some(T0 + 5 * MIN))
    );
}

#[test]
fn failing_counts_failures_in_a_row_and_a_success_heals_it() {
    let mut job = Job::default();
    job.run("a", T0, Some(1_000), true);
    assert_eq!(
        job.health(Judgement::At(T0 + HOUR)).state,
        HealthState::Healthy
    );
    job.run("b", T0 + MIN, Some(1_000), false);
    job.run("c", T0 + 2 * MIN, Some(1_000), false);
    let health = job.health(Judgement::At(T0 + HOUR));
    assert_eq!(health.state, HealthState::Failing);
    assert_eq!(health.consecutive_failures, 2);
    assert_eq!(health.since, Some(T0 + MIN + 1_000));
    assert_eq!(health.last_failed, Some(true));
    job.run("d", T0 + 3 * MIN, Some(1_000), true);
    let health = job.health(Judgement::At(T0 + HOUR));
    assert_eq!(
        (health.state, health.consecutive_failures, health.since),
        (HealthState::Healthy, 0, Some(T0 + 3 * MIN + 1_000))
    );
}

#[test]
fn a_job_with_nothing_finished_is_new_and_one_without_cron_is_never_missed() {
    let mut job = Job::default();
    job.run("a", T0, None, true);
    let health = job.health(Judgement::At(T0 + 10 * MIN));
    assert_eq!((health.state, health.grace_ms), (HealthState::New, None));
}

#[test]
fn the_default_grace_is_a_tenth_of_the_period_within_a_minute_and_an_hour() {
    for (cron, grace) in [
        ("* * * * *", MIN),
        ("*/30 * * * *", 3 * MIN),
        ("0 */6 * * *", 36 * MIN),
        ("0 2 * * *", HOUR),
    ] {
        let mut job = Job::default();
        job.schedule(cron, T0 - 30 * 24 * HOUR, None, None);
        assert_eq!(
            job.health(Judgement::At(T0)).grace_ms,
            Some(grace),
            "{cron}"
        );
    }
}

#[test]
fn a_lagging_projection_is_judged_at_the_last_applied_event() {
    let caught_up = Position {
        caught_up: true,
        unreachable_since: None,
        last_published_at: Some(T0),
    };
    assert_eq!(caught_up.judgement(T0 + 5_000), Judgement::At(T0 + 5_000));
    let behind = Position {
        caught_up: false,
        ..caught_up
    };
    assert_eq!(behind.judgement(T0 + 5_000), Judgement::At(T0));
    let gone = Position {
        unreachable_since: Some(T0 + 1_000),
        ..behind
    };
    assert_eq!(gone.judgement(T0 + 61_000), Judgement::At(T0));
    assert_eq!(
        gone.judgement(T0 + 61_001),
        Judgement::Unknown {
            as_of: T0,
            since: T0 + 61_000
        }
    );
}

/// The contract read literally, over every execution: no aggregates, no windows, no caches.
fn brute_force(job: &Job, as_of: i64) -> (HealthState, Option<i64>, i64, u32, u32, Vec<String>) {
    let schedule = job.stats.schedule.clone();
    let max_runtime = schedule
        .as_ref()
        .and_then(|s| s.max_runtime_ms)
        .unwrap_or(HOUR);
    let mut stuck: Vec<(i64, String)> = job
        .rows
        .iter()
        .filter(|(_, r)| r.state == ExecutionState::Processing)
        .map(|(id, r)| (r.started_at.unwrap(), id.clone()))
        .filter(|(s, _)| as_of - s > max_runtime)
        .collect();
    stuck.sort();
    let mut finished: Vec<(FinishKey, bool)> = job
        .rows
        .iter()
        .filter(|(_, r)| r.state.is_terminal())
        .map(|(id, r)| {
            (
                (r.finished_at.unwrap(), id.clone()),
                r.state == ExecutionState::Failed,
            )
        })
        .collect();
    finished.sort();
    finished.reverse();
    let run: Vec<&(FinishKey, bool)> = finished
        .iter()
        .take_while(|(_, failed)| Some(*failed) == finished.first().map(|f| f.1))
        .collect();
    let failures = run.first().filter(|r| r.1).map_or(0, |_| run.len() as i64);
    let (m24, m7, missed_since, missed_cleared) = brute_force_missed(job, schedule, as_of);
    // An interrupting episode's end: the late start that cleared `missed`, or the finish of
    // the last finished execution when it ran past maxRuntime.
    let last_finished = job
        .rows
        .iter()
        .filter(|(_, r)| r.state.is_terminal())
        .max_by_key(|(id, r)| (r.finished_at.unwrap(), (*id).clone()));
    let stuck_ended = last_finished
        .filter(|(_, r)| r.duration_ms().is_some_and(|d| d > max_runtime))
        .map(|(_, r)| r.finished_at.unwrap())
        .filter(|at| *at <= as_of);
    let (state, since) = if let Some((start, _)) = stuck.first() {
        (HealthState::Stuck, Some(start + max_runtime))
    } else if missed_since.is_some() {
        (HealthState::Missed, missed_since)
    } else if let Some(last) = run.last() {
        let state = if last.1 {
            HealthState::Failing
        } else {
            HealthState::Healthy
        };
        let since = [Some(last.0 .0), missed_cleared, stuck_ended]
            .into_iter()
            .flatten()
            .max();
        (state, since)
    } else {
        (HealthState::New, None)
    };
    let ids = stuck
        .into_iter()
        .take(MAX_STUCK_IDS)
        .map(|(_, id)| id)
        .collect();
    (state, since, failures, m24, m7, ids)
}

/// Missed fires in the last 24 h and 7 d, and since when the latest due fire is missed (the
/// first fire of the unbroken run of unmatched fires it ends, + grace): each fire matched to
/// at most one start within its grace, literally.
fn brute_force_missed(
    job: &Job,
    schedule: Option<crate::projection::ScheduleRecord>,
    as_of: i64,
) -> (u32, u32, Option<i64>, Option<i64>) {
    let (mut m24, mut m7, mut missed_since, mut cleared) = (0, 0, None, None);
    let Some(schedule) = schedule.filter(|s| s.cron.is_some()) else {
        return (m24, m7, missed_since, cleared);
    };
    let cron = CronSchedule::parse(schedule.cron.as_deref().unwrap()).unwrap();
    let previous = cron.latest_at_or_before(as_of).unwrap();
    let next = cron
        .next_after(chrono::DateTime::from_timestamp_millis(as_of).unwrap())
        .unwrap()
        .timestamp_millis();
    let grace = schedule
        .grace_ms
        .unwrap_or(((next - previous) / 10).clamp(MIN, HOUR));
    let mut starts: Vec<i64> = job.rows.values().filter_map(|r| r.started_at).collect();
    starts.sort();
    let mut taken = vec![false; starts.len()];
    let begin = schedule.since.max(as_of - 8 * 24 * HOUR);
    let mut run_of_unmatched: Vec<i64> = Vec::new();
    for fire in cron.fires_between(begin, as_of - grace, usize::MAX) {
        let matched = (0..starts.len())
            .find(|&i| !taken[i] && starts[i] >= fire - grace && starts[i] < fire + grace);
        match matched {
            Some(i) => {
                taken[i] = true;
                run_of_unmatched.clear();
            }
            None => {
                run_of_unmatched.push(fire);
                m24 += u32::from(fire > as_of - 24 * HOUR);
                m7 += u32::from(fire > as_of - 7 * 24 * HOUR);
            }
        }
    }
    if let Some(fire) = cron
        .latest_at_or_before(as_of - grace)
        .filter(|f| *f > schedule.since)
    {
        let first_start = starts.iter().find(|s| **s >= fire - grace && **s <= as_of);
        match first_start {
            None => {
                assert_eq!(
                    run_of_unmatched.last(),
                    Some(&fire),
                    "the run ends at the latest fire"
                );
                missed_since = Some(run_of_unmatched[0] + grace);
            }
            Some(&s) if s >= fire + grace => cleared = Some(s),
            Some(_) => {}
        }
    }
    (m24, m7, missed_since, cleared)
}

/// Runs (start offset, duration if finished, completed?), a cron index, a grace, an instant.
type History = (Vec<(i64, Option<i64>, bool)>, usize, Option<i64>, i64);

fn history() -> impl Strategy<Value = History> {
    (
        proptest::collection::vec(
            (
                0i64..48 * HOUR,
                proptest::option::weighted(0.9, 0i64..3 * HOUR),
                any::<bool>(),
            ),
            0..60,
        ),
        0usize..4,
        proptest::option::of(1_000i64..2 * HOUR),
        0i64..60 * HOUR,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn health_from_the_read_model_equals_the_contract_applied_to_every_execution(
        (runs, cron_index, grace, as_of_offset) in history(),
        order in any::<proptest::sample::Index>(),
    ) {
        let crons = ["*/7 * * * *", "0 * * * *", "30 2 * * *", "*/20 9-17 * * 1-5"];
        let mut job = Job::default();
        job.schedule(crons[cron_index], T0 - 12 * HOUR, grace, Some(2 * HOUR));
        // Events of different executions in a shuffled order (each execution's own in order).
        let mut events: Vec<(String, ExecutionEvent)> = Vec::new();
        for (i, (start, duration, ok)) in runs.iter().enumerate() {
            let id = format!("e{i}");
            events.push((id.clone(), ExecutionEvent::Started { at: T0 - 12 * HOUR + start }));
            if let Some(d) = duration {
                let at = T0 - 12 * HOUR + start + d;
                events.push((id, if *ok {
                    ExecutionEvent::Completed { at, items_processed: None, result: Default::default() }
                } else {
                    ExecutionEvent::Failed { at, items_processed: None, error: None, result: Default::default() }
                }));
            }
        }
        let len = events.len();
        events.rotate_left(order.index(len.max(1)).min(len));
        for (id, event) in events {
            job.apply(&id, event);
        }
        let as_of = T0 - 12 * HOUR + as_of_offset;
        let health = job.health(Judgement::At(as_of));
        let expected = brute_force(&job, as_of);
        prop_assert_eq!(
            (health.state, health.since, health.consecutive_failures, health.missed_last_24h,
             health.missed_last_7d, health.stuck_execution_ids.clone()),
            expected
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// The job list reads a job's state from its memo while the memo holds; judging again at
    /// every instant must answer the same (a differential test of the maintained health).
    #[test]
    fn a_state_memo_answers_what_judging_again_answers(
        (runs, cron_index, grace, _) in history(),
        max_runtime in proptest::option::of(10 * MIN..3 * HOUR),
        steps in proptest::collection::vec(0i64..90 * MIN, 1..120),
    ) {
        let crons = ["*/7 * * * *", "0 * * * *", "30 2 * * *", "*/20 9-17 * * 1-5"];
        let mut job = Job::default();
        job.schedule(crons[cron_index], T0 - 12 * HOUR, grace, max_runtime);
        for (i, (start, duration, ok)) in runs.iter().enumerate() {
            job.run(&format!("e{i}"), T0 - 12 * HOUR + start, *duration, *ok);
        }
        let mut at = T0 - 13 * HOUR;
        let mut memo: Option<StateMemo> = None;
        for step in steps {
            at += step;
            let judgement = Judgement::At(at);
            let (health, fresh) = job.judged(judgement);
            match memo.and_then(|m| m.state_at(judgement)) {
                Some(state) => prop_assert_eq!(
                    state, health.state,
                    "the memo judged at {} for until {} answers {:?} at {}, judging again {:?}",
                    memo.unwrap().from, memo.unwrap().until, state, at, health.state
                ),
                None => memo = Some(fresh),
            }
        }
    }
}

#[test]
fn a_memo_holds_until_the_next_fire_falls_due_and_knows_nothing_before_it_was_judged() {
    let mut job = Job::default();
    job.schedule("0 * * * *", T0 - 12 * HOUR, Some(5 * MIN), None);
    job.run("a", T0 + MIN, Some(MIN), true);
    let (health, memo) = job.judged(Judgement::At(T0 + 10 * MIN));
    assert_eq!(health.state, HealthState::Healthy);
    assert_eq!(
        memo.state_at(Judgement::At(T0 + 30 * MIN)),
        Some(HealthState::Healthy)
    );
    // Unmatched, the next fire makes it missed at T0 + 1 h + grace; the memo ends before.
    assert_eq!(
        job.health(Judgement::At(T0 + HOUR + 5 * MIN)).state,
        HealthState::Missed
    );
    assert_eq!(memo.state_at(Judgement::At(T0 + HOUR + 5 * MIN)), None);
    assert_eq!(memo.state_at(Judgement::At(T0)), None);
    assert_eq!(
        memo.state_at(Judgement::Unknown {
            as_of: T0,
            since: T0
        }),
        Some(HealthState::Unknown)
    );
}
