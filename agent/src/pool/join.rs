//! `pool.join` (the joining host's side and the master's), `pool.eject` and a host leaving.
//!
//! A join: the joiner logs in to the master over XenAPI, runs the reference's checks, asks the
//! master (`xapid.pool.prepare_join`) to make room for it in the pool database — the master
//! first moves its own database into etcd if it is still on redb, then adds the joiner as an
//! etcd member (up to three voters; later hosts are clients) — and then switches its own store
//! to the pool database, writing into it what it keeps of its own ([`super::carry`]).

use super::remote::{Remote, RemoteError};
use super::{carry, require_master};
use crate::call::Call;
use crate::error::ApiError;
use crate::schema::{class_ids, enums::VmPowerState, fields};
use crate::store::etcd_member::{MemberConfig, ETCD_PROGRAM};
use crate::store::{EtcdConfig, StoreError, POOL_MEMBER_DIR};
use crate::value::Value;
use crate::Agent;
use serde_json::json;
use std::sync::Arc;

/// How many etcd members vote; hosts joining after them use the pool database as clients.
pub const VOTERS: usize = 3;

/// The etcd client port on every host's address.
const CLIENT_PORT: u16 = 2379;
/// The etcd peer port on every host's address.
const PEER_PORT: u16 = 2380;

fn url(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("http://[{address}]:{port}")
    } else {
        format!("http://{address}:{port}")
    }
}

/// Whether the `etcd` program can be run; the XenAPI error naming the package if not.
fn require_etcd() -> Result<(), ApiError> {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            let p = d.join(ETCD_PROGRAM);
            p.is_file()
        })
    });
    if found {
        Ok(())
    } else {
        Err(store_error(StoreError::EtcdMissing(ETCD_PROGRAM.to_owned())))
    }
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::internal(crate::error::error_chain(&e))
}

/// A failure talking to the master during a join, as the reference reports it.
fn join_error(e: RemoteError) -> ApiError {
    match e {
        RemoteError::Connect(..) => ApiError::JoiningHostConnectionFailed {},
        RemoteError::Http(..) => ApiError::JoiningHostServiceFailed {},
        other => other.into_api(),
    }
}

/// `pool.join` / `pool.join_force` on the joining host.
pub async fn join(agent: &Arc<Agent>, c: &Call, force: bool) -> Result<Value, ApiError> {
    super::rotate::refuse_while_pending(agent)?;
    let (address, user, password) = (c.str_arg(0).to_owned(), c.str_arg(1), c.str_arg(2));
    let remote = Remote::new(&address)?;
    let session = remote
        .call_str(
            "session.login_with_password",
            &[json!(user), json!(password), json!("1.0"), json!("xapid pool.join")],
        )
        .await
        .map_err(join_error)?;
    let out = join_with(agent, &remote, &session, &address, force).await;
    if out.is_err() {
        let _ = remote.call("session.logout", &[json!(session)]).await;
    }
    out
}

