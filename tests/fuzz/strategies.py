"""The request space, as hypothesis strategies.

Requests are drawn in the Aleph Alpha JSON shape of docs/http-gateway.md (with well-typed values
at their edges: empty, huge, negative, NaN and infinite floats, out-of-range ints, unknown
enum-like strings), so that one drawn request can be sent over HTTP as it is and over gRPC
through `to_proto`, the test's own reading of the documented JSON -> protobuf mapping. On top:
`proto_tweaks` (what only protobuf can say), `mutated` (arbitrary JSON of any shape in any
field, unknown keys, wrong types), raw HTTP bodies and raw gRPC wire bytes.

Most draws stay close to valid, so that the fuzz reaches tokenization, images, controls and the
graph rather than stopping at the first field check.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from hypothesis import strategies as st

from lamina.v1 import embed_pb2 as pb
from tests.conftest import DINOV2, MINILM, SMOLLM2
from tests.fuzz import images

T = TypeVar("T")

MODELS = (MINILM, SMOLLM2, DINOV2)
VOCAB = {MINILM: 30522, SMOLLM2: 49152, DINOV2: 0}
BLOCKS = {MINILM: 6, SMOLLM2: 30, DINOV2: 12}
HIDDEN = {MINILM: 384, SMOLLM2: 576, DINOV2: 384}
IMAGE_MODELS = frozenset({DINOV2})
TEXT_MODELS = frozenset({MINILM, SMOLLM2})
SEMANTIC_MODELS = frozenset({MINILM, DINOV2})
POOLINGS = ("mean", "weighted_mean", "max", "last_token", "abs_max")
REPRESENTATIONS = ("symmetric", "document", "query")
ROUTES = ("embed", "semantic_embed", "batch_semantic_embed", "tokenize", "detokenize")
METHODS = {
    "embed": "Embed",
    "semantic_embed": "SemanticEmbed",
    "batch_semantic_embed": "BatchSemanticEmbed",
    "tokenize": "Tokenize",
    "detokenize": "Detokenize",
}

INT32 = (-(2**31), 2**31 - 1)
UINT32 = (0, 2**32 - 1)
INT64 = (-(2**63), 2**63 - 1)


class _Absent:
    """A field left out of the JSON (as opposed to JSON null)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """one_of with integer weights; shrinks towards the first choice. (one_of itself would
    drop the repeats: hypothesis picks among distinct branches evenly.)"""
    branches = [strategy for _, strategy in choices]
    picks = [index for index, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(picks).flatmap(lambda index: branches[index])


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True once in `n` draws (False where hypothesis leans to its simplest choice)."""
    return st.sampled_from([False] * (n - 1) + [True])


def optional(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[Any]:
    """Left out, JSON null, or a value (mostly a value)."""
    return weighted((4, strategy), (1, st.just(ABSENT)), (1, st.none()))


def fields(**entries: Any) -> dict[str, Any]:
    return {key: value for key, value in entries.items() if value is not ABSENT}


# -- scalars ---------------------------------------------------------------------------------


# Huge strings, up to 6 MB, cheap to draw and to send (the largest in ASCII only, as JSON
# escapes the rest six bytes a character): past every size limit of names and enum-like fields.
def _repeat(base: str, size: int) -> str:
    return (base * (size // len(base) + 1))[:size]


huge_strings = st.one_of(
    st.builds(
        _repeat,
        st.sampled_from(["x", "hello ", "日本", "👍", "\x00", " ", "ab\u0301"]),
        st.sampled_from([2_100, 70_000]),
    ),
    st.builds(
        _repeat, st.sampled_from(["x", "hello ", " "]), st.sampled_from([700_000, 6_000_000])
    ),
)
# Huge prompt texts: past the context of every model (or no tokens at all), so that they are
# refused, cheaply or not. Long texts a model can take cost minutes of inference and gigabytes
# (smollm2-135m-instruct holds 8192 positions): those are test_costly.py's, not drawn here.
huge_texts = st.one_of(
    st.builds(
        _repeat,
        st.sampled_from(["x", "hello ", "日本", "👍", "\x00", "ab\u0301"]),
        st.sampled_from([70_000, 700_000]),
    ),
    st.builds(
        _repeat, st.sampled_from(["x", "hello ", " "]), st.sampled_from([700_000, 6_000_000])
    ),
)
unicode_text = weighted(
    (12, st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30)),
    (1, st.just("")),
)
odd_strings = weighted(
    (
        3,
        st.sampled_from(
            ["", " ", "\x00", "MEAN", "mean ", " mean", "null", "None", "0", "🙂", "a" * 300]
        ),
    ),
    (8, unicode_text),
    (1, huge_strings),
)
models = weighted(
    (10, st.sampled_from(MODELS)),
    (
        1,
        st.sampled_from(
            [
                "",
                "ALL-MINILM-L6-V2",
                f"{MINILM} ",
                f"{MINILM}@1",
                "../all-minilm-l6-v2",
                f"{MINILM}\x00",
                "luminous-base",
            ]
        ),
    ),
    (1, odd_strings),
)

FLOAT_EDGES = (
    0.0,
    -0.0,
    1.0,
    0.5,
    0.1,
    2.0,
    10.0,
    5e-324,  # the smallest subnormal double
    1e-310,
    2.2250738585072014e-308,
    1.401298464324817e-45,  # the smallest float32 subnormal
    1.1754943508222875e-38,
    1e-30,
    1e15,
    1e30,
    1.0000000000000002e30,
    3e30,
    1e38,
    3.4028234663852886e38,  # float32 max
    3.4028235677973366e38,  # the double that rounds past it
    3.5e38,
    1e39,
    1e300,
    1.7976931348623157e308,
    math.inf,
    -math.inf,
    math.nan,
    -1.0,
    -5e-324,
)
factors = weighted(
    (4, st.floats(0, 4)),
    (3, st.sampled_from(FLOAT_EDGES)),
    (2, st.floats(1e14, 1e40)),
    (1, st.floats()),
)
thresholds = weighted(
    (3, st.floats(-1, 1)),
    (2, st.sampled_from([0.0, 0.5, 0.9, 1.0, -1.0, 1.0000001, 5e-324, *FLOAT_EDGES[-6:]])),
    (1, st.floats()),
)
unit_floats = weighted(
    (5, st.floats(0, 1)),
    (
        1,
        st.sampled_from(
            [0.0, 1.0, -0.0, -1e-9, 1 + 1e-9, 1e-300, 0.5, 2.0, -1.0, 1e308, math.nan, math.inf]
        ),
    ),
)


def ints_at_edges(low: int, high: int, typical: st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    edges = sorted({low, low + 1, -1, 0, 1, 2**31 - 1, 2**31, 2**32 - 1, high - 1, high})
    return weighted((6, typical), (1, st.sampled_from([e for e in edges if low <= e <= high])))


# -- prompt items (JSON shape) ---------------------------------------------------------------

text_data = weighted(
    (6, unicode_text),
    (
        3,
        st.sampled_from(
            [
                "",
                " ",
                "\x00",
                "Hello world",
                "The capital of France is Paris.",
                "👍🏽👩‍👩‍👧",
                "e\u0301\u0301\u0301",
                "مرحبا بالعالم",
                "[CLS] [SEP] [MASK] [PAD] [UNK]",
                "<|im_start|>user\nhi<|im_end|>",
                "<|endoftext|>",
                "\u200b\u200b",
                "\ufeff",
                "a" * 600,
                "hello " * 120,
                "\r\n\t" * 10,
                "\U0010ffff",
            ]
        ),
    ),
    (1, huge_texts),
)


# Positions and lengths past short items and at the uint32 edges (most controls are placed
# inside their item instead, so that the request reaches the graph).
positions = ints_at_edges(*UINT32, st.integers(0, 40))
overlaps = weighted(
    (6, st.just(ABSENT)),
    (4, st.sampled_from(["partial", "complete"])),
    (1, st.none()),
    (1, odd_strings),
)
unit = st.floats(0, 1, exclude_max=True)
control_counts = weighted(
    (4, st.just(0)), (6, st.integers(1, 4)), (1, st.sampled_from([1000, 1024, 1025]))
)
control_lists_present = weighted((8, st.just(True)), (1, st.just(ABSENT)), (1, st.none()))


def _span(draw: st.DrawFn, size: int) -> tuple[int, int]:
    """(start, length) of a control inside an item of `size` positions, mostly; else anywhere."""
    if size and not draw(one_in(10)):
        first = min(int(draw(unit) * size), size - 1)
        return first, 1 + int(draw(unit) * (size - first))
    return draw(positions), draw(positions)


@st.composite
def _controls(draw: st.DrawFn, size: int, make: Callable[[st.DrawFn, int], dict[str, Any]]) -> Any:
    """None to a few controls, or one repeated up to and past the limit (1024 a prompt)."""
    present = draw(control_lists_present)
    if present is not True:
        return present
    count = draw(control_counts)
    if count > 4:
        control = make(draw, size)
        if len(str(control.get("token_overlap", ""))) > 20:
            control["token_overlap"] = "complete"  # a thousand copies of a huge string: no
        return [control] * count
    return [make(draw, size) for _ in range(count)]


def _text_control(draw: st.DrawFn, size: int) -> dict[str, Any]:
    start, length = _span(draw, size)
    return fields(start=start, length=length, factor=draw(factors), token_overlap=draw(overlaps))


@st.composite
def text_items_(draw: st.DrawFn) -> dict[str, Any]:
    text = draw(text_data)
    controls = draw(_controls(len(text), _text_control))
    return fields(type="text", data=text, controls=controls)


text_items = text_items_()


def token_id_lists(vocab: int) -> st.SearchStrategy[list[int]]:
    valid = st.integers(0, max(vocab, 1) - 1)
    edge = ints_at_edges(*INT64, st.sampled_from([vocab, vocab - 1, 101, 102]))
    long = st.builds(operator.mul, st.just([1000]), st.sampled_from([509, 510, 511, 512, 513]))
    return weighted(
        (20, st.lists(valid, min_size=1, max_size=12)),
        (3, st.lists(weighted((3, valid), (1, edge)), max_size=12)),
        (1, long),
    )


def _token_control(draw: st.DrawFn, size: int) -> dict[str, Any]:
    index, _ = _span(draw, size)
    return {"index": index, "factor": draw(factors)}


TOKEN_ID_LISTS = {vocab: token_id_lists(vocab) for vocab in {*VOCAB.values(), VOCAB[MINILM]}}


@st.composite
def _token_id_items(draw: st.DrawFn, vocab: int) -> dict[str, Any]:
    ids = draw(TOKEN_ID_LISTS[vocab])
    controls = draw(_controls(len(ids), _token_control))
    return fields(type="token_ids", data=ids, controls=controls)


TOKEN_ID_ITEMS = {vocab: _token_id_items(vocab) for vocab in TOKEN_ID_LISTS}


def token_id_items(vocab: int) -> st.SearchStrategy[dict[str, Any]]:
    return TOKEN_ID_ITEMS[vocab]


@st.composite
def corrupted(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` truncated, with bytes flipped, inserted or repeated."""
    op = draw(st.sampled_from(["truncate", "flip", "insert", "repeat"]))
    at = draw(st.integers(0, 2**20)) % (len(data) + 1)
    if op == "truncate":
        return data[:at]
    if op == "flip" and data:
        flips = draw(st.lists(st.tuples(st.integers(0, 2**20), st.integers(1, 255)), max_size=4))
        changed = bytearray(data)
        for index, mask in flips:
            changed[index % len(data)] ^= mask
        return bytes(changed)
    if op == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=32)) + data[at:]
    return data[:at] + data[at:] * draw(st.integers(2, 4))


