//! Performance alarm thresholds: the XML a VM's, host's or SR's `other_config:perfmon` holds,
//! read as the reference's `perfmon` reads it.
//!
//! ```xml
//! <config>
//!   <variable>
//!     <name value="cpu_usage"/>
//!     <alarm_trigger_level value="0.5"/>
//!   </variable>
//! </config>
//! ```
//!
//! Each `<variable>` (anywhere in the document) has a `name` and optionally
//! `alarm_trigger_level`, `alarm_trigger_period` (seconds of bad values before an alarm,
//! default 60), `alarm_auto_inhibit_period` (seconds without a new alarm after one, default
//! 3600), `alarm_trigger_sense` (`high`: above the level is bad; anything else: below),
//! `alarm_priority` (default 3), `consolidation_fn` and `rrd_regex` (which data sources make the
//! value, and how they are combined), each as the `value` attribute of the first element of
//! that name inside the variable. What is left out takes the reference's default for the
//! variable's name and the object's class. A document that does not parse, or a variable
//! that cannot be read, makes the whole configuration void (the reference logs it and keeps
//! no variables of the bad parse).
//!
//! The alarm's body quotes the variable's element as Python's `minidom` pretty-prints it (tab
//! indents, whitespace text kept): [`Node::pretty`].

use quick_xml::events::Event;
use quick_xml::Reader;
use regex::Regex;

/// The class of the object whose thresholds these are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Monitored {
    /// A VM.
    Vm,
    /// A host.
    Host,
    /// An SR.
    Sr,
}

/// How a variable's data sources are combined into one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consolidation {
    /// Their sum (0 for none).
    Sum,
    /// Their mean (0 for none).
    Average,
    /// Their maximum.
    Max,
    /// Dom0's share of memory and swap in use (`/proc/meminfo`); the sources are ignored.
    PercentMemUsage,
    /// The root filesystem's share in use; the sources are ignored.
    PercentFsUsage,
    /// The log filesystem's share in use (NaN when it is the root filesystem's).
    PercentLogFsUsage,
    /// An SR's `physical_utilisation` over its `physical_size`.
    PercentSrUsage,
}

impl Consolidation {
    fn parse(s: &str) -> Option<Consolidation> {
        Some(match s {
            "sum" => Consolidation::Sum,
            "average" => Consolidation::Average,
            "max" => Consolidation::Max,
            "get_percent_mem_usage" => Consolidation::PercentMemUsage,
            "get_percent_fs_usage" => Consolidation::PercentFsUsage,
            "get_percent_log_fs_usage" => Consolidation::PercentLogFsUsage,
            "get_percent_sr_usage" => Consolidation::PercentSrUsage,
            _ => return None,
        })
    }
}

/// One configured variable.
#[derive(Clone, Debug)]
pub struct Variable {
    /// Its name.
    pub name: String,
    /// Which data sources make it (matched against the whole name).
    pub rrd_regex: Regex,
    /// How they are combined.
    pub consolidation: Consolidation,
    /// The level.
    pub trigger_level: f64,
    /// Above the level is bad (`high`), else below.
    pub sense_high: bool,
    /// Seconds of bad values before an alarm.
    pub trigger_period: i64,
    /// Seconds after an alarm during which no other is raised.
    pub auto_inhibit_period: i64,
    /// The alarm message's priority.
    pub priority: i64,
    /// The variable's element, pretty-printed (the alarm body quotes it).
    pub xml: String,
}

/// Why a configuration is void.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not well-formed XML (or too large or deep).
    #[error("XML parse error: {0}")]
    Xml(String),
    /// A variable cannot be read.
    #[error("variable {name}: {reason}")]
    Variable {
        /// The variable's name (empty when it has none).
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// A node of the document.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// An element: name, attributes in document order, children.
    Element(String, Vec<(String, String)>, Vec<Node>),
    /// Text, unescaped, whitespace kept.
    Text(String),
    /// A CDATA section.
    CData(String),
    /// A comment.
    Comment(String),
}

/// The deepest nesting accepted.
const MAX_DEPTH: usize = 64;
/// The most nodes accepted.
const MAX_NODES: usize = 20_000;

