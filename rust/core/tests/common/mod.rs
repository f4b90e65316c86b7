//! Helpers shared by the integration tests.

use proptest::test_runner::Config as ProptestConfig;

/// `n` cases, or `PROPTEST_CASES` from the environment for a longer soak. Failures are
/// reported with their input; no regression files next to the tests.
pub fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(n),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