def _named(table: Callable[[], dict[str, bytes]]) -> st.SearchStrategy[bytes]:
    return st.deferred(lambda: st.sampled_from(sorted(table().items())).map(lambda kv: kv[1]))


valid_image_bytes = _named(images.valid_images)
image_bytes = weighted(
    (12, valid_image_bytes),
    (2, _named(images.other_formats)),
    (3, valid_image_bytes.flatmap(corrupted)),
    (1, _named(images.large_images)),
    (1, st.binary(max_size=64)),
)
odd_rects = st.fixed_dictionaries(
    {"left": unit_floats, "top": unit_floats, "width": unit_floats, "height": unit_floats}
)


def _image_control(draw: st.DrawFn, size: int) -> dict[str, Any]:
    if not draw(one_in(10)):
        left, top = draw(unit), draw(unit)
        rect = {
            "left": left,
            "top": top,
            "width": max(draw(unit) * (1 - left), 1e-6),
            "height": max(draw(unit) * (1 - top), 1e-6),
        }
    else:
        rect = draw(odd_rects)
    return fields(rect=rect, factor=draw(factors), token_overlap=draw(overlaps))


# Crops: x, y and size as fractions of the image (a valid square mostly), or at the uint32 edges.
crop_parts = weighted(
    (20, st.floats(0, 1)),
    (1, st.sampled_from([1.01, 2.0, 2.0**32 - 1])),
    (1, st.just(ABSENT)),
    (1, st.none()),
)


