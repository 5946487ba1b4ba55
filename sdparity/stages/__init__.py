"""One module per stage; importing this package registers all of them: first the pipeline's
stages in pipeline order (``pipeline.json``, also read by the web app), then any other
stage module found here."""

import importlib
import json
import pkgutil
from pathlib import Path

PIPELINE = json.loads((Path(__file__).with_name("pipeline.json")).read_text())["stages"]
PIPELINE_STAGES = tuple(s["stage"] for s in PIPELINE)
PIPELINE_FUNCTIONS = tuple(f for s in PIPELINE for f in s["functions"])

_found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
for _name in list(PIPELINE_STAGES) + sorted(_found - set(PIPELINE_STAGES)):
    if _name in _found:
        importlib.import_module(f"{__name__}.{_name}")
