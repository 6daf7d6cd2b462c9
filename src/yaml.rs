//! YAML in and out, for manifests (`meshrev inject`), table files and printed objects.
//!
//! Reading: the events of [`saphyr_parser`] (pure Rust, YAML 1.2, one event at a time) are
//! built into [`serde_json::Value`]s one document at a time. Plain scalars resolve as
//! serde_yaml 0.9 resolved them (YAML 1.2 core schema: `true`, `null`, `12`, `1.5`; `on`,
//! `012` and `1_000` stay strings). Nesting deeper than `MAX_DEPTH` is refused while
//! parsing, so a hostile document costs time linear in its size; aliases may not expand to
//! more than `MAX_ALIAS_NODES` nodes per document.
//!
//! Writing: a block-style emitter for `Value` that quotes every string that a YAML 1.1
//! reader (kubectl's) or a YAML 1.2 reader would resolve to something else (`on`, `NO`,
//! `1_000`, `012`, `0x1F`, `1e3`, `.inf`, `~`, `2024-01-02`, `<<`, …), and every string
//! that plain style cannot carry.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, StrInput, Tag};
use serde_json::{Map, Number, Value};

/// Deepest nesting of mappings and sequences accepted in one document.
pub(crate) const MAX_DEPTH: usize = 128;

/// Most nodes that aliases (`*anchor`) may expand to in one document.
pub(crate) const MAX_ALIAS_NODES: usize = 100_000;

/// A document that could not be read, with its place in the input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line} column {column}: {message}")]
pub struct Error {
    /// 1-based line.
    pub(crate) line: usize,
    /// 1-based column.
    pub(crate) column: usize,
    /// What is wrong.
    pub(crate) message: String,
}

impl Error {
    fn at(span: &Span, message: impl Into<String>) -> Error {
        Error {
            line: span.start.line(),
            column: span.start.col() + 1,
            message: message.into(),
        }
    }
}

impl From<ScanError> for Error {
    fn from(e: ScanError) -> Error {
        Error {
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info().to_string(),
        }
    }
}

/// The documents of a multi-document YAML (or JSON) text, parsed one at a time. An empty
/// document (`---` with nothing after it) is `Value::Null`. After an error the iterator ends.
pub struct Documents<'a> {
    parser: Parser<'a, StrInput<'a>>,
    done: bool,
}

/// The documents of `text`, lazily: each `next()` parses one more document.
pub fn documents(text: &str) -> Documents<'_> {
    Documents {
        parser: Parser::new_from_str(text),
        done: false,
    }
}

/// Parses a text that holds exactly one document (an empty text is `null`).
pub fn from_str(text: &str) -> Result<Value, Error> {
    let mut docs = documents(text);
    let first = docs.next().transpose()?.unwrap_or(Value::Null);
    match docs.next() {
        None => Ok(first),
        Some(Err(e)) => Err(e),
        Some(Ok(_)) => Err(Error {
            line: 1,
            column: 1,
            message: "expected one YAML document, found several".into(),
        }),
    }
}

