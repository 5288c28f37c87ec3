"""Style flows: CLI help and input errors without the engine, then real Prefect runs (tiny)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli_style import app

runner = CliRunner()


def test_cli_help_lists_the_three_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("optimise", "train", "apply"):
        assert command in result.output
    for command, option in (("optimise", "--steps"), ("train", "--images"), ("apply", "--model")):
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0 and option in sub.output and "--device" in sub.output


def test_cli_bad_paths_exit_2_with_a_message(tmp_path: Path) -> None:
    result = runner.invoke(app, ["optimise", "--content", str(tmp_path / "nope.jpg")])
    assert result.exit_code == 2 and "nope.jpg" in result.output
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a picture")
    result = runner.invoke(app, ["optimise", "--style", str(junk)])
    assert result.exit_code == 2 and "cannot read image" in result.output
    result = runner.invoke(app, ["apply", "--model", str(tmp_path / "missing.pt")])
    assert result.exit_code == 2 and "recsys style train" in result.output
    result = runner.invoke(app, ["train", "--images", str(tmp_path / "none")])
    assert result.exit_code == 2 and "not a folder" in result.output


@pytest.mark.flow
@pytest.mark.slow
def test_style_flows_run_end_to_end(prefect_harness: None, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    from flows.style import run_tagged, style_apply, style_optimise, style_train
    from models.generative.style import FastTrainConfig, OptimiseConfig, TransformNetConfig
    from models.torch_utils import set_threads

    set_threads(1)
    optimised = run_tagged(style_optimise, root=tmp_path, size=32,
                           optimise_config=OptimiseConfig(steps=3), device="cpu")
    assert (optimised.run_dir / "style" / "side_by_side.png").is_file()

    trained = run_tagged(style_train, root=tmp_path, device="cpu",
                         net_config=TransformNetConfig(channels=4, n_residual=1),
                         train_config=FastTrainConfig(steps=2, batch_size=1, crop_size=32))
    applied = run_tagged(style_apply, model=trained.files["checkpoint"], root=tmp_path, size=40,
                         device="cpu")
    assert (applied.run_dir / "style" / "chelsea.png").is_file()
    assert len({optimised.run_dir, trained.run_dir, applied.run_dir}) == 3

    with get_client(sync_client=True) as client:
        names = {r.id: client.read_flow(r.flow_id).name for r in client.read_flow_runs()}
        runs = {r.id: r for r in client.read_flow_runs()}
    ours = [runs[i] for i, name in names.items() if name.startswith("style-")]
    assert {names[r.id] for r in ours} >= {"style-optimise", "style-train", "style-apply"}
    assert all(r.state and r.state.is_completed() and "gpu" in r.tags for r in ours)
    # each flow run is named after the run id it wrote (none was given: the flow adopts it)
    assert {r.name for r in ours} >= {optimised.run_dir.name, trained.run_dir.name,
                                      applied.run_dir.name}

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    pages = [str(a.data) for a in artifacts if a.key and a.key.endswith("-image")]
    assert len(pages) >= 3  # optimise, train, apply
    assert all("](data:image/png;base64," in page and "file://" not in page for page in pages)
    progress = {a.key: a.data for a in artifacts if a.type == "progress"}
    assert progress.get("style-train-progress") == 100.0
    assert progress.get("style-optimise-progress") == 100.0
