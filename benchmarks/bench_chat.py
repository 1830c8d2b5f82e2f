"""Multi-turn chat serving: `lmfast serve` vs llama.cpp's `llama-server`, as chat clients use them.

    python benchmarks/bench_chat.py --model HF_DIR --llama_server BIN --llama_cpp_src DIR
        [--conversations 1 4 16] [--turns 8] [--new_tokens 24] [--threads 2] [--rounds 2]
        [--tier fp32|int8 --llama_quantize BIN] [--gap --budgets 16 32 64] [--json PATH]

A chat client (the bot, a web UI) resends the whole conversation every turn. C conversations run
at once, each T turns: every turn sends the system prompt, every earlier turn and a new user
message to `/v1/chat/completions`, streamed, greedy, N new tokens, and appends the reply it got to
its history. Every conversation of every run starts with a system prompt naming a fresh random
id, so no server can reuse another run's cache: only what a conversation itself computed.

Contenders, each its own process on loopback with the same threads and the same weights:
  lmfast        lmfast serve EXPORT (its defaults: the token budget and the prefix cache on)
  lmfast_nocache  the same with --prefix_cache_mb 0 (what the cache is worth)
  llama_server  llama-server on the GGUF that llama.cpp's own converter writes from HF_DIR (f32;
                q8_0 from its llama-quantize for --tier int8), --parallel C, continuous batching,
                and its defaults otherwise: `cache_prompt` on, so each slot keeps its conversation
Before timing, one conversation runs on each contender and the replies are compared turn by turn
(chat templates and kernels differ in rounding; the count of identical replies is printed).
Contenders alternate within each round. Printed per contender and C: time to first token per turn
(median over conversations and rounds), its turn-T / turn-1 ratio, and wall time per conversation;
then lmfast's ratio to llama-server (> 1: lmfast is faster).

`--gap` measures the stall a long prompt causes instead: one stream decodes while a prompt of
`--gap_prompt_chars` characters joins; for lmfast's defaults, each `--budgets` value alone
(`--stall_ratio 0`) and no chunking at all, the stream's p50 and p99 gap between tokens outside and
while the long prompt is prefilled, and the long prompt's time to first token against the
unchunked one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from benchmarks.bench_engines import llama_gguf  # noqa: E402
from benchmarks.bench_serve import Server, lmfast_server, thread_env  # noqa: E402

USER_TURNS = [
    "I want to hike a mountain trail this weekend. What should I pack?",
    "How much water should I bring for a six hour hike?",
    "What if it starts raining halfway up?",
    "Which shoes are better, trail runners or boots?",
    "How do I avoid blisters on a long descent?",
    "Should I hike alone or with a friend?",
    "What snacks keep my energy up on the trail?",
    "How early should I start to be back before dark?",
    "Any tips for taking photos at the summit?",
    "What should I do after the hike to recover?",
    "How do I read a trail map properly?",
    "What is the best way to cross a small stream?",
]
FRESH_CONNECTION = {"Connection": "close"}
"""Each turn on a new loopback connection: llama-server closes idle kept-alive ones, and a turn sent
on a closed one fails (the same for every contender)."""
LONG_SENTENCE = "The mountain path winds through old pine forest past a quiet lake and up to the ridge. "


def system_prompt() -> str:
    """A fresh system prompt per conversation and run: no server may reuse another run's cache."""
    return f"You are a helpful hiking guide. Conversation {uuid.uuid4().hex[:12]}."


async def stream_chat(
    client: httpx.AsyncClient,
    server: Server,
    messages: list[dict[str, str]],
    new_tokens: int,
    arrivals: list[float] | None = None,
    extra_body: dict[str, Any] | None = None,
) -> tuple[float, list[float], str]:
    """One streamed greedy chat turn; returns (seconds to the first token, arrival time of each
    content chunk, also appended to `arrivals` as they come, the reply's text)."""
    body: dict[str, Any] = {
        "model": server.model_id,
        "messages": messages,
        "max_tokens": new_tokens,
        "temperature": 0,
        "stream": True,
    }
    body.update(server.extra_body)
    body.update(extra_body or {})
    started = time.perf_counter()
    arrivals = [] if arrivals is None else arrivals
    text: list[str] = []
    async with _named_errors(server), client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(
                f"{server.name}: HTTP {response.status_code}: {(await response.aread())[:300]!r}"
            )
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            choices = event.get("choices") or []
            content = choices[0].get("delta", {}).get("content") if choices else None
            if content:
                arrivals.append(time.perf_counter())
                text.append(content)
    if not arrivals:
        raise RuntimeError(f"{server.name}: a turn streamed no content")
    return arrivals[0] - started, arrivals, "".join(text)


