"""toolkit.training."""

from toolkit.training import metrics
from toolkit.training._averaging import EmaState, averaged, track_ema
from toolkit.training._dpsgd import (
    IMPLEMENTATIONS,
    Mechanism,
    make_accumulate,
    make_optimizer,
    make_update,
)
from toolkit.training._fit import (
    FitConfig,
    FitResult,
    build_loop,
    final_epsilon,
    fit,
    load_run,
    summarize,
)
from toolkit.training._loop import (
    EpochContext,
    Loop,
    MetricFn,
    TrainingDiverged,
    compile_time,
    grad_norm_stats,
)
from toolkit.training._parallel import DataParallel
from toolkit.training._progress import (
    COMPILING,
    Display,
    LineProgress,
    RichProgress,
    progress_display,
)
from toolkit.training._tracking import (
    DIAGNOSTIC_DESCRIPTION,
    EXTRA,
    TensorBoardSink,
    description,
    scalars,
)
from toolkit.training._train import TrainingDiverged, load_data, privacy_params, resume, train

__all__ = [
    "COMPILING",
    "DIAGNOSTIC_DESCRIPTION",
    "DataParallel",
    "Display",
    "EXTRA",
    "EmaState",
    "EpochContext",
    "FitConfig",
    "FitResult",
    "IMPLEMENTATIONS",
    "LineProgress",
    "Loop",
    "Mechanism",
    "MetricFn",
    "RichProgress",
    "TensorBoardSink",
    "TrainingDiverged",
    "averaged",
    "build_loop",
    "compile_time",
    "description",
    "final_epsilon",
    "fit",
    "grad_norm_stats",
    "load_data",
    "load_run",
    "make_accumulate",
    "make_optimizer",
    "make_update",
    "metrics",
    "privacy_params",
    "progress_display",
    "resume",
    "scalars",
    "summarize",
    "track_ema",
    "train",
]
