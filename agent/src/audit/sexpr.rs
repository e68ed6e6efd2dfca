//! The audit record's s-expressions, written as the reference writes them: every atom in
//! single quotes (`\` and `'` escaped with a backslash), lists in parentheses, one space
//! between elements.

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
    }
}
