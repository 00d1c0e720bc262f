// One address in front of several servers: each TCP connection goes to the
// next one in turn (how a plain load balancer spreads clients over nodes).
//
//   node round-robin.mjs HOST:PORT [HOST:PORT...]
//
// Listens on a free loopback port and prints `listening on 127.0.0.1:PORT`.
import net from "node:net"

const upstreams = process.argv.slice(2).map((a) => {
  const i = a.lastIndexOf(":")
  return { host: a.slice(0, i), port: Number(a.slice(i + 1)) }
})
let next = 0
const server = net.createServer((client) => {
  const { host, port } = upstreams[next++ % upstreams.length]
  const upstream = net.connect(port, host)
  client.pipe(upstream)
  upstream.pipe(client)
  client.on("error", () => upstream.destroy())
  upstream.on("error", () => client.destroy())
  client.on("close", () => upstream.destroy())
  upstream.on("close", () => client.destroy())
})
server.listen(0, "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${server.address().port}`)
})