fn xml_err(e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Xml(e.to_string())
}

/// An element's name; an element without one (`<\r/>`, which the XML reader lets through)
/// is refused: written back it would not read again.
fn element_name(s: &quick_xml::events::BytesStart<'_>) -> Result<String, ConfigError> {
    let name = String::from_utf8_lossy(s.name().as_ref()).into_owned();
    if name.is_empty() {
        return Err(ConfigError::Xml("an element without a name".into()));
    }
    Ok(name)
}

/// Parses a document into its root element.
pub fn parse_document(text: &str) -> Result<Node, ConfigError> {
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut count = 0usize;
    let attrs = |s: &quick_xml::events::BytesStart<'_>| -> Result<Vec<(String, String)>, ConfigError> {
        s.attributes()
            .map(|a| {
                let a = a.map_err(xml_err)?;
                let v = a.unescape_value().map_err(xml_err)?;
                Ok((String::from_utf8_lossy(a.key.as_ref()).into_owned(), v.into_owned()))
            })
            .collect()
    };
    let push = |stack: &mut Vec<Node>, root: &Option<Node>, n: Node| -> Result<(), ConfigError> {
        match stack.last_mut() {
            Some(Node::Element(_, _, children)) => {
                children.push(n);
                Ok(())
            }
            _ if matches!(n, Node::Text(ref t) if t.trim().is_empty()) => Ok(()),
            _ if matches!(n, Node::Comment(_)) => Ok(()),
            _ if root.is_some() => Err(ConfigError::Xml("content after the root element".into())),
            _ => Err(ConfigError::Xml("content outside the root element".into())),
        }
    };
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| ConfigError::Xml(format!("at byte {}: {e}", reader.buffer_position())))?;
        count += 1;
        if count > MAX_NODES || stack.len() > MAX_DEPTH {
            return Err(ConfigError::Xml("the document is too deep or too large".into()));
        }
        match ev {
            Event::Eof => break,
            Event::Start(s) => {
                if root.is_some() {
                    return Err(ConfigError::Xml("content after the root element".into()));
                }
                let name = element_name(&s)?;
                stack.push(Node::Element(name, attrs(&s)?, Vec::new()));
            }
            Event::Empty(s) => {
                let name = element_name(&s)?;
                let e = Node::Element(name, attrs(&s)?, Vec::new());
                if stack.is_empty() {
                    if root.is_some() {
                        return Err(ConfigError::Xml("content after the root element".into()));
                    }
                    root = Some(e);
                } else {
                    push(&mut stack, &root, e)?;
                }
            }
            Event::End(_) => {
                let Some(e) = stack.pop() else {
                    return Err(ConfigError::Xml("an end tag without a start".into()));
                };
                if stack.is_empty() {
                    root = Some(e);
                } else {
                    push(&mut stack, &root, e)?;
                }
            }
            Event::Text(t) => {
                let s = t.unescape().map_err(xml_err)?.into_owned();
                push(&mut stack, &root, Node::Text(s))?;
            }
            Event::CData(c) => {
                let s = String::from_utf8_lossy(&c.into_inner()).into_owned();
                push(&mut stack, &root, Node::CData(s))?;
            }
            Event::Comment(c) => {
                let s = String::from_utf8_lossy(&c.into_inner()).into_owned();
                push(&mut stack, &root, Node::Comment(s))?;
            }
            Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(ConfigError::Xml("unclosed elements".into()));
    }
    root.ok_or_else(|| ConfigError::Xml("no root element".into()))
}

/// Escapes text as `minidom` writes text and attribute values.
fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
}

