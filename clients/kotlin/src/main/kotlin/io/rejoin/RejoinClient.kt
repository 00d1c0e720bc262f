package io.rejoin

import java.io.IOException
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.Executors
import java.util.concurrent.RejectedExecutionException
import java.util.concurrent.ScheduledExecutorService
import java.util.concurrent.ScheduledFuture
import java.util.concurrent.TimeUnit
import okhttp3.OkHttpClient
import okhttp3.Request
import okhttp3.Response
import okhttp3.WebSocket
import okhttp3.WebSocketListener
import org.json.JSONObject

/** Timings and limits of a [RejoinClient]; the defaults are rejoin's documented ones. */
data class RejoinOptions(
    /** The first retry comes within this many ms; each later one within twice the one before (full jitter). */
    val baseDelayMs: Long = 500,
    /** The longest wait between attempts. */
    val maxDelayMs: Long = 20_000,
    /** An application ping this often; a connection silent for two intervals is given up. */
    val pingIntervalMs: Long = 15_000,
    /** Acknowledge the last seq at most this often (support staff see how far the client got). */
    val ackIntervalMs: Long = 1_000,
    /** Renew the token this many seconds before it expires. */
    val refreshBeforeSecs: Long = 60
)

/**
 * Follows one job's progress over rejoin's WebSocket, keeping the view alive
 * across drops: it resumes with `sessionId`, `lastSeq` and `epoch` (kept in a
 * [PositionStore]), reconnects with full-jitter backoff, honours `Retry-After`,
 * renews its token, drops duplicate seqs, and stops for good when the job
 * finishes, the session is taken over, or the server refuses it.
 *
 * ```
 * val client = RejoinClient("wss://rejoin.example.com/ws/progress", jobId, token)
 * client.addListener(object : UpdateListener {
 *     override fun onUpdate(update: Update) { ... }
 * })
 * client.start()
 * ```
 *
 * Listeners are called on the client's own thread, one update at a time.
 * Every method may be called from any thread.
 */