async fn join_with(
    agent: &Arc<Agent>,
    remote: &Remote,
    session: &str,
    address: &str,
    force: bool,
) -> Result<Value, ApiError> {
    let s = json!(session);
    let pools = remote
        .call("pool.get_all", std::slice::from_ref(&s))
        .await
        .map_err(join_error)?;
    let pool = match pools {
        crate::host::xmlrpc::XmlRpcValue::Array(a) => a.first().and_then(|p| p.as_str().map(str::to_owned)),
        _ => None,
    }
    .ok_or_else(|| ApiError::internal("Remote host does not belong to a pool."))?;
    let master = remote
        .call_str("pool.get_master", &[s.clone(), json!(pool)])
        .await
        .map_err(join_error)?;
    let master_uuid = remote
        .call_str("host.get_uuid", &[s.clone(), json!(master)])
        .await
        .map_err(join_error)?;
    pre_join_checks(agent, &master_uuid)?;
    if !force {
        let theirs = remote
            .call("host.get_software_version", &[s.clone(), json!(master)])
            .await
            .map_err(join_error)?;
        let theirs = theirs.member("product_version").and_then(|v| v.as_str()).unwrap_or("");
        let ours = agent
            .store
            .get(class_ids::host, &agent.host)
            .and_then(|h| {
                h.get(fields::host::software_version)
                    .as_map()
                    .iter()
                    .find(|(k, _)| k.as_str() == Some("product_version"))
                    .and_then(|(_, v)| v.as_str().map(str::to_owned))
            })
            .unwrap_or_default();
        if theirs != ours {
            return Err(ApiError::PoolJoiningHostMustHaveSameProductVersion {});
        }
    }
    require_etcd()?;
    let my_uuid = agent
        .store
        .get(class_ids::host, &agent.host)
        .and_then(|h| h.uuid().map(str::to_owned))
        .unwrap_or_default();
    let cfg = remote
        .call_str(
            &format!("{}prepare_join", super::PRIVATE_PREFIX),
            &[s.clone(), json!(my_uuid), json!(agent.host_address)],
        )
        .await
        .map_err(join_error)?;
    let Grant { etcd: cfg, secret } = serde_json::from_str(&cfg)
        .map_err(|e| ApiError::internal(format!("the master's pool database settings are unreadable: {e}")))?;
    let carried = carry::collect(&agent.store, &agent.host);
    tracing::info!(master = %address, objects = carried.len(), "joining the pool: adopting its database");
    agent
        .store
        .switch_to_pool(&agent.state_dir, &cfg, false)
        .await
        .map_err(store_error)?;
    super::secret::install(&agent.state_dir, &secret).map_err(ApiError::internal)?;
    let store = &agent.store;
    store.write(|tx| carry::write(tx, store, &carried)).await?;
    // The pool's shared SRs: a PBD of each for this host.
    let shared = crate::storage::pbds_for_new_host(agent, &agent.host);
    if !shared.is_empty() {
        store
            .write(|tx| {
                for pbd in &shared {
                    crate::objects::create(tx, pbd.clone())?;
                }
                Ok(())
            })
            .await?;
    }
    let pool_ref = store
        .all(class_ids::pool)
        .first()
        .map(|p| p.reference.clone())
        .ok_or_else(|| ApiError::internal("the pool database has no pool object"))?;
    *agent.pool.write() = pool_ref;
    crate::first_boot::remember_host(store, &agent.state_dir, &agent.host);
    let _ = remote.call("session.logout", &[s]).await;
    Ok(Value::None)
}

/// The reference's refusals that need nothing of the master but its uuid.
fn pre_join_checks(agent: &Agent, master_uuid: &str) -> Result<(), ApiError> {
    let store = &agent.store;
    if store
        .get(class_ids::host, &agent.host)
        .is_some_and(|h| h.uuid() == Some(master_uuid))
    {
        return Err(ApiError::HostItsOwnSlave {});
    }
    if store.count(class_ids::host) > 1 {
        return Err(ApiError::JoiningHostCannotBeMasterOfOtherHosts {});
    }
    let vms = store.all(class_ids::VM);
    let not_dom0 = || {
        vms.iter()
            .filter(|v| v.get(fields::VM::is_control_domain) != &Value::Bool(true))
    };
    if not_dom0().any(|v| v.get(fields::VM::power_state) == &VmPowerState::Running.value()) {
        return Err(ApiError::JoiningHostCannotHaveRunningVms {});
    }
    if vms
        .iter()
        .any(|v| !v.get(fields::VM::current_operations).as_map().is_empty())
    {
        return Err(ApiError::JoiningHostCannotHaveVmsWithCurrentOperations {});
    }
    if store.all(class_ids::SR).iter().any(|s| {
        s.get(fields::SR::shared) == &Value::Bool(true) && s.get(fields::SR::is_tools_sr) != &Value::Bool(true)
    }) {
        return Err(ApiError::JoiningHostCannotContainSharedSrs {});
    }
    Ok(())
}

