//! The layering check: no import cycle between the top-level modules of this crate.
//!
//! Reads every source file under `src/`, attributes it to its top-level module (`src/x.rs`,
//! `src/x/…`), and collects the `crate::y` paths its code names (comments, doc links and
//! `#[cfg(test)]` sections are skipped: tests may reach across layers). A cycle in the
//! resulting graph fails the test with the modules on it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The module graph: top-level module → the top-level modules its non-test code imports.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module of `file` (relative to `src/`), or `None` for the crate root.
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib").then_some(name)
}

/// The `crate::x` names in the non-test code of `src`.
fn imports(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in src.lines() {
        let code = line.trim_start();
        // A test section at the top level of the file ends what is checked.
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        let code = code.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `pvkit_vmm::crate` cannot occur; skip `xcrate::` lookalikes.
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && !name.is_empty() {
                out.insert(name);
            }
            rest = after;
        }
        // `use crate::{a, b::c}` groups.
        if let Some(group) = code
            .strip_prefix("use crate::{")
            .or_else(|| code.strip_prefix("pub use crate::{"))
        {
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

/// Top-level modules counted as part of another: the core hypercall dispatch and the
/// rings' subscriber of the I/O event loop belong to the PV device layer (`devices/pv/`
/// calls into them and they into it); `bench` is the re-export of `devices::pseudo::bench`.
const GROUPS: [(&str, &str); 3] = [
    ("hypercall", "devices"),
    ("bench", "devices"),
    ("iothread", "devices"),
];

fn group(name: String) -> String {
    GROUPS
        .iter()
        .find(|(m, _)| *m == name)
        .map_or(name, |(_, g)| (*g).to_owned())
}

fn graph(src_dir: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src_dir, &mut files);
    let mut g = Graph::new();
    for f in files {
        let rel = f.strip_prefix(src_dir).unwrap();
        // Whole-file test modules.
        if rel.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let Some(top) = top_module(rel).map(group) else {
            continue;
        };
        // Test-only modules may reach across layers.
        if ["proptests", "layering"].contains(&top.as_str()) {
            continue;
        }
        let src = std::fs::read_to_string(&f).unwrap();
        let deps = g.entry(top.clone()).or_default();
        for d in imports(&src).into_iter().map(group) {
            if d != top {
                deps.insert(d);
            }
        }
    }
    g
}

/// A cycle of `g`, if there is one (depth-first search with colours).
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &Graph,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for d in g.get(n).into_iter().flatten() {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == d).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(d, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    // The check sees the crate: the layers it enforces are there.
    for m in [
        "arch", "vstate", "exit", "bus", "devices", "io", "runtime", "loader", "vm",
    ] {
        assert!(g.contains_key(m), "no module {m} in {g:?}");
    }
    assert!(
        g["exit"].contains("bus") && g["vm"].contains("exit"),
        "{g:?}"
    );
    // Exit handling reaches devices only through the buses and the hypercall seam.
    assert!(!g["exit"].contains("devices"), "{:?}", g["exit"]);
    assert!(!g["io"].contains("devices"), "{:?}", g["io"]);
    if let Some(c) = find_cycle(&g) {
        panic!(
            "import cycle between top-level modules: {}\ngraph: {g:#?}",
            c.join(" -> ")
        );
    }
    // Layer rules beyond acyclicity: KVM state and arch know no exit handling or device.
    for low in ["vstate", "arch", "runtime"] {
        for high in ["exit", "devices", "vm", "io", "bus", "loader"] {
            assert!(!g[low].contains(high), "{low} imports {high}: {:?}", g[low]);
        }
    }
}

#[test]
fn the_checker_finds_cycles_and_imports() {
    let src = "use crate::a::X;\nuse crate::{b, c::D};\n// use crate::z;\n/// [`crate::y`]\nfn f() { crate::e::g(); }\n#[cfg(test)]\nmod tests { use crate::t; }\n";
    let got: Vec<_> = imports(src).into_iter().collect();
    assert_eq!(got, ["a", "b", "c", "e"]);
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default();
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
}
