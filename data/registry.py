"""The bundled datasets: where each file is, how it is cleaned, windowed and split.

Provenance, licenses, checksums and the reasons behind each choice are in PROVENANCE.md beside
this file. `DATASETS` is the single table the CLIs, the trainer and the evaluation read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from dil.runtime.inputs.table import DataError

FILES_DIR = Path(__file__).resolve().parent / "files"


@dataclass(frozen=True)
class Splits:
    """How a series of T rows is cut into chronological train / val / test parts.

    unit "fraction": train, val, test are shares of T (the train part ends at round(T * train), the
    validation part at round(T * (train + val)); the test part runs to the end when the shares sum
    to 1). unit "rows": train, val, test are row counts from row 0 (rows after them are unused), the
    published convention of ETT (12/4/4 months) and GluonTS exchange_rate_nips.
    """

    train: float = 0.7
    val: float = 0.1
    test: float = 0.2
    unit: str = "fraction"

    def __post_init__(self) -> None:
        if self.unit not in ("fraction", "rows"):
            raise ValueError(f"splits unit must be 'fraction' or 'rows', got {self.unit!r}")
        if min(self.train, self.val, self.test) <= 0:
            raise ValueError("split sizes must be positive")
        if self.unit == "fraction" and self.train + self.val + self.test > 1.0 + 1e-9:
            raise ValueError("split fractions must sum to at most 1")

    def describe(self) -> str:
        if self.unit == "rows":
            return f"rows {int(self.train)}/{int(self.val)}/{int(self.test)} (train/val/test)"
        return f"{self.train:.0%}/{self.val:.0%}/{self.test:.0%} of the rows (train/val/test)"

    def to_dict(self) -> dict:
        return {"train": self.train, "val": self.val, "test": self.test, "unit": self.unit}


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its file, its cleaning and its default forecasting setup.

    name: registry key. file: file name under dil/data/files (or a path for a user file).
    date_column: timestamp column (None: the rows are equally spaced steps without dates).
    columns: target series (None: every numeric column). names: column names for a headerless file.
    missing_values: sentinel values that mean "missing" in the published file (become NaN).
    date_format, dayfirst: how the date column of a user file is read (see dil.runtime.inputs.table.load_table).
    freq: pandas frequency alias of the rows. season: seasonal-naive lag in steps.
    context_length, horizon: default window (steps). splits: chronological train/val/test cut.
    """

    name: str
    file: str
    date_column: str | None
    columns: tuple[str, ...] | None
    freq: str | None
    season: int
    context_length: int
    horizon: int
    splits: Splits = field(default_factory=Splits)
    license: str = "unknown"
    source: str = ""
    names: tuple[str, ...] | None = None
    missing_values: tuple[float, ...] = ()
    bundled: bool = True
    date_format: str | None = None
    dayfirst: bool | None = None

    @property
    def path(self) -> Path:
        return FILES_DIR / self.file if self.bundled else Path(self.file)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="metro-traffic",
            file="metro_traffic.csv.gz",
            date_column="date_time",
            columns=("traffic_volume",),
            freq="h",
            season=168,  # one week: traffic has daily and weekday/weekend cycles
            # two weeks: in day tokens (context patch 24) a longer context costs training almost nothing
            context_length=336,
            horizon=24,
            splits=Splits(0.7, 0.1, 0.2),
            license="CC BY 4.0",
            source="UCI Metro Interstate Traffic Volume (John Hogue, 2019), I-94 ATR station 301",
        ),
        DatasetSpec(
            name="exchange-rate",
            file="exchange_rate.txt.gz",
            date_column=None,
            columns=None,
            names=("AUD", "GBP", "CAD", "CHF", "CNY", "JPY", "NZD", "SGD"),
            freq="B",  # business days, as in GluonTS exchange_rate_nips
            season=5,  # one business week
            context_length=120,
            horizon=30,  # the exchange_rate_nips prediction length
            # 6071 rows = the exchange_rate_nips train set, its last 607 held out for validation;
            # test = its 5 rolling windows of 30 steps (rows 6071..6220).
            splits=Splits(5464, 607, 150, unit="rows"),
            license="none stated",
            source="LSTNet (Lai et al., 2018), github.com/laiguokun/multivariate-time-series-data",
        ),
        DatasetSpec(
            name="etth1",
            file="ETTh1.csv.gz",
            date_column="date",
            columns=None,
            freq="h",
            season=168,
            context_length=168,
            horizon=24,
            splits=Splits(8640, 2880, 2880, unit="rows"),  # 12/4/4 months (Informer convention)
            license="CC BY-ND 4.0",
            source="ETDataset (Zhou et al., Informer, AAAI 2021), github.com/zhouhaoyi/ETDataset",
        ),
        DatasetSpec(
            name="etth2",
            file="ETTh2.csv.gz",
            date_column="date",
            columns=None,
            freq="h",
            season=168,
            context_length=168,
            horizon=24,
            splits=Splits(8640, 2880, 2880, unit="rows"),
            license="CC BY-ND 4.0",
            source="ETDataset (Zhou et al., Informer, AAAI 2021), github.com/zhouhaoyi/ETDataset",
        ),
        DatasetSpec(
            name="weather",
            file="weather.csv.gz",
            date_column="date",
            columns=None,
            freq="10min",
            season=144,  # one day of 10-minute steps
            context_length=288,
            horizon=144,
            splits=Splits(0.7, 0.1, 0.2),  # Autoformer convention
            missing_values=(-9999.0,),
            license="none stated for the data (Max Planck Institute for Biogeochemistry, Jena)",
            source="Autoformer weather benchmark (Wu et al., NeurIPS 2021), 2020 Jena roof station",
        ),
    )
}

