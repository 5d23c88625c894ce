"""The run report picture: how unique, redundant and synergistic information move in training.

`plot_pid_curves` draws one run, or overlays several runs (seeds, schedules), into one PNG:

- four panels against epoch, in bits: the unique information of each modality, the redundancy,
  the synergy and the total information about the label;
- stage 1 (each modality trained on its own) and stage 2 (joint training) shaded, the switch
  marked; when overlaid runs switched at different epochs, each run's switch is a line in its
  colour instead;
- a strip showing when each modality was paused;
- the validation accuracy of each modality's head and of the fused model underneath;
- where the probes carry bootstrap intervals (``record["interval"]``), a band around each
  information line from the interval's low to its high end;
- probes whose PID solve was not certified (``record["certified"] is False``: no decision was
  taken on them) as hollow markers, with a legend entry saying so; one without a finite value
  (a solve that failed outright) is marked at the foot of its panel.

It returns a `PIDCurvesPlot` holding exactly the numbers drawn, so tests check data, not pixels.
Drawing uses matplotlib's Agg canvas directly (no pyplot state, no display needed).

Example::

    plot = plot_pid_curves({"seed 0": run0, "seed 1": run1}, "pid_curves.png")
    plot.get("synergy", "seed 1", "synergy").values  # bits, one per probe
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, PercentFormatter

from pidsched.viz.history import RunHistory, interval_bounds, is_certified

CURVES_PNG_NAME = "pid_curves.png"

INFORMATION_PANELS = ("unique", "redundancy", "synergy", "mutual_information")
ACCURACY_PANEL = "val_acc"
FUSED_HEAD = "fused"

STAGE_1_COLOR = "#e3ebf5"
STAGE_2_COLOR = "#fbeed3"
QUANTITY_COLORS = {"redundancy": "tab:purple", "synergy": "tab:red", "mutual_information": "0.2"}
# Modalities get broken line styles; solid is kept for the fused model and the aggregates.
LINE_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
SWITCH_LINE_STYLE = (0, (10, 4))
MARKERS = ("o", "s", "^", "D", "v", "P")
BAND_ALPHA = 0.18
# A point at epoch e stands for training epoch e, drawn as the band [e - 0.5, e + 0.5]: the
# stage switch and the paused bars fall between probe points, never on one.
EPOCH_HALF_WIDTH = 0.5
# Height (axes fraction) of the hollow marker of an uncertified probe that has no finite value.
FOOT = 0.04

Interval = tuple[float, float]


@dataclass(frozen=True)
class PlottedSeries:
    """One line of the picture.

    Attributes:
        panel: ``"unique"``, ``"redundancy"``, ``"synergy"``, ``"mutual_information"``
            (values in bits) or ``"val_acc"`` (values are accuracies in [0, 1]).
        run: the run's label.
        name: the modality (``"unique"``), the head (``"val_acc"``: a modality or ``"fused"``)
            or the panel's quantity itself.
        epochs: the probe epochs, shape (P,).
        values: the value at each probe, shape (P,); NaN where a probe did not record it.
        lows: the bootstrap interval's low end at each probe, shape (P,); NaN where the probe
            has no interval (always NaN for ``"val_acc"``).
        highs: the interval's high end, shape (P,), like ``lows``.
        certified: whether each probe was certified, shape (P,); True for records without
            the key (files written before it existed).
    """

    panel: str
    run: str
    name: str
    epochs: tuple[int, ...]
    values: tuple[float, ...]
    lows: tuple[float, ...]
    highs: tuple[float, ...]
    certified: tuple[bool, ...]

    @property
    def has_band(self) -> bool:
        """Whether any probe of this line has an interval (a band was drawn)."""
        return any(not math.isnan(low) for low in self.lows)

    @property
    def uncertified_epochs(self) -> tuple[int, ...]:
        """The probe epochs drawn as hollow markers (not certified)."""
        return tuple(e for e, ok in zip(self.epochs, self.certified, strict=True) if not ok)

    @property
    def valueless_uncertified_epochs(self) -> tuple[int, ...]:
        """The uncertified probe epochs without a finite value, marked at the panel's foot."""
        probes = zip(self.epochs, self.values, self.certified, strict=True)
        return tuple(e for e, value, ok in probes if not ok and not math.isfinite(value))


