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

    func testAnyRetryAfterBecomesADelayFromZeroToAnHourOrNone() {
        XCTAssertEqual(retryAfterSeconds("2"), 2)
        XCTAssertEqual(retryAfterSeconds(" 1.5 "), 1.5)
        XCTAssertEqual(retryAfterSeconds("-5"), 0)
        XCTAssertEqual(retryAfterSeconds("1e20"), maxRetryAfter)
        for junk in ["inf", "-inf", "nan", "infinity", "soon", "", nil] as [String?] {
            XCTAssertNil(retryAfterSeconds(junk), String(describing: junk))
        }
        // Whatever a delay is, sleeping on it never traps.
        XCTAssertEqual(nanoseconds(.infinity), 0)
        XCTAssertEqual(nanoseconds(.nan), 0)
        XCTAssertEqual(nanoseconds(-1), 0)
        XCTAssertEqual(nanoseconds(1e20), UInt64(365 * 24 * 3600) * 1_000_000_000)
        XCTAssertEqual(nanoseconds(1.5), 1_500_000_000)
    }

    func testAfter1012AClientWaitsARandomZeroToOneSecond() {
        XCTAssertEqual(restartDelay(random: 0), 0)
        XCTAssertEqual(restartDelay(random: 0.9999999), 0.999)
        for _ in 0..<100 {
            let d = restartDelay()
            XCTAssert(d >= 0 && d < 1)
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
