//! Host plugins: `host.call_plugin` and `host.call_extension`, run as the reference runs them
//! (docs/plugins.md).
//!
//! A plugin is an executable in the plugin directory. `call_plugin(host, plugin, fn, args)`
//! runs it with one argument, an XML-RPC `methodCall` of `fn` whose parameters are the
//! caller's session ref and `args` as a struct; the plugin prints a `methodResponse` whose
//! value is `{Status: Success, Value: <string>}` or `{Status: Failure, ErrorDescription:
//! [code, params…]}` (what `dist/XenAPIPlugin.py` writes), or an XML-RPC fault.
//!
//! An extension is an executable in the extension directory named by the method of a
//! JSON-RPC call; `call_extension(host, call)` runs it with `--xmlrpc` and the call as an
//! XML-RPC `methodCall` on stdin, and answers the value of its `methodResponse`.

use super::runner::{self, Ended, Finished, Spec};
use super::settings::PluginSettings;
use super::xmlrpc::{self, MethodResponse, ResponseError, XmlRpcValue};
use crate::call::Entry;
use crate::entry;
use crate::error::ApiError;
use crate::schema::class_ids;
use crate::value::Value;
use std::path::{Path, PathBuf};

/// The messages carried out here.
pub fn behaviour() -> Vec<Entry> {
    vec![
        entry!(class_ids::host, "call_plugin", |agent, _, c| {
            super::this_host(&agent, c.ref_arg(0)?)?;
            let args: Vec<(String, String)> = c
                .arg(3)
                .as_map()
                .iter()
                .map(|(k, v)| (k.key_text(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let settings = PluginSettings::from_env();
            call_plugin(&settings, c.session_ref(), c.str_arg(1), c.str_arg(2), &args)
                .await
                .map(Value::str)
        }),
        entry!(class_ids::host, "has_extension", |agent, _, c| {
            super::this_host(&agent, c.ref_arg(0)?)?;
            let settings = PluginSettings::from_env();
            Ok(Value::Bool(find(&settings.extension_dir, c.str_arg(1)).await.is_some()))
        }),
        entry!(class_ids::pool, "has_extension", |agent, ctx, c| {
            // Every host must have it (each host answers for itself).
            let name = c.str_arg(1);
            for h in agent.store.all(class_ids::host) {
                let args = [
                    serde_json::Value::String(c.session_ref().to_owned()),
                    serde_json::Value::String(h.reference.clone()),
                    serde_json::Value::String(name.to_owned()),
                ];
                if crate::dispatch::call(&agent, &ctx, "host.has_extension", &args).await? != Value::Bool(true) {
                    return Ok(Value::Bool(false));
                }
            }
            Ok(Value::Bool(true))
        }),
        entry!(class_ids::host, "call_extension", |agent, _, c| {
            super::this_host(&agent, c.ref_arg(0)?)?;
            let settings = PluginSettings::from_env();
            call_extension(&settings, c.str_arg(1)).await
        }),
    ]
}

/// The file a name stands for in `dir`, when it names an entry there: never a path that
/// leaves the directory (`/` inside, `.`, `..`), as the reference only runs what the
/// directory lists.
pub async fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return None;
    }
    let path = dir.join(name);
    tokio::fs::symlink_metadata(&path).await.ok().map(|_| path)
}

fn plugin_failure(status: impl Into<String>, stdout: impl Into<String>, stderr: impl Into<String>) -> ApiError {
    ApiError::XenapiPluginFailure {
        status: status.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
    }
}

/// Runs `fn_name` of `plugin` for the session `session`; the plugin's answer.
pub async fn call_plugin(
    settings: &PluginSettings,
    session: &str,
    plugin: &str,
    fn_name: &str,
    args: &[(String, String)],
) -> Result<String, ApiError> {
    let missing = || ApiError::XenapiMissingPlugin {
        name: plugin.to_owned(),
    };
    let path = find(&settings.plugin_dir, plugin).await.ok_or_else(missing)?;
    let call = xmlrpc::plugin_call(fn_name, session, args);
    let spec = Spec::new(&path, vec![call.into()], settings.env.clone(), settings.timeout);
    tracing::info!(plugin, r#fn = fn_name, "calling a host plugin");
    let done = match runner::run(&spec).await {
        Ok(done) => done,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(plugin_failure(format!("cannot run the plugin: {e}"), "", "")),
    };
    if done.ended != Ended::Exited(0) {
        tracing::warn!(plugin, r#fn = fn_name, ended = ?done.ended, "host plugin failed");
        return Err(plugin_failure(
            done.ended.describe(settings.timeout),
            done.stdout_text(),
            done.stderr_text(),
        ));
    }
    plugin_answer(&done)
}

/// What a plugin that exited with status 0 answers.
fn plugin_answer(done: &Finished) -> Result<String, ApiError> {
    let output = done.stdout_text();
    let reply = match std::str::from_utf8(&done.stdout) {
        Ok(text) => read_plugin_output(text),
        Err(e) => Err(ResponseError::NotXml(format!("the output is not UTF-8: {e}"))),
    };
    match reply {
        Ok(PluginReply::Success(s)) => Ok(s),
        Ok(PluginReply::Fault { code, reason }) => Err(plugin_failure("fault", code.to_string(), reason)),
        Ok(PluginReply::Failure(mut description)) => {
            let code = description.remove(0);
            Err(raised(&code, description)
                .unwrap_or_else(|(code, params)| plugin_failure(code, serde_json::Value::from(params).to_string(), "")))
        }
        Err(ResponseError::NotXml(e)) => Err(plugin_failure("failed to parse plugin output", output, e)),
        Err(ResponseError::Shape(e)) => Err(plugin_failure("unexpected XMLRPC result", output, e)),
    }
}

/// What a plugin printed, as the reference reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum PluginReply {
    /// `{Status: Success, Value: <string>}`.
    Success(String),
    /// `{Status: Failure, ErrorDescription: [code, params…]}` (never empty).
    Failure(Vec<String>),
    /// An XML-RPC fault.
    Fault {
        /// `faultCode`.
        code: i64,
        /// `faultString`.
        reason: String,
    },
}

/// Reads a plugin's output: one `methodResponse` holding one status struct (whose `Value` is
/// a string), or a fault.
pub fn read_plugin_output(text: &str) -> Result<PluginReply, ResponseError> {
    let shape = |m: &str| ResponseError::Shape(m.to_owned());
    match xmlrpc::parse_method_response(text)? {
        MethodResponse::Fault(f) => match (f.member("faultCode"), f.member("faultString")) {
            (Some(XmlRpcValue::Int(code)), Some(XmlRpcValue::String(reason))) => Ok(PluginReply::Fault {
                code: *code,
                reason: reason.clone(),
            }),
            _ => Err(shape("a fault without an integer faultCode and a string faultString")),
        },
        MethodResponse::Params(values) => {
            let [status] = values.as_slice() else {
                return Err(shape("expected a single return value (the status struct)"));
            };
            match status.member("Status").and_then(XmlRpcValue::as_str) {
                Some("Success") => match status.member("Value") {
                    Some(XmlRpcValue::String(s)) => Ok(PluginReply::Success(s.clone())),
                    Some(_) => Err(shape("the plugin's Value is not a string")),
                    None => Err(shape("a Success status without a Value")),
                },
                Some("Failure") => match status.member("ErrorDescription") {
                    Some(XmlRpcValue::Array(items)) if !items.is_empty() => items
                        .iter()
                        .map(|i| i.as_str().map(str::to_owned))
                        .collect::<Option<Vec<String>>>()
                        .map(PluginReply::Failure)
                        .ok_or_else(|| shape("an ErrorDescription that is not all strings")),
                    _ => Err(shape("a Failure status without a non-empty ErrorDescription")),
                },
                _ => Err(shape("no Status of Success or Failure")),
            }
        }
    }
}

/// The error a plugin or an extension raised as `code` with `params`, where this daemon can
/// carry that code; else the code and parameters back. (The reference passes any code on;
/// `ApiError` holds only the codes it lists, so the others travel inside a code it has.)
fn raised(code: &str, mut params: Vec<String>) -> Result<ApiError, (String, Vec<String>)> {
    let mut take = |n: usize| -> Option<Vec<String>> { (params.len() == n).then(|| std::mem::take(&mut params)) };
    let e = match code {
        "XENAPI_PLUGIN_FAILURE" => take(3).map(|p| {
            let [status, stdout, stderr] = <[String; 3]>::try_from(p).unwrap_or_default();
            ApiError::XenapiPluginFailure { status, stdout, stderr }
        }),
        "XENAPI_MISSING_PLUGIN" => take(1).map(|p| ApiError::XenapiMissingPlugin { name: p.concat() }),
        "MESSAGE_METHOD_UNKNOWN" => take(1).map(|p| ApiError::MessageMethodUnknown { method: p.concat() }),
        "INTERNAL_ERROR" => take(1).map(|p| ApiError::InternalError { message: p.concat() }),
        "SESSION_INVALID" => take(1).map(|p| ApiError::SessionInvalid { handle: p.concat() }),
        "PERMISSION_DENIED" => take(1).map(|p| ApiError::PermissionDenied { message: p.concat() }),
        "OPERATION_NOT_ALLOWED" => take(1).map(|p| ApiError::OperationNotAllowed { reason: p.concat() }),
        "NOT_IMPLEMENTED" => take(1).map(|p| ApiError::NotImplemented { function: p.concat() }),
        "HANDLE_INVALID" => take(2).map(|p| {
            let [class, handle] = <[String; 2]>::try_from(p).unwrap_or_default();
            ApiError::HandleInvalid { class, handle }
        }),
        "INVALID_VALUE" => take(2).map(|p| {
            let [field, value] = <[String; 2]>::try_from(p).unwrap_or_default();
            ApiError::InvalidValue { field, value }
        }),
        _ => None,
    };
    e.ok_or_else(|| (code.to_owned(), params))
}

/// Runs the extension a JSON-RPC call names; the value it answers.
pub async fn call_extension(settings: &PluginSettings, call: &str) -> Result<Value, ApiError> {
    let (method, params) = parse_extension_call(call)?;
    let unknown = || ApiError::MessageMethodUnknown { method: method.clone() };
    let path = find(&settings.extension_dir, &method).await.ok_or_else(unknown)?;
    let mut spec = Spec::new(&path, vec!["--xmlrpc".into()], settings.env.clone(), settings.timeout);
    spec.stdin = Some(xmlrpc::extension_call(&method, &params).into_bytes());
    tracing::info!(extension = method, "calling a host extension");
    let where_ = path.display().to_string();
    let done = match runner::run(&spec).await {
        Ok(done) => done,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(unknown()),
        Err(e) => return Err(ApiError::internal(format!("{where_}: cannot run the extension: {e}"))),
    };
    if done.ended != Ended::Exited(0) {
        return Err(ApiError::internal(format!(
            "{where_}: {}: stdout: {} stderr: {}",
            done.ended.describe(settings.timeout),
            done.stdout_text(),
            done.stderr_text()
        )));
    }
    let output = done.stdout_text();
    let parsed = match std::str::from_utf8(&done.stdout) {
        Ok(text) => read_extension_output(text),
        Err(e) => Err(ResponseError::NotXml(format!("the output is not UTF-8: {e}"))),
    };
    match parsed {
        Ok(Ok(v)) => Ok(to_value(v)),
        Ok(Err(failure)) => Err(extension_failure(failure)),
        Err(e) => Err(ApiError::internal(format!(
            "{where_}: failed to parse extension output: {e}: {output}"
        ))),
    }
}

/// The method and parameters of a JSON-RPC call (version 1 or 2).
pub fn parse_extension_call(call: &str) -> Result<(String, Vec<serde_json::Value>), ApiError> {
    let bad = |why: &str| ApiError::internal(format!("malformed extension call: {why}"));
    let j: serde_json::Value = serde_json::from_str(call).map_err(|e| bad(&e.to_string()))?;
    let method = j
        .get("method")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| bad("no method"))?
        .to_owned();
    let params = match j.get("params") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(a)) => a.clone(),
        Some(other) => vec![other.clone()],
    };
    Ok((method, params))
}

