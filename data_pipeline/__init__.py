"""Ray-parallel cleaning stages: raw documents in, Parquet document shards out.

Run locally: `pretrain data run --config configs/data_tiny.yaml`; on a cluster:
`ray job submit --working-dir . -- python -m data_pipeline run --config X`.
Importing this package does not import Ray.
"""
