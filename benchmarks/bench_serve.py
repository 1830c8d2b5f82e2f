"""Serving throughput: `lmfast serve` with continuous batching vs batching off vs `transformers serve`.

    python benchmarks/bench_serve.py [--quick] [--model HF_DIR] [--json PATH]
        [--llama_server BIN --llama_cpp_src DIR]

Real servers on loopback, each its own process with the same intra-op thread count, all serving
one model: a Hugging Face directory (a random-weight GPT-2, 4 layers x 256, built once if --model
is not given) and its `lmfast export onnx` export, i.e. the same weights:
  (a) lmfast_batched        lmfast serve EXPORT --max_batch_size 32 (iteration-level batching)
  (b) lmfast_batch1         lmfast serve EXPORT --max_batch_size 1  (batching off)
  (a') lmfast_batched_torch lmfast serve HF_DIR --backend torch --max_batch_size 32 (same runtime as (c))
  (c) transformers          transformers serve HF_DIR --continuous-batching (needs accelerate,
                            i.e. `pip install 'transformers[serving]'`)
  (d) llama_server          llama.cpp's own `llama-server` (--llama_server BIN, built from the
                            llama.cpp sources) on a GGUF f32 of HF_DIR written by llama.cpp's
                            convert_hf_to_gguf.py (--llama_cpp_src DIR; --precision bf16: the export
                            and the GGUF in bf16, quantized by llama.cpp), with one slot per client
                            (--parallel C) and continuous batching, with its defaults otherwise:
                            its prompt cache is on, as lmfast's prefix cache is
An async httpx load generator keeps C requests in flight (closed loop) for C in 1, 8, 32; every
request streams 64 new tokens greedily (OpenAI /v1/completions with stream_options.include_usage);
(a) also runs non-streamed, for the streaming overhead. Contenders alternate within each level.
Before timing, greedy outputs of (a), sent concurrently so that they share batches, must equal
(b)'s; how many of (a')'s, (c)'s and (d)'s agree is reported.
Prints requests/s, generated tokens/s, time to first token, p50/p99 latency and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: benchmarks.bench_engines for contender (d)
    sys.path.insert(0, str(REPO))
# transformers' continuous batching: tokens per KV-cache page, and a bound on any PROMPTS' length
CB_PAGE_TOKENS = 256
PROMPT_TOKENS_BOUND = 64
PROMPTS = [
    "Truth is",
    "What does not kill me",
    "The will to power",
    "God is dead, and",
    "Man is a rope stretched",
    "He who fights with monsters",
    "Without music, life would be",
    "There are no facts, only",
    "In individuals, insanity is rare;",
    "The higher we soar,",
    "One must still have chaos in oneself",
    "Love is",
]


@dataclass
class RunStats:
    """One contender at one concurrency level."""

    name: str
    concurrency: int
    stream: bool
    requests: int
    seconds: float
    requests_per_s: float
    tokens_per_s: float
    ttft_p50_s: float
    latency_p50_s: float
    latency_p99_s: float


# --- model ----------------------------------------------------------------------------------------
def ensure_model(directory: Path, n_layer: int = 4, n_embd: int = 256) -> Path:
    """A random-weight GPT-2 (real GPT-2 tokenizer) in Hugging Face form, built once and reused."""
    if (directory / "config.json").is_file():
        return directory
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=n_embd // 64, n_positions=512, vocab_size=50257
    )
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    GPT2TokenizerFast.from_pretrained(REPO / "lmfast" / "assets" / "gpt2").save_pretrained(directory)
    return directory


def ensure_export(model: Path, device: str, precision: str = "fp32") -> Path | str:
    """The ONNX export of `model` (`lmfast export onnx`, built once), or why it could not be made.
    A bf16 export is served with lmfast's own Bf16MatMul (swapped in at load, docs/kernels.md)."""
    target = model.parent / (
        f"{model.name}_onnx" if precision == "fp32" else f"{model.name}_onnx_{precision}"
    )
    if (target / "model.onnx").is_file():
        return target
    command = [
        sys.executable,
        "-m",
        "lmfast",
        "export",
        "onnx",
        str(model),
        "--output",
        str(target),
        "--overwrite",
    ]
    if device == "cuda":  # the in-place cache is CPU-only so far
        command += ["--precision", "fp16", "--kv_cache", "concat"]
    elif precision != "fp32":  # bf16 is lossy by design, as is llama-server's bf16 GGUF
        command += ["--precision", precision, "--accept_quality_loss"]
    done = subprocess.run(command, cwd=REPO, env=thread_env(2), capture_output=True, text=True)
    if done.returncode != 0:
        return f"lmfast export onnx failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
    return target


