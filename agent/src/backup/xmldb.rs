//! The pool database backup (`GET /pool/xmldbdump`, Xen Orchestra's "pool metadata" backup)
//! and its restore (`PUT /pool/xmldbdump[?dry_run=true]`), in the reference's format
//! ([`super::xmldb_format`]).
//!
//! A restore works as the reference's does. The backup is read and checked (its schema version
//! must be this daemon's, else `RESTORE_INCOMPATIBLE_VERSION`), then prepared for this host:
//! every host but the backup's pool master is dropped with its PIFs; the master takes this
//! host's uuid and its control domain this host's control domain's uuid; each of its PIFs is
//! the management interface when its device is this host's management device, and a physical
//! one must have a device of the same name here (`RESTORE_TARGET_MISSING_DEVICE [device]`),
//! whose MAC it takes; the management device must be in the backup
//! (`RESTORE_TARGET_MGMT_IF_NOT_IN_BACKUP`). A dry run stops there. Otherwise the prepared
//! database is written durably to `<state dir>/restore-db.xml` and the daemon restarts (as
//! `host.restart_agent` does); at start, before anything reads the store, [`apply_staged`]
//! replaces every object of the backup's tables with the backup's, in one write, and removes
//! the file. Sessions, tasks and roles are this daemon's own and left as they are; the
//! derived sets (`VM.VBDs`, …) are computed from their members' side.

use super::xmldb_format::{self as format, Database, Row, Table, SCHEMA};
use crate::schema::{class_ids, derived_sets, fields, partner, ClassId, FieldId};
use crate::store::{members_by_owner, Store};
use crate::value::{default_object, Object, Value};
use crate::{Agent, ApiError};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The file a restore leaves for the next start.
pub const STAGED_FILE: &str = "restore-db.xml";

/// Classes a restore leaves as they are: they belong to this daemon, not to the backup.
const KEPT: &[&str] = &["session", "task", "role"];

/// The staged restore's path in `state_dir`.
pub fn staged_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STAGED_FILE)
}

/// The whole database as a backup.
pub fn dump(agent: &Agent) -> String {
    format::write(&database_of(&agent.store))
}

fn database_of(store: &Store) -> Database {
    let mut generation = 0;
    let tables = ClassId::all()
        .filter(|c| format::has_table(*c))
        .map(|class| {
            let rows = if format::has_rows(class) {
                let mut objects = store.all(class);
                objects.sort_by(|a, b| a.reference.cmp(&b.reference));
                objects
                    .iter()
                    .map(|o| {
                        generation = generation.max(o.generation);
                        row_of(o)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            Table {
                name: class.name().to_owned(),
                rows,
            }
        })
        .collect();
    Database {
        schema: SCHEMA,
        generation,
        tables,
    }
}

fn row_of(o: &Object) -> Row {
    let class = o.class;
    Row {
        reference: o.reference.clone(),
        mtime: o.generation,
        // Creation generations are not kept: the last change's stands for both.
        ctime: o.generation,
        columns: class
            .def()
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                (
                    format::column_name(class, f.name),
                    format::value_text(o.get(FieldId(i))),
                )
            })
            .collect(),
    }
}

fn invalid(msg: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("the database backup is not valid: {msg}"))
}

/// The objects a backup holds (rows of classes this daemon keeps as its own, or does not
/// know, left out; columns it does not know ignored; the derived sets computed).
pub fn objects_of(db: &Database) -> Result<Vec<Object>, ApiError> {
    if db.schema != SCHEMA {
        tracing::warn!(
            backup = ?db.schema,
            expected = ?SCHEMA,
            "restore: the backup's schema version is not this daemon's"
        );
        return Err(ApiError::RestoreIncompatibleVersion {});
    }
    let mut out = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for t in &db.tables {
        let Some(class) = ClassId::by_name(&t.name).filter(|c| c.name() == t.name) else {
            tracing::warn!(table = %t.name, rows = t.rows.len(), "restore: a table of a class this daemon does not know; skipped");
            continue;
        };
        if !format::has_rows(class) || KEPT.contains(&class.name()) {
            continue;
        }
        let columns = format::columns(class);
        let derived = derived_sets(class);
        let mut unknown: HashSet<&str> = HashSet::new();
        for row in &t.rows {
            if !row.reference.starts_with("OpaqueRef:") || !seen.insert(&row.reference) {
                return Err(invalid(format!(
                    "{} row {:?}: a bad or repeated ref",
                    t.name, row.reference
                )));
            }
            let mut obj = default_object(class, &row.reference);
            obj.generation = row.mtime;
            for (col, text) in &row.columns {
                let Some(&f) = columns.get(col.as_str()) else {
                    unknown.insert(col);
                    continue;
                };
                if derived.contains(&f) {
                    continue;
                }
                let v = format::value_from_text(class.field(f).ty, text)
                    .map_err(|e| invalid(format!("{} {} {col}: {e}", t.name, row.reference)))?;
                obj.set(f, v);
            }
            out.push(obj);
        }
        if !unknown.is_empty() {
            let mut unknown: Vec<&str> = unknown.into_iter().collect();
            unknown.sort_unstable();
            tracing::info!(table = %t.name, columns = ?unknown, "restore: columns this daemon does not know; ignored");
        }
    }
    fill_derived_sets(&mut out);
    Ok(out)
}

