"""Deployments of every flow, and `recsys serve`: run the schedules on one machine, no cloud."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import serve
from prefect.schedules import Cron

from flows.audio import audio_catalogue
from flows.generative import train_gan, train_realnvp, train_vae
from flows.recommend import nightly_recommendations, offline_evaluation
from flows.style import style_train


def deployments(cron: str = "0 2 * * *", timezone: str = "UTC",
                config_path: Path | None = None) -> list[Any]:
    """The product's deployments: the nightly run on a cron, the rest on demand.

    Tags carry the routing: `cpu` for the recommendation and audio flows, `gpu` for the
    generative and style flows (prefect.yaml maps them to the `cpu` and `gpu` work pools).
    """
    params = {"config_path": str(config_path.resolve())} if config_path else {}
    return [
        nightly_recommendations.to_deployment(
            name="nightly", schedules=[Cron(cron, timezone=timezone)], parameters=params,
            tags=["cpu", "nightly"], description="Nightly recommendations at the cron time."),
        offline_evaluation.to_deployment(name="on-demand", parameters={}, tags=["cpu"]),
        audio_catalogue.to_deployment(name="on-demand", tags=["cpu"]),
        train_vae.to_deployment(name="on-demand", tags=["gpu"]),
        train_realnvp.to_deployment(name="on-demand", tags=["gpu"]),
        train_gan.to_deployment(name="on-demand", tags=["gpu"]),
        style_train.to_deployment(name="on-demand", tags=["gpu"]),
    ]


def serve_all(cron: str = "0 2 * * *", timezone: str = "UTC",
              config_path: Path | None = None) -> None:
    """Serve every deployment from this process until interrupted.

    `pause_on_shutdown=False`: stopping the server process (a redeploy, a reboot) must not
    silently pause the nightly schedule.
    """
    serve(*deployments(cron, timezone, config_path), pause_on_shutdown=False)