# --- servers --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess on loopback; `stop()` interrupts it (graceful), then kills it."""

    def __init__(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        health: str,
        model_id: str,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.extra_body = extra_body or {}  # request fields only this server takes
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.health = health
        self.model_id = model_id
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench_serve_{name}_", suffix=".log", delete=False)
        command = [part.replace("{port}", str(self.port)) for part in command]
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = Path(self.log.name).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")
            try:
                if httpx.get(self.url + self.health, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout_s} s (log: {self.log.name})")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def lmfast_server(
    name: str,
    model: Path,
    max_batch_size: int,
    threads: int,
    device: str,
    backend: str = "onnx",
    extra_args: tuple[str, ...] = (),
) -> Server:
    command = [sys.executable, "-m", "lmfast", "serve", str(model), "--port", "{port}", "--backend", backend]
    command += ["--provider", device, "--num_threads", str(threads), "--max_batch_size", str(max_batch_size)]
    command += ["--queue_size", "1024", "--request_timeout_s", "3600", "--log_level", "warning", *extra_args]
    return Server(name, command, thread_env(threads), "/health_check/", model.name)


def transformers_server(
    model: Path, threads: int, device: str, concurrency: int = 32, new_tokens: int = 64
) -> Server | str:
    """(c), or the reason it cannot run here.

    Its paged KV cache is sized for the load: left to itself on a CPU, transformers gives the cache
    60% of the free RAM (11.7 GB peak RSS for the 3M demo model on a 24 GB machine, 1.25 GB with
    64 pages), which was the quick benchmark's whole peak. Each request takes whole pages of 256
    tokens, so the cache holds every client's prompt + new tokens twice over, and no one waits for one.
    """
    executable = shutil.which("transformers")
    if executable is None:
        return "the `transformers` command is not installed"
    try:
        import accelerate  # noqa: F401  (transformers serve loads with a device map, which needs it)
    except ImportError:
        return "transformers serve needs `accelerate` (pip install 'transformers[serving]')"
    command = [
        executable,
        "serve",
        str(model),
        "--continuous-batching",
        "--cb-num-blocks",
        str(2 * concurrency * math.ceil((PROMPT_TOKENS_BOUND + new_tokens) / CB_PAGE_TOKENS)),
        "--device",
        device,
        "--port",
        "{port}",
    ]
    return Server("transformers", command, thread_env(threads), "/health", str(model))


def llama_server(
    model: Path,
    binary: Path,
    llama_cpp_src: Path | None,
    threads: int,
    concurrency: int,
    new_tokens: int,
    precision: str = "fp32",
) -> Server | str:
    """(d), or the reason it cannot run here. Each of the `concurrency` slots gets room for the
    longest prompt and `new_tokens` (llama-server splits -c among its slots)."""
    if not Path(binary).is_file():
        return f"--llama_server {binary}: no such file"
    from benchmarks.bench_engines import llama_gguf

    try:
        outtype = {"fp32": "f32", "bf16": "bf16"}[precision]
        gguf = llama_gguf(model, model.parent / f"{model.name}_gguf", outtype, llama_cpp_src)
    except (FileNotFoundError, RuntimeError, ImportError) as error:
        return f"no GGUF for llama-server: {error}"
    per_slot = PROMPT_TOKENS_BOUND + new_tokens + 16
    command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", "{port}"]
    command += ["--threads", str(threads), "--threads-batch", str(threads), "--parallel", str(concurrency)]
    command += ["--ctx-size", str(concurrency * per_slot), "--cont-batching", "--log-disable"]
    return Server("llama_server", command, thread_env(threads), "/health", "model")


