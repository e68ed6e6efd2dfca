//! A class's objects in memory: one set found by ref, one by uuid, both holding the object.

use crate::value::Object;
use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;

/// Refs and uuids are long texts hashed on every read and write.
use crate::FastHash as Fast;

/// A class's objects, found by ref, and those with a uuid, found by uuid. Both sets hold the
/// object itself and look up by its own text, so no ref or uuid is held twice.
#[derive(Default)]
pub(super) struct Table {
    pub(super) objects: HashSet<Keyed<ByRef>, Fast>,
    pub(super) uuids: HashSet<Keyed<ByUuid>, Fast>,
}

impl Table {
    pub(super) fn get(&self, reference: &str) -> Option<Arc<Object>> {
        self.objects.get(reference).map(|o| o.0.clone())
    }

    /// Takes the object with this ref out of both sets.
    pub(super) fn remove(&mut self, reference: &str) -> Option<Arc<Object>> {
        let Keyed(o, _) = self.objects.take(reference)?;
        self.uuids.remove(ByUuid::key(&o));
        Some(o)
    }

    /// Puts `obj` in, in place of any object with its ref; findable by its uuid where it has one.
    pub(super) fn insert(&mut self, obj: Arc<Object>) {
        self.remove(&obj.reference);
        if !ByUuid::key(&obj).is_empty() {
            self.uuids.replace(Keyed(obj.clone(), PhantomData));
        }
        self.objects.replace(Keyed(obj, PhantomData));
    }

    /// Every object.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Arc<Object>> {
        self.objects.iter().map(|o| &o.0)
    }
}

/// Which text of an object a set finds it by.
pub(super) trait KeyOf {
    fn key(o: &Object) -> &str;
}

/// By its ref.
pub(super) struct ByRef;

impl KeyOf for ByRef {
    fn key(o: &Object) -> &str {
        &o.reference
    }
}

/// By its uuid (empty for objects without one, which are not put in).
pub(super) struct ByUuid;

impl KeyOf for ByUuid {
    fn key(o: &Object) -> &str {
        o.uuid().unwrap_or("")
    }
}

/// An object in a set that finds it by `K`'s text.
pub(super) struct Keyed<K>(pub(super) Arc<Object>, PhantomData<K>);

impl<K: KeyOf> Borrow<str> for Keyed<K> {
    fn borrow(&self) -> &str {
        K::key(&self.0)
    }
}

impl<K: KeyOf> Hash for Keyed<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes: lookups go through `Borrow<str>`.
        K::key(&self.0).hash(state);
    }
}

impl<K: KeyOf> PartialEq for Keyed<K> {
    fn eq(&self, other: &Keyed<K>) -> bool {
        K::key(&self.0) == K::key(&other.0)
    }
}

impl<K: KeyOf> Eq for Keyed<K> {}
