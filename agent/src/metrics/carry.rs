//! A VM's history follows the VM when it moves, as the reference moves it: its round-robin
//! database goes to the host it now runs on (`PUT /rrd?uuid=`, the reference's
//! `migrate_rrd`), after every move to another host, in the pool or to another pool; and when
//! it leaves for another pool, its messages go to that pool's master (`PUT
//! /messages?cls=&uuid=`, the reference's `send_messages`) and are destroyed here.
//!
//! The bodies are the reference's: the database's XML dump (with its internal fields), and
//! messages as a run of XML documents, one `<message>` each (`ref`, `name`, `priority`, `cls`,
//! `obj_uuid`, `timestamp`, `uuid`, `body`; `generation` is read and ignored).

use super::http::StatsError;
use super::live::{self, RrdInfo};
use super::rrd::Rrd;
use crate::error::ApiError;
use crate::objects::{new_ref, new_uuid};
use crate::pool::remote::Remote;
use crate::schema::enums::Cls;
use crate::schema::{class_ids, fields};
use crate::value::{default_object, format_datetime, parse_datetime, Object, Value};
use crate::Agent;
use quick_xml::events::{BytesText, Event};
use std::sync::Arc;

/// Takes the VM's database off this host, from memory or from where it was saved: the XML the
/// receiving end reads. `None` when this host has none.
pub fn take_vm_rrd(agent: &Agent, uuid: &str) -> Option<String> {
    let dir = super::rrd_dir(agent);
    let held = agent.metrics.live.lock().vms.remove(uuid);
    let rrd = held.map(|i| i.rrd).or_else(|| live::load(&dir, uuid));
    live::remove(&dir, uuid);
    rrd.map(|r| r.to_xml(true))
}

/// Takes in a database sent for `uuid`: a VM's replaces what this host holds for it (in
/// memory when the VM runs here, else where databases are saved); with `archive`, a VM's or
/// this pool's host's is saved where databases are saved.
pub fn receive_rrd(agent: &Agent, uuid: &str, xml: &str, archive: bool) -> Result<(), StatsError> {
    let vm = super::vm_by_uuid(agent, uuid);
    let is_host = vm.is_none() && agent.store.ref_by_uuid(class_ids::host, uuid).is_some();
    if vm.is_none() && !is_host {
        return Err(StatsError::NotFound(format!(
            "put_rrd: invalid 'uuid' parameter {uuid}"
        )));
    }
    if is_host && !archive {
        return Err(StatsError::BadRequest("put_rrd: cannot archive host RRD".into()));
    }
    let rrd = Rrd::from_xml(xml).map_err(|e| StatsError::BadRequest(format!("put_rrd: not an RRD: {e}")))?;
    if rrd.timestep != live::STEP {
        return Err(StatsError::BadRequest(format!(
            "put_rrd: the RRD's step is {} s, not {} s",
            rrd.timestep,
            live::STEP
        )));
    }
    let resident = vm.filter(|v| !archive && v.get(fields::VM::resident_on).as_ref_str() == Some(agent.host.as_str()));
    match resident {
        Some(v) => {
            let domid = v.get(fields::VM::domid).as_int().unwrap_or(-1);
            agent
                .metrics
                .live
                .lock()
                .vms
                .insert(uuid.to_owned(), RrdInfo::loaded(rrd, domid));
            tracing::info!(uuid, "put_rrd: the VM's database is here now");
        }
        None => {
            live::save(&super::rrd_dir(agent), uuid, &rrd)
                .map_err(|e| StatsError::Failed(format!("put_rrd: saving it: {e}")))?;
            tracing::info!(uuid, archive, "put_rrd: the database is saved here");
        }
    }
    Ok(())
}

/// After a move of the VM `uuid` to another host: its database goes there (`proof`: the
/// query that proves the sender, empty when the pool secret does). A failure is logged: the
/// VM runs there either way, its history starting afresh.
pub async fn send_vm_rrd(agent: &Agent, uuid: &str, remote: &Remote, proof: &str) {
    let Some(xml) = take_vm_rrd(agent, uuid) else {
        tracing::debug!(uuid, "migration: the VM has no database here to send");
        return;
    };
    let path = format!("/rrd?uuid={uuid}{proof}");
    match remote.put(&path, xml.into_bytes()).await {
        Ok(()) => tracing::info!(uuid, to = remote.address(), "migration: the VM's database went with it"),
        Err(e) => {
            tracing::warn!(uuid, to = remote.address(), error = %e, "migration: the VM's database could not be sent")
        }
    }
}

/// One message as it travels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    /// Its reference where it was made.
    pub reference: String,
    /// `name`.
    pub name: String,
    /// `priority`.
    pub priority: i64,
    /// `cls`, as the wire spells it.
    pub cls: String,
    /// `obj_uuid`.
    pub obj_uuid: String,
    /// `timestamp`, seconds since the epoch.
    pub timestamp: i64,
    /// `uuid`.
    pub uuid: String,
    /// `body`.
    pub body: String,
}

