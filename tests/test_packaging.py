"""A built wheel, installed (not editable) into a fresh venv, runs from another folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv", ".ci-venv", "runs", "cache", "tests", "bench",
                              "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
                              ".hypothesis", ".lock")


def run(args: list[str | Path], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **env})
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed and this venv's packages as its dependencies.

    The dependencies come in as a plain path entry (no downloads); unlike this venv's site
    dir, a path entry does not run the editable install's .pth hook, so the checkout stays
    invisible to the installed package.
    """
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=SKIP)  # build outside the shared checkout
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp / "dist",
         src], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("recsys_nightly-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install",
         "--quiet", "--no-deps", wheel], cwd=tmp)
    site = Path(run([venv / "bin" / "python", "-c", "import sysconfig; "
                     "print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_recsys_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    return venv


@pytest.mark.slow
def test_wheel_ships_the_package_data(installed: Path, tmp_path: Path) -> None:
    code = ("import json, features, flows; from features.resources import data_path; "
            "print(json.dumps([features.__file__, str(data_path()), "
            "sorted(p.name for p in data_path().iterdir())]))")
    where, data, names = json.loads(run([installed / "bin" / "python", "-c", code],
                                        cwd=tmp_path).stdout)
    assert Path(where).is_relative_to(installed) and Path(data).is_relative_to(installed)
    shipped = sorted(p.name for p in (REPO / "features" / "data").iterdir() if p.is_dir())
    assert set(shipped) <= set(names)
    for folder in shipped:
        ours = {p.relative_to(REPO / "features" / "data") for p in
                (REPO / "features" / "data" / folder).rglob("*") if p.is_file()
                and "__pycache__" not in p.parts}
        theirs = {p.relative_to(Path(data)) for p in (Path(data) / folder).rglob("*")
                  if p.is_file()}
        assert ours <= theirs, sorted(ours - theirs)[:5]


@pytest.mark.slow
def test_installed_recsys_runs_on_the_embedded_data_from_another_folder(
        installed: Path, tmp_path: Path) -> None:
    config = tmp_path / "quick.toml"  # the embedded data (no [source]), lighter stages
    config.write_text('ranking = "fusion"\n[evaluation]\nenabled = false\n')
    done = run([installed / "bin" / "recsys", "run", "--engine", "local", "-c", config,
                "-o", "out", "--run-id", "wheel"], cwd=tmp_path)
    assert "published run wheel" in done.stdout
    assert (tmp_path / "out" / "runs" / "wheel" / "recommendations.parquet").is_file()
    version = run([installed / "bin" / "recsys", "--version"], cwd=tmp_path).stdout
    assert version.startswith("recsys ") and "unknown" not in version
