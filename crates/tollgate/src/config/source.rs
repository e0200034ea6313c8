//! Where config values come from, read so that no error repeats a value written in them: the
//! TOML text (a syntax error names its line and column and what was expected, never the line
//! itself, which may hold a secret), the `TOLLGATE_SECTION__FIELD` variables (secret fields kept
//! as the strings they are: `000777` is not the number 777), and figment's errors retold
//! without the values they carry.

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};
use std::path::{Path, PathBuf};

/// Field names that hold secrets; an environment value for one is taken as written.
const SECRET_FIELDS: [&str; 3] = ["token", "secret", "key"];

/// A TOML document: a file's text read once, or a string. Unlike figment's `Toml`, a syntax
/// error says where it is without quoting the offending line.
pub(super) struct TomlText {
    text: String,
    path: Option<PathBuf>,
}

impl TomlText {
    /// The text of the file at `path`.
    pub(super) fn file(path: &Path, text: String) -> Self {
        TomlText {
            text,
            path: Some(path.to_owned()),
        }
    }

    /// A document given as a string.
    pub(super) fn string(text: &str) -> Self {
        TomlText {
            text: text.to_owned(),
            path: None,
        }
    }
}

impl Provider for TomlText {
    fn metadata(&self) -> Metadata {
        match &self.path {
            Some(path) => Metadata::from("TOML file", path.as_path()),
            None => Metadata::named("TOML string"),
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict: Dict = <Toml as Format>::from_str(&self.text)
            .map_err(|e| figment::Error::from(syntax_error(&self.text, &e)))?;
        Ok(Profile::Default.collect(dict))
    }
}

/// `line L, column C: TOML syntax error: <what was expected>`, from the error's position and
/// its message alone (its `Display` quotes the line).
fn syntax_error(text: &str, e: &<Toml as Format>::Error) -> String {
    let what = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match e.span() {
        Some(span) => {
            let (line, column) = position(text, span.start);
            format!("line {line}, column {column}: TOML syntax error: {what}")
        }
        None => format!("TOML syntax error: {what}"),
    }
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The `TOLLGATE_SECTION__FIELD` overrides: figment's `Env` for every field but the secret
/// ones, whose values [`RawEnv`] keeps as strings (figment's `Env` reads `000777` as 777 and
/// `true` as a boolean). `TOLLGATE_UPSTREAM_URL` and secrets named `TOLLGATE_*` are not config
/// keys: only names with `__` are.
pub(super) fn env_overrides() -> (Env, RawEnv) {
    let all = Env::prefixed("TOLLGATE_")
        .filter(|k| k.as_str().contains("__"))
        .split("__");
    let typed = all.clone().filter(|k| !is_secret_field(k.as_str()));
    (typed, RawEnv(all.filter(|k| is_secret_field(k.as_str()))))
}

/// Whether a dotted key (`admin.token`) names a secret field.
fn is_secret_field(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    SECRET_FIELDS.iter().any(|f| last.eq_ignore_ascii_case(f))
}

/// Environment variables whose values are strings, whatever they look like.
pub(super) struct RawEnv(Env);

impl Provider for RawEnv {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, value) in self.0.iter() {
            let path: Vec<&str> = key.as_str().split('.').collect();
            insert(&mut dict, &path, Value::from(value));
        }
        Ok(self.0.profile.collect(dict))
    }
}

/// Sets `path` in `dict` to `value`, making the tables on the way.
fn insert(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// One figment error as `SOURCE: KEY: WHAT`, with the value it found left out (figment's own
/// message quotes it: `found string "sk-…"`, and a secret in the wrong field would be printed).
pub(super) fn describe(e: &figment::Error) -> String {
    let source = match &e.metadata {
        Some(md) => match &md.source {
            Some(figment::Source::File(path)) => path.display().to_string(),
            Some(other) => format!("{} {other}", md.name),
            None => md.name.to_string(),
        },
        None => "config".to_owned(),
    };
    let what = kind(&e.kind);
    if e.path.is_empty() {
        format!("{source}: {what}")
    } else {
        format!("{source}: {}: {what}", e.path.join("."))
    }
}

fn kind(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::Message(msg) => msg.clone(),
        Kind::InvalidType(actual, expected) => {
            format!(
                "invalid type: found {}, expected {expected}",
                actual_kind(actual)
            )
        }
        Kind::InvalidValue(actual, expected) => {
            format!(
                "invalid value: found {}, expected {expected}",
                actual_kind(actual)
            )
        }
        Kind::InvalidLength(len, expected) => {
            format!("invalid length {len}, expected {expected}")
        }
        Kind::UnknownVariant(_, expected) => {
            format!("unknown variant, expected one of {}", names(expected))
        }
        Kind::UnknownField(field, expected) => {
            format!(
                "unknown field `{field}`, expected one of {}",
                names(expected)
            )
        }
        Kind::MissingField(field) => format!("missing field `{field}`"),
        Kind::DuplicateField(field) => format!("duplicate field `{field}`"),
        Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "integer out of range".to_owned(),
        Kind::Unsupported(actual) => format!("unsupported type: {}", actual_kind(actual)),
        Kind::UnsupportedKey(actual, expected) => format!(
            "unsupported key type {}, expected {expected}",
            actual_kind(actual)
        ),
    }
}

fn names(list: &[&str]) -> String {
    if list.is_empty() {
        return "none".to_owned();
    }
    list.iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What kind of value was found, never the value.
fn actual_kind(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) => "a character",
        Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit => "unit",
        Actual::Option => "an option",
        Actual::NewtypeStruct => "a newtype struct",
        Actual::Seq => "an array",
        Actual::Map => "a table",
        Actual::Enum
        | Actual::UnitVariant
        | Actual::NewtypeVariant
        | Actual::TupleVariant
        | Actual::StructVariant => "an enum",
        Actual::Other(_) => "a value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_lines_and_character_columns() {
        let text = "a = 1\nbé = \"x\n";
        assert_eq!(position(text, 0), (1, 1));
        assert_eq!(position(text, 6), (2, 1));
        assert_eq!(position(text, text.find('"').unwrap()), (2, 6));
    }

    #[test]
    fn secret_fields_are_known_by_their_last_segment() {
        assert!(is_secret_field("admin.token"));
        assert!(is_secret_field("ADMIN.TOKEN"));
        assert!(is_secret_field("clients.0.key"));
        assert!(!is_secret_field("server.listen"));
        assert!(!is_secret_field("clients.0.key_sha256"));
    }

    #[test]
    fn nested_keys_make_their_tables() {
        let mut dict = Dict::new();
        insert(
            &mut dict,
            &["admin", "token"],
            Value::from("000777".to_owned()),
        );
        insert(&mut dict, &["admin", "x"], Value::from("1".to_owned()));
        let admin = dict["admin"].as_dict().unwrap();
        assert_eq!(admin["token"].as_str(), Some("000777"));
        assert_eq!(admin["x"].as_str(), Some("1"));
    }
}
