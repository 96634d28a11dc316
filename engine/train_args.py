"""Value checks for Ultralytics training arguments, without importing Ultralytics (it pulls in torch).

Ultralytics checks argument types itself (`ultralytics.cfg.check_cfg`), but only once a job starts,
possibly hours after it was queued. The engine applies the same rules at submission: it reads the
installed version's own key classes (CFG_FLOAT_KEYS, CFG_INT_KEYS, ...) and optimizer names from
its source with `ast`, so the rules follow the installed Ultralytics instead of a copy of them.
On top of those, every value must be something a job spec can store and replay exactly: a finite
number, a string, true/false, null, or a short flat list of those.
"""
from __future__ import annotations

import ast
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

MAX_TEXT = 1000
MAX_LIST = 64
KEY_SET_NAMES = ("CFG_FLOAT_KEYS", "CFG_FRACTION_KEYS", "CFG_INT_KEYS", "CFG_BOOL_KEYS", "CFG_STR_KEYS")


class KeyRules(NamedTuple):
    float_keys: frozenset[str] = frozenset()
    fraction_keys: frozenset[str] = frozenset()
    int_keys: frozenset[str] = frozenset()
    bool_keys: frozenset[str] = frozenset()
    str_keys: frozenset[str] = frozenset()
    int_min: dict[str, int] = {}
    optimizers: frozenset[str] = frozenset()


def _literal_strings(node: ast.AST) -> frozenset[str] | None:
    """{"a", "b"} or frozenset({"a", "b"}) as a set of strings; None for anything else."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "frozenset" and node.args:
        node = node.args[0]
    if isinstance(node, (ast.Set, ast.List, ast.Tuple)):
        values = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        return frozenset(values) if len(values) == len(node.elts) else None
    return None


@lru_cache(maxsize=4)
def key_rules(ultralytics_dir: Path | None) -> KeyRules:
    """The installed Ultralytics' key classes; empty rules (only the structural check) if unreadable."""
    if ultralytics_dir is None:
        return KeyRules()
    found: dict[str, Any] = {}
    try:
        tree = ast.parse((ultralytics_dir / "cfg" / "__init__.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return KeyRules()
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in KEY_SET_NAMES:
                found[name] = _literal_strings(node.value) or frozenset()
            elif name == "CFG_INT_MIN":
                try:
                    found[name] = {k: v for k, v in ast.literal_eval(node.value).items() if isinstance(v, int)}
                except (ValueError, SyntaxError, AttributeError):
                    pass
    optimizers: frozenset[str] = frozenset()
    try:
        trainer = ast.parse((ultralytics_dir / "engine" / "trainer.py").read_text(encoding="utf-8"))
        for node in ast.walk(trainer):
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and getattr(node.targets[0], "id", None) == "optimizers"):
                optimizers = _literal_strings(node.value) or frozenset()
                break
    except (OSError, SyntaxError, UnicodeDecodeError):
        pass
    return KeyRules(*(found.get(n, frozenset()) for n in KEY_SET_NAMES),
                    int_min=found.get("CFG_INT_MIN", {}), optimizers=optimizers)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def storable_problem(value: Any) -> str | None:
    """Why `value` cannot be a training argument's value, or None."""
    def scalar(v: Any) -> str | None:
        if v is None or isinstance(v, bool):
            return None
        if isinstance(v, int):
            return None if abs(v) < 2**63 else "is too large a number"
        if isinstance(v, float):
            return None if math.isfinite(v) else f"must be a finite number, got {v!r}"
        if isinstance(v, str):
            return None if len(v) <= MAX_TEXT else f"is too long ({len(v)} characters; at most {MAX_TEXT})"
        return f"must be a number, text, true/false or null, got {type(v).__name__}"

    if isinstance(value, (list, tuple)):
        if len(value) > MAX_LIST:
            return f"is too long a list ({len(value)} items; at most {MAX_LIST})"
        for item in value:
            if isinstance(item, (list, tuple, dict)):
                return "must be a flat list (of numbers, text or true/false), not a nested one"
            problem = scalar(item)
            if problem:
                return f"list item {item!r:.60}: {problem}"
        return None
    if isinstance(value, dict):
        return "must be a number, text, true/false or a flat list, not a mapping"
    return scalar(value)


def value_problem(key: str, value: Any, rules: KeyRules) -> str | None:
    """Ultralytics' own type and range rule for `key`, applied to `value` (None = fine)."""
    if value is None:
        return None  # Ultralytics' default stands (check_cfg refuses None only for typed keys; they stay unset)
    if key in rules.float_keys and key != "batch" and not _is_number(value):
        return f"must be a number, got {value!r}"
    if key in rules.fraction_keys and key != "fraction":
        if not _is_number(value):
            return f"must be a number between 0 and 1, got {value!r}"
        if not 0.0 <= value <= 1.0:
            return f"must be between 0 and 1, got {value!r}"
    if key in rules.int_keys:
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral:
            return f"must be a whole number, got {value!r}"
        if key in rules.int_min and value < rules.int_min[key]:
            return f"must be at least {rules.int_min[key]}, got {value!r}"
    if key in rules.bool_keys and not isinstance(value, bool):
        return f"must be true or false, got {value!r}"
    if key in rules.str_keys and not isinstance(value, str):
        return f"must be text, got {value!r}"
    if key == "optimizer" and rules.optimizers and isinstance(value, str) and value not in rules.optimizers:
        return f"unknown optimizer {value!r}: one of {', '.join(sorted(rules.optimizers))}"
    if key == "amp" and not isinstance(value, bool) and str(value).lower() not in {"fp16", "bf16", "fp32"}:
        return f"must be true, false, 'fp16', 'bf16' or 'fp32', got {value!r}"
    return None
