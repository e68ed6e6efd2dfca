//! `event.from` as a stream, and the types of its batches.

use crate::codec;
use crate::{AnyRecord, Call, Class, Error, EventRecord, Session};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

/// What `event.from` returns: the events since the token, the number of objects of each
/// class subscribed to, and the token to pass next.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventBatch {
    /// The events, oldest first.
    pub events: Vec<EventRecord>,
    /// How many objects of each subscribed class exist (lower-case class names).
    pub valid_ref_counts: BTreeMap<String, i64>,
    /// Pass it to the next `event.from` to get the events after these.
    pub token: String,
}

/// An event's snapshot: the object's record as it was when the event was made, as it arrived
/// (over XML-RPC ints are strings in it). [`EventRecord::record`] reads it as its class's
/// record; [`Snapshot::decode`] as a given one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Snapshot(Json);

impl Snapshot {
    /// A snapshot holding this value.
    pub fn from_json(j: Json) -> Snapshot {
        Snapshot(j)
    }

    /// The value as it arrived.
    pub fn as_json(&self) -> &Json {
        &self.0
    }

    /// Reads it as a record of class `C`.
    pub fn decode<C: Class>(&self) -> Result<C::Record, Error>
    where
        C::Record: serde::de::DeserializeOwned,
    {
        codec::decode(&self.0)
    }
}

impl EventRecord {
    /// The snapshot read as its class's record (`None` without a snapshot, as in `del`
    /// events, or for a class this SDK does not know).
    pub fn record(&self) -> Result<Option<AnyRecord>, Error> {
        match &self.snapshot {
            Some(s) => AnyRecord::decode(&self.class, s.as_json()),
            None => Ok(None),
        }
    }

    /// Whether the event is about class `C` (events name classes in lower case).
    pub fn is<C: Class>(&self) -> bool {
        self.class.eq_ignore_ascii_case(C::NAME)
    }
}

/// The events of some classes, from `event.from` called again and again with the token of
/// the batch before.
///
/// Each `event.from` waits up to [`timeout`](EventStream::timeout) seconds on the server for
/// something to happen (an empty batch just leads to the next call). The stream ends after
/// yielding an error, such as `EVENTS_LOST` (the client fell too far behind: read the
/// objects again and start a new stream) or `SESSION_INVALID`.
#[must_use = "streams do nothing unless polled"]
pub struct EventStream {
    session: Session,
    classes: Vec<String>,
    token: String,
    timeout: f64,
    ready: VecDeque<EventRecord>,
    in_flight: Option<Call<EventBatch>>,
    done: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("classes", &self.classes)
            .field("token", &self.token)
            .finish()
    }
}

impl EventStream {
    pub(crate) fn new(session: Session, classes: Vec<String>, token: String) -> EventStream {
        EventStream {
            session,
            classes,
            token,
            timeout: 30.0,
            ready: VecDeque::new(),
            in_flight: None,
            done: false,
        }
    }

    /// How long each `event.from` waits on the server for events (30 s by default).
    pub fn timeout(mut self, seconds: f64) -> Self {
        self.timeout = seconds;
        self
    }

    /// The token of the last batch received: events after it have not been received yet
    /// (those already yielded or waiting to be are before it).
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl Stream for EventStream {
    type Item = Result<EventRecord, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(e) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(e)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let call = match &mut this.in_flight {
                Some(c) => c,
                None => this
                    .in_flight
                    .insert(this.session.event().from(&this.classes, &this.token, this.timeout)),
            };
            match Pin::new(call).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(batch)) => {
                    this.in_flight = None;
                    this.token = batch.token;
                    this.ready.extend(batch.events);
                }
                Poll::Ready(Err(e)) => {
                    this.in_flight = None;
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}
