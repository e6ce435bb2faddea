"""Training: one kind of run (`fit`, `train`, `resume`, `load_run`), its loop and hooks.

`fit` trains a model given in Python; `train` runs a `RunConfig` (what `toolkit train`
and `fit` both call); `resume` continues a run directory; `load_run` reads one back.
`metrics` holds the per-epoch hooks. Underneath: the DP-SGD step (`Mechanism`), the
loop (`Loop`), progress displays and TensorBoard tracking.
"""

from toolkit.training import metrics
from toolkit.training._averaging import EmaState, averaged, track_ema
from toolkit.training._dpsgd import Mechanism, make_accumulate_fn, make_optimizer, make_update
from toolkit.training._loop import EpochContext, Loop, MetricFn, TrainingDiverged
from toolkit.training._progress import Display, progress_display
from toolkit.training._run import (
    FitResult,
    Setup,
    build_loop,
    final_epsilon,
    fit,
    init_model,
    load_run,
    privacy_params,
    resume,
    setup,
    summarize,
    train,
)
from toolkit.training._sources import (
    ARRAYS,
    Objects,
    OptimizerSpec,
    check_model_kind,
    is_factory,
    load_data,
    loss_of,
    model_inputs,
    optimizer,
)
from toolkit.training._tracking import TensorBoardSink

__all__ = [
    "ARRAYS",
    "Display",
    "EmaState",
    "EpochContext",
    "FitResult",
    "Loop",
    "Mechanism",
    "MetricFn",
    "Objects",
    "OptimizerSpec",
    "Setup",
    "TensorBoardSink",
    "TrainingDiverged",
    "averaged",
    "build_loop",
    "check_model_kind",
    "final_epsilon",
    "fit",
    "init_model",
    "is_factory",
    "load_data",
    "load_run",
    "loss_of",
    "make_accumulate_fn",
    "make_optimizer",
    "make_update",
    "metrics",
    "model_inputs",
    "optimizer",
    "privacy_params",
    "progress_display",
    "resume",
    "setup",
    "summarize",
    "track_ema",
    "train",
]
