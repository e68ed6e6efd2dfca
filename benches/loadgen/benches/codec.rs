//! Codec micro-benchmarks through the crates' public API: XML-RPC and JSON-RPC encoding of a
//! 1,000-VM `VM.get_all_records` response, and decoding of large requests (the server never
//! decodes a response): a `methodCall` carrying the same 1,000 records as one parameter, and a
//! realistic `VM.create` with one full record, decoded and typed as dispatch types it.

use agent::schema::{class_ids, fields};
use agent::value::{default_object, record_from_json, write_json, Object, Value};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;

/// A VM as the daemon holds it after clone + provision + VIF.create + start.
fn vm(i: usize) -> Object {
    use fields::VM as f;
    let mut o = default_object(class_ids::VM, &format!("OpaqueRef:00000000-0000-4000-8000-{i:012}"));
    o.set(f::uuid, Value::str(format!("11111111-2222-4333-8444-{i:012}")));
    o.set(f::name_label, Value::str(format!("bench-vm-{i}")));
    o.set(f::name_description, Value::str("Template for Debian Bookworm 12"));
    o.set(f::power_state, agent::schema::enums::VmPowerState::Running.value());
    o.set(f::domid, Value::Int(i as i64 + 1));
    o.set(f::memory_static_max, Value::Int(1 << 30));
    o.set(f::memory_dynamic_max, Value::Int(1 << 30));
    o.set(f::memory_dynamic_min, Value::Int(1 << 30));
    o.set(f::memory_static_min, Value::Int(128 << 20));
    o.set(f::memory_target, Value::Int(1 << 30));
    o.set(f::VCPUs_max, Value::Int(1));
    o.set(f::VCPUs_at_startup, Value::Int(1));
    o.set(f::HVM_boot_policy, Value::str("BIOS order"));
    o.set(f::HVM_boot_params, Value::string_map([("order", "cdn")]));
    o.set(
        f::platform,
        Value::string_map([("acpi", "1"), ("apic", "true"), ("pae", "true"), ("viridian", "false")]),
    );
    o.set(
        f::other_config,
        Value::string_map([
            ("install-methods", "cdrom,nfs,http,ftp"),
            (
                "disks",
                "<provision><disk device=\"0\" size=\"10737418240\" sr=\"\" bootable=\"true\" type=\"system\"/></provision>",
            ),
            ("linux_template", "true"),
        ]),
    );
    o.set(
        f::allowed_operations,
        Value::Set(
            [
                "hard_shutdown",
                "suspend",
                "pause",
                "clean_shutdown",
                "hard_reboot",
                "snapshot",
            ]
            .iter()
            .map(|s| Value::Enum(s))
            .collect(),
        ),
    );
    o.set(
        f::VBDs,
        Value::Set(vec![Value::Ref(format!("OpaqueRef:vbd-{i:012}").into())].into()),
    );
    o.set(
        f::VIFs,
        Value::Set(vec![Value::Ref(format!("OpaqueRef:vif-{i:012}").into())].into()),
    );
    o.set(f::metrics, Value::Ref(format!("OpaqueRef:metrics-{i:012}").into()));
    o.set(f::resident_on, Value::Ref("OpaqueRef:host-000000000000".into()));
    o.set(f::domain_type, agent::schema::enums::DomainType::hvm.value());
    o.set(f::recommendations, Value::str("<restrictions><restriction field=\"memory-static-max\" max=\"137438953472\"/><restriction field=\"vcpus-max\" max=\"32\"/></restrictions>"));
    o
}

fn records(n: usize) -> Value {
    Value::Map(
        (0..n)
            .map(|i| {
                let o = vm(i);
                (Value::Ref(o.reference.clone().into()), Value::Record(Arc::new(o)))
            })
            .collect(),
    )
}

fn xml_call(method: &str, params: &[&Value]) -> String {
    let mut s = format!("<?xml version=\"1.0\"?><methodCall><methodName>{method}</methodName><params>");
    for p in params {
        s.push_str("<param>");
        agent::xml::write_value(p, &mut s);
        s.push_str("</param>");
    }
    s.push_str("</params></methodCall>");
    s
}

fn json_call(method: &str, params: &[&Value]) -> String {
    let mut s = format!("{{\"jsonrpc\":\"2.0\",\"method\":\"{method}\",\"params\":[");
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        write_json(p, &mut s);
    }
    s.push_str("],\"id\":1}");
    s
}

fn encode(c: &mut Criterion) {
    let v = records(1000);
    let xml_len = rpc::xmlrpc::success(&v).len() as u64;
    let id = serde_json::json!(1);
    let json_len = rpc::jsonrpc::success(rpc::jsonrpc::Version::V2, &id, &v).len() as u64;
    let mut g = c.benchmark_group("encode_get_all_records_1000_vms");
    g.throughput(Throughput::Bytes(xml_len));
    g.bench_function(BenchmarkId::new("xmlrpc_success", xml_len), |b| {
        b.iter(|| black_box(rpc::xmlrpc::success(black_box(&v))))
    });
    g.throughput(Throughput::Bytes(json_len));
    g.bench_function(BenchmarkId::new("jsonrpc_success", json_len), |b| {
        b.iter(|| black_box(rpc::jsonrpc::success(rpc::jsonrpc::Version::V2, &id, black_box(&v))))
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let session = Value::str("OpaqueRef:11111111-2222-4333-8444-555555555555");
    let v = records(1000);
    let big_xml = xml_call("VM.get_all_records", &[&session, &v]);
    let big_json = json_call("VM.get_all_records", &[&session, &v]);
    let mut g = c.benchmark_group("decode_request_1000_vm_records");
    g.throughput(Throughput::Bytes(big_xml.len() as u64));
    g.bench_function(BenchmarkId::new("xmlrpc_decode_call", big_xml.len()), |b| {
        b.iter(|| black_box(rpc::xmlrpc::decode_call(black_box(big_xml.as_bytes()))))
    });
    g.throughput(Throughput::Bytes(big_json.len() as u64));
    g.bench_function(BenchmarkId::new("jsonrpc_decode", big_json.len()), |b| {
        b.iter(|| black_box(rpc::jsonrpc::decode(black_box(big_json.as_bytes()))))
    });
    g.finish();

    // VM.create(session, record): decode the body, then type the record by the datamodel.
    let one = Value::Record(Arc::new(vm(7)));
    let create_xml = xml_call("VM.create", &[&session, &one]);
    let create_json = json_call("VM.create", &[&session, &one]);
    let mut g = c.benchmark_group("decode_and_type_vm_create");
    g.throughput(Throughput::Bytes(create_xml.len() as u64));
    g.bench_function(BenchmarkId::new("xmlrpc", create_xml.len()), |b| {
        b.iter(|| {
            let call = rpc::xmlrpc::decode_call(black_box(create_xml.as_bytes())).ok();
            let rec = call
                .as_ref()
                .and_then(|c| c.params.get(1))
                .map(|p| record_from_json(class_ids::VM, p, ""));
            black_box(rec)
        })
    });
    g.throughput(Throughput::Bytes(create_json.len() as u64));
    g.bench_function(BenchmarkId::new("jsonrpc", create_json.len()), |b| {
        b.iter(|| {
            let req = rpc::jsonrpc::decode(black_box(create_json.as_bytes())).ok();
            let rec = req
                .as_ref()
                .and_then(|r| r.params.get(1))
                .map(|p| record_from_json(class_ids::VM, p, ""));
            black_box(rec)
        })
    });
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
