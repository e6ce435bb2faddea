"""The names a setting may take, apart from the JAX code that implements them.

Configuration and validation (`toolkit.runs`) check a name against these tuples without
importing the modules that run it; each implementing module imports its tuple from here.
"""

ACCOUNTANTS: tuple[str, ...] = ("rdp", "rdp-classic", "pld")  # toolkit.privacy.accounting
SAMPLINGS: tuple[str, ...] = ("poisson", "shuffle")  # toolkit.privacy._sampling
CLIPPING_RULES: tuple[str, ...] = (  # toolkit.grads.clipping
    "flat",
    "automatic",
    "quantile",
    "per-layer",
)
LAYER_SPLITS: tuple[str, ...] = ("equal", "size")  # per-layer clipping's C_l
IMPLEMENTATIONS: tuple[str, ...] = ("auto", "bookkeeping", "vmap")  # toolkit.grads._per_example
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")  # toolkit.training._dpsgd
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")  # toolkit.training._dpsgd
MODELS: tuple[str, ...] = ("paper-cnn",)  # toolkit.nn._models: the paper's CNN for the data
LOSSES: tuple[str, ...] = (  # toolkit.grads._per_example
    "softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
)
