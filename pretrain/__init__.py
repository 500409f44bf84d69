"""Shared contracts of the monorepo: typed configs, shard/manifest I/O and the `pretrain` CLI.

Nothing here imports Ray or torch, so the trainer and eval can use it on a bare GPU box.
"""
