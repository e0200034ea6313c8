//! What attempts cost the keys' buckets: a failed attempt gives its tokens back, an answer's
//! implausible usage is ignored, and a request waits for refills at most `max_queue_wait` in all.

use super::*;
use http_body_util::BodyExt;

/// One key `a` with 1000 TPM; backoff short enough for three attempts in well under a second.
const ONE_KEY_1000_TPM: &str = "[retry]\nbase_delay = \"100ms\"\nmax_delay = \"1s\"\n[[providers]]\nname = \"p\"\nbase_url = \"http://p/v1\"\ndefault = true\nkeys = [{ id = \"a\", secret = \"a\", tpm = 1000 }]\n";

/// A chat request estimated at 400 tokens.
fn costly() -> GatewayRequest {
    let mut req = chat();
    req.tokens = 400;
    req
}

#[tokio::test(start_paused = true)]
async fn failed_attempts_give_their_tokens_back_to_the_key() {
    let (d, fake, _) = setup(ONE_KEY_1000_TPM);
    fake.script("a", [Reply::Refused, UNAVAILABLE, Reply::Hang]);
    let answer = d.dispatch(&costly()).await.unwrap();
    // Uncharged, the third attempt would find 200 tokens left and wait 12 s for a refill
    // longer than max_queue_wait: the request would end in a 429.
    assert_eq!(
        (answer.status.as_u16(), answer.attempts),
        (200, 4),
        "connect error, 503 and timeout each gave their 400 back"
    );
    assert_eq!(fake.log().len(), 4);
    // The answered attempt keeps its 400 (its usage would reconcile it): 600 left.
    let at = Instant::now();
    assert_eq!(d.dispatch(&costly()).await.unwrap().status, 200);
    assert_eq!(Instant::now(), at, "the bucket had room at once");
}

#[tokio::test(start_paused = true)]
async fn an_answer_reporting_impossible_usage_does_not_drain_the_key() {
    let (d, fake, metrics) = setup(ONE_KEY_1000_TPM);
    fake.script(
        "a",
        [Reply::Status(
            200,
            &[("content-type", "application/json")],
            r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":18446744073709551615}}"#,
        )],
    );
    let answer = d.dispatch(&costly()).await.unwrap();
    assert_eq!(answer.status, 200);
    answer.body.collect().await.unwrap();
    // The estimate stands (600 left); charged 2^64 - 1 tokens, the key would wait a minute.
    let at = Instant::now();
    assert_eq!(d.dispatch(&costly()).await.unwrap().status, 200);
    assert_eq!(Instant::now(), at, "no refill was waited for");
    let rendered = metrics.render();
    for kind in ["prompt", "completion"] {
        let series =
            format!("tollgate_tokens_total{{kind=\"{kind}\",model=\"other\",provider=\"p\"}} 0\n");
        assert!(
            rendered.contains(&series),
            "an implausible usage is not counted either: {series}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn bucket_waits_are_bounded_in_total_per_request_by_max_queue_wait() {
    let toml = |wait: &str| {
        format!("[limits]\nmax_queue_wait = \"{wait}\"\n[retry]\nbase_delay = \"100ms\"\nmax_delay = \"1s\"\n[[providers]]\nname = \"p\"\nbase_url = \"http://p/v1\"\ndefault = true\nkeys = [{{ id = \"a\", secret = \"a\", rpm = 60 }}]\n")
    };
    for (wait, second_wait) in [("1500ms", false), ("5s", true)] {
        let (d, fake, _) = setup(&toml(wait));
        for _ in 0..60 {
            d.dispatch(&chat()).await.unwrap();
        }
        // Waits ~1 s for a request, fails, then would need most of another second.
        fake.script("a", [UNAVAILABLE]);
        let start = Instant::now();
        let status = match d.dispatch(&chat()).await {
            Ok(answer) => answer.status.as_u16(),
            Err(e) => e.status().as_u16(),
        };
        let took = Instant::now() - start;
        assert_eq!(
            fake.log().len(),
            if second_wait { 62 } else { 61 },
            "{wait}"
        );
        if second_wait {
            assert_eq!(status, 200);
        } else {
            assert_ne!(status, 200);
            assert!(took < Duration::from_millis(1500), "{wait}: {took:?}");
        }
    }
}
