"""Where metrics go: console lines, TensorBoard event files and `metrics.jsonl`.

Only process 0 writes; other processes get a writer that drops everything, so
multi-host runs produce one set of logs.
"""

from __future__ import annotations

import json
import logging as pylogging
import math
import os
import time
from collections.abc import Mapping

import jax
from absl import logging
from etils import epath

# Short console names for the training metrics, in display order.
_CONSOLE_FIELDS = (
    ("loss", "loss {:.4f}"),
    ("top_1_acc", "top1 {:.2%}"),
    ("learning_rate", "lr {:.4g}"),
    ("grad_norm", "gnorm {:.3g}"),
    ("agc_clip_fraction", "clip {:.1%}"),
    ("images_per_sec", "{:,.0f} img/s"),
)


def format_duration(seconds: float) -> str:
    """`93784 -> '1d 2h 3m'`, `75 -> '1m 15s'`."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def format_train_line(step: int, total_steps: int, metrics: Mapping[str, float], eta: float) -> str:
    """The console progress line of one logging interval."""
    parts = [f"step {step:>{len(str(total_steps))}}/{total_steps}"]
    for key, template in _CONSOLE_FIELDS:
        if key in metrics:
            parts.append(template.format(metrics[key]))
    parts.append(f"ETA {format_duration(eta)}")
    return " | ".join(parts)


class _JsonLines:
    """An append-only JSON-lines file, local or on cloud storage.

    Local files are appended to and flushed line by line. Object stores (gs://...)
    cannot append, so there the whole file is rewritten after each line (it holds one
    line per logging interval: small).
    """

    def __init__(self, path: epath.Path, remote: bool | None = None):
        self._path = path
        self._remote = "://" in str(path) if remote is None else remote
        self._lines = path.read_text().splitlines() if self._remote and path.exists() else []

    def append(self, line: str) -> None:
        if self._remote:
            self._lines.append(line)
            self._path.write_text("\n".join(self._lines) + "\n")
        else:
            with self._path.open("a") as f:
                f.write(line + "\n")


class MetricWriter:
    """Writes scalars to TensorBoard and `metrics.jsonl` in `workdir` (process 0 only).

    Args:
      workdir: the run directory; events go to `workdir/tensorboard`.
      enabled: False on every process but 0.
    """

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        self._summary_writer = None
        self._jsonl = None
        if not enabled:
            return
        from nfnets_jax.data.tf_setup import tf  # lazily: only the writing process needs it.

        self._tf = tf
        run_dir = epath.Path(workdir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._summary_writer = tf.summary.create_file_writer(str(run_dir / "tensorboard"))
        self._jsonl = _JsonLines(run_dir / "metrics.jsonl")

    def write_scalars(self, step: int, scalars: Mapping[str, float], *, prefix: str = "") -> None:
        """Records `scalars` at `step` (keys get `prefix`, e.g. `'train/'`)."""
        if not self.enabled:
            return
        values = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
        with self._summary_writer.as_default(step=step):
            for key, value in values.items():
                self._tf.summary.scalar(key, value)
        record = {"step": int(step), "time": time.time(), **values}
        self._jsonl.append(json.dumps(record))

    def write_text(self, name: str, text: str, step: int = 0) -> None:
        """Records a text summary (the config, the parameter table)."""
        if not self.enabled:
            return
        with self._summary_writer.as_default(step=step):
            self._tf.summary.text(name, text)

    def flush(self) -> None:
        if self.enabled:
            self._summary_writer.flush()

    def close(self) -> None:
        if self.enabled:
            self._summary_writer.close()
            self.enabled = False


def log_line(text: str) -> None:
    """One line of run progress from process 0 (printed with the time, and logged)."""
    if jax.process_index() != 0:
        return
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)
    logging.debug("%s", text)


class _DropLibraryInfo(pylogging.Filter):
    """Drops INFO records of chatty libraries (orbax logs every save in detail)."""

    _QUIET = (os.sep + "orbax" + os.sep, os.sep + "tensorflow_datasets" + os.sep)

    def filter(self, record: pylogging.LogRecord) -> bool:
        if record.levelno >= pylogging.WARNING:
            return True
        return not any(part in record.pathname for part in self._QUIET)


def quiet_library_logs() -> None:
    """Keeps orbax's and tfds's INFO messages out of the console (warnings still show)."""
    handler_filter = _DropLibraryInfo()
    absl_logger = pylogging.getLogger("absl")
    if not any(isinstance(f, _DropLibraryInfo) for f in absl_logger.filters):
        absl_logger.addFilter(handler_filter)
