"""hf_ext.trainers."""
