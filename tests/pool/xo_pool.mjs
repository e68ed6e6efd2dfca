// Xen Orchestra's `xen-api` client (pinned, unmodified) against the pool tests/pool/test_pool.py
// builds: connected to a MEMBER's address, it must follow HOST_IS_SLAVE to the master, see every
// host and VM of the pool, and get the event of a write made through another member.
//
//   node xo_pool.mjs <member address> <master address> <hosts> <password> <VM ref to watch> [VM prefix]
//
// Every host i must have a VM named `<VM prefix><i>` (prefix `vm-on-host`, test_pool.py's), or,
// with the prefix `-`, none is looked for (tests/pool/test_ha.py).
//
// Prints "ready" once its cache is filled (the test then renames the VM through a member),
// then "seen" when the rename arrives as an event; exits non-zero on any failed check.

import assert from 'node:assert/strict'
import { loadXenApi } from '../clients/node/harness.mjs'

const [member, master, hosts, password, vm, prefix = 'vm-on-host'] = process.argv.slice(2)
const { createClient } = await loadXenApi()

const xapi = createClient({
  url: `http://${member}`,
  auth: { user: 'root', password },
  allowUnauthorized: true,
  watchEvents: true,
  eventPollDelay: 1e3,
  callTimeout: 20e3,
})
const timeout = setTimeout(() => {
  console.error('timed out')
  process.exit(3)
}, 60e3)
await xapi.connect()
await xapi.objectsFetched
// It followed HOST_IS_SLAVE: the client now talks to the master.
assert.equal(new URL(xapi._url.href ?? `http://${xapi._url.hostname}`).hostname, master)
const all = Object.values(xapi.objects.all)
const hostObjs = all.filter(o => o.$type === 'host')
assert.equal(hostObjs.length, Number(hosts), 'hosts seen from the master')
const names = all.filter(o => o.$type === 'VM').map(o => o.name_label)
if (prefix !== '-') {
  for (let i = 0; i < Number(hosts); i++) assert.ok(names.includes(`${prefix}${i}`), `${prefix}${i} missing`)
} else {
  assert.ok(names.includes('ha-on-master'), 'ha-on-master missing')
}
console.log('ready')
await new Promise(resolve => {
  const check = () => {
    const o = xapi.getObjectByRef(vm, undefined)
    if (o !== undefined && o.name_label === 'renamed-through-a-member') resolve()
  }
  xapi.objects.on('update', check)
  check()
})
console.log('seen')
clearTimeout(timeout)
await xapi.disconnect()
process.exit(0)