impl Node {
    /// The elements named `name` below this one (itself excluded), in document order.
    pub fn descendants_named<'a>(&'a self, name: &str, out: &mut Vec<&'a Node>) {
        if let Node::Element(_, _, children) = self {
            for c in children {
                if let Node::Element(n, _, _) = c {
                    if n == name {
                        out.push(c);
                    }
                }
                c.descendants_named(name, out);
            }
        }
    }

    /// An attribute's value: the empty string when the element lacks it.
    pub fn attribute(&self, name: &str) -> &str {
        match self {
            Node::Element(_, attrs, _) => attrs.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str()),
            _ => "",
        }
    }

    /// The node pretty-printed with tab indents, as `minidom`'s `toprettyxml()` prints it.
    pub fn pretty(&self) -> String {
        let mut out = String::new();
        self.write_pretty("", &mut out);
        out
    }

    fn write_pretty(&self, indent: &str, out: &mut String) {
        match self {
            Node::Text(t) => {
                let mut s = String::from(indent);
                s.push_str(t);
                s.push('\n');
                escape(&s, out);
            }
            Node::CData(t) => {
                out.push_str("<![CDATA[");
                out.push_str(t);
                out.push_str("]]>");
            }
            Node::Comment(t) => {
                out.push_str(indent);
                out.push_str("<!--");
                out.push_str(t);
                out.push_str("-->\n");
            }
            Node::Element(name, attrs, children) => {
                out.push_str(indent);
                out.push('<');
                out.push_str(name);
                for (k, v) in attrs {
                    out.push(' ');
                    out.push_str(k);
                    out.push_str("=\"");
                    escape(v, out);
                    out.push('"');
                }
                if children.is_empty() {
                    out.push_str("/>\n");
                    return;
                }
                out.push('>');
                if let [only @ (Node::Text(_) | Node::CData(_))] = children.as_slice() {
                    match only {
                        Node::Text(t) => escape(t, out),
                        _ => only.write_pretty("", out),
                    }
                } else {
                    out.push('\n');
                    let inner = format!("{indent}\t");
                    for c in children {
                        c.write_pretty(&inner, out);
                    }
                    out.push_str(indent);
                }
                out.push_str("</");
                out.push_str(name);
                out.push_str(">\n");
            }
        }
    }
}

/// The reference's default for `tag` of variable `name` on a `class` object; `None` when it
/// has none (the variable must then give it).
fn default_for(class: Monitored, name: &str, tag: &str) -> Option<String> {
    let s = |v: &str| Some(v.to_owned());
    match tag {
        "consolidation_fn" => match (class, name) {
            (Monitored::Vm | Monitored::Host, "cpu_usage") => s("average"),
            (Monitored::Vm, "fs_usage") => s("get_percent_fs_usage"),
            (Monitored::Vm, "log_fs_usage") => s("get_percent_log_fs_usage"),
            (Monitored::Vm, "mem_usage") => s("get_percent_mem_usage"),
            (Monitored::Sr, "physical_utilisation") => s("get_percent_sr_usage"),
            _ => s("sum"),
        },
        "rrd_regex" => match (class, name) {
            (Monitored::Vm | Monitored::Host, "cpu_usage") => s("cpu[0-9]+"),
            (Monitored::Vm, "network_usage") => s("vif_[0-9]+_[rt]x"),
            (Monitored::Vm, "disk_usage") => s("vbd_(xvd|hd)[a-z]+_(read|write)"),
            (Monitored::Vm, "fs_usage" | "log_fs_usage" | "mem_usage") => s("_$_DUMMY__"),
            (Monitored::Vm, "memory_internal_free") | (Monitored::Host, "memory_free_kib") => s(name),
            (Monitored::Host, "network_usage") => s("pif_eth[0-9]+_[rt]x"),
            (Monitored::Host, n) if is_sr_throughput(n) => n.get(3..).map(str::to_owned),
            (Monitored::Sr, "physical_utilisation") => s("physical_utilisation|size"),
            (Monitored::Sr, "sr_io_throughput_total_per_host") => s("_$_DUMMY__"),
            _ => None,
        },
        "alarm_trigger_period" => s("60"),
        "alarm_auto_inhibit_period" => s("3600"),
        "alarm_trigger_level" => match (class, name) {
            (Monitored::Vm, "fs_usage" | "log_fs_usage") => s("0.9"),
            (Monitored::Vm, "mem_usage") => s("0.95"),
            (Monitored::Sr, "physical_utilisation") => s("0.8"),
            _ => None,
        },
        "alarm_trigger_sense" => match (class, name) {
            (Monitored::Vm, "memory_internal_free") | (Monitored::Host, "memory_free_kib") => s("low"),
            _ => s("high"),
        },
        "alarm_priority" => s("3"),
        _ => None,
    }
}

