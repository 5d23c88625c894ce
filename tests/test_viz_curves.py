"""The report picture: the numbers drawn, stage marks, paused bars, overlays of several runs."""

from __future__ import annotations

import math

import pytest
from _viz_helpers import fabricated_history
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.image import imread

from pidsched.viz.curves import paused_intervals, plot_pid_curves
from pidsched.viz.history import RunHistory

INFORMATION = ("redundancy", "synergy", "mutual_information")


def test_single_run_draws_every_recorded_value(tmp_path):
    records = fabricated_history()
    plot = plot_pid_curves({"seed 0": records}, tmp_path / "out" / "pid_curves.png")

    epochs = tuple(record["epoch"] for record in records)
    for name in ("audio", "video"):
        unique = plot.get("unique", "seed 0", name)
        assert unique.epochs == epochs
        assert unique.values == tuple(record["unique"][name] for record in records)
        head = plot.get("val_acc", "seed 0", name)
        assert head.values == tuple(record["val_acc"][name] for record in records)
    for quantity in INFORMATION:
        assert plot.get(quantity, "seed 0", quantity).values == tuple(r[quantity] for r in records)
    fused = plot.get("val_acc", "seed 0", "fused")
    assert fused.values == tuple(record["val_acc"]["fused"] for record in records)
    assert len(plot.series) == 2 + 3 + 3

    image = imread(plot.path)
    assert image.ndim == 3 and image.shape[0] > 800 and image.shape[1] > 800


def test_stages_are_shaded_at_the_recorded_switch(tmp_path):
    run = RunHistory.from_records(fabricated_history(switch_epoch=6), final_epoch=14)
    plot = plot_pid_curves({"run": run}, tmp_path / "pid_curves.png")
    assert plot.switch_epochs == {"run": 6}
    assert plot.shared_stage_shading
    assert plot.legend == (
        "stage 1: each modality trained on its own",
        "stage 2: fused model trained jointly",
        "stage switch: stage 2 from epoch 6",
    )


def test_a_run_that_never_switched_shows_only_stage_1(tmp_path):
    plot = plot_pid_curves({"run": fabricated_history(switch_epoch=None)}, tmp_path / "p.png")
    assert plot.switch_epochs == {"run": None}
    assert plot.legend == ("stage 1: each modality trained on its own",)


def test_paused_bars_cover_the_epochs_each_probe_reports():
    # Probes every epoch; audio reported paused at the probes of epochs 2 and 3, i.e. it did
    # not train in epochs 2 and 3: one bar from 1.5 to 3.5 on the epoch axis.
    run = RunHistory.from_records(fabricated_history(paused_epochs={"audio": range(2, 4)}))
    assert paused_intervals(run) == {"audio": ((1.5, 3.5),), "video": ()}


def test_paused_bars_with_sparse_probes_cover_the_epochs_since_the_previous_probe():
    records = fabricated_history(
        probe_every=5, num_probes=4, paused_epochs={"video": {5, 15}}, switch_epoch=None
    )
    # Probes at 0, 5, 10, 15: the probe at 5 covers epochs 1-5, the one at 15 epochs 11-15.
    assert paused_intervals(RunHistory.from_records(records))["video"] == (
        (0.5, 5.5),
        (10.5, 15.5),
    )


def test_missing_values_are_gaps_and_absent_series_are_not_drawn(tmp_path):
    records = fabricated_history(num_probes=4)
    del records[1]["val_acc"]["fused"]
    for record in records:
        del record["val_acc"]["video"]
    plot = plot_pid_curves({"run": records}, tmp_path / "p.png")
    fused = plot.get("val_acc", "run", "fused").values
    assert math.isnan(fused[1]) and not math.isnan(fused[0])
    with pytest.raises(KeyError, match="no line"):
        plot.get("val_acc", "run", "video")


def test_three_modalities_each_get_a_uniqueness_line_and_a_paused_row(tmp_path):
    modalities = ("fou", "fac", "kar")
    records = fabricated_history(modalities=modalities, paused_epochs={"kar": range(1, 3)})
    plot = plot_pid_curves({"mfeat": records}, tmp_path / "p.png")
    assert [s.name for s in plot.series if s.panel == "unique"] == list(modalities)
    assert plot.get("unique", "mfeat", "kar").values == tuple(r["unique"]["kar"] for r in records)
    assert plot.paused_intervals["mfeat"] == {"fou": (), "fac": (), "kar": ((0.5, 2.5),)}