@dataclass(frozen=True)
class PIDCurvesPlot:
    """What `plot_pid_curves` drew.

    Attributes:
        path: the PNG written.
        series: every line drawn.
        switch_epochs: each run's first epoch of stage 2 (None: never switched).
        paused_intervals: run -> modality -> ``(start_epoch, end_epoch)`` bars drawn.
        shared_stage_shading: True when the stages were shaded (one run, or runs that all
            switched at the same epoch); False when each run's switch is a line instead.
        legend: the entries of the figure legend (stages, runs), in order.
    """

    path: Path
    series: tuple[PlottedSeries, ...]
    switch_epochs: dict[str, int | None]
    paused_intervals: dict[str, dict[str, tuple[Interval, ...]]]
    shared_stage_shading: bool
    legend: tuple[str, ...]

    def get(self, panel: str, run: str, name: str) -> PlottedSeries:
        """The series drawn for ``(panel, run, name)``.

        Raises:
            KeyError: if no such line was drawn (the message lists those that were).
        """
        for series in self.series:
            if (series.panel, series.run, series.name) == (panel, run, name):
                return series
        drawn = sorted((s.panel, s.run, s.name) for s in self.series)
        raise KeyError(f"no line ({panel!r}, {run!r}, {name!r}) was drawn; drawn: {drawn}")


