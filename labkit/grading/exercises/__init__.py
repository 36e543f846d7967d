"""The graded exercises, one module per lesson (``ex01_dynamic_batching``, ...): each lists its
`Question`s in ``QUESTIONS`` and the probes that call their answers in ``PROBES``
(`labkit.grading.probes`). A new module here is found by its name; nothing else to register.

Questions are plain data and builders; a module holds no secret (instructors' hidden cases come
from their own files, `labkit.grading.hidden`).
"""

from __future__ import annotations

import importlib
import pkgutil

MODULES = tuple(importlib.import_module(f"{__name__}.{m.name}")
                for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name) if m.name.startswith("ex"))
QUESTIONS = {q.id: q for module in MODULES for q in module.QUESTIONS}
PROBES = {name: probe for module in MODULES for name, probe in module.PROBES.items()}
