"""The papers behind hf_ext, one BibTeX entry each: model cards, trainers' cards and dataset builders all cite from here.

Venues, authors and pages follow the projects' reference notes (the papers' own pages and the official READMEs);
where a full author list could not be read it ends with ``and others``, as the authors' own READMEs do. Preprints
(Muffin, IAP) are ``@article`` entries with ``journal = {arXiv preprint arXiv:<id>}``.

Example:

```python
>>> from hf_ext.utils.citations import CITATIONS
>>> print(CITATIONS["rlhf_v"].bibtex.splitlines()[0])
@inproceedings{yu2024rlhfv,
```
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CITATIONS", "Citation"]


@dataclass(frozen=True)
class Citation:
    """One paper: what a card or a dataset's ``citation`` field needs.

    Args:
        key (`str`): the BibTeX key.
        title (`str`): the paper's title.
        authors (`str`): BibTeX author list (``Last, First and ...``).
        year (`int`): publication year.
        arxiv (`str`): arXiv id.
        venue (`str`, *optional*): the proceedings (``booktitle``); `None` for a preprint (an ``@article`` on arXiv).
        pages (`str`, *optional*): page range in the proceedings (``697--716``).
    """

    key: str
    title: str
    authors: str
    year: int
    arxiv: str
    venue: str | None = None
    pages: str | None = None

    @property
    def bibtex(self) -> str:
        """The BibTeX entry: ``@inproceedings`` with ``booktitle`` (and ``pages``), or an arXiv ``@article``; the title is
        braced twice so that styles keep its capitals (``RLHF-V``, ``MLLMs``)."""
        fields = [("title", f"{{{self.title}}}"), ("author", self.authors)]  # braces keep the title's case
        if self.venue is None:
            fields.append(("journal", f"arXiv preprint arXiv:{self.arxiv}"))
        else:
            fields.append(("booktitle", self.venue))
            if self.pages:
                fields.append(("pages", self.pages))
        fields += [("year", str(self.year)), ("eprint", self.arxiv), ("archivePrefix", "arXiv")]
        body = ",\n".join(f"  {name} = {{{value}}}" for name, value in fields)
        kind = "article" if self.venue is None else "inproceedings"
        return f"@{kind}{{{self.key},\n{body}\n}}"


_HU_YI_LI_SUN_XIE = "Hu, Jinyi and Yi, Xiaoyuan and Li, Wenhao and Sun, Maosong and Xie, Xing"

#: The papers hf_ext implements, by card family (the names of ``model_cards/<family>.md``).
CITATIONS: dict[str, Citation] = {
    "rlhf_v": Citation(
        key="yu2024rlhfv",
        title=(
            "RLHF-V: Towards Trustworthy MLLMs via Behavior Alignment from Fine-grained Correctional Human Feedback"
        ),
        authors=(
            "Yu, Tianyu and Yao, Yuan and Zhang, Haoye and He, Taiwen and Han, Yifeng and Cui, Ganqu and Hu, Jinyi"
            " and Liu, Zhiyuan and Zheng, Hai-Tao and Sun, Maosong and Chua, Tat-Seng"
        ),
        year=2024,
        arxiv="2312.00849",
        venue="Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)",
    ),
    "muffin": Citation(
        key="yu2023muffin",
        title="Reformulating Vision-Language Foundation Models and Datasets Towards Universal Multimodal Assistants",
        authors="Yu, Tianyu and Hu, Jinyi and Yao, Yuan and Zhang, Haoye and Zhao, Yue and Wang, Chongyi and others",
        year=2023,
        arxiv="2310.00653",
    ),
    "viscpm": Citation(
        key="hu2024viscpm",
        title="Large Multilingual Models Pivot Zero-Shot Multimodal Learning across Languages",
        authors=(
            "Hu, Jinyi and Yao, Yuan and Wang, Chongyi and Wang, Shan and Pan, Yinxu and Chen, Qianyu and Yu, Tianyu"
            " and others"
        ),
        year=2024,
        arxiv="2308.12038",
        venue="International Conference on Learning Representations (ICLR)",
    ),
    "iap": Citation(
        key="hu2023iap",
        title="Efficient Cross-Lingual Transfer for Chinese Stable Diffusion with Images as Pivots",
        authors=(
            "Hu, Jinyi and Han, Xu and Yi, Xiaoyuan and Chen, Yutong and Li, Wenhao and Liu, Zhiyuan and Sun, Maosong"
        ),
        year=2023,
        arxiv="2305.11540",
    ),
    "della": Citation(
        key="hu2022della",
        title=(
            "Fuse It More Deeply! A Variational Transformer with Layer-Wise Latent Variable Inference for Text "
            "Generation"
        ),
        authors=_HU_YI_LI_SUN_XIE,
        year=2022,
        arxiv="2207.06130",
        venue=(
            "Proceedings of the 2022 Conference of the North American Chapter of the Association for Computational "
            "Linguistics: Human Language Technologies (NAACL-HLT)"
        ),
        pages="697--716",
    ),
    "trace": Citation(
        key="hu2022trace",
        title=(
            "Recurrence Boosts Diversity! Revisiting Recurrent Latent Variable in Transformer-Based Variational "
            "AutoEncoder for Diverse Text Generation"
        ),
        authors=_HU_YI_LI_SUN_XIE,
        year=2022,
        arxiv="2210.12409",
        venue="Findings of the Association for Computational Linguistics: EMNLP 2022",
    ),
    "care": Citation(
        key="li2022care",
        title=(
            "Evade the Trap of Mediocrity: Promoting Diversity and Novelty in Text Generation via Concentrating "
            "Attention"
        ),
        authors="Li, Wenhao and Yi, Xiaoyuan and Hu, Jinyi and Sun, Maosong and Xie, Xing",
        year=2022,
        arxiv="2211.07164",
        venue="Proceedings of the 2022 Conference on Empirical Methods in Natural Language Processing (EMNLP)",
    ),
    "elv": Citation(
        key="zhou2020elv",
        title="Towards Interpretable Natural Language Understanding with Explanations as Latent Variables",
        authors=(
            "Zhou, Wangchunshu and Hu, Jinyi and Zhang, Hanlin and Liang, Xiaodan and Sun, Maosong and Xiong, Chenyan"
            " and Tang, Jian"
        ),
        year=2020,
        arxiv="2011.05268",
        venue="Advances in Neural Information Processing Systems (NeurIPS)",
        pages="6803--6814",
    ),
    "jiuge": Citation(
        key="hu2020jiuge",
        title="Generating Major Types of Chinese Classical Poetry in a Uniformed Framework",
        authors="Hu, Jinyi and Sun, Maosong",
        year=2020,
        arxiv="2003.11528",
        venue="Proceedings of the Twelfth Language Resources and Evaluation Conference (LREC)",
        pages="4658--4663",
    ),
}
