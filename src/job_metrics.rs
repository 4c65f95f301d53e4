//! Per-job Prometheus series (CONTRACT §12), served on the admin listener's `/metrics` only:
//! labels `tenant` and `job` (and `outcome`, `state`, `quantile`), never an execution, host or
//! pod, so the series count follows the job count and nothing else.
//!
//! Every figure is maintained state: the job's `job_stats` row (read in one pass, see
//! [`crate::store::ReadPool::job_metrics`]) and the health state last announced on
//! `JOB_HEALTH` ([`JobHealthBoard`], kept by the evaluator), which every replica reads back
//! from the same stream. So the numbers are equal on every replica, unchanged by restarts, and
//! a scrape costs the same whatever the history's length. The text is written directly in the
//! OpenMetrics format `prometheus-client` renders the rest in: a registry of 170 000 series
//! rebuilt at each scrape would cost more than the figures themselves.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::projection::HealthState;
use crate::store::{JobMetricsRow, JOB_METRICS_QUANTILES};

/// `JOBSTATS_JOB_METRICS_MAX` by default: the jobs exported per scrape.
pub const DEFAULT_MAX_JOBS: usize = 10_000;

/// The health state last announced per job (absent: `new`), as the evaluator reads it back
/// from `JOB_HEALTH` and publishes it. Keyed by the tenant as `job_stats` spells it, then the
/// job name, so a scrape looks a job up without allocating.
#[derive(Default)]
pub struct JobHealthBoard {
    inner: Mutex<Board>,
}

#[derive(Default)]
struct Board {
    /// Set once what the stream held has been read back; before that every job is `unknown`.
    loaded: bool,
    states: HashMap<String, HashMap<String, HealthState>>,
}

impl JobHealthBoard {
    /// Records the state announced for a job (by this replica or another).
    pub fn set(&self, tenant: &str, job: &str, state: HealthState) {
        let mut board = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let jobs = match board.states.get_mut(tenant) {
            Some(jobs) => jobs,
            None => board.states.entry(tenant.to_owned()).or_default(),
        };
        match jobs.get_mut(job) {
            Some(known) => *known = state,
            None => {
                jobs.insert(job.to_owned(), state);
            }
        }
    }

    /// Records that everything `JOB_HEALTH` held has been read back.
    pub fn mark_loaded(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).loaded = true;
    }

    /// The state of each of `rows`' jobs: `unknown` for all while not loaded or when
    /// `unknown` is forced (the stream unreachable for longer than §5 allows judging).
    fn states_of(&self, rows: &[JobMetricsRow], unknown: bool) -> Vec<HealthState> {
        let board = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        rows.iter()
            .map(|row| {
                if unknown || !board.loaded {
                    return HealthState::Unknown;
                }
                board
                    .states
                    .get(row.tenant.as_str())
                    .and_then(|jobs| jobs.get(row.job.as_str()))
                    .copied()
                    .unwrap_or(HealthState::New)
            })
            .collect()
    }
}

