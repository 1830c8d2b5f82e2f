"""Chat-export prepare vs the plain dialog path: a synthetic Telegram export of `--mb` MB (default 100).

The export (private chats and groups, stickers, photos, service messages, forwards; written once
under `data/bench/`, git-ignored) is prepared with `--documents_format telegram`, and the
conversations it yields are written as a dialogs JSONL and prepared with `--documents_format
dialogs`. Correctness first: both datasets' `corpus.npy` and `loss_mask.npy` must be
byte-identical, else it exits 1. Each contender runs in a fresh process, alternating, the best of
`--rounds` counts; the time is prepare's own `wall_time_s` (description.json) and the process's CPU
time (user + sys, which a busy shared machine disturbs less). The ratios are telegram / dialogs:
what reading the export costs on top of rendering and encoding. Reading the export into
conversations alone is timed in-process too.

    python benchmarks/bench_chat_exports.py [--mb 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BENCH_DIR = REPO / "data" / "bench"
TEMPLATE = REPO / "data" / "documents" / "dialogs" / "chat_template.jinja"
WORDS = (
    "yes no maybe tonight tomorrow coffee train late sorry great thanks see you there the a to and is "
    "was what where when why how ok lol sure meeting call later home work pizza movie weekend football"
).split()
PEOPLE = [("Bob", 1), ("Ann", 2), ("Carl", 3), ("Dana", 4), ("Eve", 5), ("Finn", 6)]


def _message(rng: random.Random, k: int, t: int, who: tuple[str, int]) -> dict:
    m = {
        "id": k,
        "type": "message",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)),
        "date_unixtime": str(t),
        "from": who[0],
        "from_id": f"user{who[1]}",
        "text": " ".join(rng.choices(WORDS, k=rng.randint(1, 14))),
    }
    roll = rng.random()
    if roll < 0.03:
        m.update(type="service", action="pin_message", actor=who[0], actor_id=m.pop("from_id"), text="")
        del m["from"]
    elif roll < 0.06:
        m.update(media_type="sticker", file="stickers/s.webp", text="")
    elif roll < 0.08:
        m.update(photo="photos/p.jpg")
    elif roll < 0.09:
        m["forwarded_from"] = "News Channel"
    elif roll < 0.12:
        m["text"] = [{"type": "bold", "text": "look"}, " " + m["text"]]
    return m


def build_export(megabytes: float) -> Path:
    """A full-account Telegram export of about `megabytes` MB, Bob being its owner."""
    path = BENCH_DIR / f"telegram_{megabytes:g}mb.json"
    if path.is_file():
        return path
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    chats, size, k, t = [], 0, 0, 1_600_000_000
    while size < megabytes * 1e6:
        group = rng.random() < 0.4
        members = [PEOPLE[0], *rng.sample(PEOPLE[1:], 3 if group else 1)]
        messages = []
        for _ in range(2000):
            t += rng.choice((5, 30, 120, 600, 30000)) if rng.random() < 0.95 else 40000
            k += 1
            messages.append(_message(rng, k, t, rng.choice(members)))
        chat = {"name": f"chat {len(chats)}", "type": "private_group" if group else "personal_chat",
                "id": len(chats), "messages": messages}  # fmt: skip
        size += len(json.dumps(chat, ensure_ascii=False, indent=1))
        chats.append(chat)
    export = {"personal_information": {"user_id": 1, "first_name": "Bob"}, "chats": {"list": chats}}
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(export, ensure_ascii=False, indent=1), encoding="utf-8")
    partial.rename(path)
    return path


def as_dialogs(export: Path) -> Path:
    """The export's conversations, as the dialog path reads them (one JSONL line each)."""
    from lmfast.data.chat_exports import ChatOptions, read_splits

    path = export.with_suffix(".dialogs.jsonl")
    if path.is_file():
        return path
    splits = read_splits("telegram", export, export, 0.0, ChatOptions(), "strict")
    with path.with_suffix(".partial").open("w", encoding="utf-8") as file:
        for conversation in splits.conversations["train"]:
            file.write(json.dumps({"messages": conversation}, ensure_ascii=False) + "\n")
    path.with_suffix(".partial").rename(path)
    return path


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_prepare(fmt: str, train: Path, valid: Path, root: Path) -> Path:
    args = [sys.executable, "-m", "lmfast.prepare", "--quiet", "--documents_format", fmt,
            "--documents_train_file", str(train), "--documents_valid_file", str(valid),
            "--tokenizer_cls_name", "GPT2Tokenizer", "--chat_template", str(TEMPLATE),
            "--max_sample_length", "512", "--min_sample_length", "1", "--datasets_root", str(root),
            "--dataset_name", fmt]  # fmt: skip
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{fmt}: prepare failed: {result.stderr.strip()}")
    return Path(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import shutil

    import numpy as np

    export = build_export(args.mb)
    small = build_export(0.5)
    train_jsonl, valid_jsonl = as_dialogs(export), as_dialogs(small)
    print(
        f"export {export.stat().st_size / 1e6:.1f} MB; its dialogs JSONL {train_jsonl.stat().st_size / 1e6:.1f} MB"
    )
    inputs = {"telegram": (export, small), "dialogs": (train_jsonl, valid_jsonl)}
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    root = BENCH_DIR / "chat_datasets"
    for round_ in range(args.rounds):
        shutil.rmtree(root, ignore_errors=True)
        dirs, cpu = {}, {}
        for fmt, paths in inputs.items():
            before = children_cpu_s()
            dirs[fmt] = run_prepare(fmt, *paths, root)
            cpu[fmt] = children_cpu_s() - before
            best_cpu[fmt] = min(best_cpu.get(fmt, float("inf")), cpu[fmt])
        if round_ == 0:  # correctness before any number
            for name in ("corpus.npy", "loss_mask.npy"):
                a, b = (np.load(dirs[f] / "train" / name) for f in inputs)
                if not np.array_equal(a, b):
                    sys.exit(f"MISMATCH: train/{name} of telegram and dialogs differ")
            description = json.loads((dirs["telegram"] / "description.json").read_text())
            print(
                f"identical corpus.npy and loss_mask.npy: {description['number_of_train_tokens']:,} tokens, "
                f"{description['number_of_train_conversations']:,} conversations from "
                f"{description['chat_train_messages_read']:,} messages "
                f"({description['chat_train_messages_kept']:,} kept)"
            )
        for fmt, directory in dirs.items():
            wall = json.loads((directory / "description.json").read_text())["wall_time_s"]
            best[fmt] = min(best.get(fmt, float("inf")), wall)
            print(f"round {round_ + 1}: {fmt:8s} {wall:7.2f} s wall, {cpu[fmt]:7.2f} s CPU (process)")
    shutil.rmtree(root, ignore_errors=True)
    from lmfast.data.chat_exports import ChatOptions, read_splits

    started = time.perf_counter()
    read_splits("telegram", export, None, 0.01, ChatOptions(), "strict")
    reading = time.perf_counter() - started
    mb = export.stat().st_size / 1e6
    print(
        f"reading the export into conversations alone: {reading:.2f} s ({mb / reading:.1f} MB/s), in this process"
    )
    print(
        f"telegram {best['telegram']:.2f} s ({mb / best['telegram']:.1f} MB/s of export), dialogs "
        f"{best['dialogs']:.2f} s: telegram/dialogs time ratio {best['telegram'] / best['dialogs']:.2f}x"
    )
    print(
        f"CPU time (user+sys, less sensitive to a shared machine): telegram {best_cpu['telegram']:.2f} s, "
        f"dialogs {best_cpu['dialogs']:.2f} s: telegram/dialogs CPU ratio {best_cpu['telegram'] / best_cpu['dialogs']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
