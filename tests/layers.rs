//! The crate's modules depend on each other in one direction: no cycle
//! between top-level modules (a module and its children count as one).
//! Each module's dependencies are the `crate::<module>` paths in its
//! files, comments included, so a doc link that points up counts too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules it names.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if matches!(name.as_str(), "lib" | "main") {
            continue;
        }
        modules.entry(name).or_default().push(path);
    }
    let mut graph = BTreeMap::new();
    for (name, paths) in &modules {
        let mut text = String::new();
        for path in paths {
            read_all(path, &mut text);
        }
        let deps = text
            .match_indices("crate::")
            .filter_map(|(at, _)| {
                let rest = &text[at + "crate::".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                let dep = &rest[..end];
                (dep != name && modules.contains_key(dep)).then(|| dep.to_owned())
            })
            .collect();
        graph.insert(name.clone(), deps);
    }
    graph
}

fn read_all(path: &Path, out: &mut String) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            read_all(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push_str(&std::fs::read_to_string(path).unwrap());
    }
}

/// A dependency path from `from` back to `to`, if there is one.
fn path_back(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if from == to {
        return Some(vec![to.to_owned()]);
    }
    if !seen.insert(from.to_owned()) {
        return None;
    }
    for next in &graph[from] {
        if let Some(mut rest) = path_back(graph, next, to, seen) {
            rest.insert(0, from.to_owned());
            return Some(rest);
        }
    }
    None
}

#[test]
fn modules_depend_in_one_direction() {
    let graph = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.contains_key("session") && graph["session"].contains("pool"));
    let mut cycles = Vec::new();
    for (module, deps) in &graph {
        for dep in deps {
            if let Some(back) = path_back(&graph, dep, module, &mut BTreeSet::new()) {
                cycles.push(format!("{module} -> {}", back.join(" -> ")));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "dependency cycles:\n{}",
        cycles.join("\n")
    );
}

/// Every pgcell source file the docs name exists: a rename leaves no stale
/// pointer behind (`src/…/x.rs` in README.md, docs/, fuzz/ and benches/
/// READMEs; other projects' paths, such as PgBouncer's `.c` files, are not
/// checked).
#[test]
fn source_paths_named_in_the_docs_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![
        root.join("README.md"),
        root.join("fuzz/README.md"),
        root.join("benches/uring/README.md"),
    ];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                docs.push(path);
            }
        }
    }
    let mut missing = Vec::new();
    for doc in docs.iter().filter(|d| d.exists()) {
        let text = std::fs::read_to_string(doc).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("src/") {
            let after = &rest[at..];
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '.' | '-')))
                .unwrap_or(after.len());
            let path = after[..end].trim_end_matches('.');
            // Only pgcell's own Rust sources: `src/` at a word start.
            let word_start =
                at == 0 || !rest[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '/');
            if word_start && path.ends_with(".rs") && !root.join(path).exists() {
                missing.push(format!(
                    "{}: {path}",
                    doc.strip_prefix(root).unwrap().display()
                ));
            }
            rest = &after[end.max(4)..];
        }
    }
    assert!(
        missing.is_empty(),
        "docs name files that do not exist:\n{}",
        missing.join("\n")
    );
    // The docs stand on their own: the starting design they depart from is
    // docs/architecture.md, not a file outside the repository.
    let outside: Vec<String> = docs
        .iter()
        .filter(|d| d.exists())
        .filter(|d| std::fs::read_to_string(d).unwrap().contains("DESIGN.md"))
        .map(|d| d.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert!(outside.is_empty(), "docs cite DESIGN.md: {outside:?}");
}

/// The layers of docs/decisions.md, decision 21: its numbered list, each
/// item's back-quoted module names (`backend::Targets` counts as
/// `backend`). Module name → layer.
fn documented_layers(modules: &BTreeSet<String>) -> BTreeMap<String, usize> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/decisions.md")).unwrap();
    let start = text
        .find("## 21.")
        .expect("decision 21 in docs/decisions.md");
    let section = &text[start..];
    let section = &section[..section[1..].find("\n## ").map_or(section.len(), |e| e + 1)];
    let mut layers = BTreeMap::new();
    let mut layer = 0;
    for line in section.lines() {
        let trimmed = line.trim_start();
        if let Some((number, _)) = trimmed.split_once(". ") {
            if let Ok(n) = number.parse::<usize>() {
                layer = n;
            }
        }
        if trimmed.is_empty() {
            // The list ends at the first blank line after it began.
            if layer > 0 && !layers.is_empty() {
                break;
            }
            continue;
        }
        if layer == 0 {
            continue;
        }
        for (i, quoted) in line.split('`').enumerate() {
            let name = quoted.split("::").next().unwrap_or_default();
            if i % 2 == 1 && modules.contains(name) {
                layers.entry(name.to_owned()).or_insert(layer);
            }
        }
    }
    layers
}

/// Edges that point up the layers, and modules in no layer.
fn layer_violations(
    graph: &BTreeMap<String, BTreeSet<String>>,
    layers: &BTreeMap<String, usize>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (module, deps) in graph {
        let Some(&own) = layers.get(module) else {
            out.push(format!("{module} is in no layer of decision 21"));
            continue;
        };
        for dep in deps {
            if let Some(&theirs) = layers.get(dep) {
                if theirs > own {
                    out.push(format!(
                        "{module} (layer {own}) names {dep} (layer {theirs})"
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn lower_layers_never_name_higher_ones() {
    let graph = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    let layers = documented_layers(&modules);
    assert_eq!(layers.get("protocol"), Some(&1), "{layers:?}");
    assert_eq!(layers.get("server"), Some(&6), "{layers:?}");
    let violations = layer_violations(&graph, &layers);
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    // A planted violation is found: config naming session, and a module
    // the decision does not place.
    let mut planted = graph.clone();
    planted
        .get_mut("config")
        .unwrap()
        .insert("session".to_owned());
    planted.insert("newcomer".to_owned(), BTreeSet::new());
    let found = layer_violations(&planted, &layers);
    assert!(
        found
            .iter()
            .any(|v| v.starts_with("config (layer 2) names session")),
        "{found:?}"
    );
    assert!(found.iter().any(|v| v.starts_with("newcomer")), "{found:?}");
}

/// The sans-I/O modules: decisions, no I/O. They name no tokio, socket or
/// clock type, so they run the same in a test, a fuzz target or a loop.
#[test]
fn sans_io_modules_name_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let forbidden = [
        "tokio",
        "std::net",
        "TcpStream",
        "UnixStream",
        "Instant",
        "SystemTime",
    ];
    let check = |name: &str, text: &str| -> Vec<String> {
        forbidden
            .iter()
            .filter(|f| {
                text.lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .any(|l| l.contains(*f))
            })
            .map(|f| format!("{name} names {f}"))
            .collect()
    };
    let mut found = Vec::new();
    for file in ["session/engine.rs", "session/prepared.rs", "sql"] {
        let mut text = String::new();
        read_all(&src.join(file), &mut text);
        assert!(!text.is_empty(), "{file} not read");
        found.extend(check(file, &text));
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
    // A planted use is found.
    assert_eq!(
        check("planted", "use tokio::net::TcpStream;\n"),
        vec!["planted names tokio", "planted names TcpStream"]
    );
}
