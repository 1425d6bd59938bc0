"""Stand-in for transformers' ``tests/utils/test_configuration_utils.py`` (not shipped in the source distribution).

``ConfigTester.check_config_arguments_init`` imports only ``config_common_kwargs`` from it: one non-default value for
each argument of ``PreTrainedConfig`` (transformers 5.24), which every model config must store unchanged.
"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
