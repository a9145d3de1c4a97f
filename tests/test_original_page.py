"""docs/ORIGINAL.md and the code hold each other: every quirk number (Q<n>) and page section
(ORIGINAL.md §<n>) the repository cites is on the page, the page's switch table (§10.1) agrees
with asr_tf/quirks.py, DatasetSpec, make_optimizer and the two configs that bind switches, and
nothing points to documents outside the repository."""
import ast
import dataclasses
import inspect
import pathlib
import re
import subprocess

import pytest

from asr_tf import quirks, training
from asr_tf.data import scenes

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "ORIGINAL.md"
TEXT_SUFFIXES = (".py", ".gin", ".md", ".toml", ".txt", ".cfg")
# Owners of the switches: the class or function whose field or argument the page names.
OWNERS = {"Quirks": quirks.Quirks, "DatasetSpec": scenes.DatasetSpec,
          "make_optimizer": training.make_optimizer}
# Enumerated values of the non-boolean fields (the code's own constants).
CHOICES = {("Quirks", name): values for name, values in quirks.CHOICES.items()}
CHOICES[("DatasetSpec", "bbox_overlap_mode")] = scenes.BBOX_OVERLAP_MODES
CONFIGS = {"base.gin": ROOT / "configs" / "base.gin", "faithful.gin": ROOT / "configs" / "faithful.gin"}
QUIRK = re.compile(r"\bQ(\d+)\b(?:\s*[–-]\s*Q(\d+)\b)?")  # Q7, or a range Q25–Q27
PAGE_CITATION = re.compile(r"ORIGINAL\.md ((?:§\d+(?:\.\d+)?(?:[–-]\d+(?:\.\d+)?)?(?:, )?)+)")
OUTSIDE = re.compile(r"\.\./shared|shared/spe[c]|\bspec (?:§|sections?\b)")


def tables(text):
    """Every pipe table of a markdown text as (header cells, rows of cells)."""
    found, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block:
            found.append((block[0], [row for row in block[2:]]))
            block = []
    return found


def quirk_numbers(text):
    """The quirk numbers a text cites, a range Q25–Q27 as all three."""
    numbers = set()
    for first, last in QUIRK.findall(text):
        numbers.update(range(int(first), int(last or first) + 1))
    return numbers


