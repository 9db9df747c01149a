// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The layout rule, enforced: the policy core (`src/policy/`) and the locks
//! in force (`src/locks/`) know nothing of the milter protocol, the
//! observability and notification side, or the admin tools; and no two
//! parts of `src/` import each other. Reads the sources, so a forbidden
//! `crate::` path fails the suite the day it is written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Parts of the crate the core must not import.
const FORBIDDEN_IN_CORE: [&str; 8] = ["milter", "ops", "notify", "admin", "daemon", "cli", "logging", "scan"];

/// The folders (and top-level files) that make up the core.
const CORE: [&str; 2] = ["policy", "locks"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The part of `src/` a file belongs to: its folder, or its own name for a
/// top-level file (`daemon.rs` is `daemon`).
fn part_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level parts of the crate a source text names through `crate::`,
/// in `use` lines and inline paths alike, grouped imports
/// (`use crate::{a, b::c}`) included. Comments are left out.
fn crate_imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        found.insert(name);
                    }
                }
            } else {
                let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
            rest = after;
        }
    }
    found
}

/// Which part of `src/` imports which (self-imports left out).
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src()) {
        let part = part_of(&file);
        if part == "main" || part == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let edges = graph.entry(part.clone()).or_default();
        edges.extend(crate_imports(&text).into_iter().filter(|p| *p != part));
    }
    graph
}

/// A cycle in the graph, if there is one, as the parts along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// The forbidden imports of the core, as "file: part".
fn core_violations() -> Vec<String> {
    let mut bad = Vec::new();
    for part in CORE {
        for file in rust_files(&src().join(part)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for import in crate_imports(&text) {
                if FORBIDDEN_IN_CORE.contains(&import.as_str()) {
                    bad.push(format!("{}: crate::{import}", file.display()));
                }
            }
        }
    }
    bad
}

#[test]
fn the_policy_core_imports_no_adapter_ops_or_admin_code() {
    let bad = core_violations();
    assert!(
        bad.is_empty(),
        "src/policy/ and src/locks/ must not import {FORBIDDEN_IN_CORE:?}:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_two_parts_of_src_import_each_other() {
    let graph = import_graph();
    for (part, edges) in &graph {
        eprintln!("{part} -> {}", edges.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    assert_eq!(find_cycle(&graph), None, "import cycle between parts of src/");
    // The graph is read from real files: a scanner that found nothing
    // would make both tests above pass vacuously.
    assert!(graph["milter"].contains("policy"), "{graph:?}");
    assert!(graph["policy"].contains("config"), "{graph:?}");
}

#[test]
fn the_scanner_sees_every_way_of_naming_a_module() {
    let text = "use crate::ops::metrics::Observer;\n\
                use crate::{config::Config, notify};\n\
                let x = crate::admin::Failure::new(\"x\");\n\
                // crate::milter in a comment does not count\n";
    let found: Vec<_> = crate_imports(text).into_iter().collect();
    assert_eq!(found, ["admin", "config", "notify", "ops"]);
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(find_cycle(&graph), Some(vec!["a".into(), "b".into(), "a".into()]));
}