impl Iterator for Documents<'_> {
    type Item = Result<Value, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = self.next_document();
        match result {
            Ok(Some(v)) => Some(Ok(v)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

enum Frame {
    Seq {
        items: Vec<Value>,
        anchor: usize,
    },
    Map {
        map: Map<String, Value>,
        key: Option<String>,
        anchor: usize,
    },
}

impl<'a> Documents<'a> {
    fn event(&mut self) -> Result<(Event<'a>, Span), Error> {
        match self.parser.next_event() {
            Some(Ok(ev)) => Ok(ev),
            Some(Err(e)) => Err(e.into()),
            None => Err(Error {
                line: 0,
                column: 0,
                message: "unexpected end of input".into(),
            }),
        }
    }

    fn next_document(&mut self) -> Result<Option<Value>, Error> {
        loop {
            let (ev, span) = self.event()?;
            match ev {
                Event::StreamStart | Event::Nothing => continue,
                Event::StreamEnd => return Ok(None),
                Event::DocumentStart(_) => return self.document().map(Some),
                _ => return Err(Error::at(&span, "expected the start of a document")),
            }
        }
    }

    /// Builds one document, from after its `DocumentStart` to its `DocumentEnd`.
    fn document(&mut self) -> Result<Value, Error> {
        let mut stack: Vec<Frame> = Vec::new();
        let mut anchors: HashMap<usize, (Value, usize)> = HashMap::new();
        let mut root: Option<Value> = None;
        let mut alias_nodes = 0usize;
        loop {
            let (ev, span) = self.event()?;
            let key_position = matches!(stack.last(), Some(Frame::Map { key: None, .. }));
            let (node, anchor) = match ev {
                Event::DocumentEnd => {
                    return Ok(root.unwrap_or(Value::Null));
                }
                Event::Scalar(text, style, anchor, tag) => {
                    if key_position {
                        if anchor != 0 {
                            anchors.insert(anchor, (Value::String(text.to_string()), 1));
                        }
                        set_key(&mut stack, text.into_owned());
                        continue;
                    }
                    (resolve(&text, style, tag.as_deref(), &span)?, anchor)
                }
                Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                    if key_position {
                        return Err(Error::at(
                            &span,
                            "a mapping key must be a string, not a mapping or a list",
                        ));
                    }
                    if stack.len() >= MAX_DEPTH {
                        return Err(Error::at(
                            &span,
                            format!("nested deeper than {MAX_DEPTH} levels of mappings and lists"),
                        ));
                    }
                    stack.push(if matches!(ev, Event::SequenceStart(..)) {
                        Frame::Seq {
                            items: Vec::new(),
                            anchor,
                        }
                    } else {
                        Frame::Map {
                            map: Map::new(),
                            key: None,
                            anchor,
                        }
                    });
                    continue;
                }
                Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                    Some(Frame::Seq { items, anchor }) => (Value::Array(items), anchor),
                    Some(Frame::Map { map, anchor, .. }) => (Value::Object(map), anchor),
                    None => return Err(Error::at(&span, "unbalanced end of a collection")),
                },
                Event::Alias(id) => {
                    let Some((value, nodes)) = anchors.get(&id) else {
                        return Err(Error::at(&span, "alias to an unknown anchor"));
                    };
                    alias_nodes += nodes;
                    if alias_nodes > MAX_ALIAS_NODES {
                        return Err(Error::at(
                            &span,
                            format!("aliases expand to more than {MAX_ALIAS_NODES} nodes"),
                        ));
                    }
                    if key_position {
                        let key = match value {
                            Value::String(s) => s.clone(),
                            Value::Array(_) | Value::Object(_) => {
                                return Err(Error::at(
                                    &span,
                                    "a mapping key must be a string, not a mapping or a list",
                                ));
                            }
                            other => other.to_string(),
                        };
                        set_key(&mut stack, key);
                        continue;
                    }
                    (value.clone(), 0)
                }
                _ => return Err(Error::at(&span, "unexpected YAML event")),
            };
            if anchor != 0 {
                anchors.insert(anchor, (node.clone(), count_nodes(&node)));
            }
            match stack.last_mut() {
                None => root = Some(node),
                Some(Frame::Seq { items, .. }) => items.push(node),
                Some(Frame::Map { map, key, .. }) => {
                    if let Some(k) = key.take() {
                        map.insert(k, node);
                    }
                }
            }
        }
    }
}

fn set_key(stack: &mut [Frame], k: String) {
    if let Some(Frame::Map { key, .. }) = stack.last_mut() {
        *key = Some(k);
    }
}

fn count_nodes(v: &Value) -> usize {
    let mut n = 0;
    let mut todo = vec![v];
    while let Some(v) = todo.pop() {
        n += 1;
        match v {
            Value::Array(a) => todo.extend(a),
            Value::Object(m) => todo.extend(m.values()),
            _ => {}
        }
    }
    n
}

const CORE: &str = "tag:yaml.org,2002:";