/// `xapid.pool.prepare_join(session, joiner uuid, joiner address)` on the master: the pool
/// database settings the joiner is to use (JSON of [`EtcdConfig`]), after moving this host's
/// database into etcd if it is not there yet and adding the joiner as a member.
pub async fn prepare_join(agent: &Arc<Agent>, joiner: &str, address: &str) -> Result<Value, ApiError> {
    require_master(agent)?;
    super::rotate::refuse_while_pending(agent)?;
    if joiner.is_empty() || address.is_empty() {
        return Err(ApiError::invalid_value("address", address));
    }
    if !agent.store.is_pooled() {
        require_etcd()?;
        let name = agent
            .store
            .get(class_ids::host, &agent.host)
            .and_then(|h| h.uuid().map(str::to_owned))
            .unwrap_or_else(|| "master".into());
        let client = url(&agent.host_address, CLIENT_PORT);
        let peer = url(&agent.host_address, PEER_PORT);
        let mut cfg = EtcdConfig::new(vec![client.clone()]);
        cfg.member = Some(MemberConfig::single(&name, POOL_MEMBER_DIR.into(), &client, &peer));
        tracing::info!("first join: moving this host's database into etcd");
        agent
            .store
            .switch_to_pool(&agent.state_dir, &cfg, true)
            .await
            .map_err(store_error)?;
    }
    let members = agent.store.pool_members().await.map_err(store_error)?;
    let (client, peer) = (url(address, CLIENT_PORT), url(address, PEER_PORT));
    let mut endpoints: Vec<String> = members.iter().flat_map(|m| m.client_urls.iter().cloned()).collect();
    // A member left behind by an earlier join of the same host (a rejoin after a failure).
    if let Some(stale) = members.iter().find(|m| m.peer_urls.contains(&peer)) {
        agent.store.remove_pool_member(stale.id).await.map_err(store_error)?;
        endpoints.retain(|e| e != &client);
    }
    let voters = members.iter().filter(|m| !m.peer_urls.contains(&peer)).count();
    let mut cfg = EtcdConfig::new(endpoints.clone());
    if voters < VOTERS {
        let after = agent.store.add_pool_member(peer.clone()).await.map_err(store_error)?;
        let initial: Vec<String> = after
            .iter()
            .filter_map(|m| {
                let name = if m.name.is_empty() { joiner } else { m.name.as_str() };
                m.peer_urls.first().map(|p| format!("{name}={p}"))
            })
            .collect();
        cfg.endpoints.insert(0, client.clone());
        cfg.member = Some(MemberConfig {
            name: joiner.to_owned(),
            data_dir: POOL_MEMBER_DIR.into(),
            client_url: client,
            peer_url: peer,
            initial_cluster: initial.join(","),
            new_cluster: false,
        });
    }
    let secret = super::secret::ensure(&agent.state_dir).map_err(ApiError::internal)?;
    let json = serde_json::to_string(&Grant { etcd: cfg, secret }).map_err(ApiError::internal)?;
    Ok(Value::str(json))
}

/// What the master hands a joining host: the pool database's settings and the pool secret.
#[derive(serde::Serialize, serde::Deserialize)]
struct Grant {
    etcd: EtcdConfig,
    secret: String,
}

