"""The one writer of docs sections that the benchmarks share (cmt_pipeline/docs_sections.py)."""

from cmt_pipeline.docs_sections import write_section

DOC = """# Results

<!-- teacher-quality -->
## Built-in digits teacher

old table
<!-- /teacher-quality -->
<!-- init-comparison:gmm -->
## Post-training: Gaussian mixture

gmm table
<!-- /init-comparison:gmm -->

## Written by hand

kept
"""


def test_rewriting_twice_leaves_one_section_and_the_others_intact(tmp_path):
    path = tmp_path / "results.md"
    path.write_text(DOC)
    for _ in range(2):
        write_section(path, "teacher-quality", "## Built-in digits teacher\n\nnew table\n")
        write_section(path, "init-comparison:gmm", "## Post-training: Gaussian mixture\n\nnew gmm table")
    text = path.read_text()
    assert text == (DOC.replace("old table", "new table").replace("gmm table", "new gmm table"))
    assert text.count("<!-- teacher-quality -->") == text.count("<!-- init-comparison:gmm -->") == 1


def test_a_missing_section_or_file_is_appended(tmp_path):
    path = tmp_path / "results.md"
    write_section(path, "size", "## Sizes\n\nrow")
    write_section(path, "size", "## Sizes\n\nrow 2")
    assert path.read_text() == "<!-- size -->\n## Sizes\n\nrow 2\n<!-- /size -->\n"
    path.write_text(DOC)
    write_section(path, "size", "## Sizes")
    assert path.read_text() == DOC + "\n<!-- size -->\n## Sizes\n<!-- /size -->\n"
