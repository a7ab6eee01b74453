"""The threat model: a `TargetOracle` answers what its access allows, counts queries, enforces a budget,
and a label-only or black-box attack cannot reach the target's module, parameters, gradients or logits."""

from __future__ import annotations

import contextlib
import copy
import pickle
import types

import pytest
import torch
from torch import nn

from workbench.api import (
    AttackCapabilities,
    AttackResult,
    DataSplits,
    QueryBudget,
    TargetOracle,
    ThreatModelError,
    WorkbenchError,
)
from workbench.running.evaluation import attack_context


def _target() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).eval()


def _x(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 2, 2, generator=torch.Generator().manual_seed(1))


def test_probabilities_are_the_softmax_and_every_image_counts():
    target = _target()
    oracle = TargetOracle(target, "black-box", 5)
    x = _x(3)
    expected = torch.softmax(target(x).double(), dim=1)
    p = oracle.probabilities(x)
    assert p.shape == (3, 5) and p.grad_fn is None and not p.requires_grad
    torch.testing.assert_close(p.double(), expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(oracle.labels(x), expected.argmax(1))
    assert oracle.queries == 6 and oracle.num_classes == 5 and oracle.budget is None


def test_label_only_answers_labels_only():
    oracle = TargetOracle(_target(), "label-only", 5)
    assert oracle.labels(_x(4)).dtype == torch.int64
    with pytest.raises(ThreatModelError, match="label-only"):
        oracle.probabilities(_x(1))
    with pytest.raises(ThreatModelError, match="not available"):
        oracle.module  # noqa: B018
    assert oracle.queries == 4  # the refused call sent nothing


def test_white_box_oracle_hands_over_the_module():
    target = _target()
    oracle = TargetOracle(target, "white-box", 5)
    assert oracle.module is target
    oracle.probabilities(_x(2))
    assert oracle.queries == 2


def test_budget_refuses_the_call_that_would_pass_it_naming_attack_budget_and_count():
    oracle = TargetOracle(_target(), "label-only", 5, budget=5, attack="brep-mi")
    oracle.labels(_x(3))
    with pytest.raises(WorkbenchError, match=r"'brep-mi'.*budget 5 .*3 images sent, 3 more"):
        oracle.labels(_x(3))
    assert oracle.queries == 3 and oracle.remaining == 2
    oracle.labels(_x(2))
    assert oracle.remaining == 0


def _reachable(root: object) -> list[object]:
    """Everything reachable from `root` by attributes, slots, `__dict__`, closures, properties and
    bound-method links, without the garbage collector. Function globals, modules and torch's own
    classes are the interpreter's, not the oracle's, and are not followed; a tensor is followed to its
    autograd graph and base."""
    seen, stack, found = set(), [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (types.ModuleType, str, bytes, int, float, bool, type(None))):
            continue
        seen.add(id(obj))
        found.append(obj)
        if isinstance(obj, torch.Tensor):
            stack.extend([obj.grad_fn, obj._base, obj.grad])
            continue
        if isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        if isinstance(obj, (dict, types.MappingProxyType)):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        for name in ("__dict__", "__closure__", "__self__", "__func__", "__wrapped__", "cell_contents",
                     "fget", "fset", "__defaults__", "__kwdefaults__"):
            with contextlib.suppress(AttributeError, ValueError, TypeError):
                stack.append(object.__getattribute__(obj, name))
        own = type(obj).__module__.startswith(("workbench", "tests", __name__, "types"))
        if not own:
            continue
        for cls in type(obj).__mro__:
            for slot in cls.__dict__.get("__slots__", ()):
                with contextlib.suppress(AttributeError, TypeError):
                    stack.append(object.__getattribute__(obj, slot))
            if cls.__module__.startswith("workbench"):
                stack.append(cls)
        for name in dir(obj):
            with contextlib.suppress(Exception):  # a refusing property is what we want
                stack.append(getattr(obj, name))
    return found


@pytest.mark.parametrize("access", ["label-only", "black-box"])
def test_a_restricted_oracle_reaches_no_module_parameter_or_logits(access):
    target = _target()
    weight = target[1].weight
    oracle = TargetOracle(target, access, 5)
    with pytest.raises(TypeError):
        vars(oracle)
    assert not hasattr(oracle, "__dict__")
    with pytest.raises(AttributeError, match="no attribute"):
        oracle.target  # noqa: B018  (__getattr__ does not forward)
    with pytest.raises(AttributeError):
        oracle._forward  # noqa: B018
    for clone in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError):
            clone(oracle)
    answer = oracle.labels(_x(2)) if access == "label-only" else oracle.probabilities(_x(2))
    for obj in _reachable(oracle) + _reachable(answer):
        assert not isinstance(obj, nn.Module), f"{access} oracle reaches the target module"
        assert obj is not weight and not isinstance(obj, nn.Parameter), f"{access} oracle reaches a parameter"
        assert not (isinstance(obj, types.FunctionType) and obj.__closure__), f"{access} oracle reaches {obj}"
    assert answer.grad_fn is None


