"""Parameter overrides a stage node does not declare: said in one line each, never silently dropped.

rclpy drops an override for a parameter the node never declares (``allow_undeclared_parameters``
is off, as in rclcpp), so a launch yaml's typo, or a parameter set on the stage it has moved away
from, would do nothing and say nothing. The nodes warn instead of failing: a parameters file is
shared by many nodes (its ``/**`` block, other packages' nodes on a robot), and a leftover key must
not take a robot's launch down. What is warned about:

* an override written for this node (its own block, a ``-p`` rule, its launch dict, the
  constructor's ``parameter_overrides``) that it does not declare: where the parameter lives now
  for a known move, else which stage declares it, else that no stage does;
* an override of a shared block that no stage of the package declares (a typo there reaches no one).

A shared block's parameter that another stage declares is that stage's (the shipped
``config/cascade.yaml`` gives the refiner's and verifier's ``mode`` to all three): not a mistake.
The demo and replay refuse such parameters outright (:func:`check_pipeline_params`): whoever typed
``--param`` is at the terminal.
"""

from __future__ import annotations

import importlib
from typing import Any, Collection, Mapping

from cascade_sd_ros.core.names import NODE_OF_STAGE

# (node, parameter) -> the node it moved to (issue 18: the offset is measured in the drafter)
MOVED: dict[tuple[str, str], str] = {
    ("video_verifier", name): "event_drafter"
    for name in ("estimate_offset", "frame_offset_bound", "trigger_channel", "trigger_edge")
}
# declared by rclpy itself in every node: an override for it is never ignored
RCLPY_PARAMS = frozenset({"use_sim_time", "start_type_description_service"})


def _params_by_node() -> dict[str, tuple[Any, ...]]:
    """Each stage node's declared ``Param``s (its module's ``PARAMS``)."""
    return {
        node: tuple(importlib.import_module(f"cascade_sd_ros.nodes.{node}").PARAMS) for node in NODE_OF_STAGE.values()
    }


def declared_by_node() -> dict[str, frozenset[str]]:
    """Each stage node's declared parameter names, rclpy's own included."""
    return {node: frozenset(p.name for p in params) | RCLPY_PARAMS for node, params in _params_by_node().items()}


def float_params_by_node() -> dict[str, frozenset[str]]:
    """Each stage node's parameters of type double (their ``Param`` default is a float)."""
    return {
        node: frozenset(p.name for p in params if isinstance(p.default, float))
        for node, params in _params_by_node().items()
    }


def as_declared_floats(params: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, object]]:
    """The overrides with a whole number given for a double parameter made a float: rclpy refuses
    ``draft_wait=0`` as INTEGER for a DOUBLE parameter and the stage exits, while the user meant 0.0
    (``common`` values: a double parameter of any stage)."""
    floats = float_params_by_node()
    every = frozenset().union(*floats.values())
    out: dict[str, dict[str, object]] = {}
    for section, values in params.items():
        names = every if section == "common" else floats.get(section, frozenset())
        out[section] = {
            n: float(v) if n in names and isinstance(v, int) and not isinstance(v, bool) else v
            for n, v in values.items()
        }
    return out


def ignored_override(node: str, name: str, named: bool, declared: Mapping[str, Collection[str]]) -> str | None:
    """The one-line warning for override ``name`` that ``node`` does not declare, or None when it
    is another stage's parameter in a shared block. ``named``: written for this node."""
    owners = [n for n, names in declared.items() if name in names and n != node]
    if not owners:
        where = "for this node" if named else "in a block every node reads"
        return f"parameter {name!r} (set {where}) is ignored: no stage of cascade_sd_ros declares it"
    if not named:
        return None
    moved = MOVED.get((node, name))
    if moved is not None:
        return f"parameter {name!r} is ignored here: it moved to {moved}; set it there"
    return f"parameter {name!r} is ignored here: {node} does not declare it (declared by {', '.join(owners)})"


def ignored_overrides(node: str, undeclared: Collection[str], named: Collection[str]) -> list[str]:
    """The warnings for ``node``'s ``undeclared`` overrides, ``named`` those written for it."""
    declared = declared_by_node()
    lines = (ignored_override(node, name, name in named, declared) for name in sorted(undeclared))
    return [line for line in lines if line is not None]


def check_pipeline_params(params: Mapping[str, Mapping[str, object]]) -> None:
    """The demo's and replay's overrides (``common`` for every stage, else a node's name): a
    parameter no stage declares, or one a node's own section gives it that it does not declare,
    raises ValueError naming each (the same lines a node would log)."""
    declared = declared_by_node()
    lines = []
    for section, values in params.items():
        if section == "common":
            every = frozenset().union(*declared.values())
            lines += [f"common: {ignored_override('common', n, False, declared)}" for n in values if n not in every]
        elif section in declared:
            lines += [
                f"{section}: {ignored_override(section, n, True, declared)}"
                for n in values
                if n not in declared[section]
            ]
    if lines:
        raise ValueError("; ".join(lines))
