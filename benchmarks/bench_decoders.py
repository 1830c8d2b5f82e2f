"""Export decoders compared: the hand-written GPT-2/Llama steps vs transformers' own modeling code.

Both are exported from the same random-weight model (`--decoder auto` and `--decoder
transformers`), their greedy tokens are checked equal, then one decode step is timed in lmfast's
own loop (`DecodeSession.step` after the prefill step), batch 1 and 8, 32-token prompts, the two
exports alternating within each round in a rotating order; the median round is reported.

    python benchmarks/bench_decoders.py [--rounds 5] [--threads 2] [--steps 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PROMPT_TOKENS = 32


def _model_dir(root: Path, family: str) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2TokenizerFast, LlamaConfig

    torch.manual_seed(0)
    if family == "gpt2":  # bench_inference's small-16M shape
        config = GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=1024, vocab_size=50257)
    else:  # a 4-layer Llama, SmolLM2's head layout (9 query heads over 3 kv heads of 64)
        config = LlamaConfig(
            vocab_size=50257,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=4,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=1024,
        )
    directory = root / family
    AutoModelForCausalLM.from_config(config).eval().save_pretrained(directory)
    GPT2TokenizerFast.from_pretrained(REPO / "lmfast" / "assets" / "gpt2").save_pretrained(directory)
    return directory


def _step_ms(generator, batch: int, steps: int) -> float:
    """Median wall time of one decode step (the prefill step excluded), in ms."""
    from lmfast.generation import GenerationParams

    params = GenerationParams(max_new_tokens=steps, temperature=0.0)
    session = generator.session(max_batch_size=batch)
    for row in range(batch):
        session.add_token_ids([(row * 97 + i * 13) % 50000 + 1 for i in range(PROMPT_TOKENS)], params)
    session.step()  # prefill
    times = []
    while len(session):
        started = time.perf_counter()
        session.step()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--families", nargs="+", default=["gpt2", "llama"])
    args = parser.parse_args(argv)

    from lmfast.export import ExportConfig, export_onnx
    from lmfast.generation import GenerationParams, Generator

    print("| family | batch | hand-written ms/step | transformers ms/step | transformers / hand-written |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for family in args.families:
            source = _model_dir(root, family)
            generators = {}
            for decoder in ("auto", "transformers"):
                out = export_onnx(
                    ExportConfig(
                        source=source, output=root / f"{family}-{decoder}", decoder=decoder, parity_steps=8
                    )
                )
                generators[decoder] = Generator.load(out, num_threads=args.threads)
            greedy = GenerationParams(max_new_tokens=16, temperature=0.0)
            prompts = ["Supposing that Truth is a woman", "God is dead."]
            assert generators["auto"](prompts, greedy) == generators["transformers"](prompts, greedy)
            for batch in (1, 8):
                times = {name: [] for name in generators}
                for round_ in range(args.rounds):
                    order = list(generators) if round_ % 2 == 0 else list(reversed(generators))
                    for name in order:
                        times[name].append(_step_ms(generators[name], batch, args.steps))
                hand, generic = (statistics.median(times[n]) for n in ("auto", "transformers"))
                print(
                    f"| {family} | {batch} | {hand:.2f} | {generic:.2f} | {generic / hand:.2f} |", flush=True
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
