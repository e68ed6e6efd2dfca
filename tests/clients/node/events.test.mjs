// Xen Orchestra's `xen-api` client (pinned 4.7.6, unmodified) with its event loop on
// (`watchEvents: true`), over both transports: the object cache (`xapi.objects`) filled by
// get_all_records + event.from, VM power changes and renames seen through mod events, and
// `callAsync` (Async.* task + task events + the task's XML-RPC result fragment).
//
// How the client wants to be used (node_modules/xen-api/index.mjs): createClient(opts) ->
// connect() -> the loop does event.inject('pool', ref) for a token, <type>.get_all_records for
// every type system.listMethods lists, then event.from(types, token, 60.1) forever;
// `objectsFetched` resolves after the first fetch; `objects` is an xo-collection emitting
// 'add'/'update'/'remove' with {id: object}; getObjectByRef(ref) reads the cache;
// callAsync(method, ...args) calls Async.<method> and resolves with the parsed task result.
// (4.7.6 has no `waitObject`; it lives in xo-server.)

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'

import { Daemon, loadXenApi } from './harness.mjs'

const { createClient, version } = await loadXenApi()
console.log(`xen-api client version: ${version}`)

const daemon = new Daemon()
before(async () => { await daemon.start() })
after(async () => { await daemon.cleanup() })

const TEMPLATE = 'Debian Bookworm 12'

