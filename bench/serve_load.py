"""Load test of `grit serve` on loopback with the official openai client: throughput, p50/p99 latency, errors,
server memory, and embedding throughput through the server vs direct ``GritModel.encode`` in the same run.

    python bench/serve_load.py                                  # 500 x 8-text embedding requests, 50 chats
    python bench/serve_load.py --embed-requests 100 --chats 10  # a quick check

Phases, one after the other:
  1. direct: this process loads the same model and encodes every text of phase 2 (batch 32), the server idle;
  2. embeddings: ``--embed-requests`` requests of 8 STS-B sentences from ``--clients`` concurrent clients;
  3. mixed: chats (``--chat-tokens`` new tokens each, greedy) and a fifth as many embedding requests, all at once
     from ``--clients`` clients, so embeddings run between decoding steps;
  4. slow clients: ``--idle-sockets`` connections that send nothing or half their headers, opened beside
     ``--busy-clients`` real clients sending the phase-3 mix; the real ones must see no error, and the server must
     close every idle socket within its ``--request-timeout`` (started with that value here).
The server's resident memory is read from /proc after a warm-up burst on both routes at full concurrency and after
phase 3 (target: no growth beyond 10%).
Texts are real: STS-B test sentences and the questions of the AdversarialQA set from ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from openai import OpenAI

from grit import GritModel

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: the benchmark reads real text from ../shared/data")
    return [json.loads(line) for line in path.open()]


def start_server(model: str | None, port: int, clients: int, request_timeout: float,
                 extra: Sequence[str] = ()) -> subprocess.Popen:  # fmt: skip
    command = [sys.executable, "-m", "grit.cli", "-q", "serve", "--port", str(port), "--max-pending", str(4 * clients),
               "--request-timeout", str(request_timeout), *extra]  # fmt: skip
    if model:
        command += ["--model", model]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the server did not start within 300 s")


IDLE_SENDS = [b"", b"POST /v1/embeddings HTTP/1.1\r\nHost: grit\r\n"]  # silent; half the headers


def model_busy_s(port: int) -> float:
    """The server's ``grit_model_busy_seconds_total``: seconds its model has computed."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    samples = (s for f in text_string_to_metric_families(text) for s in f.samples)
    return next(s.value for s in samples if s.name == "grit_model_busy_seconds_total")


