//! Time-bucketed rollups of finished executions (CONTRACT §6): per minute, hour and day of
//! finish time, each bucket holding counts, the run-time sum and a run-time sketch. A trailing
//! window merges at most a fixed number of buckets (61 minutes, 1,441 minutes, 169 or 721
//! hours), so its cost does not depend on how many executions it holds.
//!
//! A bucket moves by deltas like the job's aggregates: an execution's contribution is removed
//! and its new one added when its row changes. The finish time of an execution never changes
//! once set (the first terminal event wins), so both land in the same buckets.

use super::sketch::{DurationSketch, Percentiles};
use super::{EpochMillis, Execution, ExecutionState};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// A bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    pub fn millis(self) -> i64 {
        match self {
            Granularity::Minute => MINUTE_MS,
            Granularity::Hour => HOUR_MS,
            Granularity::Day => DAY_MS,
        }
    }

    /// The stored code.
    pub fn code(self) -> i64 {
        match self {
            Granularity::Minute => 0,
            Granularity::Hour => 1,
            Granularity::Day => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    /// The start of the bucket holding `at` (UTC edges; days start at midnight UTC).
    pub fn bucket_start(self, at: EpochMillis) -> EpochMillis {
        at.div_euclid(self.millis()) * self.millis()
    }

    /// How long buckets are kept behind the stream's time (the publish time of the latest
    /// applied event): minutes 48 h, hours 35 days, days for ever. Measured against the
    /// stream rather than the wall clock, so a rebuild keeps exactly what the live projection
    /// would, and well past the longest window read from each (24 h, 30 days), so no
    /// replica's clock skew can make a window reach a pruned bucket.
    pub fn retention_ms(self) -> Option<i64> {
        match self {
            Granularity::Minute => Some(48 * HOUR_MS),
            Granularity::Hour => Some(35 * DAY_MS),
            Granularity::Day => None,
        }
    }

    /// The oldest bucket start kept when the stream's time is `stream_time` (`None`: all,
    /// also before the first event's time is known).
    pub fn kept_from(self, stream_time: EpochMillis) -> Option<EpochMillis> {
        let edge = stream_time.checked_sub(self.retention_ms()?)?;
        edge.div_euclid(self.millis()).checked_mul(self.millis())
    }
}

/// What one finished execution adds to the bucket of its finish time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contribution {
    pub finished_at: EpochMillis,
    pub failed: bool,
    /// Run time of a completed execution with both times known (what averages and
    /// percentiles are over, as for the whole-stream figures).
    pub duration_ms: Option<i64>,
}

impl Contribution {
    pub fn of(execution: &Execution) -> Option<Self> {
        let finished_at = execution
            .finished_at
            .filter(|_| execution.state.is_terminal())?;
        let failed = execution.state == ExecutionState::Failed;
        Some(Contribution {
            finished_at,
            failed,
            duration_ms: execution.duration_ms().filter(|_| !failed),
        })
    }
}

/// The rollup changes of one execution changing from `old` to `new`: contributions to remove
/// (sign −1) and to add (sign 1). Empty unless the execution finished or its finished run
/// time became known.
pub fn deltas(old: Option<&Execution>, new: &Execution) -> Vec<(Contribution, i64)> {
    let before = old.and_then(Contribution::of);
    let after = Contribution::of(new);
    if before == after {
        return Vec::new();
    }
    before
        .map(|c| (c, -1))
        .into_iter()
        .chain(after.map(|c| (c, 1)))
        .collect()
}

/// One bucket's totals (also a window's, merged from its buckets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollupBucket {
    pub completed: i64,
    pub failed: i64,
    pub duration_sum_ms: i128,
    pub duration_count: i64,
    pub durations: DurationSketch,
}

impl RollupBucket {
    pub fn add(&mut self, contribution: &Contribution, sign: i64) {
        if contribution.failed {
            self.failed += sign;
        } else {
            self.completed += sign;
        }
        if let Some(duration) = contribution.duration_ms {
            self.duration_sum_ms += i128::from(sign * duration);
            self.duration_count += sign;
            self.durations.add(duration, sign);
        }
    }

    pub fn merge(&mut self, other: &RollupBucket) {
        self.merge_totals(other);
        self.durations.merge(&other.durations);
    }

