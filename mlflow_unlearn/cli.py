"""`mlflow-unlearn` command line: one subcommand per pipeline step (the MLproject entry points call
these). Known input errors print one line naming the problem and exit with status 2."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


from .cli_types import algorithm_list as _algorithm_list  # noqa: E402
from .cli_types import boolean as _bool  # noqa: E402
from .cli_types import budget as _budget  # noqa: E402
from .cli_types import dataset as _dataset  # noqa: E402
from .cli_types import dataset_help, model_help  # noqa: E402
from .cli_types import model_name as _model  # noqa: E402
from .cli_types import device as _device  # noqa: E402
from .cli_types import max_epochs as _max_epochs  # noqa: E402
from .cli_types import none_or as _none_or  # noqa: E402
from .cli_types import positive_whole_number, whole_number as _int  # noqa: E402
from .cli_types import strategy as _strategy  # noqa: E402


def _add_train(sub):
    p = sub.add_parser("train", help="train an original model, record per-example confidences, log and register it")
    p.add_argument("--dataset", type=_dataset, default="digits",
                   help=f"{dataset_help()} (default: digits)")
    p.add_argument("--model", type=_model, default="small_cnn", help=f"{model_help()} (default: small_cnn)")
    p.add_argument("--epochs", type=_int, default=15)
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate, cosine-decayed per step")
    p.add_argument("--batch-size", type=_int, default=64)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=_int, default=0)
    p.add_argument("--augment", type=_none_or(_bool), default=None, help="crop+flip; default: what suits the dataset")
    p.add_argument("--subset", type=_none_or(_int), default=None, help="keep a seeded subset of N train examples")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of train held out as a validation split (selection uses it instead of test; default 0.1)")
    p.add_argument("--root", type=_none_or(str), default=None, help="where cifar10/cifar100 live")
    p.add_argument("--download", type=_bool, default=False)
    p.add_argument("--width", type=_none_or(_int), default=None, help="model width (channels of the first stage)")
    p.add_argument("--registered-model-name", type=_none_or(str), default=None)
    p.add_argument("--device", type=_device, default="auto")
    p.add_argument("--experiment", type=_none_or(str), default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--calibration-reference", type=_bool, default=False,
                   help="also retrain the model's calibration reference now (one retrain without its calibration pool), "
                        "so no later search or registry request waits for it (default false: the first search pays it)")
    _add_calibration_size(p)

    def run(a):
        from .steps import train_step

        train_step(dataset=a.dataset, model=a.model, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
                   momentum=a.momentum, weight_decay=a.weight_decay, seed=a.seed, augment=a.augment, subset=a.subset,
                   val_fraction=a.val_fraction, root=a.root, download=a.download, width=a.width,
                   registered_model_name=a.registered_model_name, device=a.device, experiment=a.experiment,
                   progress=not a.no_progress, calibration_reference=a.calibration_reference,
                   calibration_size=a.calibration_size)

    p.set_defaults(func=run)


def _add_forget_args(p):
    p.add_argument("--model-uri", required=True, help="models:/<name>/<version> or models:/<name>@<alias> (the source)")
    p.add_argument("--forget", required=True,
                   help="a file of ids (.txt/.json/.npy/.csv), an MLflow artifact URI, or random:N | class:K | mix:N | tiers:low=N,mid=N,high=N")
    p.add_argument("--seed", type=_int, default=0)
    p.add_argument("--device", type=_device, default="auto")
    p.add_argument("--experiment", type=_none_or(str), default=None)


def _add_calibration_size(p):
    p.add_argument("--calibration-size", type=_none_or(positive_whole_number), default=None,
                   help="the calibration pool is the calibration sets of a mix request of this many examples (default: "
                        "6%% of train, or the request's size if larger; a cached pool that matches the request is reused)")


def _add_budget(p):
    from .compute import DEFAULT_BUDGET

    p.add_argument("--budget", type=_budget, default=DEFAULT_BUDGET,
                   help=f"the most compute the request may use, as a fraction in (0, 1] of the original training's "
                        f"example passes (default {DEFAULT_BUDGET}); algorithms plan their steps to fit, a plan divides "
                        f"it over its tiers; `retrain` is exact and not limited")


def _add_retrain(sub):
    p = sub.add_parser("retrain", help="train from scratch on retain (the reference); cached per source, forget set and seed")
    _add_forget_args(p)
    p.add_argument("--epochs", type=_none_or(_int), default=None, help="default: the source's training epochs")
    p.add_argument("--no-cache", action="store_true")

    def run(a):
        from .steps import retrain_step

        retrain_step(a.model_uri, a.forget, seed=a.seed, epochs=a.epochs, device=a.device, experiment=a.experiment,
                     use_cache=not a.no_cache)

    p.set_defaults(func=run)


def _add_unlearn(sub):
    p = sub.add_parser("unlearn", help="unlearn a forget set with one algorithm; optionally register a new version")
    _add_forget_args(p)
    p.add_argument("--algorithm", required=True)
    p.add_argument("--hyperparameters", default="", help="'lr=0.01,epochs=3' or a JSON object")
    p.add_argument("--register", type=_bool, default=False)
    p.add_argument("--evaluate", type=_bool, default=False, help="also evaluate against the (cached) retrained reference")
    _add_budget(p)

    def run(a):
        from .steps import unlearn_step

        unlearn_step(a.model_uri, a.forget, a.algorithm, a.hyperparameters, seed=a.seed, register=a.register,
                     evaluate_against_retrain=a.evaluate, device=a.device, experiment=a.experiment, budget=a.budget)

    p.set_defaults(func=run)


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="every unlearning metric of an unlearned run against the retrained reference")
    _add_forget_args(p)
    p.add_argument("--run-id", required=True, help="the unlearn (or rum) run to evaluate")

    def run(a):
        from .steps import evaluate_step

        evaluate_step(a.model_uri, a.forget, a.run_id, seed=a.seed, device=a.device, experiment=a.experiment)

    p.set_defaults(func=run)


def _range_text(rng) -> str:
    from .algorithms import Choice, IntRange

    if isinstance(rng, Choice):
        return "in {" + ", ".join(map(str, rng.values)) + "}"
    high = "max_epochs" if isinstance(rng, IntRange) and rng.high is None else rng.high
    return f"in [{rng.low}, {high}]" + (" (log)" if rng.log else "")


def _add_algorithms(sub):
    p = sub.add_parser("algorithms", help="list the registered algorithms and their hyperparameters")

    def run(a):
        from .algorithms import ALGORITHMS, default_search_algorithms, hyperparameters, search_space

        default = set(default_search_algorithms())
        for name in ALGORITHMS.names():
            print(f"{name}: " + ", ".join(f"{k}={v!r}" for k, v in hyperparameters(name).items()))
            space = search_space(name)
            searched = ", ".join(f"{k} {_range_text(r)}" for k, r in space.items()) or "its defaults only"
            print(f"    searched: {searched}{'; in the default search' if name in default else ''}")

    p.set_defaults(func=run)


def _add_rum(sub):
    p = sub.add_parser("rum", help="unlearn tier by tier with a plan; optionally register a new version")
    _add_forget_args(p)
    p.add_argument("--plan", default="auto",
                   help="auto (the searched plan registered on the model, else default) | registered | default | "
                        "a .json/.yaml file | 'low=none;mid=finetune(lr=0.01);high=neggrad_plus(alpha=0.95)'")
    p.add_argument("--register", type=_bool, default=False)
    p.add_argument("--evaluate", type=_bool, default=False, help="also evaluate against the (cached) retrained reference")
    _add_budget(p)

    def run(a):
        from .steps import rum_step

        rum_step(a.model_uri, a.forget, a.plan, seed=a.seed, register=a.register, evaluate_against_retrain=a.evaluate,
                 device=a.device, experiment=a.experiment, budget=a.budget)

    p.set_defaults(func=run)


def _add_search(sub):
    p = sub.add_parser("search", help="Optuna search for the per-tier plan; attaches the best plan to the registered model")
    _add_forget_args(p)
    p.add_argument("--n-trials", type=_int, default=20, help="trials in each study (shared by all workers of a study): "
                   "each algorithm's tuning and the per-tier composition; a joint search needs at least 1 + 2 x the "
                   "algorithms other than none (their defaults are its first trials)")
    p.add_argument("--strategy", type=_strategy, default="composed",
                   help="how the RUM plan is searched: composed (default: tune every algorithm on the whole "
                        "calibration sets, then pick one tuned/default algorithm per tier; costs a tuning per "
                        "algorithm) or joint (one study samples every tier's algorithm and hyperparameters)")
    p.add_argument("--calibration-sets", type=_int, default=2, help="calibration forget sets like the request, each "
                   "with its own reference; the search is scored on them, never on the request")
    p.add_argument("--objective", default="tow", help="what the search optimises: tow (default), tow_mia, tow_pe, "
                   "mia/gap, any score key a plugin metric declares, or tow+cost (Pareto front of ToW against compute, cost/train_fraction)")
    p.add_argument("--algorithms", type=_algorithm_list, default=None,
                   help="comma-separated search space, or `default` (none plus every registered algorithm declared "
                        "for the default search; `mlflow-unlearn algorithms` lists them)")
    p.add_argument("--max-epochs", type=_max_epochs, default="auto",
                   help="bound on the searched epochs: auto (default: the epochs over retain the budget pays for, "
                        "so a tuned setting can spend the whole budget) or a whole number")
    p.add_argument("--storage", type=_none_or(str), default=None, help="Optuna RDB URL (default: sqlite optuna.db beside mlflow.db)")
    p.add_argument("--study-name", type=_none_or(str), default=None, help="join this study (several workers share one)")
    p.add_argument("--trial-runs", type=_bool, default=False,
                   help="log every search trial as a nested MLflow run (default false: the trials stay in the Optuna "
                        "storage and the search run's trials.json table)")
    p.add_argument("--calibration-noise", type=_bool, default=False,
                   help="retrain the calibration reference a second time (another seed) to measure the calibration "
                        "noise, and register the cheapest plan within it of the best (default false: the best plan, "
                        "the cheapest among equals)")
    _add_calibration_size(p)
    _add_budget(p)

    def run(a):
        from .search import search_step

        search_step(a.model_uri, a.forget, n_trials=a.n_trials, objective=a.objective, algorithms=a.algorithms,
                    max_epochs=a.max_epochs, storage=a.storage, study_name=a.study_name, seed=a.seed,
                    calibration_sets=a.calibration_sets, device=a.device, experiment=a.experiment, budget=a.budget,
                    calibration_noise=a.calibration_noise, calibration_size=a.calibration_size,
                    trial_runs=a.trial_runs, strategy=a.strategy)

    p.set_defaults(func=run)


def _add_memorization(sub):
    p = sub.add_parser("memorization", help="Feldman-Zhang memorisation estimate and its correlation with the proxies")
    p.add_argument("--model-uri", required=True)
    p.add_argument("--n-models", type=_int, default=16)
    p.add_argument("--subset-fraction", type=float, default=0.7, help="fraction of train each model sees (not percent)")
    p.add_argument("--epochs", type=_none_or(_int), default=None)
    p.add_argument("--workers", type=_int, default=1, help="models trained in parallel processes")
    p.add_argument("--workdir", type=_none_or(str), default=None, help="resume folder (default ./memorization/<model>-v<version>)")
    p.add_argument("--seed", type=_int, default=0)
    p.add_argument("--device", type=_device, default="auto")
    p.add_argument("--experiment", type=_none_or(str), default=None)

    def run(a):
        from .steps import memorization_step

        memorization_step(a.model_uri, n_models=a.n_models, subset_fraction=a.subset_fraction, epochs=a.epochs,
                          n_workers=a.workers, workdir=a.workdir, seed=a.seed, device=a.device, experiment=a.experiment)

    p.set_defaults(func=run)


def _add_main(sub):
    p = sub.add_parser("main", help="the whole pipeline: train, forget set, retrain, search, RUM, baselines, evaluate")
    p.add_argument("--dataset", type=_dataset, default="digits-noisy",
                   help="default digits-noisy: digits with 10%% of train labels flipped (seeded), the examples a network "
                        f"memorises; clean `digits` has almost nothing to unlearn ({dataset_help()})")
    p.add_argument("--model", type=_model, default="small_cnn", help=f"{model_help()} (default: small_cnn)")
    p.add_argument("--epochs", type=_int, default=30, help="default 30: enough to memorise the flipped labels")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=_int, default=64)
    p.add_argument("--width", type=_none_or(_int), default=None)
    p.add_argument("--subset", type=_none_or(_int), default=None)
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation split used for selection")
    p.add_argument("--forget", default="mix:90")
    p.add_argument("--n-trials", type=_int, default=16, help="trial budget of the RUM search and of each tuned baseline")
    p.add_argument("--strategy", type=_strategy, default="composed",
                   help="how the RUM plan is searched: composed (default: tune every algorithm on the whole "
                        "calibration sets, then pick one tuned/default algorithm per tier; costs a tuning per "
                        "algorithm) or joint (one study samples every tier's algorithm and hyperparameters)")
    p.add_argument("--calibration-sets", type=_int, default=2)
    p.add_argument("--unlearn-seeds", type=_int, default=3, help="unlearning seeds per reported method (mean, 95%% interval)")
    p.add_argument("--max-epochs", type=_max_epochs, default="auto",
                   help="bound on the searched epochs: auto (default: the epochs over retain the budget pays for, "
                        "so a tuned setting can spend the whole budget) or a whole number")
    p.add_argument("--objective", default="tow")
    p.add_argument("--baselines", type=_algorithm_list, default="finetune,neggrad_plus,salun,scrub",
                   help="comma-separated algorithms reported at defaults and tuned beside RUM (default: the CIFAR "
                        "benchmark's four), or `default` (every "
                        "registered algorithm declared for the default search; `mlflow-unlearn algorithms` lists them)")
    p.add_argument("--seed", type=_int, default=0)
    p.add_argument("--registered-model-name", type=_none_or(str), default=None)
    p.add_argument("--storage", type=_none_or(str), default=None)
    p.add_argument("--device", type=_device, default="auto")
    p.add_argument("--experiment", type=_none_or(str), default=None)
    p.add_argument("--trial-runs", type=_bool, default=False,
                   help="log every search trial as a nested MLflow run (default false: the trials stay in the Optuna "
                        "storage and the search run's trials.json table)")
    p.add_argument("--calibration-noise", type=_bool, default=False,
                   help="a second calibration reference to measure the calibration noise; the registered RUM plan is "
                        "then the cheapest within it of the best (default false)")
    _add_calibration_size(p)
    _add_budget(p)

    def run(a):
        from .pipeline import main_step

        main_step(dataset=a.dataset, model=a.model, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, width=a.width,
                  subset=a.subset, val_fraction=a.val_fraction, forget=a.forget, n_trials=a.n_trials,
                  calibration_sets=a.calibration_sets, unlearn_seeds=a.unlearn_seeds, max_epochs=a.max_epochs,
                  objective=a.objective,
                  baselines=a.baselines, seed=a.seed,
                  registered_model_name=a.registered_model_name, storage=a.storage, device=a.device, experiment=a.experiment,
                  budget=a.budget, calibration_noise=a.calibration_noise, calibration_size=a.calibration_size,
                  trial_runs=a.trial_runs, strategy=a.strategy)

    p.set_defaults(func=run)


SUBCOMMANDS = [_add_train, _add_retrain, _add_unlearn, _add_evaluate, _add_rum, _add_search, _add_memorization,
               _add_algorithms, _add_main]


def _add_attach(sub):
    from .hook.cli import add_attach

    add_attach(sub)


def _add_hook(sub):
    from .hook.cli import add_hook

    add_hook(sub)


SUBCOMMANDS += [_add_attach, _add_hook]  # the registry hook (mlflow_unlearn/hook/cli.py)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlflow-unlearn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from ._registry import UnknownComponentError
    from .tracking import MissingArtifactError, TrackingError
    from mlflow.exceptions import MlflowException

    return (ValueError, UnknownComponentError, MissingArtifactError, TrackingError, FileNotFoundError, MlflowException)


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*Pickle or CloudPickle.*")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except _user_errors() as exc:
        print(f"mlflow-unlearn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
