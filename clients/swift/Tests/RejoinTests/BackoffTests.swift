import XCTest

@testable import Rejoin

final class BackoffTests: XCTestCase {
    func testFullJitterStaysInItsWindow() {
        // attempt n: [0, min(cap, base * 2^n))
        XCTAssertEqual(backoffDelay(attempt: 0, base: 0.5, cap: 20, random: 0), 0)
        XCTAssertEqual(backoffDelay(attempt: 0, base: 0.5, cap: 20, random: 0.999), 0.4995, accuracy: 1e-9)
        XCTAssertEqual(backoffDelay(attempt: 3, base: 0.5, cap: 20, random: 0.5), 2, accuracy: 1e-9)
        XCTAssertEqual(backoffDelay(attempt: 6, base: 0.5, cap: 20, random: 0.5), 10, accuracy: 1e-9)
        XCTAssertEqual(backoffDelay(attempt: 500, base: 0.5, cap: 20, random: 0.5), 10, accuracy: 1e-9)
        for attempt in 0..<10 {
            let d = backoffDelay(attempt: attempt, base: 0.5, cap: 20)
            XCTAssert(d >= 0 && d < min(20, 0.5 * pow(2, Double(attempt))))
        }
    }

    func testTokenExpiryIsReadFromTheClaims() {
        // {"alg":"HS256"} . {"exp":2000000000} . signature (not checked here)
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjIwMDAwMDAwMDB9.c2ln"
        let now = Date(timeIntervalSince1970: 1_999_999_000)
        XCTAssertEqual(tokenSecondsLeft(token, now: now), 1000)
        XCTAssertNil(tokenSecondsLeft("not-a-token"))
        XCTAssertNil(tokenSecondsLeft("a.e30.b"))  // {} has no exp
    }

    func testPositionsAreKeptPerJob() {
        let store = MemoryPositionStore()
        XCTAssertNil(store.load(jobId: "a"))
        store.save(Position(sessionId: "s", lastSeq: 7, epoch: "e"), jobId: "a")
        XCTAssertEqual(store.load(jobId: "a"), Position(sessionId: "s", lastSeq: 7, epoch: "e"))
        XCTAssertNil(store.load(jobId: "b"))
    }

    func testFinalStates() {
        XCTAssertEqual(
            [ConnectionState.finished, .replaced, .failed, .stopped].map(\.isFinal), [true, true, true, true])
        XCTAssertEqual([ConnectionState.idle, .connecting, .live, .reconnecting].map(\.isFinal), [false, false, false, false])
    }
}