@contextlib.asynccontextmanager
async def _named_errors(server: Server) -> AsyncIterator[None]:
    """A transport error says which contender it came from (its log is kept)."""
    try:
        yield
    except httpx.TransportError as error:
        raise RuntimeError(f"{server.name}: {error!r} (log: {server.log.name})") from error


async def conversation(
    server: Server, turns: int, new_tokens: int, system: str | None = None
) -> tuple[list[float], float, list[str]]:
    """Run one conversation (a fresh system prompt unless given); returns (TTFT per turn, wall
    seconds, the replies)."""
    messages = [{"role": "system", "content": system or system_prompt()}]
    ttfts, replies = [], []
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=server.url, timeout=600, headers=FRESH_CONNECTION) as client:
        for turn in range(turns):
            messages.append({"role": "user", "content": USER_TURNS[turn % len(USER_TURNS)]})
            ttft, _, reply = await stream_chat(client, server, messages, new_tokens)
            ttfts.append(ttft)
            replies.append(reply)
            messages.append({"role": "assistant", "content": reply})
    return ttfts, time.perf_counter() - started, replies


async def run_conversations(server: Server, count: int, turns: int, new_tokens: int) -> dict[str, Any]:
    results = await asyncio.gather(*(conversation(server, turns, new_tokens) for _ in range(count)))
    return {
        "ttft_per_turn": [[r[0][t] for r in results] for t in range(turns)],
        "wall_per_conversation": [r[1] for r in results],
    }


def llama_server_for_chat(
    gguf: Path, binary: Path, threads: int, conversations: int, context_per_slot: int
) -> Server:
    """llama-server as its users run it: its defaults (prompt cache on), one slot per conversation."""
    command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", "{port}"]
    command += ["--threads", str(threads), "--threads-batch", str(threads), "--parallel", str(conversations)]
    command += ["--ctx-size", str(conversations * context_per_slot), "--cont-batching"]
    return Server("llama_server", command, thread_env(threads), "/health", "model")


def llama_gguf_for(model: Path, tier: str, llama_cpp_src: Path, llama_quantize: Path | None) -> Path:
    """The GGUF llama-server serves: f32 from llama.cpp's converter, q8_0 from its quantizer."""
    work = model.parent / f"{model.name}_gguf"  # where bench_serve's llama-server finds it too
    work.mkdir(exist_ok=True)
    f32 = llama_gguf(model, work, "f32", llama_cpp_src)
    if tier == "fp32":
        return f32
    if llama_quantize is None:
        raise SystemExit("--tier int8 needs --llama_quantize BIN (llama.cpp's llama-quantize)")
    q8 = work / "llama-q8_0.gguf"
    if not q8.is_file():
        subprocess.run([str(llama_quantize), str(f32), str(q8), "q8_0", "2"], check=True, capture_output=True)
    return q8


def lmfast_export_for(model: Path, tier: str) -> Path:
    """`lmfast export onnx` of the model at the tier (built once)."""
    target = model.parent / f"{model.name}_onnx_{tier}"
    if not (target / "model.onnx").is_file():
        command = [sys.executable, "-m", "lmfast", "export", "onnx", str(model), "--output", str(target)]
        command += ["--overwrite"] + ([] if tier == "fp32" else ["--quantize", tier, "--accept_quality_loss"])
        subprocess.run(command, cwd=REPO, env=thread_env(2), check=True, capture_output=True)
    return target


def started(server: Server) -> Server:
    server.wait_ready()
    return server


