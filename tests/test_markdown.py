"""Markdown helpers of the reports: what they write renders as the text it holds."""

from __future__ import annotations

import html

import pytest
from markdown_it import MarkdownIt

from lmlab.markdown import code_block, escape, inline_code, settings_list, table


def render(text: str) -> str:
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


TRICKY = ["*bold* _it_ `code` [link](x) <b>tag</b> a|b & ~x~", "snake_case _x_ a__b__c __d__",
          "# not a heading", "- not a list", "1. not a list", "> not a quote", "back\\slash \\* kept",
          "2+2=4 (ok). Fine!"]


@pytest.mark.parametrize("text", TRICKY)
def test_escaped_text_renders_as_written(text):
    assert render(escape(text)) == f"<p>{html.escape(text, quote=False)}</p>\n"


def test_plain_punctuation_is_left_alone():
    assert escape("the runs' median C/(ND), 0.001; L-BFGS.") == "the runs' median C/(ND), 0.001; L-BFGS."
    assert escape("two\nlines") == "two lines"
    assert escape("N_opt reward_gap") == "N_opt reward_gap"


@pytest.mark.parametrize("text", ["say ```x``` and `y`", "plain\n\nlines <b>", "``"])
def test_code_blocks_and_inline_code_hold_any_text(text):
    want = f'<pre><code class="language-text">{html.escape(text, quote=False)}\n</code></pre>\n'
    assert render(code_block(text)) == want
    one_line = " ".join(text.split())
    assert html.unescape(render(inline_code(text))).strip() == f"<p><code>{one_line}</code></p>"


def test_table_cells_stay_in_their_columns():
    out = render(table(["name", "value"], [[escape("a|b"), "1"], ["c|d", inline_code("x|y")]]))
    assert out.count("<td>") == 2 and out.count('<td style="text-align:right">') == 2
    assert "<td>a|b</td>" in out and "<td>c|d</td>" in out and "<code>x|y</code>" in out


def test_settings_list():
    assert settings_list({"lr": 0.001, "data": "a`b"}) == "- lr: `0.001`\n- data: ``a`b``"
