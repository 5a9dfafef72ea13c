"""The papers' algorithms as printed: the one home of the oracles that the tests and the benchmark
check saln_exp's selectors against.

Nothing here is used for training: the selectors implement the same rules faster. The oracles are
deliberately naive (loops, lists, numpy instead of torch) so that they share no code and no
shortcuts with the selectors; each is transcribed from its paper, or from its authors' code where
that is the reference (the module cites repository, file and commit), and line comments cite the
pseudo-code. Deviations would defeat the purpose, so none are made.

One module per paper: `saln` (Algorithm 1), `assist` (Algorithms 3-7 and the loss-based random
selectors), `rho` (RHO-LOSS), `jest` (JEST's joint sampling), `selective_backprop` and `infobatch`
(their authors' code); `losses` holds the numpy loss and softmax they share.
"""

from oracles.assist import (
    assist_alg3_topk,
    assist_alg4_buckets,
    assist_alg4_qsplit,
    assist_alg5_hard_accuracy_topk,
    assist_alg6_soft_accuracy,
    assist_alg7_accuracy,
    assist_topq,
    loss_weighted,
)
from oracles.jest import jest_joint_sampling
from oracles.losses import cross_entropy, softmax
from oracles.rho import rho_loss
from oracles.saln import saln_algorithm1, saln_algorithm1_float64

__all__ = [
    "assist_alg3_topk",
    "assist_alg4_buckets",
    "assist_alg4_qsplit",
    "assist_alg5_hard_accuracy_topk",
    "assist_alg6_soft_accuracy",
    "assist_alg7_accuracy",
    "assist_topq",
    "cross_entropy",
    "jest_joint_sampling",
    "loss_weighted",
    "rho_loss",
    "saln_algorithm1",
    "saln_algorithm1_float64",
    "softmax",
]