def summarize(name: str, count: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    turns = len(runs[0]["ttft_per_turn"])
    ttft = [statistics.median([x for run in runs for x in run["ttft_per_turn"][t]]) for t in range(turns)]
    wall = statistics.median([x for run in runs for x in run["wall_per_conversation"]])
    return {
        "contender": name,
        "conversations": count,
        "ttft_ms_per_turn": [round(1000 * x, 1) for x in ttft],
        "ttft_last_vs_first": round(ttft[-1] / ttft[0], 2),
        "wall_s_per_conversation": round(wall, 2),
    }


def check_replies(servers: list[Server], turns: int, new_tokens: int) -> dict[str, Any]:
    """One conversation per server with the same user turns; replies compared turn by turn (each
    contender continues its own history, so a difference at turn k carries into the later turns)."""
    system = system_prompt()  # the same conversation on every server
    replies = {s.name: asyncio.run(conversation(s, turns, new_tokens, system))[2] for s in servers}
    reference = replies[servers[0].name]
    report = {}
    for name, texts in replies.items():
        same = sum(a == b for a, b in zip(reference, texts, strict=True))
        report[name] = {"identical_to_" + servers[0].name: f"{same}/{turns}", "turn_1": texts[0][:80]}
    return report


def run_chat(args: argparse.Namespace) -> dict[str, Any]:
    model = args.model.resolve()
    export = lmfast_export_for(model, args.tier)
    gguf = None
    if args.llama_server:
        gguf = llama_gguf_for(model, args.tier, args.llama_cpp_src, args.llama_quantize)
    results: dict[str, Any] = {"tier": args.tier, "threads": args.threads, "load_before": os.getloadavg()}
    context_per_slot = 256 + args.turns * (64 + args.new_tokens)
    for count in args.conversations:
        servers = [started(lmfast_server("lmfast", export, count, args.threads, "cpu"))]
        if args.ablation:
            extra = ("--prefix_cache_mb", "0")
            servers.append(
                started(lmfast_server("lmfast_nocache", export, count, args.threads, "cpu", "onnx", extra))
            )
        if gguf is not None:
            llama = llama_server_for_chat(gguf, args.llama_server, args.threads, count, context_per_slot)
            servers.append(started(llama))
        try:
            if count == args.conversations[0]:
                results["replies"] = check_replies(servers, args.turns, args.new_tokens)
                print(json.dumps(results["replies"], indent=1), flush=True)
            runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
            for round_index in range(args.rounds):
                for server in servers if round_index % 2 == 0 else servers[::-1]:
                    runs[server.name].append(
                        asyncio.run(run_conversations(server, count, args.turns, args.new_tokens))
                    )
        finally:
            for server in servers:
                server.stop()
        rows = {name: summarize(name, count, r) for name, r in runs.items()}
        if "llama_server" in rows:
            ratio = (
                rows["llama_server"]["wall_s_per_conversation"] / rows["lmfast"]["wall_s_per_conversation"]
            )
            rows["lmfast"]["speed_vs_llama_server"] = round(ratio, 2)
        for row in rows.values():
            print(json.dumps(row), flush=True)
        results[f"conversations_{count}"] = list(rows.values())
    results["load_after"] = os.getloadavg()
    return results


async def _gap_run(server: Server, long_prompt: str, stream_tokens: int, lead_tokens: int) -> dict[str, Any]:
    """One stream decodes; after its first `lead_tokens` tokens a long prompt joins (1 new token).
    Returns the stream's gaps while the long prompt is in and outside that window, and the long
    prompt's time to first token."""
    async with httpx.AsyncClient(base_url=server.url, timeout=600, headers=FRESH_CONNECTION) as client:
        messages = [
            {"role": "system", "content": system_prompt()},
            {"role": "user", "content": USER_TURNS[0]},
        ]
        arrivals: list[float] = []
        stream = asyncio.create_task(
            stream_chat(client, server, messages, stream_tokens, arrivals, {"ignore_eos": True})
        )
        while len(arrivals) < lead_tokens and not stream.done():
            await asyncio.sleep(0.01)
        long_messages = [{"role": "user", "content": long_prompt + system_prompt()}]
        joined = time.perf_counter()
        long_ttft, _, _ = await stream_chat(client, server, long_messages, 1)
        left = joined + long_ttft
        _, arrivals, _ = await stream
    gaps = [(b - a, b) for a, b in zip(arrivals, arrivals[1:], strict=False)]
    before = [g for g, at in gaps if not joined <= at <= left + 0.001]  # the stream alone
    during = [g for g, at in gaps if joined <= at <= left + 0.001]
    return {"before": before, "during": during, "long_ttft": long_ttft}


def _p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def run_gap(args: argparse.Namespace) -> dict[str, Any]:
    """The stall a max-size prompt causes a running stream: lmfast's defaults (the token budget
    within the stall bound), fixed token budgets alone, and no chunking (one whole prefill)."""
    model = args.model.resolve()
    export = lmfast_export_for(model, args.tier)
    long_prompt = (LONG_SENTENCE * (args.gap_prompt_chars // len(LONG_SENTENCE) + 1))[
        : args.gap_prompt_chars - 40
    ]
    variants: dict[str, tuple[str, ...]] = {"default": ()}
    for budget in args.budgets:
        variants[f"budget_{budget}"] = ("--step_token_budget", str(budget), "--stall_ratio", "0")
    variants["unchunked"] = ("--step_token_budget", str(10**6), "--stall_ratio", "0")
    results: dict[str, Any] = {"tier": args.tier, "load_before": os.getloadavg(), "variants": {}}
    servers = {
        name: started(lmfast_server(name, export, 8, args.threads, "cpu", "onnx", extra))
        for name, extra in variants.items()
    }
    names = list(variants)
    try:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for round_index in range(args.rounds):
            for name in names if round_index % 2 == 0 else names[::-1]:
                runs[name].append(
                    asyncio.run(_gap_run(servers[name], long_prompt, args.gap_stream_tokens, 30))
                )
    finally:
        for server in servers.values():
            server.stop()
    unchunked_ttft = statistics.median(r["long_ttft"] for r in runs["unchunked"])
    for name in names:
        before = [g for r in runs[name] for g in r["before"]]
        during = [g for r in runs[name] for g in r["during"]]
        normal = _p(before, 0.5)
        ttft = statistics.median(r["long_ttft"] for r in runs[name])
        row = {
            "variant": name,
            "gap_ms_p50_alone": round(1000 * normal, 1),
            "gap_ms_p50_while_long_prompt": round(1000 * _p(during, 0.5), 1),
            "gap_ms_p99_while_long_prompt": round(1000 * _p(during, 0.99), 1),
            "p99_gap_vs_alone": round(_p(during, 0.99) / normal, 2),
            "long_prompt_ttft_s": round(ttft, 2),
            "long_ttft_vs_unchunked": round(ttft / unchunked_ttft, 2),
        }
        print(json.dumps(row), flush=True)
        results["variants"][name] = row
    results["load_after"] = os.getloadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--model", type=Path, required=True, help="a Hugging Face model directory")
    parser.add_argument("--tier", choices=["fp32", "int8"], default="fp32")
    parser.add_argument("--conversations", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ablation", action="store_true", help="also lmfast with --prefix_cache_mb 0")
    parser.add_argument("--llama_server", type=Path, help="llama.cpp's llama-server binary")
    parser.add_argument("--llama_cpp_src", type=Path, help="the llama.cpp sources (convert_hf_to_gguf.py)")
    parser.add_argument("--llama_quantize", type=Path, help="llama.cpp's llama-quantize (for --tier int8)")
    parser.add_argument(
        "--gap", action="store_true", help="measure a stream's stall while a long prompt joins"
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--gap_prompt_chars", type=int, default=12_000)
    parser.add_argument("--gap_stream_tokens", type=int, default=400)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.llama_server and not args.llama_cpp_src:
        parser.error("--llama_server needs --llama_cpp_src (llama.cpp's converter writes its GGUF)")
    result = run_gap(args) if args.gap else run_chat(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
