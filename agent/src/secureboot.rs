//! UEFI mode, Secure Boot readiness and vTPM contents.
//!
//! - `VM.get_secureboot_readiness` reads the VM's firmware (`HVM_boot_params["firmware"]`),
//!   `platform["secureboot"]` and the EFI variables its `NVRAM["EFI-variables"]` holds, and
//!   says whether PK, KEK, db and dbx are set.
//! - `VM.set_uefi_mode` does to the VM's stored EFI variables what the reference's
//!   `varstore-sb-state` tool does: it removes PK, KEK, db and dbx (Setup Mode). For `user`
//!   the tool then installs the signed keys from the host's auth files (`dbx.auth`, `db.auth`,
//!   `KEK.auth`, `PK.auth`); this daemon does not verify and apply signed EFI variable
//!   updates, so `user` is carried out only where the tool would install nothing (the pool's
//!   certificates hold neither `dbx.auth` nor `db.auth`) and is refused with
//!   `VALUE_NOT_SUPPORTED` otherwise, before anything changes. Nothing is simulated: the
//!   variables are removed from the stored blob, which is written back in its own format.
//!   The result text is this daemon's own account of what was done (the reference returns
//!   the tool's output, which is free text).
//! - `pool.get_guest_secureboot_readiness` says which auth files the pool's UEFI certificates
//!   hold. The reference lists the host's varstore directory, which it fills from the
//!   certificates (`custom_uefi_certificates` when set, else `uefi_certificates`: a base64
//!   tar archive of the auth files); this daemon has no such directory and reads the archive.
//! - `VTPM.get_contents` and `VTPM.set_contents` keep a vTPM's state (base64 text) in a
//!   `secret` object, as the reference does. The reference links the VTPM to its secret by an
//!   internal field (`VTPM.contents`) that the published datamodel, and so this daemon's
//!   schema, does not carry; here the secret holding a vTPM's contents has the vTPM's uuid.
//!   The contents are never logged.

use crate::call::{Call, Entry};
use crate::entry;
use crate::error::ApiError;
use crate::objects;
use crate::schema::enums::{PoolGuestSecurebootReadiness, VmSecurebootReadiness, VmUefiMode};
use crate::schema::{class_ids, fields};
use crate::store::{Store, Tx};
use crate::value::{default_object, Object, Value};
use crate::Agent;
use std::fmt::Write as _;

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::VM, "get_secureboot_readiness", |agent, _, c| {
            vm_secureboot_readiness(&agent, c.ref_arg(0)?).map(Value::from)
        }),
        entry!(class_ids::VM, "set_uefi_mode", |agent, _, c| {
            set_uefi_mode(&agent, &c).await
        }),
        entry!(class_ids::pool, "get_guest_secureboot_readiness", |agent, _, _c| {
            Ok(pool_guest_secureboot_readiness(&agent).into())
        }),
        entry!(class_ids::VTPM, "get_contents", |agent, _, c| {
            get_contents(&agent, c.ref_arg(0)?)
        }),
        entry!(class_ids::VTPM, "set_contents", |agent, _, c| {
            set_contents(&agent, &c).await
        }),
    ]
}

/// The key of a VM's `NVRAM` that holds its EFI variables.
const EFI_VARIABLES: &str = "EFI-variables";

/// The EFI global variable GUID (8be4df61-93ca-11d2-aa0d-00e098032b8c), as stored.
const EFI_GLOBAL_VARIABLE: [u8; 16] = [
    0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c,
];
/// The image security database GUID (d719b2cb-3d3a-4596-a3bc-dad00e67656f), as stored.
const IMAGE_SECURITY_DATABASE: [u8; 16] = [
    0xcb, 0xb2, 0x19, 0xd7, 0x3a, 0x3d, 0x96, 0x45, 0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f,
];

/// A Secure Boot key variable.
struct Key {
    name: &'static str,
    guid: [u8; 16],
}

/// The variables Setup Mode clears, in the order the reference's tool removes them.
const SECURE_BOOT_KEYS: [Key; 4] = [
    Key {
        name: "PK",
        guid: EFI_GLOBAL_VARIABLE,
    },
    Key {
        name: "KEK",
        guid: EFI_GLOBAL_VARIABLE,
    },
    Key {
        name: "db",
        guid: IMAGE_SECURITY_DATABASE,
    },
    Key {
        name: "dbx",
        guid: IMAGE_SECURITY_DATABASE,
    },
];

/// The auth files User Mode installs, in the varstore's order, and whether a missing one ends
/// the installation (an optional one is skipped).
const USER_MODE_AUTH_FILES: [(&str, bool); 4] = [("dbx", false), ("db", true), ("KEK", true), ("PK", true)];

// ---------------------------------------------------------------------------------------------
// VM.get_secureboot_readiness

/// Whether the VM's firmware is UEFI: `HVM_boot_params["firmware"]`, BIOS when absent;
/// any other value is `INVALID_VALUE`.
fn is_uefi(vm: &Object) -> Result<bool, ApiError> {
    match vm
        .get(fields::VM::HVM_boot_params)
        .map_get("firmware")
        .and_then(Value::as_str)
    {
        None | Some("bios") => Ok(false),
        Some("uefi") => Ok(true),
        Some(other) => Err(ApiError::invalid_value("HVM-boot-params['firmware']", other)),
    }
}

