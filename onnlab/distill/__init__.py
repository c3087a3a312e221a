"""Neural Tangent Knowledge Distillation: empirical NTK Grams, Gram losses, the NTKD objective.

`ntk_gram` (onnlab.distill.ntk) computes a batch's B x B empirical NTK exactly (structured,
`"exact"`), by the vmap/jacrev oracle (`"jacobian"`) or by sketches (`"jvp"`, `"output"`);
`ntkd_loss` (onnlab.distill.losses) compares normalised Grams; `NTKDObjective`
(onnlab.distill.objective) is the training-contract loss alpha*task + beta*NTKD (+ KD), built on
the task and logit-KD losses of onnlab.distill.task_losses (a leaf: training imports it too).
"""

from onnlab.distill.losses import NORMALISATIONS, centre_gram, cka, ntkd_loss
from onnlab.distill.ntk import ESTIMATORS, RandomOutputProjection, default_output_fn, ntk_gram
from onnlab.distill.objective import NTKDObjective

__all__ = [
    "ESTIMATORS",
    "NORMALISATIONS",
    "NTKDObjective",
    "RandomOutputProjection",
    "centre_gram",
    "cka",
    "default_output_fn",
    "ntk_gram",
    "ntkd_loss",
]
