//! Typed object references.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

/// The null reference.
pub const NULL_REF: &str = "OpaqueRef:NULL";

/// A class of the API, as a type. The markers in [`crate::class`] implement it.
pub trait Class: 'static {
    /// The class's wire name (`VM`, `host`, `VM_guest_metrics`).
    const NAME: &'static str;
    /// The class's record.
    type Record;
}

/// A reference to an object of class `C` (`OpaqueRef:…` on the wire).
///
/// A reference of one class cannot be passed where another class's is expected:
/// `VM.start` takes a [`VMRef`](crate::VMRef), which is `Ref<class::VM>`.
pub struct Ref<C> {
    id: String,
    class: PhantomData<fn() -> C>,
}

impl<C> Ref<C> {
    /// A reference with this text.
    pub fn new(id: impl Into<String>) -> Ref<C> {
        Ref {
            id: id.into(),
            class: PhantomData,
        }
    }

    fn from_text(s: &str) -> Ref<C> {
        Ref::new(s)
    }

    /// `OpaqueRef:NULL`, the reference to no object.
    pub fn null() -> Ref<C> {
        Ref::new(NULL_REF)
    }

    /// Whether this is the null reference (or empty).
    pub fn is_null(&self) -> bool {
        self.id == NULL_REF || self.id.is_empty()
    }

    /// The reference's text.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The reference's text, owned.
    pub fn into_string(self) -> String {
        self.id
    }

    /// The same text as a reference of another class (for the untyped places of the API:
    /// an event's `ref`, `message.obj_uuid` lookups, `task.result`).
    pub fn cast<D>(self) -> Ref<D> {
        Ref::new(self.id)
    }
}

impl<C> Clone for Ref<C> {
    fn clone(&self) -> Self {
        Ref::new(self.id.clone())
    }
}

impl<C> Default for Ref<C> {
    /// The null reference.
    fn default() -> Self {
        Ref::null()
    }
}

impl<C> PartialEq for Ref<C> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl<C> Eq for Ref<C> {}

impl<C> PartialOrd for Ref<C> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<C> Ord for Ref<C> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.id.cmp(&other.id)
    }
}

impl<C> Hash for Ref<C> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl<C: Class> fmt::Debug for Ref<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ref<{}>({})", C::NAME, self.id)
    }
}

impl<C> fmt::Display for Ref<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl<C> From<&str> for Ref<C> {
    fn from(s: &str) -> Self {
        Ref::new(s)
    }
}

impl<C> From<String> for Ref<C> {
    fn from(s: String) -> Self {
        Ref::new(s)
    }
}

impl<C> AsRef<str> for Ref<C> {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl<C> serde::Serialize for Ref<C> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id)
    }
}

impl<'de, C> serde::Deserialize<'de> for Ref<C> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::codec::deserialize_text(d, Ref::from_text)
    }
}
