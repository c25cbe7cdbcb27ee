"""Option groups shared by the dil commands, declared once (as Polygraphy's tools/args/).

Each group is a decorator that adds its click options to a command, and a function that reads
them back from the command's keyword arguments:

    @click.command()
    @date_options("--input")
    @sampler_options()
    def main(input_path, **kwargs):
        dates = pop_dates(kwargs)        # {"date_column": ..., "date_format": ..., "dayfirst": ...}
        sampler = pop_sampler(kwargs)    # SamplerConfig fields given (None: not given)

The rules the options feed (which date column, which sampler) live in the library
(dil.runtime.inputs.rules, dil.runtime.manifest); this module holds only their command-line form.
"""

from __future__ import annotations

from pathlib import Path

import click

from dil.runtime.sampling.schedule import SPACINGS

# Help of --spacing: the step grid of NoiseSchedule.sampling_grid.
SPACING_HELP = ("Step spacing of the solver's grid: logsnr (uniform in log signal-to-noise ratio, DPM-Solver++'s "
                "spacing; the last network call is made close to clean data) or time (uniform in diffusion time, the "
                "grid of earlier versions: its last call, at noise level 0.17 for 20 steps, left the samples "
                "under-dispersed). See docs/model.md section 5.1.")

DATE_KEYS = ("date_column", "date_format", "dayfirst")


def date_options(table: str = "--input", default_help: str | None = None):
    """--date-column, --date-format, --dayfirst/--monthfirst for the table named by the option `table`.
    default_help: what --date-column defaults to (None: no dates unless given)."""
    default = default_help or "none: the rows are steps without dates"

    def add(func):
        func = click.option("--dayfirst/--monthfirst", "dayfirst", default=None,
                            help="Read --date-column day-first (13.07.2016) or month-first (07/13/2016) [default: "
                                 "decided from the data, an error when both readings work].")(func)
        func = click.option("--date-format", default=None, metavar="FMT",
                            help="strptime format of --date-column, e.g. '%d.%m.%Y %H:%M' [default: ISO dates as "
                                 "such; other dates month-first or day-first, whichever reads every row; when both "
                                 "do, an error].")(func)
        func = click.option("--date-column", default=None, metavar="C",
                            help=f"Timestamp column of {table} [default: {default}].")(func)
        return func

    return add


def missing_value_option(table: str = "--input"):
    """--missing-value V (repeatable): cells of the series equal to V are missing values."""
    return click.option("--missing-value", "missing_values", multiple=True, type=float, metavar="V",
                        help=f"Read V in the series of {table} as a missing value, e.g. a sentinel such as -9999 "
                             "(repeatable).")


def pop_dates(kwargs: dict) -> dict:
    """The date options' values, taken out of a command's kwargs."""
    return {k: kwargs.pop(k) for k in DATE_KEYS}


# Sampler settings beyond the four main ones: option -> (SamplerConfig field, type, help) (docs/sampler.md
# section 1).
ADVANCED_SAMPLER_OPTIONS = [
    ("--num-diffusion-steps", "num_diffusion_steps", int, "Training steps T of the model (a check)."),
    ("--max-scales", "max_scales", int, "Lattice levels."),
    ("--entropy-budget", "entropy_budget", float, "Share of lattice nodes given top refresh priority, 0..1."),
    ("--temperature", "temperature", float, "Selection temperature: logits = temperature * entropy."),
    ("--max-solver-order", "max_solver_order", int, "Highest solver order the lattice may choose, 1..3."),
    ("--stability-threshold-low", "stability_threshold_low", float, "Instability below it: order 3."),
    ("--stability-threshold-high", "stability_threshold_high", float, "Instability at or above it: order 1."),
    ("--K", "K", int, "Always-recomputed core tokens."),
    ("--tau-0", "tau_0", float, "Initial change threshold of the token cache."),
    ("--R", "R", int, "A full step every R steps."),
    ("--tau-warn", "tau_warn", float, "Event intensity above which the next step is full."),
    ("--random-probe-ratio", "random_probe_ratio", float, "Share of cached tokens probed per step, 0..1."),
    ("--max-age", "max_age", int, "Staleness bound: most consecutive steps a token is reused."),
    ("--warmup-steps", "warmup_steps", int, "First steps computed in full."),
    ("--bucket", "bucket", int, "Computed-token count rounded up to a multiple of it."),
    ("--x0-clip", "x0_clip", float, "Clip of the data prediction, in context standard deviations (0: off)."),
]
MAIN_SAMPLER_KEYS = ("steps", "solver_order", "lattice", "cache", "spacing")


