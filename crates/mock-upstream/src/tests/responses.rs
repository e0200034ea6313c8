//! The Responses API over real sockets: plain and streamed answers, the Codex-style function
//! call round trip, stored responses per key, the prompt cache, and faults on its streams.

use std::time::Duration;

use serde_json::{json, Value};

use super::{call, Reply, TestResult};
use crate::{start, Fault, MockConfig, MockHandle};

const PATH: &str = "/v1/responses";

fn auth(key: &str) -> [(&'static str, String); 1] {
    [("authorization", format!("Bearer {key}"))]
}

/// POSTs `body` to `/v1/responses` with `key` (and extra headers).
async fn post(mock: &MockHandle, key: &str, body: &Value) -> TestResult<Reply> {
    send(mock, "POST", PATH, key, &body.to_string()).await
}

async fn send(
    mock: &MockHandle,
    method: &str,
    path: &str,
    key: &str,
    body: &str,
) -> TestResult<Reply> {
    let [(name, value)] = auth(key);
    call(mock, method, path, &[(name, &value)], body).await
}

/// Every SSE event of a reply as (event name, data).
fn named_events(reply: &Reply) -> Vec<(String, Value)> {
    reply
        .text()
        .split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            let field = |prefix: &str| {
                event
                    .lines()
                    .find_map(|line| line.strip_prefix(prefix))
                    .unwrap_or_default()
            };
            let data = serde_json::from_str(field("data: ")).unwrap_or(Value::Null);
            (field("event: ").to_owned(), data)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(name, _)| name.as_str()).collect()
}

fn user(text: &str) -> Value {
    json!({ "type": "message", "role": "user", "content": [{ "type": "input_text", "text": text }] })
}

/// A request shaped like Codex CLI's.
fn codex(input: Vec<Value>) -> Value {
    json!({
        "model": "gpt-test",
        "instructions": "You are Codex, a coding agent.",
        "input": input,
        "tools": [{ "type": "function", "name": "exec_command", "description": "Runs a command.",
                    "parameters": { "type": "object", "properties": { "cmd": { "type": "string" } } },
                    "strict": false }],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "reasoning": { "summary": "auto" },
        "store": false,
        "stream": true,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "session-1",
    })
}

#[tokio::test]
async fn a_plain_request_gets_a_response_object_and_is_recorded() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let body = json!({ "model": "gpt-test", "input": "hi" });
    let reply = post(&mock, "k1", &body).await?;
    assert_eq!(reply.status, 200);
    let v = reply.json()?;
    assert!(v["id"].as_str().ok_or("no id")?.starts_with("resp_"));
    assert_eq!(
        (&v["object"], &v["model"], &v["status"]),
        (&json!("response"), &json!("gpt-test"), &json!("completed"))
    );
    assert!(v["created_at"].as_u64().is_some_and(|t| t > 0));
    assert!(v["error"].is_null());
    let item = &v["output"][0];
    assert_eq!(
        (&item["type"], &item["role"]),
        (&json!("message"), &json!("assistant"))
    );
    assert_eq!(item["content"][0]["type"], "output_text");
    assert_eq!(item["content"][0]["text"], "Hello from mock");
    let usage = &v["usage"];
    assert_eq!(usage["input_tokens"], body.to_string().len() / 4);
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usage["output_tokens"], 3);
    assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(usage["total_tokens"], body.to_string().len() / 4 + 3);
    assert_eq!(mock.requests()[0].path, PATH);
    assert_eq!(mock.requests_for_key("k1"), 1);

    let missing = post(&mock, "k1", &json!({ "input": "hi" })).await?;
    assert_eq!(missing.status, 400);
    assert_eq!(
        missing.json()?["error"]["code"],
        "missing_required_parameter"
    );
    Ok(())
}

#[tokio::test]
async fn a_stream_sends_the_named_events_in_order_without_done() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let body = json!({ "model": "gpt-test", "input": [user("hi")], "stream": true });
    let reply = post(&mock, "k1", &body).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert!(reply.complete);
    assert!(!reply.text().contains("[DONE]"));
    let events = named_events(&reply);
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let numbers: Vec<u64> = events
        .iter()
        .filter_map(|(_, data)| data["sequence_number"].as_u64())
        .collect();
    assert_eq!(numbers, (0..11).collect::<Vec<_>>());
    let (_, completed) = &events[10];
    assert_eq!(completed["response"]["status"], "completed");
    assert_eq!(completed["response"]["usage"]["output_tokens"], 3);
    assert_eq!(completed["response"]["id"], events[0].1["response"]["id"]);
    Ok(())
}

