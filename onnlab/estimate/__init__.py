"""Pre-fabrication accuracy estimation (issue 8).

How well can a frontend of K random physical PSFs + a digital readout do, and how much would
infinitely many kernels add? Kernel regression with the network's NTK answers both without
training: `design_network` turns physical constraints into the network (Eq. 1 layout),
`Estimator` predicts accuracy / mIoU for K given or random PSFs and for K -> infinity, and
`train_reference` (in `onnlab.estimate.reference`, imports the model zoo) trains the same
network to check the prediction.
"""

from onnlab.estimate.design import TASK_DEFAULTS, NetworkDesign, design_network
from onnlab.estimate.estimator import Architecture, Estimator, Prediction, Split
from onnlab.estimate.priors import PsfPrior

__all__ = [
    "TASK_DEFAULTS",
    "Architecture",
    "Estimator",
    "NetworkDesign",
    "Prediction",
    "PsfPrior",
    "Split",
    "design_network",
]
