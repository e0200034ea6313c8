//! The sustained-fault reproductions of issue 19, each as one scripted request under paused
//! time: what the client gets, which keys were asked, and what the keys' health became.

use super::*;

const MODEL_NOT_FOUND: Reply = Reply::Status(
    403,
    &[],
    r#"{"error":{"message":"Project `proj_1` does not have access to model `m`","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
);
const CREDIT_TOO_LOW: Reply = Reply::Status(
    400,
    &[],
    r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#,
);
const TRY_AGAIN_IN_2S: Reply = Reply::Status(
    429,
    &[],
    r#"{"error":{"message":"Rate limit reached for m on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 2s. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
);

fn two_targets(retry: &str) -> String {
    format!(
        "{}{}",
        providers(retry, &[("p", &["a", "b"]), ("q", &["c"])]),
        chain(&["p", "q"])
    )
}

fn state(metrics: &Metrics, key: &str, state: &str) -> bool {
    metrics.render().contains(&format!(
        r#"tollgate_key_state{{key="{key}",provider="p",state="{state}"}} 1"#
    ))
}

#[tokio::test(start_paused = true)]
async fn a_model_the_project_may_not_use_moves_on_and_never_disables_a_key() {
    let (d, fake, metrics) = setup(&two_targets(""));
    fake.script("a", [MODEL_NOT_FOUND]);
    let answer = d.dispatch(&chat()).await.unwrap();
    assert_eq!(
        (answer.provider.as_str(), answer.attempts),
        ("q", 2),
        "one attempt on p, then the next target"
    );
    assert_eq!(fake.keys(), ["a", "c"], "b was not spent on the same model");
    assert!(state(&metrics, "a", "healthy"), "{}", metrics.render());
    assert!(metrics
        .render()
        .contains(r#"tollgate_fallbacks_total{from="p",reason="model_unavailable",to="q"} 1"#));
    // The next request (another client's, another model's) uses the key at once.
    let answer = d.dispatch(&chat()).await.unwrap();
    assert_eq!(answer.key, "b");
}

#[tokio::test(start_paused = true)]
async fn a_model_missing_on_the_last_target_returns_the_upstreams_error() {
    let (d, fake, _) = setup(&providers("", &[("p", &["a", "b"])]));
    fake.always("a", MODEL_NOT_FOUND);
    let err = d.fail(&chat()).await;
    assert_eq!((err.status, err.attempts), (403, 1));
    assert!(err.message.contains("does not have access"), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn a_spent_credit_balance_disables_the_key_and_the_next_key_answers() {
    let (d, fake, metrics) = setup(&providers("", &[("p", &["a", "b"])]));
    fake.always("a", CREDIT_TOO_LOW);
    for _ in 0..4 {
        let answer = d.dispatch(&chat()).await.unwrap();
        assert_eq!((answer.status.as_u16(), answer.key.as_str()), (200, "b"));
    }
    assert_eq!(
        fake.keys().iter().filter(|k| *k == "a").count(),
        1,
        "asked once, then disabled: {:?}",
        fake.keys()
    );
    assert!(state(&metrics, "a", "disabled"), "{}", metrics.render());
}

#[tokio::test(start_paused = true)]
async fn a_wait_named_only_in_the_message_cools_the_key_for_that_long() {
    let (d, fake, metrics) = setup(&providers("cooldown_default = \"30s\"", &[("p", &["a"])]));
    fake.script("a", [TRY_AGAIN_IN_2S]);
    let start = Instant::now();
    let err = d.fail(&chat()).await;
    assert_eq!(
        (err.status, err.retry_after),
        (429, Some(Duration::from_secs(2))),
        "the 2 s the message named, not the 30 s default"
    );
    assert!(state(&metrics, "a", "cooling"));
    // The next request waits for the key (no fallback left) and goes exactly at 2 s.
    let answer = d.dispatch(&chat()).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(fake.log()[1].2 - start, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_the_deadline_falls_back_at_once() {
    let (d, fake, _) = setup(&two_targets(""));
    fake.always("a", Reply::Status(503, &[("retry-after", "700")], "{}"));
    fake.always("b", Reply::Status(503, &[("retry-after", "700")], "{}"));
    let start = Instant::now();
    let answer = d.dispatch(&chat()).await.unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.provider.as_str()),
        (200, "q")
    );
    assert_eq!(Instant::now(), start, "no wait at all");
}

#[tokio::test(start_paused = true)]
async fn an_absurd_retry_after_neither_panics_nor_waits() {
    let (d, fake, metrics) = setup(&two_targets(""));
    fake.always(
        "a",
        Reply::Status(503, &[("retry-after", "10000000000000000000")], "{}"),
    );
    fake.always(
        "b",
        Reply::Status(429, &[("retry-after-ms", "1e300")], "{}"),
    );
    let start = Instant::now();
    let answer = d.dispatch(&chat()).await.unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.provider.as_str()),
        (200, "q")
    );
    assert_eq!(Instant::now(), start);
    // Both keys are out for at most the clamp, and the pool still answers questions about them.
    assert!(!state(&metrics, "a", "healthy"));
    assert!(!state(&metrics, "b", "healthy"));
}

#[tokio::test(start_paused = true)]
async fn a_hanging_primary_leaves_the_fallback_room_within_the_deadline() {
    let toml = format!("[server]\nrequest_timeout = \"20s\"\n{}", two_targets(""));
    let (d, fake, _) = setup(&toml);
    fake.always("a", Reply::Hang);
    fake.always("b", Reply::Hang);
    let mut req = chat();
    let start = Instant::now();
    req.deadline = start + Duration::from_secs(20);
    let answer = d.dispatch(&req).await.unwrap();
    assert_eq!(answer.provider, "q");
    assert_eq!(
        Instant::now() - start,
        Duration::from_secs(10),
        "the first attempt had half of the deadline, the fallback the rest"
    );
}

#[tokio::test(start_paused = true)]
async fn every_key_disabled_answers_503_with_the_earliest_probe() {
    let (d, fake, _) = setup(&providers(
        "probe_interval = \"60s\"",
        &[("p", &["a", "b"])],
    ));
    fake.always("a", REVOKED);
    fake.always("b", REVOKED);
    let err = d.fail(&chat()).await;
    assert_eq!(err.attempts, 2);
    tokio::time::advance(Duration::from_secs(10)).await;
    let err = d.fail(&chat()).await;
    assert_eq!(
        (err.status, err.attempts, err.retry_after),
        (503, 0, Some(Duration::from_secs(50))),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_provider_whose_keys_are_ejected_is_skipped_without_attempts() {
    let toml = two_targets("max_attempts = 2\neject_after = 2");
    let (d, fake, metrics) = setup(&toml);
    fake.always("a", UNAVAILABLE);
    fake.always("b", UNAVAILABLE);
    // Two requests: each key fails twice in a row and is ejected.
    for _ in 0..2 {
        assert_eq!(d.dispatch(&chat()).await.unwrap().provider, "q");
    }
    let asked = fake.log().len();
    let answer = d.dispatch(&chat()).await.unwrap();
    assert_eq!((answer.provider.as_str(), answer.attempts), ("q", 1));
    assert_eq!(fake.log().len(), asked + 1, "p was not asked");
    let text = metrics.render();
    assert!(
        text.contains(r#"tollgate_fallbacks_total{from="p",reason="provider_down",to="q"} 1"#),
        "{text}"
    );
    assert!(state(&metrics, "a", "ejected"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_on_one_provider_leaves_the_others_retries() {
    let toml = format!(
        "{}[[models]]\nname = \"m\"\ntargets = [{{ provider = \"p\" }}]\n[[models]]\nname = \"n\"\ntargets = [{{ provider = \"q\" }}]\n",
        providers(
            "budget_percent = 0\nbudget_min_per_sec = 0\nmax_attempts = 3",
            &[("p", &["a", "b"]), ("q", &["c", "d"])]
        )
    );
    let (d, fake, _) = setup(&toml);
    fake.always("a", UNAVAILABLE);
    fake.always("b", UNAVAILABLE);
    fake.always("c", UNAVAILABLE);
    // p: the first retry is refused by its (empty) budget.
    let err = d.fail(&chat()).await;
    assert_eq!(err.attempts, 1);
    // q has a budget of its own, equally empty: its retry is refused too, independently of p.
    let mut n = chat();
    n.model = Some("n".into());
    let err = d.fail(&n).await;
    assert_eq!(err.attempts, 1);
}

fn windowed(fit: bool) -> String {
    format!(
        "{}[[models]]\nname = \"m\"\nfit_max_tokens = {fit}\ntargets = [{{ provider = \"p\", context_window = 100 }}, {{ provider = \"q\" }}]\n",
        providers("", &[("p", &["a"]), ("q", &["c"])])
    )
}

fn sized(prompt_bytes: usize, max_tokens: u64) -> GatewayRequest {
    let body = serde_json::json!({
        "model": "m",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "x".repeat(prompt_bytes)}],
    });
    GatewayRequest::for_test(
        Method::POST,
        "chat/completions",
        Bytes::from(body.to_string()),
    )
}

#[tokio::test(start_paused = true)]
async fn a_target_whose_window_cannot_hold_the_request_is_skipped_without_an_attempt() {
    let (d, fake, metrics) = setup(&windowed(false));
    // ~1000 prompt tokens against a 100-token window.
    let answer = d.dispatch(&sized(4000, 10)).await.unwrap();
    assert_eq!((answer.provider.as_str(), answer.attempts), ("q", 1));
    assert_eq!(fake.keys(), ["c"]);
    assert!(metrics
        .render()
        .contains(r#"tollgate_fallbacks_total{from="p",reason="context_window",to="q"} 1"#));
    // A small prompt with a small completion fits.
    let answer = d.dispatch(&sized(40, 10)).await.unwrap();
    assert_eq!(answer.provider, "p");
    // Prompt fits, prompt + max_tokens does not: skipped unless the model opts in.
    let answer = d.dispatch(&sized(40, 500)).await.unwrap();
    assert_eq!(answer.provider, "q");
    let (d, _, _) = setup(&windowed(true));
    let answer = d.dispatch(&sized(40, 500)).await.unwrap();
    assert_eq!(answer.provider, "p", "max_tokens lowered to fit");
}

#[tokio::test(start_paused = true)]
async fn a_chain_of_windows_too_small_answers_400_context_length_exceeded() {
    let toml = format!(
        "{}[[models]]\nname = \"m\"\ntargets = [{{ provider = \"p\", context_window = 100 }}]\n",
        providers("", &[("p", &["a"])])
    );
    let (d, fake, _) = setup(&toml);
    let err = d.fail(&sized(4000, 10)).await;
    assert_eq!((err.status, err.attempts), (400, 0));
    assert!(
        err.message.contains("maximum context length is 100"),
        "{err:?}"
    );
    assert!(fake.log().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_keys_retry_after_is_never_applied_to_another_keys_retry() {
    let toml = providers(
        "max_delay = \"5s\"\nmax_attempts = 3",
        &[("p", &["a", "b"])],
    )
    .replace("max_delay = \"1s\"\n", "");
    let (d, fake, _) = setup(&toml);
    fake.script("a", [Reply::Status(503, &[("retry-after", "2")], "{}")]);
    fake.script("b", [UNAVAILABLE]);
    let start = Instant::now();
    let answer = d.dispatch(&chat()).await.unwrap();
    assert_eq!(answer.status, 200);
    let log = fake.log();
    assert_eq!(log.len(), 3, "{:?}", fake.keys());
    assert_eq!(
        log[2].0, "b",
        "the key with no wait of its own is reused first"
    );
    assert!(
        log[2].2 - start < Duration::from_secs(1),
        "b's retry waited its own backoff, not a's 2 s: {:?}",
        log[2].2 - start
    );
}
