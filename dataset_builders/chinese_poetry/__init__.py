"""The ``chinese-poetry`` corpus for Jiuge: traditional -> simplified, form classification, bad-row reports."""

from .chinese_poetry import UNKNOWN_TUNE, ChinesePoetry, ChinesePoetryConfig, load_chinese_poetry, parse_poem

__all__ = ["ChinesePoetry", "ChinesePoetryConfig", "UNKNOWN_TUNE", "load_chinese_poetry", "parse_poem"]