DEFAULT_DATASET = "metro-traffic"

# The ProbTS long-term setting (Zhang et al., NeurIPS 2024 Datasets and Benchmarks; github.com/microsoft/ProbTS),
# `dil-eval --protocol probts` (docs/probts.md). ProbTS cuts the file's rows as they are (no cleaning,
# no reindexing), so its borders are rows of the raw file; dil.data.windows.probts_origins maps them
# onto the cleaned table by timestamp.
PROBTS_CONTEXT = 96  # context_length of config/ltsf/*/*.yaml
PROBTS_HORIZON = 96  # prediction_length of the same configs
PROBTS_STRIDE = 96  # DataManager's test_rolling_length default
# Windows per test batch in ProbTS's long-term configs (test_batch_size of config/ltsf/{etth1,etth2,
# weather_ltsf,exchange_ltsf}/*.yaml): the batch-pooled CRPS of its first evaluator depends on it.
PROBTS_BATCH_SIZES = (8, 16, 32, 64)


@dataclass(frozen=True)
class ProbTSSetup:
    """How ProbTS splits one of the bundled datasets (probts/data/data_utils/get_datasets.py,
    get_dataset_borders).

    probts_name: the dataset's name in ProbTS (its config folder). ett_rows: ETTh's fixed row ends of
    train / val / test (12/4/4 months of 30 days: 8640, 11520, 14400; rows after them unused); None:
    the ratio rule on the file's N rows, train = int(N * train_ratio), test = the last
    int(N * test_ratio), validation the rows between.
    """

    probts_name: str
    ett_rows: tuple[int, int, int] | None = None
    train_ratio: float = 0.7
    test_ratio: float = 0.2

    def describe(self) -> str:
        if self.ett_rows is not None:
            a, b, c = self.ett_rows
            return f"ProbTS {self.probts_name}: file rows 0..{a - 1} / {a}..{b - 1} / {b}..{c - 1} (train/val/test)"
        return (f"ProbTS {self.probts_name}: int(N*{self.train_ratio}) train rows, the last int(N*{self.test_ratio}) "
                "test, validation between, N = the file's rows")


PROBTS = {
    "etth1": ProbTSSetup("etth1", ett_rows=(8640, 11520, 14400)),
    "etth2": ProbTSSetup("etth2", ett_rows=(8640, 11520, 14400)),
    "weather": ProbTSSetup("weather_ltsf"),
    "exchange-rate": ProbTSSetup("exchange_ltsf"),
}


def probts_setup(name: str) -> ProbTSSetup:
    """ProbTS's split of the bundled dataset `name`, or DataError naming the datasets it covers."""
    try:
        return PROBTS[name]
    except KeyError:
        raise DataError(f"the probts protocol covers the bundled datasets {', '.join(PROBTS)}, not {name!r}") from None


