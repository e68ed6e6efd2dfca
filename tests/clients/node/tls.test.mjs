// Xen Orchestra's `xen-api` client over HTTPS: xapid's self-signed certificate, which the
// client accepts only with `allowUnauthorized`, over both transports, with its event loop on.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'

import { Daemon, loadXenApi } from './harness.mjs'

const { createClient, version } = await loadXenApi()
console.log(`xen-api client version: ${version}`)

const daemon = new Daemon({ tls: true })
before(async () => { await daemon.start() })
after(async () => { await daemon.cleanup() })

function makeClient(transport, { allowUnauthorized = true, watchEvents = false } = {}) {
  return createClient({
    url: daemon.tlsUrl,
    auth: { user: 'root', password: daemon.password },
    allowUnauthorized,
    transport,
    watchEvents,
    callTimeout: 20e3,
  })
}

for (const transport of ['json-rpc', 'xml-rpc']) {
  describe(`xen-api ${version} over HTTPS, ${transport}`, () => {
    it('connects, sees the pool and the control domain through events, calls, disconnects', daemon.withLog(async () => {
      const xapi = makeClient(transport, { watchEvents: true })
      try {
        await xapi.connect()
        assert.equal(xapi.status, 'connected')
        assert.match(xapi.sessionId, /^OpaqueRef:/)
        const dom0 = await new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('no control domain in objects after 20 s')), 20e3)
          const look = () => {
            const found = Object.values(xapi.objects.all).find(o => o.$type === 'VM' && o.is_control_domain)
            if (found) { clearTimeout(timer); resolve(found) } else setTimeout(look, 100)
          }
          look()
        })
        assert.equal(dom0.power_state, 'Running')
        const name = `tls-${transport}`
        await xapi.call('VM.set_name_description', dom0.$ref, name)
        assert.equal(await xapi.call('VM.get_name_description', dom0.$ref), name)
      } finally {
        await xapi.disconnect()
      }
      assert.equal(xapi.status, 'disconnected')
    }))
  })
}

describe('certificate checks', () => {
  it('without allowUnauthorized the self-signed certificate is refused', daemon.withLog(async () => {
    const xapi = makeClient('json-rpc', { allowUnauthorized: false })
    try {
      await assert.rejects(xapi.connect(), e => /self[- ]signed|certificate/i.test(`${e.code} ${e.message}`))
    } finally {
      await xapi.disconnect().catch(() => {})
    }
  }))
})
