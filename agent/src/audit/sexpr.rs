//! The reference's s-expressions (the audit record's arguments, the database backup's sets
//! and maps), written as the reference writes them: every atom in single quotes (`\` and `'`
//! escaped with a backslash), lists in parentheses, one space between elements. Read back by
//! [`SExpr::parse`], which also takes double-quoted and bare atoms.

/// An s-expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SExpr {
    /// A quoted atom.
    Str(String),
    /// A list.
    List(Vec<SExpr>),
}

impl SExpr {
    /// An atom.
    pub fn str(s: impl Into<String>) -> SExpr {
        SExpr::Str(s.into())
    }

    /// The text of the expression.
    pub fn text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            SExpr::Str(s) => {
                out.push('\'');
                for c in s.chars() {
                    if c == '\\' || c == '\'' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('\'');
            }
            SExpr::List(items) => {
                out.push('(');
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    e.write(out);
                }
                out.push(')');
            }
        }
    }
}

/// Nesting deeper than this is refused by [`SExpr::parse`] (no stored value nests more than
/// twice; the bound keeps a hostile input from exhausting the stack).
const MAX_DEPTH: usize = 64;

impl SExpr {
    /// Reads one expression filling `text` (surrounding white space allowed).
    pub fn parse(text: &str) -> Result<SExpr, String> {
        let mut chars = text.char_indices().peekable();
        let e = parse_at(text, &mut chars, 0)?;
        skip_space(&mut chars);
        match chars.peek() {
            None => Ok(e),
            Some((i, _)) => Err(format!("unexpected text at offset {i}")),
        }
    }

    /// The elements of a list; `None` for an atom.
    pub fn items(&self) -> Option<&[SExpr]> {
        match self {
            SExpr::List(items) => Some(items),
            SExpr::Str(_) => None,
        }
    }

    /// The text of an atom; `None` for a list.
    pub fn atom(&self) -> Option<&str> {
        match self {
            SExpr::Str(s) => Some(s),
            SExpr::List(_) => None,
        }
    }
}

type Chars<'a> = std::iter::Peekable<std::str::CharIndices<'a>>;

fn skip_space(chars: &mut Chars) {
    while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
}

fn parse_at(text: &str, chars: &mut Chars, depth: usize) -> Result<SExpr, String> {
    skip_space(chars);
    let Some((at, c)) = chars.next() else {
        return Err("the expression ends early".into());
    };
    match c {
        '(' => {
            if depth >= MAX_DEPTH {
                return Err(format!("lists nest deeper than {MAX_DEPTH}"));
            }
            let mut items = Vec::new();
            loop {
                skip_space(chars);
                match chars.peek() {
                    None => return Err(format!("the list opened at offset {at} is not closed")),
                    Some((_, ')')) => {
                        chars.next();
                        return Ok(SExpr::List(items));
                    }
                    Some(_) => items.push(parse_at(text, chars, depth + 1)?),
                }
            }
        }
        ')' => Err(format!("unexpected ')' at offset {at}")),
        '\'' | '"' => {
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err(format!("the atom opened at offset {at} is not closed")),
                    Some((_, '\\')) => match chars.next() {
                        Some((_, e)) => s.push(e),
                        None => return Err(format!("the atom opened at offset {at} ends in '\\'")),
                    },
                    Some((_, q)) if q == c => return Ok(SExpr::Str(s)),
                    Some((_, other)) => s.push(other),
                }
            }
        }
        _ => {
            let mut end = at + c.len_utf8();
            while let Some((i, d)) = chars.next_if(|(_, d)| !d.is_whitespace() && !matches!(d, '(' | ')' | '\'' | '"'))
            {
                end = i + d.len_utf8();
            }
            Ok(SExpr::Str(text[at..end].to_owned()))
        }
    }
}

/// A logged argument: `(name name-of-the-object uuid ref)`, the last three empty where they
/// do not apply.
pub fn arg(name: &str, label: &str, uuid: &str, reference: &str) -> SExpr {
    SExpr::List(vec![
        SExpr::str(name),
        SExpr::str(label),
        SExpr::str(uuid),
        SExpr::str(reference),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoms_are_quoted_and_escaped() {
        let e = SExpr::List(vec![
            SExpr::str("a'b"),
            SExpr::str("c\\d"),
            SExpr::List(vec![]),
            arg("vm", "x", "", "OpaqueRef:1"),
        ]);
        assert_eq!(e.text(), r"('a\'b' 'c\\d' () ('vm' 'x' '' 'OpaqueRef:1'))");
        assert_eq!(SExpr::parse(&e.text()).unwrap(), e);
    }

    #[test]
    fn reads_the_forms_the_reference_writes_and_refuses_broken_ones() {
        let e = SExpr::parse(r#" (('k' 'v') ("a b" sym) ('it\'s' 'c\\d') ()) "#).unwrap();
        let items = e.items().unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0], SExpr::List(vec![SExpr::str("k"), SExpr::str("v")]));
        assert_eq!(items[1], SExpr::List(vec![SExpr::str("a b"), SExpr::str("sym")]));
        assert_eq!(items[2].items().unwrap()[0].atom(), Some("it's"));
        assert_eq!(items[2].items().unwrap()[1].atom(), Some("c\\d"));
        for bad in ["", "(", ")", "('a'", "'a", "('a' 'b'))", "'a\\", "(() x"] {
            assert!(SExpr::parse(bad).is_err(), "{bad:?}");
        }
        let deep = format!("{}{}", "(".repeat(100), ")".repeat(100));
        assert!(SExpr::parse(&deep).is_err());
    }
}
