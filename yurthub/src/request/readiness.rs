//! Readiness: whether the hub may serve clients yet, as named checks that
//! each say why not. The proxy gates on it and the hub server reports it.

use std::sync::Arc;

type Check = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Readiness: the conjunction of named checks, each returning the reason it
/// is not ready (or None). The first failing reason is reported.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<Check>,
}

impl Readiness {
    pub fn add(&mut self, check: impl Fn() -> Option<String> + Send + Sync + 'static) {
        self.checks.push(Arc::new(check));
    }

    pub fn not_ready_reason(&self) -> Option<String> {
        self.checks.iter().find_map(|c| c())
    }
}