/// Appends the per-job families to `out` (before its `# EOF`): `rows` are the jobs exported,
/// `omitted` how many were left out by the cap, `now_ms` the instant next runs are counted
/// from, and `unknown` forces every job's state to `unknown`.
pub fn render(
    out: &mut String,
    rows: &[JobMetricsRow],
    board: &JobHealthBoard,
    unknown: bool,
    omitted: u64,
    now_ms: i64,
) {
    let labels: Vec<String> = rows
        .iter()
        .map(|row| {
            let mut labels = String::with_capacity(24 + row.tenant.len() + row.job.len());
            labels.push_str("tenant=\"");
            escape_into(&mut labels, &row.tenant);
            labels.push_str("\",job=\"");
            escape_into(&mut labels, &row.job);
            labels.push('"');
            labels
        })
        .collect();
    // Roughly what the text takes: ~19 lines of ~120 bytes per job.
    out.reserve(rows.len() * 19 * 120);
    let jobs = || rows.iter().zip(&labels);

    family(
        out,
        "jobstats_job_executions",
        "counter",
        "Executions of the job that ended so (completed, failed), over the whole stream",
    );
    for (row, labels) in jobs() {
        let name = "jobstats_job_executions_total";
        sample(out, name, labels, "outcome=\"completed\"", row.completed);
        sample(out, name, labels, "outcome=\"failed\"", row.failed);
    }

    let states = board.states_of(rows, unknown);
    family(
        out,
        "jobstats_job_health",
        "gauge",
        "1 for the job's health state (as last announced on JOB_HEALTH), 0 for the others",
    );
    for ((_, labels), current) in jobs().zip(&states) {
        for state in HealthState::ALL {
            let _ = writeln!(
                out,
                "jobstats_job_health{{{labels},state=\"{}\"}} {}",
                state.as_str(),
                u8::from(state == *current)
            );
        }
    }

    gauge_of(
        out,
        "jobstats_job_last_success_timestamp_seconds",
        "Finish time of the job's latest completed execution (Unix seconds)",
        jobs(),
        |row| row.last_success_at,
    );
    gauge_of(
        out,
        "jobstats_job_last_finish_timestamp_seconds",
        "Finish time of the job's latest finished execution, completed or failed (Unix seconds)",
        jobs(),
        |row| row.last_finished_at,
    );
    gauge_of(
        out,
        "jobstats_job_last_duration_seconds",
        "Run time of the job's latest finished execution",
        jobs(),
        |row| row.last_duration_ms,
    );
    family(
        out,
        "jobstats_job_running",
        "gauge",
        "Executions of the job processing now",
    );
    for (row, labels) in jobs() {
        sample(out, "jobstats_job_running", labels, "", row.processing);
    }

    let mut next_runs: HashMap<(&str, Option<&str>), Option<i64>> = HashMap::new();
    let now = chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_else(chrono::Utc::now);
    gauge_of(
        out,
        "jobstats_job_next_run_timestamp_seconds",
        "The schedule's next fire time (Unix seconds); absent without a cron",
        jobs(),
        |row| {
            let cron = row.cron.as_deref()?;
            let zone = row.timezone.as_deref();
            // Jobs share crons: each distinct one is parsed and stepped once per scrape.
            *next_runs.entry((cron, zone)).or_insert_with(|| {
                crate::schedule::CronSchedule::parse_in(cron, zone)
                    .ok()?
                    .next_after(now)
                    .map(|t| t.timestamp_millis())
            })
        },
    );

    family(
        out,
        "jobstats_job_duration_seconds",
        "summary",
        "Run time of the job's completed executions: quantiles within 1% (a sketch over the \
         whole history), sum and count",
    );
    for (row, labels) in jobs() {
        if row.duration_count == 0 {
            continue;
        }
        for (q, value) in JOB_METRICS_QUANTILES.iter().zip(row.duration_quantiles) {
            if let Some(ms) = value {
                let _ = write!(
                    out,
                    "jobstats_job_duration_seconds{{{labels},quantile=\"{q}\"}} "
                );
                seconds(out, i128::from(ms));
                out.push('\n');
            }
        }
        let _ = write!(out, "jobstats_job_duration_seconds_sum{{{labels}}} ");
        seconds(out, row.duration_sum_ms);
        out.push('\n');
        sample(
            out,
            "jobstats_job_duration_seconds_count",
            labels,
            "",
            row.duration_count,
        );
    }

    family(
        out,
        "jobstats_job_metrics_omitted",
        "gauge",
        "Jobs left out of the per-job series by JOBSTATS_JOB_METRICS_MAX",
    );
    let _ = writeln!(out, "jobstats_job_metrics_omitted {omitted}");
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}.");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, extra: &str, value: i64) {
    let comma = if extra.is_empty() { "" } else { "," };
    let _ = writeln!(out, "{name}{{{labels}{comma}{extra}}} {value}");
}

