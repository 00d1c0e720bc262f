import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Follows one job's progress over rejoin's WebSocket, keeping the view alive across drops.
///
/// It resumes with `sessionId`, `lastSeq` and `epoch` (kept in a ``PositionStore``),
/// reconnects with full-jitter backoff, honours `Retry-After`, renews its token, drops
/// duplicate seqs, and stops for good when the job finishes, the session is taken over,
/// or the server refuses it.
///
/// ```swift
/// let client = RejoinClient(url: url, jobId: jobId, token: token)
/// Task {
///     for await update in client.updates { render(update) }
/// }
/// await client.start()
/// ```
public actor RejoinClient {
    /// Every update of this watch, in order; it ends when the watch does.
    public nonisolated let updates: AsyncStream<Update>
    /// The job watched.
    public nonisolated let jobId: String
    /// The WebSocket endpoint, `wss://HOST/ws/progress`.
    public nonisolated let url: URL
    /// The token the next connection uses.
    public private(set) var token: String
    /// The connection's state.
    public private(set) var state: ConnectionState = .idle
    /// Where the next connection resumes from.
    public private(set) var position: Position

    private let continuation: AsyncStream<Update>.Continuation
    private let store: any PositionStore
    private let tokens: (any TokenProvider)?
    private let options: RejoinOptions
    private let session: URLSession
    private var resuming: Bool
    private var status: String?
    private var attempt = 0
    private var renewed = false
    private var paused = false
    private var socket: URLSessionWebSocketTask?
    /// Counts connections: a task's callbacks act only while theirs is the current one.
    private var generation = 0
    private var opened = false
    /// The job's terminal event was processed.
    private var sawTerminal = false
    private var heard = Date()
    private var acked: Int64?
    private var retryTask: Task<Void, Never>?
    private var pingTask: Task<Void, Never>?
    private var ackTask: Task<Void, Never>?
    private var refreshTask: Task<Void, Never>?

    /// A client for `jobId` at `url` (`wss://HOST/ws/progress`) with its client `token`.
    ///
    /// - Parameters:
    ///   - store: where the position is kept (``UserDefaultsPositionStore`` survives relaunches).
    ///   - tokenProvider: renews the token; without one, `POST /v1/jobs/{id}/token` does.
    ///   - options: timings; the defaults are rejoin's documented ones.
    ///   - session: the `URLSession` its sockets and requests use.
    public init(
        url: URL, jobId: String, token: String,
        store: any PositionStore = MemoryPositionStore(),
        tokenProvider: (any TokenProvider)? = nil,
        options: RejoinOptions = RejoinOptions(),
        session: URLSession = URLSession(configuration: .default)
    ) {
        self.url = url
        self.jobId = jobId
        self.token = token
        self.store = store
        self.tokens = tokenProvider
        self.options = options
        self.session = session
        let position = store.load(jobId: jobId) ?? Position()
        self.position = position
        self.resuming = position.sessionId != nil || position.lastSeq != nil
        (updates, continuation) = AsyncStream.makeStream(of: Update.self)
    }

    /// Starts watching. A client watches once: after it ends, make another.
    public func start() async {
        guard state == .idle else { return }
        await connect()
    }

    /// Closes the connection and stops for good.
    public func stop() {
        guard !state.isFinal else { return }
        let open = socket
        end(.stopped)
        open?.cancel(with: .normalClosure, reason: nil)
    }

    /// The app went to the background: close the socket (1001) so the server knows at
    /// once that nobody watches; ``resume()`` comes back.
    public func pause() {
        guard !state.isFinal, !paused else { return }
        paused = true
        let open = socket
        dropConnection()
        retryTask?.cancel()
        retryTask = nil
        open?.cancel(with: .goingAway, reason: nil)
        setState(.reconnecting, ["paused": 1])
    }

    /// The app came back to the foreground: reconnect now, or check a live socket with a ping.
    public func resume() async {
        paused = false
        await wake()
    }

    /// The network path changed (Wi-Fi to cellular, back online): a live socket is
    /// checked with a ping at once, a waiting reconnect goes now.
    public func networkChanged() async {
        await wake()
    }

    // MARK: - Connections

    private var trying: ConnectionState { resuming ? .reconnecting : .connecting }

    private func setState(_ next: ConnectionState, _ detail: [String: Int] = [:]) {
        if state == next && detail["retryInMs"] == nil { return }
        state = next
        continuation.yield(.connection(next, detail: detail))
    }

    private func end(_ final: ConnectionState, _ detail: [String: Int] = [:]) {
        dropConnection()
        retryTask?.cancel()
        refreshTask?.cancel()
        retryTask = nil
        refreshTask = nil
        setState(final, detail)
        continuation.finish()
    }

    /// Forgets the current socket and its timers.
    private func dropConnection() {
        socket = nil
        generation += 1
        pingTask?.cancel()
        ackTask?.cancel()
        pingTask = nil
        ackTask = nil
    }

    private func wake() async {
        guard !state.isFinal, !paused else { return }
        if state == .live, let open = socket {
            checkNow(open)
            return
        }
        guard socket == nil else { return }  // an attempt is under way
        retryTask?.cancel()
        retryTask = nil
        attempt = 0
        await connect()
    }

    private func connect() async {
        retryTask = nil
        guard !state.isFinal, !paused, socket == nil else { return }
        setState(trying)
        if let left = tokenSecondsLeft(token), left < 30 {
            guard await renew() else { return }
        }
        guard !state.isFinal, !paused, socket == nil else { return }
        var request = URLRequest(url: connectURL())
        request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
        #if canImport(FoundationNetworking)
            // Foundation on Linux sends `Connection: keep-alive`, which is no upgrade.
            request.setValue("Upgrade", forHTTPHeaderField: "Connection")
        #endif
        let task = session.webSocketTask(with: request)
        generation += 1
        let current = generation
        socket = task
        opened = false
        heard = Date()
        task.resume()
        Task { await self.receive(task, current) }
    }

    private func connectURL() -> URL {
        var parts = URLComponents(url: url, resolvingAgainstBaseURL: false)!
        var query = parts.queryItems ?? []
        query.append(URLQueryItem(name: "jobId", value: jobId))
        if resuming {
            query.append(URLQueryItem(name: "reconnect", value: "true"))
            if let s = position.sessionId { query.append(URLQueryItem(name: "sessionId", value: s)) }
            if let n = position.lastSeq { query.append(URLQueryItem(name: "lastSeq", value: String(n))) }
            if let e = position.epoch { query.append(URLQueryItem(name: "epoch", value: e)) }
        }
        parts.queryItems = query
        return parts.url!
    }

    private func receive(_ task: URLSessionWebSocketTask, _ current: Int) async {
        while true {
            let message: URLSessionWebSocketTask.Message
            do {
                message = try await task.receive()
            } catch {
                if current == generation { await ended(task) }
                return
            }
            guard current == generation else { return }
            opened = true
            heard = Date()
            if case .string(let text) = message { handle(text, task) }
            if current != generation { return }
        }
    }

    /// The connection ended: a refused upgrade, a close, or a failure.
    private func ended(_ task: URLSessionWebSocketTask) async {
        dropConnection()
        let response = task.response as? HTTPURLResponse
        if !opened, let response, response.statusCode != 101 {
            let retryAfter = retryAfterSeconds(response.value(forHTTPHeaderField: "Retry-After"))
            await refused(response.statusCode, retryAfter: retryAfter)
            return
        }
        let code = task.closeCode.rawValue
        let reason = task.closeReason.flatMap { String(data: $0, encoding: .utf8) } ?? ""
        switch (code, reason) {
        case (1000, "job finished"):
            if !sawTerminal { await fetchTail() }
            if !sawTerminal { continuation.yield(.finished(status: status ?? "")) }
            end(.finished)
        case (1000, "Client reconnecting"):
            end(.replaced)
        case (1003, _), (1009, _):
            end(.failed, ["code": code])
        case (1012, _):
            // The node restarted or lost its lease: any node, after a random 0–1 s.
            schedule(in: restartDelay())
        default:
            schedule(atLeast: 0)
        }
    }

    /// The socket was closed with `job finished` before the job's end reached us (a
    /// message in flight with the close can be lost: Foundation on Linux drops it, the
    /// `reconnected` before it too). The rest is read from the job's event stream,
    /// resumed from `lastSeq`, which replays what is missing and ends; its hello stands
    /// for the one lost when the socket never delivered its own.
    private func fetchTail() async {
        let query = URLComponents(url: connectURL(), resolvingAgainstBaseURL: false)?.percentEncodedQuery
        guard let streamURL = httpURL(url, path: "/v1/jobs/\(jobId)/stream", query: query) else { return }
        var request = URLRequest(url: streamURL, timeoutInterval: 10)
        request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
        request.setValue("text/event-stream", forHTTPHeaderField: "Accept")
        guard let (body, status) = try? await load(request, with: session), status == 200,
            let text = String(data: body, encoding: .utf8)
        else { return }
        for block in text.components(separatedBy: "\n\n") {
            var event = "message"
            var data = ""
            for line in block.split(separator: "\n") {
                if line.hasPrefix("event:") { event = line.dropFirst(6).trimmingCharacters(in: .whitespaces) }
                if line.hasPrefix("data:") { data += line.dropFirst(5).trimmingCharacters(in: .whitespaces) }
            }
            let hello = event == "connected" || event == "reconnected"
            if hello && !opened {
                // Marked: the stream's session is its own, so its `resumed` tells
                // nothing of whether the socket's resume did.
                handle(data.replacingOccurrences(of: "{", with: "{\"via\":\"stream\",", options: .anchored), nil)
            } else if event != "close" && !hello && !data.isEmpty {
                handle(data, nil)
            }
        }
    }

    /// A refused upgrade: stop, renew, or wait as it says.
    private func refused(_ status: Int, retryAfter: Double?) async {
        switch status {
        case 401 where !renewed:
            renewed = true
            if await renew() { schedule(atLeast: 0) }
        case 400, 401, 403, 404, 410:
            end(.failed, ["code": status])
        case 429, 503:
            schedule(atLeast: retryAfter ?? 0)
        default:
            schedule(atLeast: 0)  // 409 too_many_watchers and the rest: back off
        }
    }

    /// Reconnects after the backoff, and no sooner than `atLeast` seconds.
    private func schedule(atLeast: Double) {
        guard !state.isFinal, !paused, retryTask == nil else { return }
        let delay = max(atLeast, backoffDelay(attempt: attempt, base: options.baseDelay, cap: options.maxDelay))
        attempt += 1
        schedule(in: delay)
    }

    /// Reconnects after exactly `delay` seconds, not counted as a failed attempt.
    private func schedule(in delay: Double) {
        guard !state.isFinal, !paused, retryTask == nil else { return }
        setState(trying, ["retryInMs": Int(delay * 1000)])
        retryTask = Task {
            try? await Task.sleep(nanoseconds: nanoseconds(delay))
            guard !Task.isCancelled else { return }
            await self.retryNow()
        }
    }

    private func retryNow() async {
        retryTask = nil
        await connect()
    }

    // MARK: - Messages

    private func handle(_ text: String, _ task: URLSessionWebSocketTask?) {
        let data = Data(text.utf8)
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let type = object["type"] as? String
        else { return }
        switch type {
        case "connected", "reconnected":
            guard let hello = try? JSONDecoder().decode(JobSnapshot.self, from: data) else { return }
            var last = position.lastSeq
            // Another log: our lastSeq means nothing there; the server replays from the start.
            if position.epoch != nil && hello.epoch != position.epoch { last = nil }
            if type == "connected" { last = max(last ?? 0, hello.lastSeq) }
            save(Position(sessionId: hello.sessionId, lastSeq: last, epoch: hello.epoch))
            status = hello.status
            resuming = true
            attempt = 0
            renewed = false
            continuation.yield(.state(hello, json: data))
            setState(.live, ["resumed": hello.resumed == true ? 1 : 0, "missed": hello.missed ?? 0])
            if let task { startPings(task) }
            planRefresh()
        case "progress", "message", "stalled", "completed", "failed", "cancelled":
            guard let seq = (object["seq"] as? NSNumber)?.int64Value else { return }
            if let last = position.lastSeq, seq <= last { return }  // seen before
            save(Position(sessionId: position.sessionId, lastSeq: seq, epoch: position.epoch))
            let event = JobEvent(type: type, seq: seq, json: data)
            if event.isTerminal {
                status = type
                sawTerminal = true
            } else if type == "progress" {
                status = "running"
            }
            continuation.yield(.event(event))
            if event.isTerminal {
                continuation.yield(.finished(status: type))
                if state != .finished {
                    end(.finished)
                    task?.cancel(with: .normalClosure, reason: nil)
                }
                return
            }
            if let task { scheduleAck(task) }
        default:
            break
        }
    }

    private func save(_ next: Position) {
        position = next
        store.save(next, jobId: jobId)
    }

    private func send(_ text: String, _ task: URLSessionWebSocketTask) {
        Task { try? await task.send(.string(text)) }
    }

    private func startPings(_ task: URLSessionWebSocketTask) {
        pingTask?.cancel()
        let every = options.pingInterval
        let current = generation
        pingTask = Task {
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: nanoseconds(every))
                guard !Task.isCancelled else { return }
                self.pingTick(task, current)
            }
        }
    }

    private func pingTick(_ task: URLSessionWebSocketTask, _ current: Int) {
        guard current == generation else { return }
        // Two intervals of silence: the connection is gone (phones leave half-open
        // sockets behind that never report an error).
        if Date().timeIntervalSince(heard) >= 2 * options.pingInterval {
            giveUp(task)
            return
        }
        send(#"{"type":"ping"}"#, task)
    }

    /// Woken by the app or the network: a ping now, and the socket given up unless
    /// something answers within an interval.
    private func checkNow(_ task: URLSessionWebSocketTask) {
        let sent = Date()
        let current = generation
        send(#"{"type":"ping"}"#, task)
        let wait = options.pingInterval
        Task {
            try? await Task.sleep(nanoseconds: nanoseconds(wait))
            self.checkAnswered(task, current, since: sent)
        }
    }

    private func checkAnswered(_ task: URLSessionWebSocketTask, _ current: Int, since: Date) {
        if current == generation && heard < since { giveUp(task) }
    }

    private func giveUp(_ task: URLSessionWebSocketTask) {
        dropConnection()
        task.cancel(with: .abnormalClosure, reason: nil)
        schedule(atLeast: 0)
    }

    private func scheduleAck(_ task: URLSessionWebSocketTask) {
        guard ackTask == nil else { return }
        let wait = options.ackInterval
        let current = generation
        ackTask = Task {
            try? await Task.sleep(nanoseconds: nanoseconds(wait))
            self.sendAck(task, current)
        }
    }

    private func sendAck(_ task: URLSessionWebSocketTask, _ current: Int) {
        ackTask = nil
        guard current == generation, let last = position.lastSeq, last != acked else { return }
        acked = last
        send(#"{"type":"ack","seq":\#(last)}"#, task)
    }

    // MARK: - Tokens

    /// A fresh token; `false` when none can be had (the watch has ended in failed).
    private func renew() async -> Bool {
        let provider = tokens ?? ServerTokenProvider(endpoint: url, session: session)
        do {
            guard let fresh = try await provider.renew(jobId: jobId, current: token) else {
                end(.failed, ["code": 401])
                return false
            }
            token = fresh
            planRefresh()
        } catch {
            // A passing failure: go on with the token there is.
        }
        return !state.isFinal
    }

    private func planRefresh() {
        refreshTask?.cancel()
        refreshTask = nil
        guard !state.isFinal, let left = tokenSecondsLeft(token) else { return }
        let wait = max(0, left - options.refreshBefore)
        refreshTask = Task {
            try? await Task.sleep(nanoseconds: nanoseconds(wait))
            guard !Task.isCancelled else { return }
            _ = await self.renew()
        }
    }
}

/// Renews a client token with `POST /v1/jobs/{id}/token`, authorised by the current one.
public struct ServerTokenProvider: TokenProvider {
    private let endpoint: URL
    private let session: URLSession

    /// A provider for the server behind `endpoint` (its `ws(s)://HOST/ws/progress` URL).
    public init(endpoint: URL, session: URLSession = URLSession(configuration: .default)) {
        self.endpoint = endpoint
        self.session = session
    }

    /// The new token, `nil` when the server refuses (401, 403, 404); throws on anything passing.
    public func renew(jobId: String, current: String) async throws -> String? {
        guard let tokenURL = httpURL(endpoint, path: "/v1/jobs/\(jobId)/token") else {
            throw URLError(.badURL)
        }
        var request = URLRequest(url: tokenURL)
        request.httpMethod = "POST"
        request.setValue("Bearer \(current)", forHTTPHeaderField: "Authorization")
        let (data, status) = try await load(request, with: session)
        if [401, 403, 404, 410].contains(status) { return nil }
        guard (200..<300).contains(status),
            let body = try JSONSerialization.jsonObject(with: data) as? [String: Any],
            let token = body["clientToken"] as? String
        else { throw URLError(.badServerResponse) }
        return token
    }
}

#if canImport(Network)
    import Network

    extension RejoinClient {
        /// Calls ``networkChanged()`` whenever the network path changes. Keep the monitor
        /// while the watch runs; `cancel()` it after.
        public nonisolated func monitorNetworkPath(queue: DispatchQueue = .global()) -> NWPathMonitor {
            let monitor = NWPathMonitor()
            monitor.pathUpdateHandler = { [weak self] _ in
                Task { await self?.networkChanged() }
            }
            monitor.start(queue: queue)
            return monitor
        }
    }
#endif
