"""Form widgets generated from the parameter models, values read back into them, and messages for the page.

Defaults, ranges and help texts live once, in `portrait_core.params`; a widget here is only a view of a
model field. Everything the page sends is parsed (numbers, comma-separated lists), never evaluated.
"""

from __future__ import annotations

import html
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import gradio as gr
from pydantic import BaseModel, ValidationError
from pydantic.fields import SHAPE_LIST, ModelField

ID_PREFIX = "portrait-"
# Integer fields with a wider range than this get a number box: a slider to 100000 cannot pick 800.
MAX_INT_SLIDER_SPAN = 300
MAX_FLOAT_SLIDER_SPAN = 10.0


class FormError(ValueError):
    """A form value that cannot become a parameter; `field` is the model field it belongs to."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def element_id(*parts: str) -> str:
    """`portrait-<part>-<part>`: every element id of the extension carries the prefix."""
    return ID_PREFIX + "-".join(part.replace("_", "-") for part in parts)


# Words the WebUI spells its own way in its labels ("CFG Scale", "IP-Adapter weight", ...).
_SPELLINGS = {"cfg": "CFG", "ip adapter": "IP-Adapter", "codeformer": "CodeFormer", "lora": "LoRA", "sdxl": "SDXL",
              "vae": "VAE", "id": "ID", "openpose": "OpenPose", "lr": "LR"}


def field_label(field: ModelField) -> str:
    if field.name == "cfg_scale":
        return "CFG Scale"  # the WebUI's exact label
    words = f" {field.name.replace('_', ' ')} "
    for word, spelling in _SPELLINGS.items():
        words = words.replace(f" {word} ", f" {spelling} ")
    label = words.strip()
    return label[0].upper() + label[1:]


# -- model field -> widget -------------------------------------------------------------------------------

def model_widgets(model: type[BaseModel], *, id_prefix: str, exclude: Iterable[str] = (),
                  initial: Mapping[str, Any] | None = None, per_row: int = 3) -> dict[str, gr.components.Component]:
    """One widget per field of `model` (but `exclude`), in field order, keyed by field name, laid out in the
    current Gradio context: text boxes full width, the others `per_row` to a row.

    `initial` overrides a field's default as the widget's starting value (e.g. a WebUI setting)."""
    skipped, initial = set(exclude), dict(initial or {})
    fields = [field for name, field in model.__fields__.items() if name not in skipped]
    widgets = {}
    for group in _rows(fields, per_row):
        with gr.Row():
            for field in group:
                value = initial.get(field.name, None if field.required else field.default)
                widgets[field.name] = field_widget(field, value, elem_id=element_id(id_prefix, field.name))
    return widgets


def _rows(fields: list[ModelField], per_row: int) -> list[list[ModelField]]:
    """Text fields alone on their row; other fields grouped `per_row` at a time, in field order."""
    rows: list[list[ModelField]] = []
    for field in fields:
        if _is_wide(field) or not rows or len(rows[-1]) == per_row or _is_wide(rows[-1][0]):
            rows.append([field])
        else:
            rows[-1].append(field)
    return rows


def _is_wide(field: ModelField) -> bool:
    return base_type(field) is str or field.shape == SHAPE_LIST


def field_widget(field: ModelField, value: Any, *, elem_id: str) -> gr.components.Component:
    """The widget that shows `field`: checkbox, dropdown, slider, number box or text box."""
    label, info = field_label(field), field.field_info.description
    common = {"label": label, "info": info, "elem_id": elem_id}
    kind = base_type(field)
    if field.shape == SHAPE_LIST:
        return gr.Textbox(value=_list_text(value), placeholder="comma-separated, e.g. 0, 1", **common)
    if kind is bool:
        return gr.Checkbox(value=bool(value), **common)
    if typing.get_origin(field.type_) is Literal:
        return gr.Dropdown(choices=list(typing.get_args(field.type_)), value=value, **common)
    if kind in (int, float):
        return _numeric_widget(field, value, common)
    max_length = field.field_info.max_length
    return gr.Textbox(value=value or "", lines=2 if max_length and max_length > 200 else 1, **common)


def base_type(field: ModelField) -> type | None:
    """bool, int, float or str for a field of that kind (pydantic 1 turns `Field(ge=...)` into a constrained
    subclass such as ConstrainedIntValue); None for anything else."""
    kind = field.type_
    if not isinstance(kind, type):
        return None
    return next((base for base in (bool, int, float, str) if issubclass(kind, base)), None)


def _numeric_widget(field: ModelField, value: Any, common: dict) -> gr.components.Component:
    low, high = _bounds(field)
    is_int = base_type(field) is int
    if field.allow_none and value is None:
        # Empty means "the model's own default". Neither a slider nor Gradio 3's number box can be empty (an
        # emptied number box sends 0), so this is a text box, parsed as a number when it is not empty.
        return gr.Textbox(value="", placeholder="automatic", **{**common, "label": common["label"]
                                                                  + " (empty: automatic)"})
    if _fits_slider(is_int, low, high, value):
        return gr.Slider(minimum=low, maximum=high, value=value, step=1 if is_int else _float_step(low, high),
                         **common)
    return gr.Number(value=value, precision=0 if is_int else None, **common)


def _bounds(field: ModelField) -> tuple[float | None, float | None]:
    info = field.field_info
    low = info.ge if info.ge is not None else info.gt
    high = info.le if info.le is not None else info.lt
    return low, high


def _fits_slider(is_int: bool, low, high, value) -> bool:
    if low is None or high is None:
        return False
    if is_int:
        return high - low <= MAX_INT_SLIDER_SPAN
    # A learning rate of 1e-4 on a 0–1 slider is unreadable and unpickable: such values get a number box.
    return high - low <= MAX_FLOAT_SLIDER_SPAN and (value in (None, 0) or abs(value) >= 0.01)


def _float_step(low: float, high: float) -> float:
    span = high - low
    return 0.01 if span <= 2 else 0.05 if span <= 5 else 0.1


def _list_text(value) -> str:
    return "" if not value else ", ".join(str(item) for item in value)


# -- widget values -> model ------------------------------------------------------------------------------

def widget_values(widgets: Mapping[str, gr.components.Component], submitted: Mapping) -> dict[str, Any]:
    """The submitted values (a Gradio input dict keyed by component) by field name."""
    return {name: submitted[widget] for name, widget in widgets.items() if widget in submitted}


def build_params(model: type[BaseModel], values: Mapping[str, Any], **fixed: Any) -> BaseModel:
    """`model` from widget values (coerced to the field types) and `fixed` values set by the caller.

    Raises FormError for a value that is not even of the field's type, ValidationError for the model's checks.
    """
    arguments = {name: coerce_value(model.__fields__[name], value) for name, value in values.items()}
    return model(**{**arguments, **fixed})


def coerce_value(field: ModelField, value: Any) -> Any:
    """What a widget sent, as the field's Python type; empty optional values become None."""
    kind = base_type(field)
    if isinstance(value, str) and kind is not str:
        value = value.strip()
    if value in ("", None):
        return None if field.allow_none or field.shape == SHAPE_LIST else value
    if field.shape == SHAPE_LIST:
        return [_whole_number(field, part) for part in str(value).split(",") if part.strip()]
    if kind is int:
        return _whole_number(field, value)
    return value


