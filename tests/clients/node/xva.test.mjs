// Xen Orchestra's XVA writer (`@xen-orchestra/xva` 1.0.3 from npm, unmodified) builds an
// archive of a VM with two disks and uploads it through `xen-api`'s putResource to
// `PUT /import/`; xapid must make the VM with its records and the disks' bytes intact
// (sha256 of each disk read back through `/export_raw_vdi`).

import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { createRequire } from 'node:module'
import path from 'node:path'
import { Readable } from 'node:stream'
import { pathToFileURL } from 'node:url'

import { Daemon, loadXenApi } from './harness.mjs'

const { createClient } = await loadXenApi()
const requireFromPrefix = createRequire(path.join(process.env.XAPID_NODE_PREFIX, 'package.json'))
const { importVm } = await import(pathToFileURL(requireFromPrefix.resolve('@xen-orchestra/xva/importVm.mjs')).href)
const xvaVersion = requireFromPrefix('@xen-orchestra/xva/package.json').version

const MiB = 1024 * 1024
const daemon = new Daemon()
before(async () => { await daemon.start() })
after(async () => { await daemon.cleanup() })

// A disk image: data in a few places, blank chunks between (which the writer leaves out).
function diskImage(size, seed) {
  const img = Buffer.alloc(size)
  for (const at of [0, 3 * MiB + 512, size - 4096]) randomBytes(4096).copy(img, at)
  img.writeUInt32BE(seed, 100)
  return img
}

// What the library reads of a disk: its size (a VHD footer's currentSize) and its bytes.
const fakeVhd = img => ({ footer: { currentSize: img.length }, rawContent: async () => Readable.from([img], { objectMode: false }) })

const sha256 = buf => createHash('sha256').update(buf).digest('hex')

describe(`@xen-orchestra/xva ${xvaVersion} → PUT /import`, () => {
  let xapi
  before(daemon.withLog(async () => {
    xapi = createClient({ url: daemon.url, auth: { user: 'root', password: daemon.password }, allowUnauthorized: true, watchEvents: ['task'] })
    await xapi.connect()
  }))
  after(async () => { if (xapi !== undefined) await xapi.disconnect() })

  it('imports the archive: the VM, its VIF and both disks byte for byte', daemon.withLog(async () => {
    const pool = (await xapi.call('pool.get_all'))[0]
    const srRef = await xapi.call('pool.get_default_SR', pool)
    const sr = { $ref: srRef, uuid: await xapi.call('SR.get_uuid', srRef), name_label: 'Local storage' }
    const netRef = (await xapi.call('network.get_all'))[0]
    const network = { uuid: await xapi.call('network.get_uuid', netRef), name_label: await xapi.call('network.get_name_label', netRef) }
    const images = [diskImage(8 * MiB, 1), diskImage(4 * MiB, 2)]
    const vm = {
      name_label: 'from-xo-xva',
      name_description: 'built by @xen-orchestra/xva',
      memory: 256 * MiB,
      nCpus: 2,
      firmware: 'uefi',
      networks: [{ macAddress: '02:12:34:56:78:9a', isGenerated: false }],
      vdis: images.map((img, i) => ({ name_label: `xo-disk-${i}`, name_description: '', virtual_size: img.length })),
      vhds: images.map(fakeVhd),
    }
    // The two methods the library calls, on the real client.
    const client = {
      task_create: name => xapi.call('task.create', name, ''),
      putResource: (...args) => xapi.putResource(...args),
    }
    const vmRef = await importVm(vm, client, sr, network)
    assert.match(vmRef, /^OpaqueRef:/)
    const rec = await xapi.call('VM.get_record', vmRef)
    assert.equal(rec.name_label, 'from-xo-xva')
    assert.equal(String(rec.VCPUs_max), '2')
    assert.equal(String(rec.memory_static_max), String(256 * MiB))
    assert.equal(rec.HVM_boot_params.firmware, 'uefi')
    assert.equal(rec.power_state, 'Halted')
    assert.equal(rec.VIFs.length, 1)
    assert.equal(await xapi.call('VIF.get_MAC', rec.VIFs[0]), '02:12:34:56:78:9a')
    const vbds = []
    for (const b of rec.VBDs) vbds.push(await xapi.call('VBD.get_record', b))
    vbds.sort((a, b) => Number(a.userdevice) - Number(b.userdevice))
    assert.equal(vbds.length, 2)
    for (const [i, vbd] of vbds.entries()) {
      const vdi = await xapi.call('VDI.get_record', vbd.VDI)
      assert.equal(vdi.name_label, `xo-disk-${i}`)
      assert.equal(String(vdi.virtual_size), String(images[i].length))
      assert.equal(vdi.SR, srRef)
      const res = await fetch(`${daemon.url}/export_raw_vdi?vdi=${vbd.VDI}&format=raw&session_id=${xapi.sessionId}`)
      assert.equal(res.status, 200)
      const got = Buffer.from(await res.arrayBuffer())
      assert.equal(sha256(got), sha256(images[i]), `disk ${i} differs`)
    }
  }))
})
