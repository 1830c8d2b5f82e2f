"""lmfast's own kernels inside ONNX Runtime: the custom-op library built from csrc/ortops.

Exports stay standard ONNX graphs that any ONNX Runtime runs. When lmfast opens one on the CPU
provider, `session_source` rewrites the graph in memory, swapping patterns that ONNX Runtime's CPU
provider runs slowly for lmfast's ops (domain "lmfast"), and registers the library on the session:

- `Cast(bfloat16 weight) -> MatMul / Gemm(transB=1)` (what `--precision bf16` writes) becomes
  `lmfast.Bf16MatMul(A, tiles)`, which reads 2 bytes per weight where ONNX Runtime folds the Cast
  into an fp32 copy and reads 4; the weight is laid out in 8 x 8 tiles (`bf16_tiles`) so that a
  batch-1 step reads it as one sequential stream.
- `com.microsoft.MatMulNBits` (what `--quantize int8/int4` writes; 4 or 8 bits, any block size,
  with or without zero points) becomes `lmfast.PackedQuantizedMatMul` over its weights repacked
  for the kernel (`quant_pack`: 8 rows interleaved, written once into the cached graph), or, where
  that layout cannot hold them, `lmfast.QuantizedMatMul` over the same initializers. Both quantize
  the activations to int8 per block, as MatMulNBits' accuracy_level 4 does, and sum exact integer
  products; docs/kernels.md has the figures that made "nbits" a default swap.
- `com.microsoft.GroupQueryAttention` over the in-place cache (what `--kv_cache inplace` writes)
  becomes `lmfast.GroupQueryAttention` ("gqa", `native_gqa`), which reads each key/value head once
  for all the query heads it serves.

Without the library (no headers or compiler at install time), lmfast runs ONNX Runtime's own ops
and logs that once; LMFAST_REQUIRE_NATIVE=1 makes it an error. LMFAST_NATIVE_OPS picks the swaps:
0 none (the stock-op side of a comparison), a comma-separated list of "bf16", "nbits" and "gqa", unset
`DEFAULT_SWAPS`. LMFAST_ORTOPS_ISA=scalar forces the portable kernels.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lmfast.generation.native_common import DOMAIN, block_dot_reference

logger = logging.getLogger(__name__)

_LIBRARY_GLOB = "_ortops*.so"
_PROTOBUF_LIMIT = 2**31 - 1
"""A rewritten graph goes to ONNX Runtime as one serialized protobuf, which cannot exceed this."""


class NativeOpsMissing(RuntimeError):
    """LMFAST_REQUIRE_NATIVE=1 but the custom-op library (or onnx, to rewrite graphs) is missing."""


def _required() -> bool:
    return os.environ.get("LMFAST_REQUIRE_NATIVE") == "1"


SWAPS = ("bf16", "nbits", "gqa")
DEFAULT_SWAPS = ("bf16", "nbits", "gqa")
"""The swaps made unless LMFAST_NATIVE_OPS says otherwise."""


def swaps_from_env() -> tuple[str, ...]:
    """The swaps LMFAST_NATIVE_OPS asks for: "0" none, "1" or unset `DEFAULT_SWAPS`, else a list.

    Raises:
        ValueError: a name that is not one of `SWAPS`.
    """
    value = os.environ.get("LMFAST_NATIVE_OPS", "1").strip()
    if value in ("1", ""):
        return DEFAULT_SWAPS
    if value == "0":
        return ()
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = sorted(set(names) - set(SWAPS))
    if unknown:
        raise ValueError(f"LMFAST_NATIVE_OPS: unknown {unknown}; expected 0, 1 or a list of {list(SWAPS)}")
    return names


@functools.cache
def library_path() -> Path | None:
    """The built library, or None (logged once) where the build was skipped or failed.

    Raises:
        NativeOpsMissing: LMFAST_REQUIRE_NATIVE=1 and no library was built.
    """
    found = sorted(Path(__file__).parent.glob(_LIBRARY_GLOB))
    if found:
        return found[0]
    message = (
        "lmfast's ONNX Runtime ops are not built (csrc/ortops: python setup.py build_ext --inplace, "
        "headers from scripts/ort_headers.sh); running ONNX Runtime's own ops"
    )
    if _required():
        raise NativeOpsMissing(f"LMFAST_REQUIRE_NATIVE=1: {message}")
    logger.warning(message)
    return None


def isa() -> str | None:
    """The kernel path calls take now: "avx2" or "scalar" (None without the library)."""
    path = library_path()
    if path is None:
        return None
    function = ctypes.CDLL(str(path)).lmfast_ortops_isa
    function.restype = ctypes.c_char_p
    return function().decode()


def quantized_matmul_reference(
    a: np.ndarray,
    packed: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    k: int,
    bits: int,
    block: int,
) -> np.ndarray:
    """What lmfast.QuantizedMatMul computes, in NumPy: A's rows quantized per block
    (`quantize_activations`), the exact integer dot of each block with the weights' integers from
    MatMulNBits' layout (4 bits: element 2i in the low nibble of byte i; zero points packed the
    same way, default 2^(bits - 1)), then sum over blocks of scale_w * scale_x * (dot - zero point
    * sum xq), in float64."""
    n, blocks = packed.shape[0], -(-k // block)
    raw = packed.reshape(n, blocks, -1)
    if bits == 4:
        raw = np.stack([raw & 0x0F, raw >> 4], axis=-1)
    q = raw.reshape(n, blocks, block).astype(np.int64)
    valid = (np.arange(blocks * block) < k).reshape(blocks, block)
    q = q * valid  # a block cut short by K: its padding never counts
    if zero_points is None:
        zero = np.full((n, blocks), 1 << (bits - 1), dtype=np.int64)
    else:
        zero = zero_points.reshape(n, -1)
        if bits == 4:
            zero = np.stack([zero & 0x0F, zero >> 4], axis=-1).reshape(n, -1)
        zero = zero[:, :blocks].astype(np.int64)
    return block_dot_reference(a, q, zero, scales.reshape(n, blocks), block)


def bf16_matmul_reference(a: np.ndarray, weight_bits: np.ndarray) -> np.ndarray:
    """What lmfast.Bf16MatMul computes, in NumPy: A[..., K] times W[N, K]^T, W given as the upper
    16 bits of fp32 values (bfloat16), summed in float64 and rounded to fp32."""
    weight = (weight_bits.astype(np.uint32) << 16).view(np.float32)
    return (a.astype(np.float64) @ weight.astype(np.float64).T).astype(np.float32)


TILE = 8


def bf16_tiles(weight_bits: np.ndarray) -> np.ndarray:
    """W[N, K] (bf16 bits) in lmfast.Bf16MatMul's layout: [ceil(N/8), ceil(K/8), 8, 8], each 8 x 8
    tile (8 rows, 8 consecutive K) contiguous and k-major (tile[k, r]: one k's 8 rows are one
    16-byte vector, lane r for row r), N and K zero-padded."""
    n, k = weight_bits.shape
    groups, chunks = -(-n // TILE), -(-k // TILE)
    padded = weight_bits
    if (groups * TILE, chunks * TILE) != (n, k):  # copied only where padding is needed
        padded = np.zeros((groups * TILE, chunks * TILE), dtype=np.uint16)
        padded[:n, :k] = weight_bits
    return np.ascontiguousarray(padded.reshape(groups, TILE, chunks, TILE).transpose(0, 2, 3, 1))


def _initializers(graph: Any) -> dict[str, Any]:
    return {tensor.name: tensor for tensor in graph.initializer}


def _consumers(graph: Any) -> dict[str, list[tuple[Any, int]]]:
    users: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            users.setdefault(name, []).append((node, position))
    for output in graph.output:
        users.setdefault(output.name, []).append((None, 0))
    return users


def _attribute(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _plain_linear(node: Any, position: int) -> str | None:
    """How `node` uses its input `position` as a weight: "kn" (MatMul's B[K, N]), "nk" (Gemm's
    transposed B without bias or scaling), or None (some other use)."""
    if position != 1:
        return None
    if node.op_type == "MatMul" and node.domain in ("", "ai.onnx"):
        return "kn"
    if (
        node.op_type == "Gemm"
        and node.domain in ("", "ai.onnx")
        and len(node.input) == 2
        and _attribute(node, "transB", 0) == 1
        and _attribute(node, "transA", 0) == 0
        and _attribute(node, "alpha", 1.0) == 1.0
    ):
        return "nk"
    return None


def swap_bf16_matmuls(model: Any) -> int:
    """Rewrite `model` (an onnx ModelProto, in place): each MatMul / Gemm(transB=1) whose weight is a
    Cast of a 2-D bfloat16 initializer becomes lmfast.Bf16MatMul over that weight in `bf16_tiles`'
    layout (written here, once per weight). Casts left without users are dropped. Returns the count."""
    import onnx

    graph = model.graph
    initializers = _initializers(graph)
    consumers = _consumers(graph)
    added: dict[str, Any] = {}
    swapped, dropped = 0, set()
    for cast in list(graph.node):
        if cast.op_type != "Cast" or _attribute(cast, "to", 0) != onnx.TensorProto.FLOAT:
            continue
        source = initializers.get(cast.input[0])
        if source is None or source.data_type != onnx.TensorProto.BFLOAT16 or len(source.dims) != 2:
            continue
        if not source.raw_data:
            continue
        users = consumers.get(cast.output[0], [])
        for node, position in users:
            layout = None if node is None else _plain_linear(node, position)
            if layout is None:
                continue
            bits = np.frombuffer(source.raw_data, dtype=np.uint16).reshape(tuple(source.dims))
            if layout == "kn":
                bits = bits.T
            n, k = bits.shape
            name = f"{source.name}_lmfast_{layout}_tiles"
            if name not in added:
                tiles = bf16_tiles(bits)
                tensor = graph.initializer.add()  # built in place: extending copies every tensor
                tensor.name, tensor.data_type = name, onnx.TensorProto.BFLOAT16
                tensor.dims.extend(tiles.shape)
                tensor.raw_data = tiles.tobytes()
                added[name] = tensor
            operands = [node.input[0], name]
            del node.input[:]
            node.input.extend(operands)
            del node.attribute[:]
            node.attribute.extend([onnx.helper.make_attribute("K", k), onnx.helper.make_attribute("N", n)])
            node.op_type, node.domain = "Bf16MatMul", DOMAIN
            swapped += 1
        if all(node is not None and node.domain == DOMAIN for node, _ in users):
            dropped.add(id(cast))
    if not swapped:
        return 0
    kept = [node for node in graph.node if id(node) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    still_used = {name for node in graph.node for name in node.input}
    unused = [tensor for tensor in graph.initializer if tensor.name not in still_used]
    for tensor in unused:
        graph.initializer.remove(tensor)
    if not any(opset.domain == DOMAIN for opset in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    return swapped


def swap_nbits_matmuls(model: Any, packed: bool = True) -> int:
    """Rewrite `model` (an onnx ModelProto, in place): each MatMulNBits of 4 or 8 bits over fp32
    with uint8 zero points or none, and without g_idx or bias, becomes lmfast.PackedQuantizedMatMul
    over its weights repacked by `quant_pack.pack_nbits` (where that layout holds them and
    `packed`), else lmfast.QuantizedMatMul over the same inputs; K, N, bits, block_size kept.
    Returns the count."""
    import onnx

    from lmfast.generation.quant_pack import pack_node

    graph = model.graph
    initializers = _initializers(graph)
    swapped = 0
    for node in graph.node:
        if node.op_type != "MatMulNBits" or node.domain != "com.microsoft":
            continue
        inputs = list(node.input)
        while inputs and not inputs[-1]:
            inputs.pop()
        if not 3 <= len(inputs) <= 4 or _attribute(node, "bits", 4) not in (4, 8):
            continue
        scales = initializers.get(inputs[2])
        if scales is None or scales.data_type != onnx.TensorProto.FLOAT:
            continue
        if len(inputs) == 4:
            zero_points = initializers.get(inputs[3])
            if zero_points is None or zero_points.data_type != onnx.TensorProto.UINT8:
                continue
        attributes = {
            "K": _attribute(node, "K", 0),
            "N": _attribute(node, "N", 0),
            "bits": _attribute(node, "bits", 4),
            "block_size": _attribute(node, "block_size", 0),
        }
        del node.input[:]
        node.input.extend(inputs)
        del node.attribute[:]
        node.attribute.extend(onnx.helper.make_attribute(name, value) for name, value in attributes.items())
        if not (packed and pack_node(node, initializers, graph, attributes)):
            node.op_type, node.domain = "QuantizedMatMul", DOMAIN
        swapped += 1
    if swapped and not any(opset.domain == DOMAIN for opset in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    if swapped and packed:  # the file's layout, now unused where packed copies replaced it
        still_used = {name for node in graph.node for name in node.input}
        for tensor in [tensor for tensor in graph.initializer if tensor.name not in still_used]:
            graph.initializer.remove(tensor)
    return swapped


CACHE_FORMAT = 2
"""Bumped whenever the rewrite writes something different for the same export (a new layout)."""
_MANIFEST = "complete.json"
_EXTERNAL_DATA = "model.onnx.data"
DEFAULT_CACHE_MB = 4096


def cache_limit_bytes() -> int:
    """The cache's size cap: `LMFAST_NATIVE_OPS_CACHE_MB` (default 4096; 0: keep only the newest entry)."""
    text = os.environ.get("LMFAST_NATIVE_OPS_CACHE_MB", "").strip()
    try:
        megabytes = float(text) if text else DEFAULT_CACHE_MB
    except ValueError:
        raise ValueError(
            f"LMFAST_NATIVE_OPS_CACHE_MB: expected a number of megabytes, got {text!r}"
        ) from None
    if not megabytes >= 0:
        raise ValueError(f"LMFAST_NATIVE_OPS_CACHE_MB: must be >= 0, got {text!r}")
    return int(megabytes * 2**20)


