"""Validation-only selection, enforced: every method that chooses something while fitting
(a hyper-parameter, an epoch, a prompt set) chooses the same thing, and predicts the same
logits, when the test split's labels are shuffled. The runner is used exactly as `fewshot
run` uses it (tests/_selection.py), so a leak anywhere between the data and the method
would show here. Tip-Adapter's original protocol, the one path that reads test data, is
tested in tests/test_tip_adapter.py.
"""

from __future__ import annotations

import pytest

from ._selection import assert_selection_ignores_test

# Each method with fast settings and the keys its selected() must report.
SELECTING = [
    ("tip-adapter", (("search_step", "40,10"),), {"beta", "alpha"}),
    ("tip-adapter-f", (("search_step", "40,10"), ("epochs", "2")), {"beta", "alpha"}),
    ("clip-adapter", (("epochs", "5"), ("select_alpha", "true")), {"alpha"}),
    ("lp++", (("epochs", "30"),), {"epoch"}),
    ("sgva-clip", (("epochs", "3"),), {"lambda"}),
    ("clap", (("epochs", "20"),), set()),
    ("linear-probe", (("search_steps", "2"),), set()),
]


@pytest.mark.parametrize(("method", "overrides", "keys"), SELECTING, ids=[m for m, _, _ in SELECTING])
def test_shuffled_test_labels_change_no_choice(method, overrides, keys, monkeypatch, feature_cache):
    chosen = assert_selection_ignores_test(monkeypatch, feature_cache, method, overrides)
    assert keys <= set(chosen)


def test_proapo_prompt_sets_ignore_test_labels(monkeypatch, feature_cache):
    """ProAPO's chosen templates and per-class prompt sets (its whole selection) are the
    same with the test labels shuffled."""
    fast = (("epochs", "2"), ("epochs_outer", "1"))
    chosen = assert_selection_ignores_test(
        monkeypatch, feature_cache, "proapo", fast, dataset="toy-shapes", shots=1
    )
    assert chosen["templates"] and chosen["items_hash"]
