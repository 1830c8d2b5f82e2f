"""`lmfast demo`: the whole pipeline on the bundled Nietzsche example, in a few minutes on a CPU.

prepare -> a short training of the tiny model -> ONNX export -> a real `lmfast serve` on loopback
-> one HTTP request -> the generated text printed. Each stage runs as the same `lmfast` command a
user would type (shown before it runs), so the demo doubles as a smoke test of the README.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from lmfast.flags import OneLineParser, run

DEFAULT_DOCUMENTS = Path("data/documents/nietzsche")
# the demo's own tree, so the README walkthrough's paths (data/datasets/nietzsche/0, ...) stay free
DEFAULT_WORK_DIR = Path("data/demo")


def newest_version(directory: Path) -> Path:
    """The highest-numbered `<N>/` under `directory` (each run of a stage writes a new N)."""
    versions = [p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise FileNotFoundError(f"{directory}: no numbered run directory was written")
    return max(versions, key=lambda p: int(p.name))


# measured: `lmfast demo` on 2 idle CPU cores, 241 s for 300 steps, of which training 227 s
SECONDS_PER_STEP_2_CORES = 227.2 / 300
SECONDS_OTHER_STAGES_2_CORES = 241 - 227.2


def plan(max_steps: int) -> str:
    """What the demo will do and roughly how long, before it starts (the train stage then shows its ETA)."""
    minutes = (SECONDS_OTHER_STAGES_2_CORES + SECONDS_PER_STEP_2_CORES * max_steps) / 60
    return (
        f"lmfast demo: prepare the Nietzsche texts, train gpt2-tiny for {max_steps} steps, export it to ONNX, "
        f"serve it and ask it one prompt; about {max(1, round(minutes))} min on 2 idle CPU cores (longer on busy "
        "ones: the train stage shows its own ETA)"
    )


def run_stage(title: str, args: list[str]) -> None:
    """Run one `lmfast` subcommand in a child process, echoing the command a user would type."""
    print(f"\n=== {title}\n$ lmfast {' '.join(args)}", flush=True)
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "lmfast", *args], check=False)
    if completed.returncode != 0:
        raise SystemExit(f"lmfast demo: stage '{title}' failed (exit code {completed.returncode})")
    print(f"--- {title}: done in {time.perf_counter() - started:.1f} s", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"lmfast demo: the server exited early (code {process.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"lmfast demo: the server was not ready after {timeout:.0f} s")


def serve_and_ask(export_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """Start `lmfast serve` on a free loopback port, send one request, stop the server."""
    port = free_port()
    args = ["serve", str(export_dir), "--host", "127.0.0.1", "--port", str(port)]
    print(f"\n=== serve\n$ lmfast {' '.join(args)}", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "lmfast", *args])
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(f"{base}/health_check/", server, timeout=120)
        body = {"seed_text": prompt, "generation_max_len": max_new_tokens, "temperature": 0.7, "top_k": 50}
        json_type = "-H 'content-type: application/json'"
        print(f"$ curl -s {base}/generated_texts/ {json_type} -d '{json.dumps(body)}'", flush=True)
        request = urllib.request.Request(
            f"{base}/generated_texts/",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["texts"][0]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="lmfast demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--documents_dir",
        type=Path,
        default=DEFAULT_DOCUMENTS,
        help="directory with train.txt and valid.txt (default: the bundled Nietzsche example)",
    )
    parser.add_argument(
        "--work_dir",
        type=Path,
        default=DEFAULT_WORK_DIR,
        help="where datasets/, experiments/ and exports/ are written (default: data/demo)",
    )
    parser.add_argument(
        "--max_steps", type=int, default=300, help="training steps of the tiny model (default: 300)"
    )
    parser.add_argument(
        "--prompt",
        default="Supposing that Truth is a woman",
        help="text the served model continues (default: 'Supposing that Truth is a woman')",
    )
    parser.add_argument(
        "--max_new_tokens", type=int, default=48, help="tokens generated for the prompt (default: 48)"
    )
    return run("lmfast demo", lambda: parser.parse_args(argv), _demo)


def _demo(args: argparse.Namespace) -> int:
    """Prepare, train, export, serve and ask the served model, each as the command a user types."""
    for name in ("train.txt", "valid.txt"):
        if not (args.documents_dir / name).is_file():
            print(f"lmfast demo: --documents_dir {args.documents_dir}: missing {name}", file=sys.stderr)
            return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(plan(args.max_steps), flush=True)
    started = time.perf_counter()
    datasets_root = args.work_dir / "datasets"
    run_stage(
        "prepare",
        [
            "prepare",
            "--documents_train_file",
            str(args.documents_dir / "train.txt"),
            "--documents_valid_file",
            str(args.documents_dir / "valid.txt"),
            "--end_of_document",
            "[END_OF_DOCUMENT]",
            "--tokenizer_cls_name",
            "GPT2Tokenizer",
            "--max_sample_length",
            "128",
            "--min_sample_length",
            "8",
            "--datasets_root",
            str(datasets_root),
            "--dataset_name",
            "nietzsche",
        ],
    )
    dataset_dir = newest_version(datasets_root / "nietzsche")

    experiments_root = args.work_dir / "experiments"
    run_stage(
        "train",
        [
            "train",
            "--dataset_dir",
            str(dataset_dir),
            "--model",
            "gpt2-tiny",
            "--batch_size",
            "16",
            "--learning_rate",
            "1e-3",
            "--num_warmup_steps",
            str(max(1, args.max_steps // 10)),
            "--max_steps",
            str(args.max_steps),
            "--experiments_root",
            str(experiments_root),
            "--experiment_name",
            "nietzsche",
        ],
    )
    experiment_dir = newest_version(experiments_root / "nietzsche")

    export_dir = args.work_dir / "exports" / "nietzsche"
    if export_dir.exists():
        shutil.rmtree(export_dir)  # the demo owns this path; a user's own export needs --overwrite
    run_stage("export", ["export", "onnx", str(experiment_dir), "--output", str(export_dir)])

    text = serve_and_ask(export_dir, args.prompt, args.max_new_tokens)
    print("\n=== generated text")
    print(f"{args.prompt}{text}")
    print(
        f"\nlmfast demo: done in {time.perf_counter() - started:.0f} s — dataset {dataset_dir}, "
        f"experiment {experiment_dir}, export {export_dir}"
    )
    print(next_steps(export_dir, experiments_root, args.prompt))
    return 0


def next_steps(export_dir: Path, experiments_root: Path, prompt: str) -> str:
    """The commands to try next on what the demo wrote (printed last, so they are on screen)."""
    export, logs = shlex.quote(str(export_dir)), shlex.quote(str(experiments_root))
    return "\n".join(
        [
            "",
            "next, try:",
            f"  lmfast generate {export} --prompt {shlex.quote(prompt)} --max_new_tokens 64",
            f"  lmfast serve {export} --host 127.0.0.1 --port 8000     # then open http://127.0.0.1:8000/",
            f"  tensorboard --logdir {logs}",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