/// `platform["secureboot"]` as the reference reads a platform flag: `true`/`1` and
/// `false`/`0` (any case); anything else, or no key, is false.
fn secureboot_enabled(vm: &Object) -> bool {
    vm.get(fields::VM::platform)
        .map_get("secureboot")
        .and_then(Value::as_str)
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// `VM.get_secureboot_readiness`.
fn vm_secureboot_readiness(agent: &Agent, vm: &str) -> Result<VmSecurebootReadiness, ApiError> {
    let rec = agent
        .store
        .get(class_ids::VM, vm)
        .ok_or_else(|| ApiError::handle_invalid("VM", vm))?;
    if !is_uefi(&rec)? {
        return Ok(VmSecurebootReadiness::not_supported);
    }
    if !secureboot_enabled(&rec) {
        return Ok(VmSecurebootReadiness::disabled);
    }
    let Some(blob) = rec.get(fields::VM::NVRAM).map_get(EFI_VARIABLES) else {
        return Ok(VmSecurebootReadiness::first_boot);
    };
    let vars = VarStore::decode(blob.as_str().unwrap_or(""))?;
    // The reference lists the variables' names, whatever their GUIDs.
    let has = |name: &str| vars.vars.iter().any(|v| v.name() == name);
    Ok(match (has("PK"), has("KEK"), has("db"), has("dbx")) {
        (true, true, true, true) => VmSecurebootReadiness::ready,
        (true, true, true, false) => VmSecurebootReadiness::ready_no_dbx,
        (false, _, _, _) => VmSecurebootReadiness::setup_mode,
        _ => VmSecurebootReadiness::certs_incomplete,
    })
}

// ---------------------------------------------------------------------------------------------
// VM.set_uefi_mode

/// `VM.set_uefi_mode(self, mode)`: clears PK, KEK, db and dbx from the VM's stored EFI
/// variables (see the module's documentation for `user`). Answers what was done, one line per
/// variable.
async fn set_uefi_mode(agent: &Agent, c: &Call) -> Result<Value, ApiError> {
    let vm = c.ref_arg(0)?.to_owned();
    let mode = c
        .arg(1)
        .as_str()
        .and_then(VmUefiMode::parse)
        .ok_or_else(|| ApiError::field_type("mode"))?;
    if agent.store.get(class_ids::VM, &vm).is_none() {
        return Err(ApiError::handle_invalid("VM", &vm));
    }
    let user_mode_end = match mode {
        VmUefiMode::setup => None,
        VmUefiMode::user => Some(user_mode_keys(agent)?),
    };
    let report = agent
        .store
        .write(|tx| {
            let rec = tx.must_get(class_ids::VM, &vm)?;
            let nvram = rec.get(fields::VM::NVRAM);
            let mut report = String::new();
            let mut removed_any = false;
            match nvram.map_get(EFI_VARIABLES) {
                // No variables stored yet (the VM never booted): nothing to remove.
                None => {
                    for k in &SECURE_BOOT_KEYS {
                        let _ = writeln!(report, "{} was not set", k.name);
                    }
                }
                Some(blob) => {
                    let mut vars = VarStore::decode(blob.as_str().unwrap_or(""))?;
                    for k in &SECURE_BOOT_KEYS {
                        let removed = vars.remove(&k.guid, k.name);
                        removed_any |= removed;
                        let what = if removed { "removed" } else { "was not set" };
                        let _ = writeln!(report, "{} {what}", k.name);
                    }
                    if removed_any {
                        let pairs = nvram
                            .as_map()
                            .iter()
                            .map(|(k, v)| {
                                if k.as_str() == Some(EFI_VARIABLES) {
                                    (k.clone(), Value::str(vars.encode()))
                                } else {
                                    (k.clone(), v.clone())
                                }
                            })
                            .collect();
                        objects::set_field(tx, class_ids::VM, &vm, fields::VM::NVRAM, Value::map(pairs))?;
                    }
                }
            }
            if let Some(end) = user_mode_end {
                let _ = writeln!(
                    report,
                    "no {end} certificate in the pool's UEFI certificates: no key installed, the VM stays in Setup Mode"
                );
            }
            Ok(report)
        })
        .await?;
    Ok(Value::str(report))
}

/// For `user` mode: the auth file whose absence ends the installation of keys, when the
/// installation would install none; `VALUE_NOT_SUPPORTED` when it would install a key (the
/// daemon does not apply signed EFI variable updates).
fn user_mode_keys(agent: &Agent) -> Result<&'static str, ApiError> {
    let files = pool_auth_files(agent);
    for (name, required) in USER_MODE_AUTH_FILES {
        if files.iter().any(|f| f.strip_suffix(".auth") == Some(name)) {
            return Err(ApiError::ValueNotSupported {
                field: "mode".into(),
                value: VmUefiMode::user.name().into(),
                reason: format!(
                    "installing the pool's signed {name} key into a VM's EFI variables is not carried out by this daemon"
                ),
            });
        }
        if required {
            return Ok(name);
        }
    }
    // Every file is optional only if the table above says so; it does not.
    Ok("PK")
}

// ---------------------------------------------------------------------------------------------
// pool.get_guest_secureboot_readiness

