"""Perplexity and bits per byte of a model on held-out text, with sliding windows.

How tokens are scored (as in Hugging Face's "Perplexity of fixed-length models" guide): the text
is one stream of N token ids. Windows of `context_length` tokens start every `stride` tokens;
window [begin, end) scores the tokens from the previous window's end (or begin + 1) to end - 1,
each predicted from the tokens before it inside the window, so every token after the first is
scored exactly once and with at least context_length - stride tokens of context when
stride < context_length. With stride == context_length the windows are back to back and the first
token of each has no context, so it is not scored (as in the guide). The first token of the stream is never scored (nothing predicts it): a text
file is preceded by the model's BOS token (EOS where it has none, as lm-evaluation-harness does),
so every token of its text is scored; a dataset split is its `corpus.npy` as written, samples
one after another (dialog datasets score only the targets their `loss_mask.npy` marks).

  perplexity    = exp(sum of -log p(token) / tokens scored)
  bits_per_byte = sum of -log2 p(token) / UTF-8 bytes of the scored tokens' decoded text

Log-probabilities are log_softmax over the model's whole output row in float32, summed in float64.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lmfast.evaluation.config import EvalConfig, EvalError
from lmfast.flags import one_line

HEAD_CHUNK = 2048
"""Positions whose logits exist at once in the torch scorer: memory stays at HEAD_CHUNK x vocab
floats whatever the window and batch (a 2048-token window of a 49k vocabulary would be 400 MB)."""


@dataclass(frozen=True)
class Window:
    """Tokens [begin, end) of the stream; the targets are [first_target, end)."""

    begin: int
    end: int
    first_target: int


def plan_windows(n_tokens: int, context_length: int, stride: int) -> list[Window]:
    """The windows of the module docstring; each token after the first is a target exactly once."""
    windows: list[Window] = []
    previous_end = 0
    for begin in range(0, max(n_tokens - 1, 0), stride):
        end = min(begin + context_length, n_tokens)
        first = max(previous_end, begin + 1)
        if first < end:
            windows.append(Window(begin, end, first))
        previous_end = end
        if end == n_tokens:
            break
    return windows


class Scorer(Protocol):
    """Log-probabilities of each window's targets under the model."""

    name: str

    def score(self, windows: Sequence[np.ndarray], contexts: Sequence[int]) -> list[np.ndarray]:
        """For window i (its ids), float64 log p(ids[t] | ids[:t]) for t in [contexts[i], len)."""
        ...


