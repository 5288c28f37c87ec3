"""The nightly recommendation job: config, stages planned per time cut-off, runner, manifest."""