    /// [`RollupBucket::merge`] without the sketch (merged elsewhere, e.g. into a `SketchSum`).
    pub fn merge_totals(&mut self, other: &RollupBucket) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.duration_sum_ms += other.duration_sum_ms;
        self.duration_count += other.duration_count;
    }

    pub fn is_empty(&self) -> bool {
        self.completed == 0 && self.failed == 0 && self.durations.is_empty()
    }

    /// Mean run time, rounded half up like the whole-stream average.
    pub fn average_duration_ms(&self) -> Option<i64> {
        (self.duration_count > 0).then(|| {
            let count = i128::from(self.duration_count);
            ((self.duration_sum_ms + count / 2) / count) as i64
        })
    }

    pub fn success_rate_percent(&self) -> Option<f64> {
        let finished = self.completed + self.failed;
        (finished > 0).then(|| self.completed as f64 * 100.0 / finished as f64)
    }

    pub fn percentiles(&self) -> Percentiles {
        Percentiles::of(&self.durations)
    }
}

/// A trailing window of the stats endpoint (`?window=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Hour,
    Day,
    Week,
    Month,
}

impl Window {
    pub const NAMES: [&'static str; 4] = ["1h", "24h", "7d", "30d"];

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "1h" => Window::Hour,
            "24h" => Window::Day,
            "7d" => Window::Week,
            "30d" => Window::Month,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Window::Hour => "1h",
            Window::Day => "24h",
            Window::Week => "7d",
            Window::Month => "30d",
        }
    }

    pub fn length_ms(self) -> i64 {
        match self {
            Window::Hour => HOUR_MS,
            Window::Day => DAY_MS,
            Window::Week => 7 * DAY_MS,
            Window::Month => 30 * DAY_MS,
        }
    }

    /// Minutes for 1h and 24h, hours for 7d and 30d.
    pub fn granularity(self) -> Granularity {
        match self {
            Window::Hour | Window::Day => Granularity::Minute,
            Window::Week | Window::Month => Granularity::Hour,
        }
    }

    /// The buckets the window reads at `as_of`: starts from the bucket holding
    /// `as_of − length` (the `from` reported) to the bucket holding `as_of`, both included.
    /// Whole buckets, so the window reaches back up to one bucket further than its length.
    pub fn buckets(self, as_of: EpochMillis) -> BucketRange {
        let granularity = self.granularity();
        BucketRange {
            granularity,
            from: granularity.bucket_start(as_of.saturating_sub(self.length_ms())),
            last: granularity.bucket_start(as_of),
        }
    }
}

/// A run of buckets of one granularity, `from` to `last` (bucket starts, both included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketRange {
    pub granularity: Granularity,
    pub from: EpochMillis,
    pub last: EpochMillis,
}

impl BucketRange {
    /// The buckets starting before `at` (rounded down to this width), and the rest.
    pub fn split_before(self, at: EpochMillis) -> (Option<BucketRange>, Option<BucketRange>) {
        let width = self.granularity.millis();
        let at = self.granularity.bucket_start(at);
        let before = (self.from < at).then(|| BucketRange {
            last: self.last.min(at - width),
            ..self
        });
        let after = (self.last >= at).then(|| BucketRange {
            from: self.from.max(at),
            ..self
        });
        (before, after)
    }

