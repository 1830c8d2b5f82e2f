"""Replicas on one box: R single-threaded `lmfast serve` processes vs one process with R threads.

    python benchmarks/bench_replicas.py [--replicas 2] [--concurrency 2 8 16] [--rounds 2]

Same cores, same model (bench_serve.py's random-weight GPT-2, 4 layers x 256, and its ONNX
export), same continuous batching. The client spreads requests round-robin over the replicas,
which is what a load balancer in front of them does (no nginx/HAProxy on this machine, so the
proxy's own cost is not in the figures). Before timing, every contender's greedy outputs must
equal the single process's. Contenders alternate within each concurrency level; the best round of
each counts. Prints requests/s, tokens/s, p50 latency, the ratio, and the machine's load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import PROMPTS, Server, ensure_export, ensure_model, lmfast_server, one_request  # noqa: E402


async def _load(
    servers: list[Server], concurrency: int, n_requests: int, new_tokens: int
) -> dict[str, float]:
    """Closed loop of `concurrency` workers; request i goes to replica i mod R."""
    clients = [httpx.AsyncClient(base_url=s.url, timeout=600) for s in servers]
    latencies: list[float] = []
    tokens = 0
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, tokens
        while next_index < n_requests:
            index = next_index
            next_index += 1
            client = clients[index % len(clients)]
            latency, _, generated, _ = await one_request(
                client, servers[0].model_id, PROMPTS[index % len(PROMPTS)], new_tokens, stream=False
            )
            latencies.append(latency)
            tokens += generated

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        for client in clients:
            await client.aclose()
    seconds = time.perf_counter() - started
    return {"rps": len(latencies) / seconds, "tok_s": tokens / seconds, "p50_s": statistics.median(latencies)}


async def _greedy(servers: list[Server], new_tokens: int) -> list[str]:
    clients = [httpx.AsyncClient(base_url=s.url, timeout=600) for s in servers]
    try:
        results = await asyncio.gather(
            *(
                one_request(clients[i % len(clients)], servers[0].model_id, p, new_tokens, stream=False)
                for i, p in enumerate(PROMPTS[:8])
            )
        )
    finally:
        for client in clients:
            await client.aclose()
    return [r[3] for r in results]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", type=Path, help="a Hugging Face model dir (default: bench_serve's)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    model = ensure_model(args.model or Path(tempfile.gettempdir()) / "lmfast_bench_serve_gpt2")
    export = ensure_export(model, "cpu")
    if isinstance(export, str):
        print(export, file=sys.stderr)
        return 1
    r = args.replicas
    contenders = {
        f"{r}x1thread": [lmfast_server(f"replica{i}", export, 32, 1, "cpu") for i in range(r)],
        f"1x{r}threads": [lmfast_server("single", export, 32, r, "cpu")],
    }
    best: dict[tuple[str, int], dict[str, float]] = {}
    try:
        for servers in contenders.values():
            for server in servers:
                server.wait_ready()
        reference = asyncio.run(_greedy(contenders[f"1x{r}threads"], 16))
        for name, servers in contenders.items():
            if asyncio.run(_greedy(servers, 16)) != reference:
                raise AssertionError(f"{name}: greedy outputs differ from the single process's")
            asyncio.run(_load(servers, 4, 4, 8))  # warm-up
        print(f"correctness: greedy outputs of {', '.join(contenders)} identical on 8 prompts")
        print(f"{'contender':>12} {'conc':>5} {'req/s':>8} {'tok/s':>8} {'p50 s':>7}")
        for concurrency in args.concurrency:
            n_requests = max(16, 3 * concurrency)
            for _ in range(args.rounds):
                for name, servers in contenders.items():
                    stats = asyncio.run(_load(servers, concurrency, n_requests, args.new_tokens))
                    print(
                        f"{name:>12} {concurrency:>5} {stats['rps']:>8.2f} {stats['tok_s']:>8.1f} {stats['p50_s']:>7.2f}"
                    )
                    key = (name, concurrency)
                    if key not in best or stats["tok_s"] > best[key]["tok_s"]:
                        best[key] = stats
    finally:
        for servers in contenders.values():
            for server in servers:
                server.stop()
    names = list(contenders)
    print(f"\nbest of {args.rounds} rounds, tokens/s ({names[0]} / {names[1]}):")
    for concurrency in args.concurrency:
        a, b = best[(names[0], concurrency)], best[(names[1], concurrency)]
        print(
            f"  concurrency {concurrency:>3}: {a['tok_s']:.1f} vs {b['tok_s']:.1f}  ratio {a['tok_s'] / b['tok_s']:.2f}"
        )
    print(f"load average before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(other developers' jobs share this machine)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
