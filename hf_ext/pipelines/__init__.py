"""hf_ext.pipelines."""
