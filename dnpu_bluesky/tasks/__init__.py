"""Learning tasks, losses, metrics and optimizers for training a device on its output current.

Pure numpy/scipy: nothing here imports bluesky or ophyd, so tasks can be used without a
RunEngine. A training step presents ``task.input_voltages()`` to the device, measures one output
current per case and the HGE Jacobian ``dI_k/dV_j``, takes ``loss, dL_dI = task.loss(I)`` and
feeds ``dL_dI @ jacobian`` to an optimizer's ``step``.
"""

from dnpu_bluesky.tasks.base import Task
from dnpu_bluesky.tasks.boolean import GATES, BooleanGate
from dnpu_bluesky.tasks.losses import (
    LOSSES,
    corrsig_loss,
    margin_loss,
    mse_loss,
    sigmoid_classification_loss,
)
from dnpu_bluesky.tasks.metrics import TaskScore, accuracy_and_threshold, separation_margin
from dnpu_bluesky.tasks.optimizers import Adam, GradientDescent, Optimizer, make_optimizer
from dnpu_bluesky.tasks.registry import make_task, task_from_description
from dnpu_bluesky.tasks.sphere import SphereClassification

__all__ = [
    "GATES",
    "LOSSES",
    "Adam",
    "BooleanGate",
    "GradientDescent",
    "Optimizer",
    "SphereClassification",
    "Task",
    "TaskScore",
    "accuracy_and_threshold",
    "corrsig_loss",
    "make_optimizer",
    "make_task",
    "margin_loss",
    "mse_loss",
    "separation_margin",
    "sigmoid_classification_loss",
    "task_from_description",
]
