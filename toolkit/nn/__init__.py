"""toolkit.nn."""

from toolkit.nn._activations import (
    ACTIVATION_NAMES,
    Activation,
    ActivationSpec,
    get_activation,
    tempered_sigmoid,
)
from toolkit.nn._models import (
    PAPER_CNNS,
    Cifar10CNN,
    MnistCNN,
    WSConv,
    build_model,
    build_paper_cnn,
    count_params,
    standardize_kernel,
)

__all__ = [
    "ACTIVATION_NAMES",
    "Activation",
    "ActivationSpec",
    "Cifar10CNN",
    "MnistCNN",
    "WSConv",
    "PAPER_CNNS",
    "build_model",
    "build_paper_cnn",
    "count_params",
    "get_activation",
    "standardize_kernel",
    "tempered_sigmoid",
]
