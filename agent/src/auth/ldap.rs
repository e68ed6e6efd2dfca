//! The `LDAP` external authentication: users and groups of an LDAP directory (OpenLDAP, 389
//! Directory Server, …), reached over StartTLS (`ldap://`) or TLS (`ldaps://`) only — a
//! password never crosses the network in clear.
//!
//! How it maps onto the reference's external authentication (made for Active Directory):
//!
//! - `service_name` is the directory's URL (`ldap://dir.example.org`, `ldaps://…:636`);
//! - the configuration keys are `base_dn` (required: where users and groups are searched),
//!   `user` and `pass` (the service account the daemon searches as; anonymous when absent;
//!   the password is kept in a file only root can read, never in the host's record),
//!   `ca_cert_file` (PEM certificates to trust; the system's when absent), and optional
//!   `user_attribute` (`uid`), `user_object_class` (`person`), `group_attribute` (`cn`),
//!   `group_object_class` (`groupOfNames`), `member_attribute` (`member`, holding member
//!   DNs), `id_attribute` (`entryUUID`) and `timeout` (seconds, 10);
//! - a subject identifier is the entry's `entryUUID` (stable across renames and moves) where
//!   AD has a SID;
//! - a user logs in with the value of `user_attribute`; the password is checked by binding as
//!   the user's entry (an empty password is refused before: LDAP would take it for an
//!   anonymous bind);
//! - group membership is the transitive closure over `member_attribute` (groups in groups);
//! - subject information carries the reference's keys: `subject-name`, `subject-displayname`,
//!   `subject-gecos`, `subject-uid`, `subject-gid`, `subject-sid` (the identifier),
//!   `subject-is-group`, `subject-upn` (`mail`), and for users the suspension flags
//!   (`subject-account-locked` from `pwdAccountLockedTime`, `subject-account-expired` from
//!   `shadowExpire`; `subject-account-disabled` and `subject-password-expired` are false).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// The `auth_type` of this directory.
pub const AUTH_TYPE: &str = "LDAP";

/// How a directory operation failed (the reference's error tags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirError {
    /// The configuration is not usable.
    Config(String),
    /// The directory's address could not be resolved.
    Lookup(String),
    /// The directory could not be reached or did not answer in time.
    Unavailable(String),
    /// No TLS session could be set up.
    Tls(String),
    /// The certificates to trust are invalid, or the directory's is not among them.
    TrustedCerts(String),
    /// There are no certificates to trust.
    NoTrustedCerts(String),
    /// The service account's credentials were refused.
    Credentials(String),
    /// The base DN does not exist.
    InvalidBase(String),
    /// The service account may not read what it needs.
    Denied(String),
    /// A user's name and password were refused.
    AuthFailure(String),
    /// No such subject.
    NotFound,
    /// Anything else the directory answered.
    Service(String),
}

impl std::fmt::Display for DirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirError::NotFound => write!(f, "subject not found in the directory"),
            DirError::Config(m)
            | DirError::Lookup(m)
            | DirError::Unavailable(m)
            | DirError::Tls(m)
            | DirError::TrustedCerts(m)
            | DirError::NoTrustedCerts(m)
            | DirError::Credentials(m)
            | DirError::InvalidBase(m)
            | DirError::Denied(m)
            | DirError::AuthFailure(m)
            | DirError::Service(m) => write!(f, "{m}"),
        }
    }
}

