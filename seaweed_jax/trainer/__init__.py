"""Training harness: state, optimizers, EMA, checkpoints, loop, metrics, and the Task API."""
from seaweed_jax.trainer.state import TrainState
from seaweed_jax.trainer.task import TASKS, Task, get_task, register_task
