"""`train(config) -> Path`: a prepared dataset -> a trained causal LM in an experiment directory.

Writes DESIGN.md §2: `description.json`, `checkpoints/` (top-k on validation loss + `last.ckpt`),
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

from lmfast.data.dataset import DatasetFormatError, PreparedDataset
from lmfast.train.config import TrainConfig, latest_experiment_dir, resolve_experiment_dir
from lmfast.train.model import DatasetTokenizer, TrainInputError

log = logging.getLogger("lmfast.train")


def _drop_advertisements(record: logging.LogRecord) -> bool:
    """Lightning 2.6 logs a cloud-logger advertisement at every fit; keep the user's terminal for training."""
    return "litlogger" not in record.getMessage()


# set by the process that chose the experiment dir, inherited by the DDP processes Lightning starts
EXPERIMENT_DIR_ENV = "LMFAST_EXPERIMENT_DIR"
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
        experiment_dir = Path(resume)
    description_path = experiment_dir / "description.json"
    if not (experiment_dir / "checkpoints" / "last.ckpt").is_file() or not description_path.is_file():
        raise TrainInputError(
            f"--resume {experiment_dir}: not an lmfast experiment with checkpoints/last.ckpt"
        )
    saved = json.loads(description_path.read_text(encoding="utf-8"))
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
        return dataset
    except DatasetFormatError as error:
        raise TrainInputError(f"--dataset_dir: {error}") from None


def _experiment_dir(config: TrainConfig) -> Path:
    if config.resume:
        return Path(config.resume)
    chosen = os.environ.get(EXPERIMENT_DIR_ENV)
    if chosen:
        return Path(chosen)
    return resolve_experiment_dir(config.experiments_root, config.experiment_name)


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


