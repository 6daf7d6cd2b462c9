//! The module graph of the library, read from its source: which top-level module of the
//! crate (`core`, `table`, `server`, …) uses which, from the `crate::…` paths (and
//! `super::…` paths that climb to the crate root) in non-test code.
//!
//! - the graph among top-level modules is acyclic (a cycle is printed with the lines that
//!   make it);
//! - `core` uses no other module of the crate (that it uses no Kubernetes, HTTP or async
//!   crate is `core::tests::core_imports_nothing_but_pure_crates`);
//! - `controller` does not use `server`; `injector` uses neither `router` nor `table`.
//!
//! `cargo test --test architecture -- --nocapture` prints the dependency list, which
//! ARCHITECTURE.md quotes (and the test checks that it still does). No cluster and no
//! server: it only reads the source files.
//!
//! What counts as test code: files named `*tests.rs`, files of modules declared under
//! `#[cfg(test)]` (e.g. `controller/fake_api.rs`), and every item under `#[cfg(test)]`.
//! Comments, strings and char literals are blanked before paths are read, so a doc link
//! like [`crate::router::inject`] is not a dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Edges left out of the cycle check, each with the reason. Empty: the graph is acyclic as
/// it stands. An entry here is a decision for the lead, not a fix.
const KNOWN_CYCLE_EDGES: &[(&str, &str)] = &[];

/// One use of module `to` by module `from`: where, and the line that makes it.
#[derive(Clone, Debug)]
struct Use {
    file: String,
    line: usize,
    text: String,
}

/// Top-level module → the modules it uses → every place it uses them.
type Graph = BTreeMap<String, BTreeMap<String, Vec<Use>>>;

#[test]
fn module_graph_is_acyclic_and_layered() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (graph, unknown) = crate_graph(&src);

    print_dependency_list(&graph);

    // The reader must see what lib.rs declares, and paths it cannot place are a sign it
    // misread something.
    let declared = declared_modules(&src.join("lib.rs"));
    let seen: BTreeSet<String> = graph.keys().cloned().collect();
    assert_eq!(
        seen, declared,
        "modules found under src/ ≠ modules lib.rs declares"
    );
    assert!(
        unknown.is_empty(),
        "crate paths that name no top-level module:\n{}",
        unknown.join("\n")
    );
    // A sanity anchor, so a reader that finds nothing cannot pass: the router routes over
    // the table, with the core's router.
    assert!(graph["router"].contains_key("table") && graph["router"].contains_key("core"));

    let mut failures = Vec::new();

    if let Some(cycle) = find_cycle(&graph, KNOWN_CYCLE_EDGES) {
        let mut msg = format!("module cycle: {}\n", cycle.join(" → "));
        for pair in cycle.windows(2) {
            for u in &graph[&pair[0]][&pair[1]] {
                msg += &format!(
                    "  {} → {}: {}:{}: {}\n",
                    pair[0], pair[1], u.file, u.line, u.text
                );
            }
        }
        failures.push(msg);
    }

    for (from, to) in [
        ("controller", "server"),
        ("injector", "router"),
        ("injector", "table"),
    ] {
        if let Some(uses) = graph[from].get(to) {
            failures.push(format!("{from} must not use {to}:\n{}", render(uses)));
        }
    }
    for (to, uses) in &graph["core"] {
        failures.push(format!(
            "core must use no other module, but uses {to}:\n{}",
            render(uses)
        ));
    }

    // ARCHITECTURE.md quotes the list: it must say what the code does.
    let doc = read(&src.join("../ARCHITECTURE.md"));
    let lines = dependency_lines(&graph);
    if documented_dependencies(&doc) != lines {
        failures.push(format!(
            "ARCHITECTURE.md's module dependency list is out of date; the code block under \
             `## Module dependencies` should read:\n{}\n",
            lines.join("\n")
        ));
    }

    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn render(uses: &[Use]) -> String {
    uses.iter()
        .map(|u| format!("  {}:{}: {}\n", u.file, u.line, u.text))
        .collect()
}

