// Start and stop a real xapid for the node client tests, and load the pinned xen-api
// from the cache prefix that tests/clients/run.sh installed (XAPID_NODE_PREFIX).

import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { createRequire } from 'node:module'
import { fileURLToPath, pathToFileURL } from 'node:url'

const HERE = path.dirname(fileURLToPath(import.meta.url))
const REPO = process.env.XAPID_REPO || path.resolve(HERE, '..', '..', '..')
const START_TIMEOUT_MS = Number(process.env.XAPID_START_TIMEOUT ?? 30) * 1000

export async function loadXenApi() {
  const prefix = process.env.XAPID_NODE_PREFIX
  if (!prefix) throw new Error('XAPID_NODE_PREFIX is not set: run tests/clients/run.sh node')
  const require = createRequire(path.join(prefix, 'package.json'))
  const version = require('xen-api/package.json').version
  const mod = await import(pathToFileURL(require.resolve('xen-api')).href)
  return { ...mod, version }
}

export function xapidBin() {
  const bin = process.env.XAPID_BIN || path.join(REPO, 'target', 'release', 'xapid')
  fs.accessSync(bin, fs.constants.X_OK)
  return bin
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

function canConnect(port) {
  return new Promise(resolve => {
    const s = net.connect({ host: '127.0.0.1', port })
    s.setTimeout(500)
    s.on('connect', () => { s.destroy(); resolve(true) })
    s.on('error', () => resolve(false))
    s.on('timeout', () => { s.destroy(); resolve(false) })
  })
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))
const live = new Set()
process.on('exit', () => { for (const d of live) try { d.proc.kill('SIGKILL') } catch {} })

export class Daemon {
  // `{ tls: true }` also serves HTTPS (`--tls-listen`) on `tlsUrl`.
  constructor({ tls = false } = {}) {
    this.tls = tls
    this.tlsPort = undefined
    const base = ['/tmp', process.env.TMPDIR].find(d => d && !d.includes('_') && fs.existsSync(d)) || '/tmp'
    this.workdir = path.join(base, `xapid-node-${process.pid}-${randomBytes(3).toString('hex')}`)
    fs.mkdirSync(this.workdir, { mode: 0o700 })
    this.stateDir = path.join(this.workdir, 'state')
    fs.mkdirSync(this.stateDir)
    this.sockPath = path.join(this.workdir, 'xapi.sock')
    this.password = 'pw-' + randomBytes(8).toString('hex')
    this.passwordFile = path.join(this.workdir, 'root-password')
    fs.writeFileSync(this.passwordFile, this.password + '\n', { mode: 0o600 })
    this.logPath = path.join(this.workdir, 'xapid.log')
    this.proc = undefined
    this.port = undefined
  }

  get url() { return `http://127.0.0.1:${this.port}` }
  get tlsUrl() { return `https://127.0.0.1:${this.tlsPort}` }

  async start() {
    this.port = await freePort()
    const args = ['--listen', `127.0.0.1:${this.port}`, '--socket', this.sockPath,
      '--state-dir', this.stateDir, '--backend', 'simulator',
      '--root-password-file', this.passwordFile]
    if (this.tls) {
      this.tlsPort = await freePort()
      args.push('--tls-listen', `127.0.0.1:${this.tlsPort}`)
    }
    const bin = xapidBin()
    fs.appendFileSync(this.logPath, `\n=== start: ${bin} ${args.join(' ')}\n`)
    const log = fs.openSync(this.logPath, 'a')
    this.proc = spawn(bin, args, { stdio: ['ignore', log, log] })
    fs.closeSync(log)
    let exited = null
    this.proc.on('exit', (code, signal) => { exited = { code, signal } })
    this.exited = new Promise(resolve => this.proc.on('exit', (code, signal) => resolve({ code, signal })))
    live.add(this)
    const deadline = Date.now() + START_TIMEOUT_MS
    for (;;) {
      if (exited) throw new Error(`xapid exited during startup (${JSON.stringify(exited)})\n${this.logTail()}`)
      if (await canConnect(this.port) && (!this.tls || await canConnect(this.tlsPort))) return this
      if (Date.now() > deadline) {
        await this.stop()
        throw new Error(`xapid did not accept on ${this.url} within ${START_TIMEOUT_MS} ms\n${this.logTail()}`)
      }
      await sleep(50)
    }
  }

  async stop(signal = 'SIGTERM', timeoutMs = 15000) {
    const p = this.proc
    if (!p) return
    this.proc = undefined
    live.delete(this)
    if (p.exitCode === null && p.signalCode === null) {
      p.kill(signal)
      const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs)
      await this.exited
      clearTimeout(timer)
    }
  }

  async cleanup() {
    await this.stop()
    if (!process.env.XAPID_KEEP) fs.rmSync(this.workdir, { recursive: true, force: true })
  }

  logTail(lines = 60) {
    let text
    try { text = fs.readFileSync(this.logPath, 'utf8') } catch (e) { return `(no log: ${e})` }
    // eslint-disable-next-line no-control-regex
    const tail = text.replace(/\x1b\[[0-9;]*m/g, '').split('\n').slice(-lines)
    return `--- last ${tail.length} lines of ${this.logPath} ---\n${tail.join('\n')}`
  }

  // Wraps a test body so that a failure carries the daemon's log tail.
  withLog(fn) {
    return async (...args) => {
      try {
        return await fn(...args)
      } catch (error) {
        if (error && typeof error === 'object') {
          try { error.message = `${error.message}\n${this.logTail()}` } catch {}
        }
        throw error
      }
    }
  }
}

// A raw XenAPI JSON-RPC call (no client): returns the parsed reply.
export async function rawJsonRpc(url, method, params) {
  const res = await fetch(new URL('/jsonrpc', url), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', method, params, id: 1 }),
  })
  return res.json()
}
