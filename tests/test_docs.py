"""The docs stay true: the settings, limits, commands, options, environment variables and metrics
that README.md and docs/ name exist in the code with the values the docs give.

No network, no node: the docs are parsed as text and compared with the code in process (the
config dataclasses, the limit constants, the argparse parser, the metric families in the source).
Each test lists every mismatch at once, naming the doc and what to change.
"""

import argparse
import ast
import dataclasses
import functools
import importlib
import math
import re
import tomllib
from pathlib import Path

from rtmpq import config as cfg
from rtmpq.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
OPERATIONS = ROOT / "docs" / "operations.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _report(what: str, problems: list[str]) -> str:
    return f"{len(problems)} {what}:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------------------------------------
# markdown helpers


def _code_blocks(text: str, lang: str | None = None) -> list[str]:
    """The fenced code blocks of a markdown text (those of one language if ``lang`` is given)."""
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)
            if lang is None or m.group(1) == lang]


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _backtick_spans(text: str) -> list[str]:
    """The inline `code` spans outside fenced blocks (a table's `a \\| b` keeps its pipe as |)."""
    return [s.replace("\\|", "|") for s in re.findall(r"`([^`\n]+)`", _without_code_blocks(text))]


def _table(text: str, header: str) -> list[list[str]]:
    """The rows (cells, stripped) of the markdown table whose header row starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:  # past the header and the |---| line
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]  # "\|" inside a cell is not a separator
        rows.append([c.strip() for c in cells])
    return rows


# ---------------------------------------------------------------------------------------------
# 1. every setting of rtmpq/config.py is in docs/configuration.md with the code's default


def _settings() -> dict[tuple[str, str], object]:
    """(section, key) -> default of every setting a config file may set: what ``rtmpq config
    show`` lists (config._sections and config._keys, less the settings built in code)."""
    defaults = cfg.Config()
    return {(section, key): getattr(getattr(defaults, section), key)
            for section in cfg._sections() for key in cfg._keys(cfg._sections()[section])
            if (section, key) not in cfg._INTERNAL}


def _documented_settings() -> dict[tuple[str, str], object]:
    """(section, key) -> value of the TOML example in docs/configuration.md (the block that
    lists every section, its comments saying what each does)."""
    block = next(b for b in _code_blocks(CONFIGURATION.read_text(), "toml") if b.lstrip().startswith("[rtmp]"))
    doc = tomllib.loads(block)
    return {(section, key): value for section, table in doc.items() for key, value in table.items()}


def _example_only(default) -> bool:
    """A setting that is unset or empty by default: the doc shows an example of a value (a
    certificate's path, a URL, a stream key) and says in its comment what unset does."""
    return default is None or default == "" or default == {}


def _same(default, documented) -> bool:
    """Whether the doc's TOML value is the code's default: numbers by value (10 and 10.0 are
    the same), paths as the doc writes them (~ expanded)."""
    if isinstance(default, bool) or isinstance(documented, bool):
        return default is documented
    if isinstance(default, (int, float)) and isinstance(documented, (int, float)):
        return math.isclose(default, documented)
    if isinstance(default, Path) and isinstance(documented, str):
        return default == Path(documented).expanduser()
    return default == documented


def test_every_setting_is_documented_with_its_default():
    code, doc = _settings(), _documented_settings()
    problems = []
    for (section, key), default in code.items():
        if (section, key) not in doc:
            problems.append(f"[{section}] {key} (default {default!r}) is missing: add it to docs/configuration.md")
        elif not _example_only(default) and not _same(default, doc[section, key]):
            problems.append(f"[{section}] {key}: docs/configuration.md says {doc[section, key]!r}, "
                            f"the code's default is {default!r}: write {default!r}")
    for section, key in doc.keys() - code.keys():
        problems.append(f"[{section}] {key} is in docs/configuration.md but is no setting of rtmpq/config.py: "
                        "remove it or rename it")
    assert not problems, _report("settings differ between rtmpq/config.py and docs/configuration.md", problems)


ALL_DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
TABLES = {("publish", "keys"), ("transcode", "bitrates"), ("transcode", "presets")}  # [publish.keys], ...
# `[section] key` in a doc, then maybe its value: " (4 s)", " (default 30 s, ...)", ", 6 h by default".
_SETTING_REFERENCE = re.compile(r"`\[([a-z_]+)(?:\.([a-z_]+))?\](?: ([a-z_]+))?`"
                                r"(?: \((?:default )?([\d][^,;)]*)| ?,? ([\d][^,;)]*?) by default)?")


def test_every_setting_the_docs_refer_to_exists_with_the_value_they_give():
    settings = _settings()
    sections = {section for section, _ in settings}
    problems = []
    for doc in ALL_DOCS:
        for m in _SETTING_REFERENCE.finditer(doc.read_text()):
            section, table, key, value = m.group(1), m.group(2), m.group(3), m.group(4) or m.group(5)
            if section not in sections or table and (section, table) not in TABLES:
                problems.append(f"{doc.name}: {m.group(0)!r}: no such section in rtmpq/config.py")
            elif key and not table and (section, key) not in settings:
                problems.append(f"{doc.name}: {m.group(0)!r}: [{section}] has no {key}")
            elif key and value and _stated(settings[section, key], value) is False:
                problems.append(f"{doc.name}: {m.group(0)!r}: the default is {settings[section, key]!r}")
    assert not problems, _report("references to settings in the docs are wrong", problems)


# ---------------------------------------------------------------------------------------------
# 2. every limit of README.md's "Settings and limits" table is in its module, with its value

# Units the docs write values in, and what one is in the constants' units (seconds, bytes, ratios).
UNITS = {"ms": 1e-3, "s": 1, "min": 60, "h": 3600, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3,
         "kB": 1000, "MB": 1e6, "%": 0.01}
# A number as the docs write it: 100 000 or 10,000 (thousands), 0.5, 2^30; then maybe a unit.
_QUANTITY = re.compile(r"(?<![\w.^])(\d+\^\d+|\d{1,3}(?:[ ,]\d{3})+(?!\d)|\d+(?:\.\d+)?)\s*(" +
                       "|".join(sorted(map(re.escape, UNITS), key=len, reverse=True)) + r")?(?![\w^])")


def _quantities(text: str) -> list[tuple[float, float]]:
    """(value, tolerance) of every number in ``text``: as written, and in the base unit when a
    unit follows (so "2 MiB" is 2 and 2097152; "50 ms" is 50 and 0.05). The tolerance is half
    the last digit written: "3.3 s" is a value between 3.25 and 3.35."""
    out = []
    for number, unit in _QUANTITY.findall(text):
        if "^" in number:
            base, exp = number.split("^")
            value, half = float(int(base) ** int(exp)), 0.5
        else:
            digits = number.replace(" ", "").replace(",", "")
            value = float(digits)
            half = 0.5 * 10 ** -len(digits.partition(".")[2])
        out.append((value, half))
        if unit:
            out.append((value * UNITS[unit], half * UNITS[unit]))
            if unit == "MB":  # the docs' MB is sometimes MiB
                out.append((value * 1024 ** 2, half * 1024 ** 2))
    return out


def _stated(value, text: str) -> bool | None:
    """Whether ``text`` states ``value``; None for a value no text can state (a pattern, a set)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return any(abs(value - q) <= half + 1e-9 * abs(q) for q, half in _quantities(text))
    if isinstance(value, str):
        return value in text
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, (int, float, str)) for v in value):
        return all(_stated(v, text) for v in value)
    if isinstance(value, dict) and value and all(isinstance(v, (int, float, str)) for v in value.values()):
        return all(_stated(v, text) for v in value.values())
    return None


def _limit_names(cell: str) -> list[str]:
    """The constants a row names: `NAME` spans in capitals; `A_MIN`/`_MAX` is A_MIN and A_MAX."""
    names = []
    for span in re.findall(r"`([A-Z0-9_]+)`", cell):
        if span.startswith("_") and names:  # a suffix of the previous name
            span = names[-1].rsplit("_", 1)[0] + span
        names.append(span)
    return names


def _limits_table() -> list[tuple[list[str], str, list[str]]]:
    """(names, default text, modules) of each row of README.md's limits table."""
    rows = _table(README.read_text(), "| setting | default | where |")
    return [(_limit_names(name), default, re.findall(r"`(rtmpq/[\w/]+\.py)`", where))
            for name, default, where in rows]


def test_every_named_limit_exists_with_the_value_readme_gives():
    problems = []
    for names, default, modules in _limits_table():
        loaded = [importlib.import_module(m[:-3].replace("/", ".")) for m in modules]
        for name in names:
            home = next((m for m in loaded if hasattr(m, name)), None)
            if home is None:
                problems.append(f"{name}: not in {', '.join(modules) or 'the module'} (README.md, limits table): "
                                "rename it or name the module that has it")
                continue
            value = getattr(home, name)
            if _stated(value, default) is False:
                problems.append(f"{name} = {value!r} ({home.__name__}), README.md's limits table says "
                                f"{default[:90]!r}{'...' if len(default) > 90 else ''}: state {value!r}")
    assert not problems, _report("limits differ between README.md and the code", problems)


# ---------------------------------------------------------------------------------------------
# 3. every rtmpq command and long option the docs show exists; every RTMPQ_ variable is read

# Long options of other tools that the docs show in backticks on their own (not after `rtmpq`).
OTHER_TOOLS_OPTIONS = {"--format"}  # buildah's (`--format docker`)


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser `rtmpq --help` prints, and each subcommand's (`rtmpq X --help`), in process."""
    parser = build_parser()
    return parser, next(a for a in parser._actions if a.choices and a.dest == "command").choices


def _commands() -> dict[str, set[str]]:
    """Each rtmpq subcommand -> its long options (and the choices of its first positional, such
    as config's show/check, as "=show")."""
    parser, subparsers = _parsers()
    top = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    out = {}
    for name, p in subparsers.items():
        options = top | {o for a in p._actions for o in a.option_strings if o.startswith("--")}
        positional = next((a for a in p._actions if not a.option_strings and a.choices), None)
        out[name] = options | {f"={c}" for c in (positional.choices if positional else ())}
    return out


_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
_COMMAND = re.compile(r"(?:^|(?<=[\s/(]))rtmpq\s+([a-z][a-z-]*)(?:\s+([a-z]+)\b)?")


def _shown_commands(path: Path) -> list[tuple[str, str]]:
    """(where, text) of every code-block line and inline code span of a doc."""
    text = path.read_text()
    lines = [line for block in _code_blocks(text) for line in block.splitlines()]
    return [(path.name, t) for t in lines + _backtick_spans(text)]


def test_every_command_and_option_the_docs_show_exists():
    commands = _commands()
    every_option = set().union(*commands.values())
    problems = set()
    for doc in (README, OPERATIONS, CONFIGURATION, ROOT / "docs" / "deploy.md"):  # (the others: bench's too)
        for where, text in _shown_commands(doc):
            text = text.split("#", 1)[0] if not text.startswith("#") else ""  # a shell comment is prose
            found = list(_COMMAND.finditer(text))
            for i, m in enumerate(found):
                name, word = m.group(1), m.group(2)
                if name not in commands:
                    problems.add(f"{where}: `rtmpq {name}` is no command (rtmpq --help): fix `{text.strip()}`")
                    continue
                end = found[i + 1].start() if i + 1 < len(found) else len(text)
                for option in _OPTION.findall(text[m.end():end]):
                    if option not in commands[name]:
                        problems.add(f"{where}: `rtmpq {name}` has no {option} (rtmpq {name} --help): "
                                     f"fix `{text.strip()}`")
                if word and any(c.startswith("=") for c in commands[name]) and f"={word}" not in commands[name]:
                    problems.add(f"{where}: `rtmpq {name} {word}`: {word} is not one of its actions")
            if not found and text.lstrip().startswith("--"):  # an option on its own: some command's
                for option in set(_OPTION.findall(text)) - every_option - OTHER_TOOLS_OPTIONS:
                    problems.add(f"{where}: {option} is no option of any rtmpq command: fix `{text.strip()}`")
    assert not problems, _report("commands or options the docs show do not exist", sorted(problems))


def test_every_command_and_option_is_documented():
    """The other way: each command and each option `--help` shows is in README.md or docs/."""
    parser, subparsers = _parsers()
    shown = {o for p in (parser, *subparsers.values()) for a in p._actions if a.help != argparse.SUPPRESS
             for o in a.option_strings}  # (--log-label is hidden: set by a node for its child)
    spans = " ".join(t for doc in ALL_DOCS for _, t in _shown_commands(doc))
    problems = [f"`rtmpq {name}` is in no doc: add it to README.md's commands table"
                for name in subparsers if f"rtmpq {name}" not in spans]
    problems += [f"{option} (rtmpq --help) is in no doc: say what it does in README.md (Commands)"
                 for option in sorted(shown) if option.startswith("--") and not re.search(
                     rf"{re.escape(option)}(?![\w-])", spans)]
    assert not problems, _report("commands or options are not documented", problems)


def _source_text() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "rtmpq").rglob("*.py"))


