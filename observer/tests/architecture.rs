//! The shape the code keeps, checked on its sources: dependencies between the top-level
//! modules of each crate run one way (no cycle among the `crate::` paths of non-test code),
//! no source file outside tests is over 400 lines, and userspace `unsafe` lives in the three
//! files that are allowed it (the crate denies it elsewhere; this names where it is).
#![expect(clippy::unwrap_used, reason = "tests panic on failure")]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The workspace's crates with a `src/`.
const CRATES: &[&str] = &["observer", "observer-common", "observer-ebpf", "xtask"];
/// Lines a source file may have.
const MAX_LINES: usize = 400;
/// The userspace files allowed `unsafe`.
const UNSAFE: &[&str] = &["sys.rs", "map_read.rs", "events/decode.rs"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, relative to it.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p.strip_prefix(dir).unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

fn is_test(rel: &Path) -> bool {
    rel.file_name().is_some_and(|n| n == "tests.rs")
        || rel.components().any(|c| c.as_os_str() == "tests")
}

/// The code of a file without comments and without its `#[cfg(test)]` tail.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests {").next().unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules each top-level module names through `crate::` paths.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rel in sources(src) {
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs").to_owned();
        if top == "lib" || top == "main" || is_test(&rel) {
            continue;
        }
        let text = code(&std::fs::read_to_string(src.join(&rel)).unwrap());
        let deps = g.entry(top.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let names: Vec<&str> = if let Some(list) = rest.strip_prefix('{') {
                // `crate::{a, b::c, d::{e, f}}`: the first segment of each top-level item.
                let mut depth = 0;
                let end = list
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += i32::from(c == '{') - i32::from(c == '}');
                        depth < 0
                    })
                    .map_or(list.len(), |(j, _)| j);
                let mut items = Vec::new();
                let mut depth = 0;
                let mut start = 0;
                for (j, c) in list[..end].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            items.push(&list[start..j]);
                            start = j + 1;
                        }
                        _ => {}
                    }
                }
                items.push(&list[start..end]);
                items
            } else {
                vec![rest]
            };
            for n in names {
                let n: String = n
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                if !n.is_empty() && n != top {
                    deps.insert(n);
                }
            }
        }
    }
    let known: BTreeSet<String> = g.keys().cloned().collect();
    for deps in g.values_mut() {
        deps.retain(|d| known.contains(d));
    }
    g
}

/// A cycle through `from`, if there is one.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_owned(), vec![from.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in &g[&at] {
            if next == from {
                return Some([path.clone(), vec![next.clone()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push((next.clone(), [path.clone(), vec![next.clone()]].concat()));
            }
        }
    }
    None
}

#[test]
fn dependencies_between_top_level_modules_run_one_way() {
    for krate in CRATES {
        let g = graph(&workspace().join(krate).join("src"));
        assert!(
            g.len() > 1 || *krate == "xtask" || *krate == "observer-common",
            "{krate}: {g:?}"
        );
        for m in g.keys() {
            if let Some(c) = cycle(&g, m) {
                panic!("{krate}: import cycle {}", c.join(" -> "));
            }
        }
    }
}

#[test]
fn the_graph_reader_sees_a_cycle() {
    // The reader itself, on a known shape: `a` names `b` through a list, `b` names `a`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.rs"), "use crate::{b::X, c};\n").unwrap();
    std::fs::write(dir.path().join("b.rs"), "fn f() { crate::a::g() }\n").unwrap();
    std::fs::write(dir.path().join("c.rs"), "// crate::a in a comment\n").unwrap();
    let g = graph(dir.path());
    assert_eq!(
        cycle(&g, "a"),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
    assert_eq!(cycle(&g, "c"), None);
}

#[test]
fn no_source_file_outside_tests_is_over_400_lines() {
    for krate in CRATES {
        let src = workspace().join(krate).join("src");
        for rel in sources(&src).into_iter().filter(|r| !is_test(r)) {
            let lines = std::fs::read_to_string(src.join(&rel))
                .unwrap()
                .lines()
                .count();
            assert!(
                lines <= MAX_LINES,
                "{krate}/src/{}: {lines} lines (at most {MAX_LINES}): split it by what it does",
                rel.display()
            );
        }
    }
}

/// Whether `code` has an `unsafe` block, fn, impl or trait (not the `unsafe_code` lint).
fn uses_unsafe(code: &str) -> bool {
    code.match_indices("unsafe")
        .any(|(i, _)| !code[i + "unsafe".len()..].starts_with('_'))
}

#[test]
fn userspace_unsafe_lives_in_three_files() {
    let src = workspace().join("observer/src");
    let with: BTreeSet<String> = sources(&src)
        .into_iter()
        .filter(|r| !is_test(r))
        .filter(|r| uses_unsafe(&code(&std::fs::read_to_string(src.join(r)).unwrap())))
        .map(|r| r.display().to_string())
        .collect();
    let allowed: BTreeSet<String> = UNSAFE.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(with, allowed, "userspace files with `unsafe`");
}
