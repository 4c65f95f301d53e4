//! The job list's maintained health: every job of a tenant with its current state, kept in
//! state order, so a list filtered or sorted by health reads index ranges instead of judging
//! every job of the tenant on each request.
//!
//! Each entry is a [`StateMemo`]: the state judged at one instant and the first instant the
//! clock alone could change it. An entry is judged again when its job changes (the writer's
//! owner reports every changed job, [`super::ReadPool::jobs_changed`], which marks it dirty
//! here) or when the instant the list is judged at reaches the end of its memo. A judgement
//! earlier than one already made (a projection that fell behind is judged at its last event)
//! builds the board again. Its answers are the full judgement's: the differential tests in
//! this module and in `projection::health` compare the two.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::events::TenantId;
use crate::projection::health::{HealthState, StateMemo};
use crate::projection::EpochMillis;

/// One tenant's jobs and their states.
#[derive(Debug, Default)]
pub(super) struct Board {
    memos: HashMap<String, StateMemo>,
    by_state: BTreeSet<(HealthState, String)>,
    /// When each memo ends, to judge those jobs again once the list is judged past it.
    expiries: BTreeSet<(EpochMillis, String)>,
    /// The latest instant the board was brought to.
    judged_at: Option<EpochMillis>,
}

impl Board {
    /// Whether the board can be brought to `at`: it was built, and not at a later instant.
    pub(super) fn reaches(&self, at: EpochMillis) -> bool {
        self.judged_at.is_some_and(|judged| judged <= at)
    }

    pub(super) fn judged_at(&self) -> Option<EpochMillis> {
        self.judged_at
    }

    pub(super) fn clear(&mut self) {
        *self = Board::default();
    }

    pub(super) fn judged(&mut self, at: EpochMillis) {
        self.judged_at = Some(self.judged_at.map_or(at, |judged| judged.max(at)));
    }

    /// Jobs whose memo ends at or before `at`, taken off the expiry list.
    pub(super) fn expired(&mut self, at: EpochMillis) -> Vec<String> {
        let mut expired = Vec::new();
        while let Some((until, _)) = self.expiries.first() {
            if *until > at {
                break;
            }
            let (_, name) = self.expiries.pop_first().expect("a first entry");
            expired.push(name);
        }
        expired
    }

    /// Sets the job's memo (`None`: the job is gone).
    pub(super) fn set(&mut self, name: &str, memo: Option<StateMemo>) {
        if let Some(old) = self.memos.remove(name) {
            self.by_state.remove(&(old.state, name.to_owned()));
            self.expiries.remove(&(old.until, name.to_owned()));
        }
        if let Some(memo) = memo {
            self.by_state.insert((memo.state, name.to_owned()));
            if memo.until != EpochMillis::MAX {
                self.expiries.insert((memo.until, name.to_owned()));
            }
            self.memos.insert(name.to_owned(), memo);
        }
    }

    /// The jobs whose name starts with `prefix` and whose state is one of `states` (every
    /// state when empty), in (state, name) order: index ranges, O(matching jobs).
    pub(super) fn matching(
        &self,
        prefix: &str,
        states: &[HealthState],
    ) -> Vec<(HealthState, String)> {
        let wanted: &[HealthState] = if states.is_empty() {
            &HealthState::ALL
        } else {
            states
        };
        let mut ordered = wanted.to_vec();
        ordered.sort();
        ordered.dedup();
        let mut found = Vec::new();
        for state in ordered {
            found.extend(
                self.by_state
                    .range((state, prefix.to_owned())..)
                    .take_while(|(s, name)| *s == state && name.starts_with(prefix))
                    .cloned(),
            );
        }
        found
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.memos.len()
    }
}

/// The boards of the tenants whose health-ordered list was asked for, and the jobs changed
/// since each was last brought up to date. Changes are noted apart from the boards, so the
/// writer's owner never waits on a board being built.
#[derive(Debug, Default)]
pub(super) struct Boards {
    pub(super) boards: Mutex<HashMap<TenantId, Arc<Mutex<Board>>>>,
    pub(super) dirty: Mutex<Dirty>,
}

#[derive(Debug, Default)]
pub(super) struct Dirty {
    /// Jobs changed since their tenant's board last took them; only tenants with a board.
    pub(super) jobs: HashMap<TenantId, HashSet<String>>,
}

