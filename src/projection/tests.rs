//! Unit and property tests of the pure core.

use std::collections::BTreeMap;

use proptest::prelude::*;
use uuid::Uuid;

use super::*;

/// Applies events one by one through the fold, as the writer does in batches of one.
fn apply_all(events: &[(String, ExecutionEvent)]) -> (BTreeMap<String, Execution>, JobStats) {
    let mut job = MemoryJob::default();
    for (id, event) in events {
        job.step(id, event);
    }
    (job.rows, job.stats)
}

fn run(id: &str, start: i64, duration: i64, ok: bool) -> Vec<(String, ExecutionEvent)> {
    let terminal = if ok {
        ExecutionEvent::Completed {
            at: start + duration,
            items_processed: Some(7),
            result: Default::default(),
        }
    } else {
        ExecutionEvent::Failed {
            at: start + duration,
            items_processed: None,
            error: Some("boom".into()),
            result: Default::default(),
        }
    };
    vec![
        (id.into(), ExecutionEvent::Enqueued { at: start - 5 }),
        (id.into(), ExecutionEvent::Started { at: start }),
        (id.into(), terminal),
    ]
}

#[test]
fn a_normal_run_moves_through_every_state() {
    let (rows, stats) = apply_all(&run("e1", 1_000, 38_000, true));
    let row = &rows["e1"];
    assert_eq!(row.state, ExecutionState::Completed);
    assert_eq!(row.duration_ms(), Some(38_000));
    assert_eq!(
        (
            stats.pending,
            stats.processing,
            stats.completed,
            stats.failed
        ),
        (0, 0, 1, 0)
    );
    assert_eq!(stats.average_duration_ms(), Some(38_000));
    assert_eq!(
        stats.last_finished.as_ref().unwrap().duration_ms,
        Some(38_000)
    );
    assert_eq!(stats.last_started_at, Some(1_000));
}

#[test]
fn a_late_start_fills_in_the_duration_but_never_reopens_the_execution() {
    let events = run("e1", 1_000, 2_000, true);
    let reordered = vec![events[2].clone(), events[0].clone(), events[1].clone()];
    let (rows, stats) = apply_all(&reordered);
    assert_eq!(rows["e1"].state, ExecutionState::Completed);
    assert_eq!(stats.processing, 0);
    assert_eq!(stats.average_duration_ms(), Some(2_000));
    assert_eq!(
        stats.last_finished.as_ref().unwrap().duration_ms,
        Some(2_000)
    );
}

#[test]
fn the_first_terminal_event_wins_and_repeats_change_nothing() {
    let mut events = run("e1", 1_000, 2_000, true);
    events.push((
        "e1".into(),
        ExecutionEvent::Failed {
            at: 9_000,
            items_processed: None,
            error: None,
            result: Default::default(),
        },
    ));
    events.extend(run("e1", 1_000, 2_000, true));
    let (rows, stats) = apply_all(&events);
    assert_eq!(rows["e1"].state, ExecutionState::Completed);
    assert_eq!(rows["e1"].finished_at, Some(3_000));
    assert_eq!((stats.completed, stats.failed), (1, 0));
    let mut job = MemoryJob {
        rows: rows.clone(),
        stats: stats.clone(),
    };
    assert_eq!(job.step("e1", &events[1].1), Change::Unchanged);
    assert_eq!((job.rows, job.stats), (rows, stats));
}

#[test]
fn a_failed_run_counts_as_last_execution_but_not_in_the_average() {
    let mut events = run("ok", 0, 10_000, true);
    events.extend(run("bad", 20_000, 4_000, false));
    let (_, stats) = apply_all(&events);
    assert_eq!(stats.average_duration_ms(), Some(10_000));
    let last = stats.last_finished.clone().unwrap();
    assert_eq!(
        (last.execution_id.as_str(), last.duration_ms),
        ("bad", Some(4_000))
    );
    assert_eq!(stats.success_rate_percent(), Some(50.0));
}

#[test]
fn the_latest_schedule_by_runner_time_wins_in_any_order() {
    let a = Uuid::from_u128(1);
    let b = Uuid::from_u128(2);
    let mut forward = JobStats::default();
    let hourly = || ScheduleSettings {
        cron: Some("0 * * * *".into()),
        ..ScheduleSettings::default()
    };
    forward.apply_schedule(hourly(), 10, a);
    forward.apply_schedule(ScheduleSettings::default(), 20, b);
    let mut backward = JobStats::default();
    backward.apply_schedule(ScheduleSettings::default(), 20, b);
    backward.apply_schedule(hourly(), 10, a);
    assert_eq!(forward, backward);
    assert_eq!(forward.schedule.unwrap().cron, None);
}

