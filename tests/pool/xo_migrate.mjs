// Xen Orchestra's `xen-api` client (pinned, unmodified) moves a running VM to another pool the way
// Xen Orchestra's migration does it: `host.migrate_receive` on the destination's client, then
// `Async.VM.migrate_send` on the source's client (`callAsync`: the task, its events and its
// result read by the client). tests/pool/test_migrate_send.py prepares both sides and checks
// what arrived.
//
//   node xo_migrate.mjs <source address> <destination address> <password> <VM> <VDI> <SR there> <VIF> <network there>
//
// Prints the VM's ref in the destination pool; exits non-zero on any failed step.

import assert from 'node:assert/strict'
import { loadXenApi } from '../clients/node/harness.mjs'

const [source, destination, password, vm, vdi, sr, vif, network] = process.argv.slice(2)
const { createClient } = await loadXenApi()

const client = address =>
  createClient({
    url: `http://${address}`,
    auth: { user: 'root', password },
    allowUnauthorized: true,
    watchEvents: true,
    eventPollDelay: 1e3,
    callTimeout: 60e3,
  })
const timeout = setTimeout(() => {
  console.error('timed out')
  process.exit(3)
}, 90e3)
const from = client(source)
const to = client(destination)
await Promise.all([from.connect(), to.connect()])
await Promise.all([from.objectsFetched, to.objectsFetched])

const [host] = await to.call('host.get_all')
const pif = (await to.call('host.get_PIFs', host)).find(Boolean)
const migrationNetwork = await to.call('PIF.get_network', pif)
const token = await to.call('host.migrate_receive', host, migrationNetwork, {})
assert.equal(token.host, host)
const moved = await from.callAsync('VM.migrate_send', vm, token, true, { [vdi]: sr }, { [vif]: network }, {}, {})
assert.match(moved, /^OpaqueRef:/)
assert.equal(await to.call('VM.get_power_state', moved), 'Running')
console.log(moved)
clearTimeout(timeout)
await Promise.all([from.disconnect(), to.disconnect()])
process.exit(0)
