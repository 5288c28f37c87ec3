"""Deployments of every flow, and `recsys serve`: run the schedules on one machine, no cloud."""

from __future__ import annotations

import inspect
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from prefect import Flow, serve
from prefect.schedules import Cron

from features.errors import ConfigError
from flows.audio import audio_catalogue
from flows.generative import train_gan, train_realnvp, train_vae
from flows.recommend import nightly_recommendations, offline_evaluation
from flows.style import style_apply, style_optimise, style_train

log = logging.getLogger(__name__)

RECOMMENDATION_FLOWS: tuple[Flow[..., Any], ...] = (nightly_recommendations, offline_evaluation)
CPU_FLOWS: tuple[Flow[..., Any], ...] = (*RECOMMENDATION_FLOWS, audio_catalogue)
GPU_FLOWS: tuple[Flow[..., Any], ...] = (train_vae, train_realnvp, train_gan, style_optimise,
                                         style_train, style_apply)


@dataclass(frozen=True)
class DeploymentInputs:
    """Parameter defaults `recsys serve` gives the deployments (each can be changed per run).

    `config_path`, `preset` and `data` describe the recommendation flows' input; `output` is
    every flow's output root. Paths are made absolute: the served process may run elsewhere.
    """

    config_path: Path | None = None
    preset: str | None = None
    data: Path | None = None
    output: Path | None = None


def _flow_parameters(fl: Flow[..., Any]) -> set[str]:
    return set(inspect.signature(fl.fn).parameters)


def parameters_for(fl: Flow[..., Any], inputs: DeploymentInputs, strict: bool = True
                   ) -> dict[str, Any]:
    """The defaults from `inputs` that `fl` takes.

    What it does not take is a ConfigError naming the alternative when `strict` (the nightly
    flow: the option would silently do nothing), else a warning.
    """
    accepted = _flow_parameters(fl)
    wanted: dict[str, Any] = {}
    if fl in RECOMMENDATION_FLOWS:
        wanted |= {"config_path": inputs.config_path, "preset": inputs.preset,
                   "data": inputs.data}
    if inputs.output is not None:
        # the style flows call their output root `root`
        wanted["output" if "output" in accepted or "root" not in accepted else "root"] = (
            inputs.output)
    params: dict[str, Any] = {}
    for name, value in wanted.items():
        if value is None:
            continue
        if name not in accepted:
            option = "--config" if name == "config_path" else f"--{name}"
            message = f"the {fl.name} flow has no `{name}` parameter, so {option} does not apply"
            if name != "config_path":
                where = "[output] root" if name == "output" else "the [source] section"
                message += f"; set {where} in a --config file instead"
            if strict:
                raise ConfigError(message)
            log.warning("%s", message)
            continue
        params[name] = str(Path(value).resolve()) if isinstance(value, Path) else value
    return params


def deployments(cron: str = "0 2 * * *", timezone: str = "UTC",
                inputs: DeploymentInputs | None = None) -> list[Any]:
    """The product's deployments, each named after its flow: nightly on a cron, the rest on demand.

    Tags carry the routing: `cpu` for the recommendation and audio flows, `gpu` for the
    generative and style flows (prefect.yaml maps them to the `cpu` and `gpu` work pools).
    The flows' docstrings become the descriptions in the UI.
    """
    inputs = inputs or DeploymentInputs()
    out = [nightly_recommendations.to_deployment(
        name=nightly_recommendations.name, schedules=[Cron(cron, timezone=timezone)],
        parameters=parameters_for(nightly_recommendations, inputs), tags=["cpu", "nightly"],
        description=nightly_recommendations.description)]
    for fl in (*CPU_FLOWS[1:], *GPU_FLOWS):
        out.append(fl.to_deployment(
            name=fl.name, parameters=parameters_for(fl, inputs, strict=False),
            tags=["cpu"] if fl in CPU_FLOWS else ["gpu"], description=fl.description))
    return out


def serve_all(cron: str = "0 2 * * *", timezone: str = "UTC",
              inputs: DeploymentInputs | None = None) -> None:
    """Serve every deployment from this process until interrupted (Ctrl-C or SIGTERM).

    `pause_on_shutdown=False`: stopping the server process (a redeploy, a reboot) must not
    silently pause the nightly schedule.
    """
    served = deployments(cron, timezone, inputs)
    # Until Prefect's runner installs its own SIGTERM handler (graceful: stop polling, cancel
    # runs in flight), a service manager's stop must end this process cleanly too.
    signal.signal(signal.SIGTERM, _interrupt)
    serve(*served, pause_on_shutdown=False)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # serve() shuts down on it and returns