#[test]
fn repeating_the_same_cron_keeps_when_it_took_effect() {
    let cron = |c: &str, grace: Option<i64>| ScheduleSettings {
        cron: Some(c.into()),
        grace_ms: grace,
        ..ScheduleSettings::default()
    };
    let mut stats = JobStats::default();
    stats.apply_schedule(cron("0 * * * *", None), 10, Uuid::from_u128(1));
    stats.apply_schedule(cron("0 * * * *", Some(60_000)), 20, Uuid::from_u128(2));
    let schedule = stats.schedule.clone().unwrap();
    assert_eq!((schedule.since, schedule.grace_ms), (10, Some(60_000)));
    stats.apply_schedule(cron("*/5 * * * *", None), 30, Uuid::from_u128(3));
    assert_eq!(stats.schedule.clone().unwrap().since, 30);
    // An older event changes nothing.
    stats.apply_schedule(cron("1 * * * *", None), 25, Uuid::from_u128(4));
    assert_eq!(stats.schedule.unwrap().cron.as_deref(), Some("*/5 * * * *"));
}

#[test]
fn consecutive_failures_count_failures_since_the_last_success_by_finish_time() {
    let mut events = run("a", 0, 10, true);
    events.extend(run("b", 100, 10, false));
    events.extend(run("c", 200, 10, false));
    let (_, stats) = apply_all(&events);
    let run_state = stats.outcome_run.clone().unwrap();
    assert!(run_state.failed);
    assert_eq!((run_state.length, run_state.first.0), (2, 110));
    // A success that finished between the two failures arrives late: one failure remains.
    let mut late = events.clone();
    late.extend(run("late", 150, 5, true));
    let (_, stats) = apply_all(&late);
    let run_state = stats.outcome_run.unwrap();
    assert_eq!(
        (run_state.failed, run_state.length, run_state.first.0),
        (true, 1, 210)
    );
    // A success after them ends the run.
    let mut healed = events;
    healed.extend(run("d", 300, 10, true));
    let (_, stats) = apply_all(&healed);
    let run_state = stats.outcome_run.unwrap();
    assert_eq!(
        (run_state.failed, run_state.length, run_state.first.0),
        (false, 1, 310)
    );
}

/// One execution: its events (with possible exact duplicates), in a valid causal order.
/// The earliest and latest instants the contract's timestamps can name (0000-01-01T00:00:00Z,
/// 9999-12-31T23:59:59.999Z).
const FIRST_INSTANT: i64 = -62_167_219_200_000;
const LAST_INSTANT: i64 = 253_402_300_799_999;

#[test]
fn the_longest_runs_the_contract_allows_never_overflow_the_totals() {
    // 29,300 such runs overflowed an i64 total (issue 16): twice that, applied one by one.
    let start = FIRST_INSTANT + 5;
    let longest = LAST_INSTANT - start;
    let mut job = MemoryJob::default();
    for i in 0..60_000 {
        for (id, event) in run(&format!("e{i}"), start, longest, true) {
            job.step(&id, &event);
        }
    }
    let MemoryJob { rows, stats } = job;
    assert!(stats.duration_sum_ms > i128::from(i64::MAX));
    assert_eq!(stats.average_duration_ms(), Some(longest));
    let recomputed = JobStats::recompute(rows.iter().map(|(id, row)| (id.as_str(), row)), None);
    assert_eq!(stats, recomputed);
}

/// The reference for [`JobStats::last_success_at`]: the latest finish of a completed row.
fn latest_success<'a>(
    rows: impl IntoIterator<Item = (&'a String, &'a Execution)>,
) -> Option<EpochMillis> {
    rows.into_iter()
        .filter(|(_, row)| row.state == ExecutionState::Completed)
        .filter_map(|(_, row)| row.finished_at)
        .max()
}

fn execution_strategy(index: usize) -> impl Strategy<Value = Vec<(String, ExecutionEvent)>> {
    (
        0i64..1_000_000,
        0i64..100_000,
        0u8..4,
        proptest::collection::vec(0usize..3, 0..3),
    )
        .prop_map(move |(start, duration, outcome, duplicates)| {
            let id = format!("exec-{index}");
            let mut events = match outcome {
                0 => run(&id, start, duration, true),
                1 => run(&id, start, duration, false),
                2 => run(&id, start, duration, true)[..2].to_vec(),
                _ => run(&id, start, duration, true)[..1].to_vec(),
            };
            let len = events.len();
            for d in duplicates {
                let copy = events[d % len].clone();
                events.push(copy);
            }
            events
        })
}

fn history_strategy() -> impl Strategy<Value = Vec<(String, ExecutionEvent)>> {
    (1usize..8)
        .prop_flat_map(|n| (0..n).map(execution_strategy).collect::<Vec<_>>())
        .prop_map(|runs| runs.into_iter().flatten().collect())
}

