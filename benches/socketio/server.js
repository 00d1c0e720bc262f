// The peer that `rejoin bench peer` runs beside rejoin: a Socket.IO 4 server
// with connection-state recovery, doing what rejoin does in memory.
//
//   POST /jobs/:id/events   (service token)  emits the JSON body to the job's room
//   socket.io, auth {token, job}             joins the job's room (client token)
//
// Tokens are the same HS256 JWTs rejoin takes, checked with the same secret
// (env JWT_SECRET), so both servers do the same work per handshake. Listens on
// 127.0.0.1:$PORT (0: any) and prints its address on the first line.
"use strict";

const crypto = require("node:crypto");
const http = require("node:http");
const { Server } = require("socket.io");

const secret = process.env.JWT_SECRET || "";
const port = Number(process.env.PORT || 0);

function claims(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const mac = crypto
    .createHmac("sha256", secret)
    .update(parts[0] + "." + parts[1])
    .digest("base64url");
  const given = Buffer.from(parts[2]);
  const wanted = Buffer.from(mac);
  if (given.length !== wanted.length || !crypto.timingSafeEqual(given, wanted)) return null;
  try {
    const header = JSON.parse(Buffer.from(parts[0], "base64url"));
    const body = JSON.parse(Buffer.from(parts[1], "base64url"));
    if (header.alg !== "HS256") return null;
    if (typeof body.exp !== "number" || body.exp < Date.now() / 1000) return null;
    return body;
  } catch {
    return null;
  }
}

const server = http.createServer((req, res) => {
  const m = /^\/jobs\/([^/]+)\/events$/.exec(req.url || "");
  if (req.method !== "POST" || !m) {
    res.writeHead(404).end();
    return;
  }
  const auth = (req.headers.authorization || "").replace(/^Bearer /, "");
  const who = claims(auth);
  if (!who || who.role !== "service") {
    res.writeHead(401).end();
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks));
    } catch {
      res.writeHead(400).end();
      return;
    }
    io.to(m[1]).emit("event", body);
    res.writeHead(201, { "content-type": "application/json" }).end('{"ok":true}');
  });
});

const io = new Server(server, {
  transports: ["websocket"],
  connectionStateRecovery: {
    maxDisconnectionDuration: 2 * 60 * 1000,
    skipMiddlewares: true,
  },
});

io.use((socket, next) => {
  const { token, job } = socket.handshake.auth || {};
  const who = claims(token);
  if (!who || who.role !== "client" || who.job !== job) {
    next(new Error("forbidden"));
    return;
  }
  socket.data.job = job;
  next();
});

io.on("connection", (socket) => {
  if (!socket.recovered) socket.join(socket.data.job);
});

server.listen(port, "127.0.0.1", () => {
  const { port } = server.address();
  console.log(`socket.io peer listening on http://127.0.0.1:${port}`);
});
