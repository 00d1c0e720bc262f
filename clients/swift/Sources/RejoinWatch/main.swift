// rejoin-watch: a job followed from a terminal with the Swift client, one JSON line per
// update on stdout. Exits 0 when the job completed, 1 otherwise.
import Foundation
import Rejoin

let usage = """
    usage: rejoin-watch --url ws://HOST:PORT/ws/progress --job ID --token T \
    [--last-seq N --session-id S --epoch E] [--ping-secs S] [--retry-base-secs S] [--retry-cap-secs S]
    """

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("rejoin-watch: \(message)\n\(usage)\n".utf8))
    exit(2)
}

func parse(_ arguments: [String]) -> [String: String] {
    var flags: [String: String] = [:]
    var rest = arguments.dropFirst()
    while let name = rest.popFirst() {
        guard name.hasPrefix("--"), let value = rest.popFirst() else { fail("expected --flag value at \(name)") }
        flags[String(name.dropFirst(2))] = value
    }
    return flags
}

let flags = parse(CommandLine.arguments)
for required in ["url", "job", "token"] where (flags[required] ?? "").isEmpty {
    fail("--\(required) is required")
}
func seconds(_ name: String, _ fallback: Double) -> Double {
    guard let text = flags[name] else { return fallback }
    guard let value = Double(text), value > 0 else { fail("--\(name) must be a positive number of seconds") }
    return value
}
guard let url = URL(string: flags["url"]!) else { fail("--url is not a URL") }
let job = flags["job"]!
let store = MemoryPositionStore()
if flags["last-seq"] != nil || flags["session-id"] != nil {
    store.save(
        Position(sessionId: flags["session-id"], lastSeq: flags["last-seq"].flatMap { Int64($0) }, epoch: flags["epoch"]),
        jobId: job)
}
let options = RejoinOptions(
    baseDelay: seconds("retry-base-secs", 0.5), maxDelay: seconds("retry-cap-secs", 20),
    pingInterval: seconds("ping-secs", 15))
let client = RejoinClient(url: url, jobId: job, token: flags["token"]!, store: store, options: options)

func say(_ line: [String: Any]) {
    guard let data = try? JSONSerialization.data(withJSONObject: line, options: [.sortedKeys]) else { return }
    FileHandle.standardOutput.write(data + Data("\n".utf8))
}

func object(_ json: Data) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: json) as? [String: Any]) ?? [:]
}

let watch = Task {
    var completed = false
    var last: ConnectionState = .idle
    for await update in client.updates {
        switch update {
        case .state(let hello, let json):
            var line = object(json)
            line["hello"] = hello.type
            line["type"] = "state"
            say(line)
        case .event(let event):
            var line = object(event.json)
            line["event"] = event.type
            line["type"] = "event"
            say(line)
        case .finished(let status):
            completed = status == "completed"
            say(["type": "finished", "status": status])
        case .connection(let state, let detail):
            last = state
            var line: [String: Any] = ["type": "connection", "state": state.rawValue]
            for (key, value) in detail { line[key] = key == "resumed" ? (value == 1) as Any : value as Any }
            say(line)
        }
    }
    // A moment for the socket's close to go out.
    try? await Task.sleep(nanoseconds: 50_000_000)
    exit(last == .finished && completed ? 0 : 1)
}
Task { await client.start() }
dispatchMain()
