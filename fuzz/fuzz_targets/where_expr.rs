//! The `get_all_records_where` expression language: `agent::query::parse` on arbitrary text
//! and, when it parses, `agent::query::matches` against a default VM, and against a VM whose
//! string fields hold the values the expression's own `field "f" = "v"` literals name.
//!
//! `matches` and the drop of an `Expr` recurse once per tree level, on the HTTP worker's
//! stack; the parser caps nesting at 128, so a parsed tree must stay shallow whatever the
//! input's length (`MAX_TREE_DEPTH`). The walk here reads the tree's `Debug` form, so it does
//! not depend on the shape of `Expr`.
#![no_main]

use agent::query::{matches, parse, Expr};
use agent::schema::class_ids;
use agent::value::{default_object, Value};
use libfuzzer_sys::fuzz_target;

/// The parser's own nesting limit is 128 and each level of nesting may add an `or` and an
/// `and` node, so a tree deeper than this grew from input length alone.
const MAX_TREE_DEPTH: usize = 300;

/// The deepest nesting of `(` in `e`'s `Debug` form, string literals skipped.
fn tree_depth(e: &Expr) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for c in format!("{e:?}").chars() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '(' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// The quoted literals of the input, in order, unescaped as the lexer does.
fn literals(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '"' {
            continue;
        }
        let mut v = String::new();
        loop {
            match it.next() {
                Some('"') | None => break,
                Some('\\') => v.extend(it.next()),
                Some(ch) => v.push(ch),
            }
        }
        out.push(v);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(e) = parse(s) else {
        return;
    };
    let depth = tree_depth(&e);
    assert!(
        depth <= MAX_TREE_DEPTH,
        "a {}-byte expression parsed into a tree {depth} levels deep: matches() and drop recurse that deep",
        s.len()
    );
    let mut vm = default_object(class_ids::VM, "OpaqueRef:x");
    let _ = matches(&e, &vm);
    for pair in literals(s).chunks(2) {
        if let [f, v] = pair {
            if let Some(id) = vm.class.field_by_name(f) {
                if matches!(vm.get(id), Value::String(_)) {
                    vm.set(id, Value::str(v.as_str()));
                }
            }
        }
    }
    let r = matches(&e, &vm);
    let not = Expr::Not(Box::new(e));
    assert_eq!(matches(&not, &vm), !r);
});
