"""`lmfast eval SOURCE --tasks TASKS`: lm-evaluation-harness tasks, scored through lmfast's server.

lm-eval's `local-completions` model sends each loglikelihood request to `/v1/completions` as token
ids with `echo`, `logprobs: 1`, `max_tokens: 1` and `temperature: 0`, and tokenizes through the
server's `/tokenize` (its remote tokenizer), so the numbers come from the same decode loop that
serves. The server runs in-process on 127.0.0.1 unless `--server URL` names a running one.

Tasks come from local files only (nothing is downloaded): a task YAML in lm-eval's format, a
directory of them, or the name of a task shipped in `lmfast/evaluation/tasks/`. Relative
`dataset_kwargs.data_files` paths are taken relative to the YAML (lm-eval itself takes them
relative to the working directory). lm-eval is an optional extra: `pip install lmfast[eval]`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

from lmfast import flags
from lmfast.evaluation.config import EvalError
from lmfast.field_rules import bounds, check_fields
from lmfast.flags import OneLineParser, UserError, add_config_flags, parse_config

SHIPPED_TASKS = Path(__file__).parent / "tasks"
"""Example tasks shipped with lmfast, each a YAML beside its JSONL."""


@dataclasses.dataclass
class TasksConfig:
    """`lmfast eval --tasks`: which tasks, against which server, written where."""

    source: str = ""
    """Model to evaluate: export dir, experiment dir, HF dir or .gguf (ignored with --server)."""
    tasks: str = ""
    """Comma-separated task YAML files, directories of them, or shipped task names (lmfast_mini_mc)."""
    server: str | None = None
    """Base URL of a running lmfast (or OpenAI-compatible) server; none: start one in-process."""
    output: str | None = None
    """JSON report path; none: eval_<task names>.json in the working directory."""
    limit: int | None = dataclasses.field(default=None, metadata=bounds(ge=1))
    """Documents per task (the first N); none: all."""
    num_fewshot: int | None = dataclasses.field(default=None, metadata=bounds(ge=0))
    """Few-shot examples per prompt; none: the task's own setting."""
    batch_size: int = dataclasses.field(default=8, metadata=bounds(ge=1, le=16))
    """Prompts per HTTP request (at most 16)."""
    backend: Literal["auto", "torch", "onnx"] = "auto"
    """In-process server only: auto picks ONNX Runtime for an export dir, torch otherwise."""
    num_threads: int | None = None
    """In-process server only: intra-op threads."""
    model_name: str = "lmfast"
    """The `model` field sent in each request."""

    def __post_init__(self) -> None:
        """Bounds and choices are the fields' metadata and types (`check_fields`); the source rule
        ties two fields together."""
        if not self.tasks:
            raise EvalError("tasks", "give task YAML files, directories or shipped names")
        check_fields(self, EvalError)
        if self.server is None and not self.source:
            raise EvalError("source", "give a model to evaluate, or --server URL")


def shipped_task_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED_TASKS.glob("*.yaml"))


def task_configs(spec: str) -> list[dict[str, Any]]:
    """The task configs (dicts, as lm-eval's YAML loader makes them) that `--tasks` names.

    Raises:
        UserError: an item is no YAML file, directory or shipped name, or a YAML is unusable.
    """
    configs = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(path.glob("*.yaml"))
            if not files:
                raise UserError(f"--tasks: {item} holds no *.yaml task files")
        elif path.is_file():
            files = [path]
        elif (SHIPPED_TASKS / f"{item}.yaml").is_file():
            files = [SHIPPED_TASKS / f"{item}.yaml"]
        else:
            raise UserError(
                f"--tasks: {item!r} is not a task YAML, a directory of them, or a shipped task "
                f"({', '.join(shipped_task_names())}); tasks are read from local files only"
            )
        configs += [load_task_yaml(f) for f in files]
    if not configs:
        raise UserError("--tasks: no task given")
    return configs