/// `sr_io_throughput_total_` and eight hex digits.
fn is_sr_throughput(n: &str) -> bool {
    n.strip_prefix("sr_io_throughput_total_")
        .is_some_and(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// An integer as Python's `int()` reads one (surrounding whitespace, a sign, `_` between
/// digits).
fn py_int(s: &str) -> Option<i64> {
    let t = s.trim();
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
        return None;
    }
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    if !clean.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: i64 = clean.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// A float as Python's `float()` reads one (surrounding whitespace, `inf`, `nan`).
fn py_float(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() || t.contains('_') {
        return None;
    }
    t.parse::<f64>().ok()
}

/// Reads one `<variable>` element.
fn variable(class: Monitored, node: &Node) -> Result<Variable, ConfigError> {
    let first = |tag: &str| {
        let mut v = Vec::new();
        node.descendants_named(tag, &mut v);
        v.first().map(|n| n.attribute("value").to_owned())
    };
    let Some(name) = first("name") else {
        return Err(ConfigError::Variable {
            name: String::new(),
            reason: "missing 'name' tag".into(),
        });
    };
    let bad = |reason: String| ConfigError::Variable {
        name: name.clone(),
        reason,
    };
    let get = |tag: &str| {
        first(tag)
            .or_else(|| default_for(class, &name, tag))
            .ok_or_else(|| bad(format!("no default {tag} - please specify one")))
    };
    let regex_text = get("rrd_regex")?;
    let rrd_regex =
        Regex::new(&format!("^{regex_text}$")).map_err(|_| bad(format!("regex {regex_text} does not compile")))?;
    let cf = get("consolidation_fn")?;
    let consolidation =
        Consolidation::parse(&cf).ok_or_else(|| bad(format!("consolidation function {cf} not supported")))?;
    let period = get("alarm_trigger_period")?;
    let trigger_period = py_int(&period).ok_or_else(|| bad(format!("alarm_trigger_period {period} not an int")))?;
    let inhibit = get("alarm_auto_inhibit_period")?;
    let auto_inhibit_period =
        py_int(&inhibit).ok_or_else(|| bad(format!("alarm_auto_inhibit_period {inhibit} not an int")))?;
    let level = get("alarm_trigger_level")?;
    let trigger_level = py_float(&level).ok_or_else(|| bad(format!("alarm_trigger_level {level} not a float")))?;
    let sense_high = get("alarm_trigger_sense")? == "high";
    let prio = get("alarm_priority")?;
    let priority = py_int(&prio).ok_or_else(|| bad(format!("alarm_priority {prio} not an int")))?;
    Ok(Variable {
        name: name.clone(),
        rrd_regex,
        consolidation,
        trigger_level,
        sense_high,
        trigger_period,
        auto_inhibit_period,
        priority,
        xml: node.pretty(),
    })
}

/// Reads a whole configuration: its variables, one per name (the last of a name wins).
pub fn parse(class: Monitored, text: &str) -> Result<Vec<Variable>, ConfigError> {
    let root = parse_document(text)?;
    let mut nodes = Vec::new();
    if matches!(&root, Node::Element(n, _, _) if n == "variable") {
        nodes.push(&root);
    }
    root.descendants_named("variable", &mut nodes);
    let mut out: Vec<Variable> = Vec::new();
    for n in nodes {
        let v = variable(class, n)?;
        out.retain(|o| o.name != v.name);
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_name_and_the_class() {
        let vs = parse(
            Monitored::Vm,
            r#"<config><variable><name value="cpu_usage"/><alarm_trigger_level value="0.5"/></variable></config>"#,
        )
        .unwrap();
        let v = &vs[0];
        assert_eq!(v.name, "cpu_usage");
        assert!(v.rrd_regex.is_match("cpu0") && v.rrd_regex.is_match("cpu12") && !v.rrd_regex.is_match("cpu_avg"));
        assert_eq!(v.consolidation, Consolidation::Average);
        assert_eq!((v.trigger_level, v.sense_high), (0.5, true));
        assert_eq!((v.trigger_period, v.auto_inhibit_period, v.priority), (60, 3600, 3));
        let host = parse(
            Monitored::Host,
            r#"<config><variable><name value="memory_free_kib"/><alarm_trigger_level value="1e6"/></variable>
               <variable><name value="sr_io_throughput_total_0123abcd"/><alarm_trigger_level value="5"/></variable></config>"#,
        )
        .unwrap();
        assert!(!host[0].sense_high);
        assert!(host[1].rrd_regex.is_match("io_throughput_total_0123abcd"));
        let sr = parse(
            Monitored::Sr,
            r#"<config><variable><name value="physical_utilisation"/></variable></config>"#,
        )
        .unwrap();
        assert_eq!(
            (sr[0].trigger_level, sr[0].consolidation),
            (0.8, Consolidation::PercentSrUsage)
        );
        // The reference's regex is not grouped: `^physical_utilisation|size$`.
        assert!(sr[0].rrd_regex.is_match("physical_size") && sr[0].rrd_regex.is_match("physical_utilisation"));
    }

    #[test]
    fn bad_configurations_are_void() {
        let cases = [
            ("<config><variable>", "XML"),
            ("<config><variable><alarm_trigger_level value=\"1\"/></variable></config>", "missing 'name'"),
            ("<config><variable><name value=\"fancy\"/></variable></config>", "no default rrd_regex"),
            (
                "<config><variable><name value=\"cpu_usage\"/></variable></config>",
                "no default alarm_trigger_level",
            ),
            (
                "<config><variable><name value=\"cpu_usage\"/><alarm_trigger_level value=\"x\"/></variable></config>",
                "not a float",
            ),
            (
                "<config><variable><name value=\"cpu_usage\"/><alarm_trigger_level value=\"1\"/><alarm_trigger_period value=\"1.5\"/></variable></config>",
                "not an int",
            ),
            (
                "<config><variable><name value=\"x\"/><rrd_regex value=\"(\"/><alarm_trigger_level value=\"1\"/></variable></config>",
                "does not compile",
            ),
            (
                "<config><variable><name value=\"cpu_usage\"/><alarm_trigger_level value=\"1\"/><consolidation_fn value=\"eval\"/></variable></config>",
                "not supported",
            ),
        ];
        for (text, why) in cases {
            let e = parse(Monitored::Vm, text).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
        assert_eq!(py_int(" +60 "), Some(60));
        assert_eq!(py_int("1_000"), Some(1000));
        assert_eq!(py_int("1__0"), None);
        assert_eq!(py_float(" 1e3 "), Some(1000.0));
    }

    #[test]
    fn an_element_without_a_name_is_refused() {
        // Found by the perfmon_xml fuzz target: it read, and its pretty form (`</>`) did not.
        for doc in ["<\r\r/>", "< a=\"1\"/>", "<\t></\t>"] {
            assert!(parse_document(doc).is_err(), "{doc:?} read");
        }
        assert!(parse_document("<config/>").is_ok());
    }

    #[test]
    fn pretty_print_is_minidoms() {
        let vs = parse(
            Monitored::Vm,
            "<config><variable><name value=\"cpu_usage\"/><alarm_trigger_level value=\"0.5\"/></variable></config>",
        )
        .unwrap();
        assert_eq!(
            vs[0].xml,
            "<variable>\n\t<name value=\"cpu_usage\"/>\n\t<alarm_trigger_level value=\"0.5\"/>\n</variable>\n"
        );
        // Whitespace text is kept, each on a line of its own; single text children inline.
        let doc = parse_document("<variable>\n  <name value=\"a&amp;b\"/>\n<x>t&lt;</x></variable>").unwrap();
        assert_eq!(
            doc.pretty(),
            "<variable>\n\t\n  \n\t<name value=\"a&amp;b\"/>\n\t\n\n\t<x>t&lt;</x>\n</variable>\n"
        );
    }
}