/// A directory's settings (what the host's `external_auth_configuration` keeps, plus the
/// service account's password).
#[derive(Clone)]
pub struct Settings {
    /// `ldap://` (StartTLS) or `ldaps://`.
    pub url: String,
    /// Where users and groups are searched.
    pub base_dn: String,
    /// The service account's DN (empty: anonymous searches).
    pub bind_dn: String,
    /// The service account's password.
    pub bind_password: String,
    /// PEM certificates to trust (the system's when `None`).
    pub ca_cert_file: Option<String>,
    /// The users' login name attribute.
    pub user_attribute: String,
    /// The users' object class.
    pub user_object_class: String,
    /// The groups' name attribute.
    pub group_attribute: String,
    /// The groups' object class.
    pub group_object_class: String,
    /// The groups' member attribute (member DNs).
    pub member_attribute: String,
    /// The attribute that identifies a subject.
    pub id_attribute: String,
    /// Per-operation timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is never printed.
        f.debug_struct("Settings")
            .field("url", &self.url)
            .field("base_dn", &self.base_dn)
            .field("bind_dn", &self.bind_dn)
            .field("ca_cert_file", &self.ca_cert_file)
            .finish_non_exhaustive()
    }
}

/// The configuration keys that are not kept in the host's record.
pub const SECRET_KEYS: &[&str] = &["pass"];

impl Settings {
    /// Settings from `pool.enable_external_auth`'s service name and configuration.
    pub fn parse(service_name: &str, config: &BTreeMap<String, String>) -> Result<Settings, DirError> {
        let url = service_name.trim();
        let scheme_ok = url.starts_with("ldap://") || url.starts_with("ldaps://");
        if !scheme_ok {
            return Err(DirError::Config(format!(
                "service_name must be the directory's URL, ldap:// (StartTLS) or ldaps://; got '{url}'"
            )));
        }
        let get = |k: &str, d: &str| config.get(k).map_or(d, String::as_str).trim().to_owned();
        let base_dn = get("base_dn", "");
        if base_dn.is_empty() {
            return Err(DirError::Config("the configuration lacks base_dn".into()));
        }
        let timeout = match config.get("timeout") {
            Some(t) => t
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=300).contains(s))
                .ok_or_else(|| DirError::Config(format!("timeout must be 1 to 300 seconds; got '{t}'")))?,
            None => 10,
        };
        Ok(Settings {
            url: url.to_owned(),
            base_dn,
            bind_dn: get("user", ""),
            bind_password: config.get("pass").cloned().unwrap_or_default(),
            ca_cert_file: config
                .get("ca_cert_file")
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
            user_attribute: get("user_attribute", "uid"),
            user_object_class: get("user_object_class", "person"),
            group_attribute: get("group_attribute", "cn"),
            group_object_class: get("group_object_class", "groupOfNames"),
            member_attribute: get("member_attribute", "member"),
            id_attribute: get("id_attribute", "entryUUID"),
            timeout: Duration::from_secs(timeout),
        })
    }
}

/// A configured directory.
pub struct Directory {
    settings: Settings,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").field("settings", &self.settings).finish()
    }
}

/// One entry found.
struct Found {
    dn: String,
    attrs: HashMap<String, Vec<String>>,
}

impl Found {
    fn first(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }
    fn has_class(&self, class: &str) -> bool {
        self.attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("objectClass"))
            .is_some_and(|(_, v)| v.iter().any(|c| c.eq_ignore_ascii_case(class)))
    }
}

