"""The benchmark's models in PyTorch, and their plain and Opacus DP-SGD steps (benchmark only).

Optional: needs `pip install -e '.[bench]'` (torch 2.13 CPU, opacus 1.6). Same layers,
shapes and activations as the JAX models of `benchmarks.step_time` (toolkit.nn._models and
`NormCNN`); PyTorch pads explicitly where Keras says SAME. The variants:

- `ws`: every convolution is `WSConv2d`, whose weight is standardised in `forward`
  (toolkit.nn._models.standardize_kernel). Opacus has no grad sampler for it; its hooks
  (and ghost clipping) then compute that layer's per-sample gradients by functorch
  (`torch.func`), Opacus' own fallback for layers it does not know.
- `norm`: a GroupNorm after each convolution, a LayerNorm before the classifier.
- `augmult=K`: each example is expanded into K views (random shifts by up to 2 pixels,
  zero padded, and random horizontal flips, as toolkit.grads.Augmult(K)); the loss is the
  mean over all views. Under Opacus hooks each example's gradient is the mean of its
  views' per-sample gradients, taken before the optimizer clips (`p.grad_sample`
  regrouped). Ghost clipping never forms per-sample gradients, only their norms, and the
  norm of a mean over views is not a function of the views' norms: not available.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_WS_EPS = 1e-4  # toolkit.nn._models._WS_EPS


class TemperedSigmoid(nn.Module):
    """s * sigmoid(T x) - o (toolkit.nn.tempered_sigmoid)."""

    def __init__(self, scale: float, inverse_temp: float, offset: float):
        super().__init__()
        self.s, self.t, self.o = scale, inverse_temp, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.s * torch.sigmoid(self.t * x) - self.o


class WSConv2d(nn.Module):
    """A Conv2d whose weight is scaled-weight-standardised per output channel at every call."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0):
        super().__init__()
        conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding)  # its initialisation
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        centred = w - w.mean(dim=(1, 2, 3), keepdim=True)
        std = torch.sqrt(centred.square().mean(dim=(1, 2, 3), keepdim=True) + _WS_EPS**2)
        w_hat = centred / (std * math.sqrt(w[0].numel()))
        return F.conv2d(x, w_hat, self.bias, stride=self.stride, padding=self.padding)


def _conv(cin: int, cout: int, k: int, ws: bool, **kw) -> nn.Module:
    return WSConv2d(cin, cout, k, **kw) if ws else nn.Conv2d(cin, cout, k, **kw)


def mnist_cnn(
    activation: Callable[[], nn.Module] = nn.Tanh, *, ws: bool = False, norm: bool = False
) -> nn.Module:
    """Table 1: 26,010 parameters (toolkit.nn._models.MnistCNN); `norm` adds 160."""
    gn = (lambda groups, c: [nn.GroupNorm(groups, c)]) if norm else (lambda groups, c: [])
    return nn.Sequential(
        nn.ZeroPad2d(3),
        _conv(1, 16, 8, ws, stride=2),
        *gn(4, 16),
        activation(),
        nn.MaxPool2d(2, stride=1),
        _conv(16, 32, 4, ws, stride=2),
        *gn(8, 32),
        activation(),
        nn.MaxPool2d(2, stride=1),
        nn.Flatten(),
        nn.Linear(4 * 4 * 32, 32),
        activation(),
        *([nn.LayerNorm(32)] if norm else []),
        nn.Linear(32, 10),
    )


class _SpatialMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def cifar10_cnn(activation: Callable[[], nn.Module] = nn.Tanh, *, ws: bool = False) -> nn.Module:
    """Table 2: 605,226 parameters (same as toolkit.nn._models.Cifar10CNN)."""
    widths = [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 256)]
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(widths):
        layers += [_conv(cin, cout, 3, ws, padding=1), activation()]
        if i in (1, 3, 5):
            layers.append(nn.AvgPool2d(2, stride=2))
    layers += [_conv(256, 10, 3, ws, padding=1), _SpatialMean()]
    return nn.Sequential(*layers)


SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def build(
    base: str,
    *,
    activation: tuple[float, float, float] | None = None,
    ws: bool = False,
    norm: bool = False,
) -> nn.Module:
    """The model: `base` mnist or cifar10; `activation` None (tanh) or the tempered (s, T, o)."""
    act = nn.Tanh if activation is None else (lambda: TemperedSigmoid(*activation))
    if base == "mnist":
        return mnist_cnn(act, ws=ws, norm=norm)
    if norm:
        raise ValueError("norm=True is defined for the MNIST CNN only.")
    return cifar10_cnn(act, ws=ws)


def views(x: torch.Tensor, k: int, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """(B K, C, H, W): K random views of each image, example-major (toolkit.grads.Augmult)."""
    b, c, h, w = x.shape
    n, s = b * k, max_shift
    padded = F.pad(x, (s, s, s, s)).repeat_interleave(k, dim=0)
    dy, dx = torch.randint(0, 2 * s + 1, (2, n, 1), generator=gen)
    rows = (dy + torch.arange(h))[:, None, :, None]  # (n, 1, h, 1)
    cols = (dx + torch.arange(w))[:, None, None, :]  # (n, 1, 1, w)
    out = padded[
        torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols
    ]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


class Steps(NamedTuple):
    steps: dict[str, Callable[[], None]]  # {method: zero-argument step}
    notes: list[str]
    params: int  # trainable scalars of the model


def make_steps(
    base: str,
    batch: int,
    *,
    clip_norm: float,
    noise_multiplier: float,
    activation: tuple[float, float, float] | None = None,
    ws: bool = False,
    norm: bool = False,
    augmult: int = 0,
    seed: int = 0,
) -> Steps:
    """'torch plain', 'opacus hooks', 'opacus ghost' steps on one fixed batch (Opacus if
    installed; ghost clipping not with `augmult`)."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.random((batch, *SHAPES[base]), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 10, batch))
    gen = torch.Generator().manual_seed(seed)
    k = max(augmult, 1)

    def inputs() -> tuple[torch.Tensor, torch.Tensor]:
        """The step's rows: the batch, or its K views per example (drawn every step)."""
        if not augmult:
            return x, y
        return views(x, k, gen), y.repeat_interleave(k)

    def model() -> nn.Module:
        torch.manual_seed(seed)
        return build(base, activation=activation, ws=ws, norm=norm)

    plain_model = model()
    opt = torch.optim.SGD(plain_model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()

    def plain():
        opt.zero_grad()
        xs, ys = inputs()
        loss_fn(plain_model(xs), ys).backward()
        opt.step()

    steps = {"torch plain": plain}
    notes: list[str] = []
    params = sum(p.numel() for p in plain_model.parameters())
    try:
        from opacus import PrivacyEngine  # optional
    except ImportError as e:
        return Steps(steps, [f"Opacus skipped: {e}"], params)
    if ws:
        notes.append(
            "opacus (ws): WSConv2d has no Opacus grad sampler; Opacus computes its "
            "per-sample gradients by functorch, its fallback for unregistered layers."
        )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
    for mode in ("hooks", "ghost"):
        if augmult and mode == "ghost":
            notes.append(
                "opacus ghost (augmult): not available; ghost clipping computes per-sample "
                "gradient norms without the gradients, and the norm of an example's mean "
                "over its views is not a function of the views' norms."
            )
            continue
        dp_model = model()
        dp_opt = torch.optim.SGD(dp_model.parameters(), lr=0.01)
        try:
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
        except Exception as e:  # a layer Opacus refuses: reported, the other methods run
            notes.append(f"opacus {mode}: not available: {type(e).__name__}: {e}"[:300])
            continue
        if mode == "ghost":
            dp_model, dp_opt, criterion, _ = made
        else:
            (dp_model, dp_opt, _), criterion = made, nn.CrossEntropyLoss()

        def dp_step(m=dp_model, o=dp_opt, c=criterion):
            o.zero_grad()
            xs, ys = inputs()
            c(m(xs), ys).backward()
            if augmult:  # one gradient per example: the mean over its K views, then clipped
                for p in m.parameters():
                    if p.requires_grad:
                        p.grad_sample = p.grad_sample.unflatten(0, (batch, k)).mean(1)
            o.step()

        steps[f"opacus {mode}"] = dp_step
    return Steps(steps, notes, params)
