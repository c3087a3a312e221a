"""Models of onnlab: the optical frontend, digital backends, hybrid ONN, teachers, zoo."""

from onnlab.models.frontend import OpticalFrontend
from onnlab.models.hybrid import HybridONN
from onnlab.models.zoo import TASKS, TaskSpec, build_student, build_teacher

__all__ = ["TASKS", "HybridONN", "OpticalFrontend", "TaskSpec", "build_student", "build_teacher"]