def log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    """float32 log_softmax over the last axis (as torch computes it)."""
    logits = logits.astype(np.float32, copy=False)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class TorchScorer:
    """All positions of a window in one forward pass of a transformers causal LM; the LM head is
    applied only at the positions that predict a target, HEAD_CHUNK at a time."""

    name = "torch"

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)

    def score(self, windows: Sequence[np.ndarray], contexts: Sequence[int]) -> list[np.ndarray]:
        import torch

        length = max(len(w) for w in windows)
        ids = np.zeros((len(windows), length), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, window in enumerate(windows):  # right padding: real positions never see it
            ids[i, : len(window)] = window
            mask[i, : len(window)] = 1
        rows = np.concatenate(
            [np.full(len(w) - c, i) for i, (w, c) in enumerate(zip(windows, contexts, strict=True))]
        )
        cols = np.concatenate([np.arange(c - 1, len(w) - 1) for w, c in zip(windows, contexts, strict=True)])
        targets = torch.from_numpy(ids[rows, cols + 1])
        with torch.inference_mode():
            hidden = self.decoder(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
            picked = hidden.last_hidden_state[torch.from_numpy(rows), torch.from_numpy(cols)]
            scores = []
            for lo in range(0, len(picked), HEAD_CHUNK):
                logits = self.head(picked[lo : lo + HEAD_CHUNK]).float()
                if self.softcap:
                    logits = torch.tanh(logits / self.softcap) * self.softcap
                # log_softmax at the target only: logit - logsumexp (no full log-probability table)
                picked_logits = logits.gather(1, targets[lo : lo + HEAD_CHUNK, None])[:, 0]
                scores.append(picked_logits - torch.logsumexp(logits, dim=-1))
            flat = torch.cat(scores).double().numpy()
        return np.split(flat, np.cumsum([len(w) - c for w, c in zip(windows, contexts, strict=True)])[:-1])


WINDOW_LOGITS_BYTES = 256 * 2**20
"""Most all-position logits (B, T, V float32) one `StepScorer` call asks the graph for at once."""


class StepScorer:
    """Any lmfast decode backend (an ONNX export's graph). An export with the `logits_index` input
    scores a whole window in one call (logits at every position); an older one, which returns
    last-position logits only, prefills the context and then feeds the targets one at a time
    through the KV cache, so each call gives the logits of the next target (teacher forcing)."""

    def __init__(self, backend: Any, vocab_size: int) -> None:
        self.backend = backend
        self.name = backend.name
        self.vocab_size = vocab_size  # the graph's logits width, which sizes the groups

    def score(self, windows: Sequence[np.ndarray], contexts: Sequence[int]) -> list[np.ndarray]:
        if not getattr(self.backend, "has_logits_index", False):
            return self._score_stepwise(windows, contexts)
        vocab = self.vocab_size
        out: list[np.ndarray] = []
        group: list[int] = []
        for i, window in enumerate(windows):  # groups whose logits fit WINDOW_LOGITS_BYTES
            longest = max([len(windows[j]) for j in group] + [len(window)])
            if group and (len(group) + 1) * longest * vocab * 4 > WINDOW_LOGITS_BYTES:
                out += self._score_at_once([windows[j] for j in group], [contexts[j] for j in group])
                group = []
            group.append(i)
        return out + self._score_at_once([windows[j] for j in group], [contexts[j] for j in group])

    def _score_at_once(self, windows: Sequence[np.ndarray], contexts: Sequence[int]) -> list[np.ndarray]:
        """One forward over the left-padded windows; column p's logits predict column p + 1."""
        from lmfast.generation.backend import left_padded

        ids, mask, positions = left_padded([list(map(int, w)) for w in windows])
        logits, _ = self.backend.forward(ids, mask, positions, None, all_logits=True)
        width = ids.shape[1]
        out = []
        for i, (window, c) in enumerate(zip(windows, contexts, strict=True)):
            start = width - len(window)  # the window's first column
            predicting = logits[i, start + c - 1 : width - 1]
            logp = log_softmax_rows(predicting)
            out.append(
                logp[np.arange(len(window) - c), np.asarray(window[c:], dtype=np.int64)].astype(np.float64)
            )
        return out

    def _score_stepwise(self, windows: Sequence[np.ndarray], contexts: Sequence[int]) -> list[np.ndarray]:
        batch = len(windows)
        width = max(contexts)
        ids = np.zeros((batch, width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, (window, c) in enumerate(
            zip(windows, contexts, strict=True)
        ):  # left padding, as the session pads
            ids[i, width - c :] = window[:c]
            mask[i, width - c :] = 1
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        logits, past = self.backend.forward(ids, mask, positions, None)
        counts = [len(w) - c for w, c in zip(windows, contexts, strict=True)]
        out = [np.empty(n, dtype=np.float64) for n in counts]
        next_position = np.asarray(contexts, dtype=np.int64)
        last_position = np.array([len(w) - 1 for w in windows], dtype=np.int64)
        for k in range(max(counts)):
            logp = log_softmax_rows(logits)
            for i, (window, c) in enumerate(zip(windows, contexts, strict=True)):
                if k < counts[i]:
                    out[i][k] = logp[i, int(window[c + k])]
            if k + 1 == max(counts):
                break
            fed = np.array(
                [w[c + k] if k < n else 0 for w, c, n in zip(windows, contexts, counts, strict=True)]
            )
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
            # a row whose targets are done is fed padding at its last position (ignored, in range)
            position = np.minimum(next_position, last_position)
            logits, past = self.backend.forward(fed[:, None], mask, position[:, None], past)
            next_position = next_position + 1
        return out


@dataclass
class LoadedModel:
    scorer: Scorer
    codec: Any  # lmfast.generation.text.TextCodec
    max_context: int
    start_token_id: int | None  # what a text file is preceded by (BOS, else EOS)
    kind: str  # onnx, hf, experiment, checkpoint, gguf


def load_model(config: EvalConfig) -> LoadedModel:
    """Resolve the source as `lmfast generate`/`serve` (and `export` for a .ckpt) do.

    Raises:
        EvalError: no such source, not a model, a backend that cannot read it, unreadable weights.
    """
    from lmfast.generation.model_files import ModelInfo
    from lmfast.generation.text import TextCodec
    from lmfast.models.source import resolve_source

    source = Path(config.source)
    try:
        resolved = resolve_source(source)
        kind = resolved.kind
        wanted = config.backend
        if wanted != "auto" and (wanted == "onnx") != (kind == "onnx"):
            what = "an ONNX export" if kind == "onnx" else "torch weights"
            raise EvalError("backend", f"{source} holds {what}; --backend {wanted} cannot read it")
        if kind == "onnx":
            from lmfast.generation.onnx_backend import OnnxBackend

            directory = resolved.path
            backend = OnnxBackend.load(directory, num_threads=config.num_threads)
            info = ModelInfo.from_dir(directory)
            codec = TextCodec.load(directory)
            return LoadedModel(
                StepScorer(backend, codec.vocab_size), codec, info.max_context, _start_token(info), "onnx"
            )
        import torch

        from lmfast.export.source import load_source

        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        _quiet_transformers()
        loaded = load_source(resolved)
        info = ModelInfo.from_config(loaded.model.config.to_dict())
        return LoadedModel(
            TorchScorer(loaded.model),
            TextCodec.load(loaded.tokenizer_dir),
            info.max_context,
            _start_token(info),
            str(loaded.description.get("kind", kind)),
        )
    except EvalError:
        raise
    except (ValueError, FileNotFoundError, OSError) as error:
        raise EvalError("source", one_line(error, 400)) from None


def _start_token(info: Any) -> int | None:
    if info.bos_token_id is not None:
        return int(info.bos_token_id)
    return int(info.eos_token_ids[0]) if info.eos_token_ids else None


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@dataclass
class Stream:
    """The token stream to score, and which of its tokens count."""

    ids: np.ndarray  # (N,) int64
    scored: np.ndarray | None  # (N,) bool: targets that count (None: all but the first)
    description: dict[str, Any]


def dataset_stream(config: EvalConfig, codec: Any) -> Stream:
    """A prepared split's corpus (and loss mask), checked against the model's tokenizer."""
    from lmfast.models.dataset import DatasetFormatError, PreparedDataset

    directory = Path(config.dataset_dir or "")
    if not directory.is_dir():
        raise EvalError("dataset_dir", f"{directory}: no such directory")
    try:  # the full check train and merge run, before any scoring
        dataset = PreparedDataset(directory).verify()
        split = getattr(dataset, config.split)
        ids = np.asarray(split.corpus, dtype=np.int64)
        mask = split.loss_mask
    except DatasetFormatError as error:
        raise EvalError("dataset_dir", str(error)) from None
    _check_tokenizer(directory, codec)
    if ids.size and int(ids.max()) >= codec.vocab_size:
        position = int(np.argmax(ids >= codec.vocab_size))
        raise EvalError(
            "dataset_dir",
            f"{directory}/{config.split}/corpus.npy: token id {int(ids[position])} at position {position} "
            f"is outside the model's vocabulary ({codec.vocab_size})",
        )
    scored = None if mask is None else np.asarray(mask, dtype=bool)
    return Stream(ids, scored, {"kind": "dataset", "path": str(directory), "split": config.split})


def _check_tokenizer(directory: Path, codec: Any) -> None:
    from tokenizers import Tokenizer

    path = directory / "tokenizer" / "tokenizer.json"
    if not path.is_file():
        raise EvalError("dataset_dir", f"{path}: missing (not a dataset written by lmfast prepare)")
    theirs = Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
    ours = codec.tokenizer.get_vocab(with_added_tokens=True)
    differ = sum(1 for token, i in theirs.items() if ours.get(token) != i)
    if differ:
        raise EvalError(
            "dataset_dir",
            f"{directory}: its tokenizer differs from the model's ({differ} of {len(theirs)} tokens "
            "map to other ids); prepare the dataset with the model's tokenizer",
        )


def text_stream(config: EvalConfig, codec: Any, start_token_id: int | None) -> Stream:
    """A raw UTF-8 text file as one document after the start token."""
    path = Path(config.text_file or "")
    if not path.is_file():
        raise EvalError("text_file", f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise EvalError("text_file", f"{path}: not UTF-8 (byte {error.start}: {error.reason})") from None
    if not text.strip():
        raise EvalError("text_file", f"{path}: empty (nothing to score)")
    ids = codec.encode(text)
    if start_token_id is not None and (not ids or ids[0] != start_token_id):
        ids = [start_token_id, *ids]
    return Stream(np.asarray(ids, dtype=np.int64), None, {"kind": "text", "path": str(path)})


def scored_bytes(codec: Any, ids: np.ndarray, targets: np.ndarray) -> int:
    """UTF-8 bytes of the decoded text of the target tokens (runs of consecutive targets decoded
    together, so characters split across tokens count once; special tokens count 0)."""
    if not len(targets):
        return 0
    breaks = np.flatnonzero(np.diff(targets) != 1) + 1
    total = 0
    for run in np.split(targets, breaks):
        total += len(codec.decode(ids[run[0] : run[-1] + 1].tolist()).encode("utf-8"))
    return total


def batches(windows: Sequence[Window], batch_size: int) -> Iterator[list[Window]]:
    """Windows of similar length together (only the last is shorter), in order."""
    for lo in range(0, len(windows), batch_size):
        yield list(windows[lo : lo + batch_size])


def evaluate(config: EvalConfig, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Score the text under the model; the report of docs/architecture.md §7.

    `progress(n, total)` is called after each batch with the targets it scored and the total.

    Raises:
        EvalError: bad input (the flag and why), before anything is written.
    """
    config.check()
    if config.output is not None:
        check_output(Path(config.output))
    model = load_model(config)
    if config.dataset_dir is not None:
        stream = dataset_stream(config, model.codec)
    else:
        stream = text_stream(config, model.codec, model.start_token_id)
    context = config.context_length or model.max_context
    if context > model.max_context:
        raise EvalError("context_length", f"{context} exceeds the model's context of {model.max_context}")
    stride = config.stride or max(1, context // 2)
    if stride > context:
        raise EvalError("stride", f"{stride} exceeds --context_length {context}")
    ids = stream.ids[: config.max_tokens] if config.max_tokens else stream.ids
    count = len(ids)
    if count < 2:
        raise EvalError(
            "text_file" if config.text_file else "dataset_dir", f"{count} token(s): nothing to score"
        )
    windows = plan_windows(count, context, stride)
    counted = np.zeros(count, dtype=bool)
    for window in windows:
        counted[window.first_target : window.end] = True
    if stream.scored is not None:
        counted &= stream.scored[:count]
    total_targets = sum(w.end - w.first_target for w in windows)
    started = time.perf_counter()
    nll = 0.0
    for group in batches(windows, config.batch_size):
        logps = model.scorer.score(
            [ids[w.begin : w.end] for w in group], [w.first_target - w.begin for w in group]
        )
        for window, logp in zip(group, logps, strict=True):
            keep = counted[window.first_target : window.end]
            nll -= float(logp[keep].sum())
        if progress is not None:
            progress(sum(w.end - w.first_target for w in group), total_targets)
    seconds = time.perf_counter() - started
    targets = np.flatnonzero(counted)
    tokens = int(len(targets))
    if tokens == 0:
        raise EvalError("dataset_dir", "no token to score (the loss mask marks none)")
    n_bytes = scored_bytes(model.codec, ids, targets)
    report = {
        "source": {"path": str(config.source), "kind": model.kind, "backend": model.scorer.name},
        "data": {**stream.description, "tokens": count},
        "windows": {"context_length": context, "stride": stride, "count": len(windows)},
        "tokens_scored": tokens,
        "bytes_scored": n_bytes,
        "nll_sum_nats": nll,
        "nll_per_token": nll / tokens,
        "perplexity": math.exp(nll / tokens),
        "bits_per_token": nll / tokens / math.log(2),
        "bits_per_byte": nll / math.log(2) / n_bytes if n_bytes else None,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
        "config": asdict(config),
    }
    if config.output is not None:
        write_report(Path(config.output), report)
    return report


def check_output(path: Path) -> None:
    """The report's place is writable: its directory exists and it is not a directory itself."""
    if path.is_dir():
        raise EvalError("output", f"{path}: is a directory (give a file name for the JSON report)")
    if not path.parent.is_dir():
        raise EvalError("output", f"{path.parent}: no such directory")
    try:  # a real write, not os.access: root passes that on a read-only mount or in /proc
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as error:
        raise EvalError("output", f"{path.parent}: not writable ({error.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Atomically: a killed run leaves the old file or none, never half a report."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def table(report: dict[str, Any]) -> str:
    """The short terminal summary."""
    data = report["data"]
    where = data["path"] + (f" ({data['split']})" if data["kind"] == "dataset" else "")
    windows = report["windows"]
    bpb = report["bits_per_byte"]
    rows = [
        ("model", f"{report['source']['path']} ({report['source']['backend']})"),
        ("data", where),
        ("tokens scored", f"{report['tokens_scored']} of {data['tokens']}"),
        ("windows", f"{windows['count']} x {windows['context_length']} tokens, stride {windows['stride']}"),
        ("perplexity", f"{report['perplexity']:.4f}"),
        ("nll / token", f"{report['nll_per_token']:.4f} nats"),
        ("bits / byte", "n/a" if bpb is None else f"{bpb:.4f}"),
        ("time", f"{report['seconds']:.1f} s ({report['tokens_per_second'] or 0:.0f} tokens/s)"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)