def plot_pid_curves(
    histories: Mapping[str, RunHistory | Sequence[Mapping[str, Any]]],
    path: str | Path,
    *,
    title: str | None = None,
) -> PIDCurvesPlot:
    """Draws the PID curves of one or several runs into one PNG.

    Args:
        histories: run label -> that run's `RunHistory`, or its bare list of probe records
            (``PIDSchedulerCallback.history``; the switch epoch is then the first stage-2
            probe). One entry draws one run; several are overlaid, one colour per run.
        path: where to write the PNG; parent directories are created.
        title: first line of the figure title; a default explains what is shown.

    Returns:
        The `PIDCurvesPlot` with every number drawn.

    Raises:
        TypeError: if ``histories`` is not a mapping of labels to histories.
        ValueError: if it is empty or no run has a probe record.
    """
    runs = _as_run_histories(histories)
    series = collect_series(runs)
    switch_epochs = {label: run.switch_epoch for label, run in runs.items()}
    paused = {label: paused_intervals(run) for label, run in runs.items()}
    shared_shading = len(set(switch_epochs.values())) == 1

    figure, legend = _draw_figure(runs, series, paused, shared_shading, title)
    path = _picture_path(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return PIDCurvesPlot(
        path=path,
        series=tuple(series),
        switch_epochs=switch_epochs,
        paused_intervals=paused,
        shared_stage_shading=shared_shading,
        legend=tuple(legend),
    )


def collect_series(runs: Mapping[str, RunHistory]) -> list[PlottedSeries]:
    """Every line of the picture, computed from the records (lines with no value are left out).

    Args:
        runs: run label -> history.

    Returns:
        The series of all panels, runs in the given order.
    """
    return [line for label, run in runs.items() for line in _run_series(label, run)]


def _run_series(label: str, run: RunHistory) -> list[PlottedSeries]:
    records = sorted(run.records, key=lambda record: record["epoch"])
    epochs = tuple(record["epoch"] for record in records)
    wanted = [
        *(("unique", name, ("unique", name)) for name in run.modality_names),
        *((quantity, quantity, (quantity,)) for quantity in INFORMATION_PANELS[1:]),
        *((ACCURACY_PANEL, head, (ACCURACY_PANEL, head)) for head in _head_names(run)),
    ]
    certified = tuple(is_certified(record) for record in records)
    series = []
    for panel, name, keys in wanted:
        values = tuple(_number(_lookup(record, keys)) for record in records)
        # A line with no value is left out, unless a probe without one is uncertified: that
        # probe still gets its hollow marker, at the panel's foot.
        if all(math.isnan(value) for value in values) and (
            panel == ACCURACY_PANEL or all(certified)
        ):
            continue
        bounds = [_bounds(record, panel, name) for record in records]
        lows = tuple(low for low, _ in bounds)
        highs = tuple(high for _, high in bounds)
        series.append(PlottedSeries(panel, label, name, epochs, values, lows, highs, certified))
    return series


def _bounds(record: Mapping[str, Any], panel: str, name: str) -> tuple[float, float]:
    """The probe's interval of the line ``(panel, name)``; NaNs without one."""
    if panel == ACCURACY_PANEL:
        return math.nan, math.nan
    bounds = interval_bounds(record, panel, name if panel == "unique" else None)
    return bounds if bounds is not None else (math.nan, math.nan)


def _lookup(record: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    """``record[k1][k2]...``, or None where a key is missing."""
    value: Any = record
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def paused_intervals(run: RunHistory) -> dict[str, tuple[Interval, ...]]:
    """When each modality was paused, as intervals on the epoch axis.

    A record's ``paused`` list is the set in force while the epochs since the previous probe
    trained, so a probe at epoch e that follows a probe at epoch p marks epochs p+1..e, drawn
    as ``(p + 0.5, e + 0.5)``; adjacent intervals merge.

    Returns:
        modality -> ``((start, end), ...)`` in epochs, for every modality of the run.
    """
    records = sorted(run.records, key=lambda record: record["epoch"])
    intervals: dict[str, list[list[float]]] = {name: [] for name in run.modality_names}
    previous_epoch = -1
    for record in records:
        start = previous_epoch + EPOCH_HALF_WIDTH
        end = record["epoch"] + EPOCH_HALF_WIDTH
        previous_epoch = record["epoch"]
        for name in record.get("paused", []):
            spans = intervals.setdefault(name, [])
            if spans and spans[-1][1] >= start:
                spans[-1][1] = end
            else:
                spans.append([start, end])
    return {name: tuple((s, e) for s, e in spans) for name, spans in intervals.items()}


def _as_run_histories(histories: Any) -> dict[str, RunHistory]:
    if not isinstance(histories, Mapping):
        raise TypeError(
            "`histories` must map a run label to its history, e.g. {'seed 0': history}; "
            f"got {type(histories).__name__}."
        )
    if not histories:
        raise ValueError("`histories` is empty: pass at least one run to draw.")
    runs = {
        str(label): history if isinstance(history, RunHistory) else RunHistory.from_records(history)
        for label, history in histories.items()
    }
    if not any(run.records for run in runs.values()):
        raise ValueError(
            f"no probe was recorded in {list(runs)}: nothing to draw. A PID schedule probes at "
            "the end of its validation epochs (train at least one); a baseline run with "
            "schedule.controller.measure=false (JointController()/FixedController() in Python) "
            "records none."
        )
    return runs


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _head_names(run: RunHistory) -> list[str]:
    heads = dict.fromkeys(run.modality_names)
    for record in run.records:
        heads.update(dict.fromkeys(record.get("val_acc", {})))
    heads.pop(FUSED_HEAD, None)
    return [*heads, FUSED_HEAD]


# ---- drawing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Styles:
    """Colours and line styles: colour per run when overlaying, else colour per modality."""

    run_colors: dict[str, str]
    modality_names: list[str]
    overlay: bool

    def line(self, panel: str, run: str, name: str) -> dict[str, Any]:
        """Matplotlib line keywords for the line ``name`` of ``run`` in ``panel``."""
        index = self.modality_names.index(name) if name in self.modality_names else -1
        fused = name == FUSED_HEAD
        if self.overlay:
            color = self.run_colors[run]
            style = LINE_STYLES[index % len(LINE_STYLES)] if index >= 0 else "-"
        else:
            color = QUANTITY_COLORS.get(panel) or ("black" if fused else f"C{index % 10}")
            style = "-"
        marker = "*" if fused else MARKERS[index % len(MARKERS)] if index >= 0 else "o"
        width = 2.2 if fused else 1.6
        return {"color": color, "linestyle": style, "marker": marker, "linewidth": width}


def _draw_figure(
    runs: dict[str, RunHistory],
    series: list[PlottedSeries],
    paused: dict[str, dict[str, tuple[Interval, ...]]],
    shared_shading: bool,
    title: str | None,
) -> tuple[Figure, list[str]]:
    modality_names = list(dict.fromkeys(n for run in runs.values() for n in run.modality_names))
    overlay = len(runs) > 1
    styles = _Styles(
        run_colors=_run_colors(list(runs)),
        modality_names=modality_names,
        overlay=overlay,
    )
    strip_height = 0.6 + 0.35 * max(len(modality_names), 1) * (len(runs) if overlay else 1)
    figure = Figure(figsize=(13, 12 + strip_height), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(4, 2, height_ratios=[3, 3, strip_height, 3])
    axes = {
        "unique": figure.add_subplot(grid[0, 0]),
        "redundancy": figure.add_subplot(grid[0, 1]),
        "synergy": figure.add_subplot(grid[1, 0]),
        "mutual_information": figure.add_subplot(grid[1, 1]),
        "paused": figure.add_subplot(grid[2, :]),
        ACCURACY_PANEL: figure.add_subplot(grid[3, :]),
    }
    x_limits = _epoch_limits(runs)
    for panel, ax in axes.items():
        if panel != ACCURACY_PANEL:
            ax.sharex(axes[ACCURACY_PANEL])
        _mark_stages(ax, runs, styles, shared_shading, x_limits)
        ax.set_xlim(*x_limits)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)

    for line in series:
        _draw_line(axes[line.panel], line, styles.line(line.panel, line.run, line.name))
    _label_panels(axes, series, styles, len(modality_names))
    _draw_paused_strip(axes["paused"], paused, styles)
    legend = _add_figure_legend(figure, runs, styles, shared_shading, series)

    heading = title or "What each modality tells about the label during two-stage training"
    if not overlay:
        heading += f"  (run: {next(iter(runs))})"
    count = len(modality_names)
    explained = _IDENTITY_TWO if count <= 2 else _IDENTITY_MANY.format(count=count)
    figure.suptitle("\n".join([*textwrap.wrap(heading, _TITLE_CHARACTERS), explained]), fontsize=12)
    return figure, legend


# The identity the atoms of two modalities satisfy, and what the atoms of more mean (one-vs-rest
# pairs: their unique values, redundancies and synergies do not add up to the mean total).
_IDENTITY_TWO = (
    "Information in bits: unique (only this modality) + redundancy (shared) + synergy (only "
    "from the modalities together) = total information about the label"
)
_IDENTITY_MANY = (
    "Information in bits, {count} modalities as one-vs-rest pairs: unique (this modality "
    "against all others); redundancy, synergy and total are means over the pairs"
)
# Characters per line of the heading and of a legend entry at their font sizes: run labels are
# the runs' overrides, and one line of them ran past the figure's edges.
_TITLE_CHARACTERS, _LEGEND_CHARACTERS = 120, 48


def _run_colors(labels: Sequence[str]) -> dict[str, Any]:
    """One colour per overlaid run: the 10 default cycle colours, tab20's 20 beyond them, then
    evenly spaced hues (``C{i % 10}`` gave run 11 the colour of run 1)."""
    count = len(labels)
    if count <= 10:
        return {label: f"C{i}" for i, label in enumerate(labels)}
    if count <= 20:
        return {label: colormaps["tab20"](i) for i, label in enumerate(labels)}
    return {label: colormaps["hsv"](i / count) for i, label in enumerate(labels)}  # i < count


def _picture_path(path: Path) -> Path:
    """Where the picture goes: into an existing directory as ``pid_curves.png``; a name without
    a suffix gets ``.png`` (matplotlib adds it, and the path reported would miss it)."""
    if path.is_dir():
        return path / CURVES_PNG_NAME
    return path if path.suffix else path.with_suffix(".png")


def _draw_line(ax: Axes, line: PlottedSeries, style: dict[str, Any]) -> None:
    """The line, its interval band, and hollow markers on its uncertified probes."""
    ax.plot(line.epochs, line.values, markersize=4, **style)
    if line.has_band:
        ax.fill_between(
            line.epochs,
            line.lows,
            line.highs,
            color=style["color"],
            alpha=BAND_ALPHA,
            linewidth=0,
            zorder=1,
        )
    probes = list(zip(line.epochs, line.values, line.certified, strict=True))
    with_value = [(epoch, value) for epoch, value, ok in probes if not ok and math.isfinite(value)]
    # A probe whose solve failed outright may have no finite value: its marker sits at the
    # panel's foot (axes coordinates), so the failure shows instead of vanishing with the line.
    without_value = [
        (epoch, FOOT) for epoch, value, ok in probes if not ok and not math.isfinite(value)
    ]
    for points, transform in (
        (with_value, ax.transData),
        (without_value, ax.get_xaxis_transform()),
    ):
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(
                xs,
                ys,
                linestyle="none",
                marker=style["marker"],
                markersize=7,
                markerfacecolor="white",
                markeredgecolor=style["color"],
                markeredgewidth=1.4,
                zorder=3,
                transform=transform,
                clip_on=transform is ax.transData,
            )


def _epoch_limits(runs: dict[str, RunHistory]) -> tuple[float, float]:
    last = max(
        max([*run.epochs, run.final_epoch or 0, run.switch_epoch or 0]) for run in runs.values()
    )
    # A little beyond the half-epoch bands, so that a switch before epoch 0 stays visible.
    margin = 1.5 * EPOCH_HALF_WIDTH
    return -margin, max(float(last), 1.0) + margin


def _mark_stages(
    ax: Axes,
    runs: dict[str, RunHistory],
    styles: _Styles,
    shared_shading: bool,
    x_limits: tuple[float, float],
) -> None:
    """Shades stage 1 and 2 when all runs switched together; else one switch line per run."""
    start, end = x_limits
    if shared_shading:
        switch = next(iter(runs.values())).switch_epoch
        boundary = end if switch is None else switch - EPOCH_HALF_WIDTH
        if boundary > start:
            ax.axvspan(start, boundary, color=STAGE_1_COLOR, zorder=0, linewidth=0)
        if switch is not None:
            ax.axvspan(boundary, end, color=STAGE_2_COLOR, zorder=0, linewidth=0)
            ax.axvline(boundary, color="0.3", linestyle=SWITCH_LINE_STYLE, linewidth=1.2, zorder=1)
        return
    for label, run in runs.items():
        if run.switch_epoch is not None:
            ax.axvline(
                run.switch_epoch - EPOCH_HALF_WIDTH,
                color=styles.run_colors[label],
                linestyle=SWITCH_LINE_STYLE,
                linewidth=1.2,
            )


_PANEL_TITLES = {
    "unique": "Unique information: what only this modality tells about the label",
    "redundancy": "Redundancy: information about the label that both modalities carry",
    "synergy": "Synergy: information about the label available only from both together",
    "mutual_information": "Total information about the label, I(modalities; label)",
}
# With M > 2 modalities each is decomposed against the others' averaged prediction.
_PANEL_TITLES_MANY = {
    "unique": "Unique information: what only this modality tells (vs. all others)",
    "redundancy": "Redundancy: information shared with the other modalities (mean)",
    "synergy": "Synergy: information only available together with the others (mean)",
    "mutual_information": "Total information about the label (each vs. the others, mean)",
}


def _label_panels(
    axes: dict[str, Axes], series: list[PlottedSeries], styles: _Styles, num_modalities: int
) -> None:
    titles = _PANEL_TITLES if num_modalities <= 2 else _PANEL_TITLES_MANY
    for panel, text in titles.items():
        axes[panel].set_title(text, fontsize=10)
        axes[panel].set_ylabel("bits")
        axes[panel].set_ylim(bottom=0)
    axes[ACCURACY_PANEL].set_title(
        "Validation accuracy: each modality's own classifier head and the fused model",
        fontsize=10,
    )
    axes[ACCURACY_PANEL].set_ylabel("validation accuracy")
    axes[ACCURACY_PANEL].yaxis.set_major_formatter(PercentFormatter(xmax=1.0))

    legend_names = {
        "unique": lambda name: f"unique information of {name}",
        ACCURACY_PANEL: lambda name: "fused model" if name == FUSED_HEAD else f"{name} head alone",
    }
    for panel, describe in legend_names.items():
        names = list(dict.fromkeys(s.name for s in series if s.panel == panel))
        handles = [
            Line2D(
                [],
                [],
                **_legend_style(
                    styles.line(panel, _first_run(series, panel, n), n), styles.overlay
                ),
            )
            for n in names
        ]
        if handles:
            axes[panel].legend(
                handles, [describe(n) for n in names], fontsize=8, loc="best", handlelength=3
            )


def _first_run(series: list[PlottedSeries], panel: str, name: str) -> str:
    return next(s.run for s in series if (s.panel, s.name) == (panel, name))


def _legend_style(style: dict[str, Any], overlay: bool) -> dict[str, Any]:
    # In an overlay the colour stands for the run; the legend shows line style only.
    return {**style, "color": "0.35"} if overlay else style


def _draw_paused_strip(
    ax: Axes, paused: dict[str, dict[str, tuple[Interval, ...]]], styles: _Styles
) -> None:
    """One row per modality; in an overlay, one thin bar per run inside each row."""
    runs = list(paused)
    rows = styles.modality_names
    bar_height = 0.7 / (len(runs) if styles.overlay else 1)
    for row, name in enumerate(rows):
        for offset, label in enumerate(runs if styles.overlay else runs[:1]):
            spans = paused[label].get(name, ())
            color = styles.run_colors[label] if styles.overlay else f"C{row % 10}"
            bottom = row - 0.35 + offset * bar_height
            ax.broken_barh(
                [(s, e - s) for s, e in spans], (bottom, bar_height), color=color, alpha=0.75
            )
    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.invert_yaxis()
    ax.set_title("Paused modalities: a bar means that modality's branch was frozen", fontsize=10)
    if not any(spans for run in paused.values() for spans in run.values()):
        ax.text(
            0.5,
            0.5,
            "no modality was paused",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )


def _add_figure_legend(
    figure: Figure,
    runs: dict[str, RunHistory],
    styles: _Styles,
    shared_shading: bool,
    series: list[PlottedSeries],
) -> list[str]:
    handles: list[Any] = []
    labels: list[str] = []
    levels = {
        record["interval"].get("level")
        for run in runs.values()
        for record in run.records
        if isinstance(record.get("interval"), Mapping)
    }
    if any(line.has_band for line in series):
        handles.append(Patch(color="0.35", alpha=BAND_ALPHA * 2))
        level = next(iter(levels)) if len(levels) == 1 else None
        share = f"{level:.0%} " if isinstance(level, (int, float)) else ""
        labels.append(f"band: {share}bootstrap interval of the line")
    if any(line.uncertified_epochs for line in series):
        handles.append(
            Line2D(
                [], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="0.3"
            )
        )
        labels.append(
            "hollow marker: probe not certified (no decision taken on it; at the foot: no value)"
            if any(line.valueless_uncertified_epochs for line in series)
            else "hollow marker: probe not certified (no decision taken on it)"
        )
    if shared_shading:
        switch = next(iter(runs.values())).switch_epoch
        handles.append(Patch(color=STAGE_1_COLOR))
        labels.append("stage 1: each modality trained on its own")
        if switch is not None:
            handles += [
                Patch(color=STAGE_2_COLOR),
                Line2D([], [], color="0.3", linestyle=SWITCH_LINE_STYLE),
            ]
            labels += [
                "stage 2: fused model trained jointly",
                f"stage switch: stage 2 from epoch {switch}",
            ]
    if styles.overlay:
        for label, run in runs.items():
            handles.append(Line2D([], [], color=styles.run_colors[label], linewidth=2.5))
            switch_note = (
                ""
                if shared_shading or run.switch_epoch is None
                else (f": stage 2 from epoch {run.switch_epoch} (vertical line)")
            )
            labels.append(f"{label}{switch_note}")
    figure.legend(
        handles,
        [textwrap.fill(label, _LEGEND_CHARACTERS) for label in labels],
        loc="outside lower center",
        ncols=min(len(handles), 3),
        fontsize=9,
        frameon=False,
    )
    return labels