// Resolves with the cached object once `pred(object)` holds (checked now and on every update).
function waitFor(xapi, ref, pred, what, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const objects = xapi.objects
    let timer
    const check = () => {
      const obj = xapi.getObjectByRef(ref, undefined)
      if (obj !== undefined && pred(obj)) {
        clearTimeout(timer)
        objects.removeListener('add', check)
        objects.removeListener('update', check)
        resolve(obj)
        return true
      }
      return false
    }
    if (check()) return
    objects.on('add', check)
    objects.on('update', check)
    timer = setTimeout(() => {
      objects.removeListener('add', check)
      objects.removeListener('update', check)
      const obj = xapi.getObjectByRef(ref, undefined)
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; cached: ${JSON.stringify(obj)?.slice(0, 400)}; ` +
        `watchEventsError: ${xapi.watchEventsError}`))
    }, timeoutMs)
  })
}

for (const transport of ['json-rpc', 'xml-rpc']) {
  describe(`xen-api ${version} with watchEvents over ${transport}`, () => {
    let xapi
    let vm // a VM installed from the template, for this transport

    before(daemon.withLog(async () => {
      xapi = createClient({
        url: daemon.url,
        auth: { user: 'root', password: daemon.password },
        allowUnauthorized: true,
        transport,
        watchEvents: true,
        eventPollDelay: 1e3, // retry delay after an event.from error (default 60 s)
        syncStackTraces: true,
        callTimeout: 20e3,
      })
      await xapi.connect()
      await xapi.objectsFetched
    }))

    after(async () => {
      if (xapi !== undefined) await xapi.disconnect()
    })

    it('fills xapi.objects: the pool and the control domain', daemon.withLog(async () => {
      assert.equal(xapi.status, 'connected')
      const all = Object.values(xapi.objects.all)
      const pools = all.filter(o => o.$type === 'pool')
      assert.equal(pools.length, 1, 'one pool in xapi.objects')
      assert.equal(pools[0].$ref, xapi.pool.$ref)
      const doms = all.filter(o => o.$type === 'VM' && o.is_control_domain === true)
      assert.equal(doms.length, 1, 'the control domain in xapi.objects')
      assert.equal(doms[0].power_state, 'Running')
      assert.ok(all.some(o => o.$type === 'host'), 'a host in xapi.objects')
      assert.ok(all.some(o => o.$type === 'VM' && o.is_a_template && o.name_label === TEMPLATE),
        `template ${TEMPLATE} in xapi.objects`)
      // the cache is keyed by uuid and reachable by ref
      assert.equal(xapi.getObjectByRef(doms[0].$ref).uuid, doms[0].uuid)
      assert.equal(xapi.getObject(doms[0].uuid).$ref, doms[0].$ref)
      assert.equal(xapi.watchEventsError, undefined, String(xapi.watchEventsError))
    }))

    it('system.listMethods yields only real types for the initial fetch', daemon.withLog(async () => {
      // xen-api derives its types from every `*.get_all_records` method name (prefix up to the
      // first dot): an `Async.<class>.get_all_records` entry becomes a bogus type "Async".
      const methods = await xapi.call('system.listMethods')
      const bogus = methods.filter(m => m.endsWith('.get_all_records') && m.startsWith('Async.'))
      assert.deepEqual(bogus, [], 'Async variants of get_all_records break xen-api\'s type list')
    }))

    it('sees a new VM arrive (add events)', daemon.withLog(async () => {
      const [tref] = await xapi.call('VM.get_by_name_label', TEMPLATE)
      vm = await xapi.call('VM.clone', tref, `xen-api events ${transport}`)
      await xapi.call('VM.provision', vm)
      await xapi.call('VM.set_is_a_template', vm, false)
      const obj = await waitFor(xapi, vm, o => o.is_a_template === false && o.VBDs.length === 1,
        'the installed VM in xapi.objects')
      assert.equal(obj.$type, 'VM')
      assert.equal(obj.power_state, 'Halted')
    }))

    it('VM.start: power_state becomes Running through mod events', daemon.withLog(async () => {
      const seen = []
      const onUpdate = items => {
        for (const o of Object.values(items)) if (o.$ref === vm) seen.push(o.power_state)
      }
      xapi.objects.on('update', onUpdate)
      try {
        await xapi.call('VM.start', vm, false, false)
        const obj = await waitFor(xapi, vm, o => o.power_state === 'Running', 'power_state Running')
        assert.ok(Number(obj.domid) >= 1, `domid ${obj.domid}`)
        assert.equal(obj.resident_on, xapi.pool.master)
        assert.ok(seen.includes('Running'), `update events seen: ${seen}`)
        // the metrics object is cached and updated too
        await waitFor(xapi, obj.metrics, m => Number(m.memory_actual) > 0, 'VM_metrics.memory_actual > 0')
        await xapi.call('VM.hard_shutdown', vm)
        await waitFor(xapi, vm, o => o.power_state === 'Halted', 'power_state Halted')
      } finally {
        xapi.objects.removeListener('update', onUpdate)
      }
    }))

    it('a name_label change through call() reaches xapi.objects', daemon.withLog(async () => {
      const label = `renamed ${transport} ${randomUUID().slice(0, 8)}`
      const t0 = Date.now()
      await xapi.call('VM.set_name_label', vm, label)
      const obj = await waitFor(xapi, vm, o => o.name_label === label, `name_label ${label}`)
      assert.equal(obj.name_label, label)
      // the client polls with a 200 ms debounce; event.from itself must not add seconds
      assert.ok(Date.now() - t0 < 2000, `took ${Date.now() - t0} ms`)
    }))

    it('callAsync(VM.clone) resolves to the new VM ref', daemon.withLog(async () => {
      const name = `async clone ${transport}`
      const ref = await xapi.callAsync('VM.clone', vm, name)
      assert.equal(typeof ref, 'string')
      assert.match(ref, /^OpaqueRef:/)
      assert.notEqual(ref, vm)
      assert.equal(await xapi.call('VM.get_name_label', ref), name)
      const obj = await waitFor(xapi, ref, o => o.name_label === name, 'the clone in xapi.objects')
      assert.equal(obj.power_state, 'Halted')
      await xapi.call('VM.destroy', ref)
      await waitFor(xapi, vm, () => xapi.getObjectByRef(ref, undefined) === undefined, 'the clone removed (del event)')
    }))

    it('callAsync rejects with the task error', daemon.withLog(async () => {
      await xapi.call('VM.start', vm, false, false)
      await assert.rejects(xapi.callAsync('VM.start', vm, false, false), error => {
        assert.equal(error.code, 'VM_BAD_POWER_STATE', String(error))
        assert.deepEqual(error.params, [vm, 'halted', 'running'])
        return true
      })
      await xapi.call('VM.hard_shutdown', vm)
    }))

    it('callAsync of a void message resolves', daemon.withLog(async () => {
      const result = await xapi.callAsync('VM.start', vm, false, false)
      assert.ok(result === '' || result === undefined || result === null, `result ${JSON.stringify(result)}`)
      await waitFor(xapi, vm, o => o.power_state === 'Running', 'power_state Running')
      await xapi.callAsync('VM.hard_shutdown', vm)
      await waitFor(xapi, vm, o => o.power_state === 'Halted', 'power_state Halted')
    }))

    it('a destroyed VM leaves xapi.objects', daemon.withLog(async () => {
      await xapi.call('VM.destroy', vm)
      const removed = new Promise(resolve => {
        const check = () => {
          if (xapi.getObjectByRef(vm, undefined) === undefined) { xapi.objects.removeListener('remove', check); resolve() }
        }
        xapi.objects.on('remove', check)
        check()
      })
      await Promise.race([removed, new Promise((_, reject) => setTimeout(() => reject(new Error('VM not removed')), 5000))])
    }))

    it('no event loop error so far', () => {
      assert.equal(xapi.watchEventsError, undefined, String(xapi.watchEventsError))
    })

    it('disconnects cleanly', daemon.withLog(async () => {
      await xapi.disconnect()
      assert.equal(xapi.status, 'disconnected')
      xapi = undefined
    }))
  })
}
