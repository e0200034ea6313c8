//! The 30 messages after the system message: the repository's instructions and environment,
//! then a user fixing a retry bug with a coding agent over six requests, with directory
//! listings, searches, file reads, patches and test runs and their output. The last message is
//! the user's, so the mock answers its usual short text.

use serde_json::{json, Value};

use super::outputs::{self, ROOT};

const CONTEXT: &str = include_str!("context.md");
const PATCH_RETRY: &str = include_str!("patch_retry.txt");
const PATCH_CONFIG: &str = include_str!("patch_config.txt");

/// Every message after the system message, in order.
pub(super) fn messages() -> Vec<Value> {
    [
        vec![user(CONTEXT)],
        find_the_bug(),
        agree_on_the_fix(),
        fix_it(),
        show_the_diff(),
        look_for_validation(),
        validate_it(),
        vec![user(
            "Great. Please write a short commit message for these changes and a changelog \
             entry under Unreleased.",
        )],
    ]
    .concat()
}

fn find_the_bug() -> Vec<Value> {
    vec![
        user(
            "The nightly sync of ledger-sync sometimes stalls for an hour after the bank API \
             answers 429. I think the retry code ignores our max_delay. Can you find out why \
             and fix it?",
        ),
        calls(
            "I'll map the repo and look for where Retry-After and max_delay are handled.",
            &[
                (
                    "call_list_root",
                    "list_dir",
                    json!({ "dir_path": ROOT, "depth": 2 }),
                ),
                (
                    "call_rg_retry",
                    "shell",
                    json!({
                        "command": [
                            "bash",
                            "-lc",
                            "rg -n \"retry_after|Retry-After|max_delay\"",
                        ],
                        "workdir": ROOT,
                    }),
                ),
            ],
        ),
        tool("call_list_root", outputs::LISTING),
        tool("call_rg_retry", &shell_output(outputs::RG, 0, 0.1)),
        call(
            "",
            "call_read_backoff",
            "read_file",
            json!({ "file_path": format!("{ROOT}/src/retry/backoff.rs") }),
        ),
        tool("call_read_backoff", &outputs::backoff_rs()),
        assistant(
            "Found it. `Backoff::next_wait` returns the server's `Retry-After` as is: the cap \
             (`max_delay`, at most `MAX_WAIT`) only applies to the exponential branch. The bank \
             sends `Retry-After: 3600` when a whole day's quota is used up, so the client sleeps \
             an hour. There is a second problem next to it: `retry_after` parses the value into \
             `millis` and multiplies by 1000, which overflows and panics in debug builds for \
             values above about 18 quadrillion, and reads oddly anyway. I suggest capping the \
             server's wait at `self.cap` and parsing delta-seconds with `Duration::from_secs`.",
        ),
    ]
}

fn agree_on_the_fix() -> Vec<Value> {
    vec![
        user(
            "Makes sense. Should the cap really apply to the server's value, though? If we \
             come back too early we just get another 429.",
        ),
        assistant(
            "We would, but each early retry costs one request and `max_attempts` still bounds \
             them, while an uncapped wait holds the whole nightly batch for as long as the \
             server says. With the default `max_delay` of 30 s and 5 attempts the client gives \
             up after about two minutes and the batch is retried by the next scheduled run, \
             which is the behaviour the README describes. If you prefer to honour long waits, \
             the alternative is to fail the batch at once when `Retry-After` exceeds the cap; \
             I can do that instead.",
        ),
    ]
}

fn fix_it() -> Vec<Value> {
    vec![
        user("Cap it. Add a regression test too."),
        call(
            "Patching the backoff and adding a test for a huge Retry-After.",
            "call_patch_retry",
            "apply_patch",
            json!({ "input": PATCH_RETRY }),
        ),
        tool(
            "call_patch_retry",
            "Success. Updated the following files:\nM src/retry/backoff.rs\nM tests/retry.rs\n",
        ),
        call(
            "Running the retry tests.",
            "call_test_retry",
            "shell",
            json!({
                "command": ["cargo", "test", "--test", "retry"],
                "workdir": ROOT,
                "timeout_ms": 120000,
            }),
        ),
        tool(
            "call_test_retry",
            &shell_output(&outputs::retry_suite(), 0, 7.9),
        ),
        assistant(
            "Done: the server's wait is capped at `max_delay` and delta-seconds are parsed with \
             `Duration::from_secs`. The new test `a_huge_retry_after_is_capped` sends \
             `Retry-After: 86400` and expects the default cap of 30 s; all 9 retry tests pass. \
             Cargo also warns about an unused `SystemTime` import in `src/sync/batch.rs:4`; \
             that is unrelated, so I left it alone.",
        ),
    ]
}

