"""Double of modules/codeformer_model.py: `codeformer.restore(np_image, w=...)`; weights are
models/Codeformer/codeformer-v0.1.0.pth. `calls` records the fidelity weight of every restore."""

from __future__ import annotations

from modules import errors, face_restoration_utils, shared

model_download_name = "codeformer-v0.1.0.pth"
codeformer = None


class FaceRestorerCodeFormer(face_restoration_utils.CommonFaceRestoration):
    model_download_name = model_download_name

    def __init__(self, model_path):
        super().__init__(model_path)
        self.calls: list[float] = []

    def name(self):
        return "CodeFormer"

    def restore(self, np_image, w: float | None = None):
        """`w` is CodeFormer's fidelity: 0 = strongest restoration, 1 = closest to the input."""
        if w is None:
            w = getattr(shared.opts, "code_former_weight", 0.5)
        self.calls.append(w)
        return self.restore_with_helper(np_image, lambda image: self.net(image, strength=1.0 - float(w)))


def setup_model(dirname: str) -> None:
    global codeformer  # noqa: PLW0603 - mirrors the real module's global
    try:
        codeformer = FaceRestorerCodeFormer(dirname)
        shared.face_restorers.append(codeformer)
    except Exception:
        errors.report("Error setting up CodeFormer", exc_info=True)