def test_every_environment_variable_the_docs_name_is_read():
    source = _source_text()
    settings = _settings()
    prefixes = {f"RTMPQ_{s.upper()}_": s for s in cfg._sections()}
    problems = []
    for doc in (README, CONFIGURATION, OPERATIONS, ARCHITECTURE):  # (benchmarks.md: bench/'s own)
        for name in sorted(set(re.findall(r"\bRTMPQ_[A-Z0-9_]*[A-Z0-9]\b(?!_?<)", doc.read_text()))):
            section = next((s for p, s in prefixes.items() if name.startswith(p)), None)
            if section is not None:  # RTMPQ_<SECTION>_<KEY>: read by config.load_config for each setting
                key = name[len(f"RTMPQ_{section}_"):].lower()
                if (section, key) not in settings:
                    problems.append(f"{doc.name}: {name} names no setting ([{section}] has no {key})")
            elif name not in source:
                problems.append(f"{doc.name}: {name} is read nowhere in rtmpq/")
    assert not problems, _report("environment variables the docs name are not read", problems)


# ---------------------------------------------------------------------------------------------
# 4. docs/operations.md's metrics table lists exactly the metrics the code exposes


def _str_list(node, local: dict) -> list[str] | None:
    """The strings of a literal list (or of a name bound to one in the same function)."""
    if isinstance(node, ast.Name):
        node = local.get(node.id)
    if isinstance(node, (ast.List, ast.Tuple)) and all(isinstance(e, ast.Constant) for e in node.elts):
        return [e.value for e in node.elts]
    if isinstance(node, ast.Dict) and all(isinstance(k, ast.Constant) for k in node.keys):  # an info's value
        return [k.value for k in node.keys]
    return None


