"""Every package the source imports is one that the project's own files install.

A fresh ``make demo`` once failed with "No module named 'bluesky_tiled_plugins'": the embedded Tiled server
imported it, and only an optional extra of another package (``databroker[client]``) installed it, so every
environment with the test extras had it and the suite could not tell. These tests read the imports from the
source and the requirements from ``pyproject.toml``, so such an import fails here, on any machine.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "bluesky_tomogan"

#: Import names whose distribution is named otherwise, looked up here rather than in the environment: the suite
#: runs without the ``export`` extra (TensorFlow) and without the runtimes of hardware it does not have. A module
#: neither here nor installed is taken to be its distribution's name.
DISTRIBUTION_OF: dict[str, str | None] = {
    "tensorflow": "tensorflow-cpu",  # the export extra
    "cuda": "cuda-python",  # the tensorrt extra; "tensorrt" is its own name
    "tflite_runtime": None,  # Coral's Edge TPU runtime, from Coral's Debian repository (docs/backends.md)
    "PIL": "pillow", "yaml": "pyyaml", "cv2": "opencv-python", "skimage": "scikit-image", "sklearn": "scikit-learn",
}


#: Modules that only an extra makes importable, with the extra: the core install (``make demo``) never
#: imports them (``bluesky-tomogan`` says which extra a command needs).
EXTRA_MODULES = {
    "devices/fly.py": "fly",
    "export/copies.py": "train", "export/equalise.py": "train", "export/fused_decoder.py": "train",
    "export/onnx.py": "train", "export/openvino_int8.py": "export", "export/pipeline.py": "export",
    "export/tflite.py": "export", "export/keras_model.py": "export",
    "model/allinone.py": "train", "model/average.py": "train", "model/losses.py": "train",
    "model/network.py": "train", "model/qat.py": "train", "model/train.py": "train",
}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_normal(Requirement(r).name) for r in project["dependencies"]}
    extras = {name: {_normal(Requirement(r).name) for r in reqs}
              for name, reqs in project["optional-dependencies"].items()}
    return core, extras


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(top-level module, imported at module level)`` of every absolute import in ``path``."""
    tree = ast.parse(path.read_text())
    at_top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        out += [(name.split(".")[0], id(node) in at_top) for name in names]
    return out


def _third_party() -> list[tuple[str, str, str | None, bool]]:
    """``(source file, module, distribution, at module level)`` for every import of a package not of the
    standard library or this project."""
    distributions = packages_distributions()
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for module, top in _imports(path):
            if module in sys.stdlib_module_names or module in ("__future__", "bluesky_tomogan"):
                continue
            if module in DISTRIBUTION_OF:
                dist = DISTRIBUTION_OF[module]
            else:
                dist = _normal(distributions[module][0] if module in distributions else module)
            found.append((path.relative_to(PACKAGE).as_posix(), module, dist, top))
    return found


def test_every_imported_package_is_a_dependency_of_the_project_or_of_one_of_its_extras():
    core, extras = _requirements()
    declared = core.union(*extras.values())
    undeclared = sorted({f"{module} ({dist}) in {where}" for where, module, dist, _ in _third_party()
                         if dist is not None and dist not in declared})
    assert undeclared == [], "imported but installed by no requirement of pyproject.toml"


def test_the_core_install_imports_no_package_of_an_extra_at_module_level():
    """Outside the modules of an extra, a package that only an extra installs is imported inside the function
    that needs it, so that the core install (``make demo``) imports every other module."""
    core, extras = _requirements()
    wrong = sorted({f"{where}: {module}" for where, module, dist, top in _third_party()
                    if top and dist is not None and dist not in core and where not in EXTRA_MODULES})
    assert wrong == []
    for where, extra in EXTRA_MODULES.items():
        assert (PACKAGE / where).exists() and extra in extras, (where, extra)
