"""Dataset builders for hf_ext (GeneratorBasedBuilder subclasses used directly; datasets 5 runs no scripts)."""
