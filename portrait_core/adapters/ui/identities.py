"""The Identities tab: every identity with its reference face, training date, base model and LoRA size;
rename, delete (after a confirmation) and re-train (the Train tab, filled in).

A rename moves the folder and the LoRA together; the trigger word stays the one the LoRA was trained with.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime

import gradio as gr

from portrait_core.adapters.ui.backend import UiBackend, log
from portrait_core.adapters.ui.forms import error_html, info_html
from portrait_core.errors import IdentityError, IdentityNotFoundError
from portrait_core.services.identities import IdentityBusyError
from portrait_core.services.loras import family_label

TABLE_HEADERS = ["Identity", "Trained", "Base model", "LoRA size", "Photos", "Status"]


@dataclass
class IdentitiesTab:
    tab: gr.Tab
    refresh: gr.Button
    table: gr.Dataframe
    faces: gr.Gallery
    face_ids: gr.State
    selected: gr.Dropdown
    retrain: gr.Button
    new_name: gr.Textbox
    rename: gr.Button
    delete: gr.Button
    confirm_row: gr.Row
    confirm_text: gr.HTML
    confirm: gr.Button
    keep: gr.Button
    pending: gr.State
    message: gr.HTML
    handlers: IdentitiesHandlers | None = None


# -- layout ---------------------------------------------------------------------------------------------

def build_identities_tab(backend: UiBackend) -> IdentitiesTab:
    listing = identity_listing(backend)
    with gr.Tab("Identities", id="identities", elem_id="portrait-tab-identities") as tab:
        with gr.Row():
            selected = gr.Dropdown(choices=listing.ids, value=listing.ids[0] if listing.ids else None,
                                   label="Identity", elem_id="portrait-identities-selected", scale=3)
            refresh = gr.Button("↻ Refresh", elem_id="portrait-identities-refresh", scale=1)
            retrain = gr.Button("Re-train…", elem_id="portrait-identities-retrain", scale=1)
            delete = gr.Button("Delete…", variant="stop", elem_id="portrait-identities-delete", scale=1)
        with gr.Row():
            new_name = gr.Textbox(label="New name", elem_id="portrait-identities-new-name", scale=3,
                                  placeholder="letters, digits, - and _")
            rename = gr.Button("Rename", elem_id="portrait-identities-rename", scale=1)
        with gr.Row(visible=False, elem_id="portrait-identities-confirm", elem_classes=["portrait-confirm"]) as row:
            confirm_text = gr.HTML(elem_id="portrait-identities-confirm-text")
            confirm = gr.Button("Yes, delete it", variant="stop", elem_id="portrait-identities-confirm-delete")
            keep = gr.Button("Keep it", elem_id="portrait-identities-keep")
        message = gr.HTML(elem_id="portrait-identities-message")
        table = gr.Dataframe(value=listing.rows or None, headers=TABLE_HEADERS, interactive=False,
                             elem_id="portrait-identities-table", label="Identities")
        faces = gr.Gallery(value=listing.faces, label="Reference faces (click to select)", columns=6, height=220,
                           allow_preview=False, elem_id="portrait-identities-faces")
    widgets = IdentitiesTab(tab=tab, refresh=refresh, table=table, faces=faces, face_ids=gr.State(listing.face_ids),
                            selected=selected, retrain=retrain, new_name=new_name, rename=rename, delete=delete,
                            confirm_row=row,
                            confirm_text=confirm_text, confirm=confirm, keep=keep, pending=gr.State(None),
                            message=message)
    widgets.handlers = IdentitiesHandlers(backend, widgets)
    _connect_identities_events(widgets)
    return widgets


def _connect_identities_events(w: IdentitiesTab) -> None:
    handlers = w.handlers
    listing_outputs = [w.table, w.faces, w.face_ids, w.selected]
    for trigger in (w.refresh.click, w.tab.select):
        trigger(handlers.refresh, inputs=[w.selected], outputs=listing_outputs)
    w.faces.select(handlers.pick_face, inputs=[w.face_ids], outputs=[w.selected])
    w.delete.click(handlers.ask_delete, inputs=[w.selected], outputs=[w.confirm_row, w.confirm_text, w.pending,
                                                                      w.message])
    w.keep.click(handlers.keep, outputs=[w.confirm_row, w.pending, w.message])
    w.rename.click(handlers.rename, inputs=[w.selected, w.new_name], outputs=[w.message, w.new_name, *listing_outputs])
    w.confirm.click(handlers.delete, inputs=[w.pending],
                    outputs=[w.confirm_row, w.pending, w.message, *listing_outputs])


# -- handlers -------------------------------------------------------------------------------------------

class IdentitiesHandlers:
    """What the Identities tab's events call; each returns updates keyed by component and never raises."""

    def __init__(self, backend: UiBackend, widgets: IdentitiesTab):
        self.backend, self.w = backend, widgets

    def refresh(self, selected: str | None = None) -> dict:
        listing = identity_listing(self.backend)
        value = selected if selected in listing.ids else (listing.ids[0] if listing.ids else None)
        return {self.w.table: listing.rows or None, self.w.faces: listing.faces, self.w.face_ids: listing.face_ids,
                self.w.selected: gr.update(choices=listing.ids, value=value)}

    def pick_face(self, face_ids: list[str], event: gr.SelectData) -> dict:
        index = event.index if isinstance(event.index, int) else -1
        return {self.w.selected: face_ids[index] if 0 <= index < len(face_ids) else gr.update()}

    def ask_delete(self, identity: str | None) -> dict:
        w = self.w
        if not identity:
            return {w.message: error_html("Identity: choose the identity to delete"), w.pending: None,
                    w.confirm_row: gr.update(visible=False), w.confirm_text: ""}
        question = (f"Delete <strong>{html.escape(identity)}</strong>: its photos, prepared dataset, training runs "
                    "and its LoRA? This cannot be undone.")
        return {w.confirm_row: gr.update(visible=True), w.confirm_text: question, w.pending: identity, w.message: ""}

    def rename(self, identity: str | None, new_name: str | None) -> dict:
        w = self.w
        new_name = (new_name or "").strip()
        if not identity or not new_name:
            return {w.message: error_html("Identity and New name: choose an identity and type its new name")}
        try:
            self.backend.services.identities.rename(identity, new_name)
        except IdentityBusyError as error:
            return {w.message: error_html(str(error))}
        except IdentityError as error:
            return {w.message: error_html(f"New name: {error}")}
        log.info("UI: renamed identity %s to %s", identity, new_name)
        return {w.message: info_html(f"Renamed {identity!r} to {new_name!r}."), w.new_name: "",
                **self.refresh(new_name)}

    def keep(self) -> dict:
        return {self.w.confirm_row: gr.update(visible=False), self.w.pending: None, self.w.message: ""}

    def delete(self, identity: str | None) -> dict:
        """Delete the identity asked about (not whatever the dropdown shows now)."""
        w = self.w
        hidden = {w.confirm_row: gr.update(visible=False), w.pending: None}
        if not identity:
            return {**hidden, w.message: info_html("Nothing to delete.")}
        try:
            removed, kept = self.backend.services.identities.delete(identity)
        except IdentityBusyError as error:
            return {**hidden, w.message: error_html(str(error))}
        except IdentityNotFoundError:
            removed, kept = [], []
        except IdentityError as error:  # e.g. the folder is a symbolic link: not ours to delete
            return {**hidden, w.message: error_html(str(error))}
        except OSError as error:
            return {**hidden, w.message: error_html(f"Could not delete {identity!r}: {error}")}
        log.info("UI: deleted identity %s (%s)", identity, ", ".join(removed) or "nothing")
        text = f"Deleted {identity!r}." if removed else f"There is no identity {identity!r} any more."
        if kept:
            text += " Kept: " + "; ".join(kept)
        return {**hidden, w.message: info_html(text), **self.refresh()}


