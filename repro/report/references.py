"""Published numbers to put beside ours: loading, validating and looking them up.

The built-in file (`references.json`, package data) holds the reproduction report's numbers
("Reproducibility Challenge: Differentiable Branching in Deep Networks for Fast Inference", USI):
its Table 1 (VGG-13 test accuracy without early exit on CIFAR-10, CIFAR-100, CINIC-10) and its
Table 2 (VGG-13, CIFAR-10, one image on a Tesla T4: accuracy, latency, speed-up). Every number carries
its table and where in that table it comes from. The original paper's (Scardapane et al., ICASSP 2020)
tables are not publicly available to us; the file says so and holds none of their numbers.

`repro report --reference FILE` adds another source in the same format; each source becomes a column.
A file that is not valid JSON, or not this format, is a one-line `ReproError` naming the line.

The report's speed-up is (baseline time / time - 1) in percent. We keep the number it prints and also
recompute it from its own printed times (`recomputed_speedups`), because the two disagree for one row
(6.06108 / 2.60544 ms gives 132.6 %, the report prints 128.34 %).
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from repro.errors import ReproError

FORMAT = "repro-references/1"
# What each quantity means and how ours is compared with it (all accuracies are percent here).
QUANTITIES = {
    "test_accuracy": "Table 1: test accuracy without early exit (final exit), percent",
    "accuracy": "Table 2: test accuracy with early exit at the operating point, percent",
    "latency_ms": "Table 2: latency per image at batch size 1, milliseconds",
    "speedup_percent": "Table 2: speed-up as (baseline time / time - 1), percent",
}
TABLES = ("Table 1", "Table 2")
# The method whose time every Table 2 speed-up is relative to.
BASELINE_METHOD = "baseline"
# A printed speed-up further than this (percent points) from the one recomputed from the printed times is flagged.
SPEEDUP_TOLERANCE = 0.05


@dataclass(frozen=True)
class ReferenceNumber:
    table: str  # "Table 1" or "Table 2" of the source
    quantity: str  # a key of QUANTITIES
    model: str  # our model name (vgg13, ...)
    dataset: str  # our dataset name (cifar10, ...)
    method: str  # our method name (baseline, bnet, ...)
    value: float  # in `unit`
    unit: str  # "percent" or "ms"
    where: str  # table, row and column in the source


@dataclass
class ReferenceSource:
    key: str
    label: str  # short column header, e.g. "USI report"
    citation: str
    note: str = ""
    rows: dict[str, str] = field(default_factory=dict)  # our method -> the source's row name
    no_row: dict[str, str] = field(default_factory=dict)  # our method -> why the source has no row for it
    numbers: list[ReferenceNumber] = field(default_factory=list)
    path: str = "built-in"  # where it was read from

    def get(self, quantity: str, model: str, dataset: str, method: str) -> ReferenceNumber | None:
        for number in self.numbers:
            if (number.quantity, number.model, number.dataset, number.method) == (quantity, model, dataset, method):
                return number
        return None

    def recomputed_speedup(self, model: str, dataset: str, method: str) -> float | None:
        """(baseline latency / latency - 1) in percent from the source's own printed latencies, or None."""
        base = self.get("latency_ms", model, dataset, BASELINE_METHOD)
        this = self.get("latency_ms", model, dataset, method)
        if base is None or this is None or method == BASELINE_METHOD:
            return None
        return (base.value / this.value - 1.0) * 100.0


@dataclass
class References:
    sources: list[ReferenceSource]
    not_available: list[dict]  # {"citation", "note"}: sources we know of but hold no numbers for


# ---------------------------------------------------------------------------------------------- parsing


class _LineDict(dict):
    """A JSON object that remembers the line it starts on, so schema errors can name it."""

    line = 0


def _loads_with_lines(text: str):
    """json.loads, but every object is a _LineDict carrying its starting line number."""
    decoder = json.JSONDecoder()

    def parse_object(s_and_end, *args):
        text_, end = s_and_end
        obj, new_end = json.decoder.JSONObject(s_and_end, *args)
        result = _LineDict(obj)
        # `end` is just after the opening brace.
        result.line = text_.count("\n", 0, end) + 1
        return result, new_end

    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    return decoder.decode(text)


def _fail(path: str, line: int, message: str):
    raise ReproError(f"reference file {path}, line {line}: {message}")


def _text(obj: _LineDict, key: str, path: str, required: bool = True) -> str:
    value = obj.get(key, "" if not required else None)
    if not isinstance(value, str) or (required and not value):
        _fail(path, obj.line, f"{key!r} must be a non-empty string")
    return value