def test_overlay_draws_each_run_with_its_own_values_and_legend_entry(tmp_path):
    histories = {
        "schedule=pid seed=0": fabricated_history(switch_epoch=6),
        "schedule=pid seed=1": fabricated_history(switch_epoch=8, offset=0.05),
        "schedule=joint seed=0": fabricated_history(switch_epoch=0, offset=0.1, paused_epochs={}),
    }
    plot = plot_pid_curves(histories, tmp_path / "overlay.png")

    for label, records in histories.items():
        synergy = plot.get("synergy", label, "synergy").values
        assert synergy == tuple(record["synergy"] for record in records)
        audio = plot.get("unique", label, "audio").values
        assert audio == tuple(record["unique"]["audio"] for record in records)
    assert (
        plot.get("synergy", "schedule=pid seed=1", "synergy").values
        != plot.get("synergy", "schedule=pid seed=0", "synergy").values
    )
    # Different switches: no common shading; each run's switch is named in the legend.
    assert not plot.shared_stage_shading
    assert plot.switch_epochs == {
        "schedule=pid seed=0": 6,
        "schedule=pid seed=1": 8,
        "schedule=joint seed=0": 0,
    }
    assert plot.legend == (
        "schedule=pid seed=0: stage 2 from epoch 6 (vertical line)",
        "schedule=pid seed=1: stage 2 from epoch 8 (vertical line)",
        "schedule=joint seed=0: stage 2 from epoch 0 (vertical line)",
    )
    assert plot.paused_intervals["schedule=joint seed=0"] == {"audio": (), "video": ()}


def test_overlay_of_runs_that_switched_together_keeps_the_shading(tmp_path):
    histories = {"seed=0": fabricated_history(), "seed=1": fabricated_history(offset=0.1)}
    plot = plot_pid_curves(histories, tmp_path / "overlay.png")
    assert plot.shared_stage_shading
    assert plot.legend[-2:] == ("seed=0", "seed=1")


@pytest.mark.parametrize(
    ("histories", "error", "match"),
    [
        ([fabricated_history()], TypeError, "map a run label"),
        ({}, ValueError, "empty"),
        ({"a": [], "b": []}, ValueError, "no probe was recorded"),
    ],
)
def test_bad_arguments_are_rejected_with_a_message(tmp_path, histories, error, match):
    with pytest.raises(error, match=match):
        plot_pid_curves(histories, tmp_path / "p.png")


def test_intervals_are_drawn_as_bands_and_uncertified_probes_as_hollow_markers(tmp_path):
    records = fabricated_history(interval_width=0.01, uncertified_epochs={1, 4})
    plot = plot_pid_curves({"run": records}, tmp_path / "pid_curves.png")
    unique = plot.get("unique", "run", "video")
    assert unique.has_band
    assert unique.lows == tuple(round(r["unique"]["video"] - 0.01, 6) for r in records)
    assert unique.highs == tuple(round(r["unique"]["video"] + 0.02, 6) for r in records)
    for quantity in INFORMATION:
        line = plot.get(quantity, "run", quantity)
        assert line.highs == tuple(round(r[quantity] + 0.02, 6) for r in records)
        assert line.uncertified_epochs == (1, 4)
    assert not plot.get("val_acc", "run", "fused").has_band
    assert "band: 90% bootstrap interval of the line" in plot.legend
    assert "hollow marker: probe not certified (no decision taken on it)" in plot.legend


def test_no_band_nor_hollow_marker_without_intervals(tmp_path):
    plot = plot_pid_curves({"run": fabricated_history()}, tmp_path / "pid_curves.png")
    assert not any(line.has_band or line.uncertified_epochs for line in plot.series)
    assert all(math.isnan(low) for line in plot.series for low in line.lows)
    assert not any(label.startswith(("band", "hollow")) for label in plot.legend)


