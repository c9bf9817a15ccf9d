"""gptmini.core.sources: the shipped corpus and folder sources (formats end to end: test_corpora.py)."""



from gptmini.core.sources import resolve_sources


def test_default_corpus_is_shipped():
    (src,) = resolve_sources(None)
    assert src.kind == "text" and src.path.is_file() and src.path.name == "shakespeare_plays.txt.gz"
    assert (src.path.parent / "NOTICE").is_file()


def test_folder_source_collects_txt_files(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    (tmp_path / "c.md").write_text("c")
    assert [p.path.name for p in resolve_sources(str(tmp_path))] == ["a.txt", "b.txt"]
