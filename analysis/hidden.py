"""Per-layer, per-example gradient-norm bounds for the paper's MNIST CNN (issue 11, part 6).

The network (`toolkit.nn._models.MnistCNN`, Table 1), for one example x (28x28x1, pixels/255):

    u1 = conv1(x)      8x8/2 SAME, 16 ch.     a1 = phi(u1) 14x14x16   p1 = maxpool(a1) 13x13x16
    u2 = conv2(p1)     4x4/2 VALID, 32 ch.    a2 = phi(u2)  5x5x32    h = flat(maxpool(a2)) 512
    u3 = W3^T h + b3   32                     a3 = phi(u3)  32
    z  = W4^T a3 + b4  10                     loss = CE(z, y)

phi is the tempered sigmoid s sigmoid(T u) - o: |phi| <= A = max(|o|, |s - o|) and
0 < phi' <= D = s T / 4 (tanh: A = D = 1). ReLU has D = 1 but A = inf.

**One identity for every layer.** Write a layer as u_p = K^T X_p + b over positions p
(a dense layer has one position, X = its input; a convolution has one row X_p per output
position, the input patch). With delta_p = dloss/du_p, the layer's gradient is
dK = sum_p X_p delta_p^T, db = sum_p delta_p, i.e. [dK; db] = [X, 1]^T Delta, so

    ||g_l||_F <= ||[X_l, 1]||_F * ||Delta_l||_F           (||A^T B||_F <= ||A||_2 ||B||_F)

with ||[X_l, 1]||_F^2 = ||X_l||_F^2 + P_l (P_l positions). The forward factor ||X_l||_F
is bounded by the activation's range, the backward factor ||Delta_l|| by its slope and
the weights.

**Forward factors** (each entry of a1, p1, a2, h, a3 is at most A in size; max pooling
keeps the bound):
    fc2:   ||a3||^2 <= 32 A^2                fc1:  ||h||^2 <= 512 A^2
    conv2: ||X2||_F^2 = sum_p ||patch_p(p1)||^2 <= N2 A^2, N2 = 16 * (sum_i c2(i))^2 = 6400
           in-bounds (patch, entry) pairs, c2(i) the number of patches covering row i
    conv1: ||X1||_F^2 = sum_pixels c1(pixel) x_pixel^2 <= m1 ||x||^2, m1 = max c1 = 16
           (8x8 windows, stride 2: each pixel lies in at most (8/2)^2 patches).

**Backward factors.** Softmax cross-entropy: Delta4 = p - e_y and ||p - e_y||^2 =
(1 - p_y)^2 + sum_{m != y} p_m^2 <= 2 (1 - p_y)^2 <= 2 (the tight eq. (5) constant), so
e4 = sqrt(2). Then, layer by layer (||.||_2 the spectral norm):
    Delta3 = phi'(u3) * (W4 Delta4):     e3 = D ||W4||_2 e4
    Delta2 = phi'(u2) * pool^T(W3 Delta3):  e2 = D * 2 * ||W3||_2 e3
    Delta1 = phi'(u1) * pool^T(conv2^T Delta2):  e1 = D * 2 * sqrt(m2) ||K2||_2 e2
The 2x2 stride-1 max pool's adjoint routes each output gradient to its window's argmax;
one input lies in at most 4 windows, so ||pool^T v||^2 <= 4 ||v||^2 (factor 2, attained
when one entry is the maximum of 4 windows). A convolution's operator norm is at most
sqrt(m) ||K||_2, with K the (k k c_in, c_out) kernel matrix and m = max patches covering an
input (m2 = (4/2)^2 = 4): ||conv(v)||^2 = sum_p ||K^T patch_p||^2 <= ||K||_2^2 m ||v||^2.

**The bounds.**
    ||g_fc2|| <= e4 sqrt(32 A^2 + 1)        ||g_fc1||  <= e3 sqrt(512 A^2 + 1)
    ||g_conv2|| <= e2 sqrt(N2 A^2 + 25)     ||g_conv1|| <= e1 sqrt(m1 ||x||^2 + 196)
They depend on the weights only through spectral norms of the layers *above*, and on the
input only through ||x||. For tanh they hold for every example and every weight. For
ReLU (A = inf, D = 1) only conv1's bound is finite (its forward factor is the input);
conv2's, fc1's and fc2's forward factors are activation norms, which nothing bounds.
`data_dependent_bounds` replaces each forward bound by the measured ||[X_l, 1]||_F
(valid for ReLU too, D = 1): what grows there is what ReLU lets grow. Everything here is float64.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toolkit import grads as cg
from toolkit.nn import ActivationSpec

LAYERS = ("conv1", "conv2", "fc1", "fc2")
E4 = math.sqrt(2.0)  # ||p - e_y|| <= sqrt(2): the tight multiclass constant
POOL_GAIN = 2.0  # 2x2 stride-1 max pool: each input in <= 4 windows


@dataclasses.dataclass(frozen=True)
class Slope:
    """Range and slope of an activation: |phi| <= amplitude, 0 <= phi' <= slope."""

    amplitude: float  # A; inf for ReLU
    slope: float  # D