def _parse_number(obj, path: str) -> ReferenceNumber:
    if not isinstance(obj, _LineDict):
        raise ReproError(f"reference file {path}: every entry of 'numbers' must be an object")
    for key in ("table", "quantity", "model", "dataset", "method", "unit", "where"):
        _text(obj, key, path)
    if obj["quantity"] not in QUANTITIES:
        _fail(path, obj.line, f"unknown quantity {obj['quantity']!r}; valid: {', '.join(QUANTITIES)}")
    value = obj.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(path, obj.line, "'value' must be a number")
    expected_unit = "ms" if obj["quantity"] == "latency_ms" else "percent"
    if obj["unit"] != expected_unit:
        _fail(path, obj.line, f"{obj['quantity']} must be in {expected_unit!r}, not {obj['unit']!r}")
    if expected_unit == "percent" and obj["quantity"] != "speedup_percent" and not 0.0 <= value <= 100.0:
        _fail(path, obj.line, f"accuracy {value} is not a percentage in [0, 100]")
    if obj["quantity"] == "latency_ms" and value <= 0:
        _fail(path, obj.line, f"latency {value} ms must be positive")
    return ReferenceNumber(**{k: obj[k] for k in ("table", "quantity", "model", "dataset", "method", "unit", "where")}, value=float(value))


def _parse_source(obj, path: str) -> ReferenceSource:
    if not isinstance(obj, _LineDict):
        raise ReproError(f"reference file {path}: every entry of 'sources' must be an object")
    numbers_raw = obj.get("numbers")
    if not isinstance(numbers_raw, list):
        _fail(path, obj.line, "a source needs a list 'numbers'")
    for key in ("rows", "no_row"):
        mapping = obj.get(key, {})
        if not isinstance(mapping, dict) or not all(isinstance(v, str) and v for v in mapping.values()):
            _fail(path, obj.line, f"{key!r} must be an object mapping our method names to text")
    source = ReferenceSource(
        key=_text(obj, "key", path),
        label=_text(obj, "label", path),
        citation=_text(obj, "citation", path),
        note=_text(obj, "note", path, required=False),
        rows=dict(obj.get("rows", {})),
        no_row=dict(obj.get("no_row", {})),
        numbers=[_parse_number(n, path) for n in numbers_raw],
        path=path,
    )
    seen = set()
    for number, raw in zip(source.numbers, numbers_raw):
        key = (number.quantity, number.model, number.dataset, number.method)
        if key in seen:
            _fail(path, raw.line, f"a second {number.quantity} for {number.model}/{number.dataset}/{number.method}")
        seen.add(key)
    return source


def parse_references(text: str, path: str) -> References:
    """Parse and validate one reference file's text; errors name `path` and the line."""
    try:
        data = _loads_with_lines(text)
    except json.JSONDecodeError as error:
        raise ReproError(f"reference file {path} is not valid JSON: line {error.lineno}, column {error.colno}: {error.msg}") from None
    if not isinstance(data, _LineDict) or data.get("format") != FORMAT:
        line = data.line if isinstance(data, _LineDict) else 1
        _fail(path, line, f"not a reference file: it needs \"format\": \"{FORMAT}\" (see the built-in repro/report/references.json)")
    sources = data.get("sources", [])
    if not isinstance(sources, list):
        _fail(path, data.line, "'sources' must be a list")
    not_available = data.get("not_available", [])
    if not isinstance(not_available, list):
        _fail(path, data.line, "'not_available' must be a list of objects with 'citation' and 'note'")
    for item in not_available:
        if not isinstance(item, _LineDict):
            _fail(path, data.line, "every entry of 'not_available' must be an object with 'citation' and 'note'")
        _text(item, "citation", path)
        _text(item, "note", path)
    return References([_parse_source(s, path) for s in sources], [dict(n) for n in not_available])


def builtin_references() -> References:
    text = resources.files("repro.report").joinpath("references.json").read_text(encoding="utf-8")
    return parse_references(text, "built-in references.json")


def load_references(extra_files=()) -> References:
    """The built-in sources followed by each `--reference FILE`, in order; source keys must be unique."""
    merged = builtin_references()
    for raw in extra_files:
        path = Path(raw)
        if not path.is_file():
            raise ReproError(f"reference file {path} not found")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ReproError(f"reference file {path} cannot be read ({error})") from None
        more = parse_references(text, str(path))
        merged.sources.extend(more.sources)
        merged.not_available.extend(more.not_available)
    keys = [source.key for source in merged.sources]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ReproError(f"reference source key {duplicates[0]!r} is used twice; give each --reference file its own 'key'")
    return merged