def _whole_number(field: ModelField, value: Any) -> int:
    try:
        number = float(str(value).strip())
    except ValueError:
        raise FormError(field.name, f"{value!r} is not a number") from None
    if not number.is_integer():
        # pydantic 1 would silently drop the fraction; a user who typed 2.5 steps should hear about it.
        raise FormError(field.name, f"{value!r} is not a whole number")
    return int(number)


# -- messages -------------------------------------------------------------------------------------------

def validation_messages(error: ValidationError | FormError, model: type[BaseModel] | None = None) -> list[str]:
    """One line per problem, naming the field as the form labels it and as the API spells it."""
    if isinstance(error, FormError):
        return [f"{_field_name(error.field, model)}: {error}"]
    lines = []
    for item in error.errors():
        location = [str(part) for part in item["loc"] if part != "__root__"]
        field = location[0] if location else ""
        suffix = f"[{', '.join(location[1:])}]" if len(location) > 1 else ""
        lines.append(f"{_field_name(field, model)}{suffix}: {item['msg']}" if field else item["msg"])
    return lines


def _field_name(field: str, model: type[BaseModel] | None) -> str:
    if model is not None and field in model.__fields__:
        return f"{field_label(model.__fields__[field])} ({field})"
    return field


def error_html(lines: Iterable[str] | str, title: str = "") -> str:
    """An error block for the gr.HTML message area next to a form (HTML-escaped: messages may quote user input)."""
    lines = [lines] if isinstance(lines, str) else list(lines)
    body = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    heading = f"<strong>{html.escape(title)}</strong>" if title else ""
    return f'<div class="portrait-error" role="alert">{heading}<ul>{body}</ul></div>'


def info_html(text: str) -> str:
    return f'<div class="portrait-info">{html.escape(text)}</div>'