/// A gauge in seconds from a figure in ms; jobs without the figure have no sample.
fn gauge_of<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    jobs: impl Iterator<Item = (&'a JobMetricsRow, &'a String)>,
    mut value_ms: impl FnMut(&'a JobMetricsRow) -> Option<i64>,
) {
    family(out, name, "gauge", help);
    for (row, labels) in jobs {
        if let Some(ms) = value_ms(row) {
            let _ = write!(out, "{name}{{{labels}}} ");
            seconds(out, i128::from(ms));
            out.push('\n');
        }
    }
}

/// Milliseconds as seconds with three decimals, exactly (no float rounding).
fn seconds(out: &mut String, ms: i128) {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let _ = write!(out, "{sign}{}.{:03}", ms / 1000, ms % 1000);
}

/// A label value as the text format escapes it (backslash, double quote, line feed).
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tenant: &str, job: &str) -> JobMetricsRow {
        JobMetricsRow {
            tenant: tenant.into(),
            job: job.into(),
            completed: 3,
            failed: 2,
            processing: 1,
            last_finished_at: Some(1_700_000_000_250),
            last_duration_ms: Some(1_500),
            last_success_at: Some(1_699_999_999_000),
            cron: Some("*/5 * * * *".into()),
            timezone: None,
            duration_sum_ms: 4_500,
            duration_count: 3,
            duration_quantiles: [Some(1_000), Some(2_000), Some(2_000), Some(2_000)],
        }
    }

    #[test]
    fn each_job_gets_its_figures_under_tenant_and_job_labels_only() {
        let board = JobHealthBoard::default();
        board.mark_loaded();
        board.set("t1", "stuck-one", HealthState::Stuck);
        let mut text = String::new();
        let rows = [row("t1", "stuck-one"), row("t1", "fresh")];
        render(&mut text, &rows, &board, false, 7, 1_700_000_000_000);
        let has = |line: &str| text.lines().any(|l| l == line);
        let labels = "tenant=\"t1\",job=\"stuck-one\"";
        assert!(has(&format!(
            "jobstats_job_executions_total{{{labels},outcome=\"failed\"}} 2"
        )));
        assert!(has(&format!(
            "jobstats_job_health{{{labels},state=\"stuck\"}} 1"
        )));
        assert!(has(&format!(
            "jobstats_job_health{{{labels},state=\"new\"}} 0"
        )));
        assert!(has(
            "jobstats_job_health{tenant=\"t1\",job=\"fresh\",state=\"new\"} 1"
        ));
        assert!(has(&format!(
            "jobstats_job_last_finish_timestamp_seconds{{{labels}}} 1700000000.250"
        )));
        assert!(has(&format!(
            "jobstats_job_next_run_timestamp_seconds{{{labels}}} 1700000100.000"
        )));
        assert!(has(&format!(
            "jobstats_job_duration_seconds{{{labels},quantile=\"0.99\"}} 2.000"
        )));
        assert!(has(&format!(
            "jobstats_job_duration_seconds_sum{{{labels}}} 4.500"
        )));
        assert!(has("jobstats_job_metrics_omitted 7"));
        // Each family's samples together, as the OpenMetrics parser demands.
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(families.len(), 9);
    }

    #[test]
    fn every_job_is_unknown_until_the_announced_states_are_loaded() {
        let board = JobHealthBoard::default();
        board.set("t1", "a", HealthState::Healthy);
        let mut text = String::new();
        render(&mut text, &[row("t1", "a")], &board, false, 0, 0);
        assert!(text
            .lines()
            .any(|l| l == "jobstats_job_health{tenant=\"t1\",job=\"a\",state=\"unknown\"} 1"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_into(&mut out, "a\"b\\c\nd");
        assert_eq!(out, "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn milliseconds_print_as_exact_seconds() {
        let mut out = String::new();
        seconds(&mut out, 1_234);
        seconds(&mut out, -5);
        assert_eq!(out, "1.234-0.005");
    }
}
