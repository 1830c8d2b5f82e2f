"""`train(config) -> Path`: a prepared dataset -> a trained causal LM in an experiment directory.

Writes docs/architecture.md §2: `description.json`, `checkpoints/` (top-k on validation loss + `last.ckpt`),
`logs/` (TensorBoard events and `train.log`), `generated.txt`, and `hf/` (the best model and the
dataset's tokenizer via `save_pretrained`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from lmfast.latest import point_latest, real_run_dir
from lmfast.models.dataset import DatasetFormatError, PreparedDataset
from lmfast.train.config import TrainConfig, latest_experiment_dir
from lmfast.train.model import DatasetTokenizer, TrainInputError
from lmfast.train.strategy import make_strategy

log = logging.getLogger("lmfast.train")


_BANNERS = (
    "litlogger",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "💡 Tip",
    "was configured so validation will run",  # lmfast sets val_check_interval itself
)


def _drop_banners(record: logging.LogRecord) -> bool:
    """Lightning's `GPU available: False` banner, its cloud-logger tips and its note on the
    validation interval lmfast chose (nothing the user chose or can act on)."""
    message = record.getMessage()
    return not any(banner in message for banner in _BANNERS)


MAX_BATCHES_BETWEEN_VALIDATIONS = 1000


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto` -> bf16-mixed on GPUs with bf16, 16-mixed (loss scaling) on older GPUs, 32-true elsewhere."""
    if precision != "auto":
        return precision
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def resume_config(
    resume: str, overrides: dict[str, Any], experiments_root: str, experiment_name: str
) -> TrainConfig:
    """The config of the run to resume, with the flags given on this command line taking precedence.

    Raises:
        TrainInputError: no such experiment or no `checkpoints/last.ckpt` in it.
    """
    if resume == "latest":
        found = latest_experiment_dir(experiments_root, experiment_name)
        if found is None:
            raise TrainInputError(
                f"--resume: no run with checkpoints/last.ckpt under {Path(experiments_root) / experiment_name}"
            )
        experiment_dir = found
    else:
        experiment_dir = real_run_dir(resume)
    description_path = experiment_dir / "description.json"
    if not (experiment_dir / "checkpoints" / "last.ckpt").is_file() or not description_path.is_file():
        raise TrainInputError(
            f"--resume {experiment_dir}: not an lmfast experiment with checkpoints/last.ckpt"
        )
    try:
        saved = json.loads(description_path.read_text(encoding="utf-8"))
    except ValueError as error:  # bad input like any other: one line naming the file, exit 2
        raise TrainInputError(f"--resume {description_path}: not JSON ({error})") from None
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in saved.items() if k in names}
    values.update(overrides)
    values["resume"] = str(experiment_dir)
    return TrainConfig(**values)


def _open_dataset(dataset_dir: str) -> PreparedDataset:
    try:
        dataset = PreparedDataset(dataset_dir)
        if len(dataset.train) == 0:
            raise TrainInputError(f"--dataset_dir {dataset_dir}: the train split has no samples")
        len(dataset.valid)  # maps both splits: a bad .npy header fails here
        return dataset
    except DatasetFormatError as error:
        raise TrainInputError(f"--dataset_dir: {error}") from None
    except (ValueError, OSError) as error:  # numpy: bad header, truncated array
        raise TrainInputError(f"--dataset_dir {dataset_dir}: unreadable array ({error})") from None


