//! The ten function tools of the `prompt40k` turn, shaped like a coding agent's tool set: a
//! description each and a JSON-schema `parameters` object.

use serde_json::{json, Value};

/// One chat completions function tool.
fn function(name: &str, description: &str, parameters: Value) -> Value {
    json!({
        "type": "function",
        "function": { "name": name, "description": description, "parameters": parameters },
    })
}

/// A `{"type": "string"}` property with a description.
fn string(description: &str) -> Value {
    json!({ "type": "string", "description": description })
}

/// A `{"type": "number"}` property with a description.
fn number(description: &str) -> Value {
    json!({ "type": "number", "description": description })
}

/// The tools, in the order the request lists them.
pub(super) fn all() -> Vec<Value> {
    vec![
        shell(),
        apply_patch(),
        update_plan(),
        function(
            "read_file",
            "Reads a text file of the workspace and returns its lines prefixed with `L<n>: `. \
             Use offset and limit to read large files in chunks.",
            json!({
                "type": "object",
                "properties": {
                    "file_path": string("Absolute path of the file."),
                    "offset": number("1-based line to start at (default 1)."),
                    "limit": number("Most lines to return (default 2000)."),
                },
                "required": ["file_path"],
                "additionalProperties": false,
            }),
        ),
        function(
            "list_dir",
            "Lists the entries of a directory, one per line, directories with a trailing slash, \
             down to the given depth.",
            json!({
                "type": "object",
                "properties": {
                    "dir_path": string("Absolute path of the directory."),
                    "depth": number("How many levels to descend (default 2)."),
                    "offset": number("1-based entry to start at (default 1)."),
                    "limit": number("Most entries to return (default 25)."),
                },
                "required": ["dir_path"],
                "additionalProperties": false,
            }),
        ),
        function(
            "grep_files",
            "Finds files whose contents match a regular expression and returns their paths \
             sorted by modification time, newest first.",
            json!({
                "type": "object",
                "properties": {
                    "pattern": string("Regular expression to search for."),
                    "include": string("Glob limiting the files searched, e.g. \"*.rs\"."),
                    "path": string("Directory or file to search (default: working directory)."),
                    "limit": number("Most paths to return (default 100)."),
                },
                "required": ["pattern"],
                "additionalProperties": false,
            }),
        ),
        function(
            "view_image",
            "Attaches a local image (a screenshot, a diagram, a plot) to the conversation so \
             that it can be looked at in the next turn.",
            json!({
                "type": "object",
                "properties": { "path": string("Local filesystem path to the image.") },
                "required": ["path"],
                "additionalProperties": false,
            }),
        ),
        exec_command(),
        function(
            "write_stdin",
            "Writes characters to the standard input of a session started by exec_command and \
             returns the output it produced meanwhile.",
            json!({
                "type": "object",
                "properties": {
                    "session_id": number("Identifier of the running session."),
                    "chars": string("Characters to write; may be empty to only poll."),
                    "yield_time_ms": number("How long to wait for output before returning."),
                    "max_output_tokens": number("Output beyond this many tokens is cut."),
                },
                "required": ["session_id"],
                "additionalProperties": false,
            }),
        ),
        function(
            "web_search",
            "Searches the web and returns the titles, addresses and short excerpts of the best \
             results. Use it for documentation of a third-party library or a recent release.",
            json!({
                "type": "object",
                "properties": {
                    "query": string("What to search for, in a few keywords."),
                    "max_results": number("Most results to return (default 5)."),
                },
                "required": ["query"],
                "additionalProperties": false,
            }),
        ),
    ]
}

fn shell() -> Value {
    function(
        "shell",
        "Runs a shell command and returns its output. The command is given as an argument \
         vector; use [\"bash\", \"-lc\", \"...\"] for pipelines. Always set workdir instead of \
         using cd.",
        json!({
            "type": "object",
            "properties": {
                "command": {
                    "type": "array",
                    "items": { "type": "string" },
                    "description": "The command to execute, as an argument vector.",
                },
                "workdir": string("The working directory to execute the command in."),
                "timeout_ms": number("The timeout for the command in milliseconds."),
                "with_escalated_permissions": {
                    "type": "boolean",
                    "description": "Whether to request to run the command outside the sandbox.",
                },
                "justification": string(
                    "Only with with_escalated_permissions: one sentence telling the user why \
                     the command needs to run outside the sandbox."
                ),
            },
            "required": ["command"],
            "additionalProperties": false,
        }),
    )
}

fn apply_patch() -> Value {
    function(
        "apply_patch",
        "Edits files with a patch. The input starts with `*** Begin Patch` and ends with \
         `*** End Patch`; in between, each `*** Add File: <path>`, `*** Delete File: <path>` or \
         `*** Update File: <path>` section lists its lines, prefixed with `+` (added), `-` \
         (removed) or a space (context). An update may start with `*** Move to: <new path>` to \
         rename the file. Context lines must match the file exactly; by default give three \
         lines of context above and below each change, and do not repeat lines that already \
         serve as context for a change just before. When three lines do not make a location \
         unique, use `@@` followed by the class or function the change is in (several `@@` \
         lines narrow it further), e.g. `@@ impl Backoff` then `@@ fn next_wait`. Paths are \
         relative to the working directory, never absolute. New files need every line \
         prefixed with `+`. The tool answers with the files it changed, or with the first hunk \
         it could not place; a failed patch changes nothing.",
        json!({
            "type": "object",
            "properties": { "input": string("The entire contents of the patch.") },
            "required": ["input"],
            "additionalProperties": false,
        }),
    )
}

fn update_plan() -> Value {
    function(
        "update_plan",
        "Updates the task plan shown to the user. Give the whole list each time; at most one \
         step may be in_progress.",
        json!({
            "type": "object",
            "properties": {
                "explanation": string("Why the plan changed, if it did."),
                "plan": {
                    "type": "array",
                    "description": "The list of steps.",
                    "items": {
                        "type": "object",
                        "properties": {
                            "step": { "type": "string" },
                            "status": {
                                "type": "string",
                                "enum": ["pending", "in_progress", "completed"],
                            },
                        },
                        "required": ["step", "status"],
                        "additionalProperties": false,
                    },
                },
            },
            "required": ["plan"],
            "additionalProperties": false,
        }),
    )
}

fn exec_command() -> Value {
    function(
        "exec_command",
        "Starts a command in a pseudo-terminal and returns its output so far, with a session id \
         when it keeps running (for write_stdin). Use it for servers, watchers and interactive \
         programs.",
        json!({
            "type": "object",
            "properties": {
                "cmd": string("The shell command line to run."),
                "workdir": string("The working directory; defaults to the turn's cwd."),
                "shell": string("The shell to run it with (default: the user's shell)."),
                "login": {
                    "type": "boolean",
                    "description": "Whether to run the shell as a login shell (default true).",
                },
                "yield_time_ms": number("How long to wait for output before returning."),
                "max_output_tokens": number("Output beyond this many tokens is cut."),
            },
            "required": ["cmd"],
            "additionalProperties": false,
        }),
    )
}
