package io.rejoin

import java.io.File
import java.net.HttpURLConnection
import java.net.URL
import java.util.Base64
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import javax.crypto.Mac
import javax.crypto.spec.SecretKeySpec
import org.json.JSONObject
import org.junit.After
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Before
import org.junit.Test

/**
 * The hooks an app calls, against a real rejoin server (REJOIN_BIN): pause()
 * closes the socket so the server sees the watcher leave, resume() comes
 * back into the same session with what was missed, networkChanged() on a
 * live socket checks it with a ping and keeps it.
 */
class LifecycleTest {
    private val secret = "kotlin-client-test-secret-0123456789"
    private lateinit var server: Process
    private lateinit var base: String

    @Before
    fun startServer() {
        val bin = System.getenv("REJOIN_BIN") ?: fail("REJOIN_BIN names the rejoin binary").let { "" }
        val dir = File.createTempFile("rejoin-kotlin", "").apply { delete(); mkdirs() }
        server = ProcessBuilder(
            bin, "serve", "--listen", "127.0.0.1:0",
            "--database-url", "sqlite://${dir.absolutePath}/rejoin.db",
            "--jwt-secret", secret, "--connect-rate-per-ip", "0"
        ).redirectError(ProcessBuilder.Redirect.DISCARD).start()
        val line = server.inputStream.bufferedReader().readLine() ?: fail("the server printed nothing").let { "" }
        base = "http://" + line.substringAfterLast("http://").trim()
    }

    @After
    fun stopServer() {
        server.destroy()
    }

    private fun token(claims: JSONObject): String {
        val enc = Base64.getUrlEncoder().withoutPadding()
        val head = enc.encodeToString("{\"alg\":\"HS256\",\"typ\":\"JWT\"}".toByteArray())
        claims.put("exp", System.currentTimeMillis() / 1000 + 3600)
        val body = enc.encodeToString(claims.toString().toByteArray())
        val mac = Mac.getInstance("HmacSHA256").apply { init(SecretKeySpec(secret.toByteArray(), "HmacSHA256")) }
        return "$head.$body." + enc.encodeToString(mac.doFinal("$head.$body".toByteArray()))
    }

    private fun post(path: String, body: JSONObject): JSONObject {
        val c = URL(base + path).openConnection() as HttpURLConnection
        c.requestMethod = "POST"
        c.doOutput = true
        c.setRequestProperty("Authorization", "Bearer " + token(JSONObject().put("sub", "t").put("role", "service")))
        c.setRequestProperty("Content-Type", "application/json")
        c.outputStream.use { it.write(body.toString().toByteArray()) }
        assertEquals(201, c.responseCode)
        return JSONObject(c.inputStream.bufferedReader().readText())
    }

    private fun progress(job: String, p: Double): Long =
        post("/v1/jobs/$job/events", JSONObject().put("type", "progress").put("progress", p)).getLong("seq")

    private fun LinkedBlockingQueue<Update>.next(what: String, test: (Update) -> Boolean): Update {
        while (true) {
            val u = poll(15, TimeUnit.SECONDS) ?: fail("timed out waiting for $what").let { null }
            if (u != null && test(u)) return u
        }
    }

    @Test
    fun pauseLeavesAndResumeComesBackWithWhatWasMissed() {
        val job = post("/v1/jobs", JSONObject()).getString("jobId")
        val clientToken = token(JSONObject().put("sub", "t").put("role", "client").put("job", job))
        val client = RejoinClient(base.replace("http", "ws") + "/ws/progress", job, clientToken)
        val seen = LinkedBlockingQueue<Update>()
        client.addListener(object : UpdateListener {
            override fun onUpdate(update: Update) {
                seen.add(update)
            }
        })
        client.start()
        seen.next("live") { it is Update.Connection && it.state == ConnectionState.LIVE }
        val first = progress(job, 0.1)
        seen.next("the first event") { it is Update.Event && it.seq == first }

        client.pause()
        seen.next("paused") { it is Update.Connection && it.state == ConnectionState.RECONNECTING }
        // The server sees the watcher leave (no session of the job is connected).
        val deadline = System.currentTimeMillis() + 15_000
        while (watchers(job) != 0) {
            if (System.currentTimeMillis() > deadline) fail("the server still counts the paused watcher")
            Thread.sleep(20)
        }
        val missed = listOf(progress(job, 0.2), progress(job, 0.3))

        client.resume()
        val hello = seen.next("the resume") { it is Update.State } as Update.State
        assertEquals("reconnected", hello.kind)
        assertTrue("the same session continues", hello.resumed)
        for (seq in missed) seen.next("missed event $seq") { it is Update.Event && it.seq == seq }

        // A network change on a live socket: a ping, answered, and the socket stays.
        client.networkChanged()
        val after = progress(job, 0.4)
        val next = seen.next("the next event") { it is Update.Event || it is Update.Connection }
        assertTrue("still live after networkChanged: $next", next is Update.Event && next.seq == after)
        client.stop()
        seen.next("stopped") { it is Update.Connection && it.state == ConnectionState.STOPPED }
    }

    private fun watchers(job: String): Int {
        val c = URL("$base/v1/jobs/$job").openConnection() as HttpURLConnection
        c.setRequestProperty("Authorization", "Bearer " + token(JSONObject().put("sub", "t").put("role", "service")))
        val list = JSONObject(c.inputStream.bufferedReader().readText()).getJSONArray("watchers")
        return (0 until list.length()).count { list.getJSONObject(it).getString("state") == "connected" }
    }
}