@st.composite
def image_items(draw: st.DrawFn) -> dict[str, Any]:
    data = draw(image_bytes)
    width, height = images.image_size(data) or (64, 64)
    item = fields(type="image", data=base64.b64encode(data).decode())
    if draw(one_in(4)):
        side = min(width, height)
        for name, span in (("x", width - side // 2), ("y", height - side // 2), ("size", side)):
            part = draw(crop_parts)
            if part is ABSENT or part is None:
                if part is None:
                    item[name] = None
                continue
            item[name] = min(int(part * span) if part <= 2 else int(part), UINT32[1])
    controls = draw(_controls(0, _image_control))
    if controls is not ABSENT:
        item["controls"] = controls
    return item


def _items_for(model: str | None) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly items the model takes, sometimes any."""
    vocab = VOCAB.get(model or MINILM) or VOCAB[MINILM]
    images = image_items()
    anything = st.one_of(text_items, token_id_items(vocab), images)
    if model in IMAGE_MODELS:
        return weighted((10, images), (1, anything))
    return weighted((4, text_items), (3, token_id_items(vocab)), (1, anything))


def _prompts(model: str | None) -> st.SearchStrategy[Any]:
    """A string, or a list of items; sometimes empty, sometimes past the item limit (256) or
    the context (17 or more images)."""
    many = (
        st.lists(image_items(), min_size=17, max_size=40)
        if model in IMAGE_MODELS
        else st.builds(
            operator.mul,
            st.just([{"type": "text", "data": "a"}]),
            st.sampled_from([255, 256, 257, 1000]),
        )
    )
    return weighted(
        (6, text_data),
        (24, st.lists(_items_for(model), min_size=1, max_size=4)),
        (1, st.just([])),
        (1, many),
    )


def _layer_lists(model: str | None) -> st.SearchStrategy[Any]:
    blocks = BLOCKS.get(model or MINILM, 6)
    valid = st.lists(st.integers(-blocks - 1, blocks), min_size=1, max_size=4)
    edge = ints_at_edges(*INT32, st.integers(-blocks - 2, blocks + 1))
    return weighted(
        (12, valid),
        (1, st.lists(edge, min_size=1, max_size=4)),
        (1, st.sampled_from([[], ABSENT, None])),
        (1, st.lists(st.integers(-3, 3), min_size=63, max_size=66)),
    )


# Built once per served model (and once for any other name): drawing is then cheap.
PROMPTS = {model: _prompts(model) for model in (*MODELS, None)}
LAYERS = {model: _layer_lists(model) for model in (*MODELS, None)}

pooling_lists = weighted(
    (12, st.lists(st.sampled_from(POOLINGS), min_size=1, max_size=3)),
    (1, st.lists(weighted((2, st.sampled_from(POOLINGS)), (1, odd_strings)), max_size=3)),
    (1, st.sampled_from([[], ABSENT, None])),
    (1, st.lists(st.sampled_from(POOLINGS), min_size=6, max_size=8)),
)
hostings = weighted(
    (16, st.just(ABSENT)), (2, st.none()), (1, st.just("aleph-alpha")), (1, odd_strings)
)
nice_values = weighted(
    (4, st.sampled_from([ABSENT, False, True])),
    (1, st.sampled_from(["TRUE", "False", "1", "", "yes", "x" * 3000])),
)
COMMON = {
    "hosting": hostings,
    "normalize": optional(st.booleans()),
    "contextual_control_threshold": weighted((4, st.just(ABSENT)), (1, st.none()), (3, thresholds)),
    "control_log_additive": optional(st.booleans()),
}
representations = weighted(
    (8, st.sampled_from(REPRESENTATIONS)), (1, st.just(ABSENT)), (1, odd_strings)
)
compress_sizes = weighted(
    (4, st.just(ABSENT)),
    (1, optional(weighted((2, st.just(128)), (1, ints_at_edges(*UINT32, st.integers(0, 1024)))))),
)


def _embed_fields(model: str | None) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            **COMMON,
            "prompt": weighted((30, PROMPTS[model]), (1, st.just(ABSENT))),
            "layers": LAYERS[model],
            "pooling": pooling_lists,
            "tokens": optional(st.booleans()),
            "type": optional(weighted((3, st.just("default")), (1, odd_strings))),
        }
    )


def _semantic_fields(model: str | None) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            **COMMON,
            "prompt": weighted((30, PROMPTS[model]), (1, st.just(ABSENT))),
            "representation": representations,
            "compress_to_size": compress_sizes,
        }
    )


def _batch_fields(model: str | None) -> st.SearchStrategy[dict[str, Any]]:
    many = st.builds(operator.mul, st.just(["a"]), st.sampled_from([99, 100, 101]))
    return st.fixed_dictionaries(
        {
            **COMMON,
            "prompts": weighted(
                (8, st.lists(PROMPTS[model], min_size=1, max_size=4)),
                (1, st.just([])),
                (1, st.just(ABSENT)),
                (1, many),
            ),
            "representation": representations,
            "compress_to_size": compress_sizes,
        }
    )


def _per_model(
    make: Callable[[str | None], st.SearchStrategy[dict[str, Any]]],
    names: st.SearchStrategy[str],
) -> st.SearchStrategy[dict[str, Any]]:
    table = {model: make(model) for model in (*MODELS, None)}

    @st.composite
    def bodies(draw: st.DrawFn) -> dict[str, Any]:
        model = draw(names)
        body = draw(table[model if model in table else None])
        return fields(model=model, **body)

    return bodies()


semantic_models = weighted((6, st.sampled_from(sorted(SEMANTIC_MODELS))), (1, models))
embed_bodies = _per_model(_embed_fields, models)
semantic_bodies = _per_model(_semantic_fields, semantic_models)
batch_semantic_bodies = _per_model(_batch_fields, semantic_models)

tokenize_bodies = st.fixed_dictionaries(
    {
        "model": models,
        "prompt": optional(text_data),
        "tokens": optional(st.booleans()),
        "token_ids": optional(st.booleans()),
    }
).map(lambda body: fields(**body))


_huge_ids = st.builds(operator.mul, st.just([1000]), st.sampled_from([4000, 1_000_001]))
detokenize_bodies = _per_model(
    lambda model: st.fixed_dictionaries(
        {
            "token_ids": optional(
                weighted((8, token_id_lists(VOCAB.get(model or MINILM) or 30522)), (1, _huge_ids))
            )
        }
    ),
    models,
)


BODIES: Mapping[str, st.SearchStrategy[dict[str, Any]]] = {
    "embed": embed_bodies,
    "semantic_embed": semantic_bodies,
    "batch_semantic_embed": batch_semantic_bodies,
    "tokenize": tokenize_bodies,
    "detokenize": detokenize_bodies,
}


@dataclass(frozen=True)
class Call:
    """One drawn call: a route and its JSON body, `nice` (gRPC field, HTTP query) and a deadline
    (gRPC timeout, HTTP X-Lamina-Timeout-Seconds); None: the harness's own stall limit."""

    route: str
    body: Any
    nice: Any = ABSENT
    deadline: float | None = None

    @property
    def method(self) -> str:
        return METHODS[self.route]

    def __repr__(self) -> str:
        from tests.fuzz.harness import shorten

        body = json.dumps(shorten(self.body), ensure_ascii=False)
        return f"Call({self.route!r}, {body}, nice={self.nice!r}, deadline={self.deadline!r})"


deadlines = weighted((12, st.none()), (1, st.floats(0.0005, 2.0)))


@st.composite
def calls(draw: st.DrawFn, routes: Sequence[str] = ROUTES) -> Call:
    route = draw(st.sampled_from(routes))
    nice = (
        draw(nice_values)
        if route in ("embed", "semantic_embed", "batch_semantic_embed")
        else ABSENT
    )
    return Call(route, draw(BODIES[route]), nice, draw(deadlines))


# -- JSON -> protobuf, as docs/http-gateway.md describes it ----------------------------------


class NotExpressible(ValueError):
    """A JSON body the documented mapping gives no protobuf for (a wrong type, bad base64)."""


def _int(value: Any, bounds: tuple[int, int]) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise NotExpressible(f"{value!r} is not an integer in {bounds}")
    return value


def _ints(values: Any, bounds: tuple[int, int]) -> list[int]:
    values = _list(values)
    if all(type(v) is int for v in values) and (
        not values or (bounds[0] <= min(values) and max(values) <= bounds[1])
    ):
        return values  # the common case, fast for a million ids
    return [_int(v, bounds) for v in values]


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NotExpressible(f"{value!r} is not a number")
    return float(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise NotExpressible(f"{value!r} is not a string")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise NotExpressible(f"{value!r} is not valid Unicode") from None
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise NotExpressible(f"{value!r} is not a boolean")
    return value


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise NotExpressible(f"{value!r} is not a list")
    return value


def _dict(value: Any, known: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) - known - {"tags"}:
        raise NotExpressible(f"{value!r} is not an object of {sorted(known)}")
    return {k: v for k, v in value.items() if v is not None and k != "tags"}


def _set(
    message: Any, values: Mapping[str, Any], convert: Mapping[str, Callable[[Any], Any]]
) -> None:
    for key, read in convert.items():
        if values.get(key) is not None:
            setattr(message, key, read(values[key]))


def prompt_proto(value: Any) -> pb.Prompt:
    if isinstance(value, str):
        return pb.Prompt(items=[pb.PromptItem(text=pb.TextItem(data=_str(value)))])
    return pb.Prompt(items=[_item_proto(item) for item in _list(value)])


def _item_proto(value: Any) -> pb.PromptItem:
    item = _dict(value, {"type", "data", "controls", "x", "y", "size"})
    kind = item.get("type")
    if kind == "text" and not {"x", "y", "size"} & set(item):
        controls = []
        for raw in _list(item.get("controls")):
            c = _dict(raw, {"start", "length", "factor", "token_overlap"})
            control = pb.TextControl(
                start=_int(c.get("start", 0), UINT32),
                length=_int(c.get("length", 0), UINT32),
                factor=_number(c["factor"]) if "factor" in c else _missing("factor"),
            )
            _set(control, c, {"token_overlap": _str})
            controls.append(control)
        return pb.PromptItem(text=pb.TextItem(data=_str(item.get("data", "")), controls=controls))
    if kind == "token_ids" and not {"x", "y", "size"} & set(item):
        ids = _ints(item.get("data"), INT64)
        token_controls = []
        for raw in _list(item.get("controls")):
            c = _dict(raw, {"index", "factor"})
            token_controls.append(
                pb.TokenControl(
                    index=_int(c.get("index", 0), UINT32),
                    factor=_number(c["factor"]) if "factor" in c else _missing("factor"),
                )
            )
        return pb.PromptItem(token_ids=pb.TokenIdsItem(data=ids, controls=token_controls))
    if kind == "image":
        try:
            data = base64.b64decode(_str(item.get("data", "")), validate=True)
        except (binascii.Error, ValueError):
            raise NotExpressible("not base64") from None
        image = pb.ImageItem(data=data)
        corner = {k: _int(item[k], UINT32) for k in ("x", "y", "size") if k in item}
        if corner:
            image.crop.SetInParent()
            for key, number in corner.items():
                setattr(image.crop, key, number)
        for raw in _list(item.get("controls")):
            c = _dict(raw, {"rect", "factor", "token_overlap"})
            if "rect" not in c or "factor" not in c:
                _missing("rect or factor")
            r = _dict(c["rect"], {"left", "top", "width", "height"})
            if len(r) < 4:
                _missing("rect field")
            image_control = pb.ImageControl(
                rect=pb.Rect(**{k: _number(r[k]) for k in ("left", "top", "width", "height")}),
                factor=_number(c["factor"]),
            )
            _set(image_control, c, {"token_overlap": _str})
            image.controls.append(image_control)
        return pb.PromptItem(image=image)
    raise NotExpressible(f"item type {kind!r}")


def is_strict_json(value: Any) -> bool:
    """Whether `value` is JSON by RFC 8259: no NaN or Infinity (which Python's json writes)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(is_strict_json(v) for v in value.values())
    if isinstance(value, list):
        return all(is_strict_json(v) for v in value)
    return True


def _missing(what: str) -> Any:
    raise NotExpressible(f"{what} is required in JSON")


_EMBEDDING = {
    "model": _str,
    "hosting": _str,
    "normalize": _bool,
    "contextual_control_threshold": _number,
    "control_log_additive": _bool,
}


def to_proto(call: Call) -> Any:
    """The protobuf request a gRPC caller sends for `call` (NotExpressible if none)."""
    route = call.route
    if route == "tokenize":
        b = _dict(call.body, {"model", "prompt", "tokens", "token_ids"})
        request: Any = pb.TokenizeRequest()
        _set(request, b, {"model": _str, "prompt": _str, "tokens": _bool, "token_ids": _bool})
        return request
    if route == "detokenize":
        b = _dict(call.body, {"model", "token_ids"})
        ids = _ints(b.get("token_ids"), INT64)
        return pb.DetokenizeRequest(model=_str(b.get("model", "")), token_ids=ids)
    if route == "embed":
        b = _dict(call.body, {*_EMBEDDING, "prompt", "layers", "pooling", "tokens", "type"})
        request = pb.EmbedRequest(
            layers=_ints(b.get("layers"), INT32),
            pooling=[_str(v) for v in _list(b.get("pooling"))],
        )
        _set(request, b, {**_EMBEDDING, "tokens": _bool, "type": _str})
    else:
        semantic = {*_EMBEDDING, "representation", "compress_to_size"}
        convert = {
            **_EMBEDDING,
            "representation": _str,
            "compress_to_size": lambda v: _int(v, UINT32),
        }
        if route == "semantic_embed":
            b = _dict(call.body, {*semantic, "prompt"})
            request = pb.SemanticEmbedRequest()
        else:
            b = _dict(call.body, {*semantic, "prompts"})
            request = pb.BatchSemanticEmbedRequest(
                prompts=[
                    pb.Prompt() if p is None else prompt_proto(p) for p in _list(b.get("prompts"))
                ]
            )
        _set(request, b, convert)
    if "prompt" in b:
        request.prompt.CopyFrom(prompt_proto(b["prompt"]))
    if call.nice is not ABSENT:
        request.nice = _bool(call.nice)
    return request


@st.composite
def proto_tweaks(draw: st.DrawFn, request: Any) -> Any:
    """What only protobuf can say: an item with no kind, a crop with no fields, a control with
    its factor unset (0), a prompt present but empty."""
    prompts_of = (
        list(request.prompts)
        if isinstance(request, pb.BatchSemanticEmbedRequest)
        else [request.prompt]
        if hasattr(request, "prompt") and isinstance(request.prompt, pb.Prompt)
        else []
    )
    for prompt in prompts_of:
        for item in prompt.items:
            if item.HasField("image") and draw(one_in(30)):
                item.image.crop.SetInParent()
            if item.HasField("text") and item.text.controls and draw(one_in(30)):
                item.text.controls[0].ClearField("factor")
        if draw(one_in(40)):
            prompt.items.insert(draw(st.integers(0, len(prompt.items))), pb.PromptItem())
    has_prompt = hasattr(request, "prompt") and isinstance(request.prompt, pb.Prompt)
    if has_prompt and draw(one_in(40)):
        request.prompt.SetInParent()
    return request


# -- arbitrary JSON in any field -------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text spliced in as it is (what json.dumps cannot write: nesting deeper than its
    recursion limit, numbers with thousands of digits)."""

    text: str


def _nested(opener: str, depth: int) -> Raw:
    closer = "]" * depth if opener == "[" else "1" + "}" * depth
    return Raw(opener * depth + closer)


deep = st.builds(_nested, st.sampled_from(["[", '{"a":']), st.sampled_from([64, 1000, 100_000]))


big_numbers = st.sampled_from(
    [
        Raw("1" * 5000),
        Raw("-" + "9" * 400),
        Raw("1e999999"),
        Raw("-1e999999"),
        Raw("1" + "0" * 400 + ".5"),
        Raw("NaN"),
        Raw("-Infinity"),
        Raw("1E400"),
        Raw("0." + "0" * 5000 + "1"),
    ]
)
# (st.text would merge the two alphabets and drop the surrogates again.)
surrogates = st.lists(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"]) | st.characters(),
    min_size=1,
    max_size=6,
).map("".join)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([10**400, -(10**30), 2**63, 2**64, -(2**63) - 1, 2**32]),
    st.floats(),
    st.text(max_size=12),
    surrogates,
    huge_strings,
    big_numbers,
)
json_values = (
    st.recursive(
        json_scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        ),
        max_leaves=8,
    )
    | deep
)


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [at]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*at, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:8]):
            found += _paths(child, (*at, index))
    return found


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


