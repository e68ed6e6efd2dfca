//! The in-memory event log: every committed change appends `(id, class, ref, op)`.
//!
//! `event.from` waits on the log's watch channel until it passes the caller's token, so
//! thousands of waiting calls are futures, not threads.

use crate::schema::ClassId;
use parking_lot::Mutex;
use std::collections::VecDeque;
use tokio::sync::watch;

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOp {
    /// Created.
    Add,
    /// Changed.
    Mod,
    /// Destroyed.
    Del,
}

impl EventOp {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventOp::Add => "add",
            EventOp::Mod => "mod",
            EventOp::Del => "del",
        }
    }
}

/// One logged change.
#[derive(Clone, Debug)]
pub struct EventEntry {
    /// Generation of the change (strictly increasing).
    pub id: u64,
    /// Class of the object.
    pub class: ClassId,
    /// The object's ref.
    pub reference: String,
    /// The object's uuid, where it has one (kept for `del`).
    pub uuid: String,
    /// What happened.
    pub op: EventOp,
    /// When (seconds since the epoch).
    pub time: i64,
}

/// A ref or uuid as the log keeps it: the usual forms (`OpaqueRef:` and a lower-case
/// hyphenated uuid, or the bare uuid) as the uuid's 16 bytes, anything else as it came.
/// The text given back is always exactly the text put in.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Text {
    Uuid([u8; 16]),
    OpaqueRef([u8; 16]),
    Other(Box<str>),
}

const OPAQUE_REF: &str = "OpaqueRef:";

/// The bytes of a uuid written exactly as the uuid crate writes it (lower-case, hyphenated),
/// or `None` for any other text (the upper-case, braced or unhyphenated forms would not read
/// back the same).
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let u = uuid::Uuid::try_parse(s).ok()?;
    let mut buf = uuid::Uuid::encode_buffer();
    (u.hyphenated().encode_lower(&mut buf) == s).then(|| *u.as_bytes())
}

fn push_uuid(out: &mut String, bytes: &[u8; 16]) {
    let mut buf = uuid::Uuid::encode_buffer();
    out.push_str(uuid::Uuid::from_bytes(*bytes).hyphenated().encode_lower(&mut buf));
}

impl Text {
    fn new(s: &str) -> Text {
        if let Some(u) = parse_uuid(s) {
            return Text::Uuid(u);
        }
        if let Some(u) = s.strip_prefix(OPAQUE_REF).and_then(parse_uuid) {
            return Text::OpaqueRef(u);
        }
        Text::Other(s.into())
    }

    fn to_text(&self) -> String {
        match self {
            Text::Uuid(u) => {
                let mut s = String::with_capacity(36);
                push_uuid(&mut s, u);
                s
            }
            Text::OpaqueRef(u) => {
                let mut s = String::with_capacity(OPAQUE_REF.len() + 36);
                s.push_str(OPAQUE_REF);
                push_uuid(&mut s, u);
                s
            }
            Text::Other(s) => s.as_ref().to_owned(),
        }
    }
}

/// One change as the log keeps it (a quarter the size of an [`EventEntry`] with its strings:
/// the log holds up to 65,536 of them).
#[derive(Clone, Debug)]
pub struct LoggedEvent {
    id: u64,
    time: i64,
    class: ClassId,
    reference: Text,
    uuid: Text,
    op: EventOp,
}

impl LoggedEvent {
    /// A change of `class`'s object `reference` (uuid `uuid`, empty where it has none).
    pub fn new(id: u64, class: ClassId, reference: &str, uuid: &str, op: EventOp, time: i64) -> LoggedEvent {
        LoggedEvent {
            id,
            time,
            class,
            reference: Text::new(reference),
            uuid: Text::new(uuid),
            op,
        }
    }

    /// Its id.
    pub fn id(&self) -> u64 {
        self.id
    }

    fn entry(&self) -> EventEntry {
        EventEntry {
            id: self.id,
            class: self.class,
            reference: self.reference.to_text(),
            uuid: self.uuid.to_text(),
            op: self.op,
            time: self.time,
        }
    }
}

/// A bounded log of recent changes.
pub struct EventLog {
    /// The entries, and the newest id of those dropped (or forgotten): the log answers every
    /// token from that one on.
    entries: Mutex<(VecDeque<LoggedEvent>, u64)>,
    latest: watch::Sender<u64>,
    capacity: usize,
}

