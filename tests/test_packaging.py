"""What the repository installs: the method `c123` (which names no upper layer, not even in a string) and the
pipeline under `c123_pipeline` (never as top-level `datasets`, `tasks`, ...), importable beside Hugging Face
`datasets`; the `c123` console script offers the method's and the pipeline's commands."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
UPPER = ("prefect", "ray", "flows", "tasks", "reports", "datasets", "c123_pipeline")
"""What c123/ must not import or name: the orchestration libraries and the pipeline's packages."""
NAMED = re.compile(r"(?i:\bprefect\b|\bc123_pipeline\b)|\bRay\b|\b(ray|flows|tasks|reports|datasets)(\.[a-z_]|:[a-z_])"
                   r"|\b(flows|tasks|reports|datasets)/")
"""A string naming an upper layer: Prefect, Ray (the framework), c123_pipeline, or a module path of one of them
('flows.evaluate:main', 'ray.init', 'datasets/'); the word 'ray' of rendering is fine."""


def _python_files(folder: Path):
    return sorted(folder.rglob("*.py"))


def test_the_method_names_no_upper_layer_even_in_a_string():
    found = []
    for path in _python_files(REPO / "c123"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names
                          if a.name.split(".")[0] in UPPER]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in UPPER:
                found.append(f"{path.name}:{node.lineno} from {node.module}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                m = NAMED.search(node.value) or (node.value.strip() in UPPER and node.value)
                if m:
                    found.append(f"{path.name}:{node.lineno} string {node.value[:60]!r}")
    assert found == []


def test_the_checker_would_catch_the_old_upward_references():
    for text in ("flows.evaluate:evaluate_main", "reports.build:main", "datasets.fetch:main", "ray.init",
                 "the pipeline (flows/, reports/, datasets/)", "never loads Prefect or Ray"):
        assert NAMED.search(text), text
    for text in ("per-ray/per-sample tensors", "samples per ray", "ray-box sampling", "the ray, 0 where empty"):
        assert not NAMED.search(text), text


def test_every_package_is_listed_for_installation_under_its_own_name():
    listed = PYPROJECT["tool"]["setuptools"]["packages"]
    method = sorted("c123" + ".".join(("",) + p.parent.relative_to(REPO / "c123").parts)
                    for p in (REPO / "c123").rglob("__init__.py"))
    assert [p for p in listed if p.startswith("c123.") or p == "c123"] == method
    mapped = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert mapped == {f"c123_pipeline.{name}": name for name in ("datasets", "tasks", "flows", "reports")}
    assert not any(p.split(".")[0] in ("datasets", "tasks", "flows", "reports") for p in listed)


def test_pytest_does_not_put_the_repository_root_on_sys_path():
    """With the root on sys.path, its datasets/ folder would shadow Hugging Face datasets in the tests."""
    entries = PYPROJECT["tool"]["pytest"]["ini_options"].get("pythonpath", [])
    assert not any((REPO / entry).resolve() == REPO for entry in entries)
    assert ".venv/bin/pytest" in (REPO / "Makefile").read_text()  # not `python -m pytest`, which adds the cwd


def test_hugging_face_datasets_and_the_pipeline_import_in_one_process(tmp_path):
    """A clean interpreter (no PYTHONPATH), this checkout importable after site-packages as an install is."""
    code = f"""
import importlib.metadata, sys
sys.path.append({str(REPO)!r})
print("Hugging Face datasets", importlib.metadata.version("datasets"), file=sys.stderr)
import datasets
from c123_pipeline.datasets.registry import load_dataset
from c123_pipeline.flows.spec import BenchmarkSpec
assert "site-packages" in datasets.__file__, datasets.__file__
hf = datasets.Dataset.from_dict({{"case": ["apple", "pear"]}})
ours = load_dataset("synthetic")
print(len(hf), hf[1]["case"], sorted(c.id for c in ours.cases), BenchmarkSpec().protocol)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["C123_CACHE"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + "\n(pip install -e '.[test]' installs Hugging Face datasets)"
    assert proc.stdout.split() == ["2", "pear", "['blocks',", "'chair',", "'mug',", "'toy']", "c123"]


def test_the_wheel_holds_the_pipeline_under_c123_pipeline_only(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel, = tmp_path.glob("c123-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("c123-")}
    assert tops == {"c123", "c123_pipeline"}, tops
    for module in ("c123_pipeline/flows/benchmark.py", "c123_pipeline/tasks/lifeline.py",
                   "c123_pipeline/datasets/layouts.py", "c123_pipeline/reports/build.py", "c123_pipeline/cli.py",
                   "c123/config_checks.py", "c123/priors/tiny.py", "c123/viewer/__init__.py",
                   "c123/viewer/static/model-viewer-umd.min.js", "c123/viewer/static/LICENSES.txt"):
        assert module in names, module  # the viewer's model-viewer and its licences ship inside the package
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "c123 = c123_pipeline.cli:main" in entry


def test_the_console_script_offers_every_command_and_the_method_cli_only_its_own(capsys):
    import pytest

    from c123.cli import build_parser
    from c123_pipeline.cli import main

    assert PYPROJECT["project"]["scripts"]["c123"] == "c123_pipeline.cli:main"
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("reconstruct", "config", "view", "models", "evaluate", "report", "history",
                                           "fetch"))
    assert "evaluate" not in build_parser().format_help()


def test_the_method_commands_load_neither_prefect_nor_ray():
    code = ("import sys, c123_pipeline.cli as cli; cli.build = cli.method_cli.build_parser(cli.add_pipeline_commands);"
            " assert not {'prefect', 'ray'} & set(sys.modules), sorted(m for m in sys.modules if m in "
            "('prefect', 'ray'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