/// The names of the auth files the pool's active UEFI certificates hold:
/// `custom_uefi_certificates` when set, else `uefi_certificates` (a base64 tar archive). An
/// unreadable archive holds none, as the reference's directory then stays empty.
fn pool_auth_files(agent: &Agent) -> Vec<String> {
    let Some(pool) = agent.store.get(class_ids::pool, &agent.pool_ref()) else {
        return Vec::new();
    };
    let text = |f| pool.get(f).as_str().unwrap_or("").to_owned();
    let custom = text(fields::pool::custom_uefi_certificates);
    let active = if custom.is_empty() {
        text(fields::pool::uefi_certificates)
    } else {
        custom
    };
    base64_decode(&active)
        .map(|archive| tar_file_names(&archive))
        .unwrap_or_default()
}

/// `pool.get_guest_secureboot_readiness`. Like the reference, it answers for this daemon's
/// pool whatever pool ref it is given.
fn pool_guest_secureboot_readiness(agent: &Agent) -> PoolGuestSecurebootReadiness {
    let files = pool_auth_files(agent);
    let has = |name: &str| files.iter().any(|f| f == name);
    match (has("PK.auth"), has("KEK.auth"), has("db.auth"), has("dbx.auth")) {
        (true, true, true, true) => PoolGuestSecurebootReadiness::ready,
        (true, true, true, false) => PoolGuestSecurebootReadiness::ready_no_dbx,
        _ => PoolGuestSecurebootReadiness::not_ready,
    }
}

// ---------------------------------------------------------------------------------------------
// VTPM.get_contents, VTPM.set_contents

/// The uuid of a vTPM, which its contents' secret shares.
fn vtpm_uuid(agent: &Agent, vtpm: &str) -> Result<String, ApiError> {
    let rec = agent
        .store
        .get(class_ids::VTPM, vtpm)
        .ok_or_else(|| ApiError::handle_invalid("VTPM", vtpm))?;
    match rec.uuid() {
        Some(u) if !u.is_empty() => Ok(u.to_owned()),
        _ => Err(ApiError::internal(format!("VTPM {vtpm} has no uuid"))),
    }
}

/// `VTPM.get_contents`: the secret's value; empty for a vTPM whose contents were never set
/// (the reference gives a new vTPM an empty secret).
fn get_contents(agent: &Agent, vtpm: &str) -> Result<Value, ApiError> {
    let uuid = vtpm_uuid(agent, vtpm)?;
    let value = agent
        .store
        .ref_by_uuid(class_ids::secret, &uuid)
        .and_then(|r| agent.store.get(class_ids::secret, &r))
        .map(|s| s.get(fields::secret::value).clone())
        .unwrap_or_else(Value::empty_str);
    Ok(value)
}

/// `VTPM.set_contents(self, contents)`: the contents must be base64 text (`INTERNAL_ERROR`
/// otherwise, as the reference answers; the reference's own check is inert at the recorded
/// commit because its decoder reports failure by result, not by exception, but the
/// contents are meant to be base64 and this daemon holds to that). They replace the
/// secret's value; the secret is created on the first call.
async fn set_contents(agent: &Agent, c: &Call) -> Result<Value, ApiError> {
    let vtpm = c.ref_arg(0)?;
    let contents = c.str_arg(1).to_owned();
    let uuid = vtpm_uuid(agent, vtpm)?;
    if base64_decode(&contents).is_none() {
        return Err(ApiError::internal("the VTPM contents are not base64-encoded"));
    }
    agent
        .store
        .write(|tx| store_contents(&agent.store, tx, &uuid, contents.clone()))
        .await?;
    Ok(Value::None)
}

/// In a write: the secret with the vTPM's uuid gets the contents (it is made if missing).
fn store_contents(store: &Store, tx: &mut Tx, uuid: &str, contents: String) -> Result<(), ApiError> {
    match store.ref_by_uuid(class_ids::secret, uuid) {
        Some(secret) => objects::set_field(
            tx,
            class_ids::secret,
            &secret,
            fields::secret::value,
            Value::str(contents),
        ),
        None => {
            let mut secret = default_object(class_ids::secret, &objects::new_ref());
            secret.set(fields::secret::uuid, Value::str(uuid));
            secret.set(fields::secret::value, Value::str(contents));
            objects::create(tx, secret)
        }
    }
}