/// An extension's `methodResponse` as the reference's RPC library reads it: a status struct's
/// `Value` or `ErrorDescription`, any other value as the answer itself, a fault as the failure
/// `["fault", code, string]`.
pub fn read_extension_output(text: &str) -> Result<Result<XmlRpcValue, XmlRpcValue>, ResponseError> {
    match xmlrpc::parse_method_response(text)? {
        MethodResponse::Fault(f) => {
            let (Some(code), Some(string)) = (f.member("faultCode"), f.member("faultString")) else {
                return Err(ResponseError::Shape("a fault without faultCode and faultString".into()));
            };
            Ok(Err(XmlRpcValue::Array(vec![
                XmlRpcValue::String("fault".into()),
                code.clone(),
                string.clone(),
            ])))
        }
        MethodResponse::Params(values) => {
            let mut values = values.into_iter();
            let (Some(v), None) = (values.next(), values.next()) else {
                return Err(ResponseError::Shape("expected exactly one <param>".into()));
            };
            let status = v.member("Status").and_then(XmlRpcValue::as_str);
            Ok(match (status, v.member("Value"), v.member("ErrorDescription")) {
                (Some("Success"), Some(value), _) => Ok(value.clone()),
                (Some("Failure"), _, Some(description)) => Err(description.clone()),
                _ => Ok(v),
            })
        }
    }
}

