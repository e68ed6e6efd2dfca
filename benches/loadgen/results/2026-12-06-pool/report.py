import json,glob,statistics as st
rows={}
for f in sorted(glob.glob('/tmp/pool-bench/*.json')):
    b=f.split('/')[-1].split('-')[0]
    d=json.load(open(f))
    for l in d['lifecycle']:
        key=(b,l.get('protocol','json'),l['concurrency'])
        rows.setdefault(key,[]).append((l['ops_per_s'],l['daemon_cpu_ms_per_op'],l['all_ops_latency']['p50_ms'],l['all_ops_latency']['p99_ms']))
for c in sorted({k[2] for k in rows}):
    for b in ('base','head'):
        r=rows.get((b,'json',c)) or [v for k,v in rows.items() if k[0]==b and k[2]==c][0]
        print(f"C={c} {b}: runs={len(r)} ops/s median {st.median(x[0] for x in r):.0f} (all {[round(x[0]) for x in r]}), daemon CPU ms/op median {st.median(x[1] for x in r):.3f}, p50 {st.median(x[2] for x in r):.2f} ms, p99 {st.median(x[3] for x in r):.2f} ms")
