"""The package's MLflow vocabulary, in one module of constants: the tag prefix, every tag key it
writes (`Tag`), the values of the run role tag (`Role`), and the one format of a plan in a tag
(docs/design.md sections 4 and 5). Imports nothing: every layer may read it."""
from __future__ import annotations

import json
from typing import Any, Mapping

TAG = "mlflow_unlearn."  # the prefix of every tag this package writes


class Role:
    """Values of the run tag `mlflow_unlearn.role` (docs/design.md section 4): what a run is."""

    ORIGINAL = "original"  # train: the model requests are made against
    RETRAIN = "retrain"  # trained from scratch on retain: the reference (cached per source, forget digest, seed, recipe)
    UNLEARN = "unlearn"  # one algorithm on the whole forget set; also each tier's nested run of a RUM run
    RUM = "rum"  # a plan applied tier by tier (the hook's job runs too)
    SEARCH = "search"  # an Optuna study over plans, scored on calibration sets
    TRIAL = "trial"  # one candidate plan of a search (nested)
    EVALUATE = "evaluate"  # metrics of an unlearned run against its reference
    REQUEST = "request"  # `attach`: the run that holds a forget-set artifact for the registry hook
    PIPELINE = "pipeline"  # `main`: the parent of a whole train -> search -> report pipeline
    MEMORIZATION = "memorization"  # the Feldman-Zhang estimate and its correlation with the proxies

    ALL = (ORIGINAL, RETRAIN, UNLEARN, RUM, SEARCH, TRIAL, EVALUATE, REQUEST, PIPELINE, MEMORIZATION)


class Tag:
    """Every tag key this package writes, in one place (docs/design.md sections 4 and 5)."""

    # runs and versions alike
    ROLE = TAG + "role"
    ALGORITHM = TAG + "algorithm"  # an algorithm name, or `rum` for a plan
    TIER = TAG + "tier"
    SOURCE_MODEL = TAG + "source_model"  # name/version of the version unlearned from
    SOURCE_VERSION = TAG + "source_version"
    FORGET_DIGEST = TAG + "forget_digest"  # sha256 of the sorted forget ids
    N_FORGET = TAG + "n_forget"
    SEED = TAG + "seed"
    RUN_ID = TAG + "run_id"  # on a version: the run that logged it
    DATASET = TAG + "dataset"
    DATASET_DIGEST = TAG + "dataset_digest"
    DIGEST = TAG + "digest"  # on a dataset input: our full sha256 (MLflow's digest column holds 36 characters)
    MODEL = TAG + "model"
    TRAIN_ACC = TAG + "train_acc"
    TEST_ACC = TAG + "test_acc"
    COST_TRAIN_FRACTION = TAG + "cost_train_fraction"  # on a version: its example passes / the original training's
    BUDGET = TAG + "budget"  # on a version: the budget (fraction of the original training) it ran under
    REGISTERED_VERSION = TAG + "registered_version"  # on a run: name/version it was registered as
    RECIPE = TAG + "recipe"  # the retrain cache key: hash of the source's training config
    TIER_HISTOGRAM = TAG + "tier_histogram"  # forget examples per train-set memorisation bin (JSON)
    UNCHANGED = TAG + "unchanged"  # a method whose predictions equal the original's
    DATASET_INPUT_ERROR = TAG + "dataset_input_error"
    # plans: the searched plan lives on the registered model, the applied plan on a version or run
    # (both `plans.Plan.to_dict()` JSON, readable by `Plan.from_dict`)
    SEARCHED_PLAN = TAG + "searched_plan"  # on a registered model: what `search` found, reused by later requests
    SEARCHED_PLAN_RUN = TAG + "searched_plan_run"  # the search run that found it
    APPLIED_PLAN = TAG + "applied_plan"  # on a version: the plan that produced it
    PLAN_NAME = TAG + "plan_name"
    PLAN_SOURCE = TAG + "plan_source"  # where the applied plan came from (registered, default, ...)
    # search
    STUDY = TAG + "study"
    TRIAL = TAG + "trial"
    SEARCH_SPACE = TAG + "search_space"
    BEST_KIND = TAG + "best_kind"  # on a search run: what won (search.best_kind: enqueued, sampled, tuned, uniform, per-tier)
    SELECTION = TAG + "selection"  # on a search run: how the registered plan was chosen among the scored ones
    OBJECTIVE = TAG + "objective"
    WORKER = TAG + "worker"  # host:pid that ran a trial
    CALIBRATION_DIGESTS = TAG + "calibration_digests"
    CALIBRATION_POOL = TAG + "calibration_pool"  # on a retrain run: the pool it left out (references.PoolSpec)
    # evaluation
    EVALUATED_RUN = TAG + "evaluated_run"
    REFERENCE_RUN = TAG + "reference_run"
    # the registry hook's ledger (hook/ledger.py): on the source version
    FORGET_SET = TAG + "forget_set"  # the request: a forget-set artifact URI
    STATUS = TAG + "status"
    JOB_REQUEST = TAG + "job_request"
    JOB_DIGEST = TAG + "job_digest"
    RESULT_VERSION = TAG + "result_version"
    ERROR = TAG + "error"
    NOTE = TAG + "note"  # status done without a new version: why
    GATE = TAG + "gate"  # on a result version: passed | escalated | retrained; on an attempt run: its verdict
    GATE_CHECKS = TAG + "gate_checks"  # JSON: check name -> [value, passed]
    QUEUED_AT = TAG + "queued_at"
    STARTED_AT = TAG + "started_at"
    FINISHED_AT = TAG + "finished_at"
    JOB_RUN = TAG + "job_run"
    REQUEST_RUN = TAG + "request_run"
    FOLLOW_ALIAS = TAG + "follow_alias"  # on the tagged version: apply the request to this alias's version at job time
    PROMOTE = TAG + "promote"  # "true": move that alias to the result
    REQUEST_VERSION = TAG + "request_version"  # on a result: the version the request was attached to
    STILL_CONTAINS = TAG + "still_contains"  # on a version an alias moved away from: what it still holds
    SUPERSEDED_BY = TAG + "superseded_by"
    HOOK_WATCH = TAG + "hook_watch"  # on a registered model: "true" opts it in to the hook (besides --models)
    # on the tagged version: earlier requests (JSON list of URIs) not answered when a newer one replaced
    # them; the next job unlearns their union. On a result version: every request it answers.
    MERGED_REQUESTS = TAG + "merged_requests"
    ANSWER = TAG + "answer"  # on a request run: what answered it (status, name/version)
    # ... and on the hook's result version
    REQUEST = TAG + "request"
    EVIDENCE = TAG + "evidence"
    METRICS = TAG + "metrics"


MAX_TAG_VALUE = 5000  # characters MLflow keeps in a tag value (runs, versions, registered models)


def plan_tag_value(plan_dict: Mapping[str, Any]) -> str:
    """A plan (`Plan.to_dict()`) as the compact JSON a tag holds, readable by `Plan.from_json`.
    Never truncated (half a JSON document is not a plan): too long is an error, raised before
    anything is registered."""
    text = json.dumps(plan_dict, separators=(",", ":"))
    if len(text) > MAX_TAG_VALUE:
        raise ValueError(f"the plan is {len(text)} characters of JSON, more than the {MAX_TAG_VALUE} an MLflow tag "
                         f"holds; use fewer tiers or fewer explicit hyperparameters (the run's plan.json keeps it all)")
    return text
