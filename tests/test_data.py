import pytest
import torch

from sasq.data import eval_windows, load_corpus, random_windows, raw_to_rows, shuffled_windows


def test_rows_match_datasets_layout():
    rows = raw_to_rows(" = A = \n \n text\n")
    assert rows == [" = A = \n", "", " text\n"]


def test_wikitext_test_rows(wikitext_dir):
    corpus = load_corpus("wikitext2", "test", str(wikitext_dir))
    assert corpus.text.count("\n\n") >= 4357
    assert len(corpus.text) == 1_294_336
    assert corpus.source.endswith("wiki.test.raw")


def test_missing_wikitext_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_corpus("wikitext2", "test", str(tmp_path))


def test_empty_corpus_is_rejected(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        load_corpus(f"text:{empty}")


def test_windows_shapes_and_seeds():
    ids = torch.arange(1000)
    assert eval_windows(ids, 300).shape == (3, 300)
    assert torch.equal(eval_windows(ids, 300)[1], torch.arange(300, 600))
    a = random_windows(ids, 100, 5, seed=3)
    assert torch.equal(a, random_windows(ids, 100, 5, seed=3))
    assert not torch.equal(a, random_windows(ids, 100, 5, seed=4))
    train = shuffled_windows(ids, 100, 4, seed=0)
    assert train.shape == (4, 100)
    assert len({int(row[0]) for row in train}) == 4


def test_too_short_corpus():
    with pytest.raises(ValueError, match="fewer than one window of 2048"):
        eval_windows(torch.arange(100), 2048)


def test_pydoc_corpus_splits():
    from pydoc_data.topics import topics

    whole = "\n\n".join(topics[key] for key in sorted(topics))
    validation = load_corpus("pydoc", "validation")
    test = load_corpus("pydoc", "test")
    assert validation.name == "pydoc"
    assert validation.text + test.text == whole
    assert len(validation.text) == int(len(whole) * 0.9)
    assert load_corpus("pydoc", "train").text == validation.text
    assert load_corpus("pydoc", "valid").text == validation.text
    assert validation.source.startswith("pydoc_data.topics (Python ")


def test_pydoc_unknown_split():
    with pytest.raises(ValueError, match="pydoc split 'dev' is unknown"):
        load_corpus("pydoc", "dev")


def test_tinystories_splits_are_disjoint(tinystories_dir):
    whole = (tinystories_dir / "tinystories_train_head.txt").read_text(encoding="utf-8")
    validation = load_corpus("tinystories", "validation", tinystories_dir=str(tinystories_dir))
    test = load_corpus("tinystories", "test", tinystories_dir=str(tinystories_dir))
    assert validation.text + "\n\n" + test.text == whole
    assert int(len(whole) * 0.8) <= len(validation.text) < int(len(whole) * 0.8) + 2000
    assert test.text not in validation.text
    assert load_corpus("tinystories", "train", tinystories_dir=str(tinystories_dir)).text == validation.text
    assert validation.source.endswith(f"tinystories_train_head.txt (characters 0-{len(validation.text)})")
    assert test.source.endswith(f"(characters {len(validation.text) + 2}-{len(whole)})")


def test_tinystories_folder_from_environment(tinystories_dir, monkeypatch):
    monkeypatch.setenv("SASQ_TINYSTORIES_DIR", str(tinystories_dir))
    assert load_corpus("tinystories", "test").name == "tinystories"


def test_tinystories_missing_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("SASQ_TINYSTORIES_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="pass --tinystories-dir or set SASQ_TINYSTORIES_DIR"):
        load_corpus("tinystories", "test")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_corpus("tinystories", "test", tinystories_dir=str(tmp_path))


def test_tinystories_unknown_split(tinystories_dir):
    with pytest.raises(ValueError, match="TinyStories split 'dev' is unknown"):
        load_corpus("tinystories", "dev", tinystories_dir=str(tinystories_dir))