# --- load generator -------------------------------------------------------------------------------
async def one_request(
    client: httpx.AsyncClient,
    model_id: str,
    prompt: str,
    new_tokens: int,
    stream: bool,
    extra_body: dict[str, Any] | None = None,
) -> tuple[float, float, int, str]:
    """Send one completion; returns (latency s, time to first token s, generated tokens, text)."""
    body: dict[str, Any] = {"model": model_id, "prompt": prompt, "max_tokens": new_tokens, "temperature": 0}
    body.update(extra_body or {})
    started = time.perf_counter()
    if not stream:
        response = await client.post("/v1/completions", json=body)
        response.raise_for_status()
        data = response.json()
        latency = time.perf_counter() - started
        return latency, latency, int(data["usage"]["completion_tokens"]), data["choices"][0]["text"]
    body.update(stream=True, stream_options={"include_usage": True})
    first, raw = await _stream_raw(client.base_url.host, client.base_url.port, body)
    latency = time.perf_counter() - started
    events = [e[6:] for e in _dechunk(raw).split(b"\n\n") if e.startswith(b"data: ")]
    events = [e for e in events if e != b"[DONE]"]
    tokens = len(events)
    for event in events[-2:]:
        if b'"usage"' in event and (usage := json.loads(event).get("usage")):
            tokens = int(usage["completion_tokens"])
    return latency, (first or time.perf_counter()) - started, tokens, ""


async def _stream_raw(host: str, port: int, body: dict[str, Any]) -> tuple[float | None, bytes]:
    """POST a streamed completion over a bare asyncio connection; returns (first event time, body).

    The load generator shares the CPU with the servers, so a streamed run must cost it little per
    event: no HTTP client stack, just socket reads, with the body parsed once at the end.
    """
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(host, port)
    first: float | None = None
    received: list[bytes] = []
    try:
        writer.write(head + payload)
        while data := await reader.read(65536):
            if first is None and b"data: " in data:
                first = time.perf_counter()
            received.append(data)
    finally:
        writer.close()
    response = b"".join(received)
    header, _, content = response.partition(b"\r\n\r\n")
    status = header.split(b" ", 2)[1:2]
    if status != [b"200"]:
        raise RuntimeError(f"streamed request failed: {header[:200]!r}")
    if b"transfer-encoding: chunked" in header.lower():
        content = b"\x00chunked\x00" + content
    return first, content


def _dechunk(content: bytes) -> bytes:
    """Undo HTTP/1.1 chunked transfer encoding (marked by `_stream_raw`)."""
    if not content.startswith(b"\x00chunked\x00"):
        return content
    content = content[len(b"\x00chunked\x00") :]
    out, position = [], 0
    while True:
        end = content.index(b"\r\n", position)
        size = int(content[position:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(content[end + 2 : end + 2 + size])
        position = end + 2 + size + 2


async def run_load(
    server: Server, concurrency: int, n_requests: int, new_tokens: int, stream: bool
) -> RunStats:
    """Closed loop: `concurrency` workers each send their next request as soon as one finishes."""
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    results: list[tuple[float, float, int, str]] = []
    next_index = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < n_requests:
            index = next_index
            next_index += 1
            prompt = PROMPTS[index % len(PROMPTS)]
            results.append(
                await one_request(client, server.model_id, prompt, new_tokens, stream, server.extra_body)
            )

    async with httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    tokens = sum(r[2] for r in results)
    return RunStats(
        name=server.name,
        concurrency=concurrency,
        stream=stream,
        requests=len(results),
        seconds=seconds,
        requests_per_s=len(results) / seconds,
        tokens_per_s=tokens / seconds,
        ttft_p50_s=statistics.median(r[1] for r in results),
        latency_p50_s=statistics.median(latencies),
        latency_p99_s=latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))],
    )