impl Carried {
    /// The `message` object it becomes under `reference` (`None` when its class is not one
    /// the reference knows). An empty uuid gets a new one.
    pub fn to_object(&self, reference: &str) -> Option<Object> {
        let cls = Cls::parse(&self.cls)?;
        let mut m = default_object(class_ids::message, reference);
        let uuid = if self.uuid.is_empty() {
            new_uuid()
        } else {
            self.uuid.clone()
        };
        m.set(fields::message::uuid, Value::str(uuid));
        m.set(fields::message::name, Value::str(self.name.as_str()));
        m.set(fields::message::priority, Value::Int(self.priority));
        m.set(fields::message::cls, cls.value());
        m.set(fields::message::obj_uuid, Value::str(self.obj_uuid.as_str()));
        m.set(fields::message::timestamp, Value::DateTime(self.timestamp));
        m.set(fields::message::body, Value::str(self.body.as_str()));
        Some(m)
    }
}

/// The messages as the reference sends them: one XML document per message.
pub fn messages_xml(messages: &[Arc<Object>]) -> String {
    let mut out = String::new();
    for m in messages {
        let text = |f| m.get(f).as_str().unwrap_or("").to_owned();
        let cls = text(fields::message::cls);
        let time = match m.get(fields::message::timestamp) {
            Value::DateTime(t) => *t,
            _ => 0,
        };
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?><message>");
        for (tag, value) in [
            ("ref", m.reference.clone()),
            ("name", text(fields::message::name)),
            (
                "priority",
                m.get(fields::message::priority).as_int().unwrap_or(0).to_string(),
            ),
            ("cls", cls),
            ("obj_uuid", text(fields::message::obj_uuid)),
            ("timestamp", format_datetime(time)),
            ("uuid", text(fields::message::uuid)),
            ("body", text(fields::message::body)),
        ] {
            out.push('<');
            out.push_str(tag);
            out.push('>');
            out.push_str(&quick_xml::escape::escape(value.as_str()));
            out.push_str("</");
            out.push_str(tag);
            out.push('>');
        }
        out.push_str("</message>");
    }
    out
}

/// Reads a run of message documents (the reference's format). Unknown elements, values that
/// do not parse and text outside a message are refused.
pub fn parse_messages(text: &str) -> Result<Vec<Carried>, String> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut out = Vec::new();
    let mut current: Option<Carried> = None;
    let mut field: Option<String> = None;
    let mut value = String::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.buffer_position()))?;
        match event {
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::DocType(_) | Event::PI(_) => {}
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                match (&current, &field) {
                    (None, _) if name == "message" => current = Some(Carried::default()),
                    (Some(_), None) => {
                        field = Some(name);
                        value.clear();
                    }
                    _ => return Err(format!("unexpected element <{name}>")),
                }
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                match (&mut current, &field) {
                    (Some(m), None) => set_field(m, &name, "")?,
                    (None, _) if name == "message" => return Err("a message with no fields".into()),
                    _ => return Err(format!("unexpected element <{name}/>")),
                }
            }
            Event::Text(t) => add_text(&t, &field, &mut value)?,
            Event::CData(t) => {
                if field.is_none() {
                    return Err("character data outside a field".into());
                }
                value.push_str(&String::from_utf8_lossy(&t.into_inner()));
            }
            Event::End(_) => match (field.take(), current.take()) {
                (Some(name), Some(mut m)) => {
                    set_field(&mut m, &name, &value)?;
                    current = Some(m);
                }
                (None, Some(m)) => out.push(m),
                (_, None) => return Err("an end tag outside a message".into()),
            },
        }
    }
    if current.is_some() {
        return Err("the last message is not complete".into());
    }
    Ok(out)
}

fn add_text(t: &BytesText, field: &Option<String>, value: &mut String) -> Result<(), String> {
    let text = t.unescape().map_err(|e| format!("bad text: {e}"))?;
    if field.is_some() {
        value.push_str(&text);
        Ok(())
    } else if text.trim().is_empty() {
        Ok(())
    } else {
        Err(format!(
            "text outside a field: {:?}",
            text.chars().take(40).collect::<String>()
        ))
    }
}

fn set_field(m: &mut Carried, name: &str, value: &str) -> Result<(), String> {
    match name {
        "ref" => m.reference = value.to_owned(),
        "name" => m.name = value.to_owned(),
        "priority" => {
            m.priority = value
                .trim()
                .parse()
                .map_err(|_| format!("priority {value:?} is not an integer"))?
        }
        "cls" => m.cls = value.to_owned(),
        "obj_uuid" => m.obj_uuid = value.to_owned(),
        "timestamp" => {
            m.timestamp = parse_datetime(value.trim()).ok_or_else(|| format!("timestamp {value:?} is not a date"))?
        }
        "uuid" => m.uuid = value.to_owned(),
        "body" => m.body = value.to_owned(),
        "generation" => {
            let _: i64 = value
                .trim()
                .parse()
                .map_err(|_| format!("generation {value:?} is not an integer"))?;
        }
        other => return Err(format!("unknown field <{other}>")),
    }
    Ok(())
}

