//! The layers of `runtime/src` hold: no cycle between top-level modules, no module using one
//! above its layer, and none of the edges DESIGN.md forbids. Read from the source with `syn`
//! (every `crate::` and `super::` path, in code and in macro input), so a new `use` that breaks
//! the picture fails here with the file that made it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// DESIGN.md's layers, bottom up; a module may use modules of its own layer or below (its own
/// layer only without a cycle, which the cycle check catches).
const LAYERS: &[&[&str]] = &[
    &["call", "wire", "manifest", "util", "telemetry"],
    &["host", "transport", "router"],
    &["wasm", "discovery"],
    &["policy"],
    &["rpc", "messaging", "state"],
    &["http"],
    &["node"],
    // Entry points for benches and fuzzers, above everything they reach into.
    &["bench", "fuzzing"],
];

/// DESIGN.md's forbidden edges, each checked on its own (most are also upward edges).
const FORBIDDEN: &[(&str, &str)] = &[
    ("policy", "rpc"),
    ("host", "rpc"),
    ("host", "messaging"),
    ("host", "policy"),
    ("wasm", "rpc"),
    ("wasm", "policy"),
    ("router", "wasm"),
    ("transport", "discovery"),
    ("transport", "rpc"),
    ("messaging", "rpc"),
    ("http", "rpc"),
    // The outbox relay reaches the broker through the host's `Queues` port, not its insides.
    ("host", "state"),
    ("state", "messaging"),
    ("state", "rpc"),
];

/// `from → to` edges between top-level modules, each with a file that makes it.
type Edges = BTreeMap<(String, String), PathBuf>;