/// In a write: destroys the secret holding a vTPM's contents, if there is one (for whoever
/// destroys the vTPM, as the reference's `VTPM.destroy` destroys its secret).
pub fn forget_contents(store: &Store, tx: &mut Tx, vtpm: &Object) -> Result<(), ApiError> {
    let Some(uuid) = vtpm.uuid().filter(|u| !u.is_empty()) else {
        return Ok(());
    };
    match store.ref_by_uuid(class_ids::secret, uuid) {
        Some(secret) if tx.get(class_ids::secret, &secret).is_some() => {
            objects::destroy(tx, class_ids::secret, &secret)
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// The stored EFI variables

/// The EFI variables as a VM's `NVRAM["EFI-variables"]` holds them: base64 of the varstore's
/// serialized form. That form is little-endian: the magic `VARS`, a u32 version (1 or 2), a
/// u64 count and a u64 length of the variables; version 2 then has 268 bytes of ancillary
/// state (kept as they are); then each variable: u64 length and its UTF-16 name, u64 length
/// and its data, its GUID (16 bytes), then its attributes (u32), timestamp (16 bytes) and
/// certificate digest (32 bytes), kept as they are.
struct VarStore {
    version: u32,
    ancillary: Vec<u8>,
    vars: Vec<EfiVar>,
}

struct EfiVar {
    name: Vec<u8>,
    data: Vec<u8>,
    guid: [u8; 16],
    /// Attributes, timestamp and certificate digest.
    tail: Vec<u8>,
}

const MAGIC: &[u8; 4] = b"VARS";
const ANCILLARY_V2: usize = 8 + 0x104;
const TAIL: usize = 4 + 16 + 32;
const NAME_LIMIT: u64 = 4096;
const DATA_LIMIT: u64 = 57344;
const MAX_VARIABLES: u64 = 131072 / 128;

impl EfiVar {
    /// The name as the reference's listing prints it: the printable ASCII of each UTF-16
    /// code unit's low byte.
    fn name(&self) -> String {
        self.name
            .chunks(2)
            .filter_map(|u| u.first().copied())
            .filter(|b| (0x20..0x7f).contains(b))
            .map(char::from)
            .collect()
    }
}

/// Reads the serialized form front to back.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.rest.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    /// A length-prefixed field: not empty, at most `limit` bytes.
    fn data(&mut self, limit: u64, what: &str) -> Result<Vec<u8>, String> {
        let n = self.u64()?;
        if n == 0 || n > limit {
            return Err(format!("a variable {what} of {n} bytes"));
        }
        let n = usize::try_from(n).map_err(|_| format!("a variable {what} of {n} bytes"))?;
        Ok(self.take(n)?.to_vec())
    }
}

impl VarStore {
    /// Decodes the NVRAM value; `INTERNAL_ERROR` when it is not a variable store.
    fn decode(text: &str) -> Result<VarStore, ApiError> {
        let bytes = base64_decode(text).ok_or_else(|| ApiError::internal("the VM's EFI variables are not base64"))?;
        VarStore::parse(&bytes)
            .map_err(|why| ApiError::internal(format!("the VM's EFI variables are unreadable: {why}")))
    }

    fn parse(bytes: &[u8]) -> Result<VarStore, String> {
        let mut r = Reader { rest: bytes };
        if r.take(MAGIC.len())? != MAGIC {
            return Err("no VARS magic".into());
        }
        let version = r.u32()?;
        if version > 2 {
            return Err(format!("version {version}"));
        }
        let count = r.u64()?;
        if count > MAX_VARIABLES {
            return Err(format!("{count} variables"));
        }
        let _length = r.u64()?;
        let ancillary = if version == 2 {
            r.take(ANCILLARY_V2)?.to_vec()
        } else {
            Vec::new()
        };
        let mut vars = Vec::new();
        for _ in 0..count {
            let name = r.data(NAME_LIMIT, "name")?;
            let data = r.data(DATA_LIMIT, "value")?;
            let mut guid = [0u8; 16];
            guid.copy_from_slice(r.take(16)?);
            let tail = r.take(TAIL)?.to_vec();
            vars.push(EfiVar { name, data, guid, tail });
        }
        if !r.rest.is_empty() {
            return Err(format!("{} bytes after the variables", r.rest.len()));
        }
        Ok(VarStore {
            version,
            ancillary,
            vars,
        })
    }

    /// The serialized form, base64-encoded.
    fn encode(&self) -> String {
        let mut body = Vec::new();
        for v in &self.vars {
            body.extend_from_slice(&(v.name.len() as u64).to_le_bytes());
            body.extend_from_slice(&v.name);
            body.extend_from_slice(&(v.data.len() as u64).to_le_bytes());
            body.extend_from_slice(&v.data);
            body.extend_from_slice(&v.guid);
            body.extend_from_slice(&v.tail);
        }
        let mut out = Vec::with_capacity(24 + self.ancillary.len() + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.vars.len() as u64).to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.ancillary);
        out.extend_from_slice(&body);
        base64_encode(&out)
    }

    /// Removes the variable with this GUID and name; whether there was one.
    fn remove(&mut self, guid: &[u8; 16], name: &str) -> bool {
        let before = self.vars.len();
        self.vars.retain(|v| !(&v.guid == guid && v.name() == name));
        self.vars.len() != before
    }
}

// ---------------------------------------------------------------------------------------------
// base64 and tar

/// Standard base64 with padding; `None` for anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An octal number field of a tar header (NUL- or space-terminated).
fn tar_octal(field: &[u8]) -> Option<u64> {
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&c| c == b' ')
        .take_while(|&c| c != 0 && c != b' ')
        .collect();
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&digits).ok()?, 8).ok()
}

/// A NUL-terminated text field.
fn tar_text(field: &[u8]) -> String {
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    String::from_utf8_lossy(field.get(..end).unwrap_or_default()).into_owned()
}