def cache_root() -> Path:
    """Where rewritten graphs are kept (`$LMFAST_CACHE/native_ops` or `~/.cache/lmfast/native_ops`)."""
    root = os.environ.get("LMFAST_CACHE") or Path.home() / ".cache" / "lmfast"
    return Path(root) / "native_ops"


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def cache_entry(model_path: Path, swaps: tuple[str, ...], library: Path) -> Path:
    """The cache directory for `model_path` rewritten with `swaps`: named by the export's path, then
    by everything that changes the result (the files' size and mtime, including external data, the
    swaps, lmfast's version, `CACHE_FORMAT` and the library), so an edited export gets a new entry."""
    from lmfast import __version__

    model_path = Path(model_path).resolve()
    data = model_path.with_name(f"{model_path.name}.data")
    identity = [_file_identity(model_path)] + ([_file_identity(data)] if data.is_file() else [])
    identity += [",".join(sorted(swaps)), __version__, str(CACHE_FORMAT), _file_identity(library)]
    where = hashlib.sha256(str(model_path).encode()).hexdigest()[:16]
    what = hashlib.sha256("\n".join(identity).encode()).hexdigest()[:16]
    return cache_root() / f"{where}-{what}"


def _cached_count(entry: Path) -> int | None:
    """How many ops `entry` swapped (0: the export has nothing to swap), or None where the entry is
    missing, partly written or truncated (its manifest absent, unreadable, or a listed file's size
    differs from the recorded one)."""
    try:
        manifest = json.loads((entry / _MANIFEST).read_text())
        files, swapped = manifest["files"], int(manifest["swapped"])
        if all((entry / name).stat().st_size == size for name, size in files.items()):
            return swapped
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def evict(entry: Path) -> None:
    """Remove a cache entry (one ONNX Runtime rejected), so that the next load rebuilds it."""
    shutil.rmtree(entry, ignore_errors=True)


