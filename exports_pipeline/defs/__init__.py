"""The Dagster side: one concern per module, assembled by exports_pipeline.definitions."""