#[tokio::test]
async fn a_codex_tool_call_round_trips_through_function_call_output() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let first = post(&mock, "k1", &codex(vec![user("please TOLLGATE_TOOL")])).await?;
    let events = named_events(&first);
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let item = events[7].1["item"].clone();
    assert_eq!(
        (&item["type"], &item["name"]),
        (&json!("function_call"), &json!("exec_command"))
    );
    let call_id = item["call_id"].as_str().ok_or("no call_id")?.to_owned();
    assert!(call_id.starts_with("call_"), "{call_id}");
    let arguments: Value = serde_json::from_str(item["arguments"].as_str().ok_or("no args")?)?;
    assert_eq!(arguments, json!({ "cmd": "echo tollgate-tool-ok" }));
    let pieces: String = events[3..6]
        .iter()
        .filter_map(|(_, data)| data["delta"].as_str())
        .collect();
    assert_eq!(pieces, item["arguments"].as_str().unwrap_or_default());

    let output = json!({ "type": "function_call_output", "call_id": call_id,
                         "output": "Process exited with code 0\nOutput:\ntollgate-tool-ok\n" });
    let second = post(
        &mock,
        "k1",
        &codex(vec![user("please TOLLGATE_TOOL"), item, output]),
    )
    .await?;
    let events = named_events(&second);
    let (name, done) = events.last().ok_or("no events")?;
    assert_eq!(name, "response.completed");
    let text = done["response"]["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.starts_with("tool said: "), "{text}");
    assert!(text.contains(crate::TOOL_OUTPUT), "{text}");
    Ok(())
}

#[tokio::test]
async fn stored_responses_answer_only_the_key_that_created_them() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let created = post(&mock, "k1", &json!({ "model": "m", "input": "hi" }))
        .await?
        .json()?;
    let id = created["id"].as_str().ok_or("no id")?.to_owned();
    let path = format!("{PATH}/{id}");
    assert_eq!(mock.response_key(&id).as_deref(), Some("k1"));

    let own = send(&mock, "GET", &path, "k1", "").await?;
    assert_eq!((own.status, own.json()?), (200, created));
    for method in ["GET", "DELETE"] {
        let other = send(&mock, method, &path, "k2", "").await?;
        assert_eq!(other.status, 404, "{method}");
        let error = other.json()?;
        assert_eq!(
            error["error"]["message"],
            format!("Response with id '{id}' not found.")
        );
        assert!(error["error"]["code"].is_null());
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }

    let chained = json!({ "model": "m", "input": "again", "previous_response_id": id });
    let wrong_key = post(&mock, "k2", &chained).await?;
    assert_eq!(wrong_key.status, 400);
    let error = wrong_key.json()?;
    assert_eq!(error["error"]["code"], "previous_response_not_found");
    assert_eq!(error["error"]["param"], "previous_response_id");
    assert_eq!(
        error["error"]["message"],
        format!("Previous response with id '{id}' not found.")
    );
    let right_key = post(&mock, "k1", &chained).await?;
    assert_eq!(right_key.status, 200);
    assert_eq!(right_key.json()?["previous_response_id"], id.as_str());

    let deleted = send(&mock, "DELETE", &path, "k1", "").await?;
    assert_eq!(
        deleted.json()?,
        json!({ "id": id, "object": "response.deleted", "deleted": true })
    );
    assert_eq!(send(&mock, "GET", &path, "k1", "").await?.status, 404);
    assert_eq!(mock.response_key(&id), None);

    let unstored = json!({ "model": "m", "input": "hi", "store": false });
    let unstored = post(&mock, "k1", &unstored).await?.json()?;
    let path = format!("{PATH}/{}", unstored["id"].as_str().unwrap_or_default());
    assert_eq!(send(&mock, "GET", &path, "k1", "").await?.status, 404);
    Ok(())
}

#[tokio::test]
async fn the_prompt_cache_rewards_a_session_that_stays_on_its_key() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let cached = |reply: &Reply| -> TestResult<u64> {
        let events = named_events(reply);
        let (_, done) = events.last().ok_or("no events")?;
        done["response"]["usage"]["input_tokens_details"]["cached_tokens"]
            .as_u64()
            .ok_or_else(|| "no cached_tokens".into())
    };
    let turn1 = codex(vec![user("hi")]);
    let turn2 = codex(vec![user("hi"), user("and more")]);
    assert_eq!(cached(&post(&mock, "k1", &turn1).await?)?, 0);
    let sticky = cached(&post(&mock, "k1", &turn2).await?)?;
    assert_eq!(sticky as usize, turn1.to_string().len() / 4);
    assert_eq!(
        cached(&post(&mock, "k2", &turn2).await?)?,
        0,
        "another key has no cache"
    );
    mock.clear_prompt_cache();
    assert_eq!(cached(&post(&mock, "k1", &turn2).await?)?, 0);
    Ok(())
}

