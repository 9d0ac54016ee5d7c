#!/usr/bin/env python3
"""Load generator for bench/serve.sh: C concurrent clients send a fixed
number of streaming /v1/completions requests to an OpenAI-compatible server,
spread round-robin over the given model names (adapters).

    python3 bench/serve_load.py --url http://127.0.0.1:8080 --models a0,a1,... \
        [--clients 32] [--requests 256] [--max-tokens 64] [--label NAME]

Every response must be well-formed: HTTP 200, every event `data: {json}`
with one choice, a finish_reason on the last, then `data: [DONE]`; a request
that fails counts as lost. Prints one summary line (and a JSON line after
`#json `) with: requests ok/lost, generated tokens, wall seconds, throughput
(generated tokens/s over the wall time), latency p50/p99 and time to first
token p50/p99 (seconds, from sending the request). Tokens are the server's
usage count when it sends one (stream_options.include_usage), else the
number of text chunks. Exit status 1 when a request was lost.
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse

PROMPTS = [
    "The lighthouse keeper wrote in his logbook that",
    "A short history of the harbour town begins with",
    "The recipe for the bread that the baker sold every morning",
    "When the archivist opened the first box of letters, she",
    "The weather report for the northern coast said",
    "Once upon a time, in a village between two rivers,",
    "The most important rule of the old chess club was",
    "Here is a list of things to pack for a long walk:",
]


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


def one_request(host, port, path, headers, body):
    """(ok, why, ttft, latency, tokens)"""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=600)
    try:
        conn.request("POST", path, body=json.dumps(body), headers=headers)
        r = conn.getresponse()
        if r.status != 200:
            return False, f"HTTP {r.status}: {r.read()[:200]!r}", None, None, 0
        ttft, chunks, usage, finish, done, buf = None, 0, None, None, False, b""
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line or line.startswith(b":"):   # SSE comments (keep-alive pings)
                continue
            if not line.startswith(b"data: "):
                return False, f"not an SSE data line: {line[:100]!r}", None, None, 0
            payload = line[6:]
            if payload == b"[DONE]":
                done = True
                continue
            if done:
                return False, "data after [DONE]", None, None, 0
            ev = json.loads(payload)
            if "error" in ev:
                return False, f"error event: {ev['error']}", None, None, 0
            if ev.get("usage"):
                usage = ev["usage"].get("completion_tokens")
            ch = ev.get("choices") or []
            if not ch:
                continue
            if len(ch) != 1:
                return False, f"{len(ch)} choices", None, None, 0
            text = ch[0].get("text")
            if text is None:
                text = (ch[0].get("delta") or {}).get("content")
            if text:
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
            finish = ch[0].get("finish_reason") or finish
        lat = time.perf_counter() - t0
        if not done:
            return False, "no data: [DONE]", None, None, 0
        if finish not in ("stop", "length"):
            return False, f"finish_reason {finish!r}", None, None, 0
        return True, "", ttft if ttft is not None else lat, lat, usage if usage is not None else chunks
    except Exception as e:  # a dropped connection is a lost request
        return False, f"{type(e).__name__}: {e}", None, None, 0
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--models", required=True, help="comma-separated model names, used round-robin")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--usage", action="store_true", help="ask for stream_options.include_usage")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    models = a.models.split(",")
    headers = {"Content-Type": "application/json"}
    if a.api_key:
        headers["Authorization"] = f"Bearer {a.api_key}"
    lock = threading.Lock()
    next_i = [0]
    results = []

    def worker():
        while True:
            with lock:
                i = next_i[0]
                if i >= a.requests:
                    return
                next_i[0] += 1
            body = {"model": models[i % len(models)], "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": a.max_tokens,
                    "temperature": 0, "stream": True}
            if a.usage:
                body["stream_options"] = {"include_usage": True}
            res = one_request(u.hostname, u.port, "/v1/completions", headers, body)
            with lock:
                results.append(res)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r[0]]
    lost = [r for r in results if not r[0]]
    tokens = sum(r[4] for r in ok)
    lat = [r[3] for r in ok]
    ttft = [r[2] for r in ok]
    summary = {
        "label": a.label, "clients": a.clients, "requests": a.requests, "ok": len(ok), "lost": len(lost),
        "models": len(models), "tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 2),
        "latency_p50_s": round(pct(lat, 50), 3), "latency_p99_s": round(pct(lat, 99), 3),
        "ttft_p50_s": round(pct(ttft, 50), 3), "ttft_p99_s": round(pct(ttft, 99), 3),
        "mean_tokens": round(statistics.mean([r[4] for r in ok]), 1) if ok else 0,
    }
    print(f"{a.label}: {len(ok)}/{a.requests} ok, {len(lost)} lost; {tokens} tokens in {wall:.2f} s = "
          f"{summary['tokens_per_s']} tokens/s; latency p50 {summary['latency_p50_s']} s p99 {summary['latency_p99_s']} s; "
          f"first token p50 {summary['ttft_p50_s']} s p99 {summary['ttft_p99_s']} s")
    for r in lost[:5]:
        print(f"  lost: {r[1]}", file=sys.stderr)
    print("#json " + json.dumps(summary))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
