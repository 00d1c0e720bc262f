package io.rejoin

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Test

class UnitsTest {
    @Test
    fun fullJitterStaysInItsWindow() {
        // attempt n: [0, min(cap, base * 2^n))
        assertEquals(0L, Backoff.delay(0, 500, 20_000, 0.0))
        assertEquals(499L, Backoff.delay(0, 500, 20_000, 0.999))
        assertEquals(2_000L, Backoff.delay(3, 500, 20_000, 0.5))
        assertEquals(10_000L, Backoff.delay(6, 500, 20_000, 0.5))
        assertEquals(10_000L, Backoff.delay(500, 500, 20_000, 0.5))
        for (attempt in 0 until 10) {
            val d = Backoff.delay(attempt, 500, 20_000)
            assertTrue(d >= 0 && d < minOf(20_000.0, 500 * Math.pow(2.0, attempt.toDouble())))
        }
    }

    @Test
    fun anyRetryAfterBecomesADelayFromZeroToAnHourOrNone() {
        assertEquals(2_000L, Delays.retryAfterMs("2"))
        assertEquals(1_500L, Delays.retryAfterMs(" 1.5 "))
        assertEquals(0L, Delays.retryAfterMs("-5"))
        assertEquals(3_600_000L, Delays.retryAfterMs("1e20"))
        assertEquals(3_600_000L, Delays.retryAfterMs("9223372036854775807"))
        for (junk in listOf("inf", "Infinity", "-Infinity", "NaN", "nan", "soon", "", null)) {
            assertNull(junk, Delays.retryAfterMs(junk))
        }
    }

    @Test
    fun after1012AClientWaitsARandomZeroToOneSecond() {
        assertEquals(0L, Delays.restartMs(0.0))
        assertEquals(999L, Delays.restartMs(0.9999999))
        for (i in 0 until 100) {
            val d = Delays.restartMs()
            assertTrue(d in 0..999)
        }
    }

    @Test
    fun callsRacingTheClientsEndAreDroppedNotThrown() {
        // stop() ends the client and shuts its loop down on the loop's own
        // thread, while other threads may be calling in: whatever reaches
        // the loop after that is dropped, never thrown at the caller.
        val thrown = java.util.concurrent.atomic.AtomicInteger()
        repeat(300) {
            val client = RejoinClient("ws://127.0.0.1:9/ws/progress", "job", "token")
            val callers = (0 until 3).map {
                Thread {
                    try {
                        repeat(20) { client.stop(); client.pause(); client.resume() }
                    } catch (e: RuntimeException) {
                        thrown.incrementAndGet()
                    }
                }
            }
            callers.forEach { it.start() }
            callers.forEach { it.join() }
        }
        assertEquals(0, thrown.get())
    }

    @Test
    fun tokenExpiryIsReadFromTheClaims() {
        // {"alg":"HS256"} . {"exp":2000000000} . signature (not checked here)
        val token = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjIwMDAwMDAwMDB9.c2ln"
        assertEquals(1000L, Tokens.secondsLeft(token, 1_999_999_000_000L))
        assertNull(Tokens.secondsLeft("not-a-token"))
        assertNull(Tokens.secondsLeft("a.e30.b")) // {} has no exp
    }

    @Test
    fun positionsAreKeptPerJob() {
        val store = MemoryPositionStore()
        assertNull(store.load("a"))
        store.save("a", Position("s", 7, "e"))
        assertEquals(Position("s", 7, "e"), store.load("a"))
        assertNull(store.load("b"))
    }

    @Test
    fun finalStates() {
        for (s in ConnectionState.values()) {
            val final = s == ConnectionState.FINISHED || s == ConnectionState.REPLACED ||
                s == ConnectionState.FAILED || s == ConnectionState.STOPPED
            assertEquals(final, s.isFinal)
        }
        assertFalse(ConnectionState.RECONNECTING.isFinal)
    }
}