#[tokio::test]
async fn a_rate_limit_fails_the_stream_in_band_and_a_plain_request_with_a_429() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    let fault = Fault::response_rate_limited(Duration::from_millis(1500));
    mock.script("k1", [fault.clone(), fault]);
    let mut body = codex(vec![user("hi")]);
    body["store"] = json!(true);
    let reply = post(&mock, "k1", &body).await?;
    assert_eq!(reply.status, 200);
    assert!(reply.complete);
    let events = named_events(&reply);
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.failed"
        ]
    );
    let response = &events[2].1["response"];
    assert_eq!(response["status"], "failed");
    assert_eq!(response["error"]["code"], "rate_limit_exceeded");
    let message = response["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("Please try again in 1.5s."), "{message}");

    let plain = post(&mock, "k1", &json!({ "model": "m", "input": "hi" })).await?;
    assert_eq!(plain.status, 429);
    let error = plain.json()?;
    assert_eq!(
        (&error["error"]["code"], &error["error"]["type"]),
        (&json!("rate_limit_exceeded"), &json!("tokens"))
    );
    assert_eq!(error["error"]["message"], message);
    assert!(plain.header("retry-after").is_none());

    // The failed response is stored (a GET takes one-shot faults too, so it comes last).
    let id = response["id"].as_str().unwrap_or_default();
    let stored = send(&mock, "GET", &format!("{PATH}/{id}"), "k1", "").await?;
    assert_eq!(stored.json()?["status"], "failed");
    Ok(())
}

#[tokio::test]
async fn an_error_event_can_replace_response_failed() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    mock.script(
        "k1",
        [Fault::response_insufficient_quota().as_error_event()],
    );
    let events = named_events(&post(&mock, "k1", &codex(vec![user("hi")])).await?);
    assert_eq!(
        names(&events),
        ["response.created", "response.in_progress", "error"]
    );
    let error = &events[2].1;
    assert_eq!(
        (&error["code"], &error["sequence_number"]),
        (&json!("insufficient_quota"), &json!(2))
    );
    assert!(error["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("You exceeded your current quota")));
    Ok(())
}

#[tokio::test]
async fn a_cut_aborts_after_n_deltas_and_an_early_end_is_clean() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    mock.script(
        "k1",
        [Fault::ResponseCutAfter(1), Fault::ResponseEndAfter(2)],
    );
    let body = codex(vec![user("hi")]);
    let deltas = |events: &[(String, Value)]| {
        events
            .iter()
            .filter(|(n, _)| n == "response.output_text.delta")
            .count()
    };
    let terminal = |events: &[(String, Value)]| {
        events
            .iter()
            .any(|(n, _)| n == "response.completed" || n == "response.failed")
    };

    let cut = post(&mock, "k1", &body).await?;
    assert!(!cut.complete, "a cut must not end the body cleanly");
    let events = named_events(&cut);
    assert_eq!((deltas(&events), terminal(&events)), (1, false));
    assert_eq!(
        events.last().map(|(n, _)| n.as_str()),
        Some("response.output_text.delta")
    );

    let ended = post(&mock, "k1", &body).await?;
    assert!(ended.complete, "an early end is a clean end of body");
    let events = named_events(&ended);
    assert_eq!((deltas(&events), terminal(&events)), (2, false));

    // On other routes, and for plain requests, these faults change nothing.
    mock.script(
        "k1",
        [Fault::ResponseCutAfter(0), Fault::ResponseCutAfter(0)],
    );
    let chat = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(
        send(&mock, "POST", "/v1/chat/completions", "k1", chat)
            .await?
            .status,
        200
    );
    let plain = post(&mock, "k1", &json!({ "model": "m", "input": "hi" })).await?;
    assert_eq!(
        (plain.status, plain.json()?["status"].clone()),
        (200, json!("completed"))
    );
    Ok(())
}

#[tokio::test]
async fn generic_faults_behave_on_responses() -> TestResult {
    let mock = start(MockConfig::default()).await?;
    mock.script(
        "k1",
        [
            Fault::status(429),
            Fault::StreamErrorFirst,
            Fault::BreakAfter(3),
            Fault::HugeUsage,
        ],
    );
    let body = codex(vec![user("hi")]);
    let limited = post(&mock, "k1", &body).await?;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()?["error"]["code"], "rate_limit_exceeded");

    let first = named_events(&post(&mock, "k1", &body).await?);
    assert_eq!(names(&first), ["error"]);
    assert_eq!(first[0].1["code"], "server_is_overloaded");

    let broken = post(&mock, "k1", &body).await?;
    assert!(!broken.complete);
    assert_eq!(
        names(&named_events(&broken)),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added"
        ]
    );

    let huge = named_events(&post(&mock, "k1", &body).await?);
    let (_, done) = huge.last().ok_or("no events")?;
    assert_eq!(done["response"]["usage"]["input_tokens"], u64::MAX);
    assert_eq!(done["response"]["usage"]["total_tokens"], u64::MAX);

    let header = [("x-mock-fault", "response-failed=server_error")];
    let reply = call(&mock, "POST", PATH, &header, &body.to_string()).await?;
    let events = named_events(&reply);
    assert_eq!(
        events
            .last()
            .map(|(_, d)| d["response"]["error"]["code"].clone()),
        Some(json!("server_error"))
    );
    Ok(())
}
