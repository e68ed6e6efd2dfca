//! A small element tree read with quick-xml, for the stats documents (rrdtool dumps, the
//! `xport` form of `/rrd_updates`): elements, their text (whitespace trimmed), no attributes
//! kept. Depth and size are bounded: the input may come from a file or a client.

use quick_xml::events::Event;
use quick_xml::Reader;

/// One element.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Element {
    /// Its name.
    pub name: String,
    /// Its text (the concatenation of its text nodes, trimmed).
    pub text: String,
    /// Its child elements, in order.
    pub children: Vec<Element>,
}

impl Element {
    /// The first child of that name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }
    /// Every child of that name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
}

/// The deepest nesting accepted.
const MAX_DEPTH: usize = 32;
/// The most elements accepted (a host's dump with many data sources has some 10^5).
const MAX_ELEMENTS: usize = 4_000_000;

/// Reads a document into its root element.
pub fn parse(text: &str) -> Result<Element, String> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        match reader.read_event() {
            Err(e) => return Err(format!("at byte {}: {e}", reader.buffer_position())),
            Ok(Event::Eof) => break,
            Ok(Event::Start(s)) => {
                if root.is_some() {
                    return Err("content after the root element".into());
                }
                count += 1;
                if stack.len() >= MAX_DEPTH || count > MAX_ELEMENTS {
                    return Err("the document is too deep or too large".into());
                }
                stack.push(Element {
                    name: String::from_utf8_lossy(s.name().as_ref()).into_owned(),
                    ..Element::default()
                });
            }
            Ok(Event::Empty(s)) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err("the document is too large".into());
                }
                let e = Element {
                    name: String::from_utf8_lossy(s.name().as_ref()).into_owned(),
                    ..Element::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(e),
                    None if root.is_none() => root = Some(e),
                    None => return Err("content after the root element".into()),
                }
            }
            Ok(Event::End(_)) => {
                let Some(e) = stack.pop() else {
                    return Err("an end tag without a start".into());
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(e),
                    None => root = Some(e),
                }
            }
            Ok(Event::Text(t)) => {
                let Some(top) = stack.last_mut() else {
                    return Err("text outside the root element".into());
                };
                let s = t.unescape().map_err(|e| e.to_string())?;
                top.text.push_str(s.trim());
            }
            Ok(Event::CData(c)) => {
                let Some(top) = stack.last_mut() else {
                    return Err("text outside the root element".into());
                };
                top.text.push_str(&String::from_utf8_lossy(&c.into_inner()));
            }
            Ok(Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_)) => {}
        }
    }
    if !stack.is_empty() {
        return Err("unclosed elements".into());
    }
    root.ok_or_else(|| "no root element".into())
}

/// Appends text with `&`, `<` and `>` escaped, as element content.
pub fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_elements_and_text() {
        let e = parse("<?xml version=\"1.0\"?>\n<a><b> x &amp; y </b><c/><b>2</b></a>").unwrap();
        assert_eq!(e.name, "a");
        assert_eq!(e.child("b").unwrap().text, "x & y");
        assert_eq!(e.children_named("b").count(), 2);
        assert!(e.child("c").unwrap().children.is_empty());
        for bad in ["", "<a>", "<a></b>", "<a/><b/>", "text", "</a>", "<a></a><b></b>"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(parse(&deep).is_err());
        let mut s = String::new();
        escape_into("<a&b>", &mut s);
        assert_eq!(s, "&lt;a&amp;b&gt;");
    }
}
