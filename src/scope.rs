//! Tenant shards (CONTRACT §7): the tenants one replica projects and serves
//! (`JOBSTATS_TENANTS`). A replica outside its scope neither stores a tenant's events nor
//! answers for it (421 `TENANT_NOT_SERVED`, never a 404 that would read as "no such job").

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::events::TenantId;

/// All tenants, or a fixed set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantScope(Option<Arc<BTreeSet<TenantId>>>);

impl TenantScope {
    pub fn all() -> Self {
        TenantScope(None)
    }

    pub fn only(tenants: impl IntoIterator<Item = TenantId>) -> Self {
        TenantScope(Some(Arc::new(tenants.into_iter().collect())))
    }

    /// A comma-separated list of tenant UUIDs; an empty list means all tenants.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut tenants = BTreeSet::new();
        for item in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let tenant = TenantId::parse(item)
                .map_err(|_| format!("{item:?} is not a tenant id (a hyphenated UUID)"))?;
            tenants.insert(tenant);
        }
        Ok(if tenants.is_empty() {
            TenantScope::all()
        } else {
            TenantScope(Some(Arc::new(tenants)))
        })
    }

    pub fn is_all(&self) -> bool {
        self.0.is_none()
    }

    pub fn serves(&self, tenant: &TenantId) -> bool {
        self.0.as_ref().is_none_or(|set| set.contains(tenant))
    }

    /// Whether a message on `subject` (`jobs.events.<tenant>.<type>`) lies outside the scope:
    /// for a shard, every subject but its tenants' own (`jobs.events.<tenant>.>`, the tenant
    /// in canonical form), which is exactly what its consumer's server-side filter lets
    /// through. A subject naming no tenant is a dead letter only on all-tenant replicas, so
    /// a shard's live projection and its rebuild (which reads every subject) agree.
    pub fn excludes_subject(&self, subject: &str) -> bool {
        if self.is_all() {
            return false;
        }
        let mut tokens = subject.split('.');
        let prefix_ok = tokens.next() == Some("jobs") && tokens.next() == Some("events");
        let tenant = tokens
            .next()
            .and_then(|t| TenantId::parse_canonical(t).ok());
        !(prefix_ok && tenant.is_some_and(|tenant| self.serves(&tenant)))
    }

    /// The subjects that hold this scope's events: `jobs.events.>` for all tenants, else one
    /// `jobs.events.<tenant>.>` per tenant (the server-side filter of a shard's consumer).
    pub fn subjects(&self) -> Vec<String> {
        match &self.0 {
            None => vec![crate::stream::SUBJECTS.to_owned()],
            Some(set) => set.iter().map(|t| format!("jobs.events.{t}.>")).collect(),
        }
    }

    /// The tenants, for logs (`None`: all).
    pub fn tenants(&self) -> Option<Vec<String>> {
        self.0
            .as_ref()
            .map(|set| set.iter().map(ToString::to_string).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e11";
    const B: &str = "00000000-0000-4000-8000-000000000002";

    #[test]
    fn a_scope_keeps_its_tenants_and_judges_subjects_by_their_tenant_token() {
        let scope = TenantScope::parse(&format!(" {A} ,")).unwrap();
        assert!(scope.serves(&TenantId::parse(A).unwrap()));
        assert!(!scope.serves(&TenantId::parse(B).unwrap()));
        assert!(scope.excludes_subject(&format!("jobs.events.{B}.started")));
        assert!(!scope.excludes_subject(&format!("jobs.events.{A}.started")));
        // Not a tenant: the decoder's to judge (a dead letter on every replica).
        // What the shard's server-side filter never sends it, its rebuild passes over too.
        assert!(scope.excludes_subject("jobs.events.nope.started"));
        assert!(scope.excludes_subject(&format!("jobs.events.{}.started", A.to_uppercase())));
        assert!(!scope.excludes_subject(&format!("jobs.events.{A}.not-a-type")));
        assert!(!TenantScope::all().excludes_subject("jobs.events.nope.started"));
        assert!(TenantScope::parse("").unwrap().is_all());
        assert_eq!(TenantScope::all().subjects(), ["jobs.events.>"]);
        assert_eq!(
            TenantScope::parse(&format!("{A},{B}")).unwrap().subjects(),
            [format!("jobs.events.{B}.>"), format!("jobs.events.{A}.>")]
        );
        assert!(TenantScope::parse("x").unwrap_err().contains("\"x\""));
        assert!(!TenantScope::all().excludes_subject(&format!("jobs.events.{B}.started")));
    }
}
