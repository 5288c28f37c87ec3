"""One real Prefect run per generative flow on tiny data, and the `recsys train` sub-app."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli_train import app

TINY = {
    "vae": "epochs = 1\nmax_train = 64\nmax_val = 32\nbatch_size = 32\nhidden_sizes = [16]\n"
           "latent_size = 4\nn_samples = 4\n",
    "realnvp": "epochs = 1\nmax_train = 64\nmax_val = 32\nbatch_size = 32\nn_couplings = 2\n"
               "hidden_size = 8\nn_hidden = 1\nn_samples = 4\n",
    "gan": "epochs = 1\nmax_train = 64\nmax_val = 32\nbatch_size = 32\nwidth = 4\n"
           "latent_size = 4\nn_samples = 4\nlog_every = 1\nquality_samples = 20\n",
}


def tiny_config(tmp_path: Path, model: str) -> Path:
    path = tmp_path / f"{model}.toml"
    path.write_text(TINY[model])
    return path


@pytest.mark.flow
@pytest.mark.slow
@pytest.mark.parametrize("model", ["vae", "realnvp", "gan"])
def test_flow_trains_and_publishes(model: str, prefect_harness: None, tmp_path: Path) -> None:
    from prefect.artifacts import Artifact

    from flows.generative import run_training

    summary = run_training(model, config_path=tiny_config(tmp_path, model), device="cpu",
                           output=tmp_path, run_id=f"flow-{model}")
    folder = tmp_path / "runs" / f"flow-{model}" / "generative" / model
    assert summary["path"] == str(folder)
    assert (folder / "checkpoint.pt").is_file() and (folder / "samples.png").is_file()
    assert (folder / "metrics.parquet").is_file()
    assert (folder / "best.pt").is_file() and summary["best_checkpoint"] == str(folder / "best.pt")
    assert Artifact.get(f"train-{model}-metrics") is not None
    outputs = Artifact.get(f"train-{model}-outputs")
    assert outputs is not None and "data:image/png;base64," in str(outputs.data)
    assert "file://" not in str(outputs.data)  # the UI cannot load those
    quality = Artifact.get(f"train-{model}-quality")
    assert quality is not None and summary["quality"]["metric"] in str(quality.data)
    assert Artifact.get(f"train-{model}-progress") is not None


@pytest.mark.flow
@pytest.mark.slow
def test_flow_run_is_named_after_the_run_id(prefect_harness: None, tmp_path: Path) -> None:
    from prefect import get_client

    from flows.generative import train_vae

    state = train_vae(config_path=tiny_config(tmp_path, "vae"), device="cpu", output=tmp_path,
                      run_id="named-run", return_state=True)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.name == "named-run"
    assert (tmp_path / "runs" / "named-run" / "generative" / "vae").is_dir()


def test_flow_docstrings_describe_every_parameter() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.generative import FLOWS

    for f in FLOWS.values():
        props = parameter_schema(f).model_dump()["properties"]
        assert all(props[name].get("description") for name in props), f.name


def test_flows_and_training_task_carry_the_gpu_tag() -> None:
    from flows.generative import FLOWS, GPU_TAGS, train_task

    assert GPU_TAGS == ["gpu"] and "gpu" in train_task.tags
    assert [f.name for f in FLOWS.values()] == ["train-vae", "train-realnvp", "train-gan"]


def test_cli_help_lists_the_three_models() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("vae", "realnvp", "gan"):
        assert command in result.output
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0 and "--device" in sub.output and "--config" in sub.output


def test_cli_local_engine_trains_without_prefect(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["gan", "--config", str(tiny_config(tmp_path, "gan")),
                                      "--device", "cpu", "--output", str(tmp_path),
                                      "--engine", "local", "--no-progress", "--run-id", "cli"])
    assert result.exit_code == 0, result.output
    assert "published gan run cli" in result.output
    assert (tmp_path / "runs" / "cli" / "generative" / "gan" / "checkpoint.pt").is_file()


def test_cli_rejects_unknown_config_keys_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = 1\nlatent_sise = 3\n")
    result = CliRunner().invoke(app, ["vae", "--config", str(bad), "--output", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown key(s) ['latent_sise']" in result.output and "bad.toml" in result.output
    assert not (tmp_path / "runs").exists()


def test_cli_rejects_a_bad_device_with_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["vae", "--device", "tpu", "--output", str(tmp_path)])
    assert result.exit_code == 2 and "--device" in result.output  # names the bad option