proptest! {
    #[test]
    fn any_order_of_the_same_events_gives_the_same_rows_and_aggregates(
        (events, shuffled) in history_strategy()
            .prop_flat_map(|events| (Just(events.clone()), Just(events).prop_shuffle()))
    ) {
        let (rows_a, stats_a) = apply_all(&events);
        let (rows_b, stats_b) = apply_all(&shuffled);
        prop_assert_eq!(rows_a, rows_b);
        prop_assert_eq!(stats_a, stats_b);
    }

    #[test]
    fn incremental_aggregates_equal_a_recomputation_from_the_rows(
        events in history_strategy().prop_shuffle()
    ) {
        let (rows, stats) = apply_all(&events);
        let recomputed = JobStats::recompute(rows.iter().map(|(id, row)| (id.as_str(), row)), None);
        prop_assert_eq!(&stats, &recomputed);
        prop_assert_eq!(stats.last_success_at(), latest_success(&rows));
    }

    #[test]
    fn extreme_timestamps_average_exactly_and_recompute_the_same(
        runs in proptest::collection::vec(
            (prop_oneof![Just(FIRST_INSTANT + 5), FIRST_INSTANT + 5..LAST_INSTANT], any::<bool>()),
            1..30,
        )
    ) {
        let events: Vec<_> = runs
            .iter()
            .enumerate()
            .flat_map(|(i, (start, ok))| run(&format!("x{i}"), *start, LAST_INSTANT - start, *ok))
            .collect();
        let (rows, stats) = apply_all(&events);
        let recomputed = JobStats::recompute(rows.iter().map(|(id, row)| (id.as_str(), row)), None);
        prop_assert_eq!(&stats, &recomputed);
        let durations: Vec<i128> = runs
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(start, _)| i128::from(LAST_INSTANT - start))
            .collect();
        let count = durations.len() as i128;
        let expected = (count > 0)
            .then(|| ((durations.iter().sum::<i128>() + count / 2) / count) as i64);
        prop_assert_eq!(stats.average_duration_ms(), expected);
        prop_assert!(expected.is_none_or(|avg| avg >= 0));
    }
}

/// A `scheduled` event carrying thresholds, at `at`.
fn thresholds_event(failure: u8, recovery: u8, at: i64) -> crate::events::Event {
    use crate::events::{Event, EventKind, JobName, TenantId};
    Event {
        event_id: Uuid::from_u128(at as u128 + 1),
        tenant_id: TenantId::new(Uuid::nil()),
        job_name: JobName::parse("folded").unwrap(),
        occurred_at: chrono::DateTime::from_timestamp_millis(at).unwrap(),
        kind: EventKind::Scheduled {
            cron: None,
            grace_ms: None,
            max_runtime_ms: None,
            labels: Default::default(),
            failure_threshold: Some(failure),
            recovery_threshold: Some(recovery),
        },
    }
}

/// Finished runs in finish order: `true` failed. Each run `i` finishes at `10 * (i + 1)`.
fn outcomes(job: &mut MemoryJob, outcomes: &[bool], first: usize) {
    for (i, failed) in outcomes.iter().enumerate() {
        let i = i + first;
        for (id, event) in run(&format!("r{i:03}"), 10 * i as i64 + 5, 5, !failed) {
            job.step(&id, &event);
        }
    }
}

#[test]
fn failure_and_recovery_thresholds_hold_the_verdict_until_enough_in_a_row() {
    let mut job = MemoryJob::default();
    job.apply(&thresholds_event(3, 2, 0));
    let failing = |job: &MemoryJob| job.stats.verdict().map(|v| v.failing);
    outcomes(&mut job, &[false, true, true], 0);
    assert_eq!(
        failing(&job),
        Some(false),
        "two failures of three announce nothing"
    );
    outcomes(&mut job, &[true], 3);
    assert_eq!(
        failing(&job),
        Some(true),
        "the third in a row makes it failing"
    );
    let since = job.stats.verdict().unwrap().since;
    assert_eq!(since, 20, "failing since the first of the three");
    outcomes(&mut job, &[false, true, false], 4);
    assert_eq!(
        failing(&job),
        Some(true),
        "one completion in a row does not recover it"
    );
    assert_eq!(job.stats.verdict().unwrap().since, since);
    outcomes(&mut job, &[false], 7);
    let verdict = job.stats.verdict().unwrap();
    assert_eq!((verdict.failing, verdict.since), (false, 70));
    // With both thresholds at 1 the verdict is the last outcome.
    let mut plain = MemoryJob::default();
    outcomes(&mut plain, &[true, false, true], 0);
    assert_eq!(failing(&plain), Some(true));
}

