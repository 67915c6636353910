"""package.xml declares what the package imports, so `rosdep install` on a robot brings all of it."""

from __future__ import annotations

import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cascade_sd_ros"

# Top-level module -> the rosdep key (or ROS package) that provides it; keys from rosdep's
# python.yaml (ros/rosdistro). None: no rosdep key exists; the README names it as pip-only.
# A new third-party import fails test_every_import_is_declared until it is added here AND to
# package.xml (look the key up in rosdistro's rosdep/python.yaml; prefer a distribution package,
# else the `-pip` key).
MODULE_KEYS: dict[str, str | None] = {
    # ROS packages: the key is the package name
    "rclpy": "rclpy",
    "rcl_interfaces": "rcl_interfaces",
    "ament_index_python": "ament_index_python",
    "builtin_interfaces": "builtin_interfaces",
    "std_msgs": "std_msgs",
    "sensor_msgs": "sensor_msgs",
    "visualization_msgs": "visualization_msgs",
    "diagnostic_msgs": "diagnostic_msgs",
    "rosgraph_msgs": "rosgraph_msgs",
    "event_camera_msgs": "event_camera_msgs",
    "launch": "launch",
    "launch_ros": "launch_ros",
    # Python libraries
    "numpy": "python3-numpy",
    "numba": "python3-numba",
    "torch": "python3-torch",
    "transformers": "python3-transformers-pip",
    "rosbags": "python3-rosbags-pip",
    "PIL": "python3-pil",
    "matplotlib": "python3-matplotlib",
    "tqdm": "python3-tqdm",
    "yaml": "python3-yaml",
    # no key of their own; installed as dependencies of a declared pip key
    "tokenizers": "python3-transformers-pip",
    "safetensors": "python3-transformers-pip",
    "lz4": "python3-rosbags-pip",
    "backports": "python3-rosbags-pip",  # backports.zstd (Python < 3.14)
    "av": None,  # PyAV: no rosdep key
}
PIP_NAMES = {"av": "av"}


def _is_import_error_guard(handler: ast.ExceptHandler) -> bool:
    names = [handler.type] if not isinstance(handler.type, ast.Tuple) else list(handler.type.elts)
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def imported_modules(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(required, optional): top-level module -> files importing it. Optional: only imported inside
    a ``try`` whose handler catches ImportError (the code works without the module)."""
    required: dict[str, set[str]] = {}
    optional: dict[str, set[str]] = {}

    def visit(node: ast.AST, guarded: bool, path: str) -> None:
        if isinstance(node, ast.Try):
            g = guarded or any(_is_import_error_guard(h) for h in node.handlers)
            for child in node.body:
                visit(child, g, path)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, guarded, path)
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            (optional if guarded else required).setdefault(name.split(".")[0], set()).add(path)
        for child in ast.iter_child_nodes(node):
            visit(child, guarded, path)

    for path in sorted(root.rglob("*.py")):
        rel = str(path.relative_to(root.parent))
        visit(ast.parse(path.read_text(encoding="utf-8"), filename=rel), False, rel)
    for name in list(optional):
        if name in required:
            required[name] |= optional.pop(name)
    return required, optional


def third_party(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    return {
        m: files
        for m, files in modules.items()
        if m not in sys.stdlib_module_names and m != "cascade_sd_ros" and m != "__future__"
    }


def declared_run_keys() -> set[str]:
    root = ET.parse(ROOT / "package.xml").getroot()
    return {e.text.strip() for tag in ("depend", "exec_depend") for e in root.iter(tag) if e.text}


def test_every_import_is_declared() -> None:
    required, _ = imported_modules(PACKAGE)
    needed = third_party(required)
    assert "numpy" in needed and "rclpy" in needed and "torch" in needed  # the scan sees imports at all
    unknown = {m: sorted(f)[:3] for m, f in needed.items() if m not in MODULE_KEYS}
    assert not unknown, (
        f"imports with no rosdep key in this test's table (add the key to package.xml and to MODULE_KEYS): {unknown}"
    )
    declared = declared_run_keys()
    missing = {m: MODULE_KEYS[m] for m in needed if MODULE_KEYS[m] is not None and MODULE_KEYS[m] not in declared}
    assert not missing, f"imported but not declared in package.xml (module: key): {missing}"


def test_pip_only_modules_are_named_in_the_readme() -> None:
    required, _ = imported_modules(PACKAGE)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## On a robot") :]
    for module in third_party(required):
        if MODULE_KEYS.get(module, "") is None:
            assert f"`{PIP_NAMES[module]}`" in section, f"README's robot section does not say {module} comes from pip"


def test_nothing_declared_that_is_not_used() -> None:
    """Every library key in package.xml is imported somewhere (ROS build/launch keys aside)."""
    required, optional = imported_modules(PACKAGE)
    used_keys = {MODULE_KEYS.get(m) for m in {**required, **optional}}
    launch_files = " ".join(p.read_text(encoding="utf-8") for p in (ROOT / "launch").glob("*.py"))
    used_keys |= {k for k in ("launch", "launch_ros") if f"import {k}" in launch_files or f"from {k}" in launch_files}
    build_only = {
        "std_msgs",
        "builtin_interfaces",
        "rosidl_default_runtime",
        "ament_cmake",
        "ament_cmake_python",
        "rosidl_default_generators",
    }
    unused = declared_run_keys() - used_keys - build_only
    assert not unused, f"declared in package.xml but never imported: {sorted(unused)}"


def test_the_scan_tells_required_from_optional(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        "import os\nimport numpy as np\nfrom torch.nn import Module\nfrom . import b\n"
        "try:\n    from cv_bridge import CvBridge\nexcept ImportError:\n    CvBridge = None\n"
        "def f():\n    import av\n    try:\n        import yaml\n    except ValueError:\n        pass\n"
    )
    required, optional = imported_modules(pkg)
    assert set(third_party(required)) == {"numpy", "torch", "av", "yaml"}
    assert set(third_party(optional)) == {"cv_bridge"}
