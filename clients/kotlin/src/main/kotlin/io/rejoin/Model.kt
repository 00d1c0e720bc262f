package io.rejoin

import org.json.JSONObject

/** The states a [RejoinClient] moves through, as every rejoin client names them. */
enum class ConnectionState(val wire: String) {
    IDLE("idle"),
    CONNECTING("connecting"),
    LIVE("live"),
    RECONNECTING("reconnecting"),
    /** The job completed, failed or was cancelled: nothing more comes. */
    FINISHED("finished"),
    /** Another connection of this session took over (`1000 Client reconnecting`). */
    REPLACED("replaced"),
    /** Refused for good: 400, 403, 404, 410 (the job was archived), a token that cannot be renewed, a protocol error. */
    FAILED("failed"),
    /** [RejoinClient.stop] was called. */
    STOPPED("stopped");

    /** True for the states after which the client does nothing more. */
    val isFinal: Boolean
        get() = this == FINISHED || this == REPLACED || this == FAILED || this == STOPPED
}

/** Where a watch resumes from: the server's session, the last seq processed, the log's epoch. */
data class Position(val sessionId: String?, val lastSeq: Long?, val epoch: String?)

/** Keeps each job's [Position] across connections and app restarts. */
interface PositionStore {
    fun load(jobId: String): Position?
    fun save(jobId: String, position: Position)
}

/** A [PositionStore] in memory: positions last as long as the process. */
class MemoryPositionStore : PositionStore {
    private val positions = java.util.concurrent.ConcurrentHashMap<String, Position>()
    override fun load(jobId: String): Position? = positions[jobId]
    override fun save(jobId: String, position: Position) {
        positions[jobId] = position
    }
}

/**
 * Renews the job's client token. Called off the main thread; returns the new
 * token, or null when none can be had (the client then stops in [ConnectionState.FAILED]).
 * Throwing means a passing failure (offline): the client goes on with the token it has.
 */
interface TokenProvider {
    fun renew(jobId: String, current: String): String?
}

/** Something that happened to a watch, in the order it happened. */
sealed class Update {
    /** The job as `connected` or `reconnected` showed it: its whole current state. */
    class State(val hello: JSONObject) : Update() {
        /** `connected` or `reconnected`. */
        val kind: String get() = hello.optString("type")
        val status: String get() = hello.optString("status")
        val progress: Double get() = hello.optDouble("progress", 0.0)
        /** True when the session continued (a resume within the grace window). */
        val resumed: Boolean get() = hello.optBoolean("resumed", false)
    }

    /** One job event (`progress`, `message`, `stalled`, `completed`, `failed`, `cancelled`), once, in seq order. */
    class Event(val message: JSONObject) : Update() {
        val type: String get() = message.optString("type")
        val seq: Long get() = message.optLong("seq")
        val isTerminal: Boolean get() = type == "completed" || type == "failed" || type == "cancelled"
    }

    /** The connection's state changed; [detail] says more (resumed, missed, retryInMs, code, reason). */
    class Connection(val state: ConnectionState, val detail: Map<String, Any> = emptyMap()) : Update()

    /** The watch ended with the job: its final status (`completed`, `failed`, `cancelled`). */
    class Finished(val status: String) : Update()
}

/** Receives a client's updates, on the client's own thread, in order. */
interface UpdateListener {
    fun onUpdate(update: Update)
}
