"""The signal core stays free of bluesky, ophyd and storage: numpy, scipy and stdlib only."""

import ast
import sys
from pathlib import Path

import dnpu_bluesky.hge

ALLOWED_THIRD_PARTY = {"numpy", "scipy"}


def test_hge_imports_only_numpy_scipy_stdlib_and_itself():
    package_dir = Path(dnpu_bluesky.hge.__file__).parent
    offenders = []
    for path in sorted(package_dir.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                inside = name.startswith("dnpu_bluesky.hge")
                if not (inside or top in ALLOWED_THIRD_PARTY or top in sys.stdlib_module_names):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []
