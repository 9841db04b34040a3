"""The vocabulary (tags.py): one prefix, no key written twice under two names, a plan's tag never cut."""
import pytest

from mlflow_unlearn.tags import MAX_TAG_VALUE, TAG, Role, Tag, plan_tag_value


def test_every_tag_key_is_prefixed_and_distinct():
    keys = {name: value for name, value in vars(Tag).items() if name.isupper()}
    assert keys and all(v.startswith(TAG) for v in keys.values())
    assert len(set(keys.values())) == len(keys), "two Tag names share one key"
    assert len(set(Role.ALL)) == len(Role.ALL) and Role.EVALUATE in Role.ALL


def test_a_plan_too_long_for_a_tag_is_refused_not_truncated():
    small = {"steps": [{"tier": "all", "algorithm": "none", "hyperparameters": {}}]}
    assert plan_tag_value(small) == '{"steps":[{"tier":"all","algorithm":"none","hyperparameters":{}}]}'
    huge = {"steps": [{"tier": f"t{i}", "algorithm": "finetune", "hyperparameters": {"lr": 0.1}} for i in range(200)]}
    with pytest.raises(ValueError, match=f"more than the {MAX_TAG_VALUE} an MLflow tag holds"):
        plan_tag_value(huge)
