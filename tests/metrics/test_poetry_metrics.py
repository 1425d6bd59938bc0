"""Poetry metrics: tones and rhyme groups of known characters, 平仄 checks counted by hand, form accuracy, Dist-n."""

from pathlib import Path

import pytest

import hf_ext.metrics.poetry as poetry_module
from hf_ext.metrics.poetry import (
    form_accuracy,
    poetry_metrics,
    rhyme_consistency,
    rhyme_group,
    rhyme_score,
    tonal_conformance,
    tonal_conformance_score,
    tone_class,
)
from hf_ext.models.jiuge import BUILTIN_FORMS

DENG = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"


def test_tone_classes_of_unambiguous_characters():
    # Mandarin tones: 天 tiān, 人 rén (平); 马 mǎ, 月 yuè (仄).
    assert [tone_class(c) for c in "天人马月"] == ["平", "平", "仄", "仄"]
    assert tone_class("a") is None and tone_class("，") is None


def test_rhyme_groups_in_both_schemes():
    # 楼 lóu (ou) and 流 liú (iou) share 侯; 诗 shī is the apical -i (支), 西 xī is i (齐); 鱼 yú is ü.
    assert [rhyme_group(c) for c in "楼流诗西"] == ["侯", "侯", "支", "齐"]
    assert rhyme_group("鱼", "shiba18") == "鱼" and rhyme_group("鱼", "xinyun14") == "齐"  # 中华新韵 merges 鱼 into 齐
    assert rhyme_group("歌", "shiba18") == "歌" and rhyme_group("歌", "xinyun14") == "波"
    with pytest.raises(ValueError, match="scheme must be one of"):
        rhyme_group("楼", "pingshui")


def test_tonal_conformance_counted_by_hand():
    # 登鹳雀楼: 日仄/山平, 河平/海仄, 穷平/里仄, 上仄/层平 alternate (4 checks); 对 河≠日, 粘 穷=河, 对 上≠穷 (3);
    # line ends 流平, 目仄, 楼平 (3). All 10 hold.
    assert tonal_conformance_score(DENG) == 1.0
    # Built from 天 (平) and 月 (仄):
    #   line 1 天天天天天: 2nd = 4th (fail)       line 2 月月月月月: 2nd = 4th (fail), 对 ok, ends 仄 (fail)
    #   line 3 天月天天月: alternates, 粘 ok, ends 仄 ok   line 4 天天天月天: alternates, 对 ok, ends 平 ok
    # -> 7 of 10 checks hold.
    broken = "天天天天天，月月月月月。天月天天月，天天天月天。"
    assert tonal_conformance_score(broken) == pytest.approx(7 / 10)
    assert tonal_conformance_score("天天天，月月月。") is None  # not a regulated shape
    result = tonal_conformance([DENG, broken, "天天天，月月月。"])
    assert result == {"tonal_conformance": pytest.approx(0.85), "tonal_perfect": 0.5, "tonal_evaluated": 2}


def test_rhyme_scores():
    jueju = BUILTIN_FORMS["五言绝句"]
    assert rhyme_score(DENG, jueju) == 1.0  # 流 / 楼
    mixed = "天天天天天，天天天天楼。天天天天天，天天天天鱼。"
    assert rhyme_score(mixed, jueju) == 0.5
    # 律诗 rhyme lines 2, 4, 6, 8 end 楼 流 求 西: 侯 侯 侯 齐 -> 3 / 4.
    lushi = "天天天天天，天天天天楼。天天天天天，天天天天流。天天天天天，天天天天求。天天天天天，天天天天西。"
    assert rhyme_score(lushi, BUILTIN_FORMS["五言律诗"]) == 0.75
    # 鱼 and 西 rhyme in 中华新韵 but not in the 十八韵.
    yu_xi = "天天天天天，天天天天鱼。天天天天天，天天天天西。"
    assert rhyme_score(yu_xi, jueju, "xinyun14") == 1.0 and rhyme_score(yu_xi, jueju, "shiba18") == 0.5
    assert rhyme_score("没有标点") == 0.0
    assert rhyme_consistency([DENG, mixed], [jueju, jueju]) == {
        "rhyme_consistency": 0.75,
        "rhyme_all_consistent": 0.5,
        "rhyme_evaluated": 2,
    }


def test_form_accuracy_with_and_without_punctuation():
    poems = [
        DENG,  # valid
        "白日依山尽，黄河入海流。欲穷千里目，更上一层楼楼。",  # a 6-character line
        "白日依山尽。黄河入海流。欲穷千里目，更上一层楼。",  # a period where the form wants a comma
        "风急天高猿啸哀，渚清沙白鸟飞回。",  # a 七言对联
    ]
    forms = ["五言绝句", "五言绝句", "五言绝句", BUILTIN_FORMS["七言对联"]]
    assert form_accuracy(poems, forms) == 2 / 4
    assert form_accuracy(poems, forms, check_punctuation=False) == 3 / 4
    with pytest.raises(ValueError, match="`poems` has 4 entries but `forms` has 1"):
        form_accuracy(poems, ["五言绝句"])
    with pytest.raises(ValueError, match="unknown form '水调歌头'"):
        form_accuracy([DENG], ["水调歌头"])
    with pytest.raises(ValueError, match="got a single string"):
        form_accuracy(DENG, ["五言绝句"])


def test_poetry_metrics_and_evaluate_wrapper():
    same = "天天天天天，天天天天天。天天天天天，天天天天天。"
    result = poetry_metrics([DENG, same], ["五言绝句", "五言绝句"])
    # Characters without punctuation: 20 distinct in DENG + 20 x 天 -> 21 distinct of 40;
    # bigrams: 19 distinct in DENG + 19 x 天天 -> 20 distinct of 38.
    assert result["dist-1"] == pytest.approx(21 / 40)
    assert result["dist-2"] == pytest.approx(20 / 38)
    assert result["form_accuracy"] == 1.0
    assert result["rhyme_consistency"] == 1.0  # 天 / 天 rhyme trivially

    import evaluate

    metric = evaluate.load(str(Path(poetry_module.__file__)))
    wrapped = metric.compute(predictions=[DENG, same], references=["五言绝句", "五言绝句"])
    assert wrapped == pytest.approx(result)
