"""Checkpoint scoring (held-out LM, multiple choice, generations), reports, and Hugging Face export.

See eval/README.md; commands: `pretrain eval run|watch|export|report|make-tasks`.
"""
