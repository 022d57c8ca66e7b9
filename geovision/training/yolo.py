"""Training YOLO detectors (ultralytics) on a chip dataset.

ultralytics (AGPL-3.0) is imported here and in the YOLO backend only.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from geovision.config import ModelConfig
from geovision.errors import TrainingError
from geovision.training.common import aerial_augmentations, package_run, start_weights


@dataclass(frozen=True)
class DetectTrainOptions:
    """Settings of a YOLO training run."""

    epochs: int = 100
    batch: int = 16
    model: str = "yolo11n.yaml"
    patience: int = 50
    device: str | None = None
    seed: int = 0
    workers: int = 0
    lr0: float = 0.01
    augment: Literal["aerial", "none"] = "aerial"
    extra: dict[str, Any] = field(default_factory=dict)
    #: load a ``.pt`` start even if it names more than network classes (see backends.yolo.check_checkpoint)
    trusted: bool = False
    #: the network YAML to build when ``model`` is weights of another task (detector weights for a YOLO-seg)
    network: str | None = None


def train_yolo(
    data_yaml: Path,
    cfg: ModelConfig,
    out_dir: Path,
    opts: DetectTrainOptions,
    log: Callable[[str], None] = lambda s: None,
    info: dict[str, Any] | None = None,
) -> ModelConfig:
    """Train a YOLO detector (or YOLO-seg instance segmenter) on a chip dataset; write a package to ``out_dir``.

    ``cfg`` carries everything but the weights (classes, tile size, resolution,
    bands, normalisation); the returned config is the package's model.yaml.
    """
    from geovision.backends.device import pick_device
    from geovision.backends.yolo import import_ultralytics, load_yolo

    ultralytics = import_ultralytics()
    device = pick_device(opts.device)
    start = Path(opts.model) if opts.model.endswith(".pt") else None  # weights to start from, else a network YAML
    model = load_yolo(start, opts.trusted) if start else ultralytics.YOLO(opts.model)
    wanted = "segment" if cfg.task == "instance" else "detect"
    if start and model.task != wanted:
        if not opts.network:
            raise TrainingError(f"{start.name}: a {model.task} model cannot start a {wanted} run")
        # another task's weights (a box detector starting a YOLO-seg): its backbone, neck and box head carry over
        model = ultralytics.YOLO(opts.network).load(str(start))

    ran = {"epochs": 0}  # a time limit (options: time) changes the number of epochs on the way

    def on_epoch(trainer: Any) -> None:
        m = {k.split("/")[-1]: round(float(v), 3) for k, v in (trainer.metrics or {}).items() if "mAP" in k}
        done = trainer.epoch + 1
        ran["epochs"] = min(done, trainer.epochs)
        log(f"epoch {done}/{trainer.epochs} {m}" if done <= trainer.epochs else f"best weights {m}")

    model.add_callback("on_fit_epoch_end", on_epoch)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="geovision-train-") as tmp:
        args: dict[str, Any] = dict(
            data=str(data_yaml),
            epochs=opts.epochs,
            imgsz=cfg.tile_size,
            batch=opts.batch,
            device=device,
            workers=opts.workers,
            seed=opts.seed,
            deterministic=True,
            project=tmp,
            name="run",
            exist_ok=True,
            plots=False,
            verbose=False,
            # a .pt start is used only with pretrained left on (False rebuilds the network from its YAML)
            pretrained=start is not None,
            amp=device != "cpu",
            patience=opts.patience,
            lr0=opts.lr0,
            fliplr=0.5,
            flipud=0.5,
            degrees=0.0,
            scale=0.3,
            mosaic=1.0,
            hsv_v=0.3,
        )
        if device != "cpu":  # the GPU waits on chips otherwise: load them in worker processes
            args.update(workers=max(opts.workers, min(8, os.cpu_count() or 1)))
        if opts.augment == "aerial":
            # random ground resolution around the model's (+-50 %) and stronger colour changes
            args.update(scale=0.5, hsv_h=0.02, hsv_s=0.5, hsv_v=0.4, augmentations=aerial_augmentations())
        args.update(opts.extra)
        with _amp_check_offline(), _cpu_threads_kept(model, device), _quiet_albumentations():
            model.train(**args)
        seconds = time.perf_counter() - started
        run = Path(tmp) / "run"
        best = run / "weights" / "best.pt"
        if not best.exists():
            best = run / "weights" / "last.pt"
        metrics = _last_metrics(run / "results.csv", "M" if cfg.task == "instance" else "B")
        out_dir.mkdir(parents=True, exist_ok=True)
        weights = out_dir / "weights.pt"
        shutil.copyfile(best, weights)
    run_record = {"epochs": ran["epochs"] or opts.epochs, "augment": opts.augment, "seconds": round(seconds, 1)}
    base = start_weights(start) if start else opts.model
    packaged = package_run(replace(cfg, backend="yolo"), weights, base, {**run_record, "device": device}, metrics, info)
    log(f"validation: {json.dumps(metrics)}")
    return packaged


@contextlib.contextmanager
def _cpu_threads_kept(model: Any, device: str) -> Iterator[None]:
    """Keep the threads torch had through a CPU training run, and after it.

    ultralytics' device selection sets torch to one thread fewer than the
    machine's cores (``NUM_THREADS``), in the trainer and again in the final
    validation: on a 2-core machine, training ran on one core and left the
    process so. A callback restores the count before the first batch, and it
    is restored when the run ends.
    """
    import torch

    from geovision.backends.device import torch_threads

    threads = torch.get_num_threads()

    def restore(trainer: Any = None) -> None:
        torch_threads(device, threads)

    model.add_callback("on_pretrain_routine_start", restore)
    try:
        yield
    finally:
        restore()


@contextlib.contextmanager
def _quiet_albumentations() -> Iterator[None]:
    """Silence albumentations 2's false alarm when ultralytics restores our RGBShift from its dict.

    ultralytics hands the transforms to its data loader as ``A.to_dict`` dicts; RGBShift writes
    its parent class's noise arguments there and warns that they are not its own when read back,
    though it comes back with the same shifts. A user would take the warning for a broken recipe.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Argument\(s\) .* are not valid for transform RGBShift")
        yield


@contextlib.contextmanager
def _amp_check_offline() -> Iterator[None]:
    """Skip ultralytics' mixed-precision self-test for the length of one training run.

    On CUDA it downloads a pretrained model from GitHub to compare fp16 with
    fp32 output, which hangs or fails offline. Mixed precision is used as on
    any recent GPU; the patched name is restored when the run ends.
    """
    import ultralytics.engine.trainer as trainer

    saved = trainer.check_amp
    trainer.check_amp = lambda model: True
    try:
        yield
    finally:
        trainer.check_amp = saved


def _last_metrics(results_csv: Path, kind: str = "B") -> dict[str, float]:
    """Best-epoch validation metrics from ultralytics' results.csv: of boxes (``B``) or masks (``M``)."""
    if not results_csv.exists():
        return {}
    with open(results_csv) as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    if not rows:
        return {}
    key = f"metrics/mAP50-95({kind})"
    best = max(rows, key=lambda r: float(r.get(key, 0) or 0))
    out: dict[str, float] = {"epoch": int(float(best["epoch"]))}
    for name in ("precision", "recall", "mAP50", "mAP50-95"):
        k = f"metrics/{name}({kind})"
        if k in best:
            out[name] = round(float(best[k]), 4)
    return out
