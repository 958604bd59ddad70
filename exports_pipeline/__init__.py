"""Campaign exports pipeline: campaign results from PostgreSQL to CSV/Parquet snapshots."""

__version__ = "0.1.0"