/// Past this many dirty jobs in a tenant the board is built again rather than caught up.
pub(super) const MAX_DIRTY_PER_TENANT: usize = 50_000;

impl Boards {
    /// Notes that these jobs changed (for tenants that have a board).
    pub(super) fn note(&self, jobs: &[(TenantId, String)]) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        for (tenant, job) in jobs {
            if let Some(set) = dirty.jobs.get_mut(tenant) {
                if set.len() <= MAX_DIRTY_PER_TENANT {
                    set.insert(job.clone());
                }
            }
        }
    }

    /// The tenant's board, made (empty) and its changes tracked from now on.
    pub(super) fn board(&self, tenant: &TenantId) -> Arc<Mutex<Board>> {
        let mut boards = self.boards.lock().unwrap_or_else(|p| p.into_inner());
        boards
            .entry(*tenant)
            .or_insert_with(|| {
                let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
                dirty.jobs.entry(*tenant).or_default();
                Arc::default()
            })
            .clone()
    }

    /// The tenant's jobs changed since the last call (`None`: too many; build again).
    pub(super) fn take_dirty(&self, tenant: &TenantId) -> Option<HashSet<String>> {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let set = std::mem::take(dirty.jobs.entry(*tenant).or_default());
        (set.len() <= MAX_DIRTY_PER_TENANT).then_some(set)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration, Utc};
    use proptest::prelude::*;

    use crate::events::{JobName, TenantId};
    use crate::projection::health::{HealthState, Judgement};
    use crate::publish::EventBuilder;
    use crate::store::{IncomingMessage, ReadPool, Writer};

    const TENANT: &str = "3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e11";
    const JOBS: usize = 16;
    const MAX_RUNTIME_MS: i64 = 3_600_000;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    /// Applies `events` as one batch and tells the pool which jobs changed, as the projector
    /// does after each commit.
    fn apply(
        writer: &mut Writer,
        pool: &ReadPool,
        sequence: &mut u64,
        events: &[crate::events::Event],
        published_at_ms: i64,
    ) {
        let encoded: Vec<(String, Vec<u8>)> =
            events.iter().map(|e| (e.subject(), e.to_bytes())).collect();
        let messages: Vec<IncomingMessage<'_>> = encoded
            .iter()
            .map(|(subject, payload)| {
                *sequence += 1;
                IncomingMessage {
                    sequence: *sequence,
                    subject,
                    payload,
                    published_at_ms: Some(published_at_ms),
                }
            })
            .collect();
        let outcome = writer.apply_batch(&messages).unwrap();
        pool.jobs_changed(&outcome.changed_jobs, outcome.last_sequence);
    }

    /// Every job judged from a fresh read, the way the list judged them before the board.
    fn judged_one_by_one(
        pool: &ReadPool,
        tenant: &TenantId,
        prefix: &str,
        states: &[HealthState],
        at: i64,
    ) -> Vec<(HealthState, String)> {
        let mut all: Vec<(HealthState, String)> = pool
            .job_names_page(tenant, prefix, None, false, u32::MAX)
            .unwrap()
            .into_iter()
            .filter_map(|name| {
                let job = JobName::parse(&name).unwrap();
                let snapshot = pool.job_snapshot(tenant, &job, 0).unwrap()?;
                let state = snapshot.judge(Judgement::At(at), MAX_RUNTIME_MS).state;
                (states.is_empty() || states.contains(&state)).then_some((state, name))
            })
            .collect();
        all.sort();
        all
    }

    /// One round: events for some jobs (job, start offset, finished after, completed), then
    /// the clock moves by `step` (negative: back), then a list with a filter and a prefix.
    type Round = (Vec<(usize, i64, Option<i64>, bool)>, i64, Vec<usize>, bool);

    fn round() -> impl Strategy<Value = Round> {
        (
            proptest::collection::vec(
                (
                    0..JOBS,
                    -90 * 60_000i64..30 * 60_000,
                    proptest::option::weighted(0.8, 0i64..90 * 60_000),
                    proptest::bool::weighted(0.8),
                ),
                0..12,
            ),
            prop_oneof![
                6 => 0i64..40 * 60_000,
                1 => -600i64..0,
                1 => -20 * 60_000i64..0,
            ],
            proptest::collection::vec(0usize..6, 0..3),
            any::<bool>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The differential test of the maintained health: after every batch and clock step,
        /// the board's answer equals judging every job of the tenant again from the file.
        #[test]
        fn the_board_answers_what_judging_every_job_answers(
            rounds in proptest::collection::vec(round(), 1..16),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("board.db");
            let (mut writer, _) = Writer::open(&db).unwrap();
            let pool = ReadPool::open(&db).unwrap();
            let tenant = TenantId::parse(TENANT).unwrap();
            let mut sequence = 0;
            let mut now: i64 = 1_752_148_800_000;
            // Few fires each: listing fires is most of a judgement's cost in a debug build.
            let crons = ["0 * * * *", "*/20 9-17 * * 1-5", "30 2 * * *", "*/30 * * * *"];
            let schedules: Vec<_> = (0..JOBS)
                .map(|j| {
                    let job = EventBuilder::new(TENANT, &format!("job-{j:02}")).unwrap();
                    let grace = (j % 3 == 0).then(|| std::time::Duration::from_secs(120));
                    let max_runtime = (j % 4 == 0).then(|| std::time::Duration::from_secs(1_800));
                    job.at(at(now - 12 * 3_600_000))
                        .scheduled_with(Some(crons[j % crons.len()]), grace, max_runtime)
                        .unwrap()
                })
                .collect();
            apply(&mut writer, &pool, &mut sequence, &schedules, now);
            let mut runs = 0;
            for (events, step, filter, prefixed) in rounds {
                let mut batch = Vec::new();
                for (j, offset, duration, ok) in events {
                    runs += 1;
                    let run = EventBuilder::new(TENANT, &format!("job-{j:02}"))
                        .unwrap()
                        .execution(&format!("run-{runs}"))
                        .unwrap();
                    let start = now + offset;
                    batch.push(run.clone().at(at(start)).started().unwrap());
                    if let Some(duration) = duration {
                        let end = run.at(at(start + duration));
                        batch.push(if ok {
                            end.completed(None).unwrap()
                        } else {
                            end.failed(None, Some("boom")).unwrap()
                        });
                    }
                }
                if !batch.is_empty() {
                    apply(&mut writer, &pool, &mut sequence, &batch, now);
                }
                now += step;
                let states: Vec<HealthState> =
                    filter.iter().map(|i| HealthState::ALL[*i]).collect();
                let prefix = if prefixed { "job-1" } else { "" };
                let (found, judged_at) = pool
                    .job_states(&tenant, prefix, &states, now, &|snapshot, at| {
                        snapshot.state_memo_at(at, MAX_RUNTIME_MS)
                    })
                    .unwrap();
                prop_assert!(judged_at >= now && judged_at - now <= super::super::reader::BOARD_CLOCK_SLACK_MS);
                let expected = judged_one_by_one(&pool, &tenant, prefix, &states, judged_at);
                prop_assert_eq!(found, expected, "at {} (asked {})", judged_at, now);
                now = now.max(judged_at);
            }
        }
    }

    #[test]
    fn a_board_is_kept_for_a_tenant_once_asked_and_counts_every_job() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("board.db");
        let (mut writer, _) = Writer::open(&db).unwrap();
        let pool = ReadPool::open(&db).unwrap();
        let tenant = TenantId::parse(TENANT).unwrap();
        let now = Utc::now();
        let events: Vec<_> = (0..5)
            .map(|j| {
                EventBuilder::new(TENANT, &format!("job-{j}"))
                    .unwrap()
                    .at(now - Duration::hours(1))
                    .scheduled(Some("0 * * * *"))
                    .unwrap()
            })
            .collect();
        let mut sequence = 0;
        apply(
            &mut writer,
            &pool,
            &mut sequence,
            &events,
            now.timestamp_millis(),
        );
        let judge = |snapshot: &crate::store::JobSnapshot, at: i64| {
            snapshot.state_memo_at(at, MAX_RUNTIME_MS)
        };
        let (all, _) = pool
            .job_states(&tenant, "", &[], now.timestamp_millis(), &judge)
            .unwrap();
        assert_eq!(all.len(), 5);
        let boards = pool.boards_for_tests();
        assert_eq!(boards.lock().unwrap().len(), 5);
    }
}
