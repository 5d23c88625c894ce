"""Probe history files: what `PIDSchedulerCallback` measured at each probe, on disk.

A run's history is the callback's ``history`` list (one plain record per probe, the format of
``docs/architecture.md``) plus the epoch at which stage 2 began. It is written twice:

- ``pid_history.json``: lossless, read back by ``pidsched-report`` to redraw or overlay runs;
- ``pid_history.csv``: one row per probe for spreadsheets and pandas; per-modality dicts become
  one column per modality (``unique/audio``, ``val_acc/fused``) and the paused list becomes
  one 0/1 column per modality (``paused/audio``), so any number of modalities fits.

Information quantities are in bits throughout. Missing values (a probe without validation
accuracy, a NaN) are written as JSON ``null`` / an empty CSV cell and read back as ``None``
from JSON and as absent keys from CSV; the pictures draw both as gaps.

Bootstrap intervals (``record["interval"]``: ``{"level": 0.9, "unique": {m: [low, high]},
"redundancy": [low, high], ...}``) become the CSV columns ``interval_level``,
``unique_low/<m>``, ``unique_high/<m>``, ``redundancy_low``, ``redundancy_high``, ... and are
rebuilt on reading (a record's ``"interval": None``, a probe without bootstrap, is stored as
no key); ``certified`` (whether the probe's solve was certified and so decided
on) is a ``True``/``False`` column. Files written before these keys existed read as before.

Example::

    run = RunHistory.from_callback(scheduler_callback)
    write_history_json(run, "pid_history.json")
    write_history_csv(run, "pid_history.csv")
    assert read_history_json("pid_history.json").records == run.records
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HISTORY_JSON_NAME = "pid_history.json"
HISTORY_CSV_NAME = "pid_history.csv"
HISTORY_FORMAT = "pidsched.probe_history"
HISTORY_FORMAT_VERSION = 1

STAGES = ("unimodal", "joint")
# The one list-valued field of a probe record: the names of the paused modalities.
PAUSED_KEY = "paused"
# Separates a record key from a modality (or head) name in flat column names.
COLUMN_SEPARATOR = "/"
# The bootstrap interval of a probe: record[INTERVAL_KEY][atom] is [low, high] (bits), or
# {modality: [low, high]} for "unique"; its CSV columns are <atom>_low and <atom>_high.
INTERVAL_KEY = "interval"
INTERVAL_ATOMS = ("unique", "redundancy", "synergy", "mutual_information")
INTERVAL_LEVEL_COLUMN = "interval_level"
INTERVAL_ENDS = ("_low", "_high")
CERTIFIED_KEY = "certified"

ProbeRecord = dict[str, Any]


@dataclass(frozen=True)
class RunHistory:
    """The probe records of one run and the epoch at which its stage 2 began.

    Attributes:
        records: one plain dict per probe, in the format of ``docs/architecture.md``
            (``epoch``, ``stage``, ``paused``, ``unique``, ``redundancy``, ``synergy``,
            ``mutual_information``, ... in bits).
        switch_epoch: first epoch of stage 2 (joint training), or None if the run never left
            stage 1.
        final_epoch: last epoch trained, or None if unknown; pictures extend the last stage
            to it, since training may go on after the last probe.
    """

    records: list[ProbeRecord] = field(default_factory=list)
    switch_epoch: int | None = None
    final_epoch: int | None = None

    @classmethod
    def from_records(
        cls,
        records: Sequence[Mapping[str, Any]],
        switch_epoch: int | None = None,
        final_epoch: int | None = None,
    ) -> RunHistory:
        """Validates ``records`` and copies them into plain Python values.

        Args:
            records: probe records, e.g. ``PIDSchedulerCallback.history``.
            switch_epoch: first epoch of stage 2; when None it is taken from the first record
                whose stage is ``"joint"`` (exact when probing every epoch, up to the probe
                interval otherwise).
            final_epoch: last epoch trained, if known.

        Raises:
            TypeError: if ``records`` is not a sequence of mappings or holds a value that is
                neither a number, a string, a list of names nor a dict of those.
            ValueError: if a record lacks an integer ``epoch`` or a ``stage`` of
                ``"unimodal"``/``"joint"``.
        """
        if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence):
            raise TypeError(
                "`records` must be a list of probe dicts (PIDSchedulerCallback.history), "
                f"got {type(records).__name__}."
            )
        plain = [_validated_record(record, index) for index, record in enumerate(records)]
        if switch_epoch is None:
            switch_epoch = next((r["epoch"] for r in plain if r["stage"] == "joint"), None)
        return cls(records=plain, switch_epoch=switch_epoch, final_epoch=final_epoch)

    @classmethod
    def from_callback(cls, callback: Any, final_epoch: int | None = None) -> RunHistory:
        """Snapshot of a `PIDSchedulerCallback` (anything with ``history`` and ``switch_epoch``).

        Args:
            callback: the scheduler callback after (or during) a fit.
            final_epoch: last epoch trained, e.g. ``trainer.current_epoch``.
        """
        return cls.from_records(
            callback.history, switch_epoch=callback.switch_epoch, final_epoch=final_epoch
        )

    @property
    def modality_names(self) -> list[str]:
        """Modality names in the order the records first mention them."""
        names: dict[str, None] = {}
        for record in self.records:
            names.update(dict.fromkeys(record.get("unique", {})))
            names.update(dict.fromkeys(record.get(PAUSED_KEY, [])))
        return list(names)

    @property
    def epochs(self) -> list[int]:
        """The epoch of each probe."""
        return [record["epoch"] for record in self.records]

    def to_document(self) -> dict[str, Any]:
        """The JSON document written to ``pid_history.json``."""
        return {
            "format": HISTORY_FORMAT,
            "version": HISTORY_FORMAT_VERSION,
            "modalities": self.modality_names,
            "switch_epoch": self.switch_epoch,
            "final_epoch": self.final_epoch,
            "records": self.records,
        }


def write_history_json(history: RunHistory, path: str | Path) -> Path:
    """Writes ``history`` as a JSON document (``RunHistory.to_document``) and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(history.to_document(), indent=2, allow_nan=False) + "\n")
    return path