@st.composite
def mutated(draw: st.DrawFn, body: Any) -> Any:
    """`body` with 1 to 3 changes: a value replaced by arbitrary JSON, a key removed, an unknown
    key added, a value wrapped in a list or turned into a string."""
    body = _copy(body)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(body)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add", "wrap", "stringify"]))
        if not path:
            if op in ("replace", "wrap"):
                body = draw(json_values) if op == "replace" else [body]
                continue
            op = "add"
        parent = _get(body, path[:-1]) if path else None
        target = _get(body, path)
        if op == "add":
            holder = target if isinstance(target, dict) else parent
            if isinstance(holder, dict):
                key = draw(
                    weighted(
                        (3, st.text(max_size=10)),
                        (1, st.just("tags")),
                        (1, surrogates),
                        (1, huge_strings),
                    )
                )
                holder[key] = draw(json_values)
            continue
        assert parent is not None
        if op == "delete":
            del parent[path[-1]]
        elif op == "replace":
            parent[path[-1]] = draw(json_values)
        elif op == "wrap":
            parent[path[-1]] = [target]
        else:
            parent[path[-1]] = dumps(target) if not isinstance(target, str) else target + "x"
    return body


def dumps(value: Any) -> str:
    """JSON text of a drawn value: Python's json module (NaN and Infinity as it writes them,
    lone surrogates escaped) with Raw splices."""
    splices: dict[str, str] = {}

    def splice(raw: object) -> str:
        if not isinstance(raw, Raw):
            raise TypeError(f"{raw!r} is not JSON")
        marker = f"\x00raw-{len(splices)}\x00"
        splices[json.dumps(marker)] = raw.text
        return marker

    text = json.dumps(value, default=splice)
    for marker, raw in splices.items():
        text = text.replace(marker, raw, 1)
    return text


