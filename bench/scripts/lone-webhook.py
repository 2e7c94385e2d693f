#!/usr/bin/env python3
"""Webhook latency of lone jobs on the embedded default: how long after a job's end its
`job.succeeded` webhook reaches the receiver.

Starts `kiln serve` (a data directory of its own, the built-in `demo/image` model) and a receiver
on loopback, then submits N jobs one at a time, each only after the previous one's webhook
arrived, and prints p50 / p99 / max of (arrival - the payload's `completed_at`), in ms.

Usage: bench/scripts/lone-webhook.py KILN_BIN [N=50]
"""
import datetime, http.server, json, os, queue, socket, statistics, subprocess, sys, tempfile
import threading, time, urllib.request

BIN = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 50
arrivals = queue.Queue()


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        arrivals.put((time.time(), json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    tmp = tempfile.mkdtemp()
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    config = os.path.join(tmp, "kiln.toml")
    with open(config, "w") as f:
        f.write("[ssrf]\nloopback_webhooks = true\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env["KILN_LOG"] = "warn"
    common = ["--data-dir", os.path.join(tmp, "data"), "--config", config]
    key = subprocess.run([BIN, "keys", "create", "--tenant", "bench", "--create-ledger", *common], env=env,
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    port = free_port()
    server = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", *common], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        latencies = []
        for _ in range(N):
            job = {"model": "demo/image", "input": {"prompt": "a kiln", "width": 16, "height": 16},
                   "webhook": hook, "webhook_events": ["job.succeeded"]}
            request = urllib.request.Request(base + "/v1/jobs", data=json.dumps(job).encode(),
                                             headers={"authorization": f"Bearer {key}",
                                                      "content-type": "application/json"})
            urllib.request.urlopen(request).read()
            arrived, payload = arrivals.get(timeout=30)
            ended = datetime.datetime.fromisoformat(payload["data"]["completed_at"].replace("Z", "+00:00"))
            latencies.append((arrived - ended.timestamp()) * 1000)
        latencies.sort()
        p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
        print(json.dumps({"jobs": N, "webhook_after_end_ms": {"p50": round(p(0.5), 1), "p99": round(p(0.99), 1),
                                                              "max": round(latencies[-1], 1)}}))
    finally:
        server.terminate()
        server.wait()
        receiver.shutdown()


main()