#[test]
fn a_late_failure_that_completes_a_run_of_failures_is_counted_where_it_belongs() {
    // F F _ S (the gap finishes last, out of order, and fails): F F F S with N = 3, M = 2
    // is failing, recovering with one completion of two.
    let mut job = MemoryJob::default();
    job.apply(&thresholds_event(3, 2, 0));
    outcomes(&mut job, &[true, true], 0);
    for (id, event) in run("r003", 35, 5, true) {
        job.step(&id, &event);
    }
    assert_eq!(job.stats.verdict().map(|v| v.failing), Some(false));
    for (id, event) in run("r002", 25, 5, false) {
        job.step(&id, &event);
    }
    assert_eq!(job.stats.verdict().map(|v| v.failing), Some(true));
}

proptest! {
    #[test]
    fn the_kept_verdict_equals_the_verdict_of_the_whole_history_in_any_order(
        (events, shuffled) in history_strategy()
            .prop_flat_map(|events| (Just(events.clone()), Just(events).prop_shuffle())),
        failure in 1u8..4,
        recovery in 1u8..4,
        schedule_at in 0usize..40,
    ) {
        let fold = |events: &[(String, ExecutionEvent)]| {
            let mut job = MemoryJob::default();
            let at = schedule_at.min(events.len());
            for (id, event) in &events[..at] {
                job.step(id, event);
            }
            job.apply(&thresholds_event(failure, recovery, 1));
            for (id, event) in &events[at..] {
                job.step(id, event);
            }
            job
        };
        let a = fold(&events);
        let b = fold(&shuffled);
        prop_assert_eq!(&a.stats, &b.stats);
        let mut finished: Vec<(FinishKey, bool)> = a
            .rows
            .iter()
            .filter(|(_, row)| row.state.is_terminal())
            .filter_map(|(id, row)| Some(((row.finished_at?, id.clone()), row.state == ExecutionState::Failed)))
            .collect();
        finished.sort();
        let expected = Verdict::of_history(
            finished.iter().map(|((at, _), failed)| (*at, *failed)),
            (i64::from(failure), i64::from(recovery)),
        );
        prop_assert_eq!(a.stats.verdict(), expected);
        let recomputed = JobStats::recompute(
            a.rows.iter().map(|(id, row)| (id.as_str(), row)),
            a.stats.schedule.clone(),
        );
        prop_assert_eq!(recomputed.verdict(), expected);
    }
}

/// A `silenced` event at `at` until `until` (`None`: a lift).
fn silenced_event(at: i64, until: Option<i64>) -> crate::events::Event {
    use crate::events::{Event, EventKind, JobName, TenantId};
    Event {
        event_id: Uuid::from_u128(at as u128 + 7),
        tenant_id: TenantId::new(Uuid::nil()),
        job_name: JobName::parse("folded").unwrap(),
        occurred_at: chrono::DateTime::from_timestamp_millis(at).unwrap(),
        kind: EventKind::Silenced {
            until: until.map(|u| chrono::DateTime::from_timestamp_millis(u).unwrap()),
            reason: None,
            by: None,
        },
    }
}

#[test]
fn silenced_stretches_are_the_same_in_any_order_and_a_lift_or_a_later_silence_cuts_one() {
    let events = [
        silenced_event(100, Some(500)), // cut by the lift at 300
        silenced_event(300, None),
        silenced_event(1_000, Some(5_000)), // cut by the shorter one at 2 000
        silenced_event(2_000, Some(2_500)),
        silenced_event(3_000, Some(2_900)), // already over: a lift with nothing to lift
    ];
    let spans = |order: &[usize]| {
        let mut job = MemoryJob::default();
        for &i in order {
            job.apply(&events[i]);
        }
        (
            silenced_spans(&job.stats.silence_marks),
            job.stats.silence_marks,
        )
    };
    let (expected, marks) = spans(&[0, 1, 2, 3, 4]);
    assert_eq!(expected, vec![(100, 300), (1_000, 2_000), (2_000, 2_500)]);
    for order in [[4, 3, 2, 1, 0], [2, 0, 4, 1, 3], [1, 3, 0, 4, 2]] {
        assert_eq!(
            spans(&order),
            (expected.clone(), marks.clone()),
            "{order:?}"
        );
    }
}

#[test]
fn a_job_keeps_its_latest_silence_marks_whatever_the_order() {
    let events: Vec<_> = (0..MAX_SILENCE_MARKS as i64 + 10)
        .map(|i| silenced_event(i * 10, Some(i * 10 + 5)))
        .collect();
    let fold = |events: &mut dyn Iterator<Item = &crate::events::Event>| {
        let mut job = MemoryJob::default();
        for event in events {
            job.apply(event);
        }
        job.stats.silence_marks
    };
    let forward = fold(&mut events.iter());
    assert_eq!(forward.len(), MAX_SILENCE_MARKS);
    assert_eq!(forward[0].occurred_at, 100);
    assert_eq!(fold(&mut events.iter().rev()), forward);
}