/// Computes every derived set of `objects` from its members' side, members in ref order, as
/// the store does when it loads.
fn fill_derived_sets(objects: &mut [Object]) {
    for class in ClassId::all() {
        for &field in derived_sets(class) {
            let Some(member) = partner(class, field) else {
                continue;
            };
            let mut members = members_by_owner(objects.iter().filter(|o| o.class == member.class), member.field);
            for o in objects.iter_mut().filter(|o| o.class == class) {
                let mut refs = members.remove(&o.reference).unwrap_or_default();
                refs.sort();
                o.set(field, Value::set(refs.into_iter().map(Value::reference).collect()));
            }
        }
    }
}

fn find<'a>(objects: &'a [Object], class: ClassId, reference: &str) -> Option<&'a Object> {
    objects.iter().find(|o| o.class == class && o.reference == reference)
}

fn find_mut<'a>(objects: &'a mut [Object], class: ClassId, reference: &str) -> Option<&'a mut Object> {
    objects
        .iter_mut()
        .find(|o| o.class == class && o.reference == reference)
}

/// Prepares a backup's objects for this host (see the module documentation).
pub fn prepare(agent: &Agent, objects: &mut Vec<Object>) -> Result<(), ApiError> {
    use fields::{host as h, pool as p, PIF as pif, VM as vm};
    let master = objects
        .iter()
        .find(|o| o.class == class_ids::pool)
        .and_then(|pool| pool.get(p::master).as_ref_str().map(str::to_owned))
        .filter(|m| find(objects, class_ids::host, m).is_some())
        .ok_or_else(|| invalid("it names no pool master"))?;
    // Only the master stays, with its PIFs.
    let gone: HashSet<String> = objects
        .iter()
        .filter(|o| o.class == class_ids::host && o.reference != master)
        .map(|o| o.reference.clone())
        .collect();
    objects.retain(|o| {
        !(o.class == class_ids::host && gone.contains(&o.reference)
            || o.class == class_ids::PIF && o.get(pif::host).as_ref_str().is_some_and(|h| gone.contains(h)))
    });
    let here = agent
        .store
        .get(class_ids::host, &agent.host)
        .ok_or_else(|| invalid("no host"))?;
    let my_uuid = here.get(h::uuid).clone();
    let my_dom0 = here
        .get(h::control_domain)
        .as_ref_str()
        .and_then(|r| agent.store.get(class_ids::VM, r))
        .map(|d| d.get(vm::uuid).clone());
    let backup_dom0 = {
        let m = find_mut(objects, class_ids::host, &master).ok_or_else(|| invalid("no master"))?;
        m.set(h::uuid, my_uuid);
        m.get(h::control_domain).as_ref_str().map(str::to_owned)
    };
    if let (Some(dom0), Some(uuid)) = (backup_dom0, my_dom0) {
        if let Some(d) = find_mut(objects, class_ids::VM, &dom0) {
            d.set(vm::uuid, uuid);
        }
    }
    // This host's PIFs by device, and its management device.
    let mine: Vec<_> = agent
        .store
        .all(class_ids::PIF)
        .into_iter()
        .filter(|o| o.get(pif::host).as_ref_str() == Some(agent.host.as_str()))
        .collect();
    let mgmt_dev = mine
        .iter()
        .find(|o| o.get(pif::management).as_bool() == Some(true))
        .map(|o| o.str_field("device").to_owned());
    let physical: HashMap<String, Value> = mine
        .iter()
        .filter(|o| o.get(pif::physical).as_bool() == Some(true))
        .map(|o| (o.str_field("device").to_owned(), o.get(pif::MAC).clone()))
        .collect();
    let mut found_mgmt = false;
    for o in objects
        .iter_mut()
        .filter(|o| o.class == class_ids::PIF && o.get(pif::host).as_ref_str() == Some(master.as_str()))
    {
        let device = o.str_field("device").to_owned();
        let is_mgmt = mgmt_dev.as_deref() == Some(device.as_str());
        found_mgmt |= is_mgmt;
        o.set(pif::management, Value::Bool(is_mgmt));
        if o.get(pif::physical).as_bool() == Some(true) {
            let mac = physical
                .get(&device)
                .ok_or_else(|| ApiError::RestoreTargetMissingDevice { device: device.clone() })?;
            o.set(pif::MAC, mac.clone());
        }
    }
    if mgmt_dev.is_some() && !found_mgmt {
        return Err(ApiError::RestoreTargetMgmtIfNotInBackup {});
    }
    Ok(())
}

