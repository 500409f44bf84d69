"""Streaming, resumable pretraining (issue 4): Llama-style model, data, curriculum, loop."""
