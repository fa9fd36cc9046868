"""Multi-stage experiments (one module per paper pipeline)."""
