"""ELV datasets: SemEval-2010 Task 8 and SemEval-2014 Task 4 in the ELV format, from local files."""

from . import semeval
from .semeval import *  # noqa: F403 (re-exports exactly semeval's public API)

__all__ = list(semeval.__all__)
