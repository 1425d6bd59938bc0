"""hf_ext.utils."""
