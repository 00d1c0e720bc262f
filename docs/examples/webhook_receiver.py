"""A receiver for rejoin's webhook notifications.

It verifies each request's Standard Webhooks signature, handles each
notification once (rejoin delivers at least once: a retry carries the same
`webhook-id`), and turns it into a push notification to the user whose id the
job's metadata holds.

    pip install standardwebhooks
    REJOIN_WEBHOOK_SECRET=whsec_... PORT=8000 python webhook_receiver.py

`send_push` prints the push it would send; put your provider's call there
(APNs, FCM, ...). Answer 2xx only once the notification is handled: any other
answer makes rejoin retry; 410 tells it to stop for good.
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

webhook = Webhook(os.environ["REJOIN_WEBHOOK_SECRET"])

# webhook-ids already handled. In production: a table with a unique key,
# written in the same transaction as whatever the notification causes.
handled = set()

MESSAGES = {
    "job.completed": ("Scan finished", "Your scan is ready."),
    "job.failed": ("Scan failed", "Something went wrong; tap to try again."),
    "job.cancelled": ("Scan cancelled", "Your scan was cancelled."),
    "job.stalled": ("Scan paused", "Your scan has not moved for a while."),
}


def send_push(user_id, title, body, data):
    # APNs / FCM go here, e.g. firebase_admin.messaging.send(Message(...)).
    push = {"user": user_id, "title": title, "body": body, "data": data}
    print(json.dumps({"push": push}), flush=True)


def handle(notification):
    user_id = (notification.get("metadata") or {}).get("userId")
    if user_id is None:
        return  # not a job a user is waiting for
    title, body = MESSAGES.get(notification["type"], ("Update", "Your job changed."))
    # The app opens the job and resumes its socket from here (lastSeq).
    data = {"jobId": notification["jobId"], "seq": notification["seq"]}
    send_push(user_id, title, body, data)


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        payload = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            notification = webhook.verify(payload, headers)
        except WebhookVerificationError:
            return self.answer(400)
        message_id = headers["webhook-id"]
        if message_id not in handled:
            handle(notification)
            handled.add(message_id)
        self.answer(204)

    def answer(self, status):
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()
