//! Reading requests and building answers and events, without a socket.

use super::events::{stream, Ending, Events};
use super::*;
use crate::tools::tool_arguments;

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn user(text: &str) -> Value {
    json!({ "type": "message", "role": "user", "content": [{ "type": "input_text", "text": text }] })
}

fn exec_tool() -> Value {
    json!({ "type": "function", "name": "exec_command", "description": "Runs a command.",
            "parameters": { "type": "object" }, "strict": false })
}

fn turn(output: Output) -> Turn {
    Turn {
        id: "resp_1_1".into(),
        item_id: "msg_1_1".into(),
        call_id: "call_1_1".into(),
        created_at: 7,
        model: "gpt-test".into(),
        previous_response_id: None,
        store: true,
        usage: Usage {
            input: 40,
            cached: 10,
            output: output.deltas().len(),
            huge: false,
        },
        output,
    }
}

fn message_turn() -> Turn {
    turn(Output::Message {
        deltas: split_even(DEFAULT_TEXT, 3),
    })
}

/// Every event as (SSE event name, data).
fn parse(events: &Events) -> Vec<(String, Value)> {
    events
        .events
        .iter()
        .map(|bytes| {
            let text = String::from_utf8_lossy(bytes);
            let mut lines = text.lines();
            let name = lines.next().and_then(|l| l.strip_prefix("event: "));
            let data = lines.next().and_then(|l| l.strip_prefix("data: "));
            let data = data.and_then(|d| serde_json::from_str(d).ok());
            (
                name.unwrap_or_default().to_owned(),
                data.unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(name, _)| name.as_str()).collect()
}

#[test]
fn split_even_cuts_text_into_nearly_equal_pieces() {
    assert_eq!(
        split_even("Hello from mock", 3),
        ["Hello", " from", " mock"]
    );
    assert_eq!(split_even("abc", 0), ["abc"]);
    assert_eq!(split_even("ab", 5), ["a", "b"]);
    assert_eq!(split_even("", 3), [""]);
    assert_eq!(split_even("héllo", 2).concat(), "héllo");
}

#[test]
fn a_plain_prompt_gets_the_default_text() {
    assert_eq!(reply_for(&object(json!({ "input": "hi" }))), Reply::Default);
    assert_eq!(reply_for(&object(json!({}))), Reply::Default);
    let after_reasoning = json!({ "input": [user("hi"), { "type": "reasoning", "summary": [] }] });
    assert_eq!(reply_for(&object(after_reasoning)), Reply::Default);
}

#[test]
fn the_marker_with_exec_command_gets_a_codex_shell_call() {
    let request = json!({
        "instructions": "You are Codex.",
        "input": [user("<environment_context/>"), user("run it: TOLLGATE_TOOL")],
        "tools": [{ "type": "web_search" }, exec_tool()],
    });
    let Reply::Call { name, arguments } = reply_for(&object(request)) else {
        panic!("not a call");
    };
    assert_eq!(name, "exec_command");
    let arguments: Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(arguments, json!({ "cmd": "echo tollgate-tool-ok" }));
}

#[test]
fn shell_gets_an_argv_and_exec_command_wins_over_it() {
    let shell = json!({ "type": "function", "name": "shell" });
    let request = json!({ "input": "TOLLGATE_TOOL", "tools": [shell] });
    let Reply::Call { name, arguments } = reply_for(&object(request)) else {
        panic!("not a call");
    };
    assert_eq!(name, "shell");
    assert_eq!(arguments, r#"{"command":["echo","tollgate-tool-ok"]}"#);
    // Chat-shaped and grouped tools are found too.
    let both = json!({
        "input": "TOLLGATE_TOOL",
        "tools": [shell, { "type": "namespace", "tools": [{ "function": { "name": "exec_command" } }] }],
    });
    assert!(matches!(reply_for(&object(both)), Reply::Call { name, .. } if name == "exec_command"));
}

#[test]
fn the_marker_without_a_shell_tool_explains_itself() {
    let request =
        json!({ "input": [user("TOLLGATE_TOOL")], "tools": [{ "type": "function", "name": "x" }] });
    let Reply::Text(text) = reply_for(&object(request)) else {
        panic!("not a text");
    };
    assert!(text.contains("no `exec_command`"), "{text}");
}

#[test]
fn a_tool_output_is_quoted_back() {
    let call = json!({ "type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": "{}" });
    let output = |output: Value| {
        let request = json!({
            "input": [user("TOLLGATE_TOOL"), call, { "type": "function_call_output", "call_id": "c1", "output": output }],
            "tools": [exec_tool()],
        });
        reply_for(&object(request))
    };
    assert_eq!(
        output(json!("Output:\ntollgate-tool-ok\n")),
        Reply::Text("tool said: Output:\ntollgate-tool-ok\n".into())
    );
    assert_eq!(
        output(json!([{ "type": "input_text", "text": "tollgate-tool-ok" }])),
        Reply::Text("tool said: tollgate-tool-ok".into())
    );
}

#[test]
fn a_text_stream_has_every_event_in_order_with_increasing_sequence_numbers() {
    let events = parse(&stream(&message_turn(), Ending::Completed));
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
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str());
        assert_eq!(data["sequence_number"], i);
    }
    let created = &events[0].1["response"];
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["output"], json!([]));
    let text: String = events
        .iter()
        .filter(|(name, _)| name == "response.output_text.delta")
        .filter_map(|(_, data)| data["delta"].as_str())
        .collect();
    assert_eq!(text, DEFAULT_TEXT);
    assert_eq!(events[7].1["text"], DEFAULT_TEXT);
    assert_eq!(events[9].1["item"]["content"][0]["text"], DEFAULT_TEXT);
    let done = &events[10].1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["type"], "message");
    assert_eq!(done["usage"]["input_tokens"], 40);
    assert_eq!(done["usage"]["input_tokens_details"]["cached_tokens"], 10);
    assert_eq!(done["usage"]["output_tokens"], 3);
    assert_eq!(
        done["usage"]["output_tokens_details"]["reasoning_tokens"],
        0
    );
    assert_eq!(done["usage"]["total_tokens"], 43);
}

