"""Models of onnlab: the optical frontend, digital backends, hybrid ONN, teachers, zoo."""

from onnlab.models.frontend import OpticalFrontend
from onnlab.models.hybrid import HybridONN
from onnlab.models.phase_frontend import PhaseMaskFrontend, PhaseSystem, default_optics
from onnlab.models.zoo import TASKS, TaskSpec, build_student, build_teacher, student_system

__all__ = [
    "TASKS",
    "HybridONN",
    "OpticalFrontend",
    "PhaseMaskFrontend",
    "PhaseSystem",
    "TaskSpec",
    "build_student",
    "build_teacher",
    "default_optics",
    "student_system",
]