def prune(keep: Path) -> None:
    """Bound the cache: drop entries whose export is gone, then the least recently used ones until
    the rest fit `cache_limit_bytes()`. `keep` (the entry just written or opened) always stays.
    A process that still maps a dropped entry's weights keeps them until it closes (POSIX unlink)."""
    entries = []
    for entry in cache_root().iterdir():
        if entry == keep or entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            manifest = json.loads((entry / _MANIFEST).read_text())
            source, used = manifest.get("source"), (entry / _MANIFEST).stat().st_mtime
        except (OSError, ValueError, AttributeError):
            continue  # being written by another process, or foreign: not ours to judge
        if isinstance(source, str) and not Path(source).exists():
            evict(entry)
            continue
        size = sum(path.stat().st_size for path in entry.iterdir() if path.is_file())
        entries.append((used, size, entry))
    total = sum(size for _, size, _ in entries) + sum(p.stat().st_size for p in keep.iterdir() if p.is_file())
    limit = cache_limit_bytes()
    for _, size, entry in sorted(entries, key=lambda item: item[0]):
        if total <= limit:
            break
        evict(entry)
        total -= size


def _mark_used(entry: Path) -> None:
    """Least-recently-used order is the manifest's mtime."""
    with contextlib.suppress(OSError):
        os.utime(entry / _MANIFEST)