def read_history_json(path: str | Path) -> RunHistory:
    """Reads a history written by `write_history_json` (or a bare JSON list of probe records).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a probe history.
    """
    path = Path(path)
    document = json.loads(path.read_text())
    if isinstance(document, list):
        return RunHistory.from_records(document)
    if not isinstance(document, dict) or document.get("format") != HISTORY_FORMAT:
        raise ValueError(
            f"{path} is not a pidsched probe history: expected a JSON object with "
            f"format={HISTORY_FORMAT!r} (as written by PIDReportCallback) or a list of records."
        )
    return RunHistory.from_records(
        document["records"],
        switch_epoch=document.get("switch_epoch"),
        final_epoch=document.get("final_epoch"),
    )


def flatten_record(record: Mapping[str, Any], modality_names: Sequence[str]) -> dict[str, Any]:
    """One probe record as flat columns: scalars stay, dicts and the paused list spread out.

    Args:
        record: a validated probe record.
        modality_names: every modality of the run, so that ``paused/<name>`` is 0 or 1 for
            each of them (not only for the paused ones).

    Returns:
        ``{"epoch": 3, "stage": "unimodal", "paused/audio": 1, "paused/video": 0,
        "unique/audio": 0.41, ..., "val_acc/fused": 0.62}``; ``None`` values are dropped.
    """
    row: dict[str, Any] = {}
    for key, value in record.items():
        if key == INTERVAL_KEY:
            row.update(_flat_interval(value))
        elif key == PAUSED_KEY:
            paused = set(value)
            for name in dict.fromkeys([*modality_names, *value]):
                row[f"{key}{COLUMN_SEPARATOR}{name}"] = int(name in paused)
        elif isinstance(value, dict):
            for name, item in value.items():
                if item is not None:
                    row[f"{key}{COLUMN_SEPARATOR}{name}"] = item
        elif value is not None:
            row[key] = value
    return row


def unflatten_row(row: Mapping[str, Any]) -> ProbeRecord:
    """Inverse of `flatten_record` for rows whose values are already typed."""
    record: ProbeRecord = {}
    for column, value in row.items():
        key, separator, name = column.partition(COLUMN_SEPARATOR)
        if _is_interval_column(key):
            _add_interval_column(record.setdefault(INTERVAL_KEY, {}), key, name, value)
        elif not separator:
            record[key] = value
        elif key == PAUSED_KEY:
            paused = record.setdefault(PAUSED_KEY, [])
            if value:
                paused.append(name)
        else:
            record.setdefault(key, {})[name] = value
    return record


def interval_bounds(record: Mapping[str, Any], atom: str, name: str | None = None) -> Any:
    """``(low, high)`` in bits of ``atom`` (of modality ``name`` for ``"unique"``), or None.

    None when the probe has no bootstrap interval (``record["interval"]`` absent or None) or
    lacks that atom.
    """
    interval = record.get(INTERVAL_KEY)
    bounds = interval.get(atom) if isinstance(interval, Mapping) else None
    if name is not None:
        bounds = bounds.get(name) if isinstance(bounds, Mapping) else None
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or None in bounds:
        return None
    return float(bounds[0]), float(bounds[1])


