//! Property tests over what the ownership layer reads from clients and upstreams (issue 21's
//! fuzz targets): a body's references are found wherever they sit and however their field name
//! is spelled, and no bytes make the readers panic.

use super::*;
use crate::sse::fuzz::config;
use proptest::prelude::*;
use serde_json::{json, Value};

/// A JSON value of any shape, with references planted at any depth.
fn planted() -> impl Strategy<Value = (Value, Vec<(&'static str, String)>)> {
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<i64>().prop_map(Value::from),
        "[a-z_\"\\\\ ]{0,12}".prop_map(Value::from),
        // Look-alikes that are not references.
        Just(json!({"tool_call_id": "call_1", "file": "x", "file_idx": "y"})),
    ];
    let reference = (
        prop::sample::select(REFERENCES.to_vec()),
        "[a-z0-9_-]{1,10}",
    )
        .prop_map(|(name, id)| (json!({ name: id.clone() }), vec![(name, id)]));
    let plain = leaf.prop_map(|v| (v, Vec::new()));
    prop_oneof![plain, reference].prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|items| {
                let found = items.iter().flat_map(|(_, f)| f.clone()).collect();
                (
                    Value::Array(items.into_iter().map(|(v, _)| v).collect()),
                    found,
                )
            }),
            prop::collection::vec(("[a-z]{1,6}", inner), 0..5).prop_map(|fields| {
                // A later field of the same name replaces an earlier one, as in JSON.
                let last: std::collections::BTreeMap<String, (Value, Vec<_>)> = fields
                    .into_iter()
                    .map(|(k, vf)| (format!("x{k}"), vf))
                    .collect();
                let found = last.values().flat_map(|(_, f)| f.clone()).collect();
                let map = last.into_iter().map(|(k, (v, _))| (k, v)).collect();
                (Value::Object(map), found)
            }),
        ]
    })
}

proptest! {
    #![proptest_config(config(256))]

    /// Every planted reference is found, and nothing else.
    #[test]
    fn references_are_found_at_any_depth((body, mut planted) in planted()) {
        let mut found = references(body.to_string().as_bytes());
        found.sort();
        planted.sort();
        // Duplicate keys cannot be planted (maps dedupe), so the two lists compare whole.
        prop_assert_eq!(found, planted);
    }

    /// A reference whose field name is spelled with `\uXXXX` escapes is still found.
    #[test]
    fn escaped_field_names_are_found(
        name in prop::sample::select(REFERENCES.to_vec()),
        escape in prop::collection::vec(any::<bool>(), 24),
    ) {
        let spelled: String = name
            .chars()
            .zip(escape.iter().cycle())
            .map(|(c, e)| if *e { format!("\\u{:04x}", c as u32) } else { c.to_string() })
            .collect();
        let body = format!("{{\"{spelled}\": \"obj_1\"}}");
        prop_assert_eq!(references(body.as_bytes()), vec![(name, "obj_1".to_owned())]);
    }

    /// No bytes make the readers panic.
    #[test]
    fn any_bytes_are_read_without_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        sse in any::<bool>(),
        creates in any::<bool>(),
        path in "[a-z_/]{0,24}",
    ) {
        let _ = references(&bytes);
        let _ = named_in_answer(&bytes, sse, creates);
        for method in [Method::GET, Method::POST, Method::DELETE] {
            let s = scope(&method, &path);
            let _ = records_answer(&s, &path);
        }
    }
}
