//! The expression language of `get_all_records_where`:
//! `field "name_label" = "x"`, `field "x" <> "y"`, `and`, `or`, `not`, `true`, `false`, and
//! parentheses.

use crate::value::{Object, Value};

/// A parsed expression.
#[derive(Debug, PartialEq)]
pub enum Expr {
    /// Always true.
    True,
    /// Always false.
    False,
    /// `field "f" = "v"`.
    Eq(String, String),
    /// `field "f" <> "v"`.
    Ne(String, String),
    /// All of these (a chain of `and`, kept flat so that neither `matches` nor drop recurses
    /// once per term).
    And(Vec<Expr>),
    /// Any of these (a chain of `or`, kept flat).
    Or(Vec<Expr>),
    /// Negation.
    Not(Box<Expr>),
}

#[derive(Debug, PartialEq, Clone)]
enum Tok {
    Word(String),
    Str(String),
    LParen,
    RParen,
    Eq,
    Ne,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    while let Some(&c) = it.peek() {
        match c {
            c if c.is_whitespace() => {
                it.next();
            }
            '(' => {
                it.next();
                out.push(Tok::LParen);
            }
            ')' => {
                it.next();
                out.push(Tok::RParen);
            }
            '=' => {
                it.next();
                out.push(Tok::Eq);
            }
            '<' => {
                it.next();
                if it.next() != Some('>') {
                    return Err("expected <>".into());
                }
                out.push(Tok::Ne);
            }
            '"' => {
                it.next();
                let mut v = String::new();
                loop {
                    match it.next() {
                        Some('"') => break,
                        Some('\\') => match it.next() {
                            Some(e) => v.push(e),
                            None => return Err("unterminated string".into()),
                        },
                        Some(ch) => v.push(ch),
                        None => return Err("unterminated string".into()),
                    }
                }
                out.push(Tok::Str(v));
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut w = String::new();
                while let Some(&ch) = it.peek() {
                    if ch.is_alphanumeric() || ch == '_' {
                        w.push(ch);
                        it.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Word(w.to_ascii_lowercase()));
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn or(&mut self) -> Result<Expr, String> {
        let first = self.and()?;
        if self.peek() != Some(&Tok::Word("or".into())) {
            return Ok(first);
        }
        let mut terms = vec![first];
        while self.peek() == Some(&Tok::Word("or".into())) {
            self.next();
            terms.push(self.and()?);
        }
        Ok(Expr::Or(terms))
    }
    fn and(&mut self) -> Result<Expr, String> {
        let first = self.unary()?;
        if self.peek() != Some(&Tok::Word("and".into())) {
            return Ok(first);
        }
        let mut terms = vec![first];
        while self.peek() == Some(&Tok::Word("and".into())) {
            self.next();
            terms.push(self.unary()?);
        }
        Ok(Expr::And(terms))
    }
    fn unary(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > 128 {
            return Err("expression nested too deeply".into());
        }
        let r = match self.next() {
            Some(Tok::Word(w)) if w == "not" => Ok(Expr::Not(Box::new(self.unary()?))),
            Some(Tok::Word(w)) if w == "true" => Ok(Expr::True),
            Some(Tok::Word(w)) if w == "false" => Ok(Expr::False),
            Some(Tok::Word(w)) if w == "field" => {
                let Some(Tok::Str(f)) = self.next() else {
                    return Err("expected a quoted field name after field".into());
                };
                let op = self.next();
                let Some(Tok::Str(v)) = self.next() else {
                    return Err("expected a quoted value".into());
                };
                match op {
                    Some(Tok::Eq) => Ok(Expr::Eq(f, v)),
                    Some(Tok::Ne) => Ok(Expr::Ne(f, v)),
                    _ => Err("expected = or <>".into()),
                }
            }
            Some(Tok::LParen) => {
                let e = self.or()?;
                if self.next() != Some(Tok::RParen) {
                    return Err("expected )".into());
                }
                Ok(e)
            }
            other => Err(format!("unexpected {other:?}")),
        };
        self.depth -= 1;
        r
    }
}

/// Parses an expression.
pub fn parse(s: &str) -> Result<Expr, String> {
    let toks = lex(s)?;
    if toks.is_empty() {
        return Ok(Expr::True);
    }
    let mut p = Parser { toks, pos: 0, depth: 0 };
    let e = p.or()?;
    if p.pos != p.toks.len() {
        return Err("trailing input".into());
    }
    Ok(e)
}

/// A field named as the reference's database names it (a namespaced field `name/label` is
/// `name__label` there) or as the wire does (`name_label`).
fn field_id(obj: &Object, name: &str) -> Option<crate::schema::FieldId> {
    obj.class.field_by_name(name).or_else(|| {
        name.contains("__")
            .then(|| obj.class.field_by_name(&name.replace("__", "_")))?
    })
}

fn field_text(obj: &Object, name: &str) -> Option<String> {
    let f = field_id(obj, name)?;
    Some(match obj.get(f) {
        Value::Bool(b) => b.to_string(),
        v => v.key_text(),
    })
}

/// Whether an object satisfies an expression.
pub fn matches(e: &Expr, obj: &Object) -> bool {
    match e {
        Expr::True => true,
        Expr::False => false,
        Expr::Eq(f, v) => field_text(obj, f).is_some_and(|t| &t == v),
        Expr::Ne(f, v) => field_text(obj, f).is_some_and(|t| &t != v),
        Expr::And(terms) => terms.iter().all(|t| matches(t, obj)),
        Expr::Or(terms) => terms.iter().any(|t| matches(t, obj)),
        Expr::Not(a) => !matches(a, obj),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{class_ids, fields};
    use crate::value::default_object;

    #[test]
    fn parses_and_evaluates() {
        let mut vm = default_object(class_ids::VM, "OpaqueRef:a");
        vm.set(fields::VM::name_label, Value::str("web"));
        vm.set(fields::VM::is_a_template, Value::Bool(true));
        let e = parse(r#"field "name_label" = "web" and not (field "is_a_template" = "false")"#).unwrap();
        assert!(matches(&e, &vm));
        let e = parse(r#"field "name__label" = "web" and field "name__description" = """#).unwrap();
        assert!(matches(&e, &vm), "the database's names for namespaced fields");
        let e = parse(r#"field "name_label" = "db" or field "power_state" = "Halted""#).unwrap();
        assert!(matches(&e, &vm));
        assert!(!matches(&parse("false").unwrap(), &vm));
        assert!(parse("field name").is_err());
        assert!(parse(&"(".repeat(1000)).is_err());
    }

    /// A long chain of `and`/`or` once parsed into a tree as deep as the chain was long, and
    /// `matches` and drop recursed through it: a 900 KB expression overflowed an 8 MB stack
    /// (an HTTP worker has 2 MB). Found with the `where_expr` fuzz target
    /// (fuzz/regressions/where_expr/).
    #[test]
    fn long_chains_stay_flat() {
        let chain = |op: &str| format!("{}true", format!("true {op} ").repeat(200_000));
        let and = parse(&chain("and")).unwrap();
        let or = parse(&chain("or")).unwrap();
        let vm = default_object(class_ids::VM, "OpaqueRef:a");
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                assert!(matches(&and, &vm));
                assert!(matches(&or, &vm));
                drop((and, or));
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            parse(r#"field "a" = "1" and field "b" = "2" or true"#).unwrap(),
            Expr::Or(vec![
                Expr::And(vec![Expr::Eq("a".into(), "1".into()), Expr::Eq("b".into(), "2".into())]),
                Expr::True
            ])
        );
    }
}
