//! Helpers shared by the integration tests.

use proptest::test_runner::Config as ProptestConfig;

/// `n` cases, or `PROPTEST_CASES` from the environment for a longer soak (with room for as
/// many rejected inputs as cases, so that a soak is not cut short by a test's assumptions).
/// Failures are reported with their input; no regression files next to the tests.
pub fn cases(n: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    let defaults = ProptestConfig::default();
    ProptestConfig {
        cases,
        max_global_rejects: defaults.max_global_rejects.max(cases),
        failure_persistence: None,
        ..defaults
    }
}
