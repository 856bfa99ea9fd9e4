"""Double of sd-webui-controlnet 1.1.455's `internal_controlnet` package (the extension's public API).

In the real WebUI the package is imported while the extension's scripts load, and other extensions
find it in sys.modules as `internal_controlnet.external_code`. `webui_double.generation.start(...,
controlnet=True)` does the same. The unit model (`args.ControlNetUnit`) follows the real pydantic
model's field names, types, enum values and validators; `extension.py` stands in for the parts of
the extension's scripts/ that run during generation.
"""
