use super::*;
use serde_json::json;

/// The YAML 1.1 type regexes (yaml.org/type: bool, null, int, float, timestamp, merge,
/// value), written down independently of `resolves_to_non_string`.
fn yaml11_non_string(s: &str) -> bool {
    const PATTERNS: &[&str] = &[
        r"y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF",
        r"~|null|Null|NULL|",
        r"[-+]?0b[0-1_]+",
        r"[-+]?0[0-7_]+",
        r"[-+]?(0|[1-9][0-9_]*)",
        r"[-+]?0x[0-9a-fA-F_]+",
        r"[-+]?[1-9][0-9_]*(:[0-5]?[0-9])+",
        r"[-+]?([0-9][0-9_]*)?\.[0-9.]*([eE][-+][0-9]+)?",
        r"[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*",
        r"[-+]?\.(inf|Inf|INF)",
        r"\.(nan|NaN|NAN)",
        r"[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]",
        r"[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?([Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](\.[0-9]*)?(([ \t]*)Z|[-+][0-9][0-9]?(:[0-9][0-9])?)?",
        r"<<",
        r"=",
    ];
    PATTERNS.iter().any(|p| {
        regex::Regex::new(&format!("^(?:{p})$"))
            .expect("pattern")
            .is_match(s)
    })
}

/// YAML 1.2 core schema (and JSON schema) non-strings.
fn yaml12_non_string(s: &str) -> bool {
    const PATTERNS: &[&str] = &[
        r"null|Null|NULL|~|",
        r"true|True|TRUE|false|False|FALSE",
        r"[-+]?[0-9]+",
        r"0o[0-7]+",
        r"0x[0-9a-fA-F]+",
        r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?",
        r"[-+]?\.(inf|Inf|INF)",
        r"\.nan|\.NaN|\.NAN",
    ];
    PATTERNS.iter().any(|p| {
        regex::Regex::new(&format!("^(?:{p})$"))
            .expect("pattern")
            .is_match(s)
    })
}

const HOSTILE: &[&str] = &[
    "on",
    "off",
    "On",
    "OFF",
    "yes",
    "no",
    "YES",
    "No",
    "y",
    "n",
    "Y",
    "N",
    "True",
    "NO",
    "true",
    "false",
    "null",
    "Null",
    "~",
    "",
    "1_000",
    "0x1F",
    "0x1f",
    "1e3",
    "1E3",
    "-1e-3",
    ".inf",
    "-.inf",
    "+.inf",
    ".NaN",
    ".nan",
    "012",
    "0o17",
    "0b101",
    "+12",
    "-0",
    "1.",
    ".5",
    "1.5",
    "190:20:30",
    "1:20.5",
    "2001-12-14",
    "2001-12-14t21:59:43.10-05:00",
    "2001-12-14 21:59:43.10 -5",
    "<<",
    "=",
    "1_0.5",
    "0x_1F",
    "inf",
    "NaN",
    "Infinity",
    "-",
    "?",
    ":",
    "- a",
    "? a",
    ": a",
    "a: b",
    "a #b",
    "#c",
    "&a",
    "*a",
    "!a",
    "|",
    ">",
    "'q'",
    "\"q\"",
    "%x",
    "@x",
    "`x",
    "[a]",
    "{a}",
    ",a",
    " lead",
    "trail ",
    "---",
    "...",
    "--- x",
    "a:",
    "tab\there",
    "line\nbreak",
    "two\n\n",
    "\nfirst",
    "nel\u{85}x",
    "ls\u{2028}x",
    "bom\u{FEFF}",
    "ctrl\u{1}x",
    "ä",
    "naïve",
    "emoji 🙂",
    "back\\slash",
    "it's",
    "say \"hi\"",
    "  ",
    "\t",
    "a\r\nb",
];

#[test]
fn every_string_round_trips_and_lookalikes_are_quoted() {
    for s in HOSTILE {
        let mut m = Map::new();
        m.insert(s.to_string(), json!(s));
        m.insert("list".into(), json!([s]));
        m.insert("nested".into(), json!({ "k": s }));
        let doc = Value::Object(m);
        let text = to_string(&doc);
        let back = from_str(&text).unwrap_or_else(|e| panic!("{s:?}: {e}\n{text}"));
        assert_eq!(back, doc, "{s:?} did not round-trip:\n{text}");
        for (ev, _) in Parser::new_from_str(&text).map(|e| e.expect("event")) {
            if let Event::Scalar(v, ScalarStyle::Plain, ..) = ev {
                assert!(
                    !yaml11_non_string(&v) && !yaml12_non_string(&v),
                    "{s:?}: plain scalar {v:?} resolves to a non-string:\n{text}"
                );
            }
        }
    }
}

#[test]
fn task_lookalikes_are_written_quoted() {
    for s in [
        "on", "off", "yes", "no", "y", "n", "1_000", "True", "NO", "0x1F", "1e3", ".inf", "~",
        "null", "012",
    ] {
        let text = to_string(&json!({ "k": s }));
        assert!(text == format!("k: '{s}'\n"), "{s:?}: {text}");
    }
}

#[test]
fn plain_strings_stay_plain() {
    for s in [
        "docker.io/istio/proxyv2:1.23.6",
        "1-22-6",
        "1.23.6",
        "--log_output_level=default:info",
        "-Xmx1g",
        "app",
        "a b",
        "http://x:80/y",
        "hello-go-gke:1.0",
        "istio.io/rev",
        "key=value",
        "a,b",
        "x[0]",
        "20%",
        "v1",
    ] {
        assert_eq!(to_string(&json!({ "k": s })), format!("k: {s}\n"), "{s:?}");
    }
}

