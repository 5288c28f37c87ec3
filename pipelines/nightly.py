"""The nightly recommendation job (compatibility names; the job lives in pipelines.recommend)."""

from pipelines.recommend.config import OutputConfig, RunConfig
from pipelines.recommend.runner import RunResult, StageReport, execute, run_nightly, run_with
from pipelines.recommend.stages import Plan, Stage, plan

__all__ = ["OutputConfig", "Plan", "RunConfig", "RunResult", "Stage", "StageReport", "execute",
           "plan", "run_nightly", "run_with"]