/// The last path component of every regular file in a tar archive (ustar names with their
/// prefix, and GNU long names). Reading stops at the end marker or at the first header whose
/// checksum is wrong.
fn tar_file_names(archive: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut long_name: Option<String> = None;
    let mut offset = 0usize;
    while let Some(h) = archive.get(offset..offset.saturating_add(512)) {
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let field = |from: usize, to: usize| h.get(from..to).unwrap_or_default();
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    u64::from(b' ')
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if tar_octal(field(148, 156)) != Some(sum) {
            break;
        }
        let Some(size) = tar_octal(field(124, 136)).and_then(|s| usize::try_from(s).ok()) else {
            break;
        };
        let data = offset.saturating_add(512);
        match h.get(156).copied().unwrap_or(0) {
            b'L' => long_name = archive.get(data..data.saturating_add(size)).map(tar_text),
            b'0' | 0 => {
                let name = long_name.take().unwrap_or_else(|| {
                    let name = tar_text(field(0, 100));
                    let prefix = tar_text(field(345, 500));
                    if field(257, 262) == b"ustar" && !prefix.is_empty() {
                        format!("{prefix}/{name}")
                    } else {
                        name
                    }
                });
                if let Some(base) = name.trim_end_matches('/').rsplit('/').next() {
                    if !base.is_empty() {
                        names.push(base.to_owned());
                    }
                }
            }
            _ => long_name = None,
        }
        offset = data.saturating_add(size.div_ceil(512).saturating_mul(512));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{method, Ty};
    use crate::storage::tests::{env, Env};
    use serde_json::json;

    /// One stored variable: a name (UTF-16 with its NUL, as the varstore keeps it), GUID and
    /// some data.
    fn var(name: &str, guid: [u8; 16], data: &[u8]) -> EfiVar {
        let mut n: Vec<u8> = name.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect();
        n.shrink_to_fit();
        EfiVar {
            name: n,
            data: data.to_vec(),
            guid,
            tail: (0..TAIL as u8).collect(),
        }
    }

    const OTHER_GUID: [u8; 16] = [7; 16];

    fn blob(version: u32, names: &[&str]) -> String {
        let vars = names
            .iter()
            .map(|n| {
                let guid = SECURE_BOOT_KEYS
                    .iter()
                    .find(|k| k.name == *n)
                    .map_or(OTHER_GUID, |k| k.guid);
                var(n, guid, n.as_bytes())
            })
            .collect();
        VarStore {
            version,
            ancillary: if version == 2 {
                vec![0xa5; ANCILLARY_V2]
            } else {
                Vec::new()
            },
            vars,
        }
        .encode()
    }

    fn names_in(text: &str) -> Vec<String> {
        VarStore::decode(text).unwrap().vars.iter().map(EfiVar::name).collect()
    }

    /// A ustar archive of empty-ish files at these paths.
    fn tar(paths: &[&str]) -> String {
        let mut out = Vec::new();
        for p in paths {
            let mut h = [0u8; 512];
            h[..p.len()].copy_from_slice(p.as_bytes());
            h[100..107].copy_from_slice(b"0000644");
            h[124..135].copy_from_slice(b"00000000004");
            h[136..147].copy_from_slice(b"00000000000");
            h[156] = b'0';
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
            h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            out.extend_from_slice(&h);
            let mut data = [0u8; 512];
            data[..4].copy_from_slice(b"auth");
            out.extend_from_slice(&data);
        }
        out.extend_from_slice(&[0u8; 1024]);
        base64_encode(&out)
    }

    async fn new_vm(e: &Env) -> String {
        let r = objects::new_ref();
        let mut vm = default_object(class_ids::VM, &r);
        vm.set(fields::VM::uuid, Value::str(objects::new_uuid()));
        vm.set(fields::VM::name_label, Value::str("sb"));
        e.agent.store.write(|tx| objects::create(tx, vm.clone())).await.unwrap();
        r
    }

    async fn readiness(e: &Env, vm: &str) -> Value {
        e.ok("VM.get_secureboot_readiness", vec![json!(vm)]).await
    }

    async fn set_nvram(e: &Env, vm: &str, efi: Option<String>) {
        let mut m = serde_json::Map::new();
        m.insert("other".into(), json!("kept"));
        if let Some(b) = efi {
            m.insert(EFI_VARIABLES.into(), json!(b));
        }
        e.ok("VM.set_NVRAM", vec![json!(vm), Json::Object(m)]).await;
    }

    fn nvram(e: &Env, vm: &str) -> Value {
        e.agent
            .store
            .get(class_ids::VM, vm)
            .unwrap()
            .get(fields::VM::NVRAM)
            .clone()
    }

    async fn set_pool_certs(e: &Env, uefi: &str, custom: &str) {
        let (pool, uefi, custom) = (e.agent.pool_ref(), uefi.to_owned(), custom.to_owned());
        e.agent
            .store
            .write(|tx| {
                objects::set_field(
                    tx,
                    class_ids::pool,
                    &pool,
                    fields::pool::uefi_certificates,
                    Value::str(uefi.clone()),
                )?;
                objects::set_field(
                    tx,
                    class_ids::pool,
                    &pool,
                    fields::pool::custom_uefi_certificates,
                    Value::str(custom.clone()),
                )
            })
            .await
            .unwrap();
    }

    use serde_json::Value as Json;

    #[test]
    fn the_messages_have_the_reference_signatures() {
        let m = method("VM.set_uefi_mode").unwrap().message;
        let names: Vec<&str> = m.params.iter().map(|p| p.name).collect();
        assert_eq!(names, ["session_id", "self", "mode"]);
        assert_eq!(*m.result, Ty::String);
        let m = method("VM.get_secureboot_readiness").unwrap().message;
        assert!(matches!(m.result, Ty::Enum(e) if e.def().name == "vm_secureboot_readiness"));
        let m = method("pool.get_guest_secureboot_readiness").unwrap().message;
        assert!(matches!(m.result, Ty::Enum(e) if e.def().name == "pool_guest_secureboot_readiness"));
        let m = method("VTPM.get_contents").unwrap().message;
        assert_eq!(*m.result, Ty::String);
        let m = method("VTPM.set_contents").unwrap().message;
        let names: Vec<&str> = m.params.iter().map(|p| p.name).collect();
        assert_eq!(names, ["session_id", "self", "contents"]);
        assert_eq!(*m.result, Ty::Void);
        let t = crate::behaviour::table();
        for name in [
            "VM.set_uefi_mode",
            "VM.get_secureboot_readiness",
            "pool.get_guest_secureboot_readiness",
            "VTPM.get_contents",
            "VTPM.set_contents",
        ] {
            assert_eq!(t.owner(method(name).unwrap().id), Some("agent::secureboot"), "{name}");
        }
    }

    #[test]
    fn base64_round_trips_and_rejects_what_is_not_base64() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            let text = base64_encode(data);
            assert_eq!(base64_decode(&text).as_deref(), Some(data), "{text}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        for bad in ["Zm8", "Zm=8", "Z===", "Zm8=Zm8=", "Zm9v YmFy", "Zm9v\n"] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_variable_store_reads_back_what_it_writes() {
        for version in [1, 2] {
            let text = blob(version, &["PK", "Boot0000"]);
            let store = VarStore::decode(&text).unwrap();
            assert_eq!(store.version, version);
            assert_eq!(store.ancillary.len(), if version == 2 { ANCILLARY_V2 } else { 0 });
            assert_eq!(names_in(&text), ["PK", "Boot0000"]);
            assert_eq!(store.vars[0].data, b"PK");
            assert_eq!(store.encode(), text);
        }
        let bytes = base64_decode(&blob(2, &["PK"])).unwrap();
        for bad in [&bytes[..bytes.len() - 1], &bytes[..10]] {
            assert!(VarStore::parse(bad).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            VarStore::parse(&longer).err().as_deref(),
            Some("1 bytes after the variables")
        );
        let mut wrong = bytes.clone();
        wrong[4] = 3;
        assert_eq!(VarStore::parse(&wrong).err().as_deref(), Some("version 3"));
    }

    #[test]
    fn tar_listing_finds_the_auth_files() {
        let archive = base64_decode(&tar(&["/usr/share/varstored/PK.auth", "KEK.auth"])).unwrap();
        assert_eq!(tar_file_names(&archive), ["PK.auth", "KEK.auth"]);
        let mut broken = archive.clone();
        broken[0] ^= 1;
        assert!(tar_file_names(&broken).is_empty());
        assert!(tar_file_names(b"").is_empty());
    }

    #[actix::test]
    async fn vm_readiness_follows_firmware_platform_and_nvram() {
        let e = env().await;
        let vm = new_vm(&e).await;
        assert_eq!(readiness(&e, &vm).await, VmSecurebootReadiness::not_supported);
        e.ok("VM.set_HVM_boot_params", vec![json!(vm), json!({"firmware": "bios"})])
            .await;
        assert_eq!(readiness(&e, &vm).await, VmSecurebootReadiness::not_supported);
        e.ok(
            "VM.set_HVM_boot_params",
            vec![json!(vm), json!({"firmware": "coreboot"})],
        )
        .await;
        let err = e
            .call("VM.get_secureboot_readiness", vec![json!(vm)])
            .await
            .unwrap_err();
        assert_eq!(err, ApiError::invalid_value("HVM-boot-params['firmware']", "coreboot"));
        e.ok("VM.set_HVM_boot_params", vec![json!(vm), json!({"firmware": "uefi"})])
            .await;
        assert_eq!(readiness(&e, &vm).await, VmSecurebootReadiness::disabled);
        for (flag, want) in [
            ("auto", VmSecurebootReadiness::disabled),
            ("0", VmSecurebootReadiness::disabled),
            ("TRUE", VmSecurebootReadiness::first_boot),
            ("1", VmSecurebootReadiness::first_boot),
        ] {
            e.ok("VM.set_platform", vec![json!(vm), json!({ "secureboot": flag })])
                .await;
            assert_eq!(readiness(&e, &vm).await, want, "secureboot={flag}");
        }
        for (names, want) in [
            (
                &["PK", "KEK", "db", "dbx", "Boot0000"][..],
                VmSecurebootReadiness::ready,
            ),
            (&["db", "PK", "KEK"], VmSecurebootReadiness::ready_no_dbx),
            (&["KEK", "db", "dbx"], VmSecurebootReadiness::setup_mode),
            (&[], VmSecurebootReadiness::setup_mode),
            (&["PK", "db", "dbx"], VmSecurebootReadiness::certs_incomplete),
        ] {
            set_nvram(&e, &vm, Some(blob(2, names))).await;
            assert_eq!(readiness(&e, &vm).await, want, "{names:?}");
        }
        for bad in ["", "not base64", "QUJDRA=="] {
            set_nvram(&e, &vm, Some(bad.into())).await;
            let err = e
                .call("VM.get_secureboot_readiness", vec![json!(vm)])
                .await
                .unwrap_err();
            assert_eq!(err.code(), "INTERNAL_ERROR", "{bad:?}");
        }
        let err = e
            .call("VM.get_secureboot_readiness", vec![json!("OpaqueRef:nope")])
            .await
            .unwrap_err();
        assert_eq!(err, ApiError::handle_invalid("VM", "OpaqueRef:nope"));
    }

    #[actix::test]
    async fn setup_mode_clears_the_four_keys_and_keeps_the_rest() {
        let e = env().await;
        let vm = new_vm(&e).await;
        e.ok("VM.set_HVM_boot_params", vec![json!(vm), json!({"firmware": "uefi"})])
            .await;
        e.ok("VM.set_platform", vec![json!(vm), json!({"secureboot": "true"})])
            .await;
        // A variable named PK under another GUID is not the platform key.
        let mut store = VarStore::decode(&blob(2, &["PK", "KEK", "db", "dbx", "Boot0000"])).unwrap();
        store.vars.push(var("PK", OTHER_GUID, b"x"));
        set_nvram(&e, &vm, Some(store.encode())).await;
        assert_eq!(readiness(&e, &vm).await, VmSecurebootReadiness::ready);

        let out = e.ok("VM.set_uefi_mode", vec![json!(vm), json!("setup")]).await;
        assert_eq!(out, Value::str("PK removed\nKEK removed\ndb removed\ndbx removed\n"));
        let after = nvram(&e, &vm);
        assert_eq!(after.map_get("other"), Some(&Value::str("kept")));
        let text = after.map_get(EFI_VARIABLES).and_then(Value::as_str).unwrap().to_owned();
        assert_eq!(names_in(&text), ["Boot0000", "PK"]);
        let kept = VarStore::decode(&text).unwrap();
        assert_eq!(kept.ancillary, vec![0xa5; ANCILLARY_V2]);
        assert_eq!(kept.vars[1].guid, OTHER_GUID);
        // Readiness goes by names alone, as the reference's listing does.
        assert_eq!(readiness(&e, &vm).await, VmSecurebootReadiness::certs_incomplete);

        // Again: nothing left to remove, nothing written.
        let out = e.ok("VM.set_uefi_mode", vec![json!(vm), json!("setup")]).await;
        assert_eq!(
            out,
            Value::str("PK was not set\nKEK was not set\ndb was not set\ndbx was not set\n")
        );
        assert_eq!(
            nvram(&e, &vm).map_get(EFI_VARIABLES).and_then(Value::as_str),
            Some(text.as_str())
        );

        set_nvram(&e, &vm, Some(blob(1, &["PK", "KEK", "db", "dbx"]))).await;
        e.ok("VM.set_uefi_mode", vec![json!(vm), json!("setup")]).await;
        let text = nvram(&e, &vm)
            .map_get(EFI_VARIABLES)
            .and_then(Value::as_str)
            .unwrap()
            .to_owned();
        assert_eq!(VarStore::decode(&text).unwrap().version, 1);
        assert!(names_in(&text).is_empty());
        assert_eq!(readiness(&e, &vm).await, VmSecurebootReadiness::setup_mode);

        // A VM that never booted has no variables: nothing changes.
        set_nvram(&e, &vm, None).await;
        let out = e.ok("VM.set_uefi_mode", vec![json!(vm), json!("setup")]).await;
        assert_eq!(
            out,
            Value::str("PK was not set\nKEK was not set\ndb was not set\ndbx was not set\n")
        );
        assert_eq!(nvram(&e, &vm), Value::string_map([("other", "kept")]));

        set_nvram(&e, &vm, Some("bm90IHZhcnM=".into())).await;
        let err = e
            .call("VM.set_uefi_mode", vec![json!(vm), json!("setup")])
            .await
            .unwrap_err();
        assert_eq!(err.code(), "INTERNAL_ERROR");
        assert_eq!(
            nvram(&e, &vm).map_get(EFI_VARIABLES).and_then(Value::as_str),
            Some("bm90IHZhcnM=")
        );
        let err = e
            .call("VM.set_uefi_mode", vec![json!("OpaqueRef:nope"), json!("setup")])
            .await
            .unwrap_err();
        assert_eq!(err, ApiError::handle_invalid("VM", "OpaqueRef:nope"));
    }

    #[actix::test]
    async fn user_mode_is_carried_out_only_when_no_key_would_be_installed() {
        let e = env().await;
        let vm = new_vm(&e).await;
        let original = blob(2, &["PK", "KEK", "db", "dbx"]);
        set_nvram(&e, &vm, Some(original.clone())).await;
        // KEK and PK alone: the varstore stops at the missing db and installs nothing.
        set_pool_certs(&e, &tar(&["KEK.auth", "PK.auth"]), "").await;
        let out = e.ok("VM.set_uefi_mode", vec![json!(vm), json!("user")]).await;
        assert_eq!(
            out,
            Value::str(
                "PK removed\nKEK removed\ndb removed\ndbx removed\n\
                 no db certificate in the pool's UEFI certificates: no key installed, the VM stays in Setup Mode\n"
            )
        );
        let text = nvram(&e, &vm)
            .map_get(EFI_VARIABLES)
            .and_then(Value::as_str)
            .unwrap()
            .to_owned();
        assert!(names_in(&text).is_empty());

        // With db.auth (or dbx.auth) there is a key to install: refused, nothing changed.
        set_nvram(&e, &vm, Some(original.clone())).await;
        for certs in [tar(&["PK.auth", "KEK.auth", "db.auth"]), tar(&["dbx.auth"])] {
            set_pool_certs(&e, &certs, "").await;
            let err = e
                .call("VM.set_uefi_mode", vec![json!(vm), json!("user")])
                .await
                .unwrap_err();
            assert_eq!(err.code(), "VALUE_NOT_SUPPORTED");
            assert_eq!(err.params()[..2], ["mode".to_owned(), "user".to_owned()]);
            assert_eq!(
                nvram(&e, &vm).map_get(EFI_VARIABLES).and_then(Value::as_str),
                Some(original.as_str())
            );
        }
        // Custom certificates take the place of the default ones.
        set_pool_certs(&e, &tar(&["db.auth"]), &tar(&["PK.auth"])).await;
        e.ok("VM.set_uefi_mode", vec![json!(vm), json!("user")]).await;
    }

    #[actix::test]
    async fn pool_readiness_follows_the_active_certificates() {
        let e = env().await;
        let pool = e.agent.pool_ref();
        let ask = |r: String| {
            let e = &e;
            async move { e.ok("pool.get_guest_secureboot_readiness", vec![json!(r)]).await }
        };
        assert_eq!(ask(pool.clone()).await, PoolGuestSecurebootReadiness::not_ready);
        let all = tar(&["/usr/share/varstored/PK.auth", "KEK.auth", "db.auth", "dbx.auth"]);
        set_pool_certs(&e, &all, "").await;
        assert_eq!(ask(pool.clone()).await, PoolGuestSecurebootReadiness::ready);
        // The reference answers for its own pool, whatever the ref.
        assert_eq!(ask("OpaqueRef:other".into()).await, PoolGuestSecurebootReadiness::ready);
        set_pool_certs(&e, &tar(&["PK.auth", "KEK.auth", "db.auth"]), "").await;
        assert_eq!(ask(pool.clone()).await, PoolGuestSecurebootReadiness::ready_no_dbx);
        set_pool_certs(&e, &tar(&["PK.auth", "db.auth", "dbx.auth"]), "").await;
        assert_eq!(ask(pool.clone()).await, PoolGuestSecurebootReadiness::not_ready);
        set_pool_certs(&e, &all, &tar(&["PK.auth"])).await;
        assert_eq!(ask(pool.clone()).await, PoolGuestSecurebootReadiness::not_ready);
        set_pool_certs(&e, "not base64", &all).await;
        assert_eq!(ask(pool.clone()).await, PoolGuestSecurebootReadiness::ready);
        set_pool_certs(&e, "not base64", "").await;
        assert_eq!(ask(pool).await, PoolGuestSecurebootReadiness::not_ready);
    }

    #[actix::test]
    async fn vtpm_contents_live_in_a_secret() {
        let e = env().await;
        let vm = new_vm(&e).await;
        let vtpm = objects::new_ref();
        let uuid = objects::new_uuid();
        let mut rec = default_object(class_ids::VTPM, &vtpm);
        rec.set(fields::VTPM::uuid, Value::str(uuid.as_str()));
        rec.set(fields::VTPM::VM, Value::reference(vm.as_str()));
        e.agent
            .store
            .write(|tx| objects::create(tx, rec.clone()))
            .await
            .unwrap();
        let secrets = |e: &Env| e.agent.store.all(class_ids::secret);
        let before = secrets(&e).len();

        assert_eq!(e.ok("VTPM.get_contents", vec![json!(vtpm)]).await, Value::str(""));
        assert_eq!(
            e.ok("VTPM.set_contents", vec![json!(vtpm), json!("dHBtIHN0YXRl")])
                .await,
            Value::None
        );
        assert_eq!(
            e.ok("VTPM.get_contents", vec![json!(vtpm)]).await,
            Value::str("dHBtIHN0YXRl")
        );
        let held = e.agent.store.ref_by_uuid(class_ids::secret, &uuid).unwrap();
        let secret = e.agent.store.get(class_ids::secret, &held).unwrap();
        assert_eq!(secret.get(fields::secret::value), &Value::str("dHBtIHN0YXRl"));
        assert_eq!(secrets(&e).len(), before + 1);

        e.ok("VTPM.set_contents", vec![json!(vtpm), json!("")]).await;
        assert_eq!(e.ok("VTPM.get_contents", vec![json!(vtpm)]).await, Value::str(""));
        assert_eq!(secrets(&e).len(), before + 1);

        e.ok("VTPM.set_contents", vec![json!(vtpm), json!("bmV3")]).await;
        let err = e
            .call("VTPM.set_contents", vec![json!(vtpm), json!("not base64!")])
            .await
            .unwrap_err();
        assert_eq!(err, ApiError::internal("the VTPM contents are not base64-encoded"));
        assert_eq!(e.ok("VTPM.get_contents", vec![json!(vtpm)]).await, Value::str("bmV3"));

        // The VTPM's record does not carry its contents.
        let record = e.ok("VTPM.get_record", vec![json!(vtpm)]).await;
        let Value::Record(obj) = record else {
            panic!("{record:?}")
        };
        assert!(!obj.fields.iter().any(|v| v.as_str() == Some("bmV3")));

        let err = e
            .call("VTPM.get_contents", vec![json!("OpaqueRef:nope")])
            .await
            .unwrap_err();
        assert_eq!(err, ApiError::handle_invalid("VTPM", "OpaqueRef:nope"));
        let err = e
            .call("VTPM.set_contents", vec![json!("OpaqueRef:nope"), json!("bmV3")])
            .await
            .unwrap_err();
        assert_eq!(err, ApiError::handle_invalid("VTPM", "OpaqueRef:nope"));

        let stored = e.agent.store.get(class_ids::VTPM, &vtpm).unwrap();
        e.agent
            .store
            .write(|tx| {
                forget_contents(&e.agent.store, tx, &stored)?;
                objects::destroy(tx, class_ids::VTPM, &vtpm)
            })
            .await
            .unwrap();
        assert_eq!(e.agent.store.ref_by_uuid(class_ids::secret, &uuid), None);
        assert_eq!(secrets(&e).len(), before);
    }
}
