"""Probe history files: JSON and CSV round trips, flat columns for any number of modalities."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from _viz_helpers import fabricated_history

from pidsched.viz.history import (
    RunHistory,
    flatten_record,
    history_columns,
    read_history_csv,
    read_history_json,
    write_history_csv,
    write_history_json,
)

THREE = ("fou", "fac", "kar")


def test_json_round_trip_keeps_records_switch_and_final_epoch(tmp_path):
    run = RunHistory.from_records(fabricated_history(), switch_epoch=6, final_epoch=14)
    path = write_history_json(run, tmp_path / "run" / "pid_history.json")
    loaded = read_history_json(path)
    assert loaded == run
    assert loaded.records[3]["unique"] == {"audio": 0.16, "video": 0.32}
    assert json.loads(path.read_text())["modalities"] == ["audio", "video"]


def test_switch_epoch_is_taken_from_the_first_stage_2_probe_when_not_given():
    assert RunHistory.from_records(fabricated_history(switch_epoch=4)).switch_epoch == 4
    assert RunHistory.from_records(fabricated_history(switch_epoch=None)).switch_epoch is None
    # An explicit switch (probes every 5 epochs, switch between probes) wins over inference.
    probes = fabricated_history(probe_every=5, switch_epoch=8)
    assert RunHistory.from_records(probes).switch_epoch == 10
    assert RunHistory.from_records(probes, switch_epoch=8).switch_epoch == 8


def test_bare_list_of_records_is_a_readable_json_history(tmp_path):
    path = tmp_path / "pid_history.json"
    path.write_text(json.dumps(fabricated_history(switch_epoch=3)))
    loaded = read_history_json(path)
    assert loaded.records == RunHistory.from_records(fabricated_history(switch_epoch=3)).records
    assert loaded.switch_epoch == 3


def test_csv_has_one_row_per_probe_and_one_column_per_modality(tmp_path):
    records = fabricated_history(modalities=THREE, num_probes=5, paused_epochs={"fac": range(1, 3)})
    path = write_history_csv(RunHistory.from_records(records), tmp_path / "pid_history.csv")
    with path.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 5
    for name in THREE:
        for prefix in ("unique", "paused", "mutual_information_per_modality", "val_acc"):
            assert f"{prefix}/{name}" in rows[0]
    assert "val_acc/fused" in rows[0]
    assert [row["paused/fac"] for row in rows] == ["0", "1", "1", "0", "0"]
    assert [row["paused/kar"] for row in rows] == ["0"] * 5
    assert float(rows[2]["unique/kar"]) == records[2]["unique"]["kar"]
    assert rows[4]["stage"] == records[4]["stage"]


@pytest.mark.parametrize("modalities", [("audio", "video"), THREE])
def test_csv_round_trip_restores_the_records(tmp_path, modalities):
    run = RunHistory.from_records(fabricated_history(modalities=modalities))
    loaded = read_history_csv(write_history_csv(run, tmp_path / "pid_history.csv"))
    assert loaded.records == run.records
    assert loaded.switch_epoch == run.switch_epoch
    assert loaded.modality_names == list(modalities)


def test_missing_values_and_nan_are_absent_not_zero(tmp_path):
    records = fabricated_history(num_probes=3)
    records[1]["synergy"] = float("nan")
    del records[2]["val_acc"]["fused"]
    run = RunHistory.from_records(records)
    assert run.records[1]["synergy"] is None
    assert "synergy" not in flatten_record(run.records[1], run.modality_names)

    from_json = read_history_json(write_history_json(run, tmp_path / "h.json"))
    from_csv = read_history_csv(write_history_csv(run, tmp_path / "h.csv"))
    assert from_json.records[1]["synergy"] is None
    assert "synergy" not in from_csv.records[1]
    assert "fused" not in from_csv.records[2]["val_acc"]
    assert from_csv.records[0]["synergy"] == records[0]["synergy"]


def test_tensor_and_set_values_become_plain_python():
    record = fabricated_history(num_probes=1)[0]
    record["synergy"] = torch.tensor(0.25, dtype=torch.float64)
    record["unique"]["audio"] = torch.tensor(0.5)
    record["paused"] = frozenset({"video", "audio"})
    plain = RunHistory.from_records([record]).records[0]
    assert type(plain["synergy"]) is float and plain["synergy"] == 0.25
    assert type(plain["unique"]["audio"]) is float
    assert plain["paused"] == ["audio", "video"]


def test_columns_follow_first_seen_order_and_cover_late_keys():
    records = fabricated_history(num_probes=2)
    records[1]["val_acc"]["late_head"] = 0.5
    columns, rows = history_columns(RunHistory.from_records(records))
    assert columns[:3] == ["epoch", "stage", "paused/audio"]
    assert "val_acc/late_head" in columns and "val_acc/late_head" not in rows[0]


@pytest.mark.parametrize(
    ("records", "error", "match"),
    [
        ({"epoch": 0}, TypeError, "list of probe dicts"),
        ([3], TypeError, r"records\[0\] must be a dict"),
        ([{"stage": "joint"}], ValueError, "integer 'epoch'"),
        ([{"epoch": 1.0, "stage": "joint"}], ValueError, "integer 'epoch'"),
        ([{"epoch": 0, "stage": "fusion"}], ValueError, "'stage' in"),
        ([{"epoch": 0, "stage": "joint", "gap": object()}], TypeError, "probe records hold"),
    ],
)
def test_malformed_records_are_rejected_with_a_message(records, error, match):
    with pytest.raises(error, match=match):
        RunHistory.from_records(records)


def test_reading_a_json_that_is_not_a_history_says_so(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a pidsched probe history"):
        read_history_json(path)


def test_non_finite_values_never_reach_the_json(tmp_path):
    records = fabricated_history(num_probes=1)
    records[0]["gap"] = math.inf
    path = write_history_json(RunHistory.from_records(records), tmp_path / "h.json")
    assert json.loads(path.read_text())["records"][0]["gap"] is None


def test_intervals_and_certified_round_trip_through_json_and_csv(tmp_path):
    records = fabricated_history(modalities=THREE, interval_width=0.01, uncertified_epochs={2})
    run = RunHistory.from_records(records)
    from_json = read_history_json(write_history_json(run, tmp_path / "h.json"))
    path = write_history_csv(run, tmp_path / "h.csv")
    assert from_json.records == run.records
    assert read_history_csv(path).records == run.records

    with path.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["certified"] for row in rows[:4]] == ["True", "True", "False", "True"]
    assert float(rows[3]["interval_level"]) == 0.9
    unique = records[3]["unique"]["fac"]
    assert float(rows[3]["unique_low/fac"]) == round(unique - 0.01, 6)
    assert float(rows[3]["unique_high/fac"]) == round(unique + 0.02, 6)
    assert float(rows[3]["synergy_high"]) == round(records[3]["synergy"] + 0.02, 6)
    assert "interval" not in rows[0] and "interval/unique" not in rows[0]


def test_histories_without_intervals_read_as_before(tmp_path):
    records = fabricated_history()
    records[0]["interval"] = None  # a probe without bootstrap
    run = RunHistory.from_records(records)
    columns, _ = history_columns(run)
    assert not any("_low" in c or "_high" in c or c == "certified" for c in columns)
    assert "interval" not in run.records[0]
    loaded = read_history_csv(write_history_csv(run, tmp_path / "h.csv"))
    assert loaded.records == run.records and "certified" not in loaded.records[0]
    assert read_history_json(write_history_json(run, tmp_path / "h.json")).records == run.records
