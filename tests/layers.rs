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
        // Every Rust file path: `src/…`, `tests/…`, or one written from
        // inside `src/` (`session/relay.rs`).
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".rs") {
            let head = &rest[..at];
            let start = head
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '.' | '-')))
                .map_or(0, |i| i + 1);
            let after = &rest[at + 3..];
            let path = &rest[start..at + 3];
            let ends_word = !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            if ends_word
                && path.contains('/')
                && !path.starts_with('/')
                && !path.contains("://")
                && !root.join(path).exists()
                && !root.join("src").join(path).exists()
            {
                missing.push(format!(
                    "{}: {path}",
                    doc.strip_prefix(root).unwrap().display()
                ));
            }
            rest = after;
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
    for file in [
        "session/engine.rs",
        "session/engine",
        "session/prepared.rs",
        "sql",
    ] {
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

/// Names a file's parent module defines itself (items at the start of a
/// line: `fn`, `struct`, `enum`, `trait`, `type`, `const`, `static`,
/// `macro_rules!`), not the modules it declares.
fn own_items(text: &str) -> BTreeSet<String> {
    let mut items = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with(char::is_whitespace) {
            continue;
        }
        let mut words = line
            .split(|c: char| c.is_whitespace() || c == '(' || c == '<' || c == ':' || c == '{')
            .filter(|w| !w.is_empty())
            .peekable();
        while let Some(w) = words.peek() {
            if matches!(
                *w,
                "pub" | "crate)" | "super)" | "crate" | "super" | "async" | "unsafe"
            ) || w.starts_with("in ")
            {
                words.next();
            } else {
                break;
            }
        }
        let (Some(kind), Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        if matches!(
            kind,
            "fn" | "struct" | "enum" | "trait" | "type" | "const" | "static" | "macro_rules!"
        ) {
            let name = name.trim_end_matches(|c: char| !(c.is_alphanumeric() || c == '_'));
            items.insert(name.to_owned());
        }
    }
    items
}

/// The names a child file reaches through `super::` (first segment only;
/// `use super::{a, b::c}` gives `a` and `b`; `use super::*` gives `*`).
/// Its own inline `#[cfg(test)] mod tests` is left out.
/// `parent_path` (`crate::session::` for a child of `session`) counts as
/// `super::` too.
fn names_through_super(text: &str, parent_path: &str) -> Vec<String> {
    let text = text
        .find("#[cfg(test)]\nmod tests {")
        .map_or(text, |end| &text[..end]);
    let mut names = Vec::new();
    let starts = text
        .match_indices("super::")
        .filter(|(at, _)| !text[..*at].ends_with("super::"))
        .map(|(at, _)| at + "super::".len());
    let crate_starts = text
        .match_indices(parent_path)
        .map(|(at, _)| at + parent_path.len());
    let starts: Vec<usize> = if parent_path == "crate::" {
        starts.collect()
    } else {
        starts.chain(crate_starts).collect()
    };
    // The parent module itself under another name (`use crate::metrics
    // as m;`) reaches all of its items.
    let parent_module = parent_path.trim_end_matches("::");
    if parent_module != "crate" {
        for (at, _) in text.match_indices(parent_module) {
            let rest = &text[at + parent_module.len()..];
            if rest.starts_with(" as ") || rest.starts_with("::{self") {
                names.push("*".to_owned());
            }
        }
    }
    for at in starts {
        let rest = &text[at..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            names.extend(
                group
                    .split(',')
                    .map(|part| part.trim().split("::").next().unwrap_or("").to_owned())
                    .filter(|n| !n.is_empty()),
            );
        } else if rest.starts_with('*') {
            names.push("*".to_owned());
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(rest[..end].to_owned());
        }
    }
    names
}

/// Child files that name an item their parent module defines (rather
/// than one of its sibling modules): a module never imports back up into
/// its parent. The parent holds declarations and re-exports; what the
/// children share lives in a child of its own.
fn parent_imports(src: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let parent_file = if dir == src {
            dir.join("lib.rs")
        } else if dir.join("mod.rs").exists() {
            dir.join("mod.rs")
        } else {
            dir.with_extension("rs")
        };
        let parent = std::fs::read_to_string(&parent_file).unwrap_or_default();
        let parent_path = format!(
            "crate::{}",
            dir.strip_prefix(src)
                .unwrap()
                .components()
                .map(|c| format!("{}::", c.as_os_str().to_string_lossy()))
                .collect::<String>()
        );
        let items = own_items(&parent);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path.clone());
            }
            let child = if path.is_dir() {
                path.join("mod.rs")
            } else {
                path.clone()
            };
            let name = child.file_name().unwrap().to_string_lossy().into_owned();
            if child == parent_file
                || !child.exists()
                || child.extension().is_none_or(|e| e != "rs")
                || (dir == src && matches!(name.as_str(), "main.rs"))
                || name == "tests.rs"
                || (path.is_file() && dir.join(path.file_stem().unwrap()).is_dir())
            {
                continue;
            }
            let text = std::fs::read_to_string(&child).unwrap();
            for used in names_through_super(&text, &parent_path) {
                if used == "*" || items.contains(&used) {
                    out.push(format!(
                        "{} names {} of its parent {}",
                        child.strip_prefix(src).unwrap().display(),
                        used,
                        parent_file.strip_prefix(src).unwrap().display()
                    ));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn no_module_imports_its_parents_items() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = parent_imports(&src);
    assert!(found.is_empty(), "{}", found.join("\n"));
    // Planted: a parent's own items are told from its modules, and a
    // child's reach into them is seen in each spelling.
    let parent = own_items("pub(crate) struct Pool {\n}\nmod lease;\nconst LIMIT: usize = 1;\n");
    assert!(parent.contains("Pool") && parent.contains("LIMIT") && !parent.contains("lease"));
    assert_eq!(
        names_through_super(
            "use super::{lease::Lease, Pool};\nfn f(_: crate::pool::Pool) {}\nuse super::*;\nuse crate::pool as p;\n",
            "crate::pool::"
        ),
        ["*", "lease", "Pool", "*", "Pool"]
    );
}