class RejoinClient @JvmOverloads constructor(
    /** The WebSocket endpoint, `wss://HOST/ws/progress`. */
    val url: String,
    val jobId: String,
    token: String,
    private val store: PositionStore = MemoryPositionStore(),
    private val tokens: TokenProvider? = null,
    private val options: RejoinOptions = RejoinOptions(),
    private val http: OkHttpClient = OkHttpClient()
) {
    /** The token the next connection uses. */
    @Volatile
    var token: String = token
        private set

    /** The connection's state. */
    @Volatile
    var state: ConnectionState = ConnectionState.IDLE
        private set

    /** Where the next connection resumes from. */
    @Volatile
    var position: Position = store.load(jobId) ?: Position(null, null, null)
        private set

    private val loop: ScheduledExecutorService = Executors.newSingleThreadScheduledExecutor { r ->
        Thread(r, "rejoin-$jobId").apply { isDaemon = true }
    }
    private val listeners = CopyOnWriteArrayList<UpdateListener>()
    private var socket: WebSocket? = null
    private var resuming = position.sessionId != null || position.lastSeq != null
    private var status: String? = null
    private var attempt = 0
    private var renewed = false
    private var paused = false
    private var heard = 0L
    private var acked: Long? = null
    private var retryTimer: ScheduledFuture<*>? = null
    private var pingTimer: ScheduledFuture<*>? = null
    private var ackTimer: ScheduledFuture<*>? = null
    private var refreshTimer: ScheduledFuture<*>? = null

    fun addListener(listener: UpdateListener) {
        listeners.add(listener)
    }

    fun removeListener(listener: UpdateListener) {
        listeners.remove(listener)
    }

    /** Starts watching. A client watches once: after it ends, make another. */
    fun start() = onLoop {
        if (state != ConnectionState.IDLE) return@onLoop
        connect()
    }

    /** Closes the connection and stops for good. */
    fun stop() = onLoop {
        if (state.isFinal) return@onLoop
        val open = socket
        end(ConnectionState.STOPPED)
        open?.close(1000, "client stopped")
    }

    /**
     * The app went to the background: close the socket (1001) so the server
     * knows at once that nobody watches; [resume] comes back.
     */
    fun pause() = onLoop {
        if (state.isFinal || paused) return@onLoop
        paused = true
        val open = socket
        drop()
        open?.close(1001, "app in background")
        if (open != null || state == ConnectionState.LIVE) setState(ConnectionState.RECONNECTING, mapOf("paused" to true))
    }

    /** The app came back to the foreground: reconnect now, or check a live socket with a ping. */
    fun resume() = onLoop {
        paused = false
        wake()
    }

    /**
     * The network path changed (Wi-Fi to cellular, back online): a live
     * socket is checked with a ping at once, a waiting reconnect goes now.
     */
    fun networkChanged() = onLoop { wake() }

    private fun onLoop(block: () -> Unit) {
        // The loop may shut down between any check and the call: a block
        // refused then has nothing left to do.
        try {
            loop.execute(block)
        } catch (e: RejectedExecutionException) {
            // stopped
        }
    }

    /** [block] on the loop after [delay]; null once the loop has stopped. */
    private fun later(delay: Long, unit: TimeUnit, block: () -> Unit): ScheduledFuture<*>? = try {
        loop.schedule(block, delay, unit)
    } catch (e: RejectedExecutionException) {
        null
    }

    private fun emit(update: Update) {
        for (l in listeners) {
            try {
                l.onUpdate(update)
            } catch (e: RuntimeException) {
                // A listener's failure is its own; the watch goes on.
            }
        }
    }

    private fun setState(next: ConnectionState, detail: Map<String, Any> = emptyMap()) {
        if (state == next && !detail.containsKey("retryInMs")) return
        state = next
        emit(Update.Connection(next, detail))
    }

    private fun trying() = if (resuming) ConnectionState.RECONNECTING else ConnectionState.CONNECTING

    private fun end(final: ConnectionState, detail: Map<String, Any> = emptyMap()) {
        drop()
        retryTimer?.cancel(false)
        refreshTimer?.cancel(false)
        setState(final, detail)
        loop.shutdown()
    }

    /** Forgets the current socket and its timers. */
    private fun drop() {
        socket = null
        pingTimer?.cancel(false)
        ackTimer?.cancel(false)
        pingTimer = null
        ackTimer = null
    }

    private fun wake() {
        if (state.isFinal || paused) return
        val open = socket
        if (state == ConnectionState.LIVE && open != null) {
            checkNow(open)
            return
        }
        if (open != null) return // an attempt is under way
        retryTimer?.cancel(false)
        retryTimer = null
        attempt = 0
        connect()
    }

    private fun connect() {
        retryTimer = null
        if (state.isFinal || paused) return
        setState(trying())
        val left = Tokens.secondsLeft(token)
        if (left != null && left < 30) {
            renew { connectNow() }
        } else {
            connectNow()
        }
    }

    private fun connectNow() {
        if (state.isFinal || paused) return
        val request = Request.Builder()
            .url(httpUrl(url) + (if (url.contains('?')) "&" else "?") + query())
            .header("Authorization", "Bearer $token")
            .build()
        lateinit var ws: WebSocket
        ws = http.newWebSocket(request, object : WebSocketListener() {
            override fun onOpen(webSocket: WebSocket, response: Response) = onLoop {
                if (socket === ws) heard = System.nanoTime()
            }

            override fun onMessage(webSocket: WebSocket, text: String) = onLoop {
                if (socket === ws) message(ws, text)
            }

            override fun onClosing(webSocket: WebSocket, code: Int, reason: String) {
                // The close is read before the answer is sent: answering a
                // server that has already gone fails, and that failure must
                // not be taken for a drop before the close it answers.
                onLoop { if (socket === ws) closed(code, reason) }
                webSocket.close(code, null)
            }

            override fun onClosed(webSocket: WebSocket, code: Int, reason: String) = onLoop {
                if (socket === ws) closed(code, reason)
            }

            override fun onFailure(webSocket: WebSocket, t: Throwable, response: Response?) {
                val status = response?.let { OkHttpCompat.code(it) }
                val retryAfter = Delays.retryAfterMs(response?.header("Retry-After"))
                response?.close()
                onLoop {
                    if (socket !== ws) return@onLoop
                    drop()
                    if (status != null) refused(status, retryAfter) else schedule(0)
                }
            }
        })
        socket = ws
    }

    private fun query(): String {
        val q = StringBuilder("jobId=").append(enc(jobId))
        if (resuming) {
            q.append("&reconnect=true")
            position.sessionId?.let { q.append("&sessionId=").append(enc(it)) }
            position.lastSeq?.let { q.append("&lastSeq=").append(it) }
            position.epoch?.let { q.append("&epoch=").append(enc(it)) }
        }
        return q.toString()
    }

    private fun message(ws: WebSocket, text: String) {
        heard = System.nanoTime()
        val msg = try {
            JSONObject(text)
        } catch (e: org.json.JSONException) {
            return
        }
        when (val type = msg.optString("type")) {
            "connected", "reconnected" -> {
                val epoch = msg.optString("epoch")
                var last = position.lastSeq
                // Another log: our lastSeq means nothing there; the server replays from the start.
                if (position.epoch != null && epoch != position.epoch) last = null
                if (type == "connected") last = maxOf(last ?: 0L, msg.optLong("lastSeq"))
                savePosition(Position(msg.optString("sessionId"), last, epoch))
                status = msg.optString("status")
                resuming = true
                attempt = 0
                renewed = false
                emit(Update.State(msg))
                setState(
                    ConnectionState.LIVE,
                    mapOf("resumed" to msg.optBoolean("resumed", false), "missed" to msg.optInt("missed", 0))
                )
                startPings(ws)
                planRefresh()
            }
            "progress", "message", "stalled", "completed", "failed", "cancelled" -> {
                if (!msg.has("seq")) return
                val seq = msg.getLong("seq")
                val last = position.lastSeq
                if (last != null && seq <= last) return // seen before
                savePosition(position.copy(lastSeq = seq))
                val terminal = type == "completed" || type == "failed" || type == "cancelled"
                if (terminal) status = type else if (type == "progress") status = "running"
                emit(Update.Event(msg))
                if (terminal) {
                    emit(Update.Finished(type))
                    end(ConnectionState.FINISHED)
                    ws.close(1000, "job finished")
                    return
                }
                scheduleAck(ws)
            }
        }
    }

    private fun savePosition(next: Position) {
        position = next
        store.save(jobId, next)
    }

    private fun closed(code: Int, reason: String) {
        drop()
        when {
            code == 1000 && reason == "job finished" -> {
                emit(Update.Finished(status ?: ""))
                end(ConnectionState.FINISHED)
            }
            code == 1000 && reason == "Client reconnecting" -> end(ConnectionState.REPLACED)
            code == 1003 || code == 1009 -> end(ConnectionState.FAILED, mapOf("code" to code, "reason" to reason))
            // The node restarted or lost its lease: any node, after a random
            // 0-1 s (its clients do not all come back at one instant).
            code == 1012 -> scheduleIn(Delays.restartMs())
            else -> schedule(0)
        }
    }

    /** A refused upgrade: stop, renew, or wait as it says. */
    private fun refused(status: Int, retryAfterMs: Long?) {
        when (status) {
            401 -> if (!renewed) {
                renewed = true
                renew { schedule(0) }
            } else {
                end(ConnectionState.FAILED, mapOf("code" to status, "reason" to "unauthorized"))
            }
            400, 403, 404, 410 -> end(ConnectionState.FAILED, mapOf("code" to status))
            429, 503 -> schedule(retryAfterMs ?: 0)
            else -> schedule(0) // 409 too_many_watchers and the rest: back off
        }
    }

    /** Reconnects after the backoff, and no sooner than [atLeastMs]. */
    private fun schedule(atLeastMs: Long) {
        if (state.isFinal || paused || retryTimer != null) return
        val delay = maxOf(atLeastMs, Backoff.delay(attempt, options.baseDelayMs, options.maxDelayMs))
        attempt += 1
        scheduleIn(delay)
    }

    /** Reconnects after exactly [delayMs], not counted as a failed attempt. */
    private fun scheduleIn(delayMs: Long) {
        if (state.isFinal || paused || retryTimer != null) return
        setState(trying(), mapOf("retryInMs" to delayMs))
        retryTimer = later(delayMs, TimeUnit.MILLISECONDS) { connect() }
    }

    /**
     * A fresh token from the [TokenProvider], or `POST /v1/jobs/{id}/token`
     * with the current one; then [next]. A refusal ends the watch in FAILED.
     */
    private fun renew(next: () -> Unit) {
        val current = token
        val provider = tokens ?: ServerTokens(http, httpUrl(url).substringBefore("/ws/"))
        Thread({
            val outcome: String? = try {
                provider.renew(jobId, current) ?: ""
            } catch (e: IOException) {
                null // a passing failure: go on with the token there is
            } catch (e: RuntimeException) {
                null
            }
            onLoop {
                when (outcome) {
                    "" -> end(ConnectionState.FAILED, mapOf("code" to 401, "reason" to "the token cannot be renewed"))
                    null -> next()
                    else -> {
                        token = outcome
                        planRefresh()
                        next()
                    }
                }
            }
        }, "rejoin-token").start()
    }

    private fun planRefresh() {
        refreshTimer?.cancel(false)
        refreshTimer = null
        if (state.isFinal) return
        val left = Tokens.secondsLeft(token) ?: return
        val wait = maxOf(0L, left - options.refreshBeforeSecs)
        refreshTimer = later(wait, TimeUnit.SECONDS) { renew { } }
    }

    private fun startPings(ws: WebSocket) {
        pingTimer?.cancel(false)
        val every = options.pingIntervalMs
        pingTimer = try {
            loop.scheduleAtFixedRate({
                if (socket === ws) ping(ws)
            }, every, every, TimeUnit.MILLISECONDS)
        } catch (e: RejectedExecutionException) {
            null
        }
    }

    private fun ping(ws: WebSocket) {
        val silentMs = (System.nanoTime() - heard) / 1_000_000
        // Two intervals of silence: the connection is gone (phones leave
        // half-open sockets behind that never report an error).
        if (silentMs >= 2 * options.pingIntervalMs) {
            giveUp(ws)
            return
        }
        ws.send("{\"type\":\"ping\"}")
    }

    /** Woken by the app or the network: a ping now, and the socket given up unless something answers within an interval. */
    private fun checkNow(ws: WebSocket) {
        val sent = System.nanoTime()
        ws.send("{\"type\":\"ping\"}")
        later(options.pingIntervalMs, TimeUnit.MILLISECONDS) {
            if (socket === ws && heard < sent) giveUp(ws)
        }
    }

    /** The socket is taken as dead: dropped without a closing handshake, and a reconnect scheduled. */
    private fun giveUp(ws: WebSocket) {
        ws.cancel()
        drop()
        schedule(0)
    }

    private fun scheduleAck(ws: WebSocket) {
        if (ackTimer != null) return
        ackTimer = later(options.ackIntervalMs, TimeUnit.MILLISECONDS) {
            ackTimer = null
            val last = position.lastSeq
            if (socket === ws && last != null && last != acked) {
                acked = last
                ws.send("{\"type\":\"ack\",\"seq\":$last}")
            }
        }
    }

    private companion object {
        fun enc(s: String): String = java.net.URLEncoder.encode(s, "UTF-8")

        /** OkHttp takes ws:// and wss:// URLs as http:// and https://. */
        fun httpUrl(url: String): String = when {
            url.startsWith("ws://") -> "http://" + url.removePrefix("ws://")
            url.startsWith("wss://") -> "https://" + url.removePrefix("wss://")
            else -> url
        }
    }
}