def sampler_options(advanced: bool = True, steps: bool = True):
    """--steps, --solver-order, --lattice/--no-lattice, --cache/--no-cache, --spacing and, with
    `advanced`, one option per other SamplerConfig setting. Every default is None: the artifact's
    sampler defaults (its manifest's sampler_defaults, else SamplerConfig's) apply to what is not
    given. steps=False leaves --steps to the command (dil-bench sweeps a list of them)."""
    from dil.runtime.sampling.config import SamplerConfig

    defaults = SamplerConfig()

    def add(func):
        if advanced:
            for flag, name, kind, text in reversed(ADVANCED_SAMPLER_OPTIONS):
                func = click.option(flag, name, default=None, type=kind,
                                    help=f"{text} [default: {getattr(defaults, name)}]")(func)
        # A bad choice is SamplerConfig's one-line error, as for every other setting.
        func = click.option("--spacing", default=None, type=str, metavar="|".join(SPACINGS),
                            help=SPACING_HELP + f" [default: {defaults.spacing}]")(func)
        func = click.option("--cache/--no-cache", default=None,
                            help="E2-CRF token cache: recompute only the tokens that need it. --no-lattice "
                                 "--no-cache is the plain DPM-Solver++ sampler, exactly. [default: the artifact's, "
                                 "else on]")(func)
        func = click.option("--lattice/--no-lattice", default=None,
                            help="Lattice controller: per-token solver orders and refresh priorities. [default: "
                                 "the artifact's, else on]")(func)
        func = click.option("--solver-order", default=None, type=int,
                            help="DPM-Solver++ multistep order (1-3) of the plain sampler (used when the lattice is "
                                 "off). [default: the artifact's (1 for a distilled student), else 2]")(func)
        if steps:
            func = click.option("--steps", default=None, type=int,
                                help="Solver steps (network evaluations). [default: the artifact's, else 20]")(func)
        return func

    return add


def pop_sampler(kwargs: dict) -> dict:
    """The sampler options' values (SamplerConfig field -> value or None), taken out of kwargs."""
    names = list(MAIN_SAMPLER_KEYS) + [name for _, name, _, _ in ADVANCED_SAMPLER_OPTIONS]
    return {k: kwargs.pop(k) for k in names if k in kwargs}


def artifact_option(required: bool = False):
    """--engine: the exported artifact (any file of it: NAME.onnx, NAME.json, NAME.plan)."""
    default = "" if required else " [default: the shipped metro-traffic model]"
    return click.option("--engine", default=None, required=required, metavar="PATH",
                        help=f"Exported artifact: NAME.onnx, NAME.json, NAME.plan or any sibling file of it.{default}")


def one_line(exc: BaseException) -> click.ClickException:
    """A library error as click's one-line error (its first line; the type's name when empty)."""
    text = str(exc).strip()
    return click.ClickException(text.splitlines()[0] if text else type(exc).__name__)


def checked_output(path: Path | None, option: str, folder: bool = False) -> None:
    """An output that cannot be written: click's one-line error before any work (OutputError)."""
    from dil.runtime.outputs.write import OutputError, check_output

    try:
        check_output(path, option, folder)
    except OutputError as exc:
        raise one_line(exc) from None
