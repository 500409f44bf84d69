"""The shared core: contracts and plumbing every folder uses, importing no stage (see README.md)."""