/// Takes in messages sent about the object of class `cls` with uuid `uuid` (which must be
/// here): each keeps its uuid, time and text; one whose uuid is here already is not made
/// twice. Returns how many were made.
pub async fn receive_messages(agent: &Agent, cls: &str, uuid: &str, body: &str) -> Result<usize, StatsError> {
    let class = Cls::parse(cls).ok_or_else(|| StatsError::BadRequest(format!("put_messages: bad class {cls}")))?;
    if !super::messages::object_exists(agent, class, uuid) {
        return Err(StatsError::NotFound(format!("put_messages: bad uuid {uuid}")));
    }
    let carried = parse_messages(body).map_err(|e| StatsError::BadRequest(format!("put_messages: {e}")))?;
    let mut objects = Vec::with_capacity(carried.len());
    for c in carried {
        if !c.uuid.is_empty() && agent.store.ref_by_uuid(class_ids::message, &c.uuid).is_some() {
            continue;
        }
        let reference = if c.reference.starts_with("OpaqueRef:")
            && c.reference.len() <= 64
            && agent.store.get(class_ids::message, &c.reference).is_none()
        {
            c.reference.clone()
        } else {
            new_ref()
        };
        let m = c
            .to_object(&reference)
            .ok_or_else(|| StatsError::BadRequest(format!("put_messages: a message of class {:?}", c.cls)))?;
        objects.push(m);
    }
    let n = objects.len();
    agent
        .store
        .write(|tx| {
            for m in &objects {
                tx.put(m.clone());
            }
            Ok(())
        })
        .await
        .map_err(|e: ApiError| StatsError::Failed(format!("put_messages: {}", e.description().join(" "))))?;
    tracing::info!(cls, uuid, messages = n, "put_messages: messages taken in");
    Ok(n)
}

