"""Training and evaluation through Accelerate, for the three tasks, as a Python API and the `upetu-train` /
`upetu-eval` commands.

```python
from upetu_hf.train import TrainingArguments, train

metrics = train(TrainingArguments(task="classification", model="<ConvNeXt checkpoint>", data="<folder>",
                                  output_dir="runs/ucm-upetu", train_fraction=0.5, validation_fraction=0.1))
```

A batch goes `arguments` (the run's description) -> `tasks` (data and model of the task) -> `bands` (what the
scan of the images decides: bands, per-band statistics, the stem, crops per scene) -> `loaders` ->
`loop` (`train`) -> `inference` (`evaluate_loader`), with `methods` building the model to train and
`checkpoint` / `output_dir` / `tracking` keeping what the run writes. This package may import every other part of
`upetu_hf`; nothing else imports it.
"""

from .arguments import TASK_METRICS, TASKS, EvalArguments, RunRecord, TrainingArguments
from .inference import evaluate_model, load_run, load_trained_model
from .loop import train
from .methods import DEFAULT_LR, METHODS, PEFT_METHODS, apply_method, parameter_groups, parameter_summary
from .tasks import TaskData, TaskSpec, get_task

__all__ = [
    "DEFAULT_LR",
    "METHODS",
    "PEFT_METHODS",
    "TASKS",
    "TASK_METRICS",
    "EvalArguments",
    "RunRecord",
    "TaskData",
    "TaskSpec",
    "TrainingArguments",
    "apply_method",
    "evaluate_model",
    "get_task",
    "load_run",
    "load_trained_model",
    "parameter_groups",
    "parameter_summary",
    "train",
]
