//! Output as the reference's CLI prints it: records as blocks of `name ( RO): value` lines,
//! lists one item a line, and with `--minimal` everything as one comma-separated line.

/// One record: (label, value) pairs in order.
pub(crate) type Record = Vec<(String, String)>;

/// Something a command prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PrintVal {
    /// A message (dropped under `--minimal`).
    Msg(String),
    /// Records (under `--minimal`: the first value of each).
    Table(Vec<Record>),
    /// Lines (under `--minimal`: joined with commas).
    List(Vec<String>),
}

/// A record block: the first label padded on the right, the others on the left, to the
/// longest label plus four, each line `label: value`, and a final newline.
pub(crate) fn multi_line_record(r: &[(String, String)]) -> String {
    let width = 4 + r.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (i, (k, v)) in r.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if i == 0 {
            out.push_str(k);
            out.extend(std::iter::repeat_n(' ', width.saturating_sub(k.len())));
        } else {
            out.extend(std::iter::repeat_n(' ', width.saturating_sub(k.len())));
            out.push_str(k);
        }
        out.push_str(": ");
        out.push_str(v);
    }
    out.push('\n');
    out
}

/// `,` and `\` escaped with a backslash, for `--minimal` lists.
pub(crate) fn escape_commas(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == ',' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The `--minimal` line for one printed value, if it gives one.
pub(crate) fn minimal_of(v: &PrintVal) -> Option<String> {
    match v {
        PrintVal::Table(rs) => {
            if rs.is_empty() || rs.iter().any(Vec::is_empty) {
                return None;
            }
            let firsts: Vec<String> = rs
                .iter()
                .filter_map(|r| r.first().map(|(_, v)| escape_commas(v)))
                .collect();
            Some(firsts.join(","))
        }
        PrintVal::List(items) => Some(items.iter().map(|s| escape_commas(s)).collect::<Vec<_>>().join(",")),
        PrintVal::Msg(_) => None,
    }
}

/// Names wrapped into indented, comma-separated lines of about 74 columns (help's command
/// lists).
pub(crate) fn make_list(names: &[String]) -> Vec<String> {
    let indent = "    ";
    let mut lines = Vec::new();
    let Some((first, rest)) = names.split_first() else {
        return lines;
    };
    let mut cur = format!("{indent}{first}");
    for n in rest {
        if cur.len() + n.len() > 74 {
            lines.push(std::mem::replace(&mut cur, format!("{indent}{n}")));
        } else {
            cur.push_str(", ");
            cur.push_str(n);
        }
    }
    lines.push(cur);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(p: &[(&str, &str)]) -> Record {
        p.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn record_block_layout() {
        let r = rec(&[
            ("uuid ( RO)", "1b2c"),
            ("name-label ( RW)", "web"),
            ("power-state ( RO)", "halted"),
        ]);
        assert_eq!(
            multi_line_record(&r),
            "uuid ( RO)           : 1b2c\n     name-label ( RW): web\n    power-state ( RO): halted\n"
        );
        assert_eq!(multi_line_record(&[]), "\n");
    }

    #[test]
    fn minimal_lines() {
        let t = PrintVal::Table(vec![rec(&[("uuid ( RO)", "a")]), rec(&[("uuid ( RO)", "b,c")])]);
        assert_eq!(minimal_of(&t).as_deref(), Some("a,b\\,c"));
        assert_eq!(minimal_of(&PrintVal::Table(vec![])), None);
        assert_eq!(
            minimal_of(&PrintVal::List(vec!["x\\y".into(), "z".into()])).as_deref(),
            Some("x\\\\y,z")
        );
        assert_eq!(minimal_of(&PrintVal::Msg("m".into())), None);
    }

    #[test]
    fn wrapped_command_lists() {
        let names: Vec<String> = (0..20).map(|i| format!("command-{i:02}")).collect();
        let lines = make_list(&names);
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| l.starts_with("    ") && l.len() <= 74 + 12));
        assert_eq!(lines.join(", ").replace("    ", "").split(", ").count(), 20);
        assert_eq!(make_list(&["a".into()]), vec!["    a".to_owned()]);
    }
}
