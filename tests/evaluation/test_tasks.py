"""lm-evaluation-harness against a real lmfast server: its `local-completions` model on the shipped
offline multiple-choice task gives the same accuracy and per-choice loglikelihoods as lm-eval's own
`hf` model on the same weights; `lmfast eval --tasks` writes the report and the table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lmfast.evaluation.tasks import main, task_configs
from lmfast.serving.app import create_app
from lmfast.serving.config import ServeConfig
from lmfast.serving.testing import ServerThread

pytest.importorskip("lm_eval")
TASK = "lmfast_mini_mc"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[ServerThread]:
    from lmfast.generation import Generator

    generator = Generator.load(tiny_model_dir, backend="torch", num_threads=1)
    config = ServeConfig(model=str(tiny_model_dir), max_batch_size=16)
    with ServerThread(create_app(config, generator=generator)) as running:
        yield running


@pytest.mark.slow  # two lm-eval runs (their imports, datasets and requests: ~40 s on 2 idle cores)
def test_lmfast_eval_tasks_equals_lm_evals_hf_model(server, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """`lmfast eval --tasks --server` (lm-eval's local-completions) against lm-eval's `hf` model."""
    import lm_eval

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    report = tmp_path / "report.json"
    code = main(["--tasks", TASK, "--server", server.url, "--output", str(report), "--batch_size", "4"])
    out = capsys.readouterr().out
    assert code == 0, out
    served = json.loads(report.read_text())
    reference = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(tiny_model_dir), "dtype": "float32", "device": "cpu"},
        tasks=task_configs(TASK),
        batch_size=4,
        log_samples=True,
    )
    mine = sorted(served["samples"][TASK], key=lambda s: s["doc_id"])
    theirs = sorted(reference["samples"][TASK], key=lambda s: s["doc_id"])
    assert served["n-samples"][TASK]["effective"] == len(mine) == len(theirs) == 6
    for metric in ("acc,none", "acc_norm,none"):  # identical, not close
        assert served["results"][TASK][metric] == reference["results"][TASK][metric]
    for doc, ref in zip(mine, theirs, strict=True):
        assert doc["acc"] == ref["acc"] and doc["target"] == ref["target"]
        np.testing.assert_allclose(
            doc["loglikelihoods"], [float(r[0]) for r in ref["filtered_resps"]], rtol=0, atol=1e-4
        )
        assert doc["is_greedy"] == [bool(r[1]) for r in ref["filtered_resps"]]  # from top_logprobs
    acc_line = next(line.split() for line in out.splitlines() if line.split()[:2] == [TASK, "acc"])
    assert acc_line[2] == f"{served['results'][TASK]['acc,none']:.4f}" and acc_line[-1] == "6"
    assert f"report: {report}" in out


def test_lmfast_eval_refuses_bad_tasks_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: bad\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: missing.jsonl\n")
    for argv, needle in (
        (["model", "--tasks", "no_such_task"], "--tasks: 'no_such_task'"),
        ([str(tmp_path), "--tasks", str(bad)], "missing.jsonl does not exist"),
        ([str(tmp_path / "none"), "--tasks", TASK], "SOURCE"),
        (["--tasks", TASK, "--server", "http://127.0.0.1:1", "--batch_size", "17"], "--batch_size"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    assert not list(Path.cwd().glob("eval_*.json"))