def _attach_text_log(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("lmfast", "lightning.pytorch"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
    return handler


def _detach_text_log(handler: logging.Handler) -> None:
    for name in ("lmfast", "lightning.pytorch"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def _val_check_kwargs(config: TrainConfig, batches_per_epoch: int) -> dict[str, Any]:
    interval = config.val_check_interval
    if interval is None:
        # every epoch, at most every 1000 batches, and at least once before --max_steps ends the run
        batches = min(batches_per_epoch, MAX_BATCHES_BETWEEN_VALIDATIONS)
        if config.max_steps > 0:
            batches = min(batches, config.max_steps * config.accumulate_grad_batches)
        interval = 1.0 if batches == batches_per_epoch else batches
    if isinstance(interval, float) and interval.is_integer() and interval > 1:
        interval = int(interval)
    if type(interval) is int:
        # counted in batches across epochs, so an interval longer than an epoch still works
        return {"val_check_interval": interval, "check_val_every_n_epoch": None}
    return {"val_check_interval": float(interval)}


def _check_dataset(dataset: PreparedDataset, dataset_dir: str) -> None:
    """The data stage's full check (`PreparedDataset.verify`: every id below the vocabulary size,
    start positions strictly increasing inside the corpus) before anything is trained: a bad id would
    be an IndexError in the embedding mid-run, leaving an experiment with no checkpoint."""
    try:
        dataset.verify()
    except DatasetFormatError as error:
        raise TrainInputError(f"--dataset_dir {dataset_dir}: {error}") from None


@dataclasses.dataclass
class _Run:
    """What `build` made and `fit`/`finish` use."""

    config: TrainConfig
    dataset: PreparedDataset
    tokenizer: DatasetTokenizer
    precision: str
    module: Any
    datamodule: Any
    trainer: Any
    checkpoint_io: Any
    best: Any
    last: Any
    samples: Any
    run_dir: _RunDirectory
    model_config: dict[str, Any]
    source_dir: Path | None  # the pretrained model dir (tokenizer and generation config for hf/)
    total_steps: int = 0  # optimizer steps of the whole run (--max_steps, or what the epochs make)


class _RunDirectory:
    """The experiment dir: claimed by global rank 0 just before training, then told to every other rank
    through the process group (`setup` runs once it exists, under Lightning's launcher, torchrun and SLURM)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def callback(self) -> Any:
        import lightning.pytorch as pl

        holder = self

        class TellRanks(pl.Callback):
            def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
                told = trainer.strategy.broadcast(None if holder.path is None else str(holder.path), src=0)
                holder.path = Path(told)

        return TellRanks()


def _resume_checkpoint(config: TrainConfig, checkpoint_io: Any) -> dict[str, Any] | None:
    """Verify `last.ckpt` of the run to resume (one line on any fault) and keep it for Lightning."""
    if not config.resume:
        return None
    from lmfast.models.checkpoint import CheckpointError

    path = Path(config.resume) / "checkpoints" / "last.ckpt"
    try:
        return checkpoint_io.preload(path)
    except CheckpointError as error:
        raise TrainInputError(f"--resume {config.resume}: {error}") from None


def _check_not_finished(config: TrainConfig, checkpoint: dict[str, Any] | None, total: int) -> None:
    if checkpoint is None:
        return
    step = int(checkpoint.get("global_step", 0))
    if step >= total:
        limit = f"--max_steps {config.max_steps}" if config.max_steps > 0 else f"{total} steps of its epochs"
        raise TrainInputError(
            f"--resume {config.resume}: the run is complete (step {step} of {limit}); to train further give "
            f"a larger total, e.g. lmfast train --resume {config.resume} --max_steps {step + max(step, 1)}"
        )
    log.info("resumed %s at step %d of %d", config.resume, step, total)


def build(config: TrainConfig, callbacks: list[Any] | None = None) -> _Run:
    """Check the inputs and build model, data, callbacks and Trainer; writes nothing.

    Raises:
        TrainInputError: bad dataset, model, checkpoint to resume, or sizes.
    """
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lmfast.train.callbacks import TextSamples, ThroughputMonitor, ValidationLog, sample_prompts
    from lmfast.train.checkpoint import ChecksummedCheckpointIO
    from lmfast.train.datamodule import LMDataModule
    from lmfast.train.interrupt import SafeStop
    from lmfast.train.model import build_model, resolve_model_source
    from lmfast.train.module import LMModule
    from lmfast.train.progress import StepProgressBar, ValidateAtEnd

    quiet_lightning()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" / "Writing model shards" bars in the log
    dataset = _open_dataset(config.dataset_dir)
    dataset_dir = Path(config.dataset_dir)
    _check_dataset(dataset, config.dataset_dir)  # first: it names a corrupt tokenizer.json in one line
    tokenizer = DatasetTokenizer.from_dataset(dataset_dir, dataset.description)
    checkpoint_io = ChecksummedCheckpointIO()
    resumed = _resume_checkpoint(config, checkpoint_io)
    train_lengths = dataset.train.lengths()
    max_length = int(max(train_lengths.max(), dataset.valid.lengths().max() if len(dataset.valid) else 0))
    if len(dataset.train) < config.batch_size:  # checked again per device once the world size is known
        raise TrainInputError(
            f"--batch_size {config.batch_size}: larger than the dataset ({len(dataset.train)} train samples)"
        )
    precision = resolve_precision(config.precision, config.accelerator)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    model_source = resolve_model_source(config.model)
    model = build_model(model_source, tokenizer, max_length, config.dropout)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise TrainInputError(
            f"--model {config.model}: vocabulary of {model.config.vocab_size} is smaller than the dataset's {tokenizer.vocab_size}"
        )
    from lmfast.models.families import export_refusal  # refused now, not after hours of training

    if (reason := export_refusal(model.config.to_dict())) is not None:
        raise TrainInputError(f"--model {config.model}: lmfast export onnx could not export it: {reason}")
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls where fp32 remains
    model_config = model.config.to_dict()
    lora = None
    if config.lora_r:
        from lmfast.models.checkpoint import lora_settings
        from lmfast.train.lora import apply_lora

        lora = lora_settings(
            config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules, model_source
        )
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing` is deprecated.*")
                model = apply_lora(model, lora)
        except ValueError as error:  # PEFT: no module matches the targets
            raise TrainInputError(f"--lora_target_modules {config.lora_target_modules}: {error}") from None
    else:
        count = sum(p.numel() for p in model.parameters())
        start = "from scratch" if config.is_preset else "full fine-tuning"
        if resumed is None:  # a resumed run says where it resumed instead (_check_not_finished)
            log.info("%s: all %d parameters train", start, count)
    module = LMModule(
        model,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        betas=(config.beta1, config.beta2),
        num_warmup_steps=config.num_warmup_steps,
        num_cycles=config.num_cycles,
        unlikelihood_alpha=config.unlikelihood_alpha,
        train_config=config.to_dict(),
        lora=lora,
    )
    if config.compile:
        module.model.compile()  # in place: state_dict keys keep their plain HF names
    datamodule = LMDataModule(
        dataset_dir,
        config.batch_size,
        pad_token_id=tokenizer.pad_token_id,
        seed=config.seed,
        num_workers=config.num_workers,
        group_by_length=config.group_by_length,
        pad_to_multiple_of=config.pad_to_multiple_of,
    )
    # the directory is set once claimed (rank 0) or told (the others); Lightning broadcasts rank 0's
    best = ModelCheckpoint(
        filename="step{step:07d}-val_loss{val_loss:.4f}",
        monitor="val_loss",
        mode="min",
        save_top_k=config.save_top_k,
        auto_insert_metric_name=False,
        save_weights_only=True,  # the full state (optimizer, loops) is needed in last.ckpt only
        save_on_train_epoch_end=False,  # only at a validation: the name carries that step's own loss
    )
    last = ModelCheckpoint(
        save_top_k=0,
        save_last=True,
        every_n_train_steps=config.checkpoint_every_n_steps,
    )
    prompts = sample_prompts(dataset.valid, config.num_generated_samples)
    samples = TextSamples(
        Path("generated.txt"),  # placed in the experiment dir once it is claimed
        tokenizer.directory,
        prompts,
        seed=config.seed,
        max_new_tokens=config.generation_max_new_tokens,
        real_vocab_size=tokenizer.vocab_size,
        chat="loss_mask_file" in dataset.description,  # dialogs and chat exports: conversations
    )
    run_dir = _RunDirectory(Path(config.resume) if config.resume else None)
    safe_stop = SafeStop(lambda: run_dir.path, config.checkpoint_every_minutes)
    all_callbacks: list[pl.Callback] = [
        run_dir.callback(),
        ValidateAtEnd(),
        best,
        last,
        ThroughputMonitor(precision, config.peak_tflops),
        ValidationLog(),
        samples,
        safe_stop,
    ]
    interactive = sys.stderr.isatty()
    if interactive:
        all_callbacks.append(StepProgressBar(refresh_rate=1))  # step N / total, elapsed < remaining (ETA)
    all_callbacks += callbacks or []
    max_epochs = config.max_epochs if config.max_epochs is not None else (1 if config.max_steps == -1 else -1)
    trainer = pl.Trainer(
        accelerator=config.accelerator,
        devices=config.devices_value(),
        num_nodes=config.num_nodes,
        strategy=make_strategy(config.strategy, config.accelerator),
        precision=precision,
        max_steps=config.max_steps,
        max_epochs=max_epochs,
        accumulate_grad_batches=config.accumulate_grad_batches,
        gradient_clip_val=config.gradient_clip_val or None,
        logger=False,  # rank 0 adds TensorBoard once the experiment dir is claimed
        callbacks=all_callbacks,
        plugins=[checkpoint_io],
        log_every_n_steps=config.log_every_n_steps,
        enable_progress_bar=interactive,
        enable_model_summary=interactive,
        use_distributed_sampler=False,  # the batch sampler shards by rank itself (and resumes)
        limit_val_batches=config.limit_val_batches if len(dataset.valid) else 0,
        num_sanity_val_steps=0 if config.resume else 2,
        **_val_check_kwargs(config, 1),  # replaced below once the world size is known
    )
    world = trainer.world_size
    if len(dataset.train) < config.batch_size * world:
        raise TrainInputError(
            f"--batch_size {config.batch_size}: larger than the dataset ({len(dataset.train)} train samples "
            f"for {world} device(s))"
        )
    batches_per_epoch = -(-len(dataset.train) // config.batch_size) // world  # as ResumableBatchSampler
    for key, value in _val_check_kwargs(config, batches_per_epoch).items():
        setattr(trainer, key, value)  # needs the world size, known only once the Trainer exists
    steps_per_epoch = -(-batches_per_epoch // config.accumulate_grad_batches)
    total = config.max_steps if config.max_steps > 0 else steps_per_epoch * max(max_epochs, 1)
    _check_not_finished(config, resumed, total)
    source_dir = None if config.is_preset else Path(model_source)
    return _Run(
        config, dataset, tokenizer, precision, module, datamodule, trainer, checkpoint_io, best, last,
        samples, run_dir, model_config, source_dir, total,
    )  # fmt: skip


def _claim(run: _Run) -> None:
    """Rank 0 claims a fresh `<root>/<name>/<N>` (or takes the resumed one) and points every output there."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from lmfast.train.config import claim_experiment_dir

    trainer, config = run.trainer, run.config
    if not trainer.is_global_zero:
        return  # told in TellRanks.setup; nothing is written by this rank
    if run.run_dir.path is None:
        try:
            run.run_dir.path = claim_experiment_dir(config.experiments_root, config.experiment_name)
        except OSError as error:
            raise TrainInputError(
                f"--experiments_root {config.experiments_root}: cannot create a run directory ({error})"
            ) from None
    experiment_dir = run.run_dir.path
    checkpoints = os.path.realpath(experiment_dir / "checkpoints")
    run.best.dirpath = run.last.dirpath = checkpoints
    run.samples.output = experiment_dir / "generated.txt"
    trainer.loggers = [
        TensorBoardLogger(save_dir=str(experiment_dir), name="logs", version="", default_hp_metric=False)
    ]


def fit(run: _Run) -> None:
    """Write description.json and train (resuming from `last.ckpt` if asked), once `_claim` has run.

    Raises:
        NonFiniteLossError: the loss became NaN/inf; `last.ckpt` holds the last good state.
    """
    trainer, config = run.trainer, run.config
    experiment_dir = run.run_dir.path
    if trainer.is_global_zero:
        _write_description(
            experiment_dir,
            config,
            run.dataset.description,
            run.model_config,
            run.precision,
            trainer.world_size,
        )
        log.info(
            "experiment %s: %s on %s, %d optimizer steps, precision %s, %d device(s); "
            "the step lines give the ETA, Ctrl-C stops with a checkpoint",
            experiment_dir,
            config.model,
            config.dataset_dir,
            run.total_steps,
            run.precision,
            trainer.world_size,
        )
    ckpt_path = str(Path(config.resume) / "checkpoints" / "last.ckpt") if config.resume else None
    with warnings.catch_warnings():
        # the datamodule restores the data position itself (see LMDataModule.state_dict)
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        # LMModule counts tokens on the host in that hook; the datamodule defines none to shadow
        warnings.filterwarnings("ignore", message=".*overridden `on_before_batch_transfer`.*")
        # raised inside Lightning/torch's own pytree use, nothing a user can act on
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
        # the run dir is fresh, or the resumed run's own: its checkpoints are expected there
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        # transformers deprecations raised by PEFT's and the decode loop's own calls, not the user's
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing` is deprecated.*")
        warnings.filterwarnings("ignore", message=".*`past_key_values` is deprecated.*")
        trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=ckpt_path)
        last_path = Path(run.last.dirpath) / "last.ckpt"
        if run.last._last_global_step_saved != trainer.global_step:
            # the final state, resumable with a larger --max_steps
            trainer.save_checkpoint(last_path, weights_only=False)


def finish(run: _Run, started: float) -> None:
    """Rank 0: `hf/` from the best checkpoint (else `last.ckpt`) and the run's totals in description.json."""
    from lmfast.train.hf import checkpoint_to_hf

    trainer = run.trainer
    experiment_dir = run.run_dir.path
    if not trainer.is_global_zero or experiment_dir is None:
        return
    last_path = experiment_dir / "checkpoints" / "last.ckpt"
    source = run.best.best_model_path or (str(last_path) if last_path.is_file() else "")
    if source:
        checkpoint_to_hf(
            source,
            experiment_dir / "hf",
            run.tokenizer.directory,
            source_dir=run.source_dir,
            prompt_prefix_token_ids=run.dataset.description.get("prompt_prefix_token_ids"),
        )
        log.info("saved %s as a Hugging Face model in %s", Path(source).name, experiment_dir / "hf")
        point_latest(experiment_dir)  # the newest run with a model: what `<name>/latest` paths follow
    _update_description(
        experiment_dir,
        {
            "wall_time_s": round(time.time() - started, 1),
            "global_step": trainer.global_step,
            "best_checkpoint": Path(source).name if source else None,
        },
    )


def train(config: TrainConfig, callbacks: list[Any] | None = None) -> Path:
    """Train `config.model` on `config.dataset_dir`; returns the experiment directory.

    Args:
        config: every setting of the run (what description.json records).
        callbacks: extra Lightning callbacks (e.g. an early stop), added after lmfast's own.

    Raises:
        TrainInputError: bad dataset, model, checkpoint or sizes (nothing written).
        NonFiniteLossError: the loss became NaN/inf; `last.ckpt` and `hf/` hold the last good state.
    """
    from lmfast.train.module import NonFiniteLossError

    run = build(config, callbacks)
    started = time.time()
    handler = None
    try:
        _claim(run)
        if run.trainer.is_global_zero:
            handler = _attach_text_log(run.run_dir.path / "logs" / "train.log")
        fit(run)
    except NonFiniteLossError as error:
        log.error("%s", error)
        raise
    finally:
        if run.run_dir.path is not None:
            finish(run, started)
        if handler is not None:
            _detach_text_log(handler)
    assert run.run_dir.path is not None
    return run.run_dir.path


def quiet_lightning() -> None:
    """Lightning's accelerator banner and cloud-logger tips tell a user nothing they chose; warnings stay."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_drop_banners)  # idempotent
    logging.getLogger("lightning.pytorch.accelerators.cuda").addFilter(_drop_banners)


def _write_description(
    experiment_dir: Path,
    config: TrainConfig,
    dataset_description: dict[str, Any],
    model_config: dict[str, Any],
    precision: str,
    world_size: int,
) -> None:
    from lmfast import __version__

    path = experiment_dir / "description.json"
    previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    description = {
        **config.to_dict(),
        "resolved_precision": precision,
        "world_size": world_size,
        "lmfast_version": __version__,
        "model_config": model_config,
        "dataset_description": dataset_description,
        "resumed_times": previous.get("resumed_times", -1) + 1,
    }
    path.write_text(
        json.dumps(description, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )


def _update_description(experiment_dir: Path, values: dict[str, Any]) -> None:
    path = experiment_dir / "description.json"
    if not path.is_file():
        return
    description = json.loads(path.read_text(encoding="utf-8"))
    description.update(values)
    path.write_text(
        json.dumps(description, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )
