// One load run for `make bench-auction` (benchmarks/auction.py starts it).
//
// autocannon, from npm: its HTTP client runs on Node's JIT in one process and keeps 32
// connections busy at a few thousand requests/s on a fraction of one core, which a Python
// generator sharing the same two cores cannot (it would measure itself). The CLI sends one
// body; this script sends a mix of bodies (round robin over the list, shared by all
// connections) and records every response's latency at microsecond resolution (autocannon's
// own histogram keeps whole milliseconds), so the percentiles are computed by the bench.
//
// stdin:  {"url", "method", "connections", "duration_s", "timeout_s", "headers", "bodies": [string],
//          "amount" (optional: stop after this many requests instead of after duration_s),
//          "kinds" (optional: a label per body, e.g. why it cannot fill),
//          "rate" (optional: an open rate, see openLoop)}
// stdout: {"duration_s", "latencies_ms": [...], "status": {"200": n, ...}, "errors", "timeouts",
//          "sent", "cpu_s"} where cpu_s is this process's user + system CPU time during the run;
//          with "kinds", also "by_kind": {label: {"status": {"204": n, ...}, "reasons": {reason: n}}},
//          the answers to each label's bodies, with their X-No-Bid-Reason headers.
'use strict'

const fs = require('fs')
const autocannon = require('autocannon')

const spec = JSON.parse(fs.readFileSync(0, 'utf8'))
const bodies = spec.bodies
const kinds = spec.kinds
let next = 0
const latencies = []
const status = {}
const byKind = {}

// One request in flight per connection (no pipelining), so a connection's context holds the label of the
// body whose answer comes next: setupRequest sets it, onResponse reads it.
function countAnswer (statusCode, body, context, headers) {
  const counts = byKind[context.kind] || (byKind[context.kind] = { status: {}, reasons: {} })
  counts.status[statusCode] = (counts.status[statusCode] || 0) + 1
  const reason = headers['x-no-bid-reason'] || headers['X-No-Bid-Reason']
  if (reason !== undefined) counts.reasons[reason] = (counts.reasons[reason] || 0) + 1
}

const cpuBefore = process.cpuUsage()
const began = process.hrtime.bigint()

function report (errors, timeouts, sent) {
  const seconds = Number(process.hrtime.bigint() - began) / 1e9
  const cpu = process.cpuUsage(cpuBefore)
  process.stdout.write(JSON.stringify({
    duration_s: seconds,
    latencies_ms: latencies,
    status,
    errors,
    timeouts,
    sent,
    cpu_s: (cpu.user + cpu.system) / 1e6,
    ...(kinds ? { by_kind: byKind } : {})
  }))
}

// "rate": requests/s at evenly spaced start times over at most "connections" keep-alive sockets,
// whether or not earlier answers came (autocannon's own rate limit sends each connection's quota
// back to back at the start of every second, a saturated burst). A request's latency runs from its
// scheduled start, so time spent waiting for a free socket counts (no coordinated omission).
function openLoop () {
  const http = require('http')
  const target = new URL(spec.url)
  const agent = new http.Agent({ keepAlive: true, maxSockets: spec.connections })
  const start = process.hrtime.bigint()
  const end = spec.duration_s * 1e9
  let sent = 0
  let pending = 0
  let errors = 0
  let timeouts = 0
  let stopped = false
  const finish = () => { if (stopped && pending === 0) { agent.destroy(); report(errors, timeouts, sent) } }
  const send = (scheduledNs) => {
    const body = bodies[next]
    const kind = kinds ? kinds[next] : undefined
    next = (next + 1) % bodies.length
    sent++
    pending++
    const request = http.request({
      agent, host: target.hostname, port: target.port, path: target.pathname, method: spec.method,
      headers: { ...spec.headers, 'content-length': Buffer.byteLength(body) }, timeout: spec.timeout_s * 1000
    }, (response) => {
      response.resume()
      response.on('end', () => {
        latencies.push((Number(process.hrtime.bigint() - start) - scheduledNs) / 1e6)
        status[response.statusCode] = (status[response.statusCode] || 0) + 1
        if (kinds) countAnswer(response.statusCode, null, { kind }, response.headers)
        pending--
        finish()
      })
    })
    request.on('timeout', () => { timeouts++; request.destroy(new Error('timeout')) })
    request.on('error', () => { errors++; pending--; finish() })
    request.end(body)
  }
  const tick = () => {
    const elapsed = Number(process.hrtime.bigint() - start)
    const due = Math.min(Math.floor((Math.min(elapsed, end) / 1e9) * spec.rate), Math.floor(spec.duration_s * spec.rate))
    while (sent < due) send(Math.round((sent / spec.rate) * 1e9))
    if (elapsed >= end) { stopped = true; finish() } else setTimeout(tick, 1)
  }
  tick()
}

// Each connection sends its next request as soon as its answer comes (a closed loop).
function closedLoop () {
  const instance = autocannon({
    url: spec.url,
    connections: spec.connections,
    duration: spec.duration_s,
    amount: spec.amount,
    timeout: spec.timeout_s,
    requests: [{
      method: spec.method,
      headers: spec.headers,
      setupRequest: (request, context) => {
        request.body = bodies[next]
        if (kinds) context.kind = kinds[next]
        next = (next + 1) % bodies.length
        return request
      },
      ...(kinds ? { onResponse: countAnswer } : {})
    }]
  })

  instance.on('response', (client, statusCode, bytes, responseTimeMs) => {
    latencies.push(responseTimeMs)
    status[statusCode] = (status[statusCode] || 0) + 1
  })

  instance.on('done', (result) => report(result.errors, result.timeouts, result.requests.sent))
}

if (spec.rate) openLoop()
else closedLoop()