def _write_entry(model: Any | None, swapped: int, entry: Path, source: Path | None = None) -> Path:
    """Save the rewritten `model` (None: nothing to swap, only that is recorded) as
    `entry/model.onnx` with its weights in `model.onnx.data`, which ONNX Runtime maps from disk
    rather than copying and which has no 2 GiB limit. Written into a temporary directory and renamed
    into place, then older entries for the same export are removed. Returns the model file's path."""
    import onnx

    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=entry.parent))
    try:
        if model is not None:
            onnx.save(
                model,
                str(staging / "model.onnx"),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=_EXTERNAL_DATA,
                size_threshold=1024,
            )
        files = {path.name: path.stat().st_size for path in staging.iterdir()}
        manifest = {"swapped": swapped, "files": files, "source": str(source) if source else None}
        (staging / _MANIFEST).write_text(json.dumps(manifest))
        if _cached_count(entry) is None:  # else another process finished it first: use theirs
            evict(entry)  # an incomplete entry under the same name
            try:
                staging.rename(entry)
            except OSError:  # another process renamed its copy in between: use theirs
                if _cached_count(entry) is None:
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    prefix = entry.name.split("-")[0] + "-"
    for older in entry.parent.glob(f"{prefix}*"):
        if older != entry:
            evict(older)
    with contextlib.suppress(OSError):  # a race with another process's prune: the next write retries
        prune(keep=entry)
    return entry / "model.onnx"


