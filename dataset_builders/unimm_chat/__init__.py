"""UniMM-Chat dataset builder (``Yirany/UniMM-Chat`` → TRL conversational vision format) and fixture writer."""

from .fixtures import make_unimm_chat_rows, write_unimm_chat_parquet
from .unimm_chat import UniMMChat, UniMMChatConfig, convert_row, load_unimm_chat

__all__ = [
    "UniMMChat",
    "UniMMChatConfig",
    "convert_row",
    "load_unimm_chat",
    "make_unimm_chat_rows",
    "write_unimm_chat_parquet",
]
