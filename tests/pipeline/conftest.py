"""Test modules of pipeline/ lie in folders that mirror its sub-packages; some reuse another's run
builders (``from test_train import build_run``). pytest puts only a test module's own folder on
``sys.path`` (rootdir-relative "prepend" import mode), so every folder here goes on it once."""

import sys
from pathlib import Path

for folder in sorted(p for p in Path(__file__).parent.iterdir() if p.is_dir() and not p.name.startswith("__")):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
