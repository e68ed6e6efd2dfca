// Xen Orchestra's `xen-api` client (pinned 4.7.6, unmodified) against a real xapid,
// over both of its transports.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'

import { Daemon, loadXenApi, rawJsonRpc } from './harness.mjs'

const { createClient, version } = await loadXenApi()
console.log(`xen-api client version: ${version}`)

const daemon = new Daemon()
before(async () => { await daemon.start() })
after(async () => { await daemon.cleanup() })

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

function makeClient(transport, password = daemon.password) {
  return createClient({
    url: daemon.url,
    auth: { user: 'root', password },
    allowUnauthorized: true,
    transport,
    watchEvents: false,
    syncStackTraces: true,
    callTimeout: 20e3,
  })
}

for (const transport of ['json-rpc', 'xml-rpc']) {
  describe(`xen-api ${version} over ${transport}`, () => {
    let xapi

    before(daemon.withLog(async () => {
      xapi = makeClient(transport)
      await xapi.connect()
    }))

    after(async () => {
      if (xapi !== undefined) await xapi.disconnect()
    })

    it('connects', daemon.withLog(async () => {
      assert.equal(xapi.status, 'connected')
      assert.match(xapi.sessionId, /^OpaqueRef:/)
      // connect() itself read pool.get_all_records and system.listMethods.
      assert.ok(xapi.pool, 'xen-api found no pool on connect')
      assert.match(xapi.pool.$ref, /^OpaqueRef:/)
    }))

    it('pool.get_all_records returns the pool', daemon.withLog(async () => {
      const pools = await xapi.call('pool.get_all_records')
      const refs = Object.keys(pools)
      assert.equal(refs.length, 1, JSON.stringify(pools).slice(0, 300))
      const pool = pools[refs[0]]
      assert.equal(refs[0], xapi.pool.$ref)
      assert.match(pool.master, /^OpaqueRef:/)
      assert.equal(typeof pool.uuid, 'string')
      const hosts = await xapi.call('host.get_all')
      assert.ok(hosts.includes(pool.master), `master ${pool.master} not in ${hosts}`)
    }))

    it('VM.get_all_records holds the control domain and templates', daemon.withLog(async () => {
      const vms = await xapi.call('VM.get_all_records')
      const recs = Object.values(vms)
      const doms = recs.filter(v => v.is_control_domain === true)
      assert.equal(doms.length, 1, 'exactly one control domain')
      assert.equal(doms[0].power_state, 'Running')
      assert.equal(Number(doms[0].domid), 0)
      assert.ok(recs.some(v => v.is_a_template === true && v.name_label === 'Other install media'),
        'template "Other install media" missing')
    }))

    it('reads a large (streamed) VM.get_all_records', daemon.withLog(async () => {
      // 150 clones put the reply well past the daemon's streaming threshold (256 KiB) in both
      // encodings, so it arrives chunk by chunk.
      const [template] = await xapi.call('VM.get_by_name_label', 'Other install media')
      const made = []
      try {
        for (let i = 0; i < 150; i++) {
          made.push(await xapi.call('VM.clone', template, `streamed-${transport}-${i}`))
        }
        const vms = await xapi.call('VM.get_all_records')
        for (const ref of made) assert.ok(ref in vms, `${ref} missing from VM.get_all_records`)
        assert.equal(vms[made[42]].name_label, `streamed-${transport}-42`)
        assert.deepEqual(vms[made[99]], await xapi.call('VM.get_record', made[99]))
      } finally {
        for (const ref of made) await xapi.call('VM.destroy', ref)
      }
    }))

    it('getAllRecords / getRecord / setField / getField', daemon.withLog(async () => {
      const vms = await xapi.getAllRecords('VM')
      const template = vms.find(v => v.name_label === 'Other install media')
      assert.ok(template, 'no "Other install media"')
      assert.equal(template.$type, 'VM')
      const again = await xapi.getRecordByUuid('VM', template.uuid)
      assert.equal(again.$ref, template.$ref)
      const label = `xen-api ${transport} ${randomUUID().slice(0, 8)}`
      await xapi.setField('VM', template.$ref, 'name_description', label)
      assert.equal(await xapi.getField('VM', template.$ref, 'name_description'), label)
      // setFieldEntry: remove_from_other_config (absent key: no error) then add_to_other_config.
      await xapi.setFieldEntry('VM', template.$ref, 'other_config', 'xo:test', transport)
      assert.equal((await xapi.getField('VM', template.$ref, 'other_config'))['xo:test'], transport)
      await xapi.setFieldEntry('VM', template.$ref, 'other_config', 'xo:test', null)
      assert.equal((await xapi.getField('VM', template.$ref, 'other_config'))['xo:test'], undefined)
    }))

    it('a failing call rejects with the XenAPI error code', daemon.withLog(async () => {
      const ref = `OpaqueRef:${randomUUID()}`
      await assert.rejects(xapi.call('VM.get_record', ref), error => {
        assert.equal(error.code, 'HANDLE_INVALID', String(error))
        assert.deepEqual(error.params, ['VM', ref])
        return true
      })
      const uuid = randomUUID()
      await assert.rejects(xapi.call('VM.get_by_uuid', uuid), error => {
        assert.equal(error.code, 'UUID_INVALID', String(error))
        assert.deepEqual(error.params, ['VM', uuid])
        return true
      })
      await assert.rejects(xapi.call('VM.frobnicate', ref), error => {
        assert.equal(error.code, 'MESSAGE_METHOD_UNKNOWN', String(error))
        assert.deepEqual(error.params, ['VM.frobnicate'])
        return true
      })
      // The session survives failures.
      assert.equal(Object.keys(await xapi.call('pool.get_all_records')).length, 1)
    }))

    it('a wrong password rejects connect() with SESSION_AUTHENTICATION_FAILED', daemon.withLog(async () => {
      const bad = makeClient(transport, daemon.password + '-wrong')
      await assert.rejects(bad.connect(), error => {
        assert.equal(error.code, 'SESSION_AUTHENTICATION_FAILED', String(error))
        return true
      })
      assert.equal(bad.status, 'disconnected')
    }))

    it('disconnects cleanly (the session is logged out)', daemon.withLog(async () => {
      const c = makeClient(transport)
      await c.connect()
      const sid = c.sessionId
      assert.equal((await rawJsonRpc(daemon.url, 'pool.get_all', [sid])).error, undefined)
      await c.disconnect()
      assert.equal(c.status, 'disconnected')
      // xen-api fires session.logout without awaiting it: poll briefly.
      let reply
      for (let i = 0; i < 40; i++) {
        reply = await rawJsonRpc(daemon.url, 'pool.get_all', [sid])
        if (reply.error !== undefined) break
        await sleep(50)
      }
      assert.equal(reply.error?.message, 'SESSION_INVALID', JSON.stringify(reply))
      assert.deepEqual(reply.error.data, [sid])
    }))
  })
}
