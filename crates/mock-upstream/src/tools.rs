//! Codex CLI's tool round trip, played the same way on every generation route (Responses, chat
//! completions, Anthropic messages): a user turn containing [`TOOL_MARKER`] gets a call to the
//! request's `exec_command` function (else `shell`, else Claude Code's `Bash`), and a turn
//! carrying that tool's output gets
//! `"tool said: <output>"`. Each route reads its own request shape into a [`Last`] turn and
//! writes the [`Reply`] in its own shape; the contract is in the crate docs, section "Codex's
//! tool round trip".

use serde_json::{json, Value};

/// The text in a user message that makes a request with a shell tool get a call to it.
pub const TOOL_MARKER: &str = "TOLLGATE_TOOL";

/// What the called command prints: `echo tollgate-tool-ok`.
pub const TOOL_OUTPUT: &str = "tollgate-tool-ok";

/// What the last turn of a request is, as far as the round trip cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Last {
    /// A user message, its text parts joined.
    UserText(String),
    /// The output of a tool the previous answer called.
    ToolOutput(String),
    /// Anything else (an assistant turn, reasoning, nothing at all).
    Other,
}

/// What an answer says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The route's usual answer ("Hello from mock").
    Default,
    Text(String),
    /// A call to `name` with `arguments`, a JSON object as a string.
    Call {
        name: String,
        arguments: String,
    },
}

/// The reply to a request whose last turn is `last` and whose `tools` are these.
pub(crate) fn reply(last: Last, tools: Option<&Value>) -> Reply {
    match last {
        Last::ToolOutput(output) => Reply::Text(format!("tool said: {output}")),
        Last::UserText(text) if text.contains(TOOL_MARKER) => match shell_tool(tools) {
            Some(name) => Reply::Call {
                arguments: tool_arguments(name),
                name: name.to_owned(),
            },
            None => Reply::Text(format!(
                "{TOOL_MARKER} asks for a tool call, but the request has no `exec_command` or \
                 `shell` function tool."
            )),
        },
        Last::UserText(_) | Last::Other => Reply::Default,
    }
}

/// The text of a content value: a string, or the `text` of every part of a list, joined.
pub(crate) fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `exec_command` if `tools` offers it, else `shell`, else `None`. Tools are read leniently:
/// `{"type":"function","name"}` (Responses, Anthropic), the chat shape `{"function": {"name"}}`,
/// and tools nested in a group's `tools`.
fn shell_tool(tools: Option<&Value>) -> Option<&'static str> {
    let mut names = Vec::new();
    tool_names(tools, &mut names);
    ["exec_command", "shell", "Bash"]
        .into_iter()
        .find(|wanted| names.contains(wanted))
}

fn tool_names<'a>(tools: Option<&'a Value>, names: &mut Vec<&'a str>) {
    for tool in tools.and_then(Value::as_array).into_iter().flatten() {
        let name = tool
            .get("name")
            .or_else(|| tool.pointer("/function/name"))
            .and_then(Value::as_str);
        names.extend(name);
        tool_names(tool.get("tools"), names);
    }
}

/// The input of the call to `name`: Codex's `exec_command` takes `cmd`, `shell` an argv,
/// Claude Code's `Bash` a `command` and a `description`.
pub(crate) fn tool_input(name: &str) -> Value {
    match name {
        "shell" => json!({ "command": ["echo", TOOL_OUTPUT] }),
        "Bash" => json!({
            "command": format!("echo {TOOL_OUTPUT}"),
            "description": "Print the mock's marker",
        }),
        _ => json!({ "cmd": format!("echo {TOOL_OUTPUT}") }),
    }
}

/// [`tool_input`] as a JSON string, as OpenAI's `arguments` carry it.
pub(crate) fn tool_arguments(name: &str) -> String {
    tool_input(name).to_string()
}

/// `text` in `n` pieces of nearly equal length (at most one per character, at least one).
pub(crate) fn split_even(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.clamp(1, chars.len().max(1));
    (0..n)
        .map(|i| {
            let (from, to) = (i * chars.len() / n, (i + 1) * chars.len() / n);
            chars[from..to].iter().collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_calls_exec_command_before_shell_in_any_tool_shape() {
        let user = || Last::UserText(format!("run {TOOL_MARKER}"));
        let chat = json!([{ "type": "function", "function": { "name": "shell" } },
                          { "type": "function", "function": { "name": "exec_command" } }]);
        let Reply::Call { name, arguments } = reply(user(), Some(&chat)) else {
            panic!("not a call");
        };
        assert_eq!(name, "exec_command");
        assert_eq!(arguments, r#"{"cmd":"echo tollgate-tool-ok"}"#);
        let anthropic = json!([{ "name": "shell", "input_schema": { "type": "object" } }]);
        assert_eq!(
            reply(user(), Some(&anthropic)),
            Reply::Call {
                name: "shell".into(),
                arguments: r#"{"command":["echo","tollgate-tool-ok"]}"#.into(),
            }
        );
        let Reply::Text(text) = reply(user(), None) else {
            panic!("not a text");
        };
        assert!(text.contains("no `exec_command`"), "{text}");
    }

    #[test]
    fn a_tool_output_is_quoted_and_anything_else_is_the_default() {
        assert_eq!(
            reply(Last::ToolOutput("ok".into()), None),
            Reply::Text("tool said: ok".into())
        );
        assert_eq!(reply(Last::UserText("hi".into()), None), Reply::Default);
        assert_eq!(reply(Last::Other, None), Reply::Default);
        let parts = json!([{ "type": "text", "text": "a" }, { "type": "image" }, { "text": "b" }]);
        assert_eq!(text_of(&parts), "a\nb");
    }
}