#[test]
fn a_call_stream_sends_its_arguments_in_pieces() {
    let arguments = tool_arguments("exec_command");
    let mut call = turn(Output::Call {
        name: "exec_command".into(),
        deltas: split_even(&arguments, 2),
    });
    call.item_id = "fc_1_1".into();
    let events = parse(&stream(&call, Ending::Completed));
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let added = &events[2].1["item"];
    assert_eq!(added["type"], "function_call");
    assert_eq!(added["call_id"], "call_1_1");
    assert_eq!(added["arguments"], "");
    assert_eq!(events[3].1["item_id"], "fc_1_1");
    assert_eq!(events[5].1["arguments"], arguments.as_str());
    let item = &events[6].1["item"];
    assert_eq!(
        (&item["name"], &item["arguments"], &item["status"]),
        (
            &json!("exec_command"),
            &json!(arguments),
            &json!("completed")
        )
    );
    assert_eq!(events[7].1["response"]["output"][0], *item);
}

#[test]
fn failures_come_right_after_in_progress() {
    let turn = message_turn();
    let failed = Ending::Failed {
        code: "rate_limit_exceeded",
        message: "slow down",
        error_event: false,
    };
    let events = parse(&stream(&turn, failed));
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
    assert_eq!(
        response["error"],
        json!({ "code": "rate_limit_exceeded", "message": "slow down" })
    );
    assert_eq!(response["usage"]["output_tokens"], 0);
    let as_event = Ending::Failed {
        code: "server_error",
        message: "boom",
        error_event: true,
    };
    let events = parse(&stream(&turn, as_event));
    assert_eq!(
        events[2],
        (
            "error".to_owned(),
            json!({ "type": "error", "code": "server_error", "message": "boom", "param": null, "sequence_number": 2 })
        )
    );
}

#[test]
fn cuts_count_output_deltas() {
    let events = stream(&message_turn(), Ending::Completed);
    // created, in_progress, item added, part added, then deltas at 4, 5, 6.
    assert_eq!(events.deltas, [4, 5, 6]);
    assert_eq!(events.cut_after(0), 4);
    assert_eq!(events.cut_after(1), 5);
    assert_eq!(events.cut_after(3), 7);
    assert_eq!(events.cut_after(99), 7);
}

#[test]
fn huge_usage_claims_u64_max() {
    let usage = Usage {
        input: 1,
        cached: 1,
        output: 1,
        huge: true,
    }
    .to_json();
    assert_eq!(usage["input_tokens"], u64::MAX);
    assert_eq!(usage["output_tokens"], u64::MAX);
    assert_eq!(usage["total_tokens"], u64::MAX);
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 0);
}
