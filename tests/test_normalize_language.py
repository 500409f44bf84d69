"""Normalise and language-ID stages: exact outputs and reject reasons."""

from __future__ import annotations

import pytest

from data_pipeline.document import Doc, Reject
from data_pipeline.stages.language import LanguageConfig
from data_pipeline.stages.normalize import NormalizeConfig
from pretrain.core.config import ConfigError


def _doc(text: str) -> Doc:
    return Doc("t:1", text, "web")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("cafe\u0301 au lait", "café au lait"),  # NFD -> NFC
        ("The cafÃ© is open.", "The café is open."),  # mojibake repaired by ftfy
        ("a\x00b\x07c\u200b", "abc\u200b"),  # C0 controls dropped, zero-width space kept
        ("line one   \r\nline two\t\n\n\n\n\nend  ", "line one\nline two\n\nend"),
        ("\ufeffBOM first", "BOM first"),
    ],
)
def test_normalize_text(raw, expected):
    out = NormalizeConfig().build().process(_doc(raw))
    assert isinstance(out, Doc)
    assert out.text == expected


@pytest.mark.parametrize("raw", ["", "   \n\t ", "\x00\x01\x02", "\u2028\u2029"])
def test_empty_rejected(raw):
    assert NormalizeConfig().build().process(_doc(raw)) == Reject("empty", "0 chars after normalising")


def test_too_long_rejected_without_touching_giant_text():
    stage = NormalizeConfig(max_chars=100).build()
    res = stage.process(_doc("x" * 101))
    assert isinstance(res, Reject) and res.reason == "too_long"
    res = stage.process(_doc("y" * 10_000))  # > 2x max: rejected before ftfy runs
    assert res == Reject("too_long", "10000 chars > 100")
    assert isinstance(stage.process(_doc("z" * 100)), Doc)


def test_normalize_config_errors():
    with pytest.raises(ConfigError, match="normalize.min_chars"):
        NormalizeConfig(min_chars=0)


EN = "The garbage collector frees memory that is no longer referenced by any object in the program."
FR = "Le ramasse-miettes libère la mémoire qui n'est plus référencée par aucun objet du programme."
DE = "Der Speicherbereiniger gibt Speicher frei, auf den kein Objekt des Programms mehr verweist."


def test_language_keep_and_reject():
    stage = LanguageConfig(languages=["en"]).build()
    kept = stage.process(_doc(EN))
    assert isinstance(kept, Doc)
    assert kept.metadata["language"] == "en" and kept.metadata["language_score"] >= 0.65
    for text, lang in ((FR, "fr"), (DE, "de")):
        res = stage.process(_doc(text))
        assert isinstance(res, Reject) and res.reason == "wrong_language" and res.detail.startswith(lang)


def test_language_multiple_and_threshold():
    stage = LanguageConfig(languages=["en", "fr"]).build()
    assert isinstance(stage.process(_doc(FR)), Doc)
    strict = LanguageConfig(languages=["en"], min_score=1.0).build()
    res = strict.process(_doc("ok ok"))
    assert isinstance(res, Reject) and res.reason in ("low_language_score", "wrong_language")
    tag_only = LanguageConfig(languages=[]).build()
    out = tag_only.process(_doc(DE))
    assert isinstance(out, Doc) and out.metadata["language"] == "de"


def test_language_fasttext_needs_local_model(tmp_path):
    with pytest.raises(ConfigError, match="language.model_path"):
        LanguageConfig(backend="fasttext")
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        LanguageConfig(backend="fasttext", model_path=str(tmp_path / "nope.bin")).build()


def test_language_fasttext_backend_with_a_local_model(tmp_path):
    """The fastText path with a real (tiny, trained here) model file: no download involved."""
    fasttext = pytest.importorskip("fasttext")
    train = tmp_path / "train.txt"
    en = [
        EN,
        "The function returns a new list with every element of the input sorted.",
        "Open the file in binary mode and read it one block at a time.",
    ]
    fr = [
        FR,
        "La fonction renvoie une nouvelle liste avec chaque élément trié.",
        "Ouvrez le fichier en mode binaire et lisez-le un bloc à la fois.",
    ]
    lines = [f"__label__en {t}" for t in en] + [f"__label__fr {t}" for t in fr]
    train.write_text("\n".join(lines * 30) + "\n")
    model = fasttext.train_supervised(
        str(train), epoch=25, lr=0.5, minn=2, maxn=4, thread=1, seed=0, verbose=0
    )
    path = tmp_path / "lid.bin"
    model.save_model(str(path))
    stage = LanguageConfig(backend="fasttext", model_path=str(path), languages=["en"], min_score=0.5).build()
    kept = stage.process(_doc("Read the whole file and return the list of lines in it."))
    assert isinstance(kept, Doc) and kept.metadata["language"] == "en"
    res = stage.process(_doc("Lisez le fichier entier et renvoyez la liste de ses lignes."))
    assert isinstance(res, Reject) and res.reason == "wrong_language" and res.detail.startswith("fr")
