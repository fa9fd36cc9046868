"""Training loops: the two-tower retrieval trainer, checkpoints and resumption, distribution."""