#[test]
fn runtime_modules_form_layers_without_cycles_or_forbidden_edges() {
    let src = crate::support::repo_root().join("runtime/src");
    let edges = module_edges(&src);
    assert!(
        edges.len() > 20,
        "read too few edges ({}); is {} the runtime's source?",
        edges.len(),
        src.display()
    );
    let mut problems = Vec::new();
    for ((from, to), file) in &edges {
        if FORBIDDEN.contains(&(from.as_str(), to.as_str())) {
            problems.push(format!("forbidden edge {from} → {to} ({})", file.display()));
        }
        match (layer(from), layer(to)) {
            (Some(a), Some(b)) if b > a => problems.push(format!(
                "{from} (layer {a}) uses {to} (layer {b}), which is above it ({})",
                file.display()
            )),
            (None, _) => problems.push(format!("module {from} has no layer in this test")),
            (_, None) => problems.push(format!("module {to} has no layer in this test")),
            _ => {}
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        problems.push(format!("cycle: {}", cycle.join(" → ")));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_grouped_super_and_macro_paths() {
    let mut edges = Edges::new();
    let source = r#"
        use crate::{call::Call, wire::{self, Frame}};
        fn f() { let _ = super::policy::Chain::new(); tracing::info!("{}", crate::util::x()); }
        mod inner { use super::super::super::host::HostState; }
    "#;
    collect(
        &["rpc".to_owned(), "route".to_owned()],
        Path::new("rpc/route.rs"),
        source,
        &mut edges,
    );
    let found: BTreeSet<_> = edges.keys().map(|(_, to)| to.as_str()).collect();
    assert_eq!(
        found,
        BTreeSet::from(["call", "wire", "util", "host"]),
        "super:: from rpc/route.rs stays in rpc; three supers from an inline mod of it reach \
         the crate root"
    );
    let cyclic: Edges = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(f, t)| ((f.to_owned(), t.to_owned()), PathBuf::new()))
        .collect();
    assert!(find_cycle(&cyclic).is_some());
}

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn module_edges(src: &Path) -> Edges {
    let mut edges = Edges::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).unwrap_or(&file).to_path_buf();
        let mut path: Vec<String> = relative
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if path.last().is_some_and(|last| last == "mod") {
            path.pop();
        }
        // The crate root and the binary (`main.rs` and its `cli/`) are the top: they may use
        // anything.
        if path == ["lib"] || path == ["main"] || path.is_empty() || path[0] == "cli" {
            continue;
        }
        let source = std::fs::read_to_string(&file).unwrap();
        collect(&path, &relative, &source, &mut edges);
    }
    edges
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Adds the edges that `source` (the file of module `path`) makes.
fn collect(path: &[String], file: &Path, source: &str, edges: &mut Edges) {
    let syntax = syn::parse_file(source)
        .unwrap_or_else(|err| panic!("{} does not parse: {err}", file.display()));
    let mut visitor = Paths {
        module: path.to_vec(),
        found: BTreeSet::new(),
    };
    visitor.visit_file(&syntax);
    let from = &path[0];
    for to in visitor.found {
        if &to != from {
            edges
                .entry((from.clone(), to))
                .or_insert_with(|| file.to_path_buf());
        }
    }
}

/// Collects the top-level module of every path that leaves the crate root's child `module[0]`.
struct Paths {
    /// Where the visitor stands: file module path plus inline `mod`s.
    module: Vec<String>,
    found: BTreeSet<String>,
}

impl Paths {
    fn add(&mut self, segments: &[String]) {
        match segments.first().map(String::as_str) {
            Some("crate") => {
                if let Some(top) = segments.get(1).filter(|top| !top.is_empty()) {
                    self.found.insert(top.clone());
                }
            }
            Some("super") => {
                let ups = segments.iter().take_while(|s| *s == "super").count();
                let mut at = self.module.clone();
                at.truncate(at.len().saturating_sub(ups));
                let top = at.first().cloned().or_else(|| segments.get(ups).cloned());
                if let Some(top) = top.filter(|top| !top.is_empty()) {
                    self.found.insert(top);
                }
            }
            _ => {}
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.use_tree(prefix, &path.tree);
                prefix.pop();
            }
            syn::UseTree::Group(group) => {
                for item in &group.items {
                    self.use_tree(prefix, item);
                }
            }
            syn::UseTree::Name(name) => {
                prefix.push(name.ident.to_string());
                self.add(prefix);
                prefix.pop();
            }
            syn::UseTree::Rename(rename) => {
                prefix.push(rename.ident.to_string());
                self.add(prefix);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => {
                prefix.push(String::new());
                self.add(prefix);
                prefix.pop();
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.module.push(item.ident.to_string());
        syn::visit::visit_item_mod(self, item);
        self.module.pop();
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.add(&segments);
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        // Macro input is tokens, not syntax: look for `crate :: name` and `super :: name`.
        let tokens: Vec<String> = mac.tokens.clone().into_iter().flat_map(flatten).collect();
        for (index, token) in tokens.iter().enumerate() {
            if (token == "crate" || token == "super")
                && tokens.get(index + 1).is_some_and(|t| t == ":")
                && tokens.get(index + 2).is_some_and(|t| t == ":")
                && let Some(name) = tokens.get(index + 3)
            {
                self.add(&[token.clone(), name.clone()]);
            }
        }
        syn::visit::visit_macro(self, mac);
    }
}

fn flatten(tree: proc_macro2::TokenTree) -> Vec<String> {
    match tree {
        proc_macro2::TokenTree::Group(group) => {
            group.stream().into_iter().flat_map(flatten).collect()
        }
        other => vec![other.to_string()],
    }
}

/// A cycle among `edges`, as the modules on it (first repeated at the end), if there is one.
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(from).or_default().push(to);
    }
    let mut done = BTreeSet::new();
    for start in graph.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(start, &graph, &mut stack, &mut done) {
            return Some(cycle);
        }
    }
    None
}

fn visit<'a>(
    node: &'a str,
    graph: &BTreeMap<&'a str, Vec<&'a str>>,
    stack: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
) -> Option<Vec<String>> {
    if let Some(at) = stack.iter().position(|n| *n == node) {
        let mut cycle: Vec<String> = stack[at..].iter().map(|n| (*n).to_owned()).collect();
        cycle.push(node.to_owned());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    stack.push(node);
    for next in graph.get(node).into_iter().flatten() {
        if let Some(cycle) = visit(next, graph, stack, done) {
            return Some(cycle);
        }
    }
    stack.pop();
    done.insert(node);
    None
}