def page_sections(text):
    """The section numbers of the page's headings ('## 10. The quirks' -> '10')."""
    return {m.group(1) for m in re.finditer(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", text, re.M)}


def cited_sections(text):
    """The page sections a text cites as 'ORIGINAL.md §4.3–4.4, §6.4' (a range as its ends)."""
    return {n for m in PAGE_CITATION.finditer(text) for n in re.findall(r"\d+(?:\.\d+)?",
                                                                          m.group(1))}


def literals(cell):
    """The Python values of a cell made only of `literal`, `literal`, ...; None otherwise (an
    open set described in words)."""
    items = re.findall(r"`([^`]*)`", cell)
    if not items or re.sub(r"`[^`]*`", "", cell).strip(" ,"):
        return None
    return [ast.literal_eval(item) for item in items]


def quirk_table(text):
    """{Q number: {column: cell}} from the page's table whose first column is 'Q'."""
    (header, rows), = [t for t in tables(text) if t[0][0] == "Q"]
    return {int(row[0][1:]): dict(zip(header, row)) for row in rows}


def switch_table(text):
    """The rows of the page's switch table (§10.1) as dicts of its columns."""
    (header, rows), = [t for t in tables(text) if t[0][0] == "switch"]
    return [dict(zip(header, row)) for row in rows]


def bound_in(config_text, switch):
    """The value a gin file binds to ``switch`` (a literal), or None where it binds nothing."""
    m = re.search(rf"^{re.escape(switch)}\s*=\s*([^#\n]+)", config_text, re.M)
    return ast.literal_eval(m.group(1).strip()) if m else None


def default_of(owner, name):
    obj = OWNERS[owner]
    if dataclasses.is_dataclass(obj):
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if name not in fields:
            return "missing"
        return fields[name].default
    parameter = inspect.signature(obj).parameters.get(name)
    return "missing" if parameter is None else parameter.default


def switch_problems(text, configs):
    """What disagrees between the page's switch table and the code and configs (a list of
    sentences; empty when they agree)."""
    problems = []
    rows = switch_table(text)
    quirk_rows = quirk_table(text)
    named = set()
    for row in rows:
        switch = row["switch"].strip("`")
        owner, _, name = switch.partition(".")
        named.add((owner, name))
        if owner not in OWNERS:
            problems.append(f"{switch}: unknown owner {owner}")
            continue
        default = literals(row["default"])
        if default is None or len(default) != 1:
            problems.append(f"{switch}: default {row['default']!r} is not one literal")
            continue
        default = default[0]
        if default_of(owner, name) == "missing":
            problems.append(f"{switch}: no such field or argument in the code")
            continue
        if default_of(owner, name) != default:
            problems.append(f"{switch}: the page says default {default!r}, the code "
                            f"{default_of(owner, name)!r}")
        others = literals(row["other values"])
        annotation = (OWNERS[owner].__annotations__.get(name)
                      if dataclasses.is_dataclass(OWNERS[owner]) else None)
        allowed = CHOICES.get((owner, name), (False, True) if annotation in (bool, "bool")
                              else None)
        if allowed is not None and (others is None or default in others
                                    or {default, *others} != set(allowed)):
            problems.append(f"{switch}: the page lists {row['default']}, {row['other values']}; "
                            f"the code allows {allowed}")
        for q in quirk_numbers(row["Q"]):
            if q not in quirk_rows:
                problems.append(f"{switch}: Q{q} is not in the quirk table")
            elif switch not in quirk_rows[q]["switch"]:
                problems.append(f"{switch}: the quirk table's Q{q} names another switch")
        for config, config_text in configs.items():
            page_value = literals(row[config]) if row[config] != "–" else [None]
            if page_value is None or bound_in(config_text, switch) != page_value[0]:
                problems.append(f"{switch}: {config} binds {bound_in(config_text, switch)!r}, "
                                f"the page says {row[config]}")
        if f"- `{name}`:" not in text and allowed is not None:
            problems.append(f"{switch}: no line says what its values do")
    for field in dataclasses.fields(quirks.Quirks):
        if ("Quirks", field.name) not in named:
            problems.append(f"Quirks.{field.name} is not in the switch table")
    for q, row in quirk_rows.items():
        for switch in re.findall(r"`(\w+\.\w+)`", row["switch"]):
            if tuple(switch.split(".")) not in named and switch.split(".")[0] in OWNERS:
                problems.append(f"Q{q} names {switch}, which the switch table lacks")
    return problems


def _tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return [ROOT / n for n in names if n.endswith(TEXT_SUFFIXES) and (ROOT / n).is_file()]


def test_the_page_defines_every_quirk_once_in_order_and_every_row_is_filled():
    rows = quirk_table(PAGE.read_text())
    assert list(rows) == list(range(1, len(rows) + 1))
    for q, row in rows.items():
        assert all(row.values()) and len(row) == 5, f"Q{q}: {row}"


def test_every_cited_quirk_and_page_section_is_on_the_page():
    text = PAGE.read_text()
    defined, sections = set(quirk_table(text)), page_sections(text)
    assert cited_sections(text) <= sections  # the page's own (§10.2)
    undefined, unknown = [], []
    for path in _tracked_text_files():
        if path == PAGE:
            continue
        body = path.read_text()
        undefined += [f"{path.relative_to(ROOT)}: Q{q}" for q in quirk_numbers(body) - defined]
        unknown += [f"{path.relative_to(ROOT)}: §{s}" for s in cited_sections(body) - sections]
    assert not undefined, "quirks cited but not on docs/ORIGINAL.md: " + ", ".join(undefined)
    assert not unknown, "sections cited but not on docs/ORIGINAL.md: " + ", ".join(unknown)


def test_no_file_points_outside_the_repository():
    outside = [f"{p.relative_to(ROOT)}:{i}" for p in _tracked_text_files()
               for i, line in enumerate(p.read_text().splitlines(), 1) if OUTSIDE.search(line)]
    assert not outside, "pointers outside the repository: " + ", ".join(outside)


def test_switch_table_agrees_with_the_code_and_configs():
    configs = {name: path.read_text() for name, path in CONFIGS.items()}
    assert switch_problems(PAGE.read_text(), configs) == []


@pytest.mark.parametrize("old, new, expected", [
    ("| `Quirks.sampler_edge` | Q30 | `'four_gathers'` |", "| `Quirks.sampler_edge` | Q30 | `'hard'` |",
     "the page says default 'hard'"),
    ("`'hard'`, `'zero_pad'` |", "`'hard'` |", "the code allows"),
    ("| `Quirks.tight_gt` | Q4 |", "| `Quirks.tight_box` | Q4 |", "no such field"),
    ("| `Quirks.per_variable_clip` | Q42 | `True` | `False` | – | – |\n", "",
     "Quirks.per_variable_clip is not in the switch table"),
    ("| `make_optimizer.learning_rate` | Q11 | `1e-4` | any rate (the paper: 1e-3) | `1e-3` |",
     "| `make_optimizer.learning_rate` | Q11 | `1e-4` | any rate (the paper: 1e-3) | `1e-2` |",
     "base.gin binds 0.001"),
    ("| `Quirks.area_penalty` | Q19 |", "| `Quirks.area_penalty` | Q18 |", "names another switch"),
])
def test_switch_check_finds_a_planted_disagreement(old, new, expected):
    text = PAGE.read_text()
    assert old in text
    configs = {name: path.read_text() for name, path in CONFIGS.items()}
    problems = switch_problems(text.replace(old, new, 1), configs)
    assert any(expected in p for p in problems), problems


def test_citation_parsers_on_written_examples():
    assert quirk_numbers("Q4; Q25–Q27 and Q16/Q17, not Q1x") == {4, 16, 17, 25, 26, 27}
    assert cited_sections("(docs/ORIGINAL.md §4.3–4.4, §6.4) and ORIGINAL.md §11") == {
        "4.3", "4.4", "6.4", "11"}
    assert literals("`'hard'`, `'zero_pad'`") == ["hard", "zero_pad"]
    assert literals("any rate (the paper: 1e-3)") is None and literals("`1e-4`") == [1e-4]
    assert OUTSIDE.search("see spec " + "§2.1") and OUTSIDE.search("../" + "shared/x.md")
    assert not OUTSIDE.search("paper §4.2, DatasetSpec section")
