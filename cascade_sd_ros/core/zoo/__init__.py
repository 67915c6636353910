"""The tiny model zoo: shared tokenizer, stage architectures, datasets, training and loading.

Public API: `load_zoo`, `default_zoo_path`, `Zoo`, `build_tokenizer`, `load_tokenizer`.
Heavy submodules (training, data) are imported only when used.
"""

from __future__ import annotations

from cascade_sd_ros.core.zoo.load import Zoo, ZooFolderError, default_zoo_path, load_zoo
from cascade_sd_ros.core.zoo.tokenizer import DEFAULT_QUESTION, build_tokenizer, load_tokenizer

__all__ = [
    "Zoo",
    "ZooFolderError",
    "default_zoo_path",
    "load_zoo",
    "build_tokenizer",
    "load_tokenizer",
    "DEFAULT_QUESTION",
]
