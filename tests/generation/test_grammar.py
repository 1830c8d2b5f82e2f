"""The grammar mask in the batched sampler: constrained rows match, free rows are untouched."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmfast.generation.grammar import Constraint, Grammars
from lmfast.generation.params import GenerationParams, ParamError

PATTERN = r"(yes|no), [0-9]{2,3}!"


def _run(session, requests):
    """requests: (prompt, params, grammar); returns per request its texts and finish reasons."""
    owners = {}
    for r, (prompt, params, grammar) in enumerate(requests):
        ids = session.codec.encode(prompt)
        for row_id in session.add_token_ids(ids, params, grammar=grammar):
            owners[row_id] = r
    texts = {row: "" for row in owners}
    reasons = {}
    while len(session):
        for event in session.step():
            assert event.error is None, event.error
            texts[event.row_id] += event.text
            if event.finished:
                reasons[event.row_id] = event.finish_reason
    return [[(texts[row], reasons[row]) for row in owners if owners[row] == r] for r in range(len(requests))]


def test_constrained_rows_match_and_free_rows_draw_as_alone(torch_generator):
    grammars = Grammars.of(torch_generator.codec, torch_generator.info.eos_token_ids)
    regex = grammars.compile(Constraint("regex", PATTERN, "guided_regex"))
    choice = grammars.compile(Constraint("choice", ["calm", "angry"], "guided_choice"))
    free = GenerationParams(max_new_tokens=6, temperature=1.0, seed=7)
    alone = _run(torch_generator.session(4), [("Truth is", free, None)])[0]
    sampled = GenerationParams(max_new_tokens=20, temperature=1.0, seed=3, num_return_sequences=3)
    mixed = _run(
        torch_generator.session(8),
        [
            ("Truth is", sampled, regex),
            ("Truth is", free, None),
            ("God is", GenerationParams(max_new_tokens=5, temperature=0.0), choice),
        ],
    )
    for text, reason in mixed[0]:
        assert re.fullmatch(PATTERN, text) and reason == "stop", text
    assert mixed[1] == alone  # the same seeded draws beside constrained rows as alone
    assert mixed[2][0][0] in ("calm", "angry") and mixed[2][0][1] == "stop"


def test_refused_constraints_name_their_field(torch_generator):
    grammars = Grammars.of(torch_generator.codec, torch_generator.info.eos_token_ids)
    for constraint in (
        Constraint("json_schema", {"type": "strin"}, "response_format.json_schema.schema"),
        Constraint("json_schema", "not a dict", "guided_json"),
        Constraint("regex", "(unclosed", "guided_regex"),
        Constraint("choice", [], "guided_choice"),
        Constraint("choice", ["", "a"], "structured_outputs.choice"),
    ):
        with pytest.raises(ParamError) as caught:
            grammars.compile(constraint)
        assert caught.value.field == constraint.field and str(caught.value).startswith(constraint.field)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["string", "object", "integer", "#/x"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["type", "properties", "items", "enum", "$ref", "minLength", "pattern", "anyOf"]),
            inner,
            max_size=3,
        )
    ),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=_JSON, regex=st.text(max_size=12))
def test_any_schema_or_regex_compiles_or_is_a_param_error(torch_generator, schema, regex):
    grammars = Grammars.of(torch_generator.codec, torch_generator.info.eos_token_ids)
    for constraint in (
        Constraint("json_schema", schema, "guided_json"),
        Constraint("regex", regex, "guided_regex"),
    ):
        try:
            assert isinstance(grammars.compile(constraint), str)
        except ParamError as error:
            assert error.field == constraint.field


_ATOMS = st.sampled_from(["a", "x", "[a-z]", "\\d", ".", "(ab|cd)", "[^\\n]"])


def _regexes() -> st.SearchStrategy[str]:
    """Regexes built from atoms, nested groups and quantifiers up to {1000}: the hostile class of
    `a{1000}{1000}` and `x*x*...`."""
    quantifier = st.one_of(
        st.sampled_from(["*", "+", "?", ""]),
        st.integers(0, 1000).map(lambda n: f"{{{n}}}"),
        st.tuples(st.integers(0, 50), st.integers(50, 1000)).map(lambda r: f"{{{r[0]},{r[1]}}}"),
    )
    return st.recursive(
        _ATOMS,
        lambda inner: st.one_of(
            st.tuples(inner, quantifier).map("".join),
            st.lists(inner, min_size=2, max_size=4).map("".join),
            st.tuples(inner, quantifier).map(lambda t: f"({t[0]}){t[1]}"),
        ),
        max_leaves=8,
    )


@given(regex=_regexes())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_regex_compiles_within_the_limits_or_is_a_param_error(torch_generator, regex):
    """Compiling (a trial first step included) ends with a matcher or a ParamError naming the
    field, never another exception; a compiled one's copy gives a first mask without error."""
    grammars = Grammars.of(torch_generator.codec, torch_generator.info.eos_token_ids)
    try:
        compiled = grammars.compile(Constraint("regex", regex, "guided_regex"))
    except ParamError as error:
        assert error.field == "guided_regex"
        return
    row = grammars.matcher(compiled)
    assert row.allowed(grammars.tokenizer.vocab_size).any() or row.done