fn tls_config(ca_file: &str) -> Result<Arc<rustls::ClientConfig>, DirError> {
    let pem = std::fs::read(ca_file).map_err(|e| DirError::TrustedCerts(format!("reading {ca_file}: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut count = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| DirError::TrustedCerts(format!("{ca_file}: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| DirError::TrustedCerts(format!("{ca_file}: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(DirError::NoTrustedCerts(format!("{ca_file} holds no certificate")));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DirError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

fn classify(e: ldap3::LdapError) -> DirError {
    use ldap3::LdapError as L;
    match e {
        L::Io { source } => {
            let text = source.to_string();
            if text.contains("lookup") || text.contains("Name or service not known") {
                DirError::Lookup(text)
            } else {
                DirError::Unavailable(text)
            }
        }
        L::Timeout { .. } => DirError::Unavailable("the directory did not answer in time".into()),
        L::Rustls { source } => match source {
            rustls::Error::InvalidCertificate(c) => {
                DirError::TrustedCerts(format!("the directory's certificate is not trusted: {c:?}"))
            }
            other => DirError::Tls(other.to_string()),
        },
        L::DNSName { source } => DirError::Tls(source.to_string()),
        L::UrlParsing { source } => DirError::Config(source.to_string()),
        L::UnknownScheme(s) => DirError::Config(format!("unknown URL scheme {s}")),
        L::LdapResult { result } => match result.rc {
            49 => DirError::Credentials(format!("the directory refused the credentials ({})", result.text)),
            32 => DirError::InvalidBase(format!("no such entry: {}", result.matched)),
            50 => DirError::Denied(format!("insufficient access ({})", result.text)),
            // StartTLS refused or failed.
            2 | 52 | 53 if result.text.to_ascii_lowercase().contains("tls") => DirError::Tls(result.to_string()),
            _ => DirError::Service(result.to_string()),
        },
        other => DirError::Service(other.to_string()),
    }
}

/// An open, secured connection.
struct Conn {
    ldap: ldap3::Ldap,
    /// Each operation's limit (the library's applies to one operation at a time).
    timeout: Duration,
}

impl Conn {
    async fn bind(&mut self, dn: &str, password: &str) -> Result<(), DirError> {
        self.ldap
            .with_timeout(self.timeout)
            .simple_bind(dn, password)
            .await
            .map_err(classify)?
            .success()
            .map_err(classify)?;
        Ok(())
    }

    async fn search(
        &mut self,
        base: &str,
        scope: ldap3::Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<Found>, DirError> {
        let (entries, _) = self
            .ldap
            .with_timeout(self.timeout)
            .search(base, scope, filter, attrs.to_vec())
            .await
            .map_err(classify)?
            .success()
            .map_err(classify)?;
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            // The library panics on an entry it cannot parse: a broken answer must not take
            // the daemon down.
            let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ldap3::SearchEntry::construct(e)));
            match parsed {
                Ok(se) => out.push(Found {
                    dn: se.dn,
                    attrs: se.attrs,
                }),
                Err(_) => {
                    return Err(DirError::Service(
                        "the directory sent an entry that does not parse".into(),
                    ))
                }
            }
        }
        Ok(out)
    }

    async fn close(mut self) {
        let _ = self.ldap.unbind().await;
    }
}

const INFO_ATTRS: &[&str] = &[
    "objectClass",
    "cn",
    "displayName",
    "gecos",
    "uidNumber",
    "gidNumber",
    "mail",
    "pwdAccountLockedTime",
    "shadowExpire",
];

impl Directory {
    /// A directory from settings (reads the certificates to trust).
    pub fn new(settings: Settings) -> Result<Directory, DirError> {
        let tls = match &settings.ca_cert_file {
            Some(f) => Some(tls_config(f)?),
            None => None,
        };
        Ok(Directory { settings, tls })
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Connects (StartTLS for `ldap://`) and binds as the service account.
    async fn connect(&self) -> Result<Conn, DirError> {
        let s = &self.settings;
        let mut cs = ldap3::LdapConnSettings::new()
            .set_conn_timeout(s.timeout)
            .set_starttls(s.url.starts_with("ldap://"));
        if let Some(cfg) = &self.tls {
            cs = cs.set_config(cfg.clone());
        }
        let (conn, ldap) = tokio::time::timeout(s.timeout, ldap3::LdapConnAsync::with_settings(cs, &s.url))
            .await
            .map_err(|_| DirError::Unavailable(format!("{} did not answer in time", s.url)))?
            .map_err(classify)?;
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "directory connection ended");
            }
        });
        let mut c = Conn {
            ldap,
            timeout: s.timeout,
        };
        if !s.bind_dn.is_empty() {
            c.bind(&s.bind_dn, &s.bind_password).await?;
        }
        Ok(c)
    }

    fn user_filter(&self, name: &str) -> String {
        let s = &self.settings;
        format!(
            "(&(objectClass={})({}={}))",
            ldap3::ldap_escape(s.user_object_class.as_str()),
            ldap3::ldap_escape(s.user_attribute.as_str()),
            ldap3::ldap_escape(name)
        )
    }

    fn group_filter(&self, name: &str) -> String {
        let s = &self.settings;
        format!(
            "(&(objectClass={})({}={}))",
            ldap3::ldap_escape(s.group_object_class.as_str()),
            ldap3::ldap_escape(s.group_attribute.as_str()),
            ldap3::ldap_escape(name)
        )
    }

    fn id_of(&self, f: &Found) -> Result<String, DirError> {
        f.first(&self.settings.id_attribute)
            .map(str::to_owned)
            .ok_or_else(|| DirError::Service(format!("{} has no {}", f.dn, self.settings.id_attribute)))
    }

    /// Checks that the directory answers, the service account binds and the base exists:
    /// what enabling the directory needs.
    pub async fn check(&self) -> Result<(), DirError> {
        let mut c = self.connect().await?;
        let r = c
            .search(&self.settings.base_dn, ldap3::Scope::Base, "(objectClass=*)", &["1.1"])
            .await;
        c.close().await;
        match r {
            Ok(found) if found.is_empty() => Err(DirError::Denied(format!(
                "the service account cannot read {}",
                self.settings.base_dn
            ))),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The one user entry with this login name.
    async fn find_user(&self, c: &mut Conn, name: &str) -> Result<Found, DirError> {
        let s = &self.settings;
        let mut found = c
            .search(
                &s.base_dn,
                ldap3::Scope::Subtree,
                &self.user_filter(name),
                &[s.id_attribute.as_str(), s.user_attribute.as_str()],
            )
            .await?;
        match found.len() {
            0 => Err(DirError::NotFound),
            1 => found.pop().ok_or(DirError::NotFound),
            n => Err(DirError::Service(format!("{n} directory users are named {name}"))),
        }
    }

    /// The identifier of the user or group named `name`.
    pub async fn subject_identifier(&self, name: &str) -> Result<String, DirError> {
        let s = &self.settings;
        let filter = format!("(|{}{})", self.user_filter(name), self.group_filter(name));
        let mut c = self.connect().await?;
        let r = c
            .search(&s.base_dn, ldap3::Scope::Subtree, &filter, &[s.id_attribute.as_str()])
            .await;
        c.close().await;
        let found = r?;
        match found.as_slice() {
            [] => Err(DirError::NotFound),
            [one] => self.id_of(one),
            _ => Err(DirError::Service(format!(
                "{} directory subjects are named {name}",
                found.len()
            ))),
        }
    }

    fn id_filter(&self, id: &str) -> String {
        format!(
            "({}={})",
            ldap3::ldap_escape(self.settings.id_attribute.as_str()),
            ldap3::ldap_escape(id)
        )
    }

    async fn find_by_id(&self, c: &mut Conn, id: &str, attrs: &[&str]) -> Result<Found, DirError> {
        if id.is_empty() {
            return Err(DirError::NotFound);
        }
        let mut found = c
            .search(
                &self.settings.base_dn,
                ldap3::Scope::Subtree,
                &self.id_filter(id),
                attrs,
            )
            .await?;
        match found.len() {
            1 => found.pop().ok_or(DirError::NotFound),
            0 => Err(DirError::NotFound),
            n => Err(DirError::Service(format!(
                "{n} directory entries have the identifier {id}"
            ))),
        }
    }

    /// What the directory says about a subject, under the reference's keys.
    pub async fn subject_information(&self, id: &str) -> Result<Vec<(String, String)>, DirError> {
        let mut c = self.connect().await?;
        let r = self.information_with(&mut c, id).await;
        c.close().await;
        r
    }

    async fn information_with(&self, c: &mut Conn, id: &str) -> Result<Vec<(String, String)>, DirError> {
        let s = &self.settings;
        let mut attrs: Vec<&str> = INFO_ATTRS.to_vec();
        attrs.push(&s.user_attribute);
        attrs.push(&s.group_attribute);
        let e = self.find_by_id(c, id, &attrs).await?;
        let is_group = e.has_class(&s.group_object_class) && !e.has_class(&s.user_object_class);
        let name_attr = if is_group {
            &s.group_attribute
        } else {
            &s.user_attribute
        };
        let name = e.first(name_attr).or_else(|| e.first("cn")).unwrap_or("").to_owned();
        let display = e
            .first("displayName")
            .or_else(|| e.first("cn"))
            .unwrap_or(&name)
            .to_owned();
        let mut info = vec![("subject-name".to_owned(), name)];
        if is_group {
            if let Some(gid) = e.first("gidNumber") {
                info.push(("subject-gid".into(), gid.to_owned()));
            }
            info.push(("subject-sid".into(), id.to_owned()));
            info.push(("subject-is-group".into(), "true".into()));
            return Ok(info);
        }
        let gecos = e.first("gecos").unwrap_or(&display).to_owned();
        info.push(("subject-gecos".into(), gecos));
        info.push(("subject-displayname".into(), display));
        info.push(("subject-sid".into(), id.to_owned()));
        for (key, attr) in [
            ("subject-uid", "uidNumber"),
            ("subject-gid", "gidNumber"),
            ("subject-upn", "mail"),
        ] {
            if let Some(v) = e.first(attr) {
                info.push((key.into(), v.to_owned()));
            }
        }
        let locked = e.first("pwdAccountLockedTime").is_some();
        let expired = e
            .first("shadowExpire")
            .and_then(|d| d.parse::<i64>().ok())
            .is_some_and(|days| days >= 0 && days * 86_400 <= crate::value::now());
        info.push(("subject-account-disabled".into(), "false".into()));
        info.push(("subject-account-locked".into(), locked.to_string()));
        info.push(("subject-account-expired".into(), expired.to_string()));
        info.push(("subject-password-expired".into(), "false".into()));
        info.push(("subject-is-group".into(), "false".into()));
        Ok(info)
    }

    /// The identifiers of every group the subject belongs to, directly or through other
    /// groups (not the subject itself).
    pub async fn group_membership(&self, id: &str) -> Result<Vec<String>, DirError> {
        let mut c = self.connect().await?;
        let r = self.membership_with(&mut c, id).await;
        c.close().await;
        r
    }

    async fn membership_with(&self, c: &mut Conn, id: &str) -> Result<Vec<String>, DirError> {
        let s = &self.settings;
        let me = self.find_by_id(c, id, &["1.1"]).await?;
        let mut seen: HashSet<String> = HashSet::new();
        let mut frontier = vec![me.dn.clone()];
        seen.insert(me.dn.to_ascii_lowercase());
        let mut groups = Vec::new();
        while let Some(dn) = frontier.pop() {
            let filter = format!(
                "(&(objectClass={})({}={}))",
                ldap3::ldap_escape(s.group_object_class.as_str()),
                ldap3::ldap_escape(s.member_attribute.as_str()),
                ldap3::ldap_escape(dn.as_str())
            );
            let found = c
                .search(&s.base_dn, ldap3::Scope::Subtree, &filter, &[s.id_attribute.as_str()])
                .await?;
            for g in found {
                if seen.insert(g.dn.to_ascii_lowercase()) {
                    groups.push(self.id_of(&g)?);
                    frontier.push(g.dn);
                }
            }
        }
        Ok(groups)
    }

    /// A user's login over one connection: checks the password (binding as the user), then,
    /// as the service account again, reads what the directory says about the user and the
    /// groups they are in.
    pub async fn login(&self, user: &str, password: &str) -> Result<Login, DirError> {
        if user.is_empty() || password.is_empty() {
            return Err(DirError::AuthFailure("empty user name or password".into()));
        }
        let mut c = self.connect().await?;
        let r = async {
            let entry = match self.find_user(&mut c, user).await {
                Err(DirError::NotFound) => return Err(DirError::AuthFailure(format!("no directory user {user}"))),
                other => other?,
            };
            let id = self.id_of(&entry)?;
            match c.bind(&entry.dn, password).await {
                Ok(()) => {}
                Err(DirError::Credentials(m)) => return Err(DirError::AuthFailure(m)),
                Err(e) => return Err(e),
            }
            // Back to the service account (or anonymous) for the reads.
            if self.settings.bind_dn.is_empty() {
                c.bind("", "").await?;
            } else {
                c.bind(&self.settings.bind_dn, &self.settings.bind_password).await?;
            }
            let information = self.information_with(&mut c, &id).await?;
            let groups = self.membership_with(&mut c, &id).await?;
            Ok(Login {
                id,
                information,
                groups,
            })
        }
        .await;
        c.close().await;
        r
    }
}

/// What a successful login learns about the user.
#[derive(Debug)]
pub struct Login {
    /// The user's subject identifier.
    pub id: String,
    /// What the directory says about the user (the reference's keys).
    pub information: Vec<(String, String)>,
    /// The identifiers of the groups the user is in, directly or through other groups.
    pub groups: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn settings_need_a_secure_url_and_a_base() {
        let ok = Settings::parse("ldap://127.0.0.1:3389", &cfg(&[("base_dn", "dc=example,dc=org")])).unwrap();
        assert_eq!(ok.user_attribute, "uid");
        assert_eq!(ok.id_attribute, "entryUUID");
        assert_eq!(ok.timeout, Duration::from_secs(10));
        assert!(matches!(
            Settings::parse("dir.example.org", &cfg(&[("base_dn", "dc=x")])),
            Err(DirError::Config(_))
        ));
        assert!(matches!(
            Settings::parse("ldap://x", &cfg(&[])),
            Err(DirError::Config(_))
        ));
        assert!(matches!(
            Settings::parse("ldaps://x", &cfg(&[("base_dn", "dc=x"), ("timeout", "0")])),
            Err(DirError::Config(_))
        ));
    }

    #[test]
    fn the_password_is_never_printed() {
        let s = Settings::parse(
            "ldaps://x",
            &cfg(&[("base_dn", "dc=x"), ("user", "cn=svc,dc=x"), ("pass", "Sekrit-42")]),
        )
        .unwrap();
        assert_eq!(s.bind_password, "Sekrit-42");
        assert!(!format!("{s:?}").contains("Sekrit-42"));
    }

    #[test]
    fn filters_escape_what_users_type() {
        let d = Directory::new(Settings::parse("ldap://x", &cfg(&[("base_dn", "dc=x")])).unwrap()).unwrap();
        assert_eq!(
            d.user_filter("a*)(uid=*"),
            "(&(objectClass=person)(uid=a\\2a\\29\\28uid=\\2a))"
        );
    }

    #[test]
    fn trusted_certificates_must_be_there() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = tls_config(&empty.display().to_string()).unwrap_err();
        assert!(matches!(e, DirError::NoTrustedCerts(_)), "{e:?}");
        let e = tls_config("/nonexistent/ca.pem").unwrap_err();
        assert!(matches!(e, DirError::TrustedCerts(_)), "{e:?}");
    }

    #[tokio::test]
    async fn an_empty_password_never_reaches_the_directory() {
        // Nothing listens on this URL: the refusal comes before any connection.
        let d = Directory::new(Settings::parse("ldap://127.0.0.1:1", &cfg(&[("base_dn", "dc=x")])).unwrap()).unwrap();
        assert!(matches!(d.login("alice", "").await, Err(DirError::AuthFailure(_))));
        assert!(matches!(d.check().await, Err(DirError::Unavailable(_))));
    }
}
