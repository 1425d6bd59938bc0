"""hf_ext.metrics."""