def train(config: TrainConfig, callbacks: list[Any] | None = None) -> Path:
    """Train `config.model` on `config.dataset_dir`; returns the experiment directory.

    Args:
        config: every setting of the run (what description.json records).
        callbacks: extra Lightning callbacks (e.g. an early stop), added after lmfast's own.

    Raises:
        TrainInputError: bad dataset, model or sizes (nothing written).
        NonFiniteLossError: the loss became NaN/inf; `last.ckpt` and `hf/` hold the last good state.
    """
    import lightning.pytorch as pl
    import torch

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_drop_advertisements)  # idempotent
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger

    from lmfast.train.callbacks import TextSamples, ThroughputMonitor, ValidationLog
    from lmfast.train.datamodule import LMDataModule
    from lmfast.train.hf import checkpoint_to_hf
    from lmfast.train.model import build_model
    from lmfast.train.module import LMModule, NonFiniteLossError

    dataset = _open_dataset(config.dataset_dir)
    dataset_dir = Path(config.dataset_dir)
    tokenizer = DatasetTokenizer.from_dataset(dataset_dir, dataset.description)
    train_lengths = dataset.train.lengths()
    max_length = int(max(train_lengths.max(), dataset.valid.lengths().max() if len(dataset.valid) else 0))
    if len(dataset.train) < config.batch_size:  # checked again per device once the world size is known
        raise TrainInputError(
            f"--batch_size {config.batch_size}: larger than the dataset ({len(dataset.train)} train samples)"
        )
    precision = resolve_precision(config.precision, config.accelerator)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    model = build_model(config.model, tokenizer, max_length, config.dropout)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise TrainInputError(
            f"--model {config.model}: vocabulary of {model.config.vocab_size} is smaller than the dataset's {tokenizer.vocab_size}"
        )
    from lmfast.export.families import export_refusal  # refused now, not after hours of training

    if (reason := export_refusal(model.config.to_dict())) is not None:
        raise TrainInputError(f"--model {config.model}: lmfast export onnx could not export it: {reason}")
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls where fp32 remains
    module = LMModule(
        model,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        betas=(config.beta1, config.beta2),
        num_warmup_steps=config.num_warmup_steps,
        num_cycles=config.num_cycles,
        unlikelihood_alpha=config.unlikelihood_alpha,
        train_config=config.to_dict(),
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

    experiment_dir = _experiment_dir(config)
    checkpoints_dir = experiment_dir / "checkpoints"
    best = ModelCheckpoint(
        dirpath=checkpoints_dir,
        filename="step{step:07d}-val_loss{val_loss:.4f}",
        monitor="val_loss",
        mode="min",
        save_top_k=config.save_top_k,
        auto_insert_metric_name=False,
    )
    last = ModelCheckpoint(
        dirpath=checkpoints_dir,
        save_top_k=0,
        save_last=True,
        every_n_train_steps=config.checkpoint_every_n_steps,
    )
    prompts = [
        dataset.valid[i][:8].tolist() for i in range(min(config.num_generated_samples, len(dataset.valid)))
    ]
    all_callbacks: list[pl.Callback] = [
        best,
        last,
        ThroughputMonitor(precision, config.peak_tflops),
        ValidationLog(),
        TextSamples(
            experiment_dir / "generated.txt",
            tokenizer.directory,
            prompts,
            seed=config.seed,
            max_new_tokens=config.generation_max_new_tokens,
            real_vocab_size=tokenizer.vocab_size,
        ),
    ]
    interactive = sys.stderr.isatty()
    if interactive:
        all_callbacks.append(TQDMProgressBar(refresh_rate=1))  # bar with elapsed < remaining (ETA)
    all_callbacks += callbacks or []
    max_epochs = config.max_epochs if config.max_epochs is not None else (1 if config.max_steps == -1 else -1)
    trainer = pl.Trainer(
        accelerator=config.accelerator,
        devices=config.devices_value(),
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=precision,
        max_steps=config.max_steps,
        max_epochs=max_epochs,
        accumulate_grad_batches=config.accumulate_grad_batches,
        gradient_clip_val=config.gradient_clip_val or None,
        logger=TensorBoardLogger(
            save_dir=str(experiment_dir), name="logs", version="", default_hp_metric=False
        ),
        callbacks=all_callbacks,
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

    if trainer.is_global_zero:
        experiment_dir.mkdir(parents=True, exist_ok=True)
    os.environ[EXPERIMENT_DIR_ENV] = str(experiment_dir)  # DDP processes re-run this command
    handler = _attach_text_log(experiment_dir / "logs" / "train.log") if trainer.is_global_zero else None
    started = time.time()
    if trainer.is_global_zero:
        _write_description(
            experiment_dir, config, dataset.description, model.config.to_dict(), precision, world
        )
        log.info(
            "experiment %s: %s on %s, precision %s, %d device(s)",
            experiment_dir,
            config.model,
            dataset_dir,
            precision,
            world,
        )
    last_path = checkpoints_dir / "last.ckpt"
    ckpt_path = str(last_path) if config.resume else None
    with warnings.catch_warnings():
        # the datamodule restores the data position itself (see LMDataModule.state_dict)
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        # LMModule counts tokens on the host in that hook; the datamodule defines none to shadow
        warnings.filterwarnings("ignore", message=".*overridden `on_before_batch_transfer`.*")
        # raised inside Lightning/torch's own pytree use, nothing a user can act on
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            if last._last_global_step_saved != trainer.global_step:
                trainer.save_checkpoint(last_path)  # the final state, resumable with a larger --max_steps
        except NonFiniteLossError as error:
            log.error("%s", error)
            raise
        finally:
            if trainer.is_global_zero:
                source = best.best_model_path or (str(last_path) if last_path.is_file() else "")
                if source:
                    checkpoint_to_hf(source, experiment_dir / "hf", tokenizer.directory)
                    log.info(
                        "saved %s as a Hugging Face model in %s", Path(source).name, experiment_dir / "hf"
                    )
                _update_description(
                    experiment_dir,
                    {
                        "wall_time_s": round(time.time() - started, 1),
                        "global_step": trainer.global_step,
                        "best_checkpoint": Path(source).name if source else None,
                    },
                )
            if handler is not None:
                _detach_text_log(handler)
            os.environ.pop(EXPERIMENT_DIR_ENV, None)
    return experiment_dir


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
