import Foundation

/// The states a ``RejoinClient`` moves through, as every rejoin client names them.
public enum ConnectionState: String, Sendable {
    /// Not started yet.
    case idle
    /// Opening the first connection.
    case connecting
    /// Connected: updates arrive as they happen.
    case live
    /// The connection dropped (or the app is in the background); the client comes back.
    case reconnecting
    /// The job completed, failed or was cancelled: nothing more comes.
    case finished
    /// Another connection of this session took over (`1000 Client reconnecting`).
    case replaced
    /// Refused for good: 400, 403, 404, a token that cannot be renewed, a protocol error.
    case failed
    /// ``RejoinClient/stop()`` was called.
    case stopped

    /// True for the states after which the client does nothing more.
    public var isFinal: Bool {
        switch self {
        case .finished, .replaced, .failed, .stopped: return true
        default: return false
        }
    }
}

/// Where a watch resumes from: the server's session, the last seq processed, the log's epoch.
public struct Position: Sendable, Equatable, Codable {
    /// The session to resume (`sessionId` of the last `connected` or `reconnected`).
    public var sessionId: String?
    /// The highest job event seq processed.
    public var lastSeq: Int64?
    /// The epoch of the log that seq is from.
    public var epoch: String?

    /// A position; all `nil` is a fresh start.
    public init(sessionId: String? = nil, lastSeq: Int64? = nil, epoch: String? = nil) {
        self.sessionId = sessionId
        self.lastSeq = lastSeq
        self.epoch = epoch
    }
}

/// Keeps each job's ``Position`` across connections and app launches.
public protocol PositionStore: Sendable {
    /// The position saved for `jobId`, if any.
    func load(jobId: String) -> Position?
    /// Saves `position` for `jobId`.
    func save(_ position: Position, jobId: String)
}

/// A ``PositionStore`` in memory: positions last as long as the process.
public final class MemoryPositionStore: PositionStore, @unchecked Sendable {
    private let lock = NSLock()
    private var positions: [String: Position] = [:]

    /// An empty store.
    public init() {}

    /// The position saved for `jobId`, if any.
    public func load(jobId: String) -> Position? {
        lock.lock()
        defer { lock.unlock() }
        return positions[jobId]
    }

    /// Saves `position` for `jobId`.
    public func save(_ position: Position, jobId: String) {
        lock.lock()
        defer { lock.unlock() }
        positions[jobId] = position
    }
}

/// A ``PositionStore`` in `UserDefaults`, so a watch resumes after the app is relaunched.
public struct UserDefaultsPositionStore: PositionStore {
    private let prefix: String

    /// Positions under keys `prefix + jobId` in `UserDefaults.standard`.
    public init(prefix: String = "rejoin.position.") {
        self.prefix = prefix
    }

    /// The position saved for `jobId`, if any.
    public func load(jobId: String) -> Position? {
        guard let data = UserDefaults.standard.data(forKey: prefix + jobId) else { return nil }
        return try? JSONDecoder().decode(Position.self, from: data)
    }

    /// Saves `position` for `jobId`.
    public func save(_ position: Position, jobId: String) {
        if let data = try? JSONEncoder().encode(position) {
            UserDefaults.standard.set(data, forKey: prefix + jobId)
        }
    }
}

/// Renews the job's client token before it expires, or after a 401.
public protocol TokenProvider: Sendable {
    /// A new token for `jobId`, or `nil` when none can be had (the client then stops in
    /// ``ConnectionState/failed``). Throwing means a passing failure (offline): the
    /// client goes on with the token it has.
    func renew(jobId: String, current: String) async throws -> String?
}

/// The job as `connected` or `reconnected` showed it: its whole current state.
public struct JobSnapshot: Sendable, Decodable {
    /// `connected` or `reconnected`.
    public let type: String
    /// The job.
    public let jobId: String
    /// This watcher's session.
    public let sessionId: String
    /// The log's epoch.
    public let epoch: String
    /// `reconnected` only: the session continued within its grace window.
    public let resumed: Bool?
    /// `pending`, `running`, `completed`, `failed` or `cancelled`.
    public let status: String
    /// The job's progress, 0 to 1.
    public let progress: Double
    /// The job's last message, if any.
    public let message: String?
    /// The job's latest seq.
    public let lastSeq: Int64
    /// `reconnected` only: how many missed job events follow.
    public let missed: Int?
}

/// One job event, with its whole message as the server sent it.
public struct JobEvent: Sendable {
    /// `progress`, `message`, `stalled`, `completed`, `failed` or `cancelled`.
    public let type: String
    /// Its position in the job's stream.
    public let seq: Int64
    /// The message's JSON, as received.
    public let json: Data

    /// True for `completed`, `failed` and `cancelled`.
    public var isTerminal: Bool { ["completed", "failed", "cancelled"].contains(type) }
}

/// Something that happened to a watch, in the order it happened.
public enum Update: Sendable {
    /// The job's state from `connected` or `reconnected`, with that message's JSON.
    case state(JobSnapshot, json: Data)
    /// One job event, once, in seq order.
    case event(JobEvent)
    /// The connection's state changed; `detail` says more (`resumed`, `missed`, `retryInMs`, `code`).
    case connection(ConnectionState, detail: [String: Int])
    /// The watch ended with the job: its final status (`completed`, `failed`, `cancelled`).
    case finished(status: String)
}

/// Timings of a ``RejoinClient``; the defaults are rejoin's documented ones.
public struct RejoinOptions: Sendable {
    /// The first retry comes within this many seconds; each later one within twice the one before.
    public var baseDelay: Double
    /// The longest wait between attempts, in seconds.
    public var maxDelay: Double
    /// An application ping this often (seconds); a connection silent for two intervals is given up.
    public var pingInterval: Double
    /// Acknowledge the last seq at most this often (seconds).
    public var ackInterval: Double
    /// Renew the token this many seconds before it expires.
    public var refreshBefore: Double

    /// Options with rejoin's defaults: 0.5 s, 20 s, 15 s, 1 s, 60 s.
    public init(
        baseDelay: Double = 0.5, maxDelay: Double = 20, pingInterval: Double = 15,
        ackInterval: Double = 1, refreshBefore: Double = 60
    ) {
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.pingInterval = pingInterval
        self.ackInterval = ackInterval
        self.refreshBefore = refreshBefore
    }
}

/// Full-jitter backoff: a random delay in `[0, min(cap, base * 2^attempt))` seconds.
public func backoffDelay(
    attempt: Int, base: Double, cap: Double, random: Double = Double.random(in: 0..<1)
) -> Double {
    random * min(cap, base * pow(2, Double(min(attempt, 30))))
}

/// The longest wait a `Retry-After` is followed for, in seconds.
public let maxRetryAfter: Double = 3600

/// Seconds a `Retry-After` of seconds asks for, clamped to `[0, maxRetryAfter]`;
/// `nil` when absent or not a finite number (`inf`, `nan`, a date, garbage).
public func retryAfterSeconds(_ value: String?) -> Double? {
    guard let text = value?.trimmingCharacters(in: .whitespaces), let secs = Double(text),
        secs.isFinite
    else { return nil }
    return min(maxRetryAfter, max(0, secs))
}

/// The wait before coming back after close code 1012 (the node restarted or lost
/// its lease): a random 0–1 s, so a node's clients do not all return at one instant.
public func restartDelay(random: Double = Double.random(in: 0..<1)) -> Double {
    min(max(random, 0), 0.999)
}

/// Nanoseconds for `Task.sleep`, from any number of seconds: negative and NaN
/// are 0, and anything past a year waits a year (never a trap converting it).
func nanoseconds(_ seconds: Double) -> UInt64 {
    guard seconds.isFinite, seconds > 0 else { return 0 }
    return UInt64(min(seconds, 365 * 24 * 3600) * 1e9)
}

/// Seconds until a JWT's `exp` (not verified: the server does that), or `nil` when unreadable.
public func tokenSecondsLeft(_ token: String, now: Date = Date()) -> Double? {
    let parts = token.split(separator: ".")
    guard parts.count >= 2 else { return nil }
    var b64 = parts[1].replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
    while b64.count % 4 != 0 { b64 += "=" }
    guard let data = Data(base64Encoded: b64),
        let claims = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
        let exp = claims["exp"] as? NSNumber
    else { return nil }
    return exp.doubleValue - now.timeIntervalSince1970
}
