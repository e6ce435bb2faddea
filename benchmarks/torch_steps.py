"""The paper's CNNs in PyTorch, and their plain and Opacus DP-SGD steps (benchmark only).

Optional: needs `pip install -e '.[bench]'` (torch 2.13 CPU, opacus). Same layers, shapes
and activation (tanh) as toolkit.nn._models; PyTorch pads explicitly where Keras says SAME.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def mnist_cnn() -> nn.Module:
    """Table 1: 26,010 parameters (same as toolkit.nn._models.MnistCNN)."""
    return nn.Sequential(
        nn.ZeroPad2d(3),
        nn.Conv2d(1, 16, 8, stride=2),
        nn.Tanh(),
        nn.MaxPool2d(2, stride=1),
        nn.Conv2d(16, 32, 4, stride=2),
        nn.Tanh(),
        nn.MaxPool2d(2, stride=1),
        nn.Flatten(),
        nn.Linear(4 * 4 * 32, 32),
        nn.Tanh(),
        nn.Linear(32, 10),
    )


class _SpatialMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def cifar10_cnn() -> nn.Module:
    """Table 2: 605,226 parameters (same as toolkit.nn._models.Cifar10CNN)."""
    widths = [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 256)]
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(widths):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.Tanh()]
        if i in (1, 3, 5):
            layers.append(nn.AvgPool2d(2, stride=2))
    layers += [nn.Conv2d(256, 10, 3, padding=1), _SpatialMean()]
    return nn.Sequential(*layers)


MODELS = {"mnist": (mnist_cnn, (1, 28, 28)), "cifar10": (cifar10_cnn, (3, 32, 32))}


def make_steps(
    dataset: str, batch: int, *, clip_norm: float, noise_multiplier: float, seed: int = 0
) -> dict[str, Callable[[], None]]:
    """{'torch plain': step, 'opacus hooks': step, 'opacus ghost': step} on one fixed batch."""
    from opacus import PrivacyEngine  # optional

    build, shape = MODELS[dataset]
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.random((batch, *shape), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 10, batch))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
    steps = {}

    torch.manual_seed(seed)
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()

    def plain():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    steps["torch plain"] = plain

    for mode in ("hooks", "ghost"):
        torch.manual_seed(seed)
        dp_model = build()
        dp_opt = torch.optim.SGD(dp_model.parameters(), lr=0.01)
        made = PrivacyEngine().make_private(
            module=dp_model,
            optimizer=dp_opt,
            data_loader=loader,
            criterion=nn.CrossEntropyLoss(),
            noise_multiplier=noise_multiplier,
            max_grad_norm=clip_norm,
            poisson_sampling=False,
            grad_sample_mode=mode,
        )
        if mode == "ghost":
            dp_model, dp_opt, criterion, _ = made
        else:
            (dp_model, dp_opt, _), criterion = made, nn.CrossEntropyLoss()

        def dp_step(m=dp_model, o=dp_opt, c=criterion):
            o.zero_grad()
            c(m(x), y).backward()
            o.step()

        steps[f"opacus {mode}"] = dp_step
    return steps