/// `pool.eject(host)` on the master: the host leaves (its own database from now on, fresh),
/// and its records leave the pool database.
pub async fn eject(agent: &Arc<Agent>, c: &Call) -> Result<Value, ApiError> {
    require_master(agent)?;
    super::rotate::refuse_while_pending(agent)?;
    let host = c.ref_arg(0)?.to_owned();
    let record = agent
        .store
        .get(class_ids::host, &host)
        .ok_or_else(|| ApiError::handle_invalid("host", &host))?;
    if host == agent.host {
        return Err(ApiError::internal(
            "Cannot_eject_master: the pool's master cannot be ejected",
        ));
    }
    let busy = agent.store.all(class_ids::VM).iter().any(|v| {
        v.get(fields::VM::resident_on).as_ref_str() == Some(host.as_str())
            && v.get(fields::VM::is_control_domain) != &Value::Bool(true)
            && v.get(fields::VM::power_state) != &VmPowerState::Halted.value()
    });
    if busy {
        return Err(ApiError::not_allowed("VM resident on host"));
    }
    let address = record.get(fields::host::address).as_str().unwrap_or("").to_owned();
    let name = record.uuid().unwrap_or("").to_owned();
    let left = match Remote::to_host(agent, &host) {
        Ok(remote) => remote
            .private("leave", c.session_ref(), &[])
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = left {
        tracing::warn!(error = %e, host = %host, "the ejected host did not answer; removing its records anyway");
    }
    remove_etcd_member(agent, &name, &address).await?;
    remove_own_records(agent, &host).await?;
    Ok(Value::None)
}

/// Removes the etcd member of the host named `name` at `address`, if it still is one.
pub(super) async fn remove_etcd_member(agent: &Agent, name: &str, address: &str) -> Result<(), ApiError> {
    if let Ok(members) = agent.store.pool_members().await {
        let peer = url(address, PEER_PORT);
        for m in members.iter().filter(|m| m.name == name || m.peer_urls.contains(&peer)) {
            agent.store.remove_pool_member(m.id).await.map_err(store_error)?;
        }
    }
    Ok(())
}

/// Removes a host's own records (those it would carry away) from the pool database; the
/// networks stay, being the pool's.
pub(super) async fn remove_own_records(agent: &Agent, host: &str) -> Result<(), ApiError> {
    let own = carry::collect(&agent.store, host);
    // Its PBDs of the pool's shared SRs (the SRs stay with the pool).
    let shared_pbds: Vec<String> = agent
        .store
        .all(class_ids::PBD)
        .into_iter()
        .filter(|p| p.get(fields::PBD::host).as_ref_str() == Some(host))
        .map(|p| p.reference.clone())
        .collect();
    agent
        .store
        .write(|tx| {
            for p in &shared_pbds {
                if tx.get(class_ids::PBD, p).is_some() {
                    crate::objects::destroy(tx, class_ids::PBD, p)?;
                }
            }
            // Networks are the pool's: other hosts' PIFs are on them too.
            for o in own.iter().rev().filter(|o| o.class != class_ids::network) {
                if tx.get(o.class, &o.reference).is_some() {
                    crate::objects::destroy(tx, o.class, &o.reference)?;
                }
            }
            Ok(())
        })
        .await
}

/// `xapid.pool.leave(session)` on the host being ejected: it takes its own objects into a
/// fresh one-host database of its own, with a pool of its own, and stops using the pool's.
pub async fn leave(agent: &Arc<Agent>) -> Result<Value, ApiError> {
    if !agent.store.is_pooled() {
        return Err(ApiError::not_allowed("this host is not in a pool"));
    }
    let carried = carry::collect(&agent.store, &agent.host);
    // Stop being a voter first: the pool keeps its quorum.
    if let Ok(members) = agent.store.pool_members().await {
        let name = agent
            .store
            .get(class_ids::host, &agent.host)
            .and_then(|h| h.uuid().map(str::to_owned))
            .unwrap_or_default();
        let peer = url(&agent.host_address, PEER_PORT);
        for m in members.iter().filter(|m| m.name == name || m.peer_urls.contains(&peer)) {
            let _ = agent.store.remove_pool_member(m.id).await;
        }
    }
    let (agent2, carried2) = (agent.clone(), carried);
    // Answer first: the master waits for this reply, and the switch drops the pool database.
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if let Err(e) = become_standalone(&agent2, &carried2).await {
            tracing::error!(error = %e, "leaving the pool failed");
        }
    });
    Ok(Value::None)
}

async fn become_standalone(agent: &Arc<Agent>, carried: &[Arc<crate::value::Object>]) -> Result<(), ApiError> {
    let store = &agent.store;
    store
        .switch_to_standalone(&agent.state_dir)
        .await
        .map_err(store_error)?;
    let host = agent.host.clone();
    let pool = store
        .write(|tx| {
            carry::write(tx, store, carried)?;
            let sr = tx
                .get(class_ids::host, &host)
                .and_then(|h| h.get(fields::host::suspend_image_sr).as_ref_str().map(str::to_owned));
            let sr = sr.map_or_else(Value::null_ref, Value::reference);
            crate::first_boot::create_templates(tx)?;
            let mut pool = crate::value::default_object(class_ids::pool, &crate::objects::new_ref());
            pool.set(fields::pool::uuid, Value::str(crate::objects::new_uuid()));
            pool.set(fields::pool::master, Value::reference(host.as_str()));
            pool.set(fields::pool::default_SR, sr.clone());
            pool.set(fields::pool::suspend_image_SR, sr.clone());
            pool.set(fields::pool::crash_dump_SR, sr.clone());
            let r = pool.reference.clone();
            crate::objects::create(tx, pool)?;
            Ok(r)
        })
        .await?;
    *agent.pool.write() = pool;
    if let Err(e) = super::secret::forget(&agent.state_dir) {
        tracing::warn!(error = %e, "the pool secret of the pool left could not be removed");
    }
    crate::rbac::ensure_roles(store).await?;
    tracing::info!("left the pool: this host is alone again, on a fresh database");
    Ok(())
}