# -- listing --------------------------------------------------------------------------------------------

@dataclass
class IdentityListing:
    ids: list[str]
    rows: list[list]
    faces: list[tuple[str, str]]  # (reference face file, identity) for the gallery
    face_ids: list[str]


def identity_listing(backend: UiBackend) -> IdentityListing:
    listing = IdentityListing([], [], [], [])
    # Whether each LoRA fits the checkpoint in use; standalone only once the host is up (building it loads).
    check_fit = backend.in_webui or backend.services.host.built
    for info in backend.services.identities.infos():  # symbolic links and stray files are not listed
        fit = backend.services.generation.lora_fit(info.lora) if check_fit and info.lora else (True, None)
        listing.ids.append(info.id)
        listing.rows.append(_table_row(info.to_json(), info.active_job, fit))
        face = backend.services.identities.paths(info.id).dataset_layout().reference_face
        if face.is_file():
            listing.faces.append((str(face), info.id))
            listing.face_ids.append(info.id)
    return listing


def _table_row(info: dict, job, fit: tuple[bool, str | None] = (True, None)) -> list:
    usable, note = fit
    if job is not None:
        status = "training" if job.kind == "train" else f"in a {job.kind} job"
        status += f" ({job.state})"
    elif info["has_lora"] and not usable:
        status = f"not usable here: {note}"
    elif info["has_lora"]:
        status = "ready" + (" (trained on another base of this family)" if note else "")
    else:
        status = "prepared, not trained" if info["prepared"] else "no usable photos"
    base = info["base_model"] or ""
    if base and info["family"]:
        base += f" ({family_label(info['family'])})"
    return [info["id"], _date(info["trained_at"]), base, _megabytes(info["lora_size_bytes"]), info["photos"],
            status]


def _date(iso: str | None) -> str:
    if not iso:
        return ""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")


def _megabytes(size: int | None) -> str:
    return "" if size is None else f"{size / 1_000_000:.1f} MB"