def idle_socket(port: int, sent: bytes, limit: float) -> float:
    """Open a connection, send ``sent`` and nothing more; seconds until the server closes it (inf past ``limit``)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(limit)
        sock.sendall(sent)
        start = time.perf_counter()
        try:
            while sock.recv(4096):
                pass
        except TimeoutError:
            return float("inf")
        return time.perf_counter() - start


def timed(fn) -> tuple[float, bool]:
    start = time.perf_counter()
    try:
        fn()
        ok = True
    except Exception as e:  # counted as an error: the benchmark's target is zero
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        ok = False
    return time.perf_counter() - start, ok


def run_load(jobs: list, clients: int) -> tuple[float, list[tuple[str, float, bool]]]:
    """Run ``(kind, callable)`` jobs from ``clients`` threads; wall seconds and (kind, seconds, ok) per job."""
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda job: (job[0], *timed(job[1])), jobs))
    return time.perf_counter() - start, results


def summary(kind: str, results: list[tuple[str, float, bool]], wall: float) -> dict:
    times = sorted(t for k, t, _ in results if k == kind)
    errors = sum(not ok for k, _, ok in results if k == kind)
    return {"kind": kind, "requests": len(times), "errors": errors, "per_s": len(times) / wall,
            "p50_s": statistics.median(times), "p99_s": float(np.percentile(times, 99))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--embed-requests", type=int, default=500)
    parser.add_argument("--texts-per-request", type=int, default=8)
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--chat-tokens", type=int, default=32)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--busy-clients", type=int, default=32, help="real clients beside the idle sockets")
    parser.add_argument("--idle-sockets", type=int, default=32)
    parser.add_argument("--request-timeout", type=float, default=5.0, help="the server's, for phase 4")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--server-args", default="", help="more `grit serve` flags, e.g. '--max-decode-batch 1'")
    args = parser.parse_args()

    sentences = [s for r in read_jsonl(SHARED / "sts" / "stsb-test.jsonl") for s in (r["sentence1"], r["sentence2"])]
    questions = [r["question"] for r in read_jsonl(SHARED / "rag" / "adversarialqa.jsonl")]
    rng = random.Random(0)
    per = args.texts_per_request
    batches = [rng.sample(sentences, per) for _ in range(args.embed_requests)]

    port = free_port()
    server = start_server(args.model, port, max(args.clients, args.busy_clients), args.request_timeout,
                          shlex.split(args.server_args))  # fmt: skip
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)
        name = client.models.list().data[0].id

        # 1. direct encode, the server idle
        model = GritModel.load(args.model)
        texts = [t for b in batches for t in b]
        model.encode(texts[:32])  # warm-up
        start = time.perf_counter()
        model.encode(texts, batch_size=32, show_progress=True)
        direct_s = time.perf_counter() - start
        del model

        def embed(batch):
            return lambda: client.embeddings.create(model=name, input=batch)

        def chat(question):
            return lambda: client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": question}], max_tokens=args.chat_tokens,
                temperature=0,
            )  # fmt: skip

        # Warm-up at full concurrency on both routes, so "before" already holds the buffers a loaded server keeps
        # (allocator arenas of every worker thread, the largest batch's activations): growth after it is a leak.
        warm = [("embeddings", embed(b)) for b in batches[: args.clients]]
        warm += [("chat", chat(q)) for q in questions[: min(args.clients, args.chats)]]
        run_load(warm, args.clients)
        memory_before = rss_mib(server.pid)
        # 2. embeddings only
        busy_before = model_busy_s(port)
        wall, results = run_load([("embeddings", embed(b)) for b in batches], args.clients)
        embed_busy = (model_busy_s(port) - busy_before) / wall
        embed_only = summary("embeddings", results, wall)
        # 3. mixed
        jobs = [("chat", chat(q)) for q in rng.sample(questions, args.chats)]
        jobs += [("embeddings", embed(b)) for b in batches[: max(args.embed_requests // 5, 1)]]
        rng.shuffle(jobs)
        wall_mixed, mixed = run_load(jobs, args.clients)
        memory_after = rss_mib(server.pid)
        # 4. slow clients beside real ones
        limit = 3 * args.request_timeout + 30
        with ThreadPoolExecutor(args.idle_sockets) as idle_pool:
            idle = [idle_pool.submit(idle_socket, port, IDLE_SENDS[i % 2], limit) for i in range(args.idle_sockets)]
            wall_slow, slow = run_load(jobs, args.busy_clients)
            closed_after = sorted(f.result() for f in idle)
    finally:
        server.terminate()
        server.wait(timeout=30)

    direct_texts_s = len(texts) / direct_s
    served_texts_s = embed_only["per_s"] * per
    rows = [embed_only, summary("embeddings", mixed, wall_mixed), summary("chat", mixed, wall_mixed),
            summary("embeddings", slow, wall_slow), summary("chat", slow, wall_slow)]  # fmt: skip
    beside = f"{args.busy_clients} clients + {args.idle_sockets} idle sockets"
    phases = ["embeddings only", "mixed", "mixed", beside, beside]
    lines = [
        f"`python bench/serve_load.py --embed-requests {args.embed_requests} --chats {args.chats} --clients "
        f"{args.clients} --busy-clients {args.busy_clients} --idle-sockets {args.idle_sockets} --request-timeout "
        f"{args.request_timeout:g}` ({os.cpu_count()} CPUs, {per} texts per embedding request, "
        f"{args.chat_tokens}-token chats)",
        "",
        "| phase | route | requests | errors | requests/s | p50 s | p99 s |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {p} | {r['kind']} | {r['requests']} | {r['errors']} | {r['per_s']:.2f} | {r['p50_s']:.2f} | "
            f"{r['p99_s']:.2f} |"
            for p, r in zip(phases, rows, strict=True)
        ),  # fmt: skip
        "",
        f"Embedding throughput: server {served_texts_s:.1f} texts/s, direct `encode` {direct_texts_s:.1f} texts/s "
        f"in the same run: ratio **{served_texts_s / direct_texts_s:.2f}** (target >= 0.9). The model computed "
        f"{embed_busy:.0%} of that phase's time.",
        f"Server memory (RSS): {memory_before:.0f} MiB before phase 2, {memory_after:.0f} MiB after phase 3 "
        f"({(memory_after / memory_before - 1) * 100:+.1f}%, target <= +10%).",
        f"Errors: {sum(r['errors'] for r in rows)} (target 0).",
        f"Idle sockets (silent, or half their headers) closed by the server after {closed_after[0]:.1f} to "
        f"{closed_after[-1]:.1f} s (request timeout {args.request_timeout:g} s; inf: still open after {limit:g} s).",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
