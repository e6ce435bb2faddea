"""toolkit.nn."""

from toolkit.nn._activations import (
    ACTIVATION_NAMES,
    Activation,
    ActivationSpec,
    get_activation,
    tempered_sigmoid,
)
from toolkit.nn._models import (
    Cifar10CNN,
    MnistCNN,
    WSConv,
    build_model,
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
    "build_model",
    "count_params",
    "get_activation",
    "standardize_kernel",
    "tempered_sigmoid",
]
