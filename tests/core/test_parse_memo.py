"""ModelDeployment.from_body's memo: the same inputs give the same object, any other input
parses again, and the memo stays bounded."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hedge_core.api import ModelDeployment, SpecError, resource
from tests.operator.factories import body

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def empty_memo() -> Iterator[None]:
    resource._MEMO.clear()
    yield
    resource._MEMO.clear()


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the objects actually parsed (not answered from the memo)."""
    seen: list[str] = []
    real = ModelDeployment.parse_body.__func__  # type: ignore[attr-defined]

    def counting(cls: type[ModelDeployment], b: Any) -> ModelDeployment:
        seen.append(b["metadata"]["name"])
        result: ModelDeployment = real(cls, b)
        return result

    monkeypatch.setattr(ModelDeployment, "parse_body", classmethod(counting))
    return seen


def test_same_uid_and_generation_is_the_same_object(parses: list[str]) -> None:
    first = ModelDeployment.from_body(body())
    again = ModelDeployment.from_body(copy.deepcopy(body()))
    assert again is first and parses == ["llama"]


def test_a_new_generation_parses_again(parses: list[str]) -> None:
    first = ModelDeployment.from_body(body(generation=1))
    second = ModelDeployment.from_body(body(generation=2))
    assert second is not first and (first.generation, second.generation) == (1, 2)
    assert len(parses) == 2
    assert ModelDeployment.from_body(body(generation=1)) is first


def test_the_spec_is_part_of_the_key_even_at_the_same_generation(parses: list[str]) -> None:
    # Bodies made up by tests (and kopf's patched copies) do not always bump the generation.
    one = ModelDeployment.from_body(body(generation=1))
    b = body(generation=1)
    b["spec"]["replicas"] = 3
    three = ModelDeployment.from_body(b)
    assert (one.spec.replicas, three.spec.replicas) == (1, 3) and len(parses) == 2


@pytest.mark.parametrize("field", ["name", "namespace", "uid"])
def test_each_identity_field_is_part_of_the_key(field: str) -> None:
    first = ModelDeployment.from_body(body())
    kwargs: dict[str, Any] = {field: "other"}
    other = ModelDeployment.from_body(body(**kwargs))
    assert getattr(other, field) == "other" and getattr(first, field) != "other"


def test_labels_annotations_and_status_do_not_matter_and_do_not_parse_again(
    parses: list[str],
) -> None:
    # ModelDeployment reads none of them, so the memoised object is still exact.
    first = ModelDeployment.from_body(body())
    b = body(status={"observedGeneration": 1})
    b["metadata"].update(
        labels={"team": "a"}, annotations={"hedge.dev/pause": "x"}, resourceVersion="42"
    )
    assert ModelDeployment.from_body(b) is first
    assert ModelDeployment.parse_body(b) == first
    assert parses == ["llama", "llama"]  # the second is parse_body itself


@pytest.mark.parametrize("replicas", [True, 1.0, "1"])
def test_values_that_compare_equal_are_not_confused(replicas: Any) -> None:
    ok = body(generation=1)
    ok["spec"]["replicas"] = 1
    assert ModelDeployment.from_body(ok).spec.replicas == 1
    bad = copy.deepcopy(ok)
    bad["spec"]["replicas"] = replicas
    with pytest.raises(SpecError, match=r"spec\.replicas: must be an integer"):
        ModelDeployment.from_body(bad)


def test_a_list_and_a_tuple_are_not_confused() -> None:
    as_list = body({"model": {"source": "hf://a/b"}, "engine": {"extraArgs": ["--x"]}})
    assert ModelDeployment.from_body(as_list).spec.engine.extra_args == ["--x"]
    as_tuple = body({"model": {"source": "hf://a/b"}, "engine": {"extraArgs": ("--x",)}})
    with pytest.raises(SpecError, match="must be a list"):
        ModelDeployment.from_body(as_tuple)


def test_a_refused_spec_is_remembered_too(parses: list[str]) -> None:
    bad = body({"model": {"source": "ftp://x/y"}})
    with pytest.raises(SpecError) as first:
        ModelDeployment.from_body(bad)
    with pytest.raises(SpecError) as again:
        ModelDeployment.from_body(copy.deepcopy(bad))
    assert again.value is not first.value  # a fresh exception each time
    assert again.value.problems == first.value.problems
    assert str(again.value) == str(first.value)
    assert again.value.__cause__ is None and again.value.__suppress_context__
    assert parses == ["llama"]
    # Fixed at the next generation: parsed again, and valid.
    good = body({"model": {"source": "hf://x/y"}}, generation=2)
    assert ModelDeployment.from_body(good).spec.model.source == "hf://x/y"


def test_a_bad_generation_raises_as_it_did() -> None:
    with pytest.raises(ValueError):
        ModelDeployment.from_body(body(generation="many"))  # type: ignore[arg-type]
    with pytest.raises(SpecError):
        ModelDeployment.from_body(
            body({"model": {"source": "ftp://x"}}, generation="many")  # type: ignore[arg-type]
        )
    assert len(resource._MEMO) == 0


def test_the_memo_is_a_bounded_lru(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "_MEMO", resource._Memo(3))
    objects = [ModelDeployment.from_body(body(generation=g)) for g in (1, 2, 3)]
    assert ModelDeployment.from_body(body(generation=1)) is objects[0]  # now the newest
    ModelDeployment.from_body(body(generation=4))  # evicts generation 2, the oldest
    assert len(resource._MEMO) == 3
    assert ModelDeployment.from_body(body(generation=1)) is objects[0]
    assert ModelDeployment.from_body(body(generation=3)) is objects[2]
    assert ModelDeployment.from_body(body(generation=2)) is not objects[1]
    assert resource.MEMO_SIZE >= 1000


def test_memoised_results_equal_fresh_parses_for_every_example() -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ModelDeployment":
                fresh = ModelDeployment.parse_body(doc)
                assert ModelDeployment.from_body(doc) == fresh
                assert ModelDeployment.from_body(copy.deepcopy(doc)) == fresh