def session_source(
    model_path: Path, options: Any, provider: str = "cpu", enabled: bool | None = None, cache: bool = True
) -> tuple[str | bytes, int]:
    """`rewritten_source`, with the library registered on `options` when ops were swapped."""
    source, swapped = rewritten_source(model_path, provider, enabled, cache)
    if swapped:
        options.register_custom_ops_library(str(library_path()))
    return source, swapped


def rewritten_source(
    model_path: Path, provider: str = "cpu", enabled: bool | None = None, cache: bool = True
) -> tuple[str | bytes, int]:
    """What to hand `ort.InferenceSession` for `model_path`, and how many ops were swapped: the
    path itself and 0 (nothing to swap, the CUDA provider, ops turned off or not built), or the
    rewritten graph (which needs the library registered on the session's options). The rewritten graph is kept in
    `cache_entry` (rewritten once, then opened from disk like any export); where the cache cannot
    be written, it is handed over as one serialized protobuf (limited to 2 GiB). `cache=False` does
    that always, and says it at debug level only: for a model about to move (an export's staging
    copy, checked before it is renamed into place), whose entry would never be opened again.

    Raises:
        NativeOpsMissing: LMFAST_REQUIRE_NATIVE=1 and the library or the onnx package is missing.
    """
    swaps = swaps_from_env() if enabled is None else (DEFAULT_SWAPS if enabled else ())
    if provider != "cpu" or not swaps:
        return str(model_path), 0
    library = library_path()
    if library is None:
        return str(model_path), 0
    entry = cache_entry(model_path, swaps, library)
    cached = _cached_count(entry) if cache else None
    if cached is not None:
        _mark_used(entry)
        if not cached:
            return str(model_path), 0
        logger.info(
            "%s: %d ops swapped for lmfast's (%s kernels; cached in %s)", model_path, cached, isa(), entry
        )
        return str(entry / "model.onnx"), cached
    try:
        import onnx
    except ImportError as error:
        if _required():
            raise NativeOpsMissing("LMFAST_REQUIRE_NATIVE=1: lmfast's ONNX Runtime ops need onnx") from error
        _log_no_onnx()
        return str(model_path), 0
    model = onnx.load(str(model_path))
    swapped = (swap_bf16_matmuls(model) if "bf16" in swaps else 0) + (
        swap_nbits_matmuls(model) if "nbits" in swaps else 0
    )
    if "gqa" in swaps:
        from lmfast.generation.native_gqa import swap_group_query_attention

        swapped += swap_group_query_attention(model)
    cached_path = None
    if cache:
        try:
            cached_path = _write_entry(model if swapped else None, swapped, entry, Path(model_path).resolve())
        except OSError as error:
            logger.warning(
                "%s: cannot cache the rewritten graph (%s); handing it over in memory", entry, error
            )
    if not swapped:
        return str(model_path), 0
    logger.log(
        logging.INFO if cache else logging.DEBUG,
        "%s: %d ops swapped for lmfast's (%s kernels)",
        model_path,
        swapped,
        isa(),
    )
    if cached_path is not None:
        return str(cached_path), swapped
    if model.ByteSize() >= _PROTOBUF_LIMIT:
        logger.warning(
            "%s: the rewritten graph exceeds protobuf's 2 GiB; running ONNX Runtime's ops", model_path
        )
        return str(model_path), 0
    return model.SerializeToString(), swapped


def inference_session(
    model_path: Path,
    options: Any,
    providers: list[str],
    provider: str = "cpu",
    enabled: bool | None = None,
    cache: bool = True,
) -> tuple[Any, int]:
    """An `ort.InferenceSession` for `model_path` (through `session_source`) and the swapped count;
    a cache entry ONNX Runtime cannot open (corrupted on disk) is removed and rebuilt once."""
    import onnxruntime as ort

    source, swapped = session_source(model_path, options, provider, enabled, cache)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=providers), swapped
    except Exception as error:  # ONNX Runtime raises its own exception types for unreadable files
        if not isinstance(source, str) or Path(source).parent.parent != cache_root():
            raise
        logger.warning("%s: cached graph unreadable (%s); rebuilding it", source, error)
        evict(Path(source).parent)
    source, swapped = rewritten_source(model_path, provider, enabled, cache)  # the library is registered
    return ort.InferenceSession(source, sess_options=options, providers=providers), swapped


@functools.cache
def _log_no_onnx() -> None:
    logger.warning(
        "lmfast's ONNX Runtime ops need the onnx package to rewrite graphs; running ONNX Runtime's"
    )