@functools.cache
def _exposed_metrics() -> dict[str, tuple[str, set[str] | None]]:
    """Name as scraped -> (source file, label names; None where the source does not say) of every
    metric family made in rtmpq/ (the collector of rtmpq/ops/metrics.py and those nodes add to
    it). prometheus-client's exposition adds _total to a counter's name and _info to an info's."""
    suffix = {"CounterMetricFamily": "_total", "InfoMetricFamily": "_info", "GaugeMetricFamily": ""}
    out = {}
    for path in (ROOT / "rtmpq").rglob("*.py"):
        if "MetricFamily(" not in (text := path.read_text()):  # (parsing every module takes seconds)
            continue
        for func in ast.walk(ast.parse(text)):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            local = {a.targets[0].id: a.value for a in ast.walk(func)
                     if isinstance(a, ast.Assign) and isinstance(a.targets[0], ast.Name)}
            for call in ast.walk(func):
                if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in suffix
                        and call.args and isinstance(call.args[0], ast.Constant)):
                    continue
                keywords = {k.arg: k.value for k in call.keywords}
                if "labels" in keywords:
                    labels = _str_list(keywords["labels"], local)
                elif call.func.id == "InfoMetricFamily":
                    labels = _str_list(keywords.get("value"), local)
                else:
                    labels = []
                out[call.args[0].value + suffix[call.func.id]] = (
                    str(path.relative_to(ROOT)), None if labels is None else set(labels))
    return out


