package io.rejoin.watch

import io.rejoin.ConnectionState
import io.rejoin.MemoryPositionStore
import io.rejoin.Position
import io.rejoin.RejoinClient
import io.rejoin.RejoinOptions
import io.rejoin.Update
import io.rejoin.UpdateListener
import java.util.concurrent.CountDownLatch
import kotlin.system.exitProcess
import org.json.JSONObject

private const val USAGE = "usage: rejoin-watch --url ws://HOST:PORT/ws/progress --job ID --token T " +
    "[--last-seq N --session-id S --epoch E] [--ping-secs S] [--retry-base-secs S] [--retry-cap-secs S]"

/**
 * rejoin-watch: a job followed from a terminal with the Kotlin client, one
 * JSON line per update on stdout. Exits 0 when the job completed, 1 otherwise.
 */
fun main(args: Array<String>) {
    val flags = HashMap<String, String>()
    var i = 0
    while (i < args.size) {
        val name = args[i]
        if (!name.startsWith("--") || i + 1 >= args.size) fail("expected --flag value at $name")
        flags[name.removePrefix("--")] = args[i + 1]
        i += 2
    }
    for (required in listOf("url", "job", "token")) {
        if (flags[required].isNullOrEmpty()) fail("--$required is required")
    }
    fun ms(name: String, default: Double): Long {
        val secs = flags[name]?.toDoubleOrNull() ?: if (flags.containsKey(name)) -1.0 else default
        if (!(secs > 0)) fail("--$name must be a positive number of seconds")
        return (secs * 1000).toLong()
    }
    val options = RejoinOptions(
        baseDelayMs = ms("retry-base-secs", 0.5),
        maxDelayMs = ms("retry-cap-secs", 20.0),
        pingIntervalMs = ms("ping-secs", 15.0)
    )
    val job = flags.getValue("job")
    val store = MemoryPositionStore()
    if (flags.containsKey("last-seq") || flags.containsKey("session-id")) {
        store.save(job, Position(flags["session-id"], flags["last-seq"]?.toLongOrNull(), flags["epoch"]))
    }
    val client = RejoinClient(flags.getValue("url"), job, flags.getValue("token"), store, null, options)
    val done = CountDownLatch(1)
    var completed = false
    client.addListener(object : UpdateListener {
        override fun onUpdate(update: Update) {
            when (update) {
                is Update.State -> {
                    val line = JSONObject(update.hello.toString())
                    line.put("hello", update.kind)
                    line.put("type", "state")
                    say(line)
                }
                is Update.Event -> {
                    val line = JSONObject(update.message.toString())
                    line.put("event", update.type)
                    line.put("type", "event")
                    say(line)
                }
                is Update.Finished -> {
                    completed = update.status == "completed"
                    say(JSONObject().put("type", "finished").put("status", update.status))
                }
                is Update.Connection -> {
                    val line = JSONObject().put("type", "connection").put("state", update.state.wire)
                    for ((k, v) in update.detail) line.put(k, v)
                    say(line)
                    if (update.state.isFinal) done.countDown()
                }
            }
        }
    })
    Runtime.getRuntime().addShutdownHook(Thread { client.stop() })
    client.start()
    done.await()
    val finished = client.state == ConnectionState.FINISHED && completed
    // A moment for the socket's close to go out.
    Thread.sleep(50)
    exitProcess(if (finished) 0 else 1)
}

private fun say(line: JSONObject) {
    synchronized(System.out) {
        println(line.toString())
        System.out.flush()
    }
}

private fun fail(message: String): Nothing {
    System.err.println("rejoin-watch: $message\n$USAGE")
    exitProcess(2)
}
