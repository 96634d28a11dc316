"""What a training job trains, and the checks that reject bad input before anything is queued.

A `JobSpec` is written as spec.json into the job's run folder and read by the worker. The checks
here need neither torch nor Ultralytics, so the engine runs them at submission (the job is never
queued) and the worker runs them again before its slow imports (a bad spec fails in milliseconds).
Each problem names the field it belongs to, so a dialog can show it next to that field.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
import re
import zipfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .train_args import key_rules, storable_problem, value_problem

IMAGE_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"}

# Arguments Cutline owns: it places the run folder, assigns the device and handles resume itself.
MANAGED_ARGS = {
    "model": "the model is a field of its own",
    "data": "the dataset is a field of its own",
    "device": "Cutline assigns the device (use the job's device preference)",
    "project": "Cutline places every run in its own folder",
    "name": "Cutline places every run in its own folder",
    "exist_ok": "Cutline places every run in its own folder",
    "resume": "Cutline resumes preempted jobs itself, at the exact batch",
    "mode": "Cutline only trains",
    "time": "time-limited training is not supported; set epochs",
}

MAX_REPORTED_LABEL_PROBLEMS = 5


@dataclass
class JobSpec:
    model: str
    data: str
    run_dir: str
    train_args: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"  # the Ultralytics device argument for the assigned device ("cpu", or "0")
    config_dir: str | None = None  # YOLO_CONFIG_DIR; defaults to <run_dir>/../.ultralytics
    keep_final_state: bool = False  # keep weights/final_state.pt: raw model, EMA and optimizer after training

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "JobSpec":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(raw) - known
        if unknown:
            raise SpecError([Problem("spec", f"unknown spec fields: {', '.join(sorted(unknown))}")])
        missing = {"model", "data", "run_dir"} - set(raw)
        if missing:
            raise SpecError([Problem("spec", f"spec is missing: {', '.join(sorted(missing))}")])
        return cls(**raw)

    @classmethod
    def load(cls, path: str | Path) -> "JobSpec":
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SpecError([Problem("spec", f"spec file not found: {path}")]) from None
        except json.JSONDecodeError as e:
            raise SpecError([Problem("spec", f"spec file {path} is not valid JSON: {e}")]) from None
        if not isinstance(raw, dict):
            raise SpecError([Problem("spec", f"spec file {path} must hold a JSON object")])
        return cls.from_dict(raw)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_json())


@dataclass(frozen=True)
class Problem:
    field: str  # "data", "model", "epochs", ... (a train argument's own name)
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class SpecError(ValueError):
    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


def expand_path(text: str) -> Path:
    """`~` and `~user` expanded where they can be; an unknown user (`~nobody-here/x`) is not an
    error here: the path is then checked as written, and reported as not found."""
    try:
        return Path(text).expanduser()
    except (RuntimeError, ValueError, OSError):
        return Path(text)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------- checks


def check_spec(spec: JobSpec) -> list[Problem]:
    """Every problem found in the spec; an empty list means it may be queued."""
    problems = check_train_args(spec.train_args)
    problems += check_model(spec.model)
    problems += check_dataset(spec.data)
    return problems


def validate_spec(spec: JobSpec) -> None:
    problems = check_spec(spec)
    if problems:
        raise SpecError(problems)


# Keys with a check of their own below (Cutline's words for the commonest mistakes); every other key
# gets Ultralytics' type and range rule (engine/train_args.py).
CHECKED_BELOW = frozenset({"epochs", "workers", "patience", "close_mosaic", "imgsz", "batch", "lr0", "lrf", "fraction"})


def check_train_args(args: dict[str, Any]) -> list[Problem]:
    if not isinstance(args, dict):
        return [Problem("train_args", "must be a mapping of Ultralytics train arguments")]
    problems: list[Problem] = []
    known = ultralytics_arg_names()
    rules = key_rules(_ultralytics_dir())
    for key, value in args.items():
        if not isinstance(key, str) or not key:
            problems.append(Problem("train_args", f"argument names must be text, got {key!r}"))
            continue
        if key in MANAGED_ARGS:
            problems.append(Problem(key, f"not allowed here: {MANAGED_ARGS[key]}"))
        elif known and key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(Problem(key, f"unknown training argument {key!r}{hint}"))
        elif why := storable_problem(value):
            problems.append(Problem(key, why))
        elif key not in CHECKED_BELOW and (why := value_problem(key, value, rules)):
            problems.append(Problem(key, why))
    args = {k: v for k, v in args.items() if isinstance(k, str) and not any(p.field == k for p in problems)}

    def positive_int(name: str, minimum: int = 1) -> None:
        if name not in args:
            return
        value = args[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            problems.append(Problem(name, f"must be an integer >= {minimum}, got {value!r}"))

    positive_int("epochs")
    positive_int("workers", minimum=0)
    positive_int("patience", minimum=0)
    positive_int("close_mosaic", minimum=0)
    if "imgsz" in args:
        value = args["imgsz"]
        sizes = value if isinstance(value, (list, tuple)) else [value]
        if not sizes or any(isinstance(v, bool) or not isinstance(v, int) or v < 32 for v in sizes):
            problems.append(Problem("imgsz", f"must be a positive image size of at least 32 pixels, got {value!r}"))
    if "batch" in args:
        value = args["batch"]
        ok = (isinstance(value, int) and not isinstance(value, bool) and (value >= 1 or value == -1)) or (
            isinstance(value, float) and 0 < value < 1
        )
        if not ok:
            problems.append(
                Problem("batch", f"must be a batch size >= 1, -1 (auto) or a GPU memory fraction in (0, 1), got {value!r}")
            )
    for name in ("lr0", "lrf"):
        if name in args and (not isinstance(args[name], (int, float)) or isinstance(args[name], bool)
                             or not math.isfinite(args[name]) or args[name] <= 0):
            problems.append(Problem(name, f"must be a positive number, got {args[name]!r}"))
    if "fraction" in args and not (isinstance(args["fraction"], (int, float)) and 0 < args["fraction"] <= 1):
        problems.append(Problem("fraction", f"must be in (0, 1], got {args['fraction']!r}"))
    return problems


def check_device(device: str, cuda_count: int | None = None) -> list[Problem]:
    """`device` is what the engine assigned: "cpu" or one GPU index as seen through CUDA_VISIBLE_DEVICES."""
    text = str(device).strip().lower()
    if text == "cpu":
        return []
    if not re.fullmatch(r"\d+", text):
        return [Problem("device", f"unknown device {device!r}: expected 'cpu' or a GPU index such as '0'")]
    if cuda_count is not None and int(text) >= cuda_count:
        seen = f"{cuda_count} CUDA device(s) visible" if cuda_count else "no CUDA device visible"
        return [Problem("device", f"device {device!r} is not available: {seen}")]
    return []


def check_model(model: str) -> list[Problem]:
    if not model or not str(model).strip():
        return [Problem("model", "a model is required: a local .pt weights file or a model .yaml")]
    path = expand_path(model)
    suffix = path.suffix.lower()
    if suffix == ".pt":
        if path.is_file():
            # A PyTorch checkpoint is a zip archive whose directory is written last: a file without one
            # is truncated, still being written, or not a checkpoint at all (the worker would fail on it).
            if not zipfile.is_zipfile(path):
                return [Problem("model", f"{path} is not a complete PyTorch checkpoint (truncated, still being "
                                         f"written, or not a .pt weights file)")]
            return []
        if len(path.parts) == 1:
            return [
                Problem(
                    "model",
                    f"{model!r} is not a file on this machine. Cutline never downloads weights: give the path "
                    f"of a local .pt file, or a model .yaml (e.g. {path.stem}.yaml) to train from scratch",
                )
            ]
        return [Problem("model", f"model file not found: {path}")]
    if suffix in (".yaml", ".yml"):
        if path.is_file() or builtin_model_config(path.name):
            return []
        return [Problem("model", f"model config not found: {model} (neither a file nor an Ultralytics model name)")]
    return [Problem("model", f"model must be a .pt weights file or a .yaml model config, got {model!r}")]


def check_dataset(data: str) -> list[Problem]:
    def problem(message: str) -> list[Problem]:
        return [Problem("data", message)]

    if not data or not str(data).strip():
        return problem("a dataset is required: the path of its data.yaml")
    yaml_path = expand_path(data)
    if yaml_path.suffix.lower() not in (".yaml", ".yml"):
        return problem(f"dataset must be a data.yaml file, got {data!r}")
    if not yaml_path.is_file():
        return problem(f"data.yaml not found: {yaml_path}")
    try:
        config = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return problem(f"{yaml_path} is not valid YAML{where}: {getattr(e, 'problem', e)}")
    except UnicodeDecodeError:
        return problem(f"{yaml_path} is not a text file")
    if not isinstance(config, dict):
        return problem(f"{yaml_path} must be a mapping with 'train', 'val' and 'names' keys")
    missing = [k for k in ("train", "val") if not config.get(k)]
    if missing:
        return problem(f"{yaml_path} has no {' or '.join(repr(k) for k in missing)} entry")
    names = config.get("names")
    if isinstance(names, dict):
        nc = len(names)
    elif isinstance(names, list):
        nc = len(names)
    elif isinstance(config.get("nc"), int):
        nc = config["nc"]
    else:
        return problem(f"{yaml_path} must list the class 'names' (a list, or a mapping of index to name)")
    if nc < 1:
        return problem(f"{yaml_path} names no classes")

    root = dataset_root(config, yaml_path)
    problems: list[Problem] = []
    for split in ("train", "val"):
        entries = config[split] if isinstance(config[split], list) else [config[split]]
        for entry in entries:
            images = _split_images(root, str(entry))
            if images is None:
                problems += problem(f"{split} images not found: {_resolve(root, str(entry))} (from '{split}: {entry}' in {yaml_path.name})")
            elif not images:
                problems += problem(f"{split} images folder {_resolve(root, str(entry))} holds no images")
            else:
                problems += [Problem("data", m) for m in _label_problems(images, nc, split)]
    return problems


def dataset_root(config: dict, yaml_path: Path) -> Path:
    """Where the split paths are relative to. The worker runs in the data.yaml's folder, so a
    relative 'path:' means the same thing here and to Ultralytics."""
    root = config.get("path")
    if not root:
        return yaml_path.parent.resolve()
    root = expand_path(str(root))
    return root if root.is_absolute() else (yaml_path.parent / root).resolve()


def _resolve(root: Path, entry: str) -> Path:
    p = expand_path(entry)
    return p if p.is_absolute() else root / p


def _split_images(root: Path, entry: str) -> list[Path] | None:
    target = _resolve(root, entry)
    if target.is_dir():
        return sorted(p for p in target.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if target.is_file() and target.suffix == ".txt":
        listed = []
        for line in target.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                p = Path(line)
                listed.append(p if p.is_absolute() else target.parent / p)
        return listed
    return None


def label_path_for(image: Path) -> Path:
    """Ultralytics' convention: .../images/x.jpg -> .../labels/x.txt (the last 'images' folder)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _label_problems(images: list[Path], nc: int, split: str) -> list[str]:
    found: list[str] = []
    total = 0
    for image in images:
        label = label_path_for(image)
        if not label.is_file():
            continue  # an image without labels is a background image; Ultralytics allows it
        for number, line in enumerate(label.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            message = _label_line_problem(fields, nc)
            if message:
                total += 1
                if len(found) < MAX_REPORTED_LABEL_PROBLEMS:
                    found.append(f"{split} label {label} line {number}: {message}")
    if total > len(found):
        found.append(f"{split} labels: {total - len(found)} more problem line(s) not shown")
    return found


def _label_line_problem(fields: list[str], nc: int) -> str | None:
    try:
        cls = float(fields[0])
    except ValueError:
        return f"class {fields[0]!r} is not a number"
    if not math.isfinite(cls) or cls != int(cls) or not 0 <= cls < nc:
        return f"class {fields[0]} is out of range: data.yaml names {nc} classes (0-{nc - 1})"
    if len(fields) < 5:
        return f"expected 'class x y w h', got {len(fields)} value(s)"
    try:
        coords = [float(v) for v in fields[1:]]
    except ValueError:
        return "coordinates must be numbers"
    if any(not 0.0 <= v <= 1.0 for v in coords):  # NaN fails this too
        return "coordinates must be normalized to [0, 1]"
    return None


# --------------------------------------------------------------------------- Ultralytics facts, read without importing it


def _ultralytics_dir() -> Path | None:
    found = importlib.util.find_spec("ultralytics")
    if not found or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


@lru_cache(maxsize=1)
def ultralytics_arg_names() -> frozenset[str]:
    base = _ultralytics_dir()
    if base is None:
        return frozenset()
    config = yaml.safe_load((base / "cfg" / "default.yaml").read_text(encoding="utf-8"))
    return frozenset(config)


@lru_cache(maxsize=64)
def builtin_model_config(name: str) -> bool:
    base = _ultralytics_dir()
    if base is None:
        return False
    unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", Path(name).stem) + Path(name).suffix
    models = base / "cfg" / "models"
    return any(True for candidate in {name, unified} for _ in models.rglob(candidate))
