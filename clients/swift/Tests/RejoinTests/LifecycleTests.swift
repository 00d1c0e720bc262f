import Foundation
import XCTest

@testable import Rejoin

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The hooks an app calls, against a real rejoin server (`run test` starts one and
/// passes `REJOIN_TEST_URL` and a service token in `REJOIN_TEST_SERVICE_TOKEN`):
/// `pause()` closes the socket so the server sees the watcher leave, `resume()` comes
/// back into the same session with what was missed, `networkChanged()` on a live
/// socket checks it with a ping and keeps it.
final class LifecycleTests: XCTestCase {
    private var base = ""
    private var service = ""

    override func setUpWithError() throws {
        let env = ProcessInfo.processInfo.environment
        guard let url = env["REJOIN_TEST_URL"], let token = env["REJOIN_TEST_SERVICE_TOKEN"] else {
            throw XCTSkip("clients/swift/run test starts the server these tests need")
        }
        base = url
        service = token
    }

    private func call(_ method: String, _ path: String, _ body: [String: Any]? = nil) async throws -> [String: Any] {
        var request = URLRequest(url: URL(string: base + path)!)
        request.httpMethod = method
        request.setValue("Bearer \(service)", forHTTPHeaderField: "Authorization")
        if let body {
            request.httpBody = try JSONSerialization.data(withJSONObject: body)
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        let data: Data = try await withCheckedThrowingContinuation { done in
            URLSession.shared.dataTask(with: request) { data, _, error in
                if let error { done.resume(throwing: error) } else { done.resume(returning: data ?? Data()) }
            }.resume()
        }
        return (try JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
    }

    private func progress(_ job: String, _ p: Double) async throws -> Int64 {
        let answer = try await call("POST", "/v1/jobs/\(job)/events", ["type": "progress", "progress": p])
        return (answer["seq"] as? NSNumber)?.int64Value ?? -1
    }

    /// Sessions of the job with a live socket, as the server counts them.
    private func connected(_ job: String) async throws -> Int {
        let state = try await call("GET", "/v1/jobs/\(job)")
        let watchers = state["watchers"] as? [[String: Any]] ?? []
        return watchers.filter { $0["state"] as? String == "connected" }.count
    }

    func testPauseLeavesAndResumeComesBackWithWhatWasMissed() async throws {
        let created = try await call("POST", "/v1/jobs", [:])
        let job = try XCTUnwrap(created["jobId"] as? String)
        let token = try XCTUnwrap(created["clientToken"] as? String)
        let url = URL(string: base.replacingOccurrences(of: "http://", with: "ws://") + "/ws/progress")!
        let client = RejoinClient(url: url, jobId: job, token: token)
        let seen = Seen()
        let reader = Task { for await update in client.updates { await seen.add(update) } }
        await client.start()
        try await seen.wait("live") { if case .connection(.live, _) = $0 { return true } else { return false } }
        let first = try await progress(job, 0.1)
        try await seen.wait("the first event") { if case .event(let e) = $0 { return e.seq == first } else { return false } }

        await client.pause()
        try await seen.wait("paused") { if case .connection(.reconnecting, _) = $0 { return true } else { return false } }
        let deadline = Date().addingTimeInterval(15)
        while try await connected(job) != 0 {
            XCTAssert(Date() < deadline, "the server still counts the paused watcher")
            if Date() > deadline { return }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        let missed = [try await progress(job, 0.2), try await progress(job, 0.3)]

        await client.resume()
        let hello = try await seen.wait("the resume") { if case .state = $0 { return true } else { return false } }
        guard case .state(let snapshot, _) = hello else { return XCTFail("not a state: \(hello)") }
        XCTAssertEqual(snapshot.type, "reconnected")
        XCTAssertEqual(snapshot.resumed, true, "the same session continues")
        for seq in missed {
            try await seen.wait("missed event \(seq)") { if case .event(let e) = $0 { return e.seq == seq } else { return false } }
        }

        // A network change on a live socket: a ping, answered, and the socket stays.
        await client.networkChanged()
        let after = try await progress(job, 0.4)
        let next = try await seen.wait("the next update") {
            switch $0 {
            case .event, .connection: return true
            default: return false
            }
        }
        guard case .event(let event) = next, event.seq == after else {
            return XCTFail("still live after networkChanged, expected event \(after): \(next)")
        }
        await client.stop()
        try await seen.wait("stopped") { if case .connection(.stopped, _) = $0 { return true } else { return false } }
        reader.cancel()
    }
}

/// The updates seen so far, read in order.
actor Seen {
    private var updates: [Update] = []
    private var read = 0

    func add(_ update: Update) { updates.append(update) }

    private func take(_ matches: (Update) -> Bool) -> Update? {
        while read < updates.count {
            let update = updates[read]
            read += 1
            if matches(update) { return update }
        }
        return nil
    }

    /// The next update that `matches`, skipping the others; waits at most 15 s.
    @discardableResult
    func wait(_ what: String, _ matches: @Sendable (Update) -> Bool) async throws -> Update {
        let deadline = Date().addingTimeInterval(15)
        while true {
            if let update = take(matches) { return update }
            if Date() > deadline { throw Timeout(what: what) }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
    }

    struct Timeout: Error, CustomStringConvertible {
        let what: String
        var description: String { "timed out waiting for \(what)" }
    }
}
