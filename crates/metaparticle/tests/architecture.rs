//! The crate's architecture, checked: modules depend on each other in one direction only.
//!
//! This test reads every source file of the crate, finds the paths it uses (`crate::...`,
//! `super::...`, in `use` lines and in code; not in comments or unit-test modules) and builds the
//! graph of which module uses which. Two rules hold:
//!
//! 1. **No cycles, at any level of the module tree.** A reference from `a::b::x` to `a::c::y` is an
//!    edge `b -> c` among the children of `a`; between a module and its own children nothing is
//!    counted (a `mod.rs` and its files are one unit). Each level's graph must be acyclic.
//! 2. **Layers.** Top-level modules sit in the layers of [`LAYERS`] and use only modules of lower
//!    layers (or others of their own layer, without a cycle).
//!
//! Run it to see the graph: `cargo test -p metaparticle --test architecture -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top. The README's architecture section draws the same picture.
const LAYERS: &[&[&str]] = &[
    &["wire", "future"],
    &["model"],
    &["storage"],
    &["state"],
    &["plane"],
    &["client", "deployments"],
    &["runner"],
    &["testing", "error", "dashboard"],
    &["cli", "serve"],
];

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn modules_form_layers_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules_under(&src);
    let known: BTreeSet<Vec<String>> = modules.keys().cloned().collect();
    // Edges at every level of the tree: parent path -> (child -> children it uses).
    let mut levels: BTreeMap<Vec<String>, Graph> = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        for target in references(module, &code_of(&text), &known) {
            let common = module.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == module.len() || common == target.len() {
                continue; // within one module and its own children
            }
            levels
                .entry(module[..common].to_vec())
                .or_default()
                .entry(module[common].clone())
                .or_default()
                .insert(target[common].clone());
        }
    }
    let mut failures = Vec::new();
    for (parent, graph) in &levels {
        let name = if parent.is_empty() { "crate".to_string() } else { parent.join("::") };
        println!("{name}:");
        for (from, to) in graph {
            println!("  {from} -> {}", to.iter().cloned().collect::<Vec<_>>().join(", "));
        }
        if let Some(cycle) = find_cycle(graph) {
            failures.push(format!("cycle among the children of {name}: {}", cycle.join(" -> ")));
        }
    }
    let layer_of = |m: &str| LAYERS.iter().position(|layer| layer.contains(&m));
    for (from, to) in levels.get(&Vec::new()).into_iter().flatten() {
        for target in to {
            match (layer_of(from), layer_of(target)) {
                (Some(a), Some(b)) if b > a => {
                    failures.push(format!("{from} (layer {a}) uses {target}, a layer above it ({b})"))
                }
                (None, _) => failures.push(format!("{from} is in no layer: add it to LAYERS")),
                (_, None) => failures.push(format!("{target} is in no layer: add it to LAYERS")),
                _ => {}
            }
        }
    }
    assert!(failures.is_empty(), "the architecture is broken:\n{}", failures.join("\n"));
}

/// Every module of the crate, by path (`["plane", "server"]`), with its file.
fn modules_under(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> =
                relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                parts.pop();
            }
            out.insert(parts, path);
        }
    }
    out
}

/// The source without comments and without `#[cfg(test)]` items (unit tests may reach anywhere).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<i32> = None;
    let mut depth = 0i32;
    let mut test_item_next = false;
    for line in text.lines() {
        let code = strip_comment(line);
        let trimmed = code.trim();
        if trimmed.starts_with("#[cfg(test)]") {
            test_item_next = true;
            continue;
        }
        let opens = code.matches('{').count() as i32;
        let closes = code.matches('}').count() as i32;
        if test_item_next && !trimmed.is_empty() && !trimmed.starts_with("#[") {
            test_item_next = false;
            if opens > closes {
                skip_depth = Some(depth);
            }
            depth += opens - closes;
            continue;
        }
        depth += opens - closes;
        if let Some(d) = skip_depth {
            if depth <= d {
                skip_depth = None;
            }
            continue;
        }
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// A line without its `//` comment (a `//` inside a string literal, as in a URL, is kept).
fn strip_comment(line: &str) -> &str {
    let mut in_string = false;
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

/// The modules `module`'s code refers to: each `crate::`/`super::`/`self::` path, including the
/// ones inside `use` groups, resolved to the deepest module that exists.
fn references(module: &[String], code: &str, known: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    for path in paths_in(code) {
        let mut resolved: Vec<String> = match path.first().map(String::as_str) {
            Some("crate") => Vec::new(),
            Some("super") | Some("self") => module.to_vec(),
            _ => continue,
        };
        let mut rest = path.as_slice();
        if rest[0] == "crate" {
            rest = &rest[1..];
        }
        while let Some(first) = rest.first() {
            match first.as_str() {
                "super" => {
                    resolved.pop();
                }
                "self" => {}
                _ => break,
            }
            rest = &rest[1..];
        }
        for segment in rest {
            let mut next = resolved.clone();
            next.push(segment.clone());
            if !known.contains(&next) {
                break;
            }
            resolved = next;
        }
        out.insert(resolved);
    }
    out
}

/// Every path starting with `crate`, `super` or `self`, with `use` groups expanded one level
/// deep per brace (`crate::a::{b, c::d}` gives `crate::a::b` and `crate::a::c::d`).
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let at_word_start =
            i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_' || chars[i - 1] == ':');
        if at_word_start {
            for root in ["crate", "super", "self"] {
                let word: String = chars[i..].iter().take(root.len()).collect();
                let after = chars.get(i + root.len());
                if word == root && after == Some(&':') {
                    let (paths, end) = expand(&chars, i, Vec::new());
                    out.extend(paths);
                    i = end;
                    break;
                }
            }
        }
        i += 1;
    }
    out
}

/// Reads a path (possibly ending in a `{...}` group) from `start`; returns the full paths and
/// where it ended.
fn expand(chars: &[char], start: usize, prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let mut segments = prefix;
    let mut i = start;
    loop {
        let word_start = i;
        while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        if i > word_start {
            segments.push(chars[word_start..i].iter().collect());
        }
        if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
            i += 2;
            while chars.get(i).is_some_and(|c| c.is_whitespace()) {
                i += 1;
            }
            if chars.get(i) == Some(&'{') {
                let mut out = Vec::new();
                i += 1;
                loop {
                    while chars.get(i).is_some_and(|c| c.is_whitespace() || *c == ',') {
                        i += 1;
                    }
                    match chars.get(i) {
                        None => return (out, i),
                        Some('}') => return (out, i + 1),
                        _ => {}
                    }
                    let (paths, end) = expand(chars, i, segments.clone());
                    out.extend(paths);
                    // Skip an `as alias` or anything else up to the next item of the group.
                    i = end;
                    while chars.get(i).is_some_and(|c| *c != ',' && *c != '}') {
                        i += 1;
                    }
                }
            }
            continue;
        }
        return (vec![segments], i);
    }
}

/// A cycle in `graph`, if there is one, as the list of nodes around it.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn the_checker_finds_cycles_and_reads_use_groups() {
    let mut graph = Graph::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&graph), None);
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&graph).unwrap().len(), 4, "a -> b -> c -> a");
    let paths = paths_in("use crate::a::{b, c::{d, e as f}};\nlet x = super::g::h();");
    let text: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(text, ["crate::a::b", "crate::a::c::d", "crate::a::c::e", "super::g::h"]);
    let code = code_of("use crate::x; // crate::y\n#[cfg(test)]\nmod tests {\n    use crate::z;\n}\n");
    assert!(code.contains("crate::x") && !code.contains("crate::y") && !code.contains("crate::z"), "{code}");
}