/// Reads, checks and prepares a backup; unless `dry_run`, stages it durably for the next
/// start and has the daemon restart.
pub fn restore(agent: &Agent, bytes: &[u8], dry_run: bool) -> Result<(), ApiError> {
    let db = format::parse(bytes).map_err(invalid)?;
    let mut objects = objects_of(&db)?;
    prepare(agent, &mut objects)?;
    tracing::info!(
        objects = objects.len(),
        dry_run,
        "restore: the database backup is valid for this host"
    );
    if dry_run {
        return Ok(());
    }
    let staged = Database {
        schema: SCHEMA,
        generation: db.generation,
        tables: tables_of(&objects),
    };
    let path = staged_path(&agent.state_dir);
    crate::fsutil::write_private(&path, format::write(&staged).as_bytes())
        .map_err(|e| ApiError::internal(format!("writing {}: {e}", path.display())))?;
    tracing::warn!(path = %path.display(), "restore: the database backup is staged; the daemon restarts to use it");
    crate::host::agent_process::request(crate::host::agent_process::AfterStop::Restart);
    Ok(())
}

fn tables_of(objects: &[Object]) -> Vec<Table> {
    let mut by_class: Vec<Vec<Row>> = ClassId::all().map(|_| Vec::new()).collect();
    for o in objects {
        by_class[o.class.0].push(row_of(o));
    }
    ClassId::all()
        .filter(|c| format::has_table(*c))
        .map(|c| Table {
            name: c.name().to_owned(),
            rows: std::mem::take(&mut by_class[c.0]),
        })
        .collect()
}

/// At start: applies a staged restore, if there is one, replacing every object of the
/// backup's classes with the backup's in one write; the file is removed once that write is
/// durable. A staged file that cannot be read is moved aside (`restore-db.xml.failed`) and
/// the daemon starts on its database as it was. Returns whether a restore was applied.
pub async fn apply_staged(store: &Store, state_dir: &Path) -> bool {
    let path = staged_path(state_dir);
    let Ok(bytes) = std::fs::read(&path) else {
        return false;
    };
    let objects = format::parse(&bytes).map_err(invalid).and_then(|db| objects_of(&db));
    let result = match objects {
        Ok(objects) => {
            let count = objects.len();
            store
                .write(|tx| {
                    for class in ClassId::all().filter(|c| format::has_rows(*c) && !KEPT.contains(&c.name())) {
                        for o in store.all(class) {
                            tx.delete(class, &o.reference);
                        }
                    }
                    for o in &objects {
                        tx.put(o.clone());
                    }
                    Ok(())
                })
                .await
                .map(|()| count)
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(count) => {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!(path = %path.display(), error = %e, "restore: applied, but the staged file stays");
            }
            tracing::warn!(objects = count, "restore: the database is now the backup's");
            true
        }
        Err(e) => {
            let aside = path.with_extension("xml.failed");
            tracing::error!(path = %path.display(), error = %e, aside = %aside.display(), "restore: the staged database cannot be applied; starting on the database as it was");
            let _ = std::fs::rename(&path, &aside);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_holds_every_persisted_object_and_reads_back_to_the_same_objects() {
        let store = Store::open(None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            store
                .write(|tx| {
                    let mut vm = default_object(class_ids::VM, "OpaqueRef:vm");
                    vm.set(fields::VM::name_label, Value::str("a VM\twith 100% spaces"));
                    vm.set(fields::VM::memory_static_max, Value::Int(1 << 30));
                    vm.set(fields::VM::other_config, Value::string_map([("k", "v'w")]));
                    tx.put(vm);
                    let mut vbd = default_object(class_ids::VBD, "OpaqueRef:vbd");
                    vbd.set(fields::VBD::VM, Value::reference("OpaqueRef:vm"));
                    tx.put(vbd);
                    tx.put(default_object(class_ids::session, "OpaqueRef:s"));
                    Ok(())
                })
                .await
                .unwrap();
        });
        let text = format::write(&database_of(&store));
        assert!(text.contains("name__label=\"a%.VM%twith%.100%%%.spaces\""), "{text}");
        assert!(text.contains("memory__static_max=\"1073741824\""));
        assert!(text.contains("<table name=\"session\"></table>"));
        assert!(!text.contains("<table name=\"message\""));
        let objects = objects_of(&format::parse(text.as_bytes()).unwrap()).unwrap();
        let vm = find(&objects, class_ids::VM, "OpaqueRef:vm").unwrap();
        assert_eq!(vm.get(fields::VM::name_label), &Value::str("a VM\twith 100% spaces"));
        assert_eq!(vm.get(fields::VM::other_config), &Value::string_map([("k", "v'w")]));
        assert_eq!(
            vm.get(fields::VM::VBDs),
            &Value::set(vec![Value::reference("OpaqueRef:vbd")])
        );
        assert!(find(&objects, class_ids::session, "OpaqueRef:s").is_none());
        let mut wrong = format::parse(text.as_bytes()).unwrap();
        wrong.schema = (5, 1);
        assert_eq!(objects_of(&wrong).unwrap_err().code(), "RESTORE_INCOMPATIBLE_VERSION");
    }
}
