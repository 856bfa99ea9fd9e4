"""Double of the WebUI's `modules` package (A1111 1.10.1); see tests/webui_double/__init__.py."""