#[test]
fn numbers_read_as_yaml_1_1_numbers() {
    let doc =
        json!({"a": 1, "b": -2, "c": 1.5, "d": 1e300, "e": 2.5e-10, "f": 18446744073709551615u64});
    let text = to_string(&doc);
    assert_eq!(from_str(&text).expect("yaml"), doc);
    for (ev, _) in Parser::new_from_str(&text).map(|e| e.expect("event")) {
        if let Event::Scalar(v, ScalarStyle::Plain, ..) = ev
            && !v.chars().all(|c| c.is_ascii_alphabetic())
        {
            assert!(
                yaml11_non_string(&v),
                "{v:?} is a string in YAML 1.1:\n{text}"
            );
        }
    }
}

#[test]
fn block_layout() {
    let doc = json!({
        "a": {"b": [1, {"c": "d", "e": []}, [2, 3], "multi\nline\n"], "f": {}},
        "g": "no newline\nat end",
    });
    let text = to_string(&doc);
    assert_eq!(
        text,
        "a:\n  b:\n  - 1\n  - c: d\n    e: []\n  - - 2\n    - 3\n  - |\n    multi\n    line\n  f: {}\ng: |-\n  no newline\n  at end\n"
    );
    assert_eq!(from_str(&text).expect("yaml"), doc);
}

#[test]
fn top_level_scalars_round_trip() {
    for s in ["x", "on", "a\n---\n...\nb\n", "", "1"] {
        let v = json!(s);
        assert_eq!(from_str(&to_string(&v)).expect("yaml"), v, "{s:?}");
    }
}

#[test]
fn long_keys_use_explicit_key_syntax() {
    let k = "k".repeat(2000);
    let doc = json!({ k.clone(): [1], "x": {k: "v"} });
    assert_eq!(from_str(&to_string(&doc)).expect("yaml"), doc);
}

/// Found by the inject_documents fuzzer: a key of 200 characters that is written as 1,200
/// (each `\u000C` escaped) broke the 1,024-character limit of an implicit key.
#[test]
fn keys_long_once_escaped_use_explicit_key_syntax() {
    for k in [
        "\u{c}".repeat(200),
        "\u{1}".repeat(171) + "x",
        "'".repeat(600),
    ] {
        let doc = json!({ k.clone(): {k: 1} });
        let written = to_string(&doc);
        assert_eq!(from_str(&written).expect(&written), doc);
    }
}

#[test]
fn reading_resolves_like_serde_yaml_0_9() {
    let v = from_str(
        "a: on\nb: 012\nc: 1_000\nd: 0x1F\ne: 1e3\nf: ~\ng: TRUE\nh: '1'\ni: -0o17\nj: 99999999999999999999\nk: !!str 12\nl: ''\nm:\n",
    )
    .expect("yaml");
    assert_eq!(
        v,
        json!({"a": "on", "b": "012", "c": "1_000", "d": 31, "e": 1000.0, "f": null, "g": true,
               "h": "1", "i": -15, "j": 1e20, "k": "12", "l": "", "m": null})
    );
}

#[test]
fn non_finite_numbers_are_errors() {
    let e = from_str("a: .inf\n").expect_err(".inf is not JSON");
    assert!(e.to_string().contains(".inf"), "{e}");
}

#[test]
fn documents_are_read_one_at_a_time() {
    let docs: Vec<_> = documents("a: 1\n---\n---\nb: [x]\n...\n--- c\n")
        .collect::<Result<_, _>>()
        .expect("yaml");
    assert_eq!(
        docs,
        [
            json!({"a": 1}),
            Value::Null,
            json!({"b": ["x"]}),
            json!("c")
        ]
    );
    // An error ends the stream after the documents before it.
    let mut it = documents("a: 1\n---\nb: [\n---\nc: 1\n");
    assert_eq!(it.next().map(|r| r.is_ok()), Some(true));
    assert!(it.next().is_some_and(|r| r.is_err()));
    assert!(it.next().is_none());
}

#[test]
fn nesting_is_limited_while_parsing() {
    let ok = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert!(from_str(&ok).is_ok());
    for deep in [
        format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        ),
        "[".repeat(100_000),
        "{a: ".repeat(100_000),
        "- ".repeat(100_000),
        (0..200).map(|i| format!("{}k:\n", " ".repeat(i))).collect(),
    ] {
        let e = from_str(&deep).expect_err("too deep");
        assert!(
            e.message.contains("nested deeper") || e.message.contains("recursion limit"),
            "{e}"
        );
    }
}

#[test]
fn alias_expansion_is_bounded() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let e = from_str(&text).expect_err("billion laughs");
    assert!(e.message.contains("aliases expand"), "{e}");
    assert_eq!(
        from_str("a: &x {b: 1}\nc: *x\n").expect("alias"),
        json!({"a": {"b": 1}, "c": {"b": 1}})
    );
}

#[test]
fn complex_keys_and_unknown_tags_are_errors_not_panics() {
    for bad in [
        "? [a]\n: 1\n",
        "{[a]: 1}\n",
        "a: !custom x\n",
        "a: !!int x\n",
        "a: *nope\n",
    ] {
        assert!(from_str(bad).is_err(), "{bad:?}");
    }
}
