// Xen Orchestra's pool metadata backup, made the way it makes it: `xen-api`'s getResource of
// `GET /pool/xmldbdump` with a task, and its restore check, putResource of the backup to
// `PUT /pool/xmldbdump?dry_run=true` with a task — as a stream with a length, which the client
// first probes with an empty upload. A damaged backup fails the task with the daemon's error.

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Readable } from 'node:stream'

import { Daemon, loadXenApi } from './harness.mjs'

const { createClient } = await loadXenApi()

const daemon = new Daemon()
before(async () => { await daemon.start() })
after(async () => { await daemon.cleanup() })

describe('pool metadata backup through xen-api', () => {
  let xapi
  before(daemon.withLog(async () => {
    xapi = createClient({ url: daemon.url, auth: { user: 'root', password: daemon.password }, allowUnauthorized: true, watchEvents: ['task'] })
    await xapi.connect()
  }))
  after(async () => { if (xapi !== undefined) await xapi.disconnect() })

  it('backs the database up and checks the backup for a restore', daemon.withLog(async () => {
    const template = (await xapi.call('VM.get_by_name_label', 'Other install media'))[0]
    const vm = await xapi.call('VM.clone', template, 'kept by the metadata backup')
    const uuid = await xapi.call('VM.get_uuid', vm)

    const response = await xapi.getResource('/pool/xmldbdump', { task: true })
    const backup = Buffer.from(await response.body.arrayBuffer())
    await response.task
    const text = backup.toString('utf8')
    assert.match(text, /^<\?xml version="1\.0" encoding="UTF-8"\?>\n<database><manifest>/)
    assert.match(text, /<pair key="schema_major_vsn" value="5"\/>/)
    const row = text.split('<row ').find(r => r.includes(`uuid="${uuid}"`))
    assert.ok(row !== undefined, 'the new VM has a row')
    assert.match(row, /name__label="kept%\.by%\.the%\.metadata%\.backup"/)

    // As Xen Orchestra's importPoolMetadata sends it (dry_run unless forced): a stream with a length.
    const stream = Readable.from([backup])
    stream.length = backup.length
    await xapi.putResource(stream, '/pool/xmldbdump', { query: { dry_run: 'true' }, task: true })
    assert.equal(await xapi.call('VM.get_name_label', vm), 'kept by the metadata backup')

    const damaged = Buffer.from(text.replace('value="775"', 'value="1"'))
    await assert.rejects(
      xapi.putResource(damaged, '/pool/xmldbdump', { query: { dry_run: 'true' }, task: true }),
      error => error.code === 'RESTORE_INCOMPATIBLE_VERSION'
    )
    await xapi.call('VM.destroy', vm)
  }))
})