# Seasonal-naive lag for user files, by row frequency (pandas alias); 1 (naive) otherwise.
_SEASON_BY_FREQ = {"h": 168, "10min": 144, "15min": 96, "30min": 48, "min": 1440, "D": 7, "B": 5}


@dataclass(frozen=True)
class FrequencyPreset:
    """What a new run on rows of one frequency defaults to: the window (context_length, horizon
    steps) of a table with no window of its own, and the natural step groups a patch is chosen from
    (e.g. 10-minute rows: 1, 2 and 3 steps, an hour, 2, 3, 4, 6, 12 hours, a day)."""

    name: str
    context_length: int
    horizon: int
    groups: tuple


PRESETS = {
    "10min": FrequencyPreset("10-minute", 288, 144, (1, 2, 3, 6, 12, 18, 24, 36, 72, 144)),
    "15min": FrequencyPreset("15-minute", 192, 96, (1, 2, 4, 8, 12, 16, 24, 48, 96)),
    "30min": FrequencyPreset("30-minute", 336, 48, (1, 2, 4, 6, 8, 12, 24, 48)),
    "h": FrequencyPreset("hourly", 336, 24, (1, 2, 3, 4, 6, 8, 12, 24)),
    "D": FrequencyPreset("daily", 56, 14, (1, 7, 14, 28)),
    "B": FrequencyPreset("business-day", 60, 10, (1, 5, 10, 20)),
    "W": FrequencyPreset("weekly", 104, 8, (1, 2, 4, 13, 26, 52)),
}
# Rows of another or unknown frequency: any divisor up to a day of hours.
OTHER = FrequencyPreset("other", 168, 24, (1, 2, 3, 4, 6, 8, 12, 24))


def frequency_preset(freq: str | None) -> FrequencyPreset:
    """The preset of rows of pandas frequency `freq` (OTHER for None or one without a preset)."""
    if not freq:
        return OTHER
    import pandas as pd

    try:
        offset = pd.tseries.frequencies.to_offset(freq)
    except ValueError:
        return OTHER
    for key, preset in PRESETS.items():
        other = pd.tseries.frequencies.to_offset(key)
        if offset == other or (key == "W" and offset.rule_code.startswith("W")):
            return preset
    return OTHER


def get_spec(name: str) -> DatasetSpec:
    """The bundled dataset `name`, or DataError listing the valid names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None


def season_for_freq(freq: str | None) -> int:
    """Default seasonal-naive lag for rows of frequency `freq` (1 when unknown)."""
    return _SEASON_BY_FREQ.get(freq or "", 1)


def file_spec(path, table=None, date_column=None, columns=None, context_length=None, horizon=None, date_format=None,
              dayfirst=None, missing_values=()) -> DatasetSpec:
    """A DatasetSpec for a user file: 70/10/20 chronological split, season and window (context_length,
    horizon; None: the row frequency's preset, frequency_preset) from the frequency.

    table: the loaded SeriesTable (gives freq and the selected columns), optional. date_format,
    dayfirst: how its dates were read (load_table's arguments); missing_values: the values read as
    missing (--missing-value).
    """
    freq = table.freq if table is not None else None
    cols = tuple(table.names) if table is not None else (tuple(columns) if columns else None)
    preset = frequency_preset(freq)  # the window of the row frequency's preset unless given
    context_length = preset.context_length if context_length is None else context_length
    horizon = preset.horizon if horizon is None else horizon
    return DatasetSpec(
        name=Path(path).name,
        file=str(path),
        date_column=date_column,
        columns=cols,
        freq=freq,
        season=season_for_freq(freq),
        context_length=context_length,
        horizon=horizon,
        license="user data",
        source=str(Path(path).name),
        bundled=False,
        date_format=date_format,
        dayfirst=dayfirst,
        missing_values=tuple(float(v) for v in missing_values),
    )


def with_window(spec: DatasetSpec, context_length=None, horizon=None) -> DatasetSpec:
    """The same spec with another default window (None keeps the value)."""
    return replace(
        spec,
        context_length=spec.context_length if context_length is None else int(context_length),
        horizon=spec.horizon if horizon is None else int(horizon),
    )
