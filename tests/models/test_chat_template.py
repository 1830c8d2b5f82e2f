"""The one chat-template renderer (training and serving) against transformers' own renderer: the same
text, and the same `{% generation %}` spans (what `return_assistant_tokens_mask` marks)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfast.models.chat_template import ChatTemplate

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLED = (REPO_ROOT / "data" / "documents" / "dialogs" / "chat_template.jinja").read_text(encoding="utf-8")


def _dialog_tests():
    """tests/data/test_dialogs.py: the tagged templates the dialog datasets are proven with."""
    spec = importlib.util.spec_from_file_location(
        "dialog_tests", REPO_ROOT / "tests" / "data" / "test_dialogs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_DIALOG_TESTS = _dialog_tests()
TEMPLATES = {
    "bundled": BUNDLED,
    "tagged": _DIALOG_TESTS.TAGGED_TEMPLATE,
    "smollm2_tagged": _DIALOG_TESTS.SMOLLM2_TAGGED,
}
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": _text},
        optional={"reasoning_content": _text, "thinking": _text},
    ),
    min_size=1,
    max_size=5,
)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@settings(max_examples=40, deadline=None)
@given(messages=_messages, generation_prompt=st.booleans())
def test_text_and_spans_equal_transformers(name, messages, generation_prompt):
    from transformers.utils.chat_template_utils import render_jinja_template

    source = TEMPLATES[name]
    (texts, spans) = render_jinja_template(
        conversations=[messages],
        chat_template=source,
        add_generation_prompt=generation_prompt,
        return_assistant_tokens_mask=True,
        **SPECIAL,
    )
    text, ours = ChatTemplate(source, SPECIAL).render_tracked(
        messages, add_generation_prompt=generation_prompt
    )
    assert text == texts[0]
    assert ours == [tuple(span) for span in spans[0]]


def test_tagged_templates_are_found():
    assert ChatTemplate(TEMPLATES["tagged"]).has_generation_tags
    assert not ChatTemplate(BUNDLED).has_generation_tags


def test_spans_of_a_tagged_template_mark_the_answers():
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    text, spans = ChatTemplate(TEMPLATES["tagged"], SPECIAL).render_tracked(
        messages, add_generation_prompt=False
    )
    assert [text[a:b] for a, b in spans] == ["hello</s>"]