def _documented_labels(cell: str) -> set[str]:
    """Label names of a metrics-table cell: "`broadcast`, `protocol` = `moq`, `hls` (...)" is
    broadcast and protocol (the values after = and the words in parentheses are not labels)."""
    cell = re.sub(r"\([^()]*\)", "", cell)
    return set(re.findall(r"`(\w+)`(?:\s*=\s*`[^`]+`(?:,\s*`[^`]+`)*)?", cell))


def test_the_metrics_table_lists_every_metric_and_only_those():
    rows = _table(OPERATIONS.read_text(), "| metric | type |")
    documented = {name: _documented_labels(row[2]) for row in rows for name in re.findall(r"`(rtmpq_\w+)`", row[0])}
    exposed = _exposed_metrics()
    problems = [f"{name} is in docs/operations.md's metrics table but no code makes it: remove or rename it"
                for name in sorted(documented.keys() - exposed.keys())]
    problems += [f"{name} ({exposed[name][0]}) is missing from docs/operations.md's metrics table: add a row"
                 for name in sorted(exposed.keys() - documented.keys())]
    for name in sorted(documented.keys() & exposed.keys()):
        where, labels = exposed[name]
        if labels is not None and labels != documented[name]:
            problems.append(f"{name}: docs/operations.md gives labels {sorted(documented[name])}, {where} "
                            f"makes {sorted(labels)}: write those")
    assert not problems, _report("metrics differ between docs/operations.md and the code", problems)


def test_the_doc_parsers_find_what_they_parse():
    """The helpers above still find their tables and blocks (an empty parse would pass every test)."""
    assert len(_documented_settings()) > 100 and len(_settings()) > 100
    assert len(_limits_table()) > 80 and all(modules for _, _, modules in _limits_table())
    assert {"up", "sub", "ingest", "relay", "edge", "transcode", "token", "config"} <= _commands().keys()
    assert len(_exposed_metrics()) > 30 and all(labels is not None for _, labels in _exposed_metrics().values())
    assert _documented_labels("`broadcast`, `protocol` = `moq`, `hls` (the rung's, `video-480p`)") == {
        "broadcast", "protocol"}
    assert _quantities("2 MiB, 50 ms, 100 000, 2^30 ms") == [
        (2, 0.5), (2 * 1024 ** 2, 0.5 * 1024 ** 2), (50, 0.5), (0.05, 0.0005), (100000, 0.5),
        (2 ** 30, 0.5), (2 ** 30 / 1000, 0.0005)]
    assert _limit_names("`TRANSCODER_RESTART_MIN`/`_MAX` (`restart_min`)") == [
        "TRANSCODER_RESTART_MIN", "TRANSCODER_RESTART_MAX"]
    assert dataclasses.is_dataclass(cfg.Config)