@pytest.fixture
def drawn(monkeypatch):
    """The figures plot_pid_curves draws, rendered, as they are saved."""
    figures = []
    save = Figure.savefig

    def keep(figure, *args, **kwargs):
        save(figure, *args, **kwargs)
        figures.append(figure)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def _inside(figure, artist) -> bool:
    box = artist.get_window_extent(figure.canvas.get_renderer())
    width, height = figure.bbox.width, figure.bbox.height
    return box.x0 >= 0 and box.x1 <= width and box.y0 >= 0 and box.y1 <= height


def test_long_run_labels_stay_inside_the_picture(tmp_path, drawn):
    # Runs are labelled by their overrides: one line of three ran 200 px past each edge.
    overrides = (
        "schedule=pid seed={} trainer.max_epochs=30 data.num_samples=6000 stage1_max_epochs=12"
    )
    histories = {overrides.format(i): fabricated_history(offset=0.05 * i) for i in range(3)}
    plot_pid_curves(histories, tmp_path / "overlay.png")
    plot_pid_curves({overrides.format(0): histories[overrides.format(0)]}, tmp_path / "one.png")
    for figure in drawn:
        assert _inside(figure, figure.legends[0])
        assert _inside(figure, figure._suptitle)  # matplotlib keeps it only there


def test_more_than_ten_runs_get_distinct_colours(tmp_path, drawn):
    histories = {f"seed={i}": fabricated_history(offset=0.01 * i) for i in range(12)}
    plot_pid_curves(histories, tmp_path / "sweep.png")
    handles = drawn[0].legends[0].legend_handles[-12:]
    colours = {to_hex(handle.get_color()) for handle in handles}
    assert len(colours) == 12


def test_three_modalities_are_titled_as_one_vs_rest(tmp_path, drawn):
    records = fabricated_history(modalities=("fou", "fac", "kar"))
    plot_pid_curves({"mfeat": records}, tmp_path / "p.png")
    title = drawn[0].get_suptitle()
    assert "3 modalities as one-vs-rest pairs" in title and "= total" not in title


def test_the_reported_path_is_the_file_written(tmp_path):
    history = {"run": fabricated_history()}
    assert plot_pid_curves(history, tmp_path / "noext").path == tmp_path / "noext.png"
    assert (tmp_path / "noext.png").is_file()
    folder = tmp_path / "pictures"
    folder.mkdir()
    plot = plot_pid_curves(history, folder)
    assert plot.path == folder / "pid_curves.png" and plot.path.is_file()


def _hollow_markers_at_foot(figure) -> list[float]:
    """x of the hollow markers drawn in axes coordinates on y (at a panel's foot)."""
    xs = []
    for ax in figure.axes:
        for artist in ax.lines:
            if artist.get_markerfacecolor() == "white" and artist.get_transform() == (
                ax.get_xaxis_transform()
            ):
                xs += list(artist.get_xdata())
    return xs


def test_an_uncertified_probe_without_values_is_marked_at_the_panels_foot(tmp_path, drawn):
    # A solve that failed outright records NaN atoms: the marker must not vanish with the line.
    records = fabricated_history(interval_width=0.01, uncertified_epochs={3, 5})
    for atom in ("redundancy", "synergy"):
        records[3][atom] = math.nan
    records[3]["unique"] = {name: math.nan for name in records[3]["unique"]}
    plot = plot_pid_curves({"run": records}, tmp_path / "p.png")
    synergy = plot.get("synergy", "run", "synergy")
    assert synergy.uncertified_epochs == (3, 5)
    assert synergy.valueless_uncertified_epochs == (3,)
    # unique (2 lines), redundancy and synergy each mark epoch 3 at the foot; epoch 5 is drawn
    # at its value as before.
    assert sorted(_hollow_markers_at_foot(drawn[0])) == [3, 3, 3, 3]
    assert any("at the foot: no value" in label for label in plot.legend)


def test_a_line_whose_only_probe_failed_is_still_drawn(tmp_path, drawn):
    records = fabricated_history(num_probes=1, interval_width=0.01, uncertified_epochs={0})
    records[0]["synergy"] = math.nan
    plot = plot_pid_curves({"run": records}, tmp_path / "p.png")
    assert plot.get("synergy", "run", "synergy").valueless_uncertified_epochs == (0,)
    assert _hollow_markers_at_foot(drawn[0]) == [0]