async def greedy_texts(server: Server, prompts: list[str], new_tokens: int) -> list[str]:
    """All prompts at once (they share batches on a batching server), non-streamed."""
    async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
        results = await asyncio.gather(
            *(
                one_request(
                    client, server.model_id, p, new_tokens, stream=False, extra_body=server.extra_body
                )
                for p in prompts
            )
        )
    return [r[3] for r in results]


# --- the benchmark --------------------------------------------------------------------------------
def run(
    quick: bool,
    model: Path | None = None,
    threads: int = 1,
    concurrencies: tuple[int, ...] | None = None,
    new_tokens: int = 64,
    device: str = "cpu",
    with_transformers: bool = True,
    rounds: int | None = None,
    llama_server_binary: Path | None = None,
    llama_cpp_src: Path | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Start the servers, check correctness, time every contender at every concurrency level
    (default 1, 8 and 32 clients; quick: 1 and 8, since 32 clients cost as much as the rest)."""
    load_before = os.getloadavg()
    concurrencies = concurrencies or ((1, 8) if quick else (1, 8, 32))
    model = ensure_model(model or Path(tempfile.gettempdir()) / "lmfast_bench_serve_gpt2")
    skipped: dict[str, str] = {}
    # (a) and (b) serve what `lmfast serve` is for: the ONNX export of the very HF dir (c) serves;
    # the torch-backend server on the HF dir itself compares the batching engines on one runtime
    export = ensure_export(model, device, precision)
    if isinstance(export, str):
        skipped["onnx"] = export + "; (a) and (b) use the torch backend"
        export, backend = model, "torch"
    else:
        backend = "onnx"
    servers: list[Server] = [
        lmfast_server("lmfast_batched", export, 32, threads, device, backend),
        lmfast_server("lmfast_batch1", export, 1, threads, device, backend),
    ]
    if backend == "onnx":
        servers.append(lmfast_server("lmfast_batched_torch", model, 32, threads, device, "torch"))
    peers: dict[str, Server | str] = {
        "transformers": transformers_server(model, threads, device, max(concurrencies), new_tokens)
        if with_transformers
        else "disabled with --no_transformers",
        "llama_server": llama_server(
            model, llama_server_binary, llama_cpp_src, threads, max(concurrencies), new_tokens, precision
        )
        if llama_server_binary is not None
        else "no --llama_server BIN given",
    }
    for name, peer in peers.items():  # a peer that cannot run here is a skip line with the reason
        if isinstance(peer, str):
            skipped[name] = peer
        else:
            servers.append(peer)
    runs: list[RunStats] = []
    try:
        for server in list(servers):
            try:
                server.wait_ready()
            except RuntimeError as exc:
                if server.name != "transformers":
                    raise
                skipped["transformers"] = str(exc).splitlines()[0]
                server.stop()
                servers.remove(server)
        by_name = {s.name: s for s in servers}
        correctness = check_correctness(by_name, 16)
        for server in servers:  # warm-up: first-request costs (transformers compiles its CB manager)
            asyncio.run(run_load(server, 8, 8, 8, stream=True))
        for concurrency in concurrencies:
            # several waves per client, so that batch-1 queueing reaches its steady state
            n_requests = max(8, concurrency) if quick else max(24, 3 * concurrency)
            # rounds alternate the contenders; the best round of each counts (a shared machine's
            # other load only ever slows a run down)
            for _ in range(rounds if rounds else 1 if quick else 2):
                for server in servers:
                    modes = (True, False) if server.name == "lmfast_batched" else (True,)
                    for stream in modes:
                        stats = asyncio.run(run_load(server, concurrency, n_requests, new_tokens, stream))
                        runs.append(stats)
                        print_row(stats)
    finally:
        for server in servers:
            server.stop()
    result = summarize(runs, correctness, skipped, model, backend, threads, new_tokens, device, quick)
    # other processes on the machine slow some rounds down: say how busy it was
    result["load_average_before_after"] = [load_before[0], os.getloadavg()[0]]
    result["precision"] = precision  # of (a), (b) and (d); (a') and (c) run the HF dir in fp32 on a CPU
    return result


def check_correctness(servers: dict[str, Server], new_tokens: int) -> dict[str, Any]:
    """Greedy batched (a) must equal unbatched (b); report how often (c) agrees."""
    prompts = PROMPTS[:8]
    batched = asyncio.run(greedy_texts(servers["lmfast_batched"], prompts, new_tokens))
    single = asyncio.run(greedy_texts(servers["lmfast_batch1"], prompts, new_tokens))
    if batched != single:
        raise AssertionError(f"batched greedy output differs from unbatched:\n{batched}\n{single}")
    report: dict[str, Any] = {"batched_equals_unbatched": True, "prompts": len(prompts)}
    if "lmfast_batched_torch" in servers:
        torch_texts = asyncio.run(greedy_texts(servers["lmfast_batched_torch"], prompts, new_tokens))
        report["torch_backend_same_text"] = sum(a == b for a, b in zip(batched, torch_texts, strict=True))
    for peer in ("transformers", "llama_server"):
        if peer in servers:
            theirs = asyncio.run(greedy_texts(servers[peer], prompts, new_tokens))
            report[f"{peer}_same_text"] = sum(a == b for a, b in zip(batched, theirs, strict=True))
    return report


def print_row(stats: RunStats) -> None:
    kind = "stream" if stats.stream else "json"
    print(
        f"{stats.name:>15} {kind:>6} C={stats.concurrency:<3} {stats.requests:>4} req "
        f"{stats.requests_per_s:7.2f} req/s {stats.tokens_per_s:8.1f} tok/s  TTFT p50 {stats.ttft_p50_s * 1000:7.1f} ms  "
        f"latency p50 {stats.latency_p50_s:6.2f} s p99 {stats.latency_p99_s:6.2f} s",
        flush=True,
    )


def summarize(
    runs: list[RunStats],
    correctness: dict[str, Any],
    skipped: dict[str, str],
    model: Path,
    backend: str,
    threads: int,
    new_tokens: int,
    device: str,
    quick: bool,
) -> dict[str, Any]:
    def find(name: str, concurrency: int, stream: bool = True) -> RunStats | None:
        """The best round (highest tokens/s) of one contender at one level."""
        same = [r for r in runs if (r.name, r.concurrency, r.stream) == (name, concurrency, stream)]
        return max(same, key=lambda r: r.tokens_per_s, default=None)

    ratios: dict[str, dict[str, float]] = {}
    for concurrency in sorted({r.concurrency for r in runs}):
        a, b = find("lmfast_batched", concurrency), find("lmfast_batch1", concurrency)
        c, plain = find("transformers", concurrency), find("lmfast_batched", concurrency, stream=False)
        entry: dict[str, float] = {}
        if a and b:
            entry["tokens_per_s_vs_batch1"] = a.tokens_per_s / b.tokens_per_s
            entry["p50_latency_ratio_batch1_over_batched"] = b.latency_p50_s / a.latency_p50_s
        if a and c:
            entry["tokens_per_s_vs_transformers"] = a.tokens_per_s / c.tokens_per_s
        llama = find("llama_server", concurrency)
        if a and llama:
            entry["tokens_per_s_vs_llama_server"] = a.tokens_per_s / llama.tokens_per_s
            entry["ttft_p50_llama_server_over_lmfast"] = llama.ttft_p50_s / a.ttft_p50_s
        torch_a = find("lmfast_batched_torch", concurrency)
        if torch_a and c:
            entry["torch_backend_tokens_per_s_vs_transformers"] = torch_a.tokens_per_s / c.tokens_per_s
        if a and plain:
            entry["stream_over_nonstream_throughput_ratio"] = a.tokens_per_s / plain.tokens_per_s
        ratios[f"c{concurrency}"] = entry
    goals = {}
    top = ratios.get("c32", {})
    if top:
        goals["c32_batched_ge_6x_batch1"] = top.get("tokens_per_s_vs_batch1", 0) >= 6
        if "tokens_per_s_vs_transformers" in top:
            goals["c32_batched_ge_2x_transformers"] = top["tokens_per_s_vs_transformers"] >= 2
    if "c8" in ratios:
        goals["c8_p50_latency_le_third_of_batch1"] = (
            ratios["c8"].get("p50_latency_ratio_batch1_over_batched", 0) >= 3
        )
    stream_ratios = [
        e["stream_over_nonstream_throughput_ratio"]
        for e in ratios.values()
        if "stream_over_nonstream_throughput_ratio" in e
    ]
    if stream_ratios:
        goals["streaming_keeps_ge_90pct"] = min(stream_ratios) >= 0.9
    best: list[RunStats] = []
    for run_ in runs:
        top = find(run_.name, run_.concurrency, run_.stream)
        if top is not None and all(top is not seen for seen in best):
            best.append(top)
    table = [asdict(r) for r in best]
    return {
        "model": str(model),
        "backend": backend,
        "device": device,
        "threads": threads,
        "new_tokens": new_tokens,
        "quick": quick,
        "correctness": correctness,
        "skipped": skipped,
        "best": table,
        "runs": [asdict(r) for r in runs],
        "ratios": ratios,
        "goals": goals,
    }


def print_summary(result: dict[str, Any]) -> None:
    print("\nbest round of each contender:")
    for row in result["best"]:
        print_row(RunStats(**row))
    print()
    for level, entry in result["ratios"].items():
        parts = [f"{key} {value:.2f}x" for key, value in entry.items()]
        print(f"{level:>4}: " + ", ".join(parts))
    for name, reason in result["skipped"].items():
        print(f"skipped {name}: {reason}")
    before, after = result["load_average_before_after"]
    print(f"machine load average (1 min) before/after: {before:.1f}/{after:.1f} on {os.cpu_count()} CPUs")
    print("goals:", ", ".join(f"{k}={'met' if v else 'MISSED'}" for k, v in result["goals"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per level")
    parser.add_argument(
        "--model", type=Path, help="a Hugging Face model dir (default: a random GPT-2, built once)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads of every server (1 leaves a core to the load generator)",
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", help="client counts (default: 1 8 32; --quick: 1 8)"
    )
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--no_transformers", action="store_true", help="skip contender (c)")
    parser.add_argument("--rounds", type=int, help="rounds per level, best counts (default: 2, --quick 1)")
    parser.add_argument("--llama_server", type=Path, help="llama.cpp's llama-server binary: contender (d)")
    parser.add_argument(
        "--llama_cpp_src",
        type=Path,
        default=os.environ.get("LLAMA_CPP_SRC"),
        help="the llama.cpp sources (their convert_hf_to_gguf.py writes (d)'s GGUF)",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="weights of the lmfast export and of llama-server's GGUF (default fp32)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    result = run(
        args.quick,
        model=args.model,
        threads=args.threads,
        concurrencies=tuple(args.concurrency) if args.concurrency else None,
        new_tokens=args.new_tokens,
        device=args.device,
        with_transformers=not args.no_transformers,
        rounds=args.rounds,
        llama_server_binary=args.llama_server,
        llama_cpp_src=args.llama_cpp_src,
        precision=args.precision,
    )
    print_summary(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