impl EventLog {
    /// A log keeping at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        let (latest, _) = watch::channel(0);
        EventLog {
            entries: Mutex::new((VecDeque::with_capacity(capacity.min(4096)), 0)),
            latest,
            capacity,
        }
    }

    /// Appends entries (in id order) and wakes every waiter once.
    pub fn append(&self, batch: Vec<LoggedEvent>) {
        let Some(last) = batch.last().map(|e| e.id) else {
            return;
        };
        {
            let mut guard = self.entries.lock();
            let (q, dropped) = &mut *guard;
            for e in batch {
                if q.len() >= self.capacity {
                    if let Some(old) = q.pop_front() {
                        *dropped = old.id;
                    }
                }
                q.push_back(e);
            }
        }
        self.latest.send_replace(last);
    }

    /// Moves the newest id on to `id` where it is behind (changes up to `id` are all logged,
    /// some of them being of no object: the pool database's other keys).
    pub fn advance(&self, id: u64) {
        self.latest.send_if_modified(|latest| {
            let moved = *latest < id;
            if moved {
                *latest = id;
            }
            moved
        });
    }

    /// Forgets what happened up to `id` (the store was reloaded as of `id`): tokens older
    /// than `id` are answered from the objects, as for a token the log no longer reaches.
    pub fn forget_up_to(&self, id: u64) {
        {
            let mut guard = self.entries.lock();
            guard.1 = guard.1.max(id);
        }
        self.advance(id);
    }

    /// The id of the newest entry.
    pub fn latest(&self) -> u64 {
        *self.latest.borrow()
    }

    /// A receiver that changes whenever the log grows.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Entries with id greater than `since`, or `None` when the log no longer reaches back
    /// that far (the caller must resynchronise from the store).
    pub fn since(&self, since: u64) -> Option<Vec<EventEntry>> {
        let guard = self.entries.lock();
        let (q, dropped) = &*guard;
        if since < *dropped {
            return None;
        }
        let start = q.partition_point(|e| e.id <= since);
        Some(q.iter().skip(start).map(LoggedEvent::entry).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_reads_back_exactly() {
        for s in [
            "OpaqueRef:0b6c5a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2e",
            "0b6c5a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2e",
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "OpaqueRef:NULL",
            "OpaqueRef:0B6C5A3E-1F2D-4C5B-9A8E-7D6C5B4A3F2E",
            "0B6C5A3E-1F2D-4C5B-9A8E-7D6C5B4A3F2E",
            "{0b6c5a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2e}",
            "0b6c5a3e1f2d4c5b9a8e7d6c5b4a3f2e",
            "0b6c5a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2",
            "0b6c5a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2g",
            "0b6c5a3e+1f2d-4c5b-9a8e-7d6c5b4a3f2e",
            "0b6c5a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2é",
            "urn:uuid:0b6c5a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2e",
            "OpaqueRef:0b6c5a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2e ",
            " OpaqueRef:0b6c5a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2e",
            "opaqueref:0b6c5a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2e",
            "",
            "ééééééééééééééééééééééééééééééééééé",
            "a-bc-def",
        ] {
            assert_eq!(Text::new(s).to_text(), s, "{s:?}");
        }
        assert!(matches!(
            Text::new("OpaqueRef:0b6c5a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2e"),
            Text::OpaqueRef(_)
        ));
        assert!(matches!(
            Text::new("0b6c5a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2e"),
            Text::Uuid(_)
        ));
        assert!(matches!(Text::new("OpaqueRef:NULL"), Text::Other(_)));
        // Every 36-byte string with hyphens in place and one odd byte elsewhere stays as text.
        let base = "0b6c5a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2e";
        for i in 0..36 {
            for c in [b'g', b'A', b'F', b'-', b' ', b'0', b'f'] {
                let mut b = base.as_bytes().to_vec();
                b[i] = c;
                let s = String::from_utf8(b).unwrap();
                assert_eq!(Text::new(&s).to_text(), s);
            }
        }
    }

    #[test]
    fn logged_events_stay_small() {
        // 65,536 of them: 80 bytes each is 5 MiB, with no further allocation in the usual case.
        assert!(std::mem::size_of::<LoggedEvent>() <= 80);
        let e = LoggedEvent::new(
            1,
            ClassId(0),
            "OpaqueRef:0b6c5a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2e",
            "",
            EventOp::Add,
            0,
        );
        assert!(matches!(e.uuid, Text::Other(ref s) if s.is_empty()));
    }

    #[test]
    fn since_gives_back_what_was_appended() {
        let log = EventLog::new(3);
        let class = ClassId(0);
        log.append(
            (1..=4)
                .map(|i| {
                    let r = format!("OpaqueRef:0000000{i}-1f2d-4c5b-9a8e-7d6c5b4a3f2e");
                    LoggedEvent::new(
                        i,
                        class,
                        &r,
                        if i == 2 { "" } else { "odd uuid" },
                        EventOp::Mod,
                        100 + i as i64,
                    )
                })
                .collect(),
        );
        assert_eq!(log.latest(), 4);
        assert!(log.since(0).is_none(), "entry 1 fell out");
        let got = log.since(1).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].id, 2);
        assert_eq!(got[0].reference, "OpaqueRef:00000002-1f2d-4c5b-9a8e-7d6c5b4a3f2e");
        assert_eq!(got[0].uuid, "");
        assert_eq!(got[1].uuid, "odd uuid");
        assert_eq!(got[2].time, 104);
        assert_eq!(got[2].op, EventOp::Mod);
        assert!(log.since(4).unwrap().is_empty());
    }
}