/// Prints `module → its dependencies`, dependencies first (a topological order when the
/// graph is acyclic).
fn print_dependency_list(graph: &Graph) {
    println!("module dependencies (non-test code; a module is listed after what it uses):");
    for line in dependency_lines(graph) {
        println!("  {line}");
    }
}

/// `module → dep, dep`, one line per module, dependencies first.
fn dependency_lines(graph: &Graph) -> Vec<String> {
    topological_order(graph)
        .into_iter()
        .map(|m| {
            let deps: Vec<&str> = graph[&m].keys().map(String::as_str).collect();
            if deps.is_empty() {
                format!("{m} → (nothing)")
            } else {
                format!("{m} → {}", deps.join(", "))
            }
        })
        .collect()
}

/// The lines of the first code block after `## Module dependencies` in ARCHITECTURE.md.
fn documented_dependencies(doc: &str) -> Vec<String> {
    let Some((_, section)) = doc.split_once("## Module dependencies") else {
        return Vec::new();
    };
    let mut blocks = section.split("```");
    blocks.next(); // the prose before the block
    blocks
        .next()
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Modules with their dependencies first; ties alphabetical. Modules on a cycle come last,
/// alphabetically.
fn topological_order(graph: &Graph) -> Vec<String> {
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut order = Vec::new();
    loop {
        let next = graph
            .iter()
            .find(|(m, deps)| !done.contains(*m) && deps.keys().all(|d| done.contains(d)))
            .map(|(m, _)| m.clone());
        match next {
            Some(m) => {
                done.insert(m.clone());
                order.push(m);
            }
            None => break,
        }
    }
    order.extend(graph.keys().filter(|m| !done.contains(*m)).cloned());
    order
}

/// A cycle as `[a, b, …, a]`, ignoring `allowed` edges; `None` if there is none.
fn find_cycle(graph: &Graph, allowed: &[(&str, &str)]) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &Graph,
        allowed: &[(&str, &str)],
        state: &mut BTreeMap<String, bool>, // false: on the stack, true: finished
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), false);
        stack.push(m.to_string());
        for d in graph[m].keys() {
            if allowed.contains(&(m, d.as_str())) {
                continue;
            }
            match state.get(d) {
                Some(false) => {
                    let start = stack
                        .iter()
                        .position(|s| s == d)
                        .expect("d is on the stack");
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                Some(true) => {}
                None => {
                    if let Some(c) = visit(d, graph, allowed, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(m.to_string(), true);
        None
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        if !state.contains_key(m)
            && let Some(c) = visit(m, graph, allowed, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// The `mod` items of lib.rs.
fn declared_modules(lib: &Path) -> BTreeSet<String> {
    let code = strip(&read(lib));
    code.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l
                .strip_prefix("pub ")
                .or_else(|| l.strip_prefix("pub(crate) "))
                .unwrap_or(l);
            let name = l.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect()
}

/// The graph of top-level modules, and the crate paths that named none.
fn crate_graph(src: &Path) -> (Graph, Vec<String>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();

    // First pass: which files are test-only modules (`#[cfg(test)] mod x;`).
    let mut test_only: Vec<PathBuf> = Vec::new();
    let mut cleaned = Vec::new();
    for f in &files {
        let raw = read(f);
        let (code, test_mods) = without_test_items(&raw);
        for m in test_mods {
            test_only.extend(module_files(f, &m));
        }
        cleaned.push((f.clone(), code));
    }

    let mut graph = Graph::new();
    let mut unknown = Vec::new();
    let lib = src.join("lib.rs");
    let top_level = declared_modules(&lib);
    for (f, code) in &cleaned {
        let rel = f.strip_prefix(src).expect("every file is under src/");
        let parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if parts.len() == 1 && (parts[0] == "lib.rs" || parts[0] == "main.rs") {
            continue; // the crate root declares modules; main.rs is the binary crate
        }
        if parts[0] == "bin" {
            continue; // src/bin/*.rs: other binary crates (kubectl-meshrev), not modules
        }
        let name = parts.last().expect("a file has a name");
        let is_test_file = name.ends_with("tests.rs")
            || test_only
                .iter()
                .any(|t| f == t || (t.extension().is_none() && f.starts_with(t)));
        let module = parts[0].trim_end_matches(".rs").to_string();
        let entry = graph.entry(module.clone()).or_default();
        if is_test_file {
            continue;
        }
        // Depth of this file's module below the crate root: src/a.rs and src/a/mod.rs are
        // 1, src/a/b.rs is 2.
        let depth = if name == "mod.rs" {
            parts.len() - 1
        } else {
            parts.len()
        };
        let raw = read(f);
        for (offset, target) in crate_paths(code, depth) {
            if target == "self" {
                continue;
            }
            let line = code[..offset].matches('\n').count() + 1;
            let text = raw.lines().nth(line - 1).unwrap_or("").trim().to_string();
            let file = format!("src/{}", rel.display());
            if !top_level.contains(&target) {
                unknown.push(format!("{file}:{line}: {target}: {text}"));
                continue;
            }
            if target != module {
                entry
                    .entry(target)
                    .or_default()
                    .push(Use { file, line, text });
            }
        }
    }
    (graph, unknown)
}

fn read(f: &Path) -> String {
    fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("a directory entry must be readable").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The files (and directory) a `mod name;` (or `#[path = "…"] mod name;`) in `parent`
/// loads.
fn module_files(parent: &Path, m: &TestMod) -> Vec<PathBuf> {
    let dir = parent.parent().expect("a source file is in a directory");
    if let Some(p) = &m.path {
        return vec![dir.join(p)];
    }
    let stem = parent.file_stem().expect("a source file has a name");
    let base = if stem == "mod" || stem == "lib" || stem == "main" {
        dir.to_path_buf()
    } else {
        dir.join(stem)
    };
    vec![
        base.join(format!("{}.rs", m.name)),
        base.join(&m.name), // the module's directory: mod.rs and its children
    ]
}

/// A module declared under `#[cfg(test)]` without a body.
#[derive(Debug, PartialEq)]
struct TestMod {
    name: String,
    path: Option<String>,
}

/// `raw` with comments, strings and char literals blanked (same length, same newlines, so
/// offsets and line numbers carry over).
fn strip(raw: &str) -> String {
    let s = raw.as_bytes();
    let mut out = s.to_vec();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for b in &mut out[from..to] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    let mut i = 0;
    while i < s.len() {
        let prev_ident = i > 0 && ident(s[i - 1]);
        match s[i] {
            b'/' if s.get(i + 1) == Some(&b'/') => {
                let end = s[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(s.len(), |p| i + p);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if s.get(i + 1) == Some(&b'*') => {
                let (mut depth, mut j) = (1, i + 2);
                while j < s.len() && depth > 0 {
                    if s[j] == b'/' && s.get(j + 1) == Some(&b'*') {
                        depth += 1;
                        j += 2;
                    } else if s[j] == b'*' && s.get(j + 1) == Some(&b'/') {
                        depth -= 1;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                blank(&mut out, i, j);
                i = j;
            }
            b'"' => {
                let mut j = i + 1;
                while j < s.len() && s[j] != b'"' {
                    j += if s[j] == b'\\' { 2 } else { 1 };
                }
                let end = (j + 1).min(s.len());
                blank(&mut out, i, end);
                i = end;
            }
            b'r' if !prev_ident || (i >= 1 && s[i - 1] == b'b' && (i < 2 || !ident(s[i - 2]))) => {
                let hashes = s[i + 1..].iter().take_while(|&&b| b == b'#').count();
                if s.get(i + 1 + hashes) == Some(&b'"') {
                    let close: Vec<u8> = std::iter::once(b'"')
                        .chain(std::iter::repeat_n(b'#', hashes))
                        .collect();
                    let body = i + 2 + hashes;
                    let end = s[body..]
                        .windows(close.len())
                        .position(|w| w == close.as_slice())
                        .map_or(s.len(), |p| body + p + close.len());
                    blank(&mut out, i, end);
                    i = end;
                } else {
                    i += 1;
                }
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{1F600}', 'é'), or else a lifetime.
                let end = if s.get(i + 1) == Some(&b'\\') {
                    // Past the escaped character, so '\'' ends at its last quote.
                    let from = (i + 3).min(s.len());
                    s[from..]
                        .iter()
                        .position(|&b| b == b'\'')
                        .map(|p| from + p + 1)
                } else {
                    let ch_len = raw[i + 1..].chars().next().map_or(1, char::len_utf8);
                    (s.get(i + 1 + ch_len) == Some(&b'\'')).then_some(i + 2 + ch_len)
                };
                match end {
                    Some(end) => {
                        blank(&mut out, i, end);
                        i = end;
                    }
                    None => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    String::from_utf8(out).expect("blanking replaces whole literals and comments with ASCII")
}

/// `raw` stripped (see [`strip`]) and with every `#[cfg(test)]` item blanked; and the
/// modules declared under `#[cfg(test)]` without a body (their files are test code).
fn without_test_items(raw: &str) -> (String, Vec<TestMod>) {
    let mut code = strip(raw).into_bytes();
    let mut test_mods = Vec::new();
    const CFG_TEST: &[u8] = b"#[cfg(test)]";
    let mut from = 0;
    while let Some(p) = code[from..]
        .windows(CFG_TEST.len())
        .position(|w| w == CFG_TEST)
    {
        let start = from + p;
        let mut i = start + CFG_TEST.len();
        // Further attributes of the same item.
        let mut path = None;
        loop {
            while i < code.len() && code[i].is_ascii_whitespace() {
                i += 1;
            }
            if code.get(i) == Some(&b'#') {
                let end = matching(&code, i + 1, b'[', b']');
                let attr = &raw[i..end];
                if attr.contains("path") {
                    path = attr.split('"').nth(1).map(str::to_string);
                }
                i = end;
            } else {
                break;
            }
        }
        // The item: up to its `;`, or through its `{ … }` body.
        let item_start = i;
        let mut depth = 0i32;
        let end = loop {
            match code.get(i) {
                None => break code.len(),
                Some(b'(' | b'[') => depth += 1,
                Some(b')' | b']') => depth -= 1,
                Some(b';') if depth == 0 => break i + 1,
                Some(b'{') if depth == 0 => break matching(&code, i, b'{', b'}'),
                _ => {}
            }
            i += 1;
        };
        let item = String::from_utf8_lossy(&code[item_start..end]).into_owned();
        let words: Vec<&str> = item
            .split(|c: char| c.is_whitespace() || c == ';')
            .filter(|w| !w.is_empty())
            .collect();
        if let [.., "mod", name] = words.as_slice() {
            test_mods.push(TestMod {
                name: name.to_string(),
                path,
            });
        }
        for b in &mut code[start..end] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
        from = end;
    }
    (
        String::from_utf8(code).expect("blanking keeps the text UTF-8"),
        test_mods,
    )
}

/// The index just past the bracket that closes the one at `open` (which must be `l`).
fn matching(code: &[u8], open: usize, l: u8, r: u8) -> usize {
    let mut depth = 0;
    for (j, &b) in code.iter().enumerate().skip(open) {
        if b == l {
            depth += 1;
        } else if b == r {
            depth -= 1;
            if depth == 0 {
                return j + 1;
            }
        }
    }
    code.len()
}

/// Every top-level module named by a path in `code` (already stripped), with its offset:
/// `crate::m…`, `crate::{m…, n…}`, and `super::…::m` chains that climb `depth` levels to
/// the crate root.
fn crate_paths(code: &str, depth: usize) -> Vec<(usize, String)> {
    let s = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let skip_ws = |mut i: usize| {
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let word_at = |i: usize| {
        let end = s[i..]
            .iter()
            .position(|&b| !ident(b))
            .map_or(s.len(), |p| i + p);
        (&code[i..end], end)
    };
    let sep_at = |i: usize| {
        let i = skip_ws(i);
        (s.get(i..i + 2) == Some(b"::")).then(|| skip_ws(i + 2))
    };
    let mut found = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if !ident(s[i]) || (i > 0 && ident(s[i - 1])) {
            i += 1;
            continue;
        }
        let (word, end) = word_at(i);
        // The start of the segment after the root: after `crate::`, or after `depth`
        // `super::`s.
        let mut root_next = None;
        let mut next = end;
        if word == "crate" {
            root_next = sep_at(end);
        } else if word == "super" {
            // The whole chain: `super::super::x` is one path, not two.
            let mut climbed = 1;
            let mut j = sep_at(end);
            while let Some(k) = j {
                let (w, e) = word_at(k);
                if w != "super" {
                    break;
                }
                climbed += 1;
                next = e;
                j = sep_at(e);
            }
            if climbed == depth {
                root_next = j;
            }
        }
        if let Some(k) = root_next {
            if s.get(k) == Some(&b'{') {
                // `crate::{a::X, b, self}`: the first segment of each element.
                let close = matching(s, k, b'{', b'}');
                let mut nest = 0;
                let mut element_start = true;
                for (j, &b) in s.iter().enumerate().take(close - 1).skip(k + 1) {
                    match b {
                        b'{' => nest += 1,
                        b'}' => nest -= 1,
                        b',' if nest == 0 => element_start = true,
                        b if element_start && ident(b) => {
                            found.push((j, word_at(j).0.to_string()));
                            element_start = false;
                        }
                        b if element_start && !b.is_ascii_whitespace() => element_start = false,
                        _ => {}
                    }
                }
            } else if s.get(k).copied().is_some_and(ident) {
                found.push((k, word_at(k).0.to_string()));
            }
        }
        i = next;
    }
    found
}

// The reader itself: each of these would let a real dependency through, or invent one.

#[test]
fn comments_strings_and_chars_are_not_paths() {
    let code = strip(concat!(
        "/// [`crate::router::inject`]\n",
        "/* crate::server /* nested */ crate::server */\n",
        "let a = \"crate::server \\\" crate::server\";\n",
        "let b = r#\"crate::server \" crate::server\"#;\n",
        "let c = '\"'; let d = '\\''; fn f<'a>(x: &'a str) {}\n",
        "use crate::table::Table;\n",
    ));
    assert_eq!(paths(&code, 1), ["table"]);
    assert!(
        code.contains("fn f<'a>(x: &'a str)"),
        "lifetimes stay: {code}"
    );
}

#[test]
fn groups_and_super_chains_are_paths() {
    let code = strip(
        "use crate::{\n  core::{A, B},\n  self,\n  table::Table as T,\n};\n\
         use super::super::health::Gate;\nuse super::sibling;\n",
    );
    assert_eq!(paths(&code, 2), ["core", "self", "table", "health"]);
    assert_eq!(paths(&code, 1), ["core", "self", "table", "sibling"]);
}

#[test]
fn cfg_test_items_are_not_paths() {
    let raw = concat!(
        "use crate::table::Table;\n",
        "#[cfg(test)]\nmod tests {\n    use crate::server::X;\n    fn f() { { } }\n}\n",
        "#[cfg(test)]\nuse crate::server::Y;\n",
        "#[cfg(test)]\n#[path = \"x_tests.rs\"]\nmod tests2;\n",
        "#[cfg(test)]\nmod fake;\n",
        "fn g(x: [u8; 3]) -> u8 { crate::health::h() }\n",
    );
    let (code, mods) = without_test_items(raw);
    assert_eq!(paths(&code, 1), ["table", "health"]);
    assert_eq!(
        mods,
        [
            TestMod {
                name: "tests2".into(),
                path: Some("x_tests.rs".into())
            },
            TestMod {
                name: "fake".into(),
                path: None
            },
        ]
    );
}

#[test]
fn a_cycle_is_found_and_printed() {
    let mut g = Graph::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        g.entry(a.into()).or_default().insert(b.into(), vec![]);
        g.entry(b.into()).or_default();
    }
    assert_eq!(
        find_cycle(&g, &[]).expect("a → b → c → a"),
        ["a", "b", "c", "a"]
    );
    assert_eq!(find_cycle(&g, &[("c", "a")]), None);
    assert_eq!(topological_order(&g).last().map(String::as_str), Some("c"));
}

fn paths(code: &str, depth: usize) -> Vec<String> {
    crate_paths(code, depth)
        .into_iter()
        .map(|(_, m)| m)
        .collect()
}
