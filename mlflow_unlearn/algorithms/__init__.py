"""Unlearning algorithms, looked up by name.

    from mlflow_unlearn.algorithms import TrainRecipe, UnlearnData, run_algorithm, hyperparameters
    data = UnlearnData.from_forget(image_data, forget_ids)      # retain = train minus forget
    new_model = run_algorithm("neggrad_plus", model, data, {"lr": "0.01", "alpha": 0.95}, seed=0)

    # how the source was trained, so that `retrain` replays it exactly (optional)
    recipe = TrainRecipe(lambda seed: build_model("small_cnn", num_classes=10, input_shape=shape, seed=seed),
                         train_config)
    data = UnlearnData.from_forget(image_data, forget_ids, recipe=recipe)

`UnlearnData.augment` (default False) switches crop + flip augmentation of unlearning batches on;
the dataset's own `augment` setting does not.

Every algorithm is a function `fn(model, data, *, <hyperparameters with defaults>, seed=0, log=None)
-> nn.Module`; its keyword-only parameters are its hyperparameters (`hyperparameters(name)` lists
them with their defaults) and `validate_hyperparameters` checks types and ranges in one place, by
parameter name: `lr` > 0; `epochs`, `batch_size` >= 1; `alpha` in [0, 1]; `*fraction` in (0, 1];
`momentum` in [0, 1); `weight_decay`, `scale`, `beta`, `gamma`, `alpha_*`, `*_weight` >= 0;
`temperature`, `damping` > 0; `*steps` >= 0; `*_samples` >= 1. Values are converted to the type of
the default, so strings from a command line ("0.01", "5", "true") work.

Search spaces are declared with the algorithm (`space.py`): `ALGORITHMS.register(name,
search_space={"lr": FloatRange(1e-3, 0.2, log=True), "epochs": EPOCHS}, default_search=True)`, or
`@declare_algorithm(...)` on a plugin's function; the search reads them, so a plugin algorithm is
searched like a built-in. Adding an algorithm = one function + one registration.

Built-ins (see `builtin.py` for each one's source and defaults): none, finetune, l1_sparse, neggrad,
neggrad_plus, scrub, random_label, salun, influence, retrain. Third-party packages add algorithms
through the entry-point group `mlflow_unlearn.algorithms` (see plugins/mlflow-unlearn-example).

The iterative built-ins share one batch-size rule (`effective_batch_size`, `MIN_RETAIN_BATCHES`,
`MIN_FORGET_BATCHES`; see `builtin.py`): `batch_size` is an upper bound, lowered so that an epoch
has enough optimiser steps on small sets; plugins can use the same helper.

Compute and budget (`mlflow_unlearn.compute`): `run_algorithm(..., meter=ComputeMeter(limit))`
counts the run's example passes (forward + backward) and eval passes, and holds its limit. An
algorithm that takes a `meter` argument plans its optimiser steps to fit (`fit_steps`,
`ensure_passes`); the built-ins do, drawing retain batches from reshuffled passes so their cost
follows the budget and the forget set rather than the size of retain. For any other algorithm the
meter stops the run at the first forward pass with gradients past the limit and the model as of
the last completed step is returned. Algorithms declared `exact=True` (`retrain`) are counted but
never limited.

Per-epoch losses go to `log.log_metrics({"unlearn/...": value}, step=epoch)`; the built-ins also
log `unlearn/batch_size` and `unlearn/steps` at step 0. Progress bars are off unless the
environment variable MLFLOW_UNLEARN_PROGRESS=1.
"""
from ._base import (
    ALGORITHMS,
    NOT_HYPERPARAMETERS,
    PROGRESS_ENV,
    HyperparameterError,
    Loop,
    TrainRecipe,
    UnlearnData,
    ensure_passes,
    fit_steps,
    hyperparameters,
    is_exact,
    progress_enabled,
    run_algorithm,
    run_validated,
    seeded,
    validate_hyperparameters,
)
from .space import (
    EPOCHS,
    Choice,
    FloatRange,
    IntRange,
    SearchSpaceError,
    declare_algorithm,
    default_search_algorithms,
    search_space,
)
from . import builtin  # noqa: F401  (registers the built-ins)
from .builtin import MIN_FORGET_BATCHES, MIN_RETAIN_BATCHES, effective_batch_size, forget_gradients, saliency_mask

__all__ = [
    "ALGORITHMS",
    "EPOCHS",
    "Choice",
    "FloatRange",
    "IntRange",
    "SearchSpaceError",
    "declare_algorithm",
    "default_search_algorithms",
    "search_space",
    "HyperparameterError",
    "Loop",
    "MIN_FORGET_BATCHES",
    "MIN_RETAIN_BATCHES",
    "NOT_HYPERPARAMETERS",
    "PROGRESS_ENV",
    "TrainRecipe",
    "UnlearnData",
    "effective_batch_size",
    "ensure_passes",
    "fit_steps",
    "is_exact",
    "forget_gradients",
    "hyperparameters",
    "progress_enabled",
    "run_algorithm",
    "run_validated",
    "saliency_mask",
    "seeded",
    "validate_hyperparameters",
]
