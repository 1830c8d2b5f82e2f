"""The continuous-batching engine on the real tiny model: batched greedy == alone, cancel, queue bound, drain."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from lmfast.generation.params import GenerationParams
from lmfast.serving.batching import (
    BatchingEngine,
    EngineStoppedError,
    GenerationJob,
    JobFailedError,
    QueueFullError,
)
from lmfast.serving.metrics import ServeMetrics

PROMPTS = ["Truth is", "The will to power", "Hello", "What does not kill me makes me stronger, said"]


async def _run(engine: BatchingEngine, prompts: list[str], params: GenerationParams) -> list[str]:
    job = GenerationJob(prompts, params, asyncio.get_running_loop())
    engine.submit(job)
    await job.admitted
    texts = [""] * job.n_rows
    async for pieces in job.pieces(time.perf_counter() + 60):
        for piece in pieces:
            texts[piece.index] += piece.text
    return texts


def test_against_unbatched_greedy_with_rows_joining_and_leaving(generator: Any):
    """Different prompt lengths and max_new_tokens: rows join and leave mid-batch, output unchanged."""
    metrics = ServeMetrics()
    engine = BatchingEngine(generator, max_batch_size=3, max_wait_ms=0, metrics=metrics)
    params = [GenerationParams(temperature=0.0, max_new_tokens=n) for n in (12, 5, 9, 16)]
    expected = [generator(p, params=q)[0][0] for p, q in zip(PROMPTS, params, strict=True)]

    async def main() -> list[list[str]]:
        return await asyncio.gather(*(_run(engine, [p], q) for p, q in zip(PROMPTS, params, strict=True)))

    engine.start()
    try:
        got = asyncio.run(main())
    finally:
        assert engine.stop(timeout=30)
    assert [texts[0] for texts in got] == expected
    # batching really happened: some step advanced more than one row
    assert metrics.batch_size.collect()[0].samples  # histogram exported
    sizes = {
        s.labels.get("le"): s.value
        for s in metrics.batch_size.collect()[0].samples
        if s.name.endswith("_bucket")
    }
    assert sizes["1.0"] < sizes["+Inf"]


def test_n_and_prompt_lists_map_to_choice_indices(generator: Any):
    engine = BatchingEngine(generator, max_batch_size=8, max_wait_ms=0)
    params = GenerationParams(temperature=0.0, max_new_tokens=6, num_return_sequences=2)
    engine.start()
    try:
        texts = asyncio.run(_run(engine, PROMPTS[:2], params))
    finally:
        engine.stop(timeout=30)
    alone = generator(PROMPTS[:2], params=params)
    assert texts == [alone[0][0], alone[0][1], alone[1][0], alone[1][1]]


def test_prompt_longer_than_context_fails_admission_with_value_error(generator: Any):
    engine = BatchingEngine(generator, max_batch_size=4, max_wait_ms=0)
    engine.start()
    try:
        with pytest.raises(ValueError, match="context"):
            asyncio.run(_run(engine, ["word " * 400], GenerationParams(max_new_tokens=4)))
        # the engine keeps serving afterwards
        assert asyncio.run(_run(engine, ["ok"], GenerationParams(max_new_tokens=2, temperature=0.0)))
    finally:
        engine.stop(timeout=30)


def test_cancelled_job_leaves_the_batch(generator: Any):
    metrics = ServeMetrics()
    engine = BatchingEngine(generator, max_batch_size=4, max_wait_ms=0, metrics=metrics)

    async def main() -> None:
        job = GenerationJob(
            ["Truth is"], GenerationParams(max_new_tokens=4096 // 32), asyncio.get_running_loop()
        )
        engine.submit(job)
        await job.admitted
        async for _ in job.pieces():
            break  # one step seen: the row is running
        engine.cancel(job)
        for _ in range(200):  # the engine thread notices within a step
            if metrics.registry.get_sample_value("lmfast_active_rows") == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("cancelled row still in the batch")

    engine.start()
    try:
        asyncio.run(main())
    finally:
        assert engine.stop(timeout=30)


def test_full_queue_raises_with_retry_after_and_stop_refuses_new_jobs(generator: Any):
    engine = BatchingEngine(generator, max_batch_size=1, max_wait_ms=0, queue_size=1)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        params = GenerationParams(max_new_tokens=100, temperature=0.0)
        running = GenerationJob(["a"], params, loop)
        engine.submit(running)
        await running.admitted  # occupies the only batch slot
        engine.submit(GenerationJob(["b"], params, loop))  # waits in the queue
        with pytest.raises(QueueFullError) as excinfo:
            engine.submit(GenerationJob(["c"], params, loop))
        assert excinfo.value.retry_after_s >= 1
        engine.cancel(running)

    engine.start()
    try:
        asyncio.run(main())
    finally:
        engine.stop(timeout=30)
    with pytest.raises(EngineStoppedError):
        engine.submit(GenerationJob(["d"], GenerationParams(), asyncio.new_event_loop()))


def test_stop_finishes_running_and_queued_jobs(generator: Any):
    engine = BatchingEngine(generator, max_batch_size=1, max_wait_ms=0)
    params = GenerationParams(max_new_tokens=8, temperature=0.0)

    async def main() -> list[list[str]]:
        tasks = [asyncio.create_task(_run(engine, [p], params)) for p in PROMPTS[:3]]
        await asyncio.sleep(0.05)
        stopped = asyncio.create_task(asyncio.to_thread(engine.stop, 30))
        results = await asyncio.gather(*tasks)
        assert await stopped
        return results

    engine.start()
    results = asyncio.run(main())
    assert [r[0] for r in results] == [generator(p, params=params)[0][0] for p in PROMPTS[:3]]


def test_a_job_the_tokenizer_refuses_fails_alone_and_the_engine_goes_on(generator: Any):
    """A lone surrogate makes `tokenizers` raise TypeError; submitted straight to the engine (no
    HTTP validation in front), that job fails with JobFailedError and the engine keeps serving."""
    engine = BatchingEngine(generator, max_batch_size=4, max_wait_ms=0)
    engine.start()
    try:
        with pytest.raises(JobFailedError, match="TypeError"):
            asyncio.run(_run(engine, ["Truth \ud800 is"], GenerationParams(max_new_tokens=4)))
        with pytest.raises(JobFailedError):
            asyncio.run(_run(engine, ["ok"], GenerationParams(max_new_tokens=4, banned_words=["\udc00"])))
        assert engine.running
        params = GenerationParams(max_new_tokens=3, temperature=0.0)
        assert asyncio.run(_run(engine, ["ok"], params)) == generator(["ok"], params=params)[0]
    finally:
        assert engine.stop(timeout=30)
