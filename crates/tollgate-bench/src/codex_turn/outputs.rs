//! What the session's commands print: fixed files and listings, and `cargo test` output built
//! from lists of test names.

/// The repository the session works in.
pub(super) const ROOT: &str = "/home/dev/src/ledger-sync";

/// `list_dir` of the repository root, two levels deep.
pub(super) const LISTING: &str = include_str!("listing.txt");

/// `git diff` after the first fix.
pub(super) const DIFF: &str = include_str!("diff.txt");

/// `rg -n "retry_after|Retry-After|max_delay"` in the repository.
pub(super) const RG: &str = include_str!("rg.txt");

/// `read_file` of `src/retry/backoff.rs`.
pub(super) fn backoff_rs() -> String {
    numbered(include_str!("backoff.rs.txt"))
}

/// `read_file` of `src/config/retry.rs`.
pub(super) fn config_rs() -> String {
    numbered(include_str!("config.rs.txt"))
}

const RETRY_TESTS: [&str; 9] = [
    "a_huge_retry_after_is_capped",
    "backoff_grows_until_the_cap",
    "backoff_resets_after_a_success",
    "jitter_stays_below_the_ceiling",
    "max_attempts_bounds_the_retries",
    "retry_after_date_in_the_past_falls_back",
    "retry_after_date_is_honoured",
    "retry_after_garbage_is_ignored",
    "retry_after_seconds_are_honoured",
];

const UNIT_TESTS: [&str; 24] = [
    "config::retry::tests::a_zero_base_delay_is_a_problem",
    "config::retry::tests::defaults_have_no_problems",
    "config::retry::tests::max_delay_below_base_delay_is_a_problem",
    "config::tests::env_overrides_the_file",
    "config::tests::every_problem_is_reported_with_its_path",
    "config::tests::example_config_parses",
    "config::tests::unknown_fields_are_rejected",
    "http::client::tests::gzip_answers_are_decoded",
    "http::client::tests::timeouts_come_from_the_config",
    "ledger::parse::tests::amounts_keep_their_scale",
    "ledger::parse::tests::camt053_statement_round_trips",
    "ledger::parse::tests::duplicate_entries_are_merged",
    "ledger::parse::tests::negative_amounts_are_debits",
    "ledger::parse::tests::unknown_currency_is_an_error",
    "retry::backoff::tests::cap_never_exceeds_max_wait",
    "retry::backoff::tests::full_jitter_uses_the_rng",
    "store::sqlite::tests::migrations_are_idempotent",
    "store::sqlite::tests::upsert_keeps_the_newest_entry",
    "sync::batch::tests::a_failed_batch_is_retried",
    "sync::batch::tests::batches_are_split_at_the_size_limit",
    "sync::batch::tests::checkpoint_is_written_after_each_batch",
    "sync::batch::tests::empty_days_are_skipped",
    "sync::batch::tests::give_up_after_max_attempts",
    "sync::batch::tests::uploads_are_ordered_by_booking_date",
];

const SYNC_TESTS: [&str; 7] = [
    "a_429_with_retry_after_waits_at_most_max_delay",
    "a_crash_resumes_from_the_checkpoint",
    "a_day_without_entries_uploads_nothing",
    "duplicate_statements_are_uploaded_once",
    "expired_token_is_refreshed_once",
    "the_fake_bank_paginates_statements",
    "uploads_stop_after_max_attempts",
];

/// What `cargo test` prints before the first test binary runs (a warning the session leaves
/// alone: it is not about the task).
fn compiled() -> String {
    format!(
        "   Compiling ledger-sync v0.4.2 ({ROOT})\n\
         warning: unused import: `std::time::SystemTime`\n --> src/sync/batch.rs:4:5\n  |\n\
         4 | use std::time::SystemTime;\n  |     ^^^^^^^^^^^^^^^^^^^^^\n  |\n  = note: \
         `#[warn(unused_imports)]` (part of `#[warn(unused)]`) on by default\n\n\
         warning: `ledger-sync` (lib) generated 1 warning (run `cargo fix --lib -p ledger-sync` \
         to apply 1 suggestion)\n    Finished `test` profile [unoptimized + debuginfo] \
         target(s) in 6.84s\n"
    )
}

/// What `cargo test` prints for one test binary: `header`, then a line per test.
fn target_output(header: &str, tests: &[&str]) -> String {
    let mut out = format!("{header}\n\nrunning {} tests\n", tests.len());
    for test in tests {
        out += &format!("test {test} ... ok\n");
    }
    out + &format!(
        "\ntest result: ok. {} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; \
         finished in 0.03s\n\n",
        tests.len()
    )
}

/// `cargo test --test retry`.
pub(super) fn retry_suite() -> String {
    let header = "     Running tests/retry.rs (target/debug/deps/retry-3f9a1c2b7d4e5f60)";
    compiled() + &target_output(header, &RETRY_TESTS)
}

/// `cargo test`: unit tests, both integration tests and the doc-tests.
pub(super) fn full_suite() -> String {
    let deps = "target/debug/deps";
    let doc = [
        "src/retry/backoff.rs - retry::backoff::Backoff (line 14)",
        "src/ledger/parse.rs - ledger::parse::parse_amount (line 31)",
    ];
    compiled()
        + &target_output(
            &format!("     Running unittests src/lib.rs ({deps}/ledger_sync-0b8e61d2a9c4f731)"),
            &UNIT_TESTS,
        )
        + &target_output(
            &format!("     Running tests/retry.rs ({deps}/retry-3f9a1c2b7d4e5f60)"),
            &RETRY_TESTS,
        )
        + &target_output(
            &format!("     Running tests/sync.rs ({deps}/sync-8c27d05e4b1f9a36)"),
            &SYNC_TESTS,
        )
        + &target_output("   Doc-tests ledger_sync", &doc)
}

/// A file as `read_file` returns it: every line prefixed with `L<n>: `.
fn numbered(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, line)| format!("L{}: {line}\n", i + 1))
        .collect()
}