def is_certified(record: Mapping[str, Any]) -> bool:
    """Whether a probe was certified (decided on); records older than the key count as True."""
    return record.get(CERTIFIED_KEY) is not False


def _flat_interval(interval: Any) -> dict[str, Any]:
    """``interval_level``, ``<atom>_low`` / ``<atom>_high`` (per modality for ``unique``)."""
    if not isinstance(interval, Mapping):
        return {}
    row: dict[str, Any] = {}
    if interval.get("level") is not None:
        row[INTERVAL_LEVEL_COLUMN] = interval["level"]
    for atom in INTERVAL_ATOMS:
        bounds = interval.get(atom)
        per_name = bounds.items() if isinstance(bounds, Mapping) else [(None, bounds)]
        for name, pair in per_name:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                continue
            for end, value in zip(INTERVAL_ENDS, pair, strict=True):
                if value is not None:
                    suffix = "" if name is None else f"{COLUMN_SEPARATOR}{name}"
                    row[f"{atom}{end}{suffix}"] = value
    return row


def _is_interval_column(key: str) -> bool:
    return key == INTERVAL_LEVEL_COLUMN or any(
        key == f"{atom}{end}" for atom in INTERVAL_ATOMS for end in INTERVAL_ENDS
    )


def _add_interval_column(interval: dict[str, Any], key: str, name: str, value: Any) -> None:
    if key == INTERVAL_LEVEL_COLUMN:
        interval["level"] = value
        return
    atom, _, end = key.rpartition("_")
    index = 0 if end == "low" else 1
    if name:
        pair = interval.setdefault(atom, {}).setdefault(name, [None, None])
    else:
        pair = interval.setdefault(atom, [None, None])
    pair[index] = value


def history_columns(history: RunHistory) -> tuple[list[str], list[dict[str, Any]]]:
    """The flat table of a history: column names (first-seen order) and one row per probe."""
    names = history.modality_names
    rows = [flatten_record(record, names) for record in history.records]
    columns = list(dict.fromkeys(column for row in rows for column in row))
    return columns, rows


def write_history_csv(history: RunHistory, path: str | Path) -> Path:
    """Writes one CSV row per probe (see `flatten_record`) and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns, rows = history_columns(history)
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_history_csv(path: str | Path) -> RunHistory:
    """Reads a CSV written by `write_history_csv` back into records.

    The CSV does not hold the switch epoch; it is taken from the first stage-2 probe.
    """
    with Path(path).open(newline="") as stream:
        rows = [
            unflatten_row(
                {column: _parse_cell(column, cell) for column, cell in row.items() if cell}
            )
            for row in csv.DictReader(stream)
        ]
    return RunHistory.from_records(rows)


def _parse_cell(column: str, cell: str) -> Any:
    if column == "epoch" or column.startswith(PAUSED_KEY + COLUMN_SEPARATOR):
        return int(cell)
    if cell in ("True", "False"):
        return cell == "True"
    try:
        return float(cell)
    except ValueError:
        return cell  # a text field such as the stage


def _validated_record(record: Any, index: int) -> ProbeRecord:
    if not isinstance(record, Mapping):
        raise TypeError(f"records[{index}] must be a dict, got {type(record).__name__}.")
    plain = {
        str(key): _plain_value(value, f"records[{index}][{key!r}]") for key, value in record.items()
    }
    epoch = plain.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise ValueError(f"records[{index}] needs an integer 'epoch', got {epoch!r}.")
    if plain.get("stage") not in STAGES:
        raise ValueError(f"records[{index}] needs 'stage' in {STAGES}, got {plain.get('stage')!r}.")
    plain.setdefault(PAUSED_KEY, [])
    # "interval": None (a probe without bootstrap) and no key mean the same; one form keeps the
    # JSON and CSV round trips equal.
    if INTERVAL_KEY in plain and plain[INTERVAL_KEY] is None:
        del plain[INTERVAL_KEY]
    return plain


def _plain_value(value: Any, where: str) -> Any:
    """JSON-ready copy of a record value; tensors and numpy scalars become Python numbers."""
    if hasattr(value, "item") and not isinstance(value, (Mapping, list, tuple)):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        # JSON has no NaN or infinity; a non-finite measurement is recorded as missing.
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain_value(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_value(v, where) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain_value(v, where) for v in value)
    raise TypeError(
        f"{where} is a {type(value).__name__}; probe records hold numbers, strings, lists of "
        "modality names and dicts of those."
    )