fn resolve(text: &str, style: ScalarStyle, tag: Option<&Tag>, span: &Span) -> Result<Value, Error> {
    let Some(tag) = tag else {
        return if style == ScalarStyle::Plain {
            resolve_plain(text, span)
        } else {
            Ok(Value::String(text.to_string()))
        };
    };
    let bad = |what: &str| Error::at(span, format!("{text:?} is not {what} (tag {tag})"));
    match (tag.handle.as_str(), tag.suffix.as_str()) {
        (CORE, "str") | ("!", "") => Ok(Value::String(text.to_string())),
        (CORE, "null") => match text {
            "" | "~" | "null" | "Null" | "NULL" => Ok(Value::Null),
            _ => Err(bad("null")),
        },
        (CORE, "bool") => parse_bool(text)
            .map(Value::Bool)
            .ok_or_else(|| bad("a boolean")),
        (CORE, "int") => parse_int(text).ok_or_else(|| bad("an integer")),
        (CORE, "float") => match parse_int(text) {
            Some(Value::Number(n)) => n
                .as_f64()
                .and_then(Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| bad("a JSON number")),
            _ => parse_float(text)
                .and_then(Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| bad("a finite number")),
        },
        _ => Err(Error::at(
            span,
            format!(
                "unsupported tag {tag} (only the YAML core tags !!str, !!int, !!float, !!bool, !!null)"
            ),
        )),
    }
}

/// serde_yaml 0.9's resolution of an untagged plain scalar (YAML 1.2 core schema).
fn resolve_plain(text: &str, span: &Span) -> Result<Value, Error> {
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Ok(Value::Null);
    }
    if let Some(b) = parse_bool(text) {
        return Ok(Value::Bool(b));
    }
    if let Some(v) = parse_int(text) {
        return Ok(v);
    }
    if !digits_but_not_number(text)
        && let Some(f) = parse_float(text)
    {
        return Number::from_f64(f).map(Value::Number).ok_or_else(|| {
            Error::at(
                span,
                format!("{text} is not a JSON number (quote it if it is a string)"),
            )
        });
    }
    Ok(Value::String(text.to_string()))
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// Leading zeros followed by digits (`012`) are a string in YAML 1.2.
fn digits_but_not_number(text: &str) -> bool {
    let t = text.strip_prefix(['-', '+']).unwrap_or(text);
    t.len() > 1 && t.starts_with('0') && t[1..].bytes().all(|b| b.is_ascii_digit())
}

fn parse_int(text: &str) -> Option<Value> {
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(r) = body.strip_prefix("0x") {
        (16, r)
    } else if let Some(r) = body.strip_prefix("0o") {
        (8, r)
    } else if let Some(r) = body.strip_prefix("0b") {
        (2, r)
    } else {
        if digits_but_not_number(body) {
            return None;
        }
        (10, body)
    };
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if negative {
        let v = i64::try_from(-i128::from(magnitude)).ok()?;
        Some(Value::Number(v.into()))
    } else {
        Some(Value::Number(magnitude.into()))
    }
}

/// A float as serde_yaml 0.9 read it; `.inf`/`.nan` come back non-finite (not JSON numbers).
fn parse_float(text: &str) -> Option<f64> {
    let unsigned = match text.strip_prefix('+') {
        Some(rest) if rest.starts_with(['+', '-']) => return None,
        Some(rest) => rest,
        None => text,
    };
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") {
        return Some(f64::INFINITY);
    }
    if matches!(text, "-.inf" | "-.Inf" | "-.INF") {
        return Some(f64::NEG_INFINITY);
    }
    if matches!(text, ".nan" | ".NaN" | ".NAN") {
        return Some(f64::NAN);
    }
    // Rust also reads `inf`, `nan`, `infinity`: those stay strings, as in serde_yaml.
    unsigned.parse::<f64>().ok().filter(|f| f.is_finite())
}

// ---------------------------------------------------------------------------------------
// Writing

/// One document in block style, ending with a newline (no `---`).
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    write_document(&mut out, value);
    out
}

/// Any serializable value as one YAML document (through `serde_json::Value`).
pub(crate) fn to_string_of<T: serde::Serialize>(value: &T) -> Result<String, serde_json::Error> {
    Ok(to_string(&serde_json::to_value(value)?))
}