    /// The same executions read from fewer rows: every whole bucket of the next width inside
    /// the range (an hour holds exactly the finishes of its 60 minutes, a day those of its 24
    /// hours), and the range's own width only at the two ragged ends. A 30-day window is then
    /// ~29 days and up to 46 hours instead of 721 hours; 24 hours is ~23 hours and up to 118
    /// minutes instead of 1,441 minutes.
    pub fn pieces(self) -> Vec<BucketRange> {
        let fine = self.granularity;
        let coarse = match fine {
            Granularity::Minute => Granularity::Hour,
            Granularity::Hour => Granularity::Day,
            Granularity::Day => return vec![self],
        };
        let end = self.last + fine.millis(); // exclusive
        let first_whole = coarse.bucket_start(self.from + coarse.millis() - 1);
        let end_whole = coarse.bucket_start(end);
        if first_whole >= end_whole {
            return vec![self];
        }
        let mut pieces = Vec::with_capacity(3);
        if self.from < first_whole {
            pieces.push(BucketRange {
                granularity: fine,
                from: self.from,
                last: first_whole - fine.millis(),
            });
        }
        pieces.push(BucketRange {
            granularity: coarse,
            from: first_whole,
            last: end_whole - coarse.millis(),
        });
        if end_whole < end {
            pieces.push(BucketRange {
                granularity: fine,
                from: end_whole,
                last: self.last,
            });
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(state: ExecutionState, started: Option<i64>, finished: i64) -> Execution {
        Execution {
            state,
            enqueued_at: None,
            started_at: started,
            finished_at: Some(finished),
            items_processed: None,
            error: None,
            exit_code: None,
            output: None,
        }
    }

    #[test]
    fn only_a_finish_or_a_late_start_of_a_finished_run_moves_a_bucket() {
        let pending = Execution {
            state: ExecutionState::Pending,
            enqueued_at: Some(1),
            started_at: None,
            finished_at: None,
            items_processed: None,
            error: None,
            exit_code: None,
            output: None,
        };
        assert!(deltas(None, &pending).is_empty());
        let done = finished(ExecutionState::Completed, None, 5_000);
        assert_eq!(deltas(Some(&pending), &done).len(), 1);
        let timed = finished(ExecutionState::Completed, Some(1_000), 5_000);
        let moved = deltas(Some(&done), &timed);
        let mut bucket = RollupBucket::default();
        bucket.add(&Contribution::of(&done).unwrap(), 1);
        for (c, sign) in &moved {
            bucket.add(c, *sign);
        }
        assert_eq!(bucket.completed, 1);
        assert_eq!(bucket.average_duration_ms(), Some(4_000));
        // A failed run's time is not a run time of the window's percentiles.
        let failed = finished(ExecutionState::Failed, Some(1_000), 9_000);
        assert_eq!(Contribution::of(&failed).unwrap().duration_ms, None);
    }

    #[test]
    fn a_split_keeps_every_bucket_once() {
        let as_of = 1_750_000_000_000 + 17 * MINUTE_MS;
        let range = Window::Month.buckets(as_of);
        let hour = Granularity::Hour;
        let buckets = |r: Option<BucketRange>| {
            r.map_or(0, |r| (r.last - r.from) / r.granularity.millis() + 1)
        };
        let total = buckets(Some(range));
        for at in [
            range.from - DAY_MS,
            range.from,
            range.from + 5 * HOUR_MS,
            range.last,
            hour.bucket_start(as_of - 3 * HOUR_MS) + 1,
            range.last + HOUR_MS,
        ] {
            let (before, after) = range.split_before(at);
            assert_eq!(buckets(before) + buckets(after), total, "at {at}");
            let cut = hour.bucket_start(at);
            assert!(before.is_none_or(|b| b.from == range.from && b.last < cut));
            assert!(after.is_none_or(|a| a.last == range.last && a.from >= cut));
        }
    }

    #[test]
    fn pieces_cover_the_range_exactly_once() {
        for as_of in [
            1_700_000_123_456,
            1_700_006_400_000,
            1_699_920_000_000,
            1_699_920_059_999,
        ] {
            for window in [Window::Hour, Window::Day, Window::Week, Window::Month] {
                let range = window.buckets(as_of);
                let pieces = range.pieces();
                let mut next = range.from;
                for piece in &pieces {
                    assert_eq!(piece.from, next, "{window:?} at {as_of}: {pieces:?}");
                    assert_eq!(piece.from % piece.granularity.millis(), 0);
                    assert!(piece.last >= piece.from);
                    next = piece.last + piece.granularity.millis();
                }
                assert_eq!(next, range.last + range.granularity.millis());
                assert!(pieces.len() <= 3);
            }
        }
    }

    #[test]
    fn windows_read_whole_buckets_of_their_granularity() {
        let as_of = 1_700_000_123_456;
        let range = Window::Hour.buckets(as_of);
        assert_eq!(range.granularity, Granularity::Minute);
        assert_eq!((range.last - range.from) / MINUTE_MS, 60);
        assert!(range.from <= as_of - HOUR_MS && range.from % MINUTE_MS == 0);
        let range = Window::Month.buckets(as_of);
        assert_eq!((range.last - range.from) / HOUR_MS, 720);
        assert_eq!(Granularity::Day.bucket_start(-1), -DAY_MS);
        assert_eq!(Window::parse("7d"), Some(Window::Week));
        assert_eq!(Window::parse("7D"), None);
    }
}
