//! A transaction: what a write reads and changes before the store commits it.

use super::Store;
use crate::error::ApiError;
use crate::schema::ClassId;
use crate::value::Object;
use crate::FastHash as Fast;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// A transaction: reads see its own pending writes.
pub struct Tx<'a> {
    pub(super) store: &'a Store,
    /// What this transaction wrote, in the order first written (`None`: deleted).
    pub(super) entries: Vec<(ClassId, String, Option<Arc<Object>>)>,
    /// Where each written object is in `entries`, by class and ref.
    pub(super) index: HashMap<ClassId, HashMap<String, usize, Fast>, Fast>,
    /// On the etcd backend, the generation (etcd mod revision, 0 for none) of every object
    /// read from the store, compared at commit: `None` on the others, which commit under one
    /// lock and need no comparison.
    pub(super) reads: Option<RefCell<HashMap<(ClassId, String), u64>>>,
}

impl<'a> Tx<'a> {
    pub(super) fn new(store: &'a Store, track_reads: bool) -> Tx<'a> {
        Tx {
            store,
            entries: Vec::new(),
            index: HashMap::default(),
            reads: track_reads.then(RefCell::default),
        }
    }

    fn slot(&self, class: ClassId, reference: &str) -> Option<usize> {
        self.index.get(&class)?.get(reference).copied()
    }

    /// Reads the store's own state of an object, noting what was read where reads are compared.
    fn read_store(&self, class: ClassId, reference: &str) -> Option<Arc<Object>> {
        let cur = self.store.get(class, reference);
        if let Some(reads) = &self.reads {
            reads
                .borrow_mut()
                .entry((class, reference.to_owned()))
                .or_insert_with(|| cur.as_ref().map_or(0, |o| o.generation));
        }
        cur
    }

    fn set_slot(&mut self, class: ClassId, reference: &str, v: Option<Arc<Object>>) -> usize {
        match self.slot(class, reference) {
            Some(i) => {
                self.entries[i].2 = v;
                i
            }
            None => {
                let i = self.entries.len();
                self.entries.push((class, reference.to_owned(), v));
                self.index.entry(class).or_default().insert(reference.to_owned(), i);
                i
            }
        }
    }

    /// Reads an object, seeing this transaction's writes.
    pub fn get(&self, class: ClassId, reference: &str) -> Option<Arc<Object>> {
        match self.slot(class, reference) {
            Some(i) => self.entries[i].2.clone(),
            None => self.read_store(class, reference),
        }
    }

    /// Changes an object in place (copying it once per transaction, not once per change);
    /// `HANDLE_INVALID` if it does not exist.
    pub fn modify<T>(
        &mut self,
        class: ClassId,
        reference: &str,
        f: impl FnOnce(&mut Object) -> T,
    ) -> Result<T, ApiError> {
        let i = match self.slot(class, reference) {
            Some(i) => i,
            None => {
                let cur = self.read_store(class, reference);
                self.set_slot(class, reference, cur)
            }
        };
        match &mut self.entries[i].2 {
            Some(obj) => Ok(f(Arc::make_mut(obj))),
            None => Err(ApiError::handle_invalid(class.name(), reference)),
        }
    }

    /// Reads an object or fails with `HANDLE_INVALID`.
    pub fn must_get(&self, class: ClassId, reference: &str) -> Result<Arc<Object>, ApiError> {
        self.get(class, reference)
            .ok_or_else(|| ApiError::handle_invalid(class.name(), reference))
    }

    /// Writes (creates or replaces) an object.
    pub fn put(&mut self, obj: Object) {
        let (class, reference) = (obj.class, obj.reference.clone());
        self.set_slot(class, &reference, Some(Arc::new(obj)));
    }

    /// Deletes an object.
    pub fn delete(&mut self, class: ClassId, reference: &str) {
        self.set_slot(class, reference, None);
    }

    /// Whether a uuid is taken in the class (seeing this transaction's writes).
    pub fn uuid_taken(&self, class: ClassId, uuid: &str) -> bool {
        if self
            .entries
            .iter()
            .any(|(c, _, o)| *c == class && o.as_ref().is_some_and(|o| o.uuid() == Some(uuid)))
        {
            return true;
        }
        self.store.ref_by_uuid(class, uuid).is_some()
    }
}
