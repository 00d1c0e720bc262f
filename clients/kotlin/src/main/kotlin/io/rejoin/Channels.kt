package io.rejoin

import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.ReceiveChannel
import kotlinx.coroutines.runBlocking

/**
 * The client's updates as a coroutine channel, closed after the last one
 * (the watch finished, was replaced, failed or stopped). Call it before
 * [RejoinClient.start] to miss nothing.
 */
fun RejoinClient.updates(): ReceiveChannel<Update> {
    val channel = Channel<Update>(Channel.UNLIMITED)
    addListener(object : UpdateListener {
        override fun onUpdate(update: Update) {
            // Unlimited: the send never suspends.
            runBlocking { channel.send(update) }
            if (update is Update.Connection && update.state.isFinal) channel.close()
        }
    })
    return channel
}
