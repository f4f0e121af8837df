"""runtime/ is the torch-free base that train/ and export/ import: it imports neither torch nor them."""

import subprocess
import sys
from pathlib import Path

import ssprompt.runtime

BLOCKED = ("torch", "torchvision", "segment_anything", "open_clip", "ssprompt.train", "ssprompt.export")
IMPORT_ALL = """
import importlib, pkgutil, sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of these, or of a module under them, now raises ImportError
import ssprompt.runtime
for module in pkgutil.walk_packages(ssprompt.runtime.__path__, "ssprompt.runtime."):
    importlib.import_module(module.name)
    print(module.name)
"""


def test_every_runtime_module_imports_with_torch_train_and_export_blocked():
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL.format(blocked=BLOCKED)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = Path(ssprompt.runtime.__file__).parent
    expected = {f"ssprompt.runtime.{p.relative_to(folder).with_suffix('').as_posix().replace('/', '.')}"
                for p in folder.rglob("*.py") if p.name != "__init__.py"}
    assert set(done.stdout.split()) >= expected and "ssprompt.runtime.contract" in expected