/// The error an extension's failure value stands for, as the reference raises it.
fn extension_failure(failure: XmlRpcValue) -> ApiError {
    let protocol = |f: &XmlRpcValue| ApiError::ExtensionProtocolFailure {
        failure: f.to_json().to_string(),
    };
    let description = match &failure {
        XmlRpcValue::Array(items) => match items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
        {
            Some(d) if !d.is_empty() => d,
            _ => return protocol(&failure),
        },
        XmlRpcValue::String(code) => vec![code.clone()],
        _ => return protocol(&failure),
    };
    let mut description = description.into_iter();
    let code = description.next().unwrap_or_default();
    raised(&code, description.collect()).unwrap_or_else(|(code, params)| {
        ApiError::internal(format!(
            "the extension raised {code} {}",
            serde_json::Value::from(params)
        ))
    })
}

/// An extension's answer as a typed value.
fn to_value(v: XmlRpcValue) -> Value {
    match v {
        XmlRpcValue::String(s) | XmlRpcValue::Base64(s) => Value::str(s),
        XmlRpcValue::DateTime(s) => match crate::value::parse_datetime(&s) {
            Some(t) => Value::DateTime(t),
            None => Value::str(s),
        },
        XmlRpcValue::Int(i) => Value::Int(i),
        XmlRpcValue::Bool(b) => Value::Bool(b),
        XmlRpcValue::Double(d) => Value::Float(d),
        XmlRpcValue::Array(items) => Value::set(items.into_iter().map(to_value).collect()),
        XmlRpcValue::Struct(members) => Value::Struct(members.into_iter().map(|(k, v)| (k, to_value(v))).collect()),
        XmlRpcValue::Nil => Value::None,
    }
}

#[cfg(test)]
mod tests;
