//! The jobs each commit changed, handed from the projector to the health evaluator (the
//! projector adds, the evaluator takes): the projection's side of the hand-over, so the
//! evaluator depends on ingestion and not the other way round.

use std::collections::HashSet;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::events::TenantId;

/// A job: its tenant and name.
pub type JobKey = (TenantId, String);

/// Jobs changed by commits and not yet judged: the projector adds, the evaluator takes. A set,
/// so a job changed by many commits is judged once; bounded by the number of jobs.
#[derive(Default)]
pub struct TouchedJobs {
    jobs: Mutex<HashSet<JobKey>>,
    added: Notify,
}

impl TouchedJobs {
    pub fn add(&self, jobs: &[JobKey]) {
        if jobs.is_empty() {
            return;
        }
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(jobs.iter().cloned());
        self.added.notify_one();
    }

    /// Resolves when jobs were added since the last wait.
    pub async fn added(&self) {
        self.added.notified().await
    }

    /// The jobs added since the last take.
    pub fn take(&self) -> HashSet<JobKey> {
        std::mem::take(&mut *self.jobs.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
