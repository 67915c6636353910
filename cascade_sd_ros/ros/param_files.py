"""Where a ROS command line's parameter overrides for one node come from: a block naming the node,
or only a block every node reads.

rcl merges a node's overrides from every ``--params-file`` block whose name matches the node
(``/**``, ``/**/video_verifier``, ``/cascade_sd/video_verifier``...) and every ``-p`` rule into one
set, and a node that never declares a name drops it without a word (rclpy's and rclcpp's
``allow_undeclared_parameters=False``). Whether such a name is a mistake depends on where it was
written: a shared block (its last name a wildcard) legitimately holds parameters of other nodes,
a block naming the node (launch_ros writes a node's dict parameters under its full name) or a
``-p`` rule (a one-node process's own command line) does not. This module tells the two apart;
the names match as rcl matches them (``*`` one name, ``**`` any number, a relative block name is
under ``/``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

ROS_ARGS, ROS_ARGS_END = "--ros-args", "--"
PARAMS_FILE = "--params-file"
PARAM_RULE = ("-p", "--param")
PARAMETERS_KEY = "ros__parameters"


@dataclass(frozen=True)
class OverrideSources:
    """Parameter names a command line sets for one node: ``named`` in a block naming it or a ``-p``
    rule, ``shared`` only in blocks whose last name is a wildcard."""

    named: frozenset[str] = frozenset()
    shared: frozenset[str] = frozenset()

    @property
    def all(self) -> frozenset[str]:
        return self.named | self.shared


def override_sources(argv: Sequence[str], node_fqn: str) -> OverrideSources:
    """What ``argv`` (a process's whole command line) sets for the node ``node_fqn`` (``/ns/name``).
    A params file that cannot be read is skipped: rcl has already refused it at init."""
    node_name = node_fqn.rstrip("/").rsplit("/", 1)[-1]
    named: set[str] = set()
    shared: set[str] = set()
    for kind, value in _ros_arguments(argv):
        if kind == "rule":
            # name:=value, or node:name:=value (rcl's node-prefixed rule)
            target, _, name = value.partition(":=")[0].rpartition(":")
            if not target or _matches(target, node_fqn):
                named.add(name)
            continue
        for block, names in _param_blocks(value):
            if not _matches(block, node_fqn):
                continue
            last = block.rstrip("/").rsplit("/", 1)[-1]
            (named if last == node_name else shared).update(names)
    return OverrideSources(frozenset(named), frozenset(shared - named))


def _ros_arguments(argv: Sequence[str]) -> Iterator[tuple[str, str]]:
    """("file", path) and ("rule", name:=value) of every ``--ros-args`` section of ``argv``."""
    inside = False
    tokens = iter(argv)
    for token in tokens:
        if token == ROS_ARGS:
            inside = True
        elif token == ROS_ARGS_END:
            inside = False
        elif inside and token == PARAMS_FILE:
            yield "file", next(tokens, "")
        elif inside and token in PARAM_RULE:
            yield "rule", next(tokens, "")


def _param_blocks(path: str) -> list[tuple[str, set[str]]]:
    """(block name, parameter names) of one params file; nested namespace keys are joined by '/'."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return []
    out: list[tuple[str, set[str]]] = []

    def walk(node: Any, path: list[str]) -> None:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            if key == PARAMETERS_KEY:
                out.append(("/".join(path), set(_flat_names(value))))
            else:
                walk(value, [*path, str(key).strip("/")])

    walk(data, [])
    return out


def _flat_names(params: Any, prefix: str = "") -> Iterator[str]:
    """Parameter names of a ``ros__parameters`` mapping: nested mappings join their keys with '.'."""
    if not isinstance(params, dict):
        return
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flat_names(value, f"{name}.")
        else:
            yield name


def _matches(block: str, node_fqn: str) -> bool:
    """rcl's rule: ``*`` stands for one name, ``**`` for any number of them."""
    parts = [p for p in block.strip("/").split("/") if p]
    pattern = "".join("(/[^/]+)*" if p == "**" else "/[^/]+" if p == "*" else "/" + re.escape(p) for p in parts)
    return re.fullmatch(pattern or "/", node_fqn) is not None
