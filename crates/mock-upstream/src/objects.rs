//! Stored objects of one organization: files (`/v1/files…`) and batches (`/v1/batches…`),
//! enough for a gateway's tenancy to be tried against. Every key sees every object, as every
//! key of one organization does upstream. A batch completes at once, with an output file.

use crate::answers::Answer;
use axum::http::{Method, StatusCode};
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The objects, by id, in creation order within each kind.
#[derive(Debug, Default)]
pub(crate) struct Store {
    next: u64,
    files: BTreeMap<String, (Value, Bytes)>,
    batches: BTreeMap<String, Value>,
}

/// Whether `path` is a files or batches path.
pub(crate) fn is_objects_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return false;
    };
    let first = rest.split('/').next().unwrap_or_default();
    matches!(first, "files" | "batches")
}

fn not_found(id: &str) -> Answer {
    Answer::error(StatusCode::NOT_FOUND, &format!("No such object: {id}"))
}

fn listing(items: Vec<Value>) -> Answer {
    let first = items.first().map(|i| i["id"].clone());
    let last = items.last().map(|i| i["id"].clone());
    Answer::json(
        StatusCode::OK,
        &json!({"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": false}),
    )
}

impl Store {
    fn id(&mut self, prefix: &str, port: u16) -> String {
        self.next += 1;
        format!("{prefix}{port}{:04}", self.next)
    }

    fn add_file(&mut self, port: u16, purpose: &str, content: Bytes) -> Value {
        let id = self.id("file-", port);
        let file = json!({"id": id, "object": "file", "bytes": content.len(), "purpose": purpose, "filename": "upload.jsonl"});
        self.files.insert(id, (file.clone(), content));
        file
    }

    /// Answers a files or batches request.
    pub(crate) fn handle(
        &mut self,
        method: &Method,
        path: &str,
        body: &Bytes,
        port: u16,
    ) -> Answer {
        let rest = path.trim_start_matches("/v1/").trim_end_matches('/');
        let parts: Vec<&str> = rest.split('/').collect();
        match (method.as_str(), parts.as_slice()) {
            ("POST", ["files"]) => {
                let file = self.add_file(port, "batch", body.clone());
                Answer::json(StatusCode::OK, &file)
            }
            ("GET", ["files"]) => listing(self.files.values().map(|(f, _)| f.clone()).collect()),
            ("GET", ["files", id]) => match self.files.get(*id) {
                Some((file, _)) => Answer::json(StatusCode::OK, file),
                None => not_found(id),
            },
            ("GET", ["files", id, "content"]) => match self.files.get(*id) {
                Some((_, content)) => Answer::json(
                    StatusCode::OK,
                    &json!({"content": String::from_utf8_lossy(content)}),
                ),
                None => not_found(id),
            },
            ("DELETE", ["files", id]) => match self.files.remove(*id) {
                Some(_) => Answer::json(
                    StatusCode::OK,
                    &json!({"id": id, "object": "file", "deleted": true}),
                ),
                None => not_found(id),
            },
            ("POST", ["batches"]) => {
                let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                let input = request["input_file_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if !self.files.contains_key(&input) {
                    return not_found(&input);
                }
                let output = self.add_file(port, "batch_output", Bytes::from_static(b"{}\n"));
                let id = self.id("batch_", port);
                let batch = json!({"id": id, "object": "batch", "status": "completed", "input_file_id": input, "output_file_id": output["id"], "error_file_id": null});
                self.batches.insert(id, batch.clone());
                Answer::json(StatusCode::OK, &batch)
            }
            ("GET", ["batches"]) => listing(self.batches.values().cloned().collect()),
            ("GET", ["batches", id]) => match self.batches.get(*id) {
                Some(batch) => Answer::json(StatusCode::OK, batch),
                None => not_found(id),
            },
            ("POST", ["batches", id, "cancel"]) => match self.batches.get_mut(*id) {
                Some(batch) => {
                    batch["status"] = json!("cancelled");
                    Answer::json(StatusCode::OK, batch)
                }
                None => not_found(id),
            },
            _ => Answer::error(StatusCode::NOT_FOUND, "Invalid URL"),
        }
    }
}