/// Appends one document in block style, ending with a newline (no `---`).
pub(crate) fn write_document(out: &mut String, value: &Value) {
    match value {
        Value::Object(m) if !m.is_empty() => write_map(out, m, 0, false),
        Value::Array(a) if !a.is_empty() => write_seq(out, a, 0, false),
        scalar => {
            write_scalar(out, scalar, 2);
            out.push('\n');
        }
    }
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// A mapping whose keys start at column `col`. `inline`: the first key goes where the
/// cursor is (after `- `).
fn write_map(out: &mut String, m: &Map<String, Value>, col: usize, inline: bool) {
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 || !inline {
            indent(out, col);
        }
        let start = out.len();
        write_key(out, k);
        // An implicit key is limited to 1024 characters as written (escapes included):
        // a longer one is rewritten as an explicit key.
        if out[start..].chars().count() > 1000 {
            out.truncate(start);
            out.push_str("? ");
            write_quoted(out, k);
            out.push('\n');
            indent(out, col);
            out.push(':');
            write_after_key(out, v, col, true);
        } else {
            out.push(':');
            write_after_key(out, v, col, false);
        }
    }
}

/// The value of a mapping entry, after its `key:`.
fn write_after_key(out: &mut String, v: &Value, col: usize, explicit: bool) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(out, m, col + 2, false);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            // `key:` then `- item` at the key's column, as kubectl and serde_yaml write it.
            write_seq(out, a, if explicit { col + 2 } else { col }, false);
        }
        scalar => {
            out.push(' ');
            write_scalar(out, scalar, col + 2);
            out.push('\n');
        }
    }
}

/// A sequence whose dashes are at column `col`.
fn write_seq(out: &mut String, a: &[Value], col: usize, inline: bool) {
    for (i, v) in a.iter().enumerate() {
        if i > 0 || !inline {
            indent(out, col);
        }
        out.push('-');
        match v {
            Value::Object(m) if !m.is_empty() => {
                out.push(' ');
                write_map(out, m, col + 2, true);
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push(' ');
                write_seq(out, inner, col + 2, true);
            }
            scalar => {
                out.push(' ');
                write_scalar(out, scalar, col + 2);
                out.push('\n');
            }
        }
    }
}

/// A scalar (or an empty collection) where the cursor is; block-literal lines are indented
/// to `col`. No trailing newline.
fn write_scalar(out: &mut String, v: &Value, col: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s, col),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

/// Integers as they are; floats always with a `.` and a signed exponent (`1.0e+300`),
/// which YAML 1.1's float pattern needs (`1e300` is a string there).
fn write_number(out: &mut String, n: &Number) {
    let s = n.to_string();
    if !n.is_f64() {
        out.push_str(&s);
        return;
    }
    let (mantissa, exponent) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (s.as_str(), None),
    };
    out.push_str(mantissa);
    if !mantissa.contains('.') {
        out.push_str(".0");
    }
    if let Some(e) = exponent {
        out.push('e');
        if !e.starts_with(['+', '-']) {
            out.push('+');
        }
        out.push_str(e);
    }
}

fn write_key(out: &mut String, k: &str) {
    if plain_ok(k) {
        out.push_str(k);
    } else {
        write_quoted(out, k);
    }
}

fn write_string(out: &mut String, s: &str, col: usize) {
    if plain_ok(s) {
        out.push_str(s);
    } else if literal_ok(s) {
        out.push('|');
        let body = match s.strip_suffix('\n') {
            Some(b) => b,
            None => {
                out.push('-');
                s
            }
        };
        for line in body.split('\n') {
            out.push('\n');
            if !line.is_empty() {
                indent(out, col);
                out.push_str(line);
            }
        }
    } else {
        write_quoted(out, s);
    }
}