/** Full-jitter backoff: a random delay in [0, min(cap, base * 2^attempt)). */
/** The waits a client takes from what the server says. */
object Delays {
    /** The longest wait a `Retry-After` is followed for. */
    const val MAX_RETRY_AFTER_SECS: Long = 3600

    /**
     * Milliseconds a `Retry-After` of seconds asks for, clamped to
     * [0, [MAX_RETRY_AFTER_SECS]]; null when absent or not a finite number.
     */
    @JvmStatic
    fun retryAfterMs(value: String?): Long? {
        val secs = value?.trim()?.toDoubleOrNull() ?: return null
        if (secs.isNaN() || secs.isInfinite()) return null
        return (secs.coerceIn(0.0, MAX_RETRY_AFTER_SECS.toDouble()) * 1000).toLong()
    }

    /** The wait before coming back after close code 1012: a random 0-1 s. */
    @JvmStatic
    fun restartMs(random: Double = Math.random()): Long = (random * 1000).toLong().coerceIn(0L, 999L)
}

object Backoff {
    @JvmStatic
    fun delay(attempt: Int, baseMs: Long, capMs: Long, random: Double = Math.random()): Long {
        val ceiling = minOf(capMs.toDouble(), baseMs * Math.pow(2.0, minOf(attempt, 30).toDouble()))
        return (random * ceiling).toLong()
    }
}