/// After a VM (uuid `uuid`) moved to another pool: its messages go to that pool's master on
/// `session`, and are destroyed here once it took them. A failure is logged and they stay.
pub async fn send_vm_messages(agent: &Agent, uuid: &str, master: &Remote, session: &str) {
    let mut mine: Vec<Arc<Object>> = agent
        .store
        .all(class_ids::message)
        .into_iter()
        .filter(|m| m.get(fields::message::cls) == &Cls::VM.value() && m.str_field("obj_uuid") == uuid)
        .collect();
    if mine.is_empty() {
        return;
    }
    mine.sort_by_key(|m| m.generation);
    let body = messages_xml(&mine);
    let path = format!("/messages?session_id={session}&cls=VM&uuid={uuid}");
    match master.put(&path, body.into_bytes()).await {
        Ok(()) => {
            let refs: Vec<String> = mine.iter().map(|m| m.reference.clone()).collect();
            if let Err(e) = super::messages::destroy(agent, &refs).await {
                tracing::warn!(uuid, error = %e, "migration: the VM's messages went, but could not be removed here");
            }
            tracing::info!(
                uuid,
                messages = refs.len(),
                to = master.address(),
                "migration: the VM's messages went with it"
            );
        }
        Err(e) => {
            tracing::warn!(uuid, to = master.address(), error = %e, "migration: the VM's messages could not be sent")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::tests::env;

    #[actix::test]
    async fn messages_are_taken_in_once_with_their_uuid_time_and_text() {
        let e = env().await;
        let host_uuid = e.agent.uuid_of(class_ids::host, &e.agent.host).unwrap();
        let c = Carried {
            cls: "Host".into(),
            obj_uuid: host_uuid.clone(),
            ..one("OpaqueRef:carried-1", "sent <along>")
        };
        let text = messages_xml(&[Arc::new(c.to_object("OpaqueRef:carried-1").unwrap())]);
        assert_eq!(receive_messages(&e.agent, "Host", &host_uuid, &text).await.unwrap(), 1);
        let r = e.agent.store.ref_by_uuid(class_ids::message, &c.uuid).unwrap();
        assert_eq!(r, "OpaqueRef:carried-1");
        let m = e.agent.store.get(class_ids::message, &r).unwrap();
        assert_eq!(m.str_field("body"), "sent <along>");
        assert_eq!(*m.get(fields::message::timestamp), Value::DateTime(1_800_000_000));
        // The same run again makes nothing twice.
        assert_eq!(receive_messages(&e.agent, "Host", &host_uuid, &text).await.unwrap(), 0);
        // Refusals change nothing: an object that is not here, a class not known, a bad run.
        let before = e.agent.store.count(class_ids::message);
        assert!(matches!(
            receive_messages(&e.agent, "VM", "no-such-vm", &text).await,
            Err(StatsError::NotFound(_))
        ));
        assert!(matches!(
            receive_messages(&e.agent, "Nothing", &host_uuid, &text).await,
            Err(StatsError::BadRequest(_))
        ));
        let bad = format!("{text}<message><colour/></message>");
        assert!(matches!(
            receive_messages(&e.agent, "Host", &host_uuid, &bad).await,
            Err(StatsError::BadRequest(_))
        ));
        assert_eq!(e.agent.store.count(class_ids::message), before);
    }

    #[actix::test]
    async fn an_rrd_is_refused_unless_it_is_one_of_a_known_owner() {
        let e = env().await;
        let host_uuid = e.agent.uuid_of(class_ids::host, &e.agent.host).unwrap();
        let ds = || {
            vec![super::super::rrd::Ds::new(
                "cpu0",
                super::super::rrd::DsType::Gauge,
                0.0,
                1.0,
                10.0,
            )]
        };
        let rrd = Rrd::new(ds(), live::archives(false), live::STEP, 1_800_000_000.0).to_xml(true);
        assert!(matches!(
            receive_rrd(&e.agent, "no-such-uuid", &rrd, false),
            Err(StatsError::NotFound(_))
        ));
        assert!(matches!(
            receive_rrd(&e.agent, &host_uuid, &rrd, false),
            Err(StatsError::BadRequest(_))
        ));
        assert!(matches!(
            receive_rrd(&e.agent, &host_uuid, "<rrd>", true),
            Err(StatsError::BadRequest(_))
        ));
        let other_step = Rrd::new(ds(), live::archives(false), 60, 1_800_000_000.0).to_xml(true);
        assert!(matches!(
            receive_rrd(&e.agent, &host_uuid, &other_step, true),
            Err(StatsError::BadRequest(_))
        ));
        // A host's, archived: saved where databases are, and read back.
        receive_rrd(&e.agent, &host_uuid, &rrd, true).unwrap();
        assert!(live::load(&super::super::rrd_dir(&e.agent), &host_uuid).is_some());
    }

    fn one(reference: &str, body: &str) -> Carried {
        Carried {
            reference: reference.into(),
            name: "VM_STARTED".into(),
            priority: 5,
            cls: "VM".into(),
            obj_uuid: "0b0e5d1e-6a0c-4f1e-9d2f-5b7c9b1f0a11".into(),
            timestamp: 1_800_000_000,
            uuid: "5e0c6f9a-1b2c-4d3e-8f90-112233445566".into(),
            body: body.into(),
        }
    }

    #[test]
    fn the_reference_form_reads_back() {
        // A run of documents, as the reference writes it, a generation included.
        let text = concat!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><message><generation>7</generation>",
            "<ref>OpaqueRef:1</ref><name>VM_STARTED</name><priority>5</priority><cls>VM</cls>",
            "<obj_uuid>0b0e5d1e-6a0c-4f1e-9d2f-5b7c9b1f0a11</obj_uuid><timestamp>20270115T08:00:00Z</timestamp>",
            "<uuid>5e0c6f9a-1b2c-4d3e-8f90-112233445566</uuid><body>a &lt;b&gt; &amp; c</body></message>",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><message><ref>OpaqueRef:2</ref><name>X</name>",
            "<priority>1</priority><cls>Host</cls><obj_uuid>u</obj_uuid><timestamp>20270115T08:00:01Z</timestamp>",
            "<uuid>v</uuid><body/></message>"
        );
        let got = parse_messages(text).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], one("OpaqueRef:1", "a <b> & c"));
        assert_eq!(got[1].cls, "Host");
        assert_eq!(got[1].body, "");
        assert_eq!(got[1].timestamp, 1_800_000_001);
    }

    #[test]
    fn bad_runs_are_refused() {
        for bad in [
            "<message><colour>red</colour></message>",
            "<message><priority>high</priority></message>",
            "<message><timestamp>yesterday</timestamp></message>",
            "<message><name>x</name>",
            "stray<message></message>",
            "<other/>",
            "<message><name><b>x</b></name></message>",
            "</message>",
        ] {
            assert!(parse_messages(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_messages("").unwrap(), vec![]);
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        let text = {
            let m = one("OpaqueRef:abc", "line 1\nline 2 <&> \"q\"")
                .to_object("OpaqueRef:abc")
                .unwrap();
            messages_xml(&[Arc::new(m.clone()), Arc::new(m)])
        };
        let got = parse_messages(&text).unwrap();
        assert_eq!(got, vec![one("OpaqueRef:abc", "line 1\nline 2 <&> \"q\""); 2]);
    }
}