/// Single quotes when the text is printable on one line, else double quotes with escapes.
fn write_quoted(out: &mut String, s: &str) {
    if s.chars().all(|c| c != '\n' && printable(c)) {
        out.push('\'');
        for c in s.chars() {
            if c == '\'' {
                out.push('\'');
            }
            out.push(c);
        }
        out.push('\'');
        return;
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c if printable(c) => out.push(c),
            c if (c as u32) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
}

/// YAML's printable characters minus those a YAML 1.1 reader takes for line breaks or a
/// byte-order mark (NEL, LS, PS, BOM): those are escaped.
fn printable(c: char) -> bool {
    matches!(c, ' '..='~')
        || matches!(c as u32, 0xA0..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
            && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}')
}

/// A literal block (`|`, `|-`) keeps multi-line text readable; only for text it carries
/// exactly: no leading blank or empty first line, no whitespace-only line, no trailing
/// spaces, at most one final newline, printable characters and tabs.
fn literal_ok(s: &str) -> bool {
    if !s.contains('\n') || s.ends_with("\n\n") || s.starts_with([' ', '\t', '\n']) {
        return false;
    }
    let body = s.strip_suffix('\n').unwrap_or(s);
    body.split('\n').all(|line| {
        line.chars().all(|c| c == '\t' || printable(c))
            && !line.ends_with([' ', '\t'])
            && (line.is_empty() || !line.trim().is_empty())
    })
}

/// Whether `s` can be written as a plain scalar: printable ASCII, no indicator where it
/// would mean something, and not a value any YAML 1.1 or 1.2 reader resolves to a
/// non-string.
pub(crate) fn plain_ok(s: &str) -> bool {
    let bytes = s.as_bytes();
    let Some(&first) = bytes.first() else {
        return false;
    };
    if !bytes.iter().all(|b| matches!(b, b' '..=b'~'))
        || first == b' '
        || s.ends_with(' ')
        || s.ends_with(':')
        || s.contains(": ")
        || s.contains(" #")
        || s.starts_with("---")
        || s.starts_with("...")
    {
        return false;
    }
    match first {
        // An indicator only when followed by a space (or nothing).
        b'?' | b':' | b'-' if bytes.len() == 1 || bytes[1] == b' ' => return false,
        b',' | b'[' | b']' | b'{' | b'}' | b'#' | b'&' | b'*' | b'!' | b'|' | b'>' | b'\''
        | b'"' | b'%' | b'@' | b'`' => return false,
        _ => {}
    }
    !resolves_to_non_string(s)
}

/// Whether some YAML reader would resolve the plain scalar `s` to a null, boolean, number,
/// timestamp or merge key: the YAML 1.1 types (kubectl reads YAML 1.1 through go-yaml v2,
/// which also hands numbers to Go's `ParseInt`/`ParseFloat`), the YAML 1.2 core and JSON
/// schemas. Errs on the side of quoting.
pub(crate) fn resolves_to_non_string(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "" | "~" | "null" | "true" | "false" | "y" | "n" | "yes" | "no" | "on" | "off" | "<<" | "="
    ) {
        return true;
    }
    let unsigned = lower.strip_prefix(['+', '-']).unwrap_or(&lower);
    if matches!(
        unsigned,
        ".inf" | "inf" | "infinity" | ".nan" | "nan" | "+.inf" | "-.inf"
    ) {
        return true;
    }
    let first = s.as_bytes()[0];
    if !(first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'.')) {
        return false;
    }
    // YAML 1.1 allows `_` in numbers (`1_000`), and go-yaml strips it before parsing.
    let t: String = unsigned.chars().filter(|&c| c != '_').collect();
    if t.is_empty() {
        return false;
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return true; // decimal, or octal with a leading 0 (YAML 1.1)
    }
    for (prefix, ok) in [
        (
            "0x",
            (|b: u8| b.is_ascii_hexdigit() || matches!(b, b'.' | b'p' | b'+' | b'-'))
                as fn(u8) -> bool,
        ),
        ("0o", |b: u8| matches!(b, b'0'..=b'7')),
        ("0b", |b: u8| matches!(b, b'0' | b'1')),
    ] {
        if let Some(rest) = t.strip_prefix(prefix)
            && !rest.is_empty()
            && rest.bytes().all(ok)
        {
            return true;
        }
    }
    if t.parse::<f64>().is_ok() {
        return true; // 1.5, 1e3, 1., .5
    }
    // YAML 1.1 sexagesimal numbers: 190:20:30, 1:20.5
    if t.contains(':')
        && t.as_bytes()[0].is_ascii_digit()
        && t.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b':' | b'.'))
    {
        return true;
    }
    // YAML 1.1 timestamps: 2001-12-14, 2001-12-14t21:59:43.10-05:00, 2001-12-14 21:59:43
    let b = s.as_bytes();
    b.len() >= 8 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-'
}

#[cfg(test)]
mod tests;
