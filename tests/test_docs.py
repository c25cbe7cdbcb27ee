"""The docs say what the code and the shipped artifact are.

- docs/architecture.md section 1 lists every module of runtime/, data/, train/, export/ and
  evaluate/ (``__init__.py`` aside), each file under its folder's block, and lists nothing else.
- README.md and docs/model.md state the shipped model (engines/metro-traffic.json) as its manifest
  records it: the numbers are read from the sentences of the docs with regexes and compared with the
  manifest's `model`, `features`, `sampler_defaults` and `checkpoint` records (and the teacher's,
  engines/metro-traffic-teacher.json), so a re-export or an edit of either side that makes them
  disagree fails here.

No network, no engine call: the manifests are read with dil.runtime.load_manifest (which also
checks the graph files' sha256).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_ROOTS = ("runtime", "data", "train", "export", "evaluate")
ORDERS = {"first": 1, "second": 2, "third": 3}
NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}


def _text(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def _flat(text: str) -> str:
    """The text with every run of whitespace (line breaks included) as one space."""
    return " ".join(text.split())


def _section(text: str, number: int) -> str:
    """Section `number` of a page: from its "## N." heading to the next "## " heading."""
    start = re.search(rf"^## {number}\. ", text, re.M)
    assert start, f"no section {number}"
    end = re.search(r"^## ", text[start.end():], re.M)
    return text[start.start(): start.end() + end.start() if end else len(text)]


def _find(pattern: str, text: str, where: str) -> re.Match:
    m = re.search(pattern, text)
    assert m, f"{where} no longer states {pattern!r}; update the sentence or this test"
    return m


# --- docs/architecture.md section 1: the layout ---------------------------------------------------

# A folder's block starts with the folder at an indent of 4 ("    runtime/inputs/   what it holds");
# its modules follow at an indent of 8 ("        rules.py    what it holds"). Description lines that
# wrap are indented further, so they never read as a module.
_FOLDER_LINE = re.compile(r"^ {4}([a-z_]+(?:/[a-z_]+)*/)(?=\s|$)")
_MODULE_LINE = re.compile(r"^ {8}([^\s/]+\.py)(?:\s+(.*))?$")


def _layout() -> tuple[list[str], list[tuple[str, str]]]:
    """(folders, [(module path, description)]) as section 1 of docs/architecture.md lists them."""
    folders, modules, folder = [], [], None
    for line in _section(_text("docs/architecture.md"), 1).splitlines():
        m = _FOLDER_LINE.match(line)
        if m:
            folder = m.group(1)
            folders.append(folder)
            continue
        m = _MODULE_LINE.match(line)
        if m:
            assert folder is not None, f"module line before any folder line: {line!r}"
            modules.append((folder + m.group(1), (m.group(2) or "").strip()))
    return folders, modules


def _modules_on_disk() -> set[str]:
    found = set()
    for top in MODULE_ROOTS:
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if path.name == "__init__.py" or any(p == "__pycache__" or p.startswith(".") for p in rel.parts):
                continue
            found.add(rel.as_posix())
    return found


def test_the_layout_lists_every_module_once_and_nothing_else():
    folders, modules = _layout()
    listed = [path for path, _ in modules]
    assert len(listed) == len(set(listed)), f"listed twice: {sorted({p for p in listed if listed.count(p) > 1})}"
    on_disk = _modules_on_disk()
    unlisted, gone = sorted(on_disk - set(listed)), sorted(set(listed) - on_disk)
    assert not unlisted and not gone, (f"docs/architecture.md section 1: modules not listed {unlisted}; "
                                       f"listed but not a module {gone}")
    for folder in folders:
        if folder.split("/")[0] in MODULE_ROOTS:
            assert (ROOT / folder).is_dir(), f"docs/architecture.md section 1 lists a folder that is gone: {folder}"
    assert len(folders) == len(set(folders)), "a folder has two blocks"


def test_every_listed_module_says_what_it_holds():
    _, modules = _layout()
    assert modules, "no module found in docs/architecture.md section 1"
    assert not [p for p, words in modules if not words], "a module is listed without a description"


def test_the_layout_parser_reads_folders_modules_and_wrapped_descriptions():
    # The format the layout test relies on, checked on a small example.
    sample = ("    runtime/inputs/     the inputs\n"
              "        rules.py        the input rules: a description long enough\n"
              "                        to wrap onto a line that mentions other.py\n"
              "    benchmarks/, docs/, tests/\n")
    folders, modules, folder = [], [], None
    for line in sample.splitlines():
        if m := _FOLDER_LINE.match(line):
            folder = m.group(1)
            folders.append(folder)
        elif m := _MODULE_LINE.match(line):
            modules.append(folder + m.group(1))
    assert folders == ["runtime/inputs/"] and modules == ["runtime/inputs/rules.py"]


def test_the_dependency_rule_names_every_contract_and_the_cli_one():
    section = _flat(_section(_text("docs/architecture.md"), 2))
    pyproject = _text("pyproject.toml")
    blocks = pyproject.split("[[tool.importlinter.contracts]]")[1:]
    m = _find(r"These rules are the (\w+) import-linter contracts", section, "docs/architecture.md section 2")
    assert NUMBER_WORDS.get(m.group(1), m.group(1)) == len(blocks)
    cli = [b for b in blocks if "command-line" in b]
    assert len(cli) == 1, "pyproject.toml's contract on command-line modules is gone or doubled"
    forbidden = re.search(r"forbidden_modules = \[(.*?)\]", cli[0], re.S).group(1)
    for module in re.findall(r'"([\w.]+)"', forbidden):
        assert f"`{module}`" in section, f"docs/architecture.md section 2 does not name {module}"


# --- README.md and docs/model.md: the shipped model -----------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    from dil.runtime import load_manifest

    return load_manifest(ROOT / "engines" / "metro-traffic.json")


@pytest.fixture(scope="module")
def teacher():
    from dil.runtime import load_manifest

    return load_manifest(ROOT / "engines" / "metro-traffic-teacher.json")


def _training(manifest) -> dict:
    return manifest.extra["checkpoint"]["training"]


def _distill(manifest) -> dict:
    return _training(manifest)["distill"]


def _check_plain_default(manifest, steps: int, order: int | None, where: str) -> None:
    """The manifest's sampler_defaults are the plain DPM-Solver++ (lattice and cache off) at `steps`
    steps (and `order`, where a doc states it)."""
    sd = manifest.sampler_defaults
    assert sd is not None, f"{manifest.name} records no sampler_defaults but {where} states one"
    assert sd["lattice"] is False and sd["cache"] is False, f"{where}: the default is not the plain sampler: {sd}"
    assert sd["steps"] == steps, f"{where} says {steps} steps, the manifest records {sd['steps']}"
    if order is not None:
        assert manifest.default_sampler().solver_order == order, (
            f"{where} says order {order}, the manifest records {manifest.default_sampler().solver_order}")


def test_readme_states_the_shipped_default_sampler(shipped):
    readme = _flat(_text("README.md"))
    m = _find(r"the shipped model runs the plain DPM-Solver\+\+ sampler with (\d+) (first|second|third)-order steps",
              readme, "README.md's opening")
    _check_plain_default(shipped, int(m.group(1)), ORDERS[m.group(2)], "README.md's opening")
    m = _find(r"its default sampler, (\d+) (first|second|third)-order steps", readme, "README.md's results")
    _check_plain_default(shipped, int(m.group(1)), ORDERS[m.group(2)], "README.md's results")
    # The old claim that the fast sampler is what runs by default.
    assert "By default the fast sampler" not in readme


def test_readme_states_the_shipped_model(shipped):
    readme = _flat(_text("README.md"))
    model, data, features = shipped.model, shipped.data, shipped.features
    assert data["freq"] == "h", "the README's sentences speak of hours: update them with the data's frequency"
    m = _find(r"The model: context (\d+) hours in (\d+)-hour \(day\) tokens, horizon (\d+) hours in (\d+)-hour "
              r"tokens, the (\d+) hourly calendar time features, (v|epsilon)-prediction\.", readme,
              "README.md's results")
    context, patch, horizon, horizon_patch, n_time, prediction = m.groups()
    assert int(context) == model.context_length
    assert int(patch) == model.context_patch == 24  # "(day)"
    assert int(horizon) == model.horizon
    assert int(horizon_patch) == model.horizon_patch
    assert int(n_time) == len(features.time_features)
    assert prediction == model.prediction
    # Quick start: "context two weeks, horizon one day", "at least 336 hourly rows".
    m = _find(r"context (\w+) weeks?, horizon (\w+) days?", readme, "README.md's quick start")
    assert NUMBER_WORDS[m.group(1)] * 7 * 24 == model.context_length
    assert NUMBER_WORDS[m.group(2)] * 24 == model.horizon
    m = _find(r"at least (\d+) hourly rows", readme, "README.md's quick start")
    assert int(m.group(1)) == model.context_length


def test_readme_states_the_student_and_its_teacher(shipped, teacher):
    readme = _flat(_text("README.md"))
    distill, training = _distill(shipped), _training(shipped)
    m = _find(r"It is a (\d+)-step student of a (\d+)-epoch teacher", readme, "README.md's results")
    assert int(m.group(1)) == distill["student_steps"] == shipped.sampler_defaults["steps"]
    assert int(m.group(2)) == _training(teacher)["epochs"]
    m = _find(r"dil's teacher, plain DPM-Solver\+\+ at (\d+) steps", readme, "README.md's results table")
    _check_plain_default(teacher, int(m.group(1)), None, "README.md's results table")
    m = _find(r"taught to reach in (\d+) (first|second|third)-order steps what the teacher's plain sampler "
              r"reaches in (\d+)", readme, "README.md's dil-train")
    assert int(m.group(1)) == distill["student_steps"]
    assert ORDERS[m.group(2)] == shipped.default_sampler().solver_order
    assert int(m.group(3)) == distill["teacher_steps"]
    m = _find(r"dil-train --distill runs/(\S+) --student-steps (\d+) --epochs (\d+) --batch-size (\d+) --lr ([\d.e-]+)",
              readme, "README.md's pipeline")
    assert m.group(1) == distill["teacher"]
    assert int(m.group(2)) == distill["student_steps"]
    assert int(m.group(3)) == training["epochs"]
    assert int(m.group(4)) == training["batch_size"]
    assert float(m.group(5)) == training["lr"]
    m = _find(r"The teacher was trained with `--epochs (\d+) --patience (\d+)`", readme, "README.md's pipeline")
    assert int(m.group(1)) == _training(teacher)["epochs"]
    assert int(m.group(2)) == _training(teacher)["patience"]


def test_model_page_states_the_shipped_model(shipped):
    page = _flat(_text("docs/model.md"))
    model, features = shipped.model, shipped.features
    m = _find(r"L = (\d+) context steps in tokens of P = (\d+), H = (\d+) horizon steps in tokens of Ph = (\d+), "
              r"D = (\d+), (\d+) heads, (\d+) blocks, MLP width (\d+), E = (\d+), (v|epsilon)-prediction, "
              r"(time|frequency) domain; per step Fc = (\d+) context features and Fh = (\d+) horizon features "
              r"\(the (\d+) hourly calendar time features, no covariates\)", page, "docs/model.md section 3")
    numbers = [int(x) for x in m.groups()[:9]]
    assert numbers == [model.context_length, model.context_patch, model.horizon, model.horizon_patch,
                       model.d_model, model.num_heads, model.num_layers, model.ffn_dim, model.time_embed_dim]
    assert m.group(10) == model.prediction
    assert m.group(11) == model.domain
    assert int(m.group(12)) == model.context_features
    assert int(m.group(13)) == model.horizon_features
    assert int(m.group(14)) == len(features.time_features)
    assert not features.covariates
    assert shipped.data["freq"] == "h"


def test_model_page_states_the_shipped_sampler_and_distillation(shipped):
    page = _flat(_text("docs/model.md"))
    m = _find(r"runs (\d+) (first|second|third)-order steps of the plain DPM-Solver\+\+ sampler by default", page,
              "docs/model.md section 3")
    _check_plain_default(shipped, int(m.group(1)), ORDERS[m.group(2)], "docs/model.md section 3")
    m = _find(r"the shipped model runs (\d+)\)", page, "docs/model.md section 5.1")
    _check_plain_default(shipped, int(m.group(1)), None, "docs/model.md section 5.1")
    m = _find(r"\| `(v|epsilon)` \(new runs, the shipped model\)", page, "docs/model.md section 2.2")
    assert m.group(1) == shipped.model.prediction
    distill, training = _distill(shipped), _training(shipped)
    m = _find(r"The shipped `metro-traffic` is such a student of `([\w-]+)` \(the manifest's "
              r"`checkpoint\.training\.distill`\): (\d+) (first|second|third)-order steps trained to match (\d+) "
              r"steps of order (\d+) of the teacher's plain sampler, in (\d+) epochs at batch (\d+) and "
              r"lr ([\d.e-]+)\.",
              page, "docs/model.md section 4")
    teacher_name, steps, order, teacher_steps, teacher_order, epochs, batch, lr = m.groups()
    assert Path(teacher_name).name.startswith(distill["teacher"])
    assert int(steps) == distill["student_steps"] == shipped.sampler_defaults["steps"]
    assert ORDERS[order] == shipped.default_sampler().solver_order
    assert int(teacher_steps) == distill["teacher_steps"]
    assert int(teacher_order) == distill["teacher_order"]
    assert int(epochs) == training["epochs"]
    assert int(batch) == training["batch_size"]
    assert float(lr) == training["lr"]


def test_model_page_states_the_teacher_run(teacher):
    page = _flat(_text("docs/model.md"))
    training, progress = _training(teacher), teacher.extra["checkpoint"]["progress"]
    m = _find(r"`--epochs (\d+) --patience (\d+)` \(the shipped model's teacher, shipped as `metro-traffic-teacher`, "
              r"`engines/README\.md`\): (\d+) epochs \((\d+) steps, best epoch (\d+)\)", page,
              "docs/model.md section 4")
    epochs, patience, ran, steps, best = (int(x) for x in m.groups())
    assert (epochs, patience) == (training["epochs"], training["patience"])
    assert ran == progress["epochs_done"]
    assert steps == ran * training["steps_per_epoch"]
    assert best == training["best_epoch"]
    m = _find(r"^.{0,200}?best validation loss (0\.\d+)", page[m.end():], "docs/model.md section 4's teacher run")
    assert float(m.group(1)) == round(training["best_val_loss"], len(m.group(1)) - 2)


# --- the docs list -------------------------------------------------------------------------------

def test_readme_lists_every_docs_page():
    readme = _text("README.md")
    docs = _section_by_title(readme, "Docs")
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"`docs/{p.name}`" not in docs]
    assert not missing, f"README.md's Docs list lacks {missing}"


def _section_by_title(text: str, title: str) -> str:
    start = re.search(rf"^## {re.escape(title)}\s*$", text, re.M)
    assert start, f"no section {title!r}"
    end = re.search(r"^## ", text[start.end():], re.M)
    return text[start.end(): start.end() + end.start() if end else len(text)]


def test_docs_hold_no_machine_paths():
    pages = [ROOT / "README.md", ROOT / "engines" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    bad = [p.name for p in pages if re.search(r"(?<![\w.])/(?:work|home|Users|tmp)/", p.read_text(encoding="utf-8"))]
    assert not bad, f"machine paths in {bad}"
