"""The export core: plain functions (no Dagster) that read a campaign, transform and publish it."""