fn show_the_diff() -> Vec<Value> {
    vec![
        user("Show me the diff before I commit."),
        call(
            "",
            "call_git_diff",
            "shell",
            json!({ "command": ["git", "diff", "--no-color"], "workdir": ROOT }),
        ),
        tool("call_git_diff", &shell_output(outputs::DIFF, 0, 0.0)),
        assistant(
            "Two files changed. In `src/retry/backoff.rs`, `next_wait` caps the server's \
             `Retry-After` at `self.cap` and `retry_after` parses delta-seconds as seconds \
             instead of multiplying milliseconds. `tests/retry.rs` gains \
             `a_huge_retry_after_is_capped`. Nothing else is modified in the working tree.",
        ),
    ]
}

fn look_for_validation() -> Vec<Value> {
    vec![
        user(
            "One more thing: is max_delay validated anywhere? A config with max_delay = \"0s\" \
             would make every retry immediate.",
        ),
        calls(
            "Checking the retry config and where it is validated.",
            &[
                (
                    "call_read_config",
                    "read_file",
                    json!({ "file_path": format!("{ROOT}/src/config/retry.rs") }),
                ),
                (
                    "call_rg_validate",
                    "shell",
                    json!({
                        "command": ["rg", "-n", "fn problems|fn validate", "src/config"],
                        "workdir": ROOT,
                    }),
                ),
            ],
        ),
        tool("call_read_config", &outputs::config_rs()),
        tool(
            "call_rg_validate",
            &shell_output(
                "src/config/mod.rs:61:    pub fn validate(&self) -> Result<(), ConfigError> {\n\
                 src/config/source.rs:38:    pub fn problems(&self) -> Vec<String> {\n\
                 src/config/ledger.rs:52:    pub fn problems(&self) -> Vec<String> {\n",
                0,
                0.0,
            ),
        ),
    ]
}

fn validate_it() -> Vec<Value> {
    vec![
        call(
            "It is not; adding `RetryConfig::problems` next to the other sections' checks.",
            "call_patch_config",
            "apply_patch",
            json!({ "input": PATCH_CONFIG }),
        ),
        tool(
            "call_patch_config",
            "Success. Updated the following files:\nM src/config/retry.rs\nM src/config/mod.rs\n",
        ),
        call(
            "Running the whole test suite.",
            "call_test_all",
            "shell",
            json!({ "command": ["cargo", "test"], "workdir": ROOT, "timeout_ms": 300000 }),
        ),
        tool(
            "call_test_all",
            &shell_output(&outputs::full_suite(), 0, 14.2),
        ),
        assistant(
            "It was not validated: `RetryConfig` had no checks and `Config::validate` never \
             looked at the section, so `max_delay = \"0s\"` made every retry immediate and \
             `max_attempts = 0` silently meant a single attempt.\n\n\
             - `src/config/retry.rs`: new `RetryConfig::problems`, like the other sections'.\n\
             - `src/config/mod.rs`: `Config::validate` collects the retry section's problems \
             too.\n\n\
             It now reports `max_attempts = 0`, a zero `base_delay` and \
             a `max_delay` below `base_delay`, each with its key path, alongside the other \
             sections' problems. The full suite passes: 24 unit tests, 9 retry tests, 7 sync tests \
             and 2 doc-tests. Next steps, if you want them: mention the new checks in the \
             README's configuration table, and commit both fixes together.",
        ),
    ]
}

/// A shell tool's result: its output and exit code as a JSON string.
fn shell_output(output: &str, exit_code: i32, seconds: f64) -> String {
    json!({ "output": output, "metadata": { "exit_code": exit_code, "duration_seconds": seconds } })
        .to_string()
}

fn user(text: &str) -> Value {
    json!({ "role": "user", "content": text })
}

fn assistant(text: &str) -> Value {
    json!({ "role": "assistant", "content": text })
}

/// An assistant message calling one tool, with a short preamble (none when empty).
fn call(preamble: &str, id: &str, name: &str, arguments: Value) -> Value {
    calls(preamble, &[(id, name, arguments)])
}

/// An assistant message calling several tools at once.
fn calls(preamble: &str, calls: &[(&str, &str, Value)]) -> Value {
    let tool_calls: Vec<Value> = calls
        .iter()
        .map(|(id, name, arguments)| {
            json!({
                "id": id,
                "type": "function",
                "function": { "name": name, "arguments": arguments.to_string() },
            })
        })
        .collect();
    let content = if preamble.is_empty() {
        Value::Null
    } else {
        json!(preamble)
    };
    json!({ "role": "assistant", "content": content, "tool_calls": tool_calls })
}

/// The answer to tool call `id`.
fn tool(id: &str, output: &str) -> Value {
    json!({ "role": "tool", "tool_call_id": id, "content": output })
}