/** Reading a JWT's expiry, without verifying it (the server does). */
object Tokens {
    /** Seconds until the token's `exp`, or null when it cannot be read. */
    @JvmStatic
    fun secondsLeft(token: String, nowMs: Long = System.currentTimeMillis()): Long? = try {
        val part = token.split('.')[1]
        val json = String(java.util.Base64.getUrlDecoder().decode(part.trimEnd('=')), Charsets.UTF_8)
        val claims = JSONObject(json)
        if (claims.has("exp")) claims.getLong("exp") - nowMs / 1000 else null
    } catch (e: Exception) {
        null
    }
}

/** Renews a client token with `POST /v1/jobs/{id}/token`, authorised by the current one. */
class ServerTokens(private val http: OkHttpClient, private val httpBase: String) : TokenProvider {
    override fun renew(jobId: String, current: String): String? {
        val request = Request.Builder()
            .url("$httpBase/v1/jobs/$jobId/token")
            .header("Authorization", "Bearer $current")
            .post(OkHttpCompat.emptyBody())
            .build()
        http.newCall(request).execute().use { res ->
            val code = OkHttpCompat.code(res)
            if (code in 200..299) return JSONObject(OkHttpCompat.bodyText(res)).getString("clientToken")
            if (code == 401 || code == 403 || code == 404 || code == 410) return null
            throw IOException("token renewal answered $code")
        }
    }
}
