"""One table of citations: the entry format, and every user of a paper's BibTeX reads the same entry."""

from hf_ext.utils.citations import CITATIONS, Citation


def test_bibtex_entry_written_out_by_hand():
    paper = Citation(
        key="k", title="A Title", authors="Doe, Jane", year=2020, arxiv="1234.5678", venue="V", pages="1--2"
    )
    assert paper.bibtex == (
        "@inproceedings{k,\n"
        "  title = {{A Title}},\n"
        "  author = {Doe, Jane},\n"
        "  booktitle = {V},\n"
        "  pages = {1--2},\n"
        "  year = {2020},\n"
        "  eprint = {1234.5678},\n"
        "  archivePrefix = {arXiv}\n"
        "}"
    )
    preprint = Citation(key="p", title="T", authors="Doe, Jane", year=2023, arxiv="2310.00653")
    assert preprint.bibtex.splitlines()[:4] == [
        "@article{p,",
        "  title = {{T}},",
        "  author = {Doe, Jane},",
        "  journal = {arXiv preprint arXiv:2310.00653},",
    ]


def test_cards_trainer_and_builders_cite_the_same_entries(tmp_path):
    from dataset_builders.rlhf_v import RLHFV
    from dataset_builders.unimm_chat.unimm_chat import UniMMChat
    from hf_ext.hub.cards import FAMILIES
    from hf_ext.trainers.dense_dpo import DenseDPOTrainer

    assert set(FAMILIES) == set(CITATIONS)
    for family, info in FAMILIES.items():
        assert (info.bibtex, info.title, info.arxiv) == (
            CITATIONS[family].bibtex,
            CITATIONS[family].title,
            CITATIONS[family].arxiv,
        )
    assert DenseDPOTrainer._paper == {
        "title": CITATIONS["rlhf_v"].title,
        "id": "2312.00849",
        "citation": CITATIONS["rlhf_v"].bibtex,
    }
    assert RLHFV(cache_dir=str(tmp_path), parquet_files=[]).info.citation == CITATIONS["rlhf_v"].bibtex
    assert UniMMChat(cache_dir=str(tmp_path), parquet_files=[]).info.citation == CITATIONS["muffin"].bibtex