# -- raw bodies and wire bytes ---------------------------------------------------------------


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    """Bytes that are no JSON request, or barely one."""
    good = dumps(draw(BODIES["embed"])).encode()
    return draw(
        st.one_of(
            st.binary(max_size=300),
            st.sampled_from(
                [
                    b"",
                    b" ",
                    b"null",
                    b"[]",
                    b'"text"',
                    b"NaN",
                    b"1" * 5000,
                    b"-" + b"9" * 4400,
                    b"[" * 100_000,
                    b"[" * 100_000 + b"]" * 100_000,
                    b'{"model":' * 50_000,
                    b'{"prompt":"\\ud800","model":"all-minilm-l6-v2"}',
                    b'{"model":"all-minilm-l6-v2","prompt":"\xff\xfe"}',
                    b'{"model":"all-minilm-l6-v2","model":"x"}',
                    b"\xef\xbb\xbf{}",
                    '{"model":"all-minilm-l6-v2"}'.encode("utf-16"),
                    '{"model":"all-minilm-l6-v2"}'.encode("utf-32-le"),
                ]
            ),
            st.builds(lambda cut: good[:cut], st.integers(0, len(good))),
            st.builds(lambda extra: good + extra, st.binary(min_size=1, max_size=20)),
            corrupted(good),
        )
    )


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def wire_field(number: int, payload: bytes | int, wire_type: int | None = None) -> bytes:
    """One protobuf field: varint (int payload) or length-delimited (bytes payload)."""
    if isinstance(payload, int):
        return _varint(number << 3 | (0 if wire_type is None else wire_type)) + _varint(payload)
    kind = 2 if wire_type is None else wire_type
    return _varint(number << 3 | kind) + _varint(len(payload)) + payload