def load_task_yaml(path: Path) -> dict[str, Any]:
    """A task YAML as a dict, its relative data_files resolved against the YAML's directory."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"--tasks: {path}: not a plain YAML task file ({exc.__class__.__name__})") from None
    if not isinstance(config, dict) or not isinstance(config.get("task"), str):
        raise UserError(f"--tasks: {path}: a task YAML must be a mapping with a 'task' name")
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if files is not None:
        config["dataset_kwargs"]["data_files"] = _resolve(files, path)
    return config


def _resolve(files: Any, yaml_path: Path) -> Any:
    if isinstance(files, dict):
        return {split: _resolve(f, yaml_path) for split, f in files.items()}
    if isinstance(files, list):
        return [_resolve(f, yaml_path) for f in files]
    resolved = (yaml_path.parent / str(files)).resolve()
    if not resolved.is_file():
        raise UserError(f"--tasks: {yaml_path}: data file {resolved} does not exist")
    return str(resolved)


def _not_the_batch_size_warning(record: logging.LogRecord) -> bool:
    return "Batch size > 1 detected" not in record.getMessage()


def evaluate(
    configs: list[dict[str, Any]],
    base_url: str,
    model_name: str = "lmfast",
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` with its `local-completions` model against `base_url`.

    Returns:
        lm-eval's results dict (`results`, `configs`, `n-samples`, `samples`...).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local tasks only: never reach for the Hub
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval

    # lmfast's /v1/completions takes a batch of prompts of any lengths: that warning does not apply
    logging.getLogger("lm_eval.models.api_models").addFilter(_not_the_batch_size_warning)

    model_args = {
        "base_url": base_url.rstrip("/") + "/v1/completions",
        "model": model_name,
        "tokenizer_backend": "remote",
        "tokenized_requests": True,
        "num_concurrent": 1,
        "max_retries": 1,
    }
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=model_args,
        tasks=configs,
        limit=limit,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        log_samples=True,
    )
    if results is None:  # only on a non-zero distributed rank, which this never is
        raise RuntimeError("lm-eval returned no results")
    return results


def report(results: dict[str, Any], source: str, server: str) -> dict[str, Any]:
    """The JSON report: lm-eval's metrics, per-task sample counts and configs, and per document
    its target and each choice's loglikelihood (loglikelihood tasks: multiple choice and the like)."""
    samples = {
        task: [
            {
                "doc_id": s["doc_id"],
                "target": s["target"],
                # multiple choice: per choice (loglikelihood, whether it is the greedy continuation)
                "loglikelihoods": [float(r[0]) for r in s["filtered_resps"]],
                "is_greedy": [bool(r[1]) for r in s["filtered_resps"]],
                "acc": s.get("acc"),
            }
            for s in rows
        ]
        for task, rows in results.get("samples", {}).items()
    }
    return {
        "source": source,
        "server": server,
        "results": results["results"],
        "n-samples": results.get("n-samples"),
        "configs": results.get("configs"),
        "samples": samples,
    }


def table(results: dict[str, Any]) -> str:
    """The short terminal table: one line per task and metric."""
    rows = [("task", "metric", "value", "stderr", "n")]
    counts = results.get("n-samples") or {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            if key in ("alias", "sample_len") or "_stderr" in key or not isinstance(value, int | float):
                continue
            metric = key.split(",")[0]
            stderr = metrics.get(key.replace(metric, metric + "_stderr", 1))
            n = (counts.get(task) or {}).get("effective", "")
            shown = f"{stderr:.4f}" if isinstance(stderr, int | float) else ""
            rows.append((task, metric, f"{value:.4f}", shown, str(n)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def run(config: TasksConfig) -> tuple[dict[str, Any], Path]:
    """Evaluate `config.tasks`, write the JSON report; returns (report, its path)."""
    configs = task_configs(config.tasks)  # bad task files fail before a model is loaded
    output = Path(config.output or f"eval_{'_'.join(c['task'] for c in configs)}.json")
    with ExitStack() as stack:
        base_url = config.server or stack.enter_context(_in_process_server(config)).url
        results = evaluate(
            configs, base_url, config.model_name, config.limit, config.num_fewshot, config.batch_size
        )
    data = report(results, config.source, config.server or "in-process")
    from lm_eval.utils import handle_non_serializable

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    partial.write_text(json.dumps(data, indent=2, default=handle_non_serializable) + "\n", encoding="utf-8")
    partial.replace(output)  # no half-written report
    return data, output


def _in_process_server(config: TasksConfig) -> Any:
    from lmfast.generation import Generator
    from lmfast.serving.app import create_app
    from lmfast.serving.config import ServeConfig
    from lmfast.serving.testing import ServerThread

    generator = Generator.load(config.source, backend=config.backend, num_threads=config.num_threads)
    serve = ServeConfig(model=config.source, backend=config.backend, num_threads=config.num_threads)
    return ServerThread(create_app(serve, generator=generator))


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="lmfast eval",
        description="Run lm-evaluation-harness tasks (local YAML + data files) against an lmfast server.",
    )
    add_config_flags(parser, TasksConfig, positional=["source"])
    return parser


def main(argv: list[str] | None = None) -> int:
    """`lmfast eval SOURCE --tasks ...`: exit 2 with one line for bad input (`flags.run`; these
    lines were written without the word `error:`, as tests and scripts match them)."""
    return flags.run("lmfast eval", lambda: _parse(argv), _run_parsed, error_word=False)


def _parse(argv: list[str] | None) -> TasksConfig:
    """The config, its task files and SOURCE checked, and lm-eval importable: before any model loads."""
    config: TasksConfig = parse_config(build_parser(), TasksConfig, argv)[0]
    task_configs(config.tasks)
    if config.server is None and not Path(config.source).exists():
        raise EvalError("source", f"{config.source} does not exist")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError("--tasks needs lm-evaluation-harness: pip install 'lmfast[eval]'") from None
    return config


def _run_parsed(config: TasksConfig) -> int:
    logging.basicConfig(level=logging.WARNING)
    try:
        data, path = run(config)
    except (ValueError, FileNotFoundError) as exc:  # lm-eval's and datasets' refusals of a task's data
        raise UserError(str(exc)) from None
    print(table(data))
    print(f"report: {path}")
    return 0
