"""ELV datasets: SemEval-2010 Task 8 and SemEval-2014 Task 4 in the ELV format, from local files."""

from .semeval import (
    ABSA_LABELS,
    ELV_FEATURE_NAMES,
    SEMEVAL2010_LABELS,
    SemEval2010Task8,
    SemEval2014Absa,
    elv_features,
    load_semeval2010_task8,
    load_semeval2014_absa,
    read_absa_3line,
    read_elv_json,
    read_semeval2010_task8,
    read_semeval2014_xml,
)

__all__ = [
    "ABSA_LABELS",
    "ELV_FEATURE_NAMES",
    "SEMEVAL2010_LABELS",
    "SemEval2010Task8",
    "SemEval2014Absa",
    "elv_features",
    "load_semeval2010_task8",
    "load_semeval2014_absa",
    "read_absa_3line",
    "read_elv_json",
    "read_semeval2010_task8",
    "read_semeval2014_xml",
]