bad_utf8 = st.sampled_from(
    [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"a\x80b", b"\xfe\xff"]
)


@st.composite
def wire_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    """(method, bytes) that a stub would never send: corrupt wire format, bad UTF-8 in string
    fields, wrong wire types, lengths past the end, deep groups, over-long varints."""
    method = draw(st.sampled_from([*METHODS.values(), "ModelsAvailable"]))
    model = wire_field(1, MINILM.encode())
    text = wire_field(
        3, wire_field(1, wire_field(1, wire_field(1, b"hello")))
    )  # prompt.items.text.data
    crafted = st.sampled_from(
        [
            b"\xff\xff\xff",
            wire_field(1, 5),  # model as a varint
            wire_field(1, b"\xff"),  # model: bad UTF-8
            model + wire_field(3, b"\x0a\x05\x0a\x03\x0a\x01\xff"),  # text.data: bad UTF-8
            model + b"\x1a\xff\xff\xff\xff\x0f",  # prompt: a length past the end
            model + b"\x1b" * 20_000,  # start-group, deeply nested
            model + text + b"\x20" + b"\xff" * 11,  # layers: an over-long varint
            model + text + wire_field(4, b"\x01\x02\x03\xff"),  # packed layers, truncated
            model + text + wire_field(99, b"unknown"),  # an unknown field: fine
            model + text + b"\x00",  # field number 0
            model + text + wire_field(6, b"mean") + b"\x32",  # pooling tag at the very end
        ]
    )
    with_bad_string = st.builds(
        lambda field, junk: model + text + wire_field(field, b"ok" + junk),
        st.sampled_from([2, 6, 7]),  # hosting, pooling, type: strings
        bad_utf8,
    )
    serialized = b""
    if method != "ModelsAvailable":
        route = next(r for r, m in METHODS.items() if m == method)
        with contextlib.suppress(NotExpressible):
            serialized = to_proto(draw(calls([route]))).SerializeToString()
    data = draw(
        weighted(
            (2, crafted),
            (2, with_bad_string),
            (2, st.binary(max_size=200)),
            (3, corrupted(serialized) if serialized else st.binary(max_size=50)),
        )
    )
    return method, data
