"""One module per stage; importing this package registers all of them (in pipeline order)."""

import importlib
import pkgutil

_ORDER = ["clip", "concat_embeddings", "unet", "scheduler_dpm", "vae", "image_to_rgba"]

_found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
for _name in _ORDER + sorted(_found - set(_ORDER)):
    if _name in _found:
        importlib.import_module(f"{__name__}.{_name}")