def test_the_walk_does_find_a_module_a_careless_oracle_keeps():
    """The reachability walk is not vacuous: a closure holding the module is found."""
    target = _target()

    def leaky(x):
        return target(x)

    holder = types.SimpleNamespace(answer=leaky)
    assert any(isinstance(obj, nn.Module) for obj in _reachable(holder))


class _Params(QueryBudget):
    steps: int = 1


class _LabelOnly:
    capabilities = AttackCapabilities(access="label-only")

    def __init__(self, budget):
        self.params = _Params(query_budget=budget)

    def run(self, ctx):
        return AttackResult(images=torch.zeros(1, 3, 2, 2), targets=torch.zeros(1, dtype=torch.long))


class _WhiteBox:
    def run(self, ctx):
        raise AssertionError


def _data() -> DataSplits:
    return DataSplits(train=[], test=[], public=None, num_classes=5, in_channels=3, image_size=2)


def test_the_harness_hides_the_target_from_a_label_only_attack_and_enforces_its_budget():
    target = _target()
    ctx = attack_context("probe", _LabelOnly(4), target, data=_data(), evaluation_model=None,
                         device=torch.device("cpu"), seed=0)
    assert ctx.target is None and ctx.oracle.access == "label-only" and ctx.oracle.budget == 4
    with pytest.raises(WorkbenchError, match="'probe': query budget 4"):
        ctx.oracle.labels(_x(5))
    white = attack_context("gmi", _WhiteBox(), target, data=_data(), evaluation_model=None,
                           device=torch.device("cpu"), seed=0)
    assert white.target is target and white.oracle.module is target and white.oracle.budget is None


def test_query_budget_is_a_bounded_optional_param():
    assert _Params().query_budget is None
    with pytest.raises(ValueError, match="from 1"):
        _Params(query_budget=0)


def test_queries_are_a_column_of_every_table_beside_the_attacks_headline():
    from workbench.reporting.columns import headline_columns, results_columns
    from workbench.sweeps.aggregate import headline_figures

    variants = [{"name": "none", "attacks": {"brep-mi": {"top1": 0.4, "queries": 123_456}, "gmi": {"top1": 0.5}}}]
    for columns in (headline_columns(variants), results_columns(variants)):
        keys = [c.key for c in columns if c.section == "attacks"]
        assert keys.index("brep-mi.queries") == keys.index("brep-mi.top1") + 1 and "gmi.queries" not in keys
    sweep = {"points": [{"variants": [{"figures": {"attacks.brep-mi.top1": {}, "attacks.brep-mi.queries": {},
                                                   "attacks.gmi.top1": {}}}]}]}
    assert headline_figures(sweep) == ["attacks.brep-mi.top1", "attacks.brep-mi.queries", "attacks.gmi.top1"]