def slope_of(spec: ActivationSpec) -> Slope:
    """A = max(|o|, |s - o|), D = s T / 4 for the sigmoid family; ReLU: A = inf, D = 1."""
    if spec.name == "tanh":
        s, t, o = 2.0, 2.0, 1.0
    elif spec.name == "sigmoid":
        s, t, o = 1.0, 1.0, 0.0
    elif spec.name == "tempered":
        s, t, o = spec.scale, spec.inverse_temp, spec.offset
    elif spec.name == "relu":
        return Slope(amplitude=math.inf, slope=1.0)
    else:
        raise ValueError(f"activation={spec.name!r}: no range/slope constants here.")
    return Slope(amplitude=max(abs(o), abs(s - o)), slope=s * t / 4)


def coverage_1d(size: int, k: int, stride: int, padding: str) -> np.ndarray:
    """c(i): how many output windows of a 1-D convolution cover input i (XLA's padding)."""
    if padding == "SAME":
        out = -(-size // stride)
        lo = max((out - 1) * stride + k - size, 0) // 2
    else:
        out, lo = (size - k) // stride + 1, 0
    c = np.zeros(size, dtype=np.int64)
    for o in range(out):
        start = o * stride - lo
        c[max(start, 0) : min(start + k, size)] += 1
    return c


# MnistCNN's convolutions: (input size, kernel, stride, padding, c_in, output positions).
_CONV1 = (28, 8, 2, "SAME", 1, 14 * 14)
_CONV2 = (13, 4, 2, "VALID", 16, 5 * 5)


def _max_coverage(conv) -> int:
    size, k, stride, padding, _, _ = conv
    return int(coverage_1d(size, k, stride, padding).max()) ** 2


def _pairs(conv) -> int:
    size, k, stride, padding, cin, _ = conv
    return int(coverage_1d(size, k, stride, padding).sum()) ** 2 * cin


def spectral(kernel: np.ndarray) -> float:
    """||K||_2 of a dense (in, out) or conv (kh, kw, in, out) kernel as a matrix, float64."""
    k = np.asarray(kernel, np.float64)
    return float(np.linalg.norm(k.reshape(-1, k.shape[-1]), 2))


def _kernels(params: Mapping) -> dict[str, np.ndarray]:
    return {name: np.asarray(params[name]["kernel"][...], np.float64) for name in LAYERS}


def backward_factors(params: Mapping, slope: Slope) -> dict[str, float]:
    """Bounds on ||Delta_l||, the gradient w.r.t. each layer's pre-activation (docstring)."""
    k = _kernels(params)
    d = slope.slope
    e4 = E4
    e3 = d * spectral(k["fc2"]) * e4
    e2 = d * POOL_GAIN * spectral(k["fc1"]) * e3
    e1 = d * POOL_GAIN * math.sqrt(_max_coverage(_CONV2)) * spectral(k["conv2"]) * e2
    return {"conv1": e1, "conv2": e2, "fc1": e3, "fc2": e4}


def forward_factors(slope: Slope, input_norm: float) -> dict[str, float]:
    """Bounds on ||[X_l, 1]||_F from |phi| <= A and ||x|| (inf for ReLU's hidden layers)."""
    a2 = slope.amplitude**2
    return {
        "conv1": math.sqrt(_max_coverage(_CONV1) * input_norm**2 + _CONV1[5]),
        "conv2": math.sqrt(_pairs(_CONV2) * a2 + _CONV2[5]),
        "fc1": math.sqrt(512 * a2 + 1),
        "fc2": math.sqrt(32 * a2 + 1),
    }


def layer_bounds(params: Mapping, slope: Slope, input_norm: float) -> dict[str, float]:
    """The a-priori bound on each layer's per-example gradient norm (docstring)."""
    back, fwd = backward_factors(params, slope), forward_factors(slope, input_norm)
    return {name: back[name] * fwd[name] for name in LAYERS}


def data_dependent_bounds(params: Mapping, slope: Slope, forward: Mapping) -> dict[str, float]:
    """The same chain with each forward bound replaced by the measured ||[X_l, 1]||_F."""
    back = backward_factors(params, slope)
    return {name: back[name] * float(forward[name]) for name in LAYERS}


def intermediates(model: nnx.Module, x: jax.Array) -> dict[str, jax.Array]:
    """MnistCNN's forward pass for a batch, keeping every activation (and the logits)."""
    a1 = model.act(model.conv1(x))
    p1 = nnx.max_pool(a1, (2, 2), strides=(1, 1), padding="VALID")
    a2 = model.act(model.conv2(p1))
    h = nnx.max_pool(a2, (2, 2), strides=(1, 1), padding="VALID").reshape(x.shape[0], -1)
    a3 = model.act(model.fc1(h))
    return {"x": x, "a1": a1, "p1": p1, "a2": a2, "h": h, "a3": a3, "logits": model.fc2(a3)}


def _patch_sq(v: jax.Array, conv) -> jax.Array:
    """||X||_F^2 = sum_pixels c(pixel) v_pixel^2 for a batch of (B, H, W, C) inputs."""
    size, k, stride, padding, _, _ = conv
    c = jnp.asarray(coverage_1d(size, k, stride, padding), v.dtype)
    weight = c[:, None] * c[None, :]
    return jnp.sum(jnp.square(v) * weight[None, :, :, None], axis=(1, 2, 3))


@functools.cache
def _grads_fn(graphdef: nnx.GraphDef):
    """Jitted per-example gradients, one compilation per model structure."""
    return jax.jit(cg.per_example_grads_fn(graphdef))


def measure(model: nnx.Module, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Per example (float64 arrays, (B,)): each layer's gradient norm, the measured forward
    factors ||[X_l, 1]||_F ("fwd_<layer>"), activation norms ("act_<name>") and ||x||.

    No noise is added: on private training examples (as `experiments.hidden_layers` runs
    it) every value is a diagnostic of those examples, not covered by eps, not for release.
    """
    graphdef, params, state = cg.split_model(model)
    _, grads = _grads_fn(graphdef)(params, jnp.asarray(x), jnp.asarray(y), state)
    out = {}
    for name in LAYERS:
        sq = sum(
            jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1)
            for g in jax.tree.leaves(grads[name])
        )
        out[name] = np.sqrt(np.asarray(sq, np.float64))
    act = intermediates(model, jnp.asarray(x))
    norm = {k: np.asarray(jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1)),
                          np.float64) for k, v in act.items()}  # fmt: skip
    out["fwd_conv1"] = np.sqrt(np.asarray(_patch_sq(act["x"], _CONV1), np.float64) + _CONV1[5])
    out["fwd_conv2"] = np.sqrt(np.asarray(_patch_sq(act["p1"], _CONV2), np.float64) + _CONV2[5])
    out["fwd_fc1"] = np.sqrt(norm["h"] ** 2 + 1)
    out["fwd_fc2"] = np.sqrt(norm["a3"] ** 2 + 1)
    for k in ("x", "a1", "a2", "a3"):
        out[f"act_{k}"] = norm[k]
    return out
